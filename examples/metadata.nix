{ n, f }:
n.buildImage {
  name = "metadata";
  config.entrypoint = [ "${f.hello}/bin/hello" ];
  layers = [
    (n.buildLayer {
      deps = [ f.hello ];
      metadata = {
        created_by = "test created_by";
        author = "test author";
        comment = "test comment";
      };
    })
  ];
}
