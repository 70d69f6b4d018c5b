//! A layer's byte stream as an index of entries with offsets: its size is known from metadata
//! alone, and `read_at` serves any range by binary search, re-encoding headers and reading store
//! files on demand. This is the one place that defines a layer's bytes.

use super::tar::{self, Kind};
use super::{walk, Arena, Entry, Owner, Source};
use crate::blob::Blob;
use crate::description::PathSpec;
use lru::LruCache;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

pub struct LayerIndex {
    entries: Vec<Entry>,
    arena: Arena,
    owners: Vec<Owner>,
    /// Where the last entry ends, in blocks.
    end_block: u64,
    /// Open store files, so sequential 32–128 KiB reads do not reopen the same file.
    files: Mutex<LruCache<usize, Arc<File>>>,
}

impl LayerIndex {
    pub fn build(specs: &[PathSpec]) -> Result<LayerIndex, String> {
        let walk::Walked { entries, arena, owners, end_block } = walk::walk(specs)?;
        let files = Mutex::new(LruCache::new(NonZeroUsize::new(16).unwrap()));
        Ok(LayerIndex { entries, arena, owners, end_block, files })
    }

    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Memory the index holds, for the benchmark's bytes-per-entry figure.
    pub fn index_bytes(&self) -> usize {
        let owners: usize = self.owners.iter().map(|o| std::mem::size_of::<Owner>() + o.uname.len() + o.gname.len()).sum();
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.arena.len() + owners
    }

    pub fn entry(&self, i: usize) -> &Entry {
        &self.entries[i]
    }

    pub fn owner(&self, i: usize) -> &Owner {
        &self.owners[self.entries[i].owner()]
    }

    /// The entry's base name (the whole name for a top entry).
    pub fn base_name(&self, i: usize) -> &[u8] {
        self.arena.get(self.entries[i].record as usize).0
    }

    /// A symlink's target (empty for other kinds).
    pub fn link(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        if e.kind() != Kind::Symlink {
            return b"";
        }
        let (_, after_name) = self.arena.get(e.record as usize);
        self.arena.get(after_name).0
    }

    /// The full tar name: the base names from the top down.
    pub fn name(&self, i: usize) -> Vec<u8> {
        let mut chain = vec![i];
        while let Some(p) = self.entries[*chain.last().unwrap()].parent() {
            chain.push(p);
        }
        let mut name = Vec::with_capacity(chain.iter().map(|&j| self.base_name(j).len() + 1).sum());
        for (k, &j) in chain.iter().rev().enumerate() {
            if k > 0 && name != b"/" {
                name.push(b'/');
            }
            name.extend_from_slice(self.base_name(j));
        }
        name
    }

    /// The store path behind an entry (None for a synthesised directory).
    pub fn source(&self, i: usize) -> Option<Vec<u8>> {
        let e = &self.entries[i];
        match e.source() {
            Source::None => None,
            Source::Name => Some(self.name(i)),
            Source::Parent => {
                let mut s = self.source(e.parent()?)?;
                s.push(b'/');
                s.extend_from_slice(self.base_name(i));
                Some(s)
            }
            Source::Stored => {
                let (_, mut at) = self.arena.get(e.record as usize);
                if e.kind() == Kind::Symlink {
                    at = self.arena.get(at).1;
                }
                Some(self.arena.get(at).0.to_vec())
            }
        }
    }

    /// A directory's children, in name order.
    pub fn children(&self, dir: usize) -> impl Iterator<Item = usize> + '_ {
        let end = self.subtree_end(dir);
        let mut next = dir + 1;
        std::iter::from_fn(move || {
            while next < end {
                let i = next;
                next = self.subtree_end(i);
                if self.entries[i].parent() == Some(dir) {
                    return Some(i);
                }
            }
            None
        })
    }

    /// A directory's child by name, by binary search over its descendants: a descendant leads
    /// to its ancestor among the children by parent links, and children are sorted by name.
    pub fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (dir + 1, self.subtree_end(dir));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut c = mid;
            while self.entries[c].parent() != Some(dir) {
                c = self.entries[c].parent()?;
            }
            match self.base_name(c).cmp(name) {
                std::cmp::Ordering::Equal => return Some(c),
                // A file can have descendants (a path nested under it): step past `mid` at least.
                std::cmp::Ordering::Less => lo = (mid + 1).max(self.subtree_end(c)),
                std::cmp::Ordering::Greater => hi = c,
            }
        }
        None
    }

    /// One past the last descendant of a directory; one past the entry itself otherwise.
    pub fn subtree_end(&self, i: usize) -> usize {
        let e = &self.entries[i];
        if e.kind() == Kind::Dir { e.data as usize } else { i + 1 }
    }

    fn header(&self, i: usize) -> Vec<u8> {
        let e = &self.entries[i];
        let name = self.name(i);
        let o = self.owner(i);
        let header = tar::Header {
            name: &name,
            kind: e.kind(),
            link: self.link(i),
            mode: e.mode(),
            uid: o.uid as u64,
            gid: o.gid as u64,
            uname: &o.uname,
            gname: &o.gname,
            size: e.size(),
            mtime: 1,
        };
        header.encode()
    }

    fn start(&self, i: usize) -> u64 {
        self.entries[i].block as u64 * tar::BLOCK
    }

    fn end(&self, i: usize) -> u64 {
        self.entries.get(i + 1).map_or(self.end_block, |e| e.block as u64) * tar::BLOCK
    }

    pub fn open(&self, i: usize) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.lock().unwrap().get(&i) {
            return Ok(f.clone());
        }
        let size = self.entries[i].size();
        let src = self.source(i).unwrap_or_default();
        let path = OsStr::from_bytes(&src);
        let fail = |what: String| io::Error::other(format!("{}: {what}", path.to_string_lossy()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|err| fail(err.to_string()))?;
        let md = f.metadata().map_err(|err| fail(err.to_string()))?;
        if !md.is_file() || md.len() != size {
            return Err(fail(format!("changed since the layer was indexed (size {size} now {})", md.len())));
        }
        let f = Arc::new(f);
        self.files.lock().unwrap().put(i, f.clone());
        Ok(f)
    }

    /// Fill `buf` from the entry `i` at offset `rel` within it; returns bytes written.
    fn read_entry(&self, i: usize, rel: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.entries[i].size();
        let hdr = self.end(i) - self.start(i) - tar::padded(size);
        if rel < hdr {
            let bytes = self.header(i);
            let part = &bytes[rel as usize..];
            let n = part.len().min(buf.len());
            buf[..n].copy_from_slice(&part[..n]);
            return Ok(n);
        }
        let data_rel = rel - hdr;
        if data_rel < size {
            let want = ((size - data_rel) as usize).min(buf.len());
            let f = self.open(i)?;
            let mut done = 0;
            while done < want {
                match f.read_at(&mut buf[done..want], data_rel + done as u64) {
                    Ok(0) => {
                        let path = String::from_utf8_lossy(&self.source(i).unwrap_or_default()).into_owned();
                        return Err(io::Error::other(format!("{path}: shorter than indexed")));
                    }
                    Ok(n) => done += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            return Ok(want);
        }
        let n = ((tar::padded(size) - data_rel) as usize).min(buf.len());
        buf[..n].fill(0);
        Ok(n)
    }
}

impl Blob for LayerIndex {
    fn size(&self) -> u64 {
        self.end_block * tar::BLOCK + tar::TRAILER
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = ((self.size().saturating_sub(offset)) as usize).min(buf.len());
        let mut done = 0;
        let mut i = self.entries.partition_point(|e| e.block as u64 * tar::BLOCK <= offset).saturating_sub(1);
        while done < want {
            let pos = offset + done as u64;
            while i < self.entries.len() && pos >= self.end(i) {
                i += 1;
            }
            if i == self.entries.len() {
                buf[done..want].fill(0); // the trailer
                break;
            }
            done += self.read_entry(i, pos - self.start(i), &mut buf[done..want])?;
        }
        Ok(want)
    }
}

impl std::fmt::Debug for LayerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerIndex({} entries, {} bytes)", self.entries.len(), self.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goregex::Rewrite;
    use std::fs;

    /// A plain path and a copyToRoot path merged: every entry's parent, subtree, children and
    /// source agree with the full names (the tar stream's own order).
    #[test]
    fn parent_links_subtrees_children_and_sources_agree_with_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for (f, data) in [("x/a/b/c", "1"), ("x/a-b", "22"), ("x/a/z", "333"), ("y/bin/sh", "4444"), ("y/etc/passwd", "55555")] {
            fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            fs::write(root.join(f), data).unwrap();
        }
        std::os::unix::fs::symlink("a/b", root.join("x/l")).unwrap();
        let x = root.join("x").to_str().unwrap().to_string();
        let y = root.join("y").to_str().unwrap().to_string();
        let specs = [
            PathSpec { path: x.clone(), rewrite: None, perms: vec![] },
            PathSpec { path: y.clone(), rewrite: Some(Rewrite::new(&format!("^{}", regex::escape(&y)), "").unwrap()), perms: vec![] },
        ];
        let idx = LayerIndex::build(&specs).unwrap();
        let names: Vec<Vec<u8>> = (0..idx.entries()).map(|i| idx.name(i)).collect();
        assert_eq!(names[0], b"/");
        for i in 0..idx.entries() {
            let e = idx.entry(i);
            let parent = e.parent().map(|p| names[p].clone());
            assert_eq!(parent.as_deref(), super::walk::tests::parent_of(&names[i]), "parent of {:?}", String::from_utf8_lossy(&names[i]));
            let under = |j: usize| names[j].starts_with(&names[i]) && (names[i] == b"/" || names[j].get(names[i].len()) == Some(&b'/'));
            let end = (i + 1..idx.entries()).find(|&j| !under(j)).unwrap_or(idx.entries());
            if e.kind() == Kind::Dir {
                assert_eq!(idx.subtree_end(i), end, "subtree of {:?}", String::from_utf8_lossy(&names[i]));
            }
            let children: Vec<usize> = idx.children(i).collect();
            let expected: Vec<usize> = (0..idx.entries()).filter(|&j| idx.entry(j).parent() == Some(i)).collect();
            assert_eq!(children, expected);
            assert!(children.windows(2).all(|w| idx.base_name(w[0]) < idx.base_name(w[1])), "children sorted by name");
            for &c in &children {
                assert_eq!(idx.child(i, idx.base_name(c)), Some(c), "child by name");
            }
            for absent in [&b""[..], b"0", b"a-", b"zz"] {
                assert!(idx.child(i, absent).is_none_or(|c| idx.base_name(c) == absent));
            }
            let src = idx.source(i).map(|s| String::from_utf8(s).unwrap());
            let name = String::from_utf8(names[i].clone()).unwrap();
            let want = if let Some(rest) = name.strip_prefix(&x) {
                Some(format!("{x}{rest}"))
            } else if root.to_str().unwrap().starts_with(&name) {
                None // an ancestor of x: synthesised
            } else {
                Some(format!("{y}{name}"))
            };
            assert_eq!(src, want, "source of {name}");
            if e.kind() == Kind::File {
                assert_eq!(fs::metadata(src.unwrap()).unwrap().len(), e.size());
            }
        }
        let l = names.iter().position(|n| n.ends_with(b"/x/l")).unwrap();
        assert_eq!(idx.link(l), b"a/b");
        let rules: Vec<Source> = (0..idx.entries()).map(|i| idx.entry(i).source()).collect();
        assert!(rules.contains(&Source::Name) && rules.contains(&Source::Parent) && rules.contains(&Source::Stored));
    }
}
