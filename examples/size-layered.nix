# Size-first layering of the same closure, at most two layers.
{ n, f }:
n.buildImage {
  name = "size-layered";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
  maxLayers = 2;
  layering = "size";
}
