//! The image description: nix2container's image JSON v1 (formats.md §1), parsed and validated.
//! Everything that can be checked without reading the store is checked here, so a bad
//! description is refused with one message naming the problem.

use crate::goregex::{GoRegex, Rewrite};
use crate::platform::Platform;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};

pub const STORE_DIR: &str = "/nix/store";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Deserialize)]
struct RawDescription {
    version: i64,
    #[serde(rename = "image-config", default)]
    image_config: Map<String, Value>,
    #[serde(default)]
    layers: Vec<RawLayer>,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: String,
    #[serde(default = "default_created")]
    created: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

fn default_created() -> Option<String> {
    Some("0001-01-01T00:00:00Z".into())
}

#[derive(Deserialize)]
struct RawLayer {
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    diff_ids: String,
    #[serde(default)]
    paths: Option<Vec<RawPath>>,
    #[serde(default)]
    mediatype: String,
    #[serde(rename = "layer-path", default)]
    layer_path: String,
    #[serde(rename = "History", default)]
    history: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawPath {
    path: String,
    #[serde(default)]
    options: Option<RawOptions>,
}

#[derive(Deserialize, Default)]
struct RawOptions {
    #[serde(default)]
    rewrite: Option<RawRewrite>,
    #[serde(default)]
    perms: Option<Vec<RawPerm>>,
}

#[derive(Deserialize, Default)]
struct RawRewrite {
    #[serde(default)]
    regex: String,
    #[serde(default)]
    repl: String,
}

#[derive(Deserialize)]
struct RawPerm {
    regex: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    uname: String,
    #[serde(default)]
    gname: String,
}

/// A validated description.
#[derive(Debug)]
pub struct Description {
    pub image_config: Map<String, Value>,
    pub layers: Vec<Layer>,
    pub platform: Platform,
    pub created: Option<String>,
    pub tag: String,
}

#[derive(Debug)]
pub struct Layer {
    /// `sha256:<hex>` given in the JSON, trusted and verified on full reads.
    pub digest: Option<String>,
    /// Uncompressed digest for the config's `rootfs.diff_ids`, when it differs from `digest`.
    pub diff_id: Option<String>,
    pub size: Option<u64>,
    pub media_type: String,
    pub source: LayerSource,
    pub history: Map<String, Value>,
}

#[derive(Debug)]
pub enum LayerSource {
    /// Tar stream made from store paths.
    Paths(Vec<PathSpec>),
    /// A ready blob file (e.g. a pulled base layer).
    File(String),
}

/// One `paths` item: a store path and how its files land in the layer.
#[derive(Debug, Clone)]
pub struct PathSpec {
    pub path: String,
    pub rewrite: Option<Rewrite>,
    pub perms: Vec<Perm>,
}

#[derive(Debug, Clone)]
pub struct Perm {
    pub regex: GoRegex,
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub uname: Option<String>,
    pub gname: Option<String>,
}

impl PartialEq for Perm {
    fn eq(&self, o: &Self) -> bool {
        self.regex.as_str() == o.regex.as_str()
            && (self.mode, self.uid, self.gid, &self.uname, &self.gname) == (o.mode, o.uid, o.gid, &o.uname, &o.gname)
    }
}

impl PathSpec {
    /// A canonical text of what decides this path's bytes, for cache keys. Regexes are marked
    /// `go-` since they took Go's meaning: digests cached before then are not reused.
    pub fn identity(&self) -> String {
        let mut s = format!("{}\0", self.path);
        if let Some(rw) = &self.rewrite {
            s += &format!("go-rewrite {}\0{}\0", rw.regex.as_str(), rw.repl());
        }
        for p in &self.perms {
            s += &format!("go-perm {}\0{:?} {} {} {:?} {:?}\0", p.regex.as_str(), p.mode, p.uid, p.gid, p.uname, p.gname);
        }
        s
    }
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// A tag the registries and tools accept (the distribution reference grammar).
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A description's `tag`: `latest` when absent.
pub fn parse_tag(tag: Option<String>) -> Result<String, String> {
    let tag = tag.unwrap_or_else(|| "latest".into());
    if !valid_tag(&tag) {
        return Err(format!("tag '{tag}' is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"));
    }
    Ok(tag)
}

/// Paths must name something in the store: absolute, under the store directory once empty and
/// `.` components are dropped (nix2container walks `/nix/store/x/` and `/nix/store/x/./bin`
/// too), no `..` component, no NUL.
pub fn check_store_path(p: &str) -> Result<(), String> {
    if p.contains('\0') {
        return Err(format!("path '{p}' contains a NUL byte"));
    }
    let parts: Vec<Component> = Path::new(p).components().collect();
    if parts.contains(&Component::ParentDir) {
        return Err(format!("path '{p}' is not a clean store path (a '..' component)"));
    }
    match parts.iter().collect::<PathBuf>().strip_prefix(STORE_DIR) {
        Ok(rest) if rest.components().next().is_some() => Ok(()),
        _ => Err(format!("path '{p}' is outside the store ({STORE_DIR})")),
    }
}

fn parse_mode(mode: &str, what: &str) -> Result<Option<u32>, String> {
    if mode.is_empty() {
        return Ok(None);
    }
    match u32::from_str_radix(mode, 8) {
        Ok(m) if m <= 0o7777 => Ok(Some(m)),
        _ => Err(format!("{what}: mode '{mode}' is not an octal file mode")),
    }
}

fn parse_path(raw: RawPath, what: &str) -> Result<PathSpec, String> {
    check_store_path(&raw.path).map_err(|e| format!("{what}: {e}"))?;
    let opts = raw.options.unwrap_or_default();
    let rewrite = match opts.rewrite {
        Some(r) if !r.regex.is_empty() => Some(Rewrite::new(&r.regex, &r.repl).map_err(|e| format!("{what}: rewrite {e}"))?),
        _ => None,
    };
    let perms = opts
        .perms
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            Ok(Perm {
                regex: GoRegex::new(&p.regex).map_err(|e| format!("{what}: perms regex '{}' {e}", p.regex))?,
                mode: parse_mode(&p.mode, what)?,
                uid: p.uid,
                gid: p.gid,
                uname: Some(p.uname).filter(|s| !s.is_empty()),
                gname: Some(p.gname).filter(|s| !s.is_empty()),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(PathSpec { path: raw.path, rewrite, perms })
}

fn parse_layer(i: usize, raw: RawLayer) -> Result<Layer, String> {
    let what = format!("layer {i}");
    let digest = match raw.digest.as_str() {
        "" => None,
        d if is_digest(d) => Some(d.to_string()),
        d => return Err(format!("{what}: digest '{d}' is not sha256:<64 lowercase hex>")),
    };
    let diff_id = match raw.diff_ids.as_str() {
        "" => None,
        d if is_digest(d) => Some(d.to_string()),
        d => return Err(format!("{what}: diff_ids '{d}' is not sha256:<64 lowercase hex>")),
    };
    let media_type = if raw.mediatype.is_empty() { LAYER_TAR.to_string() } else { raw.mediatype };
    let size = match raw.size {
        s if s < 0 => return Err(format!("{what}: negative size {s}")),
        0 => None,
        s => Some(s as u64),
    };
    let source = if !raw.layer_path.is_empty() {
        check_store_path(&raw.layer_path).map_err(|e| format!("{what}: layer-path: {e}"))?;
        if media_type != LAYER_TAR && diff_id.is_none() {
            return Err(format!("{what}: a {media_type} layer-path needs its uncompressed digest in diff_ids"));
        }
        LayerSource::File(raw.layer_path)
    } else {
        if media_type != LAYER_TAR {
            return Err(format!("{what}: layers made from paths are uncompressed tar, not {media_type}"));
        }
        let paths = raw.paths.unwrap_or_default();
        LayerSource::Paths(paths.into_iter().map(|p| parse_path(p, &what)).collect::<Result<_, _>>()?)
    };
    if let (Some(d), Some(id), LayerSource::Paths(_)) = (&digest, &diff_id, &source) {
        if d != id {
            return Err(format!("{what}: an uncompressed layer's diff_ids ({id}) must equal its digest ({d})"));
        }
    }
    Ok(Layer { digest, diff_id, size, media_type, source, history: raw.history })
}

/// RFC 3339 date-time, as Go's time.Time marshals it.
fn valid_created(s: &str) -> bool {
    let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$").unwrap();
    re.is_match(s)
}

impl Description {
    pub fn parse(json: &[u8]) -> Result<Description, String> {
        let raw: RawDescription = serde_json::from_slice(json).map_err(|e| format!("malformed JSON: {e}"))?;
        if raw.version != 1 {
            return Err(format!("unsupported description version {} (expected 1)", raw.version));
        }
        if let Some(c) = &raw.created {
            if !valid_created(c) {
                return Err(format!("created '{c}' is not an RFC 3339 date"));
            }
        }
        let tag = parse_tag(raw.tag)?;
        let layers = raw.layers.into_iter().enumerate().map(|(i, l)| parse_layer(i, l)).collect::<Result<_, _>>()?;
        let platform = Platform::new(&raw.os, &raw.arch, &raw.variant)?;
        Ok(Description { image_config: raw.image_config, layers, platform, created: raw.created, tag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Description::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn reads_the_n2c_app_description_unchanged() {
        let json = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/n2c-image-app.json"))
            .expect("shared/reference/n2c-image-app.json must be beside the repo");
        let d = Description::parse(&json).unwrap();
        assert_eq!(d.layers.len(), 3);
        assert_eq!(d.platform.to_string(), "linux/amd64");
        assert_eq!(d.tag, "latest");
        assert_eq!(d.layers[2].size, Some(4608));
        assert!(d.image_config.contains_key("Entrypoint"));
    }

    #[test]
    fn keeps_unknown_config_keys_and_null_created() {
        let d = Description::parse(br#"{"version":1,"image-config":{"Healthcheck":{"Test":["CMD","true"]}},"layers":[],"created":null}"#).unwrap();
        assert!(d.image_config.contains_key("Healthcheck"));
        assert_eq!(d.created, None);
    }

    #[test]
    fn accepts_the_path_spellings_nix2container_walks() {
        for p in ["/nix/store/a-x/", "/nix/store/a-x/./bin", "/nix/store/./a-x", "/nix//store/a-x//bin/."] {
            assert_eq!(check_store_path(p), Ok(()), "{p}");
        }
        for p in ["/nix/store/", "/nix/store/.", "/nix/store/a-x/../b", "nix/store/a-x", "/nix/storex/a"] {
            assert!(check_store_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert!(err("{").contains("malformed JSON"));
        assert!(err(r#"{"version":2}"#).contains("version 2"));
        assert!(err(r#"{"version":1,"layers":[{"paths":[{"path":"/etc"}]}]}"#).contains("outside the store"));
        assert!(err(r#"{"version":1,"layers":[{"paths":[{"path":"/nix/store/../etc"}]}]}"#).contains("'..'"));
        assert!(err(r#"{"version":1,"layers":[{"paths":[{"path":"/nix/storex"}]}]}"#).contains("outside the store"));
        assert!(err(r#"{"version":1,"layers":[{"paths":[{"path":"/nix/store/a","options":{"rewrite":{"regex":"(","repl":""}}}]}]}"#)
            .contains("layer 0: rewrite regex '(' is refused by Go's regexp"));
        assert!(err(r#"{"version":1,"layers":[{"paths":[{"path":"/nix/store/a","options":{"perms":[{"regex":".","mode":"9"}]}}]}]}"#)
            .contains("octal"));
        assert!(err(r#"{"version":1,"layers":[{"digest":"sha256:xyz"}]}"#).contains("digest"));
        assert!(err(r#"{"version":1,"tag":"a:b"}"#).contains("tag"));
        assert!(err(r#"{"version":1,"created":"yesterday"}"#).contains("RFC 3339"));
        assert!(err(r#"{"version":1,"arch":"x86_64"}"#).contains("unknown arch 'x86_64'"));
        assert!(err(r#"{"version":1,"layers":[{"layer-path":"/tmp/x.tar"}]}"#).contains("outside the store"));
    }
}
