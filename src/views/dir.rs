//! skopeo's `dir:` layout: formats.md §4. The top manifest is `manifest.json`; an index's image
//! manifests are `<hex>.manifest.json` and every other blob is `<hex>`, as `skopeo copy --all`
//! writes them (containers/image directory transport).

use super::{Node, Tree};
use crate::entry::Entry;
use std::sync::Arc;

pub const VERSION: &[u8] = b"Directory Transport Version: 1.1\n";

pub fn fill(t: &mut Tree, root: usize, entry: &Entry) {
    t.add(root, "version", Node::Plain(Arc::new(VERSION.to_vec())));
    let manifests = entry.manifests();
    t.add(root, "manifest.json", Node::Blob(manifests[0].clone()));
    for m in &manifests[1..] {
        t.add(root, &format!("{}.manifest.json", m.hex()), Node::Blob(m.clone()));
    }
    for b in entry.blobs() {
        if !manifests.iter().any(|m| m.digest == b.digest) {
            t.add(root, &b.hex().to_string(), Node::Blob(b));
        }
    }
}
