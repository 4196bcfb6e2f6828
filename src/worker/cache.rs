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
//! Writers write a private temporary file (`<key>.bin.tmp.<pid>.<n>.<nonce>`), fsync it and
//! `rename` it over the entry, so readers see either no entry or a complete one; two jobs that
//! build the same entry at once both succeed and the last rename wins (both files are identical; a
//! reader that opened the first keeps reading it). Readers check the magic, version, header and
//! exact length and treat anything else as a miss, which rebuilds the entry. The pixels carry no
//! checksum: the rename protects against torn writes, not against a disk that flips bits. An entry
//! is `N·C·H·W` bytes (the Kaggle train split, grayscale, at 128 px: 85 MB). Reading an entry
//! refreshes its modification time, and whoever writes an entry then trims the whole cache folder
//! (these entries and the activation caches of `features.rs`) to its budget, least recently used
//! first ([`evict`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::{Interpolation, Resize};

const MAGIC: &[u8; 8] = b"TRQCACHE";

/// Bump whenever the bytes an entry would hold change for the same inputs: the layout, the
/// decoder (e.g. its DCT-domain downscaling) or the resize. Old entries then miss.
pub const FORMAT_VERSION: u32 = 2;

/// Temporary files older than this are left over from a killed builder and are removed.
const STALE_TEMPORARY: Duration = Duration::from_secs(24 * 3600);

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
/// relative path, label, size and modification time (ns). Editing, adding, removing or renaming a
/// file therefore gives a new key.
pub fn entry_key(
    dataset_dir: &Path,
    split: &str,
    files: &[(PathBuf, i64)],
    classes: &[String],
    resize: Resize,
    interpolation: Interpolation,
) -> std::io::Result<String> {
    let interpolation = interpolation_name(interpolation);
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
    }
    let digest = hasher.finalize();
    let hash: String = digest[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{split}-{size}-{interpolation}-{hash}"))
}

fn interpolation_name(interpolation: Interpolation) -> &'static str {
    match interpolation {
        Interpolation::Nearest => "nearest",
        Interpolation::Bilinear => "bilinear",
        Interpolation::Area => "area",
    }
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
    touch(&path);
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

/// Writes the entry for `header.key` atomically (temporary file, fsync, rename); `groups` are the
/// contiguous CPU uint8 tensors the header's groups describe.
pub fn write_entry(cache_dir: &Path, header: &EntryHeader, groups: &[&Tensor]) -> std::io::Result<()> {
    assert_eq!(groups.len(), header.groups.len(), "one tensor per group");
    for (tensor, group) in groups.iter().zip(&header.groups) {
        assert_eq!(tensor.numel(), header.group_bytes(group), "pixels match the header");
    }
    let header_bytes = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    write_atomic(&entry_path(cache_dir, &header.key), |file| {
        file.write_all(MAGIC)?;
        file.write_all(&FORMAT_VERSION.to_le_bytes())?;
        file.write_all(&(header_bytes.len() as u32).to_le_bytes())?;
        file.write_all(&header_bytes)?;
        for tensor in groups {
            file.write_all(tensor_bytes(tensor))?;
        }
        Ok(())
    })
}

/// Creates `path` atomically: `write` fills a private temporary file beside it
/// (`<name>.tmp.<pid>.<n>.<nonce>`), which is fsynced and renamed over `path`, so readers see no
/// file or a complete one, and concurrent writers of the same file all succeed (the last rename
/// wins; a reader that opened an earlier one keeps reading it).
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a folder");
    std::fs::create_dir_all(dir)?;
    remove_stale_temporaries(dir);
    // Unique per writer: other processes differ in pid, threads of this one in the counter.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let nonce = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let write_number = WRITES.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().expect("a file name").to_string_lossy();
    let temporary = dir.join(format!("{name}.tmp.{}.{write_number}.{nonce:08x}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Marks a cache file as just used (its modification time is the LRU clock of [`evict`]).
pub fn touch(path: &Path) {
    if let Ok(file) = File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// What [`evict`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Files removed.
    pub removed: usize,
    /// Bytes they held.
    pub freed: u64,
    /// Bytes the cache holds afterwards.
    pub remaining: u64,
}

/// Keeps the cache under `budget` bytes: removes the least recently used entries (`*.bin` in
/// `cache_root` and its sub-folders, by modification time, which hits refresh) until the rest fit,
/// never those in `keep` (the entries its caller just wrote or read). Removing an entry another job is
/// reading is safe: an open or mapped file lives until it is closed; later jobs rebuild it.
pub fn evict(cache_root: &Path, budget: u64, keep: &[PathBuf]) -> Eviction {
    let mut entries = Vec::new();
    let folders = std::iter::once(cache_root.to_path_buf()).chain(
        std::fs::read_dir(cache_root).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
    );
    for folder in folders {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|extension| extension == "bin") {
                if let Ok(metadata) = entry.metadata() {
                    let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    entries.push((used, metadata.len(), path));
                }
            }
        }
    }
    entries.sort();
    let mut eviction = Eviction { remaining: entries.iter().map(|(_, length, _)| length).sum(), ..Eviction::default() };
    for (_, length, path) in entries {
        if eviction.remaining <= budget {
            break;
        }
        if keep.contains(&path) {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            eprintln!("cache: evicted {} ({:.1} MB, least recently used)", path.display(), length as f64 / 1e6);
            eviction.removed += 1;
            eviction.freed += length;
            eviction.remaining -= length;
        }
    }
    eviction
}

/// Best effort: deletes temporary files that a builder killed mid-write left behind.
fn remove_stale_temporaries(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return };
    for entry in entries.flatten() {
        let is_temporary = entry.file_name().to_string_lossy().contains(".bin.tmp.");
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|modified| {
            SystemTime::now().duration_since(modified).is_ok_and(|age| age > STALE_TEMPORARY)
        });
        if is_temporary && old {
            let _ = std::fs::remove_file(entry.path());
        }
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

    /// Writes `name` with `length` bytes, last used `age` seconds ago.
    fn entry(dir: &Path, name: &str, length: usize, age: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_atomic(&path, |file| file.write_all(&vec![7u8; length])).unwrap();
        let used = SystemTime::now() - Duration::from_secs(age);
        File::options().append(true).open(&path).unwrap().set_modified(used).unwrap();
        path
    }

    #[test]
    fn eviction_removes_the_least_recently_used_entries_until_the_rest_fit() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = entry(dir.path(), "train-128-a.bin", 400, 300);
        let old_features = entry(dir.path(), "features/train-block4-b.bin", 300, 200);
        let recent = entry(dir.path(), "test-128-c.bin", 200, 100);
        let newest = entry(dir.path(), "features/test-block4-d.bin", 100, 0);
        let unrelated = dir.path().join("notes.txt");
        std::fs::write(&unrelated, vec![0u8; 5000]).unwrap();

        // A read refreshes the clock: the oldest entry becomes the most recently used.
        touch(&oldest);
        let eviction = evict(dir.path(), 750, std::slice::from_ref(&newest));
        assert_eq!(eviction, Eviction { removed: 1, freed: 300, remaining: 700 });
        assert!(!old_features.exists() && oldest.exists() && recent.exists() && newest.exists());
        assert!(unrelated.exists(), "only cache entries are ever removed");

        // `keep` survives even when it alone is over the budget.
        let eviction = evict(dir.path(), 50, std::slice::from_ref(&newest));
        assert_eq!((eviction.removed, eviction.remaining), (2, 100));
        assert!(newest.exists() && !oldest.exists() && !recent.exists());
        assert_eq!(evict(dir.path(), 1000, &[]), Eviction { removed: 0, freed: 0, remaining: 100 });
    }
}
