# nix2container's example list, rebuilt with busybox fixtures and nixoci's library.
#   nix-build --option build-users-group "" examples --argstr nixoci "$PWD/target/debug/nixoci" -A hello
{ nixoci, pkgs ? null, baseDir ? null }:
let
  n = import ../nix { inherit nixoci pkgs; };
  f = import ./fixtures.nix { };
  call = file: import file { inherit n f; };
in
{
  hello = call ./hello.nix;
  basic = call ./basic.nix;
  # { name, tag }: basic under another name (the copy tests push it to a registry)
  basicWith = args: import ./basic.nix ({ inherit n f; } // args);
  openbar = call ./openbar.nix;
  copyToRoot = call ./copy-to-root.nix;
  layered = call ./layered.nix;
  nested = call ./nested.nix;
  ownership = call ./ownership.nix;
  created = call ./created.nix;
  metadata = call ./metadata.nix;
  nix = call ./nix.nix;
  fromImage = call ./from-image.nix;
  fromImageBase = (call ./from-image.nix).base;
  sizeLayered = call ./size-layered.nix;
  nonReproducible = call ./non-reproducible.nix;
  multiarch = call ./multiarch.nix;
  # baseDir: a skopeo dir: layout in the store (the test exports fromImageBase to one)
  fromDir = import ./from-dir.nix { inherit n f baseDir; };
  app = import ./app.nix { inherit n; };
  appDigests = import ./app.nix { inherit n; digests = true; };
  app2 = import ./app.nix { inherit n; variant = "app2"; };
  # { message, name, tag, digests }: see app.nix
  appWith = args: import ./app.nix ({ inherit n; } // args);
  fixtures = f;
}
