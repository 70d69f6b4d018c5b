# A /bin symlink farm copied to the root.
{ n, f }:
n.buildImage {
  name = "copy-to-root";
  copyToRoot = [ f.rootEnv ];
  config.entrypoint = [ "/bin/sh" "-c" "/bin/hello" ];
}
