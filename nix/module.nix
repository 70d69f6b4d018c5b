# NixOS module: a systemd service running `nixoci mount`. Images are linked into a directory
# under /nix/var/nix/gcroots/, so every image shown is also a GC root.
flake:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.nixoci;
  inherit (lib) mkOption mkEnableOption mkIf types;
in
{
  options.services.nixoci = {
    enable = mkEnableOption "nixoci, Nix-built images mounted as OCI image layouts";
    package = mkOption {
      type = types.package;
      default = flake.packages.${pkgs.stdenv.hostPlatform.system}.default;
      description = "The nixoci package.";
    };
    mountPoint = mkOption {
      type = types.str;
      default = "/run/nixoci";
      description = "Where the images appear: MOUNT/NAME/ (OCI layout), MOUNT/NAME.dir/, MOUNT/NAME.tar. No ':' allowed (skopeo splits oci:PATH at the first colon).";
    };
    imagesDir = mkOption {
      type = types.str;
      default = "/nix/var/nix/gcroots/nixoci";
      description = "Directory of NAME.json links to image descriptions (an image's passthru.linkToMount writes here). Under gcroots, so linked images are not garbage-collected.";
    };
    cacheDir = mkOption {
      type = types.str;
      default = "/var/cache/nixoci";
      description = "Digest cache of layers whose description gives no digest.";
    };
    images = mkOption {
      type = types.attrsOf types.package;
      default = { };
      example = lib.literalExpression "{ hello = nixoci.lib.\${system}.buildImage { name = \"hello\"; }; }";
      description = "Images linked into imagesDir declaratively (NAME = image description).";
    };
    logLevel = mkOption {
      type = types.str;
      default = "info";
      description = "RUST_LOG for the daemon.";
    };
  };

  config = mkIf cfg.enable {
    boot.kernelModules = [ "fuse" ];
    systemd.tmpfiles.rules = [
      "d ${cfg.imagesDir} 0755 root root -"
      "d ${cfg.cacheDir} 0755 root root -"
    ] ++ lib.mapAttrsToList (name: image: "L+ ${cfg.imagesDir}/${name}.json - - - - ${image}") cfg.images;

    systemd.services.nixoci = {
      description = "nixoci: Nix-built images as OCI image layouts at ${cfg.mountPoint}";
      wantedBy = [ "multi-user.target" ];
      after = [ "local-fs.target" "systemd-tmpfiles-setup.service" ];
      environment.RUST_LOG = cfg.logLevel;
      serviceConfig = {
        ExecStart = lib.escapeShellArgs [
          (lib.getExe cfg.package) "mount" cfg.mountPoint
          "--images" cfg.imagesDir "--cache-dir" cfg.cacheDir
        ];
        # nixoci unmounts cleanly on SIGTERM
        KillSignal = "SIGTERM";
        Restart = "on-failure";
      };
    };
  };
}
