# Tiny store paths made from builtins only (no nixpkgs here): /bin/sh builds, the static
# /bin/busybox is the only program copied in.
{ system ? builtins.currentSystem
  # Debian's busybox-static for arm64, fetched there by scripts/setup.
, busyboxArm64Deb ? /var/cache/nixoci/busybox-static_arm64.deb
}:
let
  mk = name: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "set -e; ${script}" ];
    PATH = "/usr/bin:/bin";
  };
  applets = "sh ls cat echo env id grep head wc test true sleep";
in
rec {
  busybox = mk "busybox" ''
    mkdir -p $out/bin; cp /bin/busybox $out/bin/busybox
    for a in ${applets}; do ln -s busybox $out/bin/$a; done
  '';

  # Data the hello program reads: makes the hello closure three paths deep.
  greeting = mk "greeting" ''
    mkdir -p $out/share; echo "Hello, world!" > $out/share/greeting
  '';

  hello = mk "hello" ''
    mkdir -p $out/bin
    printf '#!%s/bin/sh\nexec %s/bin/cat %s/share/greeting\n' ${busybox} ${busybox} ${greeting} > $out/bin/hello
    chmod 555 $out/bin/hello
  '';

  # A /bin symlink farm (what buildEnv { pathsToLink = ["/bin"]; } gives with nixpkgs).
  rootEnv = mk "root" ''
    mkdir -p $out/bin
    for a in busybox ${applets}; do ln -s ${busybox}/bin/$a $out/bin/$a; done
    ln -s ${hello}/bin/hello $out/bin/hello
  '';

  tmp = mk "tmp" "mkdir -p $out/tmp";

  ownershipFiles = mk "test" ''
    mkdir -p $out/tmp; : > $out/tmp/test1.txt; : > $out/tmp/test2.txt
  '';

  # An arm64 busybox, unpacked from the .deb by the host's dpkg-deb: a cross-platform image
  # needs no emulator to be built or mounted, only to run.
  busyboxArm64 = mk "busybox-arm64" ''
    dpkg-deb -x ${builtins.path { path = busyboxArm64Deb; name = "busybox-static-arm64.deb"; }} deb
    mkdir -p $out/bin; cp deb/bin/busybox $out/bin/busybox
    for a in ${applets}; do ln -s busybox $out/bin/$a; done
  '';

  baseRelease = mk "base-release" ''
    mkdir -p $out/etc; echo "base 1.0" > $out/etc/base-release
  '';
}
