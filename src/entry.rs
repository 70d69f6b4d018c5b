//! What one description file serves: a single image, or an image index over several (told
//! apart by its JSON). Prepared (layers indexed from the store) when the file is loaded, built
//! (digests known) on first need.

use crate::description::Description;
use crate::digest::DigestCache;
use crate::image::{prepare, Image, IndexCache, PreparedLayer, ServedBlob};
use crate::image_index::{host_entry, is_index, ImageIndex, IndexDescription};
use std::path::Path;
use std::sync::Arc;

pub enum Prepared {
    Image(Description, Vec<PreparedLayer>),
    Index { tag: String, images: Vec<(Description, Vec<PreparedLayer>)> },
}

impl Prepared {
    pub fn load(name: &str, file: &Path, indexes: &IndexCache) -> Result<Prepared, String> {
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
        if !is_index(&bytes) {
            let (desc, layers) = prepare(name, Description::parse(&bytes)?, indexes)?;
            return Ok(Prepared::Image(desc, layers));
        }
        let index = IndexDescription::parse(&bytes)?;
        let images = (index.load_images()?.into_iter().zip(&index.images).enumerate())
            .map(|(i, (d, path))| prepare(&format!("{name} {}", d.platform), d, indexes).map_err(|e| format!("entry {i} ({path}): {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Prepared::Index { tag: index.tag, images })
    }

    /// The image shown alone (NAME.tar, NAME.rootfs, NAME.bundle): the image itself, or an
    /// index's image for the mount host's platform.
    pub fn host_image(&self) -> Option<(&Description, &[PreparedLayer])> {
        match self {
            Prepared::Image(desc, layers) => Some((desc, layers)),
            Prepared::Index { images, .. } => host_entry(images.iter().map(|(d, _)| &d.platform)).map(|i| (&images[i].0, &images[i].1[..])),
        }
    }

    /// Whether NAME.tar is shown: a docker-archive holds one image, so an index shows the one
    /// for the mount host's platform, and none when it has none.
    pub fn has_archive(&self) -> bool {
        self.host_image().is_some()
    }

    pub fn build(self, name: &str, cache: &DigestCache) -> Result<Entry, String> {
        match self {
            Prepared::Image(desc, layers) => Image::build(name, desc, layers, cache).map(Entry::Image),
            Prepared::Index { tag, images } => ImageIndex::build(name, tag, images, cache).map(Entry::Index),
        }
    }
}

pub enum Entry {
    Image(Image),
    Index(ImageIndex),
}

impl Entry {
    /// The OCI layout's index.json.
    pub fn index_json(&self) -> &[u8] {
        match self {
            Entry::Image(i) => &i.index_json,
            Entry::Index(x) => &x.index_json,
        }
    }

    /// The top manifest (an image's manifest or the image index), then an index's image manifests.
    pub fn manifests(&self) -> Vec<Arc<ServedBlob>> {
        match self {
            Entry::Image(i) => vec![i.manifest.clone()],
            Entry::Index(x) => std::iter::once(x.index.clone()).chain(x.images.iter().map(|i| i.manifest.clone())).collect(),
        }
    }

    /// Every distinct blob.
    pub fn blobs(&self) -> Vec<Arc<ServedBlob>> {
        match self {
            Entry::Image(i) => i.blobs(),
            Entry::Index(x) => x.blobs(),
        }
    }

    /// The image shown as NAME.tar (see `Prepared::has_archive`).
    pub fn archive_image(&self) -> Option<&Image> {
        match self {
            Entry::Image(i) => Some(i),
            Entry::Index(x) => x.host.map(|h| &x.images[h]),
        }
    }
}
