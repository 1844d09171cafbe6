//! InfLLM (Xiao et al., "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an
//! Efficient Context Memory", 2024), as the benchmark runs it (thunlp/InfLLM's
//! `context_manager.py`, vendored by `henryzhongsc/longctx_bench`, budgets from its
//! `infllm_utils.py`).
//!
//! Queries are processed in chunks of `chunk` tokens (the reference's `exc_block_size`,
//! 512). Each query sees, under one softmax:
//! - its own last `n_local` tokens (an exact sliding window, positions relative);
//! - the memory: the first `n_init` tokens to leave the window ("sinks"), the `topk`
//!   blocks of `block` tokens retrieved for its chunk, and the tokens that have left the
//!   window but do not fill a block yet. Memory keys are kept unrotated and the query is
//!   rotated at the single position `n_local - 1`: all memory sits at one fixed distance.
//!
//! A block is represented, per query head, by the mean of its `representatives` keys that
//! received the most attention from that head while in the window. A chunk retrieves the
//! blocks whose representatives score highest against its mean memory query, summed over
//! all heads: one choice per layer, for every head. Within a prefill chunk the reference lets
//! every query read the tokens waiting for a block, even those still in its own window
//! ([`InfLlmRemainder::Chunk`]); [`InfLlmRemainder::Query`] is the exact mask. Budget
//! (tokens T = prompt / ratio):
//! `n_init = int(sinks·T)`, `topk = int(retrieved·T) / block`,
//! `n_local = max(chunk, T − n_init − topk·block)`.
//!
//! [`KvCache::stored_bytes`] counts what attention reads (sinks, the window and the tokens
//! waiting for a block, and a buffer of `topk` blocks); [`KvCache::offloaded_bytes`] counts
//! the blocks, which a deployment keeps in host memory or on disk.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::cache::{check_chunk, Reservation};
use crate::rows::{top_k, HeadRows};
use crate::window::{windowed_attention, Memory};
use crate::{Budget, KvCache, KvError, KvShape, Result, RopeTable};

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
    /// Queries per retrieval, and the smallest local window (benchmark: 512).
    pub chunk: usize,
    /// Which queries of a chunk read the tokens waiting for a block.
    pub remainder: InfLlmRemainder,
}

/// Which queries of a chunk read, as memory, the tokens that have left the window of the
/// chunk's last query but do not fill a block yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfLlmRemainder {
    /// Every query of the chunk, even one that still has some of them in its own window
    /// (and so reads them twice): what the benchmark's `context_manager.py` does, whose
    /// complement-window offset counts the whole input of the call, not the chunk's place.
    Chunk,
    /// Each query reads only those outside its own window (the mask InfLLM intends).
    Query,
}

/// How one sequence's budget divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfLlmSplit {
    /// Sink tokens.
    pub n_init: usize,
    /// Blocks retrieved per chunk.
    pub topk: usize,
    /// The sliding window.
    pub n_local: usize,
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
        if self.chunk == 0 {
            return Err(KvError::Setting("chunk must be positive".into()));
        }
        Ok(())
    }

    /// The split of a budget of `budget` tokens, as `infllm_utils.py` computes it.
    pub fn split(&self, budget: usize) -> InfLlmSplit {
        let n_init = (self.sinks * budget as f64) as usize;
        let topk = (self.retrieved * budget as f64) as usize / self.block;
        let rest = budget.saturating_sub(n_init + topk * self.block);
        InfLlmSplit {
            n_init,
            topk,
            n_local: rest.max(self.chunk),
        }
    }
}

/// Rows of one key/value head, row-major, unrotated keys.
#[derive(Debug, Clone, Default)]
struct Rows {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl Rows {
    fn bytes(&self) -> usize {
        4 * (self.keys.capacity() + self.values.capacity())
    }
}

/// A block moved out of the window: its rows per key/value head, and per query head the
/// mean of its representative keys.
struct Block {
    start: usize,
    heads: Vec<Rows>,
    representative: Vec<Vec<f32>>,
}

/// One layer's memory. Every head holds the same tokens (choices are per layer).
struct LayerMemory {
    init: Vec<Rows>,
    init_len: usize,
    init_done: bool,
    blocks: Vec<Block>,
    /// Tokens not yet in the sinks or a block, from position `remainder_start`: the window
    /// and the partial block before it.
    remainder: Vec<Rows>,
    remainder_start: usize,
    remainder_len: usize,
    /// `[q_head][token]` attention each remainder token received in the window.
    scores: Vec<Vec<f32>>,
    /// Blocks the latest chunk read, by index.
    retrieved: Vec<usize>,
}

/// The InfLLM policy.
pub struct InfLlmCache {
    shape: KvShape,
    rope: Arc<RopeTable>,
    device: Device,
    settings: InfLlmSettings,
    layers: Vec<LayerMemory>,
    processed: Vec<usize>,
    split: Option<InfLlmSplit>,
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
        // The window is at least a chunk and memory is read from position `n_local - 1`; a
        // block longer than the context could never fill. Both are bounded by the positions
        // the model has, before anything is sized by them.
        let positions = rope.max_positions();
        for (key, value) in [("chunk", settings.chunk), ("block", settings.block)] {
            if value > positions {
                return Err(KvError::Setting(format!(
                    "{key}={value} exceeds the model's {positions} positions"
                )));
            }
        }
        let layer = || LayerMemory {
            init: vec![Rows::default(); shape.kv_heads],
            init_len: 0,
            init_done: false,
            blocks: Vec::new(),
            remainder: vec![Rows::default(); shape.kv_heads],
            remainder_start: 0,
            remainder_len: 0,
            scores: vec![Vec::new(); shape.q_heads],
            retrieved: Vec::new(),
        };
        Ok(Self {
            shape,
            rope,
            device: device.clone(),
            settings,
            layers: (0..shape.layers).map(|_| layer()).collect(),
            processed: vec![0; shape.layers],
            split: None,
        })
    }

    /// The current sequence's split (after `reserve`).
    pub fn split(&self) -> Option<InfLlmSplit> {
        self.split
    }

    /// Start positions of the blocks `layer` read in its latest chunk, ascending.
    pub fn retrieved_blocks(&self, layer: usize) -> Vec<usize> {
        let l = &self.layers[layer];
        l.retrieved.iter().map(|&b| l.blocks[b].start).collect()
    }

    /// Every block of `layer`: its start position and, per query head, its representative.
    pub fn block_representatives(&self, layer: usize) -> Vec<(usize, Vec<Vec<f32>>)> {
        self.layers[layer]
            .blocks
            .iter()
            .map(|b| (b.start, b.representative.clone()))
            .collect()
    }

    /// `(sinks, tokens in blocks, remainder)` of `layer`.
    pub fn token_counts(&self, layer: usize) -> (usize, usize, usize) {
        let l = &self.layers[layer];
        (
            l.init_len,
            l.blocks.len() * self.settings.block,
            l.remainder_len,
        )
    }

    /// One chunk of at most `settings.chunk` queries (`context_manager.py`'s `_append` and
    /// `append_global`).
    fn attend_chunk(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let split = self.split.expect("reserve ran");
        let (kv_heads, d) = (self.shape.kv_heads, self.shape.head_dim);
        let t = q.dim(1)?;
        let (ks, vs): (HeadRows, HeadRows) = (
            k.to_dtype(DType::F32)?.to_vec3()?,
            v.to_dtype(DType::F32)?.to_vec3()?,
        );
        let mem = &mut self.layers[layer];
        for (g, rows) in mem.remainder.iter_mut().enumerate() {
            rows.keys.extend(ks[g].iter().flatten());
            rows.values.extend(vs[g].iter().flatten());
        }
        mem.remainder_len += t;
        mem.scores
            .iter_mut()
            .for_each(|s| s.resize(mem.remainder_len, 0.0));

        let q_local = self.rope.apply(q, pos)?;
        let q_memory = self.rope.apply_at(q, split.n_local - 1)?;
        mem.retrieved = if mem.blocks.len() <= split.topk {
            (0..mem.blocks.len()).collect()
        } else {
            let mean: Vec<Vec<f32>> = q_memory.mean(1)?.to_vec2()?;
            let scores: Vec<f32> = mem
                .blocks
                .iter()
                .map(|b| {
                    b.representative
                        .iter()
                        .zip(&mean)
                        .map(|(r, m)| r.iter().zip(m).map(|(a, b)| a * b).sum::<f32>())
                        .sum()
                })
                .collect();
            top_k(&scores, split.topk)
        };

        // The window: the n_local tokens before the chunk and the chunk; memory: the sinks,
        // the retrieved blocks, and remainder tokens old enough to leave some query's window.
        let local_from = pos.saturating_sub(split.n_local).max(mem.remainder_start);
        let skip = local_from - mem.remainder_start;
        let l = mem.remainder_len - skip;
        let gather = |rows: &[Rows], from: usize, len: usize| -> (Vec<f32>, Vec<f32>) {
            let mut keys = Vec::with_capacity(kv_heads * len * d);
            let mut values = Vec::with_capacity(kv_heads * len * d);
            for r in rows {
                keys.extend_from_slice(&r.keys[from * d..(from + len) * d]);
                values.extend_from_slice(&r.values[from * d..(from + len) * d]);
            }
            (keys, values)
        };
        let (lk, lv) = gather(&mem.remainder, skip, l);
        let local_k = self.rope.apply(
            &Tensor::from_vec(lk, (kv_heads, l, d), &self.device)?,
            local_from,
        )?;
        let local_v = Tensor::from_vec(lv, (kv_heads, l, d), &self.device)?;
        let local_positions: Vec<usize> = (local_from..local_from + l).collect();

        let remembered = (pos + t)
            .saturating_sub(split.n_local)
            .saturating_sub(mem.remainder_start)
            .min(mem.remainder_len);
        let mut mk = vec![Vec::new(); kv_heads];
        let mut mv = vec![Vec::new(); kv_heads];
        for g in 0..kv_heads {
            mk[g].extend_from_slice(&mem.init[g].keys);
            mv[g].extend_from_slice(&mem.init[g].values);
            for &b in &mem.retrieved {
                mk[g].extend_from_slice(&mem.blocks[b].heads[g].keys);
                mv[g].extend_from_slice(&mem.blocks[b].heads[g].values);
            }
            mk[g].extend_from_slice(&mem.remainder[g].keys[..remembered * d]);
            mv[g].extend_from_slice(&mem.remainder[g].values[..remembered * d]);
        }
        // Sinks and blocks lie outside every window of the chunk: every query reads them.
        let far = mem.init_len + mem.retrieved.len() * self.settings.block;
        let mut visible_from = vec![0; far];
        let remainder = mem.remainder_start..mem.remainder_start + remembered;
        match self.settings.remainder {
            InfLlmRemainder::Chunk => visible_from.extend(remainder.map(|_| 0)),
            InfLlmRemainder::Query => visible_from.extend(remainder.map(|p| p + split.n_local)),
        }
        let m = visible_from.len();
        let flat = |x: Vec<Vec<f32>>| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                x.into_iter().flatten().collect::<Vec<f32>>(),
                (kv_heads, m, d),
                &self.device,
            )?)
        };
        let (memory_k, memory_v) = (flat(mk)?, flat(mv)?);
        let result = windowed_attention(
            &q_local,
            &local_k,
            &local_v,
            &local_positions,
            pos,
            split.n_local,
            Some(Memory {
                queries: &q_memory,
                keys: &memory_k,
                values: &memory_v,
                visible_from: &visible_from,
            }),
        )?;
        let mem = &mut self.layers[layer];
        for (scores, w) in mem.scores.iter_mut().zip(result.local_weights()?) {
            scores[skip..].iter_mut().zip(w).for_each(|(s, x)| *s += x);
        }
        self.move_to_memory(layer, split);
        Ok(result.out)
    }

    /// Sinks first, then whole blocks, from the front of the remainder, always leaving the
    /// window (`append_global`).
    fn move_to_memory(&mut self, layer: usize, split: InfLlmSplit) {
        let (d, block, reps) = (
            self.shape.head_dim,
            self.settings.block,
            self.settings.representatives,
        );
        let group = self.shape.q_heads / self.shape.kv_heads;
        let mem = &mut self.layers[layer];
        let take_front = |mem: &mut LayerMemory, n: usize| -> (Vec<Rows>, Vec<Vec<f32>>) {
            let rows = mem
                .remainder
                .iter_mut()
                .map(|r| Rows {
                    keys: r.keys.drain(..n * d).collect(),
                    values: r.values.drain(..n * d).collect(),
                })
                .collect();
            let scores = mem
                .scores
                .iter_mut()
                .map(|s| s.drain(..n).collect())
                .collect();
            mem.remainder_start += n;
            mem.remainder_len -= n;
            (rows, scores)
        };
        if !mem.init_done && mem.remainder_len > split.n_local {
            let n = (split.n_init - mem.init_len).min(mem.remainder_len - split.n_local);
            let (rows, _) = take_front(mem, n);
            for (init, r) in mem.init.iter_mut().zip(rows) {
                init.keys.extend(r.keys);
                init.values.extend(r.values);
            }
            mem.init_len += n;
            mem.init_done = mem.init_len == split.n_init;
        }
        while mem.remainder_len >= split.n_local + block {
            let start = mem.remainder_start;
            let (heads, scores) = take_front(mem, block);
            let representative = scores
                .iter()
                .enumerate()
                .map(|(h, s)| {
                    let keys = &heads[h / group].keys;
                    let mut mean = vec![0f32; d];
                    for r in top_k(s, reps) {
                        mean.iter_mut()
                            .zip(&keys[r * d..(r + 1) * d])
                            .for_each(|(m, x)| *m += x / reps as f32);
                    }
                    mean
                })
                .collect();
            mem.blocks.push(Block {
                start,
                heads,
                representative,
            });
        }
    }
}

impl KvCache for InfLlmCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, r: Reservation) -> Result<()> {
        let split = self
            .settings
            .split(self.settings.budget.tokens(r.budget_input()));
        self.split = Some(split);
        let d = self.shape.head_dim;
        // The remainder peaks at window + a partial block + a chunk, never beyond the sequence.
        let window = (split.n_local + self.settings.block + self.settings.chunk)
            .min(r.prompt + r.after_prompt());
        for l in &mut self.layers {
            for r in &mut l.remainder {
                r.keys.reserve(window * d);
                r.values.reserve(window * d);
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
        check_chunk(&self.shape, layer, pos, self.processed[layer])?;
        if self.split.is_none() {
            return Err(KvError::Invalid(
                "InfLLM needs the prompt length: call reserve before the first chunk".into(),
            ));
        }
        let t = q.dim(1)?;
        let chunk = self.settings.chunk;
        let mut outs = Vec::with_capacity(t.div_ceil(chunk) + 1);
        let mut start = 0;
        // Chunks end at multiples of `chunk` in the sequence, as the reference's whole-prompt
        // forward splits: an engine prefill chunk that is a multiple of `chunk` (the default
        // 512 is) gives exactly the reference's chunks. Another splits one, and the split
        // parts retrieve (and, under `remainder=chunk`, read memory) on their own.
        while start < t {
            let len = (chunk - (pos + start) % chunk).min(t - start);
            outs.push(self.attend_chunk(
                layer,
                pos + start,
                &q.narrow(1, start, len)?,
                &k.narrow(1, start, len)?,
                &v.narrow(1, start, len)?,
            )?);
            start += len;
        }
        self.processed[layer] = pos + t;
        Ok(Tensor::cat(&outs, 1)?)
    }

    /// The window is read at its distances and the memory at one fixed distance.
    fn streams(&self) -> bool {
        true
    }

    fn end_prefill(&mut self) -> Result<()> {
        // Decoding adds one token at a time, and a block leaves as soon as the remainder
        // reaches window + block: release the room prefill chunks needed.
        let Some(split) = self.split else {
            return Ok(());
        };
        let d = self.shape.head_dim;
        let most = split.n_local + self.settings.block;
        for l in &mut self.layers {
            for r in &mut l.remainder {
                r.keys.shrink_to(most * d);
                r.values.shrink_to(most * d);
            }
            l.scores.iter_mut().for_each(|s| s.shrink_to(most));
        }
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        let topk = self.split.map_or(0, |s| s.topk);
        let retrieval_buffer =
            self.shape.kv_heads * topk * self.settings.block * self.shape.head_dim * 2 * 4;
        self.layers
            .iter()
            .map(|l| {
                l.init
                    .iter()
                    .chain(&l.remainder)
                    .map(Rows::bytes)
                    .sum::<usize>()
                    + 4 * l.scores.iter().map(Vec::capacity).sum::<usize>()
                    + retrieval_buffer
            })
            .sum()
    }

    fn offloaded_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| &l.blocks)
            .map(|b| {
                b.heads.iter().map(Rows::bytes).sum::<usize>()
                    + 4 * b.representative.iter().map(Vec::capacity).sum::<usize>()
            })
            .sum()
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| {
            l.init_len + l.remainder_len + l.retrieved.len() * self.settings.block
        })
    }

    fn reset(&mut self) {
        for l in &mut self.layers {
            for r in l.init.iter_mut().chain(l.remainder.iter_mut()) {
                r.keys.clear();
                r.values.clear();
            }
            l.init_len = 0;
            l.init_done = false;
            l.blocks.clear();
            l.remainder_start = 0;
            l.remainder_len = 0;
            l.scores.iter_mut().for_each(Vec::clear);
            l.retrieved.clear();
        }
        self.processed.iter_mut().for_each(|p| *p = 0);
        self.split = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// Budget 40 → 2 sinks, 2 blocks of 8, window max(8, 22) = 22; chunks of 8 queries.
    fn settings(budget: Budget) -> InfLlmSettings {
        InfLlmSettings {
            budget,
            sinks: 0.05,
            retrieved: 0.4,
            block: 8,
            representatives: 2,
            chunk: 8,
            remainder: InfLlmRemainder::Query,
        }
    }

    fn cache(budget: Budget) -> InfLlmCache {
        InfLlmCache::new(shape(), rope(), &Device::Cpu, settings(budget)).unwrap()
    }

    #[test]
    fn the_benchmark_split_matches_its_code() {
        let paper = InfLlmSettings {
            budget: Budget::Ratio(4.0),
            sinks: 0.021,
            retrieved: 0.324,
            block: 128,
            representatives: 4,
            chunk: 512,
            remainder: InfLlmRemainder::Chunk,
        };
        let split = |tokens| {
            let s = paper.split(paper.budget.tokens(tokens));
            (s.n_init, s.topk, s.n_local)
        };
        // The digest's example: 4x at 7,500 tokens.
        assert_eq!(split(7500), (39, 4, 1324));
        // A 512-word needle on the default model: the window never falls below a chunk.
        assert_eq!(split(730), (3, 0, 512));
    }

    #[test]
    fn a_budget_covering_the_sequence_equals_the_full_cache() {
        let data = sequence(30);
        let chunks = [9, 15];
        let want = full_outputs(&data, &chunks);
        let mut c = cache(Budget::Tokens(60));
        let (got, _) = run(&mut c, &data, &chunks, |_| ());
        assert!(max_difference(&got, &want) < 1e-4);
        assert_eq!(c.offloaded_bytes(), 0);
    }

    #[test]
    fn an_engine_chunk_that_is_a_multiple_of_the_chunk_changes_nothing() {
        let data = sequence(100);
        for remainder in [InfLlmRemainder::Chunk, InfLlmRemainder::Query] {
            let build = || {
                let s = InfLlmSettings {
                    remainder,
                    ..settings(Budget::Tokens(40))
                };
                InfLlmCache::new(shape(), rope(), &Device::Cpu, s).unwrap()
            };
            let (mut a, mut b) = (build(), build());
            let (x, _) = run(&mut a, &data, &[40, 50], |_| ());
            let (y, _) = run(&mut b, &data, &[90], |_| ());
            let cat = |v: &[Tensor]| Tensor::cat(v, 1).unwrap();
            let diff = max_difference(&[cat(&x[..2])], &[cat(&y[..1])]);
            assert!(
                diff < 1e-5,
                "{remainder:?}: prefill outputs differ by {diff}"
            );
            assert!(max_difference(&x[2..], &y[1..]) < 1e-5, "{remainder:?}");
        }
    }

    /// Every query's output against a brute-force recomputation from the cache's exposed
    /// state: its window at true distances, and the sinks, retrieved blocks and remainder
    /// outside the window read by the query rotated at `n_local - 1` against raw keys.
    #[test]
    fn retrieval_and_outputs_match_a_brute_force_reading_of_the_reference() {
        let data = sequence(120);
        let (q, k, v) = &data;
        let (rq, rk) = rotated(q, k);
        let raw_k: HeadRows = k.to_vec3().unwrap();
        let raw_v: HeadRows = v.to_vec3().unwrap();
        let mut c = cache(Budget::Tokens(40));
        // Twelve prefill chunks of 8, then 24 decoding steps; after each call, the state the
        // next call starts from.
        type State = (
            Vec<(usize, Vec<Vec<f32>>)>,
            (usize, usize, usize),
            Vec<usize>,
        );
        let (outs, states): (Vec<Tensor>, Vec<State>) = run(&mut c, &data, &[8; 12], |c| {
            (
                c.block_representatives(0),
                c.token_counts(0),
                c.retrieved_blocks(0),
            )
        });
        let split = c.split().unwrap();
        assert_eq!((split.n_init, split.topk, split.n_local), (2, 2, 22));
        let at_memory: HeadRows = rope()
            .apply_at(q, split.n_local - 1)
            .unwrap()
            .to_vec3()
            .unwrap();
        let spans = (0..96)
            .step_by(8)
            .map(|s| (s, 8))
            .chain((96..120).map(|p| (p, 1)));
        let (mut real_choices, mut worst) = (0, 0f32);
        for (call, (start, len)) in spans.enumerate() {
            let (blocks, (sinks_before, _, remainder_before)) = match call {
                0 => (Vec::new(), (0, 0, 0)),
                _ => (states[call - 1].0.clone(), states[call - 1].1),
            };
            let remainder_start = start - remainder_before;
            // Retrieval: the mean memory query against each block's representatives,
            // summed over every head.
            let want: Vec<usize> = if blocks.len() <= 2 {
                blocks.iter().map(|b| b.0).collect()
            } else {
                let scores: Vec<f64> = blocks
                    .iter()
                    .map(|(_, reps)| {
                        (0..4)
                            .map(|h| {
                                (0..64)
                                    .map(|x| {
                                        let m: f64 = (start..start + len)
                                            .map(|i| at_memory[h][i][x] as f64)
                                            .sum::<f64>()
                                            / len as f64;
                                        m * reps[h][x] as f64
                                    })
                                    .sum::<f64>()
                            })
                            .sum()
                    })
                    .collect();
                real_choices += 1;
                best(&scores, 2).into_iter().map(|b| blocks[b].0).collect()
            };
            let got = &states[call].2;
            assert_eq!(got, &want, "chunk at {start}");
            // Outputs: each query over its window, and the memory outside it.
            let mut memory: Vec<usize> = (0..sinks_before).collect();
            for b in got {
                memory.extend(*b..b + 8);
            }
            memory.extend(remainder_start..start + len);
            let out: HeadRows = outs[call].to_vec3().unwrap();
            for h in 0..4 {
                let g = h / 2;
                for (i, row) in out[h].iter().enumerate() {
                    let p = start + i;
                    let mut products: Vec<Vec<f32>> = Vec::new();
                    let mut values: Vec<&Vec<f32>> = Vec::new();
                    for j in p.saturating_sub(21)..=p {
                        products.push(product(&rq[h][p], &rk[g][j]));
                        values.push(&raw_v[g][j]);
                    }
                    for &j in memory.iter().filter(|&&j| j + 22 <= p) {
                        products.push(product(&at_memory[h][p], &raw_k[g][j]));
                        values.push(&raw_v[g][j]);
                    }
                    worst = worst.max(row_difference(row, &oracle_output(&products, &values)));
                }
            }
        }
        assert!(worst < 1e-4, "max abs difference {worst}");
        assert!(
            real_choices > 20,
            "retrieval had a real choice {real_choices} times"
        );
        // Nothing is lost: sinks, blocks and the remainder hold every token seen.
        let (sinks, in_blocks, remainder) = c.token_counts(0);
        assert_eq!((sinks, sinks + in_blocks + remainder), (2, 120));
        assert!((22..22 + 8 + 8).contains(&remainder));
        assert!(c.offloaded_bytes() > 0);
    }

    #[test]
    fn representatives_are_means_of_keys_of_their_block() {
        let data = sequence(64);
        let raw_k: Vec<Vec<Vec<f32>>> = data.1.to_vec3().unwrap();
        let mut c = cache(Budget::Tokens(40));
        run(&mut c, &data, &[16, 16, 16, 16], |_| ());
        let blocks = c.block_representatives(0);
        assert!(!blocks.is_empty());
        for (start, reps) in blocks {
            for (h, rep) in reps.iter().enumerate() {
                // Some pair of the block's keys (of this head's kv head) averages to it.
                let keys = &raw_k[h / 2][start..start + 8];
                let found = (0..8).any(|a| {
                    (a + 1..8).any(|b| {
                        rep.iter()
                            .enumerate()
                            .all(|(x, r)| (r - (keys[a][x] + keys[b][x]) / 2.0).abs() < 1e-5)
                    })
                });
                assert!(found, "block {start}, head {h}");
            }
        }
    }

    #[test]
    fn sizes_past_the_model_positions_are_refused_before_allocating() {
        for (chunk, block) in [(1 << 40, 8), (8, usize::MAX / 2)] {
            let s = InfLlmSettings {
                chunk,
                block,
                representatives: 1,
                ..settings(Budget::Ratio(4.0))
            };
            let err = InfLlmCache::new(shape(), rope(), &Device::Cpu, s)
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("exceeds the model's 512 positions"), "{err}");
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
        s.representatives = 2;
        s.chunk = 0;
        assert!(s.validate().is_err());
    }
}
