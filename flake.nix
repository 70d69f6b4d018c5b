{
  description = "nixoci: Nix-built container images mounted as OCI image layouts over FUSE";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (system: pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "nixoci";
          version = "0.1.0";
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests need FUSE, podman and a writable Nix store: not in the sandbox.
          doCheck = false;
          meta.mainProgram = "nixoci";
        };
      });

      # buildImage, buildLayer (nix2container's arguments, its image JSON v1).
      lib = forAll (system: pkgs: import ./nix {
        inherit pkgs;
        nixoci = self.packages.${system}.default;
      });

      nixosModules.default = import ./nix/module.nix self;

      checks = forAll (system: pkgs: {
        package = self.packages.${system}.default;
        # Layering unit test: nix2container's popularity vector.
        popularity =
          let
            L = import ./nix/layering.nix;
            g = [
              { path = "A"; references = [ "A" "B" "G" ]; } { path = "B"; references = [ "B" "C" "E" ]; }
              { path = "C"; references = [ "C" "D" "E" ]; } { path = "D"; references = [ "D" "F" ]; }
              { path = "E"; references = [ "E" "F" ]; } { path = "F"; references = [ "F" ]; }
              { path = "G"; references = [ "G" ]; }
            ];
          in
          assert L.popularityOrder g == [ "F" "E" "D" "C" "G" "B" "A" ];
          pkgs.runCommand "popularity-ok" { } "touch $out";
        hello-image = self.lib.${system}.buildImage {
          name = "hello";
          config.Entrypoint = [ "${pkgs.hello}/bin/hello" ];
          maxLayers = 2;
        };
      });
    };
}
