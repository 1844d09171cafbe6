//! FlexGen's KV-cache quantization (Sheng et al., "FlexGen: High-Throughput Generative
//! Inference of Large Language Models with a Single GPU", ICML 2023): every cached key and
//! value row is quantized group-wise along its channels, asymmetric min–max, no residual
//! window. Storage is really packed: `bits`-bit codes plus an f16 minimum and scale per
//! group, so 4-bit groups of 32 hold 20 bytes where 16-bit values hold 64 (3.2×).
//!
//! Two prefill rules, a setting ([`FlexGenPrefill`]):
//! - `quantized`, the benchmark's (`llama_simquant.py`): every key and value is quantized
//!   *before* attention reads it, the prompt's own keys and values in prefill and the new
//!   token's own key and value while decoding, so nothing attended is full precision;
//! - `full`, the original FlexLLMGen: the prompt is attended and held in full precision,
//!   compressed when it ends, and a decoding token attends to its own key and value in full
//!   precision before they are stored.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::cache::{check_chunk, growth_step, Reservation};
use crate::f16_bits_to_f32;
use crate::tiled::{
    exp_nonpositive, lanes_dot, lanes_max, lanes_sum, merge_decode_parts, token_ranges, DecodePart,
    DECODE_SPLIT,
};
use crate::{causal_attention, KvCache, KvError, KvShape, Result, RopeTable};

/// Packed codes and each group's f16 minimum and scale: the storage every packed layout
/// (FlexGen's rows, KIVI's tiles) is made of.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedStore {
    pub codes: Vec<u8>,
    pub mins: Vec<f16>,
    pub scales: Vec<f16>,
}

impl PackedStore {
    /// Reserve room for `codes` more code bytes and `groups` more groups.
    pub fn reserve(&mut self, codes: usize, groups: usize) {
        self.codes.reserve_exact(codes);
        self.mins.reserve_exact(groups);
        self.scales.reserve_exact(groups);
    }

    /// Bytes held by codes, minima and scales (allocated capacity included).
    pub fn bytes(&self) -> usize {
        self.codes.capacity() + 2 * (self.mins.capacity() + self.scales.capacity())
    }

    /// Forget everything, keeping allocations.
    pub fn clear(&mut self) {
        self.codes.clear();
        self.mins.clear();
        self.scales.clear();
    }
}

/// Rows of `width` values quantized in groups, appended one token at a time.
#[derive(Debug, Clone)]
pub struct PackedRows {
    bits: u32,
    group: usize,
    width: usize,
    store: PackedStore,
    rows: usize,
}

impl PackedRows {
    /// Empty storage for rows of `width` values, `group` values per group, `bits` per code.
    pub fn new(bits: u32, group: usize, width: usize) -> Self {
        Self {
            bits,
            group,
            width,
            store: PackedStore::default(),
            rows: 0,
        }
    }

    fn codes_per_row(&self) -> usize {
        self.width * self.bits as usize / 8
    }

    /// Reserve room for `rows` more rows.
    pub fn reserve(&mut self, rows: usize) {
        let groups = rows * self.width / self.group;
        self.store.reserve(rows * self.codes_per_row(), groups);
    }

    /// Quantize and append one row. A constant group gets scale 0 and decodes to its value.
    pub fn push(&mut self, row: &[f32]) {
        if self.store.codes.len() + self.codes_per_row() > self.store.codes.capacity() {
            self.reserve(growth_step(self.rows));
        }
        let per_byte = 8 / self.bits as usize;
        let mut packed = vec![0u8; self.codes_per_row()];
        for (g, values) in row.chunks_exact(self.group).enumerate() {
            let (min, scale) = quantize_group(values, self.bits, |i, code| {
                let at = g * self.group + i;
                packed[at / per_byte] |= code << ((at % per_byte) * self.bits as usize);
            });
            self.store.mins.push(min);
            self.store.scales.push(scale);
        }
        self.store.codes.extend_from_slice(&packed);
        self.rows += 1;
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Every row dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let per_byte = 8 / self.bits as usize;
        let mask = ((1u32 << self.bits) - 1) as u8;
        let groups_per_row = self.width / self.group;
        let mut out = Vec::with_capacity(self.rows * self.width);
        for r in 0..self.rows {
            let codes = &self.store.codes[r * self.codes_per_row()..(r + 1) * self.codes_per_row()];
            for at in 0..self.width {
                let g = r * groups_per_row + at / self.group;
                let code = (codes[at / per_byte] >> ((at % per_byte) * self.bits as usize)) & mask;
                out.push(self.store.mins[g].to_f32() + code as f32 * self.store.scales[g].to_f32());
            }
        }
        out
    }

    /// Codes of row `r`, unpacked into `out` (one value per channel).
    #[inline(always)]
    fn unpack(&self, r: usize, out: &mut [f32]) {
        let bytes = &self.store.codes[r * self.codes_per_row()..(r + 1) * self.codes_per_row()];
        match self.bits {
            8 => out.iter_mut().zip(bytes).for_each(|(o, b)| *o = *b as f32),
            4 => {
                for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
                    pair[0] = (b & 0x0f) as f32;
                    pair[1] = (b >> 4) as f32;
                }
            }
            _ => {
                for (quad, b) in out.chunks_exact_mut(4).zip(bytes) {
                    for (i, o) in quad.iter_mut().enumerate() {
                        *o = ((b >> (2 * i)) & 0x03) as f32;
                    }
                }
            }
        }
    }

    /// Row `r` dequantized into `out` (one row's worth of values). Inlined, so that the
    /// decoding kernels compiled for AVX2 or AVX-512 vectorize it with their instructions.
    #[inline(always)]
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.unpack(r, out);
        let groups = self.width / self.group;
        for (g, values) in out.chunks_exact_mut(self.group).enumerate() {
            let (min, scale) = (
                f16_bits_to_f32(self.store.mins[r * groups + g].to_bits()),
                f16_bits_to_f32(self.store.scales[r * groups + g].to_bits()),
            );
            values.iter_mut().for_each(|v| *v = min + scale * *v);
        }
    }

    /// Bytes held by codes, minima and scales (allocated capacity included).
    pub fn bytes(&self) -> usize {
        self.store.bytes()
    }

    /// Forget every row, keeping allocations.
    pub fn clear(&mut self) {
        self.store.clear();
        self.rows = 0;
    }
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

/// The packing rules every [`PackedRows`] user shares: bits in {2, 4, 8}, and groups that
/// divide the head dimension.
pub(crate) fn check_packing(bits: u32, group: usize, head_dim: usize) -> Result<()> {
    if ![2, 4, 8].contains(&bits) {
        return Err(KvError::Setting(format!("bits={bits} must be 2, 4 or 8")));
    }
    if group == 0 || !head_dim.is_multiple_of(group) {
        return Err(KvError::Setting(format!(
            "group={group} must divide the head dimension {head_dim}"
        )));
    }
    Ok(())
}

/// 16-bit bytes over packed bytes for one group: `bits`-bit codes plus an f16 min and scale.
pub(crate) fn packed_ratio(bits: u32, group: usize) -> f64 {
    (2 * group) as f64 / (group * bits as usize / 8 + 4) as f64
}

/// What attention reads before the cache compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlexGenPrefill {
    /// Everything attended is quantized first (the benchmark's simulated quantization).
    Quantized,
    /// Full-precision prefill and own token, compressed afterwards (FlexLLMGen).
    Full,
}

/// Settings of [`FlexGenCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlexGenSettings {
    /// Bits per code: 2, 4 or 8.
    pub bits: u32,
    /// Channels per quantization group; must divide the head dimension.
    pub group: usize,
    /// The prefill rule.
    pub prefill: FlexGenPrefill,
}

impl FlexGenSettings {
    /// Check the settings against a cache geometry.
    pub fn validate(&self, shape: &KvShape) -> Result<()> {
        check_packing(self.bits, self.group, shape.head_dim)
    }

    /// Full (16-bit) bytes over held bytes for one group: the nominal compression ratio.
    pub fn nominal_ratio(&self) -> f64 {
        packed_ratio(self.bits, self.group)
    }
}

/// One head's packed keys and values, per layer.
struct LayerRows {
    keys: Vec<PackedRows>,
    values: Vec<PackedRows>,
}

/// The FlexGen policy: packed group-wise quantized keys and values.
pub struct FlexGenCache {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    prefill: FlexGenPrefill,
    layers: Vec<LayerRows>,
    /// Under [`FlexGenPrefill::Full`], each layer's prompt keys and values in f32 until the
    /// prompt ends.
    pending: Vec<Option<(Tensor, Tensor)>>,
}

impl FlexGenCache {
    /// A cache for `shape`; the settings are validated here.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        settings: FlexGenSettings,
    ) -> Result<Self> {
        settings.validate(&shape)?;
        let rows = || {
            (0..shape.kv_heads)
                .map(|_| PackedRows::new(settings.bits, settings.group, shape.head_dim))
                .collect()
        };
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            prefill: settings.prefill,
            pending: vec![None; shape.layers],
            layers: (0..shape.layers)
                .map(|_| LayerRows {
                    keys: rows(),
                    values: rows(),
                })
                .collect(),
        })
    }

    fn stored(&self, heads: &[PackedRows]) -> Result<Option<Tensor>> {
        let len = heads[0].rows();
        if len == 0 {
            return Ok(None);
        }
        let data: Vec<f32> = heads.iter().flat_map(|h| h.dequantize()).collect();
        Ok(Some(Tensor::from_vec(
            data,
            (self.shape.kv_heads, len, self.shape.head_dim),
            &self.device,
        )?))
    }
}

/// Rows `t0..t1` of one head's packed keys and values for the head's group of `queries`
/// (`[rows][d]`): each row dequantized once, in registers of the instruction set the caller
/// is compiled for, for every query of the group.
#[inline(always)]
fn decode_part(
    (keys, values): (&PackedRows, &PackedRows),
    queries: &[f32],
    d: usize,
    (t0, t1): (usize, usize),
) -> DecodePart {
    let rows = queries.len() / d;
    let len = t1 - t0;
    let scale = 1.0 / (d as f32).sqrt();
    let mut row = vec![0f32; d];
    let mut scores = vec![0f32; rows * len];
    for r in t0..t1 {
        keys.dequantize_row(r, &mut row);
        for (h, q) in queries.chunks_exact(d).enumerate() {
            scores[h * len + r - t0] = lanes_dot(q, &row) * scale;
        }
    }
    let (mut max, mut sum) = (vec![0f32; rows], vec![0f32; rows]);
    for (h, s) in scores.chunks_exact_mut(len).enumerate() {
        max[h] = lanes_max(s);
        s.iter_mut().for_each(|x| *x = exp_nonpositive(*x - max[h]));
        sum[h] = lanes_sum(s);
    }
    let mut out = vec![0f32; rows * d];
    for r in t0..t1 {
        values.dequantize_row(r, &mut row);
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let w = scores[h * len + r - t0];
            o.iter_mut().zip(&row).for_each(|(o, x)| *o += w * x);
        }
    }
    DecodePart { out, max, sum }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn decode_part_avx512(
    rows: (&PackedRows, &PackedRows),
    queries: &[f32],
    d: usize,
    range: (usize, usize),
) -> DecodePart {
    decode_part(rows, queries, d, range)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_part_avx2(
    rows: (&PackedRows, &PackedRows),
    queries: &[f32],
    d: usize,
    range: (usize, usize),
) -> DecodePart {
    decode_part(rows, queries, d, range)
}

impl FlexGenCache {
    /// One query per head over the packed rows, read in place (no dequantized copy of the
    /// cache): each head's rows split in ranges of [`DECODE_SPLIT`] across threads, each
    /// range's rows dequantized once for the head's whole group of query heads, and the
    /// ranges' softmax parts merged; `own` is the new token's key and value in full
    /// precision, when it is not stored yet (one more part).
    fn decode_step(
        &self,
        layer: usize,
        q: &Tensor,
        own: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        use rayon::prelude::*;
        let (kv_heads, d) = (self.shape.kv_heads, self.shape.head_dim);
        let group = self.shape.q_heads / kv_heads;
        let query: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let own: Option<(Vec<f32>, Vec<f32>)> = match own {
            Some((k, v)) => Some((k.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?)),
            None => None,
        };
        let stored = &self.layers[layer];
        let tasks = token_ranges(stored.keys.iter().map(PackedRows::rows), DECODE_SPLIT);
        let simd = crate::tiled::best();
        let parts: Vec<DecodePart> = tasks
            .par_iter()
            .map(|&(g, t0, t1)| {
                let queries = &query[g * group * d..(g + 1) * group * d];
                let rows = (&stored.keys[g], &stored.values[g]);
                match simd {
                    // SAFETY: `available` lists an instruction set only when the CPU has it.
                    #[cfg(target_arch = "x86_64")]
                    crate::tiled::Simd::Avx512 => unsafe {
                        decode_part_avx512(rows, queries, d, (t0, t1))
                    },
                    #[cfg(target_arch = "x86_64")]
                    crate::tiled::Simd::Avx2 => unsafe {
                        decode_part_avx2(rows, queries, d, (t0, t1))
                    },
                    _ => decode_part(rows, queries, d, (t0, t1)),
                }
            })
            .collect();
        // The own token's part: one key, its value as the unnormalized output.
        let scale = 1.0 / (d as f32).sqrt();
        let own_part = |g: usize, r: usize| {
            let (k, v) = own.as_ref()?;
            let q = &query[(g * group + r) * d..(g * group + r + 1) * d];
            let score = lanes_dot(q, &k[g * d..(g + 1) * d]) * scale;
            Some((score, 1.0, &v[g * d..(g + 1) * d]))
        };
        let mut out = vec![0f32; self.shape.q_heads * d];
        merge_decode_parts(&tasks, &parts, (group, d), &mut out, own_part);
        Ok(Tensor::from_vec(
            out,
            (self.shape.q_heads, 1, d),
            &self.device,
        )?)
    }
}

fn push_rows(heads: &mut [PackedRows], x: &Tensor) -> Result<()> {
    let rows: Vec<Vec<Vec<f32>>> = x.to_vec3()?;
    for (h, head_rows) in heads.iter_mut().zip(rows) {
        for row in head_rows {
            h.push(&row);
        }
    }
    Ok(())
}

impl KvCache for FlexGenCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, r: Reservation) -> Result<()> {
        let tokens = r.prompt + r.after_prompt();
        for layer in &mut self.layers {
            for h in layer.keys.iter_mut().chain(layer.values.iter_mut()) {
                h.reserve(tokens.saturating_sub(h.rows()));
            }
        }
        Ok(())
    }

    fn attend(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let held = self.kept_tokens(layer);
        check_chunk(&self.shape, layer, pos, held)?;
        let q = self.rope.apply(q, pos)?;
        let k = self.rope.apply(k, pos)?.contiguous()?;
        let v = v.to_dtype(DType::F32)?.contiguous()?;
        let rows = &mut self.layers[layer];
        match self.prefill {
            FlexGenPrefill::Quantized => {
                push_rows(&mut rows.keys, &k)?;
                push_rows(&mut rows.values, &v)?;
                if q.dim(1)? == 1 {
                    return self.decode_step(layer, &q, None);
                }
                let (keys, values) = (
                    self.stored(&self.layers[layer].keys)?.expect("rows pushed"),
                    self.stored(&self.layers[layer].values)?
                        .expect("rows pushed"),
                );
                causal_attention(&q, &keys, &values, pos)
            }
            FlexGenPrefill::Full if rows.keys[0].rows() > 0 => {
                // After the prompt: stored rows dequantized, the chunk's own in f32.
                let out = if q.dim(1)? == 1 {
                    self.decode_step(layer, &q, Some((&k, &v)))?
                } else {
                    let (pk, pv) = (
                        self.stored(&self.layers[layer].keys)?.expect("rows held"),
                        self.stored(&self.layers[layer].values)?.expect("rows held"),
                    );
                    let keys = Tensor::cat(&[&pk, &k], 1)?;
                    causal_attention(&q, &keys, &Tensor::cat(&[&pv, &v], 1)?, pos)?
                };
                push_rows(&mut self.layers[layer].keys, &k)?;
                push_rows(&mut self.layers[layer].values, &v)?;
                Ok(out)
            }
            FlexGenPrefill::Full => {
                let (keys, values) = match self.pending[layer].take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                    None => (k, v),
                };
                let out = causal_attention(&q, &keys, &values, pos)?;
                self.pending[layer] = Some((keys, values));
                Ok(out)
            }
        }
    }

    fn end_prefill(&mut self) -> Result<()> {
        for (rows, pending) in self.layers.iter_mut().zip(&mut self.pending) {
            if let Some((k, v)) = pending.take() {
                push_rows(&mut rows.keys, &k)?;
                push_rows(&mut rows.values, &v)?;
            }
        }
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        let pending: usize = self
            .pending
            .iter()
            .flatten()
            .map(|(k, v)| 4 * (k.elem_count() + v.elem_count()))
            .sum();
        pending
            + self
                .layers
                .iter()
                .flat_map(|l| l.keys.iter().chain(&l.values))
                .map(PackedRows::bytes)
                .sum::<usize>()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.fp16_bytes_per_token()
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        let pending = self
            .pending
            .get(layer)
            .and_then(|p| p.as_ref())
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0));
        pending + self.layers.get(layer).map_or(0, |l| l.keys[0].rows())
    }

    fn reset(&mut self) {
        self.pending.iter_mut().for_each(|p| *p = None);
        for layer in &mut self.layers {
            layer
                .keys
                .iter_mut()
                .chain(layer.values.iter_mut())
                .for_each(PackedRows::clear);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_difference, rope, rope_for, shape};
    use crate::{FullCache, KvPrecision};

    #[test]
    fn dequantization_error_is_within_the_min_max_bound() {
        for bits in [2, 4, 8] {
            let mut rows = PackedRows::new(bits, 32, 64);
            let data: Vec<f32> = (0..64 * 5)
                .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
                .collect();
            for r in data.chunks_exact(64) {
                rows.push(r);
            }
            let back = rows.dequantize();
            for (g, (orig, deq)) in data.chunks_exact(32).zip(back.chunks_exact(32)).enumerate() {
                let (min, max) = (
                    orig.iter().cloned().fold(f32::INFINITY, f32::min),
                    orig.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                );
                let scale = (max - min) / ((1u32 << bits) - 1) as f32;
                // Half a step, plus the f16 rounding of the stored minimum and scale.
                let bound = 0.5 * scale + 2e-3 * (min.abs() + max.abs()) + 1e-6;
                let worst = orig
                    .iter()
                    .zip(deq)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst <= bound,
                    "bits {bits}, group {g}: error {worst} > bound {bound}"
                );
            }
        }
    }

    #[test]
    fn constant_groups_decode_exactly_without_dividing_by_zero() {
        let mut rows = PackedRows::new(4, 32, 32);
        rows.push(&[1.5; 32]);
        assert_eq!(rows.dequantize(), vec![1.5; 32]);
    }

    #[test]
    fn bytes_are_packed_codes_plus_f16_minimum_and_scale() {
        let mut rows = PackedRows::new(4, 32, 64);
        rows.reserve(10);
        for _ in 0..10 {
            rows.push(&[0.25; 64]);
        }
        // 10 rows × (32 bytes of codes + 2 groups × 4 bytes).
        assert_eq!(rows.bytes(), 10 * (32 + 8));
        assert!(
            (FlexGenSettings {
                bits: 4,
                group: 32,
                prefill: FlexGenPrefill::Quantized
            }
            .nominal_ratio()
                - 3.2)
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn eight_bits_track_the_full_cache_closely() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 40, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 40, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 40, 64), &dev).unwrap();
        for prefill in [FlexGenPrefill::Quantized, FlexGenPrefill::Full] {
            let mut full = FullCache::new(shape(), rope(), &dev, KvPrecision::F32);
            let mut quant = FlexGenCache::new(
                shape(),
                rope(),
                &dev,
                FlexGenSettings {
                    bits: 8,
                    group: 32,
                    prefill,
                },
            )
            .unwrap();
            for (start, len) in [(0, 20), (20, 10), (30, 1), (31, 9)] {
                if start == 30 {
                    quant.end_prefill().unwrap();
                }
                let (qs, ks, vs) = (
                    q.narrow(1, start, len).unwrap(),
                    k.narrow(1, start, len).unwrap(),
                    v.narrow(1, start, len).unwrap(),
                );
                let a = full.attend(0, start, &qs, &ks, &vs).unwrap();
                let b = quant.attend(0, start, &qs, &ks, &vs).unwrap();
                let diff = max_difference(&[a], &[b]);
                assert!(diff < 0.05, "{prefill:?}, chunk at {start}: {diff}");
                if prefill == FlexGenPrefill::Full && start < 30 {
                    assert!(diff < 1e-5, "the full-precision prefill is exact: {diff}");
                }
            }
            assert_eq!(quant.kept_tokens(0), 40);
            assert!(quant.stored_bytes() < full.stored_bytes() / 2);
        }
    }

    /// The benchmark's rule: the prompt attends to its own keys and values quantized, and a
    /// decoding token to its own quantized key and value.
    #[test]
    fn quantized_prefill_attends_to_quantized_keys_and_values_only() {
        let dev = Device::Cpu;
        let settings = FlexGenSettings {
            bits: 4,
            group: 32,
            prefill: FlexGenPrefill::Quantized,
        };
        let q = Tensor::randn(0f32, 1.0, (4, 21, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 21, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 21, 64), &dev).unwrap();
        let mut cache = FlexGenCache::new(shape(), rope(), &dev, settings).unwrap();
        let quantized = |x: &Tensor| -> Tensor {
            let mut heads = vec![PackedRows::new(4, 32, 64), PackedRows::new(4, 32, 64)];
            push_rows(&mut heads, x).unwrap();
            let data: Vec<f32> = heads.iter().flat_map(|h| h.dequantize()).collect();
            Tensor::from_vec(data, x.dims(), &dev).unwrap()
        };
        let rk = cache.rope.apply(&k, 0).unwrap();
        let rq = cache.rope.apply(&q, 0).unwrap();
        let (qk, qv) = (quantized(&rk), quantized(&v));
        for (start, len) in [(0, 20), (20, 1)] {
            if start == 20 {
                cache.end_prefill().unwrap();
            }
            let got = cache
                .attend(
                    0,
                    start,
                    &q.narrow(1, start, len).unwrap(),
                    &k.narrow(1, start, len).unwrap(),
                    &v.narrow(1, start, len).unwrap(),
                )
                .unwrap();
            let end = start + len;
            let want = causal_attention(
                &rq.narrow(1, start, len).unwrap(),
                &qk.narrow(1, 0, end).unwrap(),
                &qv.narrow(1, 0, end).unwrap(),
                start,
            )
            .unwrap();
            let diff = max_difference(&[got], &[want]);
            assert!(diff < 1e-5, "chunk at {start}: {diff}");
        }
    }

    /// One range of rows, and three (two whole ranges of 1,024 and a part) merged with the
    /// new token's own part.
    #[test]
    fn decode_step_in_place_equals_attention_over_dequantized_rows() {
        for n in [21, 2501] {
            decode_step_in_place_equals_attention_over_dequantized_rows_at(n);
        }
    }

    fn decode_step_in_place_equals_attention_over_dequantized_rows_at(n: usize) {
        let (dev, p) = (Device::Cpu, n - 1);
        let settings = FlexGenSettings {
            bits: 4,
            group: 32,
            prefill: FlexGenPrefill::Full,
        };
        let q = Tensor::randn(0f32, 1.0, (4, n, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, n, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, n, 64), &dev).unwrap();
        let mut cache = FlexGenCache::new(shape(), rope_for(n), &dev, settings).unwrap();
        cache
            .attend(
                0,
                0,
                &q.narrow(1, 0, p).unwrap(),
                &k.narrow(1, 0, p).unwrap(),
                &v.narrow(1, 0, p).unwrap(),
            )
            .unwrap();
        cache.end_prefill().unwrap();
        // Reference: the stored rows dequantized, the new token in full precision.
        let q_r = cache.rope.apply(&q.narrow(1, p, 1).unwrap(), p).unwrap();
        let k_new = cache.rope.apply(&k.narrow(1, p, 1).unwrap(), p).unwrap();
        let keys = Tensor::cat(
            &[
                &cache.stored(&cache.layers[0].keys).unwrap().unwrap(),
                &k_new,
            ],
            1,
        )
        .unwrap();
        let values = Tensor::cat(
            &[
                &cache.stored(&cache.layers[0].values).unwrap().unwrap(),
                &v.narrow(1, p, 1).unwrap(),
            ],
            1,
        )
        .unwrap();
        let want = causal_attention(&q_r, &keys, &values, p).unwrap();
        let got = cache
            .attend(
                0,
                p,
                &q.narrow(1, p, 1).unwrap(),
                &k.narrow(1, p, 1).unwrap(),
                &v.narrow(1, p, 1).unwrap(),
            )
            .unwrap();
        let diff = max_difference(&[got], &[want]);
        assert!(diff < 1e-5, "{n} tokens: {diff}");
        assert_eq!(cache.kept_tokens(0), n);
    }

    #[test]
    fn settings_are_checked() {
        assert!(FlexGenCache::new(
            shape(),
            rope(),
            &Device::Cpu,
            FlexGenSettings {
                bits: 3,
                group: 32,
                prefill: FlexGenPrefill::Quantized
            }
        )
        .is_err());
        assert!(FlexGenCache::new(
            shape(),
            rope(),
            &Device::Cpu,
            FlexGenSettings {
                bits: 4,
                group: 48,
                prefill: FlexGenPrefill::Quantized
            }
        )
        .is_err());
    }
}
