//! Integer mat-vec for decoding: activations quantized to 8 bits per block of 32 (as
//! llama.cpp's Q8_1) and multiplied with Q4_0, Q4_1 and Q8_0 weights by integer dot
//! products (AVX-512 VNNI or AVX-VNNI `vpdpbusd`, AVX2 `vpmaddubsw`), the weights' rows
//! interleaved eight at a time at load ([`Interleaved`]) so that one instruction serves
//! 32 weights of eight rows and scales are applied once per block for eight rows.
//!
//! The f32 kernels of [`crate::quant`] spend their time widening every 4-bit code to an
//! f32 lane and summing each row horizontally; here 32 codes meet 32 activation bytes in
//! one instruction. The price is the activations' rounding (a relative error of about
//! 0.4% per block), the trade llama.cpp makes; [`DecodeActivations::F32`] keeps the exact
//! f32 kernels.

use half::f16;
use rayon::prelude::*;

/// Values per block of the formats served here and of the quantized activations.
pub const BLOCK: usize = 32;

pub use longctx_kv::DecodeActivations;

/// One input vector quantized per block of 32: `x ≈ scale·q`, and each block's `scale·Σq`
/// (what the weight formats with an offset multiply it by). Buffers are reused between calls.
#[derive(Default)]
pub struct Q8Activations {
    codes: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl Q8Activations {
    /// Quantize `x` (a whole number of blocks) into these buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(BLOCK));
        let blocks = x.len() / BLOCK;
        self.codes.resize(x.len(), 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0.0);
        for (b, (xs, codes)) in x
            .chunks_exact(BLOCK)
            .zip(self.codes.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (c, v) in codes.iter_mut().zip(xs) {
                *c = (v * inverse).round() as i8;
                sum += *c as i32;
            }
            self.scales[b] = scale;
            self.sums[b] = scale * sum as f32;
        }
    }
}

/// Weight formats with an integer kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntFormat {
    /// d: f16, 16 bytes of nibbles; value = d·(q − 8).
    Q4_0,
    /// d: f16, m: f16, 16 bytes of nibbles; value = d·q + m.
    Q4_1,
    /// d: f16, 32 signed bytes; value = d·q.
    Q8_0,
}

impl IntFormat {
    /// f16 fields before the codes in a GGUF block, and bytes of codes.
    fn block_layout(self) -> (usize, usize) {
        match self {
            Self::Q4_0 => (1, 16),
            Self::Q4_1 => (2, 16),
            Self::Q8_0 => (1, 32),
        }
    }

    /// Bytes of one block of [`ROWS`] interleaved rows.
    fn group_block_bytes(self) -> usize {
        let (fields, codes) = self.block_layout();
        ROWS * (2 * fields + codes)
    }

    /// Every group kernel this CPU can run for the format, fastest first, the portable one
    /// last.
    fn kernels(self) -> Vec<GroupFn> {
        let mut kernels: Vec<GroupFn> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            // SAFETY (all closures below): each is listed only when the CPU has its features.
            if has!("avx512vnni") && has!("avx512vl") && has!("avx2") && has!("f16c") {
                kernels.push(match self {
                    Self::Q4_0 => |g, a, o| unsafe { x86::vnni512::group_q4::<false>(g, a, o) },
                    Self::Q4_1 => |g, a, o| unsafe { x86::vnni512::group_q4::<true>(g, a, o) },
                    Self::Q8_0 => |g, a, o| unsafe { x86::vnni512::group_q8_0(g, a, o) },
                });
            }
            if has!("avxvnni") && has!("avx2") && has!("f16c") {
                kernels.push(match self {
                    Self::Q4_0 => |g, a, o| unsafe { x86::vnni256::group_q4::<false>(g, a, o) },
                    Self::Q4_1 => |g, a, o| unsafe { x86::vnni256::group_q4::<true>(g, a, o) },
                    Self::Q8_0 => |g, a, o| unsafe { x86::vnni256::group_q8_0(g, a, o) },
                });
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                kernels.push(match self {
                    Self::Q4_0 => |g, a, o| unsafe { x86::avx2::group_q4::<false>(g, a, o) },
                    Self::Q4_1 => |g, a, o| unsafe { x86::avx2::group_q4::<true>(g, a, o) },
                    Self::Q8_0 => |g, a, o| unsafe { x86::avx2::group_q8_0(g, a, o) },
                });
            }
        }
        kernels.push(match self {
            Self::Q4_0 => group_q4::<false>,
            Self::Q4_1 => group_q4::<true>,
            Self::Q8_0 => group_q8_0,
        });
        kernels
    }
}

/// Rows interleaved per group: one 32-bit lane of a 256-bit register per row.
pub const ROWS: usize = 8;

/// Eight rows' dot products with the activations, from one group's interleaved blocks.
type GroupFn = fn(&[u8], &Q8Activations, &mut [f32; ROWS]);

/// Output rows computed per parallel task (whole groups).
const ROWS_PER_TASK: usize = 2 * ROWS;

/// A `[rows, cols]` Q4_0, Q4_1 or Q8_0 matrix with its rows interleaved eight at a time, so
/// that one integer dot-product instruction serves four columns of eight rows, against one
/// broadcast word of activations, and the eight rows' scales are one vector load.
///
/// For each group of eight rows and each block of 32 columns: the eight rows' `d` (f16),
/// then their `m` (Q4_1), then the codes in 4-byte words, word `k` of rows 0..8, for each
/// `k`. A Q4 word holds columns `4k..4k+4` in its low nibbles and `16+4k..` in its high
/// ones (GGUF's order within a block). Rows past the last are zero.
pub struct Interleaved {
    format: IntFormat,
    kernel: GroupFn,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Interleaved {
    /// Interleave a matrix from GGUF's row-major blocks (`data` holds `rows × cols / 32`
    /// blocks of `format`, checked by the caller).
    pub fn new(format: IntFormat, rows: usize, cols: usize, data: &[u8]) -> Self {
        Self::with_kernel(format, rows, cols, data, format.kernels()[0])
    }

    fn with_kernel(
        format: IntFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
        kernel: GroupFn,
    ) -> Self {
        let (fields, codes) = format.block_layout();
        let block_bytes = 2 * fields + codes;
        let blocks = cols / BLOCK;
        let groups = rows.div_ceil(ROWS);
        let mut out = vec![0u8; groups * blocks * format.group_block_bytes()];
        let mut at = 0;
        for g in 0..groups {
            for b in 0..blocks {
                // The GGUF block of row `r` of this group, if the row exists.
                let block = |r: usize| {
                    let row = g * ROWS + r;
                    (row < rows).then(|| {
                        let start = (row * blocks + b) * block_bytes;
                        &data[start..start + block_bytes]
                    })
                };
                for field in 0..fields {
                    for r in 0..ROWS {
                        if let Some(src) = block(r) {
                            out[at..at + 2].copy_from_slice(&src[2 * field..2 * field + 2]);
                        }
                        at += 2;
                    }
                }
                for word in 0..codes / 4 {
                    for r in 0..ROWS {
                        if let Some(src) = block(r) {
                            let from = 2 * fields + 4 * word;
                            out[at..at + 4].copy_from_slice(&src[from..from + 4]);
                        }
                        at += 4;
                    }
                }
            }
        }
        Self {
            format,
            kernel,
            rows,
            cols,
            data: out,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Row `r`'s blocks as GGUF lays them out, into `out` (one row's bytes).
    pub fn gguf_row(&self, r: usize, out: &mut [u8]) {
        let (fields, codes) = self.format.block_layout();
        let block_bytes = 2 * fields + codes;
        let group_block = self.format.group_block_bytes();
        let blocks = self.cols / BLOCK;
        let (g, lane) = (r / ROWS, r % ROWS);
        for (b, block) in out.chunks_exact_mut(block_bytes).enumerate() {
            let src = &self.data[(g * blocks + b) * group_block..][..group_block];
            for field in 0..fields {
                let at = 2 * (field * ROWS + lane);
                block[2 * field..2 * field + 2].copy_from_slice(&src[at..at + 2]);
            }
            for word in 0..codes / 4 {
                let at = 2 * fields * ROWS + 4 * (word * ROWS + lane);
                let to = 2 * fields + 4 * word;
                block[to..to + 4].copy_from_slice(&src[at..at + 4]);
            }
        }
    }

    /// `out = W x`, with `x` quantized to 8 bits per block first.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!((x.len(), out.len()), (self.cols, self.rows));
        QUANTIZED_INPUT.with(|cell| match cell.try_borrow_mut() {
            Ok(mut a) => self.matvec_quantized(x, &mut a, out),
            // A mat-vec nested in one on this thread (a stolen task) gets its own buffers.
            Err(_) => self.matvec_quantized(x, &mut Q8Activations::default(), out),
        })
    }

    fn matvec_quantized(&self, x: &[f32], a: &mut Q8Activations, out: &mut [f32]) {
        a.quantize(x);
        let a = &*a;
        let group_bytes = self.data.len() / self.rows.div_ceil(ROWS);
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, rows) in chunk.chunks_mut(ROWS).enumerate() {
                    let g = task * ROWS_PER_TASK / ROWS + i;
                    let mut sums = [0f32; ROWS];
                    (self.kernel)(
                        &self.data[g * group_bytes..(g + 1) * group_bytes],
                        a,
                        &mut sums,
                    );
                    rows.copy_from_slice(&sums[..rows.len()]);
                }
            });
    }
}

thread_local! {
    /// The caller's quantized input, kept between mat-vecs so decoding allocates nothing.
    static QUANTIZED_INPUT: std::cell::RefCell<Q8Activations> = Default::default();
}

#[inline(always)]
fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// The activation codes `4w..4w+4` of word `w`.
#[inline(always)]
fn word(a: &Q8Activations, w: usize) -> &[i8] {
    &a.codes[4 * w..4 * w + 4]
}

/// Portable Q4_0 (`OFFSET = false`) or Q4_1 (`OFFSET = true`) group: per block and row
/// `d·dx·Σ(q·qx) + m·dx·Σqx`, with Q4_0's `m = −8d`.
fn group_q4<const OFFSET: bool>(group: &[u8], a: &Q8Activations, out: &mut [f32; ROWS]) {
    let fields = if OFFSET { 2 } else { 1 };
    let block_bytes = ROWS * (2 * fields + 16);
    *out = [0.0; ROWS];
    for (b, block) in group.chunks_exact(block_bytes).enumerate() {
        let codes = &block[2 * fields * ROWS..];
        for (r, o) in out.iter_mut().enumerate() {
            let d = half(&block[2 * r..]);
            let m = if OFFSET {
                half(&block[2 * (ROWS + r)..])
            } else {
                -8.0 * d
            };
            let mut dot = 0i32;
            for k in 0..4 {
                let w = &codes[4 * (k * ROWS + r)..][..4];
                let (lo, hi) = (word(a, 8 * b + k), word(a, 8 * b + 4 + k));
                for j in 0..4 {
                    dot += (w[j] & 0x0f) as i32 * lo[j] as i32 + (w[j] >> 4) as i32 * hi[j] as i32;
                }
            }
            *o += d * a.scales[b] * dot as f32 + m * a.sums[b];
        }
    }
}

/// Portable Q8_0 group: per block and row `d·dx·Σ(q·qx)`.
fn group_q8_0(group: &[u8], a: &Q8Activations, out: &mut [f32; ROWS]) {
    let block_bytes = ROWS * 34;
    *out = [0.0; ROWS];
    for (b, block) in group.chunks_exact(block_bytes).enumerate() {
        let codes = &block[2 * ROWS..];
        for (r, o) in out.iter_mut().enumerate() {
            let mut dot = 0i32;
            for k in 0..8 {
                let w = &codes[4 * (k * ROWS + r)..][..4];
                for (q, x) in w.iter().zip(word(a, 8 * b + k)) {
                    dot += *q as i8 as i32 * *x as i32;
                }
            }
            *o += half(&block[2 * r..]) * a.scales[b] * dot as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! One kernel body per format, compiled three times: the instruction sets differ only in
    //! how 32 unsigned bytes meet 32 signed bytes, added to eight 32-bit sums of four
    //! products each. The bodies are expanded by a macro, not passed a closure: a closure is
    //! not inlined into a `target_feature` frame, which costs more than the arithmetic.

    /// The Q4_0/Q4_1 and Q8_0 group kernels for one instruction set; `$features` are its
    /// target features and `$dot(sums, u8s, i8s)` its byte dot product.
    macro_rules! kernels {
        ($features:literal, $dot:path) => {
            use super::super::{Q8Activations, ROWS};
            use std::arch::x86_64::*;

            /// Eight f16 at `p` as f32 lanes.
            #[target_feature(enable = $features)]
            unsafe fn halves(p: *const u8) -> __m256 {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            }

            /// Activation word `w` (four codes) in every lane.
            #[target_feature(enable = $features)]
            unsafe fn word(a: &Q8Activations, w: usize) -> __m256i {
                _mm256_set1_epi32((a.codes.as_ptr().add(4 * w) as *const i32).read_unaligned())
            }

            /// Q4_0 (`OFFSET = false`) or Q4_1 (`OFFSET = true`).
            ///
            /// # Safety
            /// The CPU has `$features`; `group` holds `a`'s number of blocks of one group.
            #[target_feature(enable = $features)]
            pub unsafe fn group_q4<const OFFSET: bool>(
                group: &[u8],
                a: &Q8Activations,
                out: &mut [f32; ROWS],
            ) {
                let fields = if OFFSET { 2 } else { 1 };
                let block_bytes = ROWS * (2 * fields + 16);
                let blocks = a.scales.len();
                debug_assert_eq!(group.len(), blocks * block_bytes);
                let mask = _mm256_set1_epi8(0x0f);
                let (mut scaled, mut offsets) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for b in 0..blocks {
                    let p = group.as_ptr().add(b * block_bytes);
                    let codes = p.add(2 * fields * ROWS);
                    // Two chains of integer sums: low and high nibbles.
                    let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for k in 0..4 {
                        let w = _mm256_loadu_si256(codes.add(32 * k) as *const __m256i);
                        lo = $dot(lo, _mm256_and_si256(w, mask), word(a, 8 * b + k));
                        hi = $dot(
                            hi,
                            _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
                            word(a, 8 * b + 4 + k),
                        );
                    }
                    let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi));
                    let dx = _mm256_set1_ps(*a.scales.get_unchecked(b));
                    let sum = _mm256_set1_ps(*a.sums.get_unchecked(b));
                    let d = halves(p);
                    scaled = _mm256_fmadd_ps(d, _mm256_mul_ps(dot, dx), scaled);
                    let m = if OFFSET {
                        halves(p.add(2 * ROWS))
                    } else {
                        _mm256_mul_ps(d, _mm256_set1_ps(-8.0))
                    };
                    offsets = _mm256_fmadd_ps(m, sum, offsets);
                }
                _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(scaled, offsets));
            }

            /// Q8_0: the weights' signs move onto the activations, so that the unsigned
            /// operand is `|w|`.
            ///
            /// # Safety
            /// The CPU has `$features`; `group` holds `a`'s number of blocks of one group.
            #[target_feature(enable = $features)]
            pub unsafe fn group_q8_0(group: &[u8], a: &Q8Activations, out: &mut [f32; ROWS]) {
                let block_bytes = ROWS * 34;
                let blocks = a.scales.len();
                debug_assert_eq!(group.len(), blocks * block_bytes);
                let mut acc = _mm256_setzero_ps();
                for b in 0..blocks {
                    let p = group.as_ptr().add(b * block_bytes);
                    let codes = p.add(2 * ROWS);
                    let mut sums = [_mm256_setzero_si256(); 2];
                    for k in 0..8 {
                        let w = _mm256_loadu_si256(codes.add(32 * k) as *const __m256i);
                        let x = _mm256_sign_epi8(word(a, 8 * b + k), w);
                        sums[k & 1] = $dot(sums[k & 1], _mm256_abs_epi8(w), x);
                    }
                    let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(sums[0], sums[1]));
                    let dx = _mm256_set1_ps(*a.scales.get_unchecked(b));
                    acc = _mm256_fmadd_ps(halves(p), _mm256_mul_ps(dot, dx), acc);
                }
                _mm256_storeu_ps(out.as_mut_ptr(), acc);
            }
        };
    }

    /// AVX-512 VNNI on 256-bit registers.
    pub mod vnni512 {
        kernels!("avx512vnni,avx512vl,avx512f,avx2,fma,f16c", self::dot_bytes);

        #[target_feature(enable = "avx512vnni,avx512vl,avx512f,avx2,fma,f16c")]
        unsafe fn dot_bytes(sums: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(sums, u, s)
        }
    }

    /// AVX-VNNI (the VEX-encoded `vpdpbusd` of CPUs without AVX-512).
    pub mod vnni256 {
        kernels!("avxvnni,avx2,fma,f16c", self::dot_bytes);

        #[target_feature(enable = "avxvnni,avx2,fma,f16c")]
        unsafe fn dot_bytes(sums: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(sums, u, s)
        }
    }

    /// AVX2: pairs of byte products summed to 16 bits (no overflow: |w| ≤ 128, |x| ≤ 127),
    /// then to 32.
    pub mod avx2 {
        kernels!("avx2,fma,f16c", self::dot_bytes);

        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn dot_bytes(sums: __m256i, u: __m256i, s: __m256i) -> __m256i {
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn random(len: usize, std: f32) -> Vec<f32> {
        Tensor::randn(0f32, std, (len,), &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    /// Each format's group kernels against the dequantized weights times the exact
    /// activations (within the activations' rounding), and every SIMD kernel against the
    /// portable one, on row counts that leave a partial group and odd block counts.
    #[test]
    fn integer_kernels_match_dequantized_products_and_each_other() {
        for (format, dtype) in [
            (IntFormat::Q4_0, GgmlDType::Q4_0),
            (IntFormat::Q4_1, GgmlDType::Q4_1),
            (IntFormat::Q8_0, GgmlDType::Q8_0),
        ] {
            for (rows, cols) in [(8, 32), (13, 96), (21, 576)] {
                let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let raw = q.data().unwrap().to_vec();
                let dense: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
                let x = random(cols, 3.0);
                let kernels = format.kernels();
                let portable = {
                    let m = Interleaved::with_kernel(
                        format,
                        rows,
                        cols,
                        &raw,
                        *kernels.last().unwrap(),
                    );
                    let mut out = vec![0f32; rows];
                    m.matvec(&x, &mut out);
                    out
                };
                for (r, weights) in dense.iter().enumerate() {
                    let exact: f32 = weights.iter().zip(&x).map(|(w, x)| w * x).sum();
                    let magnitude: f32 = weights.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
                    assert!(
                        (portable[r] - exact).abs() <= 0.01 * magnitude,
                        "{format:?} {rows}x{cols} row {r}: {} vs exact {exact}",
                        portable[r]
                    );
                }
                for (k, kernel) in kernels.into_iter().enumerate() {
                    let m = Interleaved::with_kernel(format, rows, cols, &raw, kernel);
                    let mut got = vec![0f32; rows];
                    m.matvec(&x, &mut got);
                    for (r, (g, p)) in got.iter().zip(&portable).enumerate() {
                        assert!(
                            (g - p).abs() <= 1e-4 * (1.0 + p.abs()),
                            "{format:?} kernel {k} {rows}x{cols} row {r}: {g} vs portable {p}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn interleaving_keeps_every_row_recoverable() {
        for (format, block_bytes) in [
            (IntFormat::Q4_0, 18),
            (IntFormat::Q4_1, 20),
            (IntFormat::Q8_0, 34),
        ] {
            let (rows, cols) = (13, 64);
            let row_bytes = cols / BLOCK * block_bytes;
            let data: Vec<u8> = (0..rows * row_bytes)
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            let m = Interleaved::new(format, rows, cols, &data);
            for r in 0..rows {
                let mut row = vec![0u8; row_bytes];
                m.gguf_row(r, &mut row);
                assert_eq!(
                    row,
                    data[r * row_bytes..(r + 1) * row_bytes],
                    "{format:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn quantized_activations_round_within_half_a_step() {
        let mut x = random(64, 1.0);
        x[32..].fill(0.0); // an all-zero block has scale 0 and codes 0
        let mut a = Q8Activations::default();
        a.quantize(&x);
        for (b, xs) in x.chunks_exact(BLOCK).enumerate() {
            let scale = a.scales[b];
            for (j, v) in xs.iter().enumerate() {
                let back = scale * a.codes[b * BLOCK + j] as f32;
                assert!((back - v).abs() <= 0.5 * scale + 1e-7, "{v} → {back}");
            }
            let sum: f32 = (0..BLOCK).map(|j| a.codes[b * BLOCK + j] as f32).sum();
            assert!((a.sums[b] - scale * sum).abs() < 1e-5);
        }
        assert_eq!(a.scales[1], 0.0);
        assert!(a.codes[32..].iter().all(|&c| c == 0));
    }

    #[test]
    fn decode_activations_parse_and_name() {
        for mode in [DecodeActivations::Int8, DecodeActivations::F32] {
            assert_eq!(mode.name().parse::<DecodeActivations>().unwrap(), mode);
        }
        let err = "q4".parse::<DecodeActivations>().unwrap_err();
        assert!(err.contains("int8") && err.contains("f32"), "{err}");
    }
}
