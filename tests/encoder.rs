//! The layer encoder against nix2container's own vectors (vectors.md §1), its edge cases, and
//! independent readers (GNU tar, Python's tarfile); plus random ranges against the sequential bytes.

use nixoci::blob::{read_all, Blob};
use nixoci::description::{Perm, PathSpec};
use nixoci::digest::{sha256_blob, sha256_bytes};
use nixoci::layer::LayerIndex;
use regex::bytes::Regex;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A path walked from `root` but named as nix2container's Go tests name it (`../data/...`).
fn relative_spec(root: &Path, sub: &str, perms: Vec<Perm>) -> PathSpec {
    let prefix = format!("^{}/", regex::escape(root.to_str().unwrap()));
    PathSpec { path: format!("{}/{sub}", root.display()), rewrite: Some((Regex::new(&prefix).unwrap(), b"../".to_vec())), perms }
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
    let perm = Perm { regex: Regex::new(".*file1").unwrap(), mode: Some(0o641), uid: 0, gid: 0, uname: None, gname: None };
    let (idx, d) = layer(&[relative_spec(t.path(), "data/layer1/file1", vec![perm])]);
    assert_eq!(idx.size(), 3072);
    assert_eq!(d, "sha256:adf74a52f9e1bcd7dab77193455fa06743b979cf5955148010e5becedba4f72d");
}
