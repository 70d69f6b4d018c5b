//! The Docker engine and its containerd reading the mount: `docker load` of NAME.tar and
//! `docker run`, `docker pull` from a registry skopeo pushed the mount's image to, and
//! `ctr images import`. Each also reads `nixoci export` output where it takes a file. All tests
//! here share one dockerd (`Docker::shared`); each uses image names and namespaces of its own.

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::PathBuf;
use tempfile::TempDir;

const GREETING: &str = "Hello from a Nix-built image served by nixoci!";

/// A mount serving the hello fixture as `name`, and the mount's image (config, diff_ids).
fn serve(name: &str) -> (Mount, ImageId) {
    let m = Mount::new(&[(&format!("{name}.json"), &fixture("hello-image"))]);
    let want = oci_image_id(&m.mnt.join(name));
    (m, want)
}

/// `nixoci export --format archive` of the hello fixture, its image named `name`.
fn exported_archive(name: &str) -> (TempDir, PathBuf) {
    let (t, dir) = temp_dir();
    let description = dir.join(format!("{name}.json"));
    link_image(&dir, &format!("{name}.json"), &fixture("hello-image"));
    let archive = dir.join(format!("{name}.tar"));
    nixoci_export(&description, "archive", &archive);
    (t, archive)
}

/// Docker holds the image under `reference` with the served config (its image ID is the
/// config's digest, so the same bytes) and the served layers, and runs it offline.
fn assert_docker_runs(docker: &Docker, reference: &str, want: &ImageId) {
    let inspected = docker.inspect(reference);
    assert_eq!(inspected["Id"], want.config.as_str(), "image ID = config digest: {inspected}");
    assert_eq!(inspected["RootFS"]["Layers"], serde_json::json!(want.diff_ids), "layers of {reference}");
    let out = stdout(&docker.run(["run", "--rm", "--network", "none", reference, "offline"]));
    assert!(out.contains(GREETING) && out.contains("args: offline"), "docker run {reference} printed: {out}");
}

#[test]
fn docker_load_runs_the_mounted_and_the_exported_archive() {
    let docker = Docker::shared();
    let (m, want) = serve("load");
    let loaded = stdout(&docker.run([OsStr::new("load"), OsStr::new("-i"), m.mnt.join("load.tar").as_os_str()]));
    assert_eq!(loaded.trim(), "Loaded image: load:latest", "docker load of the mount");
    assert_docker_runs(docker, "load:latest", &want);

    let (_t, archive) = exported_archive("exported");
    let loaded = stdout(&docker.run([OsStr::new("load"), OsStr::new("-i"), archive.as_os_str()]));
    assert_eq!(loaded.trim(), "Loaded image: exported:latest", "docker load of the export");
    assert_docker_runs(docker, "exported:latest", &want);
}

#[test]
fn docker_pulls_what_skopeo_pushed_from_the_mount() {
    let docker = Docker::shared();
    let (m, want) = serve("pushed");
    let registry = Registry::start();
    let skopeo = FreshSkopeo::new();
    let dest = registry.reference("pushed:latest");
    run(skopeo.cmd().args(["copy", "--quiet", "--dest-tls-verify=false"]).arg(format!("oci:{}/pushed", m.mnt.display())).arg(&dest));
    let manifest = run(skopeo.cmd().args(["inspect", "--raw", "--tls-verify=false"]).arg(&dest)).stdout;
    // Docker pulls from 127.0.0.0/8 over plain HTTP without --insecure-registries (its default).
    let reference = format!("127.0.0.1:{}/pushed:latest", registry.port);
    docker.run(["pull", "--quiet", &reference]);
    let inspected = docker.inspect(&reference);
    let digest = format!("127.0.0.1:{}/pushed@sha256:{}", registry.port, sha256_hex(&manifest));
    assert_eq!(inspected["RepoDigests"], serde_json::json!([digest]), "the pushed manifest");
    assert_docker_runs(docker, &reference, &want);
}

/// `ctr images ls` rows in `namespace` as (REF, TYPE, DIGEST).
fn ctr_images(docker: &Docker, namespace: &str) -> Vec<(String, String, String)> {
    let out = stdout(&run(docker.ctr().args(["-n", namespace, "images", "ls"])));
    out.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// The archive holds an OCI layout (oci-layout, index.json) and Docker's manifest.json.
/// containerd 1.6's importer prefers the OCI layout when `oci-layout` is there: it takes the
/// archive's index.json as is and names each manifest after its `io.containerd.image.name`
/// annotation, unnormalised; manifest.json is ignored (from it, containerd would have written a
/// Docker manifest of its own, with gzipped layers, under another digest). So ctr lists exactly
/// one image, `NAME:latest`, whose digest is the served OCI manifest's.
#[test]
fn ctr_imports_the_archive_under_the_served_manifest_digest() {
    let docker = Docker::shared();
    let (m, _) = serve("imported");
    let manifest = index_manifest_digest(&m.mnt.join("imported"));
    let (_t, exported) = exported_archive("exported");
    let namespace = "nixoci-ctr-test";
    for (archive, name) in [(m.mnt.join("imported.tar"), "imported:latest"), (exported, "exported:latest")] {
        let out = stdout(&run(docker.ctr().args(["-n", namespace, "images", "import"]).arg(&archive)));
        assert!(out.contains(&format!("unpacking {name} ({manifest})...done")), "ctr import {}: {out}", archive.display());
    }
    let oci = "application/vnd.oci.image.manifest.v1+json".to_string();
    assert_eq!(
        ctr_images(docker, namespace),
        [("exported:latest".to_string(), oci.clone(), manifest.clone()), ("imported:latest".to_string(), oci, manifest)],
        "ctr images ls"
    );
}
