//! From a description to an image: layer blobs (indexed from the store), their digests (given,
//! cached or computed in parallel), and the byte-stable OCI config, manifest and index.json.

use crate::blob::{Blob, FileBlob};
use crate::compress::{Codec, Compressed, Pieces};
use crate::description::{Description, Layer, LayerSource, PathSpec, LAYER_TAR, STORE_DIR};
use crate::digest::{sha256_blob, sha256_bytes, DigestCache};
use crate::layer::LayerIndex;
use serde_json::{json, Value};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// A blob as served: its digest, and a failure that sticks once its bytes proved wrong.
pub struct ServedBlob {
    pub digest: String,
    pub media_type: String,
    pub blob: Arc<dyn Blob>,
    /// Where the bytes come from, for log lines.
    pub label: String,
    failure: Mutex<Option<String>>,
    /// Its bytes were hashed once through the read path and matched: no need to hash them again.
    pub verified: AtomicBool,
}

impl ServedBlob {
    pub fn new(digest: String, media_type: &str, blob: Arc<dyn Blob>, label: String) -> ServedBlob {
        ServedBlob { digest, media_type: media_type.into(), blob, label, failure: Mutex::new(None), verified: AtomicBool::new(false) }
    }
    pub fn hex(&self) -> &str {
        &self.digest["sha256:".len()..]
    }
    pub fn size(&self) -> u64 {
        self.blob.size()
    }
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }
    /// From now on every read of this blob fails.
    pub fn fail(&self, why: String) {
        log::error!("{}: {why}; the blob fails from now on", self.label);
        *self.failure.lock().unwrap() = Some(why);
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

impl Blob for ServedBlob {
    fn size(&self) -> u64 {
        self.blob.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = self.failure() {
            return Err(io::Error::other(why));
        }
        self.blob.read_at(offset, buf)
    }
}

/// A layer whose bytes are known (indexed) but whose digest may not be yet.
pub struct PreparedLayer {
    /// The tar made from the store paths, or the layer file.
    pub blob: Arc<dyn Blob>,
    /// The entries of a layer made from store paths (the blob itself), for the file views.
    pub index: Option<Arc<LayerIndex>>,
    /// How a layer made from paths is compressed for serving (from its mediatype).
    pub codec: Option<Codec>,
    pub desc: Layer,
    /// A size the description claims that the store does not give: the layer cannot be served.
    pub size_mismatch: Option<String>,
    pub label: String,
}

/// Layer indexes by what decides their bytes, so a new version of a description reuses the
/// layers it did not change (no second walk, no second copy in memory).
#[derive(Default)]
pub struct IndexCache(Mutex<HashMap<String, Weak<LayerIndex>>>);

impl IndexCache {
    fn get_or_build(&self, specs: &[PathSpec]) -> Result<(Arc<LayerIndex>, bool), String> {
        let key = DigestCache::key(specs).ok();
        if let Some(idx) = key.as_ref().and_then(|k| self.0.lock().unwrap().get(k)?.upgrade()) {
            return Ok((idx, true));
        }
        let idx = Arc::new(LayerIndex::build(specs)?);
        if let Some(k) = key {
            let mut map = self.0.lock().unwrap();
            map.retain(|_, w| w.strong_count() > 0);
            map.insert(k, Arc::downgrade(&idx));
        }
        Ok((idx, false))
    }
}

/// A listed path must not lead out of the store through a symlinked directory on its way. Its
/// last component may be a symlink, served as one and never followed, unless a '/' or '/.' is
/// spelled after it: then the walk follows it (as nix2container's does), so it must resolve
/// inside the store too.
fn check_inside_store(path: &str) -> Result<(), String> {
    let clean: PathBuf = Path::new(path).components().collect();
    let followed = matches!(path.rsplit('/').next(), Some("" | "."));
    let walked = if followed { clean.as_path() } else { clean.parent().unwrap_or(Path::new("/")) };
    let real = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("cannot read '{}': {e}", p.display()));
    if !real(walked)?.starts_with(real(Path::new(STORE_DIR))?) {
        return Err(format!("'{path}' leads out of {STORE_DIR} through a symlink"));
    }
    Ok(())
}

/// Index every layer from the store. Fails when a path is missing or a layer cannot be made.
pub fn prepare(image: &str, desc: Description, indexes: &IndexCache) -> Result<(Description, Vec<PreparedLayer>), String> {
    let mut d = desc;
    let layers = std::mem::take(&mut d.layers);
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.into_iter().enumerate() {
        let (blob, index, label): (Arc<dyn Blob>, _, String) = match &layer.source {
            LayerSource::Paths(specs) => {
                specs.iter().try_for_each(|s| check_inside_store(&s.path)).map_err(|e| format!("layer {i}: {e}"))?;
                let started = std::time::Instant::now();
                let (idx, reused) = indexes.get_or_build(specs).map_err(|e| format!("layer {i}: {e}"))?;
                if !reused {
                    log::info!(
                        "image {image} layer {i}: indexed in {:.2?}: {} entries, {} bytes of index ({} per entry), {} bytes of tar",
                        started.elapsed(),
                        idx.entries(),
                        idx.index_bytes(),
                        idx.index_bytes() / idx.entries().max(1),
                        idx.size()
                    );
                }
                let paths: Vec<&str> = specs.iter().map(|s| s.path.as_str()).collect();
                (idx.clone(), Some(idx), format!("image {image} layer {i} ({})", paths.join(" ")))
            }
            LayerSource::File(path) => {
                let blob = check_inside_store(path).and_then(|()| FileBlob::open(path)).map_err(|e| format!("layer {i}: {e}"))?;
                (Arc::new(blob), None, format!("image {image} layer {i} ({path})"))
            }
        };
        let codec = match &layer.source {
            LayerSource::Paths(_) => Codec::for_media_type(&layer.media_type),
            LayerSource::File(_) => None,
        };
        if let Some(c) = codec {
            c.check().map_err(|e| format!("layer {i}: {e}"))?;
        }
        // A compressed layer's size is checked against the pieces as they are made.
        let size_mismatch = layer
            .size
            .filter(|&s| codec.is_none() && s != blob.size())
            .map(|s| format!("the description says {s} bytes but the store gives {} (the store paths hold other bytes than when it was made)", blob.size()));
        out.push(PreparedLayer { blob, index, codec, desc: layer, size_mismatch, label });
    }
    Ok((d, out))
}

/// A layer ready to serve: the bytes served under its digest, and its uncompressed digest.
pub struct ResolvedLayer {
    pub digest: String,
    pub diff_id: String,
    pub blob: Arc<dyn Blob>,
    /// The uncompressed tar of a compressed layer.
    pub tar: Option<Arc<dyn Blob>>,
    /// Why its bytes cannot be the ones the description names: the layer fails when read.
    pub mismatch: Option<String>,
}

impl PreparedLayer {
    fn cache_key(&self) -> Option<String> {
        match &self.desc.source {
            LayerSource::Paths(specs) => DigestCache::key(specs).ok(),
            LayerSource::File(_) => None,
        }
    }

    /// The digest of `self.blob` (the tar or the file): the given one, else cached, else computed.
    fn blob_digest(&self, given: Option<&String>, cache: &DigestCache) -> Result<String, String> {
        if let Some(d) = given {
            return Ok(d.clone());
        }
        let key = self.cache_key();
        if let Some(d) = key.as_ref().and_then(|k| cache.get(k, self.blob.size())) {
            return Ok(d);
        }
        let started = std::time::Instant::now();
        let d = sha256_blob(self.blob.as_ref()).map_err(|e| format!("{}: {e}", self.label))?;
        log::info!("{}: hashed in {:.2?}: {d}", self.label, started.elapsed());
        if let Some(k) = key {
            cache.put(&k, &d, self.blob.size());
        }
        Ok(d)
    }

    fn resolve(&self, cache: &DigestCache) -> Result<ResolvedLayer, String> {
        let Some(codec) = self.codec else {
            let digest = self.blob_digest(self.desc.digest.as_ref(), cache)?;
            let diff_id = self.desc.diff_id.clone().unwrap_or_else(|| digest.clone());
            return Ok(ResolvedLayer { digest, diff_id, blob: self.blob.clone(), tar: None, mismatch: self.size_mismatch.clone() });
        };
        let diff_id = self.blob_digest(self.desc.diff_id.as_ref(), cache)?;
        let key = self.cache_key().map(|k| codec.cache_key(&k));
        let table = key.as_ref().and_then(|k| cache.get_table(k, codec.pieces(self.blob.size())));
        let pieces = Pieces::new(self.blob.clone(), codec, table, key.clone().map(|k| (cache.clone(), k)), self.label.clone());
        // What this nixoci made of the layer before, when the cache remembers.
        let made = pieces.total().map(|size| (key.as_ref().and_then(|k| cache.get(k, size)), size));
        let other_size = |given: Option<u64>, made: u64| {
            given.filter(|&g| g != made).map(|g| format!("the description says {g} bytes, this nixoci makes {made}"))
        };
        let (digest, size, mismatch) = match (&self.desc.digest, self.desc.size, made) {
            (Some(d), Some(s), made) => {
                let mismatch = match made {
                    Some((_, ms)) if ms != s => other_size(Some(s), ms),
                    Some((Some(md), _)) if md != *d => Some(format!("the description says {d}, this nixoci makes {md}")),
                    _ => None,
                };
                (d.clone(), s, mismatch)
            }
            (_, given, Some((Some(d), s))) => (d, s, other_size(given, s)),
            (_, given, _) => {
                let started = std::time::Instant::now();
                let (d, s) = pieces.scan().map_err(|e| format!("{}: {e}", self.label))?;
                log::info!(
                    "{}: {} in {:.2?}: {s} bytes, {:.1}% of the tar",
                    self.label,
                    codec.name(),
                    started.elapsed(),
                    100.0 * s as f64 / self.blob.size() as f64
                );
                if let Some(k) = &key {
                    cache.put(k, &d, s);
                }
                (d, s, other_size(given, s))
            }
        };
        let mismatch = mismatch.map(|m| format!("{m} of {}: its digest was made by another compressor", codec.name()));
        Ok(ResolvedLayer { digest, diff_id, blob: Arc::new(Compressed::new(pieces, size)), tar: Some(self.blob.clone()), mismatch })
    }
}

/// Every layer resolved: digests given, cached or computed (layers in parallel).
pub fn resolve_layers(layers: &[PreparedLayer], cache: &DigestCache) -> Result<Vec<ResolvedLayer>, String> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(layers.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(l) = layers.get(i) else { return };
                let r = l.resolve(cache);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// A generated JSON blob (config, manifest, image index): compact, keys in the order given, so
/// byte-stable.
pub fn json_blob(value: &Value, media_type: &str, label: String) -> Arc<ServedBlob> {
    let bytes = serde_json::to_vec(value).unwrap();
    let sb = ServedBlob::new(sha256_bytes(&bytes), media_type, Arc::new(bytes), label);
    sb.verified.store(true, Ordering::Relaxed);
    Arc::new(sb)
}

/// An OCI layout's index.json: the one manifest or image index, under its tag.
pub fn layout_index(top: &ServedBlob, tag: &str) -> Vec<u8> {
    let mut desc = top.descriptor();
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [desc]})).unwrap()
}

/// An image ready to serve.
pub struct Image {
    pub tag: String,
    pub manifest: Arc<ServedBlob>,
    pub config: Arc<ServedBlob>,
    pub layers: Vec<Arc<ServedBlob>>,
    pub index_json: Vec<u8>,
    /// What the docker-archive view holds instead, when it differs: the same image with its zstd
    /// layers uncompressed (Docker 20.10 reads no zstd, and compressing for a local load gains
    /// nothing). Same config, same diff_ids; its own manifest.
    pub for_docker: Option<Box<Image>>,
}

/// The manifest over a config and layers.
fn manifest(name: &str, config: &ServedBlob, layers: &[Arc<ServedBlob>]) -> Arc<ServedBlob> {
    json_blob(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config.descriptor(),
        "layers": layers.iter().map(|l| l.descriptor()).collect::<Vec<_>>(),
    }), MANIFEST_TYPE, format!("image {name} manifest"))
}

impl Image {
    pub fn build(name: &str, desc: Description, layers: Vec<PreparedLayer>, cache: &DigestCache) -> Result<Image, String> {
        let resolved = resolve_layers(&layers, cache)?;
        let mut served = Vec::new();
        let mut for_docker = Vec::new();
        let mut diff_ids = Vec::new();
        let mut history = Vec::new();
        for (l, r) in layers.into_iter().zip(resolved) {
            history.push(Value::Object(l.desc.history.clone()));
            let sb = ServedBlob::new(r.digest, &l.desc.media_type, r.blob, l.label.clone());
            // A digest nixoci made itself came from these very bytes through the same read path.
            sb.verified.store(l.desc.digest.is_none(), Ordering::Relaxed);
            if let Some(why) = r.mismatch {
                sb.fail(why);
            }
            let sb = Arc::new(sb);
            for_docker.push(match (l.codec, r.tar) {
                (Some(Codec::Zstd), Some(tar)) => {
                    let tar = ServedBlob::new(r.diff_id.clone(), LAYER_TAR, tar, format!("{} uncompressed", l.label));
                    tar.verified.store(l.desc.diff_id.is_none(), Ordering::Relaxed);
                    Arc::new(tar)
                }
                _ => sb.clone(),
            });
            served.push(sb);
            diff_ids.push(r.diff_id);
        }
        let mut config = serde_json::Map::new();
        if let Some(c) = &desc.created {
            config.insert("created".into(), json!(c));
        }
        config.insert("architecture".into(), json!(desc.platform.arch));
        config.insert("os".into(), json!(desc.platform.os));
        if let Some(v) = &desc.platform.variant {
            config.insert("variant".into(), json!(v));
        }
        config.insert("config".into(), Value::Object(desc.image_config));
        config.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
        config.insert("history".into(), Value::Array(history));
        let config = json_blob(&Value::Object(config), CONFIG_TYPE, format!("image {name} config"));
        let for_docker = served.iter().zip(&for_docker).any(|(a, b)| !Arc::ptr_eq(a, b)).then(|| {
            let manifest = manifest(name, &config, &for_docker);
            let index_json = layout_index(&manifest, &desc.tag);
            Box::new(Image { tag: desc.tag.clone(), manifest, config: config.clone(), layers: for_docker, index_json, for_docker: None })
        });
        let manifest = manifest(name, &config, &served);
        let index_json = layout_index(&manifest, &desc.tag);
        Ok(Image { tag: desc.tag, manifest, config, layers: served, index_json, for_docker })
    }

    /// Every distinct blob: manifest, config, layers (an image may hold the same layer twice).
    pub fn blobs(&self) -> Vec<Arc<ServedBlob>> {
        let mut all = vec![self.manifest.clone(), self.config.clone()];
        for l in &self.layers {
            if !all.iter().any(|b| b.digest == l.digest) {
                all.push(l.clone());
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: &str) -> Image {
        let d = Description::parse(json.as_bytes()).unwrap();
        let (d, layers) = prepare("t", d, &IndexCache::default()).unwrap();
        Image::build("t", d, layers, &DigestCache::new(None)).unwrap()
    }

    #[test]
    fn config_manifest_and_index_are_byte_stable() {
        let json = r#"{"version":1,"image-config":{"Env":["A=1"],"Healthcheck":{"Test":["CMD","true"]},"Cmd":["x"]},
                       "layers":[],"arch":"arm64","created":"2024-05-13T09:31:10Z","tag":"v1"}"#;
        let img = image(json);
        let config = crate::blob::read_all(img.config.as_ref()).unwrap();
        assert_eq!(
            String::from_utf8(config).unwrap(),
            r#"{"created":"2024-05-13T09:31:10Z","architecture":"arm64","os":"linux","config":{"Env":["A=1"],"Healthcheck":{"Test":["CMD","true"]},"Cmd":["x"]},"rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#
        );
        let index: Value = serde_json::from_slice(&img.index_json).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v1");
        assert_eq!(index["manifests"][0]["digest"], json!(img.manifest.digest));
        assert_eq!(image(json).manifest.digest, img.manifest.digest, "same description, same manifest");
    }

    #[test]
    fn null_created_is_left_out() {
        let img = image(r#"{"version":1,"layers":[],"created":null}"#);
        let config: Value = serde_json::from_slice(&crate::blob::read_all(img.config.as_ref()).unwrap()).unwrap();
        assert!(config.get("created").is_none());
        assert_eq!(config["config"], json!({}));
    }
}
