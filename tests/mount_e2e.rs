//! End to end: `nixoci mount` read by the real clients (skopeo, umoci, podman, GNU tar) on real
//! store paths built by Nix. Needs root, /dev/fuse and the tools `scripts/setup` installs.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GREETING: &str = "Hello from a Nix-built image served by nixoci!";
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The blob file of `digest` ("sha256:<hex>") in an OCI layout.
fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

/// index.json's single manifest, parsed, with its digest.
fn oci_manifest(layout: &Path) -> (Value, String) {
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index.json has manifests");
    assert_eq!(manifests.len(), 1, "one manifest per image: {index}");
    let digest = manifests[0]["digest"].as_str().unwrap().to_string();
    (read_json(&blob(layout, &digest)), digest)
}

fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

fn mnt_names(mnt: &Path) -> BTreeSet<String> {
    fs::read_dir(mnt)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", mnt.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn skopeo_copy(from: String, to: String) -> std::process::Output {
    run_unchecked(tool("skopeo").args(["copy", "--quiet", &from, &to]))
}

/// One layer of reference/n2c-image-app.json and whether this machine's store path holds the
/// bytes the reference digests were computed from.
struct AppLayer {
    path: String,
    digest: String,
    size: u64,
    matches: bool,
}

fn app_json() -> PathBuf {
    shared_dir().join("reference/n2c-image-app.json")
}

/// Builds the benchmark app closure and compares each path's narHash with vectors.md.
fn app_layers() -> Vec<AppLayer> {
    let shared = shared_dir();
    nix_build(&shared.join("bench/corpus.nix"), "app");
    let vectors = fs::read_to_string(shared.join("reference/vectors.md")).unwrap();
    let json = read_json(&app_json());
    json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let path = l["paths"][0]["path"].as_str().unwrap().to_string();
            let row = vectors
                .lines()
                .find(|r| r.starts_with(&format!("| `{path}`")))
                .unwrap_or_else(|| panic!("vectors.md has no narHash for {path}"));
            let expected = row.rsplit('`').nth(1).unwrap();
            let actual = nar_hash(Path::new(&path));
            let matches = actual == expected;
            if !matches {
                loud(&format!(
                    "{path}: narHash here is {actual}, vectors.md says {expected}.\nThis machine's \
                     store path holds other bytes, so its digest in n2c-image-app.json cannot \
                     match: the tests check the digest-mismatch path for that layer."
                ));
            }
            AppLayer {
                path,
                digest: l["digest"].as_str().unwrap().to_string(),
                size: l["size"].as_u64().unwrap(),
                matches,
            }
        })
        .collect()
}

#[test]
fn app_image_blobs_hash_to_the_given_digests_or_fail_with_eio() {
    let layers = app_layers();
    let m = Mount::new(&[("app.json", &app_json())]);
    let layout = m.mnt.join("app");
    let (manifest, _) = oci_manifest(&layout);
    assert_eq!(layer_digests(&manifest), layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(), "a given digest is used as is");
    let config = read_json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(layers.iter().map(|l| &l.digest).collect::<Vec<_>>()));
    assert_eq!(config["config"]["Entrypoint"][0], "/nix/store/zln2lyd6738w8ibzhzic2pgf4j80k0ir-app/bin/app");

    for (desc, l) in manifest["layers"].as_array().unwrap().iter().zip(&layers) {
        let file = blob(&layout, &l.digest);
        if l.matches {
            assert_eq!(desc["size"], l.size, "{}", l.path);
            let (hash, n) = sha256_file(&file).unwrap_or_else(|e| panic!("reading the layer of {}: {e}", l.path));
            assert_eq!(format!("sha256:{hash}"), l.digest, "bytes served for {}", l.path);
            assert_eq!(n, l.size);
            assert_eq!(fs::metadata(&file).unwrap().len(), n);
        } else {
            for attempt in ["first", "second"] {
                match sha256_file(&file) {
                    Ok((hash, n)) => panic!(
                        "{attempt} full read of the layer of {} gave {n} bytes hashing to sha256:{hash}, \
                         not {}: a blob whose bytes do not match its digest must fail with EIO",
                        l.path, l.digest
                    ),
                    Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{attempt} read of {}: {e}", l.path),
                }
            }
            loud(&format!("as expected, the layer of {} failed with EIO (digest mismatch)", l.path));
            m.expect_log(&["digest mismatch"], CATALOG_TIMEOUT);
        }
    }
}

#[test]
fn app_image_skopeo_copy_succeeds_exactly_when_every_digest_holds() {
    let layers = app_layers();
    let m = Mount::new(&[("app.json", &app_json())]);
    let (_t, out) = temp_dir();
    let r = skopeo_copy(format!("oci:{}/app", m.mnt.display()), format!("dir:{}/app", out.display()));
    if layers.iter().all(|l| l.matches) {
        assert!(r.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&r.stderr));
        let manifest = read_json(&out.join("app/manifest.json"));
        assert_eq!(layer_digests(&manifest), layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>());
    } else {
        assert!(!r.status.success(), "skopeo copied an image although a layer's bytes do not match its digest");
        loud(&format!(
            "this machine's store differs from vectors.md, so skopeo copy of the unchanged n2c \
             JSON must fail, and did: {}",
            String::from_utf8_lossy(&r.stderr).trim()
        ));
        m.expect_log(&["digest mismatch"], CATALOG_TIMEOUT);
    }
}

#[test]
fn app_image_without_digests_gets_the_reference_digests() {
    let layers = app_layers();
    let mut json = read_json(&app_json());
    for l in json["layers"].as_array_mut().unwrap() {
        let l = l.as_object_mut().unwrap();
        l.remove("digest");
        l.remove("diff_ids");
        l.remove("size");
    }
    let (_t, tmp) = temp_dir();
    let description = tmp.join("app-nodigest.json");
    fs::write(&description, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let m = Mount::new(&[("app-nodigest.json", &description)]);

    let out = tmp.join("out");
    let r = skopeo_copy(format!("oci:{}/app-nodigest", m.mnt.display()), format!("dir:{}", out.display()));
    assert!(r.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&r.stderr));
    let copied = layer_digests(&read_json(&out.join("manifest.json")));
    assert_eq!(copied, layer_digests(&oci_manifest(&m.mnt.join("app-nodigest")).0), "dir: copy keeps the layers as served");
    for (digest, l) in copied.iter().zip(&layers) {
        if l.matches {
            assert_eq!(digest, &l.digest, "computed digest of the layer of {}", l.path);
        } else {
            loud(&format!("layer of {}: computed {digest} (vectors.md's {} is for other bytes)", l.path, l.digest));
        }
    }

    // `nixoci digest` fills in the same digests as the mount computed.
    let filled: Value = serde_json::from_slice(&run(tool_nixoci().arg("digest").arg(&description)).stdout).unwrap();
    let filled: Vec<String> = filled["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(filled, copied);
}

fn tool_nixoci() -> std::process::Command {
    std::process::Command::new(nixoci_bin())
}

#[test]
fn umoci_unpacks_busybox_identical_to_the_store() {
    let busybox = fixture("busybox");
    let m = Mount::new(&[("busybox", &fixture("busybox-image"))]); // bare NAME, no .json
    let (_t, tmp) = temp_dir();
    let bundle = tmp.join("bundle");
    run(tool("umoci").arg("unpack").arg("--image").arg(format!("{}/busybox:latest", m.mnt.display())).arg(&bundle));
    let unpacked = bundle.join("rootfs").join(busybox.strip_prefix("/").unwrap());
    assert_same_tree(&unpacked, &busybox);
    let config = read_json(&bundle.join("config.json"));
    assert_eq!(config["process"]["args"][0], format!("{}/bin/sh", busybox.display()));
}

#[test]
fn podman_runs_hello_pulled_from_the_oci_layout() {
    let m = Mount::new(&[("hello.json", &fixture("hello-image"))]);
    let podman = Podman::new();
    let pulled = stdout(&podman.run(["pull".to_string(), format!("oci:{}/hello", m.mnt.display())]));
    let id = pulled.lines().last().expect("podman pull prints the image id").trim().to_string();
    let out = stdout(&podman.run(["run", "--rm", &id]));
    assert!(out.contains(GREETING) && out.contains("args: world"), "podman run printed: {out}");
    let out = stdout(&podman.run(["run", "--rm", &id, "from", "podman"]));
    assert!(out.contains("args: from podman"), "podman run printed: {out}");
}

#[test]
fn podman_loads_and_runs_the_docker_archive() {
    let m = Mount::new(&[("hello.json", &fixture("hello-image"))]);
    let podman = Podman::new();
    let loaded = stdout(&podman.run(["load".to_string(), "-i".to_string(), format!("{}/hello.tar", m.mnt.display())]));
    let name = loaded.rsplit(": ").next().unwrap().trim().to_string();
    assert!(name.contains("hello"), "podman load printed: {loaded}");
    let out = stdout(&podman.run(["run", "--rm", &name]));
    assert!(out.contains(GREETING), "podman run printed: {out}");
}

#[test]
fn skopeo_reads_the_same_image_from_every_view() {
    let m = Mount::new(&[("hello.json", &fixture("hello-image"))]);
    let (_t, out) = temp_dir();
    let sources = [
        format!("oci:{}/hello", m.mnt.display()),
        format!("dir:{}/hello.dir", m.mnt.display()),
        format!("docker-archive:{}/hello.tar", m.mnt.display()),
    ];
    let mut seen = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let dest = out.join(i.to_string());
        let r = skopeo_copy(src.clone(), format!("dir:{}", dest.display()));
        assert!(r.status.success(), "skopeo copy {src}: {}", String::from_utf8_lossy(&r.stderr));
        let manifest = read_json(&dest.join("manifest.json"));
        seen.push((layer_digests(&manifest), manifest["config"]["digest"].clone()));
    }
    assert_eq!(seen[0].0.len(), 2, "hello has two layers");
    assert!(seen.iter().all(|s| s == &seen[0]), "every view gives the same layers and config: {seen:?}");
}

#[test]
fn every_blob_hashes_to_its_name_and_reads_at_any_offset() {
    let m = Mount::new(&[("hello.json", &fixture("hello-image")), ("busybox.json", &fixture("busybox-image"))]);
    for name in ["hello", "busybox"] {
        let layout = m.mnt.join(name);
        assert_eq!(read_json(&layout.join("oci-layout")), serde_json::json!({"imageLayoutVersion": "1.0.0"}));
        let (manifest, manifest_digest) = oci_manifest(&layout);
        let mut wanted = vec![(manifest_digest, None), (manifest["config"]["digest"].as_str().unwrap().to_string(), manifest["config"]["size"].as_u64())];
        for l in manifest["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar");
            wanted.push((l["digest"].as_str().unwrap().to_string(), l["size"].as_u64()));
        }
        for (digest, size) in &wanted {
            let file = blob(&layout, digest);
            let len = fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).len();
            if let Some(size) = size {
                assert_eq!(len, *size, "descriptor size of {}", file.display());
            }
        }
        // Every file in blobs/ (not only those referenced) is named by its content.
        for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let file = e.unwrap().path();
            let (hash, n) = sha256_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(file.file_name().unwrap().to_str().unwrap(), hash);
            assert_eq!(fs::metadata(&file).unwrap().len(), n, "stat size of {}", file.display());
        }

        let dir = m.mnt.join(format!("{name}.dir"));
        assert_eq!(fs::read(dir.join("version")).unwrap(), b"Directory Transport Version: 1.1\n");
        for e in fs::read_dir(&dir).unwrap() {
            let file = e.unwrap().path();
            let fname = file.file_name().unwrap().to_str().unwrap().to_string();
            if fname.len() == 64 {
                assert_eq!(sha256_file(&file).unwrap().0, fname, "{}", file.display());
            }
        }
        let dir_layers = layer_digests(&read_json(&dir.join("manifest.json")));
        assert_eq!(dir_layers, layer_digests(&manifest));

        // Layer contents equal the store, read by the tar crate and by GNU tar.
        for digest in layer_digests(&manifest) {
            let file = blob(&layout, &digest);
            let mut archive = tar::Archive::new(fs::File::open(&file).unwrap());
            let mut files = 0;
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let path = PathBuf::from("/").join(entry.path().unwrap());
                let host = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("layer entry {} not on the host: {e}", path.display()));
                match entry.header().entry_type() {
                    tar::EntryType::Regular => {
                        let mut data = Vec::new();
                        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                        assert_eq!(data, fs::read(&path).unwrap(), "content of {}", path.display());
                        files += 1;
                    }
                    tar::EntryType::Symlink => {
                        assert_eq!(entry.link_name().unwrap().unwrap(), fs::read_link(&path).unwrap());
                    }
                    tar::EntryType::Directory => assert!(host.is_dir(), "{}", path.display()),
                    t => panic!("unexpected entry type {t:?} for {}", path.display()),
                }
            }
            assert!(files > 0, "layer {digest} has no regular file");
            let listing = stdout(&run(tool("tar").arg("-tvf").arg(&file)));
            assert!(listing.contains("/nix/store/"), "GNU tar lists: {listing}");
        }
    }

    // The docker-archive is read from any offset (readers seek over bodies).
    let tar_file = m.mnt.join("hello.tar");
    let whole = fs::read(&tar_file).unwrap();
    assert_eq!(whole.len() as u64, fs::metadata(&tar_file).unwrap().len());
    let f = fs::File::open(&tar_file).unwrap();
    for _ in 0..300 {
        let off = fastrand::usize(..whole.len());
        let len = fastrand::usize(1..=(whole.len() - off).min(200_000));
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf == whole[off..off + len], "bytes at {off}+{len} differ from a sequential read");
    }
    let names = stdout(&run(tool("tar").arg("-tf").arg(&tar_file)));
    assert!(names.lines().any(|l| l == "manifest.json"), "docker-archive has manifest.json: {names}");
}

#[test]
fn export_writes_the_files_the_mount_serves() {
    let description = fixture("hello-image");
    let m = Mount::new(&[("hello.json", &description)]);
    let (_t, tmp) = temp_dir();
    run(tool_nixoci().arg("export").arg(&description).arg(tmp.join("out")));
    run(tool("diff").args(["-r", "--no-dereference"]).arg(tmp.join("out")).arg(m.mnt.join("hello")));
}

/// A description like busybox-image's but naming `path`.
fn description_naming(path: &str) -> String {
    let json = read_json(&fixture("busybox-image"));
    let real = json["layers"][0]["paths"][0]["path"].as_str().unwrap().to_string();
    serde_json::to_string(&json).unwrap().replace(&real, path)
}

#[test]
fn the_catalog_follows_the_images_dir_and_reports_bad_descriptions() {
    let m = Mount::new(&[("busybox.json", &fixture("busybox-image"))]);
    let views = |n: &str| ["", ".dir", ".tar", ".rootfs", ".bundle"].map(|v| format!("{n}{v}"));
    assert_eq!(mnt_names(&m.mnt), views("busybox").into_iter().collect());

    link_image(&m.images, "hello.json", &fixture("hello-image"));
    assert!(
        wait_for(CATALOG_TIMEOUT, || m.mnt.join("hello/index.json").exists()),
        "an added description appears: {:?}",
        mnt_names(&m.mnt)
    );
    assert!(views("hello").iter().all(|v| m.mnt.join(v).exists()));

    // Each bad description is reported with its file name and does not hide the good ones.
    let missing = "/nix/store/00000000000000000000000000000000-missing";
    let bad: [(&str, String, &[&str]); 4] = [
        ("broken.json", "{ not json".to_string(), &["broken.json"]),
        ("missing.json", description_naming(missing), &["missing.json", missing]),
        ("outside.json", description_naming("/etc"), &["outside.json", "/etc"]),
        ("bad:name.json", description_naming(&fixture("busybox").display().to_string()), &["bad:name"]),
    ];
    for (file, text, log_parts) in &bad {
        fs::write(m.images.join(file), text).unwrap();
        // Listing the mount lets a lazily reloading catalog notice the change.
        wait_for(CATALOG_TIMEOUT, || {
            let _ = mnt_names(&m.mnt);
            m.log_text().lines().any(|l| log_parts.iter().all(|p| l.contains(p)))
        });
        let line = m.expect_log(log_parts, Duration::ZERO);
        eprintln!("reported: {line}");
    }
    let mut expected: BTreeSet<String> = views("busybox").into_iter().chain(views("hello")).collect();
    assert_eq!(mnt_names(&m.mnt), expected, "refused descriptions are not shown, good ones stay");
    for name in ["busybox", "hello"] {
        oci_manifest(&m.mnt.join(name));
    }

    fs::remove_file(m.images.join("hello.json")).unwrap();
    assert!(
        wait_for(CATALOG_TIMEOUT, || !m.mnt.join("hello").exists()),
        "a removed description disappears: {:?}",
        mnt_names(&m.mnt)
    );
    for v in views("hello") {
        expected.remove(&v);
    }
    assert_eq!(mnt_names(&m.mnt), expected);
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let mut m = Mount::new(&[("busybox.json", &fixture("busybox-image"))]);
    oci_manifest(&m.mnt.join("busybox"));
    let status = m.stop(); // asserts the mount is gone
    assert!(status.success(), "exit status on SIGTERM: {status}\n{}", m.log_text());
    assert!(fs::read_dir(&m.mnt).unwrap().next().is_none(), "the mount point is an empty dir again");
}

#[test]
fn a_stale_mount_is_cleared_by_the_next_mount() {
    let mut m = Mount::new(&[("busybox.json", &fixture("busybox-image"))]);
    m.kill9();
    assert!(is_mounted(&m.mnt), "a killed daemon leaves its mount behind");
    // (stat may still answer from cached attributes; listing needs the dead daemon)
    let err = fs::read_dir(&m.mnt).expect_err("a dead FUSE mount cannot be listed");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    let again = Mount::start(&m.mnt, &m.images, &m.cache, &m.log);
    assert_eq!(mounts_at(&m.mnt), 1, "the stale mount was cleared, not covered");
    oci_manifest(&again.mnt.join("busybox"));
    drop(again); // SIGTERM; asserts a clean exit and no mount left
    assert!(!is_mounted(&m.mnt));
}
