//! The two compressors and their pinned settings, and the compression of one piece of a tar.
//! Everything that decides the compressed bytes is in `Codec::version`, which keys the cache.

use super::Piece;
use crate::blob::Blob;
use crate::digest::hex;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::io;
use std::sync::Arc;

pub const GZIP_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// libdeflate (pinned `=1.26.1`, which bundles libdeflate 1.26: its docs say other versions may
/// make other bytes) at level 6: `gzip -6`'s size at ~3x its speed (compression.md §1).
const GZIP_LEVEL: i32 = 6;
/// The C zstd that zstd-sys `=2.1.3` bundles, single-threaded (a multithreaded frame differs),
/// level 3 as `zstd -3`, with the content checksum `zstd` writes, and without the block
/// pre-splitter zstd 1.5.7 added (1.5.4's `zstd -3` has none): it costs 7% of the time for 0.8%
/// of the size.
const ZSTD_LEVEL: i32 = 3;
const ZSTD_VERSION: u32 = 10507;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
}

impl Codec {
    pub fn for_media_type(media_type: &str) -> Option<Codec> {
        match media_type {
            GZIP_TYPE => Some(Codec::Gzip),
            ZSTD_TYPE => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Codec::Gzip => GZIP_TYPE,
            Codec::Zstd => ZSTD_TYPE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// Uncompressed bytes per piece. gzip's window is 32 KiB, so 1 MiB pieces cost +0.2% over
    /// one stream; zstd-3 uses a 2 MiB window and loses +7% at 1 MiB but +2% at 4 MiB
    /// (compression.md §1). A read at a random offset recompresses one piece: ~7 ms either way.
    pub fn piece_size(self) -> u64 {
        match self {
            Codec::Gzip => 1 << 20,
            Codec::Zstd => 4 << 20,
        }
    }

    pub fn pieces(self, tar_size: u64) -> usize {
        tar_size.div_ceil(self.piece_size()) as usize
    }

    /// What decides the bytes, for the digest-cache key.
    pub fn version(self) -> String {
        match self {
            Codec::Gzip => format!("gzip libdeflate-1.26 level {GZIP_LEVEL} pieces {}", self.piece_size()),
            Codec::Zstd => format!(
                "zstd {} level {ZSTD_LEVEL} checksum no-presplit single-threaded pieces {}",
                zstd_safe::version_number(),
                self.piece_size()
            ),
        }
    }

    /// The digest-cache key of this encoding of a tar, from the tar's key.
    pub fn cache_key(self, tar_key: &str) -> String {
        hex(&Sha256::digest(format!("{tar_key}\n{}", self.version())))
    }

    /// zstd-sys links the system's libzstd when built with ZSTD_SYS_USE_PKG_CONFIG set: its
    /// bytes would differ from every other nixoci's, so such a build refuses zstd layers.
    pub fn check(self) -> Result<(), String> {
        let linked = zstd_safe::version_number();
        if self == Codec::Zstd && linked != ZSTD_VERSION {
            return Err(format!("zstd layers need zstd {ZSTD_VERSION} (bundled by zstd-sys), but this nixoci is linked with {linked}"));
        }
        Ok(())
    }

    /// Piece `k` of `tar`, compressed: one gzip member or one zstd frame.
    pub fn compress_piece(self, tar: &dyn Blob, k: usize) -> io::Result<Piece> {
        let start = k as u64 * self.piece_size();
        let len = tar.size().saturating_sub(start).min(self.piece_size()) as usize;
        WORKER.with_borrow_mut(|w| {
            w.input.resize(len, 0);
            let got = tar.read_at(start, &mut w.input)?;
            if got != len {
                return Err(io::Error::other(format!("the tar ended at {} of {} bytes", start + got as u64, tar.size())));
            }
            let Worker { input, output, gzip, zstd } = w;
            let n = match self {
                Codec::Gzip => {
                    let c = gzip.get_or_insert_with(|| {
                        libdeflater::Compressor::new(libdeflater::CompressionLvl::new(GZIP_LEVEL).expect("a valid level"))
                    });
                    output.resize(c.gzip_compress_bound(len), 0);
                    c.gzip_compress(input, output).map_err(|e| io::Error::other(format!("gzip: {e}")))?
                }
                Codec::Zstd => {
                    output.resize(zstd_safe::compress_bound(len), 0);
                    zstd.get_or_insert_with(Zstd::new).compress(input, output)?
                }
            };
            Ok(Arc::new(output[..n].to_vec()))
        })
    }
}

/// A zstd compression context with the settings above. Through zstd-sys: the pre-splitter's
/// switch is an experimental parameter that zstd-safe does not expose.
struct Zstd(std::ptr::NonNull<zstd_sys::ZSTD_CCtx>);

impl Zstd {
    fn new() -> Zstd {
        use zstd_sys::ZSTD_cParameter::*;
        // SAFETY: a new context, freed by Drop; parameters are plain integers.
        let c = Zstd(std::ptr::NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() }).expect("zstd: no memory for a context"));
        let settings = [
            (ZSTD_c_compressionLevel, ZSTD_LEVEL),
            (ZSTD_c_checksumFlag, 1),
            (ZSTD_c_contentSizeFlag, 1),
            (ZSTD_c_experimentalParam20, 1), // ZSTD_c_blockSplitterLevel: 1 = no pre-splitting
        ];
        for (param, value) in settings {
            Zstd::check(unsafe { zstd_sys::ZSTD_CCtx_setParameter(c.0.as_ptr(), param, value) }).expect("a valid zstd setting");
        }
        c
    }

    /// One frame of `input` into `output` (at least `compress_bound` long); its length.
    fn compress(&mut self, input: &[u8], output: &mut [u8]) -> io::Result<usize> {
        // SAFETY: both buffers are valid for the lengths given; the context is ours alone.
        Zstd::check(unsafe {
            zstd_sys::ZSTD_compress2(self.0.as_ptr(), output.as_mut_ptr().cast(), output.len(), input.as_ptr().cast(), input.len())
        })
    }

    fn check(code: usize) -> io::Result<usize> {
        // SAFETY: reads an integer.
        match unsafe { zstd_sys::ZSTD_isError(code) } {
            0 => Ok(code),
            _ => Err(io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))),
        }
    }
}

impl Drop for Zstd {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx, freed once.
        unsafe { zstd_sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

/// A compressing thread's buffers and compressor state, reused from piece to piece.
#[derive(Default)]
struct Worker {
    input: Vec<u8>,
    output: Vec<u8>,
    gzip: Option<libdeflater::Compressor>,
    zstd: Option<Zstd>,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::default();
}
