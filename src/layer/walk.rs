//! From store paths to the ordered entry list of a layer, as nix2container builds it: every file
//! is `lstat`ed (symlinks are never followed), renamed by the path's rewrite, given the perms
//! rules, merged by tar name (collisions checked, the later path wins), missing ancestors are
//! added as 0755 directories, and the whole is ordered depth-first with children sorted bytewise.
//!
//! Directories are read on a small thread pool (one `readdir` and an `lstat` per child each);
//! each path is then walked in name order from those listings. A path without a rewrite comes out
//! in tar order by itself and is streamed; a rewritten one is collected and sorted. The paths'
//! streams are merged by name into the compact entry list of `super::Entry`.

use super::tar::{self, Kind};
use super::{Arena, Entry, Owner, Source, NO_PARENT};
use crate::description::PathSpec;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};

/// Tar order: bytewise, but '/' sorts before every other byte, so `a`, `a/b`, `a-b`.
fn tar_order(a: &[u8], b: &[u8]) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(key).cmp(b.iter().map(key))
}

fn parent(name: &[u8]) -> Option<&[u8]> {
    match name.iter().rposition(|&b| b == b'/') {
        Some(0) if name.len() > 1 => Some(b"/"),
        Some(0) | None => None,
        Some(i) => Some(&name[..i]),
    }
}

/// Whether `name` lies under the directory named `dir`.
fn is_under(name: &[u8], dir: &[u8]) -> bool {
    name.len() > dir.len() && name.starts_with(dir) && (dir == b"/" || name[dir.len()] == b'/')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---- Reading the store ------------------------------------------------------------------------

/// What `lstat` (and `readlink`) tell about one file.
struct Stat {
    st_mode: u32,
    size: u64,
    link: Vec<u8>,
}

impl Stat {
    fn of(path: &[u8], md: &std::fs::Metadata) -> Result<Stat, String> {
        let link = if md.file_type().is_symlink() {
            let t = std::fs::read_link(OsStr::from_bytes(path)).map_err(|e| format!("cannot read link '{}': {e}", lossy(path)))?;
            t.into_os_string().into_vec()
        } else {
            Vec::new()
        };
        Ok(Stat { st_mode: md.mode(), size: md.len(), link })
    }
}

/// A directory to read: its listing id and path.
type DirJob = (u32, Vec<u8>);

/// One directory's children, sorted by name; names and link targets live in `bytes`.
struct Listing {
    bytes: Vec<u8>,
    children: Vec<Child>,
}

struct Child {
    name: (u32, u32),
    link: (u32, u32),
    st_mode: u32,
    size: u64,
    /// The child's own listing when it is a directory, else `NO_PARENT`.
    dir: u32,
}

impl Listing {
    fn str(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.bytes[start as usize..end as usize]
    }

    /// Lists `path`, giving each subdirectory a listing id (from `next_id`) to be read later.
    fn read(path: &[u8], next_id: &AtomicU32) -> Result<(Listing, Vec<DirJob>), String> {
        let shown = |e: std::io::Error| format!("cannot list '{}': {e}", lossy(path));
        let mut l = Listing { bytes: Vec::new(), children: Vec::new() };
        let mut child_path = path.to_vec();
        child_path.push(b'/');
        for d in std::fs::read_dir(OsStr::from_bytes(path)).map_err(shown)? {
            let d = d.map_err(shown)?;
            let md = d.metadata().map_err(shown)?;
            let name = d.file_name().into_vec();
            child_path.truncate(path.len() + 1);
            child_path.extend_from_slice(&name);
            let stat = Stat::of(&child_path, &md)?;
            let start = l.bytes.len() as u32;
            l.bytes.extend_from_slice(&name);
            let mid = l.bytes.len() as u32;
            l.bytes.extend_from_slice(&stat.link);
            let end = u32::try_from(l.bytes.len()).map_err(|_| format!("'{}': directory listing over 4 GiB", lossy(path)))?;
            l.children.push(Child { name: (start, mid), link: (mid, end), st_mode: stat.st_mode, size: stat.size, dir: NO_PARENT });
        }
        l.children.sort_unstable_by(|a, b| l.bytes[a.name.0 as usize..a.name.1 as usize].cmp(&l.bytes[b.name.0 as usize..b.name.1 as usize]));
        let mut subdirs = Vec::new();
        for c in &mut l.children {
            if c.st_mode & libc::S_IFMT == libc::S_IFDIR {
                c.dir = next_id.fetch_add(1, Relaxed);
                child_path.truncate(path.len() + 1);
                child_path.extend_from_slice(&l.bytes[c.name.0 as usize..c.name.1 as usize]);
                subdirs.push((c.dir, child_path.clone()));
            }
        }
        l.bytes.shrink_to_fit();
        Ok((l, subdirs))
    }
}

/// Reads every directory under `roots` (listing ids 0, 1, … in order) on a few threads; the
/// listings by id.
fn read_dirs(roots: Vec<Vec<u8>>) -> Result<Vec<Option<Listing>>, String> {
    struct Pool {
        todo: Vec<DirJob>,
        busy: usize,
        done: Vec<(u32, Listing)>,
        failed: Option<String>,
    }
    let next_id = AtomicU32::new(roots.len() as u32);
    let todo = roots.into_iter().enumerate().map(|(i, p)| (i as u32, p)).collect();
    let pool = Mutex::new(Pool { todo, busy: 0, done: Vec::new(), failed: None });
    let wake = Condvar::new();
    // Reading is mostly system calls: a thread or two beyond the cores keeps them all busy.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4) + 1;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let (id, path) = {
                    let mut p = pool.lock().unwrap();
                    loop {
                        if p.failed.is_some() {
                            return;
                        }
                        if let Some(job) = p.todo.pop() {
                            p.busy += 1;
                            break job;
                        }
                        if p.busy == 0 {
                            return;
                        }
                        p = wake.wait(p).unwrap();
                    }
                };
                let res = Listing::read(&path, &next_id);
                let mut p = pool.lock().unwrap();
                p.busy -= 1;
                match res {
                    Ok((listing, subdirs)) => {
                        p.done.push((id, listing));
                        p.todo.extend(subdirs);
                    }
                    Err(e) => {
                        p.failed.get_or_insert(e);
                    }
                }
                wake.notify_all();
            });
        }
    });
    let p = pool.into_inner().unwrap();
    if let Some(e) = p.failed {
        return Err(e);
    }
    let mut listings: Vec<Option<Listing>> = (0..next_id.into_inner()).map(|_| None).collect();
    for (id, l) in p.done {
        listings[id as usize] = Some(l);
    }
    Ok(listings)
}

// ---- One path's entries ---------------------------------------------------------------------

/// A walked file as it goes into the layer.
struct Item {
    /// The tar name (cleaned, rewritten).
    name: Vec<u8>,
    /// The store path, when the rewrite made the name differ from it.
    src: Option<Vec<u8>>,
    link: Vec<u8>,
    kind: Kind,
    mode: u32,
    owner: u16,
    size: u64,
    /// `st_mode` of the source (type and permission bits), for collision checks.
    st_mode: u32,
    spec: usize,
}

/// What the runs share while they are walked.
struct Ctx<'a> {
    specs: &'a [PathSpec],
    listings: Vec<Option<Listing>>,
    owners: Vec<Owner>,
}

impl Ctx<'_> {
    /// The layer entry for store file `src` (clean) of path `si`; None for a path rewritten to
    /// nothing. Regexes see `spelled`: the listed path as written (`x/`, `x/./bin`) for the path
    /// itself, `src` below it, as Go's filepath.Walk hands them to nix2container's regexes.
    fn item(&mut self, si: usize, spelled: &[u8], src: &[u8], stat: &Stat) -> Result<Option<Item>, String> {
        let spec = &self.specs[si];
        let (name, stored) = match &spec.rewrite {
            Some(rw) => {
                let renamed = rw.apply(spelled);
                if renamed.is_empty() {
                    return Ok(None); // the rewritten root itself: nix2container skips it
                }
                (tar::clean(&renamed), Some(src.to_vec()))
            }
            None => (src.to_vec(), None),
        };
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if base.starts_with(b".wh.") {
            return Err(format!("'{}' would be read as a whiteout by container runtimes", lossy(src)));
        }
        let (kind, size) = match stat.st_mode & libc::S_IFMT {
            libc::S_IFDIR => (Kind::Dir, 0),
            libc::S_IFREG => (Kind::File, stat.size),
            libc::S_IFLNK => (Kind::Symlink, 0),
            _ => return Err(format!("'{}' is a device, FIFO or socket: not allowed in a layer", lossy(src))),
        };
        let mut mode = if kind == Kind::Symlink { 0o777 } else { stat.st_mode & 0o7777 };
        let mut owner = 0;
        if !spec.perms.is_empty() {
            let mut o = Owner::root();
            for p in spec.perms.iter().filter(|p| p.regex.is_match(spelled)) {
                (o.uid, o.gid) = (p.uid, p.gid);
                if let Some(u) = &p.uname {
                    o.uname = u.as_bytes().to_vec();
                }
                if let Some(g) = &p.gname {
                    o.gname = g.as_bytes().to_vec();
                }
                if let Some(m) = p.mode {
                    mode = m;
                }
            }
            owner = match self.owners.iter().position(|x| *x == o) {
                Some(i) => i,
                None => {
                    self.owners.push(o);
                    self.owners.len() - 1
                }
            };
        }
        let owner = u16::try_from(owner).map_err(|_| "more than 65,536 distinct owners in one layer".to_string())?;
        let link = if kind == Kind::Symlink { stat.link.clone() } else { Vec::new() };
        Ok(Some(Item { name, src: stored, link, kind, mode, owner, size, st_mode: stat.st_mode, spec: si }))
    }

    /// nix2container's collision rules: same type and mode, same size for files, same perms.
    fn check_collision(&self, old: &Item, new: &Item) -> Result<(), String> {
        let name = lossy(&new.name);
        let (a, b) = (&self.specs[old.spec].path, &self.specs[new.spec].path);
        if old.st_mode != new.st_mode {
            return Err(format!("'{name}' comes from {a} and {b} with different modes ({:o} and {:o})", old.st_mode, new.st_mode));
        }
        if old.kind == Kind::File && old.size != new.size {
            return Err(format!("'{name}' comes from {a} and {b} with different sizes ({} and {})", old.size, new.size));
        }
        // nix2container only compares when the earlier path had perms rules.
        let (was, now) = (&self.specs[old.spec].perms, &self.specs[new.spec].perms);
        if !was.is_empty() && was != now {
            return Err(format!("'{name}' comes from {a} and {b} with different perms rules"));
        }
        Ok(())
    }
}

/// One path's entries in walk order (like Go's filepath.Walk: a directory, then its children
/// in name order), made from the listings as they are needed and dropping each when done.
struct TreeRun {
    si: usize,
    root: Option<(Vec<u8>, Stat, Option<u32>)>,
    src: Vec<u8>,
    /// Open directories: listing, next child, length of its path in `src`.
    stack: Vec<(Listing, usize, usize)>,
}

impl TreeRun {
    fn next(&mut self, ctx: &mut Ctx) -> Result<Option<Item>, String> {
        loop {
            let (spelled, stat, dir) = if let Some((path, stat, dir)) = self.root.take() {
                self.src = tar::clean(&path);
                (Some(path), stat, dir)
            } else {
                let Some((listing, next, dir_len)) = self.stack.last_mut() else { return Ok(None) };
                let Some(c) = listing.children.get(*next) else {
                    self.stack.pop();
                    continue;
                };
                *next += 1;
                self.src.truncate(*dir_len);
                self.src.push(b'/');
                self.src.extend_from_slice(listing.str(c.name));
                let stat = Stat { st_mode: c.st_mode, size: c.size, link: listing.str(c.link).to_vec() };
                (None, stat, (c.dir != NO_PARENT).then_some(c.dir))
            };
            let item = ctx.item(self.si, spelled.as_deref().unwrap_or(&self.src), &self.src, &stat)?;
            if let Some(id) = dir {
                let listing = ctx.listings[id as usize].take().expect("every directory is listed once");
                self.stack.push((listing, 0, self.src.len()));
            }
            if item.is_some() {
                return Ok(item);
            }
        }
    }
}

enum Run {
    /// Already in tar order: streamed.
    Tree(TreeRun),
    /// Rewritten: collected and sorted.
    Sorted(std::vec::IntoIter<Item>),
}

impl Run {
    fn next(&mut self, ctx: &mut Ctx) -> Result<Option<Item>, String> {
        match self {
            Run::Tree(t) => t.next(ctx),
            Run::Sorted(items) => Ok(items.next()),
        }
    }
}

/// A run's next item, ordered for a min-heap by name and then by run (earlier paths first, so
/// the later one wins a collision).
struct Head {
    item: Item,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, o: &Self) -> Ordering {
        tar_order(&o.item.name, &self.item.name).then(o.run.cmp(&self.run))
    }
}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}

// ---- The entry list ---------------------------------------------------------------------------

/// A layer's entries as `walk` returns them.
#[derive(Default)]
pub(crate) struct Walked {
    pub entries: Vec<Entry>,
    pub arena: Arena,
    pub owners: Vec<Owner>,
    /// Where the last entry ends, in blocks (the trailer follows).
    pub end_block: u64,
}

/// An entry whose descendants may still come.
struct Open {
    index: u32,
    /// Length of its name: a prefix of `Builder::name`.
    name_len: usize,
    /// Its source within `Builder::src`.
    src: Option<(usize, usize)>,
}

/// Appends entries in tar order: parent links from the open ancestors, missing ancestors added.
struct Builder {
    out: Walked,
    /// The name of the innermost open entry.
    name: Vec<u8>,
    /// Sources of the open entries, one after another.
    src: Vec<u8>,
    open: Vec<Open>,
}

impl Builder {
    fn close(&mut self) {
        let o = self.open.pop().unwrap();
        let end = self.out.entries.len() as u64;
        let e = &mut self.out.entries[o.index as usize];
        if e.kind() == Kind::Dir {
            e.data = end;
        }
        if let Some((start, _)) = o.src {
            self.src.truncate(start);
        }
        self.name.truncate(self.open.last().map_or(0, |p| p.name_len));
    }

    fn push(&mut self, item: &Item, owners: &[Owner]) -> Result<(), String> {
        while self.open.last().is_some_and(|o| !is_under(&item.name, &self.name[..o.name_len])) {
            self.close();
        }
        // Ancestors nobody walked (`/`, `/nix`, `/nix/store`, …) become plain 0755 directories.
        let open_len = self.open.last().map(|o| o.name_len);
        let mut missing = Vec::new();
        let mut p = parent(&item.name);
        while let Some(dir) = p.filter(|d| open_len.is_none_or(|n| d.len() > n)) {
            missing.push(dir.len());
            p = parent(dir);
        }
        for &len in missing.iter().rev() {
            self.add(&item.name[..len], None, owners)?;
        }
        self.add(&item.name, Some(item), owners)
    }

    /// Appends the entry `name`: walked from the store, or (None) a synthesised directory.
    fn add(&mut self, name: &[u8], walked: Option<&Item>, owners: &[Owner]) -> Result<(), String> {
        let (kind, mode, owner, size, link, src) = match walked {
            Some(i) => (i.kind, i.mode, i.owner, i.size, &i.link[..], Some(i.src.as_deref().unwrap_or(&i.name))),
            None => (Kind::Dir, 0o755, 0, 0, &b""[..], None),
        };
        let index = u32::try_from(self.out.entries.len()).ok().filter(|&i| i != NO_PARENT).ok_or("more than 4 billion entries in one layer")?;
        let parent = self.open.last();
        let base = match parent {
            Some(p) if &name[..p.name_len] == b"/" => &name[1..],
            Some(p) => &name[p.name_len + 1..],
            None => name,
        };
        let parent_src = parent.and_then(|p| p.src).map(|(s, e)| &self.src[s..e]);
        let rule = match src {
            None => Source::None,
            Some(s) if s == name => Source::Name,
            Some(s) if parent_src.is_some_and(|ps| s.len() == ps.len() + 1 + base.len() && s.starts_with(ps) && s[ps.len()] == b'/' && s.ends_with(base)) => Source::Parent,
            Some(_) => Source::Stored,
        };
        let record = u32::try_from(self.out.arena.len()).map_err(|_| "layer names exceed 4 GiB".to_string())?;
        self.out.arena.push(base);
        if kind == Kind::Symlink {
            self.out.arena.push(link);
        }
        if let (Source::Stored, Some(s)) = (rule, src) {
            self.out.arena.push(s);
        }
        let o = &owners[owner as usize];
        let header = tar::Header { name, kind, link, mode, uid: o.uid as u64, gid: o.gid as u64, uname: &o.uname, gname: &o.gname, size, mtime: 1 };
        let block = self.out.end_block as u32; // `finish` refuses a layer whose end does not fit
        self.out.end_block += (header.encoded_len() + tar::padded(size)) / tar::BLOCK;
        let kind_bits = match kind {
            Kind::Dir => 0,
            Kind::File => 1,
            Kind::Symlink => 2,
        };
        let bits = mode as u16 & 0o7777 | kind_bits << 12 | (rule as u16) << 14;
        let parent = parent.map_or(NO_PARENT, |p| p.index);
        self.out.entries.push(Entry { block, parent, record, bits, owner, data: size });
        let src = src.map(|s| {
            let start = self.src.len();
            self.src.extend_from_slice(s);
            (start, self.src.len())
        });
        self.name.clear();
        self.name.extend_from_slice(name);
        self.open.push(Open { index, name_len: name.len(), src });
        Ok(())
    }

    fn finish(mut self) -> Result<Walked, String> {
        while !self.open.is_empty() {
            self.close();
        }
        if u32::try_from(self.out.end_block).is_err() {
            return Err("layer larger than 2 TiB".into());
        }
        self.out.entries.shrink_to_fit();
        self.out.arena.shrink();
        Ok(self.out)
    }
}

/// The entries of a layer in stream order, with their strings, owners and offsets.
pub(crate) fn walk(specs: &[PathSpec]) -> Result<Walked, String> {
    let mut roots = Vec::new();
    let mut runs = Vec::new();
    for (si, spec) in specs.iter().enumerate() {
        let path = spec.path.as_bytes();
        let md = std::fs::symlink_metadata(&spec.path).map_err(|e| format!("cannot read '{}': {e}", spec.path))?;
        let dir = md.is_dir().then(|| {
            roots.push(tar::clean(path));
            roots.len() as u32 - 1
        });
        let root = Some((path.to_vec(), Stat::of(path, &md)?, dir));
        runs.push(TreeRun { si, root, src: Vec::new(), stack: Vec::new() });
    }
    let mut ctx = Ctx { specs, listings: read_dirs(roots)?, owners: vec![Owner::root()] };
    let mut runs = runs
        .into_iter()
        .map(|mut t| {
            if specs[t.si].rewrite.is_none() {
                return Ok(Run::Tree(t));
            }
            let mut items = Vec::new();
            while let Some(item) = t.next(&mut ctx)? {
                items.push(item);
            }
            // Stable: entries with the same name stay in walk order, so the later one wins.
            if !items.is_sorted_by(|x, y| tar_order(&x.name, &y.name) != Ordering::Greater) {
                items.sort_by(|x, y| tar_order(&x.name, &y.name));
            }
            Ok(Run::Sorted(items.into_iter()))
        })
        .collect::<Result<Vec<_>, String>>()?;

    let mut heap = BinaryHeap::new();
    let mut refill = |run: usize, heap: &mut BinaryHeap<Head>, ctx: &mut Ctx| -> Result<(), String> {
        if let Some(item) = runs[run].next(ctx)? {
            heap.push(Head { item, run });
        }
        Ok(())
    };
    for run in 0..specs.len() {
        refill(run, &mut heap, &mut ctx)?;
    }
    let mut b = Builder { out: Walked::default(), name: Vec::new(), src: Vec::new(), open: Vec::new() };
    while let Some(Head { mut item, run }) = heap.pop() {
        refill(run, &mut heap, &mut ctx)?;
        while heap.peek().is_some_and(|h| h.item.name == item.name) {
            let Head { item: later, run } = heap.pop().unwrap();
            refill(run, &mut heap, &mut ctx)?;
            ctx.check_collision(&item, &later)?;
            item = later;
        }
        b.push(&item, &ctx.owners)?;
    }
    b.out.owners = ctx.owners;
    b.finish()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn parent_of(name: &[u8]) -> Option<&[u8]> {
        parent(name)
    }

    #[test]
    fn order_puts_children_before_siblings_with_higher_bytes() {
        let mut v: Vec<&[u8]> = vec![b"/ab.d", b"/ab-c", b"/ab/z", b"/ab", b"/", b"/a"];
        v.sort_by(|a, b| tar_order(a, b));
        assert_eq!(v, vec![&b"/"[..], b"/a", b"/ab", b"/ab/z", b"/ab-c", b"/ab.d"]);
    }

    #[test]
    fn parents() {
        assert_eq!(parent(b"/a/b"), Some(&b"/a"[..]));
        assert_eq!(parent(b"/a"), Some(&b"/"[..]));
        assert_eq!(parent(b"/"), None);
        assert_eq!(parent(b"../data"), Some(&b".."[..]));
        assert_eq!(parent(b".."), None);
    }

    #[test]
    fn under() {
        assert!(is_under(b"/a", b"/"));
        assert!(is_under(b"/a/b", b"/a"));
        assert!(!is_under(b"/ab", b"/a"));
        assert!(!is_under(b"/a", b"/a"));
        assert!(is_under(b"../d", b".."));
        assert!(!is_under(b"..", b"/"));
    }
}
