//! GGUF block formats read in place by the decoding mat-vec (`quant`): each format's layout
//! and dequantization, as ggml's `dequantize_row_*` (ggml-quants.c) define them, one
//! dot-product loop over any of them, and whole rows dequantized for prefill's GEMMs.
//!
//! The loop dequantizes a block into a stack buffer and multiplies it with the activations.
//! It is written once, inlined into functions compiled for AVX-512 and for AVX2, and chosen
//! at run time (`quant::available_kernels`): the compiler vectorizes it for each target.
//! Tests check every variant this CPU runs against candle's dequantization.

use half::{bf16, f16};
use longctx_kv::f16_bits_to_f32;

/// A block layout: `ELEMS` values in `BYTES` bytes.
pub trait BlockFormat {
    /// Values per block.
    const ELEMS: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// The block's values, written into `out` (`ELEMS` long).
    fn dequantize(block: &[u8], out: &mut [f32]);
}

/// The largest `ELEMS` of the formats here (the K-quants' super-block).
const MAX_ELEMS: usize = 256;

/// Lanes of the dot product's accumulators.
const LANES: usize = 16;

/// `row · x` for a row of blocks of format `F` (`x.len() / F::ELEMS` of them).
#[inline(always)]
pub fn dot<F: BlockFormat>(row: &[u8], x: &[f32]) -> f32 {
    let mut values = [0f32; MAX_ELEMS];
    let mut acc = [0f32; LANES];
    for (block, xs) in row.chunks_exact(F::BYTES).zip(x.chunks_exact(F::ELEMS)) {
        let w = &mut values[..F::ELEMS];
        F::dequantize(block, w);
        for (ws, vs) in w.chunks_exact(LANES).zip(xs.chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += ws[i] * vs[i];
            }
        }
    }
    acc.iter().sum()
}

#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Q4_0: d (f16), 16 bytes of nibbles; value = d·(q − 8).
pub struct Q4_0;

impl BlockFormat for Q4_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = half_at(b, 0);
        for j in 0..16 {
            let q = b[2 + j];
            out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: d (f16), m (f16), 16 bytes of nibbles; value = d·q + m.
pub struct Q4_1;

impl BlockFormat for Q4_1 {
    const ELEMS: usize = 32;
    const BYTES: usize = 20;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, m) = (half_at(b, 0), half_at(b, 2));
        for j in 0..16 {
            let q = b[4 + j];
            out[j] = (q & 0x0f) as f32 * d + m;
            out[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

/// Q8_0: d (f16), 32 signed bytes; value = d·q.
pub struct Q8_0;

impl BlockFormat for Q8_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 34;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = half_at(b, 0);
        for (o, &q) in out.iter_mut().zip(&b[2..34]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// A row of blocks of format `F`, dequantized into `out` (its values).
pub fn dequantize_row<F: BlockFormat>(row: &[u8], out: &mut [f32]) {
    for (block, values) in row
        .chunks_exact(F::BYTES)
        .zip(out.chunks_exact_mut(F::ELEMS))
    {
        F::dequantize(block, values);
    }
}

/// The fifth bits of Q5_0 and Q5_1: value `j`'s and value `j + 16`'s, as 0 or 16.
#[inline(always)]
fn fifth_bits(qh: u32, j: usize) -> (u32, u32) {
    (((qh >> j) << 4) & 0x10, (qh >> (j + 12)) & 0x10)
}

/// Q5_0: d (f16), 32 fifth bits, 16 bytes of nibbles; value = d·(q − 16).
pub struct Q5_0;

impl BlockFormat for Q5_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 22;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, qh) = (half_at(b, 0), u32_at(b, 2));
        for j in 0..16 {
            let (h0, h1) = fifth_bits(qh, j);
            let q = b[6 + j] as u32;
            out[j] = (((q & 0x0f) | h0) as i32 - 16) as f32 * d;
            out[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// Q5_1: d and m (f16), 32 fifth bits, 16 bytes of nibbles; value = d·q + m.
pub struct Q5_1;

impl BlockFormat for Q5_1 {
    const ELEMS: usize = 32;
    const BYTES: usize = 24;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, m, qh) = (half_at(b, 0), half_at(b, 2), u32_at(b, 4));
        for j in 0..16 {
            let (h0, h1) = fifth_bits(qh, j);
            let q = b[8 + j] as u32;
            out[j] = ((q & 0x0f) | h0) as f32 * d + m;
            out[j + 16] = ((q >> 4) | h1) as f32 * d + m;
        }
    }
}

/// Scale and minimum of sub-block `j` (of 8) from Q4_K's and Q5_K's 12 packed 6-bit pairs.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (scale as f32, min as f32)
}

/// Q4_K: d and dmin (f16), 8 sub-blocks of 32 with 6-bit scales and minima, 128 bytes of
/// nibbles; value = d·scale·q − dmin·min.
pub struct Q4K;

impl BlockFormat for Q4K {
    const ELEMS: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, dmin) = (half_at(b, 0), half_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for j in 0..4 {
            let (s1, m1) = scale_min_k4(2 * j, scales);
            let (s2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
            let (q, y) = (&qs[32 * j..32 * j + 32], &mut out[64 * j..64 * j + 64]);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits; value = d·scale·q − dmin·min.
pub struct Q5K;

impl BlockFormat for Q5K {
    const ELEMS: usize = 256;
    const BYTES: usize = 176;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, dmin) = (half_at(b, 0), half_at(b, 2));
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
        for j in 0..4 {
            let (s1, m1) = scale_min_k4(2 * j, scales);
            let (s2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let (q, y) = (&qs[32 * j..32 * j + 32], &mut out[64 * j..64 * j + 64]);
            for l in 0..32 {
                let lo = (q[l] & 0x0f) + if qh[l] & u1 != 0 { 16 } else { 0 };
                let hi = (q[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * lo as f32 - m1;
                y[l + 32] = d2 * hi as f32 - m2;
            }
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed 8-bit scales (one per 16
/// values), d (f16); value = d·scale·(q − 32).
pub struct Q6K;

impl BlockFormat for Q6K {
    const ELEMS: usize = 256;
    const BYTES: usize = 210;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = half_at(b, 208);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut out[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// Q2_K: 16 bytes of 4-bit scale and minimum pairs (one per 16 values), 64 bytes of 2-bit
/// codes, d and dmin (f16); value = d·scale·q − dmin·min.
pub struct Q2K;

impl BlockFormat for Q2K {
    const ELEMS: usize = 256;
    const BYTES: usize = 84;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let (d, dmin) = (half_at(b, 80), half_at(b, 82));
        for n in 0..2 {
            let q = &qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let sc = scales[8 * n + 2 * j + half];
                    let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                    let y = &mut out[128 * n + 32 * j + 16 * half..][..16];
                    for (y, q) in y.iter_mut().zip(&q[16 * half..][..16]) {
                        *y = dl * ((q >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

/// Q3_K: 32 bytes of high bits, 64 of 2-bit codes, 12 bytes of 6-bit scales (one per 16
/// values), d (f16); value = d·(scale − 32)·(q − 4 if the high bit is clear).
pub struct Q3K;

impl BlockFormat for Q3K {
    const ELEMS: usize = 256;
    const BYTES: usize = 110;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (hmask, qs, d) = (&b[0..32], &b[32..96], half_at(b, 108));
        let (low, high) = (0x0f0f_0f0fu32, 0x0303_0303u32);
        let packed = [u32_at(b, 96), u32_at(b, 100), u32_at(b, 104)];
        let tmp = packed[2];
        let words = [
            (packed[0] & low) | ((tmp & high) << 4),
            (packed[1] & low) | (((tmp >> 2) & high) << 4),
            ((packed[0] >> 4) & low) | (((tmp >> 4) & high) << 4),
            ((packed[1] >> 4) & low) | (((tmp >> 6) & high) << 4),
        ];
        let scale = |i: usize| (words[i / 4].to_le_bytes()[i % 4] as i8 as i32 - 32) as f32;
        for n in 0..2 {
            let q = &qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let (shift, bit) = (2 * j, 1u8 << (4 * n + j));
                for half in 0..2 {
                    let dl = d * scale(8 * n + 2 * j + half);
                    let y = &mut out[128 * n + 32 * j + 16 * half..][..16];
                    let (q, h) = (&q[16 * half..][..16], &hmask[16 * half..][..16]);
                    for ((y, q), h) in y.iter_mut().zip(q).zip(h) {
                        let offset = if h & bit != 0 { 0 } else { 4 };
                        *y = dl * (((q >> shift) & 3) as i32 - offset) as f32;
                    }
                }
            }
        }
    }
}

/// F16 values, read in runs of 32.
pub struct F16;

impl BlockFormat for F16 {
    const ELEMS: usize = 32;
    const BYTES: usize = 64;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = f16_bits_to_f32(u16::from_le_bytes([v[0], v[1]]));
        }
    }
}

/// BF16 values, read in runs of 32.
pub struct Bf16;

impl BlockFormat for Bf16 {
    const ELEMS: usize = 32;
    const BYTES: usize = 64;
    #[inline(always)]
    fn dequantize(b: &[u8], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = bf16::from_le_bytes([v[0], v[1]]).to_f32();
        }
    }
}
