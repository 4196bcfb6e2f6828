//! Keras' `ImageDataGenerator` augmentation (the spec's `augment`, `domain::augment`) applied to a
//! training batch of cached uint8 pixels, on the batch's device (the GPU when the pixels live
//! there): no image is decoded again, and nothing leaves the device.
//!
//! What Keras computes, step by step (`apply_transform`): the affine change (rotation · shift ·
//! zoom about the centre) through scipy's `ndimage.affine_transform` with `order=1` — each output
//! pixel bilinearly interpolates the input at the position the matrix maps it to, the edges
//! extended by `fill_mode` — in float, not rounded; then the horizontal flip; then the brightness
//! through Pillow (pixels truncated to uint8, multiplied, truncated and clipped at 255). Here the
//! same arithmetic is one gather of the four neighbours of every output pixel, in float64
//! positions (scipy's), for the whole batch at once. The random draw is seeded from (job seed,
//! phase, epoch, step): the same seed gives the same pixels, and a resumed epoch redraws exactly
//! the changes the interrupted one made.

use crate::epochs::derived_seed;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};
use trainq::domain::augment::{Augment, FillMode, ImageTransform};
use trainq::domain::spec::JobSpec;

/// Keeps the augmentation's random stream apart from the shuffle's and dropout's, which derive
/// their seeds from the same (seed, phase, epoch, step).
const AUGMENT_STREAM: u64 = 0x0061_7567_6d65_6e74;

/// How far from a whole pixel a sampling position may be and still count as that pixel: a quarter
/// turn's `cos 90°` is 6e-17, not 0, and would otherwise blend in a neighbour at 1e-14.
const WHOLE_PIXEL_TOLERANCE: f64 = 1e-9;

/// A job's augmentation: its settings and seed.
pub struct Augmenter {
    settings: Augment,
    seed: u64,
}

impl Augmenter {
    /// The spec's augmentation, when it changes anything (every range 0 changes nothing and
    /// gets none, so such a job trains exactly as without `augment`).
    pub fn for_spec(spec: &JobSpec) -> Option<Augmenter> {
        let settings = spec.augment.filter(|_| spec.augments())?;
        Some(Augmenter { settings, seed: spec.seed })
    }

    /// The settings in words for the log.
    pub fn describe(&self) -> String {
        serde_json::to_string(&self.settings).unwrap_or_default()
    }

    /// The uint8 batch `pixels` (`[N, C, H, W]`) of training step `step` of `epoch` in `phase`,
    /// each image changed by its own random draw. Returns float pixels in 0–255, with three
    /// channels: the normaliser scales a float batch in place, so it must own every channel.
    pub fn apply(&self, pixels: &Tensor, (phase, epoch, step): (u32, u32, u32)) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(
            self.seed,
            &[AUGMENT_STREAM, u64::from(phase), u64::from(epoch), u64::from(step)],
        ));
        let size = pixels.size();
        let (count, height, width) = (size[0], size[2], size[3]);
        let transforms: Vec<ImageTransform> =
            (0..count).map(|_| self.settings.draw(height, width, || rng.gen::<f64>())).collect();
        let augmented = transform_batch(pixels, &transforms, self.settings.fill_mode);
        if size[1] == 1 {
            augmented.expand([count, 3, height, width], false).contiguous()
        } else {
            augmented
        }
    }
}

/// Applies one change per image of the uint8 batch `pixels` (`[N, C, H, W]`), as Keras'
/// `apply_transform` does: the affine change, then the flip, then the brightness. Float result.
pub fn transform_batch(pixels: &Tensor, transforms: &[ImageTransform], fill: FillMode) -> Tensor {
    let size = pixels.size();
    let (count, height, width) = (size[0], size[2], size[3]);
    assert_eq!(transforms.len() as i64, count, "one change per image");
    let device = pixels.device();
    let mut x = pixels.to_kind(Kind::Float);
    let matrices: Vec<Option<[[f64; 3]; 2]>> =
        transforms.iter().map(|transform| transform.sampling_matrix(height, width)).collect();
    if matrices.iter().any(Option::is_some) {
        // An image without a matrix samples itself: the identity hits whole pixels exactly.
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let flat: Vec<f64> =
            matrices.iter().flat_map(|matrix| matrix.unwrap_or(identity).into_iter().flatten()).collect();
        let matrices = Tensor::from_slice(&flat).view([count, 2, 3]).to_device(device);
        x = sample_affine(&x, &matrices, fill);
    }
    if transforms.iter().any(|transform| transform.flip) {
        let flips: Vec<bool> = transforms.iter().map(|transform| transform.flip).collect();
        let flips = Tensor::from_slice(&flips).view([count, 1, 1, 1]).to_device(device);
        x = x.flip([3]).where_self(&flips, &x);
    }
    if transforms.iter().any(|transform| transform.brightness.is_some()) {
        // Pillow's `Brightness.enhance` blends with black in float32 and truncates to uint8; the
        // image became uint8 (truncated) before it, as Keras' `array_to_img` converts it.
        let factors: Vec<f32> = transforms.iter().map(|transform| transform.brightness.unwrap_or(1.0) as f32).collect();
        let factors = Tensor::from_slice(&factors).view([count, 1, 1, 1]).to_device(device);
        let brightened = (x.floor() * &factors).floor().clamp(0.0, 255.0);
        let changed: Vec<bool> = transforms.iter().map(|transform| transform.brightness.is_some()).collect();
        let changed = Tensor::from_slice(&changed).view([count, 1, 1, 1]).to_device(device);
        x = brightened.where_self(&changed, &x);
    }
    x
}

/// Each output pixel of the float batch `x` bilinearly interpolates `x` at the position its
/// image's 2×3 matrix (`matrices`, `[N, 2, 3]`, float64) maps it to, the edges extended by `fill`:
/// scipy's `ndimage.affine_transform(order=1, mode=fill, cval=0)`, the whole batch at once.
fn sample_affine(x: &Tensor, matrices: &Tensor, fill: FillMode) -> Tensor {
    let size = x.size();
    let (count, channels, height, width) = (size[0], size[1], size[2], size[3]);
    let device = x.device();
    let rows = Tensor::arange(height, (Kind::Double, device)).view([1, height, 1]);
    let cols = Tensor::arange(width, (Kind::Double, device)).view([1, 1, width]);
    let entry = |row: i64, col: i64| matrices.select(1, row).select(1, col).view([count, 1, 1]);
    let position = |row: i64| entry(row, 0) * &rows + entry(row, 1) * &cols + entry(row, 2);
    let (row_in, col_in) = (snap_to_whole_pixels(position(0)), snap_to_whole_pixels(position(1)));
    let inside = match fill {
        FillMode::Constant => Some(
            row_in
                .ge(0.0)
                .logical_and(&row_in.le((height - 1) as f64))
                .logical_and(&col_in.ge(0.0))
                .logical_and(&col_in.le((width - 1) as f64)),
        ),
        FillMode::Nearest | FillMode::Reflect => None,
    };
    let (row_in, col_in) = match fill {
        FillMode::Reflect => (reflect(&row_in, height), reflect(&col_in, width)),
        FillMode::Nearest | FillMode::Constant => (row_in, col_in),
    };
    // Past the last pixel, order-1 interpolation of the extended image is the edge pixel itself
    // (`nearest`, and `reflect` mirrors about the edge's outer side); `constant` is masked below.
    let row_in = row_in.clamp(0.0, (height - 1) as f64);
    let col_in = col_in.clamp(0.0, (width - 1) as f64);
    let (row_low, col_low) = (row_in.floor(), col_in.floor());
    let row_weight = (&row_in - &row_low).to_kind(Kind::Float).unsqueeze(1);
    let col_weight = (&col_in - &col_low).to_kind(Kind::Float).unsqueeze(1);
    let row_low = row_low.to_kind(Kind::Int64);
    let col_low = col_low.to_kind(Kind::Int64);
    let row_high = (&row_low + 1).clamp_max(height - 1);
    let col_high = (&col_low + 1).clamp_max(width - 1);
    let flat = x.view([count, channels, height * width]);
    let gather = |row: &Tensor, col: &Tensor| {
        let index =
            (row * width + col).view([count, 1, height * width]).expand([count, channels, height * width], false);
        flat.gather(2, &index, false).view([count, channels, height, width])
    };
    let top = gather(&row_low, &col_low) * (1.0 - &col_weight) + gather(&row_low, &col_high) * &col_weight;
    let bottom = gather(&row_high, &col_low) * (1.0 - &col_weight) + gather(&row_high, &col_high) * &col_weight;
    let sampled = &top * (1.0 - &row_weight) + &bottom * &row_weight;
    match inside {
        Some(inside) => sampled * inside.to_kind(Kind::Float).unsqueeze(1),
        None => sampled,
    }
}

/// Positions within [`WHOLE_PIXEL_TOLERANCE`] of a whole pixel become that pixel.
fn snap_to_whole_pixels(position: Tensor) -> Tensor {
    let whole = position.round();
    let near = (&position - &whole).abs().le(WHOLE_PIXEL_TOLERANCE);
    whole.where_self(&near, &position)
}

/// A position along an axis of `length` pixels, mirrored into `[-0.5, length − 0.5]` the way
/// scipy's `reflect` extends an image (`dcba|abcd|dcba`: mirrored about the edge's outer side).
fn reflect(position: &Tensor, length: i64) -> Tensor {
    let period = 2.0 * length as f64;
    let folded = (position + 0.5).remainder(period);
    let mirrored = (period - &folded).where_self(&folded.ge(length as f64), &folded);
    mirrored - 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1×1×H×W uint8 image from rows of values.
    fn image(rows: &[&[u8]]) -> Tensor {
        let (height, width) = (rows.len() as i64, rows[0].len() as i64);
        let flat: Vec<u8> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        Tensor::from_slice(&flat).view([1, 1, height, width])
    }

    fn values(x: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(x.flatten(0, -1)).unwrap()
    }

    fn one(transform: ImageTransform, fill: FillMode, input: &Tensor) -> Vec<f32> {
        values(&transform_batch(input, &[transform], fill))
    }

    const GRID: [&[u8]; 3] = [&[1, 2, 3], &[4, 5, 6], &[7, 8, 9]];

    #[test]
    fn a_flip_mirrors_each_row() {
        let flipped = one(ImageTransform { flip: true, ..ImageTransform::IDENTITY }, FillMode::Nearest, &image(&GRID));
        assert_eq!(flipped, [3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0]);
    }

    #[test]
    fn a_quarter_turn_is_keras_rotation_of_the_grid() {
        // Keras' +90°: output (r, c) samples input (2 − c, r), so the first output row is the
        // first input column read bottom to top.
        let turned = one(ImageTransform { theta: 90.0, ..ImageTransform::IDENTITY }, FillMode::Nearest, &image(&GRID));
        assert_eq!(turned, [7.0, 4.0, 1.0, 8.0, 5.0, 2.0, 9.0, 6.0, 3.0]);
        let back = one(ImageTransform { theta: -90.0, ..ImageTransform::IDENTITY }, FillMode::Nearest, &image(&GRID));
        assert_eq!(back, [3.0, 6.0, 9.0, 2.0, 5.0, 8.0, 1.0, 4.0, 7.0]);
    }

    #[test]
    fn a_whole_pixel_shift_fills_by_the_mode() {
        let input = image(&[&[10, 20, 30, 40]]);
        // tx samples rows, ty columns: one column further, so the picture moves one to the left.
        let shift = ImageTransform { shift_cols: 1.0, ..ImageTransform::IDENTITY };
        assert_eq!(one(shift, FillMode::Nearest, &input), [20.0, 30.0, 40.0, 40.0]);
        assert_eq!(one(shift, FillMode::Constant, &input), [20.0, 30.0, 40.0, 0.0]);
        let two = ImageTransform { shift_cols: -2.0, ..ImageTransform::IDENTITY };
        assert_eq!(one(two, FillMode::Nearest, &input), [10.0, 10.0, 10.0, 20.0]);
        assert_eq!(one(two, FillMode::Reflect, &input), [20.0, 10.0, 10.0, 20.0], "dcba|abcd");
        assert_eq!(one(two, FillMode::Constant, &input), [0.0, 0.0, 10.0, 20.0]);
        let rows = ImageTransform { shift_rows: 1.0, ..ImageTransform::IDENTITY };
        assert_eq!(one(rows, FillMode::Nearest, &image(&GRID)), [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 7.0, 8.0, 9.0]);
    }

    #[test]
    fn a_half_pixel_shift_interpolates_bilinearly() {
        // scipy's order=1: halfway between neighbours, the edge extended (`nearest`).
        let input = image(&[&[10, 20, 30, 40]]);
        let half = ImageTransform { shift_cols: 0.5, ..ImageTransform::IDENTITY };
        assert_eq!(one(half, FillMode::Nearest, &input), [15.0, 25.0, 35.0, 40.0]);
        // A zoom of 2 about the centre (1.5) samples 2c − 1.5: −1.5, 0.5, 2.5, 4.5.
        let zoom = ImageTransform { zoom_cols: 2.0, ..ImageTransform::IDENTITY };
        assert_eq!(one(zoom, FillMode::Nearest, &input), [10.0, 15.0, 35.0, 40.0]);
    }

    #[test]
    fn brightness_truncates_as_pillow_does() {
        let input = image(&[&[0, 3, 100, 200]]);
        let darker = ImageTransform { brightness: Some(0.5), ..ImageTransform::IDENTITY };
        assert_eq!(one(darker, FillMode::Nearest, &input), [0.0, 1.0, 50.0, 100.0]);
        let brighter = ImageTransform { brightness: Some(1.5), ..ImageTransform::IDENTITY };
        assert_eq!(one(brighter, FillMode::Nearest, &input), [0.0, 4.0, 150.0, 255.0]);
    }

    fn spec(augment: serde_json::Value, seed: u64) -> JobSpec {
        let json = serde_json::json!({
            "dataset": "d", "backbone": "vgg16", "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}],
            "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "sgd", "lr": 0.1},
            "seed": seed, "augment": augment
        });
        JobSpec::parse(json.to_string().as_bytes()).unwrap()
    }

    fn batch() -> Tensor {
        Tensor::randint(256, [4, 3, 16, 12], (Kind::Uint8, tch::Device::Cpu))
    }

    #[test]
    fn every_range_zero_leaves_the_input_bit_for_bit() {
        let zero = serde_json::json!({"rotation_range": 0, "width_shift_range": 0, "zoom_range": 0});
        assert!(Augmenter::for_spec(&spec(zero, 1)).is_none(), "nothing to apply: the batch is used as it is");
        let pixels = batch();
        let same = transform_batch(&pixels, &[ImageTransform::IDENTITY; 4], FillMode::Reflect);
        assert!(same.equal(&pixels.to_kind(Kind::Float)));
    }

    #[test]
    fn the_same_seed_gives_the_same_batch_and_another_seed_another() {
        let settings = serde_json::json!({
            "horizontal_flip": true, "rotation_range": 20, "width_shift_range": 0.1, "height_shift_range": 0.1,
            "zoom_range": 0.2, "brightness_range": [0.8, 1.2], "fill_mode": "reflect"
        });
        let pixels = batch();
        let augment = |seed: u64, step: u32| {
            Augmenter::for_spec(&spec(settings.clone(), seed)).unwrap().apply(&pixels, (1, 1, step))
        };
        let first = augment(7, 0);
        assert_eq!(first.size(), [4, 3, 16, 12]);
        assert!(first.equal(&augment(7, 0)), "same seed, same pixels");
        assert!(!first.equal(&augment(8, 0)), "another seed, another batch");
        assert!(!first.equal(&augment(7, 1)), "another step, another batch");
        assert!(!first.equal(&pixels.to_kind(Kind::Float)), "something changed");
        let gray = Tensor::randint(256, [2, 1, 8, 8], (Kind::Uint8, tch::Device::Cpu));
        let augmenter = Augmenter::for_spec(&spec(settings, 1)).unwrap();
        assert_eq!(augmenter.apply(&gray, (1, 1, 0)).size(), [2, 3, 8, 8], "three channels for the normaliser");
    }
}
