# fromImage with a base that is a skopeo dir: layout (what a pulled image is): its layer
# blobs are used as they are, its config is merged under ours.
{ n, f, baseDir }:
n.buildImage {
  name = "from-dir";
  fromImage = n.imageFromDir (builtins.storePath baseDir);
  config.entrypoint = [ "/bin/sh" "-c" "cat /etc/base-release; echo BASE_VAR=$BASE_VAR" ];
}
