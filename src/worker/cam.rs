//! Grad-CAM pictures (the assignment's Q4): heatmaps of what the last convolution looked at,
//! overlaid on the image with a jet colormap — a gallery over test images at the end of every job,
//! and on demand for uploaded images (`serve.rs`).

use crate::artifacts::{write_artifact, write_json};
use crate::data::Split;
use crate::evaluate::Evaluation;
use crate::model::Network;
use crate::normalise::Normaliser;
use image::RgbImage;
use serde::Serialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Heatmaps per gallery kind (true/false positives/negatives).
const PER_KIND: usize = 3;

/// Longer side of a gallery picture: large enough to see where the heat is.
pub const DISPLAY_SIDE: i64 = 256;

/// One gallery picture, as listed in `cam/index.json`.
#[derive(Debug, Clone, Serialize)]
pub struct GalleryItem {
    /// Artifact name, `cam/<kind>-<n>.png`.
    pub file: String,
    /// `tp`, `tn`, `fp`, `fn` (binary) or `correct`, `wrong` (more classes).
    pub kind: String,
    /// The test image, relative to the dataset.
    pub path: String,
    /// Its true class.
    pub label: String,
    /// The predicted class.
    pub predicted: String,
    /// The positive-class probability (binary) or the predicted class's probability.
    pub probability: f64,
}

/// A jet-like colormap: 0 → dark blue, 0.5 → green-yellow, 1 → dark red.
pub fn jet(value: f32) -> [u8; 3] {
    let v = 4.0 * value.clamp(0.0, 1.0);
    let channel = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel((v - 1.5).min(4.5 - v)), channel((v - 0.5).min(3.5 - v)), channel((v + 0.5).min(2.5 - v))]
}

/// `pixels` (`[1, C, H, W]` uint8) scaled so the longer side is `side`, with `cam` (`[h, w]` in
/// [0, 1]) upsampled bilinearly onto it: 60 % image, 40 % jet.
pub fn overlay(pixels: &Tensor, cam: &Tensor, side: i64) -> RgbImage {
    let size = pixels.size();
    let (height, width) = (size[2], size[3]);
    let scale = side as f64 / height.max(width) as f64;
    let (out_h, out_w) =
        (((height as f64 * scale).round() as i64).max(1), ((width as f64 * scale).round() as i64).max(1));
    let image =
        pixels.to_device(Device::Cpu).to_kind(Kind::Float).upsample_bilinear2d([out_h, out_w], false, None, None);
    let image = if size[1] == 1 { image.expand([1, 3, out_h, out_w], false) } else { image };
    let cam = cam.to_device(Device::Cpu).to_kind(Kind::Float).view([1, 1, cam.size()[0], cam.size()[1]]);
    let heat = cam.upsample_bilinear2d([out_h, out_w], false, None, None).clamp(0.0, 1.0).flatten(0, -1);
    let heat = Vec::<f32>::try_from(heat).expect("a float map");
    let image = Vec::<f32>::try_from(image.contiguous().flatten(0, -1)).expect("float pixels");
    let plane = (out_h * out_w) as usize;
    let mut rgb = RgbImage::new(out_w as u32, out_h as u32);
    for (i, pixel) in rgb.pixels_mut().enumerate() {
        let colour = jet(heat[i]);
        for c in 0..3 {
            pixel.0[c] = (0.6 * image[c * plane + i] + 0.4 * colour[c] as f32).round().clamp(0.0, 255.0) as u8;
        }
    }
    rgb
}

/// Picks the test images the gallery explains: for a binary model the most confident true
/// positives and negatives and the most confident mistakes of each kind; otherwise the most
/// confident correct and wrong predictions. Returns `(index, kind, predicted class, probability)`.
pub fn pick(labels: &[i64], probabilities: &[Vec<f64>]) -> Vec<(usize, &'static str, usize, f64)> {
    let binary = probabilities.first().is_some_and(|row| row.len() == 1);
    let mut candidates: Vec<(usize, &'static str, usize, f64, f64)> = labels
        .iter()
        .zip(probabilities)
        .enumerate()
        .map(|(index, (&label, row))| {
            if binary {
                let p = row[0];
                let predicted = usize::from(p >= 0.5);
                let kind = match (label == 1, predicted == 1) {
                    (true, true) => "tp",
                    (false, false) => "tn",
                    (false, true) => "fp",
                    (true, false) => "fn",
                };
                // Confidence in the prediction made.
                (index, kind, predicted, p, if predicted == 1 { p } else { 1.0 - p })
            } else {
                let (predicted, p) =
                    row.iter()
                        .copied()
                        .enumerate()
                        .fold((0, f64::MIN), |best, (c, p)| if p > best.1 { (c, p) } else { best });
                (index, if predicted as i64 == label { "correct" } else { "wrong" }, predicted, p, p)
            }
        })
        .collect();
    candidates.sort_by(|a, b| b.4.total_cmp(&a.4).then(a.0.cmp(&b.0)));
    let kinds: &[&str] = if binary { &["tp", "tn", "fp", "fn"] } else { &["correct", "wrong"] };
    kinds
        .iter()
        .flat_map(|kind| candidates.iter().filter(move |c| c.1 == *kind).take(PER_KIND))
        .map(|&(index, kind, predicted, p, _)| (index, kind, predicted, p))
        .collect()
}

/// The overlay as PNG bytes, [`DISPLAY_SIDE`] pixels wide. Encoded in memory (a few tens of kB), so
/// the file is written like every other (`files::write_atomic`).
pub fn overlay_png(pixels: &Tensor, cam: &Tensor) -> anyhow::Result<Vec<u8>> {
    let mut png = Vec::new();
    overlay(pixels, cam, DISPLAY_SIDE).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// Writes `cam/<kind>-<n>.png` for the picked test images and `cam/index.json` listing them.
/// Heatmaps are computed in float32 without autocast, one image at a time.
pub fn write_gallery(
    network: &Network,
    test: &Split,
    evaluation: &Evaluation,
    classes: &[String],
    dataset_dir: &Path,
    normaliser: &Normaliser,
    output_dir: &Path,
) -> anyhow::Result<usize> {
    let labels = Vec::<i64>::try_from(&test.labels)?;
    let picks = pick(&labels, &evaluation.probabilities);
    let mut items = Vec::new();
    let mut counts = std::collections::HashMap::new();
    for (index, kind, predicted, probability) in picks {
        let pixels = test.image(index);
        let (map, _) = network.grad_cam(&normaliser.apply(&pixels), Some(predicted as i64));
        let n = counts.entry(kind).or_insert(0usize);
        let file = format!("cam/{kind}-{n}.png");
        *n += 1;
        write_artifact(output_dir, &file, &overlay_png(&pixels, &map)?)?;
        let path = test.paths[index].strip_prefix(dataset_dir).unwrap_or(&test.paths[index]);
        items.push(GalleryItem {
            file,
            kind: kind.to_string(),
            path: path.to_string_lossy().into_owned(),
            label: classes[labels[index] as usize].clone(),
            predicted: classes[predicted].clone(),
            probability,
        });
    }
    write_json(output_dir, "cam/index.json", &items)?;
    Ok(items.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_from_blue_through_green_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        let [r, g, b] = jet(0.25);
        assert!(b == 255 && r == 0 && g == 128, "{r} {g} {b}");
    }

    #[test]
    fn the_gallery_takes_the_most_confident_of_each_kind() {
        let labels = [1, 1, 0, 0, 1, 0, 1];
        let p = |v: f64| vec![v];
        let probabilities = [p(0.9), p(0.6), p(0.1), p(0.7), p(0.2), p(0.95), p(0.99)];
        let picks = pick(&labels, &probabilities);
        let kinds: Vec<(usize, &str)> = picks.iter().map(|&(index, kind, ..)| (index, kind)).collect();
        assert_eq!(kinds, [(6, "tp"), (0, "tp"), (1, "tp"), (2, "tn"), (5, "fp"), (3, "fp"), (4, "fn")]);
        assert_eq!(picks[3].2, 0, "a true negative is explained as the negative class");
    }

    #[test]
    fn an_overlay_is_the_image_with_heat_where_the_map_is_high() {
        // Gray image, map hot in the left half only.
        let pixels = Tensor::full([1, 1, 8, 8], 100, (Kind::Uint8, Device::Cpu));
        let cam = Tensor::cat(
            &[Tensor::ones([4, 2], (Kind::Float, Device::Cpu)), Tensor::zeros([4, 2], (Kind::Float, Device::Cpu))],
            1,
        );
        let picture = overlay(&pixels, &cam, 16);
        assert_eq!(picture.dimensions(), (16, 16));
        let left = picture.get_pixel(1, 8).0;
        let right = picture.get_pixel(14, 8).0;
        assert!(left[0] > left[2], "hot is red: {left:?}");
        assert!(right[2] > right[0], "cold is blue: {right:?}");
    }
}
