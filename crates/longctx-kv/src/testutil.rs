//! Shared fixtures of the policy tests: a small geometry, its RoPE table, random chunks,
//! and a naive f64 attention oracle that selection tests rank tokens with.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::rows::HeadRows;
use crate::{
    FullCache, KvCache, KvPrecision, KvShape, Reservation, RopeSettings, RopeStyle, RopeTable,
};

/// Two layers, 4 query heads over 2 key/value heads of 64 channels.
pub fn shape() -> KvShape {
    KvShape {
        layers: 2,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 64,
    }
}

pub fn rope() -> Arc<RopeTable> {
    rope_for(512)
}

/// [`rope`]'s table for positions up to `max_positions`.
pub fn rope_for(max_positions: usize) -> Arc<RopeTable> {
    Arc::new(
        RopeTable::new(
            &RopeSettings {
                theta: 10000.0,
                head_dim: 64,
                style: RopeStyle::Half,
                scaling: None,
                max_positions,
            },
            &Device::Cpu,
        )
        .unwrap(),
    )
}

/// Random unrotated `(q, k, v)` for `tokens` tokens of [`shape`].
pub fn sequence(tokens: usize) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    (
        Tensor::randn(0f32, 1.0, (4, tokens, 64), &dev).unwrap(),
        Tensor::randn(0f32, 1.0, (2, tokens, 64), &dev).unwrap(),
        Tensor::randn(0f32, 1.0, (2, tokens, 64), &dev).unwrap(),
    )
}

/// Feed a prompt in `chunks` (lengths), end the prefill, then decode the remaining tokens
/// one at a time, through every layer; returns each call's output of layer 0 and, after
/// each call, `observe(cache)`.
pub fn run<C: KvCache + ?Sized, T>(
    cache: &mut C,
    (q, k, v): &(Tensor, Tensor, Tensor),
    chunks: &[usize],
    mut observe: impl FnMut(&C) -> T,
) -> (Vec<Tensor>, Vec<T>) {
    let total = q.dim(1).unwrap();
    let prompt: usize = chunks.iter().sum();
    cache
        .reserve(Reservation::prompt(prompt, total - prompt))
        .unwrap();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    for &c in chunks {
        spans.push((at, c));
        at += c;
    }
    spans.extend((prompt..total).map(|p| (p, 1)));
    let (mut outs, mut seen) = (Vec::new(), Vec::new());
    for (start, len) in spans {
        if start == prompt {
            cache.end_prefill().unwrap();
        }
        for layer in 0..cache.shape().layers {
            let out = cache
                .attend(
                    layer,
                    start,
                    &q.narrow(1, start, len).unwrap(),
                    &k.narrow(1, start, len).unwrap(),
                    &v.narrow(1, start, len).unwrap(),
                )
                .unwrap();
            if layer == 0 {
                outs.push(out);
            }
        }
        seen.push(observe(cache));
    }
    (outs, seen)
}

/// Largest absolute difference between two lists of tensors.
pub fn max_difference(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max)
}

/// Outputs of the uncompressed cache on the same run, keys and values in f32.
pub fn full_outputs(data: &(Tensor, Tensor, Tensor), chunks: &[usize]) -> Vec<Tensor> {
    full_outputs_in(data, chunks, KvPrecision::F32)
}

/// Outputs of the uncompressed cache on the same run, keys and values in `precision`.
pub fn full_outputs_in(
    data: &(Tensor, Tensor, Tensor),
    chunks: &[usize],
    precision: KvPrecision,
) -> Vec<Tensor> {
    let mut full = FullCache::new(shape(), rope(), &Device::Cpu, precision);
    run(&mut full, data, chunks, |_| ()).0
}

/// Rotated queries `[q_head][token][d]` and keys `[kv_head][token][d]` of a whole sequence.
pub fn rotated(q: &Tensor, k: &Tensor) -> (HeadRows, HeadRows) {
    let rope = rope();
    (
        rope.apply(q, 0).unwrap().to_vec3().unwrap(),
        rope.apply(k, 0).unwrap().to_vec3().unwrap(),
    )
}

/// Softmax attention probabilities of one query over `keys` (f64, no shortcuts).
pub fn probabilities(query: &[f32], keys: &[&Vec<f32>]) -> Vec<f64> {
    let d = query.len() as f64;
    let s: Vec<f64> = keys
        .iter()
        .map(|k| {
            query
                .iter()
                .zip(k.iter())
                .map(|(a, b)| (a * b) as f64)
                .sum::<f64>()
                / d.sqrt()
        })
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// Indices of the `k` largest values, ascending (ties to the earlier index).
pub fn best(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

/// The elementwise product of a query and a key: its sum is q·k, so an oracle can score keys
/// read by different queries (a window and a memory) in one [`oracle_output`] call.
pub fn product(query: &[f32], key: &[f32]) -> Vec<f32> {
    query.iter().zip(key).map(|(a, b)| a * b).collect()
}

/// One query's attention output from the [`product`]s of the keys it sees and their values:
/// softmax of `q·k / sqrt(d)` in f64, then the weighted sum of the values.
pub fn oracle_output(products: &[Vec<f32>], values: &[&Vec<f32>]) -> Vec<f64> {
    let ones = vec![1f32; products.first().map_or(0, Vec::len)];
    let keys: Vec<&Vec<f32>> = products.iter().collect();
    let probs = probabilities(&ones, &keys);
    (0..values.first().map_or(0, |v| v.len()))
        .map(|x| probs.iter().zip(values).map(|(p, v)| p * v[x] as f64).sum())
        .collect()
}

/// Largest absolute difference between a computed row and an oracle's.
pub fn row_difference(got: &[f32], want: &[f64]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - *w as f32).abs())
        .fold(0f32, f32::max)
}

/// Deterministic values in [-2, 2), for kernels compared on the same inputs.
pub fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}
