//! Token dropping followed by quantization of what is kept: a policy that chooses once, when
//! the prompt ends (SnapKV, PyramidKV, the key scorers), holds and attends the prompt as it
//! does alone; at the prompt's end its kept rows move into per-token quantized rows
//! ([`RowQuantSettings`]: llama.cpp's types, min–max codes, rotated or not) and the
//! dropping cache's storage is freed. Decoding appends quantized rows and reads them in
//! place. The savings multiply: SnapKV-4× with q4_0 holds about 1/14 of a 16-bit cache.
//!
//! The kept rows pass through the dropping cache's precision (f16 by default) before they
//! are quantized. Under the `quantized` prefill rule a decoding token attends to its own
//! key and value quantized (llama.cpp's); under `full`, in full precision before they are
//! stored.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::cache::{check_chunk, Reservation};
use crate::row_cache::{attend_stored, LayerRows, Rotation};
use crate::{
    DropSettings, DroppingCache, KvCache, KvError, KvPrecision, KvShape, Result, RopeTable,
    RowQuantSettings,
};

/// A dropping policy's kept tokens, quantized once the prompt ends.
pub struct DropThenQuantize {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    dropping: DroppingCache,
    settings: RowQuantSettings,
    rotation: Option<Rotation>,
    /// Per layer, the quantized rows once the prompt has ended.
    layers: Vec<LayerRows>,
    /// Whether the kept rows have moved into `layers`.
    quantized: bool,
    /// Tokens each layer has been shown since the prompt ended.
    processed: Vec<usize>,
    /// Rows to set aside after the prompt.
    after_prompt: usize,
}

impl DropThenQuantize {
    /// A cache for `shape`: `drop` must choose once, when the prompt ends; `precision` is
    /// what the dropping cache holds the prompt in.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        (drop, quantize): (DropSettings, RowQuantSettings),
        precision: KvPrecision,
    ) -> Result<Self> {
        if !drop.selects_once() {
            return Err(KvError::Setting(
                "quantizing what a policy keeps needs one that chooses once, when the prompt ends (snapkv, pyramidkv, random, knorm, keydiff); streamingllm, h2o and tova evict while decoding".into(),
            ));
        }
        let rotation = quantize
            .validate(&shape)?
            .map(|(keys, values)| Rotation { keys, values });
        let dropping = DroppingCache::new(shape, rope.clone(), device, drop, precision)?;
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            dropping,
            settings: quantize,
            rotation,
            layers: (0..shape.layers)
                .map(|_| LayerRows::new(&quantize, shape.kv_heads, shape.head_dim))
                .collect(),
            quantized: false,
            processed: vec![0; shape.layers],
            after_prompt: 0,
        })
    }
}

impl KvCache for DropThenQuantize {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, reservation: Reservation) -> Result<()> {
        self.after_prompt = reservation.after_prompt();
        self.dropping.reserve(reservation)
    }

    fn attend(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        if !self.quantized {
            self.processed[layer] = pos + q.dim(1)?;
            return self.dropping.attend(layer, pos, q, k, v);
        }
        check_chunk(&self.shape, layer, pos, self.processed[layer])?;
        let (q, k, v) = Rotation::inputs(self.rotation, &self.rope, pos, (q, k, v))?;
        let rows = &mut self.layers[layer];
        let out = attend_stored(rows, &q, (k, v), self.settings.prefill, &self.device)?;
        self.processed[layer] = pos + q.dim(1)?;
        Rotation::output(self.rotation, out)
    }

    fn end_prefill(&mut self) -> Result<()> {
        if self.quantized {
            return Ok(());
        }
        self.dropping.end_prefill()?;
        let d = self.shape.head_dim;
        for layer in 0..self.shape.layers {
            let kept = self.dropping.take_kept(layer);
            let rows = &mut self.layers[layer];
            for (h, (mut keys, mut values)) in kept.into_iter().enumerate() {
                if let Some(r) = &self.rotation {
                    crate::hadamard(&mut keys, r.keys);
                    crate::hadamard(&mut values, r.values);
                }
                rows.keys[h].reserve(keys.len() / d + self.after_prompt);
                rows.values[h].reserve(values.len() / d + self.after_prompt);
                keys.chunks_exact(d).for_each(|row| rows.keys[h].push(row));
                values
                    .chunks_exact(d)
                    .for_each(|row| rows.values[h].push(row));
            }
        }
        self.quantized = true;
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        self.dropping.stored_bytes() + self.layers.iter().map(LayerRows::bytes).sum::<usize>()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.fp16_bytes_per_token()
    }

    /// Averaged over key/value heads.
    fn kept_tokens(&self, layer: usize) -> usize {
        if !self.quantized {
            return self.dropping.kept_tokens(layer);
        }
        self.layers.get(layer).map_or(0, |rows| {
            rows.keys.iter().map(|h| h.rows()).sum::<usize>() / rows.keys.len().max(1)
        })
    }

    /// The dropping policy's choice until the prompt ends; quantized rows keep no positions
    /// (their keys are already rotated).
    fn kept_positions(&self, layer: usize, kv_head: usize) -> Option<Vec<usize>> {
        if self.quantized {
            return None;
        }
        self.dropping.kept_positions(layer, kv_head)
    }

    fn reset(&mut self) {
        self.dropping.reset();
        self.layers.iter_mut().for_each(LayerRows::clear);
        self.quantized = false;
        self.processed.iter_mut().for_each(|p| *p = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row_formats::{hadamard, QuantRows};
    use crate::testutil::{max_difference, rope, sequence, shape};
    use crate::{
        causal_attention, Budget, DropPolicy, GgmlType, KeyScorer, QuantizedPrefill, RowFormat,
        Selection,
    };

    fn knorm(ratio: f64) -> DropSettings {
        DropSettings {
            selection: Selection::PerHead,
            schedule: crate::Schedule::Uniform,
            decoding: None,
            policy: DropPolicy::Keys(KeyScorer::Knorm),
            budget: Budget::Ratio(ratio),
        }
    }

    fn q8(rotate: bool, prefill: QuantizedPrefill) -> RowQuantSettings {
        let format = RowFormat::Ggml(GgmlType::Q8_0);
        RowQuantSettings {
            keys: format,
            values: format,
            rotate,
            prefill,
        }
    }

    /// The prompt is the dropping cache's alone; after it, a decoding step reads exactly
    /// the kept rows rotated, quantized and read back (and its own, quantized), and the
    /// bytes held are the quantized rows'.
    #[test]
    fn decoding_reads_the_kept_rows_quantized() {
        let (dev, p) = (Device::Cpu, 40);
        let (q, k, v) = sequence(p + 1);
        let prompt = |x: &Tensor| x.narrow(1, 0, p).unwrap();
        let step = |x: &Tensor| x.narrow(1, p, 1).unwrap();
        for prefill in [QuantizedPrefill::Quantized, QuantizedPrefill::Full] {
            let settings = q8(true, prefill);
            let mut alone =
                DroppingCache::new(shape(), rope(), &dev, knorm(4.0), KvPrecision::F32).unwrap();
            let mut both = DropThenQuantize::new(
                shape(),
                rope(),
                &dev,
                (knorm(4.0), settings),
                KvPrecision::F32,
            )
            .unwrap();
            let reservation = Reservation::prompt(p, 4);
            alone.reserve(reservation).unwrap();
            both.reserve(reservation).unwrap();
            let a = alone
                .attend(0, 0, &prompt(&q), &prompt(&k), &prompt(&v))
                .unwrap();
            let b = both
                .attend(0, 0, &prompt(&q), &prompt(&k), &prompt(&v))
                .unwrap();
            assert!(max_difference(&[a], &[b]) < 1e-6);
            alone.end_prefill().unwrap();
            both.end_prefill().unwrap();
            assert_eq!(both.kept_tokens(0), p / 4);
            // The reference: the kept rows of each head, rotated, quantized, read back and
            // rotated back; the new token's own key and value likewise or in full.
            let rk = rope().apply(&k, 0).unwrap();
            let read_back = |x: &[f32]| -> Vec<f32> {
                let mut data = x.to_vec();
                hadamard(&mut data, 64);
                let mut rows = QuantRows::new(settings.keys, 64);
                data.chunks_exact(64).for_each(|r| rows.push(r));
                let mut back = rows.dequantize();
                hadamard(&mut back, 64);
                back
            };
            // The kept keys (rotated at their positions) and values of each head.
            let kept: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                .map(|h| {
                    let rows = |x: &Tensor| -> Vec<f32> {
                        let head = x.get(h).unwrap();
                        alone
                            .kept_positions(0, h)
                            .unwrap()
                            .iter()
                            .flat_map(|&t| head.get(t).unwrap().to_vec1::<f32>().unwrap())
                            .collect()
                    };
                    (rows(&rk), rows(&v))
                })
                .collect();
            let quantized_own = prefill == QuantizedPrefill::Quantized;
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for (h, (hk, hv)) in kept.iter().enumerate() {
                let own_k: Vec<f32> = rk.get(h).unwrap().get(p).unwrap().to_vec1().unwrap();
                let own_v: Vec<f32> = v.get(h).unwrap().get(p).unwrap().to_vec1().unwrap();
                let (mut hk, mut hv) = (read_back(hk), read_back(hv));
                if quantized_own {
                    hk.extend(read_back(&own_k));
                    hv.extend(read_back(&own_v));
                } else {
                    hk.extend(own_k);
                    hv.extend(own_v);
                }
                keys.push(Tensor::from_vec(hk, (1, p / 4 + 1, 64), &dev).unwrap());
                values.push(Tensor::from_vec(hv, (1, p / 4 + 1, 64), &dev).unwrap());
            }
            let (keys, values) = (
                Tensor::cat(&keys, 0).unwrap(),
                Tensor::cat(&values, 0).unwrap(),
            );
            let rq = rope().apply(&step(&q), p).unwrap();
            let want = causal_attention(&rq, &keys, &values, p / 4).unwrap();
            let got = both.attend(0, p, &step(&q), &step(&k), &step(&v)).unwrap();
            let diff = max_difference(&[got], &[want]);
            assert!(diff < 1e-4, "{prefill:?}: {diff}");
            // Layer 1 was never fed: only layer 0's rows, 34 bytes per q8_0 row of 64.
            let rows = p / 4 + 1;
            assert!(both.stored_bytes() >= 2 * 2 * rows * 68);
            assert!(both.stored_bytes() < alone.stored_bytes());
        }
    }

    #[test]
    fn policies_that_evict_while_decoding_are_refused() {
        let h2o = DropSettings {
            selection: Selection::PerHead,
            schedule: crate::Schedule::Uniform,
            decoding: None,
            policy: DropPolicy::Tova,
            budget: Budget::Ratio(4.0),
        };
        let settings = q8(false, QuantizedPrefill::Quantized);
        let refused = DropThenQuantize::new(
            shape(),
            rope(),
            &Device::Cpu,
            (h2o, settings),
            KvPrecision::F16,
        );
        assert!(refused.is_err());
    }
}
