//! Which store paths go in which layer, from a closure graph (exportReferencesGraph): the Nix
//! library's layering, done at build time. Popularity layering is nix2container's, to the
//! order of ties (its `closure` package); `layering = "size"` is nixoci's own. Nested layers,
//! `ignore`, copyToRoot rewrites and perms decide which paths a layer lists and how. Pure
//! functions of their inputs: no store access, no I/O.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One store path of a closure graph as structured attrs give it.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct GraphEntry {
    pub path: String,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(rename = "narHash", default)]
    pub nar_hash: String,
    #[serde(rename = "narSize", default)]
    pub nar_size: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rewrite {
    #[serde(default)]
    pub regex: String,
    #[serde(default)]
    pub repl: String,
}

impl Rewrite {
    /// Moves `path`'s contents to `/` (copyToRoot). The regex is `^PATH` as nix2container writes
    /// it, except that `+` and `?`, which store names may hold, are escaped: unescaped, Go reads
    /// `gtk+-3` as a repetition, and the path would silently stay where it is (`.` is left as
    /// it is: it matches itself, so the JSON stays nix2container's for every other path).
    pub fn to_root(path: &str) -> Rewrite {
        let mut regex = String::from("^");
        for c in path.chars() {
            if matches!(c, '+' | '?') {
                regex.push('\\');
            }
            regex.push(c);
        }
        Rewrite { regex, repl: String::new() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    pub regex: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    #[serde(default)]
    pub uname: String,
    #[serde(default)]
    pub gname: String,
}

/// A perms rule for the files under one store path (the library's `perms` argument).
#[derive(Deserialize, Clone, Debug)]
pub struct PermPath {
    pub path: String,
    #[serde(flatten)]
    pub perm: Perm,
}

/// nix2container writes `rewrite` whenever a path has options (Go's omitempty does not drop a
/// struct), so an empty one means none.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathOptions {
    #[serde(default)]
    pub rewrite: Rewrite,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub perms: Vec<Perm>,
}

/// One `paths` item of a layer, in nix2container's JSON shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathItem {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<PathOptions>,
}

impl PathItem {
    /// Options that change nothing are no options: items read from nix2container's JSON and
    /// ours compare equal when they make the same bytes.
    pub fn normalized(mut self) -> PathItem {
        if self.options.as_ref().is_some_and(|o| o.rewrite.regex.is_empty() && o.perms.is_empty()) {
            self.options = None;
        }
        self
    }
    /// Lands at its /nix/store path in the image (not moved by a rewrite).
    pub fn in_store(&self) -> bool {
        self.options.as_ref().is_none_or(|o| o.rewrite.regex.is_empty())
    }
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layering {
    #[default]
    Popularity,
    Size,
}

/// What decides a layer plan besides the graph (buildLayer's and buildImage's arguments).
#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PlanOptions {
    #[serde(default = "one")]
    pub max_layers: i64,
    #[serde(default)]
    pub layering: Layering,
    /// Store paths left out (buildImage's config file).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Store paths whose contents land at / (`^<path>` rewritten to "").
    #[serde(default)]
    pub copy_to_root: Vec<String>,
    #[serde(default)]
    pub perms: Vec<PermPath>,
}

fn one() -> i64 {
    1
}

/// nix2container's graph preparation (a jq filter there): the ignored entries dropped, the rest
/// sorted by path with sorted references. References to an ignored path stay.
fn normalize(graph: &[GraphEntry], ignore: &BTreeSet<&str>) -> Vec<GraphEntry> {
    let mut g: Vec<GraphEntry> = graph.iter().filter(|e| !ignore.contains(e.path.as_str())).cloned().collect();
    for e in &mut g {
        e.references.sort();
        e.references.dedup();
    }
    g.sort_by(|a, b| a.path.cmp(&b.path));
    g
}

/// Store paths by popularity, most popular first, exactly as nix2container orders them.
/// A node's popularity is the number of paths to it from the roots (itself included; self
/// references dropped). Ties go to the higher node id, ids being given in order of first
/// appearance while walking the (normalized) entries: each path, then its references.
/// Counts wrap like Go's int64 so that even absurdly branched graphs order the same.
pub fn popularity_order(graph: &[GraphEntry]) -> Result<Vec<String>, String> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    fn id<'a>(p: &'a str, ids: &mut HashMap<&'a str, usize>, names: &mut Vec<&'a str>) -> usize {
        *ids.entry(p).or_insert_with(|| {
            names.push(p);
            names.len() - 1
        })
    }
    let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
    for e in graph {
        let from = id(&e.path, &mut ids, &mut names);
        for r in &e.references {
            let to = id(r, &mut ids, &mut names);
            if to != from {
                edges.insert((from, to));
            }
        }
    }
    let n = names.len();
    let mut children = vec![Vec::new(); n];
    let mut parents = vec![0usize; n];
    for &(from, to) in &edges {
        children[from].push(to);
        parents[to] += 1;
    }
    // Kahn's topological order: every parent is counted before its children.
    let mut pop = vec![1i64; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| parents[i] == 0).collect();
    let mut done = 0;
    while let Some(v) = ready.pop() {
        done += 1;
        for &u in &children[v] {
            pop[u] = pop[u].wrapping_add(pop[v]);
            parents[u] -= 1;
            if parents[u] == 0 {
                ready.push(u);
            }
        }
    }
    if done != n {
        return Err("the closure graph has a cycle".into());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| pop[b].cmp(&pop[a]).then(b.cmp(&a)));
    Ok(order.into_iter().map(|i| names[i].to_string()).collect())
}

/// The paths a layer lists, in popularity order: ignored ones and those already in a nested
/// layer (same path, same options) left out; copyToRoot paths rewritten to /, perms attached.
pub fn items(graph: &[GraphEntry], opts: &PlanOptions, nested: &[PathItem]) -> Result<Vec<PathItem>, String> {
    let ignore: BTreeSet<&str> = opts.ignore.iter().map(String::as_str).collect();
    let order = popularity_order(&normalize(graph, &ignore))?;
    let nested: HashSet<&PathItem> = nested.iter().collect();
    Ok(order
        .into_iter()
        .filter(|p| !ignore.contains(p.as_str()))
        .map(|p| item(p, opts))
        .filter(|i| !nested.contains(i))
        .collect())
}

fn item(path: String, opts: &PlanOptions) -> PathItem {
    let perms: Vec<Perm> = opts.perms.iter().filter(|p| p.path == path).map(|p| p.perm.clone()).collect();
    let rewrite = opts.copy_to_root.contains(&path).then(|| Rewrite::to_root(&path));
    let options = (rewrite.is_some() || !perms.is_empty()).then(|| PathOptions { rewrite: rewrite.unwrap_or_default(), perms });
    PathItem { path, options }
}

/// The layers of a buildLayer/buildImage: at most maxLayers, every listed path exactly once.
pub fn plan(graph: &[GraphEntry], opts: &PlanOptions, nested: &[PathItem]) -> Result<Vec<Vec<PathItem>>, String> {
    if opts.max_layers < 1 {
        return Err(format!("maxLayers is {}: it must be at least 1", opts.max_layers));
    }
    let max = opts.max_layers as usize;
    let listed = items(graph, opts, nested)?;
    Ok(match opts.layering {
        Layering::Popularity => popularity_groups(listed, max),
        Layering::Size => size_groups(graph, listed, max),
    })
}

/// nix2container's split: one path per layer, the last allowed layer takes the rest.
pub fn popularity_groups(items: Vec<PathItem>, max: usize) -> Vec<Vec<PathItem>> {
    let mut groups: Vec<Vec<PathItem>> = Vec::new();
    for i in items {
        if groups.len() < max {
            groups.push(vec![i]);
        } else {
            groups.last_mut().unwrap().push(i);
        }
    }
    groups
}

/// Size-first layering (in the spirit of nixpkgs' auto-layering): the largest paths seed a layer
/// each, together with the dependencies only they use; dependencies several seeds share are
/// grouped by their exact set of users; what no seed uses (usually the small, often changing
/// top of the closure) goes on top, the largest of it peeled into layers of its own while some
/// are left. The number of seeds is the largest that keeps the count within `max`.
pub fn size_groups(graph: &[GraphEntry], items: Vec<PathItem>, max: usize) -> Vec<Vec<PathItem>> {
    if items.is_empty() {
        return Vec::new();
    }
    let by_path: HashMap<&str, &GraphEntry> = graph.iter().map(|e| (e.path.as_str(), e)).collect();
    let size = |p: &str| by_path.get(p).map_or(0, |e| e.nar_size);
    let mut candidates: Vec<&PathItem> = items.iter().collect();
    candidates.sort_by(|a, b| size(&b.path).cmp(&size(&a.path)).then(a.path.cmp(&b.path)));
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(p) = todo.pop() {
            if let Some(e) = by_path.get(p.as_str()) {
                todo.extend(e.references.iter().filter(|r| !seen.contains(*r)).cloned());
            }
            seen.insert(p);
        }
        seen
    };
    let reaches: Vec<BTreeSet<String>> = candidates.iter().map(|c| reach(&c.path)).collect();
    let mut seeds = max.min(candidates.len());
    loop {
        let groups = size_plan(&candidates, &reaches, seeds, max, &size);
        if seeds == 0 || groups.len() <= max {
            return groups.into_iter().map(|g| g.into_iter().cloned().collect()).collect();
        }
        seeds -= 1;
    }
}

fn size_plan<'a>(
    candidates: &[&'a PathItem],
    reaches: &[BTreeSet<String>],
    seeds: usize,
    max: usize,
    size: &dyn Fn(&str) -> u64,
) -> Vec<Vec<&'a PathItem>> {
    let (seed_items, rest) = candidates.split_at(seeds);
    let mut own: Vec<Vec<&PathItem>> = vec![Vec::new(); seeds];
    let mut shared: BTreeMap<Vec<usize>, Vec<&PathItem>> = BTreeMap::new();
    let mut loose = Vec::new();
    for &c in rest {
        let users: Vec<usize> = (0..seeds).filter(|&s| reaches[s].contains(&c.path)).collect();
        match users.len() {
            0 => loose.push(c),
            1 => own[users[0]].push(c),
            _ => shared.entry(users).or_default().push(c),
        }
    }
    // Shared groups: most users first, then largest, then by first path.
    let mut shared: Vec<(usize, u64, Vec<&PathItem>)> =
        shared.into_iter().map(|(users, g)| (users.len(), g.iter().map(|i| size(&i.path)).sum(), g)).collect();
    shared.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2[0].path.cmp(&b.2[0].path)));
    let mut groups: Vec<Vec<&PathItem>> = shared.into_iter().map(|s| s.2).collect();
    for (seed, mine) in seed_items.iter().zip(own) {
        groups.push(std::iter::once(*seed).chain(mine).collect());
    }
    let spare = max as i64 - groups.len() as i64 - 1;
    let peel = if loose.is_empty() || spare <= 0 { 0 } else { (spare as usize).min(loose.len() - 1) };
    let top = loose.split_off(peel);
    groups.extend(loose.into_iter().map(|i| vec![i]));
    if !top.is_empty() {
        groups.push(top);
    }
    groups
}

/// `nix-store --load-db` input registering `present` (sorted by path), each with its narHash,
/// narSize and the references that are present too (so the database is consistent).
pub fn registration(present: &BTreeSet<String>, graph: &[GraphEntry]) -> Result<String, String> {
    let by_path: HashMap<&str, &GraphEntry> = graph.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = String::new();
    for p in present {
        let e = by_path.get(p.as_str()).ok_or_else(|| format!("{p} is in the image but not in the closure graph"))?;
        let mut refs: Vec<&String> = e.references.iter().filter(|r| present.contains(*r)).collect();
        refs.sort();
        refs.dedup();
        out += &format!("{p}\n{}\n{}\n\n{}\n", e.nar_hash, e.nar_size, refs.len());
        for r in refs {
            out += &format!("{r}\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_to_root_moves_store_names_with_regex_characters() {
        for name in ["/nix/store/aaa-busybox-1.35", "/nix/store/aaa-gtk+-3.24", "/nix/store/aaa-libsigc++-2.12", "/nix/store/aaa-x?y"] {
            let rw = Rewrite::to_root(name);
            let go = crate::goregex::Rewrite::new(&rw.regex, &rw.repl).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&*go.apply(name.as_bytes()), b"", "{name}");
            assert_eq!(&*go.apply(format!("{name}/bin/sh").as_bytes()), b"/bin/sh", "{name}");
        }
        assert_eq!(Rewrite::to_root("/nix/store/aaa-busybox-1.35").regex, "^/nix/store/aaa-busybox-1.35", "nix2container's regex where it works");
    }

    fn graph(spec: &[(&str, &[&str], u64)]) -> Vec<GraphEntry> {
        spec.iter()
            .map(|(p, refs, size)| GraphEntry {
                path: p.to_string(),
                references: refs.iter().map(|r| r.to_string()).collect(),
                nar_size: *size,
                ..Default::default()
            })
            .collect()
    }

    fn opts(max: i64, layering: Layering) -> PlanOptions {
        PlanOptions { max_layers: max, layering, ignore: vec![], copy_to_root: vec![], perms: vec![] }
    }

    fn paths(groups: &[Vec<PathItem>]) -> Vec<Vec<&str>> {
        groups.iter().map(|g| g.iter().map(|i| i.path.as_str()).collect()).collect()
    }

    /// vectors.md §1 TestPopularities, given in that order.
    #[test]
    fn popularity_matches_nix2container_vector() {
        let g = graph(&[
            ("A", &["A", "B", "G"], 0),
            ("B", &["B", "C", "E"], 0),
            ("C", &["C", "D", "E"], 0),
            ("D", &["D", "F"], 0),
            ("E", &["E", "F"], 0),
            ("F", &["F"], 0),
            ("G", &["G"], 0),
        ]);
        assert_eq!(popularity_order(&g).unwrap(), ["F", "E", "D", "C", "G", "B", "A"]);
        let groups = plan(&g, &opts(3, Layering::Popularity), &[]).unwrap();
        assert_eq!(paths(&groups), vec![vec!["F"], vec!["E"], vec!["D", "C", "G", "B", "A"]]);
    }

    /// vectors.md §2: the app closure (and buildImage's config file, ignored) with maxLayers = 3
    /// gives busybox, python, app: busybox and python tie at 2 and busybox has the higher id.
    #[test]
    fn app_closure_gives_the_vectors_layers() {
        let busybox = "/nix/store/jsbqqbm6qck84p3bzm8vga5gpr6fcnw1-busybox-1.35";
        let python = "/nix/store/h4w5vqsb839za2799hqvwzgr9badadz9-python-3.11.7";
        let app = "/nix/store/zln2lyd6738w8ibzhzic2pgf4j80k0ir-app";
        let config = "/nix/store/0dnlzfy2dwv4i5pkzaxphnnvdv3b1hg8-config.json";
        let g = graph(&[(config, &[app], 1), (app, &[python, busybox], 1), (python, &[], 1), (busybox, &[], 1)]);
        let mut o = opts(3, Layering::Popularity);
        o.ignore = vec![config.into()];
        assert_eq!(paths(&plan(&g, &o, &[]).unwrap()), vec![vec![busybox], vec![python], vec![app]]);
    }

    /// Random DAGs (edges only towards lower indexes, self references added), random sizes.
    fn random_graph(rng: &mut u64, n: usize) -> Vec<GraphEntry> {
        let mut next = |m: u64| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng % m
        };
        (0..n)
            .map(|i| {
                let mut refs = BTreeSet::from([format!("p{i:03}")]);
                if i > 0 {
                    for _ in 0..next(4) {
                        refs.insert(format!("p{:03}", next(i as u64)));
                    }
                }
                let size = if next(5) == 0 { 1_000_000 + next(900_000_000) } else { 100 + next(100_000) };
                GraphEntry { path: format!("p{i:03}"), references: refs.into_iter().collect(), nar_size: size, ..Default::default() }
            })
            .collect()
    }

    #[test]
    fn random_graphs_stay_within_max_layers_and_place_every_path_once() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        for n in [1usize, 2, 5, 12, 40, 120, 400] {
            let g = random_graph(&mut rng, n);
            for max in [1i64, 2, 3, 5, 8, 100] {
                for layering in [Layering::Popularity, Layering::Size] {
                    let groups = plan(&g, &opts(max, layering), &[]).unwrap();
                    let what = format!("{layering:?}, {n} paths, maxLayers {max}");
                    assert!(!groups.is_empty() && groups.len() <= max as usize, "{what}: {} layers", groups.len());
                    assert!(groups.iter().all(|l| !l.is_empty()), "{what}: an empty layer");
                    let mut seen = BTreeMap::new();
                    for p in groups.iter().flatten() {
                        *seen.entry(p.path.clone()).or_insert(0) += 1;
                    }
                    assert_eq!(seen.len(), n, "{what}: not every path placed");
                    assert!(seen.values().all(|c| *c == 1), "{what}: a path placed twice");
                }
            }
        }
    }

    #[test]
    fn size_layering_gives_the_largest_paths_their_own_layers() {
        // app (small) -> python (big) -> libc (medium), tiny; app -> busybox (medium) -> tiny
        let g = graph(&[
            ("app", &["python", "busybox"], 10),
            ("python", &["libc", "tiny"], 600),
            ("libc", &[], 30),
            ("busybox", &["tiny"], 20),
            ("tiny", &[], 1),
        ]);
        // 4 or 3 seeds need a fifth layer (tiny, shared, apart): 2 seeds (python with tiny, its
        // own dependency; libc); the spare layer goes to the largest loose path, app on top.
        let groups = plan(&g, &opts(4, Layering::Size), &[]).unwrap();
        assert_eq!(paths(&groups), vec![vec!["python", "tiny"], vec!["libc"], vec!["busybox"], vec!["app"]]);
    }

    #[test]
    fn nested_paths_are_left_out_and_options_make_an_item() {
        let g = graph(&[("/r", &["/a", "/b"], 1), ("/a", &["/c"], 1), ("/b", &["/c"], 1), ("/c", &[], 1)]);
        let nested = vec![PathItem { path: "/c".into(), options: None }, PathItem { path: "/a".into(), options: None }];
        let mut o = opts(10, Layering::Popularity);
        o.copy_to_root = vec!["/r".into()];
        o.perms = vec![PermPath {
            path: "/b".into(),
            perm: Perm { regex: ".*".into(), mode: "0700".into(), uid: 1, gid: 2, uname: String::new(), gname: String::new() },
        }];
        let groups = plan(&g, &o, &nested).unwrap();
        assert_eq!(paths(&groups), vec![vec!["/b"], vec!["/r"]], "/a and /c are in a nested layer");
        let json = serde_json::to_string(&groups).unwrap();
        assert_eq!(
            json,
            r#"[[{"path":"/b","options":{"rewrite":{"regex":"","repl":""},"perms":[{"regex":".*","mode":"0700","uid":1,"gid":2,"uname":"","gname":""}]}}],[{"path":"/r","options":{"rewrite":{"regex":"^/r","repl":""}}}]]"#
        );
        // The same path with other options is another item: it is not left out.
        let rewritten = vec![PathItem { path: "/c".into(), options: Some(PathOptions { rewrite: Rewrite { regex: "^/c".into(), repl: String::new() }, perms: vec![] }) }];
        assert!(paths(&plan(&g, &o, &rewritten).unwrap()).concat().contains(&"/c"));
        // An empty options object (as nix2container writes it) is no options.
        let empty: PathItem = serde_json::from_str(r#"{"path":"/c","options":{"rewrite":{"regex":"","repl":""}}}"#).unwrap();
        assert!(!paths(&plan(&g, &o, &[empty.normalized()]).unwrap()).concat().contains(&"/c"));
    }

    #[test]
    fn ignored_paths_are_left_out_but_still_counted_as_referenced() {
        let g = graph(&[("/cfg", &["/x"], 1), ("/x", &["/y"], 1), ("/y", &[], 1)]);
        let mut o = opts(5, Layering::Popularity);
        o.ignore = vec!["/cfg".into()];
        assert_eq!(paths(&plan(&g, &o, &[]).unwrap()), vec![vec!["/y"], vec!["/x"]]);
    }

    #[test]
    fn bad_max_layers_and_cycles_are_refused() {
        let g = graph(&[("/a", &["/b"], 1), ("/b", &["/a"], 1)]);
        assert!(plan(&g, &opts(0, Layering::Popularity), &[]).unwrap_err().contains("maxLayers"));
        assert!(plan(&g, &opts(1, Layering::Popularity), &[]).unwrap_err().contains("cycle"));
    }

    #[test]
    fn registration_keeps_references_within_the_image() {
        let mut g = graph(&[("/nix/store/a", &["/nix/store/a", "/nix/store/b", "/nix/store/c"], 120), ("/nix/store/b", &[], 8)]);
        g[0].nar_hash = "sha256:aaa".into();
        g[1].nar_hash = "sha256:bbb".into();
        let present = BTreeSet::from(["/nix/store/a".to_string(), "/nix/store/b".to_string()]);
        assert_eq!(
            registration(&present, &g).unwrap(),
            "/nix/store/a\nsha256:aaa\n120\n\n2\n/nix/store/a\n/nix/store/b\n/nix/store/b\nsha256:bbb\n8\n\n0\n"
        );
        let missing = BTreeSet::from(["/nix/store/z".to_string()]);
        assert!(registration(&missing, &g).unwrap_err().contains("/nix/store/z"));
    }
}
