//! The spec's `augment`: random changes to each training image, with the meaning Keras'
//! `ImageDataGenerator` gives the same keyword arguments (`horizontal_flip`, `rotation_range`,
//! `width_shift_range`, `height_shift_range`, `zoom_range`, `brightness_range`, `fill_mode`), so
//! a student's Keras settings carry over unchanged. The worker applies them
//! (`src/worker/augment.rs`); this module holds the settings, their bounds and the random draw.

use super::spec::SpecError;
use serde::{Deserialize, Serialize};

/// Largest accepted `rotation_range`: Keras draws the angle from `[-r, r]`, so 180° already
/// reaches every rotation; a larger range only repeats angles.
pub const MAX_ROTATION_RANGE: f64 = 180.0;
/// Largest accepted zoom or brightness factor: beyond 10× an image is one pixel, or white.
pub const MAX_FACTOR: f64 = 10.0;

/// How the pixels an affine change brings in from beyond the image's edges are filled, as scipy's
/// `ndimage.affine_transform` (Keras' `fill_mode`) fills them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FillMode {
    /// The nearest edge pixel (`aaaa|abcd|dddd`), Keras' default.
    #[default]
    Nearest,
    /// Black: Keras' `cval` of 0 (`0000|abcd|0000`).
    Constant,
    /// The image mirrored about its edge (`dcba|abcd|dcba`).
    Reflect,
}

/// Keras' `zoom_range`: a number `z` (each axis's factor drawn from `[1 − z, 1 + z]`) or the
/// bounds `[lower, upper]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ZoomRange {
    /// Factors from `[1 − z, 1 + z]`.
    Symmetric(f64),
    /// Factors from `[lower, upper]`.
    Bounds([f64; 2]),
}

impl Default for ZoomRange {
    fn default() -> ZoomRange {
        ZoomRange::Symmetric(0.0)
    }
}

impl ZoomRange {
    /// The interval each axis's zoom factor is drawn from.
    pub fn bounds(self) -> (f64, f64) {
        match self {
            ZoomRange::Symmetric(z) => (1.0 - z, 1.0 + z),
            ZoomRange::Bounds([lower, upper]) => (lower, upper),
        }
    }

    fn is_none(&self) -> bool {
        self.bounds() == (1.0, 1.0)
    }
}

/// Random changes to each training image, as Keras' `ImageDataGenerator` makes them, drawn anew
/// for every image of every step from the job's seed (the same seed gives the same pixels).
/// Applied to training images only, never to validation or test images. Every range 0 (the
/// default) leaves the images as they are.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Mirror half the images left to right, at random.
    #[serde(default, skip_serializing_if = "is_false")]
    pub horizontal_flip: bool,
    /// Rotate by an angle drawn from `[-r, r]` degrees, about the image's centre (0 to 180).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0, maximum = 180)]
    pub rotation_range: f64,
    /// Shift sideways by a fraction of the width drawn from `[-s, s]` (at least 0, below 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub width_shift_range: f64,
    /// Shift up or down by a fraction of the height drawn from `[-s, s]` (at least 0, below 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub height_shift_range: f64,
    /// `z` (below 1): each axis's zoom factor drawn from `[1 − z, 1 + z]`; or `[lower, upper]`.
    /// A factor above 1 shows more of the film (it looks smaller), as in Keras.
    #[serde(default, skip_serializing_if = "ZoomRange::is_none")]
    pub zoom_range: ZoomRange,
    /// `[lower, upper]`: the pixels multiplied by a factor drawn from it, as Pillow's
    /// `ImageEnhance.Brightness` does (truncated to whole values, at most 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brightness_range: Option<[f64; 2]>,
    /// How pixels brought in from beyond the edges are filled: `nearest` (the default),
    /// `constant` (black) or `reflect`.
    #[serde(default, skip_serializing_if = "is_nearest")]
    pub fill_mode: FillMode,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

fn is_nearest(mode: &FillMode) -> bool {
    *mode == FillMode::Nearest
}

impl Augment {
    /// Whether these settings leave every image as it is (every range 0, no flip, no
    /// brightness): then the worker skips augmentation altogether, and the phase may still train
    /// from cached activations.
    pub fn is_identity(&self) -> bool {
        !self.horizontal_flip
            && self.rotation_range == 0.0
            && self.width_shift_range == 0.0
            && self.height_shift_range == 0.0
            && self.zoom_range.is_none()
            && self.brightness_range.is_none()
    }

    /// The settings in words for the report and `compare`: `horizontal flips, rotations up to
    /// ±15°, width shifts up to ±10%, zoom 0.8–1.2, fill nearest`; `none` when nothing changes.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.horizontal_flip {
            parts.push(String::from("horizontal flips"));
        }
        if self.rotation_range != 0.0 {
            parts.push(format!("rotations up to ±{}°", self.rotation_range));
        }
        for (name, value) in [("width", self.width_shift_range), ("height", self.height_shift_range)] {
            if value != 0.0 {
                parts.push(format!("{name} shifts up to ±{}%", value * 100.0));
            }
        }
        if !self.zoom_range.is_none() {
            let (lower, upper) = self.zoom_range.bounds();
            parts.push(format!("zoom {lower}–{upper}"));
        }
        if let Some([lower, upper]) = self.brightness_range {
            parts.push(format!("brightness {lower}–{upper}"));
        }
        if parts.is_empty() {
            return String::from("none");
        }
        let fill = match self.fill_mode {
            FillMode::Nearest => "nearest",
            FillMode::Constant => "constant (black)",
            FillMode::Reflect => "reflect",
        };
        parts.push(format!("fill {fill}"));
        parts.join(", ")
    }

    /// Checks every range against its bounds; an error names the field (`augment.rotation_range`)
    /// and the accepted values.
    pub fn validate(&self) -> Result<(), SpecError> {
        let field = |name: &str| format!("augment.{name}");
        if !(self.rotation_range.is_finite() && (0.0..=MAX_ROTATION_RANGE).contains(&self.rotation_range)) {
            return Err(SpecError::new(
                field("rotation_range"),
                format!(
                    "{} is out of range: give degrees from 0 to {MAX_ROTATION_RANGE} (the angle is drawn from [-r, r], so 180 already covers every rotation), e.g. 15",
                    self.rotation_range
                ),
            ));
        }
        for (name, value) in
            [("width_shift_range", self.width_shift_range), ("height_shift_range", self.height_shift_range)]
        {
            if !(value.is_finite() && (0.0..1.0).contains(&value)) {
                return Err(SpecError::new(
                    field(name),
                    format!("{value} is out of range: give a fraction of the image's side, at least 0 and below 1, e.g. 0.1"),
                ));
            }
        }
        match self.zoom_range {
            ZoomRange::Symmetric(z) if !(z.is_finite() && (0.0..1.0).contains(&z)) => {
                return Err(SpecError::new(
                    field("zoom_range"),
                    format!("{z} is out of range: give z at least 0 and below 1 (factors from [1 − z, 1 + z]), e.g. 0.2, or the bounds [lower, upper]"),
                ));
            }
            ZoomRange::Bounds(bounds) => check_factor_bounds(&field("zoom_range"), bounds, false)?,
            ZoomRange::Symmetric(_) => {}
        }
        if let Some(bounds) = self.brightness_range {
            check_factor_bounds(&field("brightness_range"), bounds, true)?;
        }
        Ok(())
    }

    /// One image's random change, drawn from `random` (a uniform draw from `[0, 1)` per call) in
    /// the order Keras' `get_random_transform` draws: angle, vertical shift, horizontal shift, the
    /// two zoom factors, the flip, the brightness. Shifts are in pixels of a `height`×`width` image.
    pub fn draw(&self, height: i64, width: i64, mut random: impl FnMut() -> f64) -> ImageTransform {
        let mut uniform = |lower: f64, upper: f64| lower + (upper - lower) * random();
        let theta = if self.rotation_range != 0.0 { uniform(-self.rotation_range, self.rotation_range) } else { 0.0 };
        let shift_rows = if self.height_shift_range != 0.0 {
            uniform(-self.height_shift_range, self.height_shift_range) * height as f64
        } else {
            0.0
        };
        let shift_cols = if self.width_shift_range != 0.0 {
            uniform(-self.width_shift_range, self.width_shift_range) * width as f64
        } else {
            0.0
        };
        let (zoom_rows, zoom_cols) = if self.zoom_range.is_none() {
            (1.0, 1.0)
        } else {
            let (lower, upper) = self.zoom_range.bounds();
            (uniform(lower, upper), uniform(lower, upper))
        };
        let flip = self.horizontal_flip && uniform(0.0, 1.0) < 0.5;
        let brightness = self.brightness_range.map(|[lower, upper]| uniform(lower, upper));
        ImageTransform { theta, shift_rows, shift_cols, zoom_rows, zoom_cols, flip, brightness }
    }
}

/// `[lower, upper]` with `0 ≤ lower ≤ upper ≤ MAX_FACTOR` (and `lower > 0` unless `zero_allowed`).
fn check_factor_bounds(field: &str, [lower, upper]: [f64; 2], zero_allowed: bool) -> Result<(), SpecError> {
    let lower_ok = if zero_allowed { lower >= 0.0 } else { lower > 0.0 };
    if !(lower.is_finite() && upper.is_finite() && lower_ok && lower <= upper && upper <= MAX_FACTOR) {
        let least = if zero_allowed { "at least 0" } else { "above 0" };
        return Err(SpecError::new(
            field,
            format!("[{lower}, {upper}] is out of range: give [lower, upper] with lower {least}, lower ≤ upper, and upper at most {MAX_FACTOR}, e.g. [0.8, 1.2]"),
        ));
    }
    Ok(())
}

/// One image's change, in Keras' parameters (`get_random_transform`'s `theta`, `tx`, `ty`, `zx`,
/// `zy`, `flip_horizontal`, `brightness`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageTransform {
    /// Rotation in degrees.
    pub theta: f64,
    /// Keras' `tx`: the shift along the rows, in pixels.
    pub shift_rows: f64,
    /// Keras' `ty`: the shift along the columns, in pixels.
    pub shift_cols: f64,
    /// Keras' `zx`: the zoom factor along the rows.
    pub zoom_rows: f64,
    /// Keras' `zy`: the zoom factor along the columns.
    pub zoom_cols: f64,
    /// Mirror left to right (after the affine change, as Keras does).
    pub flip: bool,
    /// Multiply the pixels by this factor (last, as Keras does).
    pub brightness: Option<f64>,
}

impl ImageTransform {
    /// The change that changes nothing.
    pub const IDENTITY: ImageTransform = ImageTransform {
        theta: 0.0,
        shift_rows: 0.0,
        shift_cols: 0.0,
        zoom_rows: 1.0,
        zoom_cols: 1.0,
        flip: false,
        brightness: None,
    };

    /// The 2×3 matrix `[a b c; d e f]` that maps an output pixel's (row, column) to the input
    /// position it samples, `(a·row + b·col + c, d·row + e·col + f)`, as Keras'
    /// `apply_affine_transform` builds it for scipy's `ndimage.affine_transform`: rotation ·
    /// shift · zoom, then moved to turn about the centre of a `height`×`width` image
    /// (`transform_matrix_offset_center`, `(side / 2 − 0.5)`). `None` when Keras builds no matrix
    /// (no rotation, shift or zoom) and leaves the pixels untouched.
    pub fn sampling_matrix(&self, height: i64, width: i64) -> Option<[[f64; 3]; 2]> {
        if self.theta == 0.0
            && self.shift_rows == 0.0
            && self.shift_cols == 0.0
            && self.zoom_rows == 1.0
            && self.zoom_cols == 1.0
        {
            return None;
        }
        type Matrix = [[f64; 3]; 3];
        fn product(a: &Matrix, b: &Matrix) -> Matrix {
            let mut out = [[0.0; 3]; 3];
            for (row, out_row) in out.iter_mut().enumerate() {
                for (col, cell) in out_row.iter_mut().enumerate() {
                    *cell = (0..3).map(|k| a[row][k] * b[k][col]).sum();
                }
            }
            out
        }
        let radians = self.theta.to_radians();
        let (sin, cos) = radians.sin_cos();
        let rotation = [[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]];
        let shift = [[1.0, 0.0, self.shift_rows], [0.0, 1.0, self.shift_cols], [0.0, 0.0, 1.0]];
        let zoom = [[self.zoom_rows, 0.0, 0.0], [0.0, self.zoom_cols, 0.0], [0.0, 0.0, 1.0]];
        let (centre_row, centre_col) = (height as f64 / 2.0 - 0.5, width as f64 / 2.0 - 0.5);
        let offset = [[1.0, 0.0, centre_row], [0.0, 1.0, centre_col], [0.0, 0.0, 1.0]];
        let reset = [[1.0, 0.0, -centre_row], [0.0, 1.0, -centre_col], [0.0, 0.0, 1.0]];
        let matrix = product(&product(&offset, &product(&product(&rotation, &shift), &zoom)), &reset);
        Some([matrix[0], matrix[1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Augment, SpecError> {
        let augment: Augment =
            serde_json::from_value(json).map_err(|err| SpecError::new("augment", err.to_string()))?;
        augment.validate().map(|()| augment)
    }

    #[test]
    fn keras_spellings_parse_and_round_trip() {
        let augment = parse(serde_json::json!({
            "horizontal_flip": true, "rotation_range": 15, "width_shift_range": 0.1,
            "height_shift_range": 0.1, "zoom_range": 0.2, "brightness_range": [0.8, 1.2], "fill_mode": "reflect"
        }))
        .unwrap();
        assert_eq!(augment.zoom_range.bounds(), (0.8, 1.2));
        assert_eq!(augment.fill_mode, FillMode::Reflect);
        assert!(!augment.is_identity());
        assert_eq!(
            augment.describe(),
            "horizontal flips, rotations up to ±15°, width shifts up to ±10%, height shifts up to ±10%, zoom 0.8–1.2, brightness 0.8–1.2, fill reflect"
        );
        let again: Augment = serde_json::from_value(serde_json::to_value(augment).unwrap()).unwrap();
        assert_eq!(again, augment);
        let bounds = parse(serde_json::json!({"zoom_range": [0.9, 1.3]})).unwrap();
        assert_eq!(bounds.zoom_range.bounds(), (0.9, 1.3));
        let nothing = parse(serde_json::json!({})).unwrap();
        assert!(nothing.is_identity());
        assert_eq!(serde_json::to_value(nothing).unwrap(), serde_json::json!({}), "defaults are not written out");
    }

    #[test]
    fn ranges_out_of_bounds_name_their_field() {
        for (json, field) in [
            (serde_json::json!({"rotation_range": 720}), "augment.rotation_range"),
            (serde_json::json!({"rotation_range": -5}), "augment.rotation_range"),
            (serde_json::json!({"zoom_range": -0.2}), "augment.zoom_range"),
            (serde_json::json!({"zoom_range": 1.0}), "augment.zoom_range"),
            (serde_json::json!({"zoom_range": [1.2, 0.8]}), "augment.zoom_range"),
            (serde_json::json!({"zoom_range": [0.0, 1.0]}), "augment.zoom_range"),
            (serde_json::json!({"width_shift_range": 1.5}), "augment.width_shift_range"),
            (serde_json::json!({"height_shift_range": -0.1}), "augment.height_shift_range"),
            (serde_json::json!({"brightness_range": [-1.0, 1.0]}), "augment.brightness_range"),
            (serde_json::json!({"brightness_range": [0.5, 20.0]}), "augment.brightness_range"),
        ] {
            let err = parse(json.clone()).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err:?}");
            assert!(err.message.contains("out of range"), "{json}: {}", err.message);
        }
    }

    #[test]
    fn the_draw_follows_keras_order_and_scales_shifts_by_the_side() {
        let augment = Augment {
            horizontal_flip: true,
            rotation_range: 10.0,
            width_shift_range: 0.5,
            height_shift_range: 0.25,
            zoom_range: ZoomRange::Symmetric(0.5),
            brightness_range: Some([0.5, 1.5]),
            fill_mode: FillMode::Nearest,
        };
        // Each draw is 0.75: angle 5°, shifts at half their range, zooms 1.25, no flip (0.75 ≥ 0.5).
        let transform = augment.draw(40, 100, || 0.75);
        assert_eq!(
            transform,
            ImageTransform {
                theta: 5.0,
                shift_rows: 0.125 * 40.0,
                shift_cols: 0.25 * 100.0,
                zoom_rows: 1.25,
                zoom_cols: 1.25,
                flip: false,
                brightness: Some(1.25),
            }
        );
        assert!(augment.draw(40, 100, || 0.25).flip);
        // Nothing asked, nothing drawn: the identity without consuming randomness.
        let mut calls = 0;
        assert_eq!(
            Augment::default().draw(8, 8, || {
                calls += 1;
                0.3
            }),
            ImageTransform::IDENTITY
        );
        assert_eq!(calls, 0);
    }

    #[test]
    fn the_matrix_turns_about_the_centre_as_keras_builds_it() {
        assert_eq!(ImageTransform::IDENTITY.sampling_matrix(4, 4), None, "Keras builds no matrix");
        // A quarter turn of a 3×3 image: output (r, c) samples input (2 − c, r) about centre (1, 1).
        let quarter = ImageTransform { theta: 90.0, ..ImageTransform::IDENTITY };
        let [[a, b, c], [d, e, f]] = quarter.sampling_matrix(3, 3).unwrap();
        let sample = |r: f64, col: f64| ((a * r + b * col + c), (d * r + e * col + f));
        for (r, col) in [(0.0, 0.0), (0.0, 2.0), (1.0, 1.0), (2.0, 1.0)] {
            let (row_in, col_in) = sample(r, col);
            assert!((row_in - (1.0 + (1.0 - col))).abs() < 1e-12, "{r},{col}: {row_in}");
            assert!((col_in - (1.0 + (r - 1.0))).abs() < 1e-12, "{r},{col}: {col_in}");
        }
        // A shift of whole pixels samples that many pixels further: tx along rows, ty along columns.
        let shift = ImageTransform { shift_rows: 1.0, shift_cols: -2.0, ..ImageTransform::IDENTITY };
        assert_eq!(shift.sampling_matrix(5, 6), Some([[1.0, 0.0, 1.0], [0.0, 1.0, -2.0]]));
        // A zoom of 2 samples twice as far from the centre: the image looks smaller.
        let zoom = ImageTransform { zoom_rows: 2.0, zoom_cols: 2.0, ..ImageTransform::IDENTITY };
        assert_eq!(zoom.sampling_matrix(4, 4), Some([[2.0, 0.0, -1.5], [0.0, 2.0, -1.5]]));
    }
}
