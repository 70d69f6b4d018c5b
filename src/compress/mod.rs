//! Compressed layers, made on read from the layer's tar stream and never stored.
//!
//! The tar is cut into pieces of a fixed uncompressed size (`Codec::piece_size`), and each piece
//! is compressed on its own: one gzip member or one zstd frame. Concatenated they are one valid
//! gzip (RFC 1952 §2.2) or zstd stream that decompresses to the tar, and the bytes are a pure
//! function of the tar and the pinned compressor: the same on every machine, with any number of
//! threads. The piece table (the compressed size of each piece) places any offset of the
//! compressed stream in its piece, so a read recompresses only the pieces that hold it. The table
//! comes from one pass in order, the first time it is needed (a digest to compute, or a first
//! read), and is then kept in the digest cache, 4 bytes a piece.

pub mod codec;
pub mod pool;

pub use codec::Codec;

use crate::blob::Blob;
use crate::digest::{hex, DigestCache};
use lru::LruCache;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// One compressed piece.
pub type Piece = Arc<Vec<u8>>;

/// How far a sequential reader is compressed ahead, in tar bytes: enough pieces to keep every
/// pool thread busy, and to cover a 4 MiB read of gzip (~4x smaller than the tar).
const AHEAD_BYTES: u64 = 16 << 20;

/// Compressed pieces kept for readers, across all layers: those made ahead of sequential
/// readers (~4 MiB for each) and the one a reader takes in several requests.
const KEPT_BYTES: usize = 16 << 20;

struct Kept {
    pieces: LruCache<(u64, usize), Piece>,
    bytes: usize,
}

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    static KEPT: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT.get_or_init(|| Mutex::new(Kept { pieces: LruCache::unbounded(), bytes: 0 })).lock().unwrap()
}

/// A piece being made: who waits for it gets the result here, kept or not.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<Piece, String>>>,
    done: Condvar,
}

/// The pieces of one compressed layer: made on demand on the pool, the table grown as they come
/// out in order.
pub struct Pieces {
    id: u64,
    tar: Arc<dyn Blob>,
    codec: Codec,
    count: usize,
    ahead: usize,
    /// Where the table is kept once complete (cache, key); None for `nixoci check`.
    keep: Option<(DigestCache, String)>,
    label: String,
    state: Mutex<State>,
}

struct State {
    /// Compressed size of every piece, 0 until it was made once.
    sizes: Vec<u32>,
    /// End offsets in the compressed stream of the pieces known with no gap from the first.
    ends: Vec<u64>,
    running: HashMap<usize, Arc<Slot>>,
    /// A piece came out with another size than before: nothing of this blob can be trusted.
    broken: Option<String>,
    /// The furthest piece of the current run of nearby requests, and how many requests the run
    /// has: from the second on, reading goes on sequentially and the next pieces are started.
    /// (FUSE threads serve a sequential reader's requests slightly out of order.)
    last: usize,
    run: usize,
}

impl Pieces {
    /// `table`: the compressed sizes from the cache, when they were made before.
    pub fn new(tar: Arc<dyn Blob>, codec: Codec, table: Option<Vec<u32>>, keep: Option<(DigestCache, String)>, label: String) -> Arc<Pieces> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let count = codec.pieces(tar.size());
        let ahead = ((AHEAD_BYTES / codec.piece_size()) as usize).max(2 * pool::get().threads());
        let sizes = table.filter(|t| t.len() == count).unwrap_or_else(|| vec![0; count]);
        let mut state = State { sizes, ends: Vec::with_capacity(count), running: HashMap::new(), broken: None, last: 0, run: 0 };
        state.extend();
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        Arc::new(Pieces { id, tar, codec, count, ahead, keep, label, state: Mutex::new(state) })
    }

    /// The compressed size, once every piece's size is known.
    pub fn total(&self) -> Option<u64> {
        let st = self.state.lock().unwrap();
        (st.ends.len() == self.count).then(|| st.ends.last().copied().unwrap_or(0))
    }

    /// The compressed bytes placed so far: (pieces, bytes).
    fn known(&self) -> (usize, u64) {
        let st = self.state.lock().unwrap();
        (st.ends.len(), st.ends.last().copied().unwrap_or(0))
    }

    /// The piece holding compressed offset `pos` and where it starts, if the table reaches it.
    fn locate(&self, pos: u64) -> Option<(usize, u64)> {
        let st = self.state.lock().unwrap();
        let k = st.ends.partition_point(|&end| end <= pos);
        (k < st.ends.len()).then(|| (k, if k == 0 { 0 } else { st.ends[k - 1] }))
    }

    /// Piece `k`, compressed. Reading on sequentially starts the next pieces on the pool
    /// meanwhile, as pigz does; a read elsewhere makes only its own piece.
    pub fn piece(self: &Arc<Self>, k: usize) -> io::Result<Piece> {
        let slot = {
            let mut st = self.state.lock().unwrap();
            if let Some(why) = &st.broken {
                return Err(io::Error::other(why.clone()));
            }
            if k.abs_diff(st.last) <= self.ahead {
                st.run += 1;
                st.last = st.last.max(k);
            } else {
                (st.run, st.last) = (1, k);
            }
            if st.run >= 2 {
                for j in k + 1..(k + 1 + self.ahead).min(self.count) {
                    self.start(&mut st, j, false);
                }
            }
            if let Some(p) = kept().pieces.get(&(self.id, k)) {
                return Ok(p.clone());
            }
            self.start(&mut st, k, true)
        };
        let mut result = slot.result.lock().unwrap();
        loop {
            match &*result {
                Some(r) => return r.clone().map_err(io::Error::other),
                None => result = slot.done.wait(result).unwrap(),
            }
        }
    }

    /// The slot of piece `k`, submitting it to the pool unless it is kept or being made.
    fn start(self: &Arc<Self>, st: &mut State, k: usize, urgent: bool) -> Arc<Slot> {
        if let Some(slot) = st.running.get(&k) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        if !urgent && kept().pieces.contains(&(self.id, k)) {
            return slot;
        }
        st.running.insert(k, slot.clone());
        let me = self.clone();
        pool::get().submit(urgent, Box::new(move || me.make(k)));
        slot
    }

    /// Runs on the pool: compress piece `k`, record its size, hand it to whoever waits.
    fn make(&self, k: usize) {
        let res = catch_unwind(AssertUnwindSafe(|| self.codec.compress_piece(self.tar.as_ref(), k)))
            .unwrap_or_else(|_| Err(io::Error::other("the compressor panicked")))
            .map_err(|e| e.to_string());
        let mut st = self.state.lock().unwrap();
        let slot = st.running.remove(&k).expect("a running piece has a slot");
        let mut completed = None;
        if let Ok(data) = &res {
            let n = data.len() as u32;
            if st.sizes[k] == 0 {
                st.sizes[k] = n;
                let before = st.ends.len();
                st.extend();
                if before < self.count && st.ends.len() == self.count {
                    completed = Some(st.sizes.clone());
                }
            } else if st.sizes[k] != n {
                let why = format!("piece {k} compressed to {n} bytes where it made {} before: its bytes cannot be reproduced", st.sizes[k]);
                log::error!("{}: {why}", self.label);
                st.broken = Some(why);
            }
            let mut kept = kept();
            kept.bytes += data.len();
            if let Some(old) = kept.pieces.put((self.id, k), data.clone()) {
                kept.bytes -= old.len();
            }
            while kept.bytes > KEPT_BYTES {
                let Some((_, old)) = kept.pieces.pop_lru() else { break };
                kept.bytes -= old.len();
            }
        }
        let res = match &st.broken {
            Some(why) => Err(why.clone()),
            None => res,
        };
        drop(st);
        if let Some(table) = completed {
            let total: u64 = table.iter().map(|&n| n as u64).sum();
            log::info!("{}: {} piece table complete: {} pieces, {total} bytes", self.label, self.codec.name(), self.count);
            if let Some((cache, key)) = &self.keep {
                cache.put_table(key, &table);
            }
        }
        *slot.result.lock().unwrap() = Some(res);
        slot.done.notify_all();
    }

    /// One pass over every piece in order: the digest of the compressed stream, and its size.
    /// This is also what makes the table.
    pub fn scan(self: &Arc<Self>) -> io::Result<(String, u64)> {
        let mut h = Sha256::new();
        for k in 0..self.count {
            h.update(&*self.piece(k)?);
        }
        let total = self.total().expect("every piece was made");
        Ok((format!("sha256:{}", hex(&h.finalize())), total))
    }
}

impl Drop for Pieces {
    /// A layer no longer served leaves no piece behind.
    fn drop(&mut self) {
        let mut kept = kept();
        for k in 0..self.count {
            if let Some(old) = kept.pieces.pop(&(self.id, k)) {
                kept.bytes -= old.len();
            }
        }
    }
}

impl State {
    fn extend(&mut self) {
        while self.ends.len() < self.sizes.len() && self.sizes[self.ends.len()] != 0 {
            let end = self.ends.last().copied().unwrap_or(0) + self.sizes[self.ends.len()] as u64;
            self.ends.push(end);
        }
    }
}

/// A compressed layer as a blob: its size is given (by the description or the table) before any
/// piece is made; reads place offsets with the table, making it longer as far as they need.
pub struct Compressed {
    pieces: Arc<Pieces>,
    size: u64,
}

impl Compressed {
    pub fn new(pieces: Arc<Pieces>, size: u64) -> Compressed {
        Compressed { pieces, size }
    }

    /// The bytes made so far already disagree with the size served.
    fn check_size(&self) -> io::Result<()> {
        let (pieces, bytes) = self.pieces.known();
        if bytes > self.size || (pieces == self.pieces.count && bytes != self.size) {
            let made = if pieces == self.pieces.count { format!("{bytes}") } else { format!("more than {bytes}") };
            return Err(io::Error::other(format!(
                "the description says {} bytes of {}, this nixoci makes {made}: its digest was made by another compressor",
                self.size,
                self.pieces.codec.name()
            )));
        }
        Ok(())
    }

    fn read_pieces(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.size.saturating_sub(offset) as usize).min(buf.len());
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let (k, start) = loop {
                self.check_size()?;
                match self.pieces.locate(pos) {
                    Some(found) => break found,
                    None => self.pieces.piece(self.pieces.known().0)?, // the next piece of the table
                };
            };
            let data = self.pieces.piece(k)?;
            let from = (pos - start) as usize;
            let n = (data.len() - from).min(want - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(want)
    }
}

impl Blob for Compressed {
    fn size(&self) -> u64 {
        self.size
    }

    /// Errors name the layer: the mount logs them with the read's offset.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read_pieces(offset, buf).map_err(|e| io::Error::other(format!("{}: {e}", self.pieces.label)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::read_all;
    use crate::digest::sha256_bytes;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// A fixed, tar-sized sample: word runs (compressible) mixed with noise (not), so pieces
    /// compress to different sizes, in 50 KB stretches of either kind, so that blocks have
    /// boundaries for zstd's splitter to find; not a multiple of any piece size. Its own
    /// generator, so the pinned digests below never depend on another crate's.
    fn sample() -> Vec<u8> {
        let words: [&[u8]; 6] = [b"/nix/store/", b"lib", b"python3.11", b"site-packages", b"__init__.py", b"\0\0\0\0\0\0\0\0"];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut out = Vec::new();
        while out.len() < 9_500_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noisy = (out.len() / 50_000).is_multiple_of(3);
            if x.is_multiple_of(5) != noisy {
                out.extend_from_slice(&x.to_le_bytes());
            } else {
                out.extend_from_slice(words[(x >> 32) as usize % words.len()]);
            }
        }
        out.truncate(9_500_000);
        out
    }

    fn pieces(tar: &Arc<Vec<u8>>, codec: Codec, table: Option<Vec<u32>>) -> Arc<Pieces> {
        Pieces::new(tar.clone(), codec, table, None, format!("test {}", codec.name()))
    }

    /// Decompressed by the gzip or zstd tool: an independent reader of the concatenated pieces.
    fn decompress(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(codec.name()).args(["-dc"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{} -dc failed", codec.name());
        out.stdout
    }

    #[test]
    fn pieces_are_one_stream_that_decompresses_to_the_tar() {
        let tar = Arc::new(sample());
        for codec in [Codec::Gzip, Codec::Zstd] {
            let p = pieces(&tar, codec, None);
            let (digest, size) = p.scan().unwrap();
            let blob = Compressed::new(p, size);
            let bytes = read_all(&blob).unwrap();
            assert_eq!(sha256_bytes(&bytes), digest, "{codec:?}: read bytes hash to the scanned digest");
            assert!(decompress(codec, &bytes) == *tar, "{codec:?}: decompresses to the tar");
            assert!(bytes.len() < tar.len() / 2, "{codec:?} compresses: {} of {}", bytes.len(), tar.len());
        }
    }

    /// The bytes of each encoding, pinned: a compressor that changes (another version, a backend
    /// switched by Cargo feature unification, a system library) changes them, and must come with
    /// a new `Codec::version` so that no cached or published digest is reused.
    #[test]
    fn compressed_bytes_are_pinned() {
        let tar = Arc::new(sample());
        let gzip = pieces(&tar, Codec::Gzip, None).scan().unwrap();
        let zstd = pieces(&tar, Codec::Zstd, None).scan().unwrap();
        assert_eq!(zstd_safe::version_number(), 10507);
        assert_eq!(gzip, ("sha256:84fa1424006421fe0f8f00c4194e7669c1b8bbd3b00eb05c71abf2f5489f39bb".to_string(), 4444885));
        assert_eq!(zstd, ("sha256:22c4d5514e0e44b43407aef1cdddadaf6f61acd5279816516f4f9084c95ca64e".to_string(), 4615305));
    }

    #[test]
    fn random_reads_equal_the_sequential_bytes_with_or_without_the_table() {
        let tar = Arc::new(sample());
        for codec in [Codec::Gzip, Codec::Zstd] {
            let (_, size) = pieces(&tar, codec, None).scan().unwrap();
            let whole = read_all(&Compressed::new(pieces(&tar, codec, None), size)).unwrap();
            // Without a table (a digest given by the description): reads far ahead make it.
            // Four readers at once, as FUSE threads are.
            let lazy = Compressed::new(pieces(&tar, codec, None), size);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for i in 0..500 {
                            let off = fastrand::usize(..whole.len());
                            let len = fastrand::usize(1..=(whole.len() - off).min(if i % 2 == 0 { 300 } else { 3 << 20 }));
                            let mut buf = vec![0u8; len];
                            assert_eq!(lazy.read_at(off as u64, &mut buf).unwrap(), len);
                            assert!(buf == whole[off..off + len], "{codec:?}: {len} bytes at {off}");
                        }
                    });
                }
            });
            let mut tail = vec![0u8; 100];
            assert_eq!(lazy.read_at(size - 10, &mut tail).unwrap(), 10, "a read past the end is short");
        }
    }

    #[test]
    fn a_size_this_nixoci_does_not_make_fails_reads() {
        let tar = Arc::new(sample());
        let (_, size) = pieces(&tar, Codec::Gzip, None).scan().unwrap();
        for wrong in [size + 1, size - 1] {
            let blob = Compressed::new(pieces(&tar, Codec::Gzip, None), wrong);
            let err = read_all(&blob).unwrap_err().to_string();
            assert!(err.contains(&format!("the description says {wrong} bytes of gzip")), "{err}");
        }
    }

    #[test]
    fn the_table_is_kept_and_then_known_without_compressing() {
        let tar = Arc::new(sample());
        let t = tempfile::tempdir().unwrap();
        let cache = DigestCache::new(Some(t.path().to_path_buf()));
        let count = Codec::Zstd.pieces(tar.len() as u64);
        let (_, size) = pieces(&tar, Codec::Zstd, None).scan().unwrap();
        let first = Pieces::new(tar.clone(), Codec::Zstd, None, Some((cache.clone(), "k".into())), "test".into());
        assert_eq!(first.total(), None);
        read_all(&Compressed::new(first, size)).unwrap();
        let table = cache.get_table("k", count).expect("the table was kept when the first read completed it");
        assert_eq!(table.iter().map(|&n| n as u64).sum::<u64>(), size);
        assert_eq!(pieces(&tar, Codec::Zstd, Some(table)).total(), Some(size));
    }

    /// A blob whose bytes can be swapped (a store path changed under the layer).
    struct Swappable(Mutex<Vec<u8>>);

    impl Blob for Swappable {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.0.lock().unwrap().read_at(offset, buf)
        }
    }

    #[test]
    fn a_piece_that_comes_out_different_fails_the_blob() {
        let tar = Arc::new(Swappable(Mutex::new(sample())));
        let p = Pieces::new(tar.clone(), Codec::Gzip, None, None, "test".into());
        let (_, size) = p.scan().unwrap();
        let table = p.state.lock().unwrap().sizes.clone();
        tar.0.lock().unwrap().iter_mut().take(300_000).for_each(|b| *b = 0);
        let blob = Compressed::new(Pieces::new(tar, Codec::Gzip, Some(table), None, "test".into()), size);
        let err = blob.read_at(0, &mut [0u8; 10]).unwrap_err().to_string();
        assert!(err.contains("piece 0 compressed to") && err.contains("cannot be reproduced"), "{err}");
        let err = blob.read_at(size / 2, &mut [0u8; 10]).unwrap_err().to_string();
        assert!(err.contains("cannot be reproduced"), "every later read fails too: {err}");
    }
}
