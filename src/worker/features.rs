//! The activation cache: a phase's frozen prefix computed once, not once per epoch.
//!
//! Without augmentation, and with frozen layers in inference mode, the blocks below a phase's first
//! trained block map each image to the same activations in every epoch — and in every job that
//! uses the same pixels and the same backbone state. A phase therefore computes them once per split
//! (in batches, under `no_grad`), and trains and evaluates the rest of the network on them
//! (`Network::forward_from`). When only the head trains and it starts with `gap`, the pooled
//! vector (one value per channel) is what is cached.
//!
//! Entries live in `<cache dir>/features/<key>.bin` and are shared by all jobs of all users. The
//! key ([`key`]) hashes everything that decides the activations: the pixel cache entry's key (the
//! dataset's files, split, size, interpolation), the backbone, the cut, the dtype, and a hash of
//! every backbone tensor's bytes (pretrained or seeded-random weights, batch-norm statistics), so
//! a hit can never serve activations of other weights. Files are written like the pixel cache's
//! (`files::write_atomic`; a full disk evicts to make room and tries once more) and read
//! through a memory map, so a cache larger than memory streams from the page cache; on a GPU a
//! job copies its activations to the device when they fit.
//!
//! File layout: magic `TRQFEATS`, u32 format version, u32 header length, the JSON [`Header`],
//! zero padding to a multiple of 64 bytes, then each group's tensor (C order, the header's dtype),
//! group after group.

use crate::cache::{self, Miss};
use crate::data::Split;
use crate::model::{Cut, Network};
use crate::normalise::Normaliser;
use crate::precision::Numerics;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use trainq::files;

const MAGIC: &[u8; 8] = b"TRQFEATS";

/// Bump whenever the activations stored for the same key would differ (layout, model code).
pub const FORMAT_VERSION: u32 = 1;

/// The tensors start at a multiple of this many bytes (aligned for every dtype).
const ALIGN: usize = 64;

/// Everything in an entry besides the activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    key: String,
    /// `float32` or `bfloat16`.
    dtype: String,
    /// Each group's full shape, `[n, …]`.
    shapes: Vec<Vec<i64>>,
}

/// A split's activations at a cut: one tensor per shape group of its pixels, in the same order.
pub struct Features {
    /// `[n, C, h, w]`, or `[n, C]` when pooled. Declared before `map` so they are dropped first.
    pub groups: Vec<Tensor>,
    /// The mapped file the CPU tensors point into, if they came from the cache.
    map: Option<memmap2::Mmap>,
}

impl Features {
    /// Bytes of activations.
    pub fn bytes(&self) -> u64 {
        self.groups.iter().map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
    }

    /// Copies the activations to `device` (a GPU job whose activations fit keeps them there).
    pub fn move_to(&mut self, device: Device) {
        if device == Device::Cpu {
            return;
        }
        self.groups = self.groups.iter().map(|group| group.to_device(device)).collect();
        // The GPU copies no longer point into the mapping.
        self.map = None;
    }
}

/// How a split's activations were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the shared cache.
    Hit,
    /// Computed and stored in the shared cache.
    Built,
    /// Computed and kept in memory only (no cache folder, or it could not be written).
    Memory,
}

/// The dtype activations are kept in: bf16 when the job's forward passes run in bf16 anyway.
pub fn dtype(numerics: &Numerics) -> Kind {
    if numerics.bf16 {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// `float32` or `bfloat16`, as entries and logs name the dtype.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        _ => "float32",
    }
}

/// A hash of every backbone tensor (name, shape, dtype, bytes): two networks with the same hash
/// compute the same activations.
pub fn state_hash(network: &Network) -> String {
    let mut hasher = Sha256::new();
    for (name, tensor) in network.backbone_state() {
        let tensor = tensor.to_device(Device::Cpu).contiguous();
        hasher.update(name.as_bytes());
        hasher.update(format!("\0{:?}\0{:?}\0", tensor.size(), tensor.kind()).as_bytes());
        hasher.update(cache::tensor_bytes(&tensor));
    }
    hex(&hasher.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The key of a split's activations: `<split>-<cut name>-<hash>`, the hash covering the format
/// version, the pixel entry's key, backbone, cut, dtype and backbone state.
pub fn key(split: &str, pixels_key: &str, backbone: &str, cut_name: &str, kind: Kind, state_hash: &str) -> String {
    let mut hasher = Sha256::new();
    let kind = dtype_name(kind);
    hasher.update(
        format!("trainq features v{FORMAT_VERSION}\0{pixels_key}\0{backbone}\0{cut_name}\0{kind}\0{state_hash}")
            .as_bytes(),
    );
    format!("{split}-{}-{}", cut_name.replace('+', "-"), hex(&hasher.finalize()[..16]))
}

/// The file of the entry `key`.
pub fn entry_path(features_dir: &Path, key: &str) -> PathBuf {
    features_dir.join(format!("{key}.bin"))
}

/// Runs the frozen prefix over every image of `split`, `batch` images at a time, in inference
/// mode; the activations stay on the job's device, in `kind`.
pub fn compute(
    network: &Network,
    split: &Split,
    cut: Cut,
    normaliser: &Normaliser,
    numerics: &Numerics,
    batch: i64,
    kind: Kind,
) -> Features {
    let groups = split
        .groups
        .iter()
        .map(|group| {
            in_batches(&group.images, batch, |images| {
                let images = numerics.input(normaliser.apply(images));
                numerics.forward(|| network.features(&images, cut)).to_kind(kind).contiguous()
            })
        })
        .collect();
    Features { groups, map: None }
}

/// `f` over `batch`-sized slices of `stored` along its first dimension, the results concatenated.
fn in_batches(stored: &Tensor, batch: i64, mut f: impl FnMut(&Tensor) -> Tensor) -> Tensor {
    let count = stored.size()[0];
    let parts: Vec<Tensor> = (0..count)
        .step_by(batch.max(1) as usize)
        .map(|start| f(&stored.narrow(0, start, batch.min(count - start))))
        .collect();
    Tensor::cat(&parts, 0)
}

/// Stores activations as the entry `key`, atomically.
pub fn write(features_dir: &Path, key: &str, features: &Features) -> std::io::Result<PathBuf> {
    let kind = features.groups.first().map_or(Kind::Float, Tensor::kind);
    let header = Header {
        key: key.to_string(),
        dtype: dtype_name(kind).to_string(),
        shapes: features.groups.iter().map(Tensor::size).collect(),
    };
    let header_bytes = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let path = entry_path(features_dir, key);
    files::evict::remove_stale_temporaries(features_dir);
    files::write_atomic(&path, |file| {
        file.write_all(MAGIC)?;
        file.write_all(&FORMAT_VERSION.to_le_bytes())?;
        file.write_all(&(header_bytes.len() as u32).to_le_bytes())?;
        file.write_all(&header_bytes)?;
        file.write_all(&vec![0u8; padding(16 + header_bytes.len())])?;
        for group in &features.groups {
            file.write_all(cache::tensor_bytes(&group.to_device(Device::Cpu).contiguous()))?;
        }
        Ok(())
    })?;
    Ok(path)
}

/// [`write`] through `cache::write_making_room`: the cache root is the features folder's parent,
/// and `keep` and `used` (the caller's own files) are spared.
fn write_making_room(
    features_dir: &Path,
    key: &str,
    features: &Features,
    keep: &[PathBuf],
    used: &[PathBuf],
) -> std::io::Result<PathBuf> {
    let cache_root = features_dir.parent().unwrap_or(features_dir);
    let spared: Vec<PathBuf> = keep.iter().chain(used).cloned().collect();
    cache::write_making_room(cache_root, features.bytes(), &spared, || write(features_dir, key, features))
}

fn padding(offset: usize) -> usize {
    offset.next_multiple_of(ALIGN) - offset
}

/// Reads the entry `key` through a memory map: CPU tensors pointing into the mapped file, valid
/// while the returned [`Features`] lives. Anything but a complete entry for `key` is a miss.
pub fn read(features_dir: &Path, key: &str) -> Result<Features, Miss> {
    let path = entry_path(features_dir, key);
    let (file, header_length) = cache::open_entry(&path, MAGIC, FORMAT_VERSION)?;
    let invalid = |reason: &str| Miss::Invalid(reason.to_string());
    // SAFETY: the file is only ever replaced by rename, never modified or truncated in place (see
    // the module notes), so the mapping stays valid and unchanged while it lives; eviction unlinks
    // the name, which keeps a mapped inode alive.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|err| Miss::Invalid(err.to_string()))?;
    let header_end = 16 + header_length;
    if header_end > map.len() {
        return Err(invalid("truncated header"));
    }
    let header: Header =
        serde_json::from_slice(&map[16..header_end]).map_err(|err| Miss::Invalid(format!("bad header: {err}")))?;
    let kind = match header.dtype.as_str() {
        "float32" => Kind::Float,
        "bfloat16" => Kind::BFloat16,
        other => return Err(Miss::Invalid(format!("unknown dtype {other}"))),
    };
    if header.key != key || header.shapes.iter().any(|shape| shape.is_empty() || shape.iter().any(|&d| d < 0)) {
        return Err(invalid("header does not describe this entry"));
    }
    let mut offset = header_end + padding(header_end);
    let lengths: Vec<usize> =
        header.shapes.iter().map(|shape| shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes()).collect();
    if offset + lengths.iter().sum::<usize>() != map.len() {
        return Err(Miss::Invalid(format!(
            "{} bytes where {} were expected",
            map.len(),
            offset + lengths.iter().sum::<usize>()
        )));
    }
    let mut groups = Vec::with_capacity(header.shapes.len());
    for (shape, length) in header.shapes.iter().zip(lengths) {
        let strides = contiguous_strides(shape);
        // SAFETY: `offset..offset + length` lies inside the mapping (checked against its length
        // above), is aligned for the dtype (`ALIGN`, and every earlier group is a whole number of
        // elements of a dtype no wider than 4 bytes after a 64-byte-aligned start), and the
        // mapping outlives the tensor: both live in the returned `Features`, tensors dropped first.
        // The mapping is read-only; nothing writes through these tensors (they are gathered from).
        let tensor = unsafe { Tensor::from_blob(map.as_ptr().add(offset), shape, &strides, kind, Device::Cpu) };
        groups.push(tensor);
        offset += length;
    }
    files::evict::touch(&path);
    Ok(Features { groups, map: Some(map) })
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

/// Where a split's activations may be stored: the features folder and the entry's key.
pub type Entry<'a> = Option<(&'a Path, String)>;

/// Reads a split's activations from the cache, or computes them (and stores them when there is an
/// entry to store them as). With `lower`, a deeper cut a later phase will need, the computation
/// goes through it: the lower cut's activations are obtained (and stored) first and this cut's
/// are derived from them, so the frozen blocks below the lower cut run once for both phases. A
/// cache that cannot be read or written costs a warning and a recomputation, never the job; when
/// the disk is full, least recently used entries make room, but never those in `keep` (the job's
/// own cache files: one it holds mapped would free nothing) nor those this call uses.
/// Returns the activations, how they were obtained, and the cache files used.
#[allow(clippy::too_many_arguments)]
pub fn obtain(
    network: &Network,
    split: &Split,
    cut: Cut,
    normaliser: &Normaliser,
    numerics: &Numerics,
    batch: i64,
    entry: Entry,
    lower: Option<(Cut, Entry)>,
    keep: &[PathBuf],
) -> (Features, Source, Vec<PathBuf>) {
    let kind = dtype(numerics);
    if let Some((dir, key)) = &entry {
        match read(dir, key) {
            Ok(features) => return (features, Source::Hit, vec![entry_path(dir, key)]),
            Err(Miss::Absent) => {}
            Err(Miss::Invalid(reason)) => {
                eprintln!("warning: activation cache entry {key} is unusable ({reason}); rebuilding it")
            }
        }
    }
    let (features, mut files) = match lower {
        Some((lower_cut, lower_entry)) => {
            let (base, _, files) =
                obtain(network, split, lower_cut, normaliser, numerics, batch, lower_entry, None, keep);
            (derive(network, &base, lower_cut, cut, normaliser.device(), numerics, batch, kind), files)
        }
        None => (compute(network, split, cut, normaliser, numerics, batch, kind), Vec::new()),
    };
    match entry {
        Some((dir, key)) => match write_making_room(dir, &key, &features, keep, &files) {
            Ok(path) => {
                files.push(path);
                (features, Source::Built, files)
            }
            Err(err) => {
                eprintln!("warning: could not store activation cache entry {key} in {}: {err}", dir.display());
                (features, Source::Memory, files)
            }
        },
        None => (features, Source::Memory, files),
    }
}

/// The activations at cut `to` from those at the lower cut `from`: the blocks between run on
/// the stored activations, `batch` images at a time, in inference mode.
#[allow(clippy::too_many_arguments)]
pub fn derive(
    network: &Network,
    base: &Features,
    from: Cut,
    to: Cut,
    device: Device,
    numerics: &Numerics,
    batch: i64,
    kind: Kind,
) -> Features {
    let groups = base
        .groups
        .iter()
        .map(|stored| {
            in_batches(stored, batch, |part| {
                let x = part.to_device(device);
                let x = if numerics.bf16 { x } else { x.to_kind(Kind::Float) };
                let x = if x.dim() == 4 { numerics.input(x) } else { x };
                numerics.forward(|| network.features_between(&x, from, to)).to_kind(kind).contiguous()
            })
        })
        .collect();
    Features { groups, map: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(groups: Vec<Tensor>) -> Features {
        Features { groups, map: None }
    }

    #[test]
    fn an_entry_round_trips_through_the_memory_map_in_both_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [Kind::Float, Kind::BFloat16] {
            let original = features(vec![
                Tensor::randn([3, 4, 2, 5], (Kind::Float, Device::Cpu)).to_kind(kind),
                Tensor::randn([1, 4, 5, 2], (Kind::Float, Device::Cpu)).to_kind(kind),
            ]);
            let key = format!("train-block4-{kind:?}");
            write(dir.path(), &key, &original).unwrap();
            let read_back = read(dir.path(), &key).unwrap();
            assert!(read_back.map.is_some(), "mapped, not copied");
            assert_eq!(read_back.groups.len(), 2);
            for (a, b) in original.groups.iter().zip(&read_back.groups) {
                assert_eq!(b.kind(), kind);
                assert!(a.equal(b), "identical values");
            }
            assert_eq!(read_back.bytes(), original.bytes());
            // Gathering from the mapped tensor works like from any other.
            let picked = read_back.groups[0].index_select(0, &Tensor::from_slice(&[2i64, 0]));
            assert!(picked.get(0).equal(&original.groups[0].get(2)));
        }
    }

    #[test]
    fn a_damaged_or_foreign_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let original = features(vec![Tensor::ones([2, 8], (Kind::Float, Device::Cpu))]);
        let path = write(dir.path(), "test-pooled", &original).unwrap();
        assert!(matches!(read(dir.path(), "absent"), Err(Miss::Absent)));
        std::fs::copy(&path, entry_path(dir.path(), "other")).unwrap();
        assert!(matches!(read(dir.path(), "other"), Err(Miss::Invalid(_))), "a file holding another key");
        let length = std::fs::metadata(&path).unwrap().len();
        std::fs::File::options().write(true).open(&path).unwrap().set_len(length - 4).unwrap();
        assert!(matches!(read(dir.path(), "test-pooled"), Err(Miss::Invalid(_))), "truncated");
    }

    #[test]
    fn keys_change_with_every_input() {
        let base = key("train", "train-128-nearest-aa", "vgg16", "block4", Kind::Float, "s1");
        assert!(base.starts_with("train-block4-"), "{base}");
        assert_eq!(base, key("train", "train-128-nearest-aa", "vgg16", "block4", Kind::Float, "s1"));
        for other in [
            key("train", "train-128-nearest-bb", "vgg16", "block4", Kind::Float, "s1"),
            key("train", "train-128-nearest-aa", "inception_v3", "block4", Kind::Float, "s1"),
            key("train", "train-128-nearest-aa", "vgg16", "block5+gap", Kind::Float, "s1"),
            key("train", "train-128-nearest-aa", "vgg16", "block4", Kind::BFloat16, "s1"),
            key("train", "train-128-nearest-aa", "vgg16", "block4", Kind::Float, "s2"),
        ] {
            assert_ne!(other, base);
        }
    }
}
