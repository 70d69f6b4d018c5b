//! A multi-platform image: an index description names one image description per platform
//! (store paths), `{"version": 1, "images": [...], "tag": "..."}`. Each image is made by the
//! single-image path; the index adds one JSON blob listing their manifests with their platform.

use crate::description::{check_store_path, parse_tag, Description, STORE_DIR};
use crate::digest::DigestCache;
use crate::image::{json_blob, layout_index, Image, PreparedLayer, ServedBlob, INDEX_TYPE};
use crate::platform::Platform;
use serde::Deserialize;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndex {
    version: i64,
    images: Vec<String>,
    #[serde(default)]
    tag: Option<String>,
}

/// Whether a description file's JSON is an index (it lists `images`) rather than an image.
pub fn is_index(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Peek {
        images: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Peek>(json).is_ok_and(|p| p.images.is_some())
}

pub struct IndexDescription {
    /// Store paths of image descriptions.
    pub images: Vec<String>,
    pub tag: String,
}

impl IndexDescription {
    pub fn parse(json: &[u8]) -> Result<IndexDescription, String> {
        let raw: RawIndex = serde_json::from_slice(json).map_err(|e| format!("malformed index JSON: {e}"))?;
        if raw.version != 1 {
            return Err(format!("unsupported index version {} (expected 1)", raw.version));
        }
        if raw.images.is_empty() {
            return Err("an index needs at least one image".into());
        }
        for (i, p) in raw.images.iter().enumerate() {
            check_store_path(p).map_err(|e| format!("entry {i}: {e}"))?;
        }
        Ok(IndexDescription { images: raw.images, tag: parse_tag(raw.tag)? })
    }

    /// Each entry's description, read from the store and validated as a top-level one; at most
    /// one image per platform.
    pub fn load_images(&self) -> Result<Vec<Description>, String> {
        let mut out: Vec<Description> = Vec::new();
        for (i, path) in self.images.iter().enumerate() {
            let d = load_entry(path).map_err(|e| format!("entry {i} ({path}): {e}"))?;
            if let Some(j) = out.iter().position(|o| o.platform.same_as(&d.platform)) {
                return Err(format!("entries {j} ({}) and {i} ({path}) are both for platform {}", self.images[j], d.platform));
            }
            out.push(d);
        }
        Ok(out)
    }
}

fn load_entry(path: &str) -> Result<Description, String> {
    let real = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("cannot read: {e}"));
    let file = real(Path::new(path))?;
    if !file.starts_with(real(Path::new(STORE_DIR))?) {
        return Err(format!("leads out of {STORE_DIR} through a symlink"));
    }
    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read: {e}"))?;
    if is_index(&bytes) {
        return Err("is an image index itself: an index cannot hold another index".into());
    }
    Description::parse(&bytes).map_err(|e| format!("bad image description: {e}"))
}

/// Why an index shows no NAME.tar.
pub fn no_host_image() -> String {
    format!("a docker-archive holds one image, and this index has none for this host's platform {}", Platform::host())
}

/// The entry for the mount host's platform, if the index has one.
pub fn host_entry<'a>(platforms: impl IntoIterator<Item = &'a Platform>) -> Option<usize> {
    let host = Platform::host();
    platforms.into_iter().position(|p| p.same_as(&host))
}

/// An image index ready to serve.
pub struct ImageIndex {
    pub tag: String,
    /// The index JSON (`application/vnd.oci.image.index.v1+json`) listing the images' manifests.
    pub index: Arc<ServedBlob>,
    pub images: Vec<Image>,
    /// The image for the mount host's platform.
    pub host: Option<usize>,
    /// The OCI layout's index.json, pointing at `index`.
    pub index_json: Vec<u8>,
}

impl ImageIndex {
    pub fn build(name: &str, tag: String, images: Vec<(Description, Vec<PreparedLayer>)>, cache: &DigestCache) -> Result<ImageIndex, String> {
        let host = host_entry(images.iter().map(|(d, _)| &d.platform));
        let mut built = Vec::new();
        let mut manifests = Vec::new();
        for (mut desc, layers) in images {
            let platform = desc.platform.clone();
            desc.tag = tag.clone();
            let image = Image::build(&format!("{name} {platform}"), desc, layers, cache)?;
            let mut d = image.manifest.descriptor();
            d["platform"] = platform.to_json();
            manifests.push(d);
            built.push(image);
        }
        let index = json_blob(
            &json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests}),
            INDEX_TYPE,
            format!("image {name} index"),
        );
        let index_json = layout_index(&index, &tag);
        Ok(ImageIndex { tag, index, images: built, host, index_json })
    }

    /// Every distinct blob: the index, then each image's (a layer two platforms share is one blob).
    pub fn blobs(&self) -> Vec<Arc<ServedBlob>> {
        let mut all = vec![self.index.clone()];
        for b in self.images.iter().flat_map(Image::blobs) {
            if !all.iter().any(|o| o.digest == b.digest) {
                all.push(b);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_an_index_from_an_image() {
        assert!(is_index(br#"{"version":1,"images":[]}"#));
        assert!(!is_index(br#"{"version":1,"layers":[]}"#));
        assert!(!is_index(b"not json"));
    }

    #[test]
    fn refuses_bad_index_descriptions() {
        let err = |j: &str| IndexDescription::parse(j.as_bytes()).err().unwrap();
        assert!(err(r#"{"version":2,"images":["/nix/store/a"]}"#).contains("version 2"));
        assert!(err(r#"{"version":1,"images":[]}"#).contains("at least one image"));
        assert!(err(r#"{"version":1,"images":["/tmp/a.json"]}"#).contains("entry 0: path '/tmp/a.json' is outside the store"));
        assert!(err(r#"{"version":1,"images":["/nix/store/a"],"tag":"a:b"}"#).contains("tag"));
        assert!(err(r#"{"version":1,"images":["/nix/store/a"],"layers":[]}"#).contains("unknown field `layers`"));
        let missing = IndexDescription::parse(br#"{"version":1,"images":["/nix/store/nixoci-no-such-image.json"]}"#).unwrap();
        assert_eq!(missing.tag, "latest");
        let e = missing.load_images().err().unwrap();
        assert!(e.starts_with("entry 0 (/nix/store/nixoci-no-such-image.json): cannot read: No such file"), "{e}");
    }
}
