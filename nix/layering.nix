# Pure layering functions (no derivations, no IFD), so they can be unit-tested with
# `nix-instantiate --eval --strict`.
#
# A closure graph is a list of entries { path, references, narSize ? 0, ... } as written by
# exportReferencesGraph (structured attrs).
let
  inherit (builtins)
    attrNames catAttrs concatMap elemAt filter foldl' genList genericClosure groupBy
    hasAttr head length lessThan listToAttrs sort stringLength substring;

  sum = foldl' (a: b: a + b) 0;
  take = n: l: genList (elemAt l) (if n < length l then n else length l);
  drop = n: l: genList (i: elemAt l (i + n)) (if n < length l then length l - n else 0);
  min = a: b: if a < b then a else b;
in
rec {
  # nix2container's graph preparation: entries sorted by path, references sorted, and the
  # ignored path dropped (nix2container drops it with jq before building its graph).
  normalizeGraph = { graph, ignore ? [ ] }:
    let
      ignored = listToAttrs (map (p: { name = toString p; value = true; }) ignore);
      keep = p: !(hasAttr p ignored);
    in
    sort (a: b: lessThan a.path b.path) (map
      (e: e // { references = sort lessThan (filter keep e.references); })
      (filter (e: keep e.path) graph));

  # Store paths sorted by popularity exactly as nix2container (closure/popularity.go):
  # popularity = number of distinct paths from the roots (self references dropped);
  # ties go to the higher node id, node ids being assigned in order of first appearance
  # while walking the entries (each entry's path, then its references) in the given order.
  popularityOrder = graph:
    let
      walk = concatMap (e: [ e.path ] ++ e.references) graph;
      # listToAttrs keeps the first occurrence of a name: that is the first-appearance index,
      # which orders nodes exactly like gonum's sequential ids.
      id = listToAttrs (genList (i: { name = elemAt walk i; value = i; }) (length walk));
      parentsList = concatMap
        (e: map (r: { name = r; value = e.path; }) (filter (r: r != e.path) e.references))
        graph;
      parents = builtins.mapAttrs (_: l: catAttrs "value" l) (groupBy (x: x.name) parentsList);
      # Lazy self-referencing attrset = memoised recursion over the DAG.
      pop = builtins.mapAttrs
        (p: _: 1 + sum (map (u: pop.${u}) (parents.${p} or [ ])))
        id;
      scored = map (p: { path = p; score = pop.${p}; id = id.${p}; }) (attrNames id);
    in
    map (s: s.path) (sort
      (a: b: a.score > b.score || (a.score == b.score && a.id > b.id))
      scored);

  # nix2container's split: one path per layer, the last allowed layer takes the rest.
  popularityGroups = maxLayers: paths:
    if paths == [ ] then [ ]
    else if maxLayers <= 1 then [ paths ]
    else [ [ (head paths) ] ] ++ popularityGroups (maxLayers - 1) (drop 1 paths);

  # Size-first layering (in the spirit of nixpkgs' auto-layer): the largest paths seed their
  # own layer together with the dependencies only they use; dependencies shared by several
  # seeds are grouped by their exact set of users; everything no seed uses (usually the small,
  # often-changing top of the closure) goes in one last layer. The number of seeds is the
  # largest that keeps the layer count within maxLayers.
  #   graph: the full closure graph (for reachability); paths: the paths to place.
  sizeGroups = { graph, paths, maxLayers }:
    let
      byPath = listToAttrs (map (e: { name = e.path; value = e; }) graph);
      sizeOf = p: byPath.${p}.narSize or 0;
      candidates = sort
        (a: b: sizeOf a > sizeOf b || (sizeOf a == sizeOf b && lessThan a b))
        paths;
      reach = listToAttrs (map
        (p: {
          name = p;
          value = listToAttrs (map (x: { name = x.key; value = true; }) (genericClosure {
            startSet = [ { key = p; } ];
            operator = x: map (r: { key = r; }) (byPath.${x.key}.references or [ ]);
          }));
        })
        candidates);
      plan = s:
        let
          seeds = take s candidates;
          rest = drop s candidates;
          usersOf = p: filter (seed: hasAttr p reach.${seed}) seeds;
          keyed = map (p: let u = usersOf p; in {
            inherit p;
            key = if u == [ ] then "" else if length u == 1 then head u else builtins.concatStringsSep " " u;
            n = length u;
          }) rest;
          shared = groupBy (x: x.key) (filter (x: x.n > 1) keyed);
          own = groupBy (x: x.key) (filter (x: x.n == 1) keyed);
          loose = map (x: x.p) (filter (x: x.n == 0) keyed);
          groupSize = g: sum (map sizeOf g);
          sharedGroups = sort
            (a: b: a.n > b.n || (a.n == b.n && (a.size > b.size || (a.size == b.size && lessThan (head a.paths) (head b.paths)))))
            (map (k: let ps = map (x: x.p) shared.${k}; in { paths = ps; n = (head shared.${k}).n; size = groupSize ps; }) (attrNames shared));
          seedGroups = map (seed: [ seed ] ++ map (x: x.p) (own.${seed} or [ ])) seeds;
          # Layers left over go to the largest loose paths (loose is in size order), the
          # rest of them staying together on top.
          fixed = map (g: g.paths) sharedGroups ++ seedGroups;
          spare = maxLayers - length fixed - 1;
          peel = if loose == [ ] || spare <= 0 then 0 else min spare (length loose - 1);
          groups = fixed ++ map (p: [ p ]) (take peel loose)
            ++ (if loose == [ ] then [ ] else [ (drop peel loose) ]);
        in
        if s == 0 || length groups <= maxLayers then groups else plan (s - 1);
    in
    if paths == [ ] then [ ] else plan (min (if maxLayers < 1 then 1 else maxLayers) (length candidates));

  # Every layer (unit) of nested buildLayer results, deepest first, each once.
  # key: what makes a layer's bytes (paths + options), so equal layers are listed once.
  uniqueBy = key: list:
    let
      step = acc: x: let k = key x; in
        if hasAttr k acc.seen then acc
        else { seen = acc.seen // { ${k} = true; }; out = acc.out ++ [ x ]; };
    in
    (foldl' step { seen = { }; out = [ ]; } list).out;
}
