# hello's closure is three paths: three layers.
{ n, f }:
n.buildImage {
  name = "layered";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
  maxLayers = 3;
}
