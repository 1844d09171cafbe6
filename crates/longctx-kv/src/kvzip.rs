//! KVzip (Kim et al., "KVzip: Query-Agnostic KV Cache Compression with Context
//! Reconstruction", 2025), as kvpress's `KVzipPress` runs it: once the context is cached,
//! the model is asked to repeat it ("Repeat the previous context exactly."), chunk after
//! chunk, under the full cache. A context token scores the most attention any query of
//! the repetition pays it, computed over the sinks, the chunk being repeated and the
//! repetition itself; the repetition is then forgotten. The lowest scores over every layer
//! and key/value head are dropped at once, so layers and heads keep different counts.
//! Sinks are always kept. The replay costs about a second prefill, counted in prefill time.

use std::ops::Range;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

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

/// Query rows whose logits are computed at once: a block's logits stay a few megabytes
/// however long the prompt.
const BLOCK: usize = 128;

/// Each key/value head's score of the repeated span's tokens from one chunk of a replay:
/// the most attention any of its query heads' replay queries pays the token, softmax taken
/// over the sinks, the span and the replay so far (causal within the replay).
///
/// `q` holds the chunk's rotated queries `[q_heads, t, d]`; `keys` every held key
/// `[kv_heads, n, d]` in position order: the context's `context` rows, then the replay's
/// rows up to and including this chunk. Logits come from a GEMM per block of query rows;
/// the masked softmax and the maximum over rows are one pass over each block.
pub(crate) fn replay_scores(
    q: &Tensor,
    keys: &Tensor,
    context: usize,
    span: &Range<usize>,
    sinks: usize,
) -> Result<Vec<Vec<f32>>> {
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
    let fixed = sinks + span.len();
    // Query heads of one key/value head are adjacent (transformers' repeat_kv order); the
    // scale is folded into the queries.
    let queries =
        (q.to_dtype(DType::F32)? / (d as f64).sqrt())?.reshape((kv_heads, group * t, d))?;
    let mut out = Vec::with_capacity(kv_heads);
    for g in 0..kv_heads {
        let transposed = picked.get(g)?.t()?.contiguous()?;
        let rows = queries.get(g)?;
        let mut best = vec![0f32; span.len()];
        for from in (0..group * t).step_by(BLOCK) {
            let count = BLOCK.min(group * t - from);
            let logits: Vec<f32> = rows
                .narrow(0, from, count)?
                .matmul(&transposed)?
                .flatten_all()?
                .to_vec1()?;
            let block_best = logits
                .par_chunks(m)
                .enumerate()
                .fold(
                    || vec![0f32; span.len()],
                    |mut acc, (r, row)| {
                        // Query i of the chunk is replay token `replayed - t + i`: it reads
                        // the replay's keys up to itself.
                        let i = (from + r) % t;
                        let visible = &row[..fixed + replayed - t + i + 1];
                        let top = visible.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let total: f32 = visible.iter().map(|l| (l - top).exp()).sum();
                        for (a, l) in acc.iter_mut().zip(&row[sinks..fixed]) {
                            *a = a.max((l - top).exp() / total);
                        }
                        acc
                    },
                )
                .reduce(
                    || vec![0f32; span.len()],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x = x.max(y));
                        a
                    },
                );
            best.iter_mut()
                .zip(block_best)
                .for_each(|(x, y)| *x = x.max(y));
        }
        out.push(best);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;
    use candle_core::Device;

    /// Brute force in f64 over explicit key lists, per query head.
    #[test]
    fn replay_scores_are_the_largest_masked_softmax_weights() {
        // A chunk of 4, and one of 70 whose 140 query rows per head span two blocks.
        for (replay, t) in [(9, 4), (80, 70)] {
            replay_case(replay, t);
        }
    }

    fn replay_case(replay: usize, t: usize) {
        let (q_heads, kv_heads, d) = (4, 2, 8);
        let context = 20;
        let n = context + replay;
        let span = 6..14;
        let sinks = 3;
        let q = noise(q_heads * t * d, 1);
        let keys = noise(kv_heads * n * d, 2);
        let qt = Tensor::from_vec(q.clone(), (q_heads, t, d), &Device::Cpu).unwrap();
        let kt = Tensor::from_vec(keys.clone(), (kv_heads, n, d), &Device::Cpu).unwrap();
        let ours = replay_scores(&qt, &kt, context, &span, sinks).unwrap();
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
