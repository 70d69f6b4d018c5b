//! Multi-platform images: an index description of the busybox fixture (amd64, the host's) and
//! Debian's arm64 busybox, served as one OCI image index and read by skopeo (to a registry and
//! back, and to dir:), podman (--arch, and run: arm64 through qemu), Docker (--platform), umoci
//! and oci-image-tool; blobs shared by platforms served once; bad index descriptions refused one
//! log line each; no NAME.tar for an index without the host's platform.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn amd64() -> Value {
    json!({"architecture": "amd64", "os": "linux"})
}

fn arm64() -> Value {
    json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
}

/// tests/fixtures busybox-index: the host's busybox image, then the arm64 one.
fn index_fixture() -> PathBuf {
    assert_eq!(std::env::consts::ARCH, "x86_64", "the fixtures take the host's busybox for the amd64 image");
    fixture("busybox-index")
}

/// One image of an index as a layout holds it.
#[derive(Debug)]
struct Entry {
    platform: Value,
    manifest: String,
    image: ImageId,
}

/// The image index an OCI layout's index.json points to, and its images.
fn index_entries(layout: &Path) -> (Value, Vec<Entry>) {
    let top = read_json(&layout.join("index.json"));
    assert_eq!(top["manifests"].as_array().map(Vec::len), Some(1), "{top}");
    assert_eq!(top["manifests"][0]["mediaType"], INDEX_TYPE, "{top}");
    let index = read_json(&oci_blob(layout, top["manifests"][0]["digest"].as_str().unwrap()));
    assert_eq!(index["mediaType"], INDEX_TYPE);
    let entries = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let manifest = m["digest"].as_str().unwrap().to_string();
            let config = read_json(&oci_blob(layout, &manifest))["config"]["digest"].as_str().unwrap().to_string();
            let config_json = read_json(&oci_blob(layout, &config));
            let diff_ids = config_json["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
            Entry { platform: m["platform"].clone(), manifest, image: ImageId { config, diff_ids, config_json } }
        })
        .collect();
    (top, entries)
}

/// Every blob of a layout hashes to its name, and every layer (gunzipped when compressed) to
/// its image's diff_id.
fn verify_layout(layout: &Path, entries: &[Entry]) {
    for f in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let f = f.unwrap().path();
        let (hash, _) = sha256_file(&f).unwrap();
        assert_eq!(f.file_name().unwrap().to_str().unwrap(), hash, "{} hashes to its name", f.display());
    }
    for e in entries {
        let manifest = read_json(&oci_blob(layout, &e.manifest));
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), e.image.diff_ids.len());
        for (l, diff_id) in layers.iter().zip(&e.image.diff_ids) {
            let (digest, media_type) = (l["digest"].as_str().unwrap(), l["mediaType"].as_str().unwrap());
            let plain = if media_type.ends_with("+gzip") { format!("sha256:{}", sha256_gunzip(&oci_blob(layout, digest))) } else { digest.to_string() };
            assert_eq!(&plain, diff_id, "layer {digest} ({media_type}) of {}", e.platform);
        }
    }
}

/// The served index of the fixture: amd64 then arm64, each config saying its platform.
fn served_fixture(layout: &Path) -> Vec<Entry> {
    let (top, entries) = index_entries(layout);
    assert_eq!(top["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "latest");
    let platforms: Vec<&Value> = entries.iter().map(|e| &e.platform).collect();
    assert_eq!(platforms, [&amd64(), &arm64()]);
    for e in &entries {
        let c = &e.image.config_json;
        assert_eq!((&c["architecture"], &c["os"]), (&e.platform["architecture"], &e.platform["os"]), "{c}");
        assert_eq!(c.get("variant"), e.platform.get("variant"), "{c}");
    }
    verify_layout(layout, &entries);
    entries
}

#[test]
fn the_index_goes_to_a_registry_and_back_and_docker_pulls_arm64() {
    let m = Mount::new(&[("multi.json", &index_fixture())]);
    let served = served_fixture(&m.mnt.join("multi"));
    let reg = Registry::start();
    let dest = reg.reference("multi:latest");
    skopeo_copy_ok(&format!("oci:{}", m.mnt.join("multi").display()), &dest, &["--all", "--dest-tls-verify=false"]);

    let raw: Value = serde_json::from_slice(&run(tool("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(&dest)).stdout).unwrap();
    assert_eq!(raw["mediaType"], INDEX_TYPE, "{raw}");
    let pushed: Vec<&Value> = raw["manifests"].as_array().unwrap().iter().map(|m| &m["platform"]).collect();
    assert_eq!(pushed, [&amd64(), &arm64()], "{raw}");

    // Back to oci:, every digest checked by skopeo on the way and by us after.
    let (_t, tmp) = temp_dir();
    let back = tmp.join("back");
    skopeo_copy_ok(&dest, &format!("oci:{}:latest", back.display()), &["--all", "--src-tls-verify=false"]);
    let (_, copied) = index_entries(&back);
    verify_layout(&back, &copied);
    for (c, s) in copied.iter().zip(&served) {
        assert_eq!((&c.platform, &c.image), (&s.platform, &s.image), "the image came back as served");
    }

    // Docker 20.10 pulls with --platform without experimental mode.
    let docker = Docker::start();
    let reference = format!("127.0.0.1:{}/multi:latest", reg.port);
    docker.run(["pull", "--platform", "linux/arm64", &reference]);
    let inspected = stdout(&docker.run(["image", "inspect", "-f", "{{.Id}} {{.Architecture}} {{.Os}} {{.Variant}}", &reference]));
    assert_eq!(inspected.trim(), format!("{} arm64 linux v8", served[1].image.config));
}

#[test]
fn podman_pulls_the_platform_it_is_asked_for() {
    let m = Mount::new(&[("multi.json", &index_fixture())]);
    let served = served_fixture(&m.mnt.join("multi"));
    let podman = Podman::new();
    let source = format!("oci:{}", m.mnt.join("multi").display());
    for (arch, entry) in [("arm64", &served[1]), ("amd64", &served[0])] {
        let id = stdout(&podman.run(["pull", "--arch", arch, &source])).lines().last().unwrap().trim().to_string();
        assert_eq!(format!("sha256:{id}"), entry.image.config, "podman pull --arch {arch}");
        let inspected = stdout(&podman.run(["image", "inspect", "-f", "{{.Architecture}} {{.Os}}", &id]));
        assert_eq!(inspected.trim(), format!("{arch} linux"));
    }
    // Both run: arm64 through qemu-user-static (binfmt_misc, set up by scripts/setup).
    for (entry, machine) in [(&served[0], "x86_64"), (&served[1], "aarch64")] {
        let id = entry.image.config.trim_start_matches("sha256:");
        assert_eq!(stdout(&podman.run(["run", "--rm", id, "busybox", "uname", "-m"])).trim(), machine);
    }
}

/// Relative path -> sha256 of every file under `dir`.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), sha256_file(&p).unwrap().0);
            }
        }
    }
    out
}

#[test]
fn dir_view_is_what_skopeo_copy_all_writes_tar_is_the_host_image_and_validators_accept() {
    let m = Mount::new(&[("multi.json", &index_fixture())]);
    let layout = m.mnt.join("multi");
    let served = served_fixture(&layout);
    let (_t, tmp) = temp_dir();

    // NAME.dir is, file for file, what skopeo copy --all writes to dir:, and skopeo reads it back.
    let copy = tmp.join("copy");
    skopeo_copy_ok(&format!("oci:{}", layout.display()), &format!("dir:{}", copy.display()), &["--all"]);
    let view = tree(&m.mnt.join("multi.dir"));
    assert_eq!(view, tree(&copy), "multi.dir and skopeo's dir: copy");
    for e in &served {
        assert!(view.contains_key(&format!("{}.manifest.json", e.manifest.trim_start_matches("sha256:"))), "{view:?}");
    }
    let again = tmp.join("again");
    skopeo_copy_ok(&format!("dir:{}", m.mnt.join("multi.dir").display()), &format!("oci:{}:x", again.display()), &["--all"]);
    let (_, read_back) = index_entries(&again);
    assert_eq!(read_back.iter().map(|e| &e.platform).collect::<Vec<_>>(), [&amd64(), &arm64()]);

    // NAME.tar holds the host's (amd64) image, read here by GNU tar.
    let manifest = run(tool("tar").arg("-xOf").arg(m.mnt.join("multi.tar")).arg("manifest.json")).stdout;
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest[0]["Config"], format!("blobs/sha256/{}", served[0].image.config.trim_start_matches("sha256:")));
    assert_eq!(manifest[0]["RepoTags"], json!(["multi:latest"]));

    // umoci walks the index to both images, verifying every blob (gc on a read-only layout
    // succeeds only when nothing is unreachable); its unpack has no platform choice.
    assert_eq!(stdout(&run(tool("umoci").args(["ls", "--layout"]).arg(&layout))).trim(), "latest");
    let gc = run(tool("umoci").args(["--log", "debug", "gc", "--layout"]).arg(&layout));
    let log = String::from_utf8_lossy(&gc.stderr);
    assert!(log.contains("garbage collected 0 blobs"), "{log}");
    for e in &served {
        assert!(log.contains(&format!("-> ws.recurse             digest={}", e.image.config)), "umoci reached {}:\n{log}", e.image.config);
    }

    // oci-image-tool: the layout, the index, each manifest and config against the spec's schemas.
    let validate = |kind: &str, path: &Path| run(tool("oci-image-tool").args(["validate", "--type", kind]).arg(path));
    validate("image", &layout);
    let top = read_json(&layout.join("index.json"));
    validate("imageIndex", &oci_blob(&layout, top["manifests"][0]["digest"].as_str().unwrap()));
    for e in &served {
        validate("manifest", &oci_blob(&layout, &e.manifest));
        validate("config", &oci_blob(&layout, &e.image.config));
    }
}

/// A file added to the store (`nix-store --add`), for descriptions the tests write.
fn store_file(name: &str, contents: &str) -> String {
    let (_t, tmp) = temp_dir();
    let file = tmp.join(name);
    fs::write(&file, contents).unwrap();
    stdout(&run(tool("nix-store").arg("--add").arg(&file))).trim().to_string()
}

fn description(arch: &str, paths: &[&str]) -> String {
    let layers: Vec<Value> = paths.iter().map(|p| json!({"paths": [{"path": p}]})).collect();
    json!({"version": 1, "image-config": {}, "layers": layers, "arch": arch}).to_string()
}

#[test]
fn shared_layers_are_one_blob_and_the_views_are_byte_stable() {
    let busybox = fixture("busybox");
    let busybox_arm64 = fixture("busybox-arm64");
    let motd = store_file("motd", "the same on every platform\n");
    let amd = store_file("shared-amd64.json", &description("amd64", &[busybox.to_str().unwrap(), &motd]));
    let arm = store_file("shared-arm64.json", &description("arm64", &[busybox_arm64.to_str().unwrap(), &motd]));
    let (_t, tmp) = temp_dir();
    let index = tmp.join("shared.json");
    fs::write(&index, json!({"version": 1, "images": [amd, arm], "tag": "v1"}).to_string()).unwrap();
    let m = Mount::new(&[("shared.json", &index)]);
    let layout = m.mnt.join("shared");

    let (top, entries) = index_entries(&layout);
    assert_eq!(top["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v1");
    assert_eq!(entries[1].platform, json!({"architecture": "arm64", "os": "linux"}));
    assert_eq!(entries[0].image.diff_ids[1], entries[1].image.diff_ids[1], "the motd layer is the same blob");
    verify_layout(&layout, &entries);
    // index, 2 manifests, 2 configs, 3 distinct layers; skopeo's dir: adds `version`.
    assert_eq!(fs::read_dir(layout.join("blobs/sha256")).unwrap().count(), 8);
    assert_eq!(tree(&m.mnt.join("shared.dir")).len(), 9);
    let indexed = m.log_text().lines().filter(|l| l.contains("indexed in")).count();
    assert_eq!(indexed, 3, "each distinct layer indexed once:\n{}", m.log_text());

    // Another process (nixoci export) makes every view byte for byte the same.
    let tar = run(tool("tar").arg("-xOf").arg(m.mnt.join("shared.tar")).arg("manifest.json")).stdout;
    assert!(String::from_utf8_lossy(&tar).contains(entries[0].image.config.trim_start_matches("sha256:")));
    for (format, view) in [("oci", "shared"), ("dir", "shared.dir"), ("archive", "shared.tar")] {
        let out = tmp.join(format!("export-{format}"));
        run(std::process::Command::new(nixoci_bin())
            .args(["export", "--format", format])
            .arg(&index)
            .arg(&out)
            .arg("--cache-dir")
            .arg(tmp.join("cache")));
        if format == "archive" {
            assert_eq!(sha256_file(&out).unwrap(), sha256_file(&m.mnt.join(view)).unwrap(), "{view}");
        } else {
            assert_eq!(tree(&out), tree(&m.mnt.join(view)), "{view}");
        }
    }
}

#[test]
fn bad_index_descriptions_are_refused_one_line_each_and_the_rest_is_served() {
    let busybox = fixture("busybox-image");
    let hello = fixture("hello-image");
    let index = index_fixture();
    let (_t, tmp) = temp_dir();
    let not_json = store_file("not-json.json", "this is not JSON\n");
    let x86_64 = store_file("x86-64.json", &description("x86_64", &[fixture("busybox").to_str().unwrap()]));
    let bad: [(&str, Vec<String>, &str); 6] = [
        ("same-platform", vec![path_str(&busybox), path_str(&hello)], "are both for platform linux/amd64"),
        ("not-json", vec![not_json.clone()], "bad image description: malformed JSON"),
        ("missing", vec!["/nix/store/00000000000000000000000000000000-gone.json".into()], "cannot read: No such file"),
        ("outside", vec!["/etc/hostname".into()], "is outside the store"),
        ("nested", vec![path_str(&index)], "is an image index itself: an index cannot hold another index"),
        ("bad-arch", vec![x86_64.clone()], "unknown arch 'x86_64' (GOARCH names: 386, amd64"),
    ];
    // Not bad, but without an image for this host: served without NAME.tar, and the log says why.
    let arm_only = tmp.join("arm-only.json");
    fs::write(&arm_only, json!({"version": 1, "images": [fixture("busybox-arm64-image")]}).to_string()).unwrap();
    let mut files = vec![
        ("multi.json".to_string(), index.clone()),
        ("busybox.json".to_string(), busybox.clone()),
        ("arm-only.json".to_string(), arm_only),
    ];
    for (name, images, _) in &bad {
        let f = tmp.join(format!("{name}.json"));
        fs::write(&f, json!({"version": 1, "images": images}).to_string()).unwrap();
        files.push((format!("{name}.json"), f));
    }
    let links: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let m = Mount::new(&links);

    for (name, images, why) in &bad {
        let file = m.images.join(format!("{name}.json"));
        let line = m.expect_log(&["refusing image description", &file.display().to_string(), why], Duration::from_secs(10));
        assert!(line.contains(&images[0]), "the line names the entry: {line}");
        assert!(!m.mnt.join(name).exists(), "{name} is not served");
    }
    std::thread::sleep(Duration::from_millis(2500)); // two rescans: a refusal is logged once
    let log = m.log_text();
    for (name, _, _) in &bad {
        let file = m.images.join(format!("{name}.json")).display().to_string();
        assert_eq!(log.lines().filter(|l| l.contains(&file)).count(), 1, "{name}:\n{log}");
    }
    served_fixture(&m.mnt.join("multi"));
    assert_eq!(oci_image_id(&m.mnt.join("busybox")).diff_ids.len(), 1);
    m.expect_log(&["image arm-only: no arm-only.tar: a docker-archive holds one image", "platform linux/amd64"], Duration::from_secs(1));
    let (_, arm) = index_entries(&m.mnt.join("arm-only"));
    assert_eq!(arm[0].platform, arm64());
    assert!(m.mnt.join("arm-only.dir/manifest.json").is_file());
    let listed: Vec<String> = fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!listed.contains(&"arm-only.tar".to_string()) && !m.mnt.join("arm-only.tar").exists(), "{listed:?}");
    assert!(listed.contains(&"multi.tar".to_string()), "{listed:?}");
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
