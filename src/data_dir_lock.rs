//! One server per data dir: `trainq serve` holds an exclusive `flock` on `DATA_DIR/trainq.lock`
//! (and on the shared dir's, with Slurm) for as long as it runs, taken before it touches the
//! database. A second server would otherwise take the first one's running jobs for a dead
//! server's and re-queue them, and two schedulers would claim, two workers train one job.
//!
//! The lock is the kernel's: it goes with the process however it ends (SIGKILL included), so a
//! crashed server never leaves a stale lock behind, and the file's content (the holder's PID) is
//! only for the message. The CLI's local commands (`trainq user add --data-dir`) and backups do
//! not take it: SQLite's own locking already makes them safe beside a running server.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in each folder it guards.
pub const LOCK_FILE_NAME: &str = "trainq.lock";

/// Why a folder's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "another trainq server (pid {holder}) is already serving {folder}; stop it first \
         (two servers on one data dir would run the same jobs twice)"
    )]
    HeldByAnother {
        /// The folder the lock guards.
        folder: PathBuf,
        /// The holder's PID as it wrote it into the lock file (`unknown` if unreadable).
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// An exclusive lock on one folder, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// The open, locked file; closing it releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `folder` at once or fails: never waits for another server to end.
    /// Writes this process's PID into the lock file for the next one's message.
    pub fn acquire(folder: &Path) -> Result<DataDirLock, LockError> {
        let path = folder.join(LOCK_FILE_NAME);
        let io_error = |source: std::io::Error| LockError::Io { path: path.clone(), source };
        // Not truncated on open: the holder's PID must stay readable until the lock is ours.
        let mut file =
            File::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error)?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_error(error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::from("unknown"),
                pid => pid.to_string(),
            };
            return Err(LockError::HeldByAnother { folder: folder.to_path_buf(), holder });
        }
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(DataDirLock { _file: file })
    }

    /// Locks each folder of `folders` (the data dir, and the shared dir when it is another one),
    /// in order; the first refusal is the error.
    pub fn acquire_all(folders: &[&Path]) -> Result<Vec<DataDirLock>, LockError> {
        let mut locks: Vec<DataDirLock> = Vec::with_capacity(folders.len());
        let mut locked: Vec<&Path> = Vec::with_capacity(folders.len());
        for folder in folders {
            if !locked.contains(folder) {
                locks.push(DataDirLock::acquire(folder)?);
                locked.push(folder);
            }
        }
        Ok(locks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let folder = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(folder.path()).unwrap();
        let written = std::fs::read_to_string(folder.path().join(LOCK_FILE_NAME)).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // flock locks belong to the open file description, so a second open in this process is
        // refused just as another process would be.
        let refusal = DataDirLock::acquire(folder.path()).unwrap_err();
        let message = refusal.to_string();
        assert!(message.contains(&std::process::id().to_string()), "{message}");
        assert!(message.contains(&folder.path().display().to_string()), "{message}");
        drop(first);
        DataDirLock::acquire(folder.path()).unwrap();
    }

    #[test]
    fn the_same_folder_named_twice_is_locked_once() {
        let folder = tempfile::tempdir().unwrap();
        let locks = DataDirLock::acquire_all(&[folder.path(), folder.path()]).unwrap();
        assert_eq!(locks.len(), 1);
    }
}
