# /tmp copied to the root with mode 0777.
{ n, f }:
n.buildImage {
  name = "openbar";
  copyToRoot = [ f.tmp ];
  perms = [ { path = f.tmp; regex = ".*"; mode = "0777"; } ];
  config.entrypoint = [ "${f.busybox}/bin/ls" "-l" "/" ];
}
