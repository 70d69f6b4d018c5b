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
        # An example image: `nix run .#hello-image.copyToDockerDaemon` (or .copyToRegistry,
        # .copyToPodman, `.copyTo -- docker://…`), as with nix2container.
        hello-image = self.lib.${system}.buildImage {
          name = "hello";
          config.Entrypoint = [ "${pkgs.hello}/bin/hello" ];
          maxLayers = 2;
        };
      });

      apps = forAll (system: pkgs: {
        default = { type = "app"; program = "${self.packages.${system}.default}/bin/nixoci"; };
      });

      # buildImage, buildLayer (nix2container's arguments, its image JSON v1), whose images
      # carry copyToRegistry, copyToDockerDaemon, copyToPodman and copyTo.
      lib = forAll (system: pkgs: import ./nix {
        inherit pkgs;
        nixoci = self.packages.${system}.default;
      });

      nixosModules.default = import ./nix/module.nix self;

      checks = forAll (system: pkgs: {
        package = self.packages.${system}.default;
        hello-image = self.packages.${system}.hello-image;
      });
    };
}
