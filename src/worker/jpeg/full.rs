//! The full decode of baseline JPEGs with libjpeg-turbo's arithmetic, so that trainq sees the
//! pixels Pillow (and so Keras) sees: the accurate integer inverse DCT (`jidctint.c`, islow),
//! "fancy" (triangle-filter) chroma upsampling with its alternating rounding (`jdsample.c`,
//! h2v1, h1v2, h2v2) and the YCbCr→RGB tables (`jdcolor.c`). General decoders round these steps
//! their own way: `zune-jpeg` differed from Pillow on a fifth of a 4:2:0 image's pixels (by up to
//! 4 levels), enough to move an Inception's probabilities by 3e-3.
//!
//! Baseline and extended sequential Huffman JPEGs with 8-bit samples, grayscale or YCbCr with
//! chroma at full, half-horizontal, half-vertical or half-both resolution (4:4:4, 4:2:2, 4:4:0,
//! 4:2:0), in one interleaved scan. Anything else (progressive, arithmetic coding, Adobe RGB or
//! CMYK, other sampling, a damaged stream) is [`Refused`] and left to a general decoder.

use super::{frame_header, is_frame, read_huffman_tables, read_quant_tables, BitReader, Huffman, Refused, Segments};
use super::{DHT, DQT, DRI, SOS};
use image::{DynamicImage, GrayImage, RgbImage};

const APP14: u8 = 0xEE;

/// Natural (row-major) position of the `k`-th coefficient in zigzag order.
const NATURAL_ORDER: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// One component of the frame and its decoded samples (whole blocks, `stride` wide).
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant: usize,
    dc_table: usize,
    ac_table: usize,
    /// Samples that belong to the image: `ceil(width · h / h_max)` × `ceil(height · v / v_max)`.
    width: usize,
    height: usize,
    stride: usize,
    samples: Vec<u8>,
}

/// Decodes a baseline JPEG as libjpeg-turbo does with its defaults (islow IDCT, fancy upsampling).
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, Refused> {
    let mut quant_tables = [[0u16; 64]; 4];
    let mut dc_tables: [Option<Box<Huffman>>; 4] = Default::default();
    let mut ac_tables: [Option<Box<Huffman>>; 4] = Default::default();
    let mut restart_interval = 0u32;
    let mut frame: Option<(usize, usize, Vec<Component>)> = None;
    let mut segments = Segments::new(bytes)?;
    while let Some((marker, body)) = segments.next_segment()? {
        match marker {
            DQT => read_quant_tables(body, &mut quant_tables)?,
            DHT => read_huffman_tables(body, &mut dc_tables, &mut ac_tables)?,
            DRI => {
                restart_interval =
                    u16::from_be_bytes(body.get(..2).ok_or(Refused("short DRI"))?.try_into().unwrap()) as u32
            }
            // Adobe's marker may say the three components are RGB (or CMYK): not YCbCr.
            APP14 if body.starts_with(b"Adobe") && body.get(11).is_some_and(|&transform| transform != 1) => {
                return Err(Refused("Adobe colour transform"));
            }
            marker if is_frame(marker) => {
                let header = frame_header(marker, body)?;
                if !header.sequential_huffman || !matches!(header.components, 1 | 3) || frame.is_some() {
                    return Err(Refused("not a baseline grayscale or YCbCr JPEG"));
                }
                let components = (0..header.components as usize)
                    .map(|index| {
                        let spec = &body[6 + 3 * index..9 + 3 * index];
                        Component {
                            id: spec[0],
                            h: (spec[1] >> 4) as usize,
                            v: (spec[1] & 15) as usize,
                            quant: (spec[2] & 3) as usize,
                            dc_table: 0,
                            ac_table: 0,
                            width: 0,
                            height: 0,
                            stride: 0,
                            samples: Vec::new(),
                        }
                    })
                    .collect();
                frame = Some((header.width as usize, header.height as usize, components));
            }
            SOS => {
                let (width, height, mut components) = frame.ok_or(Refused("scan before frame"))?;
                let count = *body.first().ok_or(Refused("short scan header"))? as usize;
                let spectral = body.get(1 + 2 * count..4 + 2 * count).ok_or(Refused("short scan header"))?;
                if count != components.len() || spectral != [0, 63, 0] {
                    return Err(Refused("not one interleaved sequential scan"));
                }
                // Scan components in frame order, each with its tables.
                for (index, component) in components.iter_mut().enumerate() {
                    let (id, tables) = (body[1 + 2 * index], body[2 + 2 * index]);
                    if id != component.id {
                        return Err(Refused("scan components out of frame order"));
                    }
                    component.dc_table = (tables >> 4) as usize & 3;
                    component.ac_table = (tables & 15) as usize & 3;
                }
                if components.len() == 3 && components.iter().map(|c| c.id).eq(*b"RGB") {
                    return Err(Refused("RGB components"));
                }
                let data = &bytes[segments.position..];
                let tables = Tables { quant: &quant_tables, dc: &dc_tables, ac: &ac_tables };
                decode_scan(&mut components, width, height, &tables, restart_interval, data)?;
                return Ok(if components.len() == 1 {
                    let plane = &components[0];
                    let pixels = (0..height)
                        .flat_map(|y| &plane.samples[y * plane.stride..y * plane.stride + width])
                        .copied()
                        .collect();
                    DynamicImage::ImageLuma8(GrayImage::from_raw(width as u32, height as u32, pixels).expect("sized"))
                } else {
                    DynamicImage::ImageRgb8(ycc_to_rgb(&components, width, height)?)
                });
            }
            _ => {}
        }
    }
    Err(Refused("no scan"))
}

/// The quantisation and Huffman tables a scan's components index.
struct Tables<'a> {
    quant: &'a [[u16; 64]; 4],
    dc: &'a [Option<Box<Huffman>>; 4],
    ac: &'a [Option<Box<Huffman>>; 4],
}

/// Entropy-decodes the scan and inverse-transforms every block into its component's samples.
fn decode_scan(
    components: &mut [Component],
    width: usize,
    height: usize,
    tables: &Tables,
    restart_interval: u32,
    data: &[u8],
) -> Result<(), Refused> {
    // One component: a non-interleaved scan of single blocks, whatever its sampling factors.
    if components.len() == 1 {
        components[0].h = 1;
        components[0].v = 1;
    }
    let h_max = components.iter().map(|c| c.h).max().unwrap();
    let v_max = components.iter().map(|c| c.v).max().unwrap();
    if components.iter().any(|c| !(1..=2).contains(&c.h) || !(1..=2).contains(&c.v)) {
        return Err(Refused("sampling factors other than 1 and 2"));
    }
    if components.len() == 3
        && (components[0].h != h_max
            || components[0].v != v_max
            || components[1..].iter().any(|c| c.h != 1 || c.v != 1))
    {
        return Err(Refused("chroma sampled finer than 1×1 or luma not at full resolution"));
    }
    let mcus_wide = width.div_ceil(8 * h_max);
    let mcus_high = height.div_ceil(8 * v_max);
    for component in components.iter_mut() {
        component.width = (width * component.h).div_ceil(h_max);
        component.height = (height * component.v).div_ceil(v_max);
        component.stride = mcus_wide * component.h * 8;
        component.samples = vec![0; component.stride * mcus_high * component.v * 8];
        if tables.dc[component.dc_table].is_none() || tables.ac[component.ac_table].is_none() {
            return Err(Refused("missing Huffman table"));
        }
    }
    let mut reader = BitReader::new(data);
    let mut predictions = [0i32; 3];
    let mut until_restart = restart_interval;
    let mut coefficients = [0i32; 64];
    for mcu_y in 0..mcus_high {
        for mcu_x in 0..mcus_wide {
            if restart_interval > 0 {
                if until_restart == 0 {
                    reader.restart()?;
                    predictions = [0; 3];
                    until_restart = restart_interval;
                }
                until_restart -= 1;
            }
            for (index, component) in components.iter_mut().enumerate() {
                let dc = tables.dc[component.dc_table].as_deref().unwrap();
                let ac = tables.ac[component.ac_table].as_deref().unwrap();
                let quant = &tables.quant[component.quant];
                for block_y in 0..component.v {
                    for block_x in 0..component.h {
                        decode_block(&mut reader, dc, ac, quant, &mut predictions[index], &mut coefficients)?;
                        let x = (mcu_x * component.h + block_x) * 8;
                        let y = (mcu_y * component.v + block_y) * 8;
                        let stride = component.stride;
                        idct_islow(&coefficients, &mut component.samples[y * stride + x..], stride);
                    }
                }
            }
            if reader.overrun() {
                return Err(Refused("truncated scan"));
            }
        }
    }
    Ok(())
}

/// One block's dequantised coefficients, in natural order.
fn decode_block(
    reader: &mut BitReader,
    dc: &Huffman,
    ac: &Huffman,
    quant: &[u16; 64],
    prediction: &mut i32,
    coefficients: &mut [i32; 64],
) -> Result<(), Refused> {
    *coefficients = [0; 64];
    let category = reader.symbol(dc)? as u32;
    if category > 11 {
        return Err(Refused("bad DC category"));
    }
    if reader.count < 16 {
        reader.refill();
    }
    *prediction = prediction.wrapping_add(reader.value(category));
    coefficients[0] = prediction.wrapping_mul(quant[0] as i32);
    let mut k = 1usize;
    while k < 64 {
        let rs = reader.symbol(ac)?;
        let (run, size) = ((rs >> 4) as usize, (rs & 15) as u32);
        if size == 0 {
            if run == 15 {
                k += 16;
                continue;
            }
            break; // end of block
        }
        k += run;
        if k > 63 {
            return Err(Refused("coefficient past the block"));
        }
        if reader.count < 16 {
            reader.refill();
        }
        let value = reader.value(size);
        coefficients[NATURAL_ORDER[k]] = value.wrapping_mul(quant[k] as i32);
        k += 1;
    }
    Ok(())
}

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(value: i64, bits: u32) -> i64 {
    (value + (1 << (bits - 1))) >> bits
}

/// The 1-D transform both passes share (`jidctint.c`): eight inputs `s0..s7` → eight outputs
/// before descaling, the even part scaled up by `CONST_BITS`.
#[inline]
fn idct_1d(s: [i64; 8]) -> [i64; 8] {
    // Even part.
    let z1 = (s[2] + s[6]) * FIX_0_541196100;
    let tmp2 = z1 + s[6] * -FIX_1_847759065;
    let tmp3 = z1 + s[2] * FIX_0_765366865;
    let tmp0 = (s[0] + s[4]) << CONST_BITS;
    let tmp1 = (s[0] - s[4]) << CONST_BITS;
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (s[7], s[5], s[3], s[1]);
    let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4) * FIX_1_175875602;
    let (t0, t1, t2, t3) = (t0 * FIX_0_298631336, t1 * FIX_2_053119869, t2 * FIX_3_072711026, t3 * FIX_1_501321110);
    let (z1, z2) = (z1 * -FIX_0_899976223, z2 * -FIX_2_562915447);
    let (z3, z4) = (z3 * -FIX_1_961570560 + z5, z4 * -FIX_0_390180644 + z5);
    let (t0, t1, t2, t3) = (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4);
    [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0, tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]
}

/// libjpeg's accurate integer inverse DCT (`jpeg_idct_islow`) of one block into `out` (rows
/// `stride` apart), with its range limit: the result wraps modulo 1024 before it is clamped.
fn idct_islow(coefficients: &[i32; 64], out: &mut [u8], stride: usize) {
    let mut workspace = [0i64; 64];
    for column in 0..8 {
        let s: [i64; 8] = std::array::from_fn(|row| coefficients[row * 8 + column] as i64);
        if s[1..].iter().all(|&c| c == 0) {
            // What the full transform gives a column of DC alone, as libjpeg shortcuts it.
            for row in 0..8 {
                workspace[row * 8 + column] = s[0] << PASS1_BITS;
            }
            continue;
        }
        let result = idct_1d(s);
        for row in 0..8 {
            workspace[row * 8 + column] = descale(result[row], CONST_BITS - PASS1_BITS);
        }
    }
    for row in 0..8 {
        let s: [i64; 8] = workspace[row * 8..row * 8 + 8].try_into().unwrap();
        if s[1..].iter().all(|&c| c == 0) {
            // Likewise for a row: the full transform's descale of `s0 << CONST_BITS`.
            let wrapped = ((descale(s[0], PASS1_BITS + 3) as i32) << 22) >> 22;
            out[row * stride..row * stride + 8].fill((wrapped + 128).clamp(0, 255) as u8);
            continue;
        }
        let result = idct_1d(s);
        for (column, &value) in result.iter().enumerate() {
            let wrapped = ((descale(value, CONST_BITS + PASS1_BITS + 3) as i32) << 22) >> 22;
            out[row * stride + column] = (wrapped + 128).clamp(0, 255) as u8;
        }
    }
}

/// A chroma component brought to full resolution by libjpeg-turbo's fancy upsampling: a
/// triangle filter (3/4 nearer sample, 1/4 farther) along each halved axis, edges replicated,
/// with its alternating rounding biases (`h2v1_fancy_upsample`, `h1v2_…`, `h2v2_…`). As libjpeg
/// does, a component halved horizontally but at most two samples wide is replicated instead
/// (`h2v1_upsample`, `h2v2_upsample`): its fancy kernels need a neighbour on both sides.
fn upsample(component: &Component, h_max: usize, v_max: usize, width: usize, height: usize) -> Vec<u8> {
    let (w, h, stride) = (component.width, component.height, component.stride);
    let (h_factor, v_factor) = (h_max / component.h, v_max / component.v);
    if h_factor == 2 && w <= 2 {
        let mut out = vec![0u8; width * height];
        for (y, out_row) in out.chunks_exact_mut(width).enumerate() {
            let row = &component.samples[(y / v_factor) * stride..];
            out_row.iter_mut().enumerate().for_each(|(x, o)| *o = row[x / 2]);
        }
        return out;
    }
    let row = |y: usize| &component.samples[y * stride..y * stride + w];
    let mut out = vec![0u8; width * height];
    // One output row at a time: first the vertical filter into `sums` (×4 when halved vertically,
    // ×1 otherwise), then the horizontal one.
    let mut sums = vec![0i32; w];
    for (y, out_row) in out.chunks_exact_mut(width).enumerate() {
        let near = y / v_factor;
        if v_factor == 2 {
            // The farther row: above for an even output row, below for an odd one (edges replicated).
            let far = if y % 2 == 0 { near.saturating_sub(1) } else { (near + 1).min(h - 1) };
            for ((sum, &a), &b) in sums.iter_mut().zip(row(near)).zip(row(far)) {
                *sum = 3 * a as i32 + b as i32;
            }
        } else {
            for (sum, &a) in sums.iter_mut().zip(row(near)) {
                *sum = a as i32;
            }
        }
        let vertical_bias = if y % 2 == 0 { 1 } else { 2 };
        match (h_factor, v_factor) {
            (1, 1) => out_row.iter_mut().zip(&sums).for_each(|(o, &s)| *o = s as u8),
            (1, _) => out_row.iter_mut().zip(&sums).for_each(|(o, &s)| *o = ((s + vertical_bias) >> 2) as u8),
            (_, v) => {
                let (shift, left_bias, right_bias) = if v == 2 { (4, 8, 7) } else { (2, 1, 2) };
                for (x, pair) in out_row.chunks_mut(2).enumerate() {
                    let this = 3 * sums[x];
                    pair[0] = ((this + sums[x.saturating_sub(1)] + left_bias) >> shift) as u8;
                    if let Some(right) = pair.get_mut(1) {
                        *right = ((this + sums[(x + 1).min(w - 1)] + right_bias) >> shift) as u8;
                    }
                }
            }
        }
    }
    out
}

/// `jdcolor.c`'s YCbCr→RGB: 16-bit fixed-point tables, rounded as libjpeg rounds them.
fn ycc_to_rgb(components: &[Component], width: usize, height: usize) -> Result<RgbImage, Refused> {
    const SCALE_BITS: u32 = 16;
    const ONE_HALF: i64 = 1 << (SCALE_BITS - 1);
    let fix = |x: f64| (x * (1i64 << SCALE_BITS) as f64 + 0.5) as i64;
    let centred = |i: usize| i as i64 - 128;
    let cr_r: Vec<i32> = (0..256).map(|i| ((fix(1.40200) * centred(i) + ONE_HALF) >> SCALE_BITS) as i32).collect();
    let cb_b: Vec<i32> = (0..256).map(|i| ((fix(1.77200) * centred(i) + ONE_HALF) >> SCALE_BITS) as i32).collect();
    let cr_g: Vec<i64> = (0..256).map(|i| -fix(0.71414) * centred(i)).collect();
    let cb_g: Vec<i64> = (0..256).map(|i| -fix(0.34414) * centred(i) + ONE_HALF).collect();
    let (h_max, v_max) = (components[0].h, components[0].v);
    let cb = upsample(&components[1], h_max, v_max, width, height);
    let cr = upsample(&components[2], h_max, v_max, width, height);
    let luma = &components[0];
    let mut pixels = vec![0u8; width * height * 3];
    for (y, out) in pixels.chunks_exact_mut(width * 3).enumerate() {
        let luma = &luma.samples[y * luma.stride..y * luma.stride + width];
        let (cb, cr) = (&cb[y * width..(y + 1) * width], &cr[y * width..(y + 1) * width]);
        for (((rgb, &l), &b), &r) in out.chunks_exact_mut(3).zip(luma).zip(cb).zip(cr) {
            let (l, b, r) = (l as i32, b as usize, r as usize);
            let g = ((cb_g[b] + cr_g[r]) >> SCALE_BITS) as i32;
            rgb[0] = (l + cr_r[r]).clamp(0, 255) as u8;
            rgb[1] = (l + g).clamp(0, 255) as u8;
            rgb[2] = (l + cb_b[b]).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(width as u32, height as u32, pixels).ok_or(Refused("bad size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::Rgb;
    use std::path::Path;

    /// `jpeg.rs`'s test film (gradients, a sharp disc, grain) with fine stripes and colour: what
    /// makes decoders round differently.
    fn scene(width: u32, height: u32) -> RgbImage {
        let film = super::super::tests::film(width, height);
        RgbImage::from_fn(width, height, |x, y| {
            let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
            let base = film.get_pixel(x, y).0[0] as f32 + 25.0 * (x as f32 / 7.0).sin() * (y as f32 / 11.0).cos();
            Rgb([base + 50.0 * (9.0 * u).sin(), if v > 0.6 { 0.8 * base + 40.0 } else { 0.8 * base }, 255.0 - base]
                .map(|c| c.clamp(0.0, 255.0) as u8))
        })
    }

    #[test]
    fn baseline_jpegs_decode_to_exactly_the_pixels_pillow_decodes() {
        // JPEGs Pillow wrote and the pixels it decoded from them (deploy/make_jpeg_references.py).
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg");
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(|entry| entry.unwrap().file_name().to_str()?.strip_suffix(".jpeg").map(str::to_string))
            .collect();
        names.sort();
        assert!(names.len() >= 8, "references missing: {names:?}");
        for name in names {
            let bytes = std::fs::read(folder.join(format!("{name}.jpeg"))).unwrap();
            let expected = image::open(folder.join(format!("{name}.png"))).unwrap().to_rgb8();
            let decoded = decode(&bytes).unwrap_or_else(|refused| panic!("{name}: {refused:?}"));
            assert_eq!(decoded.color().has_color(), !name.starts_with("gray"), "{name}");
            let decoded = decoded.to_rgb8();
            assert_eq!(decoded.dimensions(), expected.dimensions(), "{name}");
            let differing = decoded.as_raw().iter().zip(expected.as_raw()).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{name}: {differing} of {} samples differ from Pillow's", expected.len());
        }
    }

    #[test]
    fn the_image_crates_jpegs_decode_close_to_its_own_decoder() {
        // Its encoder writes 4:4:4 colour and grayscale; zune-jpeg rounds differently, by a level or two.
        let image = scene(203, 157);
        let gray = DynamicImage::ImageRgb8(image.clone()).to_luma8();
        for (name, encoded) in [("colour", DynamicImage::ImageRgb8(image)), ("gray", DynamicImage::ImageLuma8(gray))] {
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, 85).encode_image(&encoded).unwrap();
            let ours = decode(&bytes).unwrap_or_else(|refused| panic!("{name}: {refused:?}")).to_rgb8();
            let theirs = image::load_from_memory(&bytes).unwrap().to_rgb8();
            let worst = ours.as_raw().iter().zip(theirs.as_raw()).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
            assert!(worst <= 4, "{name}: {worst} levels from zune-jpeg");
        }
    }

    #[test]
    fn damaged_streams_are_refused_or_survived_never_a_panic() {
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&scene(96, 80)).unwrap();
        assert!(decode(&bytes).is_ok());
        assert!(decode(&bytes[..bytes.len() / 2]).is_err(), "half a file is refused");
        for damaged in super::super::tests::damaged_copies(&bytes, 200) {
            let _ = decode(&damaged);
        }
    }
}
