//! The OCI runtime bundle (`NAME.bundle/`, for `runc run -b`): `config.json`, the image config
//! converted (see `conversion`), and `rootfs/`, the image's root filesystem plus an empty
//! directory for each place the runtime mounts something the image lacks (`/proc`, `/dev`,
//! `/sys`, volumes): the root is read-only, so the runtime could not make them.

use super::rootfs::{Rootfs, ROOT, SPECIAL};
use super::{FileTree, Opened, Stat};
use crate::conversion;
use crate::layer::tar::Kind;
use std::io;
use std::sync::Arc;

/// The bundle directory itself.
pub const BUNDLE: u32 = SPECIAL;
const CONFIG: u32 = SPECIAL + 1;
/// The first added directory.
const ADDED: u32 = SPECIAL + 2;

pub struct Bundle {
    rootfs: Arc<Rootfs>,
    config: Arc<Vec<u8>>,
    /// Added directories, as (parent, name); the node of the k-th is `ADDED + k`.
    added: Vec<(u32, Vec<u8>)>,
}

impl Bundle {
    /// Fails when the config does not convert (nothing to run, a user the image does not list…).
    pub fn new(hostname: &str, image: &conversion::Image, rootfs: Arc<Rootfs>) -> Result<Bundle, String> {
        let config = conversion::runtime_config(hostname, image, &|path| rootfs.read(path))?;
        let mut bundle = Bundle { rootfs, config: Arc::new(serde_json::to_vec_pretty(&config).unwrap()), added: Vec::new() };
        for point in conversion::mount_points(&config) {
            bundle.add_dirs(&point);
        }
        Ok(bundle)
    }

    /// Add the missing directories of `path`. Where the image has something else than a
    /// directory (a symlink, say), the runtime resolves it in the root as it does for any mount.
    fn add_dirs(&mut self, path: &str) {
        let mut dir = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir = match self.lookup(dir, part.as_bytes()) {
                Some(node) if self.stat(node).kind == Kind::Dir => node,
                Some(_) => return,
                None => {
                    self.added.push((dir, part.as_bytes().to_vec()));
                    ADDED + self.added.len() as u32 - 1
                }
            };
        }
    }
}

impl FileTree for Bundle {
    fn stat(&self, node: u32) -> Stat {
        match node {
            BUNDLE => Stat { mode: 0o555, ..Stat::DIR },
            CONFIG => Stat { kind: Kind::File, mode: 0o444, uid: 0, gid: 0, size: self.config.len() as u64 },
            n if n >= ADDED => Stat::DIR,
            n => self.rootfs.stat(n),
        }
    }

    fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        if dir == BUNDLE {
            return match name {
                b"config.json" => Some(CONFIG),
                b"rootfs" => Some(ROOT),
                _ => None,
            };
        }
        let added = self.added.iter().position(|(p, n)| *p == dir && n == name).map(|k| ADDED + k as u32);
        added.or_else(|| (dir < SPECIAL).then(|| self.rootfs.lookup(dir, name)).flatten())
    }

    fn children(&self, dir: u32) -> Vec<(u32, Vec<u8>)> {
        if dir == BUNDLE {
            return vec![(CONFIG, b"config.json".to_vec()), (ROOT, b"rootfs".to_vec())];
        }
        let mut children = if dir < SPECIAL { self.rootfs.children(dir) } else { Vec::new() };
        let added = self.added.iter().enumerate().filter(|(_, (p, _))| *p == dir);
        children.extend(added.map(|(k, (_, name))| (ADDED + k as u32, name.clone())));
        children
    }

    fn link(&self, node: u32) -> &[u8] {
        self.rootfs.link(node)
    }

    fn open(&self, node: u32) -> io::Result<Opened> {
        match node {
            CONFIG => Ok(Opened { blob: self.config.clone(), file: None }),
            n => self.rootfs.open(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::PathSpec;
    use crate::goregex::Rewrite;
    use crate::layer::LayerIndex;
    use serde_json::{json, Value};

    fn rootfs(files: &[(&str, &str)], dirs: &[&str]) -> (tempfile::TempDir, Arc<Rootfs>) {
        let t = tempfile::tempdir().unwrap();
        for (rel, data) in files {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let d = t.path().to_str().unwrap();
        let rewrite = Rewrite::new(&format!("^{}", regex::escape(d)), "").unwrap();
        let idx = LayerIndex::build(&[PathSpec { path: d.into(), rewrite: Some(rewrite), perms: vec![] }]).unwrap();
        let fs = Arc::new(Rootfs::new(vec![Arc::new(idx)]).unwrap());
        (t, fs)
    }

    fn bundle(config: Value, fs: Arc<Rootfs>) -> Result<Bundle, String> {
        let config = config.as_object().unwrap().clone();
        let platform = crate::platform::Platform::host();
        Bundle::new("img", &conversion::Image { config: &config, platform: &platform, created: None }, fs)
    }

    fn names(b: &Bundle, dir: u32) -> Vec<String> {
        b.children(dir).into_iter().map(|(_, n)| String::from_utf8(n).unwrap()).collect()
    }

    #[test]
    fn config_and_rootfs_with_the_mount_points_the_image_lacks() {
        let (_t, fs) = rootfs(&[("etc/passwd", "app:x:1000:1000::/home/app:/bin/sh\n"), ("bin/sh", "")], &["dev"]);
        let b = bundle(json!({"User": "app", "Cmd": ["/bin/sh"], "Volumes": {"/var/lib/db": {}}}), fs).unwrap();
        assert_eq!(names(&b, BUNDLE), ["config.json", "rootfs"]);
        let config: Value = serde_json::from_slice(&crate::blob::read_all(b.open(CONFIG).unwrap().blob.as_ref()).unwrap()).unwrap();
        assert_eq!(config["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(b.stat(CONFIG).size, crate::blob::read_all(b.open(CONFIG).unwrap().blob.as_ref()).unwrap().len() as u64);
        let root = b.lookup(BUNDLE, b"rootfs").unwrap();
        assert_eq!(names(&b, root), ["bin", "dev", "etc", "proc", "sys", "var"], "/dev is the image's, the others added");
        let var = b.lookup(root, b"var").unwrap();
        let lib = b.lookup(var, b"lib").unwrap();
        assert_eq!(names(&b, lib), ["db"]);
        assert_eq!(b.stat(b.lookup(lib, b"db").unwrap()), Stat::DIR);
        assert!(b.lookup(b.lookup(root, b"dev").unwrap(), b"pts").is_none(), "/dev/pts is made in /dev's tmpfs");
        assert_eq!(b.lookup(b.lookup(root, b"bin").unwrap(), b"sh").map(|n| b.stat(n).kind), Some(Kind::File));
    }

    #[test]
    fn no_bundle_when_the_config_does_not_convert() {
        let (_t, fs) = rootfs(&[("bin/sh", "")], &[]);
        assert!(bundle(json!({"User": "app", "Cmd": ["/bin/sh"]}), fs.clone()).err().unwrap().contains("'app' is not in the image's /etc/passwd"));
        assert!(bundle(json!({}), fs).err().unwrap().contains("nothing to run"));
    }
}
