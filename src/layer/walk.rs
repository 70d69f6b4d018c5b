//! From store paths to the ordered entry list of a layer, as nix2container builds it: every file
//! is `lstat`ed (symlinks are never followed), renamed by the path's rewrite, given the perms
//! rules, merged by tar name (collisions checked, the later path wins), missing ancestors are
//! added as 0755 directories, and the whole is ordered depth-first with children sorted bytewise.

use super::tar::{self, Kind};
use super::{Arena, Entry, Span};
use crate::description::PathSpec;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;

struct Walked {
    entry: Entry,
    /// `st_mode` of the source (type and permission bits) for collision checks; 0 when synthesised.
    st_mode: u32,
    spec: usize,
}

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

struct Walker<'a> {
    specs: &'a [PathSpec],
    arena: Arena,
    root: Span,
    out: Vec<Walked>,
}

impl Walker<'_> {
    /// Record `src` and, for a directory, its children in name order (like Go's filepath.Walk).
    fn visit(&mut self, si: usize, src: &mut Vec<u8>, md: std::fs::Metadata) -> Result<(), String> {
        self.record(si, src, &md)?;
        if md.is_dir() { self.visit_children(si, src) } else { Ok(()) }
    }

    fn visit_children(&mut self, si: usize, src: &mut Vec<u8>) -> Result<(), String> {
        let shown = |e: std::io::Error, src: &[u8]| format!("cannot list '{}': {e}", String::from_utf8_lossy(src));
        let mut children = std::fs::read_dir(OsStr::from_bytes(src))
            .map_err(|e| shown(e, src))?
            .map(|d| d.and_then(|d| Ok((d.file_name().into_vec(), d.metadata()?))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| shown(e, src))?;
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, md) in children {
            let len = src.len();
            src.push(b'/');
            src.extend_from_slice(&name);
            self.visit(si, src, md)?;
            src.truncate(len);
        }
        Ok(())
    }

    fn record(&mut self, si: usize, src: &[u8], md: &std::fs::Metadata) -> Result<(), String> {
        let spec = &self.specs[si];
        let shown = || String::from_utf8_lossy(src).into_owned();
        let renamed = match &spec.rewrite {
            Some(rw) => rw.apply(src),
            None => src.into(),
        };
        if renamed.is_empty() {
            return Ok(()); // the rewritten root itself: nix2container skips it
        }
        let name = tar::clean(&renamed);
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if base.starts_with(b".wh.") {
            return Err(format!("'{}' would be read as a whiteout by container runtimes", shown()));
        }
        let ft = md.file_type();
        let (kind, size, link) = if ft.is_dir() {
            (Kind::Dir, 0, Vec::new())
        } else if ft.is_file() {
            (Kind::File, md.len(), Vec::new())
        } else if ft.is_symlink() {
            let t = std::fs::read_link(OsStr::from_bytes(src)).map_err(|e| format!("cannot read link '{}': {e}", shown()))?;
            (Kind::Symlink, 0, t.into_os_string().into_vec())
        } else {
            return Err(format!("'{}' is a device, FIFO or socket: not allowed in a layer", shown()));
        };
        let mut mode = if kind == Kind::Symlink { 0o777 } else { md.mode() & 0o7777 };
        let (mut uid, mut gid, mut uname, mut gname) = (0, 0, self.root, self.root);
        for p in spec.perms.iter().filter(|p| p.regex.is_match(src)) {
            (uid, gid) = (p.uid, p.gid);
            if let Some(u) = &p.uname {
                uname = self.arena.push(u.as_bytes());
            }
            if let Some(g) = &p.gname {
                gname = self.arena.push(g.as_bytes());
            }
            if let Some(m) = p.mode {
                mode = m;
            }
        }
        let name_span = self.arena.push(&name);
        let src_span = match kind {
            Kind::File if name == src => name_span,
            Kind::File => self.arena.push(src),
            _ => Span::default(),
        };
        let link = self.arena.push(&link);
        let entry = Entry { offset: 0, size, name: name_span, src: src_span, link, uname, gname, uid, gid, mode, hdr_len: 0, kind };
        self.out.push(Walked { entry, st_mode: md.mode(), spec: si });
        Ok(())
    }

    /// nix2container's collision rules: same type and mode, same size for files, same perms.
    fn check_collision(&self, old: &Walked, new: &Walked) -> Result<(), String> {
        let name = String::from_utf8_lossy(self.arena.get(new.entry.name));
        let (a, b) = (&self.specs[old.spec].path, &self.specs[new.spec].path);
        if old.st_mode != new.st_mode {
            return Err(format!("'{name}' comes from {a} and {b} with different modes ({:o} and {:o})", old.st_mode, new.st_mode));
        }
        if old.entry.kind == Kind::File && old.entry.size != new.entry.size {
            return Err(format!("'{name}' comes from {a} and {b} with different sizes ({} and {})", old.entry.size, new.entry.size));
        }
        // nix2container only compares when the earlier path had perms rules.
        let (was, now) = (&self.specs[old.spec].perms, &self.specs[new.spec].perms);
        if !was.is_empty() && was != now {
            return Err(format!("'{name}' comes from {a} and {b} with different perms rules"));
        }
        Ok(())
    }
}

/// The entries of a layer in stream order, with their strings; offsets and header lengths unset.
pub fn walk(specs: &[PathSpec]) -> Result<(Vec<Entry>, Arena), String> {
    let mut arena = Arena::default();
    let root = arena.push(b"root");
    let mut w = Walker { specs, arena, root, out: Vec::new() };
    for si in 0..specs.len() {
        // As filepath.Walk: the listed path is read and matched as it is spelled (a trailing '/'
        // follows a symlink: image.rs checks it stays in the store), its files as joined to
        // the cleaned path.
        let path = &specs[si].path;
        let md = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
        w.record(si, path.as_bytes(), &md)?;
        if md.is_dir() {
            w.visit_children(si, &mut tar::clean(path.as_bytes()))?;
        }
    }
    let mut walked = std::mem::take(&mut w.out);
    // Stable: entries with the same name stay in walk order, so the later path wins.
    // A path walked without rewrites already comes in tar order: check before sorting.
    let order = |x: &Walked, y: &Walked| tar_order(w.arena.get(x.entry.name), w.arena.get(y.entry.name));
    if !walked.is_sorted_by(|x, y| order(x, y) != Ordering::Greater) {
        walked.sort_by(order);
    }
    let mut merged: Vec<Walked> = Vec::with_capacity(walked.len());
    for item in walked {
        match merged.last_mut() {
            Some(last) if w.arena.get(last.entry.name) == w.arena.get(item.entry.name) => {
                w.check_collision(last, &item)?;
                *last = item;
            }
            _ => merged.push(item),
        }
    }
    let entries: Vec<Entry> = merged.into_iter().map(|m| m.entry).collect();

    // Ancestors nobody walked (`/`, `/nix`, `/nix/store`, …) become plain 0755 directories.
    let missing = {
        let known: HashSet<&[u8]> = entries.iter().map(|e| w.arena.get(e.name)).collect();
        let mut missing: Vec<Vec<u8>> = Vec::new();
        let mut added: HashSet<&[u8]> = HashSet::new();
        for e in &entries {
            let mut p = parent(w.arena.get(e.name));
            while let Some(dir) = p.filter(|d| !known.contains(d) && !added.contains(d)) {
                added.insert(dir);
                missing.push(dir.to_vec());
                p = parent(dir);
            }
        }
        missing
    };
    let mut synthesised: Vec<Entry> = missing
        .into_iter()
        .map(|dir| Entry {
            offset: 0,
            size: 0,
            name: w.arena.push(&dir),
            src: Span::default(),
            link: Span::default(),
            uname: root,
            gname: root,
            uid: 0,
            gid: 0,
            mode: 0o755,
            hdr_len: 0,
            kind: Kind::Dir,
        })
        .collect();
    let order = |x: &Entry, y: &Entry| tar_order(w.arena.get(x.name), w.arena.get(y.name));
    synthesised.sort_by(order);
    // Merge the two sorted lists (the ancestors are few; the walked entries many).
    let mut all = Vec::with_capacity(entries.len() + synthesised.len());
    let mut rest = entries.into_iter().peekable();
    for s in synthesised {
        while let Some(e) = rest.next_if(|e| order(e, &s) == Ordering::Less) {
            all.push(e);
        }
        all.push(s);
    }
    all.extend(rest);
    let entries = all;
    Ok((entries, w.arena))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
