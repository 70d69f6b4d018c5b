# Generated store paths for scripts/bench's scale measures (builtins only, no nixpkgs, no IFD):
#   manyfiles: 1,000,000 small files in 1,000 directories, written by one Python process
#   layers:    d0 … d99, a few small files each: one layer apiece in a 100-layer description
let
  py = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/usr/bin/python3";
    args = [ "-c" script ];
  };
in {
  manyfiles = py "manyfiles" ''
    import os
    out = os.environ["out"]
    os.mkdir(out)
    for i in range(1000):
        d = f"{out}/d{i:03}"
        os.mkdir(d)
        for j in range(1000):
            fd = os.open(f"{d}/f{j:03}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, b"file %d %d\n" % (i, j))
            os.close(fd)
  '';
  layers = py "layers" ''
    import os
    out = os.environ["out"]
    for i in range(100):
        d = f"{out}/d{i}/etc"
        os.makedirs(d)
        for j in range(3):
            with open(f"{d}/f{j}", "w") as f:
                f.write(f"layer {i} file {j}\n")
  '';
}
