//! Token dropping followed by quantization of what is kept: a policy that chooses once, when
//! the prompt ends (SnapKV, PyramidKV, the key scorers, Expected Attention, KVzip), holds
//! and attends the prompt as it does alone; at the prompt's end its kept rows move into a
//! quantizing cache ([`KvCache::adopt`]: per-token rows of llama.cpp's types or min–max
//! codes, rotated or not, or KIVI's per-channel keys and per-token values) and the dropping
//! cache's storage is freed. Decoding is the quantizing cache's own. The savings multiply:
//! SnapKV-4× with q4_0 holds about 1/14 of a 16-bit cache.
//!
//! The kept rows pass through the dropping cache's precision (f16 by default) before they
//! are quantized.

use candle_core::Tensor;

use crate::cache::Reservation;
use crate::{DecodeReads, DroppingCache, KvCache, KvError, KvShape, Result};

/// A dropping policy's kept tokens, quantized once the prompt ends.
pub struct DropThenQuantize {
    shape: KvShape,
    dropping: DroppingCache,
    /// The quantizing cache that adopts the kept rows.
    store: Box<dyn KvCache>,
    /// Whether the kept rows have moved into `store`.
    adopted: bool,
    /// What the sequence was reserved as.
    reservation: Reservation,
}

impl DropThenQuantize {
    /// `dropping`'s kept rows, moved into `store` (built for the same shape) when the
    /// prompt ends: its policy must choose once, then and never again.
    pub fn new(dropping: DroppingCache, store: Box<dyn KvCache>) -> Result<Self> {
        let drop = dropping.settings();
        if !drop.selects_once() || drop.decoding.is_some() {
            return Err(KvError::Setting(
                "quantizing what a policy keeps needs one that chooses once, when the prompt ends, and never again (snapkv, pyramidkv, random, knorm, keydiff, expected-attention, kvzip, duo-attention); streamingllm, h2o, tova and decoding budgets evict while decoding".into(),
            ));
        }
        Ok(Self {
            shape: dropping.shape(),
            dropping,
            store,
            adopted: false,
            reservation: Reservation::default(),
        })
    }
}

impl KvCache for DropThenQuantize {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, reservation: Reservation) -> Result<()> {
        self.reservation = reservation;
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
        match self.adopted {
            false => self.dropping.attend(layer, pos, q, k, v),
            true => self.store.attend(layer, pos, q, k, v),
        }
    }

    fn end_prefill(&mut self) -> Result<()> {
        if self.adopted {
            return Ok(());
        }
        self.dropping.end_prefill()?;
        let (prompt, after) = (self.reservation.prompt, self.reservation.after_prompt());
        for layer in 0..self.shape.layers {
            let kept = self.dropping.take_kept(layer);
            self.store.adopt(layer, kept, prompt, after)?;
        }
        self.store.end_prefill()?;
        self.adopted = true;
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        self.dropping.stored_bytes() + self.store.stored_bytes()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.store.uncompressed_bytes_per_token()
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        match self.adopted {
            false => self.dropping.kept_tokens(layer),
            true => self.store.kept_tokens(layer),
        }
    }

    /// The dropping policy's choice until the prompt ends; quantized rows keep no positions
    /// (their keys are already rotated).
    fn kept_positions(&self, layer: usize, kv_head: usize) -> Option<Vec<usize>> {
        match self.adopted {
            false => self.dropping.kept_positions(layer, kv_head),
            true => None,
        }
    }

    fn decode_reads(&self) -> Option<DecodeReads> {
        self.store.decode_reads()
    }

    /// KVzip's replay runs in the dropping cache, before the prompt ends.
    fn replay_chunk(&self) -> Option<usize> {
        self.dropping.replay_chunk()
    }

    fn begin_replay(&mut self, span: std::ops::Range<usize>) -> Result<()> {
        self.dropping.begin_replay(span)
    }

    fn end_replay(&mut self) -> Result<()> {
        self.dropping.end_replay()
    }

    fn reset(&mut self) {
        self.dropping.reset();
        self.store.reset();
        self.adopted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::row_formats::{hadamard, QuantRows};
    use crate::testutil::{max_difference, rope, sequence, shape};
    use crate::{
        causal_attention, Budget, DecodeActivations, DropPolicy, DropSettings, GgmlType, KeyScorer,
        KiviCache, KiviSettings, KvPrecision, QuantizedPrefill, RowFormat, RowQuantCache,
        RowQuantSettings, Selection,
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
            let rows = RowQuantCache::new(shape(), rope(), &dev, settings).unwrap();
            let mut both = DropThenQuantize::new(
                DroppingCache::new(shape(), rope(), &dev, knorm(4.0), KvPrecision::F32).unwrap(),
                Box::new(rows),
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
        let rows = RowQuantCache::new(shape(), rope(), &Device::Cpu, settings).unwrap();
        let refused = DropThenQuantize::new(
            DroppingCache::new(shape(), rope(), &Device::Cpu, h2o, KvPrecision::F16).unwrap(),
            Box::new(rows),
        );
        assert!(refused.is_err());
    }

    /// KVzip's replay reaches the dropping cache through the composition.
    #[test]
    fn the_composition_replays_for_kvzip() {
        let kvzip = DropSettings {
            policy: DropPolicy::KvZip(crate::KvZip {
                sinks: 4,
                chunk: 100,
            }),
            ..knorm(4.0)
        };
        let rows = RowQuantCache::new(
            shape(),
            rope(),
            &Device::Cpu,
            q8(true, QuantizedPrefill::Quantized),
        )
        .unwrap();
        let both = DropThenQuantize::new(
            DroppingCache::new(shape(), rope(), &Device::Cpu, kvzip, KvPrecision::F32).unwrap(),
            Box::new(rows),
        )
        .unwrap();
        assert_eq!(both.replay_chunk(), Some(100));
    }

    /// KIVI adopts the kept rows as its prompt: at 8 bits decoding tracks attention over
    /// the exact kept rows, at 2 bits less so; KIVI's storage is smaller than the kept rows'
    /// in f32, and the dropping cache's is freed.
    #[test]
    fn kivi_adopts_the_kept_rows_as_its_prompt() {
        let (dev, p) = (Device::Cpu, 160);
        let (q, k, v) = sequence(p + 1);
        let prompt = |x: &Tensor| x.narrow(1, 0, p).unwrap();
        let step = |x: &Tensor| x.narrow(1, p, 1).unwrap();
        let mut alone =
            DroppingCache::new(shape(), rope(), &dev, knorm(4.0), KvPrecision::F32).unwrap();
        alone.reserve(Reservation::prompt(p, 4)).unwrap();
        alone
            .attend(0, 0, &prompt(&q), &prompt(&k), &prompt(&v))
            .unwrap();
        alone.end_prefill().unwrap();
        let want = alone.attend(0, p, &step(&q), &step(&k), &step(&v)).unwrap();
        let mut diffs = Vec::new();
        for bits in [8, 2] {
            let settings = KiviSettings {
                bits,
                group: 32,
                residual: 32,
            };
            let exact = DecodeActivations::F32;
            let kivi = KiviCache::new(shape(), rope(), &dev, settings, exact).unwrap();
            let mut both = DropThenQuantize::new(
                DroppingCache::new(shape(), rope(), &dev, knorm(4.0), KvPrecision::F32).unwrap(),
                Box::new(kivi),
            )
            .unwrap();
            both.reserve(Reservation::prompt(p, 4)).unwrap();
            both.attend(0, 0, &prompt(&q), &prompt(&k), &prompt(&v))
                .unwrap();
            let before = both.stored_bytes();
            both.end_prefill().unwrap();
            assert_eq!(both.kept_tokens(0), p / 4);
            assert!(both.stored_bytes() < before / 4, "{}", both.stored_bytes());
            let got = both.attend(0, p, &step(&q), &step(&k), &step(&v)).unwrap();
            assert_eq!(both.kept_tokens(0), p / 4 + 1);
            diffs.push(max_difference(&[got], std::slice::from_ref(&want)));
        }
        assert!(diffs[0] < 0.02 && diffs[1] > diffs[0], "{diffs:?}");
    }
}
