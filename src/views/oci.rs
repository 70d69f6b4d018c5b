//! The OCI image layout (`skopeo copy oci:`, `umoci`, `podman load`): formats.md §3.

use super::{Node, Tree};
use crate::entry::Entry;
use std::sync::Arc;

pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn fill(t: &mut Tree, root: usize, entry: &Entry) {
    t.add(root, "oci-layout", Node::Plain(Arc::new(OCI_LAYOUT.to_vec())));
    t.add(root, "index.json", Node::Plain(Arc::new(entry.index_json().to_vec())));
    let blobs = t.dir(root, "blobs");
    let sha = t.dir(blobs, "sha256");
    for b in entry.blobs() {
        t.add(sha, &b.hex().to_string(), Node::Blob(b));
    }
}
