//! `nixoci mount`: set up the mount point, serve until SIGINT/SIGTERM, unmount cleanly.

use crate::catalog::Catalog;
use crate::digest::DigestCache;
use crate::fs::NixociFs;
use crate::views::top_names;
use fuser::{BackgroundSession, Config, INodeNo, MountOption, SessionACL};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
                let e = std::io::Error::last_os_error();
                // Not root: the setuid helper unmounts a FUSE mount for the user who made it.
                let helper = || Command::new("fusermount3").arg("-uz").arg(mnt).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
                if e.raw_os_error() != Some(libc::EPERM) || !helper() {
                    return Err(format!(
                        "{}: cannot clear stale mount: {e} (as the user who mounted it: `fusermount3 -uz {0}`; as root: `umount -l {0}`)",
                        mnt.display()
                    ));
                }
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
/// (a description's target can change without the directory changing). Files being written
/// (modified, not closed yet) are told to the catalog, which does not report them meanwhile.
fn watch(catalog: &Catalog) {
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    let dir = std::ffi::CString::new(catalog.dir().as_os_str().as_encoded_bytes()).unwrap();
    let mask = libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_ATTRIB;
    if fd < 0 || unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), mask) } < 0 {
        log::warn!("cannot watch {} ({}); polling it every second", catalog.dir().display(), std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        if fd >= 0 && unsafe { libc::poll(&mut pfd, 1, 1000) } > 0 {
            // Let a burst of events (a file being written, a link being swapped) settle.
            std::thread::sleep(Duration::from_millis(20));
            loop {
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                note_writes(catalog, &buf[..n as usize]);
            }
            catalog.scan();
        } else {
            if fd < 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            catalog.refresh(Duration::from_millis(900));
        }
    }
}

/// Tells the catalog which files the events show opened for writing or done with.
fn note_writes(catalog: &Catalog, events: &[u8]) {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut at = 0;
    while at + HEADER <= events.len() {
        let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(events[at..].as_ptr().cast()) };
        let name = &events[at + HEADER..at + HEADER + ev.len as usize];
        at += HEADER + ev.len as usize;
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            catalog.clear_writing();
        }
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let file = catalog.dir().join(OsStr::from_bytes(name));
        if ev.mask & libc::IN_MODIFY != 0 {
            catalog.set_writing(file, true);
        } else if ev.mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE) != 0 {
            catalog.set_writing(file, false);
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], s.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok())) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// The mount points of `nixoci mount`s in a mountinfo text: source `nixoci` (`FSNAME`), type
/// `fuse` when root mounted it, `fuse.nixoci` through fusermount3.
fn daemon_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let is_daemon = |fs: &str| {
        let mut f = fs.split(' ');
        matches!(f.next(), Some("fuse" | "fuse.nixoci")) && f.next() == Some(FSNAME)
    };
    mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - ").filter(|(_, fs)| is_daemon(fs)))
        .filter_map(|(fields, _)| fields.split(' ').nth(4).map(unescape))
        .collect()
}

/// The `nixoci mount`s running on this machine.
pub fn running_mounts() -> Vec<PathBuf> {
    daemon_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Whether the mount at `mnt` reaches mount namespaces copied from this one before it was made
/// (rootless podman keeps one alive): "shared:N" among the optional fields of /proc/self/mountinfo,
/// which a new mount gets when its parent mount is shared.
fn is_shared_mount(mnt: &Path) -> bool {
    let Ok(mnt) = std::fs::canonicalize(mnt) else { return false };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The last line for the path is the mount on top; spaces and the like are octal-escaped.
    let want = mnt.to_string_lossy().replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012");
    let line = info.lines().filter(|l| l.split(' ').nth(4) == Some(want.as_str())).last();
    line.is_some_and(|l| l.split(" - ").next().unwrap_or("").split(' ').skip(6).any(|f| f.starts_with("shared:")))
}

/// The signals that end a mount (and, in `copy`, are passed on to skopeo).
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

pub fn signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Mounts `catalog` at `mnt`, served by background threads until `unmount`. `fsname` shows as the
/// mount's source in /proc/self/mountinfo (`nixoci` for the daemon). `passthrough`: let the kernel
/// read the store files of NAME.rootfs and NAME.bundle itself where it can.
pub fn serve(mnt: &Path, catalog: Arc<Catalog>, threads: usize, fsname: &str, passthrough: bool) -> Result<BackgroundSession, String> {
    clear_stale_mount(mnt)?;
    let mut config = Config::default();
    // The kernel checks modes and owners (a root filesystem's files are not all world-readable).
    config.mount_options = vec![
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::FSName(fsname.into()),
        MountOption::Subtype("nixoci".into()),
    ];
    config.n_threads = Some(threads.max(1));
    config.acl = SessionACL::All;
    // SessionACL::All is the allow_other mount option.
    let session = match fuser::spawn_mount(NixociFs::new(catalog.clone(), passthrough), mnt, &config) {
        Ok(s) => s,
        // Users other than root need `user_allow_other` in /etc/fuse.conf for allow_other.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            log::warn!(
                "allow_other refused ({}): mounting for uid {} only; root and other users (dockerd, a root podman) \
                 will get 'permission denied'. To share it, add a line `user_allow_other` to /etc/fuse.conf",
                e.to_string().trim(),
                unsafe { libc::geteuid() }
            );
            config.acl = SessionACL::Owner;
            fuser::spawn_mount(NixociFs::new(catalog, passthrough), mnt, &config).map_err(|e| format!("cannot mount {}: {e}", mnt.display()))?
        }
        Err(e) => return Err(format!("cannot mount {}: {e}", mnt.display())),
    };
    raise_readahead(mnt);
    Ok(session)
}

pub fn run(mnt: &Path, images: PathBuf, cache: DigestCache, threads: usize, passthrough: bool) -> Result<(), String> {
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
    let session = serve(mnt, catalog, threads, FSNAME, passthrough)?;
    if unsafe { libc::geteuid() } != 0 && !is_shared_mount(mnt) {
        log::warn!(
            "{} is not a shared mount (its parent mount is private), so a rootless podman that is already \
             running does not see it: run `podman system migrate` after mounting (it restarts podman's \
             namespace), or make the parent shared as systemd does (`mount --make-rshared /`, as root)",
            mnt.display()
        );
    }
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
    unmount(session, mnt)
}

/// Unmounts and waits for the session's end, but not for long: the session ends when the last
/// copy of the mount is gone, and a mount namespace made while it was mounted keeps a copy (a
/// rootless podman's pause process does). Exiting closes the FUSE device, and the copy there
/// fails with ENOTCONN from then on.
pub fn unmount(session: BackgroundSession, mnt: &Path) -> Result<(), String> {
    let (done, finished) = std::sync::mpsc::channel();
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    std::thread::spawn(move || {
        let mut res = session.umount_and_join();
        // A file closed a moment ago can keep the mount busy briefly (seen right after a
        // client's last reads): try again for a while.
        for _ in 0..100 {
            if !matches!(&res, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            res = if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        }
        done.send(res)
    });
    match finished.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => result.map_err(|e| format!("unmount of {}: {e}", mnt.display())),
        Err(_) => {
            log::warn!(
                "{}: the FUSE session is still held 5 s after unmounting, by a copy of the mount in another \
                 mount namespace (a rootless podman started while it was mounted keeps one); exiting anyway: \
                 that copy is dead from now on (`podman system migrate` drops it)",
                mnt.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_daemon_mounts_in_mountinfo() {
        let info = "36 25 0:32 / /mnt/a\\040b\\134c rw,nosuid shared:1 - fuse.nixoci nixoci ro,user_id=0\n\
                    37 25 0:33 / /mnt/other rw,relatime - fuse.sshfs host: rw\n\
                    39 25 0:35 / /mnt/copy rw,relatime - fuse nixoci-copy ro\n\
                    38 25 0:34 / /srv/images ro,relatime - fuse nixoci ro,default_permissions,allow_other\n";
        assert_eq!(daemon_mounts(info), [PathBuf::from("/mnt/a b\\c"), PathBuf::from("/srv/images")]);
    }
}
