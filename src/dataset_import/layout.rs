//! Finding the ImageFolder inside an unpacked archive and what to leave out of it. Kaggle's
//! `chest-xray-pneumonia` zip is the model: its tree sits one level down (`chest_xray/train/…`),
//! holds a nested duplicate of itself (`chest_xray/chest_xray/…`), and a `__MACOSX/` tree of
//! AppleDouble `._*` files beside `.DS_Store` files.

use super::ImportError;
use crate::catalog::datasets::SPLITS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a file of the archive is not part of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftOut {
    /// Under a `__MACOSX/` folder (macOS's resource forks).
    Macosx,
    /// An AppleDouble `._name` file elsewhere.
    AppleDouble,
    /// A `.DS_Store` file.
    DsStore,
    /// A `Thumbs.db` file.
    ThumbsDb,
    /// Inside another copy of the ImageFolder tree (Kaggle's `chest_xray/chest_xray/`).
    NestedDuplicate,
    /// Anywhere but in a class folder of a split (a README, the archive's other folders).
    OutsideLayout,
    /// A file that did not fully decode, left out with `--skip-bad`.
    Bad,
}

/// The dataset found in an unpacked tree: its root and the files of its class folders.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The folder whose children are the splits, relative to the unpacked tree (`chest_xray`).
    pub root: PathBuf,
    /// Every file of a class folder, relative to the root (`train/NORMAL/x.jpeg`).
    pub images: Vec<PathBuf>,
    /// How many files were left out, by why.
    pub left_out: BTreeMap<LeftOut, usize>,
}

/// The junk a file name alone marks as not part of any dataset.
fn junk(name: &str) -> Option<LeftOut> {
    match name {
        ".DS_Store" => Some(LeftOut::DsStore),
        "Thumbs.db" => Some(LeftOut::ThumbsDb),
        _ if name.starts_with("._") => Some(LeftOut::AppleDouble),
        _ => None,
    }
}

/// Whether `dir` is laid out as an ImageFolder root: `train` and `test` folders (`val` optional).
fn is_root(dir: &Path) -> bool {
    dir.join("train").is_dir() && dir.join("test").is_dir()
}

/// Every regular file under `dir` (relative to `base`), folders depth first, in name order.
fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImportError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|err| ImportError::io("reading the unpacked archive", err))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    for path in entries {
        let metadata =
            std::fs::symlink_metadata(&path).map_err(|err| ImportError::io("reading the unpacked archive", err))?;
        if metadata.is_dir() {
            files_under(&path, base, out)?;
        } else if metadata.is_file() {
            out.push(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// Finds the ImageFolder root under `unpacked` (the shallowest folder holding `train` and `test`)
/// and sorts every file into the dataset's images or what is left out, with why.
pub fn find(unpacked: &Path) -> Result<Found, ImportError> {
    let mut all = Vec::new();
    files_under(unpacked, unpacked, &mut all)?;
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut candidates = vec![PathBuf::new()];
    while let Some(dir) = candidates.pop() {
        let absolute = unpacked.join(&dir);
        if dir.components().any(|part| part.as_os_str() == "__MACOSX") {
            continue;
        }
        if is_root(&absolute) {
            roots.push(dir.clone());
        }
        for entry in std::fs::read_dir(&absolute).map_err(|err| ImportError::io("reading the unpacked archive", err))? {
            let entry = entry.map_err(|err| ImportError::io("reading the unpacked archive", err))?;
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                candidates.push(dir.join(entry.file_name()));
            }
        }
    }
    roots.sort_by_key(|root| (root.components().count(), root.clone()));
    let Some(root) = roots.first().cloned() else {
        return Err(ImportError::layout(String::from(
            "no folder in it holds `train/` and `test/` folders of class folders (an ImageFolder: \
             train/<class>/<image>, test/<class>/<image>, optionally val/)",
        )));
    };
    let depth = root.components().count();
    if let Some(twin) = roots.iter().skip(1).find(|other| other.components().count() == depth) {
        return Err(ImportError::layout(format!(
            "it holds two datasets side by side, `{}` and `{}`; import one at a time",
            root.display(),
            twin.display()
        )));
    }
    let duplicates: Vec<&PathBuf> = roots.iter().skip(1).collect();
    let mut found = Found { root: root.clone(), ..Found::default() };
    for file in all {
        let name = file.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        let why = if file.components().any(|part| part.as_os_str() == "__MACOSX") {
            Some(LeftOut::Macosx)
        } else if let Some(junk) = junk(name) {
            Some(junk)
        } else if duplicates.iter().any(|duplicate| file.starts_with(duplicate)) {
            Some(LeftOut::NestedDuplicate)
        } else {
            match file.strip_prefix(&root) {
                Ok(inside) if in_class_folder(inside) => {
                    found.images.push(inside.to_path_buf());
                    None
                }
                _ => Some(LeftOut::OutsideLayout),
            }
        };
        if let Some(why) = why {
            *found.left_out.entry(why).or_default() += 1;
        }
    }
    Ok(found)
}

/// Whether a path relative to the root is `<split>/<class>/<file>`.
fn in_class_folder(inside: &Path) -> bool {
    let parts: Vec<_> = inside.components().collect();
    parts.len() == 3 && SPLITS.iter().any(|split| parts[0].as_os_str() == *split)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, path: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn the_kaggle_shape_finds_its_root_one_level_down_and_counts_what_it_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        for prefix in ["chest_xray/", "chest_xray/chest_xray/"] {
            for split in ["train", "test", "val"] {
                for class in ["NORMAL", "PNEUMONIA"] {
                    touch(dir.path(), &format!("{prefix}{split}/{class}/a.jpeg"));
                }
            }
        }
        touch(dir.path(), "__MACOSX/chest_xray/train/NORMAL/._a.jpeg");
        touch(dir.path(), "__MACOSX/chest_xray/._train");
        touch(dir.path(), "chest_xray/train/NORMAL/._b.jpeg");
        touch(dir.path(), "chest_xray/train/.DS_Store");
        touch(dir.path(), "chest_xray/test/NORMAL/Thumbs.db");
        touch(dir.path(), "chest_xray/README.txt");
        let found = find(dir.path()).unwrap();
        assert_eq!(found.root, PathBuf::from("chest_xray"));
        assert_eq!(found.images.len(), 6);
        assert!(found.images.contains(&PathBuf::from("val/PNEUMONIA/a.jpeg")));
        let counts: Vec<(LeftOut, usize)> = found.left_out.into_iter().collect();
        assert_eq!(
            counts,
            [
                (LeftOut::Macosx, 2),
                (LeftOut::AppleDouble, 1),
                (LeftOut::DsStore, 1),
                (LeftOut::ThumbsDb, 1),
                (LeftOut::NestedDuplicate, 6),
                (LeftOut::OutsideLayout, 1)
            ]
        );
    }

    #[test]
    fn a_tree_without_splits_or_with_two_side_by_side_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "images/NORMAL/a.jpeg");
        assert!(find(dir.path()).unwrap_err().to_string().contains("train/"));
        for prefix in ["a/", "b/"] {
            touch(dir.path(), &format!("{prefix}train/X/a.jpeg"));
            touch(dir.path(), &format!("{prefix}test/X/a.jpeg"));
        }
        assert!(find(dir.path()).unwrap_err().to_string().contains("side by side"));
    }
}
