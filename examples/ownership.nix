# uid/gid 1001 on one file only.
{ n, f }:
n.buildImage {
  name = "ownership";
  copyToRoot = [ f.ownershipFiles ];
  perms = [ { path = f.ownershipFiles; regex = "/tmp/test1.txt"; uid = 1001; gid = 1001; } ];
  config.entrypoint = [ "${f.busybox}/bin/ls" "-l" "/tmp/" ];
}
