# Two identical child layers: the image lists that layer once. greeting sits two levels
# down, and hello's closure (customisation layer) does not repeat it.
{ n, f }:
n.buildImage {
  name = "nested";
  config.entrypoint = [ "/bin/sh" "-c" "${f.hello}/bin/hello" ];
  layers = [
    (n.buildLayer {
      deps = [ f.busybox ];
      copyToRoot = f.rootEnv;
      layers = [
        (n.buildLayer { deps = [ f.greeting ]; })
        (n.buildLayer { deps = [ f.greeting ]; })
      ];
    })
  ];
}
