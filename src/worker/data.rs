//! ImageFolder loading: a split becomes one uint8 tensor `[N, 3, S, S]` in memory. The first job
//! that needs a (dataset, split, size, interpolation) decodes and resizes every image on all its
//! threads and stores the result in the shared cache (`cache.rs`); every later job reads it back
//! with one file read. Grayscale images are expanded to three channels; a corrupt file is skipped
//! with a warning and counted, never fatal.

use crate::cache::{self, EntryHeader, Miss};
use crate::jpeg;
use image::{DynamicImage, GrayImage, ImageBuffer, Pixel, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainq::catalog::datasets::split_files;
use trainq::domain::spec::Interpolation;

/// A loaded split.
pub struct Split {
    /// `[N, 3, S, S]` uint8 pixels.
    pub images: Tensor,
    /// `[N]` int64 class indices.
    pub labels: Tensor,
    /// Source files, in tensor order.
    pub paths: Vec<PathBuf>,
    /// Files that failed to decode (when the entry was built, for a cache hit).
    pub skipped: usize,
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

    /// The job-log line for this load (after the split's name).
    pub fn summary(&self) -> String {
        match &self.cache {
            CacheOutcome::Hit(key) => {
                format!("cache hit {key}: {} images, 0 decoded ({:.2}s, {} skipped)", self.len(), self.seconds, self.skipped)
            }
            CacheOutcome::Built(key) => format!(
                "decoded {} images ({} skipped) in {:.1}s, cached as {key}",
                self.decoded, self.skipped, self.seconds
            ),
            CacheOutcome::Off => {
                format!("decoded {} images ({} skipped) in {:.1}s, not cached", self.decoded, self.skipped, self.seconds)
            }
        }
    }
}

/// Loads `split` of the dataset at `dataset_dir`, resized to `size`: from the cache entry in
/// `cache_dir` when there is a valid one, else by decoding on `threads` threads and storing the
/// result there. Without a `cache_dir` it always decodes. A cache that cannot be read or written
/// costs a warning, never the job.
pub fn load_split(
    dataset_dir: &Path,
    split: &str,
    classes: &[String],
    size: u32,
    interpolation: Interpolation,
    threads: usize,
    cache_dir: Option<&Path>,
) -> anyhow::Result<Split> {
    let started = Instant::now();
    let files = split_files(dataset_dir, split, classes)?;
    let key = cache_dir.and_then(|_| match cache::entry_key(dataset_dir, split, &files, classes, size, interpolation) {
        Ok(key) => Some(key),
        Err(err) => {
            eprintln!("warning: not caching the {split} split: {err}");
            None
        }
    });
    if let (Some(dir), Some(key)) = (cache_dir, &key) {
        match cache::read_entry(dir, key, size) {
            Ok((header, images)) => {
                return Ok(Split {
                    images,
                    labels: Tensor::from_slice(&header.labels),
                    paths: header.paths.iter().map(|path| dataset_dir.join(path)).collect(),
                    skipped: header.skipped.len(),
                    seconds: started.elapsed().as_secs_f64(),
                    cache: CacheOutcome::Hit(key.clone()),
                    decoded: 0,
                })
            }
            Err(Miss::Absent) => {}
            Err(Miss::Invalid(reason)) => eprintln!("warning: cache entry {key} is unusable ({reason}); rebuilding it"),
        }
    }

    let per_image = 3 * (size as usize) * (size as usize);
    let side = size as i64;
    let mut images = Tensor::zeros([files.len() as i64, 3, side, side], (Kind::Uint8, Device::Cpu));
    let pixels = cache::uint8_bytes_mut(&mut images);
    let readable = decode_files(&files, size, interpolation, threads, pixels);
    // Close the gaps the skipped files left, keeping tensor order = file order.
    let mut labels = Vec::with_capacity(files.len());
    let mut paths = Vec::with_capacity(files.len());
    let mut skipped_paths = Vec::new();
    for (index, (path, label)) in files.into_iter().enumerate() {
        if readable[index] {
            let target = labels.len();
            pixels.copy_within(index * per_image..(index + 1) * per_image, target * per_image);
            labels.push(label);
            paths.push(path);
        } else {
            skipped_paths.push(path);
        }
    }
    let count = labels.len();
    let relative = |path: &PathBuf| path.strip_prefix(dataset_dir).unwrap_or(path).to_path_buf();
    let outcome = match (cache_dir, key) {
        (Some(dir), Some(key)) => {
            let header = EntryHeader {
                key: key.clone(),
                count,
                channels: 3,
                height: size as usize,
                width: size as usize,
                labels: labels.clone(),
                paths: paths.iter().map(relative).collect(),
                skipped: skipped_paths.iter().map(relative).collect(),
            };
            match cache::write_entry(dir, &header, &pixels[..count * per_image]) {
                Ok(()) => CacheOutcome::Built(key),
                Err(err) => {
                    eprintln!("warning: could not store cache entry {key} in {}: {err}", dir.display());
                    CacheOutcome::Off
                }
            }
        }
        _ => CacheOutcome::Off,
    };
    let images = if count == readable.len() { images } else { images.narrow(0, 0, count as i64).copy() };
    Ok(Split {
        images,
        labels: Tensor::from_slice(&labels),
        paths,
        skipped: skipped_paths.len(),
        seconds: started.elapsed().as_secs_f64(),
        cache: outcome,
        decoded: count,
    })
}

/// Decodes `files` into consecutive `3·size·size` slots of `pixels` on `threads` threads, which
/// take the next file as they finish one (image sizes vary, so fixed chunks would leave a thread
/// idle). Returns, per file, whether it could be read; unreadable files leave their slot zeroed.
fn decode_files(
    files: &[(PathBuf, i64)],
    size: u32,
    interpolation: Interpolation,
    threads: usize,
    pixels: &mut [u8],
) -> Vec<bool> {
    let per_image = 3 * (size as usize) * (size as usize);
    let work = Mutex::new(files.iter().zip(pixels.chunks_mut(per_image)).enumerate());
    let mut readable = vec![false; files.len()];
    let done: Vec<Vec<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, files.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let (mut done, mut file_bytes) = (Vec::new(), Vec::new());
                    loop {
                        let next = work.lock().expect("a decoder thread panicked").next();
                        let Some((index, ((path, _), slot))) = next else { break done };
                        if decode_file(path, size, interpolation, &mut file_bytes, slot) {
                            done.push(index);
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("decoder thread panicked")).collect()
    });
    for index in done.into_iter().flatten() {
        readable[index] = true;
    }
    readable
}

/// Decodes one file into `out` as CHW RGB bytes of `size`×`size`; false (with a warning) if
/// unreadable. `file_bytes` is the thread's reusable read buffer (a fresh one per file costs page
/// faults that show on a fast first pass).
fn decode_file(path: &Path, size: u32, interpolation: Interpolation, file_bytes: &mut Vec<u8>, out: &mut [u8]) -> bool {
    file_bytes.clear();
    let image = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_to_end(&mut file, file_bytes))
        .map_err(image::ImageError::IoError)
        .and_then(|_| decode_for_size(file_bytes, size));
    match image {
        Ok(image) => {
            to_chw_into(&image, size, interpolation, out);
            true
        }
        Err(err) => {
            eprintln!("warning: skipping unreadable image {}: {err}", path.display());
            false
        }
    }
}

/// The DCT-domain reduction (8, 4, 2, or 1 for none) to decode a `width`×`height` JPEG at for a
/// `size`-pixel target: the largest that keeps both sides at least `size`, so the resize that
/// follows is still a downscale. A reduction happens only when the target is at most about half
/// the source's smaller side.
pub fn dct_reduction(width: u32, height: u32, size: u32) -> u32 {
    [8, 4, 2].into_iter().find(|&factor| width.div_ceil(factor) >= size && height.div_ceil(factor) >= size).unwrap_or(1)
}

/// Decodes an image file's bytes for a `size`-pixel target.
///
/// JPEGs much larger than the target are downscaled while decoding, in the DCT domain (see
/// [`dct_reduction`]): baseline grayscale ones (chest X-rays) by `jpeg.rs` at 1/8 or 1/4, others
/// by `jpeg-decoder`'s scaled IDCT; everything else is decoded in full. This is a deliberate
/// trade-off: a 1/8-scale pixel is its 8×8 block's mean, so the resize that follows samples block
/// means instead of single source pixels. For `bilinear` and `area` that is what the filter wanted
/// anyway; for `nearest` the result is smoother than, and not bit-identical to, Pillow's (Keras')
/// nearest resize of the full image — a few grey levels apart on noisy films — in exchange for a
/// first pass several times faster.
pub fn decode_for_size(bytes: &[u8], size: u32) -> image::ImageResult<DynamicImage> {
    if let Some(header) = jpeg::header(bytes) {
        let reduction = dct_reduction(header.width, header.height, size);
        if reduction >= 4 && header.components == 1 && header.sequential_huffman {
            if let Ok((width, height, pixels)) = jpeg::decode_gray_reduced(bytes, reduction) {
                let image = GrayImage::from_raw(width, height, pixels).expect("the decoder sizes its output");
                return Ok(DynamicImage::ImageLuma8(image));
            }
        }
        if reduction > 1 {
            if let Some(image) = decode_jpeg_scaled(bytes, reduction) {
                return Ok(image);
            }
        }
    }
    image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?.decode()
}

/// Any JPEG `jpeg-decoder` reads (colour, progressive), at 1/`reduction` scale; `None` sends the
/// file to the full decoder, which has the last word on whether it is readable.
fn decode_jpeg_scaled(bytes: &[u8], reduction: u32) -> Option<DynamicImage> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let requested = |side: u16| (side as u32).div_ceil(reduction) as u16;
    let (width, height) = decoder.scale(requested(info.width), requested(info.height)).ok()?;
    let pixels = decoder.decode().ok()?;
    let (width, height) = (width as u32, height as u32);
    match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        jpeg_decoder::PixelFormat::RGB24 => RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
        _ => None,
    }
}

/// Resizes and lays out channel-first into a `3·size·size` slice. Grayscale is resized once and
/// copied to all channels.
fn to_chw_into(image: &DynamicImage, size: u32, interpolation: Interpolation, chw: &mut [u8]) {
    let plane = (size * size) as usize;
    if image.color().has_color() {
        let rgb: RgbImage = resize(&image.to_rgb8(), size, interpolation);
        for (i, pixel) in rgb.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = pixel.0[c];
            }
        }
    } else {
        let gray: GrayImage = match image {
            DynamicImage::ImageLuma8(gray) => resize(gray, size, interpolation),
            _ => resize(&image.to_luma8(), size, interpolation),
        };
        for channel in chw.chunks_exact_mut(plane) {
            channel.copy_from_slice(gray.as_raw());
        }
    }
}

fn resize<P>(image: &ImageBuffer<P, Vec<u8>>, size: u32, interpolation: Interpolation) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    match interpolation {
        Interpolation::Nearest => resize_nearest(image, size),
        Interpolation::Bilinear => image::imageops::resize(image, size, size, image::imageops::FilterType::Triangle),
        Interpolation::Area => resize_area(image, size),
    }
}

/// Nearest neighbour with PIL's sampling (what Keras' `load_img` calls): source pixel
/// `floor((x + 0.5) * in / out)`.
fn resize_nearest<P: Pixel<Subpixel = u8> + 'static>(image: &ImageBuffer<P, Vec<u8>>, size: u32) -> ImageBuffer<P, Vec<u8>> {
    let (width, height) = image.dimensions();
    let sx = width as f64 / size as f64;
    let sy = height as f64 / size as f64;
    ImageBuffer::from_fn(size, size, |x, y| {
        let src_x = (((x as f64 + 0.5) * sx) as u32).min(width - 1);
        let src_y = (((y as f64 + 0.5) * sy) as u32).min(height - 1);
        *image.get_pixel(src_x, src_y)
    })
}

/// Box filter: each output pixel is the mean of the source pixels its area covers (whole pixels).
fn resize_area<P: Pixel<Subpixel = u8> + 'static>(image: &ImageBuffer<P, Vec<u8>>, size: u32) -> ImageBuffer<P, Vec<u8>> {
    let (width, height) = image.dimensions();
    let channels = P::CHANNEL_COUNT as usize;
    let span = |o: u32, extent: u32| {
        let start = (o as u64 * extent as u64 / size as u64) as u32;
        let end = (((o as u64 + 1) * extent as u64).div_ceil(size as u64) as u32).clamp(start + 1, extent);
        (start, end)
    };
    ImageBuffer::from_fn(size, size, |x, y| {
        let (x0, x1) = span(x, width);
        let (y0, y1) = span(y, height);
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
    /// Square side.
    pub size: u32,
    /// Resize filter.
    pub interpolation: Interpolation,
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
    let normaliser = crate::train::Normaliser::new(trainq::domain::backbone::Backbone::Vgg16, Device::Cpu);
    let rounds = config.rounds.max(1);
    let (mut load_seconds, mut load_cpu_seconds, mut gather_seconds, mut feed_seconds) = (0.0, 0.0, 0.0, 0.0);
    // The best round of each measure: a shared machine's neighbours only ever make rounds slower.
    let (mut best_load, mut best_gather_epoch, mut best_epoch) = (f64::MAX, f64::MAX, f64::MAX);
    let mut last = None;
    for _ in 0..rounds {
        let (started, cpu_started) = (Instant::now(), process_cpu_seconds());
        let split = load_split(
            &config.dataset,
            &config.split,
            &classes,
            config.size,
            config.interpolation,
            config.threads,
            config.cache_dir.as_deref(),
        )?;
        let load = started.elapsed().as_secs_f64();
        load_seconds += load;
        load_cpu_seconds += process_cpu_seconds() - cpu_started;
        let n = split.len() as i64;
        let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        let batches = crate::train::batch_bounds(n, config.batch_size);
        let started = Instant::now();
        for &(start, len) in &batches {
            let index = order.narrow(0, start, len);
            let _ = std::hint::black_box((split.images.index_select(0, &index), split.labels.index_select(0, &index)));
        }
        let gather = started.elapsed().as_secs_f64();
        gather_seconds += gather;
        let started = Instant::now();
        for &(start, len) in &batches {
            let index = order.narrow(0, start, len);
            let batch = normaliser.apply(&split.images.index_select(0, &index));
            let _ = std::hint::black_box((batch, split.labels.index_select(0, &index)));
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
            "impl": "trainq", "split": config.split, "size": config.size, "threads": config.threads, "rounds": rounds,
            "images": split.len(), "skipped": split.skipped, "decoded": split.decoded, "cache": split.cache.as_str(),
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
        assert_eq!(chw.len(), 3 * 4, "gray becomes three identical planes");
        assert_eq!(chw[..4], chw[4..8]);
    }

    #[test]
    fn area_averages_the_covered_pixels() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_raw(2, 2, vec![0, 100, 200, 100]).unwrap());
        assert_eq!(to_chw(&image, 1, Interpolation::Area)[0], 100);
    }

    #[test]
    fn colour_images_keep_their_channels() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(3, 3, Rgb([1, 2, 3])));
        let chw = to_chw(&image, 2, Interpolation::Bilinear);
        assert_eq!(chw, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
    }

    fn to_chw(image: &DynamicImage, size: u32, interpolation: Interpolation) -> Vec<u8> {
        let mut chw = vec![0u8; 3 * (size * size) as usize];
        to_chw_into(image, size, interpolation, &mut chw);
        chw
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
        load_split(data, "train", &classes(), 32, Interpolation::Nearest, 2, cache).unwrap()
    }

    fn entry_files(cache: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(cache).unwrap().map(|entry| entry.unwrap().path()).collect();
        files.sort();
        files
    }

    fn same_split(a: &Split, b: &Split) {
        assert!(a.images.equal(&b.images), "identical pixels");
        assert!(a.labels.equal(&b.labels), "identical labels");
        assert_eq!(a.paths, b.paths);
        assert_eq!(a.skipped, b.skipped);
    }

    #[test]
    fn a_second_load_is_a_cache_hit_with_identical_tensors_and_no_decoding() {
        let (data, cache) = (dataset(), tempfile::tempdir().unwrap());
        let first = load(data.path(), Some(cache.path()));
        assert!(matches!(first.cache, CacheOutcome::Built(_)), "{:?}", first.cache);
        assert_eq!((first.len(), first.decoded, first.skipped), (8, 8, 1));
        assert_eq!(first.images.size(), [8, 3, 32, 32]);
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
        let key = |interpolation| {
            let files = split_files(data.path(), "train", &classes()).unwrap();
            cache::entry_key(data.path(), "train", &files, &classes(), 32, interpolation).unwrap()
        };
        let original = key(Interpolation::Nearest);
        assert_eq!(key(Interpolation::Nearest), original, "stable");
        assert_ne!(key(Interpolation::Area), original, "the interpolation is part of the key");
        load(data.path(), Some(cache.path()));

        let file = data.path().join("train/PNEUMONIA/train-pneumonia-0000.jpeg");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        let touched = key(Interpolation::Nearest);
        assert_ne!(touched, original);
        assert!(matches!(load(data.path(), Some(cache.path())).cache, CacheOutcome::Built(_)));

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

    #[test]
    fn the_dct_reduction_keeps_both_sides_at_least_the_target() {
        assert_eq!(dct_reduction(1100, 1024, 128), 8);
        assert_eq!(dct_reduction(1000, 1400, 128), 4, "1000/8 = 125 < 128");
        assert_eq!(dct_reduction(300, 260, 128), 2);
        assert_eq!(dct_reduction(250, 1000, 128), 1);
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64
    }

    /// Mean abs differences of the 128-px (or `size`) CHW bytes from a reduced and a full decode.
    fn reduced_vs_full(bytes: &[u8], size: u32, reduction: u32, interpolation: Interpolation) -> f64 {
        let full = image::load_from_memory(bytes).unwrap();
        let reduced = decode_for_size(bytes, size).unwrap();
        assert_eq!(reduced.width(), full.width().div_ceil(reduction), "decoded at 1/{reduction}");
        mean_abs_diff(&to_chw(&reduced, size, interpolation), &to_chw(&full, size, interpolation))
    }

    #[test]
    fn dct_scaled_decodes_are_close_to_the_full_decode_path() {
        // Differences come from the coarser grid the resize samples (8×8 block means whose edges
        // do not line up with the output's boxes). The film is drawn at half size and upscaled so
        // its grain spans a few pixels, as on a scanned film.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let small = demo_data::chest_xray(&mut rng, 550, true);
        let film = image::imageops::resize(&small, small.width() * 2, small.height() * 2, image::imageops::FilterType::Triangle);
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
            // Colour JPEGs go through jpeg-decoder's scaled IDCT.
            ("colour 1/8 area", reduced_vs_full(&colour_bytes, 128, 8, Interpolation::Area), 3.0),
        ];
        for (name, difference, bound) in cases {
            eprintln!("{name}: mean abs diff {difference:.2} (bound {bound})");
            assert!(difference < bound, "{name}: mean abs diff {difference}");
        }
    }
}
