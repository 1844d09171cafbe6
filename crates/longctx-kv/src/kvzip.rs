//! KVzip (Kim et al., "KVzip: Query-Agnostic KV Cache Compression with Context
//! Reconstruction", 2025), as kvpress's `KVzipPress` runs it: once the context is cached,
//! the model is asked to repeat it ("Repeat the previous context exactly."), chunk after
//! chunk, under the full cache. A context token scores the most attention any query of
//! the repetition pays it, computed over the sinks, the chunk being repeated and the
//! repetition itself; the repetition is then forgotten. The lowest scores over every layer
//! and key/value head are dropped at once, so layers and heads keep different counts.
//! Sinks are always kept. The replay costs about a second prefill, counted in prefill time.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};

use crate::{Budget, KvError, Result};

/// Settings of KVzip (kvpress's defaults: 4 sinks, chunks of 2,048 tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvZip {
    /// Leading tokens always kept, and read by every repetition (`n_sink`).
    pub sinks: usize,
    /// Context tokens repeated per replay pass (`chunk_size`).
    pub chunk: usize,
}

impl KvZip {
    /// Settings that cannot run are refused.
    pub fn validate(&self) -> Result<()> {
        if self.chunk == 0 {
            return Err(KvError::Setting(
                "chunk must be positive (context tokens repeated per pass; kvpress uses 2048)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// How many scores survive out of `scores` (every layer, head and token), as kvpress
    /// prunes `int(scores × compression_ratio)` of them; a token budget keeps that many per
    /// head on average.
    pub(crate) fn kept_total(budget: Budget, scores: usize, heads: usize) -> usize {
        match budget.fraction() {
            Some(keep) => scores - (scores as f64 * (1.0 - keep)).floor() as usize,
            None => (heads * budget.tokens(0)).min(scores),
        }
    }
}

/// Each key/value head's score of the repeated span's tokens from one chunk of a replay:
/// the most attention any of its query heads' replay queries pays the token, softmax taken
/// over the sinks, the span and the replay so far (causal within the replay).
///
/// `q` holds the chunk's rotated queries `[q_heads, t, d]`; `keys` every held key
/// `[kv_heads, n, d]` in position order: the context's `context` rows, then the replay's
/// rows up to and including this chunk.
pub(crate) fn replay_scores(
    q: &Tensor,
    keys: &Tensor,
    context: usize,
    span: &Range<usize>,
    sinks: usize,
) -> Result<Tensor> {
    let (q_heads, t, d) = q.dims3()?;
    let (kv_heads, n, _) = keys.dims3()?;
    let group = q_heads / kv_heads;
    let replayed = n - context;
    let sinks = sinks.min(span.start);
    let keys = keys.to_dtype(DType::F32)?;
    let picked = Tensor::cat(
        &[
            &keys.narrow(1, 0, sinks)?,
            &keys.narrow(1, span.start, span.len())?,
            &keys.narrow(1, context, replayed)?,
        ],
        1,
    )?;
    let m = picked.dim(1)?;
    // Query heads of one key/value head are adjacent (transformers' repeat_kv order).
    let logits = (q
        .to_dtype(DType::F32)?
        .reshape((kv_heads, group * t, d))?
        .matmul(&picked.transpose(1, 2)?.contiguous()?)?
        / (d as f64).sqrt())?
    .reshape((kv_heads, group, t, m))?;
    // Query i of the chunk is replay token `replayed - t + i`: it reads replay keys up to it.
    let fixed = sinks + span.len();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..m).map(move |j| match j < fixed || j - fixed <= replayed - t + i {
                true => 0.0,
                false => f32::NEG_INFINITY,
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (1, 1, t, m), &Device::Cpu)?;
    let weights = candle_nn::ops::softmax_last_dim(&logits.broadcast_add(&mask)?)?;
    Ok(weights
        .narrow(D::Minus1, sinks, span.len())?
        .max(2)?
        .max(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;

    /// Brute force in f64 over explicit key lists, per query head.
    #[test]
    fn replay_scores_are_the_largest_masked_softmax_weights() {
        let (q_heads, kv_heads, d) = (4, 2, 8);
        let (context, replay, t) = (20, 9, 4);
        let n = context + replay;
        let span = 6..14;
        let sinks = 3;
        let q = noise(q_heads * t * d, 1);
        let keys = noise(kv_heads * n * d, 2);
        let qt = Tensor::from_vec(q.clone(), (q_heads, t, d), &Device::Cpu).unwrap();
        let kt = Tensor::from_vec(keys.clone(), (kv_heads, n, d), &Device::Cpu).unwrap();
        let ours: Vec<Vec<f32>> = replay_scores(&qt, &kt, context, &span, sinks)
            .unwrap()
            .to_vec2()
            .unwrap();
        for g in 0..kv_heads {
            let key = |p: usize| &keys[(g * n + p) * d..(g * n + p + 1) * d];
            let mut want = vec![0f64; span.len()];
            for h in g * 2..g * 2 + 2 {
                for i in 0..t {
                    let query = &q[(h * t + i) * d..(h * t + i + 1) * d];
                    // The chunk is the replay's last t tokens.
                    let own = replay - t + i;
                    let visible: Vec<usize> = (0..sinks)
                        .chain(span.clone())
                        .chain(context..=context + own)
                        .collect();
                    let logits: Vec<f64> = visible
                        .iter()
                        .map(|&p| {
                            query
                                .iter()
                                .zip(key(p))
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let total: f64 = logits.iter().map(|l| l.exp()).sum();
                    for (s, p) in span.clone().enumerate() {
                        let at = visible.iter().position(|&v| v == p).unwrap();
                        want[s] = want[s].max(logits[at].exp() / total);
                    }
                }
            }
            for (s, w) in want.iter().enumerate() {
                assert!(
                    (ours[g][s] as f64 - w).abs() < 1e-6,
                    "head {g} token {s}: {} vs {w}",
                    ours[g][s]
                );
            }
        }
    }

    #[test]
    fn kept_total_prunes_as_kvpress_rounds() {
        // 30 layers × 3 heads × 335 tokens at compression 0.75: int(30150 × 0.75) pruned.
        assert_eq!(
            KvZip::kept_total(Budget::Ratio(4.0), 30150, 90),
            30150 - 22612
        );
        assert_eq!(KvZip::kept_total(Budget::Tokens(10), 30150, 90), 900);
        assert_eq!(KvZip::kept_total(Budget::Tokens(1000), 30150, 90), 30150);
    }
}
