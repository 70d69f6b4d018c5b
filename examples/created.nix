{ n, f }:
n.buildImage {
  name = "created";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
  created = "2024-05-13T09:31:10Z";
}
