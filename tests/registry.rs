//! Pushing from the mount to a real registry (the distribution registry, `docker-registry`):
//! a one-file edit of the app closure (corpus.nix app -> app2) re-pushes only the changed layer,
//! the config and the manifest; the unchanged busybox and python layers are only HEADed.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// The manifest the registry holds for REPO:TAG.
fn registry_manifest(reg: &Registry, repo_tag: &str) -> Value {
    let raw = run(tool("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(reg.reference(repo_tag))).stdout;
    serde_json::from_slice(&raw).unwrap()
}

fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

/// The digest a finished blob upload names: `PUT /v2/…/blobs/uploads/<id>?…&digest=sha256%3A<hex>`.
fn uploaded_digest(uri: &str) -> Option<String> {
    let q = uri.split_once("/blobs/uploads/")?.1;
    let d = q.split(['?', '&']).find_map(|p| p.strip_prefix("digest="))?;
    Some(d.replace("%3A", ":").replace("%3a", ":"))
}

#[test]
fn an_edit_pushes_only_the_changed_layer_config_and_manifest() {
    let (_t, tmp) = temp_dir();
    let (app, _) = app_description(&tmp, "app");
    let (app2, _) = app_description(&tmp, "app2");
    let m = Mount::new(&[("app.json", &app)]);
    let layout = m.mnt.join("app");
    let reg = Registry::start();
    let source = format!("oci:{}", layout.display());
    let push = ["--dest-tls-verify=false"];

    let first = oci_image_id(&layout);
    skopeo_copy_ok(&source, &reg.reference("app:1"), &push);
    let pushed1 = registry_manifest(&reg, "app:1");
    let before = reg.requests().len();

    // The edit: the images dir now links the rebuilt description.
    let manifest1 = index_manifest_digest(&layout);
    relink_image(&m.images, "app.json", &app2);
    let (_, errors) = wait_for_new_manifest(&layout, &manifest1, Duration::from_secs(60));
    if !errors.is_empty() {
        // Asserted by the_relinked_image_never_vanishes below; here only the push matters.
        eprintln!("!!! {} failed reads of app/index.json while the mount switched: {:?}", errors.len(), errors[0]);
    }
    let second = oci_image_id(&layout);
    assert_eq!(first.diff_ids[..2], second.diff_ids[..2], "busybox and python layers unchanged");
    assert_ne!(first.diff_ids[2], second.diff_ids[2], "the app layer changed");
    skopeo_copy_ok(&source, &reg.reference("app:2"), &push);

    let requests = reg.requests()[before..].to_vec();
    let show = requests.iter().map(|(m, u)| format!("{m} {u}")).collect::<Vec<_>>().join("\n");
    let count = |method: &str| requests.iter().filter(|(m, _)| m == method).count();
    let pushed2 = registry_manifest(&reg, "app:2");
    let (layers1, layers2) = (layer_digests(&pushed1), layer_digests(&pushed2));
    assert_eq!(layers1[..2], layers2[..2], "app:2 reuses the blobs app:1 pushed for busybox and python");
    assert_ne!(layers1[2], layers2[2]);

    let mut uploaded: Vec<String> = requests.iter().filter(|(m, _)| m == "PUT").filter_map(|(_, u)| uploaded_digest(u)).collect();
    uploaded.sort();
    let mut expected = vec![layers2[2].clone(), pushed2["config"]["digest"].as_str().unwrap().to_string()];
    expected.sort();
    assert_eq!(uploaded, expected, "blobs uploaded by the second push (app layer and config only):\n{show}");
    for reused in &layers2[..2] {
        assert!(
            requests.iter().any(|(m, u)| m == "HEAD" && u.ends_with(reused.as_str())),
            "the second push HEADs the unchanged blob {reused}:\n{show}"
        );
        assert!(
            !requests.iter().any(|(m, u)| m != "HEAD" && m != "GET" && u.contains(reused.as_str())),
            "the unchanged blob {reused} is written again:\n{show}"
        );
    }
    assert_eq!((count("POST"), count("PATCH"), count("PUT")), (2, 2, 3), "POST/PATCH/PUT of the second push (2 blobs + manifest):\n{show}");
    assert!(requests.iter().any(|(m, u)| m == "PUT" && u == "/v2/app/manifests/2"), "{show}");
    eprintln!("second push, {} requests:\n{show}", requests.len());

    // Pulled back, the image is the one served: same config, layers gunzip to the diff_ids.
    let out = tmp.join("pulled");
    skopeo_copy_ok(&reg.reference("app:2"), &format!("dir:{}", out.display()), &["--src-tls-verify=false"]);
    let pulled = verify_dir_copy(&out, &second, true);
    assert_eq!(layer_digests(&pulled), layers2);
}

/// While a description is relinked (a rebuild), every read of NAME/index.json gives the old
/// image or the new one: a client that starts a push at that moment must not get ENOENT.
#[test]
fn the_relinked_image_never_vanishes() {
    let m = Mount::new(&[("img.json", &fixture("busybox-image"))]);
    let layout = m.mnt.join("img");
    let old = index_manifest_digest(&layout);
    relink_image(&m.images, "img.json", &fixture("hello-image"));
    let (_, errors) = wait_for_new_manifest(&layout, &old, Duration::from_secs(30));
    assert!(errors.is_empty(), "{} reads of img/index.json failed during the switch, first: {}", errors.len(), errors[0]);
}
