//! Quest (Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
//! Inference", ICML 2024), as its evaluation code runs it (mit-han-lab/Quest,
//! `evaluation/quest_attention.py`): every token is kept, and a decoding query of each head
//! reads only the pages of 16 tokens whose keys could score highest. A page's element-wise
//! key minimum and maximum bound `q·k` from above by `Σ max(q_i·min_i, q_i·max_i)`; each
//! query head reads its top `max(3, ⌊budget / page⌋)` pages and attends over their tokens
//! alone (the newest token too only when its page is chosen). Prefill, and the first two
//! layers, attend in full. Memory is not reduced, attention reads are: the cache counts the
//! bytes its decoding steps read ([`KvCache::decode_reads`]).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::attention::{attend_read_rows, attend_rows};
use crate::cache::{check_chunk, DecodeReads, Reservation};
use crate::rows::{stack_heads, top_k, HeadRows, TokenRows};
use crate::{causal_attention, Budget, KvCache, KvError, KvPrecision, KvShape, Result, RopeTable};

/// Settings of Quest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuestSettings {
    /// Tokens each head's decoding query reads (Quest's `token_budget`), from the prompt as
    /// a dropping policy's budget is.
    pub budget: Budget,
    /// Tokens per page (`chunk_size`; 16 in Quest's evaluation).
    pub page: usize,
    /// Leading layers that always attend in full (2 in Quest's evaluation).
    pub dense_layers: usize,
}

impl QuestSettings {
    /// Settings that cannot run are refused.
    pub fn validate(&self) -> Result<()> {
        self.budget.validate()?;
        if self.page == 0 {
            return Err(KvError::Setting(
                "page must be positive (tokens per page; Quest uses 16)".into(),
            ));
        }
        Ok(())
    }

    /// Pages a query reads out of `pages`, for a budget of `budget` tokens.
    fn pages_read(&self, budget: usize, pages: usize) -> usize {
        (budget / self.page).max(3).min(pages)
    }
}

/// Each page's element-wise minimum and maximum key, `[page][channel]` row-major.
#[derive(Debug, Clone, Default)]
struct PageBounds {
    min: Vec<f32>,
    max: Vec<f32>,
}

impl PageBounds {
    /// Fold in the key of row `row` (rows arrive in order).
    fn push(&mut self, row: usize, key: impl Iterator<Item = f32>, width: usize, page: usize) {
        if row.is_multiple_of(page) {
            let at = self.min.len();
            self.min.extend(key);
            self.max.extend_from_slice(&self.min[at..]);
            return;
        }
        let at = self.min.len() - width;
        for (i, k) in key.enumerate() {
            self.min[at + i] = self.min[at + i].min(k);
            self.max[at + i] = self.max[at + i].max(k);
        }
    }

    /// Quest's upper bound of `query · k` over each page's keys.
    fn upper_bounds(&self, query: &[f32]) -> Vec<f32> {
        let d = query.len();
        self.min
            .chunks_exact(d)
            .zip(self.max.chunks_exact(d))
            .map(|(lo, hi)| {
                query
                    .iter()
                    .zip(lo.iter().zip(hi))
                    .map(|(&q, (&l, &h))| (q * l).max(q * h))
                    .sum()
            })
            .collect()
    }

    fn bytes(&self) -> usize {
        4 * (self.min.capacity() + self.max.capacity())
    }

    fn clear(&mut self) {
        self.min.clear();
        self.max.clear();
    }
}

/// The Quest cache: every token's rows per layer and key/value head, with page bounds.
pub struct QuestCache {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    precision: KvPrecision,
    settings: QuestSettings,
    /// `[layer][kv_head]` every token.
    layers: Vec<Vec<TokenRows>>,
    /// `[layer][kv_head]` the pages' key bounds.
    bounds: Vec<Vec<PageBounds>>,
    /// Tokens a decoding query reads in this sequence.
    budget: Option<usize>,
    prefilled: bool,
    reads: DecodeReads,
}

impl QuestCache {
    /// A cache for `shape`; settings are validated here.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        settings: QuestSettings,
        precision: KvPrecision,
    ) -> Result<Self> {
        settings.validate()?;
        let heads = |make: &dyn Fn() -> TokenRows| -> Vec<Vec<TokenRows>> {
            (0..shape.layers)
                .map(|_| (0..shape.kv_heads).map(|_| make()).collect())
                .collect()
        };
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            precision,
            settings,
            layers: heads(&|| TokenRows::new(shape.head_dim, precision)),
            bounds: vec![vec![PageBounds::default(); shape.kv_heads]; shape.layers],
            budget: None,
            prefilled: false,
            reads: DecodeReads::default(),
        })
    }

    /// Store a chunk's rotated keys and values, and fold the keys as stored into the pages.
    fn push(&mut self, layer: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (keys, values): (HeadRows, HeadRows) = (k.to_vec3()?, v.to_vec3()?);
        let d = self.shape.head_dim;
        for (g, (keys, values)) in keys.iter().zip(&values).enumerate() {
            let rows = &mut self.layers[layer][g];
            for (i, (key, value)) in keys.iter().zip(values).enumerate() {
                rows.push(key, value, pos + i, 0.0);
                // The key as stored.
                let stored = key.iter().map(|&k| self.precision.rounded(k));
                self.bounds[layer][g].push(rows.len() - 1, stored, d, self.settings.page);
            }
        }
        Ok(())
    }

    /// One decoding query per head over the pages it chooses, the heads in parallel; counts
    /// the bytes read.
    fn decode_sparse(&mut self, layer: usize, query: &[f32], budget: usize) -> Result<Vec<f32>> {
        let d = self.shape.head_dim;
        let group = self.shape.q_heads / self.shape.kv_heads;
        let page = self.settings.page;
        let (heads, bounds) = (&self.layers[layer], &self.bounds[layer]);
        let settings = self.settings;
        // Each query head's chosen pages and output.
        let per_head: Vec<(Vec<usize>, Vec<f32>)> = (0..self.shape.q_heads)
            .into_par_iter()
            .map(|h| {
                let (rows, q) = (&heads[h / group], &query[h * d..(h + 1) * d]);
                let n = rows.len();
                let chosen_pages = settings.pages_read(budget.min(n), n.div_ceil(page));
                let chosen = top_k(&bounds[h / group].upper_bounds(q), chosen_pages);
                let read: Vec<usize> = chosen
                    .iter()
                    .flat_map(|&p| p * page..((p + 1) * page).min(n))
                    .collect();
                let mut received = vec![0f32; read.len()];
                Ok((chosen, attend_read_rows(q, rows, &read, &mut received)?))
            })
            .collect::<Result<_>>()?;
        // Every page's bounds, then each page any head of the group chose, read once.
        let row_bytes = 2 * d * self.precision.bytes();
        for (g, rows) in heads.iter().enumerate() {
            let n = rows.len();
            let pages = n.div_ceil(page);
            let mut read_by_group = vec![false; pages];
            for (chosen, _) in &per_head[g * group..(g + 1) * group] {
                chosen.iter().for_each(|&p| read_by_group[p] = true);
            }
            let read_rows: usize = (0..pages)
                .filter(|&p| read_by_group[p])
                .map(|p| ((p + 1) * page).min(n) - p * page)
                .sum();
            self.reads.bytes += (2 * pages * d * 4 + read_rows * row_bytes) as u64;
        }
        Ok(per_head.into_iter().flat_map(|(_, out)| out).collect())
    }
}

impl KvCache for QuestCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, reservation: Reservation) -> Result<()> {
        self.budget = Some(self.settings.budget.tokens(reservation.budget_input()));
        let rows = reservation.prompt + reservation.after_prompt();
        let pages = rows.div_ceil(self.settings.page) * self.shape.head_dim;
        for (layer, bounds) in self.layers.iter_mut().zip(&mut self.bounds) {
            for (h, b) in layer.iter_mut().zip(bounds) {
                h.set_capacity(rows);
                b.min.reserve_exact(pages);
                b.max.reserve_exact(pages);
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
        let held = self.layers[layer][0].len();
        check_chunk(&self.shape, layer, pos, held)?;
        let Some(budget) = self.budget else {
            return Err(KvError::Invalid(
                "Quest's budget follows the prompt: call reserve before the first chunk".into(),
            ));
        };
        let t = q.dim(1)?;
        let q = self.rope.apply(q, pos)?;
        self.push(layer, pos, &self.rope.apply(k, pos)?, v)?;
        let d = self.shape.head_dim;
        if t > 1 || !self.prefilled {
            let (keys, values) = stack_heads(&self.layers[layer], &self.device)?;
            let f32 = candle_core::DType::F32;
            return causal_attention(&q, &keys.to_dtype(f32)?, &values.to_dtype(f32)?, held);
        }
        if layer == 0 {
            self.reads.steps += 1;
        }
        let query: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let out = match layer < self.settings.dense_layers {
            true => {
                let heads = &self.layers[layer];
                let rows: usize = heads.iter().map(TokenRows::len).sum();
                self.reads.bytes += (rows * 2 * d * self.precision.bytes()) as u64;
                attend_rows(&query, heads, d, None)?
            }
            false => self.decode_sparse(layer, &query, budget)?,
        };
        Ok(Tensor::from_vec(
            out,
            (self.shape.q_heads, 1, d),
            &self.device,
        )?)
    }

    fn end_prefill(&mut self) -> Result<()> {
        self.prefilled = true;
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        let rows: usize = self.layers.iter().flatten().map(TokenRows::bytes).sum();
        rows + self
            .bounds
            .iter()
            .flatten()
            .map(PageBounds::bytes)
            .sum::<usize>()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.bytes_per_token(self.precision)
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |h| h[0].len())
    }

    fn decode_reads(&self) -> Option<DecodeReads> {
        Some(self.reads)
    }

    fn reset(&mut self) {
        self.layers.iter_mut().flatten().for_each(TokenRows::clear);
        self.bounds.iter_mut().flatten().for_each(PageBounds::clear);
        self.budget = None;
        self.prefilled = false;
        self.reads = DecodeReads::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn quest(budget: usize, page: usize, dense_layers: usize) -> QuestCache {
        QuestCache::new(
            shape(),
            rope(),
            &Device::Cpu,
            QuestSettings {
                budget: Budget::Tokens(budget),
                page,
                dense_layers,
            },
            KvPrecision::F32,
        )
        .unwrap()
    }

    /// A budget covering every page reads everything: outputs equal the full cache's. As in
    /// Quest's code a query reads `⌊min(budget, n) / page⌋` pages, so only pages of one
    /// token cover every length.
    #[test]
    fn a_budget_covering_every_page_equals_the_full_cache() {
        let data = sequence(30);
        let want = full_outputs_in(&data, &[9, 15], KvPrecision::F32);
        let mut c = quest(64, 1, 0);
        let (got, _) = run(&mut c, &data, &[9, 15], |_| ());
        assert!(max_difference(&got, &want) < 1e-4);
        // 6 steps over n = 25..=30 rows, each reading in both layers every row's key and
        // value (512 bytes per head in f32) and every page's bounds (as many).
        let reads = c.decode_reads().unwrap();
        assert_eq!(reads.steps, 6);
        let want: usize = (25..=30usize).map(|n| 2 * 2 * 2 * n * 512).sum();
        assert_eq!(reads.bytes, want as u64);
        // With pages of 4, a query of 25 tokens reads 6 of its 7 pages, whatever the budget.
        assert_eq!(quest(64, 4, 0).settings.pages_read(25, 7), 6);
    }

    /// Each query head of a sparse layer attends over the tokens of the pages with the
    /// highest bounds, computed by brute force over the rotated keys.
    #[test]
    fn decoding_reads_each_heads_top_pages_by_key_bounds() {
        let data = sequence(30);
        let mut c = quest(8, 4, 0);
        let (got, _) = run(&mut c, &data, &[24], |_| ());
        let (q, k) = rotated(&data.0, &data.1);
        let v = data.2.to_vec3::<f32>().unwrap();
        // The last decoded token (position 29) in layer 0.
        let n = 30usize;
        let mut worst = 0f64;
        for (h, queries) in q.iter().enumerate() {
            let g = h / 2;
            let query = &queries[29];
            let bounds: Vec<f64> = (0..n.div_ceil(4))
                .map(|p| {
                    (0..64)
                        .map(|i| {
                            let keys = (p * 4..((p + 1) * 4).min(n)).map(|t| k[g][t][i]);
                            let (lo, hi) =
                                keys.fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(x), b.max(x)));
                            (query[i] * lo).max(query[i] * hi) as f64
                        })
                        .sum()
                })
                .collect();
            let mut order: Vec<usize> = (0..bounds.len()).collect();
            order.sort_by(|&a, &b| bounds[b].total_cmp(&bounds[a]));
            // Budget 8 at pages of 4: at least 3 pages.
            let read: Vec<usize> = order[..3]
                .iter()
                .flat_map(|&p| p * 4..((p + 1) * 4).min(n))
                .collect();
            let keys: Vec<&Vec<f32>> = read.iter().map(|&t| &k[g][t]).collect();
            let weights = probabilities(query, &keys);
            let out: Vec<f32> = got
                .last()
                .unwrap()
                .get(h)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..64 {
                let want: f64 = read
                    .iter()
                    .zip(&weights)
                    .map(|(&t, w)| w * v[g][t][i] as f64)
                    .sum();
                worst = worst.max((out[i] as f64 - want).abs());
            }
        }
        assert!(worst < 1e-4, "{worst}");
        // Each step reads its page bounds and 3 to 6 pages per key/value head (its two query
        // heads' choices), not every row.
        let reads = c.decode_reads().unwrap();
        assert_eq!(reads.steps, 6);
        let bounds: usize = (25..=30usize).map(|n| 2 * 2 * n.div_ceil(4) * 512).sum();
        let all_rows: usize = (25..=30usize).map(|n| 2 * 2 * n * 512).sum();
        let least = bounds + 6 * 2 * 2 * 3 * 4 * 512;
        assert!(
            (least as u64..(bounds + all_rows) as u64).contains(&reads.bytes),
            "{reads:?}"
        );
    }
}
