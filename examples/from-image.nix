# A base image's layers and config under a new image.
{ n, f }:
let
  base = n.buildImage {
    name = "base";
    copyToRoot = [ f.baseRelease f.rootEnv ];
    config = {
      Env = [ "PATH=/bin" "BASE_VAR=from-base" "OVERRIDDEN=base" ];
      WorkingDir = "/etc";
      Cmd = [ "/bin/sh" ];
    };
  };
in
n.buildImage {
  name = "from-image";
  fromImage = base;
  config = {
    Env = [ "OVERRIDDEN=new" ];
    entrypoint = [ "/bin/sh" "-c" "ls -l /etc/base-release; pwd; echo BASE_VAR=$BASE_VAR OVERRIDDEN=$OVERRIDDEN" ];
  };
} // { inherit base; }
