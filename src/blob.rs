//! A blob is anything served as a file: a byte range reader with a size known up front.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

pub trait Blob: Send + Sync {
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; returns fewer bytes only at the end of the blob.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl Blob for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let n = (self.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// A ready blob file in the store (`layer-path`), opened once, never through a symlink.
pub struct FileBlob {
    file: File,
    size: u64,
}

impl FileBlob {
    pub fn open(path: &str) -> Result<FileBlob, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("cannot open layer file '{path}': {e}"))?;
        let md = file.metadata().map_err(|e| format!("cannot stat '{path}': {e}"))?;
        if !md.is_file() {
            return Err(format!("layer file '{path}' is not a regular file"));
        }
        Ok(FileBlob { file, size: md.len() })
    }
}

impl Blob for FileBlob {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.size.saturating_sub(offset) as usize).min(buf.len());
        self.file.read_exact_at(&mut buf[..want], offset)?;
        Ok(want)
    }
}

/// Blobs one after another (the docker-archive tar is headers, blobs and padding).
pub struct Concat {
    parts: Vec<(u64, Arc<dyn Blob>)>,
    size: u64,
}

impl Concat {
    pub fn new(parts: Vec<Arc<dyn Blob>>) -> Concat {
        let mut offset = 0;
        let parts = parts
            .into_iter()
            .map(|p| {
                let at = offset;
                offset += p.size();
                (at, p)
            })
            .collect();
        Concat { parts, size: offset }
    }
}

impl Blob for Concat {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.size.saturating_sub(offset) as usize).min(buf.len());
        let mut done = 0;
        let mut i = self.parts.partition_point(|(at, _)| *at <= offset).saturating_sub(1);
        while done < want {
            let (at, part) = &self.parts[i];
            let rel = offset + done as u64 - at;
            if rel < part.size() {
                let n = (part.size() - rel).min((want - done) as u64) as usize;
                let got = part.read_at(rel, &mut buf[done..done + n])?;
                if got != n {
                    return Err(io::Error::other("blob shorter than its size"));
                }
                done += n;
            }
            i += 1;
        }
        Ok(want)
    }
}

/// Zero bytes (tar padding).
pub struct Zeros(pub u64);

impl Blob for Zeros {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.0.saturating_sub(offset) as usize).min(buf.len());
        buf[..n].fill(0);
        Ok(n)
    }
}

/// Every byte of a blob, read through `read_at` in large chunks.
pub fn read_all(blob: &dyn Blob) -> io::Result<Vec<u8>> {
    let mut out = vec![0; blob.size() as usize];
    let mut done = 0;
    while done < out.len() {
        let end = (done + (1 << 20)).min(out.len());
        done += blob.read_at(done as u64, &mut out[done..end])?;
    }
    Ok(out)
}
