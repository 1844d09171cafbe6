//! The decoding case of the tiled kernel: one query position, so a tile's rows are only the
//! group's query heads. Keys and values are read where they are stored and widened in
//! registers (no tile copied to a buffer), each key's scores for a block of rows come from
//! vector multiply-adds and one horizontal sum, and the block's output rows stay in
//! registers while the tile's values stream past them.
//!
//! The body is written once over [`Lanes`] (a SIMD vector of `W` f32) and compiled for
//! AVX-512 (16 lanes), AVX2 (8) and portably (8, plain arrays).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{exp_nonpositive, lanes_max, lanes_sum, Causal, KvElement, Partial, Stored, Task};

/// Keys per tile: one tile's scores per row are kept for its softmax and value pass.
const TILE: usize = 64;

/// A vector of `W` f32 lanes and the operations the kernel needs.
pub(super) trait Lanes {
    type V: Copy;
    const W: usize;
    // Safety (all methods):
    // the CPU has the implementation's instruction set; pointers are valid for `W` values.
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn load_halves(p: *const f16) -> Self::V;
    unsafe fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sum(a: Self::V) -> f32;
    unsafe fn store(p: *mut f32, a: Self::V);
}

/// `C` vectors of a stored row starting at element `start`.
#[inline(always)]
unsafe fn load_row<L: Lanes, const C: usize>(rows: Stored<'_>, start: usize) -> [L::V; C] {
    std::array::from_fn(|c| match rows {
        Stored::F32(v) => L::load(v.as_ptr().add(start + c * L::W)),
        Stored::F16(v) => L::load_halves(v.as_ptr().add(start + c * L::W)),
    })
}

/// One task (a key/value head's group over keys `k0..k1`): for each tile of keys, the
/// group's rows `RB` at a time, their outputs held in registers across the tile's values;
/// with `keep_scores`, each row's scaled scores too.
///
/// # Safety
/// The CPU has `L`'s instruction set; `p.width == C · L::W`, `task.qn == 1`, and the task's
/// keys are stored.
#[inline(always)]
pub(super) unsafe fn pass<E: KvElement, L: Lanes, const C: usize, const RB: usize>(
    p: &Causal<E>,
    task: &Task,
    keep_scores: bool,
) -> Partial {
    let width = C * L::W;
    debug_assert_eq!(p.width, width);
    let group = p.q_heads / p.keys.len();
    let (keys, values) = (&p.keys[task.g], &p.values[task.g]);
    let (stored_keys, stored_values) = (E::stored(keys.data), E::stored(values.data));
    let queries: Vec<f32> = (0..group)
        .flat_map(|r| {
            let h = task.g * group + r;
            p.queries[(h * p.t + task.q0) * width..][..width]
                .iter()
                .map(|q| q * p.scale)
        })
        .collect();
    let mut out = vec![0f32; group * width];
    let mut max = vec![f32::NEG_INFINITY; group];
    let mut sum = vec![0f32; group];
    let keys_in_task = task.k1 - task.k0;
    let mut kept = vec![0f32; if keep_scores { group * keys_in_task } else { 0 }];
    let mut scores = [[0f32; TILE]; RB];
    for k0 in (task.k0..task.k1).step_by(TILE) {
        let kn = TILE.min(task.k1 - k0);
        for r0 in (0..group).step_by(RB) {
            let rows = RB.min(group - r0);
            // Rows past the group repeat its last row; nothing reads their results.
            let row = |i: usize| (r0 + i.min(rows - 1)) * width;
            let q: [[L::V; C]; RB] = std::array::from_fn(|i| {
                std::array::from_fn(|c| L::load(queries.as_ptr().add(row(i) + c * L::W)))
            });
            for j in 0..kn {
                let key = load_row::<L, C>(stored_keys, keys.base + (k0 + j) * keys.stride);
                for (q, s) in q.iter().zip(scores.iter_mut()).take(rows) {
                    let mut dot = L::mul(q[0], key[0]);
                    for c in 1..C {
                        dot = L::mul_add(q[c], key[c], dot);
                    }
                    s[j] = L::sum(dot);
                }
            }
            // Scores become weights, exp(score − new max); the sums and outputs so far are
            // rescaled to the new maximum.
            let mut acc: [[L::V; C]; RB] = std::array::from_fn(|i| {
                std::array::from_fn(|c| L::load(out.as_ptr().add(row(i) + c * L::W)))
            });
            for (i, (s, a)) in scores.iter_mut().zip(acc.iter_mut()).enumerate().take(rows) {
                let r = r0 + i;
                if keep_scores {
                    kept[r * keys_in_task + k0 - task.k0..][..kn].copy_from_slice(&s[..kn]);
                }
                let new_max = max[r].max(lanes_max(&s[..kn]));
                let correction = exp_nonpositive(max[r] - new_max);
                for e in s[..kn].iter_mut() {
                    *e = exp_nonpositive(*e - new_max);
                }
                sum[r] = sum[r] * correction + lanes_sum(&s[..kn]);
                max[r] = new_max;
                for v in a.iter_mut() {
                    *v = L::mul(*v, L::splat(correction));
                }
            }
            for j in 0..kn {
                let value = load_row::<L, C>(stored_values, values.base + (k0 + j) * values.stride);
                for (a, s) in acc.iter_mut().zip(&scores).take(rows) {
                    let w = L::splat(s[j]);
                    for c in 0..C {
                        a[c] = L::mul_add(w, value[c], a[c]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(rows) {
                for (c, v) in a.iter().enumerate() {
                    L::store(out.as_mut_ptr().add(row(i) + c * L::W), *v);
                }
            }
        }
    }
    Partial {
        out,
        max,
        sum,
        scores: kept,
    }
}

/// Eight lanes as a plain array: any CPU.
pub(super) struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const W: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        std::array::from_fn(|i| *p.add(i))
    }
    #[inline(always)]
    unsafe fn load_halves(p: *const f16) -> [f32; 8] {
        let mut out = [0f32; 8];
        std::slice::from_raw_parts(p, 8).convert_to_f32_slice(&mut out);
        out
    }
    #[inline(always)]
    unsafe fn mul_add(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn sum(a: [f32; 8]) -> f32 {
        let s: [f32; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
        (s[0] + s[2]) + (s[1] + s[3])
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, a: [f32; 8]) {
        std::ptr::copy_nonoverlapping(a.as_ptr(), p, 8);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use half::f16;
    use std::arch::x86_64::*;

    /// 16 lanes of a 512-bit register.
    pub struct Avx512;

    impl Lanes for Avx512 {
        type V = __m512;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_halves(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum(a: __m512) -> f32 {
            _mm512_reduce_add_ps(a)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, a: __m512) {
            _mm512_storeu_ps(p, a)
        }
    }

    /// 8 lanes of a 256-bit register.
    pub struct Avx2;

    impl Lanes for Avx2 {
        type V = __m256;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_halves(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum(a: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, a: __m256) {
            _mm256_storeu_ps(p, a)
        }
    }
}
