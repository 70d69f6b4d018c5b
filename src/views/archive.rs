//! The docker-archive view (`docker load -i`, `podman load -i`, `skopeo copy docker-archive:`):
//! one uncompressed tar holding the OCI layout and Docker's `manifest.json` (formats.md §5),
//! made of the image's own blobs with tar headers between them.

use super::oci::OCI_LAYOUT;
use crate::blob::{Blob, Concat, Zeros};
use crate::image::Image;
use crate::layer::tar::{padded, Header, Kind, TRAILER};
use serde_json::json;
use std::sync::Arc;

fn member(parts: &mut Vec<Arc<dyn Blob>>, name: &str, blob: Arc<dyn Blob>) {
    let size = blob.size();
    let header = Header {
        name: name.as_bytes(),
        kind: Kind::File,
        link: b"",
        mode: 0o444,
        uid: 0,
        gid: 0,
        uname: b"root",
        gname: b"root",
        size,
        mtime: 1,
    };
    parts.push(Arc::new(header.encode()));
    parts.push(blob);
    parts.push(Arc::new(Zeros(padded(size) - size)));
}

pub fn docker_manifest(name: &str, image: &Image) -> Vec<u8> {
    let path = |hex: &str| format!("blobs/sha256/{hex}");
    serde_json::to_vec(&json!([{
        "Config": path(image.config.hex()),
        "RepoTags": [format!("{name}:{}", image.tag)],
        "Layers": image.layers.iter().map(|l| path(l.hex())).collect::<Vec<_>>(),
    }]))
    .unwrap()
}

/// index.json as the archive holds it: the OCI layout's, plus the image name under
/// `io.containerd.image.name` (as Docker >= 25 writes it). podman load tries oci-archive before
/// docker-archive and names the image from this annotation, else from `ref.name`, which is only
/// the tag (it would load as `localhost/latest:latest`).
pub fn archive_index(name: &str, image: &Image) -> Vec<u8> {
    let mut index: serde_json::Value = serde_json::from_slice(&image.index_json).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        m["annotations"]["io.containerd.image.name"] = json!(format!("{name}:{}", image.tag));
    }
    serde_json::to_vec(&index).unwrap()
}

pub fn build(name: &str, image: &Image) -> Concat {
    let image = image.for_docker.as_deref().unwrap_or(image);
    let mut parts = Vec::new();
    // Small files first: readers scan from the start for manifest.json.
    member(&mut parts, "manifest.json", Arc::new(docker_manifest(name, image)));
    member(&mut parts, "oci-layout", Arc::new(OCI_LAYOUT.to_vec()));
    member(&mut parts, "index.json", Arc::new(archive_index(name, image)));
    for b in image.blobs() {
        member(&mut parts, &format!("blobs/sha256/{}", b.hex()), b);
    }
    parts.push(Arc::new(Zeros(TRAILER)));
    Concat::new(parts)
}
