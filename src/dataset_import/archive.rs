//! Unpacking an uploaded zip safely: every entry is checked against the archive's own declared
//! sizes before anything is written, and again by counting the bytes really inflated. An entry that
//! would leave the temporary folder (`..`, an absolute path), a symlink or a device file, more
//! bytes than `--max-dataset-gb`, more files than [`ArchiveLimits::max_files`], or a compression
//! ratio past [`ArchiveLimits::max_ratio`] refuses the whole archive; the caller then removes the
//! temporary folder, so nothing is left behind.

use super::ImportError;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// What an archive may hold.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// Most bytes unpacked, all files together (`--max-dataset-gb`).
    pub max_bytes: u64,
    /// Most entries (files and folders).
    pub max_files: usize,
    /// Most uncompressed bytes per compressed byte of one entry (images hardly compress; a zip
    /// bomb's zeros compress about 1,000 to 1).
    pub max_ratio: u64,
}

/// The number of entries a dataset archive may hold: the Kaggle set has 17,584 with its duplicate.
pub const MAX_FILES: usize = 200_000;

/// The compression ratio past which an entry is refused.
pub const MAX_RATIO: u64 = 100;

/// Entries this small are never refused for their ratio: a tiny file's header dominates.
const RATIO_FREE_BYTES: u64 = 64 * 1024;

/// What the unpacking wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unpacked {
    /// Regular files written.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The path an entry name stands for inside the destination, or why it may not be written: no
/// absolute path, no `..`, no drive or root prefix; `.` parts are dropped.
pub fn entry_path(name: &str) -> Result<PathBuf, String> {
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(String::from("an absolute path"));
    }
    let mut path = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(String::from("a `..` that climbs out of the dataset")),
            Component::RootDir | Component::Prefix(_) => return Err(String::from("an absolute path")),
        }
    }
    if name.contains('\\') && name.split('\\').any(|part| part == "..") {
        return Err(String::from("a `..` that climbs out of the dataset"));
    }
    Ok(path)
}

/// What kind of file a zip entry's Unix mode says it is, when it is not a plain file or folder.
fn special_kind(mode: Option<u32>) -> Option<&'static str> {
    match mode? & libc::S_IFMT {
        libc::S_IFLNK => Some("a symlink"),
        libc::S_IFCHR | libc::S_IFBLK => Some("a device file"),
        libc::S_IFIFO => Some("a named pipe"),
        libc::S_IFSOCK => Some("a socket"),
        _ => None,
    }
}

/// Unpacks the zip at `archive` into `destination` (an empty folder), calling `progress` with the
/// files and bytes written so far now and then. Refuses the whole archive on the first hostile
/// entry; what was written by then stays in `destination` for the caller to remove.
pub fn unpack_zip(
    archive: &Path,
    destination: &Path,
    limits: ArchiveLimits,
    progress: &mut dyn FnMut(&Unpacked),
) -> Result<Unpacked, ImportError> {
    let file = std::fs::File::open(archive).map_err(|err| ImportError::io("opening the upload", err))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|err| ImportError::bad_archive(format!("it is not a zip archive this server can read: {err}")))?;
    if zip.len() > limits.max_files {
        return Err(ImportError::bad_archive(format!(
            "it holds {} entries; at most {} are allowed",
            zip.len(),
            limits.max_files
        )));
    }
    // First every entry's declared facts, so a hostile archive is refused before a byte is written.
    let mut declared_total: u64 = 0;
    for index in 0..zip.len() {
        let entry = zip.by_index_raw(index).map_err(|err| ImportError::bad_archive(format!("entry {index}: {err}")))?;
        let name = entry.name().to_string();
        entry_path(&name).map_err(|why| ImportError::hostile(&name, why))?;
        if let Some(kind) = special_kind(entry.unix_mode()) {
            return Err(ImportError::hostile(&name, kind.to_string()));
        }
        check_ratio(&name, entry.size(), entry.compressed_size(), limits)?;
        declared_total = declared_total.saturating_add(entry.size());
        if declared_total > limits.max_bytes {
            return Err(too_large(limits));
        }
    }
    let mut written = Unpacked::default();
    let mut buffer = vec![0u8; 256 * 1024];
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(|err| ImportError::bad_archive(format!("entry {index}: {err}")))?;
        let name = entry.name().to_string();
        let path = destination.join(entry_path(&name).map_err(|why| ImportError::hostile(&name, why))?);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|err| ImportError::io("creating a folder", err))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| ImportError::io("creating a folder", err))?;
        }
        // `create_new` never follows or overwrites: two entries of one name are refused too.
        let mut output = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|err| ImportError::hostile(&name, format!("it cannot be written as a new file ({err})")))?;
        let (declared, compressed) = (entry.size(), entry.compressed_size());
        let mut counted: u64 = 0;
        loop {
            let read = entry.read(&mut buffer).map_err(|err| ImportError::bad_archive(format!("`{name}`: {err}")))?;
            if read == 0 {
                break;
            }
            counted += read as u64;
            // The bytes really inflated, not the header's word for them.
            if counted > declared {
                return Err(ImportError::hostile(&name, format!("it inflates past its declared {declared} bytes")));
            }
            check_ratio(&name, counted, compressed, limits)?;
            if written.bytes + counted > limits.max_bytes {
                return Err(too_large(limits));
            }
            output.write_all(&buffer[..read]).map_err(|err| ImportError::io("writing an unpacked file", err))?;
        }
        written.files += 1;
        written.bytes += counted;
        if written.files % 500 == 0 {
            progress(&written);
        }
    }
    progress(&written);
    Ok(written)
}

/// Refuses an entry whose uncompressed bytes outgrow its compressed ones past the bound.
fn check_ratio(name: &str, size: u64, compressed: u64, limits: ArchiveLimits) -> Result<(), ImportError> {
    if size > RATIO_FREE_BYTES && size > compressed.saturating_mul(limits.max_ratio) {
        return Err(ImportError::hostile(
            name,
            format!(
                "it inflates {size} bytes from {compressed} (more than {} to 1: a zip bomb, not images)",
                limits.max_ratio
            ),
        ));
    }
    Ok(())
}

/// The error of an archive over `--max-dataset-gb`.
fn too_large(limits: ArchiveLimits) -> ImportError {
    ImportError::bad_archive(format!(
        "it unpacks to more than {:.1} GB (--max-dataset-gb); ask the admin to raise it",
        limits.max_bytes as f64 / 1e9
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_climb_out_or_start_at_the_root_are_refused() {
        assert_eq!(entry_path("chest_xray/train/a.jpeg").unwrap(), PathBuf::from("chest_xray/train/a.jpeg"));
        assert_eq!(entry_path("./a/./b").unwrap(), PathBuf::from("a/b"));
        for bad in ["../../x", "a/../../x", "/etc/passwd", "a/..", "\\windows\\x", "a\\..\\..\\x"] {
            assert!(entry_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlinks_and_devices_are_special() {
        assert_eq!(special_kind(Some(libc::S_IFLNK | 0o777)), Some("a symlink"));
        assert_eq!(special_kind(Some(libc::S_IFCHR | 0o600)), Some("a device file"));
        assert_eq!(special_kind(Some(libc::S_IFREG | 0o644)), None);
        assert_eq!(special_kind(None), None);
    }
}
