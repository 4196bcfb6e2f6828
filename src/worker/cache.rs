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
//! checksum: the rename protects against torn writes, not against a disk that flips bits. Nothing
//! is ever evicted: an entry is `N·C·H·W` bytes (the Kaggle train split, grayscale, at 128 px: 85 MB).

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

fn entry_path(cache_dir: &Path, key: &str) -> PathBuf {
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
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(err) => return Err(Miss::Invalid(err.to_string())),
    };
    let invalid = |reason: &str| Miss::Invalid(reason.to_string());
    let file_length = file.metadata().map_err(|err| Miss::Invalid(err.to_string()))?.len();
    let mut prefix = [0u8; 16];
    file.read_exact(&mut prefix).map_err(|_| invalid("shorter than its prefix"))?;
    if &prefix[..8] != MAGIC {
        return Err(invalid("bad magic"));
    }
    let version = u32::from_le_bytes(prefix[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(Miss::Invalid(format!("format version {version}, expected {FORMAT_VERSION}")));
    }
    let header_length = u32::from_le_bytes(prefix[12..16].try_into().unwrap()) as u64;
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
    Ok((header, groups))
}

/// Writes the entry for `header.key` atomically (temporary file, fsync, rename); `groups` are the
/// contiguous CPU uint8 tensors the header's groups describe.
pub fn write_entry(cache_dir: &Path, header: &EntryHeader, groups: &[&Tensor]) -> std::io::Result<()> {
    assert_eq!(groups.len(), header.groups.len(), "one tensor per group");
    for (tensor, group) in groups.iter().zip(&header.groups) {
        assert_eq!(tensor.numel(), header.group_bytes(group), "pixels match the header");
    }
    std::fs::create_dir_all(cache_dir)?;
    remove_stale_temporaries(cache_dir);
    let header_bytes = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    // Unique per writer: other processes differ in pid, threads of this one in the counter.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let nonce = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    let final_path = entry_path(cache_dir, &header.key);
    let temporary = cache_dir.join(format!("{}.bin.tmp.{}.{write}.{nonce:08x}", header.key, std::process::id()));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(MAGIC)?;
        file.write_all(&FORMAT_VERSION.to_le_bytes())?;
        file.write_all(&(header_bytes.len() as u32).to_le_bytes())?;
        file.write_all(&header_bytes)?;
        for tensor in groups {
            file.write_all(uint8_bytes(tensor))?;
        }
        file.sync_all()?;
        std::fs::rename(&temporary, &final_path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
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

/// The bytes of a contiguous CPU uint8 tensor, to be written out.
fn uint8_bytes(tensor: &Tensor) -> &[u8] {
    assert!(
        tensor.kind() == Kind::Uint8 && tensor.device() == Device::Cpu && tensor.is_contiguous(),
        "a contiguous CPU uint8 tensor"
    );
    let length = tensor.numel();
    if length == 0 {
        return &[];
    }
    // SAFETY: the tensor is contiguous uint8 on the CPU (checked above), so `data_ptr` points at
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
