//! The Nix library (nix/) and its examples (examples/): everything evaluates with import from
//! derivation refused; every example is built by Nix, mounted by nixoci and run by podman,
//! asserting what nix2container's own tests assert; the copyTo* scripts copy to a registry,
//! podman, a Docker engine and skopeo destinations, with no mount running or through one, and
//! leave nothing behind. (The layering itself is unit-tested in src/plan.rs.) Needs root,
//! /dev/fuse, Nix, podman, Docker and a registry (scripts/setup).

mod common;

use common::*;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A private copy of the nixoci binary taken once per test run: cargo may rebuild
/// target/debug/nixoci meanwhile, and the library hashes the binary into every layer
/// derivation.
fn nixoci() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nixoci-nixlib-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("nixoci");
        fs::copy(nixoci_bin(), &bin).unwrap();
        bin
    })
}

/// Build as root, refuse import from derivation, and pass this build's nixoci.
fn nix_args(cmd: &mut Command) -> &mut Command {
    cmd.args(["--option", "build-users-group", "", "--option", "allow-import-from-derivation", "false"])
        .arg("--argstr")
        .arg("nixoci")
        .arg(nixoci())
}

/// A directory with a lowercase name: podman names an `oci:` image after its path, and a
/// reference must be lowercase. Removed on drop.
struct LowerDir(PathBuf);

impl LowerDir {
    fn new() -> LowerDir {
        let d = std::env::temp_dir().join(format!("nixoci-lib-{:016x}", fastrand::u64(..)));
        fs::create_dir(&d).unwrap();
        LowerDir(d)
    }
}

impl Drop for LowerDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `nix-build examples -A ATTR` with this build's nixoci; returns the out path.
fn build(attr: &str) -> PathBuf {
    build_with(attr, &[])
}

fn build_with(attr: &str, extra: &[&str]) -> PathBuf {
    let out = run(nix_args(tool("nix-build").arg(repo_dir().join("examples")))
        .args(extra)
        .args(["-A", attr, "--no-out-link"])
        .stderr(Stdio::inherit()));
    PathBuf::from(stdout(&out).lines().last().unwrap_or_else(|| panic!("nix-build {attr}: no output")).trim())
}

/// `import examples { nixoci = …; }` for -E expressions.
fn examples() -> String {
    format!("(import {}/examples {{ nixoci = \"{}\"; }})", repo_dir().display(), nixoci().display())
}

/// Evaluates EXPR strictly to JSON (import from derivation refused, as everywhere here).
fn eval(expr: &str) -> Value {
    let out = run(nix_args(tool("nix-instantiate").args(["--eval", "--strict", "--json", "-E", expr])));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The image's layers as lists of store paths (rewritten ones marked with "->/").
fn layer_paths(image: &Value) -> Vec<Vec<String>> {
    image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["paths"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let s = p["path"].as_str().unwrap().to_string();
                            if p["options"]["rewrite"].is_object() { format!("{s}->/") } else { s }
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

fn name_of(store_path: &str) -> &str {
    let base = store_path.trim_start_matches("/nix/store/");
    base.split_once('-').map(|x| x.1).unwrap_or(base)
}

/// Builds an example, mounts it as NAME and pulls it into a private podman storage.
/// Fields drop in order: podman storage, then the mount, then its directory.
struct Running {
    image: Value,
    podman: Podman,
    id: String,
    _mount: Mount,
    _dir: LowerDir,
}

fn start(attr: &str, name: &str) -> Running {
    start_with(attr, name, &[])
}

fn start_with(attr: &str, name: &str, extra: &[&str]) -> Running {
    let desc = build_with(attr, extra);
    let image = read_json(&desc);
    let dir = LowerDir::new();
    let images = dir.0.join("images");
    fs::create_dir(&images).unwrap();
    link_image(&images, &format!("{name}.json"), &desc);
    let mount = Mount::start(&dir.0.join("mnt"), &images, &dir.0.join("cache"), &dir.0.join("nixoci.log"));
    let podman = Podman::new();
    let pulled = stdout(&podman.run(["pull".to_string(), format!("oci:{}/{name}", mount.mnt.display())]));
    let id = pulled.lines().last().expect("podman pull prints the image id").trim().to_string();
    Running { image, podman, id, _mount: mount, _dir: dir }
}

impl Running {
    fn run(&self, args: &[&str]) -> String {
        let mut a = vec!["run", "--rm", &self.id];
        a.extend_from_slice(args);
        stdout(&self.podman.run(a))
    }
    fn inspect(&self, format: &str) -> String {
        stdout(&self.podman.run(["image", "inspect", &self.id, "-f", format])).trim().to_string()
    }
    fn layer_count(&self) -> usize {
        let v: Value = serde_json::from_slice(&self.podman.run(["image", "inspect", &self.id]).stdout).unwrap();
        v[0]["RootFS"]["Layers"].as_array().unwrap().len()
    }
}

fn assert_line(out: &str, pattern: &str) {
    let re = Regex::new(pattern).unwrap();
    assert!(out.lines().any(|l| re.is_match(l)), "no line matches {pattern:?} in:\n{out}");
}

// ---------------------------------------------------------------- evaluation: no IFD

/// Every example, its copy scripts and linkToMount instantiate with import from derivation
/// refused (the layering itself is unit-tested in src/plan.rs).
#[test]
fn every_example_evaluates_without_import_from_derivation() {
    let base = nix_build(&repo_dir().join("examples/fixtures.nix"), "busybox"); // any store path
    let expr = format!(
        r#"let ex = import {r}/examples {{ nixoci = "{n}"; baseDir = "{b}"; }};
               passthru = [ "copyToRegistry" "copyToDockerDaemon" "copyToPodman" "copyTo" "linkToMount" "nixDatabase" ];
               drvs = v: [ v.drvPath ] ++ map (p: v.${{p}}.drvPath) (builtins.filter (p: v ? ${{p}}) passthru);
           in builtins.mapAttrs (_: drvs) (removeAttrs ex [ "fixtures" "appWith" "basicWith" ])
              // {{ appWith = drvs (ex.appWith {{ message = "x"; }}); basicWith = drvs (ex.basicWith {{ name = "registry.example/b"; tag = "t"; }}); }}"#,
        r = repo_dir().display(),
        n = nixoci().display(),
        b = base.display()
    );
    let v = eval(&expr);
    let examples = v.as_object().unwrap();
    for (name, drvs) in examples {
        let drvs = drvs.as_array().unwrap();
        assert!(drvs.iter().all(|d| d.as_str().unwrap().ends_with(".drv")), "{name}: {drvs:?}");
        // An image has four copy scripts and linkToMount; an image index (multiarch) none.
        assert!(drvs.len() >= 6 || name == "multiarch", "{name}: the image, four copy scripts, linkToMount: {drvs:?}");
    }
    assert_eq!(examples["nix"].as_array().unwrap().len(), 7, "nix has its nixDatabase");
    // Every example file is in that list.
    let listed = fs::read_to_string(repo_dir().join("examples/default.nix")).unwrap();
    for file in fs::read_dir(repo_dir().join("examples")).unwrap() {
        let f = file.unwrap().file_name().into_string().unwrap();
        assert!(f == "default.nix" || listed.contains(&format!("./{f}")), "examples/{f} is not in examples/default.nix");
    }
}

/// No nixpkgs here: the flake's outputs are evaluated with a stub of the nixpkgs attributes
/// they use (tests/fixtures/stub-nixpkgs.nix), as far as evaluation goes without building.
#[test]
fn flake_outputs_evaluate_with_a_stub_nixpkgs() {
    for f in ["flake.nix", "nix/default.nix", "nix/module.nix"] {
        run(tool("nix-instantiate").arg("--parse").arg(repo_dir().join(f)).stdout(Stdio::null()));
    }
    let v = eval(&format!("import {}/tests/fixtures/stub-flake.nix {{ repo = {}; }}", repo_dir().display(), repo_dir().display()));
    let image = &v["image"];
    for s in ["copyToRegistry", "copyToDockerDaemon", "copyToPodman", "copyTo"] {
        assert!(image[s]["drv"].as_str().unwrap().ends_with(".drv"), "{s}: {v}");
        assert!(image[s]["text"].as_str().unwrap().contains("--skopeo /nix/store/"), "{s} runs nixpkgs' skopeo: {v}");
        assert!(image[s]["mainProgram"].as_str().unwrap().starts_with("copy-to"), "{s}: nix run finds it: {v}");
    }
    assert!(image["copyToRegistry"]["text"].as_str().unwrap().contains("'docker://hello:"), "{v}");
    assert!(v["app"].as_str().unwrap().ends_with("/bin/nixoci"), "{v}");
    assert_eq!(v["lib"], serde_json::json!(["buildImage", "buildImageIndex", "buildLayer", "imageFromDir", "mountName"]));
    assert_eq!(v["module"], true);
    assert!(v["checks"]["hello-image"].as_str().unwrap().ends_with(".drv"), "{v}");
}

// ---------------------------------------------------------------- examples, run by podman

#[test]
fn hello_runs_deps_layer_then_script_layer() {
    let r = start("hello", "hello");
    let out = r.run(&[]);
    assert!(out.contains("Hello, world!") && out.contains("dying"), "{out}");
    let layers = layer_paths(&r.image);
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert_eq!(layers[1].iter().map(|p| name_of(p)).collect::<Vec<_>>(), vec!["conversation"], "{layers:?}");
    assert_eq!(r.layer_count(), 2);
}

#[test]
fn basic_runs() {
    let r = start("basic", "basic");
    assert!(r.run(&[]).contains("Hello, world!"));
}

#[test]
fn openbar_tmp_is_world_writable() {
    let r = start("openbar", "openbar");
    assert_line(&r.run(&[]), r"^drwxrwxrwx.*tmp$");
}

#[test]
fn copy_to_root_bin_symlink_farm() {
    let r = start("copyToRoot", "copy-to-root");
    assert!(r.run(&[]).contains("Hello, world!"));
    let ls = stdout(&r.podman.run(["run", "--rm", "--entrypoint", "/bin/ls", &r.id, "/"]));
    assert_line(&ls, r"^bin$");
    assert!(!r.image.to_string().contains("-root/bin"), "the farm itself is at /");
}

#[test]
fn layered_has_exactly_three_layers() {
    let r = start("layered", "layered");
    assert_eq!(r.image["layers"].as_array().unwrap().len(), 3);
    assert_eq!(r.layer_count(), 3);
    assert!(r.run(&[]).contains("Hello, world!"));
}

#[test]
fn size_layered_stays_within_max_layers() {
    let r = start("sizeLayered", "size-layered");
    let layers = layer_paths(&r.image);
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert_eq!(layers[0].iter().map(|p| name_of(p)).collect::<Vec<_>>(), vec!["busybox"], "largest first: {layers:?}");
    assert!(r.run(&[]).contains("Hello, world!"));
}

#[test]
fn nested_identical_children_once() {
    let r = start("nested", "nested");
    assert!(r.run(&[]).contains("Hello, world!"));
    let layers = layer_paths(&r.image);
    let names: Vec<Vec<&str>> = layers.iter().map(|l| l.iter().map(|p| name_of(p)).collect()).collect();
    // the two identical children once, then the middle layer; hello's closure is all below it,
    // and greeting (in the children) is not repeated.
    assert_eq!(names, vec![vec!["greeting"], vec!["busybox", "hello", "root->/"]]);
    assert_eq!(r.layer_count(), 2);
}

#[test]
fn non_reproducible_layer_is_kept_in_the_store() {
    let r = start("nonReproducible", "non-reproducible");
    assert!(r.run(&[]).contains("Hello, world!"));
    let layer = &r.image["layers"][0];
    let file = PathBuf::from(layer["layer-path"].as_str().expect("layer-path set"));
    let (hex, size) = sha256_file(&file).unwrap();
    assert_eq!(layer["digest"].as_str().unwrap(), format!("sha256:{hex}"));
    assert_eq!(layer["size"].as_u64().unwrap(), size);
    assert_eq!(r.layer_count(), 1, "hello's whole closure is in that layer");
}

/// compression = "zstd" on a buildLayer and "gzip" on the image's own layer: the JSON carries
/// the compressed digests and sizes and the tars' diff_ids, made at build time (the mount
/// compresses nothing to serve the image, and serves exactly those digests), and podman runs it.
#[test]
fn compressed_layers_carry_their_digests_from_the_build() {
    let r = start("compressed", "compressed");
    assert!(r.run(&[]).contains("Hello, world!"));
    let layers = r.image["layers"].as_array().unwrap();
    let types: Vec<&str> = layers.iter().map(|l| l["mediatype"].as_str().unwrap()).collect();
    assert_eq!(types, [LAYER_ZSTD, LAYER_GZIP]);
    for l in layers {
        let (digest, diff_id) = (l["digest"].as_str().unwrap(), l["diff_ids"].as_str().unwrap());
        assert!(digest.starts_with("sha256:") && diff_id.starts_with("sha256:") && digest != diff_id, "{l}");
        assert!(l["size"].as_u64().unwrap() > 0, "{l}");
    }
    let served = read_json(&r._mount.mnt.join("compressed/index.json"))["manifests"][0]["digest"].as_str().unwrap().to_string();
    let manifest = read_json(&oci_blob(&r._mount.mnt.join("compressed"), &served));
    for (m, l) in manifest["layers"].as_array().unwrap().iter().zip(layers) {
        assert_eq!((&m["digest"], &m["size"], &m["mediaType"]), (&l["digest"], &l["size"], &l["mediatype"]));
    }
    let log = r._mount.log_text();
    assert!(!log.contains("hashed in") && !log.contains("% of the tar"), "the mount hashed or compressed a layer at load:\n{log}");
    assert_eq!(r.layer_count(), 2);
    let desc = build("compressed");
    let check = stdout(&run(Command::new(nixoci()).arg("check").arg(&desc)));
    assert_eq!(check.matches(": ok sha256:").count(), 2, "nixoci check: {check}");
}

#[test]
fn compression_needs_a_reproducible_layer() {
    let expr = format!("{}.fixtures.hello", examples());
    let out = run_unchecked(nix_args(tool("nix-build").args(["--no-out-link", "-E"])).arg(format!(
        "let n = import {}/nix {{ nixoci = \"{}\"; }}; in n.buildLayer {{ deps = [ ({expr}) ]; reproducible = false; compression = \"gzip\"; }}",
        repo_dir().display(),
        nixoci().display()
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("compression = \"gzip\" needs reproducible = true"), "{err}");
    let out = run_unchecked(nix_args(tool("nix-instantiate").args(["--eval", "--strict", "-E"])).arg(format!(
        "(import {}/nix {{ nixoci = \"{}\"; }}).buildLayer {{ compression = \"xz\"; }}",
        repo_dir().display(),
        nixoci().display()
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("compression must be \"none\", \"gzip\" or \"zstd\", not \"xz\""), "{err}");
}

#[test]
fn ownership_on_one_file() {
    let r = start("ownership", "ownership");
    let out = r.run(&[]);
    assert_line(&out, r"^-r--r--r-- +1 +1001 +1001 +0 Jan  1  1970 test1\.txt$");
    assert_line(&out, r"^-r--r--r-- +1 +0 +0 +0 Jan  1  1970 test2\.txt$");
}

#[test]
fn created_date_shown_by_podman() {
    let r = start("created", "created");
    let created = r.inspect("{{ .Created }}");
    assert!(created.contains("2024-05-13 09:31:10"), "{created}");
}

#[test]
fn metadata_in_history() {
    let r = start("metadata", "metadata");
    assert_eq!(r.inspect("{{ (index .History 0).CreatedBy }}"), "test created_by");
    assert_eq!(r.inspect("{{ (index .History 0).Author }}"), "test author");
    assert_eq!(r.inspect("{{ (index .History 0).Comment }}"), "test comment");
}

#[test]
fn nix_database_registers_exactly_the_store() {
    // No static nix here: read the image's database with the host's sqlite3 instead of
    // running nix-store -qR in the container.
    let r = start("nix", "nix");
    let listed: BTreeSet<String> = r
        .run(&["/bin/ls", "/nix/store"])
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('.'))
        .map(|l| format!("/nix/store/{l}"))
        .collect();
    let (_t, dir) = temp_dir();
    let db = dir.join("db.sqlite");
    let raw = r.podman.run(["run", "--rm", &r.id, "/bin/cat", "/nix/var/nix/db/db.sqlite"]);
    fs::write(&db, &raw.stdout).unwrap();
    let q = |sql: &str| stdout(&run(tool("sqlite3").arg(&db).arg(sql)));
    let registered: BTreeSet<String> = q("SELECT path FROM ValidPaths").lines().map(String::from).collect();
    assert_eq!(registered, listed, "database and /nix/store differ");
    assert!(registered.iter().any(|p| name_of(p) == "greeting"), "nested layer's path registered: {registered:?}");
    assert!(!registered.iter().any(|p| name_of(p) == "root"), "copyToRoot path is not in /nix/store: {registered:?}");
    // hello's references are registered too
    let refs = q("SELECT count(*) FROM Refs r JOIN ValidPaths v ON v.id = r.referrer WHERE v.path LIKE '%-hello'");
    assert_eq!(refs.trim(), "2", "hello references busybox and greeting");
    assert_eq!(q("SELECT count(*) FROM ValidPaths WHERE registrationTime != 0").trim(), "0");
    assert_line(&r.run(&["/bin/ls", "-ld", "/nix"]), r"^drwxr-xr-x .* /nix$");
}

#[test]
fn from_image_keeps_base_files_and_env() {
    let r = start("fromImage", "from-image");
    let base = read_json(&build("fromImageBase"));
    let n = base["layers"].as_array().unwrap().len();
    assert_eq!(&r.image["layers"].as_array().unwrap()[..n], &base["layers"].as_array().unwrap()[..], "base layers first");
    let out = r.run(&[]);
    assert!(out.contains("/etc/base-release"), "{out}");
    assert!(out.contains("BASE_VAR=from-base OVERRIDDEN=new"), "{out}");
    assert_line(&out, r"^/etc$"); // WorkingDir from the base
    let env = r.inspect("{{ .Config.Env }}");
    assert!(env.contains("PATH=/bin") && env.contains("OVERRIDDEN=new") && !env.contains("OVERRIDDEN=base"), "{env}");
}

#[test]
fn from_image_of_a_skopeo_dir_layout() {
    // A pulled image is a dir: layout of blobs: make one from the base image, add it to the
    // store, and use it as fromImage through imageFromDir.
    let base = build("fromImageBase");
    let (_t, tmp) = temp_dir();
    let dir = tmp.join("base-dir");
    run(Command::new(nixoci()).args(["export", "--format", "dir"]).arg(&base).arg(&dir));
    let stored = stdout(&run(tool("nix-store").arg("--add").arg(&dir))).trim().to_string();
    let r = start_with("fromDir", "from-dir", &["--argstr", "baseDir", &stored]);
    let first = &r.image["layers"][0];
    assert!(first["layer-path"].as_str().unwrap().starts_with(&stored), "{first}");
    let out = r.run(&[]);
    assert!(out.contains("base 1.0") && out.contains("BASE_VAR=from-base"), "{out}");
}

#[test]
fn link_to_mount_shows_the_image_at_once() {
    let desc = build("basic");
    let link = build("basic.linkToMount");
    let dir = LowerDir::new();
    let images = dir.0.join("images");
    fs::create_dir(&images).unwrap();
    let m = Mount::start(&dir.0.join("mnt"), &images, &dir.0.join("cache"), &dir.0.join("nixoci.log"));
    assert!(!m.mnt.join("basic").exists());
    run(Command::new(link.join("bin/link-to-mount")).arg(&images));
    assert_eq!(fs::read_link(images.join("basic.json")).unwrap(), desc);
    assert!(
        wait_for(std::time::Duration::from_secs(10), || m.mnt.join("basic/index.json").is_file()),
        "basic/ did not appear\n{}",
        m.log_text()
    );
    drop(m);
}

// ---------------------------------------------------------------- vectors and benchmark

/// nix2container's layering and bytes: the app image built with `digests = true` (hashed at
/// build time, as nix2container does) against its JSON in shared/reference.
#[test]
fn app_image_matches_vectors() {
    let ours = read_json(&build("appDigests"));
    let reference = read_json(&shared_dir().join("reference/n2c-image-app.json"));
    assert_eq!(layer_paths(&ours), layer_paths(&reference), "layers and their order");
    assert_eq!(ours["image-config"], reference["image-config"]);
    let vectors = fs::read_to_string(shared_dir().join("reference/vectors.md")).unwrap();
    let mut compared = 0;
    for (o, r) in ours["layers"].as_array().unwrap().iter().zip(reference["layers"].as_array().unwrap()) {
        let path = r["paths"][0]["path"].as_str().unwrap();
        let row = vectors.lines().find(|l| l.starts_with(&format!("| `{path}`"))).expect("narHash row");
        let expected = row.rsplit('`').nth(1).unwrap();
        if nar_hash(Path::new(path)) == expected {
            assert_eq!(o["digest"], r["digest"], "{path}");
            assert_eq!(o["diff_ids"], r["diff_ids"], "{path}");
            assert_eq!(o["size"], r["size"], "{path}");
            compared += 1;
        } else {
            eprintln!(
                "!!!!!!!! {path}: this machine's store path has another narHash than vectors.md;\n\
                 !!!!!!!! its digest cannot be compared here (only its place in the layers is)."
            );
        }
    }
    assert!(compared >= 2, "busybox and app match vectors.md on every machine");
}

/// After a change of the app script the rebuild makes the script, the config file and the
/// image description, and hashes nothing; with the digests of the unchanged layers cached (as a
/// mount or a copy keeps them), only the new top layer is hashed when the image is served.
#[test]
fn app_change_rebuilds_without_hashing_then_only_the_top_layer_is_hashed() {
    let nonce = format!("{:x}", fastrand::u64(..));
    let expr = |m: &str| format!("{}.appWith {{ message = \"{m} {nonce}\"; }}", examples());
    let warm = build_expr(&expr("warm"), "");
    let dry = run(nix_args(&mut tool("nix-build")).args(["--no-out-link", "--dry-run", "-E", &expr("changed")]));
    let text = String::from_utf8_lossy(&dry.stderr).to_string();
    let mut drvs: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("/nix/store/") && l.ends_with(".drv")).collect();
    drvs.sort_by_key(|d| name_of(d));
    let names: Vec<&str> = drvs.iter().map(|d| name_of(d)).collect();
    assert_eq!(names, ["app.drv", "config.json.drv", "image-app.json.drv"], "{text}");
    let changed = build_expr(&expr("changed"), "");
    let image = read_json(&changed);
    assert_eq!(layer_paths(&image).len(), 3);
    assert!(image["layers"].as_array().unwrap().iter().all(|l| l.get("digest").is_none()), "nothing hashed at build time: {image}");
    let (_t, cache) = temp_dir();
    let digest = |desc: &Path| {
        let out = run(Command::new(nixoci()).arg("digest").arg(desc).arg("--cache-dir").arg(&cache).env("RUST_LOG", "nixoci=info"));
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("hashed in")).map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(digest(&warm).len(), 3, "an empty cache: every layer hashed");
    let hashed = digest(&changed);
    let top = image["layers"][2]["paths"][0]["path"].as_str().unwrap();
    assert!(hashed.len() == 1 && hashed[0].contains(top), "only the app layer is hashed again: {hashed:?}");
}

/// `nix-build -E EXPR [-A ATTR]`; returns the out path.
fn build_expr(expr: &str, attr: &str) -> PathBuf {
    let mut c = tool("nix-build");
    nix_args(&mut c).args(["--no-out-link", "-E", expr]);
    if !attr.is_empty() {
        c.args(["-A", attr]);
    }
    PathBuf::from(stdout(&run(c.stderr(Stdio::inherit()))).trim())
}

// ---------------------------------------------------------------- copyTo* scripts

/// A copyTo* script run as a user would: its own TMPDIR and digest cache, in FreshSkopeo's
/// namespace (so skopeo's blob-info cache stays private). `finish` asserts that the copy left
/// no temporary directory and, in the namespace it ran in, no mount.
struct CopyRun {
    skopeo: FreshSkopeo,
    base: PathBuf,
    tmp: PathBuf,
    mounts_after: PathBuf,
    _t: tempfile::TempDir,
}

impl CopyRun {
    fn new() -> CopyRun {
        let (t, base) = temp_dir();
        let tmp = base.join("tmp");
        fs::create_dir(&tmp).unwrap();
        CopyRun { skopeo: FreshSkopeo::new(), tmp, mounts_after: base.join("mounts-after"), base, _t: t }
    }

    fn cmd<S: AsRef<OsStr>>(&self, program: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>) -> Command {
        let mut c = self.skopeo.wrap(program, &self.mounts_after);
        c.args(args).env("TMPDIR", &self.tmp).env("XDG_CACHE_HOME", self.base.join("cache"));
        c
    }

    /// Runs it to success; returns its stderr.
    fn run(&self, cmd: &mut Command) -> String {
        let out = run(cmd);
        self.finish();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn finish(&self) {
        let left: Vec<_> = fs::read_dir(&self.tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
        let mounts = fs::read_to_string(&self.mounts_after).expect("the wrapper shell wrote the mount table");
        let tmp = self.tmp.to_str().unwrap();
        assert!(!mounts.contains(tmp), "a mount is left under {tmp}:\n{mounts}");
        assert!(!mount_points().iter().any(|p| p.starts_with(&self.tmp)));
    }
}

/// `bin/NAME` of a copy script of EXPR (an image expression).
fn script(expr: &str, attr: &str) -> PathBuf {
    let name = match attr {
        "copyToRegistry" => "copy-to-registry",
        "copyToDockerDaemon" => "copy-to-docker-daemon",
        "copyToPodman" => "copy-to-podman",
        _ => "copy-to",
    };
    build_expr(expr, attr).join("bin").join(name)
}

/// The config and layer digests of a description as nixoci serves it (an exported layout).
fn served_id(desc: &Path) -> ImageId {
    let (_t, dir) = temp_dir();
    run(Command::new(nixoci()).arg("export").arg(desc).arg(dir.join("layout")));
    oci_image_id(&dir.join("layout"))
}

#[test]
fn copy_to_registry_and_copy_to_push_what_pulls_back_the_same() {
    let reg = Registry::start();
    let expr = format!("{}.basicWith {{ name = \"127.0.0.1:{}/basic\"; tag = \"v1\"; }}", examples(), reg.port);
    let want = served_id(&build_expr(&expr, ""));
    let c = CopyRun::new();
    let err = c.run(&mut c.cmd(script(&expr, "copyToRegistry"), ["--dest-tls-verify=false"]));
    assert!(err.contains("reading the image from a private mount"), "{err}");
    c.run(&mut c.cmd(script(&expr, "copyTo"), [reg.reference("again:v2").as_str(), "--dest-tls-verify=false"]));
    for r in ["basic:v1", "again:v2"] {
        let (_t, out) = temp_dir();
        let dest = format!("dir:{}", out.join("pulled").display());
        run(c.skopeo.cmd().args(["copy", "--quiet", "--src-tls-verify=false", &reg.reference(r), &dest]));
        verify_dir_copy(&out.join("pulled"), &want, true);
    }
}

#[test]
fn copy_to_podman_then_podman_runs_it() {
    let expr = format!("{}.basicWith {{ name = \"nixoci-podman\"; tag = \"v1\"; }}", examples());
    let p = Podman::new();
    let conf = p.storage_conf();
    let c = CopyRun::new();
    c.run(c.cmd(script(&expr, "copyToPodman"), None::<&str>).env("CONTAINERS_STORAGE_CONF", &conf));
    let podman = |args: &[&str]| stdout(&run(p.cmd().env("CONTAINERS_STORAGE_CONF", &conf).args(args)));
    let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let image = images.lines().find(|l| l.ends_with("nixoci-podman:v1")).unwrap_or_else(|| panic!("podman images: {images}"));
    assert!(podman(&["run", "--rm", image]).contains("Hello, world!"));
}

#[test]
fn copy_to_docker_daemon_then_docker_runs_it() {
    let expr = format!("{}.basicWith {{ name = \"nixoci-docker\"; tag = \"v1\"; }}", examples());
    let d = Docker::start();
    let c = CopyRun::new();
    // DOCKER_HOST, as the docker client takes it (nixoci passes it on to skopeo).
    c.run(c.cmd(script(&expr, "copyToDockerDaemon"), None::<&str>).env("DOCKER_HOST", format!("unix://{}", d.socket.display())));
    let out = stdout(&d.run(["run", "--rm", "--network", "none", "nixoci-docker:v1"]));
    assert!(out.contains("Hello, world!"), "{out}");
}

#[test]
fn copy_stopped_by_sigint_halfway_leaves_nothing_behind() {
    let c = CopyRun::new();
    let (_t, dest) = temp_dir();
    let out = dest.join("out");
    let child = c
        .cmd(script(&examples(), "app.copyTo"), [format!("dir:{}", out.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The wrapper shell's child is nixoci (the script execs it); skopeo is nixoci's child.
    let shell = child.id();
    let copying = wait_for(Duration::from_secs(120), || fs::read_dir(&out).is_ok_and(|d| d.count() > 1));
    let nixoci_pid: i32 = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap().trim().parse().unwrap();
    assert!(copying, "skopeo never started writing {}", out.display());
    unsafe { libc::kill(nixoci_pid, libc::SIGINT) };
    let result = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "exit status after SIGINT: {err}");
    assert!(err.contains("stopping skopeo and cleaning up"), "{err}");
    c.finish();
    let tmp = c.tmp.to_str().unwrap();
    for p in fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains(tmp), "still running: {}", String::from_utf8_lossy(&cmdline));
    }
}

#[test]
fn copy_uses_a_running_mount_that_serves_the_image() {
    let desc = build("basic");
    let m = Mount::new(&[("basic.json", &desc)]);
    let listing = read_json(&m.mnt.join(".nixoci-images.json"));
    assert_eq!(listing, serde_json::json!({"basic": desc}));
    let c = CopyRun::new();
    let (_t, out) = temp_dir();
    let err = c.run(&mut c.cmd(script(&examples(), "basic.copyTo"), [format!("dir:{}", out.join("copy").display())]));
    assert!(err.contains(&format!("reading the image from the running mount: {}/basic", m.mnt.display())), "{err}");
    verify_dir_copy(&out.join("copy"), &oci_image_id(&m.mnt.join("basic")), true);
}

#[test]
fn copy_without_fuse_says_so_in_one_line_and_exports_instead() {
    // As nobody, /dev/fuse covered by a root-only file in the copy's namespace: no permission,
    // whatever mode this machine's /dev/fuse has.
    use std::os::unix::fs::{chown, PermissionsExt};
    let c = CopyRun::new();
    fs::set_permissions(&c.base, fs::Permissions::from_mode(0o755)).unwrap();
    let home = c.base.join("home");
    fs::create_dir(&home).unwrap();
    let guard = c.base.join("fuse");
    fs::write(&guard, "").unwrap();
    fs::set_permissions(&guard, fs::Permissions::from_mode(0o600)).unwrap();
    for d in [&home, &c.tmp] {
        chown(d, Some(65534), Some(65534)).unwrap();
    }
    // An image no other test mounts: a running mount that serves it would rightly be used.
    let expr = format!("{}.basicWith {{ name = \"nixoci-no-fuse\"; tag = \"v1\"; }}", examples());
    let desc = build_expr(&expr, "");
    let err = c.run(
        c.cmd(
            "sh",
            [
                OsStr::new("-c"),
                OsStr::new("mount --bind \"$0\" /dev/fuse && exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\""),
                guard.as_os_str(),
                script(&expr, "copyTo").as_os_str(),
                OsStr::new(&format!("dir:{}", home.join("copy").display())),
            ],
        )
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache")),
    );
    let said: Vec<&str> = err.lines().filter(|l| l.contains("FUSE")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains("no permission to use /dev/fuse") && said[0].contains("exporting"), "{err}");
    verify_dir_copy(&home.join("copy"), &served_id(&desc), true);
}

// ---------------------------------------------------------------- multi-platform images

#[test]
fn build_image_index_needs_no_import_from_derivation() {
    // Over descriptions that are plain derivations (the test fixtures), evaluation must not
    // build anything: buildImageIndex never reads an image's JSON.
    let expr = format!(
        "{{ nixoci }}: let lib = import {r}/nix {{ inherit nixoci; }}; f = import {r}/tests/fixtures/images.nix; in \
         lib.buildImageIndex {{ name = \"pair\"; tag = \"t1\"; images = [ f.busybox-image f.busybox-arm64-image ]; }}",
        r = repo_dir().display()
    );
    let out = run(nix_args(tool("nix-build").args(["--no-out-link", "-E", &expr]))
        .stderr(Stdio::inherit()));
    let index = read_json(Path::new(stdout(&out).trim()));
    let images = [fixture("busybox-image"), fixture("busybox-arm64-image")].map(|p| p.display().to_string());
    assert_eq!(index, serde_json::json!({"images": images, "tag": "t1", "version": 1}));
}

#[test]
fn image_index_example_serves_each_platform() {
    let index = build("multiarch");
    let json = read_json(&index);
    let platforms: Vec<(Value, Value)> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| read_json(Path::new(p.as_str().unwrap())))
        .map(|d| (d["arch"].clone(), d.get("variant").cloned().unwrap_or(Value::Null)))
        .collect();
    assert_eq!(platforms, [("amd64".into(), Value::Null), ("arm64".into(), "v8".into())], "{json}");
    let dir = LowerDir::new();
    let images = dir.0.join("images");
    fs::create_dir(&images).unwrap();
    link_image(&images, "multiarch.json", &index);
    let m = Mount::start(&dir.0.join("mnt"), &images, &dir.0.join("cache"), &dir.0.join("nixoci.log"));
    let podman = Podman::new();
    let source = format!("oci:{}/multiarch:v1", m.mnt.display());
    for arch in ["arm64", "amd64"] {
        let id = stdout(&podman.run(["pull", "--arch", arch, &source])).lines().last().unwrap().trim().to_string();
        assert_eq!(stdout(&podman.run(["image", "inspect", "-f", "{{.Architecture}}", &id])).trim(), arch);
        let machine = if arch == "amd64" { "x86_64" } else { "aarch64" }; // arm64 through qemu
        assert_eq!(stdout(&podman.run(["run", "--rm", &id])).trim(), format!("hello from {machine}"));
    }
    drop(podman);
    drop(m);
}

// ---------------------------------------------------------------- root filesystem views

#[test]
fn every_example_rootfs_equals_umoci_unpack() {
    let examples = [
        ("hello", "hello"),
        ("basic", "basic"),
        ("openbar", "openbar"),
        ("copyToRoot", "copy-to-root"),
        ("layered", "layered"),
        ("nested", "nested"),
        ("ownership", "ownership"),
        ("created", "created"),
        ("metadata", "metadata"),
        ("nix", "nix"),
        ("fromImage", "from-image"),
        ("sizeLayered", "size-layered"),
        ("nonReproducible", "non-reproducible"),
    ];
    let dir = LowerDir::new();
    let images = dir.0.join("images");
    fs::create_dir(&images).unwrap();
    for (attr, name) in examples {
        link_image(&images, &format!("{name}.json"), &build(attr));
    }
    let m = Mount::start(&dir.0.join("mnt"), &images, &dir.0.join("cache"), &dir.0.join("nixoci.log"));
    for (_, name) in examples {
        let rootfs = m.mnt.join(format!("{name}.rootfs"));
        if name == "non-reproducible" {
            // Its one layer is a ready tar file (layer-path).
            assert!(!rootfs.exists());
            m.expect_log(&[&format!("image {name}: no {name}.rootfs or {name}.bundle: layer 0 is a ready tar file")], std::time::Duration::ZERO);
            continue;
        }
        let (_t, tmp) = temp_dir();
        umoci_unpack(&m.mnt.join(name), &tmp.join("bundle"));
        assert_same_tree(&tmp.join("bundle/rootfs"), &rootfs);
        let bundle = m.mnt.join(format!("{name}.bundle/config.json"));
        if name == "nix" {
            // Its config has neither Entrypoint nor Cmd: a bundle would have nothing to run.
            assert!(!bundle.exists());
            m.expect_log(&["image nix: no nix.bundle: the image config has neither Entrypoint nor Cmd"], std::time::Duration::ZERO);
        } else {
            assert!(bundle.is_file(), "{name}.bundle");
        }
    }
}
