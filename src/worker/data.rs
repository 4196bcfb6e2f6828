//! ImageFolder loading: a split becomes uint8 tensors in memory, one per image shape (`[n, C, H, W]`;
//! one tensor for a square size, a few for variable size). The first job that needs a (dataset,
//! split, size, interpolation) decodes and resizes every image on all its threads and stores the
//! result in the shared cache (`cache.rs`); every later job reads it back with one file read. A
//! split whose images are all grayscale is kept with one channel (`C = 1`, a third of the memory,
//! cache and host→GPU traffic) and expanded to three channels when a batch is normalised; a split
//! with any colour image keeps three. A file that does not fully decode (truncated, corrupt, not an
//! image) is skipped with a warning, counted and named with its reason, never trained on; the job
//! fails only when a split or a class is left without images.

use crate::cache::{self, EntryHeader, GroupHeader, Miss};
use crate::jpeg;
use crate::resample;
use image::{DynamicImage, GrayImage, ImageBuffer, Pixel, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainq::catalog::datasets::split_files;
use trainq::domain::job::SkippedFile;
use trainq::domain::spec::{Interpolation, Resize, Sampling};

/// Images of one shape.
pub struct ShapeGroup {
    /// `[n, C, H, W]` uint8 pixels.
    pub images: Tensor,
    /// `[n]` int64 class indices.
    pub labels: Tensor,
}

impl ShapeGroup {
    /// Number of images.
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }
}

/// A loaded split.
pub struct Split {
    /// The images, grouped by shape; group after group is the split's tensor order.
    pub groups: Vec<ShapeGroup>,
    /// `[N]` int64 class indices of all groups, in tensor order (on the CPU).
    pub labels: Tensor,
    /// Source files, in tensor order.
    pub paths: Vec<PathBuf>,
    /// Channels stored: 1 when every image is grayscale, else 3.
    pub channels: usize,
    /// Files that failed to decode (when the entry was built, for a cache hit).
    pub skipped: usize,
    /// Those files, relative to the dataset's folder, with why each did not decode.
    pub skipped_files: Vec<SkippedFile>,
    /// Wall time of the load.
    pub seconds: f64,
    /// Whether the pixels came from the cache.
    pub cache: CacheOutcome,
    /// Images this load decoded: 0 on a cache hit.
    pub decoded: usize,
}

/// Where a split's pixels came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from the cache entry with this key; nothing was decoded.
    Hit(String),
    /// Decoded, then stored as the cache entry with this key.
    Built(String),
    /// Decoded and not stored: the job has no cache folder, or the entry could not be written.
    Off,
}

impl CacheOutcome {
    /// `hit`, `built` or `off`, as the `data` progress event reports it.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit(_) => "hit",
            CacheOutcome::Built(_) => "built",
            CacheOutcome::Off => "off",
        }
    }
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Why the job cannot train on this split, if a class (or the whole split) was left without
    /// images once the files that do not decode were skipped.
    pub fn left_empty(&self, split: &str, classes: &[String]) -> Option<String> {
        let labels = Vec::<i64>::try_from(&self.labels).unwrap_or_default();
        left_empty(split, classes, &labels, &self.skipped_files)
    }

    /// Image `index` (tensor order) as `[1, C, H, W]` uint8.
    pub fn image(&self, index: usize) -> Tensor {
        let mut offset = index as i64;
        for group in &self.groups {
            if offset < group.len() {
                return group.images.narrow(0, offset, 1);
            }
            offset -= group.len();
        }
        panic!("image {index} of a split of {}", self.len());
    }

    /// Bytes of pixels held.
    pub fn pixel_bytes(&self) -> i64 {
        self.groups.iter().map(|group| group.images.numel() as i64).sum()
    }

    /// Moves the pixels and labels to `device` (a no-op for the CPU): a GPU job whose split fits
    /// copies it once, and every batch after that is gathered on the GPU.
    pub fn move_to(&mut self, device: Device) {
        for group in &mut self.groups {
            group.images = group.images.to_device(device);
            group.labels = group.labels.to_device(device);
        }
    }

    /// The shapes held, e.g. `128x128` or `192x256 (40), 256x192 (310)`.
    pub fn shapes(&self) -> String {
        let shape = |group: &ShapeGroup| {
            let size = group.images.size();
            format!("{}x{}", size[3], size[2])
        };
        match self.groups.as_slice() {
            [one] => shape(one),
            groups => {
                groups.iter().map(|group| format!("{} ({})", shape(group), group.len())).collect::<Vec<_>>().join(", ")
            }
        }
    }

    /// The job-log line for this load (after the split's name).
    pub fn summary(&self) -> String {
        let layout =
            format!("{} channel{}, {}", self.channels, if self.channels == 1 { "" } else { "s" }, self.shapes());
        match &self.cache {
            CacheOutcome::Hit(key) => format!(
                "cache hit {key}: {} images, 0 decoded ({:.2}s, {} skipped; {layout})",
                self.len(),
                self.seconds,
                self.skipped
            ),
            CacheOutcome::Built(key) => format!(
                "decoded {} images ({} skipped) in {:.1}s, cached as {key} ({layout})",
                self.decoded, self.skipped, self.seconds
            ),
            CacheOutcome::Off => format!(
                "decoded {} images ({} skipped) in {:.1}s, not cached ({layout})",
                self.decoded, self.skipped, self.seconds
            ),
        }
    }
}

/// Loads `split` of the dataset at `dataset_dir`, sized by `resize`: from the cache entry in
/// `cache_dir` when there is a valid one, else by decoding on `threads` threads and storing the
/// result there. Without a `cache_dir` it always decodes. A cache that cannot be read or written
/// costs a warning, never the job.
pub fn load_split(
    dataset_dir: &Path,
    split: &str,
    classes: &[String],
    resize: Resize,
    sampling: Sampling,
    threads: usize,
    cache_dir: Option<&Path>,
) -> anyhow::Result<Split> {
    let started = Instant::now();
    let files = split_files(dataset_dir, split, classes)?;
    let key = cache_dir.and_then(|_| match cache::entry_key(dataset_dir, split, &files, classes, resize, sampling) {
        Ok(key) => Some(key),
        Err(err) => {
            eprintln!("warning: not caching the {split} split: {err}");
            None
        }
    });
    if let (Some(dir), Some(key)) = (cache_dir, &key) {
        match cache::read_entry(dir, key) {
            Ok((header, images)) => {
                let mut offset = 0;
                let groups = images
                    .into_iter()
                    .map(|images| {
                        let count = images.size()[0] as usize;
                        let labels = Tensor::from_slice(&header.labels[offset..offset + count]);
                        offset += count;
                        ShapeGroup { images, labels }
                    })
                    .collect();
                return Ok(Split {
                    groups,
                    labels: Tensor::from_slice(&header.labels),
                    paths: header.paths.iter().map(|path| dataset_dir.join(path)).collect(),
                    channels: header.channels,
                    skipped: header.skipped.len(),
                    skipped_files: skipped_files(&header.skipped, &header.skipped_reasons),
                    seconds: started.elapsed().as_secs_f64(),
                    cache: CacheOutcome::Hit(key.clone()),
                    decoded: 0,
                });
            }
            Err(Miss::Absent) => {}
            Err(Miss::Invalid(reason)) => eprintln!("warning: cache entry {key} is unusable ({reason}); rebuilding it"),
        }
    }

    let decoded = decode_files(&files, resize, sampling, threads);
    let channels = if decoded.iter().flatten().all(|image| image.gray) { 1 } else { 3 };
    // Group by shape (height, width); within a group, file order.
    let mut by_shape: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    let (mut skipped_paths, mut skipped_reasons) = (Vec::new(), Vec::new());
    for (index, image) in decoded.iter().enumerate() {
        match image {
            Ok(image) => by_shape.entry((image.height, image.width)).or_default().push(index),
            Err(reason) => {
                skipped_paths.push(files[index].0.clone());
                skipped_reasons.push(reason.clone());
            }
        }
    }
    let mut decoded = decoded;
    let (mut groups, mut labels, mut paths, mut group_headers) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((height, width), members) in by_shape {
        let plane = (height * width) as usize;
        let shape = [members.len() as i64, channels as i64, height as i64, width as i64];
        let mut images = Tensor::zeros(shape, (Kind::Uint8, Device::Cpu));
        let pixels = cache::uint8_bytes_mut(&mut images);
        for (slot, &index) in pixels.chunks_exact_mut(channels * plane).zip(&members) {
            let image = std::mem::replace(&mut decoded[index], Err(String::new())).expect("grouped images are decoded");
            // A gray image in a colour split fills all three channels.
            for (c, channel) in slot.chunks_exact_mut(plane).enumerate() {
                let source = if image.gray { 0 } else { c * plane };
                channel.copy_from_slice(&image.pixels[source..source + plane]);
            }
        }
        let group_labels: Vec<i64> = members.iter().map(|&index| files[index].1).collect();
        group_headers.push(GroupHeader { count: members.len(), height: height as usize, width: width as usize });
        groups.push(ShapeGroup { images, labels: Tensor::from_slice(&group_labels) });
        labels.extend(group_labels);
        paths.extend(members.iter().map(|&index| files[index].0.clone()));
    }
    let count = labels.len();
    let relative = |path: &PathBuf| path.strip_prefix(dataset_dir).unwrap_or(path).to_path_buf();
    let skipped_relative: Vec<PathBuf> = skipped_paths.iter().map(relative).collect();
    let outcome = match (cache_dir, key) {
        (Some(dir), Some(key)) => {
            let header = EntryHeader {
                key: key.clone(),
                count,
                channels,
                groups: group_headers,
                labels: labels.clone(),
                paths: paths.iter().map(relative).collect(),
                skipped: skipped_relative.clone(),
                skipped_reasons: skipped_reasons.clone(),
            };
            let tensors: Vec<&Tensor> = groups.iter().map(|group| &group.images).collect();
            match cache::write_entry(dir, &header, &tensors) {
                Ok(()) => CacheOutcome::Built(key),
                Err(err) => {
                    eprintln!("warning: could not store cache entry {key} in {}: {err}", dir.display());
                    CacheOutcome::Off
                }
            }
        }
        _ => CacheOutcome::Off,
    };
    Ok(Split {
        groups,
        labels: Tensor::from_slice(&labels),
        paths,
        channels,
        skipped: skipped_paths.len(),
        skipped_files: skipped_files(&skipped_relative, &skipped_reasons),
        seconds: started.elapsed().as_secs_f64(),
        cache: outcome,
        decoded: count,
    })
}

/// The pure check behind [`Split::left_empty`]: the split, or the first class of it, with no
/// image among `labels`, said with how many files were skipped there.
fn left_empty(split: &str, classes: &[String], labels: &[i64], skipped: &[SkippedFile]) -> Option<String> {
    let skipped_under = |prefix: &str| skipped.iter().filter(|file| file.path.starts_with(prefix)).count();
    if labels.is_empty() {
        return Some(format!(
            "the {split} split has no images ({} files there did not decode)",
            skipped_under(&format!("{split}/"))
        ));
    }
    let (_, class) = classes.iter().enumerate().find(|(label, _)| !labels.contains(&(*label as i64)))?;
    Some(format!(
        "class `{class}` of the {split} split has no images ({} files there did not decode); every class needs images in every split",
        skipped_under(&format!("{split}/{class}/"))
    ))
}

/// The skipped files as the job reports them: relative paths with reasons (an entry from before
/// reasons were kept says so).
fn skipped_files(paths: &[PathBuf], reasons: &[String]) -> Vec<SkippedFile> {
    paths
        .iter()
        .enumerate()
        .map(|(index, path)| SkippedFile {
            path: path.to_string_lossy().into_owned(),
            reason: reasons.get(index).cloned().unwrap_or_else(|| String::from("did not decode (reason not cached)")),
        })
        .collect()
}

/// One decoded and resized image: one plane if gray (or colour with identical channels), three
/// planes (CHW) otherwise.
struct Decoded {
    width: u32,
    height: u32,
    gray: bool,
    pixels: Vec<u8>,
}

/// Decodes `files` on `threads` threads, which take the next file as they finish one (image sizes
/// vary, so fixed chunks would leave a thread idle). Unreadable files come back as the reason.
fn decode_files(
    files: &[(PathBuf, i64)],
    resize: Resize,
    sampling: Sampling,
    threads: usize,
) -> Vec<Result<Decoded, String>> {
    let work = Mutex::new(files.iter().enumerate());
    let results: Vec<Vec<(usize, Result<Decoded, String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, files.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let (mut done, mut file_bytes) = (Vec::new(), Vec::new());
                    loop {
                        let next = work.lock().expect("a decoder thread panicked").next();
                        let Some((index, (path, _))) = next else { break done };
                        done.push((index, decode_file(path, resize, sampling, &mut file_bytes)));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("decoder thread panicked")).collect()
    });
    let mut decoded: Vec<Result<Decoded, String>> =
        files.iter().map(|_| Err(String::from("not decoded (its thread stopped)"))).collect();
    for (index, image) in results.into_iter().flatten() {
        decoded[index] = image;
    }
    decoded
}

/// Decodes and resizes one file; the decoder's reason (with a warning) if it does not fully
/// decode. `file_bytes` is the thread's reusable read buffer (a fresh one per file costs page
/// faults that show on a fast first pass).
fn decode_file(path: &Path, resize: Resize, sampling: Sampling, file_bytes: &mut Vec<u8>) -> Result<Decoded, String> {
    file_bytes.clear();
    let decoded = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_to_end(&mut file, file_bytes))
        .map_err(image::ImageError::IoError)
        .and_then(|_| {
            let (width, height) = source_dimensions(file_bytes)?;
            let (width, height) = resize.target(width, height);
            let image = decode_for_size(file_bytes, width, height, sampling)?;
            Ok(resize_planes(&image, width, height, sampling.interpolation))
        });
    decoded.map_err(|err| {
        eprintln!("warning: skipping unreadable image {}: {err}", path.display());
        err.to_string()
    })
}

/// One image file decoded and sized the way a job's splits are: `[1, C, H, W]` uint8 (C = 1 for
/// grayscale). For predictions and heatmaps on uploaded images.
pub fn load_image(path: &Path, resize: Resize, sampling: Sampling) -> anyhow::Result<Tensor> {
    let bytes = std::fs::read(path)?;
    let (width, height) = source_dimensions(&bytes)?;
    let (width, height) = resize.target(width, height);
    let image = decode_for_size(&bytes, width, height, sampling)?;
    let decoded = resize_planes(&image, width, height, sampling.interpolation);
    let channels = if decoded.gray { 1 } else { 3 };
    Ok(Tensor::from_slice(&decoded.pixels).view([1, channels, height as i64, width as i64]))
}

/// Decodes an image file's bytes in full, as a job at its source size would, for
/// `trainq-worker verify`: the decoder's reason when it does not.
pub fn verify_image(bytes: &[u8]) -> Result<(), String> {
    source_dimensions(bytes).map_err(|err| err.to_string())?;
    jpeg::decode(bytes).map(drop).map_err(|err| err.to_string())
}

/// An image file's width and height, from its header.
fn source_dimensions(bytes: &[u8]) -> image::ImageResult<(u32, u32)> {
    if let Some(header) = jpeg::header(bytes) {
        return Ok((header.width, header.height));
    }
    image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?.into_dimensions()
}

/// The DCT-domain reduction (8, 4, 2, or 1 for none) to decode a `width`×`height` JPEG at for a
/// `target_width`×`target_height` target: the largest that keeps both sides at least the target's,
/// so the resize that follows is still a downscale. A reduction happens only when the target is at
/// most about half the source.
pub fn dct_reduction(width: u32, height: u32, target_width: u32, target_height: u32) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|&factor| width.div_ceil(factor) >= target_width && height.div_ceil(factor) >= target_height)
        .unwrap_or(1)
}

/// Decodes an image file's bytes for a `target_width`×`target_height` target.
///
/// In full by default, as Pillow (and so Keras) decodes, so that the resize that follows sees the
/// same pixels. A JPEG much larger than the target is decoded at a reduced scale by libjpeg-turbo's
/// scaled inverse DCT (see [`dct_reduction`]) only where that changes nothing or the job asked for
/// it ([`reduces`]).
pub fn decode_for_size(
    bytes: &[u8],
    target_width: u32,
    target_height: u32,
    sampling: Sampling,
) -> image::ImageResult<DynamicImage> {
    if let Some(header) = jpeg::header(bytes) {
        let reduction = dct_reduction(header.width, header.height, target_width, target_height);
        let source = (header.width, header.height);
        if reduces(sampling, reduction, header.is_gray(), source, (target_width, target_height)) {
            return Ok(jpeg::decode_scaled(bytes, reduction)?);
        }
    }
    jpeg::decode(bytes)
}

/// Whether a JPEG of `source` size goes through the reduced decode for a `target` at this
/// `reduction`: always with `fast_decode` (a reduced pixel is a block's mean, smoother than the
/// full image's pixel that `nearest` and `bilinear` would sample); otherwise only for `area` at
/// 1/8 of a grayscale file whose every output box is whole 8×8 blocks, where a 1/8 pixel (the
/// block's DC) is exactly the mean the box filter takes anyway.
fn reduces(sampling: Sampling, reduction: u32, gray: bool, source: (u32, u32), target: (u32, u32)) -> bool {
    if reduction == 1 {
        return false;
    }
    if sampling.fast_decode {
        return true;
    }
    let whole_blocks = |extent: u32, out: u32| extent.is_multiple_of(out * 8);
    sampling.interpolation == Interpolation::Area
        && reduction == 8
        && gray
        && whole_blocks(source.0, target.0)
        && whole_blocks(source.1, target.1)
}

/// Resizes to `width`×`height` and lays the result out channel-first: one plane for a grayscale
/// image, and for a colour image whose three channels came out identical (an X-ray saved as RGB);
/// three planes otherwise.
fn resize_planes(image: &DynamicImage, width: u32, height: u32, interpolation: Interpolation) -> Decoded {
    if image.color().has_color() {
        let rgb: RgbImage = resize(&image.to_rgb8(), width, height, interpolation);
        if rgb.pixels().all(|pixel| pixel.0[0] == pixel.0[1] && pixel.0[1] == pixel.0[2]) {
            let pixels = rgb.pixels().map(|pixel| pixel.0[0]).collect();
            return Decoded { width, height, gray: true, pixels };
        }
        let plane = (width * height) as usize;
        let mut pixels = vec![0u8; 3 * plane];
        for (i, pixel) in rgb.pixels().enumerate() {
            for c in 0..3 {
                pixels[c * plane + i] = pixel.0[c];
            }
        }
        Decoded { width, height, gray: false, pixels }
    } else {
        let gray: GrayImage = match image {
            DynamicImage::ImageLuma8(gray) => resize(gray, width, height, interpolation),
            _ => resize(&image.to_luma8(), width, height, interpolation),
        };
        Decoded { width, height, gray: true, pixels: gray.into_raw() }
    }
}

fn resize<P>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
    interpolation: Interpolation,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let pillow = match interpolation {
        Interpolation::Nearest => resample::nearest,
        Interpolation::Bilinear => resample::bilinear,
        Interpolation::Area => return resize_area(image, width, height),
    };
    let (in_width, in_height) = image.dimensions();
    let channels = P::CHANNEL_COUNT as usize;
    let pixels =
        pillow(image.as_raw(), in_width as usize, in_height as usize, channels, width as usize, height as usize);
    ImageBuffer::from_raw(width, height, pixels).expect("the resampler sizes its output")
}

/// Box filter: each output pixel is the mean of the source pixels its area covers (whole pixels).
fn resize_area<P: Pixel<Subpixel = u8> + 'static>(
    image: &ImageBuffer<P, Vec<u8>>,
    out_width: u32,
    out_height: u32,
) -> ImageBuffer<P, Vec<u8>> {
    let (width, height) = image.dimensions();
    let channels = P::CHANNEL_COUNT as usize;
    let span = |o: u32, extent: u32, out: u32| {
        let start = (o as u64 * extent as u64 / out as u64) as u32;
        let end = (((o as u64 + 1) * extent as u64).div_ceil(out as u64) as u32).clamp(start + 1, extent);
        (start, end)
    };
    ImageBuffer::from_fn(out_width, out_height, |x, y| {
        let (x0, x1) = span(x, width, out_width);
        let (y0, y1) = span(y, height, out_height);
        let mut sums = [0u32; 4];
        for sy in y0..y1 {
            for sx in x0..x1 {
                for (c, value) in image.get_pixel(sx, sy).channels().iter().enumerate() {
                    sums[c] += *value as u32;
                }
            }
        }
        let count = (x1 - x0) * (y1 - y0);
        let mut pixel = *image.get_pixel(x0, y0);
        for (c, value) in pixel.channels_mut().iter_mut().enumerate().take(channels) {
            *value = ((sums[c] + count / 2) / count) as u8;
        }
        pixel
    })
}

/// What `trainq-worker bench-decode` measures.
pub struct DecodeBench {
    /// Dataset folder (ImageFolder layout).
    pub dataset: PathBuf,
    /// Split to load.
    pub split: String,
    /// Square side, or variable size.
    pub resize: Resize,
    /// Resize filter and decode scale.
    pub sampling: Sampling,
    /// Decoder and libtorch threads.
    pub threads: usize,
    /// Cache folder; none measures the bare first pass.
    pub cache_dir: Option<PathBuf>,
    /// Images per fed batch.
    pub batch_size: i64,
    /// Loads (each followed by one epoch's feed) to time.
    pub rounds: u32,
}

/// Loads a split `rounds` times — a bare first pass without a cache folder, else a cache build or
/// hit — and after each load feeds one epoch of shuffled batches twice: gathered only (the host's
/// share of a GPU job's feed) and the way a CPU job's training loop does (gather, to float,
/// normalise). Prints one JSON line; `*_cpu_*` figures count process CPU time, which a busy
/// neighbour on a shared machine disturbs less than wall time.
pub fn bench(config: &DecodeBench) -> anyhow::Result<()> {
    tch::set_num_threads(config.threads.max(1) as i32);
    // Classes are the split's sorted folder names, as for a dataset (only the split need exist).
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(config.dataset.join(&config.split))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            classes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    classes.sort();
    let normaliser = crate::normalise::Normaliser::new(trainq::domain::backbone::Backbone::Vgg16, Device::Cpu);
    let rounds = config.rounds.max(1);
    let (mut load_seconds, mut load_cpu_seconds, mut gather_seconds, mut feed_seconds) = (0.0, 0.0, 0.0, 0.0);
    // The best round of each measure: a shared machine's neighbours only ever make rounds slower.
    let (mut best_load, mut best_gather_epoch, mut best_epoch) = (f64::MAX, f64::MAX, f64::MAX);
    let mut last = None;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    for _ in 0..rounds {
        let (started, cpu_started) = (Instant::now(), process_cpu_seconds());
        let split = load_split(
            &config.dataset,
            &config.split,
            &classes,
            config.resize,
            config.sampling,
            config.threads,
            config.cache_dir.as_deref(),
        )?;
        let load = started.elapsed().as_secs_f64();
        load_seconds += load;
        load_cpu_seconds += process_cpu_seconds() - cpu_started;
        let sizes: Vec<i64> = split.groups.iter().map(|group| group.len()).collect();
        let (orders, batches) = crate::epochs::epoch_plan(&sizes, config.batch_size, &mut rng);
        let orders: Vec<Tensor> = orders.iter().map(|order| Tensor::from_slice(order)).collect();
        let started = Instant::now();
        for batch in &batches {
            let (group, index) = (&split.groups[batch.group], orders[batch.group].narrow(0, batch.start, batch.len));
            let _ = std::hint::black_box((group.images.index_select(0, &index), group.labels.index_select(0, &index)));
        }
        let gather = started.elapsed().as_secs_f64();
        gather_seconds += gather;
        let started = Instant::now();
        for batch in &batches {
            let (group, index) = (&split.groups[batch.group], orders[batch.group].narrow(0, batch.start, batch.len));
            let images = normaliser.apply(&group.images.index_select(0, &index));
            let _ = std::hint::black_box((images, group.labels.index_select(0, &index)));
        }
        let feed = started.elapsed().as_secs_f64();
        feed_seconds += feed;
        (best_load, best_gather_epoch, best_epoch) =
            (best_load.min(load), best_gather_epoch.min(load + gather), best_epoch.min(load + feed));
        last = Some(split);
    }
    let split = last.expect("at least one round");
    let images = (split.len() * rounds as usize) as f64;
    let per_sec = |seconds: f64| images / seconds.max(1e-9);
    println!(
        "{}",
        serde_json::json!({
            "impl": "trainq", "split": config.split, "size": config.resize.label(), "threads": config.threads, "rounds": rounds,
            "images": split.len(), "channels": split.channels, "shapes": split.shapes(), "skipped": split.skipped, "decoded": split.decoded, "cache": split.cache.as_str(),
            "load_seconds": load_seconds, "load_cpu_seconds": load_cpu_seconds,
            "gather_seconds": gather_seconds, "feed_seconds": feed_seconds,
            "load_images_per_sec": per_sec(load_seconds),
            "load_images_per_cpu_sec": per_sec(load_cpu_seconds),
            "gather_epoch_images_per_sec": per_sec(load_seconds + gather_seconds),
            "epoch_images_per_sec": per_sec(load_seconds + feed_seconds),
            "best_load_images_per_sec": split.len() as f64 / best_load.max(1e-9),
            "best_gather_epoch_images_per_sec": split.len() as f64 / best_gather_epoch.max(1e-9),
            "best_epoch_images_per_sec": split.len() as f64 / best_epoch.max(1e-9),
        })
    );
    Ok(())
}

/// CPU time this process has used, all threads together.
fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we own; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::Rgb;
    use rand::SeedableRng;
    use trainq::demo_data::{self, DemoOptions, CLASSES};

    #[test]
    fn nearest_matches_pil_sampling() {
        // 4 px wide → 2 px: PIL picks source columns 1 and 3.
        let image = GrayImage::from_raw(4, 1, vec![10, 20, 30, 40]).unwrap();
        let image = DynamicImage::ImageLuma8(image);
        let chw = to_chw(&image.resize_exact(4, 4, image::imageops::FilterType::Nearest), 2, Interpolation::Nearest);
        assert_eq!(&chw[..2], &[20, 40]);
        assert_eq!(chw.len(), 4, "gray stays one plane");
        let wide = resize_planes(&image, 2, 1, Interpolation::Nearest);
        assert_eq!((wide.width, wide.height, wide.pixels), (2, 1, vec![20, 40]));
    }

    #[test]
    fn area_averages_the_covered_pixels() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_raw(2, 2, vec![0, 100, 200, 100]).unwrap());
        assert_eq!(to_chw(&image, 1, Interpolation::Area)[0], 100);
    }

    #[test]
    fn colour_images_keep_their_channels_and_gray_ones_saved_as_rgb_do_not() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(3, 3, Rgb([1, 2, 3])));
        let chw = to_chw(&image, 2, Interpolation::Bilinear);
        assert_eq!(chw, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
        let gray_as_rgb = DynamicImage::ImageRgb8(RgbImage::from_pixel(3, 3, Rgb([7, 7, 7])));
        assert_eq!(to_chw(&gray_as_rgb, 2, Interpolation::Bilinear), [7, 7, 7, 7]);
    }

    /// The planes `resize_planes` makes for a `size`×`size` target: one if gray, three if colour.
    fn to_chw(image: &DynamicImage, size: u32, interpolation: Interpolation) -> Vec<u8> {
        resize_planes(image, size, size, interpolation).pixels
    }

    fn classes() -> Vec<String> {
        CLASSES.iter().map(|class| class.to_string()).collect()
    }

    /// A small demo dataset with one corrupt file, so `skipped` is exercised too.
    fn dataset() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let options = DemoOptions { train_per_class: 4, val_per_class: 0, test_per_class: 0, size: 40, seed: 5 };
        demo_data::write(dir.path(), &options).unwrap();
        std::fs::write(dir.path().join("train/NORMAL/broken.jpeg"), b"\xff\xd8 not really a jpeg").unwrap();
        dir
    }

    fn load(data: &Path, cache: Option<&Path>) -> Split {
        load_split(data, "train", &classes(), Resize::Square(32), Interpolation::Nearest.into(), 2, cache).unwrap()
    }

    fn entry_files(cache: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(cache).unwrap().map(|entry| entry.unwrap().path()).collect();
        files.sort();
        files
    }

    fn same_split(a: &Split, b: &Split) {
        assert_eq!(a.groups.len(), b.groups.len());
        for (x, y) in a.groups.iter().zip(&b.groups) {
            assert!(x.images.equal(&y.images), "identical pixels");
            assert!(x.labels.equal(&y.labels), "identical group labels");
        }
        assert_eq!(a.channels, b.channels);
        assert!(a.labels.equal(&b.labels), "identical labels");
        assert_eq!(a.paths, b.paths);
        assert_eq!(a.skipped, b.skipped);
        assert_eq!(a.skipped_files, b.skipped_files, "a hit names the same files with the same reasons");
    }

    #[test]
    fn a_truncated_jpeg_and_a_non_image_are_skipped_by_name_with_the_reason() {
        let data = dataset();
        let whole = std::fs::read(data.path().join("train/NORMAL/train-normal-0000.jpeg")).unwrap();
        std::fs::write(data.path().join("train/NORMAL/cut.jpeg"), &whole[..whole.len() / 2]).unwrap();
        std::fs::write(data.path().join("train/PNEUMONIA/._apple.jpeg"), b"\0\x05\x16\x07AppleDouble").unwrap();
        let split = load(data.path(), None);
        let mut named: Vec<&str> = split.skipped_files.iter().map(|file| file.path.as_str()).collect();
        named.sort();
        assert_eq!(named, ["train/NORMAL/broken.jpeg", "train/NORMAL/cut.jpeg", "train/PNEUMONIA/._apple.jpeg"]);
        assert_eq!(split.skipped, 3);
        assert!(split.skipped_files.iter().all(|file| !file.reason.is_empty()), "{:?}", split.skipped_files);
        assert_eq!(split.len(), 8, "only the whole images are trained on");
    }

    #[test]
    fn a_split_or_class_left_without_images_is_named() {
        let classes = classes();
        let skipped =
            vec![SkippedFile { path: String::from("test/PNEUMONIA/a.jpeg"), reason: String::from("truncated") }];
        assert_eq!(left_empty("train", &classes, &[0, 1, 1], &[]), None);
        let class = left_empty("test", &classes, &[0, 0], &skipped).unwrap();
        assert!(class.contains("class `PNEUMONIA` of the test split") && class.contains("1 files"), "{class}");
        let split = left_empty("val", &classes, &[], &[]).unwrap();
        assert!(split.contains("the val split has no images"), "{split}");
    }

    #[test]
    fn a_second_load_is_a_cache_hit_with_identical_tensors_and_no_decoding() {
        let (data, cache) = (dataset(), tempfile::tempdir().unwrap());
        let first = load(data.path(), Some(cache.path()));
        assert!(matches!(first.cache, CacheOutcome::Built(_)), "{:?}", first.cache);
        assert_eq!((first.len(), first.decoded, first.skipped), (8, 8, 1));
        assert_eq!(first.groups.len(), 1);
        assert_eq!(first.groups[0].images.size(), [8, 1, 32, 32], "the demo films are grayscale: one channel");
        let second = load(data.path(), Some(cache.path()));
        assert!(matches!(second.cache, CacheOutcome::Hit(_)), "{:?}", second.cache);
        assert_eq!(second.decoded, 0);
        assert!(second.summary().contains("cache hit"), "{}", second.summary());
        same_split(&first, &second);
        same_split(&first, &load(data.path(), None));
        assert_eq!(entry_files(cache.path()).len(), 1, "one entry, no temporary files left");
    }

    #[test]
    fn touching_or_adding_a_file_changes_the_key_and_rebuilds() {
        let (data, cache) = (dataset(), tempfile::tempdir().unwrap());
        let key = |interpolation: Interpolation| {
            let files = split_files(data.path(), "train", &classes()).unwrap();
            cache::entry_key(data.path(), "train", &files, &classes(), Resize::Square(32), interpolation.into())
                .unwrap()
        };
        let original = key(Interpolation::Nearest);
        assert_eq!(key(Interpolation::Nearest), original, "stable");
        assert_ne!(key(Interpolation::Area), original, "the interpolation is part of the key");
        let files = split_files(data.path(), "train", &classes()).unwrap();
        let fast = Sampling { interpolation: Interpolation::Nearest, fast_decode: true };
        let fast_key = cache::entry_key(data.path(), "train", &files, &classes(), Resize::Square(32), fast).unwrap();
        assert_ne!(fast_key, original, "so is the decode scale");
        load(data.path(), Some(cache.path()));

        let file = data.path().join("train/PNEUMONIA/train-pneumonia-0000.jpeg");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        let touched = key(Interpolation::Nearest);
        assert_ne!(touched, original);
        assert!(matches!(load(data.path(), Some(cache.path())).cache, CacheOutcome::Built(_)));

        // Other bytes under the same name, length and modification time (an archive's time, or
        // `cp -p`): the change time, which no one can set back, still changes the key.
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        let replaced = key(Interpolation::Nearest);
        assert_ne!(replaced, touched, "same name, length and time, other pixels");
        let touched = replaced;

        std::fs::copy(&file, data.path().join("train/PNEUMONIA/extra.jpeg")).unwrap();
        assert_ne!(key(Interpolation::Nearest), touched);
        let grown = load(data.path(), Some(cache.path()));
        assert!(matches!(grown.cache, CacheOutcome::Built(_)));
        assert_eq!(grown.len(), 9);
    }

    #[test]
    fn a_truncated_or_corrupt_entry_is_a_miss_and_is_rebuilt() {
        let (data, cache) = (dataset(), tempfile::tempdir().unwrap());
        let built = load(data.path(), Some(cache.path()));
        let entry = entry_files(cache.path()).remove(0);
        let length = std::fs::metadata(&entry).unwrap().len();
        std::fs::File::options().write(true).open(&entry).unwrap().set_len(length - 100).unwrap();
        let rebuilt = load(data.path(), Some(cache.path()));
        assert!(matches!(rebuilt.cache, CacheOutcome::Built(_)), "{:?}", rebuilt.cache);
        same_split(&built, &rebuilt);
        assert!(matches!(load(data.path(), Some(cache.path())).cache, CacheOutcome::Hit(_)));

        std::fs::write(&entry, b"TRQCACHE\x01\x00\x00\x00\x05\x00\x00\x00{bad}").unwrap();
        let rebuilt = load(data.path(), Some(cache.path()));
        assert!(matches!(rebuilt.cache, CacheOutcome::Built(_)), "{:?}", rebuilt.cache);
        same_split(&built, &rebuilt);
    }

    #[test]
    fn concurrent_builders_of_the_same_entry_all_succeed_and_leave_a_valid_entry() {
        let (data, cache) = (dataset(), tempfile::tempdir().unwrap());
        let reference = load(data.path(), None);
        let start = std::sync::Barrier::new(4);
        let loads: Vec<Split> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        load(data.path(), Some(cache.path()))
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        for split in &loads {
            assert_ne!(split.cache, CacheOutcome::Off);
            same_split(split, &reference);
        }
        assert_eq!(entry_files(cache.path()).len(), 1, "one entry, no temporary files left");
        let after = load(data.path(), Some(cache.path()));
        assert!(matches!(after.cache, CacheOutcome::Hit(_)));
        same_split(&after, &reference);
    }

    /// Writes `train/<class>/<i>.png` for each `(width, height, colour)`.
    fn shaped_dataset(images: &[(u32, u32, bool)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, &(width, height, colour)) in images.iter().enumerate() {
            let folder = dir.path().join("train").join(CLASSES[i % 2]);
            std::fs::create_dir_all(&folder).unwrap();
            let value = |x: u32, y: u32| ((x * 3 + y * 5 + i as u32 * 11) % 256) as u8;
            let path = folder.join(format!("{i}.png"));
            if colour {
                RgbImage::from_fn(width, height, |x, y| Rgb([value(x, y), 255 - value(x, y), 9])).save(path).unwrap();
            } else {
                GrayImage::from_fn(width, height, |x, y| image::Luma([value(x, y)])).save(path).unwrap();
            }
        }
        dir
    }

    #[test]
    fn variable_size_groups_images_by_shape_and_round_trips_through_the_cache() {
        let films = [
            (200, 140, false),
            (210, 150, false),
            (140, 200, false),
            (100, 100, false),
            (205, 145, false),
            (64, 64, false),
        ];
        let (data, cache) = (shaped_dataset(&films), tempfile::tempdir().unwrap());
        let resize = Resize::Bounded { max_side: 128, min_side: 32 };
        let load = |cache: Option<&Path>| {
            load_split(data.path(), "train", &classes(), resize, Interpolation::Area.into(), 2, cache).unwrap()
        };
        let built = load(Some(cache.path()));
        assert!(matches!(built.cache, CacheOutcome::Built(_)));
        let shapes: Vec<Vec<i64>> = built.groups.iter().map(|group| group.images.size()).collect();
        // Landscape films → 128×96, the portrait one → 96×128, the square ones keep their size.
        assert_eq!(shapes, [vec![1, 1, 64, 64], vec![1, 1, 96, 96], vec![3, 1, 96, 128], vec![1, 1, 128, 96]]);
        assert_eq!(built.shapes(), "64x64 (1), 96x96 (1), 128x96 (3), 96x128 (1)");
        assert_eq!(built.len(), 6);
        // Tensor order is group order: the paths and labels follow the groups.
        let names: Vec<String> =
            built.paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        // (Within a group, file order: class folder, then name.)
        assert_eq!(names, ["5.png", "3.png", "0.png", "4.png", "1.png", "2.png"]);
        assert_eq!(Vec::<i64>::try_from(&built.labels).unwrap(), [1, 1, 0, 0, 1, 0]);
        let hit = load(Some(cache.path()));
        assert!(matches!(hit.cache, CacheOutcome::Hit(_)), "{:?}", hit.cache);
        same_split(&built, &hit);
        same_split(&built, &load(None));
    }

    #[test]
    fn one_colour_image_makes_a_three_channel_split_with_gray_images_replicated() {
        let data = shaped_dataset(&[(40, 40, false), (40, 40, true), (40, 40, false)]);
        let split =
            load_split(data.path(), "train", &classes(), Resize::Square(32), Interpolation::Area.into(), 1, None)
                .unwrap();
        assert_eq!(split.channels, 3);
        let images = &split.groups[0].images;
        assert_eq!(images.size(), [3, 3, 32, 32]);
        let position = |name: &str| split.paths.iter().position(|p| p.ends_with(name)).unwrap() as i64;
        let gray = images.get(position("0.png"));
        assert!(gray.get(0).equal(&gray.get(1)) && gray.get(1).equal(&gray.get(2)), "gray fills all channels");
        let colour = images.get(position("1.png"));
        assert!(!colour.get(0).equal(&colour.get(1)), "colour keeps its channels");
    }

    #[test]
    fn the_dct_reduction_keeps_both_sides_at_least_the_target() {
        assert_eq!(dct_reduction(1100, 1024, 128, 128), 8);
        assert_eq!(dct_reduction(1000, 1400, 128, 128), 4, "1000/8 = 125 < 128");
        assert_eq!(dct_reduction(300, 260, 128, 128), 2);
        assert_eq!(dct_reduction(250, 1000, 128, 128), 1);
        assert_eq!(dct_reduction(2048, 1400, 256, 160), 8, "a variable-size target keeps the aspect");
        assert_eq!(dct_reduction(2048, 1400, 256, 192), 4, "1400/8 = 175 < 192");
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64
    }

    /// Mean abs differences of the 128-px (or `size`) CHW bytes from a reduced and a full decode.
    fn reduced_vs_full(bytes: &[u8], size: u32, reduction: u32, interpolation: Interpolation) -> f64 {
        let full = jpeg::decode(bytes).unwrap();
        let reduced = decode_for_size(bytes, size, size, Sampling { interpolation, fast_decode: true }).unwrap();
        assert_eq!(reduced.width(), full.width().div_ceil(reduction), "decoded at 1/{reduction}");
        mean_abs_diff(&to_chw(&reduced, size, interpolation), &to_chw(&full, size, interpolation))
    }

    #[test]
    fn only_fast_decode_or_an_exact_area_box_decodes_at_a_reduced_scale() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let film = image::imageops::resize(
            &demo_data::chest_xray(&mut rng, 512, true),
            1024,
            1024,
            image::imageops::FilterType::Triangle,
        );
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&film).unwrap();
        let width =
            |target: u32, sampling: Sampling| decode_for_size(&bytes, target, target, sampling).unwrap().width();
        // Keras' pixels: the full decode, whatever the target.
        assert_eq!(width(128, Interpolation::Nearest.into()), 1024);
        assert_eq!(width(128, Interpolation::Bilinear.into()), 1024);
        assert_eq!(width(100, Interpolation::Area.into()), 1024, "100 px boxes are not whole 8×8 blocks");
        assert_eq!(width(128, Sampling { interpolation: Interpolation::Nearest, fast_decode: true }), 128, "asked for");
        // Area over whole blocks: the 1/8 decode (each pixel its block's DC) gives the same means.
        assert_eq!(width(128, Interpolation::Area.into()), 128);
        let reduced = decode_for_size(&bytes, 128, 128, Interpolation::Area.into()).unwrap();
        let full = jpeg::decode(&bytes).unwrap();
        let (reduced, full) = (to_chw(&reduced, 128, Interpolation::Area), to_chw(&full, 128, Interpolation::Area));
        let worst = reduced.iter().zip(&full).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
        assert!(worst <= 1, "the DC is the block mean up to rounding: {worst}");
    }

    #[test]
    fn dct_scaled_decodes_are_close_to_the_full_decode_path() {
        // Differences come from the coarser grid the resize samples (8×8 block means whose edges
        // do not line up with the output's boxes). The film is drawn at half size and upscaled so
        // its grain spans a few pixels, as on a scanned film.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let small = demo_data::chest_xray(&mut rng, 550, true);
        let film = image::imageops::resize(
            &small,
            small.width() * 2,
            small.height() * 2,
            image::imageops::FilterType::Triangle,
        );
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&film).unwrap();
        let colour = RgbImage::from_fn(1024, 1024, |x, y| Rgb([(x / 4) as u8, (y / 4) as u8, ((x + y) / 8) as u8]));
        let mut colour_bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut colour_bytes, 90).encode_image(&colour).unwrap();
        let cases = [
            ("gray 1/8 area", reduced_vs_full(&bytes, 128, 8, Interpolation::Area), 3.0),
            ("gray 1/8 bilinear", reduced_vs_full(&bytes, 128, 8, Interpolation::Bilinear), 3.0),
            // Nearest samples block means instead of single pixels: the difference is the grain.
            ("gray 1/8 nearest", reduced_vs_full(&bytes, 128, 8, Interpolation::Nearest), 8.0),
            ("gray 1/4 area", reduced_vs_full(&bytes, 200, 4, Interpolation::Area), 3.0),
            ("colour 1/8 area", reduced_vs_full(&colour_bytes, 128, 8, Interpolation::Area), 3.0),
        ];
        for (name, difference, bound) in cases {
            eprintln!("{name}: mean abs diff {difference:.2} (bound {bound})");
            assert!(difference < bound, "{name}: mean abs diff {difference}");
        }
    }
}
