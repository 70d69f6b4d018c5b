//! `nixoci run NAME [ARGS…] [-- PODMAN-OPTS…]`: podman runs an image of a running mount from its
//! root filesystem view, `--rootfs MNT/NAME.rootfs:O` (a writable overlay over the read-only
//! view: nothing is copied or pulled), with the image config's Env, WorkingDir, User and
//! Entrypoint applied as `podman run IMAGE` would apply them. ARGS replace Cmd.

use crate::conversion;
use crate::image::INDEX_TYPE;
use crate::platform::Platform;
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// `NAME [ARGS…] [-- PODMAN-OPTS…]` as given: the name, the command's arguments, podman options.
pub fn split_command_line(words: &[String]) -> Result<(&str, &[String], &[String]), String> {
    let (name, rest) = words.split_first().ok_or("an image name is needed")?;
    Ok(match rest.iter().position(|w| w == "--") {
        Some(i) => (name, &rest[..i], &rest[i + 1..]),
        None => (name, rest, &[]),
    })
}

/// The one nixoci mount of this machine, when `--mount` is not given.
fn find_mount() -> Result<PathBuf, String> {
    let mut mounts = crate::mount::running_mounts();
    match mounts.len() {
        1 => Ok(mounts.remove(0)),
        0 => Err("no nixoci mount is running: start `nixoci mount MNT --images DIR`, or give --mount MNT".into()),
        _ => Err(format!(
            "{} nixoci mounts are running ({}): choose one with --mount MNT",
            mounts.len(),
            mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The image config's `config` section, read from the image's OCI layout in the mount.
fn image_config(layout: &Path) -> Result<Map<String, Value>, String> {
    let blob = |digest: &Value| -> Result<Value, String> {
        let hex = digest.as_str().and_then(|d| d.strip_prefix("sha256:")).ok_or_else(|| format!("{}: bad digest {digest}", layout.display()))?;
        read_json(&layout.join("blobs/sha256").join(hex))
    };
    let index = read_json(&layout.join("index.json"))?;
    let mut manifest = blob(&index["manifests"][0]["digest"])?;
    if manifest["mediaType"] == INDEX_TYPE {
        // An image index: the image for this machine, as NAME.rootfs holds it.
        let host = Platform::host();
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let ours = manifest["manifests"].as_array().into_iter().flatten().find(|m| {
            let p = &m["platform"];
            Platform::new(&str_of(&p["os"]), &str_of(&p["architecture"]), &str_of(&p["variant"])).is_ok_and(|p| p.same_as(&host))
        });
        let ours = ours.ok_or_else(|| format!("{}: the image index has no image for this machine ({host})", layout.display()))?;
        manifest = blob(&ours["digest"])?;
    }
    let config = blob(&manifest["config"]["digest"])?;
    match config.get("config") {
        Some(Value::Object(c)) => Ok(c.clone()),
        _ => Ok(Map::new()),
    }
}

/// podman's arguments for running `rootfs` with the image config `config`.
pub fn podman_args(rootfs: &Path, config: &Map<String, Value>, args: &[String], podman_opts: &[String], tty: bool) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = vec!["run".into(), "--rm".into(), "--interactive".into()];
    if tty {
        out.push("--tty".into());
    }
    for e in conversion::env(config)? {
        out.extend(["--env".into(), e.into()]);
    }
    for (key, flag) in [("WorkingDir", "--workdir"), ("User", "--user")] {
        if let Some(v) = config.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()) {
            out.extend([flag.into(), v.into()]);
        }
    }
    // podman takes the entrypoint as a JSON list; the command follows the root filesystem.
    let (entrypoint, command) = conversion::command(config, (!args.is_empty()).then_some(args))?;
    if !entrypoint.is_empty() {
        out.extend(["--entrypoint".into(), serde_json::to_string(&entrypoint).unwrap().into()]);
    }
    out.extend(podman_opts.iter().map(OsString::from));
    let mut rootfs_arg = rootfs.as_os_str().to_owned();
    rootfs_arg.push(":O");
    out.extend(["--rootfs".into(), rootfs_arg]);
    out.extend(command.iter().map(OsString::from));
    Ok(out)
}

/// Replace this process with podman running the image.
pub fn run(mount: Option<PathBuf>, words: &[String]) -> Result<(), String> {
    let (name, args, podman_opts) = split_command_line(words)?;
    crate::catalog::check_name(name)?;
    let mnt = match mount {
        Some(m) => m,
        None => find_mount()?,
    };
    let rootfs = mnt.join(format!("{name}.rootfs"));
    if !rootfs.is_dir() {
        return Err(format!("{} does not exist: is '{name}' an image of that mount? (its log says why a view is missing)", rootfs.display()));
    }
    let config = image_config(&mnt.join(name))?;
    let argv = podman_args(&rootfs, &config, args, podman_opts, std::io::stdin().is_terminal() && std::io::stdout().is_terminal())?;
    let err = std::process::Command::new("podman").args(&argv).exec();
    Err(format!("cannot run podman: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_before_the_double_dash_podman_options_after() {
        let w = words(&["hello", "sh", "-c", "echo hi", "--", "--env", "X=1", "--", "y"]);
        let (name, args, opts) = split_command_line(&w).unwrap();
        assert_eq!((name, args, opts), ("hello", &w[1..4], &w[5..]), "only the first -- splits");
        let w = words(&["hello", "--", "--rm=false"]);
        assert_eq!(split_command_line(&w).unwrap(), ("hello", &[][..], &w[2..]));
        let w = words(&["hello"]);
        assert_eq!(split_command_line(&w).unwrap(), ("hello", &[][..], &[][..]));
        assert!(split_command_line(&[]).is_err());
    }

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn the_image_config_becomes_podman_options() {
        let c = json!({"Env": ["PATH=/bin", "A=b c"], "WorkingDir": "/srv", "User": "1000:100",
                       "Entrypoint": ["/bin/app", "-v"], "Cmd": ["serve"]});
        let c = c.as_object().unwrap();
        let rootfs = Path::new("/mnt/app.rootfs");
        let argv = podman_args(rootfs, c, &[], &words(&["--network", "host"]), false).unwrap();
        assert_eq!(
            strs(&argv),
            ["run", "--rm", "--interactive", "--env", "PATH=/bin", "--env", "A=b c", "--workdir", "/srv", "--user", "1000:100",
             "--entrypoint", r#"["/bin/app","-v"]"#, "--network", "host", "--rootfs", "/mnt/app.rootfs:O", "serve"]
        );
        let argv = podman_args(rootfs, c, &words(&["check", "--all"]), &[], true).unwrap();
        assert_eq!(strs(&argv)[3], "--tty");
        assert_eq!(strs(&argv)[argv.len() - 3..], ["/mnt/app.rootfs:O", "check", "--all"], "ARGS replace Cmd");
    }

    #[test]
    fn without_an_entrypoint_the_command_is_cmd_or_args() {
        let c = json!({"Cmd": ["/bin/sh"]});
        let c = c.as_object().unwrap();
        let argv = podman_args(Path::new("/m/x.rootfs"), c, &[], &[], false).unwrap();
        assert_eq!(strs(&argv), ["run", "--rm", "--interactive", "--rootfs", "/m/x.rootfs:O", "/bin/sh"]);
        let argv = podman_args(Path::new("/m/x.rootfs"), c, &words(&["ls", "/"]), &[], false).unwrap();
        assert_eq!(strs(&argv)[4..], ["/m/x.rootfs:O", "ls", "/"]);
        let none = json!({});
        assert!(podman_args(Path::new("/m/x.rootfs"), none.as_object().unwrap(), &[], &[], false).unwrap_err().contains("nothing to run"));
        assert!(podman_args(Path::new("/m/x.rootfs"), none.as_object().unwrap(), &words(&["true"]), &[], false).is_ok());
    }
}
