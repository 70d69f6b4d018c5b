# One image for two platforms: busybox for amd64 (the host's) and Debian's busybox for arm64,
# both built here without an emulator, listed in one image index.
{ n, f }:
let
  image = arch: variant: busybox: n.buildImage {
    name = "busybox-${arch}";
    inherit arch variant;
    config = {
      Env = [ "PATH=${busybox}/bin" ];
      Entrypoint = [ "${busybox}/bin/sh" "-c" ];
      Cmd = [ "echo hello from $(uname -m)" ];
    };
  };
in
n.buildImageIndex {
  name = "multiarch";
  tag = "v1";
  images = [ (image "amd64" null f.busybox) (image "arm64" "v8" f.busyboxArm64) ];
}
