//! Tiled ("flash") causal attention on the CPU, for prefill and decoding alike.
//!
//! The queries of one key/value head's group are taken a tile at a time against tiles of
//! keys, with an online softmax (running maximum and sum per query), so no score matrix is
//! larger than one tile's row whatever the context, and key tiles no query of the tile can
//! see are never read. Keys and values are widened from their stored precision (f32, or f16)
//! to f32 one tile at a time. A decoding query's keys are split across threads and the parts
//! merged (flash-decoding). Policies that rank tokens by attention get each key's received
//! probability from a second pass of the same kernel over the final maxima and sums, not
//! from a materialized matrix.
//!
//! One portable body is compiled three times — for AVX-512, for AVX2 with FMA, and for any
//! x86-64 or other CPU — and the best the CPU has is chosen at run time; tests check every
//! one this CPU can run against a naive computation.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::{KvError, Result};

mod decode;

/// Query positions per tile; the tile's rows are these positions of every query head of
/// the group.
const QUERY_TILE: usize = 32;
/// Keys per tile.
const KEY_TILE: usize = 64;
/// Keys one thread takes for a decoding query when the query tiles alone cannot keep every
/// thread busy; a multiple of [`KEY_TILE`].
const KEY_SPLIT: usize = 1024;
/// Head dimensions with a compiled kernel; a head dimension in between runs in the next
/// one up, padded with zeros (which add nothing to any score or output).
const HEAD_DIMS: [usize; 5] = [16, 32, 64, 128, 256];

/// How keys and values are stored: f32, or f16 widened by the kernels.
pub trait KvElement: Copy + Send + Sync + 'static {
    /// `src` as the type it is.
    fn stored(src: &[Self]) -> Stored<'_>;
}

/// Stored keys or values, by type.
#[derive(Clone, Copy)]
pub enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvElement for f32 {
    fn stored(src: &[f32]) -> Stored<'_> {
        Stored::F32(src)
    }
}

impl KvElement for f16 {
    fn stored(src: &[f16]) -> Stored<'_> {
        Stored::F16(src)
    }
}

/// One key/value head's stored rows: row `j` is `data[base + j·stride..][..width]`.
#[derive(Debug, Clone, Copy)]
pub struct StridedRows<'a, E> {
    pub data: &'a [E],
    pub base: usize,
    pub stride: usize,
}

impl<E: KvElement> StridedRows<'_, E> {
    /// Rows `first..first + count` as f32 into `dst`: `count` rows of `padded`, zero past
    /// `width`.
    #[inline(always)]
    fn widen<F: Arith>(
        &self,
        first: usize,
        count: usize,
        width: usize,
        padded: usize,
        dst: &mut [f32],
    ) {
        let widen = |src: &[E], dst: &mut [f32]| match E::stored(src) {
            Stored::F16(halves) => F::widen_halves(halves, dst),
            Stored::F32(floats) => dst.copy_from_slice(floats),
        };
        if self.stride == width && padded == width {
            let start = self.base + first * width;
            widen(
                &self.data[start..start + count * width],
                &mut dst[..count * width],
            );
            return;
        }
        for (j, row) in dst.chunks_exact_mut(padded).take(count).enumerate() {
            let start = self.base + (first + j) * self.stride;
            widen(&self.data[start..start + width], &mut row[..width]);
            row[width..].fill(0.0);
        }
    }
}

/// Grouped-query causal attention: query head `h`'s `t` rotated queries over the rows of
/// key/value head `h / (q_heads / kv_heads)`, query `i` seeing keys `0..=first_query_key + i`.
pub struct Causal<'a, E> {
    /// `[q_heads][t][width]`.
    pub queries: &'a [f32],
    pub q_heads: usize,
    pub t: usize,
    pub width: usize,
    /// Per key/value head.
    pub keys: Vec<StridedRows<'a, E>>,
    /// Per key/value head.
    pub values: Vec<StridedRows<'a, E>>,
    pub first_query_key: usize,
    pub scale: f32,
}

/// Instruction sets a kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Portable,
}

/// The instruction sets this CPU runs, best first (the portable one last).
pub fn available() -> Vec<Simd> {
    let mut levels = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") && has!("f16c") {
            levels.push(Simd::Avx512);
        }
        if has!("avx2") && has!("fma") && has!("f16c") {
            levels.push(Simd::Avx2);
        }
    }
    levels.push(Simd::Portable);
    levels
}

/// The best instruction set this CPU runs (detected once).
pub fn best() -> Simd {
    static BEST: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| available()[0])
}

/// The attention output `[q_heads][t][width]`. With `received` (`[kv_heads][keys]`), adds
/// to each key the probability it received, summed over queries and the group's query heads.
pub fn attend<E: KvElement>(p: &Causal<E>, received: Option<&mut [Vec<f32>]>) -> Result<Vec<f32>> {
    attend_with(p, received, best())
}

/// Softmax parts of one query row over disjoint key ranges, merged: each part's maximum
/// score, sum of exponentials and unnormalized output row. Writes the normalized row into
/// `row` (added to it, which starts at zero) and returns the row's maximum and sum.
pub(crate) fn merge_parts<'a>(
    parts: impl Iterator<Item = (f32, f32, &'a [f32])> + Clone,
    row: &mut [f32],
) -> (f32, f32) {
    let max = parts.clone().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
    let weight = |part_max: f32| exp_nonpositive(part_max - max);
    let sum: f32 = parts.clone().map(|(m, s, _)| s * weight(m)).sum();
    for (m, _, out) in parts {
        let scale = weight(m) / sum;
        for (o, x) in row.iter_mut().zip(out) {
            *o += x * scale;
        }
    }
    (max, sum)
}

/// Attention outputs `[q_heads][t][width]` and each row's softmax statistics (maximum
/// scaled score, sum of exponentials).
pub(crate) type WithStats = (Vec<f32>, Vec<(f32, f32)>);

/// [`attend`] with each output row's final softmax statistics (maximum scaled score, sum of
/// exponentials, `[q_heads][t]`), so that attention over further keys can be merged in.
pub(crate) fn attend_stats<E: KvElement>(
    p: &Causal<E>,
    received: Option<&mut [Vec<f32>]>,
) -> Result<WithStats> {
    attend_stats_with(p, received, best())
}

/// [`attend`] on a chosen instruction set (tests compare them).
pub fn attend_with<E: KvElement>(
    p: &Causal<E>,
    received: Option<&mut [Vec<f32>]>,
    simd: Simd,
) -> Result<Vec<f32>> {
    attend_stats_with(p, received, simd).map(|(out, _)| out)
}

fn attend_stats_with<E: KvElement>(
    p: &Causal<E>,
    received: Option<&mut [Vec<f32>]>,
    simd: Simd,
) -> Result<WithStats> {
    let kv_heads = p.keys.len();
    if kv_heads == 0 || p.values.len() != kv_heads || !p.q_heads.is_multiple_of(kv_heads) {
        return Err(KvError::Invalid(format!(
            "attention with {} query heads over {kv_heads} key and {} value heads",
            p.q_heads,
            p.values.len()
        )));
    }
    if p.queries.len() != p.q_heads * p.t * p.width {
        return Err(KvError::Invalid(format!(
            "{} query values for {} heads × {} positions × {}",
            p.queries.len(),
            p.q_heads,
            p.t,
            p.width
        )));
    }
    // AVX-512 takes R rows at a time (R·D/16 accumulator registers of its 32 for the value
    // sums, R·4 for a tile's scores); AVX2's 16 registers hold one row's 64 scores. At 256,
    // two rows spill some value sums but halve the key loads: Gemma-3-270M prefills 8K
    // tokens at 279 tokens/s so, at 268 one row at a time.
    let wide = simd == Simd::Avx512;
    match HEAD_DIMS.iter().find(|&&d| d >= p.width) {
        Some(16) if wide => run::<E, 16, 4>(p, received, simd),
        Some(16) => run::<E, 16, 1>(p, received, simd),
        Some(32) if wide => run::<E, 32, 4>(p, received, simd),
        Some(32) => run::<E, 32, 1>(p, received, simd),
        Some(64) if wide => run::<E, 64, 4>(p, received, simd),
        Some(64) => run::<E, 64, 1>(p, received, simd),
        Some(128) if wide => run::<E, 128, 2>(p, received, simd),
        Some(128) => run::<E, 128, 1>(p, received, simd),
        Some(_) if wide => run::<E, 256, 2>(p, received, simd),
        Some(_) => run::<E, 256, 1>(p, received, simd),
        None => Err(KvError::Invalid(format!(
            "head dimension {} is beyond the attention kernel's {}",
            p.width,
            HEAD_DIMS[HEAD_DIMS.len() - 1]
        ))),
    }
}

/// One unit of work: the rows of head group `g`'s query tile at `q0` (`qn` positions) over
/// keys `k0..k1`.
#[derive(Debug, Clone, Copy)]
struct Task {
    g: usize,
    q0: usize,
    qn: usize,
    k0: usize,
    k1: usize,
}

/// A task's result: unnormalized output rows (`[rows][D]`) and each row's running maximum
/// and sum of exponentials.
struct Partial {
    out: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// A decoding task's scaled scores, `[rows][keys]`, when received attention is asked
    /// for (empty otherwise): the received probabilities come from them once the parts
    /// are merged, without a second pass over the keys.
    scores: Vec<f32>,
}

fn run<E: KvElement, const D: usize, const R: usize>(
    p: &Causal<E>,
    received: Option<&mut [Vec<f32>]>,
    simd: Simd,
) -> Result<WithStats> {
    let kv_heads = p.keys.len();
    let group = p.q_heads / kv_heads;
    // The last key each query tile sees bounds its key range.
    let tiles: Vec<(usize, usize, usize)> = (0..kv_heads)
        .flat_map(|g| {
            (0..p.t)
                .step_by(QUERY_TILE)
                .map(move |q0| (g, q0, QUERY_TILE.min(p.t - q0)))
        })
        .collect();
    // Enough tasks for every thread: a decoding query's keys are split in parts of at least
    // a few tiles.
    let threads = rayon::current_num_threads();
    let split = if tiles.len() >= 4 * threads {
        usize::MAX
    } else if p.t == 1 {
        let parts = (4 * threads).div_ceil(tiles.len());
        (p.first_query_key + 1)
            .div_ceil(parts)
            .next_multiple_of(KEY_TILE)
            .clamp(4 * KEY_TILE, KEY_SPLIT)
    } else {
        KEY_SPLIT
    };
    let tasks: Vec<Task> = tiles
        .iter()
        .flat_map(|&(g, q0, qn)| {
            let end = p.first_query_key + q0 + qn;
            (0..end).step_by(split.min(end)).map(move |k0| Task {
                g,
                q0,
                qn,
                k0,
                k1: end.min(k0.saturating_add(split)),
            })
        })
        .collect();
    // Portably, f16 rows widen faster a tile at a time (`half`'s run conversion) than eight
    // values at a time in the decoding kernel (measured 1.1 against 5.1 ms at 8,000 keys).
    let portable_halves = simd == Simd::Portable && matches!(E::stored(&[]), Stored::F16(_));
    let decoder = if p.t == 1 && p.width == D && !portable_halves {
        decoder::<E, D>(simd)
    } else {
        None
    };
    let partials: Vec<Partial> = tasks
        .par_iter()
        .map(|task| match simd {
            _ if let Some(decode) = decoder => decode(p, task, received.is_some()),
            // SAFETY: `available` lists an instruction set only when the CPU has it.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { pass_avx512::<E, D, R>(p, task) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { pass_avx2::<E, D, R>(p, task) },
            _ => pass::<E, D, R, Separate>(p, task),
        })
        .collect();
    // Merge each tile's parts; keep every row's final maximum and sum for the second pass.
    let mut out = vec![0f32; p.q_heads * p.t * p.width];
    let mut stats = vec![(0f32, 0f32); p.q_heads * p.t];
    let mut at = 0;
    for &(g, q0, qn) in &tiles {
        let parts = tasks[at..]
            .iter()
            .take_while(|t| (t.g, t.q0) == (g, q0))
            .count();
        let pieces = &partials[at..at + parts];
        at += parts;
        for r in 0..group * qn {
            let (h, i) = (g * group + r / qn, q0 + r % qn);
            let row = &mut out[(h * p.t + i) * p.width..][..p.width];
            let parts = pieces
                .iter()
                .map(|q| (q.max[r], q.sum[r], &q.out[r * D..r * D + p.width]));
            stats[h * p.t + i] = merge_parts(parts, row);
        }
    }
    match received {
        Some(received) if decoder.is_some() => {
            decoded_received(p, &tasks, &partials, &stats, received)?
        }
        Some(received) => received_pass::<E, D, R>(p, &stats, received, simd)?,
        None => {}
    }
    Ok((out, stats))
}

/// A decoding kernel: one task, keeping its scores or not.
type DecodeFn<E> = fn(&Causal<E>, &Task, bool) -> Partial;

/// The kernel of [`decode::pass`] for `D`-wide rows on `simd`, with rows taken as many at a
/// time as registers hold (their queries, outputs and one key).
fn decoder<E: KvElement, const D: usize>(simd: Simd) -> Option<DecodeFn<E>> {
    // SAFETY (every arm): `available` lists an instruction set only when the CPU has it, and
    // the caller checked that rows are exactly `D` wide and the query is a decoding one.
    Some(match (simd, D) {
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, 16) => |p, t, k| unsafe { decode_avx512::<E, 1, 8>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, 32) => |p, t, k| unsafe { decode_avx512::<E, 2, 4>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, 64) => |p, t, k| unsafe { decode_avx512::<E, 4, 3>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, 128) => |p, t, k| unsafe { decode_avx512::<E, 8, 1>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, 256) => |p, t, k| unsafe { decode_avx512::<E, 16, 1>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, 16) => |p, t, k| unsafe { decode_avx2::<E, 2, 3>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, 32) => |p, t, k| unsafe { decode_avx2::<E, 4, 1>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, 64) => |p, t, k| unsafe { decode_avx2::<E, 8, 1>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, 128) => |p, t, k| unsafe { decode_avx2::<E, 16, 1>(p, t, k) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, 256) => |p, t, k| unsafe { decode_avx2::<E, 32, 1>(p, t, k) },
        (Simd::Portable, 16) => {
            |p, t, k| unsafe { decode::pass::<E, decode::Portable, 2, 3>(p, t, k) }
        }
        (Simd::Portable, 32) => {
            |p, t, k| unsafe { decode::pass::<E, decode::Portable, 4, 1>(p, t, k) }
        }
        (Simd::Portable, 64) => {
            |p, t, k| unsafe { decode::pass::<E, decode::Portable, 8, 1>(p, t, k) }
        }
        (Simd::Portable, 128) => {
            |p, t, k| unsafe { decode::pass::<E, decode::Portable, 16, 1>(p, t, k) }
        }
        (Simd::Portable, 256) => {
            |p, t, k| unsafe { decode::pass::<E, decode::Portable, 32, 1>(p, t, k) }
        }
        _ => return None,
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn decode_avx512<E: KvElement, const C: usize, const RB: usize>(
    p: &Causal<E>,
    task: &Task,
    keep_scores: bool,
) -> Partial {
    decode::pass::<E, decode::Avx512, C, RB>(p, task, keep_scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_avx2<E: KvElement, const C: usize, const RB: usize>(
    p: &Causal<E>,
    task: &Task,
    keep_scores: bool,
) -> Partial {
    decode::pass::<E, decode::Avx2, C, RB>(p, task, keep_scores)
}

/// Each key's received probability for a decoding query, `exp(score − max) / sum` summed
/// over the group's query heads, from the scores its tasks kept.
fn decoded_received<E>(
    p: &Causal<E>,
    tasks: &[Task],
    partials: &[Partial],
    stats: &[(f32, f32)],
    received: &mut [Vec<f32>],
) -> Result<()> {
    let group = p.q_heads / p.keys.len();
    let n = p.first_query_key + 1;
    if received.len() != p.keys.len() || received.iter().any(|r| r.len() < n) {
        return Err(KvError::Invalid(format!(
            "received-attention totals for {} heads, each at least {n} keys",
            p.keys.len()
        )));
    }
    for (task, part) in tasks.iter().zip(partials) {
        let keys = task.k1 - task.k0;
        let totals = &mut received[task.g][task.k0..task.k1];
        for (r, scores) in part.scores.chunks_exact(keys).enumerate() {
            let (max, sum) = stats[task.g * group + r];
            for (total, &s) in totals.iter_mut().zip(scores) {
                *total += exp_nonpositive(s - max) / sum;
            }
        }
    }
    Ok(())
}

/// Each key's received probability, `exp(score − max) / sum` of every query that sees it,
/// accumulated per key/value head over key ranges in parallel.
fn received_pass<E: KvElement, const D: usize, const R: usize>(
    p: &Causal<E>,
    stats: &[(f32, f32)],
    received: &mut [Vec<f32>],
    simd: Simd,
) -> Result<()> {
    let n = p.first_query_key + p.t;
    if received.len() != p.keys.len() || received.iter().any(|r| r.len() < n) {
        return Err(KvError::Invalid(format!(
            "received-attention totals for {} heads, each at least {n} keys",
            p.keys.len()
        )));
    }
    let ranges: Vec<(usize, usize)> = (0..p.keys.len())
        .flat_map(|g| (0..n).step_by(KEY_SPLIT).map(move |k0| (g, k0)))
        .collect();
    let sums: Vec<Vec<f32>> = ranges
        .par_iter()
        .map(|&(g, k0)| {
            let k1 = n.min(k0 + KEY_SPLIT);
            match simd {
                // SAFETY: `available` lists an instruction set only when the CPU has it.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { received_avx512::<E, D, R>(p, stats, g, k0, k1) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { received_avx2::<E, D, R>(p, stats, g, k0, k1) },
                _ => received_range::<E, D, R, Separate>(p, stats, g, k0, k1),
            }
        })
        .collect();
    for (&(g, k0), sum) in ranges.iter().zip(sums) {
        for (total, s) in received[g][k0..].iter_mut().zip(sum) {
            *total += s;
        }
    }
    Ok(())
}

/// The operations whose best form depends on the instruction set: `a·b + c` (fused where
/// the CPU has FMA; a software fused multiply-add would be far slower) and widening f16
/// (F16C instructions where the CPU has them, not a call per eight values).
trait Arith {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
    fn widen_halves(src: &[f16], dst: &mut [f32]);
}

/// FMA and F16C (the AVX2 and AVX-512 kernels; only called where the CPU has both).
struct Fused;

impl Arith for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn widen_halves(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
            let whole = src.len() / 8 * 8;
            for (s, d) in src[..whole]
                .chunks_exact(8)
                .zip(dst[..whole].chunks_exact_mut(8))
            {
                // SAFETY: callers run on CPUs with F16C (`available`); each chunk is 8 long.
                unsafe {
                    let h = _mm_loadu_si128(s.as_ptr() as *const __m128i);
                    _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
                }
            }
            src[whole..].convert_to_f32_slice(&mut dst[whole..src.len()]);
        }
        #[cfg(not(target_arch = "x86_64"))]
        src.convert_to_f32_slice(&mut dst[..src.len()]);
    }
}

/// Multiply then add, and the `half` crate's conversion (any CPU).
struct Separate;

impl Arith for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }

    #[inline(always)]
    fn widen_halves(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(&mut dst[..src.len()]);
    }
}

// The wrappers below are spelled out rather than generated from a closure: a closure
// passed into a `target_feature` frame is not inlined there, and its `mul_add` then calls
// software FMA (measured 80x slower).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn pass_avx512<E: KvElement, const D: usize, const R: usize>(
    p: &Causal<E>,
    task: &Task,
) -> Partial {
    pass::<E, D, R, Fused>(p, task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<E: KvElement, const D: usize, const R: usize>(
    p: &Causal<E>,
    task: &Task,
) -> Partial {
    pass::<E, D, R, Fused>(p, task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn received_avx512<E: KvElement, const D: usize, const R: usize>(
    p: &Causal<E>,
    stats: &[(f32, f32)],
    g: usize,
    k0: usize,
    k1: usize,
) -> Vec<f32> {
    received_range::<E, D, R, Fused>(p, stats, g, k0, k1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn received_avx2<E: KvElement, const D: usize, const R: usize>(
    p: &Causal<E>,
    stats: &[(f32, f32)],
    g: usize,
    k0: usize,
    k1: usize,
) -> Vec<f32> {
    received_range::<E, D, R, Fused>(p, stats, g, k0, k1)
}

/// A tile's queries, scaled, one row per (query head of the group, position), zero-padded
/// to `D` and with zero rows up to a multiple of `R`.
#[inline(always)]
fn query_tile<E, const D: usize, const R: usize>(
    p: &Causal<E>,
    g: usize,
    q0: usize,
    qn: usize,
) -> Vec<f32> {
    let group = p.q_heads / p.keys.len();
    let mut rows = vec![0f32; (group * qn).next_multiple_of(R) * D];
    for (r, row) in rows.chunks_exact_mut(D).take(group * qn).enumerate() {
        let (h, i) = (g * group + r / qn, q0 + r % qn);
        let src = &p.queries[(h * p.t + i) * p.width..][..p.width];
        for (x, q) in row.iter_mut().zip(src) {
            *x = q * p.scale;
        }
    }
    rows
}

/// Rows a tile must have before its keys are transposed: one transposition (a scalar
/// shuffle of the tile) costs about what eight rows' scores read row by row cost.
const ROWS_TO_TRANSPOSE: usize = 8;

/// A tile of keys as the score kernel reads them: transposed (`[D][KEY_TILE]`, one column
/// load serving every row, for a prefill tile's many rows) or as rows (`[KEY_TILE][D]`, no
/// transposition, for the few rows of a decoding query).
struct KeyTile<const D: usize> {
    rows: Vec<f32>,
    columns: Option<Vec<f32>>,
}

impl<const D: usize> KeyTile<D> {
    /// Room for a tile read by `query_rows` rows.
    fn new(query_rows: usize) -> Self {
        Self {
            rows: vec![0f32; KEY_TILE * D],
            columns: (query_rows >= ROWS_TO_TRANSPOSE).then(|| vec![0f32; D * KEY_TILE]),
        }
    }

    /// Keys `k0..k0 + kn` of head `g`, widened (and transposed where the tile is).
    #[inline(always)]
    fn load<E: KvElement, F: Arith>(&mut self, p: &Causal<E>, g: usize, k0: usize, kn: usize) {
        p.keys[g].widen::<F>(k0, kn, p.width, D, &mut self.rows);
        if let Some(columns) = &mut self.columns {
            for (j, row) in self.rows.chunks_exact(D).take(kn).enumerate() {
                for (x, &k) in row.iter().enumerate() {
                    columns[x * KEY_TILE + j] = k;
                }
            }
        }
    }

    /// `R` rows' scores (`q` is `[R][D]`) against the tile's first `kn` keys.
    #[inline(always)]
    fn scores<const R: usize, F: Arith>(
        &self,
        q: &[f32],
        kn: usize,
        out: &mut [[f32; KEY_TILE]; R],
    ) {
        match &self.columns {
            Some(columns) => scores::<D, R, F>(q, columns, out),
            None => scores_by_rows::<D, R, F>(q, &self.rows, kn, out),
        }
    }
}

/// `R` rows' scores against key rows, one dot product per key in `LANES` partial sums.
#[inline(always)]
fn scores_by_rows<const D: usize, const R: usize, F: Arith>(
    q: &[f32],
    keys: &[f32],
    kn: usize,
    out: &mut [[f32; KEY_TILE]; R],
) {
    for (j, key) in keys.chunks_exact(D).take(kn).enumerate() {
        for (row, query) in out.iter_mut().zip(q.chunks_exact(D)) {
            let mut acc = [0f32; LANES];
            for (qc, kc) in query.chunks_exact(LANES).zip(key.chunks_exact(LANES)) {
                for ((a, &x), &y) in acc.iter_mut().zip(qc).zip(kc) {
                    *a = F::mul_add(x, y, *a);
                }
            }
            row[j] = halving_sum(acc);
        }
    }
}

/// The sum of the lanes, halving their number each step (steps that vectorize).
#[inline(always)]
fn halving_sum(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        let (low, high) = acc.split_at_mut(width);
        for (a, &b) in low.iter_mut().zip(&high[..width]) {
            *a += b;
        }
        width /= 2;
    }
    acc[0]
}

/// `R` rows' scores against a transposed key tile: `q · kᵀ` for the tile's keys, each key
/// column loaded once for all `R` rows.
#[inline(always)]
fn scores<const D: usize, const R: usize, F: Arith>(
    q: &[f32],
    keys: &[f32],
    out: &mut [[f32; KEY_TILE]; R],
) {
    let mut acc = [[0f32; KEY_TILE]; R];
    for x in 0..D {
        let column: &[f32; KEY_TILE] = keys[x * KEY_TILE..(x + 1) * KEY_TILE]
            .try_into()
            .expect("a key tile row");
        for (r, row) in acc.iter_mut().enumerate() {
            let qx = q[r * D + x];
            for (a, &k) in row.iter_mut().zip(column) {
                *a = F::mul_add(qx, k, *a);
            }
        }
    }
    *out = acc;
}

/// Keys of the tile at `k0` (of `kn`) query `i` sees.
#[inline(always)]
fn visible(first_query_key: usize, i: usize, k0: usize, kn: usize) -> usize {
    (first_query_key + i + 1).saturating_sub(k0).min(kn)
}

/// Keys of the tile at `k0` (of `kn`) each of the `R` rows from `r0` sees (0 for padding).
#[inline(always)]
fn visible_rows<E, const R: usize>(
    p: &Causal<E>,
    rows: usize,
    (q0, qn): (usize, usize),
    r0: usize,
    (k0, kn): (usize, usize),
) -> [usize; R] {
    std::array::from_fn(|i| match r0 + i < rows {
        true => visible(p.first_query_key, q0 + (r0 + i) % qn, k0, kn),
        false => 0,
    })
}

/// The first pass: a tile's rows over its task's keys, `R` at a time, with the online
/// softmax.
#[inline(always)]
fn pass<E: KvElement, const D: usize, const R: usize, F: Arith>(
    p: &Causal<E>,
    task: &Task,
) -> Partial {
    let q = query_tile::<E, D, R>(p, task.g, task.q0, task.qn);
    let rows = p.q_heads / p.keys.len() * task.qn;
    let padded = q.len() / D;
    let mut out = vec![0f32; padded * D];
    let mut max = vec![f32::NEG_INFINITY; padded];
    let mut sum = vec![0f32; padded];
    let mut keys = KeyTile::<D>::new(padded);
    let mut values = vec![0f32; KEY_TILE * D];
    let mut s = [[0f32; KEY_TILE]; R];
    for k0 in (task.k0..task.k1).step_by(KEY_TILE) {
        let kn = KEY_TILE.min(task.k1 - k0);
        keys.load::<E, F>(p, task.g, k0, kn);
        p.values[task.g].widen::<F>(k0, kn, p.width, D, &mut values);
        for r0 in (0..padded).step_by(R) {
            let seen = visible_rows::<E, R>(p, rows, (task.q0, task.qn), r0, (k0, kn));
            let widest = seen.iter().copied().max().unwrap_or(0);
            if widest == 0 {
                continue;
            }
            keys.scores::<R, F>(&q[r0 * D..(r0 + R) * D], kn, &mut s);
            // Each row's scores become its weights: exp(score − new max), 0 past what it sees.
            let mut correction = [1f32; R];
            for (i, w) in s.iter_mut().enumerate() {
                let (r, seen) = (r0 + i, seen[i]);
                if seen > 0 {
                    let new_max = max[r].max(lanes_max(&w[..seen]));
                    correction[i] = exp_nonpositive(max[r] - new_max);
                    for e in w[..seen].iter_mut() {
                        *e = exp_nonpositive(*e - new_max);
                    }
                    sum[r] = sum[r] * correction[i] + lanes_sum(&w[..seen]);
                    max[r] = new_max;
                }
                w[seen..widest].fill(0.0);
            }
            accumulate::<D, R, F>(
                &mut out[r0 * D..(r0 + R) * D],
                &correction,
                &s,
                widest,
                &values,
            );
        }
    }
    Partial {
        out,
        max,
        sum,
        scores: Vec::new(),
    }
}

/// `R` output rows rescaled by their corrections, plus their weights times the tile's
/// first `keys` value rows, each value row loaded once for all `R` rows.
#[inline(always)]
fn accumulate<const D: usize, const R: usize, F: Arith>(
    out: &mut [f32],
    correction: &[f32; R],
    weights: &[[f32; KEY_TILE]; R],
    keys: usize,
    values: &[f32],
) {
    let mut acc = [[0f32; D]; R];
    for ((a, o), c) in acc.iter_mut().zip(out.chunks_exact(D)).zip(correction) {
        for (x, &y) in a.iter_mut().zip(o) {
            *x = y * c;
        }
    }
    for (j, value) in values.chunks_exact(D).take(keys).enumerate() {
        let value: &[f32; D] = value.try_into().expect("a value row");
        for (a, w) in acc.iter_mut().zip(weights) {
            let wj = w[j];
            for (x, &v) in a.iter_mut().zip(value) {
                *x = F::mul_add(wj, v, *x);
            }
        }
    }
    for (a, o) in acc.iter().zip(out.chunks_exact_mut(D)) {
        o.copy_from_slice(a);
    }
}

/// The second pass: keys `k0..k1` of head `g`, the probability each received from every
/// query that sees it.
#[inline(always)]
fn received_range<E: KvElement, const D: usize, const R: usize, F: Arith>(
    p: &Causal<E>,
    stats: &[(f32, f32)],
    g: usize,
    k0: usize,
    k1: usize,
) -> Vec<f32> {
    let group = p.q_heads / p.keys.len();
    let mut received = vec![0f32; k1 - k0];
    let mut s = [[0f32; KEY_TILE]; R];
    // Query tiles whose last query sees key k0 or later.
    let first_tile = k0.saturating_sub(p.first_query_key) / QUERY_TILE * QUERY_TILE;
    let tiles: Vec<(usize, usize, Vec<f32>)> = (first_tile..p.t)
        .step_by(QUERY_TILE)
        .map(|q0| {
            let qn = QUERY_TILE.min(p.t - q0);
            (q0, qn, query_tile::<E, D, R>(p, g, q0, qn))
        })
        .collect();
    let query_rows: usize = tiles.iter().map(|(_, _, q)| q.len() / D).sum();
    let mut keys = KeyTile::<D>::new(query_rows);
    for t0 in (k0..k1).step_by(KEY_TILE) {
        let kn = KEY_TILE.min(k1 - t0);
        keys.load::<E, F>(p, g, t0, kn);
        let into = &mut received[t0 - k0..t0 - k0 + kn];
        for (q0, qn, q) in &tiles {
            let rows = group * qn;
            for r0 in (0..q.len() / D).step_by(R) {
                let seen = visible_rows::<E, R>(p, rows, (*q0, *qn), r0, (t0, kn));
                if seen.iter().all(|&n| n == 0) {
                    continue;
                }
                keys.scores::<R, F>(&q[r0 * D..(r0 + R) * D], kn, &mut s);
                for (i, w) in s.iter().enumerate().filter(|(i, _)| seen[*i] > 0) {
                    let r = r0 + i;
                    let (max, sum) = stats[(g * group + r / qn) * p.t + q0 + r % qn];
                    let inv = 1.0 / sum;
                    for (total, &e) in into.iter_mut().zip(&w[..seen[i]]) {
                        *total += exp_nonpositive(e - max) * inv;
                    }
                }
            }
        }
    }
    received
}

/// Lanes of the reductions below: independent partial results that vectorize, where one
/// running total would be an ordered chain the compiler must keep scalar.
const LANES: usize = 16;

/// Tokens of one key/value head one task of a packed cache's decoding step reads.
pub(crate) const DECODE_SPLIT: usize = 1024;

/// One task of a packed cache's decoding step (a range of one key/value head's tokens):
/// unnormalized output rows (`[rows][width]`) and each row's maximum scaled score and sum
/// of exponentials.
pub(crate) struct DecodePart {
    pub out: Vec<f32>,
    pub max: Vec<f32>,
    pub sum: Vec<f32>,
}

/// The tasks of a decoding step: each key/value head's tokens `0..n` (`lengths`, per head)
/// in ranges of `split`, as `(head, t0, t1)`.
pub(crate) fn token_ranges(
    lengths: impl Iterator<Item = usize>,
    split: usize,
) -> Vec<(usize, usize, usize)> {
    lengths
        .enumerate()
        .flat_map(|(g, n)| {
            (0..n)
                .step_by(split)
                .map(move |t0| (g, t0, n.min(t0 + split)))
        })
        .collect()
}

/// The decoding step's output `[kv_heads · rows][width]`: each key/value head's parts
/// (`parts[i]` from `ranges[i]`) merged per query row, with `extra(head, row)`'s part when
/// it gives one (a token attended but not stored).
pub(crate) fn merge_decode_parts<'a>(
    ranges: &[(usize, usize, usize)],
    parts: &'a [DecodePart],
    (rows, width): (usize, usize),
    out: &mut [f32],
    extra: impl Fn(usize, usize) -> Option<(f32, f32, &'a [f32])>,
) {
    for (g, head_out) in out.chunks_exact_mut(rows * width).enumerate() {
        let mine: Vec<&DecodePart> = ranges
            .iter()
            .zip(parts)
            .filter(|(t, _)| t.0 == g)
            .map(|(_, p)| p)
            .collect();
        for (r, row) in head_out.chunks_exact_mut(width).enumerate() {
            let stored = mine
                .iter()
                .map(|p| (p.max[r], p.sum[r], &p.out[r * width..(r + 1) * width]));
            merge_parts(stored.chain(extra(g, r)), row);
        }
    }
}

/// The largest of `xs` (minus infinity for none).
#[inline(always)]
pub(crate) fn lanes_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The sum of `xs`.
#[inline(always)]
pub(crate) fn lanes_sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The dot product of `a` and `b` (of equal lengths), summed in lanes so that it vectorizes.
#[inline(always)]
pub(crate) fn lanes_dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (chunks_a.remainder().iter())
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for ((s, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` for `x <= 0` to about 2e-7 relative error, branch-free so that loops over it
/// vectorize: `2^n · e^r` with `n = round(x·log2 e)`, `|r| <= ln2/2`, and a degree-6
/// Taylor polynomial for `e^r`. Arguments below -87 (minus infinity and NaN included)
/// give about 1e-38, not a subnormal; arguments above 0 give 1.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    // NaN becomes -87 here (`clamp` would keep it), so that `n` is always in [-126, 0].
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(0.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * std::f32::consts::LN_2;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // SAFETY: `n` is a whole number in [-126, 0]. (`as i32` saturates, which does not
    // vectorize: sixteen scalar conversions per vector.)
    let n = unsafe { n.to_int_unchecked::<i32>() };
    p * f32::from_bits(((n + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;

    /// Outputs `[q_heads][t][d]` and received totals `[kv_heads][n]`, in f64, one query at
    /// a time; keys and values are `[kv_heads][n][d]`.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        q_heads: usize,
        kv_heads: usize,
        t: usize,
        n: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let first = n - t;
        let group = q_heads / kv_heads;
        let mut out = Vec::new();
        let mut received = vec![vec![0f32; n]; kv_heads];
        for h in 0..q_heads {
            let g = h / group;
            for i in 0..t {
                let query = &q[(h * t + i) * d..][..d];
                let seen = first + i + 1;
                let scores: Vec<f64> = (0..seen)
                    .map(|j| {
                        let key = &k[(g * n + j) * d..][..d];
                        query
                            .iter()
                            .zip(key)
                            .map(|(a, b)| (a * b) as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    received[g][j] += (w / total) as f32;
                }
                for x in 0..d {
                    out.push(
                        (0..seen)
                            .map(|j| weights[j] / total * v[(g * n + j) * d + x] as f64)
                            .sum::<f64>() as f32,
                    );
                }
            }
        }
        (out, received)
    }

    /// `count` heads' rows of `d` in one buffer, `capacity` rows apart.
    fn heads<E>(data: &[E], count: usize, capacity: usize, d: usize) -> Vec<StridedRows<'_, E>> {
        (0..count)
            .map(|g| StridedRows {
                data,
                base: g * capacity * d,
                stride: d,
            })
            .collect()
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// Every instruction set this CPU runs, every compiled head dimension (and widths padded
    /// up to one), several query tiles with a partial last one, keys before the first query,
    /// and decoding queries whose keys are split across threads: outputs and received
    /// attention equal the naive computation.
    #[test]
    fn every_kernel_matches_naive_attention() {
        for simd in available() {
            for (d, t, n, q_heads, kv_heads) in [
                (8, 70, 75, 6, 2),
                (16, 33, 33, 2, 2),
                (40, 5, 200, 4, 1),
                (64, 1, 2500, 9, 3),
                (16, 1, 65, 8, 1),
                (32, 1, 300, 10, 2),
                (128, 1, 1000, 7, 1),
                (256, 1, 129, 2, 2),
                (40, 1, 99, 3, 1),
                (64, 100, 1100, 3, 1),
                (128, 3, 70, 2, 1),
                (256, 17, 90, 4, 1),
            ] {
                let q = noise(q_heads * t * d, 1);
                let k = noise(kv_heads * n * d, 2);
                let v = noise(kv_heads * n * d, 3);
                let problem = Causal {
                    queries: &q,
                    q_heads,
                    t,
                    width: d,
                    keys: heads(&k, kv_heads, n, d),
                    values: heads(&v, kv_heads, n, d),
                    first_query_key: n - t,
                    scale: 1.0 / (d as f32).sqrt(),
                };
                let mut received = vec![vec![0f32; n]; kv_heads];
                let got = attend_with(&problem, Some(&mut received), simd).unwrap();
                let (want, want_received) = naive(&q, &k, &v, q_heads, kv_heads, t, n, d);
                let case = format!("{simd:?} d={d} t={t} n={n} heads={q_heads}/{kv_heads}");
                assert!(
                    worst(&got, &want) < 2e-5,
                    "{case}: outputs off by {}",
                    worst(&got, &want)
                );
                for (g, (a, b)) in received.iter().zip(&want_received).enumerate() {
                    assert!(
                        worst(a, b) < 2e-4,
                        "{case}: head {g} received off by {}",
                        worst(a, b)
                    );
                }
                // Without the second pass the output is the same.
                assert_eq!(attend_with(&problem, None, simd).unwrap(), got, "{case}");
            }
        }
    }

    /// f16 rows in a strided buffer (spare capacity between heads) give the attention of
    /// their values widened to f32, for prefill tiles and decoding queries.
    #[test]
    fn f16_rows_attend_as_their_f32_values() {
        for t in [40, 1] {
            f16_rows_attend_as_their_f32_values_at(t);
        }
    }

    fn f16_rows_attend_as_their_f32_values_at(t: usize) {
        let (d, n, capacity) = (64, 300, 333);
        let q = noise(4 * t * d, 4);
        let k32 = noise(2 * capacity * d, 5);
        let v32 = noise(2 * capacity * d, 6);
        let k16: Vec<f16> = k32.iter().map(|&x| f16::from_f32(x)).collect();
        let v16: Vec<f16> = v32.iter().map(|&x| f16::from_f32(x)).collect();

        for simd in available() {
            let got = attend_with(
                &Causal {
                    queries: &q,
                    q_heads: 4,
                    t,
                    width: d,
                    keys: heads(&k16, 2, capacity, d),
                    values: heads(&v16, 2, capacity, d),
                    first_query_key: n - t,
                    scale: 1.0 / (d as f32).sqrt(),
                },
                None,
                simd,
            )
            .unwrap();
            let widen = |x: &[f16]| -> Vec<f32> {
                (0..2)
                    .flat_map(|g| x[g * capacity * d..][..n * d].iter().map(|h| h.to_f32()))
                    .collect()
            };
            let (want, _) = naive(&q, &widen(&k16), &widen(&v16), 4, 2, t, n, d);
            assert!(
                worst(&got, &want) < 2e-5,
                "{simd:?} t={t}: off by {}",
                worst(&got, &want)
            );
        }
    }

    /// Multiply-adds per second of each kernel on one prefill chunk of SmolLM2's geometry
    /// (512 queries after 7,488 keys, 9 query heads over 3 of 64):
    /// `cargo test --release -p longctx-kv tiled::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        for t in [512, 1] {
            throughput_of(t);
        }
    }

    fn throughput_of(t: usize) {
        let (d, n, q_heads, kv_heads) = (64, 8000, 9, 3);
        let q = noise(q_heads * t * d, 7);
        let k32 = noise(kv_heads * n * d, 8);
        let k16: Vec<f16> = k32.iter().map(|&x| f16::from_f32(x)).collect();
        let f32_problem = Causal {
            queries: &q,
            q_heads,
            t,
            width: d,
            keys: heads(&k32, kv_heads, n, d),
            values: heads(&k32, kv_heads, n, d),
            first_query_key: n - t,
            scale: 0.125,
        };
        let f16_problem = Causal {
            queries: &q,
            q_heads,
            t,
            width: d,
            keys: heads(&k16, kv_heads, n, d),
            values: heads(&k16, kv_heads, n, d),
            first_query_key: n - t,
            scale: 0.125,
        };
        let pairs = (q_heads * (t * (n - t) + t * (t + 1) / 2)) as f64;
        let time = |run: &dyn Fn()| {
            let start = std::time::Instant::now();
            let repeats = 4096 / t;
            for _ in 0..repeats {
                run();
            }
            start.elapsed().as_secs_f64() / repeats as f64
        };
        for simd in available() {
            for (precision, secs) in [
                (
                    "f32",
                    time(&|| drop(attend_with(&f32_problem, None, simd).unwrap())),
                ),
                (
                    "f16",
                    time(&|| drop(attend_with(&f16_problem, None, simd).unwrap())),
                ),
            ] {
                println!(
                    "{t} queries, {simd:?}, {precision}: {:.3} ms, {:.1} G multiply-adds/s",
                    secs * 1e3,
                    2.0 * d as f64 * pairs / secs / 1e9
                );
            }
        }
    }

    #[test]
    fn rejects_head_dimensions_beyond_the_kernels_and_mismatched_heads() {
        let q = vec![0f32; 300];
        let k = vec![0f32; 300];
        let rows = vec![StridedRows {
            data: &k[..],
            base: 0,
            stride: 300,
        }];
        let problem = Causal {
            queries: &q,
            q_heads: 1,
            t: 1,
            width: 300,
            keys: rows.clone(),
            values: rows,
            first_query_key: 0,
            scale: 1.0,
        };
        assert!(matches!(attend(&problem, None), Err(KvError::Invalid(_))));
        let uneven = Causal {
            q_heads: 3,
            width: 100,
            queries: &q,
            keys: vec![problem.keys[0]; 2],
            values: vec![problem.keys[0]; 2],
            ..problem
        };
        assert!(matches!(attend(&uneven, None), Err(KvError::Invalid(_))));
    }
}
