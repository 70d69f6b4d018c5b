# A buildLayer of the dependencies, and the script alone on top.
{ n, f }:
let
  application = derivation {
    name = "conversation";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''printf '%s/bin/hello\necho "Haaa aa... I am dying!!!"\n' ${f.hello} > $out'' ];
  };
in
n.buildImage {
  name = "hello";
  config.entrypoint = [ "${f.busybox}/bin/sh" application ];
  layers = [ (n.buildLayer { deps = [ f.busybox f.hello ]; }) ];
}
