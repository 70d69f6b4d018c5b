//! The FUSE adaptor: inodes over the catalog's image trees, read-only.
//!
//! Inode 1 is the mount root; an image's node `n` is `serial << 32 | n`, so a changed
//! description (new serial) gets new inodes and everything under it can be cached for long.
//! 32 bits of nodes leave room for a view of every file of a large image; 32 bits of serials
//! for four billion description loads. Its file tree views (`NAME.rootfs`, `NAME.bundle`) take
//! the upper node numbers (`views::ROOTFS_NODES`…). Lookups are counted per image, so a replaced
//! image answers as long as the kernel holds any of its inodes.

use crate::catalog::{Catalog, CatalogImage, Served};
use crate::digest::hex;
use crate::image::ServedBlob;
use crate::layer::tar::Kind;
use crate::views::{FileTree, Node, Stat, ARCHIVE, BUNDLE_NODES, DIR_ROOT, OCI_ROOT, ROOTFS_NODES};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

const ROOT: u64 = 1;
/// A hidden file at the root (looked up, never listed): `{"NAME": "/resolved/description.json"}`
/// for every image served, so `nixoci copy` can tell whether this mount serves its image.
pub const LISTING: &str = ".nixoci-images.json";
/// Its inode: serial 0 is never an image's.
const LISTING_INO: u64 = 2;
const NODE_BITS: u32 = 32;
/// Names at the top change when descriptions do.
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Everything under an image is immutable for the life of its inodes.
const LONG_TTL: Duration = Duration::from_secs(3600);
/// Smaller files are read by the daemon and kept in the page cache even with passthrough: their
/// cost is the open, and registering a file with the kernel makes it dearer.
const PASSTHROUGH_MIN: u64 = 64 << 10;
/// Out-of-order reads kept while verifying a blob, before giving up on verifying that open.
const MAX_PENDING: usize = 16 << 20;

fn inode(serial: u64, node: usize) -> u64 {
    serial << NODE_BITS | node as u64
}

fn split(ino: u64) -> (u64, usize) {
    (ino >> NODE_BITS, (ino & ((1 << NODE_BITS) - 1)) as usize)
}

fn attr(ino: u64, kind: FileType, size: u64) -> FileAttr {
    let t = UNIX_EPOCH + Duration::from_secs(1);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: if kind == FileType::Directory { 0o555 } else { 0o444 },
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        // cat and friends size their buffer from this: 128 KiB stays in L2, 1 MiB does not.
        blksize: 128 << 10,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// Attributes of a file tree view's node: the image's own type, mode and owner.
fn tree_attr(ino: u64, st: Stat) -> FileAttr {
    FileAttr { perm: st.mode as u16, uid: st.uid, gid: st.gid, ..attr(ino, file_type(st.kind), st.size) }
}

/// Hashes a blob as it is served, when its reads come in order from offset 0.
struct Verifier {
    hasher: Sha256,
    next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
}

struct Handle {
    blob: Arc<dyn crate::blob::Blob>,
    /// Set for content-addressed blobs not verified yet.
    verify: Option<(Arc<ServedBlob>, Mutex<Option<Verifier>>)>,
    /// The store file the kernel reads directly (passthrough), kept open while the handle is.
    _backing: Option<Arc<BackingId>>,
}

impl Handle {
    /// Feed served bytes; Err when the blob just proved to differ from its digest.
    fn check(&self, offset: u64, data: &[u8]) -> Result<(), ()> {
        let Some((sb, state)) = &self.verify else { return Ok(()) };
        let mut guard = state.lock().unwrap();
        let Some(v) = guard.as_mut() else { return Ok(()) };
        if offset > v.next {
            v.pending_bytes += data.len();
            v.pending.insert(offset, data.to_vec());
            if v.pending_bytes > MAX_PENDING {
                *guard = None; // too scattered to follow: a later sequential open will verify
            }
            return Ok(());
        }
        if offset + data.len() as u64 <= v.next {
            return Ok(()); // re-read of bytes already hashed
        }
        v.hasher.update(&data[(v.next - offset) as usize..]);
        v.next = offset + data.len() as u64;
        while let Some(entry) = v.pending.first_entry() {
            if *entry.key() > v.next {
                break;
            }
            let (at, chunk) = entry.remove_entry();
            v.pending_bytes -= chunk.len();
            if at + chunk.len() as u64 > v.next {
                v.hasher.update(&chunk[(v.next - at) as usize..]);
                v.next = at + chunk.len() as u64;
            }
        }
        if v.next < sb.size() {
            return Ok(());
        }
        let got = format!("sha256:{}", hex(&std::mem::take(&mut v.hasher).finalize()));
        *guard = None;
        if got == sb.digest {
            sb.verified.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            sb.fail(format!("digest mismatch: the bytes served hash to {got}, the description says {}", sb.digest));
            Err(())
        }
    }
}

/// A directory's entries: inode, type and name of each.
type DirEntries = Vec<(u64, FileType, OsString)>;

pub struct NixociFs {
    catalog: Arc<Catalog>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirEntries>>>,
    next_fh: AtomicU64,
    /// Whether the kernel reads the file tree views' store files itself (FUSE passthrough).
    passthrough: AtomicBool,
    /// The passthrough file of each open inode: every open of an inode must name the same one.
    backing: Mutex<HashMap<u64, Weak<BackingId>>>,
}

impl NixociFs {
    /// `passthrough`: let the kernel read store files of NAME.rootfs and NAME.bundle directly
    /// when it can (else the daemon reads them).
    pub fn new(catalog: Arc<Catalog>, passthrough: bool) -> NixociFs {
        NixociFs {
            catalog,
            handles: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(passthrough),
            backing: Mutex::default(),
        }
    }

    fn image(&self, serial: u64) -> Result<Arc<CatalogImage>, Errno> {
        self.catalog.by_serial(serial).ok_or(Errno::ENOENT)
    }

    fn served(&self, img: &CatalogImage) -> Result<Served, Errno> {
        img.get().map_err(|_| Errno::EIO)
    }

    fn node_attr(&self, served: &Served, serial: u64, node: usize) -> FileAttr {
        let i = inode(serial, node);
        match &served.1.nodes[node] {
            Node::Dir(_) => attr(i, FileType::Directory, 0),
            Node::Blob(b) => attr(i, FileType::RegularFile, b.size()),
            Node::Plain(b) => attr(i, FileType::RegularFile, b.size()),
        }
    }

    /// The file tree view an image node is in, and its node there.
    fn file_tree(img: &CatalogImage, node: usize) -> Option<(&dyn FileTree, u32)> {
        let tree: &dyn FileTree = if node >= BUNDLE_NODES {
            img.files.bundle.as_deref()?
        } else if node >= ROOTFS_NODES {
            img.files.rootfs.as_deref()?
        } else {
            return None;
        };
        Some((tree, (node % ROOTFS_NODES) as u32))
    }

    /// Attributes of an image node; the two view directories and the file trees need no digests.
    fn image_attr(&self, img: &CatalogImage, node: usize) -> Result<FileAttr, Errno> {
        if let Some((tree, n)) = Self::file_tree(img, node) {
            return Ok(tree_attr(inode(img.serial, node), tree.stat(n)));
        }
        if node >= ROOTFS_NODES {
            return Err(Errno::ENOENT);
        }
        if node == OCI_ROOT || node == DIR_ROOT {
            return Ok(attr(inode(img.serial, node), FileType::Directory, 0));
        }
        let served = self.served(img)?;
        if node == 0 || node >= served.1.nodes.len() {
            return Err(Errno::ENOENT);
        }
        Ok(self.node_attr(&served, img.serial, node))
    }

    fn lookup_top(&self, name: &str) -> Option<(Arc<CatalogImage>, usize)> {
        let base = [".dir", ".tar", ".rootfs", ".bundle"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        let img = self.catalog.by_name(base)?;
        let node = img.top_names().into_iter().find(|(n, _)| n == name)?.1;
        Some((img, node))
    }

    fn listing(&self) -> Vec<u8> {
        let names: serde_json::Map<String, serde_json::Value> =
            self.catalog.names().iter().map(|i| (i.name.clone(), i.source.to_string_lossy().into())).collect();
        serde_json::to_vec(&names).unwrap()
    }

    /// The entry of `name` in `parent`, and the image it belongs to (none for the listing file).
    fn do_lookup(&self, parent: u64, name: &OsStr) -> Result<(Duration, FileAttr, Option<Arc<CatalogImage>>), Errno> {
        if parent == ROOT && name == LISTING {
            return Ok((Duration::ZERO, attr(LISTING_INO, FileType::RegularFile, self.listing().len() as u64), None));
        }
        if parent == ROOT {
            let name = name.to_str().ok_or(Errno::ENOENT)?;
            let found = self.lookup_top(name).or_else(|| {
                self.catalog.refresh(Duration::from_millis(200)); // a description just added appears at once
                self.lookup_top(name)
            });
            let (img, node) = found.ok_or(Errno::ENOENT)?;
            return Ok((SHORT_TTL, self.image_attr(&img, node)?, Some(img)));
        }
        let (serial, dir) = split(parent);
        let img = self.image(serial)?;
        if let Some((tree, n)) = Self::file_tree(&img, dir) {
            let child = tree.lookup(n, name.as_bytes()).ok_or(Errno::ENOENT)?;
            let node = dir - n as usize + child as usize;
            return Ok((LONG_TTL, tree_attr(inode(serial, node), tree.stat(child)), Some(img)));
        }
        let served = self.served(&img)?;
        let node = served.1.lookup(dir, name.to_str().ok_or(Errno::ENOENT)?).ok_or(Errno::ENOENT)?;
        Ok((LONG_TTL, self.node_attr(&served, serial, node), Some(img)))
    }

    /// A directory's entries, `.` and `..` first.
    fn dir_entries(&self, ino: u64) -> Result<DirEntries, Errno> {
        let mut entries: DirEntries = vec![(ino, FileType::Directory, ".".into()), (ROOT, FileType::Directory, "..".into())];
        if ino == ROOT {
            self.catalog.refresh(Duration::from_millis(200));
            for img in self.catalog.names() {
                for (name, node) in img.top_names() {
                    let kind = if node == ARCHIVE { FileType::RegularFile } else { FileType::Directory };
                    entries.push((inode(img.serial, node), kind, name.into()));
                }
            }
            return Ok(entries);
        }
        let (serial, dir) = split(ino);
        let img = self.image(serial)?;
        if let Some((tree, n)) = Self::file_tree(&img, dir) {
            if tree.stat(n).kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            let base = dir - n as usize;
            for (c, name) in tree.children(n) {
                entries.push((inode(serial, base + c as usize), file_type(tree.stat(c).kind), OsString::from_vec(name)));
            }
            return Ok(entries);
        }
        let served = self.served(&img)?;
        let Some(Node::Dir(children)) = served.1.nodes.get(dir) else { return Err(Errno::ENOTDIR) };
        for (name, id) in children {
            let kind = if matches!(served.1.nodes[*id], Node::Dir(_)) { FileType::Directory } else { FileType::RegularFile };
            entries.push((inode(serial, *id), kind, name.into()));
        }
        Ok(entries)
    }

    /// A handle on a file of a file tree view; the kernel reads a store file itself when it can.
    fn open_tree_file(&self, img: &CatalogImage, ino: u64, tree: &dyn FileTree, node: u32, reply: ReplyOpen) {
        if tree.stat(node).kind != Kind::File {
            return reply.error(Errno::EISDIR);
        }
        let opened = match tree.open(node) {
            Ok(o) => o,
            Err(e) => {
                log::error!("image {}: open of a root filesystem file: {e}", img.name);
                return reply.error(Errno::EIO);
            }
        };
        let passthrough = self.passthrough.load(Ordering::Relaxed) && opened.blob.size() >= PASSTHROUGH_MIN;
        let backing = opened.file.filter(|_| passthrough).and_then(|file| {
            let mut ids = self.backing.lock().unwrap();
            if let Some(id) = ids.get(&ino).and_then(Weak::upgrade) {
                return Some(id);
            }
            match reply.open_backing(&*file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    ids.retain(|_, w| w.strong_count() > 0);
                    ids.insert(ino, Arc::downgrade(&id));
                    Some(id)
                }
                Err(e) => {
                    log::warn!("FUSE passthrough refused ({e}): the daemon reads root filesystem files from now on");
                    self.passthrough.store(false, Ordering::Relaxed);
                    None
                }
            }
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle { blob: opened.blob, verify: None, _backing: backing.clone() };
        self.handles.lock().unwrap().insert(fh, Arc::new(handle));
        match backing {
            Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            // Store files never change under an inode: keep the page cache across opens.
            None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    /// Reads into `buf`, this FUSE thread's buffer (a fresh one per request costs a page fault
    /// per 4 KiB written: 2% of a compressed read's CPU); the bytes read.
    fn do_read<'b>(&self, fh: u64, offset: u64, size: u32, buf: &'b mut Vec<u8>) -> Result<&'b [u8], Errno> {
        let h = self.handles.lock().unwrap().get(&fh).cloned().ok_or(Errno::EBADF)?;
        let len = (h.blob.size().saturating_sub(offset)).min(size as u64) as usize;
        buf.resize(len, 0);
        if let Err(e) = h.blob.read_at(offset, buf) {
            let what = h.verify.as_ref().map_or("file".to_string(), |(sb, _)| sb.label.clone());
            log::error!("read of {what} at {offset}: {e}");
            return Err(Errno::EIO);
        }
        h.check(offset, buf).map_err(|()| Errno::EIO)?;
        Ok(buf)
    }
}

impl Filesystem for NixociFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large read requests: max_pages follows max(max_write, max_readahead).
        let _ = config.set_max_write(4 << 20);
        let _ = config.set_max_readahead(4 << 20);
        // Passthrough with a stack depth of 1: store files must be on a plain file system, and
        // the mount can be the lower layer of an overlay (podman's `--rootfs …:O`).
        // Registering a store file with the kernel needs CAP_SYS_ADMIN: a user's mount reads them.
        let wanted = self.passthrough.load(Ordering::Relaxed) && unsafe { libc::geteuid() } == 0;
        let on = wanted
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(on, Ordering::Relaxed);
        if on {
            log::info!("FUSE passthrough: the kernel reads root filesystem files from the store");
        } else if wanted {
            log::info!("the kernel offers no FUSE passthrough: the daemon reads root filesystem files");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent.0, name) {
            Ok((ttl, a, img)) => {
                if let Some(img) = img {
                    img.lookups.fetch_add(1, Ordering::Relaxed);
                }
                reply.entry(&ttl, &a, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Some(img) = self.catalog.by_serial(split(ino.0).0) {
            img.lookups.fetch_sub(nlookup, Ordering::Relaxed);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (serial, node) = split(ino.0);
        let link = |img: Arc<CatalogImage>| {
            let (tree, n) = Self::file_tree(&img, node).filter(|(tree, n)| tree.stat(*n).kind == Kind::Symlink)?;
            Some(tree.link(n).to_vec())
        };
        match self.image(serial).map(link) {
            Ok(Some(target)) => reply.data(&target),
            Ok(None) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(&SHORT_TTL, &attr(ROOT, FileType::Directory, 0));
        }
        if ino.0 == LISTING_INO {
            return reply.attr(&Duration::ZERO, &attr(LISTING_INO, FileType::RegularFile, self.listing().len() as u64));
        }
        let (serial, node) = split(ino.0);
        match self.image(serial).and_then(|img| self.image_attr(&img, node)) {
            Ok(a) => reply.attr(&LONG_TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    /// A directory's listing is taken once when it is opened, so paging through it costs no
    /// more than the page (a root of thousands of images is not listed again for each page)
    /// and a listing stays consistent while descriptions change.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.dir_entries(ino.0) {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().unwrap().insert(fh, Arc::new(l));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(entries) = self.dirs.lock().unwrap().get(&fh.0).cloned() else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == LISTING_INO {
            // Its size changes with the catalog: direct I/O, so reads are not cut at a cached size.
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles.lock().unwrap().insert(fh, Arc::new(Handle { blob: Arc::new(self.listing()), verify: None, _backing: None }));
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        let (serial, node) = split(ino.0);
        if let Ok(img) = self.image(serial) {
            if let Some((tree, n)) = Self::file_tree(&img, node) {
                return self.open_tree_file(&img, ino.0, tree, n, reply);
            }
        }
        let handle = self.image(serial).and_then(|img| self.served(&img)).and_then(|served| match served.1.nodes.get(node) {
            Some(Node::Blob(sb)) => {
                if let Some(why) = sb.failure() {
                    log::error!("open of {}: {why}", sb.label);
                    return Err(Errno::EIO);
                }
                let verify = (!sb.verified.load(Ordering::Relaxed)).then(|| {
                    let v = Verifier { hasher: Sha256::new(), next: 0, pending: BTreeMap::new(), pending_bytes: 0 };
                    (sb.clone(), Mutex::new(Some(v)))
                });
                Ok(Handle { blob: sb.clone(), verify, _backing: None })
            }
            Some(Node::Plain(b)) => Ok(Handle { blob: b.clone(), verify: None, _backing: None }),
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        });
        match handle {
            Ok(h) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.handles.lock().unwrap().insert(fh, Arc::new(h));
                // Blobs never change under an inode: keep the page cache across opens.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| match self.do_read(fh.0, offset, size, buf) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        })
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    /// Nothing to flush on a read-only file system; ENOSYS makes the kernel stop asking, which
    /// spares every close() a round trip.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    /// Files are always ready; ENOSYS makes the kernel stop asking.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// No extended attributes (and no SELinux labels) on anything.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.size(0);
    }
}
