//! The OCI image layout (`skopeo copy oci:`, `umoci`, `podman load`): formats.md §3.

use super::{Node, Tree};
use crate::image::Image;
use std::sync::Arc;

pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn fill(t: &mut Tree, root: usize, image: &Image) {
    t.add(root, "oci-layout", Node::Plain(Arc::new(OCI_LAYOUT.to_vec())));
    t.add(root, "index.json", Node::Plain(Arc::new(image.index_json.clone())));
    let blobs = t.dir(root, "blobs");
    let sha = t.dir(blobs, "sha256");
    for b in image.blobs() {
        t.add(sha, &b.hex().to_string(), Node::Blob(b));
    }
}
