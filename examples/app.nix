# The benchmark corpus app (vectors.md §2): python + busybox + a script, three layers.
# variant = "app2" is the corpus' app with only its script changed; `message` makes another
# such one-line change (the incremental-rebuild benchmark uses a fresh one each time), `name`
# may name a registry (copyToRegistry pushes to docker://NAME:TAG). digests = true hashes the
# layers at build time, as nix2container does (the vectors test).
{ n, variant ? "app", message ? null, name ? "app", tag ? null, digests ? false, corpus ? import ../../shared/bench/corpus.nix }:
let
  app = if message == null then corpus.${variant} else derivation {
    name = "app";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      set -e; mkdir -p $out/bin
      printf '#!%s/bin/sh\nexec %s/bin/python3 -c "print(\\"%s\\")"\n' ${corpus.busybox} ${corpus.python} "${message}" > $out/bin/app
      chmod +x $out/bin/app
    '' ];
  };
in
n.buildImage {
  inherit name tag;
  config.Entrypoint = [ "${app}/bin/app" ];
  maxLayers = 3;
  inherit digests;
}
