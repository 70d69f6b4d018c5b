//! `nixoci mount`: set up the mount point, serve until SIGINT/SIGTERM, unmount cleanly.

use crate::catalog::Catalog;
use crate::digest::DigestCache;
use crate::fs::NixociFs;
use fuser::{Config, MountOption, SessionACL};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A mount left by a daemon that died answers ENOTCONN: detach it so we can mount again.
fn clear_stale_mount(mnt: &Path) -> Result<(), String> {
    match std::fs::metadata(mnt) {
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
        Ok(md) if !md.is_dir() => Err(format!("{} is not a directory", mnt.display())),
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

fn signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

pub fn run(mnt: &Path, images: PathBuf, cache: DigestCache, threads: usize) -> Result<(), String> {
    // Block the signals before any thread starts, so only the wait below receives them.
    let set = signals();
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if !images.is_dir() {
        return Err(format!("images directory {} does not exist", images.display()));
    }
    clear_stale_mount(mnt)?;
    let catalog = Catalog::new(images, cache);
    let poller = catalog.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        poller.refresh(Duration::from_millis(900));
    });

    let mut config = Config::default();
    config.mount_options = vec![MountOption::RO, MountOption::FSName("nixoci".into()), MountOption::Subtype("nixoci".into())];
    config.n_threads = Some(threads.max(1));
    config.acl = SessionACL::All;
    // SessionACL::All is the allow_other mount option.
    let session = match fuser::spawn_mount(NixociFs::new(catalog.clone()), mnt, &config) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("mount with allow_other failed ({e}); mounting for this user only");
            config.acl = SessionACL::Owner;
            fuser::spawn_mount(NixociFs::new(catalog), mnt, &config).map_err(|e| format!("cannot mount {}: {e}", mnt.display()))?
        }
    };
    raise_readahead(mnt);
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
