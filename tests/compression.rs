//! Compressed layers (gzip, zstd) made on read: valid streams that decompress to the layer tar,
//! one digest whatever the thread counts, any offset readable; read by the stock clients; bad
//! input refused or failed loudly; and the push of an edit from a fresh CI machine, which
//! uploads only what changed because the description carries the compressed digests.

mod common;

use common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CODECS: [(&str, &str); 2] = [("gzip", LAYER_GZIP), ("zstd", LAYER_ZSTD)];
const GREETING: &str = "Hello from a Nix-built image served by nixoci!";

fn nixoci() -> std::process::Command {
    std::process::Command::new(nixoci_bin())
}

/// The layer descriptors of the manifest an OCI layout's index.json names.
fn manifest_layers(layout: &Path) -> Vec<Value> {
    let manifest = read_json(&oci_blob(layout, &index_manifest_digest(layout)));
    manifest["layers"].as_array().unwrap().clone()
}

fn digests(layers: &[Value]) -> Vec<String> {
    layers.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

/// `description` retyped to each codec in `dir`: [(codec, image name, description)].
fn compressed_variants(description: &Path, name: &str, dir: &Path) -> Vec<(&'static str, String, PathBuf)> {
    CODECS
        .iter()
        .map(|(codec, mediatype)| {
            let image = format!("{name}-{codec}");
            (*codec, image.clone(), retyped(description, mediatype, &dir.join(format!("{image}.json"))))
        })
        .collect()
}

/// `n` reads of `file` at random offsets, opened with O_DIRECT so each one reaches nixoci
/// rather than the page cache, from two threads; each must equal `reference` there. They come
/// in groups of 100 within 4 MiB of a random place: far jumps, and pieces a group shares are
/// compressed once (a big layer has hundreds of pieces, each ~7 ms to make).
fn random_reads_match(file: &Path, reference: &Path, n: usize) {
    let size = fs::metadata(reference).unwrap().len();
    assert_eq!(fs::metadata(file).unwrap().len(), size, "{}", file.display());
    let served = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(file).unwrap();
    let disk = fs::File::open(reference).unwrap();
    let window = size.min(4 << 20);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for group in (0..n / 2).collect::<Vec<_>>().chunks(100) {
                    let base = fastrand::u64(..=size - window);
                    for i in group {
                        let off = base + fastrand::u64(..window);
                        let len = fastrand::u64(1..=(size - off).min(if i % 2 == 0 { 4096 } else { 1 << 20 })) as usize;
                        let (mut got, mut want) = (vec![0u8; len], vec![0u8; len]);
                        served.read_exact_at(&mut got, off).unwrap_or_else(|e| panic!("{} at {off}+{len}: {e}", file.display()));
                        disk.read_exact_at(&mut want, off).unwrap();
                        assert!(got == want, "{} at {off}+{len} differs from the sequential bytes", file.display());
                    }
                }
            });
        }
    });
}

/// The checks of a compressed image, for each codec: two mounts with other FUSE and compression
/// thread counts and `nixoci export` give one manifest (so one digest per layer); each layer
/// blob has its mediatype, passes `gzip -t`/`zstd -t`, equals the exported bytes (which export
/// made again and checked against the digest), decompresses to its diff_id, and reads at `reads`
/// random offsets (spread over the layers by size) like the sequential bytes.
fn compressed_streams_check(description: &Path, name: &str, reads: usize) {
    let (_t, tmp) = temp_dir();
    let variants = compressed_variants(description, name, &tmp);
    let links: Vec<(String, &Path)> = variants.iter().map(|(_, image, d)| (format!("{image}.json"), d.as_path())).collect();
    let links: Vec<(&str, &Path)> = links.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let one = Mount::new_with(&links, &["--threads", "1", "--compress-threads", "1"]);
    let many = Mount::new_with(&links, &["--threads", "8", "--compress-threads", "3"]);
    for (codec, image, desc) in &variants {
        let layout = many.mnt.join(image);
        let exported = tmp.join(format!("export-{image}"));
        // With the mount's digests: export makes every byte again and fails unless they match.
        run(nixoci().arg("export").arg(desc).arg(&exported).arg("--cache-dir").arg(&many.cache));
        let manifest = index_manifest_digest(&layout);
        assert_eq!(index_manifest_digest(&one.mnt.join(image)), manifest, "{image}: --threads 1 --compress-threads 1 and 8/3 serve one manifest");
        assert_eq!(index_manifest_digest(&exported), manifest, "{image}: nixoci export writes the manifest the mount serves");

        let layers = manifest_layers(&layout);
        let diff_ids = oci_image_id(&layout).diff_ids;
        let total: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
        for (l, diff_id) in layers.iter().zip(&diff_ids) {
            let digest = l["digest"].as_str().unwrap();
            assert_eq!(l["mediaType"], CODECS.iter().find(|(c, _)| c == codec).unwrap().1, "{image}");
            assert_ne!(digest, diff_id, "{image}: a compressed layer's digest is not its tar's");
            let (served, on_disk) = (oci_blob(&layout, digest), oci_blob(&exported, digest));
            run(tool("cmp").arg(&on_disk).arg(&served));
            assert_eq!(decompressor(&served), Some(*codec), "{}", served.display());
            run(tool(codec).arg("-t").arg(&served));
            assert_eq!(format!("sha256:{}", sha256_decompressed(&served, codec)), *diff_id, "{image}: {codec} -dc of {digest}");
            let n = (reads as u64 * l["size"].as_u64().unwrap() / total) as usize;
            random_reads_match(&served, &on_disk, n.max(20));
        }
    }
}

#[test]
fn fixture_layers_are_valid_streams_with_one_digest_whatever_the_threads() {
    compressed_streams_check(&fixture("hello-image"), "hello", 2000);
}

/// The app closure: ~665 MB of tar in 3 layers, the python one in ~630 gzip / ~160 zstd pieces.
#[test]
fn app_layers_are_valid_streams_with_one_digest_whatever_the_threads() {
    let (_t, tmp) = temp_dir();
    let (app, _) = app_description(&tmp, "app");
    compressed_streams_check(&app, "app", 2000);
}

#[test]
fn nixoci_digest_fills_compressed_layers_and_check_verifies_them() {
    let (_t, tmp) = temp_dir();
    for (codec, image, desc) in compressed_variants(&fixture("hello-image"), "hello", &tmp) {
        let filled = tmp.join(format!("{image}-digests.json"));
        fs::write(&filled, run(nixoci().arg("digest").arg(&desc).arg("--cache-dir").arg(tmp.join("cache"))).stdout).unwrap();
        let m = Mount::new(&[(&format!("{image}.json"), &desc)]);
        let layout = m.mnt.join(&image);
        let (layers, id) = (manifest_layers(&layout), oci_image_id(&layout));
        let json = read_json(&filled);
        for ((l, served), diff_id) in json["layers"].as_array().unwrap().iter().zip(&layers).zip(&id.diff_ids) {
            assert_eq!(l["digest"], served["digest"], "{codec}: digest");
            assert_eq!(l["size"], served["size"], "{codec}: size");
            assert_eq!(l["diff_ids"], diff_id.as_str(), "{codec}: diff_ids");
        }
        let out = run(nixoci().arg("check").arg(&filled));
        assert_eq!(stdout(&out).matches(": ok sha256:").count(), 2, "{}", stdout(&out));

        let mut wrong = json.clone();
        wrong["layers"][1]["diff_ids"] = format!("sha256:{}", "0".repeat(64)).into();
        wrong["layers"][0]["size"] = (json["layers"][0]["size"].as_u64().unwrap() + 1).into();
        fs::write(&filled, serde_json::to_vec(&wrong).unwrap()).unwrap();
        let out = run_unchecked(nixoci().arg("check").arg(&filled));
        assert_eq!(out.status.code(), Some(1), "check of a wrong description fails");
        let text = stdout(&out);
        assert!(text.contains("layer 0: MISMATCH: size") && text.contains("layer 1: MISMATCH: diff_ids"), "{text}");
    }
}

/// The hello fixture, gzip and zstd, in one mount: (mount, [(codec, image)]).
fn serve_hello(tmp: &Path) -> (Mount, Vec<(&'static str, String)>) {
    let variants = compressed_variants(&fixture("hello-image"), "hello", tmp);
    let links: Vec<(String, PathBuf)> = variants.iter().map(|(_, image, d)| (format!("{image}.json"), d.clone())).collect();
    let links: Vec<(&str, &Path)> = links.iter().map(|(n, d)| (n.as_str(), d.as_path())).collect();
    (Mount::new(&links), variants.into_iter().map(|(c, image, _)| (c, image)).collect())
}

/// skopeo copies compressed layers as they are: to dir:, to oci: and to a registry the blobs
/// keep their digests (--preserve-digests: the manifest too), and come back out as the image.
#[test]
fn skopeo_copies_compressed_layers_as_they_are() {
    let (_t, tmp) = temp_dir();
    let (m, images) = serve_hello(&tmp);
    let reg = Registry::start();
    for (codec, image) in &images {
        let layout = m.mnt.join(image);
        let want = oci_image_id(&layout);
        let served = digests(&manifest_layers(&layout));
        let manifest = index_manifest_digest(&layout);
        let from = format!("oci:{}", layout.display());

        let dir = tmp.join(format!("dir-{image}"));
        skopeo_copy_ok(&from, &format!("dir:{}", dir.display()), &[]);
        let copied = verify_dir_copy(&dir, &want, true);
        assert_eq!(digests(copied["layers"].as_array().unwrap()), served, "{codec}: dir: holds the served blobs");

        let oci = tmp.join(format!("oci-{image}"));
        skopeo_copy_ok(&from, &format!("oci:{}:latest", oci.display()), &["--preserve-digests"]);
        assert_eq!(index_manifest_digest(&oci), manifest, "{codec}: oci: copy keeps the manifest");

        for (src, tag) in [(from.clone(), "oci"), (format!("dir:{}", m.mnt.join(format!("{image}.dir")).display()), "dir")] {
            let before = reg.requests().len();
            skopeo_copy_ok(&src, &reg.reference(&format!("{image}:{tag}")), &["--dest-tls-verify=false", "--preserve-digests"]);
            let raw = run(tool("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(reg.reference(&format!("{image}:{tag}")))).stdout;
            assert_eq!(format!("sha256:{}", sha256_hex(&raw)), manifest, "{codec}: the registry holds the served manifest ({tag})");
            let uploads: Vec<String> =
                reg.requests()[before..].iter().filter(|(m, u)| m == "PUT" && u.contains("/blobs/uploads/")).map(|(_, u)| u.clone()).collect();
            assert!(uploads.iter().all(|u| served.iter().chain([&want.config]).any(|d| u.contains(&d.replace(':', "%3A")))), "{codec}: uploads {uploads:?}");
        }
        let back = tmp.join(format!("back-{image}"));
        skopeo_copy_ok(&reg.reference(&format!("{image}:oci")), &format!("dir:{}", back.display()), &["--src-tls-verify=false"]);
        verify_dir_copy(&back, &want, true);
    }
}

#[test]
fn umoci_unpacks_gzip_layers() {
    let (_t, tmp) = temp_dir();
    let (m, _) = serve_hello(&tmp);
    let bundle = tmp.join("bundle");
    run(tool("umoci").arg("unpack").arg("--image").arg(format!("{}/hello-gzip:latest", m.mnt.display())).arg(&bundle));
    let paths: Vec<PathBuf> = read_json(&fixture("hello-image"))["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["paths"][0]["path"].as_str().unwrap()))
        .collect();
    for p in &paths {
        run(tool("diff").args(["-r", "--no-dereference"]).arg(bundle.join("rootfs").join(p.strip_prefix("/").unwrap())).arg(p));
    }
}

#[test]
fn podman_pulls_loads_and_runs_gzip_and_zstd_images() {
    let (_t, tmp) = temp_dir();
    let (m, images) = serve_hello(&tmp);
    let podman = Podman::new();
    for (codec, image) in &images {
        let layout = m.mnt.join(image);
        podman.run(["pull", &format!("oci:{}", layout.display())]);
        let name = format!("localhost{}:latest", layout.display());
        let inspect: Value = serde_json::from_slice(&podman.run(["image", "inspect", &name]).stdout).unwrap();
        assert_eq!(inspect[0]["RootFS"]["Layers"], serde_json::json!(oci_image_id(&layout).diff_ids), "{codec}");
        let out = stdout(&podman.run(["run", "--rm", &name]));
        assert!(out.contains(GREETING), "{codec}: podman run printed {out}");
        let loaded = stdout(&podman.run([OsStr::new("load"), OsStr::new("-i"), m.mnt.join(format!("{image}.tar")).as_os_str()]));
        assert!(loaded.contains(&format!("localhost/{image}:latest")), "{codec}: podman load of {image}.tar: {loaded}");
        let out = stdout(&podman.run(["run", "--rm", &format!("localhost/{image}:latest")]));
        assert!(out.contains(GREETING), "{codec}: podman run of the loaded archive printed {out}");
    }
}

/// Docker 20.10 loads NAME.tar of both (the zstd image's archive holds its layers uncompressed,
/// as Docker 20.10 reads no zstd) and pulls the gzip image from a registry.
#[test]
fn docker_loads_both_archives_and_pulls_gzip_from_a_registry() {
    let (_t, tmp) = temp_dir();
    let (m, images) = serve_hello(&tmp);
    let docker = Docker::start();
    for (codec, image) in &images {
        let archive = m.mnt.join(format!("{image}.tar"));
        let docker_manifest: Value = serde_json::from_slice(&run(tool("tar").arg("-xOf").arg(&archive).arg("manifest.json")).stdout).unwrap();
        let layout = m.mnt.join(image);
        let in_archive: Vec<String> = docker_manifest[0]["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().replace("blobs/sha256/", "sha256:")).collect();
        let want = if *codec == "zstd" { oci_image_id(&layout).diff_ids } else { digests(&manifest_layers(&layout)) };
        assert_eq!(in_archive, want, "{codec}: layers of {image}.tar");
        let out = stdout(&docker.run([OsStr::new("load"), OsStr::new("-i"), archive.as_os_str()]));
        assert!(out.contains(&format!("Loaded image: {image}:latest")), "{out}");
        let ran = stdout(&docker.run(["run", "--rm", "--network", "none", &format!("{image}:latest")]));
        assert!(ran.contains(GREETING), "{codec}: docker run printed {ran}");
    }
    let reg = Registry::start();
    skopeo_copy_ok(&format!("oci:{}", m.mnt.join("hello-gzip").display()), &reg.reference("hello:gzip"), &["--dest-tls-verify=false", "--preserve-digests"]);
    let pulled = format!("127.0.0.1:{}/hello:gzip", reg.port);
    docker.run(["pull", &pulled]);
    let ran = stdout(&docker.run(["run", "--rm", "--network", "none", &pulled]));
    assert!(ran.contains(GREETING), "docker run of the pulled image printed {ran}");
}

/// A digest or size this nixoci does not make fails reads with EIO and a log line naming the
/// layer, and is never pushed; an unknown mediatype is refused naming the layer; a compressed
/// layer-path file is served as it is.
#[test]
fn bad_compressed_layers_fail_loudly_and_ready_ones_are_served_as_they_are() {
    let (_t, tmp) = temp_dir();
    let hello = fixture("hello-image");
    let gz = retyped(&hello, LAYER_GZIP, &tmp.join("gz.json"));
    let filled: Value = serde_json::from_slice(&run(nixoci().arg("digest").arg(&gz).arg("--cache-dir").arg(tmp.join("c"))).stdout).unwrap();
    let mut other_digest = filled.clone();
    other_digest["layers"][0]["digest"] = format!("sha256:{}", "1".repeat(64)).into();
    let mut other_size = filled.clone();
    other_size["layers"][0]["size"] = (filled["layers"][0]["size"].as_u64().unwrap() - 1).into();
    let mut unknown = filled.clone();
    unknown["layers"][1]["mediatype"] = "application/vnd.oci.image.layer.v1.tar+bzip2".into();
    // A ready gzip blob in the store (as a pulled base layer is): the exported hello layer.
    run(nixoci().arg("export").arg(&gz).arg(tmp.join("exported")).arg("--cache-dir").arg(tmp.join("c")));
    let ready_digest = filled["layers"][1]["digest"].as_str().unwrap();
    let ready = stdout(&run(tool("nix-store").arg("--add").arg(oci_blob(&tmp.join("exported"), ready_digest)))).trim().to_string();
    let mut file_layer = filled.clone();
    file_layer["layers"][1] = serde_json::json!({"layer-path": ready, "mediatype": LAYER_GZIP, "diff_ids": filled["layers"][1]["diff_ids"]});
    let write = |name: &str, v: &Value| {
        let p = tmp.join(name);
        fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
        p
    };
    let files = [
        write("digest.json", &other_digest),
        write("size.json", &other_size),
        write("unknown.json", &unknown),
        write("file.json", &file_layer),
    ];
    let m = Mount::new(&[("digest.json", &files[0]), ("size.json", &files[1]), ("unknown.json", &files[2]), ("file.json", &files[3])]);

    let layer0 = |image: &str| oci_blob(&m.mnt.join(image), manifest_layers(&m.mnt.join(image))[0]["digest"].as_str().unwrap());
    for image in ["digest", "size"] {
        let err = sha256_file(&layer0(image)).expect_err("a blob this nixoci does not make must not read in full");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{image}: {err}");
    }
    m.expect_log(&["image digest layer 0", "digest mismatch"], Duration::from_secs(10));
    m.expect_log(&["image size layer 0", "this nixoci makes"], Duration::from_secs(10));
    m.expect_log(&["unknown.json", "layer 1: unknown mediatype 'application/vnd.oci.image.layer.v1.tar+bzip2'"], Duration::from_secs(10));
    assert!(!m.mnt.join("unknown").exists());

    let reg = Registry::start();
    let push = run_unchecked(tool("skopeo").args(["copy", "--quiet", "--dest-tls-verify=false"]).arg(format!("oci:{}", m.mnt.join("digest").display())).arg(reg.reference("bad:1")));
    assert!(!push.status.success(), "a push of a blob that fails its digest must fail");
    let bad = other_digest["layers"][0]["digest"].as_str().unwrap().replace("sha256:", "");
    assert!(run_unchecked(tool("find").arg(&reg.storage).args(["-name", &bad])).stdout.is_empty(), "the registry never stored {bad}");

    let served = oci_blob(&m.mnt.join("file"), ready_digest);
    run(tool("cmp").arg(&ready).arg(&served));
    assert_eq!(manifest_layers(&m.mnt.join("file"))[1]["mediaType"], LAYER_GZIP);
}

/// A CI machine pushes an edit (app -> app2, one changed store path) with nothing cached: an
/// empty skopeo blob-info cache and a fresh nixoci cache dir. Its descriptions carry the
/// compressed digests, as a substituted Nix build gives them, so skopeo only HEADs the unchanged
/// layers: exactly the changed layer, the config and the manifest are uploaded, the unchanged
/// layers are never compressed, and Docker pulls the result.
#[test]
fn a_fresh_ci_push_of_an_edit_uploads_only_the_changed_layer() {
    let (_t, tmp) = temp_dir();
    let build_cache = tmp.join("build-cache");
    let built = |attr: &str| {
        let (plain, _) = app_description(&tmp, attr);
        let gz = retyped(&plain, LAYER_GZIP, &tmp.join(format!("{attr}-gzip.json")));
        let out = tmp.join(format!("{attr}-built.json"));
        fs::write(&out, run(nixoci().arg("digest").arg(&gz).arg("--cache-dir").arg(&build_cache)).stdout).unwrap();
        out
    };
    let (app, app2) = (built("app"), built("app2"));
    let reg = Registry::start();
    let push = |m: &Mount, tag: &str| {
        let skopeo = FreshSkopeo::new();
        run(skopeo.cmd().args(["copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]).arg(format!("oci:{}", m.mnt.join("app").display())).arg(reg.reference(tag)));
    };
    push(&Mount::new(&[("app.json", &app)]), "app:1");
    let before = reg.requests().len();

    let m = Mount::new(&[("app.json", &app2)]);
    push(&m, "app:2");
    let requests = reg.requests()[before..].to_vec();
    let show = requests.iter().map(|(m, u)| format!("{m} {u}")).collect::<Vec<_>>().join("\n");
    let layers = digests(&manifest_layers(&m.mnt.join("app")));
    let described: Vec<String> = read_json(&app2)["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(layers, described, "the mount serves the digests the description carries");
    let config = oci_image_id(&m.mnt.join("app")).config;
    let mut uploaded: Vec<&str> = requests.iter().filter(|(m, u)| m == "PUT" && u.contains("/blobs/uploads/")).map(|(_, u)| u.as_str()).collect();
    uploaded.sort();
    assert_eq!(uploaded.len(), 2, "two blob uploads:\n{show}");
    for d in [&layers[2], &config] {
        assert!(uploaded.iter().any(|u| u.contains(&d.replace(':', "%3A"))), "{d} uploaded:\n{show}");
    }
    assert_eq!(requests.iter().filter(|(m, u)| m == "PUT" && u.contains("/manifests/")).count(), 1, "{show}");
    for unchanged in &layers[..2] {
        assert!(!requests.iter().any(|(m, u)| m != "HEAD" && u.contains(unchanged.as_str())), "{unchanged} only HEADed:\n{show}");
    }
    let log = m.log_text();
    let compressed = |i: usize| log.lines().any(|l| l.contains(&format!("image app layer {i} ")) && l.contains("piece table complete"));
    assert!(!compressed(0) && !compressed(1) && compressed(2), "only the changed layer was compressed:\n{log}");

    let docker = Docker::start();
    let pulled = format!("127.0.0.1:{}/app:2", reg.port);
    docker.run(["pull", &pulled]);
    // Docker checked every layer's diff_id as it unpacked it (a run would copy 665 MB on vfs).
    let inspect: Value = serde_json::from_slice(&docker.run(["image", "inspect", &pulled]).stdout).unwrap();
    assert_eq!(inspect[0]["RootFS"]["Layers"], serde_json::json!(oci_image_id(&m.mnt.join("app")).diff_ids));
}
