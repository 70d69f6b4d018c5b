//! The platform an image runs on (`os`/`arch`/`variant` of a description): the OCI `platform`
//! of an index entry and the config's `architecture`/`os`/`variant`. Names are Go's (GOOS,
//! GOARCH), as every OCI tool writes and matches them.

use serde_json::{json, Value};
use std::fmt;

/// GOARCH values Go builds Linux binaries for (`go tool dist list`).
const ARCHES: &[&str] =
    &["386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64", "ppc64le", "riscv64", "s390x"];

/// GOOS values (`go tool dist list`); images built by Nix are `linux`, the default.
const OSES: &[&str] = &[
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux", "netbsd", "openbsd", "plan9",
    "solaris", "windows",
];

/// Variants where the OCI image spec and the tools that match platforms (containers/image,
/// containerd) define them: ARM versions, and amd64 micro-architecture levels (GOAMD64).
fn variants(arch: &str) -> &'static [&'static str] {
    match arch {
        "arm" => &["v5", "v6", "v7", "v8"],
        "arm64" => &["v8"],
        "amd64" => &["v1", "v2", "v3", "v4"],
        _ => &[],
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from a description's keys; an empty `os` is `linux`, an empty `arch` the host's.
    pub fn new(os: &str, arch: &str, variant: &str) -> Result<Platform, String> {
        let os = if os.is_empty() { "linux" } else { os };
        let arch = if arch.is_empty() { host_arch() } else { arch };
        if !OSES.contains(&os) {
            return Err(format!("unknown os '{os}' (GOOS names: {})", OSES.join(", ")));
        }
        if !ARCHES.contains(&arch) {
            return Err(format!("unknown arch '{arch}' (GOARCH names: {})", ARCHES.join(", ")));
        }
        let variant = match variant {
            "" => None,
            v if variants(arch).contains(&v) => Some(v.to_string()),
            v if variants(arch).is_empty() => return Err(format!("arch '{arch}' has no variants, not '{v}'")),
            v => return Err(format!("unknown variant '{v}' of arch '{arch}' (one of: {})", variants(arch).join(", "))),
        };
        Ok(Platform { os: os.into(), arch: arch.into(), variant })
    }

    /// The mount host's platform.
    pub fn host() -> Platform {
        Platform { os: "linux".into(), arch: host_arch().into(), variant: None }
    }

    /// The same platform for the tools that pick an image from an index: a missing variant is
    /// the arch's baseline, as containerd normalises it (arm64 = arm64/v8, arm = arm/v7).
    pub fn same_as(&self, other: &Platform) -> bool {
        let baseline = |p: &Platform| {
            p.variant.clone().or_else(|| match p.arch.as_str() {
                "arm64" => Some("v8".into()),
                "arm" => Some("v7".into()),
                "amd64" => Some("v1".into()),
                _ => None,
            })
        };
        (&self.os, &self.arch, baseline(self)) == (&other.os, &other.arch, baseline(other))
    }

    /// The OCI `platform` object, keys in the spec's order.
    pub fn to_json(&self) -> Value {
        let mut p = json!({"architecture": self.arch, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "loongarch64" => "loong64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_json() {
        let p = Platform::new("", "arm64", "v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(serde_json::to_string(&p.to_json()).unwrap(), r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#);
        assert_eq!(Platform::new("", "", "").unwrap(), Platform::host());
        assert_eq!(Platform::new("linux", "amd64", "").unwrap().to_json(), json!({"architecture": "amd64", "os": "linux"}));
        let p = |arch, variant| Platform::new("", arch, variant).unwrap();
        assert!(p("arm64", "").same_as(&p("arm64", "v8")));
        assert!(p("arm", "v7").same_as(&p("arm", "")));
        assert!(!p("arm", "v6").same_as(&p("arm", "")));
        assert!(!p("amd64", "v3").same_as(&p("amd64", "")));
        assert!(!p("amd64", "").same_as(&p("arm64", "")));
    }

    #[test]
    fn refuses_unknown_names_with_the_accepted_ones() {
        assert!(Platform::new("", "x86_64", "").unwrap_err().contains("unknown arch 'x86_64' (GOARCH names: 386, amd64"));
        assert!(Platform::new("", "aarch64", "").unwrap_err().contains("unknown arch 'aarch64'"));
        assert!(Platform::new("Linux", "amd64", "").unwrap_err().contains("unknown os 'Linux'"));
        assert!(Platform::new("", "arm64", "v7").unwrap_err().contains("unknown variant 'v7' of arch 'arm64' (one of: v8)"));
        assert!(Platform::new("", "riscv64", "v1").unwrap_err().contains("no variants"));
        assert_eq!(Platform::new("", "arm", "v7").unwrap().variant.as_deref(), Some("v7"));
    }
}
