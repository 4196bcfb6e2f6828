//! The one way trainq writes a file that others read: [`write_atomic`]. Artifacts, checkpoints,
//! cache entries, activation caches and Grad-CAM images all go through it, so they share one
//! durability level and one clean-up rule:
//!
//! 1. the bytes go to a private temporary file beside the target, `<name>.tmp.<pid>.<n>.<nonce>`
//!    (unique per process, write and moment, so concurrent writers of one file never collide, and
//!    the artifacts listing hides it by its `.tmp.`);
//! 2. the file is fsynced, then renamed over the target, then the folder is fsynced, so after a
//!    crash the target is the old file or the new one, whole, and the rename itself survives;
//! 3. on any error (the write, an fsync, the rename) the temporary file is removed: a full disk
//!    leaves nothing half-written behind, and the old target stands untouched.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Creates or replaces `path` atomically and durably: `write` fills a new temporary file in the
/// same folder (created if missing), which is fsynced and renamed over `path`, and the folder is
/// fsynced. Readers see the old file or the complete new one, never a part; concurrent writers of
/// the same path all succeed (the last rename wins; a reader that opened an earlier file keeps
/// reading it). The temporary file is gone when this returns, whatever happened. Errors are the
/// operating system's, errno included (see [`super::is_storage_error`]); callers add the path.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> std::io::Result<()> {
    replace_atomically(path, |temporary| {
        let mut file = File::options().write(true).create_new(true).open(temporary)?;
        write(&mut file)?;
        file.sync_all()
    })
}

/// [`write_atomic`] of bytes already in memory.
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] for writers that only take a path (a library that opens the file itself, as
/// `safetensors::serialize_to_file` does, streaming tensors without a copy in memory): `write`
/// creates and fills the temporary path it is given; the rest (fsync, rename, folder fsync,
/// clean-up on error) is [`write_atomic`]'s.
pub fn write_atomic_through_path(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    replace_atomically(path, |temporary| {
        write(temporary)?;
        File::open(temporary)?.sync_all()
    })
}

/// The mechanism both entry points share: `fill` creates and fsyncs the temporary file; then the
/// rename and the folder's fsync; the temporary file is removed on any error.
fn replace_atomically(path: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(folder)?;
    let temporary = temporary_path(folder, path);
    let written =
        fill(&temporary).and_then(|()| std::fs::rename(&temporary, path)).and_then(|()| File::open(folder)?.sync_all());
    if written.is_err() {
        // After a successful rename there is nothing left to remove, and the unique name cannot
        // be anyone else's file.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// `<folder>/<name>.tmp.<pid>.<n>.<nonce>`: other processes differ in pid, threads of this one in
/// the counter, and a pid reused after a crash in the nonce.
fn temporary_path(folder: &Path, path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let nonce = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let write_number = WRITES.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().expect("write_atomic needs a file name, not a folder").to_string_lossy();
    folder.join(format!("{name}.tmp.{}.{write_number}.{nonce:08x}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in `folder`, sorted.
    fn names(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_successful_write_leaves_exactly_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/metrics.json");
        write_atomic_bytes(&path, b"{}").unwrap();
        write_atomic(&path, |file| file.write_all(b"[1, 2]")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[1, 2]");
        assert_eq!(names(&dir.path().join("nested")), ["metrics.json"]);
    }

    #[test]
    fn a_failing_write_removes_its_temporary_file_and_keeps_the_old_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resume.safetensors");
        write_atomic_bytes(&path, b"the last good checkpoint").unwrap();
        let failed = write_atomic(&path, |file| {
            file.write_all(b"half of a new one")?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        });
        assert_eq!(failed.unwrap_err().raw_os_error(), Some(libc::ENOSPC), "the writer's own error, errno intact");
        assert_eq!(std::fs::read(&path).unwrap(), b"the last good checkpoint");
        assert_eq!(names(dir.path()), ["resume.safetensors"]);

        let failed = write_atomic_through_path(&path, |temporary| {
            std::fs::write(temporary, b"half")?;
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        });
        assert_eq!(failed.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(names(dir.path()), ["resume.safetensors"]);
    }

    #[test]
    fn a_rename_the_folder_refuses_removes_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty folder where the file should go: the temporary file is written and fsynced,
        // then rename(2) fails.
        let path = dir.path().join("final.safetensors");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let failed = write_atomic_bytes(&path, b"weights");
        assert!(failed.is_err(), "a file cannot replace a non-empty folder");
        assert_eq!(names(dir.path()), ["final.safetensors"]);
        assert!(path.is_dir());
    }

    #[test]
    fn concurrent_writers_of_one_path_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-128-nearest-ab.bin");
        let writers: Vec<Vec<u8>> = (0..8u8).map(|writer| vec![writer; 64 << 10]).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = writers
                .iter()
                .map(|bytes| {
                    let path = &path;
                    scope.spawn(move || {
                        for _ in 0..5 {
                            write_atomic_bytes(path, bytes)?;
                        }
                        Ok::<(), std::io::Error>(())
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap().unwrap();
            }
        });
        let content = std::fs::read(&path).unwrap();
        assert!(writers.contains(&content), "one writer's whole file, not a mix");
        assert_eq!(names(dir.path()), ["train-128-nearest-ab.bin"]);
    }
}
