use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::cache::{check_chunk, growth_step, Reservation};
use crate::{causal_attention, KvCache, KvPrecision, KvShape, Result, RopeTable};

/// Keys and values of one layer in preallocated `[kv_heads, capacity, head_dim]` buffers,
/// written in place; growth beyond what `reserve` set aside copies into a larger buffer.
struct LayerBuffers {
    keys: Tensor,
    values: Tensor,
    len: usize,
}

/// The uncompressed baseline: every token's rotated key and value kept, in f16 or f32.
pub struct FullCache {
    shape: KvShape,
    precision: KvPrecision,
    rope: Arc<RopeTable>,
    device: Device,
    layers: Vec<Option<LayerBuffers>>,
    reserved: usize,
}

/// Smallest allocation, so that short sequences do not regrow repeatedly.
const MIN_CAPACITY: usize = 256;

impl FullCache {
    /// An empty cache; storage is allocated on `reserve` or the first chunk.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        precision: KvPrecision,
    ) -> Self {
        Self {
            shape,
            precision,
            rope,
            device: device.clone(),
            layers: (0..shape.layers).map(|_| None).collect(),
            reserved: 0,
        }
    }

    fn allocate(&self, capacity: usize) -> Result<(Tensor, Tensor)> {
        let dims = (self.shape.kv_heads, capacity, self.shape.head_dim);
        let dtype = self.precision.dtype();
        Ok((
            Tensor::zeros(dims, dtype, &self.device)?,
            Tensor::zeros(dims, dtype, &self.device)?,
        ))
    }

    /// Make room for `extra` more tokens in `layer`, growing geometrically.
    fn ensure_room(&mut self, layer: usize, extra: usize) -> Result<()> {
        let needed = self.layers[layer].as_ref().map_or(0, |b| b.len) + extra;
        let capacity = self.layers[layer]
            .as_ref()
            .map_or(0, |b| b.keys.dim(1).unwrap_or(0));
        if needed <= capacity {
            return Ok(());
        }
        let new_capacity = match (capacity, self.reserved) {
            (0, 0) => needed.max(MIN_CAPACITY),
            (0, reserved) => needed.max(reserved),
            _ => needed.max(capacity + growth_step(capacity)),
        };
        let (keys, values) = self.allocate(new_capacity)?;
        let len = match self.layers[layer].take() {
            Some(old) => {
                keys.slice_set(&old.keys.narrow(1, 0, old.len)?.contiguous()?, 1, 0)?;
                values.slice_set(&old.values.narrow(1, 0, old.len)?.contiguous()?, 1, 0)?;
                old.len
            }
            None => 0,
        };
        self.layers[layer] = Some(LayerBuffers { keys, values, len });
        Ok(())
    }
}

impl KvCache for FullCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, r: Reservation) -> Result<()> {
        let tokens = r.prompt + r.after_prompt();
        self.reserved = tokens;
        for layer in 0..self.shape.layers {
            let len = self.layers[layer].as_ref().map_or(0, |b| b.len);
            if len == 0 {
                // A new sequence holds exactly what it asked for, whatever an earlier one held.
                self.layers[layer] = None;
            }
            self.ensure_room(layer, tokens.saturating_sub(len))?;
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
        check_chunk(&self.shape, layer, pos, self.kept_tokens(layer))?;
        let t = k.dim(1)?;
        let q = self.rope.apply(q, pos)?;
        let k = self.rope.apply(k, pos)?;
        self.ensure_room(layer, t)?;
        let buffers = self.layers[layer]
            .as_mut()
            .expect("ensure_room allocated the layer");
        let dtype = self.precision.dtype();
        buffers
            .keys
            .slice_set(&k.to_dtype(dtype)?.contiguous()?, 1, pos)?;
        buffers
            .values
            .slice_set(&v.to_dtype(dtype)?.contiguous()?, 1, pos)?;
        buffers.len = pos + t;
        let keys = buffers.keys.narrow(1, 0, buffers.len)?;
        let values = buffers.values.narrow(1, 0, buffers.len)?;
        causal_attention(&q, &keys, &values, pos)
    }

    fn end_prefill(&mut self) -> Result<()> {
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|b| (b.keys.elem_count() + b.values.elem_count()) * self.precision.bytes())
            .sum()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.bytes_per_token(self.precision)
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(|b| b.as_ref())
            .map_or(0, |b| b.len)
    }

    fn reset(&mut self) {
        for buffers in self.layers.iter_mut().flatten() {
            buffers.len = 0;
        }
    }

    fn forget(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        for layer in 0..self.shape.layers {
            let held = self.kept_tokens(layer);
            if range.start > range.end || range.end > held {
                return Err(crate::KvError::Invalid(format!(
                    "cannot forget tokens {range:?} of layer {layer}, which holds {held}"
                )));
            }
        }
        for buffers in self.layers.iter_mut().flatten() {
            let after = buffers.len - range.end;
            if after > 0 && !range.is_empty() {
                for t in [&mut buffers.keys, &mut buffers.values] {
                    let moved = t.narrow(1, range.end, after)?.contiguous()?;
                    t.slice_set(&moved, 1, range.start)?;
                }
            }
            buffers.len -= range.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvError, RopeSettings, RopeStyle};
    use candle_core::DType;

    fn cache(max_positions: usize) -> FullCache {
        cache_in(max_positions, KvPrecision::F32)
    }

    fn cache_in(max_positions: usize, precision: KvPrecision) -> FullCache {
        let shape = KvShape {
            layers: 2,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let settings = RopeSettings {
            theta: 10000.0,
            head_dim: 8,
            style: RopeStyle::Half,
            scaling: None,
            max_positions,
        };
        FullCache::new(
            shape,
            Arc::new(RopeTable::new(&settings, &Device::Cpu).unwrap()),
            &Device::Cpu,
            precision,
        )
    }

    /// f16 buffers take half the bytes and attend exactly as f32 buffers holding the same
    /// keys and values rounded to f16 do.
    #[test]
    fn f16_storage_halves_the_bytes_and_reads_the_rounded_rows() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 20, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev).unwrap();
        let round = |x: &Tensor| {
            x.to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let mut half = cache_in(64, KvPrecision::F16);
        let got = half.attend(0, 0, &q, &k, &v).unwrap();
        let rotated_k = half.rope.apply(&k, 0).unwrap();
        let want = causal_attention(
            &half.rope.apply(&q, 0).unwrap(),
            &round(&rotated_k),
            &round(&v),
            0,
        )
        .unwrap();
        let diff = crate::testutil::max_difference(&[got], &[want]);
        assert!(
            diff < 1e-6,
            "f16 storage against its rounded values: {diff}"
        );
        let mut wide = cache(64);
        wide.attend(0, 0, &q, &k, &v).unwrap();
        assert_eq!(2 * half.stored_bytes(), wide.stored_bytes());
        assert_eq!(
            2 * half.uncompressed_bytes_per_token(),
            wide.uncompressed_bytes_per_token()
        );
    }

    #[test]
    fn chunked_attention_equals_one_shot_attention() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 20, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 20, 8), &dev).unwrap();
        let mut whole = cache(64);
        let one: Vec<f32> = whole
            .attend(0, 0, &q, &k, &v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut parts = cache(64);
        let mut pieces = Vec::new();
        for (start, len) in [(0, 7), (7, 1), (8, 12)] {
            let out = parts
                .attend(
                    0,
                    start,
                    &q.narrow(1, start, len).unwrap(),
                    &k.narrow(1, start, len).unwrap(),
                    &v.narrow(1, start, len).unwrap(),
                )
                .unwrap();
            pieces.push(out);
        }
        let chunked: Vec<f32> = Tensor::cat(&pieces, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = one
            .iter()
            .zip(&chunked)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "max abs difference {worst}");
    }

    #[test]
    fn stored_bytes_are_the_reserved_buffers_and_growth_keeps_contents() {
        let dev = Device::Cpu;
        let mut c = cache(4096);
        c.reserve(Reservation::prompt(300, 0)).unwrap();
        assert_eq!(c.stored_bytes(), 2 * 2 * (2 * 300 * 8) * 4);
        let k = Tensor::randn(0f32, 1.0, (2, 300, 8), &dev).unwrap();
        let q = Tensor::randn(0f32, 1.0, (4, 300, 8), &dev).unwrap();
        let first = c.attend(0, 0, &q, &k, &k).unwrap();
        // One more token forces growth; the earlier output must be reproducible from the grown store.
        c.attend(
            0,
            300,
            &q.narrow(1, 0, 1).unwrap(),
            &k.narrow(1, 0, 1).unwrap(),
            &k.narrow(1, 0, 1).unwrap(),
        )
        .unwrap();
        assert_eq!(c.kept_tokens(0), 301);
        assert!(c.stored_bytes() > 2 * 2 * (2 * 300 * 8) * 4);
        // A new sequence that reserves less holds exactly that.
        c.reset();
        c.reserve(Reservation::prompt(90, 10)).unwrap();
        assert_eq!(c.stored_bytes(), 2 * 2 * (2 * 100 * 8) * 4);
        // Tokens certain to follow the prompt (a question fed after it) are all set aside,
        // generated ones up to DECODE_RESERVE.
        c.reset();
        c.reserve(Reservation {
            prompt: 90,
            appended: 100,
            new_tokens: 1000,
            budget_input: None,
        })
        .unwrap();
        let rows = 90 + 100 + crate::DECODE_RESERVE;
        assert_eq!(c.stored_bytes(), 2 * 2 * (2 * rows * 8) * 4);
        let mut fresh = cache(4096);
        let again = fresh.attend(0, 0, &q, &k, &k).unwrap();
        let diff = (first - again)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn forgetting_rewinds_and_closes_the_gap() {
        let dev = Device::Cpu;
        let noise = |t: usize, heads: usize, seed: u64| {
            Tensor::from_vec(
                crate::testutil::noise(heads * t * 8, seed),
                (heads, t, 8),
                &dev,
            )
            .unwrap()
        };
        let (q, k, v) = (noise(6, 4, 1), noise(6, 2, 2), noise(6, 2, 3));
        let (q2, k2, v2) = (noise(2, 4, 4), noise(2, 2, 5), noise(2, 2, 6));
        // Six tokens, the last two forgotten, two new ones: as if only four had been fed.
        let mut a = cache(64);
        let mut b = cache(64);
        for layer in 0..2 {
            a.attend(layer, 0, &q, &k, &v).unwrap();
            b.attend(
                layer,
                0,
                &q.narrow(1, 0, 4).unwrap(),
                &k.narrow(1, 0, 4).unwrap(),
                &v.narrow(1, 0, 4).unwrap(),
            )
            .unwrap();
        }
        a.forget(4..6).unwrap();
        assert_eq!(a.kept_tokens(1), 4);
        for layer in 0..2 {
            let out_a = a.attend(layer, 4, &q2, &k2, &v2).unwrap();
            let out_b = b.attend(layer, 4, &q2, &k2, &v2).unwrap();
            let diff = (out_a - out_b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
        // A gap in the middle: the rows after it move down, unchanged.
        let key_rows = |c: &FullCache, start: usize| -> Vec<f32> {
            let keys = &c.layers[0].as_ref().unwrap().keys;
            let rows = keys.narrow(1, start, 3).unwrap().contiguous().unwrap();
            rows.flatten_all().unwrap().to_vec1().unwrap()
        };
        let before = key_rows(&a, 3);
        a.forget(1..3).unwrap();
        let after = key_rows(&a, 1);
        assert_eq!(before, after);
        assert_eq!(a.kept_tokens(0), 4);
        // Past the end, or reversed: refused, nothing changed.
        assert!(matches!(a.forget(3..9), Err(KvError::Invalid(_))));
        assert_eq!(a.kept_tokens(0), 4);
    }

    #[test]
    fn out_of_order_chunks_are_rejected() {
        let dev = Device::Cpu;
        let mut c = cache(64);
        let q = Tensor::zeros((4, 2, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((2, 2, 8), DType::F32, &dev).unwrap();
        assert!(matches!(
            c.attend(0, 5, &q, &k, &k),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            c.attend(9, 0, &q, &k, &k),
            Err(KvError::Invalid(_))
        ));
    }
}
