//! The shared preprocessing cache: a split's decoded and resized uint8 images, built by the first
//! job that needs them and read back by every later job of every user.
//!
//! One entry is one file, `<cache dir>/<key>.bin`; the key names the split, size and interpolation
//! and ends in a hash of everything that decides the pixels (see [`entry_key`]), so a changed
//! dataset gets a new key and is rebuilt, and an old entry is simply never read again.
//!
//! File layout (all integers little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `TRQCACHE` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 | `h`: length of the JSON header |
//! | `h` | [`EntryHeader`] as JSON: key, count, channels (1 or 3), shape groups, labels, relative paths, skipped files |
//! | `Σ count·channels·height·width` | the pixels: each shape group's `[n, C, H, W]` uint8 in C order, group after group |
//!
//! Writers go through `files::write_atomic` (a private temporary file
//! `<key>.bin.tmp.<pid>.<n>.<nonce>`, fsynced and renamed over the entry), so readers see either no
//! entry or a complete one; two jobs that build the same entry at once both succeed and the last
//! rename wins (both files are identical; a reader that opened the first keeps reading it). Readers check the magic, version, header and
//! exact length and treat anything else as a miss, which rebuilds the entry. The pixels carry no
//! checksum: the rename protects against torn writes, not against a disk that flips bits. An entry
//! is `N·C·H·W` bytes (the Kaggle train split, grayscale, at 128 px: 85 MB). Reading an entry
//! refreshes its modification time, and whoever writes an entry then trims the whole cache folder
//! (these entries and the activation caches of `features.rs`) to its budget, least recently used
//! first (`files::evict`). A write that finds the disk full evicts to make room and tries once
//! more ([`write_making_room`]); if it still fails, the job carries on uncached.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::{Resize, Sampling};
use trainq::files;

const MAGIC: &[u8; 8] = b"TRQCACHE";

/// Bump whenever the bytes an entry would hold change for the same inputs: the layout, the
/// decoder (e.g. its DCT-domain downscaling) or the resize (3: full decodes and Pillow's resampling;
/// 4: libjpeg-turbo decodes every JPEG, so progressive files and reduced scales changed). Old entries then miss.
pub const FORMAT_VERSION: u32 = 4;

/// Everything in an entry besides the pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// The key the entry was built for (its file name without `.bin`).
    pub key: String,
    /// Images in the entry.
    pub count: usize,
    /// 1 when every image is grayscale, else 3.
    pub channels: usize,
    /// The images' shapes, in storage order.
    pub groups: Vec<GroupHeader>,
    /// Class index of each image, in tensor order.
    pub labels: Vec<i64>,
    /// Each image's path relative to the dataset folder, in tensor order.
    pub paths: Vec<PathBuf>,
    /// Files that could not be decoded (relative paths), so a hit reports the same count.
    pub skipped: Vec<PathBuf>,
    /// Why each of `skipped` did not decode, in the same order (empty in older entries), so a hit
    /// names the same files with the same reasons.
    #[serde(default)]
    pub skipped_reasons: Vec<String>,
}

/// One shape group of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupHeader {
    /// Images of this shape.
    pub count: usize,
    /// Their height.
    pub height: usize,
    /// Their width.
    pub width: usize,
}

impl EntryHeader {
    fn group_bytes(&self, group: &GroupHeader) -> usize {
        group.count * self.channels * group.height * group.width
    }

    fn pixel_bytes(&self) -> usize {
        self.groups.iter().map(|group| self.group_bytes(group)).sum()
    }
}

/// The name of the entry for these inputs: `<split>-<size>-<interpolation>-<hash>` (size `128`, or
/// `max256` for variable size), where the hash covers the format version, the split, sizing,
/// interpolation and classes, and each image file's
/// relative path, label, size, modification and change time (ns). Editing, replacing, adding, removing or renaming a
/// file therefore gives a new key.
pub fn entry_key(
    dataset_dir: &Path,
    split: &str,
    files: &[(PathBuf, i64)],
    classes: &[String],
    resize: Resize,
    sampling: Sampling,
) -> std::io::Result<String> {
    let interpolation = sampling.label();
    let size = resize.label();
    let mut hasher = Sha256::new();
    hasher.update(format!("trainq cache v{FORMAT_VERSION}\0{split}\0{size}\0{interpolation}\0").as_bytes());
    for class in classes {
        hasher.update(class.as_bytes());
        hasher.update([0]);
    }
    for (path, label) in files {
        let metadata = std::fs::metadata(path)?;
        let relative = path.strip_prefix(dataset_dir).unwrap_or(path);
        hasher.update(relative.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(label.to_le_bytes());
        hasher.update(metadata.len().to_le_bytes());
        hasher.update(metadata.mtime().to_le_bytes());
        hasher.update(metadata.mtime_nsec().to_le_bytes());
        // The change time too: a file replaced under the same name, length and modification time
        // (an unpacked archive keeps its times, so does `cp -p`) must not serve the old pixels.
        hasher.update(metadata.ctime().to_le_bytes());
        hasher.update(metadata.ctime_nsec().to_le_bytes());
    }
    let digest = hasher.finalize();
    let hash: String = digest[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{split}-{size}-{interpolation}-{hash}"))
}

/// The file of the entry `key`.
pub fn entry_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("{key}.bin"))
}

/// Why an entry could not be used.
#[derive(Debug)]
pub enum Miss {
    /// There is no entry for the key.
    Absent,
    /// There is a file, but it is not a complete entry for the key (the reason says why).
    Invalid(String),
}

/// Reads the entry for `key`: its header and its pixels as one `[n, C, H, W]` uint8 tensor per shape
/// group, read straight into the tensors' memory (no per-image work, no second copy).
pub fn read_entry(cache_dir: &Path, key: &str) -> Result<(EntryHeader, Vec<Tensor>), Miss> {
    let path = entry_path(cache_dir, key);
    let (mut file, header_length) = open_entry(&path, MAGIC, FORMAT_VERSION)?;
    let header_length = header_length as u64;
    let invalid = |reason: &str| Miss::Invalid(reason.to_string());
    let file_length = file.metadata().map_err(|err| Miss::Invalid(err.to_string()))?.len();
    if 16 + header_length > file_length {
        return Err(invalid("truncated header"));
    }
    let mut header_bytes = vec![0u8; header_length as usize];
    file.read_exact(&mut header_bytes).map_err(|_| invalid("truncated header"))?;
    let header: EntryHeader =
        serde_json::from_slice(&header_bytes).map_err(|err| Miss::Invalid(format!("bad header: {err}")))?;
    if header.key != key
        || !(header.channels == 1 || header.channels == 3)
        || header.groups.iter().map(|group| group.count).sum::<usize>() != header.count
        || header.labels.len() != header.count
        || header.paths.len() != header.count
    {
        return Err(invalid("header does not describe this entry"));
    }
    if 16 + header_length + header.pixel_bytes() as u64 != file_length {
        return Err(Miss::Invalid(format!(
            "{} bytes where {} were expected",
            file_length,
            16 + header_length + header.pixel_bytes() as u64
        )));
    }
    let mut groups = Vec::with_capacity(header.groups.len());
    for group in &header.groups {
        let shape = [group.count as i64, header.channels as i64, group.height as i64, group.width as i64];
        let mut images = Tensor::zeros(shape, (Kind::Uint8, Device::Cpu));
        file.read_exact(uint8_bytes_mut(&mut images)).map_err(|err| Miss::Invalid(err.to_string()))?;
        groups.push(images);
    }
    files::evict::touch(&path);
    Ok((header, groups))
}

/// Opens a cache file and checks its 16-byte prefix — `magic`, format `version` (u32 LE), header
/// length (u32 LE) — leaving the file at the header. Returns the file and the header's length.
pub fn open_entry(path: &Path, magic: &[u8; 8], version: u32) -> Result<(File, usize), Miss> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(err) => return Err(Miss::Invalid(err.to_string())),
    };
    let mut prefix = [0u8; 16];
    file.read_exact(&mut prefix).map_err(|_| Miss::Invalid(String::from("shorter than its prefix")))?;
    if &prefix[..8] != magic {
        return Err(Miss::Invalid(String::from("bad magic")));
    }
    let found = u32::from_le_bytes(prefix[8..12].try_into().unwrap());
    if found != version {
        return Err(Miss::Invalid(format!("format version {found}, expected {version}")));
    }
    Ok((file, u32::from_le_bytes(prefix[12..16].try_into().unwrap()) as usize))
}

/// Writes the entry for `header.key` atomically (`files::write_atomic`), making room when the
/// disk is full ([`write_making_room`]); `groups` are the contiguous CPU uint8 tensors the header's
/// groups describe.
pub fn write_entry(cache_dir: &Path, header: &EntryHeader, groups: &[&Tensor]) -> std::io::Result<()> {
    assert_eq!(groups.len(), header.groups.len(), "one tensor per group");
    for (tensor, group) in groups.iter().zip(&header.groups) {
        assert_eq!(tensor.numel(), header.group_bytes(group), "pixels match the header");
    }
    let header_bytes = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    let bytes = (16 + header_bytes.len() + header.pixel_bytes()) as u64;
    let path = entry_path(cache_dir, &header.key);
    files::evict::remove_stale_temporaries(cache_dir);
    // Nothing to keep: a job reads pixel entries whole into memory (it holds none open), and the
    // entries it just wrote are the most recently used, the last that eviction takes.
    write_making_room(cache_dir, bytes, &[], || {
        files::write_atomic(&path, |file| {
            file.write_all(MAGIC)?;
            file.write_all(&FORMAT_VERSION.to_le_bytes())?;
            file.write_all(&(header_bytes.len() as u32).to_le_bytes())?;
            file.write_all(&header_bytes)?;
            for tensor in groups {
                file.write_all(tensor_bytes(tensor))?;
            }
            Ok(())
        })
    })
}

/// Entries and temporary files written within this are spared when a full disk makes a writer
/// evict: another job may have just built them, or be writing them now.
const RECENTLY_WRITTEN: Duration = Duration::from_secs(60);

/// Writes a cache file (`write` goes through `files::write_atomic`). The cache is an
/// optimisation, so a full disk (any storage error) must not cost the job: the least recently used
/// entries of the whole cache folder `cache_root` are evicted until `bytes` are free, sparing
/// `keep` (the caller's own entries) and anything written in the last minute, and the write is
/// tried once more. What is evicted is logged; the second error, if any, is the caller's to
/// report (it then carries on uncached).
pub fn write_making_room<T>(
    cache_root: &Path,
    bytes: u64,
    keep: &[PathBuf],
    mut write: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    match write() {
        Err(err) if files::is_storage_error(&err) => {
            eprintln!(
                "cache: {err} while writing; evicting least recently used entries to free {:.1} MB",
                bytes as f64 / 1e6
            );
            let eviction = files::evict::evict_to_free_keeping(cache_root, bytes, RECENTLY_WRITTEN, keep);
            log_eviction(&eviction, "to make room");
            if eviction.freed == 0 {
                return Err(err);
            }
            write()
        }
        written => written,
    }
}

/// Logs each file an eviction removed, and why.
pub fn log_eviction(eviction: &files::Eviction, why: &str) {
    for (path, length) in &eviction.evicted {
        eprintln!("cache: evicted {} ({:.1} MB, least recently used, {why})", path.display(), *length as f64 / 1e6);
    }
}

/// The bytes of a contiguous CPU tensor, to be written out.
pub fn tensor_bytes(tensor: &Tensor) -> &[u8] {
    assert!(tensor.device() == Device::Cpu && tensor.is_contiguous(), "a contiguous CPU tensor");
    let length = tensor.numel() * tensor.kind().elt_size_in_bytes();
    if length == 0 {
        return &[];
    }
    // SAFETY: the tensor is contiguous on the CPU (checked above), so `data_ptr` points at
    // `length` initialised bytes it owns; the shared borrow keeps it alive and unmodified (tch
    // tensors are not mutated through `&Tensor` by this crate while a slice is held).
    unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const u8, length) }
}

/// The bytes of a freshly made (zeroed), contiguous CPU uint8 tensor, to be filled in place: a
/// split can be gigabytes, and filling the tensor directly avoids holding it twice.
pub fn uint8_bytes_mut(tensor: &mut Tensor) -> &mut [u8] {
    assert!(
        tensor.kind() == Kind::Uint8 && tensor.device() == Device::Cpu && tensor.is_contiguous(),
        "a contiguous CPU uint8 tensor"
    );
    let length = tensor.numel();
    if length == 0 {
        return &mut [];
    }
    // SAFETY: the tensor is contiguous uint8 on the CPU (checked above), so `data_ptr` points at
    // `length` bytes it owns, initialised because callers create it with `Tensor::zeros`; they pass
    // tensors they just created, so no shallow clone aliases them, and the `&mut` borrow keeps the
    // tensor alive and otherwise unused for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, length) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// Writes `name` with `length` bytes, last used `age` seconds ago.
    fn entry(dir: &Path, name: &str, length: usize, age: u64) -> PathBuf {
        let path = dir.join(name);
        files::write_atomic_bytes(&path, &vec![7u8; length]).unwrap();
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(age))
            .unwrap();
        path
    }

    #[test]
    fn a_full_disk_evicts_least_recently_used_entries_and_tries_once_more() {
        let dir = tempfile::tempdir().unwrap();
        let old = entry(dir.path(), "train-128-a.bin", 100, 3600);
        let own = entry(dir.path(), "features/train-block4-b.bin", 100, 7200);
        let just_built = entry(dir.path(), "test-128-c.bin", 100, 0);
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);

        let mut attempts = 0;
        let written = write_making_room(dir.path(), 50, std::slice::from_ref(&own), || {
            attempts += 1;
            if attempts == 1 {
                Err(full())
            } else {
                Ok(attempts)
            }
        });
        assert_eq!(written.unwrap(), 2, "written at the second try");
        assert!(!old.exists() && own.exists() && just_built.exists(), "the job's own and the just built entries stay");

        // Nothing left that may go: the disk's error, without a pointless second try.
        let mut attempts = 0;
        let failed = write_making_room(dir.path(), 50, std::slice::from_ref(&own), || -> std::io::Result<()> {
            attempts += 1;
            Err(full())
        });
        assert_eq!((failed.unwrap_err().raw_os_error(), attempts), (Some(libc::ENOSPC), 1));

        // Any other error is not the disk's: nothing is evicted, nothing retried.
        let mut attempts = 0;
        let failed = write_making_room(dir.path(), 50, &[], || -> std::io::Result<()> {
            attempts += 1;
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        });
        assert_eq!((failed.unwrap_err().raw_os_error(), attempts), (Some(libc::EACCES), 1));
        assert!(own.exists() && just_built.exists());
    }
}
