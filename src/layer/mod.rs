//! A layer made from store paths: `walk` lists its entries in nix2container's order, `tar`
//! encodes their headers, `index` lays them out and serves any byte range of the stream.

pub mod index;
pub mod tar;
pub mod walk;

pub use index::LayerIndex;

/// A byte string stored in a layer's arena (names, source paths, link targets, owner names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    len: u32,
}

#[derive(Default)]
pub struct Arena(Vec<u8>);

impl Arena {
    pub fn push(&mut self, s: &[u8]) -> Span {
        let start = u32::try_from(self.0.len()).expect("layer names exceed 4 GiB");
        self.0.extend_from_slice(s);
        Span { start, len: s.len() as u32 }
    }
    pub fn get(&self, s: Span) -> &[u8] {
        &self.0[s.start as usize..(s.start + s.len) as usize]
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }
}

/// One tar entry, compact: the header is re-encoded from these fields when it is read.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Offset of the entry's first header byte in the stream.
    pub offset: u64,
    pub size: u64,
    pub name: Span,
    /// The store file that holds a regular file's data.
    pub src: Span,
    pub link: Span,
    pub uname: Span,
    pub gname: Span,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub hdr_len: u32,
    pub kind: tar::Kind,
}

impl Entry {
    pub fn header<'a>(&self, arena: &'a Arena) -> tar::Header<'a> {
        tar::Header {
            name: arena.get(self.name),
            kind: self.kind,
            link: arena.get(self.link),
            mode: self.mode,
            uid: self.uid as u64,
            gid: self.gid as u64,
            uname: arena.get(self.uname),
            gname: arena.get(self.gname),
            size: self.size,
            mtime: 1,
        }
    }
    /// Bytes this entry takes in the stream: header, data, padding.
    pub fn span_len(&self) -> u64 {
        self.hdr_len as u64 + tar::padded(self.size)
    }
}
