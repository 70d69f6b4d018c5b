//! The images directory: which descriptions exist, loaded and indexed once per change of their
//! file, with digests computed in the background. A bad description is logged once and hides
//! nothing else; one still being written is not reported until it is complete.

use crate::digest::DigestCache;
use crate::entry::{Entry, Prepared};
use crate::image::IndexCache;
use crate::image_index::no_host_image;
use crate::views::{self, FileViews, Tree};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// What identifies one version of a description file (symlink target and file metadata).
#[derive(Clone, PartialEq, Eq, Debug)]
struct Fingerprint(Option<PathBuf>, u64, u64, u64, i64, i64);

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let link = std::fs::read_link(path).ok();
    let md = std::fs::metadata(path)?;
    Ok(Fingerprint(link, md.dev(), md.ino(), md.len(), md.mtime(), md.ctime_nsec()))
}

/// Image names every tool can take: lowercase alphanumerics separated by one `.`, `_` or `-`
/// (the reference grammar's path component; `:` would split `oci:PATH:TAG`).
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
        && !b.windows(2).any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric());
    if !ok {
        return Err(format!("name '{name}' is not usable by container tools: use lowercase letters and digits separated by single '.', '_' or '-'"));
    }
    if [".dir", ".tar", ".rootfs", ".bundle"].iter().any(|s| name.ends_with(s)) {
        return Err(format!("name '{name}' ends in .dir, .tar, .rootfs or .bundle, which the mount uses for its other views"));
    }
    Ok(())
}

pub type Served = Arc<(Entry, Tree)>;

pub struct CatalogImage {
    pub name: String,
    pub serial: u64,
    /// The description file, symlinks resolved (what `nixoci copy` matches a mount by).
    pub source: PathBuf,
    fingerprint: Fingerprint,
    has_archive: bool,
    pending: Mutex<Option<Prepared>>,
    ready: OnceLock<Result<Served, String>>,
    cache: Arc<DigestCache>,
    /// NAME.rootfs and NAME.bundle, served from the layer indexes before digests are known.
    pub files: FileViews,
    /// Lookups of this image's inodes the kernel has not forgotten: while it holds any (a
    /// container's root, an open file), a replaced image keeps answering under them.
    pub lookups: AtomicU64,
}

impl CatalogImage {
    /// The image with its digests, computed on first need (once; other callers wait).
    pub fn get(&self) -> Result<Served, String> {
        self.ready
            .get_or_init(|| {
                let prepared = self.pending.lock().unwrap().take().expect("prepared once");
                let started = Instant::now();
                let res = prepared.build(&self.name, &self.cache).map(|entry| {
                    let tree = views::build(&self.name, &entry);
                    Arc::new((entry, tree))
                });
                match &res {
                    Ok(s) => {
                        let kind = if matches!(s.0, Entry::Index(_)) { "image index" } else { "manifest" };
                        log::info!("image {}: ready, {kind} {} ({:.2?})", self.name, s.0.manifests()[0].digest, started.elapsed())
                    }
                    Err(e) => log::error!("image {}: {e}", self.name),
                }
                res
            })
            .clone()
    }

    /// The names this image takes at the top of the mount.
    pub fn top_names(&self) -> Vec<(String, usize)> {
        let shown = |node: usize| match node {
            views::ARCHIVE => self.has_archive,
            views::ROOTFS_ROOT => self.files.rootfs.is_some(),
            views::BUNDLE_ROOT => self.files.bundle.is_some(),
            _ => true,
        };
        views::top_names(&self.name).into_iter().filter(|(_, node)| shown(*node)).collect()
    }
}

/// How long a replaced image keeps answering under its old inodes at least; after that, as long
/// as the kernel holds any of them (a running container keeps the tree it started with).
const RETIRED_FOR: Duration = Duration::from_secs(5);

/// A description that fails to load within this time of its last change may still be being
/// written: it is tried again at the next scan (about every second) before it is reported.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    by_name: BTreeMap<String, Arc<CatalogImage>>,
    by_serial: HashMap<u64, Arc<CatalogImage>>,
    retired: Vec<(Instant, Arc<CatalogImage>)>,
    /// Files that failed, with the version that failed, so each failure is logged once.
    refused: HashMap<PathBuf, Option<Fingerprint>>,
}

pub struct Catalog {
    dir: PathBuf,
    cache: Arc<DigestCache>,
    indexes: IndexCache,
    /// Names whose image changed, for the kernel's dentry cache to forget (see `mount`).
    changed: Mutex<Option<Sender<String>>>,
    /// Images whose digests the background thread is to compute, one image at a time (a
    /// thousand new images sharing layers compute each layer once, then read the cache).
    background: Sender<Arc<CatalogImage>>,
    /// Files open for writing (inotify saw them modified and not closed yet).
    writing: Mutex<HashSet<PathBuf>>,
    state: RwLock<State>,
    scan_lock: Mutex<Instant>,
    next_serial: AtomicU64,
}

impl Catalog {
    pub fn new(dir: PathBuf, cache: DigestCache) -> Arc<Catalog> {
        let (background, todo) = std::sync::mpsc::channel::<Arc<CatalogImage>>();
        std::thread::spawn(move || {
            for img in todo {
                let _ = img.get();
            }
        });
        let c = Arc::new(Catalog {
            dir,
            cache: Arc::new(cache),
            indexes: IndexCache::default(),
            changed: Mutex::new(None),
            background,
            writing: Mutex::default(),
            state: RwLock::default(),
            scan_lock: Mutex::new(Instant::now() - Duration::from_secs(60)),
            next_serial: AtomicU64::new(1),
        });
        c.scan();
        c
    }

    /// Receive the names of images that appear, change or go.
    pub fn watch_changes(&self) -> std::sync::mpsc::Receiver<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.changed.lock().unwrap() = Some(tx);
        rx
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn names(&self) -> Vec<Arc<CatalogImage>> {
        self.state.read().unwrap().by_name.values().cloned().collect()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<CatalogImage>> {
        self.state.read().unwrap().by_name.get(name).cloned()
    }

    pub fn by_serial(&self, serial: u64) -> Option<Arc<CatalogImage>> {
        self.state.read().unwrap().by_serial.get(&serial).cloned()
    }

    /// Rescan unless a scan finished less than `min_age` ago.
    pub fn refresh(&self, min_age: Duration) {
        let last = self.scan_lock.lock().unwrap();
        if last.elapsed() >= min_age {
            drop(last);
            self.scan();
        }
    }

    /// Whether `file` (in the images directory) is open for writing, as inotify tells.
    pub fn set_writing(&self, file: PathBuf, writing: bool) {
        let mut w = self.writing.lock().unwrap();
        if writing { w.insert(file) } else { w.remove(&file) };
    }

    /// Forget what inotify said (its queue overflowed): only the settle time counts.
    pub fn clear_writing(&self) {
        self.writing.lock().unwrap().clear();
    }

    /// A file open for writing, or changed less than `SETTLE` ago, may not be complete yet.
    fn maybe_incomplete(&self, file: &Path) -> bool {
        let changed = std::fs::metadata(file).and_then(|m| m.modified());
        let recent = changed.is_ok_and(|t| SystemTime::now().duration_since(t).is_ok_and(|age| age < SETTLE));
        recent || self.writing.lock().unwrap().contains(file)
    }

    fn refuse(&self, file: &Path, fp: Option<Fingerprint>, why: &str) {
        let mut st = self.state.write().unwrap();
        if st.refused.get(file) != Some(&fp) {
            log::error!("refusing image description {}: {why}", file.display());
            st.refused.insert(file.to_path_buf(), fp);
        }
    }

    /// Read the directory, load what is new or changed, drop what is gone.
    pub fn scan(&self) {
        let mut last = self.scan_lock.lock().unwrap();
        let mut found: BTreeMap<String, (PathBuf, Fingerprint)> = BTreeMap::new();
        let mut entries = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) => {
                log::error!("cannot read images directory {}: {e}", self.dir.display());
                Vec::new()
            }
        };
        entries.sort();
        for file in entries {
            let Some(fname) = file.file_name().and_then(|f| f.to_str()).map(str::to_string) else {
                self.refuse(&file, None, "file name is not UTF-8");
                continue;
            };
            if fname.starts_with('.') {
                continue;
            }
            let name = fname.strip_suffix(".json").unwrap_or(&fname).to_string();
            let fp = match fingerprint(&file) {
                Ok(fp) => fp,
                Err(e) => {
                    self.refuse(&file, None, &format!("cannot read: {e}"));
                    continue;
                }
            };
            if let Err(e) = check_name(&name) {
                self.refuse(&file, Some(fp), &e);
                continue;
            }
            if let Some((other, _)) = found.get(&name) {
                self.refuse(&file, Some(fp), &format!("image '{name}' is already described by {}", other.display()));
                continue;
            }
            found.insert(name, (file, fp));
        }

        let current: BTreeMap<String, Arc<CatalogImage>> = self.state.read().unwrap().by_name.clone();
        let mut next = BTreeMap::new();
        for (name, (file, fp)) in found {
            if let Some(img) = current.get(&name).filter(|i| i.fingerprint == fp) {
                next.insert(name, img.clone());
                continue;
            }
            if self.state.read().unwrap().refused.get(&file) == Some(&Some(fp.clone())) {
                continue; // this very version failed before
            }
            match Prepared::load(&name, &file, &self.indexes) {
                Ok(prepared) => {
                    let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
                    let has_archive = prepared.has_archive();
                    if !has_archive {
                        log::info!("image {name}: no {name}.tar: {}", no_host_image());
                    }
                    let files = FileViews::new(&name, prepared.host_image());
                    let img = Arc::new(CatalogImage {
                        name: name.clone(),
                        serial,
                        source: file.canonicalize().unwrap_or_else(|_| file.clone()),
                        fingerprint: fp,
                        has_archive,
                        pending: Mutex::new(Some(prepared)),
                        ready: OnceLock::new(),
                        cache: self.cache.clone(),
                        files,
                        lookups: AtomicU64::new(0),
                    });
                    log::info!("image {name}: loaded from {}", file.display());
                    // Digests in the background, so the first client rarely waits.
                    let _ = self.background.send(img.clone());
                    self.state.write().unwrap().refused.remove(&file);
                    next.insert(name, img);
                }
                Err(e) if self.maybe_incomplete(&file) => log::debug!("{}: not loaded yet ({e}); it may still be being written", file.display()),
                Err(e) => self.refuse(&file, Some(fp), &e),
            }
        }
        let mut guard = self.state.write().unwrap();
        let st = &mut *guard;
        let now = Instant::now();
        let mut changed: Vec<String> = next.keys().filter(|n| !st.by_name.contains_key(*n)).cloned().collect();
        for (name, old) in &st.by_name {
            if next.get(name).is_some_and(|new| Arc::ptr_eq(new, old)) {
                continue;
            }
            if !next.contains_key(name) {
                log::info!("image {name}: removed");
            }
            changed.push(name.clone());
            st.retired.push((now, old.clone()));
        }
        st.retired.retain(|(at, img)| {
            let keep = now.duration_since(*at) < RETIRED_FOR || img.lookups.load(Ordering::Relaxed) > 0;
            if !keep {
                log::info!("image {}: the replaced version (serial {}) is no longer in use", img.name, img.serial);
            }
            keep
        });
        st.by_serial = next.values().chain(st.retired.iter().map(|(_, i)| i)).map(|i| (i.serial, i.clone())).collect();
        st.by_name = next;
        drop(guard);
        if let Some(tx) = self.changed.lock().unwrap().as_ref() {
            for name in changed {
                let _ = tx.send(name);
            }
        }
        *last = Instant::now();
    }
}
