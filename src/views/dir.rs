//! skopeo's `dir:` layout: formats.md §4.

use super::{Node, Tree};
use crate::image::Image;
use std::sync::Arc;

pub const VERSION: &[u8] = b"Directory Transport Version: 1.1\n";

pub fn fill(t: &mut Tree, root: usize, image: &Image) {
    t.add(root, "version", Node::Plain(Arc::new(VERSION.to_vec())));
    t.add(root, "manifest.json", Node::Blob(image.manifest.clone()));
    for b in image.blobs().into_iter().skip(1) {
        t.add(root, &b.hex().to_string(), Node::Blob(b));
    }
}
