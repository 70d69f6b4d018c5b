//! Concurrency and faults against a running mount: readers racing a description swapped back
//! and forth, a daemon killed while a client reads, and descriptions written slowly into the
//! images directory.

mod common;

use common::*;
use nixoci::blob::Blob;
use nixoci::description::{Description, LayerSource};
use nixoci::layer::LayerIndex;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

/// Adds every blob of the image served at `layout` from `description` to `blobs`, by digest,
/// with the bytes it must have: manifest and config as read once (they hash to their names),
/// layers from an index built here from the same store paths (checked against their digests).
fn add_expected_blobs(blobs: &mut BTreeMap<String, Arc<dyn Blob>>, layout: &Path, description: &Path) {
    let manifest_digest = index_manifest_digest(layout);
    let manifest = read_json(&oci_blob(layout, &manifest_digest));
    for digest in [manifest_digest.clone(), manifest["config"]["digest"].as_str().unwrap().to_string()] {
        let bytes = fs::read(oci_blob(layout, &digest)).unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), digest);
        blobs.insert(digest, Arc::new(bytes));
    }
    let desc = Description::parse(&fs::read(description).unwrap()).unwrap();
    for (layer, served) in desc.layers.iter().zip(manifest["layers"].as_array().unwrap()) {
        let digest = served["digest"].as_str().unwrap().to_string();
        if blobs.contains_key(&digest) {
            continue;
        }
        let LayerSource::Paths(specs) = &layer.source else { panic!("a path layer") };
        let idx = LayerIndex::build(specs).unwrap();
        assert_eq!(nixoci::digest::sha256_blob(&idx).unwrap(), digest, "the index built here makes the served layer");
        blobs.insert(digest, Arc::new(idx));
    }
}

/// 16 threads read random ranges of every blob of app and app2 while the images dir swaps
/// `app.json` between them 300 times. An open blob keeps its bytes whatever happens to the
/// name; a name may go away (ENOENT) only for a blob the other version does not have.
#[test]
fn random_reads_stay_right_while_the_description_is_swapped_300_times() {
    let (_t, tmp) = temp_dir();
    let (app, _) = app_description(&tmp, "app");
    let (app2, _) = app_description(&tmp, "app2");
    let m = Mount::new(&[("app.json", &app)]);
    let layout = m.mnt.join("app");
    let first = index_manifest_digest(&layout);
    let mut blobs = BTreeMap::new();
    add_expected_blobs(&mut blobs, &layout, &app);
    let v1 = blobs.len();
    relink_image(&m.images, "app.json", &app2);
    let (mut current, errors) = wait_for_new_manifest(&layout, &first, Duration::from_secs(60));
    assert!(errors.is_empty(), "index.json failed to read during a swap: {errors:?}");
    let v2_manifest = read_json(&oci_blob(&layout, &current));
    let shared: Vec<String> = v2_manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).filter(|d| blobs.contains_key(d)).collect();
    assert_eq!(shared.len(), 2, "busybox and python layers are in both versions");
    add_expected_blobs(&mut blobs, &layout, &app2);
    assert_eq!(blobs.len(), 2 * v1 - 2, "manifest, config and app layer of each version, two shared layers");
    let blobs: Vec<(String, Arc<dyn Blob>, bool)> = blobs.into_iter().map(|(d, b)| (d.clone(), b, shared.contains(&d))).collect();

    let stop = AtomicBool::new(false);
    let (reads, wrong_bytes, enoent) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let errors = Mutex::new(Vec::<String>::new());
    let swaps = std::thread::scope(|s| {
        for t in 0..16 {
            let (blobs, layout, stop, reads, wrong_bytes, enoent, errors) = (&blobs, &layout, &stop, &reads, &wrong_bytes, &enoent, &errors);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let (mut got, mut want) = (vec![0u8; 256 << 10], vec![0u8; 256 << 10]);
                while !stop.load(Ordering::Relaxed) {
                    let (digest, blob, shared) = &blobs[rng.usize(..blobs.len())];
                    let f = match File::open(oci_blob(layout, digest)) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !shared => {
                            enoent.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("open {digest}: {e}"));
                            continue;
                        }
                    };
                    let size = blob.size();
                    assert_eq!(f.metadata().unwrap().len(), size, "size of {digest}");
                    for _ in 0..8 {
                        let off = rng.u64(0..=size);
                        let len = rng.usize(0..=got.len()).min((size - off) as usize);
                        if let Err(e) = f.read_exact_at(&mut got[..len], off) {
                            errors.lock().unwrap().push(format!("read {digest} at {off}+{len}: {e}"));
                            break;
                        }
                        blob.read_at(off, &mut want[..len]).unwrap();
                        let wrong = got[..len].iter().zip(&want[..len]).filter(|(a, b)| a != b).count();
                        wrong_bytes.fetch_add(wrong as u64, Ordering::Relaxed);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let mut swaps = 1;
        let mut failed_index_reads = Vec::new();
        while swaps < 300 {
            relink_image(&m.images, "app.json", if swaps % 2 == 0 { &app2 } else { &app });
            let (now, errors) = wait_for_new_manifest(&layout, &current, Duration::from_secs(60));
            failed_index_reads.extend(errors);
            current = now;
            swaps += 1;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(failed_index_reads.is_empty(), "index.json failed to read during swaps: {failed_index_reads:?}");
        swaps
    });
    let errors = errors.into_inner().unwrap();
    let (reads, wrong_bytes, enoent) = (reads.into_inner(), wrong_bytes.into_inner(), enoent.into_inner());
    eprintln!("{swaps} swaps, {reads} range reads, {enoent} ENOENT on a name that went away");
    assert!(errors.is_empty(), "{} failed opens or reads, first: {}", errors.len(), errors[0]);
    assert_eq!(wrong_bytes, 0, "wrong bytes served in {reads} reads");
    assert!(reads > 1000, "too few reads to mean anything: {reads}");
}

/// kill -9 of the daemon while a client reads a layer: the client's read fails (the kernel
/// ends the connection) rather than hanging, and a new mount at the same place clears the
/// stale mount and serves the image again.
#[test]
fn a_daemon_killed_mid_read_fails_the_read_and_the_next_mount_serves() {
    let (_t, tmp) = temp_dir();
    let (app, _) = app_description(&tmp, "app");
    let mut m = Mount::new(&[("app.json", &app)]);
    let layout = m.mnt.join("app");
    let manifest = read_json(&oci_blob(&layout, &index_manifest_digest(&layout)));
    let biggest = manifest["layers"].as_array().unwrap().iter().max_by_key(|l| l["size"].as_u64()).unwrap();
    let (digest, size) = (biggest["digest"].as_str().unwrap().to_string(), biggest["size"].as_u64().unwrap());

    // A slow reader (about 30 MB/s), so the daemon dies in the middle of the blob.
    let progress = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let (path, seen) = (oci_blob(&layout, &digest), progress.clone());
    std::thread::spawn(move || {
        let res = (|| {
            let mut f = File::open(path)?;
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match f.read(&mut buf)? {
                    0 => return Ok(seen.load(Ordering::Relaxed)),
                    n => seen.fetch_add(n as u64, Ordering::Relaxed),
                };
                sleep(Duration::from_millis(1));
            }
        })();
        let _ = done_tx.send(res);
    });
    assert!(wait_for(Duration::from_secs(30), || progress.load(Ordering::Relaxed) >= 1 << 20), "the reader makes no progress");
    m.kill9();
    let res: std::io::Result<u64> = done_rx.recv_timeout(Duration::from_secs(30)).expect("the client hangs after the daemon died");
    match res {
        Ok(n) => panic!("the client read to the end ({n} of {size} bytes) although the daemon died after {} bytes", progress.load(Ordering::Relaxed)),
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "the read fails with ENOTCONN: {e}");
            eprintln!("the read failed after {} of {size} bytes: {e}", progress.load(Ordering::Relaxed));
        }
    }
    assert!(is_mounted(&m.mnt), "a killed daemon leaves its mount behind");

    let again = Mount::start(&m.mnt, &m.images, &m.cache, &m.log);
    assert_eq!(mounts_at(&m.mnt), 1, "the stale mount was cleared, not covered");
    let (hash, n) = sha256_file(&oci_blob(&layout, &digest)).unwrap();
    assert_eq!((format!("sha256:{hash}"), n), (digest, size), "the new mount serves the whole layer");
    drop(again);
    assert!(!is_mounted(&m.mnt));
}

/// Lines of the log that report `file`.
fn reports(m: &Mount, file: &str) -> Vec<String> {
    m.log_text().lines().filter(|l| l.contains("refusing") && l.contains(file)).map(String::from).collect()
}

/// A description written in chunks with pauses longer than the settle time is not reported
/// while it is open for writing, and appears once closed; one left malformed is reported once.
#[test]
fn a_description_being_written_is_not_reported_and_a_malformed_one_is_reported_once() {
    let m = Mount::new(&[]);
    let json = fs::read(fixture("busybox-image")).unwrap();
    fs::write(m.images.join("bad.json"), &json[..json.len() / 2]).unwrap();
    let mut f = File::create(m.images.join("slow.json")).unwrap();
    for (i, chunk) in json.chunks(json.len() / 3 + 1).enumerate() {
        if i > 0 {
            sleep(Duration::from_millis(1300));
        }
        f.write_all(chunk).unwrap();
        let _ = fs::read_dir(&m.mnt).unwrap().count(); // a listing makes the catalog rescan
    }
    assert!(reports(&m, "slow.json").is_empty(), "reported while being written: {:?}", reports(&m, "slow.json"));
    drop(f);
    assert!(wait_for(Duration::from_secs(10), || m.mnt.join("slow/index.json").exists()), "the complete description appears");
    index_manifest_digest(&m.mnt.join("slow"));

    let line = m.expect_log(&["refusing", "bad.json", "malformed JSON"], Duration::from_secs(10));
    sleep(Duration::from_millis(1500)); // more scans, which must not report it again
    let _ = fs::read_dir(&m.mnt).unwrap().count();
    assert_eq!(reports(&m, "bad.json"), vec![line], "a malformed description is reported once");
    assert!(reports(&m, "slow.json").is_empty(), "{:?}", reports(&m, "slow.json"));
}
