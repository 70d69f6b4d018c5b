//! NAME.rootfs/ (the image's root filesystem) and NAME.bundle/ (an OCI runtime bundle), served
//! from the store: compared with `umoci unpack`, run by podman (`--rootfs …:O`), `nixoci run`
//! and runc, read-only, switched by a relink, and failing loudly when the store changes.
//! Needs root, /dev/fuse, Nix, umoci, podman and runc (scripts/setup).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const HELLO: &str = "Hello from a Nix-built image served by nixoci!";

/// A description written by the test: `layers` of store paths (with `options` for each path),
/// and `config` as its image config.
fn description(dir: &Path, name: &str, layers: &[&Path], options: serde_json::Value, config: serde_json::Value) -> PathBuf {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|p| serde_json::json!({"paths": [{"path": p, "options": options}], "mediatype": "application/vnd.oci.image.layer.v1.tar"}))
        .collect();
    let json = serde_json::json!({"version": 1, "image-config": config, "layers": layers});
    let file = dir.join(format!("{name}.json"));
    fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    file
}

fn rootfs_arg(m: &Mount, name: &str) -> String {
    format!("{}:O", m.mnt.join(format!("{name}.rootfs")).display())
}

/// The daemon's bytes read so far (files and /dev/fuse).
fn daemon_reads(m: &Mount) -> u64 {
    let io = fs::read_to_string(format!("/proc/{}/io", m.pid())).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().parse().unwrap()
}

#[test]
fn rootfs_equals_umoci_unpack_read_by_the_kernel_or_the_daemon() {
    let images = [("hello.json", fixture("hello-image")), ("busybox.json", fixture("busybox-image"))];
    let images: Vec<(&str, &Path)> = images.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let busybox = fixture("busybox").join("bin/busybox");
    for (options, passthrough) in [(&[][..], true), (&["--no-passthrough"][..], false)] {
        let m = Mount::new_with(&images, options);
        // Who reads the data (first read: nothing cached yet): with passthrough the daemon sees
        // no byte of it.
        let before = daemon_reads(&m);
        let (hash, size) = sha256_file(&m.mnt.join("busybox.rootfs").join(busybox.strip_prefix("/").unwrap())).unwrap();
        let read = daemon_reads(&m) - before;
        assert_eq!(hash, sha256_file(&busybox).unwrap().0);
        if passthrough {
            m.expect_log(&["FUSE passthrough: the kernel reads root filesystem files from the store"], Duration::ZERO);
            assert!(read < size / 10, "the daemon read {read} bytes of a {size}-byte file");
        } else {
            assert!(read >= size, "the daemon read {read} bytes of a {size}-byte file");
        }
        for name in ["hello", "busybox"] {
            let (_t, tmp) = temp_dir();
            umoci_unpack(&m.mnt.join(name), &tmp.join("bundle"));
            let rootfs = m.mnt.join(format!("{name}.rootfs"));
            assert_same_tree(&tmp.join("bundle/rootfs"), &rootfs);
            // The bundle's root is the same, with the directories runc mounts on.
            let mut want = tree_stat(&rootfs);
            want.extend(["dev d 755 0 0 - ", "proc d 755 0 0 - ", "sys d 755 0 0 - "].map(String::from));
            want.sort();
            assert_eq!(tree_stat(&m.mnt.join(format!("{name}.bundle/rootfs"))), want);
        }
    }
}

#[test]
fn podman_runs_the_rootfs_and_its_writes_stay_in_the_overlay() {
    let (hello, busybox) = (fixture("hello"), fixture("busybox"));
    let m = Mount::new(&[("hello.json", &fixture("hello-image"))]);
    let p = Podman::new();
    let out = p.run(["run", "--rm", "--rootfs", &rootfs_arg(&m, "hello"), &format!("{}/bin/hello", hello.display()), "x"]);
    assert_eq!(stdout(&out), format!("{HELLO}\nargs: x\n"));

    let data = hello.join("share/data.txt");
    let script = format!("echo changed > {0} && echo new > /new && mkdir /nix/store/made && cat {0} /new", data.display());
    let out = p.run(["run", "--rm", "--rootfs", &rootfs_arg(&m, "hello"), &format!("{}/bin/sh", busybox.display()), "-c", &script]);
    assert_eq!(stdout(&out), "changed\nnew\n");
    assert_eq!(fs::read_to_string(&data).unwrap(), "a data file\n", "the store is unchanged");
    let served = m.mnt.join("hello.rootfs").join(data.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(served).unwrap(), "a data file\n", "the mount is unchanged");
    assert!(!m.mnt.join("hello.rootfs/new").exists() && !m.mnt.join("hello.rootfs/nix/store/made").exists());
}

#[test]
fn nixoci_run_and_runc_apply_the_image_config() {
    let busybox = fixture("busybox");
    let (_t, dir) = temp_dir();
    let config = serde_json::json!({
        "Env": [format!("PATH={}/bin", busybox.display()), "GREETING=hi there"],
        "WorkingDir": format!("{}/bin", busybox.display()),
        "User": "1000:100",
        "Entrypoint": ["sh", "-c"],
        "Cmd": ["echo $GREETING; pwd; id -u; id -g"],
    });
    let desc = description(&dir, "conf", &[&busybox], serde_json::json!({}), config);
    let m = Mount::new(&[("hello.json", &fixture("hello-image")), ("conf.json", &desc)]);
    let p = Podman::new();
    assert_eq!(stdout(&run(&mut p.nixoci_run(&m.mnt, &["hello"]))), format!("{HELLO}\nargs: world\n"));
    assert_eq!(stdout(&run(&mut p.nixoci_run(&m.mnt, &["hello", "a", "b c"]))), format!("{HELLO}\nargs: a b c\n"), "ARGS replace Cmd");
    let want = format!("hi there\n{}/bin\n1000\n100\n", busybox.display());
    assert_eq!(stdout(&run(&mut p.nixoci_run(&m.mnt, &["conf"]))), want);
    assert_eq!(stdout(&run(&mut p.nixoci_run(&m.mnt, &["conf", "echo replaced"]))), "replaced\n");

    let (_s, state) = temp_dir();
    for (name, want) in [("hello", format!("{HELLO}\nargs: world\n")), ("conf", want)] {
        let id = format!("{}-{name}", state.file_name().unwrap().to_str().unwrap());
        let out = run(tool("runc").arg("--root").arg(&state).args(["run", "-b"]).arg(m.mnt.join(format!("{name}.bundle"))).arg(id));
        assert_eq!(stdout(&out), want, "runc run -b {name}.bundle");
    }
    let bad = run_unchecked(&mut p.nixoci_run(&m.mnt, &["missing"]));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing.rootfs does not exist"), "{bad:?}");
}

#[test]
fn every_view_is_read_only_and_modes_hold() {
    let hello = fixture("hello");
    let user = User::new();
    let owner = user.uid + 1;
    let (_t, dir) = temp_dir();
    let perms = serde_json::json!({"perms": [{"regex": "data\\.txt$", "mode": "0400", "uid": owner, "gid": owner}]});
    let desc = description(&dir, "secret", &[&fixture("busybox"), &hello], perms, serde_json::json!({"Cmd": ["true"]}));
    let m = Mount::new(&[("hello.json", &fixture("hello-image")), ("secret.json", &desc)]);
    let data = |name: &str| m.mnt.join(format!("{name}.rootfs")).join(hello.strip_prefix("/").unwrap()).join("share/data.txt");
    let erofs = |what: &str, r: std::io::Result<()>| {
        assert_eq!(r.as_ref().err().and_then(|e| e.raw_os_error()), Some(libc::EROFS), "{what}: {r:?}");
    };
    for file in [data("hello"), m.mnt.join("hello.bundle/config.json"), m.mnt.join("hello/index.json")] {
        erofs("open for writing", fs::OpenOptions::new().write(true).open(&file).map(drop));
        erofs("chmod", fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o777)));
        erofs("unlink", fs::remove_file(&file));
    }
    for dir in [m.mnt.join("hello.rootfs"), m.mnt.join("hello.bundle/rootfs/proc"), m.mnt.join("hello.bundle")] {
        erofs("create", fs::File::create(dir.join("new")).map(drop));
        erofs("mkdir", fs::create_dir(dir.join("new")));
    }
    // The kernel checks the image's modes and owners: a 0400 file is its owner's only.
    let secret = data("secret");
    let md = fs::symlink_metadata(&secret).unwrap();
    assert_eq!((std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777, std::os::unix::fs::MetadataExt::uid(&md)), (0o400, owner));
    assert_eq!(fs::read_to_string(&secret).unwrap(), "a data file\n", "root reads it");
    let out = run_unchecked(user.cmd(require_tool("cat")).arg(&secret));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    run(user.cmd(require_tool("cat")).arg(data("hello")));
}

#[test]
fn a_relink_switches_new_runs_and_running_containers_keep_their_tree() {
    let (hello, busybox) = (fixture("hello"), fixture("busybox"));
    let m = Mount::new(&[("app.json", &fixture("hello-image"))]);
    let p = Podman::new();
    let bb = busybox.join("bin/busybox").display().to_string();
    let id = stdout(&p.run(["run", "-d", "--rootfs", &rootfs_arg(&m, "app"), &bb, "sleep", "600"])).trim().to_string();
    relink_image(&m.images, "app.json", &fixture("busybox-image"));
    let store = m.mnt.join("app.rootfs/nix/store");
    let hello_name = hello.file_name().unwrap().to_owned();
    assert!(wait_for(Duration::from_secs(10), || fs::read_dir(&store).is_ok_and(|d| d.flatten().all(|e| e.file_name() != hello_name))));
    let ls = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--rootfs"];
        let rootfs = rootfs_arg(&m, "app");
        args.extend([rootfs.as_str(), &bb, "ls", "/nix/store"]);
        args.extend(extra);
        stdout(&p.run(args))
    };
    assert_eq!(ls(&[]), format!("{}\n", busybox.file_name().unwrap().to_str().unwrap()), "a new run gets the new tree");
    // Longer than the catalog keeps a replaced version that nothing holds.
    std::thread::sleep(Duration::from_secs(7));
    let data = hello.join("share/data.txt").display().to_string();
    let out = p.run(["exec", &id, &bb, "cat", &data]);
    assert_eq!(stdout(&out), "a data file\n", "the running container still reads its tree");
    assert!(!m.log_text().contains("replaced version"), "{}", m.log_text());
    p.run(["rm", "-f", "-t", "0", &id]);
}

#[test]
fn a_store_path_that_vanished_gives_eio_and_a_log_line() {
    // A store path of its own that nothing refers to, so that it can be deleted.
    let nonce = format!("{:016x}", fastrand::u64(..));
    let expr = format!(
        "derivation {{ name = \"vanishing\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         PATH = \"/usr/bin:/bin\"; args = [ \"-c\" \"mkdir $out; echo {nonce} > $out/file\" ]; }}"
    );
    let out = run(tool("nix-build").args(["--option", "build-users-group", "", "--no-out-link", "-E", &expr]));
    let path = PathBuf::from(stdout(&out).trim());
    let (_t, dir) = temp_dir();
    let desc = description(&dir, "vanishing", &[&path], serde_json::json!({}), serde_json::json!({"Cmd": ["x"]}));
    // With its digest given, the mount reads nothing before the test does (an open file would
    // keep the path alive for Nix).
    let digested = run(std::process::Command::new(nixoci_bin()).arg("digest").arg(&desc).arg("--cache-dir").arg(dir.join("cache")));
    fs::write(&desc, &digested.stdout).unwrap();
    let m = Mount::new(&[("vanishing.json", &desc)]);
    let file = m.mnt.join("vanishing.rootfs").join(path.strip_prefix("/").unwrap()).join("file");
    assert_eq!(fs::metadata(&file).unwrap().len(), 17);
    run(tool("nix-store").arg("--delete").arg(&path));
    let err = fs::read(&file).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    m.expect_log(&["image vanishing: open of a root filesystem file", &path.join("file").display().to_string()], Duration::from_secs(5));
}

#[test]
fn views_left_out_say_why() {
    let (hello, busybox) = (fixture("hello"), fixture("busybox"));
    let (_t, dir) = temp_dir();
    // A user the image does not list: no bundle (runc needs numbers), the root filesystem stays.
    let nobody = description(&dir, "nobody", &[&busybox, &hello], serde_json::json!({}), serde_json::json!({"User": "nobody", "Cmd": ["x"]}));
    // A rewrite that makes names relative: where they land is not what the tar says.
    let rewrite = serde_json::json!({"rewrite": {"regex": "^/nix/store/[^/]*/", "repl": ""}});
    let relative = description(&dir, "relative", &[&hello], rewrite, serde_json::json!({"Cmd": ["x"]}));
    // A ready tar file (layer-path): its members are not indexed.
    let (_e, exported) = temp_dir();
    run(std::process::Command::new(nixoci_bin()).args(["export", "--format", "dir"]).arg(fixture("busybox-image")).arg(exported.join("bb")));
    let manifest = read_json(&exported.join("bb/manifest.json"));
    let blob = exported.join("bb").join(manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    let layer_file = stdout(&run(tool("nix-store").arg("--add").arg(&blob))).trim().to_string();
    let tar = serde_json::json!({"version": 1, "image-config": {"Cmd": ["x"]}, "layers": [{"layer-path": layer_file}]});
    fs::write(dir.join("tar.json"), tar.to_string()).unwrap();

    let m = Mount::new(&[("nobody.json", &nobody), ("relative.json", &relative), ("tar.json", &dir.join("tar.json"))]);
    let names: Vec<String> = fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for (name, present) in [("nobody.rootfs", true), ("nobody.bundle", false), ("relative.rootfs", false), ("tar.rootfs", false), ("tar", true)] {
        assert_eq!(names.contains(&name.to_string()), present, "{name} in {names:?}");
    }
    m.expect_log(&["image nobody: no nobody.bundle: user 'nobody' is not in the image's /etc/passwd"], Duration::ZERO);
    m.expect_log(&["image relative: no relative.rootfs or relative.bundle: layer 0: entry 'bin' is not under '/'"], Duration::ZERO);
    m.expect_log(&["image tar: no tar.rootfs or tar.bundle: layer 0 is a ready tar file (layer-path)"], Duration::ZERO);
}

#[test]
fn an_index_shows_the_image_for_this_machine() {
    let m = Mount::new(&[("multi.json", &fixture("busybox-index")), ("busybox.json", &fixture("busybox-image"))]);
    assert_same_tree(&m.mnt.join("busybox.rootfs"), &m.mnt.join("multi.rootfs"));
    let config = |name: &str| read_json(&m.mnt.join(format!("{name}.bundle/config.json")));
    assert_eq!(config("multi")["process"], config("busybox")["process"]);
    let p = Podman::new();
    assert_eq!(stdout(&run(&mut p.nixoci_run(&m.mnt, &["multi", "sh", "-c", "echo from $0"]))), "from sh\n");
}
