//! The image's root filesystem (`NAME.rootfs/`) as `umoci unpack` makes it, mapped onto the
//! layers' walked entries, the same ones that make the layer tars: nothing is walked or copied
//! again. Layers apply in order: a later layer's entry replaces an earlier one at the same path;
//! a directory over a directory merges the two (its metadata from the later one); anything else
//! replaces the earlier entry and hides what was under it. Nix layers hold no whiteouts.
//!
//! A node is an entry of one layer (numbered through all layers in turn, after the root, node
//! 0): the entry that ends up at its path. A directory that only one layer holds lists that
//! layer's children. The few that several layers hold (`/`, `/nix`, `/nix/store`, copyToRoot's
//! `/bin`…) have their merged children computed once, when the view is made.

use super::{FileTree, Opened, Stat};
use crate::blob::Blob;
use crate::layer::tar::Kind;
use crate::layer::LayerIndex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

pub const ROOT: u32 = 0;
/// Node numbers from here up are not entries: the bundle view's own nodes.
pub const SPECIAL: u32 = (1 << 30) - (1 << 16);
/// Longest name a directory listing can carry (NAME_MAX).
const NAME_MAX: usize = 255;

pub struct Rootfs {
    layers: Vec<Arc<LayerIndex>>,
    /// Node of each layer's first entry.
    first: Vec<u32>,
    /// The entry that makes the root (the last layer's `/`), if any layer has one.
    root_entry: Option<u32>,
    /// Children, sorted by name, of the root and of every directory several layers hold.
    merged: HashMap<u32, Vec<u32>>,
    /// Nodes whose too long names were logged, so each is logged once.
    logged: Mutex<HashSet<u32>>,
}

impl Rootfs {
    /// The merged tree of `layers` (bottom first). Fails when an entry cannot be placed.
    pub fn new(layers: Vec<Arc<LayerIndex>>) -> Result<Rootfs, String> {
        let mut first = Vec::with_capacity(layers.len());
        let mut next = 1u64;
        for (l, idx) in layers.iter().enumerate() {
            first.push(next as u32);
            next += idx.entries() as u64;
            if next > SPECIAL as u64 {
                return Err(format!("more than {SPECIAL} entries in the layers up to layer {l}: too many for the view's inodes"));
            }
            if idx.entries() == 0 {
                continue;
            }
            if idx.base_name(0) == b"/" && idx.entry(0).kind() != Kind::Dir {
                return Err(format!("layer {l}: '/' is not a directory"));
            }
            // Names are absolute in layers made from store paths: `/` holds every other entry. A
            // rewrite can make them relative, and an unpacker would then place them elsewhere
            // than the tar says.
            let outside = if idx.base_name(0) == b"/" { idx.subtree_end(0) } else { 0 };
            if outside < idx.entries() {
                let name = String::from_utf8_lossy(&idx.name(outside)).into_owned();
                return Err(format!("layer {l}: entry '{name}' is not under '/' (a rewrite made its name relative)"));
            }
        }
        let mut fs = Rootfs { layers, first, root_entry: None, merged: HashMap::new(), logged: Mutex::default() };
        let roots: Vec<u32> = (0..fs.layers.len()).filter(|&l| fs.layers[l].entries() > 0).map(|l| fs.first[l]).collect();
        fs.root_entry = roots.last().copied();
        fs.merge(ROOT, &roots);
        Ok(fs)
    }

    fn locate(&self, node: u32) -> (&LayerIndex, usize) {
        let l = self.first.partition_point(|&f| f <= node) - 1;
        (&self.layers[l], (node - self.first[l]) as usize)
    }

    fn entry_stat(&self, node: u32) -> Stat {
        let (idx, i) = self.locate(node);
        let e = idx.entry(i);
        let owner = idx.owner(i);
        // A symlink's mode is 0777 on Linux whatever the tar header says (perms rules can set it).
        let (mode, size) = match e.kind() {
            Kind::Symlink => (0o777, idx.link(i).len() as u64),
            _ => (e.mode(), e.size()),
        };
        Stat { kind: e.kind(), mode, uid: owner.uid, gid: owner.gid, size }
    }

    fn name(&self, node: u32) -> &[u8] {
        let (idx, i) = self.locate(node);
        idx.base_name(i)
    }

    fn layer_children(&self, dir: u32) -> impl Iterator<Item = u32> + '_ {
        let (idx, i) = self.locate(dir);
        let first = dir - i as u32;
        let is_dir = idx.entry(i).kind() == Kind::Dir;
        is_dir.then(|| idx.children(i).map(move |c| first + c as u32)).into_iter().flatten()
    }

    /// Record the merged children of `dir`, a path that the directories `chain` (lowest layer
    /// first) make: the last entry of each name wins; a directory that the layers above its
    /// last non-directory hold more than once is merged in turn.
    fn merge(&mut self, dir: u32, chain: &[u32]) {
        let mut by_name: BTreeMap<&[u8], Vec<u32>> = BTreeMap::new();
        for &d in chain {
            for c in self.layer_children(d) {
                by_name.entry(self.name(c)).or_default().push(c);
            }
        }
        let mut children = Vec::with_capacity(by_name.len());
        let mut below = Vec::new();
        for nodes in by_name.into_values() {
            let top = *nodes.last().unwrap();
            let is_dir = |n: &u32| self.entry_stat(*n).kind == Kind::Dir;
            let from = nodes.iter().rposition(|n| !is_dir(n)).map_or(0, |p| p + 1);
            if nodes.len() - from > 1 {
                below.push((top, nodes[from..].to_vec()));
            }
            children.push(top);
        }
        self.merged.insert(dir, children);
        for (top, chain) in below {
            self.merge(top, &chain);
        }
    }

    /// The node at `path`, following symlinks inside the root as the container would.
    fn resolve(&self, path: &[u8]) -> Option<u32> {
        let mut todo: Vec<Vec<u8>> = path.split(|&b| b == b'/').rev().map(<[u8]>::to_vec).collect();
        let mut stack = vec![ROOT];
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            match &part[..] {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let node = self.lookup(*stack.last()?, &part)?;
            if self.stat(node).kind != Kind::Symlink {
                stack.push(node);
                continue;
            }
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = self.link(node);
            if target.starts_with(b"/") {
                stack.truncate(1);
            }
            todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
        }
        stack.last().copied()
    }

    /// A regular file of the image, by path (for /etc/passwd and /etc/group).
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let node = self.resolve(path.as_bytes()).filter(|&n| n != ROOT && self.stat(n).kind == Kind::File)?;
        crate::blob::read_all(self.open(node).ok()?.blob.as_ref()).ok()
    }
}

impl FileTree for Rootfs {
    fn stat(&self, node: u32) -> Stat {
        match (node, self.root_entry) {
            (ROOT, None) => Stat::DIR,
            (ROOT, Some(e)) => self.entry_stat(e),
            _ => self.entry_stat(node),
        }
    }

    fn link(&self, node: u32) -> &[u8] {
        let (idx, i) = self.locate(node);
        idx.link(i)
    }

    fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match self.merged.get(&dir) {
            Some(children) => children.binary_search_by(|&c| self.name(c).cmp(name)).ok().map(|k| children[k]),
            None => {
                let (idx, i) = self.locate(dir);
                let dir_entry = idx.entry(i).kind() == Kind::Dir;
                dir_entry.then(|| idx.child(i, name)).flatten().map(|c| dir - i as u32 + c as u32)
            }
        }
    }

    /// A directory's children, leaving out (and logging once) names too long to be listed.
    fn children(&self, dir: u32) -> Vec<(u32, Vec<u8>)> {
        let all: Vec<u32> = match self.merged.get(&dir) {
            Some(children) => children.clone(),
            None => self.layer_children(dir).collect(),
        };
        all.into_iter()
            .filter(|&c| {
                let ok = self.name(c).len() <= NAME_MAX;
                if !ok && self.logged.lock().unwrap().insert(c) {
                    let (idx, i) = self.locate(c);
                    log::warn!("root filesystem: '{}' is left out: its name is longer than {NAME_MAX} bytes", String::from_utf8_lossy(&idx.name(i)));
                }
                ok
            })
            .map(|c| (c, self.name(c).to_vec()))
            .collect()
    }

    /// A regular file's data, read from its store file (checked to be a regular file of the size
    /// indexed, as for the layer tars).
    fn open(&self, node: u32) -> io::Result<Opened> {
        let (idx, i) = self.locate(node);
        let size = idx.entry(i).size();
        let path = String::from_utf8_lossy(&idx.source(i).unwrap_or_default()).into_owned();
        let file = idx.open(i)?;
        Ok(Opened { blob: Arc::new(StoreFile { file: file.clone(), size, path }), file: Some(file) })
    }

}

/// A store file behind a node, as a blob of the size the layer says.
struct StoreFile {
    file: Arc<File>,
    size: u64,
    path: String,
}

impl Blob for StoreFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.size.saturating_sub(offset) as usize).min(buf.len());
        self.file.read_exact_at(&mut buf[..want], offset).map_err(|e| io::Error::other(format!("{}: {e}", self.path)))?;
        Ok(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::PathSpec;
    use crate::goregex::Rewrite;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;

    /// A layer of the files under `dir`, placed at `/` (copyToRoot's rewrite).
    fn layer(dir: &Path) -> Arc<LayerIndex> {
        let d = dir.to_str().unwrap();
        let rewrite = Rewrite::new(&format!("^{}", regex::escape(d)), "").unwrap();
        Arc::new(LayerIndex::build(&[PathSpec { path: d.into(), rewrite: Some(rewrite), perms: vec![] }]).unwrap())
    }

    fn rootfs(dirs: &[&Path]) -> Rootfs {
        Rootfs::new(dirs.iter().map(|d| layer(d)).collect()).unwrap()
    }

    fn write(dir: &Path, rel: &str, data: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn mkdir(dir: &Path, rel: &str, mode: u32) {
        std::fs::create_dir_all(dir.join(rel)).unwrap();
        std::fs::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn names(fs: &dyn FileTree, dir: u32) -> Vec<String> {
        fs.children(dir).into_iter().map(|(_, n)| String::from_utf8(n).unwrap()).collect()
    }

    fn at(fs: &Rootfs, path: &str) -> Option<u32> {
        path.split('/').filter(|p| !p.is_empty()).try_fold(ROOT, |dir, part| fs.lookup(dir, part.as_bytes()))
    }

    fn content(fs: &Rootfs, path: &str) -> String {
        String::from_utf8(crate::blob::read_all(fs.open(at(fs, path).unwrap()).unwrap().blob.as_ref()).unwrap()).unwrap()
    }

    #[test]
    fn later_layers_replace_entries_and_merge_directories() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, l2) = (t.path().join("0"), t.path().join("1"), t.path().join("2"));
        write(&l0, "a/x", "zero");
        write(&l0, "a/d/f", "hidden by a file");
        write(&l0, "a/e/f", "hidden by a symlink");
        symlink("x", l0.join("a/s")).unwrap();
        write(&l0, "keep", "");
        write(&l1, "a/x", "one");
        write(&l1, "a/d", "a file over a directory");
        symlink("/keep", l1.join("a/e")).unwrap();
        write(&l1, "a/n", "new");
        mkdir(&l1, "a", 0o700);
        write(&l2, "a/d/g", "a directory again");
        mkdir(&l2, "a", 0o750);
        mkdir(&l2, "a/d", 0o711);
        let fs = rootfs(&[&l0, &l1, &l2]);

        assert_eq!(names(&fs, ROOT), ["a", "keep"]);
        let a = at(&fs, "/a").unwrap();
        assert_eq!(fs.stat(a).mode, 0o750, "a directory's metadata comes from the last layer");
        assert_eq!(names(&fs, a), ["d", "e", "n", "s", "x"]);
        assert_eq!(content(&fs, "/a/x"), "one");
        assert_eq!(names(&fs, at(&fs, "/a/d").unwrap()), ["g"], "the file of layer 1 hid layer 0's d/f");
        assert_eq!(fs.stat(at(&fs, "/a/d").unwrap()).mode, 0o711);
        let e = at(&fs, "/a/e").unwrap();
        assert_eq!((fs.stat(e).kind, fs.link(e), fs.stat(e).size), (Kind::Symlink, &b"/keep"[..], 5));
        assert!(fs.children(e).is_empty() && fs.lookup(e, b"f").is_none());
        assert_eq!(fs.link(at(&fs, "/a/s").unwrap()), b"x");
        assert_eq!(fs.stat(ROOT), Stat { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, size: 0 }, "the synthesised /");
    }

    #[test]
    fn files_are_read_from_the_store_and_symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "data/passwd", "root:x:0:0::/root:/bin/sh\n");
        std::fs::create_dir(t.path().join("etc")).unwrap();
        symlink("../data/passwd", t.path().join("etc/passwd")).unwrap();
        symlink("/", t.path().join("data/up")).unwrap();
        let fs = rootfs(&[t.path()]);
        assert_eq!(fs.read("/etc/passwd").unwrap(), b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(fs.read("/data/up/data/up/../../etc/passwd"), fs.read("/etc/passwd"));
        assert_eq!(fs.read("/../../etc/passwd"), fs.read("/etc/passwd"), "no way out of the root");
        assert_eq!(fs.read("/etc"), None);
        assert_eq!(fs.read("/etc/group"), None);
    }

    #[test]
    fn a_store_path_that_changed_is_an_error_never_other_bytes() {
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store-path");
        write(&store, "f", "indexed");
        let fs = rootfs(&[&store]);
        let f = at(&fs, "/f").unwrap();
        std::fs::remove_dir_all(&store).unwrap();
        let err = fs.open(f).err().unwrap().to_string();
        assert!(err.contains(&store.join("f").display().to_string()), "{err}");
        write(&store, "f", "made again, longer");
        let err = fs.open(f).err().unwrap().to_string();
        assert!(err.contains("changed since the layer was indexed"), "{err}");
    }

    #[test]
    fn names_too_long_to_list_are_left_out() {
        // A rewrite can join a directory's name and its child's into one of 300 bytes.
        let t = tempfile::tempdir().unwrap();
        write(t.path(), &format!("x/{}", "l".repeat(200)), "");
        let d = t.path().to_str().unwrap();
        let rewrite = Rewrite::new(&format!("^{}/x/", regex::escape(d)), &format!("/{}", "y".repeat(99))).unwrap();
        let spec = PathSpec { path: d.into(), rewrite: Some(rewrite), perms: vec![] };
        let fs = Rootfs::new(vec![Arc::new(LayerIndex::build(&[spec]).unwrap())]).unwrap();
        let long = format!("{}{}", "y".repeat(99), "l".repeat(200));
        assert!(fs.lookup(ROOT, long.as_bytes()).is_some(), "the entry is there");
        assert_eq!(names(&fs, ROOT), [d.split('/').nth(1).unwrap()], "but not listed");
    }

    #[test]
    fn relative_names_cannot_be_placed() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "bin/sh", "");
        let d = t.path().to_str().unwrap();
        let rewrite = Rewrite::new(&format!("^{}/", regex::escape(d)), "").unwrap();
        let idx = LayerIndex::build(&[PathSpec { path: d.into(), rewrite: Some(rewrite), perms: vec![] }]).unwrap();
        let err = Rootfs::new(vec![Arc::new(idx)]).err().unwrap();
        assert!(err.contains("layer 0") && err.contains("'bin'"), "{err}");
    }

    #[test]
    fn an_image_without_layers_is_an_empty_root() {
        let fs = Rootfs::new(vec![]).unwrap();
        assert_eq!(fs.stat(ROOT), Stat::DIR);
        assert!(fs.children(ROOT).is_empty());
    }
}
