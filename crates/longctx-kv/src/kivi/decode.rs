//! KIVI's decoding step, reading the packed codes of [`super::tiles`] in place.
//!
//! Dequantization folds into the other operand, so codes are never widened to floats:
//! - a key block's score against a query is `Σ_c (q_c · scale_c) · code_c + Σ_c q_c · min_c`
//!   (per-channel minima and scales are constant within the block);
//! - a value block's output is `Σ_t (p_t · scale_t) · code_t + Σ_t p_t · min_t` per channel
//!   group (per-token minima and scales).
//!
//! With [`DecodeActivations::Int8`] the folded operand (`q · scale` per key block, `p · scale`
//! per value block of 4–16 tokens) is quantized to signed bytes with one f32 scale, as
//! llama.cpp quantizes the query against a quantized K cache, and codes meet it in byte dot
//! products (AVX-512 VNNI, AVX2, or portable code; all three give the same integers). With
//! [`DecodeActivations::F32`] the folded operand stays f32 and the result equals attention
//! over the dequantized cache up to rounding. The residual window is read in 16 bits.

use half::f16;

use super::tiles::{per_byte, KeyTiles, ValueTiles, LANES, UNIT};
use crate::tiled::{exp_nonpositive, lanes_dot, lanes_max, lanes_sum, DecodePart};
use crate::{f16_bits_to_f32, DecodeActivations};

/// Query heads whose accumulators stay in registers while a unit's planes pass.
const HEADS: usize = 4;

/// The packed and 16-bit parts of one key/value head.
pub(crate) struct HeadParts<'a> {
    pub keys: &'a KeyTiles,
    pub key_residual: &'a [f16],
    pub values: &'a ValueTiles,
    pub value_residual: &'a [f16],
}

impl HeadParts<'_> {
    /// Tokens held.
    pub fn tokens(&self, width: usize) -> usize {
        self.keys.tokens() + self.key_residual.len() / width
    }
}

/// Byte dot products on 16 lanes of 32-bit sums.
pub(crate) trait ByteDot {
    type Bytes: Copy;
    type Acc: Copy;
    // Safety (all methods): the CPU has the implementation's instruction set; pointers are
    // valid for a unit (64 bytes).
    unsafe fn load(p: *const u8) -> Self::Bytes;
    unsafe fn zero() -> Self::Acc;
    /// `(x >> shift) & mask` in every byte (`shift` + the mask's width ≤ 8).
    unsafe fn plane(x: Self::Bytes, shift: u32, mask: u8) -> Self::Bytes;
    /// Adds to each lane its four bytes (each < 16) times the four signed bytes of `w`.
    unsafe fn dot(acc: Self::Acc, codes: Self::Bytes, w: i32) -> Self::Acc;
    /// [`ByteDot::dot`] for bytes up to 255.
    unsafe fn dot_wide(acc: Self::Acc, codes: Self::Bytes, w: i32) -> Self::Acc;
    /// `dst[l] = scale · acc[l] + offset`, or with `ADD`, `dst[l] += scale · acc[l]`
    /// (multiplied, then added: no fused rounding, as the portable code).
    unsafe fn finish<const ADD: bool>(acc: Self::Acc, scale: f32, offset: f32, dst: *mut f32);
}

/// [`ByteDot::finish`] on 16 f32 sums, the portable and f32 paths' form.
#[inline(always)]
unsafe fn finish_floats<const ADD: bool>(x: [f32; LANES], scale: f32, offset: f32, dst: *mut f32) {
    let dst = &mut *(dst as *mut [f32; LANES]);
    for (d, x) in dst.iter_mut().zip(x) {
        *d = if ADD {
            *d + scale * x
        } else {
            scale * x + offset
        };
    }
}

/// Plain arrays: the reference the SIMD implementations are tested against.
pub(crate) struct Portable;

impl ByteDot for Portable {
    type Bytes = [u8; UNIT];
    type Acc = [i32; LANES];
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [u8; UNIT] {
        (p as *const [u8; UNIT]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn zero() -> [i32; LANES] {
        [0; LANES]
    }
    #[inline(always)]
    unsafe fn plane(x: [u8; UNIT], shift: u32, mask: u8) -> [u8; UNIT] {
        x.map(|b| (b >> shift) & mask)
    }
    #[inline(always)]
    unsafe fn dot(mut acc: [i32; LANES], codes: [u8; UNIT], w: i32) -> [i32; LANES] {
        let w = w.to_le_bytes().map(|b| b as i8 as i32);
        for (l, a) in acc.iter_mut().enumerate() {
            *a += (0..4).map(|k| codes[4 * l + k] as i32 * w[k]).sum::<i32>();
        }
        acc
    }
    #[inline(always)]
    unsafe fn dot_wide(acc: [i32; LANES], codes: [u8; UNIT], w: i32) -> [i32; LANES] {
        Self::dot(acc, codes, w)
    }
    #[inline(always)]
    unsafe fn finish<const ADD: bool>(acc: [i32; LANES], scale: f32, offset: f32, dst: *mut f32) {
        finish_floats::<ADD>(acc.map(|x| x as f32), scale, offset, dst)
    }
}

/// Operands folded with a block's scales, `len` values each: signed bytes and their scale
/// (`Int8`), or f32 (`F32`, scale 1). Keys have one per query head; values one per query
/// head and channel group.
#[derive(Default)]
struct Folded {
    bytes: Vec<i8>,
    floats: Vec<f32>,
    scale: Vec<f32>,
    len: usize,
}

impl Folded {
    /// Room for `operands` operands of `len` values (buffers reused).
    fn reset(&mut self, operands: usize, len: usize) {
        zeroed(&mut self.bytes, operands * len);
        zeroed(&mut self.floats, operands * len);
        self.scale.clear();
        self.scale.resize(operands, 1.0);
        self.len = len;
    }

    /// Operand `i`'s floats, to be filled.
    fn floats_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.floats[i * self.len..(i + 1) * self.len]
    }

    /// Quantize operand `i`'s floats to bytes with one scale (`Int8` only).
    #[inline(always)]
    fn quantize(&mut self, i: usize) {
        let x = &self.floats[i * self.len..(i + 1) * self.len];
        let mut lanes = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (m, v) in lanes.iter_mut().zip(chunk) {
                let a = v.abs();
                *m = if a > *m { a } else { *m };
            }
        }
        let largest = tail.iter().fold(halving_max(lanes), |m, v| m.max(v.abs()));
        self.quantize_within(i, largest);
    }

    /// Quantize operand `i`'s floats, none larger in magnitude than `bound`, to bytes with
    /// the scale `bound / 127`, rounding half to even (one vector instruction).
    #[inline(always)]
    fn quantize_within(&mut self, i: usize, bound: f32) {
        let inv = if bound > 0.0 { 127.0 / bound } else { 0.0 };
        let range = i * self.len..(i + 1) * self.len;
        let (x, bytes) = (&self.floats[range.clone()], &mut self.bytes[range]);
        let byte = |v: f32| {
            // Not `clamp`: it keeps NaN, which the conversion below must not see.
            #[allow(clippy::manual_clamp)]
            let code = (v * inv).round_ties_even().max(-127.0).min(127.0);
            // SAFETY: a whole number in [-127, 127] (NaN became -127). (`as` saturates, which
            // does not vectorize.)
            unsafe { code.to_int_unchecked::<i32>() as i8 }
        };
        // Sixteen values (2-bit value blocks) as one straight vector sequence.
        if let (Ok(x), Ok(bytes)) = (
            <&[f32; LANES]>::try_from(x),
            <&mut [i8; LANES]>::try_from(&mut *bytes),
        ) {
            *bytes = x.map(byte);
        } else {
            for (b, v) in bytes.iter_mut().zip(x) {
                *b = byte(*v);
            }
        }
        self.scale[i] = bound / 127.0;
    }
}

/// The largest of 16 lanes, by halving (vector shuffles, not a chain of scalar maxima).
#[inline(always)]
fn halving_max(mut lanes: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            lanes[i] = if lanes[i + w] > lanes[i] {
                lanes[i + w]
            } else {
                lanes[i]
            };
        }
        w /= 2;
    }
    lanes[0]
}

/// The largest of up to 16 values that are not negative.
#[inline(always)]
fn nonnegative_max(x: &[f32]) -> f32 {
    match <[f32; LANES]>::try_from(x) {
        Ok(lanes) => halving_max(lanes),
        Err(_) => x.iter().fold(0f32, |m, &v| if v > m { v } else { m }),
    }
}

/// f16 values widened into `dst` (inline, so that it vectorizes in the kernel's frame).
#[inline(always)]
fn widen(src: &[f16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16_bits_to_f32(s.to_bits());
    }
}

/// Where a pass over codes puts each query head's 16 results: `dst[h]` (16 values), as
/// `scale[h] · sum + offset[h]` or, with `ADD`, added to them as `scale[h] · sum`.
struct Sink<'a> {
    dst: &'a [*mut f32],
    scale: &'a [f32],
    offset: &'a [f32],
}

/// Heads `h0 .. h0 + H`: each lane's sum over `units` units of codes against the heads'
/// operands (head `h`'s starts at value `h · stride + offset`), finished into `sink`.
#[inline(always)]
unsafe fn dots<D: ByteDot, const BITS: u32, const INT: bool, const ADD: bool, const H: usize>(
    codes: &[u8],
    units: usize,
    folded: &Folded,
    (stride, offset): (usize, usize),
    h0: usize,
    sink: &Sink<'_>,
) {
    debug_assert!(codes.len() >= units * UNIT);
    let n = per_byte(BITS);
    let mask = ((1u16 << BITS) - 1) as u8;
    let at = |h: usize| (h0 + h) * stride + offset;
    let finish = |h: usize| (sink.scale[h0 + h], sink.offset[h0 + h], sink.dst[h0 + h]);
    if INT {
        let mut acc = [D::zero(); H];
        for u in 0..units {
            let x = D::load(codes.as_ptr().add(u * UNIT));
            for s in 0..n {
                let plane = D::plane(x, BITS * s as u32, mask);
                for (h, a) in acc.iter_mut().enumerate() {
                    let word = folded.bytes.as_ptr().add(at(h) + 4 * (u * n + s));
                    let w = (word as *const i32).read_unaligned();
                    *a = if BITS == 8 {
                        D::dot_wide(*a, plane, w)
                    } else {
                        D::dot(*a, plane, w)
                    };
                }
            }
        }
        for (h, a) in acc.into_iter().enumerate() {
            let (scale, offset, dst) = finish(h);
            D::finish::<ADD>(a, scale, offset, dst);
        }
    } else {
        let mut acc = [[0f32; LANES]; H];
        for u in 0..units {
            let unit = &codes[u * UNIT..(u + 1) * UNIT];
            for s in 0..n {
                for (h, a) in acc.iter_mut().enumerate() {
                    let w = &folded.floats[at(h) + 4 * (u * n + s)..][..4];
                    for (l, x) in a.iter_mut().enumerate() {
                        for (k, w) in w.iter().enumerate() {
                            let code = (unit[4 * l + k] >> (BITS * s as u32)) & mask;
                            *x += code as f32 * w;
                        }
                    }
                }
            }
        }
        for (h, a) in acc.into_iter().enumerate() {
            let (scale, offset, dst) = finish(h);
            finish_floats::<ADD>(a, scale, offset, dst);
        }
    }
}

/// [`dots`] for every head of `sink`, [`HEADS`] at a time.
#[inline(always)]
unsafe fn dots_by_heads<D: ByteDot, const BITS: u32, const INT: bool, const ADD: bool>(
    codes: &[u8],
    units: usize,
    folded: &Folded,
    layout: (usize, usize),
    sink: &Sink<'_>,
) {
    let heads = sink.dst.len();
    let mut h0 = 0;
    while h0 < heads {
        let left = heads - h0;
        match left {
            1 => dots::<D, BITS, INT, ADD, 1>(codes, units, folded, layout, h0, sink),
            2 => dots::<D, BITS, INT, ADD, 2>(codes, units, folded, layout, h0, sink),
            3 => dots::<D, BITS, INT, ADD, 3>(codes, units, folded, layout, h0, sink),
            _ => dots::<D, BITS, INT, ADD, HEADS>(codes, units, folded, layout, h0, sink),
        }
        h0 += left.min(HEADS);
    }
}

/// `v` holding `n` zeros, its allocation reused.
fn zeroed<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    v.clear();
    v.resize(n, T::default());
}

/// A task's working buffers, kept per thread so that decoding allocates nothing in them
/// after the first token.
#[derive(Default)]
pub(crate) struct Scratch {
    scores: Vec<f32>,
    keys: Folded,
    values: Folded,
    offsets: Vec<f32>,
    dst: Vec<*mut f32>,
    mins: Vec<f32>,
    scales: Vec<f32>,
    row: Vec<f32>,
    group_scales: Vec<f32>,
    min_terms: Vec<f32>,
    largest_scale: Vec<f32>,
}

/// Tokens `t0..t1` of one key/value head (`t0` a multiple of the key group) for the head's
/// group of `queries` (`[rows][width]`, unscaled): unnormalized outputs, each row's maximum
/// scaled score and sum of exponentials.
///
/// # Safety
/// The CPU has `D`'s instruction set.
#[inline(always)]
unsafe fn part<D: ByteDot, const BITS: u32, const INT: bool>(
    scratch: &mut Scratch,
    head: &HeadParts<'_>,
    queries: &[f32],
    width: usize,
    t0: usize,
    t1: usize,
) -> DecodePart {
    let rows = queries.len() / width;
    let len = t1 - t0;
    let scale = 1.0 / (width as f32).sqrt();
    let (keys, values) = (head.keys, head.values);

    // Scores: quantized key blocks, then the 16-bit residual. Probabilities later take
    // their place; the buffer runs past `len` in zeros to whole value blocks.
    let slots = values.slots();
    let Scratch {
        scores,
        keys: key_ops,
        values: value_ops,
        offsets,
        dst,
        mins,
        scales,
        row,
        group_scales,
        min_terms,
        largest_scale,
    } = scratch;
    zeroed(scores, rows * (len + slots));
    let stride = len + slots;
    let key_group = keys.group();
    let quantized = keys.tokens();
    let folded = key_ops;
    folded.reset(rows, width);
    zeroed(offsets, rows);
    dst.clear();
    dst.resize(rows, std::ptr::null_mut());
    zeroed(mins, width);
    zeroed(scales, width);
    for b in t0 / key_group..t1.min(quantized) / key_group {
        let (stored_mins, stored_scales) = keys.min_scale(b);
        widen(stored_mins, mins);
        widen(stored_scales, scales);
        for (h, q) in queries.chunks_exact(width).enumerate() {
            for ((o, q), s) in folded.floats_mut(h).iter_mut().zip(q).zip(scales.iter()) {
                *o = q * s;
            }
            offsets[h] = lanes_dot(q, mins);
            if INT {
                folded.quantize(h);
            }
        }
        let block = keys.block(b);
        let tile_bytes = keys.units() * UNIT;
        for (tile, codes) in block.chunks_exact(tile_bytes).enumerate() {
            let first = b * key_group + tile * LANES - t0;
            for (h, d) in dst.iter_mut().enumerate() {
                *d = scores.as_mut_ptr().add(h * stride + first);
            }
            let sink = Sink {
                dst,
                scale: &folded.scale,
                offset: offsets,
            };
            dots_by_heads::<D, BITS, INT, false>(codes, keys.units(), folded, (width, 0), &sink);
        }
    }
    zeroed(row, width);
    for j in t0.max(quantized)..t1 {
        let stored = &head.key_residual[(j - quantized) * width..][..width];
        widen(stored, row);
        for (h, q) in queries.chunks_exact(width).enumerate() {
            scores[h * stride + j - t0] = lanes_dot(q, row);
        }
    }

    // Softmax parts: the scores become unnormalized probabilities.
    let (mut max, mut sum) = (vec![0f32; rows], vec![0f32; rows]);
    for (h, probs) in scores.chunks_exact_mut(stride).enumerate() {
        let probs = &mut probs[..len];
        probs.iter_mut().for_each(|x| *x *= scale);
        max[h] = lanes_max(probs);
        probs
            .iter_mut()
            .for_each(|x| *x = exp_nonpositive(*x - max[h]));
        sum[h] = lanes_sum(probs);
    }

    // Values: quantized blocks, then the 16-bit residual.
    let mut out = vec![0f32; rows * width];
    let (value_group, groups) = (values.group(), width / values.group());
    let folded = value_ops;
    folded.reset(rows * groups, slots);
    zeroed(group_scales, rows);
    // Each operand's minimum terms, summed per slot until the end.
    zeroed(min_terms, rows * groups * slots);
    zeroed(mins, groups * slots);
    zeroed(scales, groups * slots);
    zeroed(largest_scale, groups);
    let quantized = values.rows();
    for b in t0 / slots..t1.min(quantized).div_ceil(slots) {
        let first = b * slots - t0;
        for g in 0..groups {
            let (stored_mins, stored_scales) = values.min_scale(b, g);
            let scales = &mut scales[g * slots..(g + 1) * slots];
            widen(stored_mins, &mut mins[g * slots..(g + 1) * slots]);
            widen(stored_scales, scales);
            largest_scale[g] = nonnegative_max(scales);
        }
        for h in 0..rows {
            // Past the task's tokens the probabilities are zeros; slots not yet quantized
            // hold zero scales and minima.
            let p = &scores[h * stride + first..][..slots];
            // p · scale is at most the largest p times the largest scale: that product
            // bounds the bytes (one horizontal maximum per head, not per group).
            let largest_p = if INT { nonnegative_max(p) } else { 0.0 };
            for (g, &largest_scale) in largest_scale.iter().enumerate() {
                let i = h * groups + g;
                let range = g * slots..(g + 1) * slots;
                for ((o, p), s) in folded
                    .floats_mut(i)
                    .iter_mut()
                    .zip(p)
                    .zip(&scales[range.clone()])
                {
                    *o = p * s;
                }
                let terms = &mut min_terms[i * slots..(i + 1) * slots];
                for ((t, p), m) in terms.iter_mut().zip(p).zip(&mins[range]) {
                    *t += p * m;
                }
                if INT {
                    folded.quantize_within(i, largest_p * largest_scale);
                }
            }
        }
        let block = values.block(b);
        for (u, codes) in block.chunks_exact(UNIT).enumerate() {
            let g = u * LANES / value_group;
            for (h, (d, s)) in dst.iter_mut().zip(group_scales.iter_mut()).enumerate() {
                *d = out.as_mut_ptr().add(h * width + u * LANES);
                // Operand (head h, group g) is number h · groups + g.
                *s = folded.scale[h * groups + g];
            }
            let sink = Sink {
                dst,
                scale: group_scales,
                offset: offsets,
            };
            let layout = (groups * slots, g * slots);
            dots_by_heads::<D, BITS, INT, true>(codes, 1, folded, layout, &sink);
        }
    }
    zeroed(row, width);
    for j in t0.max(quantized)..t1 {
        let stored = &head.value_residual[(j - quantized) * width..][..width];
        widen(stored, row);
        for (h, o) in out.chunks_exact_mut(width).enumerate() {
            let w = scores[h * stride + j - t0];
            o.iter_mut().zip(row.iter()).for_each(|(o, v)| *o += w * v);
        }
    }
    // Each operand's total, into its first slot.
    for terms in min_terms.chunks_exact_mut(slots) {
        terms[0] = terms.iter().sum();
    }
    for (h, o) in out.chunks_exact_mut(width).enumerate() {
        for (c, x) in o.iter_mut().enumerate() {
            *x += min_terms[(h * groups + c / value_group) * slots];
        }
    }
    DecodePart { out, max, sum }
}

/// The byte dot products this CPU runs, best first (the portable one last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntSimd {
    Vnni512,
    Avx2,
    Portable,
}

/// The instruction sets for [`ByteDot`] this CPU runs, best first.
pub(crate) fn available() -> Vec<IntSimd> {
    let mut levels = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("fma") && has!("f16c")
        {
            levels.push(IntSimd::Vnni512);
        }
        if has!("avx2") && has!("fma") && has!("f16c") {
            levels.push(IntSimd::Avx2);
        }
    }
    levels.push(IntSimd::Portable);
    levels
}

fn best() -> IntSimd {
    static BEST: std::sync::OnceLock<IntSimd> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| available()[0])
}

/// One decoding task: tokens `t0..t1` of one key/value head (`t0` a multiple of the key
/// group) for the head's group of `queries` (`[rows][width]`), with the best instruction
/// set for `activations`.
pub(crate) fn decode_part(
    head: &HeadParts<'_>,
    queries: &[f32],
    width: usize,
    (t0, t1): (usize, usize),
    bits: u32,
    activations: DecodeActivations,
) -> DecodePart {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    }
    // The f32 path's arithmetic is plain code, compiled with the same instruction sets.
    let simd = best();
    let run = |scratch: &mut Scratch| {
        decode_part_with(
            scratch,
            head,
            queries,
            width,
            (t0, t1),
            bits,
            activations,
            simd,
        )
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => run(&mut scratch),
        Err(_) => run(&mut Scratch::default()),
    })
}

/// [`decode_part`] with a chosen instruction set (one of [`available`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_part_with(
    scratch: &mut Scratch,
    head: &HeadParts<'_>,
    queries: &[f32],
    width: usize,
    range: (usize, usize),
    bits: u32,
    activations: DecodeActivations,
    simd: IntSimd,
) -> DecodePart {
    macro_rules! with_bits {
        ($call:ident, $int:literal) => {
            match bits {
                2 => $call!(2, $int),
                4 => $call!(4, $int),
                _ => $call!(8, $int),
            }
        };
    }
    macro_rules! go {
        ($bits:literal, $int:literal) => {
            match simd {
                // SAFETY: `available` lists an instruction set only when the CPU has it.
                #[cfg(target_arch = "x86_64")]
                IntSimd::Vnni512 => unsafe {
                    x86::part_vnni512::<$bits, $int>(scratch, head, queries, width, range)
                },
                #[cfg(target_arch = "x86_64")]
                IntSimd::Avx2 => unsafe {
                    x86::part_avx2::<$bits, $int>(scratch, head, queries, width, range)
                },
                // SAFETY: portable code.
                _ => unsafe {
                    part::<Portable, $bits, $int>(scratch, head, queries, width, range.0, range.1)
                },
            }
        };
    }
    match activations {
        DecodeActivations::Int8 => with_bits!(go, true),
        DecodeActivations::F32 => with_bits!(go, false),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{part, ByteDot, DecodePart, HeadParts, Scratch, UNIT};
    use std::arch::x86_64::*;

    /// AVX-512 VNNI: `vpdpbusd` on 512-bit registers.
    pub struct Vnni512;

    impl ByteDot for Vnni512 {
        type Bytes = __m512i;
        type Acc = __m512i;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512i {
            _mm512_loadu_si512(p as *const _)
        }
        #[inline(always)]
        unsafe fn zero() -> __m512i {
            _mm512_setzero_si512()
        }
        #[inline(always)]
        unsafe fn plane(x: __m512i, shift: u32, mask: u8) -> __m512i {
            let shifted = _mm512_srl_epi16(x, _mm_cvtsi32_si128(shift as i32));
            _mm512_and_si512(shifted, _mm512_set1_epi8(mask as i8))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512i, codes: __m512i, w: i32) -> __m512i {
            _mm512_dpbusd_epi32(acc, codes, _mm512_set1_epi32(w))
        }
        #[inline(always)]
        unsafe fn dot_wide(acc: __m512i, codes: __m512i, w: i32) -> __m512i {
            Self::dot(acc, codes, w)
        }
        #[inline(always)]
        unsafe fn finish<const ADD: bool>(acc: __m512i, scale: f32, offset: f32, dst: *mut f32) {
            let x = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(acc));
            let base = if ADD {
                _mm512_loadu_ps(dst)
            } else {
                _mm512_set1_ps(offset)
            };
            // One rounded addition either way (it commutes exactly).
            _mm512_storeu_ps(dst, _mm512_add_ps(base, x));
        }
    }

    /// AVX2: `vpmaddubsw` (pairs of products to 16 bits, no overflow for codes < 16 and
    /// weights ≥ −128) and `vpmaddwd` (to 32 bits), a unit in two 256-bit halves.
    pub struct Avx2;

    impl Avx2 {
        #[inline(always)]
        unsafe fn dot_half(acc: __m256i, codes: __m256i, w: __m256i, weight: i16) -> __m256i {
            let pairs = _mm256_maddubs_epi16(codes, w);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(weight)))
        }
    }

    impl ByteDot for Avx2 {
        type Bytes = [__m256i; 2];
        type Acc = [__m256i; 2];
        #[inline(always)]
        unsafe fn load(p: *const u8) -> [__m256i; 2] {
            [
                _mm256_loadu_si256(p as *const __m256i),
                _mm256_loadu_si256(p.add(UNIT / 2) as *const __m256i),
            ]
        }
        #[inline(always)]
        unsafe fn zero() -> [__m256i; 2] {
            [_mm256_setzero_si256(); 2]
        }
        #[inline(always)]
        unsafe fn plane(x: [__m256i; 2], shift: u32, mask: u8) -> [__m256i; 2] {
            let count = _mm_cvtsi32_si128(shift as i32);
            let mask = _mm256_set1_epi8(mask as i8);
            x.map(|h| _mm256_and_si256(_mm256_srl_epi16(h, count), mask))
        }
        #[inline(always)]
        unsafe fn dot(acc: [__m256i; 2], codes: [__m256i; 2], w: i32) -> [__m256i; 2] {
            let w = _mm256_set1_epi32(w);
            [
                Self::dot_half(acc[0], codes[0], w, 1),
                Self::dot_half(acc[1], codes[1], w, 1),
            ]
        }
        /// Bytes up to 255 as two nibbles: `Σ c·w = 16·Σ hi·w + Σ lo·w`.
        #[inline(always)]
        unsafe fn dot_wide(acc: [__m256i; 2], codes: [__m256i; 2], w: i32) -> [__m256i; 2] {
            let (w, nibble) = (_mm256_set1_epi32(w), _mm256_set1_epi8(0x0f));
            let mut out = acc;
            for (o, c) in out.iter_mut().zip(codes) {
                let lo = _mm256_and_si256(c, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble);
                *o = Self::dot_half(Self::dot_half(*o, lo, w, 1), hi, w, 16);
            }
            out
        }
        #[inline(always)]
        unsafe fn finish<const ADD: bool>(
            acc: [__m256i; 2],
            scale: f32,
            offset: f32,
            dst: *mut f32,
        ) {
            for (half, a) in acc.into_iter().enumerate() {
                let dst = dst.add(8 * half);
                let x = _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(a));
                let sum = if ADD {
                    _mm256_add_ps(_mm256_loadu_ps(dst), x)
                } else {
                    _mm256_add_ps(x, _mm256_set1_ps(offset))
                };
                _mm256_storeu_ps(dst, sum);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn part_vnni512<const BITS: u32, const INT: bool>(
        scratch: &mut Scratch,
        head: &HeadParts<'_>,
        queries: &[f32],
        width: usize,
        (t0, t1): (usize, usize),
    ) -> DecodePart {
        part::<Vnni512, BITS, INT>(scratch, head, queries, width, t0, t1)
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn part_avx2<const BITS: u32, const INT: bool>(
        scratch: &mut Scratch,
        head: &HeadParts<'_>,
        queries: &[f32],
        width: usize,
        (t0, t1): (usize, usize),
    ) -> DecodePart {
        part::<Avx2, BITS, INT>(scratch, head, queries, width, t0, t1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise as random;

    /// Every instruction set gives the portable code's integers (so the same outputs) with
    /// int8 activations, and the same outputs with f32 ones; at every bit width, for groups
    /// of 1, 3 and 5 query heads (chunks of four and remainders), ranges that start past the
    /// first block, odd residual windows and a partly filled value block.
    #[test]
    fn instruction_sets_agree_with_portable_code() {
        let (width, group) = (64, 32);
        for bits in [2, 4, 8] {
            let (blocks, key_residual, value_rows, value_residual) = (5, 19, 150, 29);
            let tokens = blocks * group + key_residual;
            assert_eq!(tokens, value_rows + value_residual);
            let data = random(tokens * width, bits as u64);
            let mut keys = KeyTiles::new(bits, group, width);
            data.chunks_exact(group * width)
                .take(blocks)
                .for_each(|b| keys.push_block(b));
            let mut values = ValueTiles::new(bits, group, width);
            let shifted = random(tokens * width, 7 + bits as u64);
            shifted
                .chunks_exact(width)
                .take(value_rows)
                .for_each(|r| values.push(r));
            let halves = |x: &[f32]| x.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>();
            let key_tail = halves(&data[blocks * group * width..]);
            let value_tail = halves(&shifted[value_rows * width..]);
            let head = HeadParts {
                keys: &keys,
                key_residual: &key_tail,
                values: &values,
                value_residual: &value_tail,
            };
            let mut scratch = Scratch::default();
            for rows in [1, 3, 5] {
                let queries = random(rows * width, 100 + rows as u64);
                for range in [(0, tokens), (2 * group, tokens), (group, 4 * group)] {
                    for activations in [DecodeActivations::Int8, DecodeActivations::F32] {
                        // One scratch for every call: nothing stale may leak between them.
                        let mut run = |simd| {
                            let scratch = &mut scratch;
                            decode_part_with(
                                scratch,
                                &head,
                                &queries,
                                width,
                                range,
                                bits,
                                activations,
                                simd,
                            )
                        };
                        let want = run(IntSimd::Portable);
                        assert!(want.out.iter().all(|x| x.is_finite()));
                        for simd in available() {
                            let got = run(simd);
                            let case = format!(
                                "{simd:?} {bits}-bit {rows} rows {range:?} {activations:?}"
                            );
                            assert_eq!(got.max, want.max, "{case}");
                            assert_eq!(got.sum, want.sum, "{case}");
                            assert_eq!(got.out, want.out, "{case}");
                        }
                    }
                }
            }
        }
    }
}
