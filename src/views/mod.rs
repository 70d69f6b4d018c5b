//! What an image looks like in the mount: a small tree of directories and files over the image's
//! blobs. Each view is a mapping from names to the same blobs; none makes bytes of its own
//! except small JSON and tar headers.

pub mod archive;
pub mod dir;
pub mod oci;

use crate::blob::Blob;
use crate::entry::Entry;
use crate::image::ServedBlob;
use std::sync::Arc;

pub enum Node {
    Dir(Vec<(String, usize)>),
    /// A content-addressed blob: verified on full reads, cached for long.
    Blob(Arc<ServedBlob>),
    /// A small generated file (oci-layout, index.json, version, the archive).
    Plain(Arc<dyn Blob>),
}

/// The nodes of one image. Node 0 holds the image's top-level names; the first three are fixed
/// so the mount can answer for them before the image's digests are known.
pub struct Tree {
    pub nodes: Vec<Node>,
}

pub const OCI_ROOT: usize = 1;
pub const DIR_ROOT: usize = 2;
pub const ARCHIVE: usize = 3;

impl Tree {
    fn add(&mut self, parent: usize, name: &str, node: Node) -> usize {
        // The same blob under two names is one node, so the kernel caches its pages once.
        let existing = match &node {
            Node::Blob(b) => self.nodes.iter().position(|n| matches!(n, Node::Blob(o) if Arc::ptr_eq(o, b))),
            _ => None,
        };
        let id = existing.unwrap_or_else(|| {
            self.nodes.push(node);
            self.nodes.len() - 1
        });
        match &mut self.nodes[parent] {
            Node::Dir(children) => children.push((name.to_string(), id)),
            _ => unreachable!("parent is a directory"),
        }
        id
    }

    fn dir(&mut self, parent: usize, name: &str) -> usize {
        self.add(parent, name, Node::Dir(Vec::new()))
    }

    pub fn lookup(&self, dir: usize, name: &str) -> Option<usize> {
        match self.nodes.get(dir)? {
            Node::Dir(children) => children.iter().find(|(n, _)| n == name).map(|&(_, id)| id),
            _ => None,
        }
    }
}

/// Names an image takes at the top of the mount (NAME.tar only when it has a docker-archive).
pub fn top_names(name: &str, archive: bool) -> Vec<(String, usize)> {
    let mut names = vec![(name.to_string(), OCI_ROOT), (format!("{name}.dir"), DIR_ROOT)];
    if archive {
        names.push((format!("{name}.tar"), ARCHIVE));
    }
    names
}

pub fn build(name: &str, entry: &Entry) -> Tree {
    let mut t = Tree { nodes: vec![Node::Dir(Vec::new())] };
    let archive = entry.archive_image();
    let names = top_names(name, archive.is_some());
    assert_eq!(t.dir(0, &names[0].0), OCI_ROOT);
    assert_eq!(t.dir(0, &names[1].0), DIR_ROOT);
    if let Some(image) = archive {
        assert_eq!(t.add(0, &names[2].0, Node::Plain(Arc::new(archive::build(name, image)))), ARCHIVE);
    }
    oci::fill(&mut t, OCI_ROOT, entry);
    dir::fill(&mut t, DIR_ROOT, entry);
    t
}
