//! ImageFolder datasets: `<root>/<name>/{train,val,test}/<class>/<image>`. Classes are the sorted
//! subfolder names of `train` (so NORMAL = 0, PNEUMONIA = 1 for the chest X-ray set).

use super::{check_plain_name, CatalogError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The split names trainq knows, in order. `train` and `test` are required; `val` is optional.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// A dataset as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// Folder name, used in specs.
    pub name: String,
    /// Class names; index = label.
    pub classes: Vec<String>,
    /// The splits present.
    pub splits: Vec<SplitInfo>,
    /// The dataset's folder.
    #[serde(skip)]
    pub path: PathBuf,
}

/// One split's image counts.
#[derive(Debug, Clone, Serialize)]
pub struct SplitInfo {
    /// `train`, `val` or `test`.
    pub name: String,
    /// Images in the split.
    pub images: usize,
    /// Images per class name.
    pub per_class: BTreeMap<String, usize>,
}

impl DatasetInfo {
    /// The split with this name, if present.
    pub fn split(&self, name: &str) -> Option<&SplitInfo> {
        self.splits.iter().find(|split| split.name == name)
    }
}

/// Whether a file name looks like an image trainq decodes (JPEG or PNG).
pub fn is_image_file(path: &Path) -> bool {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(extension.as_deref(), Some("jpg" | "jpeg" | "png"))
}

fn read_dir_sorted(path: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let io = |source| CatalogError::Io { path: path.to_path_buf(), source };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

fn subfolder_names(path: &Path) -> Result<Vec<String>, CatalogError> {
    Ok(read_dir_sorted(path)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
        .filter(|name| !name.starts_with('.'))
        .collect())
}

/// Every image of a split with its class index, in a stable order (class, then file name).
pub fn split_files(dataset_dir: &Path, split: &str, classes: &[String]) -> Result<Vec<(PathBuf, i64)>, CatalogError> {
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dataset_dir.join(split).join(class);
        if !class_dir.is_dir() {
            continue;
        }
        for path in read_dir_sorted(&class_dir)? {
            if path.is_file() && is_image_file(&path) {
                files.push((path, label as i64));
            }
        }
    }
    Ok(files)
}

/// The modification times that say whether a dataset's listing changed: adding, removing or
/// renaming an image changes its class folder's time, a class or a split its parent's. A few stats
/// and three small listings, whatever the number of images. `None` when a folder vanished.
type Stamp = Vec<(PathBuf, SystemTime)>;

fn stamp(path: &Path) -> Option<Stamp> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok();
    let mut stamp = vec![(path.to_path_buf(), modified(path)?)];
    for split in SPLITS {
        let split_dir = path.join(split);
        let Some(time) = modified(&split_dir) else { continue };
        for class in subfolder_names(&split_dir).ok()? {
            let class_dir = split_dir.join(class);
            let time = modified(&class_dir)?;
            stamp.push((class_dir, time));
        }
        stamp.push((split_dir, time));
    }
    Some(stamp)
}

/// Every dataset described so far, with the stamp it was read under: a submit, the scheduler and
/// the catalog route reuse it until a folder's time changes, so their cost does not grow with the
/// dataset (the Kaggle set is 5,856 files).
static INDEX: std::sync::LazyLock<Mutex<HashMap<PathBuf, (Stamp, DatasetInfo)>>> =
    std::sync::LazyLock::new(Mutex::default);

/// How many times each dataset folder was read in full (for the index's tests).
#[cfg(test)]
static SCANS: std::sync::LazyLock<Mutex<HashMap<PathBuf, usize>>> = std::sync::LazyLock::new(Mutex::default);

/// Describes one dataset folder: from the index while its folders are unchanged, else read again.
pub fn describe(name: &str, path: &Path) -> Result<DatasetInfo, CatalogError> {
    let stamp = stamp(path);
    if let Some(stamp) = &stamp {
        let index = INDEX.lock().expect("dataset index poisoned");
        if let Some((known, info)) = index.get(path) {
            if known == stamp && info.name == name {
                return Ok(info.clone());
            }
        }
    }
    let info = scan(name, path)?;
    // A folder changed a moment ago may change again within the clock's granularity without its
    // time moving: only a settled stamp is trusted (git's "racy" rule).
    let settled = |stamp: &Stamp| {
        let now = SystemTime::now();
        stamp.iter().all(|(_, time)| now.duration_since(*time).is_ok_and(|age| age >= SETTLED))
    };
    if let Some(stamp) = stamp.filter(settled) {
        INDEX.lock().expect("dataset index poisoned").insert(path.to_path_buf(), (stamp, info.clone()));
    }
    Ok(info)
}

/// How long a folder must have been unchanged before its stamp is trusted.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads one dataset folder in full: every split's files, counted per class.
fn scan(name: &str, path: &Path) -> Result<DatasetInfo, CatalogError> {
    #[cfg(test)]
    {
        *SCANS.lock().expect("scan counts poisoned").entry(path.to_path_buf()).or_default() += 1;
    }
    let bad = |reason: String| CatalogError::BadLayout { name: name.to_string(), reason };
    let train_dir = path.join("train");
    if !train_dir.is_dir() {
        return Err(bad(String::from("it has no train/ folder")));
    }
    let classes = subfolder_names(&train_dir)?;
    if classes.len() < 2 {
        return Err(bad(format!("train/ must hold one folder per class (at least 2), found {}", classes.len())));
    }
    let mut splits = Vec::new();
    for split in SPLITS {
        let split_dir = path.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        let extra: Vec<String> =
            subfolder_names(&split_dir)?.into_iter().filter(|class| !classes.contains(class)).collect();
        if !extra.is_empty() {
            return Err(bad(format!("{split}/ has classes that train/ lacks: {}", extra.join(", "))));
        }
        let mut per_class = BTreeMap::new();
        for (_, label) in split_files(path, split, &classes)? {
            *per_class.entry(classes[label as usize].clone()).or_insert(0) += 1;
        }
        let images = per_class.values().sum();
        splits.push(SplitInfo { name: split.to_string(), images, per_class });
    }
    if !path.join("test").is_dir() {
        return Err(bad(String::from("it has no test/ folder")));
    }
    Ok(DatasetInfo { name: name.to_string(), classes, splits, path: path.to_path_buf() })
}

/// Opens the dataset `name` under `root`.
pub fn open(root: &Path, name: &str) -> Result<DatasetInfo, CatalogError> {
    check_plain_name(name)?;
    let path = root.join(name);
    if !path.is_dir() {
        let available = list(root).into_iter().map(|d| d.name).collect::<Vec<_>>().join(", ");
        let available = if available.is_empty() { String::from("none") } else { available };
        return Err(CatalogError::UnknownDataset { name: name.to_string(), available });
    }
    check_inside(root, name, &path)?;
    describe(name, &path)
}

/// A dataset folder must really be inside the datasets root: a symlink (of the folder, or of a
/// folder above it) that leads elsewhere could expose any file the server can read.
fn check_inside(root: &Path, name: &str, path: &Path) -> Result<(), CatalogError> {
    let io = |source| CatalogError::Io { path: path.to_path_buf(), source };
    let (root, real) = (root.canonicalize().map_err(io)?, path.canonicalize().map_err(io)?);
    if real.parent() == Some(root.as_path()) {
        return Ok(());
    }
    Err(CatalogError::BadLayout {
        name: name.to_string(),
        reason: String::from(
            "it leads outside the datasets folder (a symlink); the admin can move or bind-mount it there instead",
        ),
    })
}

/// Every usable dataset under `root`; unusable folders are skipped with a warning.
pub fn list(root: &Path) -> Vec<DatasetInfo> {
    let Ok(names) = subfolder_names(root) else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|name| {
            match check_inside(root, &name, &root.join(&name)).and_then(|()| describe(&name, &root.join(&name))) {
                Ok(info) => Some(info),
                Err(err) => {
                    tracing::warn!(%err, "skipping dataset folder");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn an_image_folder_is_described_with_sorted_classes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("xray");
        touch(&dir.join("train/PNEUMONIA/a.jpeg"));
        touch(&dir.join("train/PNEUMONIA/b.JPG"));
        touch(&dir.join("train/NORMAL/c.png"));
        touch(&dir.join("train/NORMAL/notes.txt"));
        touch(&dir.join("test/NORMAL/d.jpeg"));
        let info = open(root.path(), "xray").unwrap();
        assert_eq!(info.classes, ["NORMAL", "PNEUMONIA"]);
        assert_eq!(info.split("train").unwrap().images, 3);
        assert_eq!(info.split("test").unwrap().per_class["NORMAL"], 1);
        assert!(info.split("val").is_none());
        let files = split_files(&dir, "train", &info.classes).unwrap();
        assert_eq!(files.iter().map(|(_, label)| *label).collect::<Vec<_>>(), [0, 1, 1]);
    }

    /// Dates every folder under `dir` a minute back, as folders unchanged for a while are.
    fn settle(dir: &Path) {
        let past = SystemTime::now() - std::time::Duration::from_secs(60);
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                settle(&entry.path());
            }
        }
        std::fs::File::open(dir).unwrap().set_modified(past).unwrap();
    }

    #[test]
    fn a_dataset_is_read_once_until_one_of_its_folders_changes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("indexed");
        touch(&dir.join("train/NORMAL/a.jpeg"));
        touch(&dir.join("train/PNEUMONIA/b.jpeg"));
        touch(&dir.join("test/NORMAL/c.jpeg"));
        let scans = || SCANS.lock().unwrap().get(&root.path().join("indexed")).copied().unwrap_or(0);
        // Just written: not trusted yet, read each time.
        open(root.path(), "indexed").unwrap();
        let before = scans();
        open(root.path(), "indexed").unwrap();
        assert!(scans() > before, "a folder changed a moment ago is read again");
        settle(&dir);
        let first = open(root.path(), "indexed").unwrap();
        let after_first = scans();
        let second = open(root.path(), "indexed").unwrap();
        assert_eq!(scans(), after_first, "the index answered");
        assert_eq!(second.split("train").unwrap().images, first.split("train").unwrap().images);
        // An image added (its class folder's time changes), a split added: read again, right.
        touch(&dir.join("train/NORMAL/d.jpeg"));
        assert_eq!(open(root.path(), "indexed").unwrap().split("train").unwrap().per_class["NORMAL"], 2);
        assert!(scans() > after_first);
        touch(&dir.join("val/PNEUMONIA/e.jpeg"));
        assert_eq!(open(root.path(), "indexed").unwrap().split("val").unwrap().images, 1);
        std::fs::remove_file(dir.join("train/NORMAL/a.jpeg")).unwrap();
        assert_eq!(open(root.path(), "indexed").unwrap().split("train").unwrap().per_class["NORMAL"], 1);
    }

    #[test]
    fn unknown_and_malformed_datasets_are_explained() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("flat/train/a.jpeg"));
        touch(&root.path().join("flat/test/b.jpeg"));
        let err = open(root.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("no dataset `nope`"), "{err}");
        let err = open(root.path(), "flat").unwrap_err().to_string();
        assert!(err.contains("one folder per class"), "{err}");
        assert!(open(root.path(), "../etc").is_err());
        assert!(list(root.path()).is_empty());
    }

    #[test]
    fn a_dataset_that_links_outside_the_root_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        touch(&outside.path().join("train/NORMAL/a.jpeg"));
        touch(&outside.path().join("train/PNEUMONIA/b.jpeg"));
        touch(&outside.path().join("test/NORMAL/c.jpeg"));
        let root = tempfile::tempdir().unwrap();
        for file in ["train/NORMAL/a.jpeg", "train/PNEUMONIA/b.jpeg", "test/NORMAL/c.jpeg"] {
            touch(&root.path().join("real").join(file));
        }
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        let err = open(root.path(), "escape").unwrap_err().to_string();
        assert!(err.contains("outside the datasets folder"), "{err}");
        // A link to a dataset inside the root is just another name for it.
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("alias")).unwrap();
        open(root.path(), "alias").unwrap();
        assert_eq!(list(root.path()).iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["alias", "real"]);
    }
}
