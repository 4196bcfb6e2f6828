//! A fast path for the first pass's common case: baseline (sequential, Huffman-coded, 8-bit)
//! grayscale JPEGs — chest X-rays — decoded straight to 1/8 or 1/4 scale in the DCT domain.
//!
//! A general decoder spends most of its time on the inverse DCT and on writing full-size pixels
//! that the resize then throws away. At 1/8 scale a block's only output pixel is its DC coefficient
//! (the block's mean), and at 1/4 scale its 2×2 output comes from the four lowest coefficients; every
//! other coefficient only has to be *skipped*, which needs its Huffman code and extra-bit length but
//! not its value. Entropy decoding then dominates, and skipping is cheaper than decoding: one
//! table look-up skips several short symbols at once.
//!
//! Anything else — colour, progressive, arithmetic coding, 12-bit samples, a malformed or truncated
//! stream — is refused with [`Refused`] so the caller falls back to a general decoder, which has the
//! final word on whether the file is readable.
//!
//! The full decode ([`decode`]) of baseline JPEGs, grayscale and colour, lives in [`full`]: it
//! shares this parser and reproduces libjpeg-turbo's (Pillow's) pixels exactly.

mod full;

/// Bits resolved by one table look-up; longer codes (rare) take the slow path.
const LOOKUP_BITS: u32 = 10;

/// Bits covered by the multi-symbol skip table.
const MULTI_BITS: u32 = 12;

/// Why the fast path declined a file; the caller then uses a general decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// What the frame header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Colour components (1 for grayscale).
    pub components: u8,
    /// Baseline or extended sequential Huffman coding with 8-bit samples.
    pub sequential_huffman: bool,
}

/// Reads the frame header (the dimensions) without decoding; `None` when it is not a JPEG.
pub fn header(bytes: &[u8]) -> Option<Header> {
    let mut segments = Segments::new(bytes).ok()?;
    while let Some((marker, body)) = segments.next_segment().ok()? {
        if is_frame(marker) {
            return frame_header(marker, body).ok();
        }
        if marker == SOS {
            return None;
        }
    }
    None
}

/// Decodes an image file in full: a baseline JPEG with libjpeg-turbo's arithmetic, pixel for pixel
/// as Pillow decodes it ([`full`]), anything else (progressive JPEGs, PNGs) with `image`.
pub fn decode(bytes: &[u8]) -> image::ImageResult<image::DynamicImage> {
    if header(bytes).is_some() {
        if let Ok(image) = full::decode(bytes) {
            return Ok(image);
        }
    }
    image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?.decode()
}

/// Decodes a baseline grayscale JPEG at 1/`denominator` scale (4 or 8): `ceil(w/d) × ceil(h/d)`
/// row-major pixels, as libjpeg's DCT scaling sizes them. 1/8 is each block's mean exactly (up to
/// quantisation); 1/4 approximates each 4×4 quadrant's mean from the lowest 2×2 coefficients.
pub fn decode_gray_reduced(bytes: &[u8], denominator: u32) -> Result<(u32, u32, Vec<u8>), Refused> {
    if denominator != 4 && denominator != 8 {
        return Err(Refused("only 1/4 and 1/8 scale"));
    }
    let mut quant_tables = [[0u16; 64]; 4];
    let mut dc_tables: [Option<Box<Huffman>>; 4] = Default::default();
    let mut ac_tables: [Option<Box<Huffman>>; 4] = Default::default();
    let mut restart_interval = 0u32;
    let mut frame: Option<(Header, usize)> = None;
    let mut segments = Segments::new(bytes)?;
    while let Some((marker, body)) = segments.next_segment()? {
        match marker {
            DQT => read_quant_tables(body, &mut quant_tables)?,
            DHT => read_huffman_tables(body, &mut dc_tables, &mut ac_tables)?,
            DRI => {
                restart_interval =
                    u16::from_be_bytes(body.get(..2).ok_or(Refused("short DRI"))?.try_into().unwrap()) as u32
            }
            marker if is_frame(marker) => {
                let header = frame_header(marker, body)?;
                if !header.sequential_huffman || header.components != 1 {
                    return Err(Refused("not a baseline grayscale JPEG"));
                }
                frame = Some((header, body[8] as usize & 3));
            }
            SOS => {
                let (header, quant_index) = frame.ok_or(Refused("scan before frame"))?;
                if body.len() < 6 || body[0] != 1 || body[3] != 0 || body[4] != 63 || body[5] != 0 {
                    return Err(Refused("unexpected scan header"));
                }
                let dc = dc_tables[(body[2] >> 4) as usize & 3].as_deref().ok_or(Refused("missing DC table"))?;
                let ac = ac_tables[(body[2] & 15) as usize & 3].as_deref().ok_or(Refused("missing AC table"))?;
                let scan = Scan { dc, ac, quant: &quant_tables[quant_index], restart_interval };
                let data = &bytes[segments.position..];
                return scan.decode(header, data, denominator);
            }
            _ => {}
        }
    }
    Err(Refused("no scan"))
}

const SOI: u8 = 0xD8;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DHT: u8 = 0xC4;
const DRI: u8 = 0xDD;

/// Start-of-frame markers (C0–CF except DHT, JPG and DAC).
fn is_frame(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

fn frame_header(marker: u8, body: &[u8]) -> Result<Header, Refused> {
    if body.len() < 6 {
        return Err(Refused("short frame header"));
    }
    let height = u16::from_be_bytes([body[1], body[2]]) as u32;
    let width = u16::from_be_bytes([body[3], body[4]]) as u32;
    let components = body[5];
    if width == 0 || height == 0 || body.len() < 6 + 3 * components as usize {
        return Err(Refused("bad frame header"));
    }
    Ok(Header { width, height, components, sequential_huffman: matches!(marker, 0xC0 | 0xC1) && body[0] == 8 })
}

/// Walks the marker segments up to the first scan.
struct Segments<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Segments<'a> {
    fn new(bytes: &'a [u8]) -> Result<Segments<'a>, Refused> {
        if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != SOI {
            return Err(Refused("not a JPEG"));
        }
        Ok(Segments { bytes, position: 2 })
    }

    /// The next marker and its body (after the length field); `None` at the end of the file.
    fn next_segment(&mut self) -> Result<Option<(u8, &'a [u8])>, Refused> {
        loop {
            // Markers may be preceded by any number of 0xFF fill bytes.
            while self.bytes.get(self.position) == Some(&0xFF) && self.bytes.get(self.position + 1) == Some(&0xFF) {
                self.position += 1;
            }
            let Some(&[0xFF, marker]) = self.bytes.get(self.position..self.position + 2) else {
                return Ok(None);
            };
            self.position += 2;
            if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
                continue; // standalone markers without a length
            }
            if marker == 0xD9 {
                return Ok(None);
            }
            let length = self.bytes.get(self.position..self.position + 2).ok_or(Refused("truncated segment"))?;
            let length = u16::from_be_bytes([length[0], length[1]]) as usize;
            let body = self.bytes.get(self.position + 2..self.position + length).ok_or(Refused("truncated segment"))?;
            if length < 2 {
                return Err(Refused("bad segment length"));
            }
            self.position += length;
            return Ok(Some((marker, body)));
        }
    }
}

fn read_quant_tables(mut body: &[u8], tables: &mut [[u16; 64]; 4]) -> Result<(), Refused> {
    while let Some((&spec, rest)) = body.split_first() {
        let sixteen_bit = spec >> 4 != 0;
        let size = if sixteen_bit { 128 } else { 64 };
        let values = rest.get(..size).ok_or(Refused("short DQT"))?;
        let table = &mut tables[(spec & 3) as usize];
        for (k, entry) in table.iter_mut().enumerate() {
            *entry =
                if sixteen_bit { u16::from_be_bytes([values[2 * k], values[2 * k + 1]]) } else { values[k] as u16 };
        }
        body = &rest[size..];
    }
    Ok(())
}

fn read_huffman_tables(
    mut body: &[u8],
    dc_tables: &mut [Option<Box<Huffman>>; 4],
    ac_tables: &mut [Option<Box<Huffman>>; 4],
) -> Result<(), Refused> {
    while body.len() >= 17 {
        let spec = body[0];
        let counts: [u8; 16] = body[1..17].try_into().unwrap();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let values = body.get(17..17 + total).ok_or(Refused("short DHT"))?;
        match spec >> 4 {
            0 => dc_tables[(spec & 3) as usize] = Some(Box::new(Huffman::new(&counts, values, false)?)),
            1 => ac_tables[(spec & 3) as usize] = Some(Box::new(Huffman::new(&counts, values, true)?)),
            _ => return Err(Refused("bad DHT class")),
        }
        body = &body[17 + total..];
    }
    Ok(())
}

/// A Huffman table as a look-up of the next [`LOOKUP_BITS`] bits plus the canonical-code limits
/// (JPEG spec F.2.2.3) for longer codes.
struct Huffman {
    /// `(code length << 8) | symbol`, or 0 when the code is longer than the look-up.
    lookup: [u16; 1 << LOOKUP_BITS],
    /// For AC tables, what skipping a coefficient costs: `(zigzag advance << 8) | (code length +
    /// extra bits)`, the advance being `run + 1`, 16 for a zero run (ZRL) and 64 for end-of-block;
    /// 0 when the code is longer than the look-up.
    skip: [u16; 1 << LOOKUP_BITS],
    /// For AC tables, skipping as many whole symbols as the next [`MULTI_BITS`] bits hold:
    /// bits used (0–4), zigzag advance (8–15), end-of-block seen (16); 0 when none fits.
    multi: Box<[u32; 1 << MULTI_BITS]>,
    /// Largest code of each length (index = length), −1 when there is none.
    max_code: [i32; 17],
    /// `values` index minus first code, per length.
    offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    /// Builds the decoding tables; the skip tables only for AC tables (`ac`), the only ones skipped.
    fn new(counts: &[u8; 16], values: &[u8], ac: bool) -> Result<Huffman, Refused> {
        let mut table = Huffman {
            lookup: [0; 1 << LOOKUP_BITS],
            skip: [0; 1 << LOOKUP_BITS],
            multi: Box::new([0; 1 << MULTI_BITS]),
            max_code: [-1; 17],
            offset: [0; 17],
            values: values.to_vec(),
        };
        let mut code = 0u32;
        let mut index = 0usize;
        for length in 1..=16u32 {
            let count = counts[length as usize - 1] as usize;
            table.offset[length as usize] = index as i32 - code as i32;
            for _ in 0..count {
                if code >= 1 << length {
                    return Err(Refused("over-full Huffman table"));
                }
                if length <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - length;
                    let entry = ((length as u16) << 8) | values[index] as u16;
                    let first = (code << shift) as usize;
                    table.lookup[first..first + (1 << shift)].fill(entry);
                    let skip = (skip_advance(values[index]) << 8) | (length + (values[index] & 15) as u32) as u16;
                    table.skip[first..first + (1 << shift)].fill(skip);
                }
                code += 1;
                index += 1;
            }
            if count > 0 {
                table.max_code[length as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        if ac {
            for prefix in 0..1u32 << MULTI_BITS {
                table.multi[prefix as usize] = table.multi_skip(prefix);
            }
        }
        Ok(table)
    }
}

impl Huffman {
    /// The [`Huffman::multi`] entry for the next [`MULTI_BITS`] bits `prefix`: decodes whole AC
    /// symbols (code and extra bits) greedily until one does not fit or ends the block.
    fn multi_skip(&self, prefix: u32) -> u32 {
        let (mut used, mut advance) = (0u32, 0u32);
        while used < MULTI_BITS {
            let remaining = MULTI_BITS - used;
            let bits = (prefix << used) & ((1 << MULTI_BITS) - 1);
            let entry = self.lookup[(bits >> (MULTI_BITS - LOOKUP_BITS)) as usize];
            let length = (entry >> 8) as u32;
            if entry == 0 || length > remaining {
                break;
            }
            let symbol = entry as u8;
            let total = length + (symbol & 15) as u32;
            if total > remaining {
                break;
            }
            used += total;
            let step = skip_advance(symbol) as u32;
            if step == 64 {
                return used | advance << 8 | 1 << 16;
            }
            advance += step;
            if advance > 64 {
                return 0;
            }
        }
        if used == 0 {
            0
        } else {
            used | advance << 8
        }
    }
}

/// How far an AC symbol moves through the block's 64 zigzag positions.
fn skip_advance(symbol: u8) -> u16 {
    match (symbol >> 4, symbol & 15) {
        (15, 0) => 16,
        (_, 0) => 64,
        (run, _) => run as u16 + 1,
    }
}

/// Reads entropy-coded bits: removes byte stuffing (0xFF 0x00) and, at a marker, feeds zero bits
/// while counting them, so running past the end of a segment is detected rather than read.
struct BitReader<'a> {
    data: &'a [u8],
    position: usize,
    /// Left-aligned: the next bit is bit 63.
    bits: u64,
    count: u32,
    /// Zero bits appended after a marker was reached; consuming any of them means the stream is short.
    phantom: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> BitReader<'a> {
        BitReader { data, position: 0, bits: 0, count: 0, phantom: 0 }
    }

    /// Tops the buffer up to more than 56 bits.
    #[inline]
    fn refill(&mut self) {
        // Fast path: eight bytes without 0xFF can be taken whole.
        if let Some(chunk) = self.data.get(self.position..self.position + 8) {
            let word = u64::from_be_bytes(chunk.try_into().unwrap());
            let inverted = !word;
            let has_ff = inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080 != 0;
            if !has_ff {
                let take = (64 - self.count) / 8;
                let kept = if take == 8 { word } else { word & !(u64::MAX >> (8 * take)) };
                self.bits |= kept >> self.count;
                self.count += 8 * take;
                self.position += take as usize;
                return;
            }
        }
        while self.count <= 56 {
            let byte = match self.data.get(self.position) {
                Some(0xFF) if self.data.get(self.position + 1) == Some(&0x00) => {
                    self.position += 2;
                    0xFF
                }
                Some(0xFF) | None => {
                    self.phantom += 8;
                    0
                }
                Some(&byte) => {
                    self.position += 1;
                    byte
                }
            };
            self.bits |= (byte as u64) << (56 - self.count);
            self.count += 8;
        }
    }

    #[inline]
    fn peek(&self, n: u32) -> u32 {
        (self.bits >> (64 - n)) as u32
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.bits <<= n;
        self.count -= n;
    }

    /// The next Huffman symbol.
    #[inline]
    fn symbol(&mut self, table: &Huffman) -> Result<u8, Refused> {
        if self.count < 32 {
            self.refill();
        }
        let entry = table.lookup[self.peek(LOOKUP_BITS) as usize & ((1 << LOOKUP_BITS) - 1)];
        if entry != 0 {
            self.consume((entry >> 8) as u32);
            return Ok(entry as u8);
        }
        for length in LOOKUP_BITS + 1..=16 {
            let code = self.peek(length) as i32;
            if code <= table.max_code[length as usize] {
                self.consume(length);
                return table
                    .values
                    .get((code + table.offset[length as usize]) as usize)
                    .copied()
                    .ok_or(Refused("bad Huffman code"));
            }
        }
        Err(Refused("bad Huffman code"))
    }

    /// The signed value of an `s`-bit extra field (JPEG spec F.2.2.1, EXTEND); needs `s` bits buffered.
    #[inline]
    fn value(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let raw = self.peek(s) as i32;
        self.consume(s);
        if raw < 1 << (s - 1) {
            raw - (1 << s) + 1
        } else {
            raw
        }
    }

    /// True when more bits were consumed than the segment holds.
    #[inline]
    fn overrun(&self) -> bool {
        self.count < self.phantom
    }

    /// Skips to just after the restart marker that must come next.
    fn restart(&mut self) -> Result<(), Refused> {
        self.bits = 0;
        self.count = 0;
        self.phantom = 0;
        while self.data.get(self.position) == Some(&0xFF) && self.data.get(self.position + 1) == Some(&0xFF) {
            self.position += 1;
        }
        match self.data.get(self.position..self.position + 2) {
            Some(&[0xFF, marker]) if (0xD0..=0xD7).contains(&marker) => {
                self.position += 2;
                Ok(())
            }
            _ => Err(Refused("missing restart marker")),
        }
    }
}

/// One single-component scan and the tables it uses.
struct Scan<'a> {
    dc: &'a Huffman,
    ac: &'a Huffman,
    quant: &'a [u16; 64],
    restart_interval: u32,
}

/// 2×2 output from the lowest coefficients, in 1/4096ths: a 4×4 quadrant's mean is
/// `F00/8 ± 0.1133·F01 ± 0.1133·F10 ± 0.1026·F11` (the 8-point DCT basis averaged over half a block).
const QUADRANT_DC: i64 = 512;
const QUADRANT_FIRST: i64 = 464;
const QUADRANT_CROSS: i64 = 420;

impl Scan<'_> {
    fn decode(&self, header: Header, data: &[u8], denominator: u32) -> Result<(u32, u32, Vec<u8>), Refused> {
        let blocks_wide = header.width.div_ceil(8) as usize;
        let blocks_high = header.height.div_ceil(8) as usize;
        let out_width = header.width.div_ceil(denominator) as usize;
        let out_height = header.height.div_ceil(denominator) as usize;
        let per_block = (8 / denominator) as usize;
        let mut pixels = vec![0u8; out_width * out_height];
        let mut reader = BitReader::new(data);
        let mut prediction = 0i32;
        let quant = self.quant;
        let mut until_restart = self.restart_interval;
        for by in 0..blocks_high {
            for bx in 0..blocks_wide {
                if self.restart_interval > 0 {
                    if until_restart == 0 {
                        reader.restart()?;
                        prediction = 0;
                        until_restart = self.restart_interval;
                    }
                    until_restart -= 1;
                }
                let category = reader.symbol(self.dc)? as u32;
                if category > 11 {
                    return Err(Refused("bad DC category"));
                }
                if reader.count < 16 {
                    reader.refill();
                }
                // Wrapping: a corrupt stream must not panic; a valid one stays within ±2¹¹.
                prediction = prediction.wrapping_add(reader.value(category));
                let dc = prediction as i64 * quant[0] as i64;
                // The low coefficients 1/4 scale needs, in zigzag order: F01 (k=1), F10 (k=2), F11 (k=4).
                let mut low = [0i64; 5];
                let mut k = 1u32;
                if per_block == 2 {
                    while k <= 4 {
                        let rs = reader.symbol(self.ac)? as u32;
                        let (run, size) = (rs >> 4, rs & 15);
                        if size == 0 {
                            if run == 15 {
                                k += 16;
                                continue;
                            }
                            k = 64; // end of block
                            break;
                        }
                        k += run;
                        if reader.count < 16 {
                            reader.refill();
                        }
                        let value = reader.value(size);
                        if k <= 4 {
                            low[k as usize] = value as i64 * quant[k as usize] as i64;
                        }
                        k += 1;
                    }
                }
                // Skip the rest of the block: only code and extra-bit lengths matter. Several short
                // symbols at once when they fit the multi-symbol table and stay inside the block
                // (a block whose last coefficient is coded has no end-of-block symbol).
                while k < 64 {
                    if reader.count < 32 {
                        reader.refill();
                    }
                    let multi = self.ac.multi[reader.peek(MULTI_BITS) as usize & ((1 << MULTI_BITS) - 1)];
                    if multi != 0 && k + ((multi >> 8) & 0xFF) + (multi >> 16) <= 64 {
                        reader.consume(multi & 31);
                        k += (multi >> 8) & 0xFF;
                        if multi >> 16 != 0 {
                            break;
                        }
                        continue;
                    }
                    let entry = self.ac.skip[reader.peek(LOOKUP_BITS) as usize & ((1 << LOOKUP_BITS) - 1)];
                    if entry != 0 {
                        reader.consume((entry & 0xFF) as u32);
                        k += (entry >> 8) as u32;
                    } else {
                        let symbol = reader.symbol(self.ac)?;
                        reader.consume((symbol & 15) as u32);
                        k += skip_advance(symbol) as u32;
                    }
                }
                if reader.overrun() {
                    return Err(Refused("truncated scan"));
                }
                if per_block == 1 {
                    pixels[by * out_width + bx] = (((dc + 4) >> 3) + 128).clamp(0, 255) as u8;
                } else {
                    let base = dc * QUADRANT_DC + (128 << 12) + (1 << 11);
                    let horizontal = low[1] * QUADRANT_FIRST;
                    let vertical = low[2] * QUADRANT_FIRST;
                    let cross = low[4] * QUADRANT_CROSS;
                    let quadrants = [
                        [base + horizontal + vertical + cross, base - horizontal + vertical - cross],
                        [base + horizontal - vertical - cross, base - horizontal - vertical + cross],
                    ];
                    for (dy, row) in quadrants.iter().enumerate() {
                        let y = 2 * by + dy;
                        if y >= out_height {
                            break;
                        }
                        for (dx, &sum) in row.iter().enumerate() {
                            let x = 2 * bx + dx;
                            if x < out_width {
                                pixels[y * out_width + x] = (sum >> 12).clamp(0, 255) as u8;
                            }
                        }
                    }
                }
            }
        }
        Ok((out_width as u32, out_height as u32, pixels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// A film-like test image: smooth gradients, a disc and a little deterministic grain (also the
    /// base of `full.rs`'s colour test scene).
    pub(super) fn film(width: u32, height: u32) -> GrayImage {
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

    /// Mean absolute difference between a reduced decode and the box means of the full decode.
    fn error_against_box_means(bytes: &[u8], denominator: u32) -> f64 {
        let (width, height, pixels) = decode_gray_reduced(bytes, denominator).unwrap();
        let full = image::load_from_memory(bytes).unwrap().to_luma8();
        assert_eq!((width, height), (full.width().div_ceil(denominator), full.height().div_ceil(denominator)));
        let mut total = 0.0;
        for y in 0..height {
            for x in 0..width {
                let (mut sum, mut count) = (0u32, 0u32);
                for sy in y * denominator..((y + 1) * denominator).min(full.height()) {
                    for sx in x * denominator..((x + 1) * denominator).min(full.width()) {
                        sum += full.get_pixel(sx, sy).0[0] as u32;
                        count += 1;
                    }
                }
                total += (pixels[(y * width + x) as usize] as f64 - sum as f64 / count as f64).abs();
            }
        }
        total / (width * height) as f64
    }

    #[test]
    fn reduced_decodes_match_the_block_means_of_a_full_decode() {
        // Odd sizes: partial edge blocks.
        let bytes = encode(&film(1003, 757));
        let header = header(&bytes).unwrap();
        assert_eq!((header.width, header.height, header.components, header.sequential_huffman), (1003, 757, 1, true));
        let eighth = error_against_box_means(&bytes, 8);
        let quarter = error_against_box_means(&bytes, 4);
        assert!(eighth < 1.0, "1/8: mean abs error {eighth}");
        assert!(quarter < 2.0, "1/4: mean abs error {quarter}");
    }

    #[test]
    fn colour_and_non_jpeg_files_are_refused() {
        let mut colour = Vec::new();
        JpegEncoder::new(&mut colour).encode_image(&RgbImage::from_pixel(64, 64, Rgb([200, 10, 10]))).unwrap();
        assert_eq!(header(&colour).unwrap().components, 3);
        assert!(decode_gray_reduced(&colour, 8).is_err());
        assert!(header(b"\x89PNG\r\n\x1a\n....").is_none());
        assert!(decode_gray_reduced(b"not a jpeg at all", 8).is_err());
    }

    #[test]
    fn truncated_and_damaged_streams_are_refused_or_survived_never_a_panic() {
        let bytes = encode(&film(320, 240));
        assert!(decode_gray_reduced(&bytes[..bytes.len() / 2], 8).is_err(), "half a file is refused");
        for cut in (0..bytes.len()).step_by(97) {
            let _ = decode_gray_reduced(&bytes[..cut], 4);
        }
        for damaged in damaged_copies(&bytes, 200) {
            let _ = decode_gray_reduced(&damaged, 8);
            let _ = decode_gray_reduced(&damaged, 4);
        }
    }

    /// `count` copies of `bytes`, each with four bytes overwritten at seeded places.
    pub(super) fn damaged_copies(bytes: &[u8], count: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut state = 12345u32;
        (0..count).map(move |_| {
            let mut damaged = bytes.to_vec();
            for _ in 0..4 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let index = (state >> 8) as usize % damaged.len();
                damaged[index] = (state >> 3) as u8;
            }
            damaged
        })
    }
}
