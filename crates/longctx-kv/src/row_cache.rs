//! Caches whose every key and value row is quantized on its own, per token, along its
//! channels ([`RowFormat`]): storage is really packed, and attention reads the rows in place.
//!
//! - **FlexGen** (Sheng et al., "FlexGen: High-Throughput Generative Inference of Large
//!   Language Models with a Single GPU", ICML 2023): asymmetric min–max groups, no residual
//!   window; 4-bit groups of 32 hold 20 bytes where 16-bit values hold 64 (3.2×).
//! - **llama.cpp's quantized KV cache** (`--cache-type-k/-v` q8_0, q4_0, q4_1, iq4_nl), keys
//!   and values each in their own type, and with llama.cpp's Walsh–Hadamard rotation of
//!   queries, keys and values ([`RowQuantSettings::rotate`]); and min–max codes of 2, 3, 4
//!   or 8 bits after the same rotation (rotated quantization, as TurboQuant proposes with a
//!   random rotation).
//!
//! Rotation is exact arithmetic: `q·k = (Hq)·(Hk)` for an orthonormal `H`, and attention
//! over rotated values is the rotation of the output, which is rotated back. Only the
//! quantization sees rotated rows.
//!
//! Two prefill rules, a setting ([`QuantizedPrefill`]):
//! - `quantized`, the benchmark's FlexGen (`llama_simquant.py`) and llama.cpp's: every key
//!   and value is quantized *before* attention reads it, the prompt's own keys and values in
//!   prefill and the new token's own key and value while decoding, so nothing attended is
//!   full precision;
//! - `full`, the original FlexLLMGen: the prompt is attended and held in full precision,
//!   compressed when it ends, and a decoding token attends to its own key and value in full
//!   precision before they are stored.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::cache::{check_chunk, uneven_heads, Reservation};
use crate::row_formats::{hadamard, rotation_blocks, QuantRows, RowFormat};
use crate::tiled::{
    exp_nonpositive, lanes_dot, lanes_max, lanes_sum, merge_decode_parts, token_ranges, DecodePart,
    DECODE_SPLIT,
};
use crate::{causal_attention, KvCache, KvError, KvShape, Result, RopeTable};

/// What attention reads before the cache compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizedPrefill {
    /// Everything attended is quantized first (the benchmark's simulated quantization,
    /// llama.cpp's cache).
    Quantized,
    /// Full-precision prefill and own token, compressed afterwards (FlexLLMGen).
    Full,
}

impl QuantizedPrefill {
    /// How specs spell it.
    pub fn name(self) -> &'static str {
        match self {
            QuantizedPrefill::Quantized => "quantized",
            QuantizedPrefill::Full => "full",
        }
    }
}

/// FlexGen's settings, as its specs give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlexGenSettings {
    /// Bits per code: 2, 4 or 8.
    pub bits: u32,
    /// Channels per quantization group; must divide the head dimension.
    pub group: usize,
    /// The prefill rule.
    pub prefill: QuantizedPrefill,
}

impl FlexGenSettings {
    /// The row cache's settings: min–max keys and values, no rotation.
    pub fn rows(&self) -> RowQuantSettings {
        let format = RowFormat::MinMax {
            bits: self.bits,
            group: self.group,
        };
        RowQuantSettings {
            keys: format,
            values: format,
            rotate: false,
            prefill: self.prefill,
        }
    }

    /// Full (16-bit) bytes over held bytes for one group: the nominal compression ratio.
    pub fn nominal_ratio(&self) -> f64 {
        self.rows().nominal_ratio()
    }
}

/// Settings of [`RowQuantCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowQuantSettings {
    /// How key rows are stored.
    pub keys: RowFormat,
    /// How value rows are stored.
    pub values: RowFormat,
    /// Rotate queries and keys, and values, by Walsh–Hadamard blocks before quantizing, as
    /// llama.cpp does for a quantized cache ([`rotation_blocks`]); needs a head dimension
    /// that is a multiple of 64.
    pub rotate: bool,
    /// The prefill rule.
    pub prefill: QuantizedPrefill,
}

impl RowQuantSettings {
    /// Check the settings against a cache geometry; returns the rotation's key and value
    /// blocks where it rotates.
    pub fn validate(&self, shape: &KvShape) -> Result<Option<(usize, usize)>> {
        if self.keys == self.values {
            self.keys.validate(shape.head_dim)?;
        }
        for (what, format) in [("keys", self.keys), ("values", self.values)] {
            format.validate(shape.head_dim).map_err(|e| match e {
                KvError::Setting(reason) => KvError::Setting(format!("{what}: {reason}")),
                other => other,
            })?;
        }
        if !self.rotate {
            return Ok(None);
        }
        rotation_blocks(shape.head_dim).map(Some).ok_or_else(|| {
            KvError::Setting(format!(
                "rotate=true needs a head dimension that is a multiple of 64 (Walsh–Hadamard blocks, as llama.cpp's), not {}: use rotate=false",
                shape.head_dim
            ))
        })
    }

    /// 16-bit bytes of a key and a value over their stored bytes: the nominal compression
    /// ratio.
    pub fn nominal_ratio(&self) -> f64 {
        2.0 / (1.0 / self.keys.ratio() + 1.0 / self.values.ratio())
    }
}

/// One layer's rows: per key/value head, packed keys and values.
pub(crate) struct LayerRows {
    pub keys: Vec<QuantRows>,
    pub values: Vec<QuantRows>,
}

impl LayerRows {
    /// Empty rows for `heads` heads of `width` channels.
    pub fn new(settings: &RowQuantSettings, heads: usize, width: usize) -> Self {
        Self {
            keys: (0..heads)
                .map(|_| QuantRows::new(settings.keys, width))
                .collect(),
            values: (0..heads)
                .map(|_| QuantRows::new(settings.values, width))
                .collect(),
        }
    }

    /// Rows held per head (equal across heads in a cache that keeps every token).
    pub fn rows(&self) -> usize {
        self.keys[0].rows()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(QuantRows::bytes)
            .sum()
    }

    /// Quantize and append a chunk's keys and values (`[heads, t, width]`, f32).
    pub fn push(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        for (heads, x) in [(&mut self.keys, k), (&mut self.values, v)] {
            let rows: Vec<Vec<Vec<f32>>> = x.to_vec3()?;
            for (h, head_rows) in heads.iter_mut().zip(rows) {
                for row in head_rows {
                    h.push(&row);
                }
            }
        }
        Ok(())
    }

    /// Reserve room for `rows` more rows per head.
    pub fn reserve(&mut self, rows: usize) {
        self.keys
            .iter_mut()
            .chain(self.values.iter_mut())
            .for_each(|h| h.reserve(rows));
    }

    /// Forget every row, keeping allocations.
    pub fn clear(&mut self) {
        self.keys
            .iter_mut()
            .chain(self.values.iter_mut())
            .for_each(QuantRows::clear);
    }
}

/// The Walsh–Hadamard blocks of queries and keys, and of values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rotation {
    pub keys: usize,
    pub values: usize,
}

impl Rotation {
    /// `x` (rows of whole heads, f32) with every row rotated in blocks of `block`.
    fn apply(x: &Tensor, block: usize) -> Result<Tensor> {
        let mut data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        hadamard(&mut data, block);
        Ok(Tensor::from_vec(data, x.dims(), x.device())?)
    }

    /// What a per-token quantized cache stores and reads of a chunk at `pos`: queries and
    /// keys rotated by RoPE, values in f32, and all three by the Walsh–Hadamard blocks
    /// where there is a rotation.
    pub fn inputs(
        rotation: Option<Rotation>,
        rope: &RopeTable,
        pos: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let q = rope.apply(q, pos)?;
        let k = rope.apply(k, pos)?.contiguous()?;
        let v = v.to_dtype(DType::F32)?.contiguous()?;
        Ok(match rotation {
            Some(r) => (
                Self::apply(&q, r.keys)?,
                Self::apply(&k, r.keys)?,
                Self::apply(&v, r.values)?,
            ),
            None => (q, k, v),
        })
    }

    /// An attention output over rotated values rotated back (the rotation is its own
    /// inverse).
    pub fn output(rotation: Option<Rotation>, out: Tensor) -> Result<Tensor> {
        match rotation {
            Some(r) => Self::apply(&out, r.values),
            None => Ok(out),
        }
    }
}

/// A cache of per-token quantized rows: FlexGen, llama.cpp's types, rotated min–max.
pub struct RowQuantCache {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    settings: RowQuantSettings,
    rotation: Option<Rotation>,
    layers: Vec<LayerRows>,
    /// Under [`QuantizedPrefill::Full`], each layer's prompt keys and values in f32 until the
    /// prompt ends.
    pending: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens each layer has been shown: its rows, unless a dropping policy chose them.
    processed: Vec<usize>,
}

/// Rows of every head dequantized, as `[heads, rows, width]`; `None` when empty.
pub(crate) fn stored(heads: &[QuantRows], width: usize, device: &Device) -> Result<Option<Tensor>> {
    let len = heads[0].rows();
    if heads.iter().any(|h| h.rows() != len) {
        return Err(uneven_heads());
    }
    if len == 0 {
        return Ok(None);
    }
    let data: Vec<f32> = heads.iter().flat_map(|h| h.dequantize()).collect();
    Ok(Some(Tensor::from_vec(
        data,
        (heads.len(), len, width),
        device,
    )?))
}

impl RowQuantCache {
    /// A cache for `shape`; the settings are validated here.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        settings: RowQuantSettings,
    ) -> Result<Self> {
        let rotation = settings
            .validate(&shape)?
            .map(|(keys, values)| Rotation { keys, values });
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            settings,
            rotation,
            pending: vec![None; shape.layers],
            processed: vec![0; shape.layers],
            layers: (0..shape.layers)
                .map(|_| LayerRows::new(&settings, shape.kv_heads, shape.head_dim))
                .collect(),
        })
    }

    /// The attention of `layer` in the rotated basis (or none): under `full`, the prompt
    /// in f32 until it ends; otherwise over the stored rows ([`attend_stored`]).
    fn attend_rows(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
    ) -> Result<Tensor> {
        let rule = self.settings.prefill;
        if rule == QuantizedPrefill::Full && self.layers[layer].rows() == 0 {
            let (keys, values) = match self.pending[layer].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                None => (k, v),
            };
            let out = causal_attention(q, &keys, &values, pos)?;
            self.pending[layer] = Some((keys, values));
            return Ok(out);
        }
        attend_stored(&mut self.layers[layer], q, (k, v), rule, &self.device)
    }
}

/// A chunk's attention over a layer's stored rows, the chunk's own keys and values stored
/// as `rule` says: quantized before attention reads them, or read in f32 and stored after.
/// One token is read in place ([`decode_step`]); a longer chunk over the rows dequantized.
/// Every head must hold as many rows for a longer chunk.
pub(crate) fn attend_stored(
    rows: &mut LayerRows,
    q: &Tensor,
    (k, v): (Tensor, Tensor),
    rule: QuantizedPrefill,
    device: &Device,
) -> Result<Tensor> {
    let (t, d) = (q.dim(1)?, q.dim(2)?);
    let held = rows.rows();
    let own_quantized = rule == QuantizedPrefill::Quantized;
    if own_quantized {
        rows.push(&k, &v)?;
    }
    let out = if t == 1 {
        decode_step(rows, q, (!own_quantized).then_some((&k, &v)), d)?
    } else {
        let held_rows = |heads: &[QuantRows]| {
            stored(heads, d, device)?.ok_or_else(|| {
                KvError::Invalid("a chunk after the prompt needs stored rows".into())
            })
        };
        let (mut keys, mut values) = (held_rows(&rows.keys)?, held_rows(&rows.values)?);
        if !own_quantized {
            keys = Tensor::cat(&[&keys, &k], 1)?;
            values = Tensor::cat(&[&values, &v], 1)?;
        }
        causal_attention(q, &keys, &values, held)?
    };
    if !own_quantized {
        rows.push(&k, &v)?;
    }
    Ok(out)
}

/// Rows `t0..t1` of one head's packed keys and values for the head's group of `queries`
/// (`[rows][d]`): each row dequantized once, in registers of the instruction set the caller
/// is compiled for, for every query of the group.
#[inline(always)]
fn decode_part(
    (keys, values): (&QuantRows, &QuantRows),
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
    rows: (&QuantRows, &QuantRows),
    queries: &[f32],
    d: usize,
    range: (usize, usize),
) -> DecodePart {
    decode_part(rows, queries, d, range)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_part_avx2(
    rows: (&QuantRows, &QuantRows),
    queries: &[f32],
    d: usize,
    range: (usize, usize),
) -> DecodePart {
    decode_part(rows, queries, d, range)
}

/// One query per head over a layer's packed rows, read in place (no dequantized copy of
/// the cache): each head's rows split in ranges of [`DECODE_SPLIT`] across threads, each
/// range's rows dequantized once for the head's whole group of query heads, and the ranges'
/// softmax parts merged; `own` is the new token's key and value in full precision, when it
/// is not stored yet (one more part). Heads may hold different numbers of rows.
pub(crate) fn decode_step(
    stored: &LayerRows,
    q: &Tensor,
    own: Option<(&Tensor, &Tensor)>,
    d: usize,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (q_heads, kv_heads) = (q.dim(0)?, stored.keys.len());
    let group = q_heads / kv_heads;
    let query: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let own: Option<(Vec<f32>, Vec<f32>)> = match own {
        Some((k, v)) => Some((k.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?)),
        None => None,
    };
    let tasks = token_ranges(stored.keys.iter().map(QuantRows::rows), DECODE_SPLIT);
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
                crate::tiled::Simd::Avx2 => unsafe { decode_part_avx2(rows, queries, d, (t0, t1)) },
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
    let mut out = vec![0f32; q_heads * d];
    merge_decode_parts(&tasks, &parts, (group, d), &mut out, own_part);
    Ok(Tensor::from_vec(out, (q_heads, 1, d), q.device())?)
}

impl KvCache for RowQuantCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, r: Reservation) -> Result<()> {
        let tokens = r.prompt + r.after_prompt();
        for layer in &mut self.layers {
            let held = layer.rows();
            layer.reserve(tokens.saturating_sub(held));
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
        check_chunk(&self.shape, layer, pos, self.processed[layer])?;
        let (q, k, v) = Rotation::inputs(self.rotation, &self.rope, pos, (q, k, v))?;
        self.processed[layer] = pos + q.dim(1)?;
        let out = self.attend_rows(layer, pos, &q, k, v)?;
        Rotation::output(self.rotation, out)
    }

    /// The kept rows are rotated (as every stored row is) and quantized.
    fn adopt(
        &mut self,
        layer: usize,
        kept: Vec<(Vec<f32>, Vec<f32>)>,
        prompt: usize,
        after: usize,
    ) -> Result<()> {
        let d = self.shape.head_dim;
        let rows = &mut self.layers[layer];
        for (h, (mut keys, mut values)) in kept.into_iter().enumerate() {
            if let Some(r) = &self.rotation {
                crate::hadamard(&mut keys, r.keys);
                crate::hadamard(&mut values, r.values);
            }
            for (stored, data) in [(&mut rows.keys[h], keys), (&mut rows.values[h], values)] {
                stored.reserve(data.len() / d + after);
                data.chunks_exact(d).for_each(|row| stored.push(row));
            }
        }
        self.processed[layer] = prompt;
        Ok(())
    }

    fn end_prefill(&mut self) -> Result<()> {
        for (rows, pending) in self.layers.iter_mut().zip(&mut self.pending) {
            if let Some((k, v)) = pending.take() {
                rows.push(&k, &v)?;
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
        pending + self.layers.iter().map(LayerRows::bytes).sum::<usize>()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.fp16_bytes_per_token()
    }

    /// Averaged over key/value heads (adopted heads may hold different counts).
    fn kept_tokens(&self, layer: usize) -> usize {
        let pending = self
            .pending
            .get(layer)
            .and_then(|p| p.as_ref())
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0));
        pending
            + self.layers.get(layer).map_or(0, |rows| {
                rows.keys.iter().map(QuantRows::rows).sum::<usize>() / rows.keys.len().max(1)
            })
    }

    fn reset(&mut self) {
        self.pending.iter_mut().for_each(|p| *p = None);
        self.layers.iter_mut().for_each(LayerRows::clear);
        self.processed.iter_mut().for_each(|p| *p = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_difference, rope, rope_for, shape};
    use crate::{FullCache, GgmlType, KvPrecision};

    #[test]
    fn dequantization_error_is_within_the_min_max_bound() {
        for bits in [2, 4, 8] {
            let mut rows = QuantRows::new(RowFormat::MinMax { bits, group: 32 }, 64);
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
        let mut rows = QuantRows::new(RowFormat::MinMax { bits: 4, group: 32 }, 32);
        rows.push(&[1.5; 32]);
        assert_eq!(rows.dequantize(), vec![1.5; 32]);
    }

    #[test]
    fn bytes_are_packed_codes_plus_f16_minimum_and_scale() {
        let mut rows = QuantRows::new(RowFormat::MinMax { bits: 4, group: 32 }, 64);
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
                prefill: QuantizedPrefill::Quantized
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
        for prefill in [QuantizedPrefill::Quantized, QuantizedPrefill::Full] {
            let mut full = FullCache::new(shape(), rope(), &dev, KvPrecision::F32);
            let settings = FlexGenSettings {
                bits: 8,
                group: 32,
                prefill,
            };
            let mut quant = RowQuantCache::new(shape(), rope(), &dev, settings.rows()).unwrap();
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
                if prefill == QuantizedPrefill::Full && start < 30 {
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
            prefill: QuantizedPrefill::Quantized,
        };
        let q = Tensor::randn(0f32, 1.0, (4, 21, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 21, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 21, 64), &dev).unwrap();
        let mut cache = RowQuantCache::new(shape(), rope(), &dev, settings.rows()).unwrap();
        let quantized = |x: &Tensor| -> Tensor {
            let mut rows = LayerRows::new(&settings.rows(), 2, 64);
            rows.push(x, x).unwrap();
            stored(&rows.keys, 64, &dev).unwrap().unwrap()
        };
        let rk = cache.rope.apply(&k, 0).unwrap();
        let read = (&quantized(&rk), &quantized(&v));
        assert_reads(&mut cache, (&q, &k, &v), read, 1e-5);
    }

    /// Feeds `q, k, v` as a prompt and one decoding token after it, and checks each output
    /// against causal attention of the RoPE-rotated queries over `keys` and `values`: what
    /// the cache must read.
    fn assert_reads(
        cache: &mut RowQuantCache,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (keys, values): (&Tensor, &Tensor),
        tolerance: f32,
    ) {
        let n = q.dim(1).unwrap();
        let rq = cache.rope.apply(q, 0).unwrap();
        for (start, len) in [(0, n - 1), (n - 1, 1)] {
            if start > 0 {
                cache.end_prefill().unwrap();
            }
            let chunk = |x: &Tensor| x.narrow(1, start, len).unwrap();
            let got = cache
                .attend(0, start, &chunk(q), &chunk(k), &chunk(v))
                .unwrap();
            let end = start + len;
            let want = causal_attention(
                &chunk(&rq),
                &keys.narrow(1, 0, end).unwrap(),
                &values.narrow(1, 0, end).unwrap(),
                start,
            )
            .unwrap();
            let diff = max_difference(&[got], &[want]);
            assert!(diff < tolerance, "chunk at {start}: {diff}");
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
            prefill: QuantizedPrefill::Full,
        };
        let q = Tensor::randn(0f32, 1.0, (4, n, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, n, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, n, 64), &dev).unwrap();
        let mut cache = RowQuantCache::new(shape(), rope_for(n), &dev, settings.rows()).unwrap();
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
        let held = |heads: &[QuantRows]| stored(heads, 64, &dev).unwrap().unwrap();
        let (held_keys, held_values) = (held(&cache.layers[0].keys), held(&cache.layers[0].values));
        let keys = Tensor::cat(&[&held_keys, &k_new], 1).unwrap();
        let values = Tensor::cat(&[&held_values, &v.narrow(1, p, 1).unwrap()], 1).unwrap();
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

    /// llama.cpp's rotation changes only what quantization sees: the cache's outputs equal
    /// attention over keys and values rotated, quantized, read back and rotated back, with
    /// unrotated queries, in prefill and decoding; asymmetric types for keys and values.
    #[test]
    fn rotated_rows_equal_attention_over_rows_rotated_quantized_and_rotated_back() {
        let dev = Device::Cpu;
        let settings = RowQuantSettings {
            keys: RowFormat::Ggml(GgmlType::Q4_0),
            values: RowFormat::MinMax { bits: 3, group: 32 },
            rotate: true,
            prefill: QuantizedPrefill::Quantized,
        };
        let n = 30;
        let q = Tensor::randn(0f32, 1.0, (4, n, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, n, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, n, 64), &dev).unwrap();
        let mut cache = RowQuantCache::new(shape(), rope(), &dev, settings).unwrap();
        // Both rotated in blocks of 64 (llama.cpp's choice for 64-channel heads).
        let read_back = |x: &Tensor, format: RowFormat, block: usize| -> Tensor {
            let mut data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            hadamard(&mut data, block);
            let mut rows = QuantRows::new(format, 64);
            data.chunks_exact(64).for_each(|r| rows.push(r));
            let mut back = rows.dequantize();
            hadamard(&mut back, block);
            Tensor::from_vec(back, x.dims(), &dev).unwrap()
        };
        let rk = cache.rope.apply(&k, 0).unwrap();
        let (keys, values) = (
            read_back(&rk, settings.keys, 64),
            read_back(&v, settings.values, 64),
        );
        assert_reads(&mut cache, (&q, &k, &v), (&keys, &values), 1e-4);
        // 16-bit bytes over held bytes: keys 64/18, values 64/16 per block of 32.
        assert!((settings.nominal_ratio() - 2.0 / (18.0 / 64.0 + 16.0 / 64.0)).abs() < 1e-12);
    }

    #[test]
    fn settings_are_checked() {
        let with = |bits, group, rotate, head_dim| {
            let shape = KvShape {
                head_dim,
                ..shape()
            };
            let mut settings = FlexGenSettings {
                bits,
                group,
                prefill: QuantizedPrefill::Quantized,
            }
            .rows();
            settings.rotate = rotate;
            RowQuantCache::new(shape, rope(), &Device::Cpu, settings)
        };
        assert!(with(5, 32, false, 64).is_err());
        assert!(with(4, 48, false, 64).is_err());
        assert!(with(3, 4, false, 64).is_err());
        assert!(with(3, 32, false, 64).is_ok());
        assert!(with(4, 16, true, 80).is_err());
        assert!(with(4, 16, true, 64).is_ok());
    }
}
