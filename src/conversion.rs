//! An image config converted to an OCI runtime config (`config.json` of a bundle), as the OCI
//! image spec's "Conversion to OCI Runtime Configuration" says: Entrypoint + Cmd become
//! `process.args`, Env `process.env`, WorkingDir `process.cwd`, User `process.user` (names looked
//! up in the image's own /etc/passwd and /etc/group), Labels and the other annotation fields
//! `annotations`, Volumes tmpfs mounts. The rest is `runc spec`'s defaults, with a read-only root
//! and no terminal so a script can run it.

use crate::platform::Platform;
use serde_json::{json, Map, Value};

/// runc's default PATH (`runc spec`), added when the image sets none: runc looks up a relative
/// `args[0]` in the container's PATH.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the conversion reads besides the image's `config` section.
pub struct Image<'a> {
    pub config: &'a Map<String, Value>,
    pub platform: &'a Platform,
    pub created: Option<&'a str>,
}

/// The user a process runs as.
#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The home directory from /etc/passwd, for `HOME` when the image sets none.
    pub home: Option<String>,
}

fn strings(config: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("image config {key}: {v} is not a string")))
            .collect(),
        Some(v) => Err(format!("image config {key}: {v} is not a list of strings")),
    }
}

fn string<'a>(config: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("image config {key}: {v} is not a string")),
    }
}

/// The Entrypoint and the Cmd (the image's, unless the caller replaces it) of the process.
pub fn command(config: &Map<String, Value>, cmd: Option<&[String]>) -> Result<(Vec<String>, Vec<String>), String> {
    let entrypoint = strings(config, "Entrypoint")?;
    let cmd = match cmd {
        Some(c) => c.to_vec(),
        None => strings(config, "Cmd")?,
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err("the image config has neither Entrypoint nor Cmd: nothing to run".into());
    }
    Ok((entrypoint, cmd))
}

/// Env entries, checked to be NAME=VALUE.
pub fn env(config: &Map<String, Value>) -> Result<Vec<String>, String> {
    let env = strings(config, "Env")?;
    if let Some(bad) = env.iter().find(|e| e.split_once('=').is_none_or(|(name, _)| name.is_empty())) {
        return Err(format!("image config Env: '{bad}' is not NAME=VALUE"));
    }
    Ok(env)
}

/// The `user[:group]` of the image config, resolved the way runc needs it (numbers only).
/// Numeric parts are taken verbatim; names are looked up in the image's /etc/passwd and
/// /etc/group (`read` gives a file of the image's root filesystem). Without a group, the gid and
/// the supplementary groups come from the user's entries, when the files list it.
pub fn resolve_user(spec: &str, read: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<User, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let numeric = |s: &str| s.parse::<u32>().ok();
    let passwd = read("/etc/passwd").unwrap_or_default();
    let passwd = String::from_utf8_lossy(&passwd);
    // name:password:uid:gid:gecos:home:shell
    let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| {
        f.len() >= 7 && (f[0] == user || numeric(user).is_some_and(|u| numeric(f[2]) == Some(u)))
    });
    let (uid, mut gid, name, home) = match (&entry, numeric(user)) {
        (Some(f), _) => {
            let bad = || format!("user '{user}': its /etc/passwd line has no numeric uid and gid");
            (numeric(f[2]).ok_or_else(bad)?, numeric(f[3]).ok_or_else(bad)?, Some(f[0]), Some(f[5].to_string()))
        }
        (None, Some(uid)) => (uid, 0, None, None),
        (None, None) => return Err(format!("user '{user}' is not in the image's /etc/passwd")),
    };
    let groups = read("/etc/group").unwrap_or_default();
    let groups = String::from_utf8_lossy(&groups);
    // name:password:gid:member,member
    let group_lines = || groups.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4);
    let mut additional_gids = Vec::new();
    match group {
        Some(g) => {
            gid = match numeric(g) {
                Some(n) => n,
                None => group_lines()
                    .find(|f| f[0] == g)
                    .and_then(|f| numeric(f[2]))
                    .ok_or_else(|| format!("group '{g}' is not in the image's /etc/group"))?,
            };
        }
        None => {
            if let Some(name) = name {
                additional_gids = group_lines()
                    .filter(|f| f[3].split(',').any(|m| m == name))
                    .filter_map(|f| numeric(f[2]))
                    .filter(|&g| g != gid)
                    .collect();
            }
        }
    }
    Ok(User { uid, gid, additional_gids, home: home.filter(|h| !h.is_empty()) })
}

/// Where the runtime mounts something: the bundle's read-only root must already hold these
/// directories, since the runtime cannot create them there.
pub fn mount_points(runtime_config: &Value) -> Vec<String> {
    let mut points: Vec<String> = Vec::new();
    for m in runtime_config["mounts"].as_array().into_iter().flatten() {
        let dest = m["destination"].as_str().unwrap_or_default();
        // A mount inside an earlier one (/dev/pts in /dev's tmpfs) is made on a writable place.
        if !points.iter().any(|p| dest.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'))) {
            points.push(dest.to_string());
        }
    }
    points
}

fn default_mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ])
}

/// The runtime config of a bundle whose root filesystem is `rootfs`, read only.
pub fn runtime_config(hostname: &str, image: &Image, read: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<Value, String> {
    let c = image.config;
    let p = image.platform;
    if p.os != "linux" {
        return Err(format!("os '{}': only linux images run here", p.os));
    }
    let (mut args, cmd) = command(c, None)?;
    args.extend(cmd);
    let mut env = env(c)?;
    let has = |env: &[String], name: &str| env.iter().any(|e| e.split_once('=').is_some_and(|(n, _)| n == name));
    if !has(&env, "PATH") {
        env.push(DEFAULT_PATH.into());
    }
    let user = resolve_user(string(c, "User")?, read)?;
    if let Some(home) = user.home.as_ref().filter(|_| !has(&env, "HOME")) {
        env.push(format!("HOME={home}"));
    }
    let cwd = match string(c, "WorkingDir")? {
        "" => "/",
        d if d.starts_with('/') => d,
        d => return Err(format!("image config WorkingDir '{d}' is not an absolute path")),
    };

    let mut annotations = Map::new();
    annotations.insert("org.opencontainers.image.os".into(), json!(p.os));
    annotations.insert("org.opencontainers.image.architecture".into(), json!(p.arch));
    if let Some(v) = &p.variant {
        annotations.insert("org.opencontainers.image.variant".into(), json!(v));
    }
    if let Some(created) = image.created {
        annotations.insert("org.opencontainers.image.created".into(), json!(created));
    }
    let stop = string(c, "StopSignal")?;
    if !stop.is_empty() {
        annotations.insert("org.opencontainers.image.stopSignal".into(), json!(stop));
    }
    let object = |key: &str| match c.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(v) => Err(format!("image config {key}: {v} is not an object")),
    };
    let ports: Vec<String> = object("ExposedPorts")?.keys().cloned().collect();
    if !ports.is_empty() {
        annotations.insert("org.opencontainers.image.exposedPorts".into(), json!(ports.join(",")));
    }
    // Labels take precedence over the implicit annotations.
    for (k, v) in object("Labels")? {
        let v = v.as_str().ok_or_else(|| format!("image config Labels: {k} is not a string"))?;
        annotations.insert(k, json!(v));
    }

    let mut mounts = default_mounts();
    // Volumes get a tmpfs each, so what is written there does not go to the (read-only) root.
    for vol in object("Volumes")?.keys() {
        if !vol.starts_with('/') {
            return Err(format!("image config Volumes: '{vol}' is not an absolute path"));
        }
        mounts.as_array_mut().unwrap().push(json!({
            "destination": vol, "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nosuid", "nodev", "mode=755"]
        }));
    }
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut process_user = json!({"uid": user.uid, "gid": user.gid});
    if !user.additional_gids.is_empty() {
        process_user["additionalGids"] = json!(user.additional_gids);
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": process_user,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/var/empty:/bin/false\nalice:x:1000:100:Alice:/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nwheel:x:10:alice,bob\nvideo:x:44:alice\n";

    fn files(path: &str) -> Option<Vec<u8>> {
        match path {
            "/etc/passwd" => Some(PASSWD.into()),
            "/etc/group" => Some(GROUP.into()),
            _ => None,
        }
    }

    fn none(_: &str) -> Option<Vec<u8>> {
        None
    }

    fn config(json: Value) -> Map<String, Value> {
        json.as_object().unwrap().clone()
    }

    fn convert(c: Value, read: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<Value, String> {
        let c = config(c);
        let p = Platform::new("linux", "arm64", "v8").unwrap();
        runtime_config("img", &Image { config: &c, platform: &p, created: Some("2024-05-13T09:31:10Z") }, read)
    }

    #[test]
    fn entrypoint_then_cmd_make_the_args() {
        let rc = convert(json!({"Entrypoint": ["/bin/app", "-v"], "Cmd": ["serve"]}), &none).unwrap();
        assert_eq!(rc["process"]["args"], json!(["/bin/app", "-v", "serve"]));
        let c = config(json!({"Entrypoint": ["/bin/app"], "Cmd": ["serve"]}));
        let replaced = ["other".to_string()];
        assert_eq!(command(&c, Some(&replaced)).unwrap(), (vec!["/bin/app".into()], vec!["other".into()]));
        assert_eq!(convert(json!({"Cmd": ["sh"]}), &none).unwrap()["process"]["args"], json!(["sh"]));
        assert_eq!(convert(json!({"Entrypoint": ["e"], "Cmd": null}), &none).unwrap()["process"]["args"], json!(["e"]));
        assert!(convert(json!({}), &none).unwrap_err().contains("neither Entrypoint nor Cmd"));
        assert!(convert(json!({"Cmd": "sh"}), &none).unwrap_err().contains("Cmd"));
    }

    #[test]
    fn env_and_cwd_are_verbatim_with_a_default_path() {
        let rc = convert(json!({"Env": ["A=1", "B="], "Cmd": ["x"], "WorkingDir": "/srv"}), &none).unwrap();
        assert_eq!(rc["process"]["env"], json!(["A=1", "B=", DEFAULT_PATH]));
        assert_eq!(rc["process"]["cwd"], "/srv");
        let rc = convert(json!({"Env": ["PATH=/bin"], "Cmd": ["x"]}), &none).unwrap();
        assert_eq!(rc["process"]["env"], json!(["PATH=/bin"]), "the image's PATH is kept, nothing added");
        assert_eq!(rc["process"]["cwd"], "/");
        assert!(convert(json!({"Env": ["NOEQUALS"], "Cmd": ["x"]}), &none).unwrap_err().contains("'NOEQUALS'"));
        assert!(convert(json!({"Env": ["=x"], "Cmd": ["x"]}), &none).unwrap_err().contains("NAME=VALUE"));
        assert!(convert(json!({"Cmd": ["x"], "WorkingDir": "srv"}), &none).unwrap_err().contains("absolute"));
    }

    #[test]
    fn numeric_users_are_verbatim_and_need_no_passwd() {
        let u = |s| resolve_user(s, &none).unwrap();
        assert_eq!(u(""), User { uid: 0, gid: 0, additional_gids: vec![], home: None });
        assert_eq!(u("1001"), User { uid: 1001, gid: 0, additional_gids: vec![], home: None });
        assert_eq!(u("1001:1002"), User { uid: 1001, gid: 1002, additional_gids: vec![], home: None });
        assert!(resolve_user("alice", &none).unwrap_err().contains("'alice' is not in the image's /etc/passwd"));
        assert!(resolve_user("0:wheel", &none).unwrap_err().contains("'wheel' is not in the image's /etc/group"));
    }

    #[test]
    fn names_are_looked_up_in_the_image() {
        let u = |s| resolve_user(s, &files).unwrap();
        assert_eq!(u("alice"), User { uid: 1000, gid: 100, additional_gids: vec![10, 44], home: Some("/home/alice".into()) });
        // A listed uid gets its entry's group and groups too.
        assert_eq!(u("1000"), u("alice"));
        // A group given: no supplementary groups.
        assert_eq!(u("alice:wheel"), User { uid: 1000, gid: 10, additional_gids: vec![], home: Some("/home/alice".into()) });
        assert_eq!(u("nobody:5").gid, 5);
        assert_eq!(u("").home.as_deref(), Some("/root"));
        assert!(resolve_user("mallory", &files).unwrap_err().contains("'mallory'"));
    }

    #[test]
    fn user_and_home_reach_the_process() {
        let rc = convert(json!({"User": "alice", "Cmd": ["x"]}), &files).unwrap();
        assert_eq!(rc["process"]["user"], json!({"uid": 1000, "gid": 100, "additionalGids": [10, 44]}));
        assert!(rc["process"]["env"].as_array().unwrap().contains(&json!("HOME=/home/alice")));
        let rc = convert(json!({"User": "alice", "Env": ["HOME=/x"], "Cmd": ["x"]}), &files).unwrap();
        let homes: Vec<&Value> = rc["process"]["env"].as_array().unwrap().iter().filter(|e| e.as_str().unwrap().starts_with("HOME=")).collect();
        assert_eq!(homes, [&json!("HOME=/x")], "an image's HOME is never changed");
        assert!(convert(json!({"User": "bob", "Cmd": ["x"]}), &files).unwrap_err().contains("'bob'"));
    }

    #[test]
    fn annotations_come_from_the_config_and_labels_win() {
        let rc = convert(
            json!({"Cmd": ["x"], "StopSignal": "SIGINT", "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
                   "Labels": {"org.opencontainers.image.architecture": "mine", "a": "b"}}),
            &none,
        )
        .unwrap();
        assert_eq!(
            rc["annotations"],
            json!({"org.opencontainers.image.os": "linux", "org.opencontainers.image.architecture": "mine",
                   "org.opencontainers.image.variant": "v8", "org.opencontainers.image.created": "2024-05-13T09:31:10Z", "org.opencontainers.image.stopSignal": "SIGINT",
                   "org.opencontainers.image.exposedPorts": "80/tcp,53/udp", "a": "b"})
        );
    }

    #[test]
    fn a_read_only_root_needs_its_mount_points_in_the_image() {
        let rc = convert(json!({"Cmd": ["x"], "Volumes": {"/data": {}, "/dev/x": {}}}), &none).unwrap();
        assert_eq!(rc["root"], json!({"path": "rootfs", "readonly": true}));
        assert_eq!(rc["process"]["terminal"], false);
        assert_eq!(mount_points(&rc), ["/proc", "/dev", "/sys", "/data"]);
        assert!(convert(json!({"Cmd": ["x"], "Volumes": {"data": {}}}), &none).unwrap_err().contains("'data'"));
    }

    #[test]
    fn only_linux_runs() {
        let c = config(json!({"Cmd": ["x"]}));
        let p = Platform::new("windows", "amd64", "").unwrap();
        let err = runtime_config("img", &Image { config: &c, platform: &p, created: None }, &none).unwrap_err();
        assert!(err.contains("windows"), "{err}");
    }
}
