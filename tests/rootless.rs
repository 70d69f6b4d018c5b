//! nixoci run by a normal user, as on a laptop: /dev/fuse is 0666 (scripts/setup makes it so, as
//! distributions ship it) and /etc/fuse.conf has no `user_allow_other`. The mount then falls back
//! to one only its user can read; skopeo and rootless podman run as that user read it.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What these tests take from the machine; a mismatch is a setup problem, reported as one.
fn check_machine() {
    let mode = fs::metadata("/dev/fuse").expect("/dev/fuse is missing").permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "/dev/fuse is {mode:o}: run scripts/setup (it makes it 0666, as distributions ship it)");
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    assert!(
        !conf.lines().any(|l| l.trim() == "user_allow_other"),
        "/etc/fuse.conf has user_allow_other: these tests check the mount a user gets without it"
    );
}

/// The hello fixture mounted by the test user under its own dir.
fn mount_as(user: &User) -> Mount {
    let images = user.dir.join("images");
    fs::create_dir(&images).unwrap();
    link_image(&images, "hello.json", &fixture("hello-image"));
    Mount::start_as(user, &user.dir.join("mnt"), &images, &user.dir.join("cache"), &user.dir.join("nixoci.log"))
}

/// The served image as `nixoci export` writes it (root cannot read the user's mount).
fn exported(user: &User) -> PathBuf {
    let out = user.dir.join("exported");
    nixoci_export(&fixture("hello-image"), "oci", &out);
    out
}

/// The mountinfo line of the mount on top at `mnt`.
fn mountinfo_line(mnt: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().filter(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap())).last();
    line.unwrap_or_else(|| panic!("{} is not in mountinfo", mnt.display())).to_string()
}

#[test]
fn a_user_mount_is_for_that_user_only_serves_skopeo_and_clears_its_own_stale_mount() {
    check_machine();
    let user = User::new();
    let mut m = mount_as(&user);
    m.expect_log(&["allow_other refused", &format!("uid {} only", user.uid), "add a line `user_allow_other` to /etc/fuse.conf"], Duration::ZERO);
    let line = mountinfo_line(&m.mnt);
    assert!(line.contains(&format!("user_id={}", user.uid)) && !line.contains("allow_other"), "a mount for the user only: {line}");
    let denied = fs::read_dir(&m.mnt).map(|_| ()).unwrap_err();
    assert_eq!(denied.kind(), std::io::ErrorKind::PermissionDenied, "root, as any other user, is refused: {denied}");

    // skopeo as the user (its own blob-info cache under its HOME).
    let copy = user.dir.join("copy");
    run(user.cmd(require_tool("skopeo")).args(["copy", "--quiet"]).arg(format!("oci:{}/hello", m.mnt.display())).arg(format!("dir:{}", copy.display())));
    let want = oci_image_id(&exported(&user));
    let manifest = verify_dir_copy(&copy, &want, true);
    let layers: Vec<&str> = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(layers, want.diff_ids, "layers copied unchanged");

    // A user cannot umount(2): the stale mount a killed daemon leaves goes through fusermount3.
    m.kill9();
    let again = Mount::start_as(&user, &m.mnt, &m.images, &m.cache, &m.log);
    again.expect_log(&["clearing a stale mount"], Duration::ZERO);
    let index = run(user.cmd(require_tool("cat")).arg(again.mnt.join("hello/index.json"))).stdout;
    assert_eq!(index, fs::read(user.dir.join("exported/index.json")).unwrap(), "served again after the stale mount");
}

/// Rootless podman keeps a mount namespace alive in its pause process, copied when the process
/// started. A FUSE mount made later reaches it only if its parent mount is shared (systemd makes
/// `/` shared; these machines keep it private), else `podman system migrate` restarts the pause
/// process. nixoci says so when it mounts, and does not hang on SIGTERM while such a copy lives.
#[test]
fn rootless_podman_pulls_and_runs_from_a_user_mount() {
    check_machine();
    let user = User::new();
    run(user.podman().args(["unshare", "true"])); // the pause process starts before the mount
    let mut m = mount_as(&user);
    let layout = format!("oci:{}/hello", m.mnt.display());
    let shared = mountinfo_line(&m.mnt).split(" - ").next().unwrap().contains(" shared:");
    if shared {
        assert!(!m.log_text().contains("not a shared mount"), "no advice needed for a shared mount:\n{}", m.log_text());
    } else {
        m.expect_log(&["not a shared mount", "`podman system migrate`"], Duration::ZERO);
        let before = run_unchecked(user.podman().args(["pull", "--quiet"]).arg(&layout));
        let err = String::from_utf8_lossy(&before.stderr);
        assert!(!before.status.success() && err.contains("no such file or directory"), "the pause process cannot see the mount: {before:?}");
        run(user.podman().args(["system", "migrate"]));
    }
    let id = stdout(&run(user.podman().args(["pull", "--quiet"]).arg(&layout))).trim().to_string();
    let want = oci_image_id(&exported(&user));
    assert_eq!(format!("sha256:{id}"), want.config, "podman's image ID is the served config's digest");
    let out = stdout(&run(user.podman().args(["run", "--rm", &id, "rootless"])));
    assert!(out.contains("Hello from a Nix-built image served by nixoci!") && out.contains("args: rootless"), "podman run printed: {out}");

    // The pause process now holds a copy of the mount. Under a shared parent the unmount
    // propagates to it; else the copy keeps the FUSE session alive: SIGTERM still ends the daemon.
    let status = m.stop();
    assert!(status.success(), "nixoci exited with {status}\n{}", m.log_text());
    if shared {
        assert!(!m.log_text().contains("still held"), "the unmount reached podman's copy:\n{}", m.log_text());
    } else {
        m.expect_log(&["still held", "another mount namespace"], Duration::ZERO);
    }
}
