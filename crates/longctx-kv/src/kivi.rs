//! KIVI (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache",
//! ICML 2024): keys quantized per channel (each channel's values over a group of tokens
//! share a minimum and scale), values per token (groups of channels), asymmetric min–max,
//! and a residual window of recent tokens kept in full precision.
//!
//! The streaming rules are the reference implementation's:
//! - the prompt is attended in full precision; at its end, keys are quantized in whole
//!   multiples of `residual` tokens (the trailing `L mod residual` wait in full precision)
//!   and values all but the last `residual` tokens;
//! - while decoding, a key joins the full-precision run, which is quantized as a whole once
//!   it reaches `residual` tokens; a value joins its run and the oldest full-precision value
//!   is quantized once the run exceeds `residual`.
//!
//! Storage is packed codes plus an f16 minimum and scale per group, laid out for byte dot
//! products ([`tiles`]); decoding reads the codes in place ([`decode`]). The residual
//! window is held in 16 bits, as in the reference (fp16) models; the prompt itself is held
//! in f32 until it is complete, and attended in place.

mod decode;
mod tiles;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::cache::{check_chunk, Reservation};
use crate::tiled::{
    self, merge_decode_parts, token_ranges, Causal, DecodePart, StridedRows, DECODE_SPLIT,
};
use crate::{causal_attention, DecodeActivations, KvCache, KvError, KvShape, Result, RopeTable};
use decode::{decode_part, HeadParts};
use tiles::{KeyTiles, ValueTiles, LANES};

/// Settings of [`KiviCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KiviSettings {
    /// Bits per code: 2, 4 or 8.
    pub bits: u32,
    /// Tokens per key group and channels per value group; must divide the head dimension
    /// and be a multiple of 16 (the decoding kernel's tile).
    pub group: usize,
    /// Recent tokens kept in full precision; a multiple of `group`.
    pub residual: usize,
}

impl KiviSettings {
    /// Check the settings against a cache geometry.
    pub fn validate(&self, shape: &KvShape) -> Result<()> {
        check_packing(self.bits, self.group, shape.head_dim)?;
        if !self.group.is_multiple_of(LANES) {
            return Err(KvError::Setting(format!(
                "group={} must be a multiple of {LANES} (the decoding kernel's tile of tokens and channels)",
                self.group
            )));
        }
        if self.residual == 0 || !self.residual.is_multiple_of(self.group) {
            return Err(KvError::Setting(format!(
                "residual={} must be a positive multiple of group={}",
                self.residual, self.group
            )));
        }
        Ok(())
    }

    /// 16-bit bytes over held bytes once the residual window is negligible.
    pub fn nominal_ratio(&self) -> f64 {
        crate::RowFormat::MinMax {
            bits: self.bits,
            group: self.group,
        }
        .ratio()
    }
}

/// The packing rules every KIVI layout shares: bits in {2, 4, 8}, and groups that
/// divide the head dimension.
fn check_packing(bits: u32, group: usize, head_dim: usize) -> Result<()> {
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

/// One key/value head's state.
struct HeadState {
    /// Quantized keys, whole blocks of `group` tokens.
    key_blocks: KeyTiles,
    /// 16-bit keys after the quantized ones, row-major.
    key_residual: Vec<f16>,
    /// Quantized values, one row per token.
    value_rows: ValueTiles,
    /// 16-bit values after the quantized ones, row-major.
    value_residual: Vec<f16>,
    /// The prompt's keys and values in f32 until it is complete (then emptied and freed):
    /// the benchmark's KIVI fixture quantizes them unrounded.
    prompt_keys: Vec<f32>,
    prompt_values: Vec<f32>,
}

fn to_f32(x: &[f16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn to_f16(x: &[f32]) -> impl Iterator<Item = f16> + '_ {
    x.iter().map(|v| f16::from_f32(*v))
}

impl HeadState {
    /// Quantize key rows (a whole number of `group`-token blocks) per channel.
    fn quantize_keys(&mut self, keys: &[f32], d: usize, group: usize) {
        keys.chunks_exact(group * d)
            .for_each(|block| self.key_blocks.push_block(block));
    }

    /// Quantize value rows per token.
    fn quantize_values(&mut self, values: &[f32], d: usize) {
        values
            .chunks_exact(d)
            .for_each(|row| self.value_rows.push(row));
    }

    /// Append a decoded token and apply the decoding rules: a full key run is quantized as
    /// a whole, the oldest value beyond the window is quantized.
    fn push_token(&mut self, key: &[f32], value: &[f32], d: usize, settings: &KiviSettings) {
        self.key_residual.extend(to_f16(key));
        self.value_residual.extend(to_f16(value));
        self.settle(d, settings);
    }

    fn settle(&mut self, d: usize, settings: &KiviSettings) {
        if self.key_residual.len() / d >= settings.residual {
            let run = to_f32(&self.key_residual);
            self.quantize_keys(&run, d, settings.group);
            self.key_residual.clear();
        }
        if self.value_residual.len() / d > settings.residual {
            let oldest = to_f32(&self.value_residual[..d]);
            self.quantize_values(&oldest, d);
            self.value_residual.drain(..d);
        }
    }
}

/// The KIVI policy.
pub struct KiviCache {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    settings: KiviSettings,
    /// Whether decoding quantizes the query and probabilities to bytes.
    activations: DecodeActivations,
    layers: Vec<Vec<HeadState>>,
    processed: Vec<usize>,
    expected_tokens: usize,
    prefilled: bool,
}

impl KiviCache {
    /// A cache for `shape`; the settings are validated here. `activations` chooses
    /// decoding's arithmetic: byte dot products, or f32 (see [`decode`]).
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        settings: KiviSettings,
        activations: DecodeActivations,
    ) -> Result<Self> {
        settings.validate(&shape)?;
        let d = shape.head_dim;
        let head = || HeadState {
            key_blocks: KeyTiles::new(settings.bits, settings.group, d),
            key_residual: Vec::new(),
            value_rows: ValueTiles::new(settings.bits, settings.group, d),
            value_residual: Vec::new(),
            prompt_keys: Vec::new(),
            prompt_values: Vec::new(),
        };
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            settings,
            activations,
            layers: (0..shape.layers)
                .map(|_| (0..shape.kv_heads).map(|_| head()).collect())
                .collect(),
            processed: vec![0; shape.layers],
            expected_tokens: 0,
            prefilled: false,
        })
    }

    /// Every token's key and value as stored, dequantized, row-major.
    fn dequantized(&self, h: &HeadState) -> (Vec<f32>, Vec<f32>) {
        let mut keys = h.key_blocks.dequantize();
        keys.extend(to_f32(&h.key_residual));
        let mut values = h.value_rows.dequantize();
        values.extend(to_f32(&h.value_residual));
        (keys, values)
    }

    /// One decoding query per head over the packed and 16-bit parts, read in place: each
    /// key/value head's tokens are split in ranges of [`DECODE_SPLIT`] across threads, each
    /// range's codes read once for the head's whole group of query heads, and the ranges'
    /// softmax parts merged.
    fn decode_step(&self, layer: usize, query: &[f32]) -> Vec<f32> {
        let (d, per_kv) = (
            self.shape.head_dim,
            self.shape.q_heads / self.shape.kv_heads,
        );
        let heads: Vec<HeadParts> = self.layers[layer]
            .iter()
            .map(|h| HeadParts {
                keys: &h.key_blocks,
                key_residual: &h.key_residual,
                values: &h.value_rows,
                value_residual: &h.value_residual,
            })
            .collect();
        // Ranges start on key blocks.
        let split = DECODE_SPLIT.next_multiple_of(self.settings.group);
        let tasks = token_ranges(heads.iter().map(|h| h.tokens(d)), split);
        let parts: Vec<DecodePart> = tasks
            .par_iter()
            .map(|&(g, t0, t1)| {
                let queries = &query[g * per_kv * d..(g + 1) * per_kv * d];
                let (bits, activations) = (self.settings.bits, self.activations);
                decode_part(&heads[g], queries, d, (t0, t1), bits, activations)
            })
            .collect();
        let mut out = vec![0f32; self.shape.q_heads * d];
        merge_decode_parts(&tasks, &parts, (per_kv, d), &mut out, |_, _| None);
        out
    }

    /// The end-of-prompt split into quantized and 16-bit parts, with storage sized for
    /// the whole sequence of `total` tokens; the f32 prompt is freed.
    fn compress_prompt(h: &mut HeadState, d: usize, settings: &KiviSettings, total: usize) {
        let residual = settings.residual;
        let tokens = h.prompt_keys.len() / d;
        let total = total.max(tokens);
        let (keys, values) = (
            std::mem::take(&mut h.prompt_keys),
            std::mem::take(&mut h.prompt_values),
        );
        h.key_blocks
            .reserve(total / residual * residual / settings.group);
        h.value_rows.reserve(total.saturating_sub(residual));
        let quantized_keys = (tokens - tokens % residual) * d;
        h.quantize_keys(&keys[..quantized_keys], d, settings.group);
        let quantized_values = tokens.saturating_sub(residual) * d;
        h.quantize_values(&values[..quantized_values], d);
        h.key_residual.reserve_exact(residual * d);
        h.key_residual.extend(to_f16(&keys[quantized_keys..]));
        h.value_residual.reserve_exact((residual + 1) * d);
        h.value_residual.extend(to_f16(&values[quantized_values..]));
    }
}

impl KvCache for KiviCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, r: Reservation) -> Result<()> {
        self.expected_tokens = r.prompt + r.after_prompt();
        let rows = r.prompt * self.shape.head_dim;
        for h in self.layers.iter_mut().flatten() {
            h.prompt_keys
                .reserve_exact(rows.saturating_sub(h.prompt_keys.len()));
            h.prompt_values
                .reserve_exact(rows.saturating_sub(h.prompt_values.len()));
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
        let (t, d) = (q.dim(1)?, self.shape.head_dim);
        let q = self.rope.apply(q, pos)?;
        let k: Vec<Vec<Vec<f32>>> = self.rope.apply(k, pos)?.to_vec3()?;
        let v: Vec<Vec<Vec<f32>>> = v.to_dtype(DType::F32)?.to_vec3()?;
        let (settings, device) = (self.settings, self.device.clone());
        let out = if !self.prefilled {
            let heads = &mut self.layers[layer];
            // The prompt stays unquantized until it is complete, read where it is stored.
            for ((h, ks), vs) in heads.iter_mut().zip(&k).zip(&v) {
                ks.iter()
                    .for_each(|row| h.prompt_keys.extend_from_slice(row));
                vs.iter()
                    .for_each(|row| h.prompt_values.extend_from_slice(row));
            }
            fn rows(data: &[f32], d: usize) -> StridedRows<'_, f32> {
                StridedRows {
                    data,
                    base: 0,
                    stride: d,
                }
            }
            let queries: Vec<f32> = q.flatten_all()?.to_vec1()?;
            let out = tiled::attend(
                &Causal {
                    queries: &queries,
                    q_heads: self.shape.q_heads,
                    t,
                    width: d,
                    keys: heads.iter().map(|h| rows(&h.prompt_keys, d)).collect(),
                    values: heads.iter().map(|h| rows(&h.prompt_values, d)).collect(),
                    first_query_key: pos,
                    scale: 1.0 / (d as f32).sqrt(),
                },
                None,
            )?;
            Ok(Tensor::from_vec(out, (self.shape.q_heads, t, d), &device)?)
        } else if t == 1 {
            for ((h, ks), vs) in self.layers[layer].iter_mut().zip(&k).zip(&v) {
                h.key_residual.extend(to_f16(&ks[0]));
                h.value_residual.extend(to_f16(&vs[0]));
            }
            let out = self.decode_step(layer, &q.flatten_all()?.to_vec1()?);
            for h in self.layers[layer].iter_mut() {
                h.settle(d, &settings);
            }
            Ok(Tensor::from_vec(out, (self.shape.q_heads, 1, d), &device)?)
        } else {
            // Several tokens after the prompt: attend over the dequantized cache, then store
            // them one by one under the decoding rules.
            // Held rows: every position's, or fewer where a dropping policy chose them.
            let held = self.kept_tokens(layer);
            let n = held + t;
            let mut keys = Vec::with_capacity(self.shape.kv_heads * n * d);
            let mut values = Vec::with_capacity(self.shape.kv_heads * n * d);
            for ((h, ks), vs) in self.layers[layer].iter().zip(&k).zip(&v) {
                let (hk, hv) = self.dequantized(h);
                if hk.len() != held * d {
                    return Err(crate::cache::uneven_heads());
                }
                keys.extend(hk.into_iter().chain(ks.iter().flatten().copied()));
                values.extend(hv.into_iter().chain(vs.iter().flatten().copied()));
            }
            let shape = (self.shape.kv_heads, n, d);
            let out = causal_attention(
                &q,
                &Tensor::from_vec(keys, shape, &device)?,
                &Tensor::from_vec(values, shape, &device)?,
                held,
            );
            for ((h, ks), vs) in self.layers[layer].iter_mut().zip(&k).zip(&v) {
                for (key, value) in ks.iter().zip(vs) {
                    h.push_token(key, value, d, &settings);
                }
            }
            out
        };
        self.processed[layer] = pos + t;
        out
    }

    fn end_prefill(&mut self) -> Result<()> {
        if self.prefilled {
            return Ok(());
        }
        self.prefilled = true;
        let (d, total) = (self.shape.head_dim, self.expected_tokens);
        for h in self.layers.iter_mut().flatten() {
            Self::compress_prompt(h, d, &self.settings, total);
        }
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|h| {
                h.key_blocks.bytes()
                    + h.value_rows.bytes()
                    + 2 * (h.key_residual.capacity() + h.value_residual.capacity())
                    + 4 * (h.prompt_keys.capacity() + h.prompt_values.capacity())
            })
            .sum()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.fp16_bytes_per_token()
    }

    /// Averaged over key/value heads (adopted heads may hold different counts).
    fn kept_tokens(&self, layer: usize) -> usize {
        let d = self.shape.head_dim;
        self.layers.get(layer).map_or(0, |heads| {
            let tokens = |h: &HeadState| {
                h.key_blocks.tokens() + (h.key_residual.len() + h.prompt_keys.len()) / d
            };
            heads.iter().map(tokens).sum::<usize>() / heads.len().max(1)
        })
    }

    /// The kept rows are the prompt KIVI compresses: keys in whole groups per channel, the
    /// rest, under the residual, in 16 bits.
    fn adopt(
        &mut self,
        layer: usize,
        kept: Vec<(Vec<f32>, Vec<f32>)>,
        prompt: usize,
        after: usize,
    ) -> Result<()> {
        let d = self.shape.head_dim;
        for (h, (keys, values)) in self.layers[layer].iter_mut().zip(kept) {
            let total = keys.len() / d + after;
            (h.prompt_keys, h.prompt_values) = (keys, values);
            Self::compress_prompt(h, d, &self.settings, total);
        }
        self.processed[layer] = prompt;
        Ok(())
    }

    fn reset(&mut self) {
        for h in self.layers.iter_mut().flatten() {
            h.key_blocks.clear();
            h.value_rows.clear();
            h.key_residual.clear();
            h.value_residual.clear();
            h.prompt_keys.clear();
            h.prompt_values.clear();
        }
        self.processed.iter_mut().for_each(|p| *p = 0);
        self.prefilled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn cache(bits: u32) -> KiviCache {
        let settings = KiviSettings {
            bits,
            group: 32,
            residual: 32,
        };
        // Exact decoding arithmetic: these tests are about storage and streaming rules (the
        // int8 arithmetic has its own bound below).
        let exact = DecodeActivations::F32;
        KiviCache::new(shape(), rope(), &Device::Cpu, settings, exact).unwrap()
    }

    /// `(quantized keys, full keys, quantized values, full values)` of layer 0, head 0.
    fn split(c: &KiviCache) -> (usize, usize, usize, usize) {
        let h = &c.layers[0][0];
        (
            h.key_blocks.tokens(),
            h.key_residual.len() / 64,
            h.value_rows.rows(),
            h.value_residual.len() / 64,
        )
    }

    #[test]
    fn streaming_rules_follow_the_reference_implementation() {
        let data = sequence(110);
        let mut c = cache(2);
        let (_, seen) = run(&mut c, &data, &[40, 30], split);
        // While prefilling everything is held in full precision.
        assert_eq!(seen[1], (0, 0, 0, 0));
        assert_eq!(c.kept_tokens(0), 110);
        // End of a 70-token prompt: keys in whole residual runs (64), the last 6 wait;
        // values all but the last 32. Then each step: the key run quantizes at 32, the oldest
        // value beyond 32 is quantized.
        assert_eq!(seen[2], (64, 7, 39, 32));
        assert_eq!(seen[2 + 24], (64, 31, 63, 32));
        assert_eq!(seen[2 + 25], (96, 0, 64, 32));
        assert_eq!(seen[39], (96, 12, 76, 32));
    }

    #[test]
    fn eight_bits_track_the_full_cache_and_prefill_is_exact() {
        let data = sequence(110);
        let chunks = [40, 30];
        let want = full_outputs(&data, &chunks);
        let (got, _) = run(&mut cache(8), &data, &chunks, |_| ());
        assert!(
            max_difference(&got[..2], &want[..2]) < 1e-5,
            "prefill is full precision"
        );
        let diff = max_difference(&got, &want);
        assert!(diff < 0.02, "{diff}");
        let (two_bit, _) = run(&mut cache(2), &data, &chunks, |_| ());
        assert!(
            max_difference(&two_bit, &want) > diff,
            "2-bit is coarser than 8-bit"
        );
    }

    #[test]
    fn keys_dequantize_within_the_per_channel_min_max_bound() {
        let data = sequence(70);
        for bits in [2, 4, 8] {
            let mut c = cache(bits);
            run(&mut c, &data, &[70], |_| ());
            c.end_prefill().unwrap();
            let (keys, _) = c.dequantized(&c.layers[0][0]);
            let (_, rotated_keys) = rotated(&data.0, &data.1);
            let levels = ((1u32 << bits) - 1) as f32;
            for block in 0..2 {
                for ch in 0..64 {
                    let column: Vec<f32> = (block * 32..block * 32 + 32)
                        .map(|t| rotated_keys[0][t][ch])
                        .collect();
                    let (min, max) = column
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
                    let bound = (max - min) / levels / 2.0 + 2e-3 * (max.abs() + min.abs()) + 1e-6;
                    for (j, x) in column.iter().enumerate() {
                        let back = keys[(block * 32 + j) * 64 + ch];
                        assert!((back - x).abs() <= bound, "bits {bits}: {back} vs {x}");
                    }
                }
            }
        }
    }

    /// With f32 activations, decoding in place equals attention over the dequantized cache;
    /// with int8 activations, the rounding of the folded query and probabilities adds under
    /// 15% of the error that 2-bit quantization itself makes against full precision (4–7%
    /// measured over 24 random draws).
    #[test]
    fn decode_in_place_equals_attention_over_the_dequantized_cache() {
        // One task per head, and three (two whole ranges and a part) merged.
        for n in [71, 2501] {
            let exact = decode_against_references(n, DecodeActivations::F32);
            assert!(exact.0 < 1e-5, "{n} tokens, f32: off by {}", exact.0);
            let (rounded, quantization) = decode_against_references(n, DecodeActivations::Int8);
            eprintln!(
                "{n} tokens: int8 off by {rounded:e}, 2-bit quantization by {quantization:e}"
            );
            assert!(
                rounded < 0.15 * quantization,
                "{n} tokens, int8: off by {rounded}, 2-bit quantization by {quantization}"
            );
        }
    }

    /// One decoding step's largest difference from attention over the dequantized cache,
    /// and that attention's largest difference from attention over full-precision keys and
    /// values.
    fn decode_against_references(n: usize, activations: DecodeActivations) -> (f32, f32) {
        let p = n - 1;
        let data = sequence(n);
        let (q, k, v) = &data;
        let prompt = (
            q.narrow(1, 0, p).unwrap(),
            k.narrow(1, 0, p).unwrap(),
            v.narrow(1, 0, p).unwrap(),
        );
        let settings = KiviSettings {
            bits: 2,
            group: 32,
            residual: 32,
        };
        let mut c =
            KiviCache::new(shape(), rope_for(n), &Device::Cpu, settings, activations).unwrap();
        run(&mut c, &prompt, &[p], |_| ());
        c.end_prefill().unwrap();
        let q_new = c.rope.apply(&q.narrow(1, p, 1).unwrap(), p).unwrap();
        let k_new = c.rope.apply(&k.narrow(1, p, 1).unwrap(), p).unwrap();
        let v_new = v.narrow(1, p, 1).unwrap();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (g, h) in c.layers[0].iter().enumerate() {
            let (hk, hv) = c.dequantized(h);
            let round = |t: &Tensor| -> Vec<f32> {
                t.narrow(0, g, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(|x| f16::from_f32(x).to_f32())
                    .collect()
            };
            keys.extend(hk.into_iter().chain(round(&k_new)));
            values.extend(hv.into_iter().chain(round(&v_new)));
        }
        let want = causal_attention(
            &q_new,
            &Tensor::from_vec(keys, (2, n, 64), &Device::Cpu).unwrap(),
            &Tensor::from_vec(values, (2, n, 64), &Device::Cpu).unwrap(),
            p,
        )
        .unwrap();
        let exact = causal_attention(&q_new, &c.rope.apply(k, 0).unwrap(), v, p).unwrap();
        let got = c
            .attend(
                0,
                p,
                &q.narrow(1, p, 1).unwrap(),
                &k.narrow(1, p, 1).unwrap(),
                &v_new,
            )
            .unwrap();
        (
            max_difference(&[got], std::slice::from_ref(&want)),
            max_difference(&[want], &[exact]),
        )
    }

    #[test]
    fn bytes_are_packed_codes_scales_and_a_16_bit_window() {
        let data = sequence(70);
        let mut c = cache(2);
        run(&mut c, &data, &[70], |_| ());
        c.end_prefill().unwrap();
        // Keys: 64 tokens × 64 channels at 2 bits + an f16 min and scale per 32-token group
        // of each channel; values: 38 rows in 3 whole blocks of 16, each 16 rows of 64
        // channels at 2 bits + 2 groups × 4 bytes; 16-bit windows sized for the residual
        // (keys) and residual + 1 (values).
        let per_head = 64 * 64 / 4 + 2 * 64 * 4 + 48 * (16 + 8) + 2 * 64 * (32 + 33);
        assert_eq!(c.stored_bytes(), 2 * 2 * per_head);
    }

    #[test]
    fn settings_are_checked() {
        let bad = |bits, group, residual| {
            KiviCache::new(
                shape(),
                rope(),
                &Device::Cpu,
                KiviSettings {
                    bits,
                    group,
                    residual,
                },
                DecodeActivations::Int8,
            )
            .is_err()
        };
        assert!(bad(3, 32, 128));
        assert!(bad(2, 48, 128));
        assert!(bad(2, 8, 128), "not a multiple of the 16-token tile");
        assert!(bad(2, 32, 100));
        assert!(!bad(2, 32, 128));
    }
}
