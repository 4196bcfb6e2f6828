//! A synthetic chest-X-ray-like dataset for demos and tests: grayscale JPEGs of a torso with two
//! dark lungs, a spine and ribs; PNEUMONIA images add bright, soft opacities inside the lungs.
//! Sizes vary a little around the nominal side so the resize path is exercised, as with the real
//! Kaggle images.

use crate::config::DemoDataArgs;
use image::codecs::jpeg::JpegEncoder;
use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::BufWriter;
use std::path::Path;

/// The classes, in ImageFolder order (sorted names: NORMAL = 0, PNEUMONIA = 1).
pub const CLASSES: [&str; 2] = ["NORMAL", "PNEUMONIA"];

/// How much data to generate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Test images per class.
    pub test_per_class: usize,
    /// Nominal side in pixels.
    pub size: u32,
    /// Generator seed.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { train_per_class: 150, val_per_class: 10, test_per_class: 50, size: 96, seed: 7 }
    }
}

impl From<DemoDataArgs> for DemoOptions {
    fn from(args: DemoDataArgs) -> DemoOptions {
        DemoOptions {
            train_per_class: args.train_per_class,
            val_per_class: args.val_per_class,
            test_per_class: args.test_per_class,
            size: args.size,
            seed: args.seed,
        }
    }
}

/// Writes the dataset into `dir` (`train|val|test/NORMAL|PNEUMONIA/*.jpeg`) and says what it wrote.
pub fn write(dir: &Path, options: &DemoOptions) -> anyhow::Result<String> {
    anyhow::ensure!(options.size >= 16, "--size must be at least 16 px");
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let splits = [("train", options.train_per_class), ("val", options.val_per_class), ("test", options.test_per_class)];
    let mut total = 0;
    for (split, per_class) in splits {
        for (label, class) in CLASSES.iter().enumerate() {
            let class_dir = dir.join(split).join(class);
            std::fs::create_dir_all(&class_dir)?;
            for index in 0..per_class {
                let image = chest_xray(&mut rng, options.size, label == 1);
                let path = class_dir.join(format!("{split}-{}-{index:04}.jpeg", class.to_lowercase()));
                let file = BufWriter::new(std::fs::File::create(&path)?);
                JpegEncoder::new_with_quality(file, 90).encode_image(&image)?;
                total += 1;
            }
        }
    }
    Ok(format!("wrote {total} images to {}", dir.display()))
}

/// Standard normal sample (Box–Muller), to avoid a distribution crate for one use.
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// One synthetic radiograph.
pub fn chest_xray(rng: &mut impl Rng, size: u32, pneumonia: bool) -> GrayImage {
    let width = size + rng.gen_range(0..=size / 4);
    let height = size + rng.gen_range(0..=size / 4);
    let (w, h) = (width as f32, height as f32);
    let exposure = rng.gen_range(0.85..1.15f32);
    // Lungs: two ellipses left and right of the spine.
    let lung_ry = h * rng.gen_range(0.28..0.34);
    let lung_rx = w * rng.gen_range(0.15..0.19);
    let lung_cy = h * rng.gen_range(0.45..0.52);
    let lungs = [(w * 0.5 - w * 0.2, lung_cy), (w * 0.5 + w * 0.2, lung_cy)];
    // Opacities: soft bright blobs inside a lung.
    let blobs: Vec<(f32, f32, f32, f32)> = if pneumonia {
        (0..rng.gen_range(1..=3))
            .map(|_| {
                let (cx, cy) = lungs[rng.gen_range(0..2)];
                let x = cx + rng.gen_range(-0.5..0.5) * lung_rx;
                let y = cy + rng.gen_range(-0.5..0.5) * lung_ry;
                let sigma = w.min(h) * rng.gen_range(0.07..0.13);
                let amplitude = rng.gen_range(70.0..110.0);
                (x, y, sigma, amplitude)
            })
            .collect()
    } else {
        Vec::new()
    };
    let rib_period = h * rng.gen_range(0.07..0.09);
    let rib_phase = rng.gen_range(0.0..std::f32::consts::TAU);
    GrayImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as f32, y as f32);
        // Torso: bright body, dark air outside.
        let body = (((x - w / 2.0) / (w * 0.46)).powi(2) + ((y - h * 0.55) / (h * 0.55)).powi(2)) < 1.0;
        let mut value = if body { 150.0 } else { 25.0 };
        for (cx, cy) in lungs {
            let d = ((x - cx) / lung_rx).powi(2) + ((y - cy) / lung_ry).powi(2);
            if d < 1.0 {
                // Darker towards the lung's middle, with faint ribs across it.
                value = 55.0 + 40.0 * d + 18.0 * ((y / rib_period) * std::f32::consts::TAU + rib_phase).sin().max(0.0);
            }
        }
        if (x - w / 2.0).abs() < w * 0.04 {
            value = value.max(185.0);
        }
        for &(bx, by, sigma, amplitude) in &blobs {
            let d2 = (x - bx).powi(2) + (y - by).powi(2);
            value += amplitude * (-d2 / (2.0 * sigma * sigma)).exp();
        }
        image::Luma([(value * exposure + 8.0 * normal(rng)).clamp(0.0, 255.0) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_lung_brightness(pneumonia: bool) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let images: Vec<GrayImage> = (0..20).map(|_| chest_xray(&mut rng, 64, pneumonia)).collect();
        images.iter().map(|img| img.pixels().map(|p| p.0[0] as f64).sum::<f64>() / img.len() as f64).sum::<f64>() / 20.0
    }

    #[test]
    fn pneumonia_images_are_brighter_on_average() {
        assert!(mean_lung_brightness(true) > mean_lung_brightness(false) + 3.0);
    }

    #[test]
    fn the_dataset_has_the_kaggle_layout() {
        let dir = tempfile::tempdir().unwrap();
        let options = DemoOptions { train_per_class: 2, val_per_class: 1, test_per_class: 1, size: 32, seed: 3 };
        write(dir.path(), &options).unwrap();
        let info = crate::catalog::datasets::describe("demo", dir.path()).unwrap();
        assert_eq!(info.classes, CLASSES);
        assert_eq!(info.split("train").unwrap().images, 4);
        assert_eq!(info.split("val").unwrap().images, 2);
        let first = dir.path().join("test/PNEUMONIA/test-pneumonia-0000.jpeg");
        let decoded = image::open(first).unwrap();
        assert!(decoded.width() >= 32 && decoded.height() >= 32);
    }
}
