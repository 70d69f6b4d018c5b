//! `nixoci mount`: set up the mount point, serve until SIGINT/SIGTERM, unmount cleanly.

use crate::catalog::Catalog;
use crate::digest::DigestCache;
use crate::fs::NixociFs;
use crate::views::top_names;
use fuser::{BackgroundSession, Config, INodeNo, MountOption, SessionACL};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The daemon's mount source in /proc/self/mountinfo: how `copy` finds running mounts.
pub const FSNAME: &str = "nixoci";

/// A mount left by a daemon that died answers ENOTCONN: detach it so we can mount again.
/// Listing the directory asks the daemon (a `stat` may still be answered from the kernel's cache).
fn clear_stale_mount(mnt: &Path) -> Result<(), String> {
    match std::fs::read_dir(mnt) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            log::warn!("{}: clearing a stale mount (its daemon is gone)", mnt.display());
            let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(format!("{}: cannot clear stale mount: {}", mnt.display(), std::io::Error::last_os_error()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mnt).map_err(|e| format!("{}: {e}", mnt.display()))
        }
        Err(e) => Err(format!("{}: {e}", mnt.display())),
        Ok(_) => Ok(()),
    }
}

/// FUSE asks 128 KiB at a time by default; a larger readahead makes sequential reads ~2× faster.
fn raise_readahead(mnt: &Path) {
    let Ok(md) = std::fs::metadata(mnt) else { return };
    let dev = md.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    if let Err(e) = std::fs::write(&path, "4096") {
        log::warn!("cannot raise readahead ({path}: {e}); reads will be slower");
    }
}

/// Rescan the images directory when inotify reports a change in it, and every second anyway
/// (a description's target can change without the directory changing).
fn watch(catalog: &Catalog) {
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    let dir = std::ffi::CString::new(catalog.dir().as_os_str().as_encoded_bytes()).unwrap();
    let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_ATTRIB;
    if fd < 0 || unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), mask) } < 0 {
        log::warn!("cannot watch {} ({}); polling it every second", catalog.dir().display(), std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        if fd >= 0 && unsafe { libc::poll(&mut pfd, 1, 1000) } > 0 {
            // Let a burst of events (a file being written, a link being swapped) settle.
            std::thread::sleep(Duration::from_millis(20));
            while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            catalog.scan();
        } else {
            if fd < 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            catalog.refresh(Duration::from_millis(900));
        }
    }
}

/// The signals that end a mount (and, in `copy`, are passed on to skopeo).
pub fn signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Mounts `catalog` at `mnt`, served by background threads until the session is unmounted.
/// `fsname` shows as the mount's source in /proc/self/mountinfo (`nixoci` for the daemon).
pub fn serve(mnt: &Path, catalog: Arc<Catalog>, threads: usize, fsname: &str) -> Result<BackgroundSession, String> {
    clear_stale_mount(mnt)?;
    let mut config = Config::default();
    config.mount_options = vec![MountOption::RO, MountOption::FSName(fsname.into()), MountOption::Subtype("nixoci".into())];
    config.n_threads = Some(threads.max(1));
    config.acl = SessionACL::All;
    // SessionACL::All is the allow_other mount option.
    let session = match fuser::spawn_mount(NixociFs::new(catalog.clone()), mnt, &config) {
        Ok(s) => s,
        // Users other than root need `user_allow_other` in /etc/fuse.conf for allow_other.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            log::warn!("mount with allow_other failed ({e}); mounting for this user only");
            config.acl = SessionACL::Owner;
            fuser::spawn_mount(NixociFs::new(catalog), mnt, &config).map_err(|e| format!("cannot mount {}: {e}", mnt.display()))?
        }
        Err(e) => return Err(format!("cannot mount {}: {e}", mnt.display())),
    };
    raise_readahead(mnt);
    Ok(session)
}

pub fn run(mnt: &Path, images: PathBuf, cache: DigestCache, threads: usize) -> Result<(), String> {
    // Block the signals before any thread starts, so only the wait below receives them.
    let set = signals();
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if !images.is_dir() {
        return Err(format!("images directory {} does not exist", images.display()));
    }
    let catalog = Catalog::new(images, cache);
    let changes = catalog.watch_changes();
    let watched = catalog.clone();
    std::thread::spawn(move || watch(&watched));
    let session = serve(mnt, catalog, threads, FSNAME)?;
    // The kernel caches top-level names for a second: make it forget a changed one at once.
    // (Never from a FUSE request thread: the kernel may hold the directory locked for it.)
    let notifier = session.notifier();
    std::thread::spawn(move || {
        for name in changes {
            for (n, _) in top_names(&name) {
                let _ = notifier.inval_entry(INodeNo(1), OsStr::new(&n));
            }
        }
    });
    log::info!("mounted at {}", mnt.display());

    loop {
        let timeout = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            log::info!("signal {sig}: unmounting {}", mnt.display());
            break;
        }
        if session.guard.is_finished() {
            log::info!("{} was unmounted", mnt.display());
            return session.join().map_err(|e| e.to_string());
        }
    }
    session.umount_and_join().map_err(|e| format!("unmount of {}: {e}", mnt.display()))
}
