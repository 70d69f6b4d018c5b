//! SHA-256 of blobs, read through the same `read_at` that serves them, and an on-disk cache of
//! layer digests keyed by everything that decides the layer's bytes.

use crate::blob::Blob;
use crate::description::PathSpec;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

const CHUNK: usize = 256 << 10;
/// Chunks each reader may run ahead of the hasher: slack for stretches of many small files.
const DEPTH: usize = 8;
/// Reader threads per digest: two keep one hashing core fed on these 2-core machines; more only
/// add contention (measured with the app closure).
const READERS: u64 = 2;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_bytes(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// `sha256:<hex>` of a whole blob. Reader threads fetch chunks round-robin while this thread
/// hashes them in order, so the digest costs about the hashing alone even when the layer is
/// tens of thousands of small files (each an open and a read).
pub fn sha256_blob(blob: &dyn Blob) -> io::Result<String> {
    let size = blob.size();
    let chunks = size.div_ceil(CHUNK as u64);
    let readers = READERS;
    std::thread::scope(|s| {
        let mut lanes = Vec::new();
        for r in 0..readers {
            let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
            let (free_tx, free_rx) = sync_channel::<Vec<u8>>(DEPTH);
            for _ in 0..DEPTH {
                free_tx.send(vec![0u8; CHUNK]).unwrap();
            }
            lanes.push((full_rx, free_tx));
            s.spawn(move || {
                for k in (r..chunks).step_by(readers as usize) {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let offset = k * CHUNK as u64;
                    let n = (size - offset).min(CHUNK as u64) as usize;
                    buf.truncate(n);
                    let res = match blob.read_at(offset, &mut buf) {
                        Ok(got) if got == n => Ok(buf),
                        Ok(got) => Err(io::Error::other(format!("blob ended at {} of {size} bytes", offset + got as u64))),
                        Err(e) => Err(e),
                    };
                    if full_tx.send(res).is_err() {
                        return;
                    }
                }
            });
        }
        let mut h = Sha256::new();
        for k in 0..chunks {
            let (full_rx, free_tx) = &lanes[(k % readers) as usize];
            let mut buf = full_rx.recv().expect("reader stopped early")?;
            h.update(&buf);
            buf.resize(CHUNK, 0);
            let _ = free_tx.send(buf);
        }
        Ok(format!("sha256:{}", hex(&h.finalize())))
    })
}

/// Cached digests of path layers. A key covers the encoder version, each path with its options
/// and the identity of the store path on disk (device, inode, ctime): a path deleted and made
/// again gets a new key, so a stale digest is never served. Entries are also kept in memory, so
/// many images sharing a layer hash it once even when the directory cannot be written.
pub struct DigestCache {
    dir: Option<PathBuf>,
    known: Mutex<HashMap<String, (String, u64)>>,
}

const ENCODER_VERSION: &str = "nixoci-layer-1";

impl DigestCache {
    pub fn new(dir: Option<PathBuf>) -> DigestCache {
        if let Some(d) = &dir {
            if let Err(e) = std::fs::create_dir_all(d) {
                log::warn!("digest cache {} unusable ({e}): digests will not be kept", d.display());
                return DigestCache { dir: None, known: Mutex::default() };
            }
        }
        DigestCache { dir, known: Mutex::default() }
    }

    pub fn default_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("nixoci");
        }
        match std::env::var_os("HOME").filter(|x| !x.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache/nixoci"),
            None => PathBuf::from("/var/cache/nixoci"),
        }
    }

    pub fn key(specs: &[PathSpec]) -> io::Result<String> {
        let mut k = format!("{ENCODER_VERSION}\n");
        for s in specs {
            let md = std::fs::symlink_metadata(&s.path)?;
            k += &format!("{}\0{} {} {}.{}\n", s.identity(), md.dev(), md.ino(), md.ctime(), md.ctime_nsec());
        }
        Ok(hex(&Sha256::digest(k.as_bytes())))
    }

    pub fn get(&self, key: &str, size: u64) -> Option<String> {
        if let Some((digest, sz)) = self.known.lock().unwrap().get(key) {
            return (*sz == size).then(|| digest.clone());
        }
        let text = std::fs::read_to_string(self.dir.as_ref()?.join(key)).ok()?;
        let (digest, sz) = text.trim().split_once(' ')?;
        (sz.parse::<u64>().ok()? == size && digest.len() == 71).then(|| digest.to_string())
    }

    /// Written to a temporary file and renamed, so a reader never sees half an entry.
    pub fn put(&self, key: &str, digest: &str, size: u64) {
        self.known.lock().unwrap().insert(key.to_string(), (digest.to_string(), size));
        let Some(dir) = &self.dir else { return };
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        let res = std::fs::write(&tmp, format!("{digest} {size}\n")).and_then(|_| std::fs::rename(&tmp, dir.join(key)));
        if let Err(e) = res {
            log::warn!("cannot write digest cache entry in {}: {e}", dir.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::PathSpec;

    fn spec(path: &std::path::Path) -> Vec<PathSpec> {
        vec![PathSpec { path: path.to_str().unwrap().into(), rewrite: None, perms: vec![] }]
    }

    #[test]
    fn a_path_made_again_gets_a_new_cache_key() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        std::fs::create_dir(&p).unwrap();
        let first = DigestCache::key(&spec(&p)).unwrap();
        assert_eq!(DigestCache::key(&spec(&p)).unwrap(), first, "same path, same key");
        std::fs::remove_dir(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert_ne!(DigestCache::key(&spec(&p)).unwrap(), first, "re-created path must not reuse a digest");
    }

    #[test]
    fn cache_entries_round_trip_and_check_the_size() {
        let t = tempfile::tempdir().unwrap();
        let cache = DigestCache::new(Some(t.path().to_path_buf()));
        let d = sha256_bytes(b"x");
        cache.put("k", &d, 7);
        assert_eq!(cache.get("k", 7), Some(d.clone()));
        assert_eq!(cache.get("k", 8), None, "a size that changed means other bytes");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "no temporary file left behind");
        let again = DigestCache::new(Some(t.path().to_path_buf()));
        assert_eq!(again.get("k", 7), Some(d.clone()), "read back from disk by a new process");
        assert_eq!(again.get("k", 8), None);
        let memory_only = DigestCache::new(None);
        memory_only.put("k", &d, 7);
        assert_eq!(memory_only.get("k", 7), Some(d), "kept in memory without a directory");
    }

    #[test]
    fn blob_digest_matches_a_one_shot_hash() {
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(sha256_blob(&data).unwrap(), sha256_bytes(&data));
        assert_eq!(sha256_blob(&Vec::new()).unwrap(), sha256_bytes(b""));
    }
}
