//! A job folder's size, and removing all or part of it: what delete, gc and retention do to a
//! finished job's files, and what the supervisor measures when a job ends. Symbolic links are
//! neither followed nor counted beyond themselves, so nothing outside the folder is read or
//! removed.

use std::path::{Path, PathBuf};

/// What a prune removed (or, on a dry run, would remove) and kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Bytes of the files removed.
    pub removed_bytes: u64,
    /// How many files.
    pub removed_files: u64,
    /// Bytes of the files that stay.
    pub kept_bytes: u64,
}

/// Every file under `dir` with its size, paths relative to `dir`. A folder that does not exist
/// holds nothing.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut folders = vec![PathBuf::new()];
    while let Some(relative) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&relative)) else { continue };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.path().symlink_metadata() else { continue };
            let path = relative.join(entry.file_name());
            if metadata.is_dir() {
                folders.push(path);
            } else {
                found.push((path, metadata.len()));
            }
        }
    }
    found
}

/// Bytes of the files under `dir` (0 when it does not exist). Walks that one folder.
pub fn folder_bytes(dir: &Path) -> u64 {
    files(dir).iter().map(|(_, bytes)| bytes).sum()
}

/// Removes `dir` and everything in it; returns the bytes its files held. A folder already gone
/// is not an error (a delete that was interrupted is finished by the next).
pub fn remove_folder(dir: &Path) -> std::io::Result<u64> {
    let bytes = folder_bytes(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err),
    }
}

/// Removes the files under `dir` that `keep` does not keep (only counts them when `dry_run`), and
/// then the folders left empty.
pub fn prune(dir: &Path, keep: impl Fn(&Path) -> bool, dry_run: bool) -> std::io::Result<Pruned> {
    let mut pruned = Pruned::default();
    for (relative, bytes) in files(dir) {
        if keep(&relative) {
            pruned.kept_bytes += bytes;
            continue;
        }
        if !dry_run {
            match std::fs::remove_file(dir.join(&relative)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
        }
        pruned.removed_bytes += bytes;
        pruned.removed_files += 1;
    }
    if !dry_run {
        remove_empty_folders(dir);
    }
    Ok(pruned)
}

/// Removes the empty folders under `dir` (not `dir` itself), deepest first.
fn remove_empty_folders(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let is_folder = entry.path().symlink_metadata().is_ok_and(|metadata| metadata.is_dir());
        if is_folder {
            remove_empty_folders(&entry.path());
            // Fails, as it should, when something is left in it.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts/plots")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("artifacts/final.safetensors"), vec![0u8; 100]).unwrap();
        std::fs::write(dir.path().join("artifacts/phase1.safetensors"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("artifacts/plots/roc.png"), vec![0u8; 10]).unwrap();
        std::fs::write(dir.path().join("state/resume.safetensors"), vec![0u8; 5000]).unwrap();
        std::fs::write(dir.path().join("log.txt"), b"x").unwrap();
        dir
    }

    #[test]
    fn a_prune_keeps_what_it_is_told_and_a_dry_run_removes_nothing() {
        let dir = job_folder();
        assert_eq!(folder_bytes(dir.path()), 6111);
        let keep = |path: &Path| path.ends_with("final.safetensors") || path.starts_with("artifacts/plots");
        let planned = prune(dir.path(), keep, true).unwrap();
        assert_eq!(planned, Pruned { removed_bytes: 6001, removed_files: 3, kept_bytes: 110 });
        assert_eq!(folder_bytes(dir.path()), 6111, "a dry run removes nothing");
        assert_eq!(prune(dir.path(), keep, false).unwrap(), planned);
        assert_eq!(folder_bytes(dir.path()), 110);
        assert!(!dir.path().join("state").exists(), "an emptied folder goes too");
        assert!(dir.path().join("artifacts/plots/roc.png").exists());
    }

    #[test]
    fn removing_a_folder_twice_is_no_error() {
        let dir = job_folder();
        let folder = dir.path().to_path_buf();
        assert_eq!(remove_folder(&folder).unwrap(), 6111);
        assert!(!folder.exists());
        assert_eq!(remove_folder(&folder).unwrap(), 0);
        assert_eq!(folder_bytes(&folder), 0);
    }
}
