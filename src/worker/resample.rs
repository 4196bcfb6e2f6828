//! Pillow's resizing, reproduced operation for operation, so an image trainq trains on is the one
//! Keras' `load_img` (Pillow's `Image.resize`) would have made from the same decoded pixels:
//! `nearest` is Pillow's affine scaling (source coordinates accumulated in `f64`, truncated), and
//! `bilinear` is Pillow's two-pass convolution with a triangle filter widened by the scale
//! (antialiasing when shrinking), in its 22-bit fixed point, horizontal pass first.
//! Checked against files Pillow wrote (`deploy/make_resize_references.py`, `tests/data/resize/`).
//!
//! Buffers are interleaved `u8` pixels of `channels` channels, row after row.

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS` in `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Nearest neighbour as Pillow's `ImagingScaleAffine`: the source column of output column `x` is
/// `trunc(scale / 2 + x · scale)`, with the sum accumulated step by step in `f64` as Pillow does
/// (a product computed afresh can round the other way at an exact half).
pub fn nearest(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let columns = sources(width, out_width);
    let rows = sources(height, out_height);
    let mut out = Vec::with_capacity(out_width * out_height * channels);
    for &row in &rows {
        let line = &pixels[row * width * channels..(row + 1) * width * channels];
        for &column in &columns {
            out.extend_from_slice(&line[column * channels..(column + 1) * channels]);
        }
    }
    out
}

/// Pillow's nearest source index for each of `out` positions over `extent` pixels.
fn sources(extent: usize, out: usize) -> Vec<usize> {
    let scale = extent as f64 / out as f64;
    let mut at = scale * 0.5;
    (0..out)
        .map(|_| {
            // Pillow leaves an output pixel outside the source black; with these scales none is.
            let index = (at as usize).min(extent - 1);
            at += scale;
            index
        })
        .collect()
}

/// One output position's taps: the first source index and the fixed-point weights from there.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter, then `normalize_coeffs_8bpc`.
fn taps(extent: usize, out: usize) -> Vec<Taps> {
    let scale = extent as f64 / out as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's support (1) times the filter scale
                                // Pillow multiplies by the reciprocal (not divides): the last bit can differ.
    let inverse = 1.0 / filter_scale;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    (0..out)
        .map(|position| {
            let center = (position as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).min(extent as i64) as usize;
            let raw: Vec<f64> = (first..last).map(|x| triangle((x as f64 - center + 0.5) * inverse)).collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&weight| {
                    let weight = if total != 0.0 { weight / total } else { weight };
                    let fixed = weight * f64::from(1u32 << PRECISION_BITS);
                    (if fixed < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// A fixed-point sum back to a byte, clipped as Pillow's `clip8` does.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bilinear as Pillow's `ImagingResample` with `BILINEAR`: two passes through an 8-bit
/// intermediate, a pass whose size does not change skipped. Horizontal first (over the rows the
/// vertical pass will read), except that, as since Pillow 13, when the height shrinks by more
/// than twice as many pixels as the width does, the vertical pass goes first. (Earlier Pillows
/// always go horizontal first; the two orders round differently by ±1 here and there.)
pub fn bilinear(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let shrink = |from: usize, to: usize| from as i64 - to as i64;
    let vertical_first = out_height < height && shrink(height, out_height) > 2 * shrink(width, out_width);
    if vertical_first {
        let shorter = vertical_pass(pixels, width * channels, 0, &taps(height, out_height));
        return horizontal_pass(&shorter, width, channels, out_width);
    }
    if out_height == height {
        return horizontal_pass(pixels, width, channels, out_width);
    }
    let vertical = taps(height, out_height);
    // Only the rows the vertical pass reads go through the horizontal one.
    let first_row = vertical[0].first;
    let last_row = vertical.iter().map(|tap| tap.first + tap.weights.len()).max().unwrap_or(height);
    let narrower =
        horizontal_pass(&pixels[first_row * width * channels..last_row * width * channels], width, channels, out_width);
    vertical_pass(&narrower, out_width * channels, first_row, &vertical)
}

/// Resamples each row of `pixels` (`width` pixels of `channels`) to `out_width` pixels; a copy
/// when the width stays.
fn horizontal_pass(pixels: &[u8], width: usize, channels: usize, out_width: usize) -> Vec<u8> {
    if out_width == width {
        return pixels.to_vec();
    }
    let horizontal = taps(width, out_width);
    let mut out = Vec::with_capacity(pixels.len() / width * out_width);
    for line in pixels.chunks_exact(width * channels) {
        for tap in &horizontal {
            for channel in 0..channels {
                let mut sum = 1i32 << (PRECISION_BITS - 1);
                for (offset, &weight) in tap.weights.iter().enumerate() {
                    sum += i32::from(line[(tap.first + offset) * channels + channel]) * weight;
                }
                out.push(clip8(sum));
            }
        }
    }
    out
}

/// Resamples the columns of `pixels` (rows of `stride` values, the first being source row
/// `first_row`) with the vertical `taps`.
fn vertical_pass(pixels: &[u8], stride: usize, first_row: usize, taps: &[Taps]) -> Vec<u8> {
    let mut out = Vec::with_capacity(taps.len() * stride);
    for tap in taps {
        for index in 0..stride {
            let mut sum = 1i32 << (PRECISION_BITS - 1);
            for (offset, &weight) in tap.weights.iter().enumerate() {
                sum += i32::from(pixels[(tap.first - first_row + offset) * stride + index]) * weight;
            }
            out.push(clip8(sum));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG of `tests/data/resize/` as interleaved pixels, width, height and channels.
    fn reference(name: &str) -> (Vec<u8>, usize, usize, usize) {
        let path = format!("{}/tests/data/resize/{name}.png", env!("CARGO_MANIFEST_DIR"));
        let image = image::open(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        let (width, height) = (image.width() as usize, image.height() as usize);
        match image {
            image::DynamicImage::ImageLuma8(gray) => (gray.into_raw(), width, height, 1),
            other => (other.to_rgb8().into_raw(), width, height, 3),
        }
    }

    #[test]
    fn nearest_and_bilinear_are_pillows_to_the_last_bit() {
        let sizes = [(16, 9), (7, 5), (64, 50), (31, 17), (50, 11), (3, 3)];
        for source in ["gray", "colour"] {
            let (pixels, width, height, channels) = reference(source);
            for (out_width, out_height) in sizes {
                for (name, resize) in [
                    ("nearest", nearest as fn(&[u8], usize, usize, usize, usize, usize) -> Vec<u8>),
                    ("bilinear", bilinear),
                ] {
                    let (expected, ..) = reference(&format!("{source}-{name}-{out_width}x{out_height}"));
                    let ours = resize(&pixels, width, height, channels, out_width, out_height);
                    let differing = ours.iter().zip(&expected).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        differing,
                        0,
                        "{source} {name} {width}x{height} → {out_width}x{out_height}: {differing} of {} values differ",
                        expected.len()
                    );
                    assert_eq!(ours.len(), expected.len());
                }
            }
        }
    }

    #[test]
    fn the_same_size_is_a_copy() {
        let pixels: Vec<u8> = (0..60).collect();
        assert_eq!(bilinear(&pixels, 5, 4, 3, 5, 4), pixels);
        assert_eq!(nearest(&pixels, 5, 4, 3, 5, 4), pixels);
    }
}
