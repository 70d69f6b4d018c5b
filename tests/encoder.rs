//! The layer encoder against nix2container's own vectors (vectors.md §1), its edge cases, and
//! independent readers (GNU tar, Python's tarfile, the `tar` crate, a direct parse that checks
//! every header byte against Go's `archive/tar` rules); 8 GiB files (sparse); collisions and
//! whiteouts; random ranges against the sequential bytes.

mod common;

use nixoci::blob::{read_all, Blob};
use nixoci::description::{Perm, PathSpec};
use nixoci::digest::{sha256_blob, sha256_bytes};
use nixoci::layer::LayerIndex;
use nixoci::goregex::{GoRegex, Rewrite};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A path walked from `root` but named as nix2container's Go tests name it (`../data/...`).
fn relative_spec(root: &Path, sub: &str, perms: Vec<Perm>) -> PathSpec {
    let prefix = format!("^{}/", regex::escape(root.to_str().unwrap()));
    PathSpec { path: format!("{}/{sub}", root.display()), rewrite: Some(Rewrite::new(&prefix, "../").unwrap()), perms }
}

fn layer(specs: &[PathSpec]) -> (LayerIndex, String) {
    let idx = LayerIndex::build(specs).unwrap();
    let d = sha256_blob(&idx).unwrap();
    (idx, d)
}

/// data/tar-directory: file1 ("content file1") and symlink -> file1.
fn tar_fixture(file_mode: u32, dir_mode: u32) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data/tar-directory");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("file1"), "content file1").unwrap();
    symlink("file1", d.join("symlink")).unwrap();
    chmod(&d.join("file1"), file_mode);
    chmod(&d, dir_mode);
    t
}

fn layer1_fixture(file_mode: u32, dir_mode: u32) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data/layer1");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("file1"), "").unwrap();
    chmod(&d.join("file1"), file_mode);
    chmod(&d, dir_mode);
    t
}

#[test]
fn vector_test_tar() {
    let t = tar_fixture(0o644, 0o755);
    let (idx, d) = layer(&[relative_spec(t.path(), "data/tar-directory", vec![])]);
    assert_eq!(idx.size(), 4096);
    assert_eq!(d, "sha256:1ea63d00b937dc24c711265b80444cc9e7e63751fb7f349b160be61d31381983");
}

#[test]
fn vector_test_tar_umask_002() {
    let t = tar_fixture(0o664, 0o775);
    let (idx, d) = layer(&[relative_spec(t.path(), "data/tar-directory", vec![])]);
    assert_eq!(idx.size(), 4096);
    assert_eq!(d, "sha256:419f072b00cabf41a1fccb8b3bc2ca94394c9883a645fd81f0361ea28373eceb");
}

#[test]
fn vector_test_new_layers() {
    let t = layer1_fixture(0o644, 0o755);
    let (idx, d) = layer(&[relative_spec(t.path(), "data/layer1/file1", vec![])]);
    assert_eq!(idx.size(), 3072);
    assert_eq!(d, "sha256:cc45bd46eca903b0900ebb997dffd5778904dca9ec02e7375dd1e653dfb61e2e");
    let t = layer1_fixture(0o664, 0o775);
    let (_, d) = layer(&[relative_spec(t.path(), "data/layer1/file1", vec![])]);
    assert_eq!(d, "sha256:6c0a3ae4c7d4a4e950ca40e0a0c38d779c3d20f77f775cb61d9e43ebaab5583a");
}

#[test]
fn vector_test_perms() {
    let t = layer1_fixture(0o644, 0o755);
    let perm = Perm { regex: GoRegex::new(".*file1").unwrap(), mode: Some(0o641), uid: 0, gid: 0, uname: None, gname: None };
    let (idx, d) = layer(&[relative_spec(t.path(), "data/layer1/file1", vec![perm])]);
    assert_eq!(idx.size(), 3072);
    assert_eq!(d, "sha256:adf74a52f9e1bcd7dab77193455fa06743b979cf5955148010e5becedba4f72d");
}

// ---------------------------------------------------------------------------------------------
// Fixtures and the expected listing, computed from the files themselves (not from the encoder).
// ---------------------------------------------------------------------------------------------

const KIB: usize = 1024;
const GIB: u64 = 1 << 30;

/// A regular file with its parent directories.
fn put(p: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
    chmod(p, mode);
}

fn mkdir(p: &Path, mode: u32) {
    fs::create_dir_all(p).unwrap();
    chmod(p, mode);
}

fn plain(path: &Path, perms: Vec<Perm>) -> PathSpec {
    PathSpec { path: path.to_str().unwrap().to_string(), rewrite: None, perms }
}

/// copyToRoot style: the path's contents land at `/`.
fn to_root(path: &Path, perms: Vec<Perm>) -> PathSpec {
    let rw = Rewrite::new(&format!("^{}", regex::escape(path.to_str().unwrap())), "").unwrap();
    PathSpec { rewrite: Some(rw), ..plain(path, perms) }
}

fn perm(regex: &str, mode: Option<u32>, ids: (u32, u32), uname: Option<&str>, gname: Option<&str>) -> Perm {
    let (uid, gid) = ids;
    Perm { regex: GoRegex::new(regex).unwrap(), mode, uid, gid, uname: uname.map(Into::into), gname: gname.map(Into::into) }
}

fn build(specs: &[PathSpec]) -> (LayerIndex, Vec<u8>) {
    let idx = LayerIndex::build(specs).unwrap();
    let bytes = read_all(&idx).unwrap();
    assert_eq!(bytes.len() as u64, idx.size());
    (idx, bytes)
}

fn build_err(specs: &[PathSpec]) -> String {
    LayerIndex::build(specs).expect_err("the layer should be refused")
}

/// A path under `root`, exactly `total` bytes long, with a '/' at each absolute byte offset in
/// `slashes` (the first is the one right after `root`) and `fill` everywhere else. Its parent
/// directories are created; the last component is left to the caller.
fn shaped(root: &Path, slashes: &[usize], total: usize, fill: u8) -> String {
    let mut s = root.to_str().unwrap().as_bytes().to_vec();
    assert_eq!(slashes[0], s.len());
    while s.len() < total {
        s.push(if slashes.contains(&s.len()) { b'/' } else { fill });
    }
    let s = String::from_utf8(s).unwrap();
    fs::create_dir_all(Path::new(&s).parent().unwrap()).unwrap();
    s
}

/// A symlink target of `n` bytes with a few slashes in it (never followed, may dangle).
fn target(n: usize) -> String {
    (0..n).map(|i| if i % 10 == 4 { '/' } else { 't' }).collect()
}

/// One tar member as every reader reports it. `kind` is the typeflag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Member {
    name: String,
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: String,
    gname: String,
    link: String,
    size: u64,
    mtime: u64,
    sha256: Option<String>,
}

fn dir_member(name: &str, mode: u32) -> Member {
    Member {
        name: name.into(),
        kind: '5',
        mode,
        uid: 0,
        gid: 0,
        uname: "root".into(),
        gname: "root".into(),
        link: String::new(),
        size: 0,
        mtime: 1,
        sha256: None,
    }
}

/// What nix2container writes for `path` (walked, no rewrite): the synthesised ancestors, then
/// every file under it from `lstat`, perms rules applied in order, in tar order.
fn expected(spec: &PathSpec) -> Vec<Member> {
    let root = Path::new(&spec.path);
    let mut out: Vec<Member> = root.ancestors().skip(1).map(|a| dir_member(a.to_str().unwrap(), 0o755)).collect();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let name = p.to_str().unwrap().to_string();
        let mut m = dir_member(&name, md.mode() & 0o7777);
        if md.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if md.is_file() {
            let data = fs::read(&p).unwrap();
            (m.kind, m.size, m.sha256) = ('0', data.len() as u64, Some(sha256_bytes(&data)));
        } else {
            (m.kind, m.mode, m.link) = ('2', 0o777, fs::read_link(&p).unwrap().to_str().unwrap().to_string());
        }
        for r in spec.perms.iter().filter(|r| r.regex.is_match(name.as_bytes())) {
            (m.uid, m.gid) = (r.uid as u64, r.gid as u64);
            m.uname = r.uname.clone().unwrap_or(m.uname);
            m.gname = r.gname.clone().unwrap_or(m.gname);
            m.mode = r.mode.unwrap_or(m.mode);
        }
        out.push(m);
    }
    // Depth first, children sorted bytewise by name: compare component lists.
    out.sort_by(|a, b| a.name.split('/').cmp(b.name.split('/')));
    out
}

/// How Go's writer must encode a member: USTAR (with the prefix length, 0 = none) or PAX with
/// these record keys (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Ustar(usize),
    Pax(Vec<&'static str>),
}

/// Go's `splitUSTARPath`, transcribed: the prefix length when a long ASCII name can be split.
fn go_split(name: &str) -> Option<usize> {
    let mut length = name.len();
    if length <= 100 || !name.is_ascii() {
        return None;
    } else if length > 156 {
        length = 156;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let nlen = name.len() - i - 1;
    (i > 0 && nlen > 0 && nlen <= 100 && i <= 155).then_some(i)
}

/// Go's `Header.allowedFormats` for our headers: which PAX records an entry needs, and whether
/// USTAR can still hold it (a long path that splits needs none, unless PAX is needed anyway).
fn go_form(m: &Member) -> Form {
    let long = |s: &str, width: usize| !s.is_ascii() || s.len() > width;
    let mut keys = Vec::new();
    for (key, needed) in [
        ("gid", m.gid >= 1 << 21),
        ("gname", long(&m.gname, 32)),
        ("linkpath", long(&m.link, 100)),
        ("path", long(&m.name, 100)),
        ("size", m.size >= 1 << 33),
        ("uid", m.uid >= 1 << 21),
        ("uname", long(&m.uname, 32)),
    ] {
        if needed {
            keys.push(key);
        }
    }
    match (keys.as_slice(), go_split(&m.name)) {
        ([], _) => Form::Ustar(0),
        (["path"], Some(p)) => Form::Ustar(p),
        _ => Form::Pax(keys),
    }
}

/// Go's `toASCII`: non-ASCII characters dropped.
fn to_ascii(s: &str) -> String {
    s.chars().filter(char::is_ascii).collect()
}

/// Go's `formatString` into a `width`-byte field: NUL-terminated when shorter, truncated when
/// longer, and a truncation never ends in '/'.
fn go_field(s: &str, width: usize) -> Vec<u8> {
    let mut f = vec![0u8; width];
    let n = s.len().min(width);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
    if s.len() > width && f[width - 1] == b'/' {
        let keep = s[..width].trim_end_matches('/').len();
        f[keep] = 0;
    }
    f
}

/// Go's `formatOctal`: zero-padded octal and a NUL, or all zeros when it does not fit.
fn go_octal(x: u64, width: usize) -> Vec<u8> {
    let x = if x < 1 << ((width - 1) * 3) { x } else { 0 };
    format!("{x:0w$o}\0", w = width - 1).into_bytes()
}

/// The x header's name: `path.Join(dir, "PaxHeaders.0", base)`, ASCII only, cut to 100 bytes,
/// trailing slashes trimmed.
fn go_pax_name(name: &str) -> String {
    let (dir, base) = name.rsplit_once('/').unwrap();
    let mut x = to_ascii(&format!("{dir}/PaxHeaders.0/{base}"));
    x.truncate(100);
    x.trim_end_matches('/').to_string()
}

// ---------------------------------------------------------------------------------------------
// Reader 1: a direct parse of the bytes, keeping the raw header blocks for the Go checks.
// ---------------------------------------------------------------------------------------------

struct Raw {
    member: Member,
    block: Vec<u8>,
    pax: Option<Pax>,
}

/// An x header block and its records in written order.
struct Pax {
    block: Vec<u8>,
    records: Vec<(String, String)>,
}

fn cstr(f: &[u8]) -> String {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    String::from_utf8(f[..end].to_vec()).unwrap()
}

fn octal(f: &[u8]) -> u64 {
    u64::from_str_radix(cstr(f).trim(), 8).unwrap()
}

fn assert_checksum(b: &[u8]) {
    let sum: u64 = b.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { 32 } else { c as u64 }).sum();
    assert_eq!(&b[148..156], format!("{sum:06o}\0 ").as_bytes(), "checksum");
    assert_eq!(&b[257..265], b"ustar\x0000", "magic and version");
}

/// PAX records, each checked to count its own length.
fn pax_records(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
        let rec = std::str::from_utf8(&rest[sp + 1..len]).unwrap();
        let (k, v) = rec.strip_suffix('\n').unwrap().split_once('=').unwrap();
        out.push((k.to_string(), v.to_string()));
        rest = &rest[len..];
    }
    out
}

fn parse_raw(bytes: &[u8]) -> Vec<Raw> {
    let (mut pos, mut out, mut pax) = (0, Vec::new(), None);
    loop {
        let b = &bytes[pos..pos + 512];
        if b.iter().all(|&c| c == 0) {
            assert_eq!(bytes.len() - pos, 1024, "the archive ends with exactly two zero blocks");
            assert!(bytes[pos..].iter().all(|&c| c == 0));
            return out;
        }
        assert_checksum(b);
        let size = octal(&b[124..136]) as usize;
        let data = &bytes[pos + 512..pos + 512 + size];
        let padded = size.div_ceil(512) * 512;
        assert!(bytes[pos + 512 + size..pos + 512 + padded].iter().all(|&c| c == 0), "padding is zeros");
        pos += 512 + padded;
        if b[156] == b'x' {
            assert!(pax.is_none(), "two x headers in a row");
            pax = Some(Pax { block: b.to_vec(), records: pax_records(data) });
            continue;
        }
        let pax = pax.take();
        let rec = |key: &str| pax.as_ref().and_then(|p| p.records.iter().find(|(k, _)| k == key)).map(|(_, v)| v.clone());
        let ustar_name = match cstr(&b[345..500]) {
            p if p.is_empty() => cstr(&b[0..100]),
            p => format!("{p}/{}", cstr(&b[0..100])),
        };
        let num = |key: &str, f: &[u8]| rec(key).map_or_else(|| octal(f), |v| v.parse().unwrap());
        let kind = b[156] as char;
        let member = Member {
            name: rec("path").unwrap_or(ustar_name),
            kind,
            mode: octal(&b[100..108]) as u32,
            uid: num("uid", &b[108..116]),
            gid: num("gid", &b[116..124]),
            uname: rec("uname").unwrap_or_else(|| cstr(&b[265..297])),
            gname: rec("gname").unwrap_or_else(|| cstr(&b[297..329])),
            link: rec("linkpath").unwrap_or_else(|| cstr(&b[157..257])),
            size: num("size", &b[124..136]),
            mtime: octal(&b[136..148]),
            sha256: (kind == '0').then(|| sha256_bytes(data)),
        };
        out.push(Raw { member, block: b.to_vec(), pax });
    }
}

/// Every byte of a member's headers as Go's `archive/tar` writes them (formats.md §2).
fn check_go_headers(r: &Raw) {
    let (m, b) = (&r.member, &r.block);
    let what = &m.name;
    assert_eq!(&b[329..345], b"0000000\x000000000\x00", "{what}: devmajor/devminor");
    assert_eq!(&b[100..108], go_octal(m.mode as u64, 8), "{what}: mode");
    assert_eq!(&b[108..116], go_octal(m.uid, 8), "{what}: uid field");
    assert_eq!(&b[116..124], go_octal(m.gid, 8), "{what}: gid field");
    assert_eq!(&b[124..136], go_octal(m.size, 12), "{what}: size field");
    assert_eq!(&b[136..148], b"00000000001\0", "{what}: mtime 1");
    assert_eq!(&b[157..257], go_field(&to_ascii(&m.link), 100), "{what}: linkname field");
    assert_eq!(&b[265..297], go_field(&to_ascii(&m.uname), 32), "{what}: uname field");
    assert_eq!(&b[297..329], go_field(&to_ascii(&m.gname), 32), "{what}: gname field");
    match go_form(m) {
        Form::Ustar(p) => {
            assert!(r.pax.is_none(), "{what}: USTAR expected, got a PAX header");
            let (prefix, name) = if p == 0 { ("", m.name.as_str()) } else { (&m.name[..p], &m.name[p + 1..]) };
            assert_eq!(&b[0..100], go_field(name, 100), "{what}: name field");
            assert_eq!(&b[345..500], go_field(prefix, 155), "{what}: prefix field");
        }
        Form::Pax(keys) => {
            let pax = r.pax.as_ref().unwrap_or_else(|| panic!("{what}: PAX expected"));
            let x = &pax.block;
            let got: Vec<&str> = pax.records.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(got, keys, "{what}: PAX records, sorted by key");
            assert_eq!(x[156], b'x');
            assert_eq!(cstr(&x[0..100]), go_pax_name(&m.name), "{what}: x header name");
            assert_eq!(&x[100..124], b"0000000\x000000000\x000000000\x00", "{what}: x mode/uid/gid");
            assert_eq!(&x[136..148], b"00000000000\0", "{what}: x mtime");
            assert!(x[157..257].iter().chain(&x[265..512]).all(|&c| c == 0), "{what}: x header has no other fields");
            assert_eq!(&b[0..100], go_field(&to_ascii(&m.name), 100), "{what}: PAX main name field");
            assert!(b[345..500].iter().all(|&c| c == 0), "{what}: PAX main header has no prefix");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Readers 2–4: Python's tarfile, GNU tar (listing and extraction), the `tar` crate.
// ---------------------------------------------------------------------------------------------

const PY_LIST: &str = r#"
import hashlib, json, sys, tarfile
out = []
with tarfile.open(sys.argv[1]) as t:
    for m in t:
        data = t.extractfile(m).read() if m.isreg() else None
        out.append(dict(name=m.name, kind=m.type.decode(), mode=m.mode, uid=m.uid, gid=m.gid,
                        uname=m.uname, gname=m.gname, link=m.linkname, size=m.size, mtime=m.mtime,
                        sha256=data is not None and "sha256:" + hashlib.sha256(data).hexdigest() or None))
print(json.dumps(out))
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn python_members(tar: &Path) -> Vec<Member> {
    let json = run(Command::new("python3").arg("-c").arg(PY_LIST).arg(tar));
    let mut v: Vec<Member> = serde_json::from_str(&json).unwrap();
    for m in &mut v {
        if m.name.is_empty() {
            m.name = "/".into(); // tarfile strips a directory's trailing slashes: "/" becomes ""
        }
    }
    v
}

fn tar_crate_members(bytes: &[u8]) -> Vec<Member> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let s = |b: Option<&[u8]>| String::from_utf8(b.unwrap_or_default().to_vec()).unwrap();
        let mut m = Member {
            name: s(Some(&*e.path_bytes())),
            kind: h.entry_type().as_byte() as char,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            uname: s(h.username_bytes()),
            gname: s(h.groupname_bytes()),
            link: s(e.link_name_bytes().as_deref()),
            size: e.size(),
            mtime: h.mtime().unwrap(),
            sha256: None,
        };
        // The crate applies path, linkpath and size records itself; owners are left to us.
        for x in e.pax_extensions().unwrap().into_iter().flatten() {
            let x = x.unwrap();
            match x.key().unwrap() {
                "uid" => m.uid = x.value().unwrap().parse().unwrap(),
                "gid" => m.gid = x.value().unwrap().parse().unwrap(),
                "uname" => m.uname = x.value().unwrap().into(),
                "gname" => m.gname = x.value().unwrap().into(),
                _ => {}
            }
        }
        if m.kind == '0' {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            m.sha256 = Some(sha256_bytes(&data));
        }
        out.push(m);
    }
    out
}

/// `ls -l` style mode string, as `tar -tv` prints it.
fn ls_mode(kind: char, mode: u32) -> String {
    let mut s = String::from(match kind {
        '5' => 'd',
        '2' => 'l',
        _ => '-',
    });
    for (shift, special, ch) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (mode & special != 0, bits & 1 != 0) {
            (true, true) => ch,
            (true, false) => ch.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn gnu_listing_line(m: &Member) -> String {
    let link = if m.kind == '2' { format!(" -> {}", m.link) } else { String::new() };
    format!("{} {}/{} {} 1970-01-01 00:00 {}{link}", ls_mode(m.kind, m.mode), m.uid, m.gid, m.size, m.name)
}

fn gnu_tar(args: &[&str], tar: &Path) -> String {
    run(Command::new("tar").env("TZ", "UTC").env("LC_ALL", "C.UTF-8").args(args).arg("-f").arg(tar))
}

/// `tar -tv` with its column padding collapsed.
fn gnu_listing(tar: &Path) -> Vec<String> {
    let out = gnu_tar(&["--numeric-owner", "--quoting-style=literal", "-P", "-tv"], tar);
    let re = regex::Regex::new(r"^(\S+) (\S+) +(\d+) (\S+ \S+) (.*)$").unwrap();
    out.lines().map(|l| re.replace(l, "$1 $2 $3 $4 $5").into_owned()).collect()
}

/// Extract with GNU tar and compare every member with what landed on disk.
fn check_gnu_extract(tar: &Path, want: &[Member]) {
    let dir = tempfile::tempdir().unwrap();
    gnu_tar(&["--numeric-owner", "-xp", "-C", dir.path().to_str().unwrap()], tar);
    for m in want.iter().filter(|m| m.name != "/") {
        let p = dir.path().join(m.name.trim_start_matches('/'));
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: not extracted: {e}", m.name));
        assert_eq!((md.uid() as u64, md.gid() as u64), (m.uid, m.gid), "{}: owner", m.name);
        match m.kind {
            '2' => assert_eq!(fs::read_link(&p).unwrap().to_str().unwrap(), m.link, "{}: link target", m.name),
            '5' => assert!(md.is_dir() && md.mode() & 0o7777 == m.mode, "{}: dir mode {:o}", m.name, md.mode()),
            _ => {
                assert!(md.is_file() && md.mode() & 0o7777 == m.mode, "{}: file mode {:o}", m.name, md.mode());
                assert_eq!(md.nlink(), 1, "{}: extracted as a hard link", m.name);
                assert_eq!(Some(sha256_bytes(&fs::read(&p).unwrap())), m.sha256, "{}: contents", m.name);
            }
        }
    }
}

/// The layer read by every reader must be exactly `want`; returns the raw parse.
fn check_readers(bytes: &[u8], want: &[Member]) -> Vec<Raw> {
    let raw = parse_raw(bytes);
    let got: Vec<Member> = raw.iter().map(|r| r.member.clone()).collect();
    assert_eq!(got, want, "direct parse");
    for r in &raw {
        check_go_headers(r);
    }
    assert_eq!(tar_crate_members(bytes), want, "tar crate");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.tar");
    fs::write(&file, bytes).unwrap();
    assert_eq!(python_members(&file), want, "python tarfile");
    let lines: Vec<String> = want.iter().map(gnu_listing_line).collect();
    assert_eq!(gnu_listing(&file), lines, "GNU tar -tv");
    check_gnu_extract(&file, want);
    raw
}

// ---------------------------------------------------------------------------------------------
// The edge-case layer.
// ---------------------------------------------------------------------------------------------

struct Edge {
    _tmp: tempfile::TempDir,
    spec: PathSpec,
    /// Hand-computed encodings of chosen members (absolute tar names).
    forms: Vec<(String, Form)>,
}

fn edge_fixture() -> Edge {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    mkdir(&store, 0o755);
    let s = store.to_str().unwrap().to_string();
    let r = s.len();
    assert!(r < 50, "temporary directory path too long for the shaped names: {s}");
    let at = |rel: &str| store.join(rel);
    let name = |rel: &str| format!("{s}/{rel}");
    let mut forms = Vec::new();

    for rel in ["ab/z", "ab-c", "ab.d"] {
        put(&at(rel), rel.as_bytes(), 0o444);
    }
    mkdir(&at("empty-dir"), 0o555);
    put(&at("empty-file"), b"", 0o444);
    put(&at("bin/ro-exec"), b"#!/bin/sh\n", 0o555);
    put(&at("bin/rw-exec"), b"#!/bin/sh\necho\n", 0o755);
    put(&at("bin/setuid"), b"suid", 0o4755);
    mkdir(&at("sticky"), 0o1777);
    put(&at("setgid/f"), b"g", 0o640);
    chmod(&at("setgid"), 0o2755);
    put(&at("hard-a"), b"one inode, two names\n", 0o444);
    fs::hard_link(at("hard-a"), at("hard-b")).unwrap();
    symlink("/etc/passwd", at("link-passwd")).unwrap();
    symlink("ab", at("link-dir")).unwrap();
    symlink("café", at("link-utf8")).unwrap();
    forms.push((name("link-utf8"), Form::Pax(vec!["linkpath"])));
    for (n, form) in [(100, Form::Ustar(0)), (101, Form::Pax(vec!["linkpath"])), (150, Form::Pax(vec!["linkpath"]))] {
        symlink(target(n), at(&format!("link-{n}"))).unwrap();
        forms.push((name(&format!("link-{n}")), form));
    }
    put(&at("é"), "accent".as_bytes(), 0o444);
    put(&at("日本語.txt"), "にほんご".as_bytes(), 0o444);
    put(&at("ünï/ß"), b"sharp s", 0o444);
    forms.push((name("é"), Form::Pax(vec!["path"])));
    forms.push((name("ünï"), Form::Pax(vec!["path"])));
    // File names of 99..255 bytes right in the store path: the path splits after the store path
    // while the name fits 100 bytes.
    for (n, c, form) in [(99, 'p', Form::Ustar(r)), (100, 'q', Form::Ustar(r)), (101, 'r', Form::Pax(vec!["path"])), (255, 's', Form::Pax(vec!["path"]))] {
        let base = c.to_string().repeat(n);
        put(&at(&base), base.as_bytes(), 0o444);
        forms.push((name(&base), form));
    }
    // Full tar paths around the 100-byte name and the 155-byte prefix boundaries.
    let shapes: &[(u8, &[usize], usize, Form)] = &[
        (b'A', &[r], 99, Form::Ustar(0)),
        (b'B', &[r], 100, Form::Ustar(0)),
        (b'C', &[r], 101, Form::Ustar(r)),
        (b'D', &[r, 100], 155, Form::Ustar(100)),
        (b'E', &[r, 100], 156, Form::Ustar(100)),
        (b'F', &[r, 100], 157, Form::Ustar(100)),
        (b'G', &[r, 155], 255, Form::Ustar(155)),
        (b'H', &[r, 155], 256, Form::Ustar(155)), // the longest USTAR path
        (b'I', &[r, 155], 257, Form::Pax(vec!["path"])), // a 101-byte name
        (b'J', &[r, 156], 257, Form::Pax(vec!["path"])), // a 156-byte prefix
        (b'K', &[r, 60, 120, 150], 200, Form::Ustar(150)),
        (b'L', &[r, 100, 170], 240, Form::Pax(vec!["path"])), // Go splits at the last '/' of the first 156 bytes only
        (b'S', &[r, 150, 156], 240, Form::Ustar(150)), // a '/' at byte 156 is outside that window
        (b'M', &[r, 60, 120, 180, 240], 300, Form::Pax(vec!["path"])),
        (b'N', &[r, 200, 400, 600, 800], 1000, Form::Pax(vec!["path"])),
        (b'O', &[r, 86], 188, Form::Pax(vec!["path"])), // x header name cut right after "PaxHeaders.0/"
    ];
    for (fill, slashes, total, form) in shapes {
        let p = shaped(&store, slashes, *total, *fill);
        put(Path::new(&p), &[*fill; 3], 0o444);
        forms.push((p, form.clone()));
    }
    // A long ASCII path that would split, but a non-ASCII name rules USTAR out.
    let p = format!("{}/ü", shaped(&store, &[r, 110], 118, b'Q'));
    put(Path::new(&p), b"u", 0o444);
    forms.push((p, Form::Pax(vec!["path"])));
    // Symlinks whose long target forces PAX: the path record is written even when it would split.
    for (fill, slashes, total) in [(b'R', &[r, 100][..], 150), (b'P', &[r, 150], 300)] {
        let p = shaped(&store, slashes, total, fill);
        symlink(target(101), &p).unwrap();
        forms.push((p, Form::Pax(vec!["linkpath", "path"])));
    }
    // Owners: rules match the source path and apply in order.
    put(&at("home/app/data"), b"data", 0o644);
    put(&at("home/secret"), b"secret", 0o644);
    put(&at("home/big"), b"big", 0o644);
    let perms = vec![
        perm("/home/app/", None, (1001, 1001), Some("app"), Some("app")),
        perm("/home/secret$", Some(0o600), (1001, 1001), Some("alice"), None),
        perm("secret", None, (1002, 0), None, None),
        perm("/home/big$", None, (1 << 21, (1 << 21) - 1), Some(&"u".repeat(33)), Some(&"g".repeat(32))),
    ];
    forms.push((name("home/big"), Form::Pax(vec!["uid", "uname"])));
    Edge { _tmp: tmp, spec: plain(&store, perms), forms }
}

fn find<'a>(members: &'a [Member], name: &str) -> &'a Member {
    members.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} not in the layer"))
}

#[test]
fn edge_cases_read_back_identically_by_every_reader() {
    let e = edge_fixture();
    let want = expected(&e.spec);
    let (_idx, bytes) = build(std::slice::from_ref(&e.spec));
    let raw = check_readers(&bytes, &want);

    // The oracle agrees with the hand-computed encodings, and the bytes agree with the oracle
    // (check_readers ran check_go_headers on every member).
    for (name, form) in &e.forms {
        assert_eq!(&go_form(find(&want, name)), form, "{name}");
    }
    let s = &e.spec.path;
    let names: Vec<&str> = want.iter().map(|m| m.name.as_str()).filter_map(|n| n.strip_prefix(s.as_str())).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} missing"));
    assert!(pos("/ab") < pos("/ab/z") && pos("/ab/z") < pos("/ab-c") && pos("/ab-c") < pos("/ab.d"), "{names:?}");
    assert_eq!(pos("/ab.d"), pos("/ab") + 3);
    assert!(!names.iter().any(|n| n.starts_with("/link-dir/")), "a symlink to a directory is not followed");

    let m = |rel: &str| find(&want, &format!("{s}{rel}"));
    assert_eq!((m("/empty-dir").kind, m("/empty-dir").mode), ('5', 0o555));
    assert_eq!((m("/empty-file").size, m("/bin/ro-exec").mode, m("/bin/rw-exec").mode), (0, 0o555, 0o755));
    assert_eq!((m("/bin/setuid").mode, m("/sticky").mode, m("/setgid").mode), (0o4755, 0o1777, 0o2755));
    assert_eq!((m("/link-passwd").link.as_str(), m("/link-passwd").mode), ("/etc/passwd", 0o777));
    assert_eq!(m("/hard-a").sha256, m("/hard-b").sha256);
    assert_eq!((m("/hard-b").kind, m("/hard-b").size), ('0', 21), "the second name of a hard link is a full file");
    let secret = m("/home/secret");
    assert_eq!((secret.uid, secret.gid, &*secret.uname, &*secret.gname, secret.mode), (1002, 0, "alice", "root", 0o600));
    let data = m("/home/app/data");
    assert_eq!((data.uid, data.gid, &*data.uname, &*data.gname, data.mode), (1001, 1001, "app", "app", 0o644));
    assert_eq!((m("/home/app").uid, &*m("/home/app").uname), (0, "root"), "the rule's regex does not match the directory");
    assert!(want[..3].iter().all(|m| m.kind == '5' && m.mode == 0o755), "synthesised ancestors are 0755");

    // One x header name cut exactly after "PaxHeaders.0/": the trailing '/' is trimmed.
    let o = raw.iter().find(|r| r.member.name.contains("/OOO") && r.member.name.len() == 188).unwrap();
    let xname = cstr(&o.pax.as_ref().unwrap().block[0..100]);
    assert!(xname.ends_with("O/PaxHeaders.0") && xname.len() == 99, "{xname}");
    let utf8 = raw.iter().find(|r| r.member.name.ends_with("/日本語.txt")).unwrap();
    assert_eq!(cstr(&utf8.pax.as_ref().unwrap().block[0..100]), format!("{s}/PaxHeaders.0/.txt"));
    assert_eq!(cstr(&utf8.block[0..100]), format!("{s}/.txt"), "the main header holds the name's ASCII characters");
}

#[test]
fn copy_to_root_rewrite_with_perms_on_source_paths() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    put(&root.join("bin/sh"), b"#!sh", 0o555);
    put(&root.join("etc/os-release"), b"ID=nixoci\n", 0o444);
    let long = "L".repeat(120); // at the root: PAX, x header named "/PaxHeaders.0/LLL…"
    put(&root.join(&long), b"l", 0o444);
    chmod(&root.join("bin"), 0o555);
    chmod(&root.join("etc"), 0o755);
    let src_sh = format!("^{}/bin/sh$", regex::escape(root.to_str().unwrap()));
    let perms = vec![perm(&src_sh, None, (1001, 1001), Some("app"), Some("app")), perm("^/etc/os-release$", Some(0o600), (7, 7), None, None)];
    let (_, bytes) = build(&[to_root(&root, perms)]);
    let file = |name: &str, mode, data: &[u8]| Member { kind: '0', size: data.len() as u64, sha256: Some(sha256_bytes(data)), ..dir_member(name, mode) };
    let mut sh = file("/bin/sh", 0o555, b"#!sh");
    (sh.uid, sh.gid, sh.uname, sh.gname) = (1001, 1001, "app".into(), "app".into());
    let want = vec![
        dir_member("/", 0o755),
        file(&format!("/{long}"), 0o444, b"l"), // 'L' sorts before 'b'
        dir_member("/bin", 0o555),
        sh,
        dir_member("/etc", 0o755),
        file("/etc/os-release", 0o444, b"ID=nixoci\n"), // a rule on the tar name does not match
    ];
    let raw = check_readers(&bytes, &want);
    assert_eq!(cstr(&raw[1].pax.as_ref().unwrap().block[0..100]), format!("/PaxHeaders.0/{}", &long[..86]));
}

#[test]
fn two_paths_merge_directories_and_the_later_same_size_file_wins() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for (dir, file, same) in [(&a, "x", b"AAAA"), (&b, "y", b"BBBB")] {
        put(&dir.join("etc").join(file), file.as_bytes(), 0o444);
        put(&dir.join("same"), same, 0o444);
        chmod(&dir.join("etc"), 0o555);
    }
    let (_, bytes) = build(&[to_root(&a, vec![]), to_root(&b, vec![])]);
    let got: Vec<(String, Option<String>)> = parse_raw(&bytes).into_iter().map(|r| (r.member.name, r.member.sha256)).collect();
    let h = |d: &[u8]| Some(sha256_bytes(d));
    let want = [("/", None), ("/etc", None), ("/etc/x", h(b"x")), ("/etc/y", h(b"y")), ("/same", h(b"BBBB"))];
    assert_eq!(got, want.map(|(n, s)| (n.to_string(), s)));
}

#[test]
fn collisions_with_different_sizes_or_modes_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    put(&a.join("f"), b"abc", 0o444);
    put(&b.join("f"), b"abcde", 0o444);
    let err = build_err(&[to_root(&a, vec![]), to_root(&b, vec![])]);
    for part in ["'/f'", "different sizes", "3", "5", a.to_str().unwrap(), b.to_str().unwrap()] {
        assert!(err.contains(part), "{err:?} should mention {part}");
    }
    put(&b.join("f"), b"abc", 0o555);
    let err = build_err(&[to_root(&a, vec![]), to_root(&b, vec![])]);
    assert!(err.contains("'/f'") && err.contains("different modes"), "{err}");
    fs::remove_file(b.join("f")).unwrap();
    mkdir(&b.join("f"), 0o444);
    assert!(build_err(&[to_root(&a, vec![]), to_root(&b, vec![])]).contains("different modes"), "a file against a directory");
}

#[test]
fn whiteout_names_are_refused() {
    for name in [".wh.gone", ".wh..wh..opq"] {
        let t = tempfile::tempdir().unwrap();
        put(&t.path().join("s/etc").join(name), b"", 0o444);
        let err = build_err(&[plain(&t.path().join("s"), vec![])]);
        assert!(err.contains(name) && err.contains("whiteout"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes of 8 GiB and more (sparse files: no disk, no hashing).
// ---------------------------------------------------------------------------------------------

#[test]
fn files_of_8_gib_and_more_take_a_pax_size_record() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("big");
    mkdir(&dir, 0o755);
    let sizes = [8 * GIB - 1, 8 * GIB, 8 * GIB + 1];
    for (i, size) in sizes.iter().enumerate() {
        let f = fs::File::create(dir.join(format!("f{i}"))).unwrap();
        f.set_len(*size).unwrap();
        // Markers past 4 GiB and on the last byte, to check reads at large offsets.
        std::os::unix::fs::FileExt::write_at(&f, b"M", (1 << 32) + 5).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"Z", size - 1).unwrap();
    }
    let idx = LayerIndex::build(&[plain(&dir, vec![])]).unwrap();
    // Ancestors and the directory are 512-byte USTAR headers; f0 too; f1, f2: x header, one
    // block of records, main header.
    let dirs = dir.ancestors().count() as u64;
    let data: u64 = sizes.iter().map(|s| s.div_ceil(512) * 512).sum();
    assert_eq!(idx.size(), dirs * 512 + 512 + 2 * 1536 + data + 1024);

    let read = |at: u64, n: usize| {
        let mut b = vec![0u8; n];
        assert_eq!(idx.read_at(at, &mut b).unwrap(), n);
        b
    };
    let mut at = dirs * 512;
    let h0 = read(at, 512);
    assert_eq!(&h0[124..136], b"77777777777\0", "8 GiB - 1 still fits USTAR");
    assert_eq!(h0[156], b'0');
    assert_eq!(read(at + 512 + (1 << 32) + 5, 1), b"M");
    assert_eq!(read(at + 512 + sizes[0] - 1, 2), b"Z\0");
    at += 512 + sizes[0].div_ceil(512) * 512;
    for (i, size) in sizes.iter().enumerate().skip(1) {
        let h = read(at, 1536);
        assert_checksum(&h[..512]);
        assert_checksum(&h[1024..]);
        assert_eq!(h[156], b'x');
        assert_eq!(cstr(&h[0..100]), go_pax_name(&format!("{}/f{i}", dir.display())));
        let rec = format!("19 size={size}\n");
        assert_eq!(rec.len(), 19, "a PAX record counts its own length");
        assert_eq!(octal(&h[124..136]), rec.len() as u64);
        assert_eq!(&h[512..512 + rec.len()], rec.as_bytes());
        assert!(h[512 + rec.len()..1024].iter().all(|&c| c == 0));
        assert_eq!(&h[1024 + 124..1024 + 136], b"00000000000\0", "the main header's size field is zero");
        assert_eq!(cstr(&h[1024..1124]), format!("{}/f{i}", dir.display()));
        assert_eq!(read(at + 1536 + (1 << 32) + 5, 1), b"M");
        assert_eq!(read(at + 1536 + size - 1, 1), b"Z");
        at += 1536 + size.div_ceil(512) * 512;
    }
    assert_eq!(at + 1024, idx.size());
    assert!(read(at - 511, 1535).iter().all(|&c| c == 0), "padding and trailer");
    let mut past = [7u8; 4];
    assert_eq!(idx.read_at(idx.size() - 2, &mut past).unwrap(), 2);
    assert_eq!(past, [0, 0, 7, 7]);
}

// ---------------------------------------------------------------------------------------------
// Random ranges against the sequential stream.
// ---------------------------------------------------------------------------------------------

/// The stream read front to back in 32 KiB reads, as skopeo reads it.
fn sequential(idx: &LayerIndex) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * KIB];
    loop {
        let n = idx.read_at(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn check_random_ranges(idx: &LayerIndex, seq: &[u8], seed: u64, n: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let size = seq.len();
    let mut buf = vec![0u8; 300 * KIB];
    for _ in 0..n {
        let off = match rng.u8(0..4) {
            0 => rng.usize(0..=size),
            1 => (rng.usize(0..=size / 512) * 512 + rng.usize(0..3)).saturating_sub(1).min(size),
            2 => size - rng.usize(0..=size.min(4 * KIB)),
            _ => rng.usize(0..=size.min(4 * KIB)),
        };
        let len = match rng.u8(0..3) {
            0 => rng.usize(0..=16),
            1 => rng.usize(0..=2 * KIB),
            _ => rng.usize(0..=buf.len()),
        };
        buf[..len].fill(0xa5);
        let got = idx.read_at(off as u64, &mut buf[..len]).unwrap();
        let want = &seq[off..(off + len).min(size)];
        assert_eq!(got, want.len(), "read_at({off}, {len})");
        assert!(buf[..got] == *want, "read_at({off}, {len}) differs from the sequential bytes");
    }
}

fn random_fixture(seed: u64) -> (tempfile::TempDir, PathSpec) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rand");
    for i in 0..300 {
        let depth = rng.usize(0..4);
        let dirs: Vec<String> = (0..depth).map(|_| format!("d{}", rng.u8(0..4))).collect();
        let mut data = vec![0u8; rng.usize(0..=200 * KIB)];
        rng.fill(&mut data);
        let name = format!("{}/f{i}", dirs.join("/"));
        put(&root.join(name.trim_start_matches('/')), &data, if rng.bool() { 0o444 } else { 0o555 });
    }
    (t, plain(&root, vec![]))
}

#[test]
fn random_ranges_equal_the_sequential_bytes() {
    let edge = edge_fixture();
    let (_t, rand_spec) = random_fixture(7);
    for (i, spec) in [&edge.spec, &rand_spec].into_iter().enumerate() {
        let (idx, all) = build(std::slice::from_ref(spec));
        let seq = sequential(&idx);
        assert!(seq == all, "32 KiB sequential reads and read_all differ");
        assert_eq!(tar_crate_members(&seq), expected(spec));
        check_random_ranges(&idx, &seq, 42 + i as u64, 3000);
        // Two readers at once share the index (and its open-file cache).
        std::thread::scope(|s| {
            for t in 0..2 {
                let (idx, seq) = (&idx, &seq);
                s.spawn(move || check_random_ranges(idx, seq, 100 + t, 1000));
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptions naming paths that cannot be layered.
// ---------------------------------------------------------------------------------------------

fn description(path: &str) -> Vec<u8> {
    serde_json::json!({
        "version": 1,
        "image-config": {},
        "layers": [{"digest": "", "size": 0, "diff_ids": "", "paths": [{"path": path}],
                    "mediatype": "application/vnd.oci.image.layer.v1.tar"}],
        "arch": "amd64",
        "created": "0001-01-01T00:00:00Z"
    })
    .to_string()
    .into_bytes()
}

#[test]
fn description_paths_missing_or_outside_the_store_are_errors() {
    let missing = "/nix/store/00000000000000000000000000000000-nixoci-test-missing";
    let desc = nixoci::description::Description::parse(&description(missing)).unwrap();
    let err = nixoci::image::prepare("t", desc, &nixoci::image::IndexCache::default()).err().expect("a missing store path must fail");
    assert!(err.contains("layer 0") && err.contains(missing), "{err}");
    let err = nixoci::description::Description::parse(&description("/tmp/x")).err().unwrap();
    assert!(err.contains("outside the store"), "{err}");
    let err = nixoci::description::Description::parse(&description("/nix/store/a/../b")).err().unwrap();
    assert!(err.contains("not a clean store path"), "{err}");
}

#[test]
fn a_store_path_reached_through_a_symlinked_directory_is_refused() {
    // A symlink in the store pointing at /etc: listing "<link>/passwd" must not read /etc/passwd.
    assert!(Path::new("/nix/store").is_dir(), "/nix/store is missing: run scripts/setup");
    let link = format!("/nix/store/00000000000000000000000000000000-nixoci-test-escape-{}", std::process::id());
    symlink("/etc", &link).unwrap();
    let desc = nixoci::description::Description::parse(&description(&format!("{link}/passwd"))).unwrap();
    let res = nixoci::image::prepare("t", desc, &nixoci::image::IndexCache::default());
    fs::remove_file(&link).unwrap();
    let err = res.err().expect("a path leading out of the store must fail");
    assert!(err.contains("leads out of /nix/store"), "{err}");
    // The link itself is a fine layer entry: a symlink, served as one.
    symlink("/etc", &link).unwrap();
    let desc = nixoci::description::Description::parse(&description(&link)).unwrap();
    let res = nixoci::image::prepare("t", desc, &nixoci::image::IndexCache::default());
    fs::remove_file(&link).unwrap();
    let (_, layers) = res.unwrap();
    assert_eq!(layers[0].blob.size(), 512 * 4 + 1024, "/, /nix, /nix/store and the symlink, then the trailer");
}

/// nixoci's layer of one listed path (through the description and the store checks), or why not.
fn layer_of(path: &str, options: serde_json::Value) -> Result<Vec<u8>, String> {
    let json = serde_json::json!({"version": 1, "layers": [{"paths": [{"path": path, "options": options}]}]});
    let desc = nixoci::description::Description::parse(json.to_string().as_bytes())?;
    let (_, layers) = nixoci::image::prepare("t", desc, &nixoci::image::IndexCache::default())?;
    Ok(read_all(&*layers[0].blob).unwrap())
}

/// nix2container walks a listed path with Go's filepath.Walk: `os.Lstat` of the path as spelled
/// (a trailing '/' follows a symlink), the path handed on unchanged to the rewrite and perms
/// regexes, its files as `filepath.Join(path, name)` (cleaned), and every tar name cleaned.
#[test]
fn path_spellings_are_walked_as_nix2container_walks_them() {
    let store = common::nix_build(&common::repo_dir().join("tests/fixtures/names.nix"), "");
    let s = store.to_str().unwrap();
    let none = serde_json::Value::Null;
    let clean = |p: &str| layer_of(p, none.clone()).unwrap();
    assert_eq!(clean(&format!("{s}/")), clean(s));
    assert_eq!(clean(&format!("{s}/./d")), clean(&format!("{s}/d")));
    assert_eq!(clean(&format!("{s}//d/.")), clean(&format!("{s}/d")));

    // Regexes see the listed path as spelled: "/$" matches the store path itself only.
    let perms = |re: &str| serde_json::json!({"perms": [{"regex": re, "mode": "0700"}]});
    assert_eq!(layer_of(&format!("{s}/"), perms("/$")), layer_of(s, perms("names$")));
    // copyToRoot of "<path>/" makes "/" of the store path itself (mode 0555), where the clean
    // spelling rewrites it to "" (skipped) and "/" is synthesised (0755).
    let to_root = serde_json::json!({"rewrite": {"regex": format!("^{}", regex::escape(s)), "repl": ""}});
    let first_mode = |tar: Vec<u8>| (cstr(&tar[0..100]), cstr(&tar[100..108]));
    assert_eq!(first_mode(layer_of(&format!("{s}/"), to_root.clone()).unwrap()), ("/".into(), "0000555".into()));
    assert_eq!(first_mode(layer_of(s, to_root).unwrap()), ("/".into(), "0000755".into()));

    // A trailing '/' follows a symlink to a directory in the store: its files under the link's name.
    let as_link = serde_json::json!({"rewrite": {"regex": format!("^{}/d", regex::escape(s)), "repl": format!("{s}/link")}});
    assert_eq!(clean(&format!("{s}/link/")), layer_of(&format!("{s}/d"), as_link).unwrap());
    assert_eq!(clean(&format!("{s}/link")).len(), 512 * 5 + 1024, "without it, the link is one symlink entry");
    // Out of the store it is refused, where nix2container would walk /etc.
    let err = layer_of(&format!("{s}/escape/"), none.clone()).unwrap_err();
    assert!(err.contains("leads out of /nix/store"), "{err}");
    assert!(layer_of(&format!("{s}/escape"), none.clone()).is_ok(), "the link itself is a symlink entry");
    let err = layer_of(&format!("{s}/d/.."), none).unwrap_err();
    assert!(err.contains("'..'"), "{err}");
}
