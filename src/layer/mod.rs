//! A layer made from store paths: `walk` reads the store and lists the layer's entries in
//! nix2container's order, `tar` encodes their headers, `index` lays them out and serves any byte
//! range of the stream.
//!
//! # The index
//!
//! A layer's entries are kept as a flat list in tar order, which is a depth-first pre-order of
//! the layer's tree with children sorted bytewise. Each [`Entry`] is 24 bytes; everything else is
//! rebuilt from the list on demand (headers are re-encoded on read):
//!
//! - **names**: an entry holds its base name and the index of its parent directory; the full tar
//!   name is the parent's name joined with the base name. Entries without a parent are the tops
//!   of the layer (`/` in every layer made from store paths; other names such as `..` only
//!   through rewrites).
//! - **directories**: a directory's descendants are the entries right after it, up to its
//!   *subtree end* (kept in `Entry::data`). Its children are the entries in that range whose
//!   parent is the directory; stepping from a child to the next skips the child's own subtree.
//!   Children come sorted bytewise by base name.
//! - **sources**: the store file of a regular file (and of a directory, for its children) is
//!   found by a rule, not kept as a path: the tar name itself (no rewrite: the usual case), the
//!   parent's source plus the base name (under a rewrite such as copyToRoot), or a path stored
//!   beside the name when neither holds.
//! - **owners**: uid, gid, uname and gname sit in a small table per layer (nearly every entry is
//!   root's); an entry holds its position in it.
//! - **offsets**: an entry's first header byte is at `block × 512` (a `u32`: layers up to 2 TiB);
//!   the next entry's block gives its end, so header lengths are not stored (header = span −
//!   padded data).
//! - **strings**: base names, link targets and stored sources are length-prefixed records in one
//!   byte arena.
//!
//! The operations a view of the image's root filesystem needs are cheap on this list: look up a
//! child by name (walk the directory's children, sorted by name), list a directory
//! ([`LayerIndex::children`]), stat an entry (kind, mode, owner, size, link target), and read a
//! regular file's data from its store file (the same reads that serve the tar stream).
//!
//! One oddity is kept for byte compatibility: a non-directory may have descendants when a
//! rewrite or a nested store path names something under a file or symlink. Such entries are
//! still its descendants by parent link (children are found through parent links, never by
//! position alone).

pub mod index;
pub mod tar;
pub mod walk;

pub use index::LayerIndex;
use tar::Kind;

/// `Entry::parent` of a top entry.
pub const NO_PARENT: u32 = u32::MAX;

/// Where the store file behind an entry is (two bits of `Entry::bits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A synthesised ancestor: no store file.
    None = 0,
    /// The tar name is the store path.
    Name = 1,
    /// The parent's source, `/`, the base name.
    Parent = 2,
    /// Kept in the entry's record, after the name (and link target).
    Stored = 3,
}

/// One tar entry in 24 bytes; see the module documentation.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Offset of the entry's first header byte, in 512-byte blocks.
    block: u32,
    /// The enclosing entry, or `NO_PARENT`.
    parent: u32,
    /// Arena offset of the entry's record: base name, link target (symlinks), source (`Stored`).
    record: u32,
    /// Permission bits (12), kind (2), source rule (2).
    bits: u16,
    /// Position in the layer's owner table.
    owner: u16,
    /// Regular file: its size. Directory: its subtree end (index one past its last descendant).
    data: u64,
}

impl Entry {
    pub fn kind(&self) -> Kind {
        match (self.bits >> 12) & 3 {
            0 => Kind::Dir,
            1 => Kind::File,
            _ => Kind::Symlink,
        }
    }
    pub fn mode(&self) -> u32 {
        (self.bits & 0o7777) as u32
    }
    pub fn source(&self) -> Source {
        match self.bits >> 14 {
            0 => Source::None,
            1 => Source::Name,
            2 => Source::Parent,
            _ => Source::Stored,
        }
    }
    pub fn parent(&self) -> Option<usize> {
        (self.parent != NO_PARENT).then_some(self.parent as usize)
    }
    /// Data bytes in the stream (0 but for regular files).
    pub fn size(&self) -> u64 {
        if self.kind() == Kind::File { self.data } else { 0 }
    }
    pub fn owner(&self) -> usize {
        self.owner as usize
    }
}

/// The uid, gid and names an entry's header carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
}

impl Owner {
    pub fn root() -> Owner {
        Owner { uid: 0, gid: 0, uname: b"root".to_vec(), gname: b"root".to_vec() }
    }
}

/// Length-prefixed byte strings (LEB128 lengths: one byte below 128).
#[derive(Default)]
pub(crate) struct Arena(Vec<u8>);

impl Arena {
    pub fn push(&mut self, s: &[u8]) {
        let mut n = s.len();
        while n >= 0x80 {
            self.0.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        self.0.extend_from_slice(s);
    }
    /// The string at `at` and the offset after it.
    pub fn get(&self, at: usize) -> (&[u8], usize) {
        let (mut n, mut shift, mut i) = (0usize, 0, at);
        loop {
            let b = self.0[i];
            i += 1;
            n |= ((b & 0x7f) as usize) << shift;
            if b < 0x80 {
                return (&self.0[i..i + n], i + n);
            }
            shift += 7;
        }
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_take_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn arena_strings_round_trip_with_long_lengths() {
        let mut a = Arena::default();
        let long = vec![b'x'; 70_000];
        a.push(b"nix");
        a.push(&long);
        a.push(b"");
        let (s, next) = a.get(0);
        assert_eq!((s, next), (&b"nix"[..], 4));
        let (s, next) = a.get(next);
        assert_eq!(s, &long[..]);
        assert_eq!(a.get(next).0, b"");
    }
}
