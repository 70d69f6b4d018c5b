//! A layer's byte stream as an index of entries with offsets: its size is known from metadata
//! alone, and `read_at` serves any range by binary search, re-encoding headers and reading store
//! files on demand. This is the one place that defines a layer's bytes.

use super::tar;
use super::{walk, Arena, Entry};
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
    size: u64,
    /// Open store files, so sequential 32–128 KiB reads do not reopen the same file.
    files: Mutex<LruCache<usize, Arc<File>>>,
}

impl LayerIndex {
    pub fn build(specs: &[PathSpec]) -> Result<LayerIndex, String> {
        let (mut entries, mut arena) = walk::walk(specs)?;
        let mut offset = 0u64;
        for e in &mut entries {
            e.offset = offset;
            e.hdr_len = e.header(&arena).encoded_len() as u32;
            offset += e.span_len();
        }
        arena.shrink();
        entries.shrink_to_fit();
        let files = Mutex::new(LruCache::new(NonZeroUsize::new(16).unwrap()));
        Ok(LayerIndex { entries, arena, size: offset + tar::TRAILER, files })
    }

    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Memory the index holds, for the benchmark's bytes-per-entry figure.
    pub fn index_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.arena.len()
    }

    fn open(&self, i: usize) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.lock().unwrap().get(&i) {
            return Ok(f.clone());
        }
        let e = &self.entries[i];
        let path = OsStr::from_bytes(self.arena.get(e.src));
        let fail = |what: String| io::Error::other(format!("{}: {what}", path.to_string_lossy()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|err| fail(err.to_string()))?;
        let md = f.metadata().map_err(|err| fail(err.to_string()))?;
        if !md.is_file() || md.len() != e.size {
            return Err(fail(format!("changed since the layer was indexed (size {} now {})", e.size, md.len())));
        }
        let f = Arc::new(f);
        self.files.lock().unwrap().put(i, f.clone());
        Ok(f)
    }

    /// Fill `buf` from the entry `i` at offset `rel` within it; returns bytes written.
    fn read_entry(&self, i: usize, rel: u64, buf: &mut [u8]) -> io::Result<usize> {
        let e = &self.entries[i];
        let hdr = e.hdr_len as u64;
        if rel < hdr {
            let bytes = e.header(&self.arena).encode();
            let part = &bytes[rel as usize..];
            let n = part.len().min(buf.len());
            buf[..n].copy_from_slice(&part[..n]);
            return Ok(n);
        }
        let data_rel = rel - hdr;
        if data_rel < e.size {
            let want = ((e.size - data_rel) as usize).min(buf.len());
            let f = self.open(i)?;
            let mut done = 0;
            while done < want {
                match f.read_at(&mut buf[done..want], data_rel + done as u64) {
                    Ok(0) => {
                        let path = String::from_utf8_lossy(self.arena.get(e.src));
                        return Err(io::Error::other(format!("{path}: shorter than indexed")));
                    }
                    Ok(n) => done += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            return Ok(want);
        }
        let n = ((tar::padded(e.size) - data_rel) as usize).min(buf.len());
        buf[..n].fill(0);
        Ok(n)
    }
}

impl Blob for LayerIndex {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = ((self.size.saturating_sub(offset)) as usize).min(buf.len());
        let mut done = 0;
        let mut i = self.entries.partition_point(|e| e.offset <= offset).saturating_sub(1);
        while done < want {
            let pos = offset + done as u64;
            while i < self.entries.len() && pos >= self.entries[i].offset + self.entries[i].span_len() {
                i += 1;
            }
            if i == self.entries.len() {
                buf[done..want].fill(0); // the trailer
                break;
            }
            done += self.read_entry(i, pos - self.entries[i].offset, &mut buf[done..want])?;
        }
        Ok(want)
    }
}

impl std::fmt::Debug for LayerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerIndex({} entries, {} bytes)", self.entries.len(), self.size)
    }
}
