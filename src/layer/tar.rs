//! Tar header encoding, byte-compatible with Go's `archive/tar` writer when no format is forced
//! (which is what nix2container uses): USTAR when every field fits, otherwise a PAX `x` header
//! in front of the entry. The rules mirror Go's `Header.allowedFormats` and `Writer.writeUSTARHeader`
//! / `writePAXHeader` (see formats.md §2).

pub const BLOCK: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// Everything a tar header holds for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a [u8],
    pub kind: Kind,
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: &'a [u8],
    pub gname: &'a [u8],
    pub size: u64,
    pub mtime: u64,
}

/// Data padded to whole blocks.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// The 1024 zero bytes that end an archive (Go writes no padding to a 10 KiB record).
pub const TRAILER: u64 = 2 * BLOCK;

fn fits_octal(width: usize, x: u64) -> bool {
    // Go: n >= 22 || x < 1 << ((n-1)*3)
    width >= 22 || x < 1u64 << ((width - 1) * 3)
}

/// Zero-padded octal digits and a NUL (all zeros when `x` does not fit).
fn put_octal(field: &mut [u8], x: u64) {
    let mut x = if fits_octal(field.len(), x) { x } else { 0 };
    let digits = field.len() - 1;
    for d in field[..digits].iter_mut().rev() {
        *d = b'0' + (x & 7) as u8;
        x >>= 3;
    }
    field[digits] = 0;
}

/// Go's `formatString`: copy, NUL-terminate when shorter, and never leave a truncated trailing '/'.
fn put_str(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
    if s.len() < field.len() {
        field[s.len()] = 0;
    }
    if s.len() > field.len() && field[field.len() - 1] == b'/' {
        let cut = s[..field.len() - 1].iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        field[cut] = 0;
    }
}

/// Go's `toASCII`: drop every non-ASCII character (and NUL), decoding as UTF-8.
fn to_ascii(s: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(s).chars().filter(|&c| (c as u32) < 0x80 && c != '\0').map(|c| c as u8).collect()
}

fn is_ascii(s: &[u8]) -> bool {
    s.iter().all(|&b| b < 0x80)
}

/// Go's `splitUSTARPath`: a long ASCII name split at a '/' into prefix (≤155) and name (≤100).
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut length = name.len();
    if length <= 100 || !is_ascii(name) {
        return None;
    } else if length > 156 {
        length = 156;
    } else if name[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].iter().rposition(|&b| b == b'/')?;
    let (nlen, plen) = (name.len() - i - 1, i);
    if i == 0 || nlen > 100 || nlen == 0 || plen > 155 {
        return None;
    }
    Some((&name[..i], &name[i + 1..]))
}

// Field offsets in a header block.
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const UNAME: std::ops::Range<usize> = 265..297;
const GNAME: std::ops::Range<usize> = 297..329;
const DEVMAJOR: std::ops::Range<usize> = 329..337;
const DEVMINOR: std::ops::Range<usize> = 337..345;
const PREFIX: std::ops::Range<usize> = 345..500;

fn finish(block: &mut [u8; 512]) {
    block[MAGIC].copy_from_slice(b"ustar\x0000");
    block[CHKSUM].fill(b' ');
    let sum: u64 = block.iter().map(|&b| b as u64).sum();
    put_octal(&mut block[CHKSUM.start..CHKSUM.start + 7], sum);
    block[CHKSUM.end - 1] = b' ';
}

fn typeflag(kind: Kind) -> u8 {
    match kind {
        Kind::File => b'0',
        Kind::Symlink => b'2',
        Kind::Dir => b'5',
    }
}

/// Go's `formatPAXRecord`: "<len> key=value\n" where len counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let mut size = key.len() + value.len() + 3;
    size += size.to_string().len();
    let mut rec = format!("{size} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    if rec.len() != size {
        let mut again = format!("{} {key}=", rec.len()).into_bytes();
        again.extend_from_slice(value);
        again.push(b'\n');
        rec = again;
    }
    rec
}

impl Header<'_> {
    /// PAX records this header needs, sorted by key; empty when USTAR can hold it all.
    /// The bool says whether USTAR is still possible (a splittable long name needs no PAX).
    fn pax_records(&self) -> (bool, Vec<(&'static str, Vec<u8>)>) {
        let mut ustar = true;
        let mut recs: Vec<(&'static str, Vec<u8>)> = Vec::new();
        let mut string = |s: &[u8], width: usize, key: &'static str, splittable: bool| {
            if !is_ascii(s) || s.len() > width {
                if !(splittable && split_ustar(s).is_some()) {
                    ustar = false;
                }
                recs.push((key, s.to_vec()));
            }
        };
        string(self.name, 100, "path", true);
        string(self.link, 100, "linkpath", false);
        string(self.uname, 32, "uname", false);
        string(self.gname, 32, "gname", false);
        for (x, width, key) in [(self.uid, 8, "uid"), (self.gid, 8, "gid"), (self.size, 12, "size")] {
            if !fits_octal(width, x) {
                ustar = false;
                recs.push((key, x.to_string().into_bytes()));
            }
        }
        recs.sort_by(|a, b| a.0.cmp(b.0));
        (ustar, recs)
    }

    /// The main header block with names formatted by `fmt` (plain for USTAR, ASCII-only for PAX).
    fn block(&self, name: &[u8], link: &[u8], uname: &[u8], gname: &[u8]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[TYPEFLAG] = typeflag(self.kind);
        put_str(&mut b[NAME], name);
        put_str(&mut b[LINKNAME], link);
        put_octal(&mut b[MODE], self.mode as u64);
        put_octal(&mut b[UID], self.uid);
        put_octal(&mut b[GID], self.gid);
        put_octal(&mut b[SIZE], self.size);
        put_octal(&mut b[MTIME], self.mtime);
        put_str(&mut b[UNAME], uname);
        put_str(&mut b[GNAME], gname);
        put_octal(&mut b[DEVMAJOR], 0);
        put_octal(&mut b[DEVMINOR], 0);
        b
    }

    /// The header bytes: one block (USTAR) or an `x` header, its records and the main block (PAX).
    pub fn encode(&self) -> Vec<u8> {
        let (ustar, recs) = self.pax_records();
        if ustar {
            let (prefix, name) = split_ustar(self.name).unwrap_or((b"", self.name));
            let mut b = self.block(name, self.link, self.uname, self.gname);
            put_str(&mut b[PREFIX], prefix);
            finish(&mut b);
            return b.to_vec();
        }
        let data: Vec<u8> = recs.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut x = [0u8; 512];
        x[TYPEFLAG] = b'x';
        let mut xname = to_ascii(&pax_name(self.name));
        xname.truncate(100);
        while xname.last() == Some(&b'/') {
            xname.pop();
        }
        put_str(&mut x[NAME], &xname);
        for f in [MODE, UID, GID, MTIME] {
            put_octal(&mut x[f], 0);
        }
        put_octal(&mut x[SIZE], data.len() as u64);
        finish(&mut x);
        let mut out = Vec::with_capacity(1024 + padded(data.len() as u64) as usize);
        out.extend_from_slice(&x);
        out.extend_from_slice(&data);
        out.resize(512 + padded(data.len() as u64) as usize, 0);
        let mut b = self.block(&to_ascii(self.name), &to_ascii(self.link), &to_ascii(self.uname), &to_ascii(self.gname));
        finish(&mut b);
        out.extend_from_slice(&b);
        out
    }

    /// Length of `encode()`, without building it.
    pub fn encoded_len(&self) -> u64 {
        let (ustar, recs) = self.pax_records();
        if ustar {
            return BLOCK;
        }
        let data: usize = recs.iter().map(|(k, v)| pax_record(k, v).len()).sum();
        2 * BLOCK + padded(data as u64)
    }
}

/// Go: `path.Join(dir, "PaxHeaders.0", file)` of the real name (`path.Split` then a cleaning join).
fn pax_name(name: &[u8]) -> Vec<u8> {
    let cut = name.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let (dir, file) = name.split_at(cut);
    let mut joined = dir.to_vec();
    if !joined.is_empty() && joined.last() != Some(&b'/') {
        joined.push(b'/');
    }
    joined.extend_from_slice(b"PaxHeaders.0/");
    joined.extend_from_slice(file);
    clean(&joined)
}

/// Go's `path.Clean` for byte strings.
pub fn clean(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return b".".to_vec();
    }
    let rooted = path[0] == b'/';
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.last().is_some_and(|p| *p != b"..") {
                    parts.pop();
                } else if !rooted {
                    parts.push(part);
                }
            }
            _ => parts.push(part),
        }
    }
    let mut out = if rooted { b"/".to_vec() } else { Vec::new() };
    out.extend_from_slice(&parts.join(&b'/'));
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(name: &[u8]) -> Header<'_> {
        Header { name, kind: Kind::File, link: b"", mode: 0o444, uid: 0, gid: 0, uname: b"root", gname: b"root", size: 0, mtime: 1 }
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", b"a"), b"9 path=a\n");
        // 99 bytes of payload push the length from 2 to 3 digits.
        let v = vec![b'x'; 92];
        let rec = pax_record("path", &v);
        assert_eq!(rec.len().to_string().as_bytes(), &rec[..3]);
    }

    #[test]
    fn clean_matches_go() {
        assert_eq!(clean(b"/"), b"/");
        assert_eq!(clean(b"//a//b/"), b"/a/b");
        assert_eq!(clean(b"../data/x"), b"../data/x");
        assert_eq!(clean(b"/../a"), b"/a");
        assert_eq!(clean(b"a/../.."), b"..");
        assert_eq!(clean(b""), b".");
    }

    #[test]
    fn header_lengths_agree_with_encoding() {
        let long = vec![b'n'; 300];
        let utf8 = "/nix/store/é".as_bytes();
        for name in [&b"/a"[..], &long, utf8] {
            let h = hdr(name);
            assert_eq!(h.encode().len() as u64, h.encoded_len());
        }
        assert_eq!(hdr(&long).encoded_len(), 3 * BLOCK);
    }

    #[test]
    fn checksum_is_six_octal_digits_nul_space() {
        let b = hdr(b"/a").encode();
        assert_eq!(b[154], 0);
        assert_eq!(b[155], b' ');
        let mut copy = b.clone();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&x| x as u64).sum();
        assert_eq!(std::str::from_utf8(&b[148..154]).unwrap(), format!("{sum:06o}"));
    }
}
