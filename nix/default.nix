# nixoci's Nix library: buildImage / buildLayer writing nix2container's image JSON v1.
#
#   nixoci: the nixoci package (a derivation with bin/nixoci) or a path to the binary.
#   pkgs:   nixpkgs, optional. Without it, builders use the host's /bin/sh and /usr/bin tools
#           (unsandboxed builds only), which is how it is tested without nixpkgs.
#
# How the graph work is done, and why: closures come from exportReferencesGraph with
# structured attrs (the only form that carries narHash/narSize, needed for sizes and the Nix
# database). A tiny derivation copies `.attrs.json` and Nix reads it back (import from
# derivation); layering then happens in Nix itself (./layering.nix). That needs no jq, python
# or Go at build time, so it works with nothing but /bin/sh, and it lets every layer be its
# own derivation whose inputs are only its own store paths: a change re-hashes only the
# layers whose paths changed.
{ nixoci
, pkgs ? null
, system ? if pkgs != null then pkgs.stdenv.hostPlatform.system else builtins.currentSystem
}:
let
  inherit (builtins)
    attrNames concatMap concatStringsSep elem filter foldl' fromJSON hasAttr head isAttrs
    isList isString length listToAttrs mapAttrs readFile replaceStrings sort split
    substring stringLength toJSON unsafeDiscardStringContext;

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = replaceStrings upper lower;

  L = import ./layering.nix;

  toList = x: if x == null then [ ] else if isList x then x else [ x ];
  optional = c: x: if c then [ x ] else [ ];
  optionalString = c: s: if c then s else "";

  nixociBin =
    if isAttrs nixoci then "${nixoci}/bin/nixoci"
    # A plain path (e.g. cargo's target/debug/nixoci) is copied into the store so that the
    # derivations depend on it.
    else "${builtins.path { path = nixoci; name = "nixoci"; }}";

  # GOARCH of a Nix system, as nix2container writes it.
  goArch = sys: {
    "x86_64" = "amd64"; "aarch64" = "arm64"; "i686" = "386"; "armv7l" = "arm";
    "armv6l" = "arm"; "powerpc64le" = "ppc64le"; "riscv64" = "riscv64"; "s390x" = "s390x";
  }.${head (split "-" sys)} or (head (split "-" sys));

  # Builders: nixpkgs' tools when we have them, else the host's (unsandboxed Nix only).
  toolPath =
    if pkgs != null
    then "${pkgs.coreutils}/bin:${pkgs.gnused}/bin:${pkgs.gnugrep}/bin:${pkgs.findutils}/bin"
    else "/usr/bin:/bin";
  shell = if pkgs != null then pkgs.runtimeShell else "/bin/sh";
  dbToolPath =
    if pkgs != null then "${pkgs.nix}/bin:${pkgs.sqlite}/bin:${toolPath}" else toolPath;

  run = name: env: script: derivation ({
    inherit name system;
    builder = shell;
    args = [ "-c" script ];
    PATH = toolPath;
  } // env);

  # A JSON text file; its output references exactly the store paths the text mentions.
  writeJSON = name: text: run name { inherit text; passAsFile = [ "text" ]; }
    ''cp "$textPath" "$out"'';

  # Closure graph of `paths` (list of { path, narHash, narSize, references }), read back by
  # import-from-derivation.
  closureGraph = name: paths:
    let
      drv = derivation {
        name = "${name}-graph.json";
        inherit system;
        builder = shell;
        __structuredAttrs = true;
        exportReferencesGraph.graph = paths;
        # Structured attrs give no $out variable: take the output path from .attrs.json.
        args = [ "-c" ''
          export PATH=${toolPath}
          out=$(sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' "$NIX_ATTRS_JSON_FILE")
          cp "$NIX_ATTRS_JSON_FILE" "$out"
        '' ];
      };
    in
    if paths == [ ] then [ ] else (fromJSON (unsafeDiscardStringContext (readFile drv))).graph;

  # A string carrying the store path `p` as context, from a path string that lost it
  # (strings read back from the graph have no context).
  withContext = p: builtins.appendContext p { ${p} = { path = true; }; };

  historyJSON = m:
    let
      keys = [ "created" "created_by" "author" "comment" "empty_layer" ];
      present = filter (k: hasAttr k m && m.${k} != null && m.${k} != "" && m.${k} != false) keys;
    in
    "{" + concatStringsSep "," (map (k: "${toJSON k}:${toJSON m.${k}}") present) + "}";

  permJSON = p: "{" + concatStringsSep "," [
    "\"regex\":${toJSON (p.regex or "")}"
    "\"mode\":${toJSON (p.mode or "")}"
    "\"uid\":${toJSON (p.uid or 0)}"
    "\"gid\":${toJSON (p.gid or 0)}"
    "\"uname\":${toJSON (p.uname or "")}"
    "\"gname\":${toJSON (p.gname or "")}"
  ] + "}";

  # A `paths` element, in nix2container's key order.
  pathJSON = e:
    let
      opts = optional (e.rewrite != null)
          "\"rewrite\":{\"regex\":${toJSON e.rewrite.regex},\"repl\":${toJSON e.rewrite.repl}}"
        ++ optional (e.perms != [ ]) "\"perms\":[${concatStringsSep "," (map permJSON e.perms)}]";
    in
    "{\"path\":${toJSON e.path}"
    + optionalString (opts != [ ]) ",\"options\":{${concatStringsSep "," opts}}" + "}";

  layerMediaType = "application/vnd.oci.image.layer.v1.tar";

  # One layer = one derivation: `nixoci digest` hashes exactly this layer. Its inputs are the
  # layer's own store paths (plus nixoci and the text), nothing else.
  # Output: $out/layer.json, one layer object of the image JSON, digest and size filled.
  mkUnit = { entries, history, reproducible, arch, created }:
    let
      pathsText = "[" + concatStringsSep "," (map pathJSON entries) + "]";
      tail = ",\"paths\":${pathsText},\"mediatype\":\"${layerMediaType}\",\"History\":${historyJSON history}}";
      description =
        "{\"version\":1,\"image-config\":{},\"layers\":[{\"digest\":\"\",\"size\":0,\"diff_ids\":\"\""
        + tail + "],\"arch\":${toJSON arch},\"created\":${toJSON created}}";
      first = head entries;
      baseName = p: let m = builtins.match "/nix/store/[a-z0-9]{32}-(.*)" p; in if m == null then "path" else head m;
      name = "layer-${baseName first.path}" + optionalString (length entries > 1) "-and-${toString (length entries - 1)}";
    in
    run name {
      inherit description;
      template = "{\"digest\":\"@digest@\",\"size\":@size@,\"diff_ids\":\"@digest@\""
        + optionalString (!reproducible) ",\"layer-path\":\"@layerpath@\"" + tail;
      passAsFile = [ "description" "template" ];
      storePaths = map (e: e.ctx or (withContext e.path)) entries;
      nixoci = nixociBin;
    } ''
      set -e
      export XDG_CACHE_HOME="$TMPDIR/cache" HOME="$TMPDIR"
      mkdir -p "$out"
      layerpath=
      ${if reproducible then ''
        "$nixoci" digest "$descriptionPath" > described.json
        digest=$(grep -o '"digest": *"sha256:[0-9a-f]\{64\}"' described.json | head -n 1 | grep -o 'sha256:[0-9a-f]*')
        size=$(grep -o '"size": *[0-9][0-9]*' described.json | head -n 1 | grep -o '[0-9]*$')
      '' else ''
        # Not bit-reproducible: keep the very bytes whose digest is recorded.
        "$nixoci" export --format dir "$descriptionPath" "$TMPDIR/export"
        blob=$(tr -d ' \t\n' < "$TMPDIR/export/manifest.json" | sed 's/.*"layers":\[//' \
          | grep -o 'sha256:[0-9a-f]\{64\}' | head -n 1)
        cp "$TMPDIR/export/''${blob#sha256:}" "$out/layer.tar"
        digest=sha256:$(sha256sum "$out/layer.tar" | cut -c 1-64)
        size=$(wc -c < "$out/layer.tar")
        layerpath="$out/layer.tar"
      ''}
      if [ -z "$digest" ] || [ -z "$size" ]; then
        echo "nixoci gave no digest/size" >&2; cat described.json >&2; exit 1
      fi
      sed -e "s|@digest@|$digest|g" -e "s|@size@|$size|" -e "s|@layerpath@|$layerpath|" \
        "$templatePath" > "$out/layer.json"
    '';

  # Concatenate layer objects ($unit/layer.json) into a JSON array; `pre`/`post` wrap it.
  assemble = name: { pre, post, units }: run name {
    inherit pre post;
    units = map (u: "${u}/layer.json") units;
    passAsFile = [ "pre" "post" ];
  } ''
    set -e
    {
      cat "$prePath"
      sep=
      for f in $units; do printf '%s' "$sep"; cat "$f"; sep=,; done
      cat "$postPath"
    } > "$out"
  '';

  keyOf = u: u.nixociKey;

  buildLayer =
    { deps ? [ ]
    , copyToRoot ? null
    , ignore ? null
    , layers ? [ ]
    , reproducible ? true
    , perms ? [ ]
    , maxLayers ? 1
    , metadata ? { created_by = "nixoci"; }
    # "popularity" (nix2container's) or "size" (size-first, see ./layering.nix)
    , layering ? "popularity"
    , arch ? goArch system
    , created ? "0001-01-01T00:00:00Z"
    # derivation names
    , name ? "layer"
    }:
    let
      copyToRootList = toList copyToRoot;
      roots = deps ++ copyToRootList;
      ignoreList = map (p: unsafeDiscardStringContext (toString p)) (toList ignore);

      # Every layer nested below, deepest first, once. A path already in ANY of them is not
      # repeated here (nix2container only looks at direct children).
      nestedUnits = L.uniqueBy keyOf (concatMap (l: l.nixociUnits) layers);
      inNested = listToAttrs (concatMap (u: map (e: { name = e.key; value = true; }) u.nixociEntries) nestedUnits);

      graph = L.normalizeGraph { graph = closureGraph name roots; ignore = ignoreList; };
      byPath = listToAttrs (map (e: { name = e.path; value = e; }) graph);
      rootStrs = map (p: unsafeDiscardStringContext (toString p)) copyToRootList;
      permsFor = p: map (x: removeAttrs x [ "path" ])
        (filter (x: unsafeDiscardStringContext (toString x.path) == p) perms);
      entryOf = p: rec {
        path = p;
        rewrite = if elem p rootStrs then { regex = "^${p}"; repl = ""; } else null;
        perms = permsFor p;
        key = pathJSON { inherit path rewrite perms; };
        present = rewrite == null; # lands at its /nix/store path in the image
      };
      ordered = L.popularityOrder graph;
      entries = filter (e: !(hasAttr e.key inNested)) (map entryOf ordered);
      entryByPath = listToAttrs (map (e: { name = e.path; value = e; }) entries);

      groups =
        if layering == "popularity" then L.popularityGroups maxLayers (map (e: e.path) entries)
        else if layering == "size" then
          L.sizeGroups { inherit graph maxLayers; paths = map (e: e.path) entries; }
        else throw "nixoci.buildLayer: layering must be \"popularity\" or \"size\", not ${toString layering}";

      mkGroupUnit = ps:
        let es = map (p: entryByPath.${p}) ps; in
        mkUnit { entries = es; history = metadata; inherit reproducible arch created; } // {
          nixociKey = concatStringsSep "," (map (e: e.key) es);
          nixociEntries = es;
          # registration data of the paths that exist under /nix/store in the image
          nixociGraph = map (e: byPath.${e.path}) (filter (e: e.present) es);
        };
      ownUnits = map mkGroupUnit groups;

      # nix2container's output shape: $out/layers.json, a JSON array of this layer's layers.
      out = run "layers" {
        json = assemble "layers.json" { pre = "["; post = "]"; units = ownUnits; };
      } ''mkdir -p "$out"; cp "$json" "$out/layers.json"'';
    in
    out // {
      # this layer's layers after every nested one
      nixociUnits = L.uniqueBy keyOf (nestedUnits ++ ownUnits);
      nixociOwnUnits = ownUnits;
      # nix2container compatibility
      nestedLayers = concatMap (l: l.nestedLayers or [ ]) layers ++ layers;
    };

  # Canonical OCI config key names, so `entrypoint` (as nix2container examples write it, Go
  # being case-insensitive) and `Entrypoint` are the same key when merging.
  configKeys = [ "User" "ExposedPorts" "Env" "Entrypoint" "Cmd" "Volumes" "WorkingDir"
    "Labels" "StopSignal" "ArgsEscaped" "Healthcheck" "OnBuild" "Shell" ];
  canonical = listToAttrs (map (k: { name = toLower k; value = k; }) configKeys);
  normalizeConfig = c: listToAttrs (map
    (k: { name = canonical.${toLower k} or k; value = c.${k}; })
    (attrNames c));

  envName = e: head (split "=" e);
  # The base image's config under the new one, as a Dockerfile FROM does: Env merged by
  # variable name, Labels/ExposedPorts/Volumes merged, other keys replaced; setting
  # Entrypoint without Cmd drops the base Cmd.
  mergeConfig = base: new:
    let
      b = normalizeConfig base; n = normalizeConfig new;
      newEnvNames = map envName (n.Env or [ ]);
      env = filter (e: !(elem (envName e) newEnvNames)) (b.Env or [ ]) ++ (n.Env or [ ]);
      mergeSet = k: optional (hasAttr k b || hasAttr k n) { name = k; value = (b.${k} or { }) // (n.${k} or { }); };
      b' = if hasAttr "Entrypoint" n && !(hasAttr "Cmd" n) then removeAttrs b [ "Cmd" ] else b;
    in
    b' // n // listToAttrs (optional (env != [ ]) { name = "Env"; value = env; }
      ++ concatMap mergeSet [ "Labels" "ExposedPorts" "Volumes" ]);

  # Nix database registering exactly the store paths present in the image (not the
  # copyToRoot ones, which land at / and are not in /nix/store: nix2container bug #165).
  # References are kept within that set so the database stays consistent.
  makeNixDatabase = graph:
    let
      paths = sort builtins.lessThan (map (e: e.path) graph);
      present = listToAttrs (map (p: { name = p; value = true; }) paths);
      byPath = listToAttrs (map (e: { name = e.path; value = e; }) graph);
      reg = concatStringsSep "" (map (p:
        let e = byPath.${p}; refs = filter (r: hasAttr r present) e.references; in
        "${p}\n${e.narHash}\n${toString e.narSize}\n\n${toString (length refs)}\n"
        + concatStringsSep "" (map (r: "${r}\n") refs)) paths);
    in
    derivation {
      name = "nix-database";
      inherit system;
      builder = shell;
      PATH = dbToolPath;
      registration = reg;
      passAsFile = [ "registration" ];
      storePaths = map withContext paths;
      args = [ "-c" ''
        set -e
        root=$TMPDIR/root
        mkdir -p "$root"
        NIX_REMOTE="local?root=$root" nix-store --load-db < "$registrationPath"
        db=$root/nix/var/nix/db/db.sqlite
        # Reproducible: no registration time, and a fresh database from a dump.
        sqlite3 "$db" 'UPDATE ValidPaths SET registrationTime = 0'
        sqlite3 "$db" .dump > db.dump
        mkdir -p "$out/nix/var/nix/db" "$out/nix/var/nix/gcroots/docker" "$out/nix/store/.links"
        sqlite3 "$out/nix/var/nix/db/db.sqlite" '.read db.dump'
        for p in $storePaths; do ln -s "$p" "$out/nix/var/nix/gcroots/docker/"; done
      '' ];
    };

  # Reads a description (nix2container or ours) at evaluation time.
  readDescription = d: fromJSON (unsafeDiscardStringContext (readFile d));

  # A description of an image stored as a skopeo `dir:` layout (e.g. a fixed-output
  # `skopeo copy docker://… dir:$out`), usable as fromImage. Unlike nix2container's
  # image-from-dir it keeps the image's config, so fromImage can merge it.
  imageFromDir = dir:
    let
      readJSON = f: fromJSON (unsafeDiscardStringContext (readFile f));
      manifest = readJSON "${dir}/manifest.json";
      hexOf = d: builtins.elemAt (split ":" d) 2;
      config = readJSON "${dir}/${hexOf manifest.config.digest}";
      history = filter (h: !(h.empty_layer or false)) (config.history or [ ]);
      mediaType = t: {
        "application/vnd.docker.image.rootfs.diff.tar" = layerMediaType;
        "application/vnd.docker.image.rootfs.diff.tar.gzip" = "application/vnd.oci.image.layer.v1.tar+gzip";
      }.${t} or t;
      layer = i: l: {
        inherit (l) digest size;
        diff_ids = builtins.elemAt config.rootfs.diff_ids i;
        mediatype = mediaType (l.mediaType or layerMediaType);
        "layer-path" = "${dir}/${hexOf l.digest}";
        History = if i < length history then builtins.elemAt history i else { };
      };
    in
    writeJSON "image-from-dir.json" (toJSON {
      version = 1;
      "image-config" = config.config or { };
      layers = builtins.genList (i: layer i (builtins.elemAt manifest.layers i)) (length manifest.layers);
      arch = config.architecture or (goArch system);
      created = config.created or null;
    });

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
    }:
    let
      base = if fromImage == null || fromImage == "" then null else readDescription fromImage;
      fullConfig = if base == null then normalizeConfig config
        else mergeConfig (base."image-config" or { }) config;
      configFile = writeJSON "config.json" (toJSON config);
      copyToRootList = toList copyToRoot;

      common = { inherit maxLayers perms layers layering metadata arch created; };
      customization = buildLayer (common // {
        name = "image-${mountName name}";
        deps = [ configFile ];
        ignore = configFile;
        copyToRoot = copyToRootList;
      });
      units0 = customization.nixociUnits;

      # The database covers every store path present in the image; it goes into the last
      # layer so the layer count stays within maxLayers.
      nixDatabase = makeNixDatabase (concatMap (u: u.nixociGraph) units0);
      dbEntry = {
        path = unsafeDiscardStringContext (toString nixDatabase);
        ctx = "${nixDatabase}";
        rewrite = { regex = "^${dbEntry.path}"; repl = ""; };
        perms = [ { regex = ".*"; mode = "0755"; uid = nixUid; gid = nixGid; } ];
      };
      own = customization.nixociOwnUnits;
      lastOwn = if own == [ ] then null else builtins.elemAt own (length own - 1);
      dbUnit = mkUnit {
        entries = (if lastOwn == null then [ ] else lastOwn.nixociEntries) ++ [ dbEntry ];
        history = metadata; reproducible = true; inherit arch created;
      };
      units =
        if !initializeNixDatabase then units0
        else if lastOwn == null then units0 ++ [ dbUnit ]
        else filter (u: u.nixociKey != lastOwn.nixociKey) units0 ++ [ dbUnit ];

      # Base layers first, as they are (digests given, or computed lazily by nixoci).
      baseLayers = if base == null then [ ] else base.layers or [ ];
      tagJSON = optionalString (tag != null) ",\"tag\":${toJSON tag}";
      platformJSON = optionalString (os != null) ",\"os\":${toJSON os}"
        + optionalString (variant != null) ",\"variant\":${toJSON variant}";

      image = assemble "image-${mountName name}-raw.json" {
        pre = "{\"version\":1,\"image-config\":${toJSON fullConfig},\"layers\":["
          + concatStringsSep "," (map toJSON baseLayers)
          + optionalString (baseLayers != [ ] && units != [ ]) ",";
        post = "],\"arch\":${toJSON arch}${platformJSON},\"created\":${toJSON created}${tagJSON}}";
        inherit units;
      };
      # Pretty-print through nixoci (tab-indented like nix2container); every digest is given,
      # so nothing is hashed again here.
      final = run "image-${mountName name}.json" {
        raw = image;
        nixoci = nixociBin;
      } ''
        set -e
        export XDG_CACHE_HOME="$TMPDIR/cache" HOME="$TMPDIR"
        "$nixoci" digest "$raw" > "$out"
      '';

      imageName = toLower name;
      hashPart = head (split "-" (baseNameOf (unsafeDiscardStringContext final.outPath)));
      imageTag = if tag != null then tag else hashPart;
      linkName = mountName imageName;
      # Links the image JSON into a running mount's images directory (GC root there), so the
      # image appears at once as MNT/<name>/.
      linkToMount = run "nixoci-link-${linkName}" {
        script = ''
          #!${shell}
          set -e
          dir=''${1:-''${NIXOCI_IMAGES:-/nix/var/nix/gcroots/nixoci}}
          mkdir -p "$dir"
          ln -sfn ${final} "$dir/.${linkName}.json.tmp"
          mv -f "$dir/.${linkName}.json.tmp" "$dir/${linkName}.json"
          echo "$dir/${linkName}.json -> ${final}"
        '';
        passAsFile = [ "script" ];
      } ''
        set -e
        mkdir -p "$out/bin"
        cp "$scriptPath" "$out/bin/link-to-mount"
        chmod +x "$out/bin/link-to-mount"
      '';
    in
    final // {
      inherit imageName imageTag fromImage meta linkToMount nixDatabase;
      imageRefUnsafe = unsafeDiscardStringContext "${imageName}:${imageTag}";
      mountName = linkName;
      nixociUnits = units;
      layers = units;
    };
in
{
  inherit buildImage buildLayer imageFromDir mergeConfig mountName;
  buildImageIndex = import ./image-index.nix { inherit writeJSON; };
  layering = L;
  inherit closureGraph;
}
