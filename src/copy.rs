//! `nixoci copy DESCRIPTION DEST [SKOPEO-OPTIONS...]`: `skopeo copy` of one image, the engine of
//! the Nix library's copyTo* scripts. The arguments after the description follow the source as
//! they are. The image is read from a running `nixoci mount` that serves this very description
//! when there is one; otherwise this process mounts it privately in a temporary directory for
//! the length of the copy, or, where FUSE cannot be used, exports the layout there. Signals are
//! passed on to skopeo, and the mount and the directory go away on every way out.

use crate::catalog::Catalog;
use crate::commands::{self, Format};
use crate::digest::DigestCache;
use crate::fs::LISTING;
use crate::mount;
use fuser::BackgroundSession;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The private mount's source in mountinfo: not `nixoci`, so no other copy ever uses it.
const PRIVATE_FSNAME: &str = "nixoci-copy";
/// How long skopeo has to exit after a signal was passed on, before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// Runs the copy; returns the exit code (skopeo's, or 128 + the signal that stopped it).
pub fn run(description: &Path, args: &[OsString], skopeo: Option<PathBuf>, cache_dir: PathBuf) -> Result<i32, String> {
    let desc = description.canonicalize().map_err(|e| format!("{}: {e}", description.display()))?;
    if args.is_empty() {
        return Err("no destination given (e.g. docker://registry.example/name:tag)".into());
    }
    let skopeo = match skopeo {
        Some(s) => s,
        None => find_in_path("skopeo").ok_or("skopeo is not installed (not in PATH): install it, or give the Nix library `pkgs` so that its scripts bring nixpkgs' skopeo")?,
    };
    // Signals are taken by the wait for skopeo: block them before the mount starts its threads.
    // One that was ignored when we started (a background job's SIGINT) stays ignored.
    let mut set = mount::signals();
    unsafe {
        for sig in mount::SIGNALS {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN {
                libc::sigdelset(&mut set, sig);
            }
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut scratch = Scratch::new()?;
    let layout = match running_mount(&desc) {
        Some(layout) => {
            eprintln!("nixoci: reading the image from the running mount: {}", layout.display());
            Ok(layout)
        }
        None => scratch.serve(&desc, &cache_dir),
    };
    let status = layout.and_then(|l| skopeo_copy(&skopeo, &l, args, &scratch.dir.join("tmp"), &set));
    match (status, scratch.remove()) {
        (Ok(code), Ok(())) => Ok(code),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
        (Err(e), Err(cleanup)) => Err(format!("{e}; then {cleanup}")),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    })
}

/// The OCI layout of `desc` in a running `nixoci mount` whose hidden listing names this file.
fn running_mount(desc: &Path) -> Option<PathBuf> {
    mount::running_mounts().into_iter().find_map(|mnt| {
        // A stale mount or another user's answers with an error here: it is not used.
        let listing: BTreeMap<String, PathBuf> = serde_json::from_slice(&std::fs::read(mnt.join(LISTING)).ok()?).ok()?;
        let name = listing.into_iter().find(|(_, p)| p == desc)?.0;
        Some(mnt.join(name))
    })
}

fn fuse_usable() -> Result<(), String> {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("there is no /dev/fuse".into()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err("no permission to use /dev/fuse".into()),
        Err(e) => Err(format!("/dev/fuse: {e}")),
    }
}

/// The temporary directory of one copy: skopeo's TMPDIR, and the private mount (or the exported
/// layout) when no running mount serves the image.
struct Scratch {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    removed: bool,
}

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let template = std::env::temp_dir().join("nixoci-copy-XXXXXX");
        let mut bytes = std::ffi::CString::new(template.as_os_str().as_bytes()).map_err(|e| e.to_string())?.into_bytes_with_nul();
        if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
            return Err(format!("cannot make a directory like {}: {}", template.display(), std::io::Error::last_os_error()));
        }
        bytes.pop();
        let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
        let s = Scratch { dir, session: None, removed: false };
        std::fs::create_dir(s.dir.join("tmp")).map_err(|e| format!("{}: {e}", s.dir.display()))?;
        Ok(s)
    }

    /// Mounts the image privately here, or exports it where FUSE cannot be used; returns the
    /// layout to copy from.
    fn serve(&mut self, desc: &Path, cache_dir: &Path) -> Result<PathBuf, String> {
        let images = self.dir.join("images");
        std::fs::create_dir(&images).map_err(|e| format!("{}: {e}", images.display()))?;
        std::os::unix::fs::symlink(desc, images.join("image.json")).map_err(|e| format!("{}: {e}", images.display()))?;
        let mnt = self.dir.join("mnt");
        let cache = || DigestCache::new(Some(cache_dir.to_path_buf()));
        let mounted = match fuse_usable() {
            Ok(()) => {
                let catalog = Catalog::new(images, cache());
                if catalog.by_name("image").is_none() {
                    return Err(format!("{}: the image cannot be served (the reason is logged above)", desc.display()));
                }
                mount::serve(&mnt, catalog, 4, PRIVATE_FSNAME, false)
            }
            Err(why) => Err(why),
        };
        match mounted {
            Ok(session) => {
                self.session = Some(session);
                eprintln!("nixoci: reading the image from a private mount: {}", mnt.display());
                Ok(mnt.join("image"))
            }
            Err(why) => {
                let layout = self.dir.join("layout");
                eprintln!("nixoci: FUSE cannot be used here ({why}): exporting the image to {} instead", layout.display());
                commands::export(desc, &layout, Format::Oci, &cache())?;
                Ok(layout)
            }
        }
    }

    /// Unmounts (lazily when something still holds the mount) and deletes the directory.
    fn remove(&mut self) -> Result<(), String> {
        self.removed = true;
        if let Some(session) = self.session.take() {
            let mnt = self.dir.join("mnt");
            if let Err(e) = mount::unmount(session, &mnt) {
                let c = std::ffi::CString::new(mnt.as_os_str().as_bytes()).unwrap();
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(format!("cannot unmount {} ({e}): {}; {} is left", mnt.display(), std::io::Error::last_os_error(), self.dir.display()));
                }
            }
        }
        std::fs::remove_dir_all(&self.dir).map_err(|e| format!("cannot remove {}: {e}", self.dir.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.remove() {
                eprintln!("nixoci: {e}");
            }
        }
    }
}

/// `skopeo --insecure-policy copy oci:LAYOUT ARGS...` (nix2container's scripts skip the policy
/// too: the source is the user's own build). Signals in `set` but SIGCHLD are passed on to it.
/// Returns skopeo's exit code, or 128 + the signal that stopped it.
fn skopeo_copy(skopeo: &Path, layout: &Path, args: &[OsString], tmp: &Path, set: &libc::sigset_t) -> Result<i32, String> {
    if layout.as_os_str().as_bytes().contains(&b':') {
        return Err(format!("{}: skopeo cannot read a layout whose path holds ':' (set TMPDIR to one without)", layout.display()));
    }
    let mut cmd = Command::new(skopeo);
    cmd.arg("--insecure-policy").arg("copy");
    // skopeo talks to /var/run/docker.sock whatever DOCKER_HOST says; the docker client does not.
    let has = |prefix: &str| args.iter().any(|a| a.as_bytes().starts_with(prefix.as_bytes()));
    if let Some(host) = std::env::var_os("DOCKER_HOST").filter(|_| has("docker-daemon:") && !has("--dest-daemon-host")) {
        cmd.arg("--dest-daemon-host").arg(host);
    }
    let mut child = cmd
        .arg(format!("oci:{}", layout.display()))
        .args(args)
        .env("TMPDIR", tmp)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", skopeo.display()))?;
    let mut stopped_by = None;
    let mut deadline = None;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for skopeo: {e}"))? {
            return Ok(match (stopped_by, status.code(), status.signal()) {
                (Some(sig), _, _) => 128 + sig,
                (None, Some(code), _) => code,
                (None, None, sig) => 128 + sig.unwrap_or(0),
            });
        }
        let timeout = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
        if sig > 0 && sig != libc::SIGCHLD {
            eprintln!("nixoci: signal {sig}: stopping skopeo and cleaning up");
            unsafe { libc::kill(child.id() as i32, sig) };
            stopped_by = Some(sig);
            deadline.get_or_insert(Instant::now() + GRACE);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
        }
    }
}
