# name and tag: the copy tests push it under a registry's name.
{ n, f, name ? "basic", tag ? null }:
n.buildImage {
  inherit name tag;
  config.entrypoint = [ "${f.hello}/bin/hello" ];
}
