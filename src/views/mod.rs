//! What an image looks like in the mount: a small tree of directories and files over the image's
//! blobs. Each view is a mapping from names to the same blobs; none makes bytes of its own
//! except small JSON and tar headers.

pub mod archive;
pub mod bundle;
pub mod dir;
pub mod oci;
pub mod rootfs;

use crate::blob::Blob;
use crate::conversion;
use crate::description::Description;
use crate::entry::Entry;
use crate::image::{PreparedLayer, ServedBlob};
use crate::layer::tar::Kind;
use crate::platform::Platform;
use std::fs::File;
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

/// Node numbers of the file tree views: node `n` of an image's root filesystem is
/// `ROOTFS_NODES + n`, of its bundle `BUNDLE_NODES + n`; the view tree's stay below both.
pub const ROOTFS_NODES: usize = 1 << 30;
pub const BUNDLE_NODES: usize = 2 << 30;
pub const ROOTFS_ROOT: usize = ROOTFS_NODES + rootfs::ROOT as usize;
pub const BUNDLE_ROOT: usize = BUNDLE_NODES + bundle::BUNDLE as usize;

/// Names an image can take at the top of the mount (NAME.tar only when it has a
/// docker-archive, NAME.rootfs and NAME.bundle only when `FileViews` made them).
pub fn top_names(name: &str) -> [(String, usize); 5] {
    [
        (name.to_string(), OCI_ROOT),
        (format!("{name}.dir"), DIR_ROOT),
        (format!("{name}.tar"), ARCHIVE),
        (format!("{name}.rootfs"), ROOTFS_ROOT),
        (format!("{name}.bundle"), BUNDLE_ROOT),
    ]
}

pub fn build(name: &str, entry: &Entry) -> Tree {
    let mut t = Tree { nodes: vec![Node::Dir(Vec::new())] };
    let [oci_name, dir_name, archive_name, ..] = top_names(name);
    assert_eq!(t.dir(0, &oci_name.0), OCI_ROOT);
    assert_eq!(t.dir(0, &dir_name.0), DIR_ROOT);
    if let Some(image) = entry.archive_image() {
        assert_eq!(t.add(0, &archive_name.0, Node::Plain(Arc::new(archive::build(name, image)))), ARCHIVE);
    }
    oci::fill(&mut t, OCI_ROOT, entry);
    dir::fill(&mut t, DIR_ROOT, entry);
    t
}

/// What `stat` shows of a node of a file tree view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

impl Stat {
    /// A directory a view adds (the root of an image without layers, a bundle's mount point).
    pub const DIR: Stat = Stat { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, size: 0 };
}

/// An opened file of a file tree view: its bytes, and the store file behind them when there
/// is one (for the kernel to read directly).
pub struct Opened {
    pub blob: Arc<dyn Blob>,
    pub file: Option<Arc<File>>,
}

/// The views that show files of the image itself (`NAME.rootfs/`, `NAME.bundle/`), as the FUSE
/// adaptor asks for them: nodes are numbers below `rootfs::SPECIAL` for the image's entries,
/// from it up for what a view adds.
pub trait FileTree: Send + Sync {
    fn stat(&self, node: u32) -> Stat;
    fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32>;
    fn children(&self, dir: u32) -> Vec<(u32, Vec<u8>)>;
    /// A symlink's target.
    fn link(&self, node: u32) -> &[u8];
    fn open(&self, node: u32) -> std::io::Result<Opened>;
}

/// The views of an image's own files, made when it is loaded: they need no digests. Each is
/// left out, with a log line saying why, when the image cannot have it.
#[derive(Default)]
pub struct FileViews {
    pub rootfs: Option<Arc<rootfs::Rootfs>>,
    pub bundle: Option<Arc<bundle::Bundle>>,
}

impl FileViews {
    /// The views of `image` (an index's image for the mount host's platform; none without one).
    pub fn new(name: &str, image: Option<(&Description, &[PreparedLayer])>) -> FileViews {
        let Some((desc, layers)) = image else {
            log::info!("image {name}: no {name}.rootfs or {name}.bundle: the index has no image for this host's platform {}", Platform::host());
            return FileViews::default();
        };
        let mut indexes = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            match &l.index {
                Some(idx) => indexes.push(idx.clone()),
                None => {
                    log::info!("image {name}: no {name}.rootfs or {name}.bundle: layer {i} is a ready tar file (layer-path), whose members are not indexed");
                    return FileViews::default();
                }
            }
        }
        let rootfs = match rootfs::Rootfs::new(indexes) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                log::warn!("image {name}: no {name}.rootfs or {name}.bundle: {e}");
                return FileViews::default();
            }
        };
        let image = conversion::Image { config: &desc.image_config, platform: &desc.platform, created: desc.created.as_deref() };
        let bundle = bundle::Bundle::new(name, &image, rootfs.clone())
            .map_err(|e| log::warn!("image {name}: no {name}.bundle: {e}"))
            .ok()
            .map(Arc::new);
        FileViews { rootfs: Some(rootfs), bundle }
    }
}
