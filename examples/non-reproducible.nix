# A layer whose bytes are kept in the store (reproducible = false): the JSON points at them
# with layer-path.
{ n, f }:
n.buildImage {
  name = "non-reproducible";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
  layers = [ (n.buildLayer { deps = [ f.hello ]; reproducible = false; }) ];
}
