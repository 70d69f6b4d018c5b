# The benchmark corpus app (vectors.md §2): python + busybox + a script, three layers.
# variant = "app2" is the same app with only its script changed.
{ n, variant ? "app", corpus ? import ../../shared/bench/corpus.nix }:
n.buildImage {
  name = "app";
  config.Entrypoint = [ "${corpus.${variant}}/bin/app" ];
  maxLayers = 3;
}
