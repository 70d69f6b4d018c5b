//! `nixoci plan`: the builder of the Nix library's derivations (nix/default.nix). Nix gives the
//! build its structured attrs (`$NIX_ATTRS_JSON_FILE`): closure graphs from
//! exportReferencesGraph (path, narHash, narSize, references) and the library's arguments under
//! `nixoci`, whose `kind` says what to write to the output:
//!   layers          a buildLayer: `$out/layers.json`, nix2container's layers with their digests
//!   image           a buildImage: the image description, base image and nested layers included
//!   registration    the Nix database registration of the store paths an image holds
//!   image-from-dir  a description of a skopeo `dir:` layout (a pulled base image)
//! So all the work happens at build time and evaluation never reads a build result.

use crate::commands::{fill_digests, pretty, write_layer_tar};
use crate::description::{Description, LAYER_TAR};
use crate::digest::DigestCache;
use crate::plan::{self, GraphEntry, PathItem, PathOptions, Perm, PlanOptions, Rewrite};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Deserialize)]
struct Attrs {
    outputs: BTreeMap<String, String>,
    /// exportReferencesGraph.graph: the closure of what the layers hold.
    #[serde(default)]
    graph: Vec<GraphEntry>,
    /// exportReferencesGraph.nestedGraph: the closure of the nested layers (registration only).
    #[serde(default, rename = "nestedGraph")]
    nested_graph: Vec<GraphEntry>,
    nixoci: Value,
}

/// The layer arguments buildLayer and buildImage share.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayerArgs {
    #[serde(flatten)]
    plan: PlanOptions,
    /// Output directories of every nested buildLayer (each holds layers.json), deepest first.
    #[serde(default)]
    layers: Vec<String>,
    /// The layers' history entry.
    #[serde(default)]
    metadata: Map<String, Value>,
    /// false: keep the layer tars in the output (their bytes are not reproducible).
    #[serde(default = "yes")]
    reproducible: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageArgs {
    #[serde(flatten)]
    layer: LayerArgs,
    #[serde(default)]
    config: Map<String, Value>,
    /// A description (ours or nix2container's) or a skopeo `dir:` layout: its layers go first,
    /// its config is merged under ours.
    from_image: Option<String>,
    arch: String,
    /// The platform beside `arch`, for image indexes (left out when not given).
    os: Option<String>,
    variant: Option<String>,
    created: Option<String>,
    tag: Option<String>,
    nix_database: Option<NixDatabase>,
    /// Hash the image's own layers now (nix2container's behaviour) instead of on first use.
    #[serde(default)]
    digests: bool,
}

#[derive(Deserialize)]
struct NixDatabase {
    path: String,
    uid: u64,
    gid: u64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The build's arguments (`nixoci` in the attrs) as a `T`.
fn args<T: serde::de::DeserializeOwned>(attrs: &Attrs, file: &Path) -> Result<T, String> {
    serde_json::from_value(attrs.nixoci.clone()).map_err(|e| format!("{}: nixoci: {e}", file.display()))
}

pub fn run(attrs_file: &Path) -> Result<(), String> {
    let attrs: Attrs = read_json(attrs_file)?;
    let out = Path::new(attrs.outputs.get("out").ok_or_else(|| format!("{}: no output 'out'", attrs_file.display()))?);
    match attrs.nixoci["kind"].as_str().unwrap_or_default() {
        "layers" => {
            std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
            let layers = build_layers(&attrs.graph, &args(&attrs, attrs_file)?, out)?;
            write(&out.join("layers.json"), &pretty(&Value::Array(layers)))
        }
        "image" => write(out, &pretty(&build_image(&attrs.graph, &args(&attrs, attrs_file)?, out)?)),
        "registration" => write(out, &registration(&attrs.graph, &attrs.nested_graph, &args(&attrs, attrs_file)?)?),
        "image-from-dir" => {
            let dir = attrs.nixoci["dir"].as_str().ok_or_else(|| format!("{}: nixoci.dir missing", attrs_file.display()))?;
            write(out, &pretty(&image_from_dir(Path::new(dir))?))
        }
        k => Err(format!("{}: unknown nixoci.kind '{k}'", attrs_file.display())),
    }
}

/// The layers of the nested buildLayer outputs, in order.
fn nested_layers(dirs: &[String]) -> Result<Vec<Value>, String> {
    let mut all = Vec::new();
    for d in dirs {
        let layers: Vec<Value> = read_json(&Path::new(d).join("layers.json"))?;
        all.extend(layers);
    }
    Ok(all)
}

/// Every `paths` item of these layers.
fn items_of(layers: &[Value]) -> Result<Vec<PathItem>, String> {
    let paths = layers.iter().flat_map(|l| l["paths"].as_array().into_iter().flatten());
    paths
        .map(|p| serde_json::from_value::<PathItem>(p.clone()).map(PathItem::normalized).map_err(|e| format!("nested layer path {p}: {e}")))
        .collect()
}

/// The history entry in the OCI field order, empty fields left out (Go's omitempty).
fn history(metadata: &Map<String, Value>) -> Value {
    let keys = ["created", "created_by", "author", "comment", "empty_layer"];
    let kept = keys.iter().filter_map(|k| {
        let v = metadata.get(*k)?;
        let empty = v.is_null() || v == "" || v == false;
        (!empty).then(|| (k.to_string(), v.clone()))
    });
    Value::Object(kept.collect())
}

/// A layer object with its keys in nix2container's order.
fn ordered_layer(mut l: Map<String, Value>) -> Value {
    let mut out = Map::new();
    for k in ["digest", "size", "diff_ids", "paths", "mediatype", "layer-path", "History"] {
        if let Some(v) = l.remove(k) {
            out.insert(k.into(), v);
        }
    }
    out.extend(l);
    Value::Object(out)
}

/// The layers this buildLayer/buildImage makes itself from its graph, without digests.
fn own_layers(graph: &[GraphEntry], a: &LayerArgs, nested: &[Value], extra: Option<PathItem>) -> Result<Vec<Value>, String> {
    let mut groups = plan::plan(graph, &a.plan, &items_of(nested)?)?;
    if let Some(item) = extra {
        // In the last layer, so the layer count stays within maxLayers.
        match groups.last_mut() {
            Some(g) => g.push(item),
            None => groups.push(vec![item]),
        }
    }
    let history = history(&a.metadata);
    Ok(groups.iter().map(|g| json!({"paths": g, "mediatype": LAYER_TAR, "History": history})).collect())
}

/// Digests of `layers` from their bytes, as nixoci serves them (no cache: a build is pure).
fn with_digests(layers: Vec<Value>) -> Result<Vec<Value>, String> {
    let mut d = json!({"version": 1, "layers": layers});
    fill_digests(&mut d, "layer", &DigestCache::new(None))?;
    let Value::Array(layers) = d["layers"].take() else { unreachable!() };
    Ok(layers.into_iter().map(|l| ordered_layer(l.as_object().cloned().unwrap_or_default())).collect())
}

fn build_layers(graph: &[GraphEntry], a: &LayerArgs, out: &Path) -> Result<Vec<Value>, String> {
    let mut layers = own_layers(graph, a, &nested_layers(&a.layers)?, None)?;
    if !a.reproducible {
        // Keep the very bytes whose digest is recorded: the layer is served from this file.
        for (i, l) in layers.iter_mut().enumerate() {
            let tar = out.join(format!("layer-{i}.tar"));
            write_layer_tar(&json!({"version": 1, "layers": [l]}), &tar)?;
            l["layer-path"] = tar.to_string_lossy().into_owned().into();
        }
    }
    with_digests(layers)
}

fn build_image(graph: &[GraphEntry], a: &ImageArgs, out: &Path) -> Result<Value, String> {
    let nested = nested_layers(&a.layer.layers)?;
    let db = a.nix_database.as_ref().map(|db| PathItem {
        path: db.path.clone(),
        options: Some(PathOptions {
            rewrite: Rewrite::to_root(&db.path),
            perms: vec![Perm { regex: ".*".into(), mode: "0755".into(), uid: db.uid, gid: db.gid, uname: String::new(), gname: String::new() }],
        }),
    });
    let mut own = own_layers(graph, &a.layer, &nested, db)?;
    if a.digests {
        own = with_digests(own)?;
    }
    let (base_layers, base_config) = match &a.from_image {
        Some(f) => {
            let base: Value = if Path::new(f).is_dir() { image_from_dir(Path::new(f))? } else { read_json(Path::new(f))? };
            let layers = base["layers"].as_array().cloned().unwrap_or_default();
            (layers, base["image-config"].as_object().cloned().unwrap_or_default())
        }
        None => (Vec::new(), Map::new()),
    };
    // Base layers first, as they are; then each nested or own layer once (nix2container skips
    // a layer whose digest is already listed; a layer without one is known by its paths).
    let mut layers: Vec<Value> = Vec::new();
    for l in base_layers.into_iter().chain(nested).chain(own) {
        let same = |o: &Value| match l["digest"].as_str().filter(|d| !d.is_empty()) {
            Some(d) => o["digest"] == d,
            None => l.get("paths").is_some() && o.get("paths") == l.get("paths"),
        };
        if !layers.iter().any(same) {
            layers.push(l);
        }
    }
    let mut desc = Map::new();
    desc.insert("version".into(), 1.into());
    desc.insert("image-config".into(), Value::Object(merge_config(base_config, a.config.clone())));
    desc.insert("layers".into(), Value::Array(layers));
    desc.insert("arch".into(), a.arch.clone().into());
    for (k, v) in [("os", &a.os), ("variant", &a.variant)] {
        if let Some(v) = v {
            desc.insert(k.into(), v.clone().into());
        }
    }
    desc.insert("created".into(), a.created.clone().into());
    if let Some(t) = &a.tag {
        desc.insert("tag".into(), t.clone().into());
    }
    let desc = Value::Object(desc);
    // Refuse here, with the reason, what the mount would refuse later.
    Description::parse(&serde_json::to_vec(&desc).unwrap()).map_err(|e| format!("{}: the image made is invalid: {e}", out.display()))?;
    Ok(desc)
}

/// The store paths an image holds at their /nix/store place (its own layers' and the nested
/// ones'; copyToRoot paths land at / and are not registered), for `nix-store --load-db`.
fn registration(graph: &[GraphEntry], nested_graph: &[GraphEntry], a: &LayerArgs) -> Result<String, String> {
    let nested = items_of(&nested_layers(&a.layers)?)?;
    let own = plan::items(graph, &a.plan, &nested)?;
    let present: BTreeSet<String> = own.iter().chain(&nested).filter(|i| i.in_store()).map(|i| i.path.clone()).collect();
    let info: Vec<GraphEntry> = graph.iter().chain(nested_graph).cloned().collect();
    plan::registration(&present, &info)
}

/// OCI config keys as Go spells them, in its field order (then Docker's extra ones): config
/// keys are matched case-insensitively, as nix2container's Go decoding does.
const CONFIG_KEYS: [&str; 13] = [
    "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels", "StopSignal", "ArgsEscaped",
    "Healthcheck", "OnBuild", "Shell",
];

fn canonical_config(c: Map<String, Value>) -> Map<String, Value> {
    let mut known = Map::new();
    let mut other = Map::new();
    for (k, v) in c {
        match CONFIG_KEYS.iter().find(|n| n.eq_ignore_ascii_case(&k)) {
            Some(n) => known.insert(n.to_string(), v),
            None => other.insert(k, v),
        };
    }
    let mut out: Map<String, Value> = CONFIG_KEYS.iter().filter_map(|k| Some((k.to_string(), known.remove(*k)?))).collect();
    out.extend(other);
    out
}

/// The base image's config under the new one, as a Dockerfile FROM does: Env merged by variable
/// name, Labels/ExposedPorts/Volumes merged, other keys replaced; setting Entrypoint without
/// Cmd drops the base Cmd.
fn merge_config(base: Map<String, Value>, new: Map<String, Value>) -> Map<String, Value> {
    let (mut b, n) = (canonical_config(base), canonical_config(new));
    if n.contains_key("Entrypoint") && !n.contains_key("Cmd") {
        b.remove("Cmd");
    }
    let var = |e: &Value| e.as_str().unwrap_or_default().split('=').next().unwrap_or_default().to_string();
    let mut merged = b.clone();
    for (k, v) in n {
        let v = match (k.as_str(), b.get(&k), v) {
            ("Env", Some(Value::Array(old)), Value::Array(new)) => {
                let names: BTreeSet<String> = new.iter().map(var).collect();
                Value::Array(old.iter().filter(|e| !names.contains(&var(e))).cloned().chain(new).collect())
            }
            ("Labels" | "ExposedPorts" | "Volumes", Some(Value::Object(old)), Value::Object(new)) => {
                let mut m = old.clone();
                m.extend(new);
                Value::Object(m)
            }
            (_, _, v) => v,
        };
        merged.insert(k, v);
    }
    canonical_config(merged)
}

/// A description of a skopeo `dir:` layout: its layer blobs used as they are, its config kept.
fn image_from_dir(dir: &Path) -> Result<Value, String> {
    let manifest: Value = read_json(&dir.join("manifest.json"))?;
    let hex = |d: &Value| d.as_str().and_then(|d| d.strip_prefix("sha256:")).map(str::to_string);
    let config_hex = hex(&manifest["config"]["digest"]).ok_or_else(|| format!("{}/manifest.json: no sha256 config digest", dir.display()))?;
    let config: Value = read_json(&dir.join(&config_hex))?;
    let history: Vec<&Value> = config["history"].as_array().into_iter().flatten().filter(|h| h["empty_layer"] != true).collect();
    let mut layers = Vec::new();
    for (i, l) in manifest["layers"].as_array().into_iter().flatten().enumerate() {
        let what = || format!("{}/manifest.json: layer {i}", dir.display());
        let h = hex(&l["digest"]).ok_or_else(|| format!("{}: no sha256 digest", what()))?;
        let media_type = match l["mediaType"].as_str().unwrap_or(LAYER_TAR) {
            "application/vnd.docker.image.rootfs.diff.tar" => LAYER_TAR,
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
            t @ (LAYER_TAR | "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.oci.image.layer.v1.tar+zstd") => t,
            t => return Err(format!("{}: unsupported media type {t}", what())),
        };
        let diff_id = config["rootfs"]["diff_ids"].get(i).cloned().ok_or_else(|| format!("{}: no diff_id in the config", what()))?;
        layers.push(json!({
            "digest": l["digest"], "size": l["size"], "diff_ids": diff_id, "mediatype": media_type,
            "layer-path": dir.join(&h).to_string_lossy(), "History": history.get(i).copied().cloned().unwrap_or(json!({})),
        }));
    }
    Ok(json!({
        "version": 1,
        "image-config": config["config"].as_object().cloned().unwrap_or_default(),
        "layers": layers,
        "arch": config["architecture"],
        "created": config["created"],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn config_keys_are_canonical_and_in_go_order() {
        let c = canonical_config(map(json!({"entrypoint": ["x"], "Env": ["A=1"], "Healthcheck": {"Test": ["CMD"]}, "user": "1", "X-Other": 1})));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"User":"1","Env":["A=1"],"Entrypoint":["x"],"Healthcheck":{"Test":["CMD"]},"X-Other":1}"#);
    }

    #[test]
    fn base_config_is_merged_under_the_new_one() {
        let base = map(json!({"Env": ["PATH=/bin", "KEEP=1", "OVER=base"], "Cmd": ["/bin/sh"], "WorkingDir": "/etc", "Labels": {"a": "1", "b": "1"}}));
        let new = map(json!({"env": ["OVER=new"], "entrypoint": ["/app"], "Labels": {"b": "2"}}));
        let m = merge_config(base, new);
        assert_eq!(
            Value::Object(m),
            json!({"Env": ["PATH=/bin", "KEEP=1", "OVER=new"], "Entrypoint": ["/app"], "WorkingDir": "/etc", "Labels": {"a": "1", "b": "2"}}),
            "a new Entrypoint drops the base Cmd"
        );
        let kept = merge_config(map(json!({"Cmd": ["/bin/sh"]})), map(json!({"User": "1"})));
        assert_eq!(Value::Object(kept), json!({"User": "1", "Cmd": ["/bin/sh"]}));
    }

    /// A buildImage step end to end on made-up store paths (nothing is hashed without digests):
    /// base layers first, then the nested layer once, then its own layers, the database last.
    #[test]
    fn image_step_writes_base_nested_and_own_layers() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| format!("/nix/store/{}-{n}", n.repeat(32)[..32].to_string());
        let (cfg, app, lib, root, db) = (p("c"), p("a"), p("l"), p("r"), p("d"));
        let nested = t.path().join("nested");
        std::fs::create_dir(&nested).unwrap();
        let nested_layer = json!({"digest": format!("sha256:{}", "1".repeat(64)), "size": 1, "diff_ids": format!("sha256:{}", "1".repeat(64)),
                                  "paths": [{"path": lib}], "mediatype": LAYER_TAR, "History": {}});
        std::fs::write(nested.join("layers.json"), serde_json::to_vec(&json!([nested_layer])).unwrap()).unwrap();
        let base = t.path().join("base.json");
        let base_layer = json!({"digest": format!("sha256:{}", "2".repeat(64)), "size": 2, "diff_ids": format!("sha256:{}", "2".repeat(64)),
                                "layer-path": p("b"), "mediatype": LAYER_TAR, "History": {}});
        std::fs::write(&base, serde_json::to_vec(&json!({"version": 1, "image-config": {"Env": ["A=1"], "Cmd": ["sh"]}, "layers": [base_layer]})).unwrap()).unwrap();
        let out = t.path().join("out.json");
        let attrs = json!({
            "outputs": {"out": out},
            "graph": [
                {"path": cfg, "references": [app], "narHash": "", "narSize": 1},
                {"path": app, "references": [lib], "narHash": "", "narSize": 1},
                {"path": lib, "references": [], "narHash": "", "narSize": 1},
                {"path": root, "references": [app], "narHash": "", "narSize": 1},
            ],
            "nixoci": {
                "kind": "image", "ignore": [cfg], "copyToRoot": [root], "perms": [], "maxLayers": 5, "layering": "popularity",
                "metadata": {"created_by": "test"}, "reproducible": true, "layers": [nested, nested],
                "config": {"entrypoint": ["/app"]}, "fromImage": base, "arch": "arm64", "created": null, "tag": "v1",
                "nixDatabase": {"path": db, "uid": 0, "gid": 0}, "digests": false,
            },
        });
        let attrs_file = t.path().join(".attrs.json");
        std::fs::write(&attrs_file, serde_json::to_vec(&attrs).unwrap()).unwrap();
        run(&attrs_file).unwrap();
        let d: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let layers = d["layers"].as_array().unwrap();
        let paths: Vec<Vec<&str>> = layers.iter().map(|l| l["paths"].as_array().map_or(vec![], |ps| ps.iter().map(|p| p["path"].as_str().unwrap()).collect())).collect();
        assert_eq!(paths, vec![vec![], vec![lib.as_str()], vec![app.as_str()], vec![root.as_str(), db.as_str()]], "{d}");
        assert_eq!(layers[0], base_layer);
        assert!(layers[2].get("digest").is_none() && layers[2]["History"] == json!({"created_by": "test"}));
        assert_eq!(d["image-config"], json!({"Env": ["A=1"], "Entrypoint": ["/app"]}));
        assert_eq!((d["arch"].as_str(), d["created"].is_null(), d["tag"].as_str()), (Some("arm64"), true, Some("v1")));
    }

    #[test]
    fn history_in_oci_order_without_empty_fields() {
        let h = history(&map(json!({"comment": "c", "author": "", "created_by": "me", "empty_layer": false, "other": 1})));
        assert_eq!(serde_json::to_string(&h).unwrap(), r#"{"created_by":"me","comment":"c"}"#);
    }
}
