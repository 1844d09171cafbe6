//! Per-token row quantization: each cached key or value row is cut into blocks along its
//! channels and every block stored as codes plus its own f16 parameters, so that a row can
//! be appended, dropped or read alone. Two kinds of block:
//!
//! - **min–max** ([`RowFormat::MinMax`]): FlexGen's asymmetric codes of 2, 3, 4 or 8 bits
//!   with an f16 minimum and scale per group, rounded half to even from the f16-rounded
//!   parameters, as the benchmark's `llama_simquant.py`;
//! - **llama.cpp's KV cache types** ([`GgmlType`]: `q8_0`, `q4_0`, `q4_1`, `iq4_nl`), byte
//!   for byte what ggml's reference quantizers write (`ggml-quants.c`, checked against
//!   `ggml_quantize_chunk` in a fixture test), 32 values per block.
//!
//! [`hadamard`] is the orthonormal Walsh–Hadamard rotation llama.cpp applies to keys,
//! queries and values before they meet a quantized cache (`llama-kv-cache.cpp`), which
//! spreads an outlier channel over its block before the block is quantized.

use half::f16;

use crate::f16_bits_to_f32;
use crate::{KvError, Result};

/// llama.cpp's block types for a quantized KV cache (`--cache-type-k`, `--cache-type-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 8-bit symmetric: f16 scale `max|x| / 127`, codes rounded half away from zero.
    Q8_0,
    /// 4-bit symmetric: f16 scale `−m / 8`, `m` the value of largest magnitude.
    Q4_0,
    /// 4-bit asymmetric: f16 scale `(max − min) / 15` and f16 minimum.
    Q4_1,
    /// 4-bit non-linear: indices into a fixed table of 16 levels, f16 scale found by
    /// llama.cpp's search of 15 candidate scales weighted by `x²`.
    Iq4Nl,
}

/// Values per block of every [`GgmlType`].
const GGML_BLOCK: usize = 32;

/// IQ4_NL's levels (`kvalues_iq4nl`).
const IQ4NL_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

impl GgmlType {
    /// Bytes of one block of 32 values.
    fn block_bytes(self) -> usize {
        match self {
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q4_0 | GgmlType::Iq4Nl => 2 + 16,
            GgmlType::Q4_1 => 4 + 16,
        }
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Iq4Nl => "iq4_nl",
        }
    }

    /// One block quantized into `out` (`block_bytes` long), as ggml's reference code.
    fn quantize(self, x: &[f32], out: &mut [u8]) {
        match self {
            GgmlType::Q8_0 => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for (o, v) in out[2..].iter_mut().zip(x) {
                    // C's roundf: half away from zero.
                    *o = (v * id).round() as i8 as u8;
                }
            }
            GgmlType::Q4_0 => {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if amax < v.abs() {
                        (amax, max) = (v.abs(), v);
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                // C's (int8_t) conversion truncates; the argument is at least 0.5.
                let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                pack_halves(&mut out[2..], x, code);
            }
            GgmlType::Q4_1 => {
                let (mut min, mut max) = (f32::MAX, -f32::MAX);
                for &v in x {
                    min = min.min(v);
                    max = max.max(v);
                }
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
                let code = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
                pack_halves(&mut out[4..], x, code);
            }
            GgmlType::Iq4Nl => {
                let d = iq4nl_scale(x);
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                pack_halves(&mut out[2..], x, |v| nearest_level(id * v) as u8);
            }
        }
    }

    /// One block read back into `out` (32 values).
    #[inline(always)]
    fn dequantize(self, b: &[u8], out: &mut [f32]) {
        let half = |at: usize| f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]));
        let d = half(0);
        match self {
            GgmlType::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&b[2..2 + GGML_BLOCK]) {
                    *o = d * (q as i8) as f32;
                }
            }
            GgmlType::Q4_0 => unpack_halves(&b[2..18], out, |q| d * (q as f32 - 8.0)),
            GgmlType::Q4_1 => {
                let m = half(2);
                unpack_halves(&b[4..20], out, |q| d * q as f32 + m)
            }
            GgmlType::Iq4Nl => {
                unpack_halves(&b[2..18], out, |q| d * IQ4NL_LEVELS[q as usize] as f32)
            }
        }
    }
}

/// ggml's 4-bit packing: byte `j` holds value `j` in its low nibble, value `j + 16` in its
/// high nibble.
fn pack_halves(out: &mut [u8], x: &[f32], mut code: impl FnMut(f32) -> u8) {
    for j in 0..GGML_BLOCK / 2 {
        out[j] = code(x[j]) | (code(x[j + GGML_BLOCK / 2]) << 4);
    }
}

/// The inverse of [`pack_halves`], each nibble read through `value`.
#[inline(always)]
fn unpack_halves(bytes: &[u8], out: &mut [f32], value: impl Fn(u8) -> f32) {
    let (low, high) = out.split_at_mut(GGML_BLOCK / 2);
    for ((l, h), &b) in low.iter_mut().zip(high).zip(bytes) {
        *l = value(b & 0x0f);
        *h = value(b >> 4);
    }
}

/// Index of the IQ4_NL level nearest `x` (`best_index_int8`: ties go up).
fn nearest_level(x: f32) -> usize {
    let levels = IQ4NL_LEVELS.map(f32::from);
    if x <= levels[0] {
        return 0;
    }
    if x >= levels[15] {
        return 15;
    }
    let (mut lo, mut hi) = (0, 15);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < levels[mid] {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - levels[hi - 1] < levels[hi] - x {
        hi - 1
    } else {
        hi
    }
}

/// IQ4_NL's scale for one block: `quantize_row_iq4_nl_impl` with no importance weights and
/// 7 tries each side (what `quantize_iq4_nl` passes): the least-squares scale under weights
/// `x²` of the best of 15 candidate scales, in f32 as ggml computes it.
fn iq4nl_scale(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            (amax, max) = (v.abs(), v);
        }
    }
    if amax < 1e-15 {
        return 0.0;
    }
    let levels = IQ4NL_LEVELS.map(f32::from);
    // Σ w·q·x and Σ w·q² with each value at its nearest level under inverse scale `id`.
    let sums = |id: f32| {
        let (mut qx, mut q2) = (0f32, 0f32);
        for &v in x {
            let q = levels[nearest_level(id * v)];
            let w = v * v;
            qx += w * q * v;
            q2 += w * q * q;
        }
        (qx, q2)
    };
    let (qx, q2) = sums(1.0 / (max / 127.0));
    let mut d = qx / q2;
    let mut best = d * qx;
    for step in -7i32..=7 {
        let (qx, q2) = sums((step + IQ4NL_LEVELS[0] as i32) as f32 / max);
        if q2 > 0.0 && qx * qx > best * q2 {
            d = qx / q2;
            best = d * qx;
        }
    }
    d
}

/// One group's asymmetric min–max quantization, shared by every packed layout: returns the
/// f16 minimum and scale and hands each value's code (by index) to `code`. Codes are
/// computed from the f16-rounded minimum and scale, so that they decode as stored, and
/// round half to even, as `torch.round` in the reference implementations; a constant group
/// gets scale 0 and decodes to its value.
pub(crate) fn quantize_group(
    values: &[f32],
    bits: u32,
    mut code: impl FnMut(usize, u8),
) -> (f16, f16) {
    let levels = ((1u32 << bits) - 1) as f32;
    let min = values.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let (min16, scale16) = (f16::from_f32(min), f16::from_f32((max - min) / levels));
    let (min, scale) = (min16.to_f32(), scale16.to_f32());
    for (i, v) in values.iter().enumerate() {
        let c = if scale > 0.0 {
            ((v - min) / scale).round_ties_even().clamp(0.0, levels) as u8
        } else {
            0
        };
        code(i, c);
    }
    (min16, scale16)
}

/// How one key or value row is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// Asymmetric min–max codes of `bits` per value, an f16 minimum and scale per `group`
    /// channels (FlexGen's).
    MinMax { bits: u32, group: usize },
    /// One of llama.cpp's block types.
    Ggml(GgmlType),
}

impl RowFormat {
    /// Every format a `kvquant` spec can name, as it names them: llama.cpp's types and
    /// min–max codes in groups of 32 (`int2` … `int8`).
    pub const NAMED: [RowFormat; 8] = [
        RowFormat::Ggml(GgmlType::Q8_0),
        RowFormat::Ggml(GgmlType::Q4_0),
        RowFormat::Ggml(GgmlType::Q4_1),
        RowFormat::Ggml(GgmlType::Iq4Nl),
        RowFormat::MinMax { bits: 8, group: 32 },
        RowFormat::MinMax { bits: 4, group: 32 },
        RowFormat::MinMax { bits: 3, group: 32 },
        RowFormat::MinMax { bits: 2, group: 32 },
    ];

    /// The name a spec uses (`int{bits}` for min–max groups of 32), where it has one.
    pub fn name(&self) -> Option<String> {
        match *self {
            RowFormat::Ggml(t) => Some(t.name().into()),
            RowFormat::MinMax { bits, group: 32 } => Some(format!("int{bits}")),
            RowFormat::MinMax { .. } => None,
        }
    }

    /// The format a spec names, or an error listing the names.
    pub fn parse(name: &str) -> Result<Self> {
        Self::NAMED
            .into_iter()
            .find(|f| f.name().as_deref() == Some(name))
            .ok_or_else(|| {
                let names: Vec<String> = Self::NAMED.iter().filter_map(RowFormat::name).collect();
                KvError::Setting(format!(
                    "row format \"{name}\": use one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Values per block.
    fn block(&self) -> usize {
        match *self {
            RowFormat::MinMax { group, .. } => group,
            RowFormat::Ggml(_) => GGML_BLOCK,
        }
    }

    /// Bytes of one block.
    fn block_bytes(&self) -> usize {
        match *self {
            RowFormat::MinMax { bits, group } => group * bits as usize / 8 + 4,
            RowFormat::Ggml(t) => t.block_bytes(),
        }
    }

    /// Bytes of one row of `width` values.
    pub fn row_bytes(&self, width: usize) -> usize {
        width / self.block() * self.block_bytes()
    }

    /// 16-bit bytes over stored bytes: the compression ratio of any row.
    pub fn ratio(&self) -> f64 {
        (2 * self.block()) as f64 / self.block_bytes() as f64
    }

    /// Check the format against a row width: blocks that divide it, and min–max codes of a
    /// group that fill whole bytes.
    pub fn validate(&self, width: usize) -> Result<()> {
        if let RowFormat::MinMax { bits, group } = *self {
            if ![2, 3, 4, 8].contains(&bits) {
                return Err(KvError::Setting(format!(
                    "bits={bits} must be 2, 3, 4 or 8"
                )));
            }
            if group == 0 || !(group * bits as usize).is_multiple_of(8) {
                return Err(KvError::Setting(format!(
                    "group={group} must be a positive number of values whose {bits}-bit codes fill whole bytes"
                )));
            }
        }
        if !width.is_multiple_of(self.block()) {
            return Err(KvError::Setting(match self {
                RowFormat::MinMax { group, .. } => {
                    format!("group={group} must divide the head dimension {width}")
                }
                RowFormat::Ggml(t) => format!(
                    "{}'s blocks of 32 values must divide the head dimension {width}",
                    t.name()
                ),
            }));
        }
        Ok(())
    }

    /// One row quantized into `out` (`row_bytes(row.len())` long).
    fn quantize(&self, row: &[f32], out: &mut [u8]) {
        match *self {
            RowFormat::MinMax { bits, group } => {
                let codes_len = row.len() * bits as usize / 8;
                let (codes, params) = out.split_at_mut(codes_len);
                codes.fill(0);
                for (g, values) in row.chunks_exact(group).enumerate() {
                    let (min, scale) = quantize_group(values, bits, |i, code| {
                        let bit = (g * group + i) * bits as usize;
                        let word = (code as u16) << (bit % 8);
                        codes[bit / 8] |= word as u8;
                        if bit % 8 + bits as usize > 8 {
                            codes[bit / 8 + 1] |= (word >> 8) as u8;
                        }
                    });
                    params[4 * g..4 * g + 2].copy_from_slice(&min.to_le_bytes());
                    params[4 * g + 2..4 * g + 4].copy_from_slice(&scale.to_le_bytes());
                }
            }
            RowFormat::Ggml(t) => {
                for (x, b) in row
                    .chunks_exact(GGML_BLOCK)
                    .zip(out.chunks_exact_mut(t.block_bytes()))
                {
                    t.quantize(x, b);
                }
            }
        }
    }

    /// One row read back into `out`. Inlined, so that the decoding kernels compiled for
    /// AVX2 or AVX-512 vectorize it with their instructions.
    #[inline(always)]
    fn dequantize(&self, bytes: &[u8], out: &mut [f32]) {
        match *self {
            RowFormat::MinMax { bits, group } => {
                let (codes, params) = bytes.split_at(out.len() * bits as usize / 8);
                match bits {
                    8 => out.iter_mut().zip(codes).for_each(|(o, b)| *o = *b as f32),
                    4 => {
                        for (pair, b) in out.chunks_exact_mut(2).zip(codes) {
                            pair[0] = (b & 0x0f) as f32;
                            pair[1] = (b >> 4) as f32;
                        }
                    }
                    2 => {
                        for (quad, b) in out.chunks_exact_mut(4).zip(codes) {
                            for (i, o) in quad.iter_mut().enumerate() {
                                *o = ((b >> (2 * i)) & 0x03) as f32;
                            }
                        }
                    }
                    _ => {
                        // Eight 3-bit codes in every three bytes.
                        for (eight, b) in out.chunks_exact_mut(8).zip(codes.chunks_exact(3)) {
                            let word = b[0] as u32 | (b[1] as u32) << 8 | (b[2] as u32) << 16;
                            for (i, o) in eight.iter_mut().enumerate() {
                                *o = ((word >> (3 * i)) & 0x07) as f32;
                            }
                        }
                    }
                }
                for (values, p) in out.chunks_exact_mut(group).zip(params.chunks_exact(4)) {
                    let min = f16_bits_to_f32(u16::from_le_bytes([p[0], p[1]]));
                    let scale = f16_bits_to_f32(u16::from_le_bytes([p[2], p[3]]));
                    values.iter_mut().for_each(|v| *v = min + scale * *v);
                }
            }
            RowFormat::Ggml(t) => {
                for (b, o) in bytes
                    .chunks_exact(t.block_bytes())
                    .zip(out.chunks_exact_mut(GGML_BLOCK))
                {
                    t.dequantize(b, o);
                }
            }
        }
    }
}

/// Rows of one width quantized in one format, appended one token at a time; each row's
/// bytes sit together, so that a row can be read alone.
#[derive(Debug, Clone)]
pub struct QuantRows {
    format: RowFormat,
    width: usize,
    row_bytes: usize,
    bytes: Vec<u8>,
}

impl QuantRows {
    /// Empty storage for rows of `width` values (the format validated against it by the
    /// cache that builds it).
    pub fn new(format: RowFormat, width: usize) -> Self {
        Self {
            format,
            width,
            row_bytes: format.row_bytes(width),
            bytes: Vec::new(),
        }
    }

    /// Reserve room for `rows` more rows.
    pub fn reserve(&mut self, rows: usize) {
        self.bytes.reserve_exact(rows * self.row_bytes);
    }

    /// Quantize and append one row, growing storage by [`crate::cache::growth_step`] rows
    /// when it is full.
    pub fn push(&mut self, row: &[f32]) {
        if self.bytes.len() + self.row_bytes > self.bytes.capacity() {
            self.reserve(crate::cache::growth_step(self.rows()));
        }
        let at = self.bytes.len();
        self.bytes.resize(at + self.row_bytes, 0);
        self.format.quantize(row, &mut self.bytes[at..]);
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.bytes.len() / self.row_bytes
    }

    /// Row `r` read back into `out` (`width` values).
    #[inline(always)]
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bytes = &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes];
        self.format.dequantize(bytes, out);
    }

    /// Every row read back, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.width];
        for (r, row) in out.chunks_exact_mut(self.width).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// Bytes held (allocated capacity included).
    pub fn bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// Forget every row, keeping the allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Forget every row and return the allocation.
    pub fn release(&mut self) {
        self.bytes = Vec::new();
    }
}

/// The orthonormal Walsh–Hadamard transform (Sylvester order, entries `±1/√n`) applied to
/// every block of `n` values of `x` in place. It is its own inverse; `n` is a power of two
/// dividing `x.len()`.
pub fn hadamard(x: &mut [f32], n: usize) {
    let scale = 1.0 / (n as f32).sqrt();
    for block in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for pair in block.chunks_exact_mut(2 * h) {
                let (a, b) = pair.split_at_mut(h);
                for (a, b) in a.iter_mut().zip(b) {
                    (*a, *b) = (*a + *b, *a - *b);
                }
            }
            h *= 2;
        }
        block.iter_mut().for_each(|v| *v *= scale);
    }
}

/// The blocks llama.cpp rotates a head's keys (with its queries) and values in: keys in the
/// largest power of two of at least 64 that divides the head dimension, values in 64. `None`
/// where the head dimension is not a multiple of 64 (llama.cpp then does not rotate).
pub fn rotation_blocks(head_dim: usize) -> Option<(usize, usize)> {
    if head_dim == 0 || !head_dim.is_multiple_of(64) {
        return None;
    }
    let mut keys = 64;
    while head_dim.is_multiple_of(2 * keys) {
        keys *= 2;
    }
    Some((keys, 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;

    #[test]
    fn every_format_reads_back_within_its_step() {
        let row: Vec<f32> = noise(128, 1).into_iter().map(|v| 3.0 * v).collect();
        for format in RowFormat::NAMED {
            let mut rows = QuantRows::new(format, 128);
            rows.push(&row);
            rows.push(&[0.25; 128]);
            let back = rows.dequantize();
            assert_eq!(rows.rows(), 2);
            assert_eq!(rows.bytes(), rows.bytes.capacity());
            // A block's step is at most its range over the levels (IQ4_NL's widest gap is 24 of 240).
            let steps = match format {
                RowFormat::MinMax { bits, .. } => ((1u32 << bits) - 1) as f32,
                RowFormat::Ggml(GgmlType::Q8_0) => 127.0,
                RowFormat::Ggml(_) => 7.0,
            };
            let range = 6.0 * 3.0;
            for (a, b) in row.iter().zip(&back[..128]) {
                assert!(
                    (a - b).abs() <= range / steps,
                    "{format:?}: {a} read back as {b}"
                );
            }
            for b in &back[128..] {
                assert!(
                    (b - 0.25).abs() < 1e-3,
                    "{format:?}: a constant row reads {b}"
                );
            }
        }
    }

    #[test]
    fn three_bit_codes_pack_eight_to_three_bytes() {
        let format = RowFormat::MinMax { bits: 3, group: 8 };
        assert_eq!(format.row_bytes(16), 2 * (3 + 4));
        let row: Vec<f32> = (0..16).map(|i| (i % 8) as f32).collect();
        let mut rows = QuantRows::new(format, 16);
        rows.push(&row);
        assert_eq!(rows.dequantize(), row);
        assert!(RowFormat::MinMax { bits: 3, group: 4 }
            .validate(16)
            .is_err());
        assert!(RowFormat::MinMax { bits: 5, group: 8 }
            .validate(16)
            .is_err());
        assert!(RowFormat::Ggml(GgmlType::Q4_0).validate(48).is_err());
    }

    #[test]
    fn ratios_are_sixteen_bit_bytes_over_block_bytes() {
        let ratio = |name| RowFormat::parse(name).unwrap().ratio();
        assert!((ratio("q8_0") - 64.0 / 34.0).abs() < 1e-12);
        assert!((ratio("q4_0") - 64.0 / 18.0).abs() < 1e-12);
        assert!((ratio("q4_1") - 3.2).abs() < 1e-12);
        assert!((ratio("int3") - 4.0).abs() < 1e-12);
        assert!((ratio("int2") - 64.0 / 12.0).abs() < 1e-12);
        assert!(RowFormat::parse("q5_0").is_err());
    }

    /// Every byte ggml's `ggml_quantize_chunk` writes for q8_0, q4_0, q4_1 and iq4_nl, and
    /// every value its `to_float` reads back, on the rows of
    /// `tests/fixtures/ggml_kv_types.json` (`scripts/ggml_kv_types_reference.sh`: Gaussian
    /// rows at several scales, an outlier, constant and zero rows, rounding ties).
    #[test]
    fn ggml_types_write_and_read_the_bytes_ggml_does() {
        let path = format!(
            "{}/tests/fixtures/ggml_kv_types.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("the ggml fixture");
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let rows: Vec<Vec<f32>> = fixture["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let width = rows[0].len();
        let types = fixture["types"].as_object().unwrap();
        assert_eq!(types.len(), 4);
        for (name, want) in types {
            let format = RowFormat::parse(name).unwrap();
            let mut held = QuantRows::new(format, width);
            for (r, row) in rows.iter().enumerate() {
                held.push(row);
                let got: String = held.bytes[r * held.row_bytes..(r + 1) * held.row_bytes]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(got, want["bytes"][r].as_str().unwrap(), "{name}, row {r}");
                let mut back = vec![0f32; width];
                held.dequantize_row(r, &mut back);
                assert_eq!(back, floats(&want["values"][r]), "{name}, row {r}");
            }
        }
    }

    /// The transform equals the product with Sylvester's matrix as llama.cpp builds it
    /// (`ggml_gen_hadamard`), and applying it twice gives the input back.
    #[test]
    fn hadamard_is_sylvesters_orthonormal_matrix_and_its_own_inverse() {
        let n = 64;
        let mut matrix = vec![0f32; n * n];
        matrix[0] = 1.0 / (n as f32).sqrt();
        let mut s = 1;
        while s < n {
            for i in 0..s {
                for j in 0..s {
                    let v = matrix[i * n + j];
                    matrix[(i + s) * n + j] = v;
                    matrix[i * n + j + s] = v;
                    matrix[(i + s) * n + j + s] = -v;
                }
            }
            s *= 2;
        }
        let x = noise(2 * n, 7);
        let mut y = x.clone();
        hadamard(&mut y, n);
        for (b, block) in x.chunks_exact(n).enumerate() {
            for i in 0..n {
                let want: f32 = (0..n).map(|j| matrix[i * n + j] * block[j]).sum();
                assert!((y[b * n + i] - want).abs() < 1e-5);
            }
        }
        hadamard(&mut y, n);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
        assert_eq!(rotation_blocks(64), Some((64, 64)));
        assert_eq!(rotation_blocks(256), Some((256, 64)));
        assert_eq!(rotation_blocks(192), Some((64, 64)));
        assert_eq!(rotation_blocks(80), None);
    }
}
