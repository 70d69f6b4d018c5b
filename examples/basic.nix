{ n, f }:
n.buildImage {
  name = "basic";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
}
