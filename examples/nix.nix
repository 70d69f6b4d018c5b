# A Nix database for the image's store paths, nested layers included, copyToRoot ones
# (at /, not in /nix/store) not registered.
{ n, f }:
n.buildImage {
  name = "nix";
  initializeNixDatabase = true;
  copyToRoot = [ f.rootEnv ];
  config.Env = [ "NIX_PAGER=cat" "USER=nobody" "HOME=/" ];
  layers = [ (n.buildLayer { deps = [ f.greeting ]; }) ];
}
