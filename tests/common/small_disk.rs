//! A full disk, for real, shared by the test crates that need one: a small tmpfs mounted on a
//! folder for the test (root only; elsewhere, or where mounting is refused, a loud SKIPPED line).
// Each test crate that includes this uses only part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size mounted on a folder, unmounted when dropped, so a failing assertion
/// does not leave it mounted.
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `1m`) on `dir`, created if
    /// missing. `None`, after a loud SKIPPED line naming `test`, when not root or when the mount
    /// is refused (a container without CAP_SYS_ADMIN).
    pub fn mount(dir: &Path, size: &str, test: &str) -> Option<SmallDisk> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("\n!!! SKIPPED: {test}: a full disk needs root to mount a small tmpfs; the full-disk path was NOT tested !!!\n");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output();
        match mounted {
            Ok(output) if output.status.success() => Some(SmallDisk { dir: dir.to_path_buf() }),
            Ok(output) => {
                let why = String::from_utf8_lossy(&output.stderr);
                eprintln!(
                    "\n!!! SKIPPED: {test}: mount -t tmpfs refused ({}); the full-disk path was NOT tested !!!\n",
                    why.trim()
                );
                None
            }
            Err(err) => {
                eprintln!("\n!!! SKIPPED: {test}: no mount command ({err}); the full-disk path was NOT tested !!!\n");
                None
            }
        }
    }

    /// Writes `name` until the disk is full; the last write must fail with ENOSPC.
    pub fn fill(&self, name: &str) {
        let mut file = std::fs::File::create(self.dir.join(name)).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let full = loop {
            if let Err(err) = file.write_all(&chunk) {
                break err;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "filling the tmpfs: {full}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a worker killed by a failed assertion may still hold a file open.
        let unmounted = Command::new("umount").arg("-l").arg(&self.dir).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            eprintln!("warning: could not unmount the test tmpfs at {}", self.dir.display());
        }
    }
}

/// Every file under `dir` whose name says it is a temporary file (`x.tmp`, `x.tmp.<pid>.<n>.<nonce>`).
pub fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(temporary_files(&path));
        } else if entry.file_name().to_string_lossy().contains(".tmp") {
            found.push(path);
        }
    }
    found
}
