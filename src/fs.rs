//! The FUSE adaptor: inodes over the catalog's image trees, read-only.
//!
//! Inode 1 is the mount root; an image's node `n` is `serial << 32 | n`, so a changed
//! description (new serial) gets new inodes and everything under it can be cached for long.
//! 32 bits of nodes leave room for a view of every file of a large image; 32 bits of serials
//! for four billion description loads.

use crate::catalog::{Catalog, CatalogImage, Served};
use crate::digest::hex;
use crate::image::ServedBlob;
use crate::views::{Node, ARCHIVE, DIR_ROOT, OCI_ROOT};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
type DirEntries = Vec<(u64, FileType, String)>;

pub struct NixociFs {
    catalog: Arc<Catalog>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirEntries>>>,
    next_fh: AtomicU64,
}

impl NixociFs {
    pub fn new(catalog: Arc<Catalog>) -> NixociFs {
        NixociFs { catalog, handles: Mutex::default(), dirs: Mutex::default(), next_fh: AtomicU64::new(1) }
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

    /// Attributes of an image node; the two view directories need no digests.
    fn image_attr(&self, img: &CatalogImage, node: usize) -> Result<FileAttr, Errno> {
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
        let base = name.strip_suffix(".dir").or_else(|| name.strip_suffix(".tar")).unwrap_or(name);
        let img = self.catalog.by_name(base)?;
        let node = img.top_names().into_iter().find(|(n, _)| n == name)?.1;
        Some((img, node))
    }

    fn listing(&self) -> Vec<u8> {
        let names: serde_json::Map<String, serde_json::Value> =
            self.catalog.names().iter().map(|i| (i.name.clone(), i.source.to_string_lossy().into())).collect();
        serde_json::to_vec(&names).unwrap()
    }

    fn do_lookup(&self, parent: u64, name: &str) -> Result<(Duration, FileAttr), Errno> {
        if parent == ROOT && name == LISTING {
            return Ok((Duration::ZERO, attr(LISTING_INO, FileType::RegularFile, self.listing().len() as u64)));
        }
        if parent == ROOT {
            let found = self.lookup_top(name).or_else(|| {
                self.catalog.refresh(Duration::from_millis(200)); // a description just added appears at once
                self.lookup_top(name)
            });
            let (img, node) = found.ok_or(Errno::ENOENT)?;
            return Ok((SHORT_TTL, self.image_attr(&img, node)?));
        }
        let (serial, dir) = split(parent);
        let img = self.image(serial)?;
        let served = self.served(&img)?;
        let node = served.1.lookup(dir, name).ok_or(Errno::ENOENT)?;
        Ok((LONG_TTL, self.node_attr(&served, serial, node)))
    }

    /// A directory's entries, `.` and `..` first.
    fn dir_entries(&self, ino: u64) -> Result<DirEntries, Errno> {
        let mut entries: DirEntries = vec![(ino, FileType::Directory, ".".into()), (ROOT, FileType::Directory, "..".into())];
        if ino == ROOT {
            self.catalog.refresh(Duration::from_millis(200));
            for img in self.catalog.names() {
                for (name, node) in img.top_names() {
                    let kind = if node == ARCHIVE { FileType::RegularFile } else { FileType::Directory };
                    entries.push((inode(img.serial, node), kind, name));
                }
            }
            return Ok(entries);
        }
        let (serial, dir) = split(ino);
        let img = self.image(serial)?;
        let served = self.served(&img)?;
        let Some(Node::Dir(children)) = served.1.nodes.get(dir) else { return Err(Errno::ENOTDIR) };
        for (name, id) in children {
            let kind = if matches!(served.1.nodes[*id], Node::Dir(_)) { FileType::Directory } else { FileType::RegularFile };
            entries.push((inode(serial, *id), kind, name.clone()));
        }
        Ok(entries)
    }

    fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let h = self.handles.lock().unwrap().get(&fh).cloned().ok_or(Errno::EBADF)?;
        let len = (h.blob.size().saturating_sub(offset)).min(size as u64) as usize;
        let mut buf = vec![0u8; len];
        if let Err(e) = h.blob.read_at(offset, &mut buf) {
            let what = h.verify.as_ref().map_or("file".to_string(), |(sb, _)| sb.label.clone());
            log::error!("read of {what} at {offset}: {e}");
            return Err(Errno::EIO);
        }
        h.check(offset, &buf).map_err(|()| Errno::EIO)?;
        Ok(buf)
    }
}

impl Filesystem for NixociFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large read requests: max_pages follows max(max_write, max_readahead).
        let _ = config.set_max_write(4 << 20);
        let _ = config.set_max_readahead(4 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.do_lookup(parent.0, name) {
            Ok((ttl, a)) => reply.entry(&ttl, &a, Generation(0)),
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
            self.handles.lock().unwrap().insert(fh, Arc::new(Handle { blob: Arc::new(self.listing()), verify: None }));
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        let (serial, node) = split(ino.0);
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
                Ok(Handle { blob: sb.clone(), verify })
            }
            Some(Node::Plain(b)) => Ok(Handle { blob: b.clone(), verify: None }),
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
        match self.do_read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
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

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
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
