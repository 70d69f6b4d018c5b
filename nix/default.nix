# nixoci's Nix library: nix2container's buildImage / buildLayer (same arguments, its image JSON v1)
# and its copyTo* scripts.
#
#   nixoci: the nixoci package (a derivation with bin/nixoci) or a path to the binary.
#   pkgs:   nixpkgs, optional. It brings skopeo to the copy scripts and nix + sqlite to the Nix
#           database; without it those come from the host (unsandboxed builds), which is how it
#           is tested here, where there is no nixpkgs.
#
# Nothing is read back at evaluation time (no import-from-derivation): Nix hands each closure
# graph to a build step through exportReferencesGraph, and `nixoci plan`, the builder of every
# layer and image derivation, lays out the layers (src/plan.rs) and writes the output. See
# README.md beside this file for the design.
{ nixoci
, pkgs ? null
, system ? if pkgs != null then pkgs.stdenv.hostPlatform.system else builtins.currentSystem
}:
let
  inherit (builtins)
    concatMap concatStringsSep filter foldl' head isAttrs isList isString
    replaceStrings split toJSON unsafeDiscardStringContext;

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = replaceStrings upper lower;

  toList = x: if x == null then [ ] else if isList x then x else [ x ];
  optionalString = c: s: if c then s else "";
  shellQuote = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  nixociBin =
    if isAttrs nixoci then "${nixoci}/bin/nixoci"
    # A plain path (e.g. cargo's target/release/nixoci) is copied into the store so that the
    # derivations depend on it.
    else "${builtins.path { path = nixoci; name = "nixoci"; }}";

  # GOARCH of a Nix system, as nix2container writes it.
  goArch = sys: {
    "x86_64" = "amd64"; "aarch64" = "arm64"; "i686" = "386"; "armv7l" = "arm";
    "armv6l" = "arm"; "powerpc64le" = "ppc64le"; "riscv64" = "riscv64"; "s390x" = "s390x";
  }.${head (split "-" sys)} or (head (split "-" sys));

  # The small text and script derivations: nixpkgs' shell and tools when we have them, else
  # the host's.
  shell = if pkgs != null then pkgs.runtimeShell else "/bin/sh";
  toolPath = if pkgs != null then "${pkgs.coreutils}/bin" else "/usr/bin:/bin";
  dbToolPath = if pkgs != null then "${pkgs.nix}/bin:${pkgs.sqlite}/bin:${toolPath}" else toolPath;
  skopeoFlag = optionalString (pkgs != null) " --skopeo ${pkgs.skopeo}/bin/skopeo";

  run = name: env: script: derivation ({
    inherit name system;
    builder = shell;
    args = [ "-c" script ];
    PATH = toolPath;
  } // env);

  # A JSON text file; its output references exactly the store paths the text mentions.
  writeJSON = name: text: run name { inherit text; passAsFile = [ "text" ]; }
    ''cp "$textPath" "$out"'';

  # An executable $out/bin/NAME, runnable with `nix run` (meta.mainProgram).
  writeScript = name: text: run name { inherit text; passAsFile = [ "text" ]; } ''
    set -e
    mkdir -p "$out/bin"
    cp "$textPath" "$out/bin/${name}"
    chmod +x "$out/bin/${name}"
  '' // { meta.mainProgram = name; };

  # A derivation built by `nixoci plan`: `graphs` become exportReferencesGraph (structured
  # attrs, so they carry narHash/narSize), `job` the arguments it reads under `nixoci`.
  plan = name: graphs: job: derivation {
    inherit name system;
    builder = nixociBin;
    args = [ "plan" ];
    __structuredAttrs = true;
    exportReferencesGraph = graphs;
    nixoci = job;
  };

  # Every layer under `layers` (theirs first, deepest first), each once.
  allNested = layers:
    let
      all = concatMap (l: (l.nestedLayers or [ ]) ++ [ l ]) layers;
      step = acc: l: let k = unsafeDiscardStringContext l.outPath; in
        if acc.seen ? ${k} then acc else { seen = acc.seen // { ${k} = true; }; out = acc.out ++ [ l ]; };
    in
    (foldl' step { seen = { }; out = [ ]; } all).out;

  # The layer arguments buildLayer and buildImage share, as `nixoci plan` reads them (new
  # per-layer options go here and into nixbuild.rs' LayerArgs).
  layerArgs = { copyToRoot, ignore, layers, reproducible, perms, maxLayers, metadata, layering }: {
    copyToRoot = map toString copyToRoot;
    ignore = map (p: unsafeDiscardStringContext (toString p)) ignore;
    layers = map toString (allNested layers);
    perms = map (p: p // { path = toString p.path; }) perms;
    inherit reproducible maxLayers metadata layering;
  };

  buildLayer =
    { deps ? [ ]
    , copyToRoot ? null
    , ignore ? null
    , layers ? [ ]
    , reproducible ? true
    , perms ? [ ]
    , maxLayers ? 1
    , metadata ? { created_by = "nixoci"; }
    # "popularity" (nix2container's) or "size" (see README.md)
    , layering ? "popularity"
    , name ? "layers"
    }:
    let copyToRootList = toList copyToRoot; in
    # $out/layers.json: nix2container's layers, digests included (hashed here, once per change
    # of this layer's inputs).
    plan name { graph = deps ++ copyToRootList; } ({ kind = "layers"; } // layerArgs {
      copyToRoot = copyToRootList;
      ignore = toList ignore;
      inherit layers reproducible perms maxLayers metadata layering;
    }) // {
      # nix2container's passthru: every layer below this one
      nestedLayers = allNested layers;
    };

  # Nix database registering exactly the store paths the image holds at their /nix/store place
  # (copyToRoot ones land at / and are not registered: nix2container #165).
  makeNixDatabase = graphs: args:
    let registration = plan "nix-registration" graphs ({ kind = "registration"; } // args); in
    derivation {
      name = "nix-database";
      inherit system registration;
      builder = shell;
      PATH = dbToolPath;
      args = [ "-c" ''
        set -e
        root=$TMPDIR/root
        mkdir -p "$root"
        NIX_REMOTE="local?root=$root" nix-store --load-db < "$registration"
        db=$root/nix/var/nix/db/db.sqlite
        # Reproducible: no registration time, and a fresh database from a dump.
        sqlite3 "$db" 'UPDATE ValidPaths SET registrationTime = 0'
        sqlite3 "$db" .dump > db.dump
        mkdir -p "$out/nix/var/nix/db" "$out/nix/var/nix/gcroots/docker" "$out/nix/store/.links"
        sqlite3 "$out/nix/var/nix/db/db.sqlite" '.read db.dump'
        for p in $(sqlite3 "$db" 'SELECT path FROM ValidPaths'); do ln -s "$p" "$out/nix/var/nix/gcroots/docker/"; done
      '' ];
    };

  # A description of an image stored as a skopeo `dir:` layout (e.g. a fixed-output
  # `skopeo copy docker://… dir:$out`), usable as fromImage. Unlike nix2container's
  # image-from-dir it keeps the image's config, so fromImage merges it. (fromImage also takes
  # such a directory as it is.)
  imageFromDir = dir: plan "image-from-dir.json" { } { kind = "image-from-dir"; dir = toString dir; };

  # A mount name from an image name: lowercase [a-z0-9] runs separated by . _ -
  mountName = n:
    let
      chars = filter isString (split "" (toLower n));
      ok = c: builtins.match "[a-z0-9._-]" c != null;
      raw = concatStringsSep "" (map (c: if ok c then c else "-") chars);
      trimmed = builtins.match "[._-]*(.*[a-z0-9])[._-]*" raw;
    in
    if trimmed == null then "image" else head trimmed;

  buildImage =
    { name
    , tag ? null
    , config ? { }
    , layers ? [ ]
    , copyToRoot ? null
    , maxLayers ? 1
    , perms ? [ ]
    , initializeNixDatabase ? false
    , nixUid ? 0
    , nixGid ? 0
    , created ? "0001-01-01T00:00:00Z"
    , arch ? goArch system
    , os ? null       # the description's "os" (the mount's default: linux)
    , variant ? null  # e.g. "v8" for arm64, "v7" for arm
    , fromImage ? null
    , meta ? { }
    , layering ? "popularity"
    , metadata ? { created_by = "nixoci"; }
    # Hash the layers this image splits by itself at build time, as nix2container does. By
    # default they are hashed on first use and cached (see README.md): a rebuild hashes nothing.
    , digests ? false
    }:
    let
      # Its references are the store paths the config mentions: the closure to lay out.
      configFile = writeJSON "config.json" (toJSON config);
      copyToRootList = toList copyToRoot;
      graphs = { graph = [ configFile ] ++ copyToRootList; };
      args = layerArgs {
        copyToRoot = copyToRootList;
        ignore = [ configFile ];
        reproducible = true;
        inherit layers perms maxLayers metadata layering;
      };
      nixDatabase = makeNixDatabase (graphs // { nestedGraph = args.layers; }) args;

      image = plan "image-${mountName name}.json" graphs ({
        kind = "image";
        inherit config arch os variant created tag digests;
        fromImage = if fromImage == null || fromImage == "" then null else toString fromImage;
        nixDatabase = if initializeNixDatabase then { path = toString nixDatabase; uid = nixUid; gid = nixGid; } else null;
      } // args);

      imageName = toLower name;
      imageTag = if tag != null then tag else head (split "-" (baseNameOf (unsafeDiscardStringContext image.outPath)));
      linkName = mountName imageName;

      # nix2container's copy scripts: extra arguments go to skopeo (copyTo takes the
      # destination first). `nixoci copy` reads the image from a running mount that serves it,
      # else mounts it privately for the length of the copy.
      copyScript = bin: dest: writeScript bin ''
        #!${shell}
        exec ${nixociBin} copy${skopeoFlag} ${image} -- ${dest}"$@"
      '';

      # Links the image JSON into a running mount's images directory (GC root there), so the
      # image appears at once as MNT/<name>/.
      linkToMount = writeScript "link-to-mount" ''
        #!${shell}
        set -e
        dir=''${1:-''${NIXOCI_IMAGES:-/nix/var/nix/gcroots/nixoci}}
        mkdir -p "$dir"
        ln -sfn ${image} "$dir/.${linkName}.json.tmp"
        mv -f "$dir/.${linkName}.json.tmp" "$dir/${linkName}.json"
        echo "$dir/${linkName}.json -> ${image}"
      '';
    in
    image // {
      inherit imageName imageTag fromImage meta linkToMount;
      # provide a cheap to evaluate image reference (nix2container's)
      imageRefUnsafe = unsafeDiscardStringContext "${imageName}:${imageTag}";
      mountName = linkName;
      copyToRegistry = copyScript "copy-to-registry" "${shellQuote "docker://${imageName}:${imageTag}"} ";
      copyToDockerDaemon = copyScript "copy-to-docker-daemon" "${shellQuote "docker-daemon:${imageName}:${imageTag}"} ";
      copyToPodman = copyScript "copy-to-podman" "${shellQuote "containers-storage:${imageName}:${imageTag}"} ";
      copyTo = copyScript "copy-to" "";
    } // (if initializeNixDatabase then { inherit nixDatabase; } else { });
in
{
  inherit buildImage buildLayer imageFromDir mountName;
  buildImageIndex = import ./image-index.nix { inherit writeJSON; };
}
