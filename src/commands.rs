//! The one-shot commands: export, digest, check, and the JSON helpers `plan` builds on. They read
//! layers through the same index the mount serves from.

use crate::blob::Blob;
use crate::description::Description;
use crate::digest::{hex, sha256_blob, DigestCache};
use crate::entry::Prepared;
use crate::image::{layer_digests, prepare, IndexCache};
use crate::image_index::{is_index, no_host_image};
use crate::views::{self, Node, Tree, ARCHIVE, DIR_ROOT, OCI_ROOT};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

fn load(path: &Path) -> Result<(serde_json::Value, Description), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if is_index(&bytes) {
        return Err(format!("{} is an image index: give one of its images' descriptions", path.display()));
    }
    let value = serde_json::from_slice(&bytes).map_err(|e| format!("{}: malformed JSON: {e}", path.display()))?;
    let desc = Description::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((value, desc))
}

/// An image name for a description file: its name without `.json`.
pub fn name_of(path: &Path) -> String {
    let f = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    f.strip_suffix(".json").unwrap_or(&f).to_string()
}

/// Copy a blob to a file, hashing it on the way when it has a digest to match.
fn write_blob(blob: &dyn Blob, digest: Option<&str>, out: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", out.display());
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out).map_err(fail)?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < blob.size() {
        let n = (blob.size() - offset).min(buf.len() as u64) as usize;
        blob.read_at(offset, &mut buf[..n]).map_err(fail)?;
        if digest.is_some() {
            h.update(&buf[..n]);
        }
        f.write_all(&buf[..n]).map_err(fail)?;
        offset += n as u64;
    }
    f.flush().map_err(fail)?;
    if let Some(want) = digest {
        let got = format!("sha256:{}", hex(&h.finalize()));
        if got != want {
            return Err(format!("{}: digest mismatch: the bytes hash to {got}, the description says {want}", out.display()));
        }
    }
    Ok(())
}

fn materialize(tree: &Tree, node: usize, out: &Path) -> Result<(), String> {
    match &tree.nodes[node] {
        Node::Dir(children) => {
            std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
            children.iter().try_for_each(|(name, id)| materialize(tree, *id, &out.join(name)))
        }
        Node::Blob(b) => write_blob(b.as_ref(), Some(&b.digest), out),
        Node::Plain(b) => write_blob(b.as_ref(), None, out),
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// OCI image layout directory
    Oci,
    /// skopeo dir: layout directory
    Dir,
    /// docker-archive tar file
    Archive,
}

/// Write one view of a description (an image or an index) as real files.
pub fn export(desc_path: &Path, out: &Path, format: Format, cache: &DigestCache) -> Result<(), String> {
    let name = name_of(desc_path);
    let fail = |e: String| format!("{}: {e}", desc_path.display());
    let prepared = Prepared::load(&name, desc_path, &IndexCache::default()).map_err(fail)?;
    let entry = prepared.build(&name, cache).map_err(fail)?;
    let tree = views::build(&name, &entry);
    let node = match format {
        Format::Oci => OCI_ROOT,
        Format::Dir => DIR_ROOT,
        Format::Archive if entry.archive_image().is_none() => {
            return Err(fail(format!("no docker-archive: {}", no_host_image())))
        }
        Format::Archive => ARCHIVE,
    };
    materialize(&tree, node, out)
}

/// The description with every layer's digest, diff_ids and size filled in.
pub fn digest(desc_path: &Path, cache: &DigestCache) -> Result<String, String> {
    let (mut value, _) = load(desc_path)?;
    fill_digests(&mut value, &name_of(desc_path), cache).map_err(|e| format!("{}: {e}", desc_path.display()))?;
    Ok(pretty(&value))
}

/// Fills in every layer's digest, diff_ids and size of a description held as JSON.
pub fn fill_digests(value: &mut serde_json::Value, name: &str, cache: &DigestCache) -> Result<(), String> {
    let desc = Description::parse(&serde_json::to_vec(value).unwrap())?;
    let (_, layers) = prepare(name, desc, &IndexCache::default())?;
    if let Some((i, why)) = layers.iter().enumerate().find_map(|(i, l)| Some((i, l.size_mismatch.as_ref()?))) {
        return Err(format!("layer {i}: {why}"));
    }
    let digests = layer_digests(&layers, cache)?;
    let json_layers = value.get_mut("layers").and_then(|l| l.as_array_mut());
    for ((l, d), v) in layers.iter().zip(&digests).zip(json_layers.into_iter().flatten()) {
        v["digest"] = d.clone().into();
        v["diff_ids"] = l.desc.diff_id.clone().unwrap_or_else(|| d.clone()).into();
        v["size"] = l.blob.size().into();
    }
    Ok(())
}

/// Writes the tar of the one layer of a description held as JSON, read through the same index
/// the mount serves from.
pub fn write_layer_tar(value: &serde_json::Value, out: &Path) -> Result<(), String> {
    let desc = Description::parse(&serde_json::to_vec(value).unwrap())?;
    let (_, layers) = prepare(&name_of(out), desc, &IndexCache::default())?;
    let [layer] = &layers[..] else { return Err(format!("{}: one layer expected, not {}", out.display(), layers.len())) };
    write_blob(layer.blob.as_ref(), None, out)
}

/// JSON indented with tabs, as nix2container writes it (Go's json.MarshalIndent).
pub fn pretty(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"\t"));
    serde::Serialize::serialize(value, &mut ser).unwrap();
    out.push(b'\n');
    String::from_utf8(out).unwrap()
}

/// Hash every layer and compare with the description; Ok(false) when something differs.
pub fn check(desc_path: &Path) -> Result<bool, String> {
    let (_, desc) = load(desc_path)?;
    let (_, layers) = prepare(&name_of(desc_path), desc, &IndexCache::default())?;
    let mut ok = true;
    for (i, l) in layers.iter().enumerate() {
        let got = sha256_blob(l.blob.as_ref()).map_err(|e| format!("layer {i}: {e}"))?;
        let size = l.blob.size();
        let mut problems = Vec::new();
        if let Some(want) = l.desc.digest.as_ref().filter(|w| **w != got) {
            problems.push(format!("digest {want} in the description, {got} from the store"));
        }
        if let Some(want) = l.desc.size.filter(|w| *w != size) {
            problems.push(format!("size {want} in the description, {size} from the store"));
        }
        if problems.is_empty() {
            println!("layer {i}: ok {got} ({size} bytes)");
        } else {
            ok = false;
            println!("layer {i}: MISMATCH: {}", problems.join("; "));
        }
    }
    Ok(ok)
}
