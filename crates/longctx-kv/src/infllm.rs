//! InfLLM (Xiao et al., "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an
//! Efficient Context Memory", 2024): attention sees sink tokens, a local window and a few
//! memory blocks retrieved from the evicted context.
//!
//! Tokens leaving the local window are grouped into blocks of `block` tokens and moved to
//! an offloaded store; each block is represented by the `representatives` keys that
//! received the most attention while they were in the local window. Each chunk of queries
//! (a prefill chunk, or one decoding token) scores every block by the summed dot products of
//! its queries with the block's representative keys and attends to the best blocks.
//! Budget split per the benchmark: `sinks` and `retrieved` fractions of the budget, the
//! rest local. Keys keep their absolute positions.
//!
//! [`KvCache::stored_bytes`] counts what attention reads (sinks, local window, the buffer of
//! retrieved blocks); [`KvCache::offloaded_bytes`] counts the evicted context kept for
//! retrieval, which a deployment would hold in host memory or on disk.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::cache::check_chunk;
use crate::rows::{top_k, HeadRows, TokenRows};
use crate::{causal_attention_with_weights, Budget, KvCache, KvError, KvShape, Result, RopeTable};

/// Settings of [`InfLlmCache`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InfLlmSettings {
    /// Tokens kept per input.
    pub budget: Budget,
    /// Fraction of the budget for sink tokens (benchmark: 0.021).
    pub sinks: f64,
    /// Fraction of the budget for retrieved blocks (benchmark: 0.324).
    pub retrieved: f64,
    /// Tokens per memory block (benchmark: 128).
    pub block: usize,
    /// Representative keys per block (benchmark: 4).
    pub representatives: usize,
}

impl InfLlmSettings {
    /// Check the settings on their own.
    pub fn validate(&self) -> Result<()> {
        self.budget.validate()?;
        if !(self.sinks >= 0.0 && self.retrieved >= 0.0 && self.sinks + self.retrieved < 1.0) {
            return Err(KvError::Setting(format!(
                "sinks={} and retrieved={} must be fractions summing below 1",
                self.sinks, self.retrieved
            )));
        }
        if self.block == 0 || self.representatives == 0 || self.representatives > self.block {
            return Err(KvError::Setting(format!(
                "block={} must be positive and representatives={} between 1 and block",
                self.block, self.representatives
            )));
        }
        Ok(())
    }

    /// `(sink tokens, retrieved blocks, local tokens)` for a budget of `budget` tokens.
    pub fn split(&self, budget: usize) -> (usize, usize, usize) {
        let sinks = (self.sinks * budget as f64) as usize;
        let blocks = (self.retrieved * budget as f64) as usize / self.block;
        (sinks, blocks, budget - sinks - blocks * self.block)
    }
}

/// An evicted block and the indices (within it) of its representative keys.
struct Block {
    rows: TokenRows,
    representatives: Vec<usize>,
}

/// One key/value head's memory.
struct HeadMemory {
    sinks: TokenRows,
    local: TokenRows,
    blocks: Vec<Block>,
    /// Evicted tokens waiting for a whole block (offloaded, not yet retrievable).
    pending: TokenRows,
    /// Blocks the latest chunk attended to, by index.
    retrieved: Vec<usize>,
}

/// The InfLLM policy.
pub struct InfLlmCache {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    settings: InfLlmSettings,
    layers: Vec<Vec<HeadMemory>>,
    processed: Vec<usize>,
    /// `(sinks, blocks, local)` for the current sequence.
    split: Option<(usize, usize, usize)>,
}

impl InfLlmCache {
    /// A cache for `shape`; settings are validated here.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        settings: InfLlmSettings,
    ) -> Result<Self> {
        settings.validate()?;
        let d = shape.head_dim;
        let head = || HeadMemory {
            sinks: TokenRows::new(d),
            local: TokenRows::new(d),
            blocks: Vec::new(),
            pending: TokenRows::new(d),
            retrieved: Vec::new(),
        };
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            settings,
            layers: (0..shape.layers)
                .map(|_| (0..shape.kv_heads).map(|_| head()).collect())
                .collect(),
            processed: vec![0; shape.layers],
            split: None,
        })
    }

    /// Start positions of the blocks `layer`'s `head` attended to in the latest chunk.
    pub fn retrieved_blocks(&self, layer: usize, head: usize) -> Vec<usize> {
        let h = &self.layers[layer][head];
        h.retrieved
            .iter()
            .map(|&b| h.blocks[b].rows.positions().next().unwrap_or(0))
            .collect()
    }

    /// Every offloaded block of `layer`'s `head`: its start position and the key rows of its
    /// representatives (row-major).
    pub fn block_representatives(&self, layer: usize, head: usize) -> Vec<(usize, Vec<f32>)> {
        let d = self.shape.head_dim;
        self.layers[layer][head]
            .blocks
            .iter()
            .map(|b| {
                let start = b.rows.positions().next().unwrap_or(0);
                let keys = b
                    .representatives
                    .iter()
                    .flat_map(|&r| b.rows.keys()[r * d..(r + 1) * d].iter().copied())
                    .collect();
                (start, keys)
            })
            .collect()
    }

    /// Rank `h`'s blocks against the summed queries of its group and keep the best.
    fn retrieve(h: &mut HeadMemory, query_sum: &[f32], blocks: usize, d: usize) {
        let scores: Vec<f32> = h
            .blocks
            .iter()
            .map(|b| {
                b.representatives
                    .iter()
                    .map(|&r| {
                        let key = &b.rows.keys()[r * d..(r + 1) * d];
                        key.iter().zip(query_sum).map(|(k, q)| k * q).sum::<f32>()
                    })
                    .sum()
            })
            .collect();
        h.retrieved = top_k(&scores, blocks);
    }

    /// Move local tokens beyond the window to the offloaded store, cutting whole blocks.
    fn offload(&self, h: &mut HeadMemory, local_budget: usize) {
        let d = self.shape.head_dim;
        let overflow = h.local.len().saturating_sub(local_budget);
        if overflow == 0 {
            return;
        }
        let positions: Vec<usize> = h.local.positions().take(overflow).collect();
        for (i, p) in positions.into_iter().enumerate() {
            h.pending.push(
                &h.local.keys()[i * d..(i + 1) * d],
                &h.local.values()[i * d..(i + 1) * d],
                p,
                h.local.scores()[i],
            );
            if h.pending.len() == self.settings.block {
                let rows = std::mem::replace(&mut h.pending, TokenRows::new(d));
                let representatives = top_k(rows.scores(), self.settings.representatives);
                h.blocks.push(Block {
                    rows,
                    representatives,
                });
            }
        }
        let keep: Vec<bool> = (0..h.local.len()).map(|i| i >= overflow).collect();
        h.local.retain(&keep);
        h.local.set_capacity(local_budget + 1);
    }
}

impl KvCache for InfLlmCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, prompt_tokens: usize, _new_tokens: usize) -> Result<()> {
        let split = self
            .settings
            .split(self.settings.budget.tokens(prompt_tokens));
        self.split = Some(split);
        for h in self.layers.iter_mut().flatten() {
            h.sinks.set_capacity(split.0);
            h.local.set_capacity(split.2 + 1);
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
        let Some((sinks, blocks, local_budget)) = self.split else {
            return Err(KvError::Invalid(
                "InfLLM needs the prompt length: call reserve before the first chunk".into(),
            ));
        };
        let (t, d) = (q.dim(1)?, self.shape.head_dim);
        let group = self.shape.q_heads / self.shape.kv_heads;
        let q = self.rope.apply(q, pos)?;
        let k = self.rope.apply(k, pos)?.to_dtype(DType::F32)?;
        let queries: Vec<Vec<Vec<f32>>> = q.to_vec3()?;
        let (ks, vs): (HeadRows, HeadRows) = (k.to_vec3()?, v.to_dtype(DType::F32)?.to_vec3()?);
        // Gather each head's context: sinks, retrieved blocks in position order, local window.
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut context = 0;
        for (g, h) in self.layers[layer].iter_mut().enumerate() {
            let mut query_sum = vec![0f32; d];
            for head_queries in &queries[g * group..(g + 1) * group] {
                for row in head_queries {
                    query_sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
                }
            }
            Self::retrieve(h, &query_sum, blocks, d);
            let parts = std::iter::once(&h.sinks)
                .chain(h.retrieved.iter().map(|&b| &h.blocks[b].rows))
                .chain(std::iter::once(&h.local));
            context = 0;
            for rows in parts {
                keys.extend_from_slice(rows.keys());
                values.extend_from_slice(rows.values());
                context += rows.len();
            }
            keys.extend(ks[g].iter().flatten());
            values.extend(vs[g].iter().flatten());
        }
        let shape = (self.shape.kv_heads, context + t, d);
        let (out, weights) = causal_attention_with_weights(
            &q,
            &Tensor::from_vec(keys, shape, &self.device)?,
            &Tensor::from_vec(values, shape, &self.device)?,
            context,
        )?;
        for (g, (h, w)) in self.layers[layer].iter_mut().zip(&weights).enumerate() {
            let local_from = context - h.local.len();
            h.local
                .scores_mut()
                .iter_mut()
                .zip(&w[local_from..context])
                .for_each(|(s, x)| *s += x);
            h.local.reserve_exact(t);
            for i in 0..t {
                let store = if pos + i < sinks {
                    &mut h.sinks
                } else {
                    &mut h.local
                };
                store.push(&ks[g][i], &vs[g][i], pos + i, w[context + i]);
            }
        }
        let mut heads = std::mem::take(&mut self.layers[layer]);
        heads.iter_mut().for_each(|h| self.offload(h, local_budget));
        self.layers[layer] = heads;
        self.processed[layer] = pos + t;
        Ok(out)
    }

    fn end_prefill(&mut self) -> Result<()> {
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        let (_, blocks, _) = self.split.unwrap_or((0, 0, 0));
        let retrieval_buffer = blocks * self.settings.block * self.shape.head_dim * 2 * 4;
        self.layers
            .iter()
            .flatten()
            .map(|h| h.sinks.bytes() + h.local.bytes() + retrieval_buffer)
            .sum()
    }

    fn offloaded_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|h| {
                h.pending.bytes()
                    + h.blocks
                        .iter()
                        .map(|b| b.rows.bytes() + 8 * b.representatives.capacity())
                        .sum::<usize>()
            })
            .sum()
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |heads| {
            let h = &heads[0];
            h.sinks.len() + h.local.len() + h.retrieved.len() * self.settings.block
        })
    }

    fn reset(&mut self) {
        for h in self.layers.iter_mut().flatten() {
            h.sinks.clear();
            h.local.clear();
            h.blocks.clear();
            h.pending.clear();
            h.retrieved.clear();
        }
        self.processed.iter_mut().for_each(|p| *p = 0);
        self.split = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn settings(budget: Budget) -> InfLlmSettings {
        InfLlmSettings {
            budget,
            sinks: 0.05,
            retrieved: 0.4,
            block: 8,
            representatives: 2,
        }
    }

    #[test]
    fn the_benchmark_split_matches_the_digest_example() {
        let paper = InfLlmSettings {
            budget: Budget::Ratio(4.0),
            sinks: 0.021,
            retrieved: 0.324,
            block: 128,
            representatives: 4,
        };
        assert_eq!(paper.split(paper.budget.tokens(7500)), (39, 4, 1324));
    }

    #[test]
    fn a_budget_covering_the_sequence_equals_the_full_cache() {
        let data = sequence(30);
        let chunks = [9, 15];
        let want = full_outputs(&data, &chunks);
        let mut c =
            InfLlmCache::new(shape(), rope(), &Device::Cpu, settings(Budget::Tokens(60))).unwrap();
        let (got, _) = run(&mut c, &data, &chunks, |_| ());
        assert!(max_difference(&got, &want) < 1e-4);
        assert_eq!(c.offloaded_bytes(), 0);
    }

    #[test]
    fn each_chunk_retrieves_the_blocks_a_brute_force_scorer_ranks_highest() {
        let data = sequence(120);
        let (q, k, v) = &data;
        let (rq, _) = rotated(q, k);
        // Budget 40: 2 sinks, 2 retrieved blocks of 8, 22 local tokens.
        let mut c =
            InfLlmCache::new(shape(), rope(), &Device::Cpu, settings(Budget::Tokens(40))).unwrap();
        c.reserve(96, 24).unwrap();
        let spans: Vec<(usize, usize)> = (0..96)
            .step_by(16)
            .map(|s| (s, 16))
            .chain((96..120).map(|p| (p, 1)))
            .collect();
        let mut checked = 0;
        for (start, len) in spans {
            if start == 96 {
                c.end_prefill().unwrap();
            }
            let before: Vec<Vec<(usize, Vec<f32>)>> =
                (0..2).map(|g| c.block_representatives(0, g)).collect();
            for layer in 0..2 {
                c.attend(
                    layer,
                    start,
                    &q.narrow(1, start, len).unwrap(),
                    &k.narrow(1, start, len).unwrap(),
                    &v.narrow(1, start, len).unwrap(),
                )
                .unwrap();
            }
            for (g, blocks) in before.iter().enumerate() {
                let scores: Vec<f64> = blocks
                    .iter()
                    .map(|(_, reps)| {
                        let mut s = 0f64;
                        for head in &rq[2 * g..2 * g + 2] {
                            for query in &head[start..start + len] {
                                for rep in reps.chunks_exact(64) {
                                    s += query
                                        .iter()
                                        .zip(rep)
                                        .map(|(a, b)| (a * b) as f64)
                                        .sum::<f64>();
                                }
                            }
                        }
                        s
                    })
                    .collect();
                let want: Vec<usize> = best(&scores, 2).into_iter().map(|b| blocks[b].0).collect();
                assert_eq!(c.retrieved_blocks(0, g), want, "chunk at {start}, head {g}");
                checked += usize::from(blocks.len() > 2);
            }
            // Attention reads sinks + retrieved blocks + local window: the budget.
            assert!(c.kept_tokens(0) <= 40);
        }
        assert!(
            checked > 20,
            "retrieval had a real choice in {checked} checks"
        );
        // Everything evicted is offloaded, not lost: 120 tokens - 2 sinks - 22 local.
        let h = &c.layers[0][0];
        let offloaded: usize =
            h.blocks.iter().map(|b| b.rows.len()).sum::<usize>() + h.pending.len();
        assert_eq!(offloaded, 96);
        assert!(c.offloaded_bytes() > c.stored_bytes());
    }

    #[test]
    fn representatives_are_the_most_attended_keys_of_their_block() {
        let data = sequence(64);
        let mut c =
            InfLlmCache::new(shape(), rope(), &Device::Cpu, settings(Budget::Tokens(40))).unwrap();
        run(&mut c, &data, &[16, 16, 16, 16], |_| ());
        for h in &c.layers[0] {
            for b in &h.blocks {
                let mut order: Vec<usize> = (0..b.rows.len()).collect();
                order.sort_by(|&x, &y| b.rows.scores()[y].total_cmp(&b.rows.scores()[x]));
                let mut top = order[..2].to_vec();
                top.sort_unstable();
                assert_eq!(b.representatives, top);
                assert!(b.rows.scores().iter().all(|s| *s > 0.0));
            }
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut s = settings(Budget::Ratio(0.5));
        assert!(s.validate().is_err());
        s.budget = Budget::Ratio(2.0);
        s.retrieved = 0.99;
        assert!(s.validate().is_err());
        s.retrieved = 0.3;
        s.representatives = 9;
        assert!(s.validate().is_err());
    }
}
