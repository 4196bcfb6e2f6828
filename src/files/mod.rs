//! Files on a disk that can fill up: the one atomic write every artifact, checkpoint and cache entry
//! goes through ([`atomic`]), the shared cache's least-recently-used eviction ([`evict`], which the
//! worker runs to stay under its budget and the server may run under disk pressure), and the
//! test for "the storage failed" ([`is_storage_error`]) that turns a full disk into a `storage`
//! failure instead of a generic error. No tch here: the server uses this module too.

pub mod atomic;
pub mod evict;
/// A job folder's size, and removing all or part of it (delete, gc, retention).
pub mod prune;

pub use atomic::{write_atomic, write_atomic_bytes, write_atomic_through_path};
pub use evict::{evict, evict_to_free, Eviction};

/// Whether `err` says the storage itself failed rather than the program: no space left (`ENOSPC`),
/// a quota reached (`EDQUOT`), an I/O error (`EIO`) or a read-only filesystem (`EROFS`). Such a
/// failure is the machine's, not the job's: the job can continue once the disk is fixed.
pub fn is_storage_error(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::EROFS))
}

/// The first storage error ([`is_storage_error`]) in an anyhow error's chain of causes, if any.
/// The chain keeps the `std::io::Error` (and its errno) as long as every layer added context
/// instead of formatting it into a string.
pub fn storage_error_in(err: &anyhow::Error) -> Option<&std::io::Error> {
    err.chain().filter_map(|cause| cause.downcast_ref::<std::io::Error>()).find(|cause| is_storage_error(cause))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_full_disk_a_quota_an_io_error_and_a_read_only_disk_are_storage_errors() {
        for errno in [libc::ENOSPC, libc::EDQUOT, libc::EIO, libc::EROFS] {
            assert!(is_storage_error(&std::io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        for errno in [libc::ENOENT, libc::EACCES, libc::ENOMEM, libc::EISDIR] {
            assert!(!is_storage_error(&std::io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        assert!(
            !is_storage_error(&std::io::Error::other("no space left on device")),
            "the errno decides, not the text"
        );
    }

    #[test]
    fn a_storage_error_is_found_under_the_contexts_added_to_it() {
        let full: anyhow::Result<()> =
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC)).context("writing /x/resume.safetensors");
        let full = full.context("phase 1 epoch 2").unwrap_err();
        assert_eq!(storage_error_in(&full).and_then(std::io::Error::raw_os_error), Some(libc::ENOSPC));
        let expected = format!(
            "phase 1 epoch 2: writing /x/resume.safetensors: {}",
            std::io::Error::from_raw_os_error(libc::ENOSPC)
        );
        assert_eq!(format!("{full:#}"), expected, "the message names the path and the system's error");

        let missing: anyhow::Result<()> =
            Err(std::io::Error::from_raw_os_error(libc::ENOENT)).context("reading job.json");
        assert!(storage_error_in(&missing.unwrap_err()).is_none());
        assert!(
            storage_error_in(&anyhow::anyhow!("No space left on device (os error 28)")).is_none(),
            "text is not an errno"
        );
    }
}
