//! The client matrix: every view of the mount (oci:, dir:, docker-archive:) read by the stock
//! clients (skopeo copy to dir:, oci:, containers-storage:, docker://; skopeo inspect; umoci;
//! podman load + run; buildah bud; oci-image-tool validate; GNU tar; Python tarfile). Docker and
//! containerd read it in tests/docker.rs, a normal user in tests/rootless.rs. One #[test] per
//! cell; a missing tool fails the cell (run scripts/setup). The small hello image (busybox + a
//! script) serves most cells; the ~665 MB app closure of shared/bench/corpus.nix serves the
//! copies that matter for size.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const GREETING: &str = "Hello from a Nix-built image served by nixoci!";

#[derive(Clone, Copy)]
enum Image {
    /// tests/fixtures hello-image: busybox and hello, two layers.
    Hello,
    /// corpus.nix app: busybox, python, app; a description without digests.
    App,
}

/// A mount serving one image; returns the mount, what must outlive it, and the image name.
fn serve(image: Image) -> (Mount, Option<TempDir>, &'static str) {
    match image {
        Image::Hello => (Mount::new(&[("hello.json", &fixture("hello-image"))]), None, "hello"),
        Image::App => {
            let (t, dir) = temp_dir();
            let (desc, _) = app_description(&dir, "app");
            (Mount::new(&[("app.json", &desc)]), Some(t), "app")
        }
    }
}

#[derive(Clone, Copy)]
enum Src {
    Oci,
    Dir,
    Archive,
}

impl Src {
    fn reference(self, mnt: &Path, name: &str) -> String {
        let mnt = mnt.display();
        match self {
            Src::Oci => format!("oci:{mnt}/{name}"),
            Src::Dir => format!("dir:{mnt}/{name}.dir"),
            Src::Archive => format!("docker-archive:{mnt}/{name}.tar"),
        }
    }
}

#[derive(Clone, Copy)]
enum Dst {
    Dir,
    Oci,
    Storage,
    Registry,
}

/// skopeo copy from a view of the mount to a destination, then back out of the destination into
/// a `dir:` that is checked against the served image (config digest, diff_ids, blob names).
fn copy_cell(image: Image, src: Src, dst: Dst) {
    let (m, _keep, name) = serve(image);
    let want = oci_image_id(&m.mnt.join(name));
    let from = src.reference(&m.mnt, name);
    let (_t, tmp) = temp_dir();
    let back = tmp.join("back");
    let back_ref = format!("dir:{}", back.display());
    let _registry; // lives until the end of the cell
    match dst {
        Dst::Dir => {
            skopeo_copy_ok(&from, &back_ref, &[]);
        }
        Dst::Oci => {
            let oci = format!("oci:{}:latest", tmp.join("oci").display());
            skopeo_copy_ok(&from, &oci, &[]);
            assert_eq!(read_json(&tmp.join("oci/oci-layout")), serde_json::json!({"imageLayoutVersion": "1.0.0"}));
            skopeo_copy_ok(&oci, &back_ref, &[]);
        }
        Dst::Storage => {
            // vfs: no mounts left behind, storage of this cell's own.
            let storage = format!("containers-storage:[vfs@{0}/root+{0}/run]{name}:latest", tmp.join("storage").display());
            skopeo_copy_ok(&from, &storage, &[]);
            let inspected: Value = serde_json::from_slice(&run(tool("skopeo").arg("inspect").arg(&storage)).stdout).unwrap();
            assert_eq!(inspected["Layers"], serde_json::json!(want.diff_ids), "containers-storage holds the layers: {inspected}");
            skopeo_copy_ok(&storage, &back_ref, &[]);
        }
        Dst::Registry => {
            let r = Registry::start();
            let dest = r.reference(&format!("{name}:latest"));
            skopeo_copy_ok(&from, &dest, &["--dest-tls-verify=false"]);
            skopeo_copy_ok(&dest, &back_ref, &["--src-tls-verify=false"]);
            _registry = r;
        }
    }
    // docker-archive gives skopeo a Docker manifest; converting it to OCI re-serialises the config.
    let same_config_bytes = !matches!((src, dst), (Src::Archive, Dst::Oci));
    let manifest = verify_dir_copy(&back, &want, same_config_bytes);
    if matches!(dst, Dst::Dir | Dst::Storage) {
        // Uncompressed all the way: the layer blobs are the served bytes themselves.
        let layers: Vec<&str> = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
        assert_eq!(layers, want.diff_ids, "layers copied unchanged");
    }
}

macro_rules! copy_cells {
    ($($test:ident: $image:ident $src:ident -> $dst:ident;)*) => {
        $(#[test] fn $test() { copy_cell(Image::$image, Src::$src, Dst::$dst) })*
    };
}

copy_cells! {
    skopeo_oci_to_dir: Hello Oci -> Dir;
    skopeo_oci_to_oci: Hello Oci -> Oci;
    skopeo_oci_to_containers_storage: Hello Oci -> Storage;
    skopeo_oci_to_registry: Hello Oci -> Registry;
    skopeo_dir_to_dir: Hello Dir -> Dir;
    skopeo_dir_to_oci: Hello Dir -> Oci;
    skopeo_dir_to_containers_storage: Hello Dir -> Storage;
    skopeo_dir_to_registry: Hello Dir -> Registry;
    skopeo_archive_to_dir: Hello Archive -> Dir;
    skopeo_archive_to_oci: Hello Archive -> Oci;
    skopeo_archive_to_containers_storage: Hello Archive -> Storage;
    skopeo_archive_to_registry: Hello Archive -> Registry;
    app_skopeo_oci_to_dir: App Oci -> Dir;
    app_skopeo_archive_to_dir: App Archive -> Dir;
}
// The app image pushed to a registry (oci: -> docker://, twice, incrementally): tests/registry.rs.

/// skopeo inspect (and inspect --config --raw) of one view: the served layers and config.
fn inspect_cell(src: Src) {
    let (m, _keep, name) = serve(Image::Hello);
    let layout = m.mnt.join(name);
    let want = oci_image_id(&layout);
    let from = src.reference(&m.mnt, name);
    let inspected: Value = serde_json::from_slice(&run(tool("skopeo").arg("inspect").arg(&from)).stdout).unwrap();
    assert_eq!(inspected["Layers"], serde_json::json!(want.diff_ids), "{from}: {inspected}");
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");
    let config = read_json(&oci_blob(&layout, &want.config));
    assert_eq!(inspected["Env"], config["config"]["Env"]);
    if !matches!(src, Src::Archive) {
        // docker-archive: skopeo makes a Docker manifest of its own; the others serve ours.
        assert_eq!(inspected["Digest"].as_str().unwrap(), index_manifest_digest(&layout), "{from}");
    }
    let raw_config = run(tool("skopeo").args(["inspect", "--config", "--raw"]).arg(&from)).stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&raw_config)), want.config, "{from}: config bytes");
}

#[test]
fn skopeo_inspect_oci() {
    inspect_cell(Src::Oci);
}

#[test]
fn skopeo_inspect_dir() {
    inspect_cell(Src::Dir);
}

#[test]
fn skopeo_inspect_archive() {
    inspect_cell(Src::Archive);
}

#[test]
fn dir_view_version_is_exactly_33_bytes() {
    let (m, _keep, name) = serve(Image::Hello);
    let version = m.mnt.join(format!("{name}.dir/version"));
    assert_eq!(fs::metadata(&version).unwrap().len(), 33);
    assert_eq!(fs::read(&version).unwrap(), b"Directory Transport Version: 1.1\n");
}

/// The store paths a fixture description names, layer by layer.
fn described_paths(description: &Path) -> Vec<PathBuf> {
    let json = read_json(description);
    json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["paths"].as_array().unwrap().iter().map(|p| PathBuf::from(p["path"].as_str().unwrap())))
        .collect()
}

#[test]
fn umoci_unpack_equals_the_store() {
    let (m, _keep, name) = serve(Image::Hello);
    let (_t, tmp) = temp_dir();
    let bundle = tmp.join("bundle");
    run(tool("umoci").arg("unpack").arg("--image").arg(format!("{}/{name}:latest", m.mnt.display())).arg(&bundle));
    let paths = described_paths(&fixture("hello-image"));
    assert_eq!(paths.len(), 2);
    for p in &paths {
        run(tool("diff").args(["-r", "--no-dereference"]).arg(bundle.join("rootfs").join(p.strip_prefix("/").unwrap())).arg(p));
    }
    let store: Vec<String> = fs::read_dir(bundle.join("rootfs/nix/store")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(store.len(), paths.len(), "nothing but the described paths in the rootfs: {store:?}");
    let config = read_json(&bundle.join("config.json"));
    assert_eq!(config["process"]["args"], serde_json::json!([paths[1].join("bin/hello"), "world"]));
}

/// `podman load -i FILE`: the name podman reports.
fn podman_load(podman: &Podman, file: &Path) -> String {
    let out = stdout(&podman.run([OsStr::new("load"), OsStr::new("-i"), file.as_os_str()]));
    let line = out.lines().find(|l| l.starts_with("Loaded image")).unwrap_or_else(|| panic!("podman load printed: {out}"));
    line.rsplit(": ").next().unwrap().trim().to_string()
}

fn podman_runs_hello(podman: &Podman, image: &str) {
    let out = stdout(&podman.run(["run", "--rm", image]));
    assert!(out.contains(GREETING) && out.contains("args: world"), "podman run {image} printed: {out}");
}

#[test]
fn podman_load_oci_dir_and_run() {
    let (m, _keep, name) = serve(Image::Hello);
    let podman = Podman::new();
    let layout = m.mnt.join(name);
    let loaded = podman_load(&podman, &layout);
    // podman names an OCI directory after its path (formats.md §3).
    assert_eq!(loaded, format!("localhost{}", layout.display()), "name podman gave the OCI dir");
    podman_runs_hello(&podman, &loaded);
}

#[test]
fn podman_load_archive_and_run() {
    let (m, _keep, name) = serve(Image::Hello);
    let podman = Podman::new();
    let loaded = podman_load(&podman, &m.mnt.join(format!("{name}.tar")));
    assert_eq!(loaded, format!("localhost/{name}:latest"), "name podman gave the archive");
    podman_runs_hello(&podman, &loaded);
}

/// The archive's members as the mount's OCI layout says they must be: name -> size (None for
/// the JSON files the archive makes itself).
fn expected_members(layout: &Path) -> BTreeMap<String, Option<u64>> {
    let mut want: BTreeMap<String, Option<u64>> = ["manifest.json", "oci-layout", "index.json"].iter().map(|n| (n.to_string(), None)).collect();
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        want.insert(format!("blobs/sha256/{}", e.file_name().to_str().unwrap()), Some(e.metadata().unwrap().len()));
    }
    want
}

/// Lists the archive with Python's tarfile: name, size, regular?, sha256 of the content.
const TARFILE_LIST: &str = r#"
import hashlib, json, sys, tarfile
out = []
with tarfile.open(sys.argv[1]) as t:
    for m in t:
        h = hashlib.sha256()
        if m.isreg():
            f = t.extractfile(m)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append({"name": m.name, "size": m.size, "reg": m.isreg(), "sha256": h.hexdigest()})
print(json.dumps(out))
"#;

#[test]
fn python_tarfile_reads_the_archive() {
    let (m, _keep, name) = serve(Image::Hello);
    let archive = m.mnt.join(format!("{name}.tar"));
    let members: Vec<Value> = serde_json::from_slice(&run(tool("python3").arg("-c").arg(TARFILE_LIST).arg(&archive)).stdout).unwrap();
    let want = expected_members(&m.mnt.join(name));
    let got: Vec<&str> = members.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(got.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<_>>(), want.keys().cloned().collect(), "members: {got:?}");
    assert_eq!(got.len(), want.len(), "no member twice: {got:?}");
    assert_eq!(&got[..3], ["manifest.json", "oci-layout", "index.json"], "small files first");
    for member in &members {
        let n = member["name"].as_str().unwrap();
        assert_eq!(member["reg"], true, "{n} is a regular file");
        if let Some(hex) = n.strip_prefix("blobs/sha256/") {
            assert_eq!(member["sha256"], hex, "content of {n}");
            assert_eq!(member["size"].as_u64(), want[n], "size of {n}");
        }
    }
    // Docker's manifest.json names the tag and the blobs that are there.
    let tmp = temp_dir();
    run(tool("tar").arg("-xf").arg(&archive).arg("-C").arg(&tmp.1).args(["manifest.json", "index.json"]));
    let docker = read_json(&tmp.1.join("manifest.json"));
    let want_id = oci_image_id(&m.mnt.join(name));
    assert_eq!(docker[0]["RepoTags"], serde_json::json!([format!("{name}:latest")]));
    assert_eq!(docker[0]["Config"], format!("blobs/sha256/{}", want_id.config.strip_prefix("sha256:").unwrap()));
    let layers: Vec<String> = want_id.diff_ids.iter().map(|d| format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap())).collect();
    assert_eq!(docker[0]["Layers"], serde_json::json!(layers));
    assert_eq!(index_manifest_digest(&tmp.1), index_manifest_digest(&m.mnt.join(name)), "the archive's index.json names the served manifest");
}

#[test]
fn gnu_tar_lists_the_archive() {
    let (m, _keep, name) = serve(Image::Hello);
    let archive = m.mnt.join(format!("{name}.tar"));
    let listing = stdout(&run(tool("tar").arg("-tvf").arg(&archive)));
    let want = expected_members(&m.mnt.join(name));
    let mut seen = BTreeMap::new();
    for line in listing.lines() {
        // -r--r--r-- root/root      1991168 1970-01-01 00:00 blobs/sha256/<hex>
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 6, "tar -tvf line: {line}");
        assert_eq!((f[0], f[1]), ("-r--r--r--", "root/root"), "{line}");
        seen.insert(f[5].to_string(), f[2].parse::<u64>().unwrap());
    }
    assert_eq!(seen.len(), listing.lines().count(), "no member twice:\n{listing}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "members:\n{listing}");
    for (n, size) in &want {
        if let Some(size) = size {
            assert_eq!(seen[n], *size, "size of {n}");
        }
    }
    // GNU tar reads every byte of every member without complaint.
    let out = run(tool("tar").arg("-xOf").arg(&archive).stdout(std::process::Stdio::null()));
    assert!(out.stderr.is_empty(), "tar -xO: {}", String::from_utf8_lossy(&out.stderr));
}

/// buildah with storage of its own (vfs: nothing mounted).
fn buildah(storage: &Path) -> std::process::Command {
    let mut c = tool("buildah");
    c.arg("--root").arg(storage.join("root")).arg("--runroot").arg(storage.join("run")).args(["--storage-driver", "vfs"]);
    c
}

/// `buildah bud` of `FROM oci:LAYOUT` plus one added file: the built image keeps the base's
/// layers (same diff_ids) and config, and adds exactly one layer holding the file.
fn buildah_bud_adds_one_layer(layout: &Path, want: &ImageId) {
    let (_t, tmp) = temp_dir();
    let context = tmp.join("context");
    fs::create_dir(&context).unwrap();
    fs::write(context.join("added.txt"), "added by buildah\n").unwrap();
    fs::write(context.join("Containerfile"), format!("FROM oci:{}\nCOPY added.txt /added.txt\n", layout.display())).unwrap();
    let storage = tmp.join("storage");
    run(buildah(&storage).args(["bud", "--quiet", "--tag", "built"]).arg(&context));
    let inspected: Value = serde_json::from_slice(&run(buildah(&storage).args(["inspect", "--type", "image", "built"])).stdout).unwrap();
    let built: Vec<String> = serde_json::from_value(inspected["OCIv1"]["rootfs"]["diff_ids"].clone()).unwrap();
    assert_eq!(built.len(), want.diff_ids.len() + 1, "one layer more than the base: {built:?}");
    assert_eq!(built[..want.diff_ids.len()], want.diff_ids[..], "base layers unchanged");
    assert_eq!(inspected["OCIv1"]["config"]["Entrypoint"], want.config_json["config"]["Entrypoint"], "base config kept");
    // The new layer, uncompressed, holds the file.
    let out = tmp.join("out");
    run(buildah(&storage).args(["push", "--quiet", "--disable-compression", "built"]).arg(format!("dir:{}", out.display())));
    let top = built.last().unwrap().strip_prefix("sha256:").unwrap();
    let added = run(tool("tar").arg("-xOf").arg(out.join(top)).arg("added.txt")).stdout;
    assert_eq!(added, b"added by buildah\n", "the added layer");
}

#[test]
fn buildah_bud_from_the_mount_and_the_export() {
    let (m, _keep, name) = serve(Image::Hello);
    let layout = m.mnt.join(name);
    let want = oci_image_id(&layout);
    buildah_bud_adds_one_layer(&layout, &want);
    let (_t, tmp) = temp_dir();
    nixoci_export(&fixture("hello-image"), "oci", &tmp.join("exported"));
    buildah_bud_adds_one_layer(&tmp.join("exported"), &want);
}

/// `oci-image-tool validate`; panics unless it succeeds.
fn validate(kind: &str, path: &Path) {
    let out = run(tool("oci-image-tool").args(["validate", "--type", kind]).arg(path));
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Validation succeeded"), "oci-image-tool validate --type {kind} {}: {text}", path.display());
}

/// oci-image-tool (Debian's 1.0.0-rc1) validates an image layout in full: schemas, and the digest
/// and size of every blob the index reaches. Which views it applies to:
/// - NAME/ and the exported layout: as an image layout (`--type image` on a directory).
/// - NAME.dir/ is not an OCI layout (no index.json, blobs named by bare hex): its manifest and
///   config are validated one by one (`--type manifest`, `--type config`).
/// - NAME.tar: this version's tar walker wraps its own end-of-walk signal in an error, so it fails
///   on every tar (skopeo's own oci-archive too: "find failed: unable to walk: end of walk").
///   The layout that GNU tar extracts from the archive is validated instead.
#[test]
fn oci_image_tool_validates_every_view() {
    let (m, _keep, name) = serve(Image::Hello);
    let layout = m.mnt.join(name);
    let served = oci_image_id(&layout);
    validate("image", &layout);
    let dir = m.mnt.join(format!("{name}.dir"));
    validate("manifest", &dir.join("manifest.json"));
    validate("config", &dir.join(served.config.strip_prefix("sha256:").unwrap()));
    let (_t, tmp) = temp_dir();
    let extracted = tmp.join("extracted");
    fs::create_dir(&extracted).unwrap();
    run(tool("tar").arg("-xf").arg(m.mnt.join(format!("{name}.tar"))).arg("-C").arg(&extracted));
    validate("image", &extracted);
    nixoci_export(&fixture("hello-image"), "oci", &tmp.join("exported"));
    validate("image", &tmp.join("exported"));
    // The tool does read the blobs: one changed byte in a layer fails it.
    let layer = oci_blob(&extracted, &served.diff_ids[1]);
    let mut bytes = fs::read(&layer).unwrap();
    bytes[600] ^= 1;
    fs::write(&layer, bytes).unwrap();
    let out = run_unchecked(tool("oci-image-tool").args(["validate", "--type", "image"]).arg(&extracted));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("digest mismatch"), "a changed layer is caught: {out:?}");
}
