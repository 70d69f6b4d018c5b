# Compressed layers: busybox in a zstd buildLayer, the image's own layer (hello and its greeting)
# gzip. Every digest is made at build time and is the compressed blob's, so a machine that gets
# this JSON from a binary cache pushes the image without compressing what the registry has.
{ n, f }:
n.buildImage {
  name = "compressed";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
  layers = [ (n.buildLayer { deps = [ f.busybox ]; compression = "zstd"; }) ];
  compression = "gzip";
}
