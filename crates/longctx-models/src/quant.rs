//! Mat-vec products straight from GGUF's quantized blocks, for decoding.
//!
//! Decoding one token reads every weight once: reading 4.5-bit blocks instead of f32 is
//! what makes it fast. Q4_0, Q4_1 and Q8_0 meet 8-bit activations in integer dot products
//! ([`crate::q8`], as llama.cpp) unless [`DecodeActivations::F32`] is chosen. Otherwise each
//! block is dequantized in registers (or a stack buffer) and multiplied with the f32
//! activations: Q4_1 and Q8_0 have hand-written AVX-512 and AVX2 kernels, the other formats
//! ([`crate::blocks`]) one loop compiled for each instruction set. Kernels are chosen at
//! run time from what the CPU has. F32 and the activation formats (Q8_1, Q8_K) are served
//! by the dense f32 path.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use crate::blocks::{self, BlockFormat};
use crate::q8::{DecodeActivations, IntFormat, Interleaved};

/// Elements per block of Q4_1 and Q8_0, and per entry of the activation sums.
const BLOCK: usize = 32;

/// Block layouts with a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// d: f16, m: f16, 16 bytes of nibbles; value = d·q + m (q in 0..16).
    Q4_1,
    /// d: f16, 32 signed bytes; value = d·q.
    Q8_0,
    /// [`blocks::Q4_0`].
    Q4_0,
    /// [`blocks::Q5_0`].
    Q5_0,
    /// [`blocks::Q5_1`].
    Q5_1,
    /// [`blocks::Q2K`].
    Q2K,
    /// [`blocks::Q3K`].
    Q3K,
    /// [`blocks::Q4K`].
    Q4K,
    /// [`blocks::Q5K`].
    Q5K,
    /// [`blocks::Q6K`].
    Q6K,
    /// [`blocks::F16`].
    F16,
    /// [`blocks::Bf16`].
    Bf16,
}

impl QuantKind {
    /// The kind for a GGUF storage type, if a kernel exists.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::Bf16,
            GgmlDType::F32 | GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
        })
    }

    /// Values and bytes per block.
    fn block(self) -> (usize, usize) {
        fn of<F: BlockFormat>() -> (usize, usize) {
            (F::ELEMS, F::BYTES)
        }
        match self {
            Self::Q4_1 => of::<blocks::Q4_1>(),
            Self::Q8_0 => of::<blocks::Q8_0>(),
            Self::Q4_0 => of::<blocks::Q4_0>(),
            Self::Q5_0 => of::<blocks::Q5_0>(),
            Self::Q5_1 => of::<blocks::Q5_1>(),
            Self::Q2K => of::<blocks::Q2K>(),
            Self::Q3K => of::<blocks::Q3K>(),
            Self::Q4K => of::<blocks::Q4K>(),
            Self::Q5K => of::<blocks::Q5K>(),
            Self::Q6K => of::<blocks::Q6K>(),
            Self::F16 => of::<blocks::F16>(),
            Self::Bf16 => of::<blocks::Bf16>(),
        }
    }

    /// Bytes of one row of `cols` values, if `cols` is a whole number of blocks.
    fn row_bytes(self, cols: usize) -> Option<usize> {
        let (elems, bytes) = self.block();
        cols.is_multiple_of(elems).then(|| cols / elems * bytes)
    }
}

/// A `[rows, cols]` matrix of quantized blocks.
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    row_bytes: usize,
    row_dequantizer: DequantizeFn,
    layout: Layout,
}

/// How the blocks are held, which decides the kernel.
enum Layout {
    /// GGUF's rows, multiplied with f32 activations.
    Rows { dot: DotFn, data: Vec<u8> },
    /// Rows interleaved for integer dot products with 8-bit activations.
    Interleaved(Interleaved),
}

/// Output rows computed per parallel task.
const ROWS_PER_TASK: usize = 16;

impl QuantMatrix {
    /// Wrap raw GGUF block bytes; `None` when the shape does not fit whole blocks.
    /// `activations` chooses the integer kernels where the format has them.
    pub fn new(
        kind: QuantKind,
        rows: usize,
        cols: usize,
        data: &[u8],
        activations: DecodeActivations,
    ) -> Option<Self> {
        let row_bytes = kind.row_bytes(cols)?;
        // The activation sums are per 32 values.
        if !cols.is_multiple_of(BLOCK) || data.len() != rows * row_bytes {
            return None;
        }
        let int_format = match kind {
            QuantKind::Q4_0 => Some(IntFormat::Q4_0),
            QuantKind::Q4_1 => Some(IntFormat::Q4_1),
            QuantKind::Q8_0 => Some(IntFormat::Q8_0),
            _ => None,
        };
        let layout = match int_format.filter(|_| activations == DecodeActivations::Int8) {
            Some(format) => Layout::Interleaved(Interleaved::new(format, rows, cols, data)),
            None => Layout::Rows {
                dot: available_kernels(kind)[0],
                data: data.to_vec(),
            },
        };
        Some(Self {
            rows,
            cols,
            row_bytes,
            row_dequantizer: dequantizer(kind),
            layout,
        })
    }

    /// Rows `first..first + out.len() / cols` dequantized into `out`, split across the
    /// thread pool: prefill's GEMMs read these instead of a dense copy held for the run.
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let cols = self.cols;
        assert!(out.len().is_multiple_of(cols) && first + out.len() / cols <= self.rows);
        out.par_chunks_mut(cols * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, values)| {
                let mut scratch = Vec::new();
                for (i, row) in values.chunks_exact_mut(cols).enumerate() {
                    self.dequantize_row(first + task * ROWS_PER_TASK + i, row, &mut scratch);
                }
            });
    }

    /// Row `r` dequantized into `out` (`cols` long), on this thread; `scratch` holds an
    /// interleaved row's blocks in GGUF's layout on the way.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32], scratch: &mut Vec<u8>) {
        let blocks = match &self.layout {
            Layout::Rows { data, .. } => &data[r * self.row_bytes..(r + 1) * self.row_bytes],
            Layout::Interleaved(m) => {
                scratch.resize(self.row_bytes, 0);
                m.gguf_row(r, scratch);
                scratch
            }
        };
        (self.row_dequantizer)(blocks, out);
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.layout {
            Layout::Rows { data, .. } => data.len(),
            Layout::Interleaved(m) => m.bytes(),
        }
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `out = W x` for one input vector `x` of length `cols`.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "input length");
        assert_eq!(out.len(), self.rows, "output length");
        let row_bytes = self.row_bytes;
        let (dot, data) = match &self.layout {
            Layout::Interleaved(m) => return m.matvec(x, out),
            Layout::Rows { dot, data } => (dot, data),
        };
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, o) in chunk.iter_mut().enumerate() {
                    let r = task * ROWS_PER_TASK + i;
                    *o = dot(&data[r * row_bytes..(r + 1) * row_bytes], x, &sums);
                }
            });
    }
}

type DotFn = fn(&[u8], &[f32], &[f32]) -> f32;

/// [`blocks::dot`] for one format, compiled for AVX-512, for AVX2 and portably; the ones
/// this CPU can run, fastest first.
macro_rules! compiled_kernels {
    ($format:ty) => {{
        let mut kernels: Vec<DotFn> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn avx512(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
                blocks::dot::<$format>(row, x)
            }
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
                blocks::dot::<$format>(row, x)
            }
            // SAFETY (both closures): each is only listed when the CPU has its features.
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("f16c") {
                kernels.push(|r, x, s| unsafe { avx512(r, x, s) });
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                kernels.push(|r, x, s| unsafe { avx2(r, x, s) });
            }
        }
        kernels.push(|r, x, _s| blocks::dot::<$format>(r, x));
        kernels
    }};
}
/// Every dot-product kernel this CPU can run for `kind`, fastest first (the portable one last).
fn available_kernels(kind: QuantKind) -> Vec<DotFn> {
    match kind {
        QuantKind::Q4_1 | QuantKind::Q8_0 => hand_written_kernels(kind),
        QuantKind::Q4_0 => compiled_kernels!(blocks::Q4_0),
        QuantKind::Q5_0 => compiled_kernels!(blocks::Q5_0),
        QuantKind::Q5_1 => compiled_kernels!(blocks::Q5_1),
        QuantKind::Q2K => compiled_kernels!(blocks::Q2K),
        QuantKind::Q3K => compiled_kernels!(blocks::Q3K),
        QuantKind::Q4K => compiled_kernels!(blocks::Q4K),
        QuantKind::Q5K => compiled_kernels!(blocks::Q5K),
        QuantKind::Q6K => compiled_kernels!(blocks::Q6K),
        QuantKind::F16 => compiled_kernels!(blocks::F16),
        QuantKind::Bf16 => compiled_kernels!(blocks::Bf16),
    }
}

/// Dequantizes a row of `kind`'s blocks.
type DequantizeFn = fn(&[u8], &mut [f32]);

/// The row dequantizer of `kind`.
fn dequantizer(kind: QuantKind) -> DequantizeFn {
    use blocks::dequantize_row as row;
    match kind {
        QuantKind::Q4_1 => row::<blocks::Q4_1>,
        QuantKind::Q8_0 => row::<blocks::Q8_0>,
        QuantKind::Q4_0 => row::<blocks::Q4_0>,
        QuantKind::Q5_0 => row::<blocks::Q5_0>,
        QuantKind::Q5_1 => row::<blocks::Q5_1>,
        QuantKind::Q2K => row::<blocks::Q2K>,
        QuantKind::Q3K => row::<blocks::Q3K>,
        QuantKind::Q4K => row::<blocks::Q4K>,
        QuantKind::Q5K => row::<blocks::Q5K>,
        QuantKind::Q6K => row::<blocks::Q6K>,
        QuantKind::F16 => row::<blocks::F16>,
        QuantKind::Bf16 => row::<blocks::Bf16>,
    }
}

/// The kernels of Q4_1 and Q8_0, written with intrinsics, fastest first.
fn hand_written_kernels(kind: QuantKind) -> Vec<DotFn> {
    let mut kernels: Vec<DotFn> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // SAFETY (all closures below): each is only listed when the CPU has its features.
        if has!("avx512f") && has!("f16c") {
            kernels.push(match kind {
                QuantKind::Q4_1 => |r, x, s| unsafe { x86::dot_q4_1_avx512(r, x, s) },
                _ => |r, x, s| unsafe { x86::dot_q8_0_avx512(r, x, s) },
            });
        }
        if has!("avx2") && has!("fma") && has!("f16c") {
            kernels.push(match kind {
                QuantKind::Q4_1 => |r, x, s| unsafe { x86::dot_q4_1(r, x, s) },
                _ => |r, x, s| unsafe { x86::dot_q8_0(r, x, s) },
            });
        }
    }
    kernels.push(match kind {
        QuantKind::Q4_1 => dot_q4_1,
        _ => dot_q8_0,
    });
    kernels
}

#[inline(always)]
fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Σ over blocks of d·Σ(q·x) + m·Σx.
#[inline(always)]
fn dot_q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut total = 0f32;
    for ((block, xs), s) in row.chunks_exact(20).zip(x.chunks_exact(BLOCK)).zip(sums) {
        let (d, m) = (half(&block[0..2]), half(&block[2..4]));
        let qs = &block[4..20];
        let mut acc = [0f32; 16];
        for j in 0..16 {
            acc[j] = (qs[j] & 0x0f) as f32 * xs[j] + (qs[j] >> 4) as f32 * xs[j + 16];
        }
        total += d * acc.iter().sum::<f32>() + m * s;
    }
    total
}

/// Σ over blocks of d·Σ(q·x).
#[inline(always)]
fn dot_q8_0(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
    let mut total = 0f32;
    for (block, xs) in row.chunks_exact(34).zip(x.chunks_exact(BLOCK)) {
        let d = half(&block[0..2]);
        let mut acc = [0f32; 32];
        for j in 0..32 {
            acc[j] = (block[2 + j] as i8) as f32 * xs[j];
        }
        total += d * acc.iter().sum::<f32>();
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 + FMA kernels: each block's integers widened to f32 lanes and fused-multiplied
    //! with the activations; one horizontal sum per row.
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// An f16 stored little-endian at `p`, converted in registers (F16C), so no call spills
    /// the accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// 8 unsigned bytes at the low end of `v`, as f32 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// AVX-512 variant of [`dot_q4_1`]: 16 lanes, half the instructions per block.
    ///
    /// # Safety
    /// Needs AVX-512F and F16C; `row` holds `x.len() / 32` Q4_1 blocks and `sums` one sum per block.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dot_q4_1_avx512(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        let mask = _mm_set1_epi8(0x0f);
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut offsets = 0f32;
        for (b, block) in row.chunks_exact(20).enumerate() {
            let d = _mm512_set1_ps(half(block.as_ptr()));
            let m = half(block.as_ptr().add(2));
            let qs = _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, mask)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                _mm_srli_epi16(qs, 4),
                mask,
            )));
            let xp = x.as_ptr().add(b * 32);
            acc0 = _mm512_fmadd_ps(_mm512_mul_ps(d, lo), _mm512_loadu_ps(xp), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_mul_ps(d, hi), _mm512_loadu_ps(xp.add(16)), acc1);
            offsets += m * sums[b];
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + offsets
    }

    /// AVX-512 variant of [`dot_q8_0`].
    ///
    /// # Safety
    /// Needs AVX-512F and F16C; `row` holds `x.len() / 32` Q8_0 blocks.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dot_q8_0_avx512(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for (b, block) in row.chunks_exact(34).enumerate() {
            let d = _mm512_set1_ps(half(block.as_ptr()));
            let q = block.as_ptr().add(2);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                q.add(16) as *const __m128i
            )));
            let xp = x.as_ptr().add(b * 32);
            acc0 = _mm512_fmadd_ps(_mm512_mul_ps(d, lo), _mm512_loadu_ps(xp), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_mul_ps(d, hi), _mm512_loadu_ps(xp.add(16)), acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `row` holds `x.len() / 32` Q4_1 blocks and `sums` one sum per block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        let mask = _mm_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (b, block) in row.chunks_exact(20).enumerate() {
            let d = half(block.as_ptr());
            let m = half(block.as_ptr().add(2));
            let qs = _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i);
            let lo = _mm_and_si128(qs, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
            let xp = x.as_ptr().add(b * 32);
            let mut s = _mm256_mul_ps(u8x8(lo), _mm256_loadu_ps(xp));
            s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xp.add(8)), s);
            s = _mm256_fmadd_ps(u8x8(hi), _mm256_loadu_ps(xp.add(16)), s);
            s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xp.add(24)), s);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
            offsets += m * sums[b];
        }
        hsum(acc) + offsets
    }

    /// # Safety
    /// Needs AVX2, FMA and F16C; `row` holds `x.len() / 32` Q8_0 blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, block) in row.chunks_exact(34).enumerate() {
            let d = half(block.as_ptr());
            let q = block.as_ptr().add(2);
            let xp = x.as_ptr().add(b * 32);
            let mut s = _mm256_setzero_ps();
            for k in 0..4 {
                let bytes = _mm_loadl_epi64(q.add(8 * k) as *const __m128i);
                let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                s = _mm256_fmadd_ps(f, _mm256_loadu_ps(xp.add(8 * k)), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    use candle_core::{Device, Tensor};

    fn check(kind: QuantKind, dtype: GgmlDType) {
        let (rows, cols) = (37, 512);
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&w, dtype).unwrap();
        let raw = q.data().unwrap().to_vec();
        // Round-trip through candle's own GGUF constructor so the layout is the file's.
        let dense = qtensor_from_ggml(dtype, &raw, vec![rows, cols], &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (cols,), &Device::Cpu).unwrap();
        let want: Vec<f32> = dense
            .matmul(&x.unsqueeze(1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let m = QuantMatrix::new(kind, rows, cols, &raw, DecodeActivations::F32).unwrap();
        let mut got = vec![0f32; rows];
        m.matvec(&x.to_vec1().unwrap(), &mut got);
        let close = |g: f32, w: f32| (g - w).abs() < 1e-3 * (1.0 + w.abs());
        assert!(
            got.iter().zip(&want).all(|(g, w)| close(*g, *w)),
            "{kind:?}: {got:?} vs {want:?}"
        );
        // Whole rows dequantized for prefill, from either layout: exactly candle's values.
        let dense_rows: Vec<f32> = dense.flatten_all().unwrap().to_vec1().unwrap();
        for activations in [DecodeActivations::F32, DecodeActivations::Int8] {
            let m = QuantMatrix::new(kind, rows, cols, &raw, activations).unwrap();
            let mut values = vec![0f32; (rows - 3) * cols];
            m.dequantize_rows(3, &mut values);
            assert_eq!(values, dense_rows[3 * cols..], "{kind:?} {activations:?}");
        }
        // With 8-bit activations (integer kernels where the format has them): within the
        // activations' rounding. Each activation is off by at most half its block's step
        // (block maximum / 127 / 2), so row r by at most that times the block's |weights|.
        let m = QuantMatrix::new(kind, rows, cols, &raw, DecodeActivations::Int8).unwrap();
        let xs: Vec<f32> = x.to_vec1().unwrap();
        m.matvec(&xs, &mut got);
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            let weights = &dense_rows[r * cols..(r + 1) * cols];
            let rounding: f32 = xs
                .chunks_exact(BLOCK)
                .zip(weights.chunks_exact(BLOCK))
                .map(|(xb, wb)| {
                    let half_step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0 / 2.0;
                    half_step * wb.iter().map(|v| v.abs()).sum::<f32>()
                })
                .sum();
            let bound = rounding + 1e-3 * (1.0 + w.abs());
            assert!(
                (g - w).abs() <= bound,
                "{kind:?} int8 row {r}: {g} vs {w} (bound {bound})"
            );
        }
        // Every kernel this CPU offers, the portable one included, on every row.
        let sums: Vec<f32> = xs.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        let row_bytes = kind.row_bytes(cols).unwrap();
        for (k, dot) in available_kernels(kind).into_iter().enumerate() {
            for (r, w) in want.iter().enumerate() {
                let g = dot(&raw[r * row_bytes..(r + 1) * row_bytes], &xs, &sums);
                assert!(close(g, *w), "{kind:?} kernel {k}, row {r}: {g} vs {w}");
            }
        }
    }

    /// Every format with a kernel, each kernel against candle's dequantization.
    #[test]
    fn matvec_equals_dequantized_matmul_in_every_format() {
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
            GgmlDType::BF16,
        ] {
            let kind = QuantKind::from_ggml(dtype).unwrap();
            check(kind, dtype);
        }
        for dtype in [GgmlDType::F32, GgmlDType::Q8_1, GgmlDType::Q8K] {
            assert_eq!(QuantKind::from_ggml(dtype), None, "{dtype:?}");
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(
            QuantMatrix::new(QuantKind::Q4_1, 2, 32, &[0u8; 39], DecodeActivations::Int8).is_none()
        );
        assert!(
            QuantMatrix::new(QuantKind::Q4_1, 2, 33, &[0u8; 40], DecodeActivations::Int8).is_none()
        );
        // K-quants need whole super-blocks of 256.
        assert!(
            QuantMatrix::new(QuantKind::Q4K, 1, 128, &[0u8; 72], DecodeActivations::Int8).is_none()
        );
        assert!(
            QuantMatrix::new(QuantKind::Q4K, 1, 256, &[0u8; 144], DecodeActivations::Int8)
                .is_some()
        );
    }
}
