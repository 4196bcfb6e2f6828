//! ImageFolder loading: decode every image of a split once per job, resize it, and keep the split
//! in memory as one uint8 tensor `[N, 3, S, S]`. Grayscale images are expanded to three channels;
//! a corrupt file is skipped with a warning and counted, never fatal.

use image::{DynamicImage, GrayImage, ImageBuffer, Pixel, RgbImage};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};
use trainq::catalog::datasets::split_files;
use trainq::domain::spec::Interpolation;

/// A decoded split.
pub struct Split {
    /// `[N, 3, S, S]` uint8 pixels.
    pub images: Tensor,
    /// `[N]` int64 class indices.
    pub labels: Tensor,
    /// Source files, in tensor order.
    pub paths: Vec<PathBuf>,
    /// Files that failed to decode.
    pub skipped: usize,
    /// Wall time of the load.
    pub seconds: f64,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }
}

/// Loads `split` of the dataset at `dataset_dir`, resized to `size`, on `threads` threads.
pub fn load_split(
    dataset_dir: &Path,
    split: &str,
    classes: &[String],
    size: u32,
    interpolation: Interpolation,
    threads: usize,
) -> anyhow::Result<Split> {
    let started = Instant::now();
    let files = split_files(dataset_dir, split, classes)?;
    let per_image = 3 * (size as usize) * (size as usize);
    let chunk = files.len().div_ceil(threads.max(1)).max(1);
    let decoded: Vec<Vec<Option<Vec<u8>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|(path, _)| decode(path, size, interpolation)).collect()))
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("decoder thread panicked")).collect()
    });
    let mut pixels = Vec::with_capacity(files.len() * per_image);
    let mut labels = Vec::with_capacity(files.len());
    let mut paths = Vec::with_capacity(files.len());
    let mut skipped = 0;
    for ((path, label), result) in files.into_iter().zip(decoded.into_iter().flatten()) {
        match result {
            Some(chw) => {
                pixels.extend_from_slice(&chw);
                labels.push(label);
                paths.push(path);
            }
            None => skipped += 1,
        }
    }
    let n = paths.len() as i64;
    let side = size as i64;
    let images = Tensor::from_slice(&pixels).view([n, 3, side, side]);
    let labels = Tensor::from_slice(&labels).to_kind(Kind::Int64);
    Ok(Split { images, labels, paths, skipped, seconds: started.elapsed().as_secs_f64() })
}

/// Decodes one file into CHW RGB bytes of `size`×`size`, or `None` (with a warning) if unreadable.
fn decode(path: &Path, size: u32, interpolation: Interpolation) -> Option<Vec<u8>> {
    let image = image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .map_err(image::ImageError::IoError)
        .and_then(|reader| reader.decode());
    match image {
        Ok(image) => Some(to_chw(&image, size, interpolation)),
        Err(err) => {
            eprintln!("warning: skipping unreadable image {}: {err}", path.display());
            None
        }
    }
}

/// Resizes and lays out channel-first. Grayscale is resized once and copied to all channels.
pub fn to_chw(image: &DynamicImage, size: u32, interpolation: Interpolation) -> Vec<u8> {
    let plane = (size * size) as usize;
    if image.color().has_color() {
        let rgb: RgbImage = resize(&image.to_rgb8(), size, interpolation);
        let mut chw = vec![0u8; 3 * plane];
        for (i, pixel) in rgb.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = pixel.0[c];
            }
        }
        chw
    } else {
        let gray: GrayImage = resize(&image.to_luma8(), size, interpolation);
        let mut chw = Vec::with_capacity(3 * plane);
        for _ in 0..3 {
            chw.extend_from_slice(gray.as_raw());
        }
        chw
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

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
}
