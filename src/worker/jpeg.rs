//! Every JPEG the worker reads is decoded by libjpeg-turbo, the library Pillow links, with Pillow's
//! settings, so a job sees the pixels Keras' `load_img` sees by construction: the accurate integer
//! inverse DCT (islow) and "fancy" chroma upsampling (TurboJPEG's defaults), grayscale kept as one
//! channel, colour converted to RGB. Baseline, progressive and arithmetic-coded files all take this
//! one path. CMYK and YCCK files (Adobe's) are decoded to CMYK and converted as Pillow converts them
//! ([`inverted_cmyk_to_rgb`]): TurboJPEG converts them to nothing else.
//!
//! A decode that libjpeg-turbo only warns about (a truncated file: "Premature end of JPEG file",
//! corrupt entropy data) is an error here, as it is in Pillow ("image file is truncated"): TurboJPEG's
//! stop-on-warning, so a damaged file is skipped rather than trained on with grey filler.
//!
//! `fast_decode` and the exact `area` case decode at 1/2, 1/4 or 1/8 scale ([`decode_scaled`]):
//! libjpeg-turbo's scaled inverse DCTs, which at 1/8 give each 8×8 block its DC (the block's mean).
//!
//! Files that are not JPEGs (PNGs) are decoded by the `image` crate.

use image::{DynamicImage, GrayImage, ImageError, ImageFormat, RgbImage};
use std::cell::RefCell;
use std::ffi::CStr;
use turbojpeg_sys as turbo;

/// Pillow's `Image.MAX_IMAGE_PIXELS` times two: above it Pillow refuses a file as a decompression
/// bomb, and a damaged header must not make the worker allocate gigabytes either.
const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Why a JPEG could not be decoded: libjpeg-turbo's own short reason ("Premature end of JPEG
/// file", "Not a JPEG file: starts with 0x89 0x50", …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for ImageError {
    fn from(error: DecodeError) -> ImageError {
        ImageError::Decoding(image::error::DecodingError::new(ImageFormat::Jpeg.into(), error))
    }
}

/// How a JPEG's components are coded, from its header (libjpeg's reading of the markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColourSpace {
    /// One component: decoded as one channel.
    Gray,
    /// The usual colour JPEG: decoded to RGB.
    YCbCr,
    /// Three components stored as RGB (an Adobe marker says so): decoded to RGB.
    Rgb,
    /// Four components, Adobe's CMYK: decoded to CMYK, then converted as Pillow does.
    Cmyk,
    /// Four components, Adobe's YCCK: libjpeg makes them CMYK, then converted as Pillow does.
    Ycck,
}

/// What the header says about a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How the components are coded.
    pub colour_space: ColourSpace,
    /// A lossless JPEG (SOF3), which libjpeg-turbo cannot decode at a reduced scale.
    pub lossless: bool,
}

impl Header {
    /// Whether the image decodes to one channel.
    pub fn is_gray(&self) -> bool {
        self.colour_space == ColourSpace::Gray
    }
}

/// Whether `bytes` start like a JPEG (SOI then a marker). Such a file is libjpeg-turbo's alone to
/// accept or refuse: no second decoder gets to read a file it refused.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Reads a JPEG's header without decoding; `None` when it is not a JPEG or its header is damaged.
pub fn header(bytes: &[u8]) -> Option<Header> {
    if !is_jpeg(bytes) {
        return None;
    }
    with_decompressor(|decompressor| decompressor.header(bytes)).ok()
}

/// Decodes an image file in full: a JPEG through libjpeg-turbo, pixel for pixel as Pillow decodes
/// it; anything else (PNGs) with `image`.
pub fn decode(bytes: &[u8]) -> image::ImageResult<DynamicImage> {
    if is_jpeg(bytes) {
        return Ok(decode_scaled(bytes, 1)?);
    }
    image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?.decode()
}

/// Decodes a JPEG at 1/`reduction` scale (1, 2, 4 or 8): `ceil(w/reduction) × ceil(h/reduction)`
/// pixels, libjpeg-turbo's scaled inverse DCT. A lossless JPEG cannot be scaled and comes back in
/// full; the resize that follows sizes it.
pub fn decode_scaled(bytes: &[u8], reduction: u32) -> Result<DynamicImage, DecodeError> {
    if ![1, 2, 4, 8].contains(&reduction) {
        return Err(DecodeError(format!("no 1/{reduction} scale: 1/1, 1/2, 1/4 or 1/8")));
    }
    with_decompressor(|decompressor| decompressor.decode(bytes, reduction))
}

/// Pillow's conversion of a CMYK JPEG to RGB, in place of libjpeg's (which has none): Pillow reads
/// the samples as Adobe writes them, inverted (its `CMYK;I` raw mode), then `convert("RGB")` takes
/// `R = (255 − K) − C·(255 − K)/255` per channel, rounded as its `MULDIV255` rounds (Convert.c,
/// `cmyk2rgb`). With the inversion undone, `255 − K` is the stored `K` and `C` is `255 −` the
/// stored `C`.
pub fn inverted_cmyk_to_rgb(stored: &[u8]) -> Vec<u8> {
    let multiply_divide_255 = |a: i32, b: i32| {
        let product = a * b + 128;
        ((product >> 8) + product) >> 8
    };
    stored
        .chunks_exact(4)
        .flat_map(|sample| {
            let not_black = sample[3] as i32;
            let channel =
                |stored: u8| (not_black - multiply_divide_255(255 - stored as i32, not_black)).clamp(0, 255) as u8;
            [channel(sample[0]), channel(sample[1]), channel(sample[2])]
        })
        .collect()
}

thread_local! {
    /// One TurboJPEG instance per thread, reused for every file: the first pass decodes one image
    /// per thread, and an instance holds libjpeg's state and buffers between files.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// Runs `work` with this thread's decompressor, creating it on first use. After an error the
/// instance is dropped: libjpeg may be left mid-header by the error's `longjmp` (the next call
/// would fail with "Improper call to JPEG library in state …"), and errors are rare enough that a
/// fresh instance costs nothing that shows.
fn with_decompressor<T>(work: impl FnOnce(&mut Decompressor) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new()?);
        }
        let result = work(slot.as_mut().expect("created above"));
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// A TurboJPEG decompression instance with stop-on-warning set.
struct Decompressor {
    handle: turbo::tjhandle,
}

impl Decompressor {
    fn new() -> Result<Decompressor, DecodeError> {
        // SAFETY: tj3Init has no preconditions; a null handle is checked before any use.
        let handle = unsafe { turbo::tj3Init(turbo::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        if handle.is_null() {
            // SAFETY: with a null handle, tj3GetErrorStr reports the last global (thread-local) error.
            let reason = unsafe { CStr::from_ptr(turbo::tj3GetErrorStr(handle)) };
            return Err(DecodeError(reason.to_string_lossy().into_owned()));
        }
        let decompressor = Decompressor { handle };
        decompressor.set(turbo::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        Ok(decompressor)
    }

    /// The reason for the last failed call on this instance.
    fn error(&self) -> DecodeError {
        // SAFETY: the handle is live (owned by self); the string is copied before the next call.
        let reason = unsafe { CStr::from_ptr(turbo::tj3GetErrorStr(self.handle)) };
        DecodeError(reason.to_string_lossy().into_owned())
    }

    fn set(&self, parameter: turbo::TJPARAM, value: libc::c_int) -> Result<(), DecodeError> {
        // SAFETY: a live handle and a parameter the bindings define.
        if unsafe { turbo::tj3Set(self.handle, parameter as libc::c_int, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn get(&self, parameter: turbo::TJPARAM) -> libc::c_int {
        // SAFETY: a live handle and a parameter the bindings define.
        unsafe { turbo::tj3Get(self.handle, parameter as libc::c_int) }
    }

    fn header(&mut self, bytes: &[u8]) -> Result<Header, DecodeError> {
        // SAFETY: a live handle; libjpeg-turbo reads at most `bytes.len()` bytes from the pointer.
        if unsafe { turbo::tj3DecompressHeader(self.handle, bytes.as_ptr(), bytes.len() as turbo::size_t) } != 0 {
            return Err(self.error());
        }
        let colour_space = match self.get(turbo::TJPARAM_TJPARAM_COLORSPACE) as turbo::TJCS {
            turbo::TJCS_TJCS_GRAY => ColourSpace::Gray,
            turbo::TJCS_TJCS_YCbCr => ColourSpace::YCbCr,
            turbo::TJCS_TJCS_RGB => ColourSpace::Rgb,
            turbo::TJCS_TJCS_CMYK => ColourSpace::Cmyk,
            turbo::TJCS_TJCS_YCCK => ColourSpace::Ycck,
            other => return Err(DecodeError(format!("unknown JPEG colour space {other}"))),
        };
        let (width, height) = (self.get(turbo::TJPARAM_TJPARAM_JPEGWIDTH), self.get(turbo::TJPARAM_TJPARAM_JPEGHEIGHT));
        if width <= 0 || height <= 0 {
            return Err(DecodeError(format!("bad JPEG size {width}×{height}")));
        }
        if width as u64 * height as u64 > MAX_PIXELS {
            return Err(DecodeError(format!("{width}×{height} pixels: more than {MAX_PIXELS}, a decompression bomb")));
        }
        let lossless = self.get(turbo::TJPARAM_TJPARAM_LOSSLESS) != 0;
        Ok(Header { width: width as u32, height: height as u32, colour_space, lossless })
    }

    fn decode(&mut self, bytes: &[u8], reduction: u32) -> Result<DynamicImage, DecodeError> {
        let header = self.header(bytes)?;
        let reduction = if header.lossless { 1 } else { reduction };
        let factor = turbo::tjscalingfactor { num: 1, denom: reduction as libc::c_int };
        // SAFETY: a live handle; 1/1, 1/2, 1/4 and 1/8 are among TurboJPEG's scaling factors.
        if unsafe { turbo::tj3SetScalingFactor(self.handle, factor) } != 0 {
            return Err(self.error());
        }
        // TJSCALED: libjpeg rounds a scaled side up.
        let (width, height) = (header.width.div_ceil(reduction) as usize, header.height.div_ceil(reduction) as usize);
        let (format, channels) = match header.colour_space {
            ColourSpace::Gray => (turbo::TJPF_TJPF_GRAY, 1),
            ColourSpace::YCbCr | ColourSpace::Rgb => (turbo::TJPF_TJPF_RGB, 3),
            ColourSpace::Cmyk | ColourSpace::Ycck => (turbo::TJPF_TJPF_CMYK, 4),
        };
        let mut pixels = vec![0u8; width * height * channels];
        // SAFETY: a live handle; `pixels` holds `height` rows of `width * channels` bytes, the
        // pitch given, which is what TurboJPEG writes for this scaling factor and pixel format.
        let status = unsafe {
            turbo::tj3Decompress8(
                self.handle,
                bytes.as_ptr(),
                bytes.len() as turbo::size_t,
                pixels.as_mut_ptr(),
                (width * channels) as libc::c_int,
                format,
            )
        };
        if status != 0 {
            return Err(self.error());
        }
        let (width, height) = (width as u32, height as u32);
        let image = match channels {
            1 => GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
            3 => RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
            _ => RgbImage::from_raw(width, height, inverted_cmyk_to_rgb(&pixels)).map(DynamicImage::ImageRgb8),
        };
        Ok(image.expect("the buffer was sized for these dimensions"))
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped once.
        unsafe { turbo::tj3Destroy(self.handle) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{Luma, Rgb};
    use std::path::Path;

    /// A film-like test image: smooth gradients, a disc and a little deterministic grain.
    fn film(width: u32, height: u32) -> GrayImage {
        GrayImage::from_fn(width, height, |x, y| {
            let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
            let disc = if (u - 0.4).powi(2) + (v - 0.5).powi(2) < 0.05 { 60.0 } else { 0.0 };
            let grain = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)) % 13) as f32 - 6.0;
            Luma([(40.0 + 120.0 * u + 50.0 * v + disc + grain).clamp(0.0, 255.0) as u8])
        })
    }

    fn encode(image: &GrayImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(image).unwrap();
        bytes
    }

    #[test]
    fn jpegs_decode_to_exactly_the_pixels_pillow_decodes() {
        // JPEGs Pillow wrote (and jpegtran re-coded) and the pixels Pillow decoded from them
        // (deploy/make_jpeg_references.py): baseline in every chroma layout, progressive,
        // arithmetic-coded, and Adobe CMYK.
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg");
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(|entry| entry.unwrap().file_name().to_str()?.strip_suffix(".jpeg").map(str::to_string))
            .collect();
        names.sort();
        for kind in ["progressive", "arithmetic", "cmyk"] {
            assert!(names.iter().any(|name| name.contains(kind)), "no {kind} reference in {names:?}");
        }
        for name in names {
            let bytes = std::fs::read(folder.join(format!("{name}.jpeg"))).unwrap();
            let expected = image::open(folder.join(format!("{name}.png"))).unwrap().to_rgb8();
            let decoded = decode(&bytes).unwrap_or_else(|error| panic!("{name}: {error}"));
            assert_eq!(decoded.color().has_color(), !name.starts_with("gray"), "{name}");
            let decoded = decoded.to_rgb8();
            assert_eq!(decoded.dimensions(), expected.dimensions(), "{name}");
            let differing = decoded.as_raw().iter().zip(expected.as_raw()).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{name}: {differing} of {} samples differ from Pillow's", expected.len());
        }
    }

    #[test]
    fn pillows_cmyk_conversion_rounds_as_muldiv255() {
        // Stored (inverted) samples: K stored 255 is no black; C stored 255 is no cyan.
        assert_eq!(inverted_cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(inverted_cmyk_to_rgb(&[0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(inverted_cmyk_to_rgb(&[9, 200, 255, 0]), [0, 0, 0], "full black");
        // nk = 128, C = 55: 128 − round(55·128/255) = 128 − 28.
        assert_eq!(inverted_cmyk_to_rgb(&[200, 255, 0, 128]), [100, 128, 0]);
    }

    #[test]
    fn reduced_decodes_are_sized_as_libjpeg_scales_and_keep_the_block_means() {
        // Odd sizes: partial edge blocks.
        let bytes = encode(&film(1003, 757));
        let header = header(&bytes).unwrap();
        assert_eq!((header.width, header.height, header.colour_space), (1003, 757, ColourSpace::Gray));
        let full = decode(&bytes).unwrap().to_luma8();
        for (reduction, bound) in [(8, 1.0), (4, 2.0), (2, 2.0)] {
            let reduced = decode_scaled(&bytes, reduction).unwrap().to_luma8();
            assert_eq!(reduced.dimensions(), (1003u32.div_ceil(reduction), 757u32.div_ceil(reduction)));
            let mut total = 0.0;
            for (x, y, pixel) in reduced.enumerate_pixels() {
                let (mut sum, mut count) = (0u32, 0u32);
                for sy in y * reduction..((y + 1) * reduction).min(full.height()) {
                    for sx in x * reduction..((x + 1) * reduction).min(full.width()) {
                        sum += full.get_pixel(sx, sy).0[0] as u32;
                        count += 1;
                    }
                }
                total += (pixel.0[0] as f64 - sum as f64 / count as f64).abs();
            }
            let error = total / (reduced.width() * reduced.height()) as f64;
            assert!(error < bound, "1/{reduction}: mean abs error {error} from the box means");
        }
        assert!(decode_scaled(&bytes, 3).is_err(), "no 1/3 scale");
    }

    #[test]
    fn colour_jpegs_decode_to_rgb_and_other_files_go_to_the_image_crate() {
        let mut colour = Vec::new();
        JpegEncoder::new(&mut colour).encode_image(&RgbImage::from_pixel(64, 64, Rgb([200, 10, 10]))).unwrap();
        assert_eq!(header(&colour).unwrap().colour_space, ColourSpace::YCbCr);
        let decoded = decode(&colour).unwrap();
        assert!(matches!(decoded, DynamicImage::ImageRgb8(_)));
        assert_eq!(decode_scaled(&colour, 8).unwrap().to_rgb8().dimensions(), (8, 8));
        let mut png = Vec::new();
        GrayImage::from_pixel(5, 3, Luma([7])).write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png).unwrap();
        assert!(header(&png).is_none());
        assert_eq!(decode(&png).unwrap().to_luma8().into_raw(), vec![7; 15]);
    }

    #[test]
    fn truncated_corrupt_and_non_image_files_are_errors_with_a_reason_never_a_panic() {
        let bytes = encode(&film(320, 240));
        assert!(decode(&bytes).is_ok());
        // Pillow: "image file is truncated"; libjpeg-turbo only warns, which stop-on-warning makes an error.
        let truncated = decode_scaled(&bytes[..bytes.len() / 2], 1).unwrap_err();
        assert!(truncated.0.contains("Premature end of JPEG file"), "{truncated}");
        assert!(decode(&bytes[..bytes.len() - 40]).is_err(), "a few missing bytes are an error too");
        assert!(decode_scaled(&bytes[..bytes.len() / 2], 8).is_err(), "and at a reduced scale");
        assert!(decode(b"\xff\xd8\xff not really a jpeg").is_err());
        assert!(decode(b"not an image at all").is_err());
        // The thread's next decode is not disturbed by the errors before it.
        assert!(decode(&bytes).is_ok());
        assert!(header(b"\xff\xd8\xff\xe0 damaged header").is_none());
        assert!(decode(&bytes).is_ok());
        for cut in (0..bytes.len()).step_by(97) {
            let _ = decode_scaled(&bytes[..cut], 4);
        }
        let mut state = 12345u32;
        for _ in 0..200 {
            let mut damaged = bytes.clone();
            for _ in 0..4 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let index = (state >> 8) as usize % damaged.len();
                damaged[index] = (state >> 3) as u8;
            }
            let _ = decode(&damaged);
            let _ = decode_scaled(&damaged, 8);
        }
    }
}
