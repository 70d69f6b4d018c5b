//! Helpers shared by the integration tests: the nixoci binary, real tools (Nix, skopeo, podman,
//! umoci) and a running `nixoci mount` that is always taken down again.
//! A missing tool is a loud failure, never a skipped test: `scripts/setup` installs them all.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn nixoci_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nixoci"))
}

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's shared/ checkout: CI clones the repo with shared/ beside it.
pub fn shared_dir() -> PathBuf {
    let dir = repo_dir().join("../shared");
    assert!(
        dir.join("reference/vectors.md").is_file(),
        "{} is missing: the tests need the project's shared/ directory beside the repository",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

/// The full path of a program, or a panic telling how to get it.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/setup"))
}

/// A Command for a required tool.
pub fn tool(name: &str) -> Command {
    Command::new(require_tool(name))
}

/// Runs a command to completion; panics with its output unless it succeeded.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command and returns its output whatever the exit status.
pub fn run_unchecked(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nix-build EXPR -A ATTR`, building as root (no nixbld users needed), import from derivation
/// refused; returns the out path.
pub fn nix_build(expr: &Path, attr: &str) -> PathBuf {
    let out = run(tool("nix-build")
        .arg(expr)
        .args(["-A", attr, "--no-out-link", "--option", "build-users-group", ""])
        .args(["--option", "allow-import-from-derivation", "false"])
        .stderr(Stdio::inherit()));
    let text = stdout(&out);
    let line = text.lines().last().unwrap_or_else(|| panic!("nix-build {attr} printed nothing"));
    PathBuf::from(line.trim())
}

/// A store path or description from tests/fixtures/images.nix.
pub fn fixture(attr: &str) -> PathBuf {
    nix_build(&repo_dir().join("tests/fixtures/images.nix"), attr)
}

/// `nix-store -q --hash`: the narHash Nix recorded for a store path.
pub fn nar_hash(path: &Path) -> String {
    stdout(&run(tool("nix-store").args(["-q", "--hash"]).arg(path))).trim().to_string()
}

/// A note printed even when the test passes (the harness captures eprintln!, not stderr itself).
pub fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "\n!!! {}\n", msg.replace('\n', "\n!!! "));
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Reads a file to its end in 1 MiB reads; returns (sha256 hex, bytes read).
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((hex(&h.finalize()), total));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Mount points listed in /proc/self/mountinfo (field 5, octal escapes undone).
pub fn mount_points() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mounted(mnt: &Path) -> bool {
    mounts_at(mnt) > 0
}

/// How many mounts are stacked at `mnt`.
pub fn mounts_at(mnt: &Path) -> usize {
    mount_points().iter().filter(|p| *p == mnt).count()
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}

/// A temporary directory with a canonical, lowercase path: mountinfo shows canonical paths, and
/// `podman pull oci:PATH` makes an image name of PATH, which must be lowercase.
pub fn temp_dir() -> (TempDir, PathBuf) {
    let name: String = std::iter::repeat_with(fastrand::lowercase).take(12).collect();
    let t = tempfile::Builder::new().prefix(&format!("nixoci-test-{name}")).rand_bytes(0).tempdir().unwrap();
    let p = t.path().canonicalize().unwrap();
    (t, p)
}

/// Links a description into an images dir under `name` (e.g. "hello.json"), as a user would
/// link a nix-build result.
pub fn link_image(images: &Path, name: &str, description: &Path) {
    std::os::unix::fs::symlink(description, images.join(name)).unwrap();
}

/// A running `nixoci mount MNT --images DIR --cache-dir C`, its stderr kept in a log file.
/// Dropping it sends SIGTERM, waits, and fails the test if a mount is left behind.
pub struct Mount {
    pub mnt: PathBuf,
    pub images: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _tmp: Option<TempDir>,
}

impl Mount {
    /// Fresh temp dirs, an images dir holding `images` (file name, description) as symlinks;
    /// the mount point itself is left for nixoci to create.
    pub fn new(images: &[(&str, &Path)]) -> Mount {
        Mount::new_with(images, &[])
    }

    /// As `new`, with more options for `nixoci mount`.
    pub fn new_with(images: &[(&str, &Path)], options: &[&str]) -> Mount {
        let (tmp, base) = temp_dir();
        let dir = base.join("images");
        fs::create_dir(&dir).unwrap();
        for (name, description) in images {
            link_image(&dir, name, description);
        }
        let images = dir;
        let mut m = Mount::start_with(&base.join("mnt"), &images, &base.join("cache"), &base.join("nixoci.log"), options);
        m._tmp = Some(tmp);
        m
    }

    /// Starts nixoci on given paths (used to restart on a place left stale); the log appends.
    pub fn start(mnt: &Path, images: &Path, cache: &Path, log: &Path) -> Mount {
        Mount::start_with(mnt, images, cache, log, &[])
    }

    fn start_with(mnt: &Path, images: &Path, cache: &Path, log: &Path, options: &[&str]) -> Mount {
        let mut cmd = Command::new(nixoci_bin());
        cmd.arg("mount").args(options);
        Mount::spawn(cmd, mnt, images, cache, log, &|m| fs::read_dir(m).is_ok())
    }

    /// As `start`, with the daemon run as the rootless test user (its mount is then for that user
    /// only: root cannot list it, so the user checks that it is up).
    pub fn start_as(user: &User, mnt: &Path, images: &Path, cache: &Path, log: &Path) -> Mount {
        let mut cmd = user.cmd(user.nixoci());
        cmd.arg("mount");
        Mount::spawn(cmd, mnt, images, cache, log, &|m| user.can_list(m))
    }

    /// Runs `cmd` (nixoci `mount`, as root or as a user, with its options) on the paths;
    /// `listable` tells that the mount answers (a stale one does not).
    fn spawn(mut cmd: Command, mnt: &Path, images: &Path, cache: &Path, log: &Path, listable: &dyn Fn(&Path) -> bool) -> Mount {
        let logf = fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        cmd.arg(mnt)
            .arg("--images")
            .arg(images)
            .arg("--cache-dir")
            .arg(cache)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut m = Mount {
            mnt: mnt.to_path_buf(),
            images: images.to_path_buf(),
            cache: cache.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
            _tmp: None,
        };
        let up = wait_for(MOUNT_TIMEOUT, || {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nixoci mount exited early ({status})\n--- log\n{}", m.log_text());
            }
            // Listing first: a stale mount left at the place is listed but cannot be read.
            listable(&m.mnt) && is_mounted(&m.mnt)
        });
        assert!(up, "{} not mounted after {MOUNT_TIMEOUT:?}\n--- log\n{}", mnt.display(), m.log_text());
        m
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon already stopped").id() as i32
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains every one of `parts`; panics with the log otherwise.
    pub fn expect_log(&self, parts: &[&str], timeout: Duration) -> String {
        let mut found = None;
        wait_for(timeout, || {
            found = self.log_text().lines().find(|l| parts.iter().all(|p| l.contains(p))).map(String::from);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no log line containing all of {parts:?}\n--- log\n{}", self.log_text()))
    }

    /// SIGTERM, wait for the exit; returns the exit status and asserts the mount is gone.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut status = None;
        wait_for(MOUNT_TIMEOUT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        let status = status.unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            force_unmount(&self.mnt);
            panic!("nixoci did not exit within {MOUNT_TIMEOUT:?} of SIGTERM\n--- log\n{}", self.log_text())
        });
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
            panic!("nixoci exited ({status}) but left {} mounted\n--- log\n{}", self.mnt.display(), self.log_text());
        }
        status
    }

    /// SIGKILL: the daemon dies without unmounting, leaving a stale mount (ENOTCONN).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon already stopped");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nixoci log ({})\n{}", self.log.display(), self.log_text());
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            force_unmount(&self.mnt);
            return;
        }
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "nixoci exited with {status} on SIGTERM\n--- log\n{}", self.log_text());
        } else if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }
}

/// Lazy unmount of whatever is left, so a failed test does not leave mounts behind.
pub fn force_unmount(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    }
}

/// podman with CONTAINERS_CONF set to tests/containers.conf and storage of its own, so parallel
/// tests never wait on each other's locks.
pub struct Podman {
    root: PathBuf,
    _tmp: TempDir,
}

impl Podman {
    pub fn new() -> Podman {
        require_tool("runc");
        require_tool("conmon");
        let (tmp, root) = temp_dir();
        Podman { root, _tmp: tmp }
    }

    pub fn cmd(&self) -> Command {
        let mut c = tool("podman");
        c.env("CONTAINERS_CONF", repo_dir().join("tests/containers.conf")).args(self.storage_options());
        c
    }

    /// The options that give podman this storage (global options; podman takes them after a
    /// subcommand too).
    pub fn storage_options(&self) -> Vec<std::ffi::OsString> {
        let mut o = Vec::new();
        for (flag, dir) in [("--root", "root"), ("--runroot", "run"), ("--tmpdir", "tmp")] {
            o.push(flag.into());
            o.push(self.root.join(dir).into_os_string());
        }
        o
    }

    /// `nixoci run --mount MNT ARGS… -- STORAGE-OPTIONS`: nixoci running this podman.
    pub fn nixoci_run(&self, mnt: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(nixoci_bin());
        c.env("CONTAINERS_CONF", repo_dir().join("tests/containers.conf"))
            .args(["run", "--mount"])
            .arg(mnt)
            .args(args)
            .arg("--")
            .args(self.storage_options());
        c
    }

    /// Runs podman with `args`; panics with its output on failure.
    pub fn run<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        run(self.cmd().args(args))
    }

    /// A storage.conf naming this storage (podman's default driver), for tools that take no
    /// --root, such as skopeo's `containers-storage:` (point CONTAINERS_STORAGE_CONF at it).
    pub fn storage_conf(&self) -> PathBuf {
        let conf = self.root.join("storage.conf");
        let text = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            self.root.join("root").display(),
            self.root.join("run").display()
        );
        fs::write(&conf, text).unwrap();
        conf
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Container storage may keep overlay mounts under its root: take them down first.
        let mut left: Vec<PathBuf> = mount_points().into_iter().filter(|p| p.starts_with(&self.root)).collect();
        left.sort();
        for p in left.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

// ---- Added for tests/clients.rs and tests/registry.rs ----

/// shared/bench/corpus.nix: the benchmark closures (app, app2: one file changed in the top path).
pub fn corpus() -> PathBuf {
    shared_dir().join("bench/corpus.nix")
}

/// Writes `dir/NAME.json`: a description without digests of corpus.nix's `attr` (app or app2)
/// in the layout of reference/n2c-image-app.json (busybox, python, app: one path per layer).
/// Returns (description, top store path).
pub fn app_description(dir: &Path, attr: &str) -> (PathBuf, PathBuf) {
    let top = nix_build(&corpus(), attr);
    let layers: Vec<serde_json::Value> = [nix_build(&corpus(), "busybox"), nix_build(&corpus(), "python"), top.clone()]
        .iter()
        .map(|p| serde_json::json!({"paths": [{"path": p}], "mediatype": LAYER_TAR}))
        .collect();
    let json = serde_json::json!({
        "version": 1,
        "image-config": {"Entrypoint": [top.join("bin/app")]},
        "layers": layers,
        "arch": "amd64",
        "created": "0001-01-01T00:00:00Z",
    });
    let file = dir.join(format!("{attr}.json"));
    fs::write(&file, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    (file, top)
}

/// Points `images/NAME` at `description` atomically (a new symlink renamed over the old one),
/// as re-linking a nix-build result does.
pub fn relink_image(images: &Path, name: &str, description: &Path) {
    let tmp = images.join(format!(".{name}.new"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(description, &tmp).unwrap();
    fs::rename(&tmp, images.join(name)).unwrap();
}

/// The digest of the single manifest in an OCI layout's index.json.
pub fn index_manifest_digest(layout: &Path) -> String {
    let index = read_json(&layout.join("index.json"));
    let m = index["manifests"].as_array().unwrap_or_else(|| panic!("index.json without manifests: {index}"));
    assert_eq!(m.len(), 1, "one manifest in {}: {index}", layout.display());
    m[0]["digest"].as_str().unwrap().to_string()
}

/// Waits until the layout serves a manifest other than `old` (after a description changed);
/// returns the new digest. Failed reads meanwhile are counted and returned too.
pub fn wait_for_new_manifest(layout: &Path, old: &str, timeout: Duration) -> (String, Vec<String>) {
    let mut errors = Vec::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        match fs::read(layout.join("index.json")) {
            Ok(bytes) => {
                let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let d = index["manifests"][0]["digest"].as_str().unwrap();
                if d != old {
                    return (d.to_string(), errors);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        sleep(Duration::from_millis(5)); // often enough to see a short gap
    }
    panic!("{} still serves {old} after {timeout:?} (read errors: {errors:?})", layout.display())
}

/// An OCI layout's blob by digest ("sha256:<hex>").
pub fn oci_blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not sha256: {digest}")))
}

/// What an image is, independent of how a transport stores its layers: the config digest and
/// the uncompressed layer digests (rootfs.diff_ids).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageId {
    pub config: String,
    pub diff_ids: Vec<String>,
    /// The config parsed: a copy that converts the manifest type (Docker -> OCI) re-serialises
    /// it, so its digest changes while its content must not.
    pub config_json: serde_json::Value,
}

/// The ImageId of an image served in an OCI layout (its manifest's config and diff_ids).
pub fn oci_image_id(layout: &Path) -> ImageId {
    let manifest = read_json(&oci_blob(layout, &index_manifest_digest(layout)));
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let cfg = read_json(&oci_blob(layout, &config));
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    ImageId { config, diff_ids, config_json: cfg }
}

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Writes `out`: `description` with every layer's mediatype set to `mediatype` (e.g. a fixture
/// served gzip-compressed); returns `out`.
pub fn retyped(description: &Path, mediatype: &str, out: &Path) -> PathBuf {
    let mut json = read_json(description);
    for l in json["layers"].as_array_mut().unwrap() {
        l["mediatype"] = mediatype.into();
    }
    fs::write(out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    out.to_path_buf()
}

/// The tool that decompresses a blob, from its first bytes: gzip, zstd, or None (a plain tar).
pub fn decompressor(path: &Path) -> Option<&'static str> {
    let mut magic = [0u8; 4];
    File::open(path).unwrap().read_exact(&mut magic).unwrap();
    match magic {
        [0x1f, 0x8b, _, _] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd] => Some("zstd"),
        _ => None,
    }
}

/// sha256 hex of `gzip -dc FILE`, hashed as it streams.
pub fn sha256_gunzip(path: &Path) -> String {
    sha256_decompressed(path, "gzip")
}

/// sha256 hex of `TOOL -dc FILE` (gzip or zstd), hashed as it streams.
pub fn sha256_decompressed(path: &Path, decompress: &str) -> String {
    let mut child = tool(decompress).arg("-dc").arg(path).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert!(child.wait().unwrap().success(), "{decompress} -dc {} failed", path.display());
    hex(&h.finalize())
}

/// Checks a skopeo `dir:` copy: `version` is the 33-byte marker, every blob file hashes to its
/// name, the config has `want`'s content (and digest when `same_config_bytes`), and each layer
/// uncompressed (decompressed when it starts with the gzip or zstd magic: Docker manifests label
/// uncompressed layers `tar.gzip` too) hashes to the matching diff_id. Returns the manifest.
pub fn verify_dir_copy(out: &Path, want: &ImageId, same_config_bytes: bool) -> serde_json::Value {
    let version = fs::read(out.join("version")).unwrap();
    assert_eq!(version, b"Directory Transport Version: 1.1\n", "{}/version", out.display());
    let manifest = read_json(&out.join("manifest.json"));
    let file = |d: &str| out.join(d.strip_prefix("sha256:").unwrap());
    let config = manifest["config"]["digest"].as_str().unwrap();
    let (config_hash, _) = sha256_file(&file(config)).unwrap();
    assert_eq!(format!("sha256:{config_hash}"), config, "config file hashes to its name");
    assert_eq!(read_json(&file(config)), want.config_json, "config content of the copy in {}", out.display());
    if same_config_bytes {
        assert_eq!(config, want.config, "config digest of the copy in {}", out.display());
    }
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), want.diff_ids.len(), "layer count in {}: {manifest}", out.display());
    for (l, diff_id) in layers.iter().zip(&want.diff_ids) {
        let digest = l["digest"].as_str().unwrap();
        let (hash, n) = sha256_file(&file(digest)).unwrap_or_else(|e| panic!("layer {digest} in {}: {e}", out.display()));
        assert_eq!(format!("sha256:{hash}"), digest, "layer file hashes to its name");
        assert_eq!(l["size"].as_u64(), Some(n), "descriptor size of {digest}");
        let uncompressed = match decompressor(&file(digest)) {
            Some(tool) => format!("sha256:{}", sha256_decompressed(&file(digest), tool)),
            None => digest.to_string(),
        };
        assert_eq!(&uncompressed, diff_id, "uncompressed digest of layer {digest} ({})", l["mediaType"]);
    }
    manifest
}

/// `skopeo copy --quiet FROM TO` plus `extra` options; panics with skopeo's output on failure.
pub fn skopeo_copy_ok(from: &str, to: &str, extra: &[&str]) -> Output {
    run(tool("skopeo").arg("copy").arg("--quiet").args(extra).arg(from).arg(to))
}

/// A free TCP port on 127.0.0.1 (bound once, then released for the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `docker-registry serve` on 127.0.0.1 with filesystem storage in a temp dir and its access
/// log in a file; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Registry {
    pub port: u16,
    pub storage: PathBuf,
    pub log: PathBuf,
    child: Child,
    _tmp: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let (tmp, base) = temp_dir();
        let port = free_port();
        let storage = base.join("storage");
        let config = base.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = base.join("registry.log");
        let logf = File::create(&log).unwrap();
        let child = tool("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut r = Registry { port, storage, log, child, _tmp: tmp };
        let up = wait_for(Duration::from_secs(20), || {
            if let Some(status) = r.child.try_wait().unwrap() {
                panic!("docker-registry exited early ({status})\n{}", r.log_text());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "docker-registry not listening on {port}\n{}", r.log_text());
        r
    }

    /// `docker://127.0.0.1:PORT/REPO:TAG`
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("docker://127.0.0.1:{}/{repo_tag}", self.port)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The access log's requests as (METHOD, URI), in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let req = l.split('"').nth(1)?;
                let mut parts = req.split(' ');
                let (method, uri, proto) = (parts.next()?, parts.next()?, parts.next()?);
                proto.starts_with("HTTP/").then(|| (method.to_string(), uri.to_string()))
            })
            .collect()
    }

    /// Bytes under the storage root (blobs, links, manifests).
    pub fn storage_bytes(&self) -> u64 {
        stdout(&run(tool("du").args(["-sb"]).arg(&self.storage))).split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !wait_for(Duration::from_secs(5), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let requests: Vec<String> = self.requests().iter().map(|(m, u)| format!("{m} {u}")).collect();
            eprintln!("--- docker-registry requests ({})\n{}", self.log.display(), requests.join("\n"));
        }
    }
}

/// A Docker engine of its own (Debian's `docker.io`, formats.md §6): vfs storage, no bridge, no
/// iptables, data and exec roots in a temp dir, so parallel tests never share state. It runs
/// its own containerd (socket: `containerd_socket()`). Stopped with SIGTERM on drop.
pub struct Docker {
    pub base: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
    tmp: Mutex<Option<TempDir>>,
}

impl Docker {
    pub fn start() -> Docker {
        let dockerd = require_tool("dockerd");
        require_tool("containerd");
        let (tmp, base) = temp_dir();
        let socket = base.join("docker.sock");
        let log = base.join("dockerd.log");
        let logf = File::create(&log).unwrap();
        let child = Command::new(dockerd)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg("--data-root")
            .arg(base.join("data"))
            .arg("--exec-root")
            .arg(base.join("exec"))
            .arg("--pidfile")
            .arg(base.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("cannot start dockerd");
        let d = Docker { base, socket, log, child: Mutex::new(Some(child)), tmp: Mutex::new(Some(tmp)) };
        let up = wait_for(Duration::from_secs(60), || {
            if let Some(status) = d.child.lock().unwrap().as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited early ({status})\n{}", d.log_text());
            }
            d.cmd().arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
        assert!(up, "dockerd not answering on {}\n{}", d.socket.display(), d.log_text());
        d
    }

    /// One engine for all the tests of one test binary (starting one takes seconds), stopped when
    /// the binary exits. Tests sharing it use image names and ctr namespaces of their own.
    pub fn shared() -> &'static Docker {
        static SHARED: OnceLock<Docker> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(d) = SHARED.get() {
                d.stop();
            }
        }
        SHARED.get_or_init(|| {
            let d = Docker::start();
            assert_eq!(unsafe { libc::atexit(stop_shared) }, 0, "atexit");
            d
        })
    }

    /// The docker client of the same package as the engine (/usr/bin/docker: the machine may
    /// have a newer client earlier in PATH), talking to this engine.
    pub fn cmd(&self) -> Command {
        let client = Path::new("/usr/bin/docker");
        assert!(client.is_file(), "/usr/bin/docker missing: run scripts/setup (docker.io)");
        let mut c = Command::new(client);
        c.env("DOCKER_HOST", format!("unix://{}", self.socket.display()));
        c
    }

    /// Runs docker with `args`; panics with its output (and where dockerd logs) on failure.
    pub fn run<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        let out = run_unchecked(&mut cmd);
        assert!(
            out.status.success(),
            "{cmd:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}\n--- dockerd log: {}",
            out.status,
            stdout(&out),
            String::from_utf8_lossy(&out.stderr),
            self.log.display()
        );
        out
    }

    /// `docker image inspect REF`, parsed.
    pub fn inspect(&self, reference: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&self.run(["image", "inspect", reference]).stdout).unwrap();
        v[0].clone()
    }

    /// The containerd socket dockerd started under its exec root (for `ctr -a`).
    pub fn containerd_socket(&self) -> PathBuf {
        self.base.join("exec/containerd/containerd.sock")
    }

    /// `ctr -a <containerd socket> ARGS`, in Docker's `moby` namespace unless ARGS say otherwise.
    pub fn ctr(&self) -> Command {
        let mut c = tool("ctr");
        c.arg("-a").arg(self.containerd_socket());
        c
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (SIGKILL after 20 s), then take down what stayed mounted and remove the roots.
    fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if !wait_for(Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_)))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // vfs layers and container rootfs may stay mounted (shm, overlay of runc): take them down.
        let mut left: Vec<PathBuf> = mount_points().into_iter().filter(|p| p.starts_with(&self.base)).collect();
        left.sort();
        for p in left.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
        drop(self.tmp.lock().unwrap().take());
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd log ({})\n{}", self.log.display(), self.log_text());
        }
        self.stop();
    }
}

/// skopeo with a blob-info cache of its own (an empty directory bound over root's
/// `/var/lib/containers/cache` in a private mount namespace): a fresh CI machine's view, and no
/// test ever touches the machine's real cache or another test's.
pub struct FreshSkopeo {
    pub cache: PathBuf,
    _tmp: TempDir,
}

impl FreshSkopeo {
    pub fn new() -> FreshSkopeo {
        require_tool("unshare");
        let (tmp, base) = temp_dir();
        let cache = base.join("blob-info-cache");
        fs::create_dir(&cache).unwrap();
        fs::create_dir_all("/var/lib/containers/cache").unwrap();
        FreshSkopeo { cache, _tmp: tmp }
    }

    /// `program ARGS` inside the private namespace (e.g. a script that runs skopeo), as the child
    /// of a shell that, once it has ended, writes the namespace's /proc/self/mountinfo to
    /// `mounts_after`: what the program left mounted there. Exits with the program's status.
    pub fn wrap(&self, program: impl AsRef<OsStr>, mounts_after: &Path) -> Command {
        let mut c = tool("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /var/lib/containers/cache || exit 99; m=$1; shift; \"$@\"; rc=$?; cat /proc/self/mountinfo > \"$m\"; exit $rc")
            .arg(&self.cache)
            .arg(mounts_after)
            .arg(program);
        c
    }

    /// `skopeo ARGS` inside the private namespace.
    pub fn cmd(&self) -> Command {
        let skopeo = require_tool("skopeo");
        let mut c = tool("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /var/lib/containers/cache && exec \"$@\"")
            .arg(&self.cache)
            .arg(skopeo);
        c
    }
}

/// `nixoci export --format FORMAT DESCRIPTION OUT` (oci, dir or archive), with a digest cache of
/// its own beside OUT. The image is named after the description's file name.
pub fn nixoci_export(description: &Path, format: &str, out: &Path) {
    let cache = out.with_extension("cache");
    run(Command::new(nixoci_bin()).args(["export", "--format", format]).arg(description).arg(out).arg("--cache-dir").arg(cache));
}

/// The unprivileged user the rootless tests run as (`scripts/setup` creates it, with subuid and
/// subgid ranges for rootless podman).
pub const TEST_USER: &str = "nixoci-test";

/// The rootless test user, with a directory of its own (owned by it) holding its HOME, its
/// XDG_RUNTIME_DIR, and copies of what it runs that may sit where it cannot read (the repo).
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub dir: PathBuf,
    _tmp: TempDir,
}

impl User {
    pub fn new() -> User {
        require_tool("setpriv");
        let id = |flag: &str| -> u32 {
            let out = run_unchecked(Command::new("id").arg(flag).arg(TEST_USER));
            assert!(out.status.success(), "user {TEST_USER} is missing: run scripts/setup");
            stdout(&out).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let (tmp, dir) = temp_dir();
        fs::create_dir(dir.join("home")).unwrap();
        fs::create_dir(dir.join("run")).unwrap();
        // XDG_RUNTIME_DIR must be the user's own, mode 0700.
        fs::set_permissions(dir.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        fs::copy(nixoci_bin(), dir.join("nixoci")).unwrap();
        fs::copy(repo_dir().join("tests/containers.conf"), dir.join("containers.conf")).unwrap();
        for p in ["", "home", "run", "nixoci", "containers.conf"] {
            std::os::unix::fs::chown(dir.join(p), Some(uid), Some(gid)).unwrap();
        }
        User { uid, gid, dir, _tmp: tmp }
    }

    /// The user's copy of the nixoci binary.
    pub fn nixoci(&self) -> PathBuf {
        self.dir.join("nixoci")
    }

    /// `program` run as the user: setpriv execs it (no process in between, so signals reach
    /// it), in a clean environment whose HOME and XDG_RUNTIME_DIR are the user's own dirs here.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = tool("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    /// Whether the user can list `dir`.
    pub fn can_list(&self, dir: &Path) -> bool {
        self.cmd(require_tool("ls")).arg(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// Rootless podman with storage of its own under the user's dir (vfs: nothing mounted).
    pub fn podman(&self) -> Command {
        require_tool("newuidmap");
        let mut c = self.cmd(require_tool("podman"));
        c.arg("--root").arg(self.dir.join("storage")).arg("--runroot").arg(self.dir.join("run/containers")).args(["--storage-driver", "vfs"]);
        c
    }
}

impl Drop for User {
    fn drop(&mut self) {
        // Rootless podman leaves a pause process holding its namespaces: end it (its pid file
        // is under this user's XDG_RUNTIME_DIR, so it is this test's).
        if let Ok(pid) = fs::read_to_string(self.dir.join("run/libpod/tmp/pause.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `umoci unpack` of the image an OCI layout tags (its one tag) into `bundle`.
pub fn umoci_unpack(layout: &Path, bundle: &Path) {
    let index = read_json(&layout.join("index.json"));
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap_or("latest").to_string();
    run(tool("umoci").arg("unpack").arg("--image").arg(format!("{}:{tag}", layout.display())).arg(bundle));
}

/// Every entry of a tree as `lstat` shows it, sorted: path, type, mode, uid, gid, size and
/// link target (no size for directories: file systems count those differently).
pub fn tree_stat(dir: &Path) -> Vec<String> {
    let out = stdout(&run(tool("find").arg(dir).args(["-printf", "%P\t%y\t%m\t%U\t%G\t%s\t%l\n"])));
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('\t').collect();
            if f[1] == "d" {
                f[5] = "-";
            }
            f.join(" ")
        })
        .collect();
    lines.sort();
    lines
}

/// Two trees hold the same entries, with the same metadata (`tree_stat`) and contents
/// (`diff -r --no-dereference`).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (tree_stat(a), tree_stat(b));
    if sa != sb {
        let only = |x: &[String], y: &[String]| x.iter().filter(|l| !y.contains(l)).cloned().collect::<Vec<_>>().join("\n");
        panic!("{} and {} differ\n--- only in the first\n{}\n--- only in the second\n{}", a.display(), b.display(), only(&sa, &sb), only(&sb, &sa));
    }
    run(tool("diff").args(["-r", "--no-dereference"]).arg(a).arg(b));
}
