//! Token-dropping policies: the cache keeps a per-input budget of tokens (prompt tokens /
//! ratio) and forgets the rest. One storage and attention engine serves them all; a
//! policy only decides *when* to evict and *which* tokens survive:
//!
//! - **StreamingLLM** (Xiao et al., "Efficient Streaming Language Models with Attention
//!   Sinks", ICLR 2024), as the benchmark runs it (InfLLM's `stream_llm.py`): the first
//!   tokens ("sinks") and a recent window of `budget − sinks`. Every query, in prefill as
//!   in decoding and whatever the chunk size, sees exactly its own last `window` tokens plus
//!   the sinks outside them ([`crate::windowed_attention`]); eviction follows every chunk
//!   and step. With `reindex` the sinks sit at the fixed distance `budget − 1 − i` from every
//!   query (the reference's re-indexed positions); without it, at their true distance.
//! - **H2O** (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
//!   Large Language Models", NeurIPS 2023): full prefill, then a recent window plus the
//!   "heavy hitters" with the largest accumulated attention, per key/value head; evicting
//!   again at every decoding step.
//! - **SnapKV** (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation",
//!   2024): after prefill, the attention of the last `window` prompt queries, max-pooled
//!   over neighbouring tokens, picks what each key/value head keeps; no eviction while
//!   decoding.
//! - **PyramidKV** (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
//!   Information Funneling", 2024): SnapKV's selection with budgets falling in integer steps from
//!   the first layer to the last ([`Schedule::Pyramid`], which serves any policy that
//!   chooses once).
//! - **TOVA** (Oren et al., "Transformers are Multi-State RNNs", 2024): full prefill, then
//!   at every step drop the tokens with the lowest attention from the current query,
//!   averaged over the layer's heads.
//! - **Key scorers** ([`KeyScorer`]: Random, Knorm, KeyDiff; kvpress's query-agnostic
//!   presses): full prefill, then each key/value head keeps the tokens its keys score
//!   highest; no eviction while decoding.
//! - **KVzip** ([`KvZip`]): full prefill, then the model repeats the prompt and each
//!   prompt token scores the most attention the repetition pays it; the best scores over
//!   all layers and heads are kept at once; no eviction while decoding.
//! - **Expected Attention** ([`ExpectedAttention`], kvpress's own press): full prefill, then
//!   each key/value head keeps the tokens future queries, estimated from the prompt's, are
//!   expected to attend to; no eviction while decoding.
//!
//! - **DuoAttention** ([`DuoAttention`]): full prefill, then the streaming heads of a
//!   calibrated [`HeadPattern`] keep their sinks and recent window, the retrieval heads
//!   everything; the budget's ratio sets the share of heads that stream (`1 − 1/ratio`);
//!   no eviction while decoding.
//!
//! Storage is budget-sized: evicting compacts rows in place, and policies that prefill in
//! full shrink their allocation to the budget once the prompt is done, so the memory is
//! really returned, not masked.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::attention::{attend_rows, attend_rows_with_memory};
use crate::cache::{check_chunk, growth_step, uneven_heads, Reservation};
use crate::duo::{DuoAttention, HeadPattern};
use crate::expected_attention::{ExpectedAttention, PromptRows, QueryMoments};
use crate::kvzip::{replay_scores, KvZip};
use crate::query_heads::QueryHeadViews;
use crate::rows::{stack_heads, top_k, HeadRows, TokenRows};
use crate::window::{windowed_attention, Memory};
use crate::{
    causal_attention, causal_attention_with_weights, KeyScorer, KvCache, KvError, KvPrecision,
    KvShape, Result, RopeTable,
};

/// How many tokens a policy keeps for one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Keep prompt tokens / ratio (rounded, at least 1): the same ratio on every input.
    Ratio(f64),
    /// Keep this fraction of the prompt's tokens (rounded down, at least 1): the benchmark's
    /// configs give some budgets this way, e.g. 0.17 of the input at 6×, not 1/6.
    Fraction(f64),
    /// Keep this many tokens whatever the prompt length.
    Tokens(usize),
}

impl Budget {
    /// Tokens kept for a prompt of `prompt_tokens`: rounded down, as the benchmark's
    /// `int(compression_ratio * L)` and kvpress's `int(L * (1 - compression_ratio))` do.
    pub fn tokens(&self, prompt_tokens: usize) -> usize {
        match *self {
            Budget::Ratio(r) => ((prompt_tokens as f64 / r).floor() as usize).max(1),
            Budget::Fraction(f) => ((prompt_tokens as f64 * f).floor() as usize).max(1),
            Budget::Tokens(n) => n.max(1),
        }
    }

    /// What it keeps of a prompt, as a fraction, where that does not depend on the prompt.
    pub fn fraction(&self) -> Option<f64> {
        match *self {
            Budget::Ratio(r) => Some(1.0 / r),
            Budget::Fraction(f) => Some(f),
            Budget::Tokens(_) => None,
        }
    }

    /// A ratio of at least 1, a fraction in (0, 1], or a positive token count.
    pub(crate) fn validate(&self) -> Result<()> {
        match *self {
            Budget::Ratio(r) if !(r >= 1.0 && r.is_finite()) => Err(KvError::Setting(format!(
                "ratio={r} must be at least 1 (ratio = prompt tokens / kept tokens)"
            ))),
            Budget::Fraction(f) if !(f > 0.0 && f <= 1.0) => Err(KvError::Setting(format!(
                "fraction={f} must be in (0, 1] (the share of the prompt kept)"
            ))),
            Budget::Tokens(0) => Err(KvError::Setting("budget must be positive".into())),
            _ => Ok(()),
        }
    }
}

/// StreamingLLM's number of sink tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sinks {
    /// A fraction of the budget, rounded down (the benchmark's 0.021).
    Fraction(f64),
    /// A fixed count (the original method's 4).
    Count(usize),
}

/// Who chooses the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// Each query head, by its own attention (the benchmark's H2O, after `repeat_kv`); a
    /// key/value head stores the union of what its query heads read.
    Query,
    /// Each key/value head, by the attention its group of query heads gives (summed).
    KeyValue,
}

/// Which tokens survive, and when the choice is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DropPolicy {
    /// Sinks plus a recent window; `reindex` puts the sinks at a fixed distance from every
    /// query (as the cache's indices would) instead of their distance in the text.
    StreamingLlm { sinks: Sinks, reindex: bool },
    /// Heavy hitters plus a recent window, each half the budget; `count_prefill` says
    /// whether prompt attention counts toward the scores (the original code counts it;
    /// without it the prompt is cut at the first decoding step by that step's attention);
    /// `heads` whether each query head chooses for itself or each key/value head for its
    /// group.
    H2O { count_prefill: bool, heads: Heads },
    /// Observation `window` queries, scores pooled over `kernel` positions.
    SnapKv {
        window: usize,
        kernel: usize,
        pool: Pool,
    },
    /// Lowest current attention, averaged over the layer's heads, leaves first.
    Tova,
    /// Each key/value head keeps the prompt tokens its keys score highest, chosen once at
    /// the end of the prompt; no query is read.
    Keys(KeyScorer),
    /// Each key/value head keeps the prompt tokens future queries are expected to attend
    /// to most, estimated from the prompt queries' statistics; chosen once at the end of the
    /// prompt.
    ExpectedAttention(ExpectedAttention),
    /// Every layer's and head's prompt tokens scored by how much the model attends to them
    /// while repeating the prompt; the lowest scores over all layers and heads dropped at
    /// once, so they keep different counts.
    KvZip(KvZip),
    /// Streaming heads (the lowest scores of a [`HeadPattern`], `1 − 1/ratio` of all heads)
    /// keep their sinks and recent window, retrieval heads every token; chosen once at the
    /// end of the prompt.
    Duo(DuoAttention),
}

/// How a policy that chooses once, when the prompt ends (SnapKV, the key
/// scorers), turns its scores into kept tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Selection {
    /// Each key/value head keeps its own best tokens (every other policy's only rule).
    #[default]
    PerHead,
    /// ChunkKV (Liu et al., "ChunkKV: Semantic-Preserving KV Cache Compression", 2025), as
    /// kvpress's `ChunkKVPress`: the prompt cut into chunks of this many tokens (the last may
    /// be shorter), each scored by the mean over its tokens of the scores summed over heads;
    /// the best `max(1, ⌊chunks × kept share⌋)` chunks are kept whole, the same for every
    /// head. A protected window (SnapKV's) scores as the layer's highest score.
    Chunks(usize),
    /// AdaKV (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
    /// Allocation", 2024), as kvpress's `AdaKVPress`: each head's best
    /// `max(1, ⌊budget × safeguard⌋)` tokens are safeguarded, then the layer keeps the best
    /// `heads × budget` scores over all its heads, so heads keep different counts; each
    /// head's storage holds what it keeps (kvpress masks the rest). A protected window
    /// (SnapKV's) scores as the layer's highest score.
    AdaKv(f64),
}

/// Settings of a [`DroppingCache`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropSettings {
    /// The policy.
    pub policy: DropPolicy,
    /// Its budget.
    pub budget: Budget,
    /// How the kept tokens are chosen from the policy's scores.
    pub selection: Selection,
    /// How the budget is spread over layers.
    pub schedule: Schedule,
    /// A budget enforced while decoding, for long answers; `None` keeps every decoded token.
    pub decoding: Option<DecodingBudget>,
}

/// kvpress's `DecodingPress`: every `interval` decoding steps, a layer holding more than
/// `target` tokens keeps the `target` its policy scores highest over everything it holds
/// (the prompt's kept tokens and the decoded ones). SnapKV scores by its window of the
/// latest decoding queries, protecting the latest tokens; the key scorers by the keys alone;
/// Expected Attention by the statistics of the decoding queries since its last choice,
/// turned towards the positions after the newest token (kvpress turns them towards the
/// positions after the length of its buffer of decoding states, and leaves the buffer's
/// first 4 states out as if they were sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodingBudget {
    /// Decoding steps between choices (`compression_interval`).
    pub interval: usize,
    /// Tokens each head keeps after a choice (`target_size`).
    pub target: usize,
}

/// How a policy that chooses once spreads its budget over layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Every layer keeps the budget.
    #[default]
    Uniform,
    /// PyramidKV's schedule as KVCache-Factory computes it: outside the protected window
    /// (SnapKV's; none for other policies) budgets fall in integer steps from the first
    /// layer to the last, which keeps `(B − window) / beta`; they total the uniform budget.
    Pyramid {
        /// The ratio of the uniform budget to the last layer's (outside the window).
        beta: usize,
    },
}

impl DropSettings {
    /// Check the settings on their own (nothing here depends on the model).
    pub fn validate(&self) -> Result<()> {
        self.budget.validate()?;
        match self.policy {
            DropPolicy::StreamingLlm {
                sinks: Sinks::Fraction(f),
                ..
            } if !(0.0..1.0).contains(&f) => Err(KvError::Setting(format!(
                "sink fraction {f} must be in [0, 1)"
            ))),
            DropPolicy::SnapKv { window, kernel, .. }
                if window == 0 || kernel == 0 || kernel.is_multiple_of(2) =>
            {
                Err(KvError::Setting(format!(
                    "window={window} must be positive and kernel={kernel} odd"
                )))
            }
            _ if self.schedule == Schedule::Pyramid { beta: 0 } => {
                Err(KvError::Setting("beta must be positive".into()))
            }
            _ if self.schedule != Schedule::Uniform && !self.selects_once() => {
                Err(KvError::Setting(
                    "a per-layer schedule needs a policy that chooses once, when the prompt ends (snapkv, random, knorm, keydiff, expected-attention)".into(),
                ))
            }
            _ if matches!(self.decoding, Some(d) if d.interval == 0 || d.target == 0) => {
                Err(KvError::Setting(
                    "interval and target must be positive (decoding steps between choices, tokens kept)".into(),
                ))
            }
            _ if self.decoding.is_some()
                && !matches!(
                    self.policy,
                    DropPolicy::SnapKv { .. }
                        | DropPolicy::Keys(_)
                        | DropPolicy::ExpectedAttention(_)
                ) =>
            {
                Err(KvError::Setting(
                    "a budget while decoding needs a policy that scores what decoding adds: snapkv (its window of decoding queries), expected-attention (the statistics of the decoding queries since its last choice) or a key scorer (random, knorm, keydiff)".into(),
                ))
            }
            DropPolicy::Duo(duo) if duo.validate().is_err() => duo.validate(),
            DropPolicy::Duo(_)
                if self.schedule != Schedule::Uniform || self.selection != Selection::PerHead =>
            {
                Err(KvError::Setting(
                    "duo-attention's head pattern says which heads keep what: it takes no per-layer schedule, chunk or head-budget selection".into(),
                ))
            }
            DropPolicy::Duo(_) if self.budget.fraction().is_none() => Err(KvError::Setting(
                "duo-attention needs ratio= (or fraction=): its share of streaming heads is 1 - 1/ratio, not a token count".into(),
            )),
            DropPolicy::KvZip(_) if self.schedule != Schedule::Uniform => Err(KvError::Setting(
                "kvzip spreads one budget over all layers by its scores: it takes no per-layer schedule".into(),
            )),
            DropPolicy::ExpectedAttention(e) if e.validate().is_err() => e.validate(),
            DropPolicy::KvZip(z) if z.validate().is_err() => z.validate(),
            DropPolicy::KvZip(_) if self.selection != Selection::PerHead => Err(KvError::Setting(
                "kvzip chooses over every layer and head at once: it takes no chunk or head-budget selection".into(),
            )),
            _ if self.selection != Selection::PerHead && !self.selects_once() => {
                Err(KvError::Setting(
                    "chunk and head-budget selection need a policy that chooses once, when the prompt ends (snapkv, pyramidkv, random, knorm, keydiff, expected-attention)".into(),
                ))
            }
            _ if self.selection == Selection::Chunks(0) => {
                Err(KvError::Setting("chunk must be positive".into()))
            }
            _ if matches!(self.selection, Selection::AdaKv(a) if !(0.0..=1.0).contains(&a)) => {
                Err(KvError::Setting(
                    "safeguard must be in [0, 1] (the share of a head's budget it keeps whatever the other heads score)".into(),
                ))
            }
            DropPolicy::H2O {
                count_prefill: true,
                heads: Heads::Query,
            } => Err(KvError::Setting(
                "count_prefill=true needs heads=kv (prefill scores per query head are not built)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the policy chooses its tokens once, when the prompt ends, and never evicts
    /// while decoding (SnapKV, the key scorers, Expected Attention, KVzip, DuoAttention):
    /// what lets the kept tokens move
    /// into another store, such as quantized rows.
    pub fn selects_once(&self) -> bool {
        matches!(
            self.policy,
            DropPolicy::SnapKv { .. }
                | DropPolicy::Keys(_)
                | DropPolicy::ExpectedAttention(_)
                | DropPolicy::KvZip(_)
                | DropPolicy::Duo(_)
        )
    }

    /// Whether the whole prompt is cached before the policy chooses (the school the paper
    /// found matters most: "keeping prefill uncompressed").
    pub fn prefills_in_full(&self) -> bool {
        !matches!(self.policy, DropPolicy::StreamingLlm { .. })
    }
}

/// The budget of one sequence, fixed by `reserve`.
#[derive(Debug, Clone, Copy)]
struct Sequence {
    /// Tokens of the prefill.
    prompt: usize,
    /// What the sequence was reserved as.
    reservation: Reservation,
    /// Tokens kept per head (before a per-layer schedule).
    budget: usize,
}

/// A token-dropping cache: budget-sized f16 or f32 rows per layer and key/value head.
pub struct DroppingCache {
    shape: KvShape,
    precision: KvPrecision,
    rope: Arc<RopeTable>,
    device: Device,
    settings: DropSettings,
    /// `[layer][kv_head]` kept tokens.
    layers: Vec<Vec<TokenRows>>,
    /// Tokens each layer has been shown (kept or not).
    processed: Vec<usize>,
    /// The last rotated prompt queries per layer, for policies that choose after prefill.
    recent_queries: Vec<Option<Tensor>>,
    sequence: Option<Sequence>,
    prefilled: bool,
    /// Per-query-head choice (H2O with `heads=query`), per layer, from the end of prefill.
    views: Vec<Option<QueryHeadViews>>,
    /// Expected Attention's prompt query statistics per layer, until the prompt ends.
    moments: Vec<Option<QueryMoments>>,
    /// Decoding steps per layer since its last choice under a decoding budget.
    decode_steps: Vec<usize>,
    /// KVzip's replay in progress: the prompt span repeated and the prompt's length.
    replaying: Option<(Range<usize>, usize)>,
    /// Whether KVzip's replay ran over this prompt.
    replayed: bool,
    /// DuoAttention's streaming heads, `[layer][kv_head]`, from its head pattern.
    streaming_heads: Option<Vec<Vec<bool>>>,
}

impl DroppingCache {
    /// A cache for `shape`; settings are validated here.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        device: &Device,
        settings: DropSettings,
        precision: KvPrecision,
    ) -> Result<Self> {
        settings.validate()?;
        Ok(Self {
            shape,
            precision,
            rope,
            device: device.clone(),
            settings,
            layers: (0..shape.layers)
                .map(|_| {
                    (0..shape.kv_heads)
                        .map(|_| TokenRows::new(shape.head_dim, precision))
                        .collect()
                })
                .collect(),
            processed: vec![0; shape.layers],
            recent_queries: vec![None; shape.layers],
            sequence: None,
            prefilled: false,
            views: (0..shape.layers).map(|_| None).collect(),
            moments: vec![None; shape.layers],
            decode_steps: vec![0; shape.layers],
            replaying: None,
            replayed: false,
            streaming_heads: None,
        })
    }

    /// The settings it runs.
    pub fn settings(&self) -> DropSettings {
        self.settings
    }

    /// DuoAttention's cache with its head pattern: the `1 − 1/ratio` lowest-scoring heads
    /// stream. The pattern must cover this cache's layers and key/value heads.
    pub fn with_head_pattern(mut self, pattern: &HeadPattern) -> Result<Self> {
        let (DropPolicy::Duo(_), Some(kept)) =
            (self.settings.policy, self.settings.budget.fraction())
        else {
            return Err(KvError::Setting(
                "only duo-attention reads a head pattern".into(),
            ));
        };
        if (pattern.layers(), pattern.kv_heads()) != (self.shape.layers, self.shape.kv_heads) {
            return Err(KvError::Invalid(format!(
                "the head pattern covers {} layers × {} key/value heads, the model's cache {} × {}: calibrate it for this model",
                pattern.layers(),
                pattern.kv_heads(),
                self.shape.layers,
                self.shape.kv_heads
            )));
        }
        self.streaming_heads = Some(pattern.streaming(1.0 - kept));
        Ok(self)
    }

    /// Each key/value head's kept keys and values of `layer` as f32 rows (row-major), handed
    /// over and freed: what a cache that quantizes the kept tokens takes once the prompt
    /// ends ([`DropSettings::selects_once`]).
    pub(crate) fn take_kept(&mut self, layer: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        self.layers[layer]
            .iter_mut()
            .map(|h| {
                let rows = (h.keys().to_f32(), h.values().to_f32());
                h.clear();
                h.set_capacity(0);
                rows
            })
            .collect()
    }

    /// Absolute positions query head `head` of `layer` reads, when query heads choose for
    /// themselves (H2O with `heads=query`, once the prompt has ended).
    pub fn read_positions(&self, layer: usize, head: usize) -> Option<Vec<usize>> {
        let views = self.views[layer].as_ref()?;
        let group = self.shape.q_heads / self.shape.kv_heads;
        let positions: Vec<usize> = self.layers[layer][head / group].positions().collect();
        Some(
            views
                .read_rows(head)
                .into_iter()
                .map(|r| positions[r])
                .collect(),
        )
    }

    /// H2O's `(heavy, recent)`: for a ratio r, `int(seen / 2r)` each (for a fraction f,
    /// `int(f/2 · seen)`), where `seen` counts the tokens when scores start (the prompt, plus
    /// the first decoded token when prefill counts nothing), as the benchmark's
    /// `int(heavy_ratio · (L + 1))`; a token budget halves.
    fn h2o_split(&self, prompt: usize) -> (usize, usize) {
        let DropPolicy::H2O { count_prefill, .. } = self.settings.policy else {
            unreachable!("H2O only");
        };
        match self.settings.budget {
            Budget::Ratio(r) => {
                let seen = prompt + usize::from(!count_prefill);
                let half = (seen as f64 / (2.0 * r)) as usize;
                (half, half.max(1))
            }
            Budget::Fraction(f) => {
                let seen = prompt + usize::from(!count_prefill);
                let half = (f / 2.0 * seen as f64) as usize;
                (half, half.max(1))
            }
            Budget::Tokens(n) => (n / 2, n - n / 2),
        }
    }

    /// The budget of `layer` for the current sequence (a [`Schedule::Pyramid`]'s differ by
    /// layer).
    pub fn layer_budget(&self, layer: usize) -> Option<usize> {
        self.sequence.map(|s| self.budget_of(layer, s.budget))
    }

    fn budget_of(&self, layer: usize, budget: usize) -> usize {
        let Schedule::Pyramid { beta } = self.settings.schedule else {
            return budget;
        };
        let window = self.query_window();
        let prompt = self.sequence.map_or(budget, |s| s.prompt);
        if budget <= window || self.shape.layers == 1 || prompt <= window {
            return budget;
        }
        // KVCache-Factory's integer schedule outside the window: the first layer keeps `max`,
        // each later one `step` fewer; `max` is capped at what the prompt has. A prompt
        // shorter than twice the share keeps the uniform budget in every layer, as its
        // `update_kv` does.
        let share = budget - window;
        if prompt < 2 * share {
            return budget;
        }
        let mut min = share / beta;
        let mut max = 2 * share - min;
        if max >= prompt - window {
            max = prompt - window;
            min = (2 * share).saturating_sub(max);
        }
        let step = max.saturating_sub(min) / (self.shape.layers - 1);
        window + max - layer * step
    }

    /// How many queries the post-prefill choice reads.
    fn query_window(&self) -> usize {
        match self.settings.policy {
            DropPolicy::SnapKv { window, .. } => window,
            DropPolicy::Tova => 1,
            _ => 0,
        }
    }

    fn needs_weights(&self) -> bool {
        match self.settings.policy {
            DropPolicy::H2O { count_prefill, .. } => count_prefill || self.prefilled,
            DropPolicy::Tova => self.prefilled,
            _ => false,
        }
    }

    /// Whether a chunk is followed by eviction: StreamingLLM always, H2O and TOVA once the
    /// prompt is done, policies that choose once only at the end of the prompt.
    fn evicts_now(&self) -> bool {
        match self.settings.policy {
            DropPolicy::StreamingLlm { .. } => true,
            DropPolicy::H2O { .. } | DropPolicy::Tova => self.prefilled,
            DropPolicy::SnapKv { .. }
            | DropPolicy::Keys(_)
            | DropPolicy::ExpectedAttention(_)
            | DropPolicy::KvZip(_)
            | DropPolicy::Duo(_) => false,
        }
    }

    /// Rows each head needs room for while the sequence runs.
    fn working_capacity(&self, layer: usize, s: Sequence) -> usize {
        let budget = self.budget_of(layer, s.budget);
        match self.settings.policy {
            _ if self.settings.prefills_in_full() && !self.prefilled => s.prompt + 1,
            _ if self.settings.selects_once() => {
                budget.min(s.prompt) + s.reservation.after_prompt()
            }
            // One row beyond the budget: a decoding token is stored before the eviction.
            _ => budget.min(s.reservation.total()) + 1,
        }
    }

    /// Which of `layer`'s tokens survive (per head, over the rows held), given this chunk's
    /// scores already folded in; `None` keeps everything.
    fn survivors(&self, layer: usize, budget: usize) -> Result<Option<Vec<Vec<bool>>>> {
        let heads = &self.layers[layer];
        if let DropPolicy::Duo(duo) = self.settings.policy {
            let streaming = self.streaming_heads.as_ref().ok_or_else(|| {
                KvError::Invalid(
                    "duo-attention runs with its head pattern: build the cache with_head_pattern"
                        .into(),
                )
            })?;
            return Ok(Some(
                heads
                    .iter()
                    .zip(&streaming[layer])
                    .map(|(h, &streams)| match streams {
                        true => duo.streaming_keep(h.positions()),
                        false => vec![true; h.len()],
                    })
                    .collect(),
            ));
        }
        let n = heads.iter().map(TokenRows::len).max().unwrap_or(0);
        if n <= budget {
            return Ok(None);
        }
        Ok(match self.settings.policy {
            DropPolicy::StreamingLlm { sinks, .. } => {
                let sinks = sink_count(sinks, budget);
                let window_from = n - (budget - sinks);
                let keep: Vec<bool> = heads[0]
                    .positions()
                    .enumerate()
                    .map(|(i, p)| p < sinks || i >= window_from)
                    .collect();
                Some(vec![keep; heads.len()])
            }
            DropPolicy::H2O { .. } => {
                let recent = self
                    .h2o_split(self.sequence.map_or(n, |s| s.reservation.budget_input()))
                    .1;
                Some(
                    heads
                        .iter()
                        .map(|h| {
                            let older = &h.scores()[..n - recent];
                            let mut keep = vec![false; n];
                            for i in top_k(older, budget.saturating_sub(recent)) {
                                keep[i] = true;
                            }
                            keep[n - recent..].iter_mut().for_each(|k| *k = true);
                            keep
                        })
                        .collect(),
                )
            }
            DropPolicy::Tova => {
                let mut mean = vec![0f32; n];
                for h in heads {
                    mean.iter_mut().zip(h.scores()).for_each(|(m, s)| *m += s);
                }
                let mut keep = vec![false; n];
                for i in top_k(&mean, budget) {
                    keep[i] = true;
                }
                Some(vec![keep; heads.len()])
            }
            DropPolicy::Keys(scorer) => {
                let scores = heads
                    .iter()
                    .enumerate()
                    .map(|(g, h)| {
                        let positions: Vec<usize> = h.positions().collect();
                        let keys = h.keys().to_f32();
                        scorer.scores(&keys, self.shape.head_dim, &positions, (layer, g))
                    })
                    .collect();
                Some(self.select(scores, budget, 0))
            }
            DropPolicy::ExpectedAttention(expected) => {
                let held: Vec<(Vec<f32>, Vec<f32>, Vec<usize>)> = heads
                    .iter()
                    .map(|h| {
                        (
                            h.keys().to_f32(),
                            h.values().to_f32(),
                            h.positions().collect(),
                        )
                    })
                    .collect();
                let rows: Vec<PromptRows> = held
                    .iter()
                    .map(|(keys, values, positions)| PromptRows {
                        keys,
                        values,
                        positions,
                    })
                    .collect();
                let moments = self.moments[layer].as_ref().ok_or_else(|| {
                    KvError::Invalid("expected attention scores a prompt it was shown".into())
                })?;
                // Future queries come after the newest row held (the prompt's last token, or
                // under a decoding budget the token being decoded).
                let next = held
                    .iter()
                    .flat_map(|h| h.2.last())
                    .max()
                    .map_or(0, |p| p + 1);
                let scores = expected.scores(moments, &self.rope, next, &rows)?;
                Some(self.select(scores, budget, 0))
            }
            // Chosen over every layer at once when the prompt ends (`choose_by_replay`).
            DropPolicy::KvZip(_) => None,
            DropPolicy::Duo(_) => unreachable!("chosen above"),
            DropPolicy::SnapKv {
                window,
                kernel,
                pool: how,
            } => {
                // The latest rows are protected in every head; heads of different lengths
                // (AdaKV's, under a decoding budget) protect what the shortest holds.
                let shortest = heads.iter().map(TokenRows::len).min().unwrap_or(0);
                let window = window.min(budget).min(shortest);
                let scores = heads
                    .iter()
                    .map(|h| pool(&h.scores()[..h.len() - window], kernel, how))
                    .collect();
                Some(self.select(scores, budget, window))
            }
        })
    }

    /// Kept flags per head from each head's scores of the tokens before a protected tail of
    /// `window` tokens (always kept), under the settings' [`Selection`].
    /// Heads may hold different numbers of rows (after AdaKV's choice, under a decoding
    /// budget): each head's scores cover its own rows but the window.
    fn select(&self, scores: Vec<Vec<f32>>, budget: usize, window: usize) -> Vec<Vec<bool>> {
        if self.settings.selection == Selection::PerHead {
            return scores
                .iter()
                .map(|s| {
                    let n = s.len() + window;
                    let mut keep = vec![false; n];
                    for i in top_k(s, budget - window) {
                        keep[i] = true;
                    }
                    keep[n - window..].iter_mut().for_each(|k| *k = true);
                    keep
                })
                .collect();
        }
        // kvpress pads the window with the highest score of the layer.
        let highest = scores.iter().flatten().cloned().fold(f32::MIN, f32::max);
        let padded: Vec<Vec<f32>> = scores
            .into_iter()
            .map(|mut s| {
                s.resize(s.len() + window, highest);
                s
            })
            .collect();
        // ChunkKV's heads always hold the same rows (it keeps whole chunks for every head).
        let n = padded[0].len();
        match self.settings.selection {
            Selection::PerHead => unreachable!("chosen above"),
            Selection::Chunks(length) => {
                let summed: Vec<f32> = (0..n).map(|i| padded.iter().map(|s| s[i]).sum()).collect();
                let chunks: Vec<f32> = summed
                    .chunks(length)
                    .map(|c| c.iter().sum::<f32>() / c.len() as f32)
                    .collect();
                // A per-layer schedule's budget differs by layer; otherwise the budget's own
                // share, as kvpress computes the chunks kept from its compression ratio.
                let share = match (self.settings.schedule, self.settings.budget.fraction()) {
                    (Schedule::Pyramid { .. }, _) | (_, None) => budget as f64 / n as f64,
                    (Schedule::Uniform, Some(f)) => f,
                };
                let kept_chunks = ((chunks.len() as f64 * share) as usize).max(1);
                let mut keep = vec![false; n];
                for c in top_k(&chunks, kept_chunks) {
                    keep[c * length..((c + 1) * length).min(n)]
                        .iter_mut()
                        .for_each(|k| *k = true);
                }
                vec![keep; padded.len()]
            }
            Selection::AdaKv(safeguard) => {
                let safe = match safeguard > 0.0 {
                    true => ((budget as f64 * safeguard) as usize).max(1),
                    false => 0,
                };
                let mut all = Vec::with_capacity(padded.iter().map(Vec::len).sum());
                // (head, row) of each entry of `all`.
                let mut owner = Vec::with_capacity(all.capacity());
                for (g, s) in padded.iter().enumerate() {
                    let mut lifted = s.clone();
                    top_k(s, safe)
                        .into_iter()
                        .for_each(|i| lifted[i] = f32::MAX);
                    all.extend(lifted);
                    owner.extend((0..s.len()).map(|i| (g, i)));
                }
                let mut keep: Vec<Vec<bool>> =
                    padded.iter().map(|s| vec![false; s.len()]).collect();
                for i in top_k(&all, padded.len() * budget) {
                    let (g, row) = owner[i];
                    keep[g][row] = true;
                }
                keep
            }
        }
    }

    /// Evict down to `layer`'s budget and release storage beyond the working capacity.
    fn evict(&mut self, layer: usize) -> Result<()> {
        let Some(s) = self.sequence else {
            return Ok(());
        };
        let budget = self.budget_of(layer, s.budget);
        if self.views[layer].is_some() {
            let (heavy, recent) = self.h2o_split(s.reservation.budget_input());
            let views = self.views[layer].as_mut().expect("checked");
            views.choose(heavy, recent);
            for (g, h) in self.layers[layer].iter_mut().enumerate() {
                let keep = views.read_by_group(g);
                views.retain(g, &keep);
                h.retain(&keep);
            }
        } else if let Some(keep) = self.survivors(layer, budget)? {
            for (h, k) in self.layers[layer].iter_mut().zip(keep) {
                h.retain(&k);
            }
        }
        let capacity = self.working_capacity(layer, s);
        // A policy that has chosen once holds what each head kept plus the rows set aside
        // after the prompt: heads that kept fewer (AdaKV's) hold less.
        let chosen = self.prefilled && self.settings.selects_once();
        let after = s.reservation.after_prompt();
        self.layers[layer].iter_mut().for_each(|h| {
            h.set_capacity(match chosen {
                true => h.len() + after,
                false => capacity.max(h.len()),
            })
        });
        Ok(())
    }

    /// KVzip's score of the repeated span from this replay chunk's queries (`q` rotated),
    /// over `keys`, every held key with the chunk's (those the chunk's attention read): each
    /// prompt row keeps the most attention any replay query has paid it.
    fn score_replay(
        &mut self,
        layer: usize,
        q: &Tensor,
        keys: &Tensor,
        span: Range<usize>,
        prompt: usize,
    ) -> Result<()> {
        let DropPolicy::KvZip(zip) = self.settings.policy else {
            unreachable!("only KVzip replays");
        };
        let scores = replay_scores(q, keys, prompt, &span, zip.sinks)?;
        // The whole prompt is held in order while it is prefilled: row p is position p.
        for (h, s) in self.layers[layer].iter_mut().zip(scores) {
            for (slot, score) in h.scores_mut()[span.clone()].iter_mut().zip(s) {
                *slot = slot.max(score);
            }
        }
        Ok(())
    }

    /// KVzip's choice once its replay has scored the prompt: the sinks score above all, then
    /// the best scores over every layer and key/value head are kept.
    fn choose_by_replay(&mut self, zip: KvZip) -> Result<()> {
        if !self.replayed {
            return Err(KvError::Invalid(
                "kvzip scores the prompt by having the model repeat it, and it was not repeated: the model must replay it before the prompt ends (Gemma-3's mixed local and global layers cannot, as in kvpress)".into(),
            ));
        }
        let mut all: Vec<f32> = Vec::new();
        for h in self.layers.iter().flatten() {
            all.extend(
                h.positions()
                    .zip(h.scores())
                    .map(|(p, &score)| match p < zip.sinks {
                        true => f32::NAN,
                        false => score,
                    }),
            );
        }
        let highest = all
            .iter()
            .filter(|x| !x.is_nan())
            .cloned()
            .fold(0f32, f32::max);
        all.iter_mut()
            .filter(|x| x.is_nan())
            .for_each(|x| *x = highest + 1.0);
        let heads = self.shape.layers * self.shape.kv_heads;
        let kept = KvZip::kept_total(self.settings.budget, all.len(), heads);
        let mut keep = vec![false; all.len()];
        for i in top_k(&all, kept) {
            keep[i] = true;
        }
        let mut at = 0;
        for h in self.layers.iter_mut().flatten() {
            let n = h.len();
            h.retain(&keep[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// Keep `q` (rotated) among the layer's latest queries, as many as the policy's window
    /// reads when it chooses.
    fn remember_queries(&mut self, layer: usize, q: &Tensor) -> Result<()> {
        if self.query_window() == 0 {
            return Ok(());
        }
        let recent = match self.recent_queries[layer].take() {
            Some(prev) => Tensor::cat(&[&prev, q], 1)?,
            None => q.clone(),
        };
        let keep = self.query_window().min(recent.dim(1)?);
        self.recent_queries[layer] = Some(
            recent
                .narrow(1, recent.dim(1)? - keep, keep)?
                .contiguous()?,
        );
        Ok(())
    }

    /// A decoding budget's choice, every `interval` steps of `layer` once it holds more than
    /// `target`: the policy's scores over everything held (SnapKV's by its latest decoding
    /// queries), the best `target` kept, room left for the next interval.
    fn choose_while_decoding(&mut self, layer: usize, q: &Tensor) -> Result<()> {
        let Some(budget) = self.settings.decoding else {
            return Ok(());
        };
        self.remember_queries(layer, q)?;
        self.decode_steps[layer] += 1;
        let held = self.layers[layer]
            .iter()
            .map(TokenRows::len)
            .max()
            .unwrap_or(0);
        if self.decode_steps[layer] < budget.interval || held <= budget.target {
            return Ok(());
        }
        self.decode_steps[layer] = 0;
        self.score_by_recent_queries(layer)?;
        if let Some(keep) = self.survivors(layer, budget.target)? {
            for (h, k) in self.layers[layer].iter_mut().zip(keep) {
                h.retain(&k);
            }
        }
        // The next choice reads the queries that come after this one (kvpress clears its
        // buffer of decoding states).
        self.moments[layer] = None;
        // Room for the next interval, never more than the sequence may still add.
        let room = self
            .sequence
            .map_or(0, |s| s.reservation.after_prompt())
            .min(budget.interval);
        self.layers[layer]
            .iter_mut()
            .for_each(|h| h.set_capacity(h.len() + room));
        Ok(())
    }

    /// The post-prefill choice: score the prompt by its last queries' attention.
    fn score_by_recent_queries(&mut self, layer: usize) -> Result<()> {
        let Some(q) = self.recent_queries[layer].take() else {
            return Ok(());
        };
        let heads = &self.layers[layer];
        let weights = if heads.iter().all(|h| h.len() == heads[0].len()) {
            let (keys, values) = stack_heads(heads, &self.device)?;
            causal_attention_with_weights(&q, &keys, &values, heads[0].len() - q.dim(1)?)?.1
        } else {
            // Heads of different lengths (AdaKV's): each with its group of query heads, the
            // window's queries reading that head's latest rows.
            let group = self.shape.q_heads / self.shape.kv_heads;
            let mut weights = Vec::with_capacity(heads.len());
            for (g, h) in heads.iter().enumerate() {
                let (keys, values) = stack_heads(std::slice::from_ref(h), &self.device)?;
                let queries = q.narrow(0, g * group, group)?;
                let first = h.len().saturating_sub(q.dim(1)?);
                weights.extend(causal_attention_with_weights(&queries, &keys, &values, first)?.1);
            }
            weights
        };
        for (h, w) in self.layers[layer].iter_mut().zip(weights) {
            h.scores_mut().copy_from_slice(&w);
        }
        Ok(())
    }

    /// One decoding token over rows rotated at their absolute positions, read in place.
    /// Under StreamingLLM the row that falls out of the window is dropped first, so that the
    /// query reads exactly its sinks and window, the sinks outside the window with
    /// `memory_query` when they are re-indexed (what [`Self::attend_streaming`] computes,
    /// without copying rows into tensors).
    fn decode_in_place(
        &mut self,
        layer: usize,
        (q, memory_query): (&Tensor, Option<&Tensor>),
        k: &Tensor,
        v: &Tensor,
        pos: usize,
    ) -> Result<Tensor> {
        let d = self.shape.head_dim;
        let (query, keys, values): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            q.flatten_all()?.to_vec1()?,
            k.flatten_all()?.to_vec1()?,
            v.flatten_all()?.to_vec1()?,
        );
        let streaming = self.window_of(layer);
        let heads = &mut self.layers[layer];
        for (g, h) in heads.iter_mut().enumerate() {
            if h.len() == h.capacity() {
                h.reserve_exact(growth_step(h.len()));
            }
            h.push(
                &keys[g * d..(g + 1) * d],
                &values[g * d..(g + 1) * d],
                pos,
                0.0,
            );
        }
        if let Some(views) = self.views[layer].as_mut() {
            views.push_row();
            let out = views.attend(&query, heads, d)?;
            return Ok(Tensor::from_vec(
                out,
                (self.shape.q_heads, 1, d),
                &self.device,
            )?);
        }
        let out = if let Some((n_init, window)) = streaming {
            self.evict(layer)?;
            let rows = &self.layers[layer];
            let memory = match memory_query {
                Some(q) => {
                    let outside = rows[0]
                        .positions()
                        .take_while(|&p| p < n_init && p + window <= pos)
                        .count();
                    Some((q.flatten_all()?.to_vec1::<f32>()?, outside))
                }
                None => None,
            };
            let memory = memory.as_ref().map(|(q, n)| (&q[..], *n));
            attend_rows_with_memory(&query, memory, rows, d)?
        } else {
            // Heads may hold different numbers of rows (AdaKV).
            let mut weights: Vec<Vec<f32>> = heads.iter().map(|h| vec![0f32; h.len()]).collect();
            let out = attend_rows(&query, heads, d, Some(&mut weights))?;
            self.fold_scores(layer, &weights);
            self.choose_while_decoding(layer, q)?;
            out
        };
        Ok(Tensor::from_vec(
            out,
            (self.shape.q_heads, 1, d),
            &self.device,
        )?)
    }

    /// StreamingLLM's sinks and window on `layer` when a window of at least one token lies
    /// beside the sinks (the case its decoding reads in place).
    fn window_of(&self, layer: usize) -> Option<(usize, usize)> {
        let (DropPolicy::StreamingLlm { sinks, .. }, Some(s)) =
            (self.settings.policy, self.sequence)
        else {
            return None;
        };
        let budget = self.budget_of(layer, s.budget);
        let n_init = sink_count(sinks, budget);
        (budget > n_init).then_some((n_init, budget - n_init))
    }

    /// The held rows of `layer` followed by a chunk's rotated keys and f32 values, as
    /// `[kv_heads, held + t, d]` tensors: what a prefill chunk attends over.
    fn held_and_chunk(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let heads = &self.layers[layer];
        if heads[0].len() == 0 {
            return Ok((k.clone(), v.clone()));
        }
        if heads.iter().any(|h| h.len() != heads[0].len()) {
            return Err(uneven_heads());
        }
        let (held_k, held_v) = stack_heads(heads, &self.device)?;
        Ok((
            Tensor::cat(&[&held_k.to_dtype(DType::F32)?, k], 1)?,
            Tensor::cat(&[&held_v.to_dtype(DType::F32)?, v], 1)?,
        ))
    }

    /// `x` (f32) with every element rounded to the stored precision, contiguous.
    fn rounded(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.precision {
            KvPrecision::F32 => x.contiguous()?,
            other => x.to_dtype(other.dtype())?.to_dtype(DType::F32)?,
        })
    }

    /// Store a chunk's rotated keys and values at positions `pos..`, scores at zero.
    fn push_chunk(&mut self, layer: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (ks, vs): (HeadRows, HeadRows) = (k.to_vec3()?, v.to_vec3()?);
        for (h, (keys, values)) in self.layers[layer].iter_mut().zip(ks.iter().zip(&vs)) {
            h.reserve_exact(keys.len());
            for (i, (key, value)) in keys.iter().zip(values).enumerate() {
                h.push(key, value, pos + i, 0.0);
            }
        }
        Ok(())
    }

    /// StreamingLLM's chunk (prefill or a decoding step): an exact per-query window over
    /// the held rows and the chunk, the sinks outside it read as memory. `q` is unrotated
    /// (re-indexed sinks read it at one position), `q_rotated`, `k` at their positions.
    fn attend_streaming(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        q_rotated: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let DropPolicy::StreamingLlm { sinks, reindex } = self.settings.policy else {
            unreachable!("attend routes only StreamingLLM here");
        };
        let budget = self.sequence.expect("checked by attend").budget;
        let n_init = sink_count(sinks, budget);
        let window = budget.saturating_sub(n_init).max(1);
        let mut positions: Vec<usize> = self.layers[layer][0].positions().collect();
        positions.extend(pos..pos + q.dim(1)?);
        // Sinks held, or arriving in this chunk: the front of the (ascending) positions.
        let sinks_seen = positions.iter().take_while(|&&p| p < n_init).count();
        let (keys, values) = self.held_and_chunk(layer, k, v)?;
        // Sinks are stored rotated at their positions 0..n_init; re-indexed, the query reads
        // them from position n_init + window - 1, as `stream_llm.py` rotates it.
        let q_memory = if reindex {
            self.rope.apply_at(q, n_init + window - 1)?
        } else {
            q_rotated.clone()
        };
        let visible_from: Vec<usize> = positions[..sinks_seen].iter().map(|p| p + window).collect();
        let out = windowed_attention(
            q_rotated,
            &keys,
            &values,
            &positions,
            pos,
            window,
            Some(Memory {
                queries: &q_memory,
                keys: &keys.narrow(1, 0, sinks_seen)?,
                values: &values.narrow(1, 0, sinks_seen)?,
                visible_from: &visible_from,
            }),
        )?
        .out;
        self.push_chunk(layer, pos, k, v)?;
        Ok(out)
    }

    /// Fold a step's attention into each kept token's score: accumulated for H2O, the
    /// latest for TOVA.
    fn fold_scores(&mut self, layer: usize, weights: &[Vec<f32>]) {
        let accumulate = matches!(self.settings.policy, DropPolicy::H2O { .. });
        for (h, w) in self.layers[layer].iter_mut().zip(weights) {
            for (s, x) in h.scores_mut().iter_mut().zip(w) {
                *s = if accumulate { *s + x } else { *x };
            }
        }
    }
}

/// StreamingLLM's sink tokens for a budget: a fraction rounded down (the benchmark's
/// `int(0.021 · budget)`) or a fixed count, never more than the budget.
fn sink_count(sinks: Sinks, budget: usize) -> usize {
    match sinks {
        Sinks::Fraction(f) => (f * budget as f64) as usize,
        Sinks::Count(c) => c,
    }
    .min(budget)
}

/// How SnapKV smooths its scores over neighbouring positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// `max_pool1d`: SnapKV's and KVCache-Factory's code.
    Max,
    /// `avg_pool1d` with zero padding counted: kvpress's `SnapKVPress`.
    Average,
}

/// `scores` pooled over a centred window of `kernel` positions.
fn pool(scores: &[f32], kernel: usize, pool: Pool) -> Vec<f32> {
    match pool {
        Pool::Max => max_pool(scores, kernel),
        Pool::Average => {
            let half = kernel / 2;
            (0..scores.len())
                .map(|i| {
                    let window = &scores[i.saturating_sub(half)..(i + half + 1).min(scores.len())];
                    window.iter().sum::<f32>() / kernel as f32
                })
                .collect()
        }
    }
}

/// Max over a centred window of `kernel` scores (SnapKV's pooling, padding at the edges).
fn max_pool(scores: &[f32], kernel: usize) -> Vec<f32> {
    let half = kernel / 2;
    (0..scores.len())
        .map(|i| {
            scores[i.saturating_sub(half)..(i + half + 1).min(scores.len())]
                .iter()
                .cloned()
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect()
}

impl KvCache for DroppingCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, reservation: Reservation) -> Result<()> {
        let budget_input = reservation.budget_input();
        let budget = match self.settings.policy {
            DropPolicy::H2O { .. } => {
                let (heavy, recent) = self.h2o_split(budget_input);
                heavy + recent
            }
            _ => self.settings.budget.tokens(budget_input),
        };
        let s = Sequence {
            prompt: reservation.prompt,
            reservation,
            budget,
        };
        self.sequence = Some(s);
        for layer in 0..self.shape.layers {
            let capacity = self.working_capacity(layer, s);
            self.layers[layer]
                .iter_mut()
                .for_each(|h| h.set_capacity(capacity));
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
        if self.sequence.is_none() {
            // A fixed window (a token budget, a count of sinks) does not depend on the
            // prompt: such a cache (a local layer's) starts a sequence unannounced.
            let fixed = matches!(
                (self.settings.policy, self.settings.budget),
                (
                    DropPolicy::StreamingLlm {
                        sinks: Sinks::Count(_),
                        ..
                    },
                    Budget::Tokens(_)
                )
            );
            if !fixed {
                return Err(KvError::Invalid(
                    "a token-dropping cache needs the prompt length: call reserve before the first chunk".into(),
                ));
            }
            self.reserve(Reservation::default())?;
        }
        let t = q.dim(1)?;
        let n = self.layers[layer][0].len();
        let q_rotated = self.rope.apply(q, pos)?;
        // Rounded to the stored precision at once, so that a chunk attends to itself as it
        // will be read back.
        let k = self.rounded(&self.rope.apply(k, pos)?)?;
        let v = self.rounded(&v.to_dtype(DType::F32)?)?;
        let streaming = self.window_of(layer);
        let out = if let (Some((n_init, window)), 1, true) = (streaming, t, self.prefilled) {
            // Re-indexed sinks are read by the query at the window's last position.
            let memory_query = match self.settings.policy {
                DropPolicy::StreamingLlm { reindex: true, .. } => {
                    Some(self.rope.apply_at(q, n_init + window - 1)?)
                }
                _ => None,
            };
            let queries = (&q_rotated, memory_query.as_ref());
            self.decode_in_place(layer, queries, &k, &v, pos)?
        } else if matches!(self.settings.policy, DropPolicy::StreamingLlm { .. }) {
            self.attend_streaming(layer, pos, q, &q_rotated, &k, &v)?
        } else if t == 1 && self.prefilled {
            // Under a decoding budget Expected Attention scores by the decoding queries
            // since its last choice.
            if let (DropPolicy::ExpectedAttention(expected), Some(_)) =
                (self.settings.policy, self.settings.decoding)
            {
                self.moments[layer]
                    .get_or_insert_with(|| {
                        QueryMoments::new(self.shape.q_heads, self.shape.head_dim)
                    })
                    .add(q, pos, expected.sinks)?;
            }
            self.decode_in_place(layer, (&q_rotated, None), &k, &v, pos)?
        } else if self.views[layer].is_some() {
            return Err(KvError::Invalid(
                "H2O with heads=query takes one token per step after the prompt".into(),
            ));
        } else {
            let q_unrotated = q;
            let q = q_rotated;
            let (keys, values) = self.held_and_chunk(layer, &k, &v)?;
            let (out, weights) = if self.needs_weights() {
                let (out, w) = causal_attention_with_weights(&q, &keys, &values, n)?;
                (out, Some(w))
            } else {
                (causal_attention(&q, &keys, &values, n)?, None)
            };
            self.push_chunk(layer, pos, &k, &v)?;
            if let Some((span, prompt)) = self.replaying.clone() {
                self.score_replay(layer, &q, &keys, span, prompt)?;
            }
            if let DropPolicy::ExpectedAttention(expected) = self.settings.policy {
                self.moments[layer]
                    .get_or_insert_with(|| {
                        QueryMoments::new(self.shape.q_heads, self.shape.head_dim)
                    })
                    .add(q_unrotated, pos, expected.sinks)?;
            }
            if let Some(w) = weights {
                self.fold_scores(layer, &w);
            }
            if !self.prefilled {
                self.remember_queries(layer, &q)?;
            }
            out
        };
        self.processed[layer] = pos + t;
        if self.evicts_now() {
            self.evict(layer)?;
        }
        Ok(out)
    }

    /// StreamingLLM with re-indexed sinks: the window is read at its distances and the sinks
    /// at one fixed distance, as `stream_llm.py` does. Without re-indexing the sinks' distance
    /// grows with the input.
    fn streams(&self) -> bool {
        matches!(
            self.settings.policy,
            DropPolicy::StreamingLlm { reindex: true, .. }
        )
    }

    fn end_prefill(&mut self) -> Result<()> {
        if self.prefilled {
            return Ok(());
        }
        self.prefilled = true;
        for layer in 0..self.shape.layers {
            match self.settings.policy {
                DropPolicy::StreamingLlm { .. }
                | DropPolicy::Keys(_)
                | DropPolicy::Duo(_)
                | DropPolicy::H2O {
                    count_prefill: true,
                    ..
                } => self.evict(layer)?,
                DropPolicy::ExpectedAttention(_) => {
                    self.evict(layer)?;
                    self.moments[layer] = None;
                }
                DropPolicy::KvZip(zip) => {
                    if layer == 0 {
                        self.choose_by_replay(zip)?;
                    }
                    self.evict(layer)?;
                }
                // Scores start at zero; the first decoding step chooses.
                DropPolicy::H2O {
                    count_prefill: false,
                    heads,
                } => {
                    if heads == Heads::Query {
                        self.views[layer] =
                            Some(QueryHeadViews::new(&self.layers[layer], self.shape.q_heads));
                    }
                }
                DropPolicy::SnapKv { .. } | DropPolicy::Tova => {
                    self.score_by_recent_queries(layer)?;
                    self.evict(layer)?;
                }
            }
        }
        Ok(())
    }

    fn stored_bytes(&self) -> usize {
        let views: usize = self.views.iter().flatten().map(QueryHeadViews::bytes).sum();
        views
            + self
                .layers
                .iter()
                .flatten()
                .map(TokenRows::bytes)
                .sum::<usize>()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.shape.bytes_per_token(self.precision)
    }

    /// Averaged over key/value heads, which hold different unions under `heads=query`.
    fn kept_tokens(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |heads| {
            heads.iter().map(TokenRows::len).sum::<usize>() / heads.len().max(1)
        })
    }

    fn kept_positions(&self, layer: usize, kv_head: usize) -> Option<Vec<usize>> {
        Some(self.layers.get(layer)?.get(kv_head)?.positions().collect())
    }

    fn reset(&mut self) {
        self.layers.iter_mut().flatten().for_each(TokenRows::clear);
        self.processed.iter_mut().for_each(|p| *p = 0);
        self.recent_queries.iter_mut().for_each(|q| *q = None);
        self.sequence = None;
        self.prefilled = false;
        self.views.iter_mut().for_each(|v| *v = None);
        self.moments.iter_mut().for_each(|m| *m = None);
        self.replaying = None;
        self.replayed = false;
        self.decode_steps.iter_mut().for_each(|n| *n = 0);
    }

    fn replay_chunk(&self) -> Option<usize> {
        match self.settings.policy {
            DropPolicy::KvZip(zip) => Some(zip.chunk),
            _ => None,
        }
    }

    fn begin_replay(&mut self, span: Range<usize>) -> Result<()> {
        let prompt = self.processed[0];
        if self.replay_chunk().is_none() || self.prefilled || span.end > prompt || span.is_empty() {
            return Err(KvError::Invalid(format!(
                "cannot replay tokens {span:?}: only KVzip replays, before the end of a prompt that holds them ({prompt} tokens)"
            )));
        }
        self.replaying = Some((span, prompt));
        Ok(())
    }

    fn end_replay(&mut self) -> Result<()> {
        let Some((_, prompt)) = self.replaying.take() else {
            return Err(KvError::Invalid("no replay pass is running".into()));
        };
        for (layer, heads) in self.layers.iter_mut().enumerate() {
            for h in heads.iter_mut() {
                let keep: Vec<bool> = h.positions().map(|p| p < prompt).collect();
                h.retain(&keep);
            }
            self.processed[layer] = prompt;
        }
        self.replayed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn cache(policy: DropPolicy, budget: Budget) -> DroppingCache {
        cache_in(policy, budget, KvPrecision::F32)
    }

    fn cache_in(policy: DropPolicy, budget: Budget, precision: KvPrecision) -> DroppingCache {
        cache_with(policy, budget, precision, Schedule::Uniform)
    }

    /// A cache whose budget follows `schedule` over layers.
    fn scheduled(policy: DropPolicy, budget: Budget, schedule: Schedule) -> DroppingCache {
        cache_with(policy, budget, KvPrecision::F32, schedule)
    }

    fn cache_with(
        policy: DropPolicy,
        budget: Budget,
        precision: KvPrecision,
        schedule: Schedule,
    ) -> DroppingCache {
        DroppingCache::new(
            shape(),
            rope(),
            &Device::Cpu,
            DropSettings {
                policy,
                budget,
                selection: Selection::PerHead,
                schedule,
                decoding: None,
            },
            precision,
        )
        .unwrap()
    }

    const SNAPKV: DropPolicy = DropPolicy::SnapKv {
        window: 4,
        kernel: 3,
        pool: Pool::Max,
    };

    const EXPECTED: ExpectedAttention = ExpectedAttention {
        future: 16,
        sinks: 2,
        covariance: true,
        vnorm: true,
    };

    const EVERY_POLICY: [DropPolicy; 11] = [
        DropPolicy::StreamingLlm {
            sinks: Sinks::Fraction(0.021),
            reindex: true,
        },
        DropPolicy::StreamingLlm {
            sinks: Sinks::Count(4),
            reindex: false,
        },
        DropPolicy::H2O {
            count_prefill: true,
            heads: Heads::KeyValue,
        },
        DropPolicy::H2O {
            count_prefill: false,
            heads: Heads::KeyValue,
        },
        DropPolicy::H2O {
            count_prefill: false,
            heads: Heads::Query,
        },
        SNAPKV,
        DropPolicy::Tova,
        DropPolicy::Keys(KeyScorer::Random { seed: 7 }),
        DropPolicy::Keys(KeyScorer::Knorm),
        DropPolicy::Keys(KeyScorer::KeyDiff),
        DropPolicy::ExpectedAttention(EXPECTED),
    ];

    /// Positions kept by each key/value head of layer 0.
    fn kept(c: &DroppingCache) -> Vec<Vec<usize>> {
        (0..2).map(|g| c.kept_positions(0, g).unwrap()).collect()
    }

    /// In either precision.
    #[test]
    fn a_budget_covering_the_sequence_equals_the_full_cache() {
        let data = sequence(30);
        let chunks = [9, 15];
        for precision in [KvPrecision::F32, KvPrecision::F16] {
            let want = full_outputs_in(&data, &chunks, precision);
            for policy in EVERY_POLICY {
                let mut c = cache_in(policy, Budget::Tokens(30), precision);
                let (got, held) = run(&mut c, &data, &chunks, |c| c.kept_tokens(0));
                let diff = max_difference(&got, &want);
                assert!(diff < 1e-4, "{precision:?} {policy:?}: {diff}");
                assert_eq!(held.last(), Some(&30), "{policy:?}");
            }
        }
    }

    /// H2O's rule on a list of live positions: the recent half of the budget plus the
    /// highest scores among the rest.
    fn h2o_choice(alive: &[usize], score: &[f64], budget: usize) -> Vec<usize> {
        if alive.len() <= budget {
            return alive.to_vec();
        }
        let recent = budget - budget / 2;
        let older = &alive[..alive.len() - recent];
        let heavy: Vec<f64> = older.iter().map(|&p| score[p]).collect();
        let mut out: Vec<usize> = best(&heavy, budget - recent)
            .into_iter()
            .map(|i| older[i])
            .collect();
        out.extend(&alive[alive.len() - recent..]);
        out
    }

    #[test]
    fn h2o_keeps_what_a_brute_force_accumulation_selects() {
        let data = sequence(30);
        let mut c = cache(
            DropPolicy::H2O {
                count_prefill: true,
                heads: Heads::KeyValue,
            },
            Budget::Tokens(8),
        );
        let (_, seen) = run(&mut c, &data, &[10, 14], kept);
        let (q, k) = rotated(&data.0, &data.1);
        assert_eq!(
            seen[1][0].len(),
            24,
            "the whole prompt is held until it ends"
        );
        for g in 0..2 {
            let mut score = vec![0f64; 30];
            for head in &q[2 * g..2 * g + 2] {
                for (i, query) in head.iter().enumerate().take(24) {
                    let keys: Vec<&Vec<f32>> = k[g][..=i].iter().collect();
                    for (j, p) in probabilities(query, &keys).iter().enumerate() {
                        score[j] += p;
                    }
                }
            }
            let mut alive = h2o_choice(&(0..24).collect::<Vec<_>>(), &score, 8);
            for (step, p) in (24..30).enumerate() {
                alive.push(p);
                for head in &q[2 * g..2 * g + 2] {
                    let keys: Vec<&Vec<f32>> = alive.iter().map(|&j| &k[g][j]).collect();
                    for (&j, pr) in alive.iter().zip(probabilities(&head[p], &keys)) {
                        score[j] += pr;
                    }
                }
                alive = h2o_choice(&alive, &score, 8);
                assert_eq!(seen[2 + step][g], alive, "head {g}, step {step}");
            }
        }
        // Storage really shrank to the budget (plus the row a decoding token passes through).
        assert_eq!(c.stored_bytes(), 2 * 2 * 9 * (64 + 64 + 2) * 4);
    }

    /// The benchmark's 6x H2O config gives heavy = recent = 0.083 of the tokens seen at the
    /// first decoding step: `fraction=0.166` halves to exactly that, where `ratio=6` gives 1/12.
    #[test]
    fn h2o_fraction_splits_as_the_benchmarks_heavy_and_recent_ratios() {
        assert_eq!(0.166f64 / 2.0, 0.083f64);
        let policy = DropPolicy::H2O {
            count_prefill: false,
            heads: Heads::Query,
        };
        // 2,399 prompt tokens + the first decoded one: int(0.083 * 2400) = 199.
        assert_eq!(
            cache(policy, Budget::Fraction(0.166)).h2o_split(2399),
            (199, 199)
        );
        assert_eq!(
            cache(policy, Budget::Ratio(6.0)).h2o_split(2399),
            (200, 200)
        );
    }

    /// The benchmark's H2O: from the first decoding query on, each query head accumulates
    /// its own attention over what it still reads and keeps the last 4 tokens and its 4
    /// heaviest others; a key/value head stores what any of its query heads reads.
    #[test]
    fn h2o_per_query_head_keeps_what_a_brute_force_accumulation_selects() {
        let data = sequence(30);
        let (q, k) = rotated(&data.0, &data.1);
        let values: HeadRows = data.2.to_vec3().unwrap();
        let mut c = cache(
            DropPolicy::H2O {
                count_prefill: false,
                heads: Heads::Query,
            },
            Budget::Tokens(8),
        );
        let (outs, seen) = run(&mut c, &data, &[10, 14], |c| {
            (0..4)
                .map(|h| c.read_positions(0, h).unwrap_or_default())
                .collect::<Vec<_>>()
        });
        let mut worst = 0f32;
        for h in 0..4 {
            let g = h / 2;
            let mut alive: Vec<usize> = (0..24).collect();
            let mut score = vec![0f64; 30];
            for (step, p) in (24..30).enumerate() {
                alive.push(p);
                let keys: Vec<&Vec<f32>> = alive.iter().map(|&j| &k[g][j]).collect();
                let probs = probabilities(&q[h][p], &keys);
                let products: Vec<Vec<f32>> =
                    alive.iter().map(|&j| product(&q[h][p], &k[g][j])).collect();
                let vals: Vec<&Vec<f32>> = alive.iter().map(|&j| &values[g][j]).collect();
                let out: HeadRows = outs[2 + step].to_vec3().unwrap();
                worst = worst.max(row_difference(&out[h][0], &oracle_output(&products, &vals)));
                for (&j, pr) in alive.iter().zip(&probs) {
                    score[j] += pr;
                }
                if alive.len() > 8 {
                    let older = &alive[..alive.len() - 4];
                    let heavy: Vec<f64> = older.iter().map(|&j| score[j]).collect();
                    let mut next: Vec<usize> =
                        best(&heavy, 4).into_iter().map(|i| older[i]).collect();
                    next.extend(&alive[alive.len() - 4..]);
                    alive = next;
                }
                assert_eq!(seen[2 + step][h], alive, "query head {h}, step {step}");
            }
        }
        assert!(worst < 1e-5, "max abs difference {worst}");
        // Each key/value head stores the union of its two query heads' choices.
        for g in 0..2 {
            let mut union: Vec<usize> = seen[7][2 * g].clone();
            union.extend(&seen[7][2 * g + 1]);
            union.sort_unstable();
            union.dedup();
            assert_eq!(c.kept_positions(0, g), Some(union));
        }
    }

    #[test]
    fn key_scorers_keep_each_heads_top_scores_once_the_prompt_ends() {
        let data = sequence(30);
        let (_, k) = rotated(&data.0, &data.1);
        let positions: Vec<usize> = (0..24).collect();
        for scorer in [
            KeyScorer::Random { seed: 3 },
            KeyScorer::Knorm,
            KeyScorer::KeyDiff,
        ] {
            let mut c = cache(DropPolicy::Keys(scorer), Budget::Tokens(8));
            let (_, seen) = run(&mut c, &data, &[10, 14], kept);
            // The whole prompt is held until it ends, then 8 per head, plus what is decoded.
            assert_eq!(seen[1], [positions.clone(), positions.clone()]);
            for (g, head) in k.iter().enumerate() {
                let keys: Vec<f32> = head[..24].iter().flatten().copied().collect();
                let mut want = top_k(&scorer.scores(&keys, 64, &positions, (0, g)), 8);
                want.extend(24..30);
                assert_eq!(seen.last().unwrap()[g], want, "{scorer:?}, kv head {g}");
            }
        }
    }

    /// The cache gathers the prompt's queries over its chunks and scores its rotated keys
    /// and values once the prompt ends (the scores themselves are checked against kvpress's
    /// formula in `expected_attention`).
    #[test]
    fn expected_attention_keeps_each_heads_top_scores_once_the_prompt_ends() {
        let data = sequence(30);
        let (_, k) = rotated(&data.0, &data.1);
        let values = data.2.to_vec3::<f32>().unwrap();
        let mut c = cache(DropPolicy::ExpectedAttention(EXPECTED), Budget::Tokens(8));
        let (_, seen) = run(&mut c, &data, &[10, 14], kept);
        let mut moments = QueryMoments::new(4, 64);
        moments
            .add(&data.0.narrow(1, 0, 24).unwrap(), 0, EXPECTED.sinks)
            .unwrap();
        let held: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
            .map(|g| (k[g][..24].concat(), values[g][..24].concat()))
            .collect();
        let positions: Vec<usize> = (0..24).collect();
        let rows: Vec<PromptRows> = held
            .iter()
            .map(|(keys, values)| PromptRows {
                keys,
                values,
                positions: &positions,
            })
            .collect();
        let scores = EXPECTED.scores(&moments, &rope(), 24, &rows).unwrap();
        for (g, head) in scores.iter().enumerate() {
            let mut want = top_k(head, 8);
            assert!(want.starts_with(&[0, 1]), "sinks first: {want:?}");
            want.extend(24..30);
            assert_eq!(seen.last().unwrap()[g], want, "kv head {g}");
        }
    }

    /// A budget while decoding: every 3 steps a layer holding more than 10 keeps Knorm's
    /// best 10 of everything it holds; a brute-force replay of the rule gives the same sets.
    #[test]
    fn a_decoding_budget_rechooses_every_interval_over_everything_held() {
        let data = sequence(30);
        let (_, k) = rotated(&data.0, &data.1);
        let settings = DropSettings {
            policy: DropPolicy::Keys(KeyScorer::Knorm),
            budget: Budget::Tokens(8),
            selection: Selection::PerHead,
            schedule: Schedule::Uniform,
            decoding: Some(DecodingBudget {
                interval: 3,
                target: 10,
            }),
        };
        let mut c =
            DroppingCache::new(shape(), rope(), &Device::Cpu, settings, KvPrecision::F32).unwrap();
        let (_, seen) = run(&mut c, &data, &[20], kept);
        for g in 0..2 {
            let norm = |p: &usize| -> f32 { k[g][*p].iter().map(|x| x * x).sum::<f32>() };
            let best = |alive: &[usize], n: usize| -> Vec<usize> {
                let mut order = alive.to_vec();
                order.sort_by(|a, b| norm(a).total_cmp(&norm(b)));
                order.truncate(n);
                order.sort_unstable();
                order
            };
            let prompt: Vec<usize> = (0..20).collect();
            assert_eq!(seen[0][g], prompt, "the prompt is held until it ends");
            let mut alive = best(&prompt, 8);
            for (step, held) in seen.iter().enumerate().skip(1) {
                alive.push(19 + step);
                if step % 3 == 0 && alive.len() > 10 {
                    alive = best(&alive, 10);
                }
                assert_eq!(held[g], alive, "head {g} after step {step}");
            }
        }
    }

    /// Expected Attention under a decoding budget: each choice scores everything held by the
    /// statistics of the decoding queries since the last choice, turned towards the
    /// positions after the newest token; replayed here step by step with the same scoring.
    #[test]
    fn a_decoding_budget_over_expected_attention_scores_by_the_latest_decoding_queries() {
        let data = sequence(30);
        let (_, k) = rotated(&data.0, &data.1);
        let v: HeadRows = data.2.to_vec3().unwrap();
        let settings = DropSettings {
            policy: DropPolicy::ExpectedAttention(EXPECTED),
            budget: Budget::Tokens(8),
            selection: Selection::PerHead,
            schedule: Schedule::Uniform,
            decoding: Some(DecodingBudget {
                interval: 3,
                target: 10,
            }),
        };
        let mut c =
            DroppingCache::new(shape(), rope(), &Device::Cpu, settings, KvPrecision::F32).unwrap();
        let (_, seen) = run(&mut c, &data, &[20], kept);
        // After the first decoding step: the prompt's choice and the new token.
        let mut alive: Vec<Vec<usize>> = seen[1].clone();
        assert!(alive.iter().all(|a| a.len() == 9 && a.ends_with(&[20])));
        let mut moments = QueryMoments::new(4, 64);
        moments
            .add(&data.0.narrow(1, 20, 1).unwrap(), 20, 2)
            .unwrap();
        let mut since = 1;
        for (step, held) in seen.iter().enumerate().skip(2) {
            let pos = 19 + step;
            alive.iter_mut().for_each(|a| a.push(pos));
            moments
                .add(&data.0.narrow(1, pos, 1).unwrap(), pos, 2)
                .unwrap();
            since += 1;
            if since >= 3 && alive[0].len() > 10 {
                let flat = |rows: &HeadRows, g: usize, a: &[usize]| -> Vec<f32> {
                    a.iter().flat_map(|&p| rows[g][p].clone()).collect()
                };
                let held_rows: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                    .map(|g| (flat(&k, g, &alive[g]), flat(&v, g, &alive[g])))
                    .collect();
                let rows: Vec<PromptRows> = (0..2)
                    .map(|g| PromptRows {
                        keys: &held_rows[g].0,
                        values: &held_rows[g].1,
                        positions: &alive[g],
                    })
                    .collect();
                let scores = EXPECTED.scores(&moments, &rope(), pos + 1, &rows).unwrap();
                alive = (0..2)
                    .map(|g| {
                        let mut best: Vec<usize> = top_k(&scores[g], 10)
                            .into_iter()
                            .map(|i| alive[g][i])
                            .collect();
                        best.sort_unstable();
                        best
                    })
                    .collect();
                moments = QueryMoments::new(4, 64);
                since = 0;
            }
            assert_eq!(held, &alive, "after decoding step {step}");
        }
        assert!(alive
            .iter()
            .all(|a| a.len() <= 12 && a.starts_with(&[0, 1])));
    }

    /// KVzip's replay: its chunks attend as the full cache would, score the repeated span,
    /// and are forgotten; the choice keeps the best scores over both layers and heads.
    #[test]
    fn kvzip_replay_attends_scores_the_span_and_is_forgotten() {
        let zip = KvZip {
            sinks: 2,
            chunk: 10,
        };
        let (prompt, span) = (20, 5..15);
        let mut c = cache(DropPolicy::KvZip(zip), Budget::Tokens(6));
        let mut full = crate::FullCache::new(shape(), rope(), &Device::Cpu, KvPrecision::F32);
        let data: Vec<(Tensor, Tensor, Tensor)> = (0..2).map(|_| sequence(30)).collect();
        let part = |x: &Tensor, from: usize, n: usize| x.narrow(1, from, n).unwrap();
        c.reserve(Reservation::prompt(prompt, 0)).unwrap();
        full.reserve(Reservation::prompt(30, 0)).unwrap();
        for (l, (q, k, v)) in data.iter().enumerate() {
            let (q, k, v) = (part(q, 0, 20), part(k, 0, 20), part(v, 0, 20));
            c.attend(l, 0, &q, &k, &v).unwrap();
            full.attend(l, 0, &q, &k, &v).unwrap();
        }
        c.begin_replay(span.clone()).unwrap();
        for from in [20, 25] {
            for (l, (q, k, v)) in data.iter().enumerate() {
                let (q, k, v) = (part(q, from, 5), part(k, from, 5), part(v, from, 5));
                let ours = c.attend(l, from, &q, &k, &v).unwrap();
                let want = full.attend(l, from, &q, &k, &v).unwrap();
                assert!(
                    max_difference(&[ours], &[want]) < 1e-4,
                    "layer {l} from {from}"
                );
            }
        }
        c.end_replay().unwrap();
        for l in 0..2 {
            assert_eq!(c.kept_tokens(l), prompt);
        }
        c.end_prefill().unwrap();
        // Brute force: each span token's largest weight from any replay query of its group,
        // over the sinks, the span and the replay up to the query; sinks above all.
        let mut scores = vec![0f64; 2 * 2 * prompt];
        for (l, (q, k, _)) in data.iter().enumerate() {
            let (q, k) = rotated(q, k);
            for (h, queries) in q.iter().enumerate() {
                let g = h / 2;
                for i in 0..10 {
                    let visible: Vec<usize> =
                        (0..2).chain(span.clone()).chain(20..=20 + i).collect();
                    let keys: Vec<&Vec<f32>> = visible.iter().map(|&p| &k[g][p]).collect();
                    let weights = probabilities(&queries[20 + i], &keys);
                    for (&p, w) in visible.iter().zip(weights) {
                        if span.contains(&p) {
                            let s = &mut scores[(l * 2 + g) * prompt + p];
                            *s = s.max(w);
                        }
                    }
                }
            }
        }
        let highest = scores.iter().cloned().fold(0f64, f64::max);
        for (i, s) in scores.iter_mut().enumerate() {
            if i % prompt < 2 {
                *s = highest + 1.0;
            }
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        for l in 0..2 {
            for g in 0..2 {
                let mut want: Vec<usize> = order[..24]
                    .iter()
                    .filter(|&&i| i / prompt == l * 2 + g)
                    .map(|&i| i % prompt)
                    .collect();
                want.sort_unstable();
                assert_eq!(c.kept_positions(l, g), Some(want), "layer {l} head {g}");
            }
        }
        // Without the replay, the cache refuses to choose.
        let mut unreplayed = cache(DropPolicy::KvZip(zip), Budget::Tokens(6));
        unreplayed.reserve(Reservation::prompt(prompt, 0)).unwrap();
        for (l, (q, k, v)) in data.iter().enumerate() {
            let (q, k, v) = (part(q, 0, 20), part(k, 0, 20), part(v, 0, 20));
            unreplayed.attend(l, 0, &q, &k, &v).unwrap();
        }
        let error = unreplayed.end_prefill().unwrap_err().to_string();
        assert!(error.contains("repeat"), "{error}");
    }

    #[test]
    fn tova_keeps_what_a_brute_force_ranking_selects() {
        let data = sequence(30);
        let mut c = cache(DropPolicy::Tova, Budget::Tokens(8));
        let (_, seen) = run(&mut c, &data, &[10, 14], kept);
        let (q, k) = rotated(&data.0, &data.1);
        // TOVA averages over every head of the layer, so both kv heads keep the same tokens.
        let rank = |alive: &[usize], query: usize| -> Vec<usize> {
            let mut score = vec![0f64; alive.len()];
            for h in 0..4 {
                let keys: Vec<&Vec<f32>> = alive.iter().map(|&j| &k[h / 2][j]).collect();
                for (s, p) in score.iter_mut().zip(probabilities(&q[h][query], &keys)) {
                    *s += p;
                }
            }
            best(&score, 8).into_iter().map(|i| alive[i]).collect()
        };
        let mut alive = rank(&(0..24).collect::<Vec<_>>(), 23);
        for (step, p) in (24..30).enumerate() {
            alive.push(p);
            alive = rank(&alive, p);
            assert_eq!(
                seen[2 + step],
                vec![alive.clone(), alive.clone()],
                "step {step}"
            );
        }
    }

    /// ChunkKV over SnapKV: whole chunks, the same for every head, the observation window's
    /// chunk among them (it scores as the layer's highest), ⌊chunks / 2⌋ chunks at ratio 2.
    #[test]
    fn chunk_selection_keeps_whole_chunks_for_every_head() {
        let data = sequence(28);
        let settings = DropSettings {
            policy: SNAPKV,
            budget: Budget::Ratio(2.0),
            selection: Selection::Chunks(5),
            schedule: Schedule::Uniform,
            decoding: None,
        };
        let mut c =
            DroppingCache::new(shape(), rope(), &Device::Cpu, settings, KvPrecision::F32).unwrap();
        let (_, seen) = run(&mut c, &data, &[10, 14], kept);
        // 24 prompt tokens: chunks 0-4, 5-9, 10-14, 15-19 and the window's 20-23; 2 kept.
        let after = &seen[2];
        assert_eq!(after[0], after[1]);
        let prompt: Vec<usize> = after[0].iter().copied().filter(|&p| p < 24).collect();
        assert_eq!(prompt.len(), 5 + 4);
        assert!((20..24).all(|p| prompt.contains(&p)));
        let chunk = prompt[0] / 5;
        assert_eq!(
            &prompt[..5],
            &(5 * chunk..5 * chunk + 5).collect::<Vec<_>>()[..]
        );
        let refused = DropSettings {
            policy: DropPolicy::Tova,
            ..settings
        };
        assert!(refused.validate().is_err());
    }

    /// [`sequence`] with head 0's keys half as long: Knorm prefers them, so AdaKV's heads
    /// keep different counts.
    fn head0_keys_halved(tokens: usize) -> (Tensor, Tensor, Tensor) {
        let (q, k, v) = sequence(tokens);
        let halved = Tensor::cat(
            &[
                &(k.narrow(0, 0, 1).unwrap() * 0.5).unwrap(),
                &k.narrow(0, 1, 1).unwrap(),
            ],
            0,
        )
        .unwrap();
        (q, halved, v)
    }

    /// AdaKV over Knorm: the layer keeps its 2 × 8 best scores over both heads after each
    /// head's best 4 are safeguarded, so heads may keep different counts; each head stores
    /// only its own rows, and a decoding query reads exactly its head's rows.
    #[test]
    fn adakv_keeps_the_layers_best_scores_and_decodes_over_ragged_heads() {
        // Head 1 keeps only its safeguarded 4 and head 0 the other 12.
        let data = head0_keys_halved(30);
        let settings = DropSettings {
            policy: DropPolicy::Keys(KeyScorer::Knorm),
            budget: Budget::Tokens(8),
            selection: Selection::AdaKv(0.5),
            schedule: Schedule::Uniform,
            decoding: None,
        };
        let mut c =
            DroppingCache::new(shape(), rope(), &Device::Cpu, settings, KvPrecision::F32).unwrap();
        let (outs, seen) = run(&mut c, &data, &[10, 14], kept);
        let (q, k) = rotated(&data.0, &data.1);
        let positions: Vec<usize> = (0..24).collect();
        let mut all = Vec::new();
        for (g, head) in k.iter().enumerate() {
            let keys: Vec<f32> = head[..24].iter().flatten().copied().collect();
            let scores = KeyScorer::Knorm.scores(&keys, 64, &positions, (0, g));
            let mut lifted = scores.clone();
            top_k(&scores, 4)
                .into_iter()
                .for_each(|i| lifted[i] = f32::MAX);
            all.extend(lifted);
        }
        let chosen = top_k(&all, 16);
        let v: HeadRows = data.2.to_vec3().unwrap();
        for g in 0..2 {
            let mut want: Vec<usize> = chosen
                .iter()
                .filter(|&&i| i / 24 == g)
                .map(|&i| i % 24)
                .collect();
            want.push(24);
            assert_eq!(seen[2][g], want, "kv head {g}");
            // The first decoding step (position 24) reads the head's kept rows.
            for h in [2 * g, 2 * g + 1] {
                let products: Vec<Vec<f32>> =
                    want.iter().map(|&p| product(&q[h][24], &k[g][p])).collect();
                let values: Vec<&Vec<f32>> = want.iter().map(|&p| &v[g][p]).collect();
                let got: Vec<f32> = outs[2].get(h).unwrap().get(0).unwrap().to_vec1().unwrap();
                let diff = row_difference(&got, &oracle_output(&products, &values));
                assert!(diff < 1e-4, "query head {h}: {diff}");
            }
        }
        assert_eq!((seen[2][0].len(), seen[2][1].len()), (12 + 1, 4 + 1));
    }

    /// DuoAttention: the pattern's lowest heads over both layers stream (sinks and window),
    /// the others keep everything; decoding reads each head's rows; a ratio of 1 streams no
    /// head and equals the full cache.
    #[test]
    fn duo_streaming_heads_keep_sinks_and_window_and_retrieval_heads_everything() {
        let data = sequence(30);
        let duo = DropPolicy::Duo(DuoAttention {
            sinks: 2,
            recent: 5,
        });
        // Layer 0 head 1 and layer 1 head 0 score lowest: at 2x, half the heads stream.
        let pattern = HeadPattern::new(2, 2, vec![0.9, 0.1, 0.2, 0.8]).unwrap();
        let build = |ratio: f64| {
            cache(duo, Budget::Ratio(ratio))
                .with_head_pattern(&pattern)
                .unwrap()
        };
        let all = |c: &DroppingCache| {
            (0..2)
                .map(|l| (0..2).map(|g| c.kept_positions(l, g).unwrap()).collect())
                .collect::<Vec<Vec<Vec<usize>>>>()
        };
        let mut c = build(2.0);
        let (outs, seen) = run(&mut c, &data, &[10, 14], all);
        let everything: Vec<usize> = (0..25).collect();
        let streamed: Vec<usize> = [0, 1, 19, 20, 21, 22, 23, 24].to_vec();
        assert_eq!(seen[2][0], vec![everything.clone(), streamed.clone()]);
        assert_eq!(seen[2][1], vec![streamed, everything]);
        // The first decoding step (position 24) of layer 0 reads each head's kept rows.
        let (q, k) = rotated(&data.0, &data.1);
        let v: HeadRows = data.2.to_vec3().unwrap();
        for (h, query) in q.iter().enumerate() {
            let g = h / 2;
            let want = &seen[2][0][g];
            let products: Vec<Vec<f32>> = want
                .iter()
                .map(|&p| product(&query[24], &k[g][p]))
                .collect();
            let values: Vec<&Vec<f32>> = want.iter().map(|&p| &v[g][p]).collect();
            let got: Vec<f32> = outs[2].get(h).unwrap().get(0).unwrap().to_vec1().unwrap();
            let diff = row_difference(&got, &oracle_output(&products, &values));
            assert!(diff < 1e-4, "query head {h}: {diff}");
        }
        // Keeping everything equals the full cache.
        let mut kept_all = build(1.0);
        let outs = run(&mut kept_all, &data, &[10, 14], |_| ()).0;
        assert!(max_difference(&outs, &full_outputs(&data, &[10, 14])) < 1e-5);
        // Without its pattern the policy refuses to choose; a pattern of another shape is refused.
        let mut bare = cache(duo, Budget::Ratio(2.0));
        bare.reserve(Reservation::prompt(10, 0)).unwrap();
        let (q, k, v) = &data;
        for layer in 0..2 {
            let part = |x: &Tensor| x.narrow(1, 0, 10).unwrap();
            bare.attend(layer, 0, &part(q), &part(k), &part(v)).unwrap();
        }
        assert!(bare
            .end_prefill()
            .unwrap_err()
            .to_string()
            .contains("head pattern"));
        let wide = HeadPattern::new(2, 3, vec![0.0; 6]).unwrap();
        assert!(cache(duo, Budget::Ratio(2.0))
            .with_head_pattern(&wide)
            .is_err());
        assert!(cache(SNAPKV, Budget::Ratio(2.0))
            .with_head_pattern(&pattern)
            .is_err());
    }

    /// A decoding budget over AdaKV's heads of different lengths: each choice keeps the best
    /// Knorm scores over both heads (each head's best safeguarded), replayed here; SnapKV's
    /// window of decoding queries reads each head's own rows and protects the latest.
    #[test]
    fn a_decoding_budget_over_adakv_chooses_over_heads_of_different_lengths() {
        let data = head0_keys_halved(40);
        let (_, keys) = rotated(&data.0, &data.1);
        let settings = |policy| DropSettings {
            policy,
            budget: Budget::Tokens(8),
            selection: Selection::AdaKv(0.5),
            schedule: Schedule::Uniform,
            decoding: Some(DecodingBudget {
                interval: 3,
                target: 6,
            }),
        };
        let build = |policy| {
            DroppingCache::new(
                shape(),
                rope(),
                &Device::Cpu,
                settings(policy),
                KvPrecision::F32,
            )
            .unwrap()
        };
        let mut knorm = build(DropPolicy::Keys(KeyScorer::Knorm));
        let (_, seen) = run(&mut knorm, &data, &[20], kept);
        let norm =
            |g: usize, p: usize| -> f32 { -keys[g][p].iter().map(|x| x * x).sum::<f32>().sqrt() };
        let mut alive: Vec<Vec<usize>> = seen[1].clone();
        assert_ne!(
            alive[0].len(),
            alive[1].len(),
            "AdaKV's heads differ in length"
        );
        let mut since = 1;
        for (step, held) in seen.iter().enumerate().skip(2) {
            alive.iter_mut().for_each(|a| a.push(19 + step));
            since += 1;
            if since >= 3 && alive.iter().map(Vec::len).max().unwrap() > 6 {
                // Each head's best 3 lifted, then the best 12 over both heads.
                let mut all: Vec<(f32, usize, usize)> = Vec::new();
                for (g, rows) in alive.iter().enumerate() {
                    let mut order: Vec<usize> = rows.clone();
                    order.sort_by(|&a, &b| norm(g, b).total_cmp(&norm(g, a)).then(a.cmp(&b)));
                    for &p in rows {
                        let lifted = order[..3].contains(&p);
                        all.push((if lifted { f32::MAX } else { norm(g, p) }, g, p));
                    }
                }
                let mut order: Vec<usize> = (0..all.len()).collect();
                order.sort_by(|&a, &b| all[b].0.total_cmp(&all[a].0).then(a.cmp(&b)));
                alive = vec![Vec::new(); 2];
                for &i in &order[..12] {
                    alive[all[i].1].push(all[i].2);
                }
                alive.iter_mut().for_each(|a| a.sort_unstable());
                since = 0;
            }
            assert_eq!(held, &alive, "after decoding step {step}");
        }
        // SnapKV's window (4 decoding queries) over heads of different lengths.
        let mut snapkv = build(SNAPKV);
        let (_, seen) = run(&mut snapkv, &data, &[20], kept);
        let last = seen.last().unwrap();
        // The last choice, at position 37, kept 12 over both heads, the latest 4 in each.
        assert_eq!(last[0].len() + last[1].len(), 12 + 2 * 2);
        for head in last {
            assert!(head.ends_with(&[34, 35, 36, 37, 38, 39]), "{head:?}");
        }
    }

    #[test]
    fn snapkv_keeps_what_brute_force_pooled_window_attention_selects() {
        let data = sequence(28);
        let mut c = cache(SNAPKV, Budget::Tokens(10));
        let (_, seen) = run(&mut c, &data, &[10, 14], kept);
        let (q, k) = rotated(&data.0, &data.1);
        for g in 0..2 {
            let mut score = [0f64; 20];
            for head in &q[2 * g..2 * g + 2] {
                for (i, query) in head.iter().enumerate().take(24).skip(20) {
                    let keys: Vec<&Vec<f32>> = k[g][..=i].iter().collect();
                    for (s, p) in score.iter_mut().zip(probabilities(query, &keys)) {
                        *s += p;
                    }
                }
            }
            let pooled: Vec<f64> = (0..20usize)
                .map(|j| {
                    score[j.saturating_sub(1)..(j + 2).min(20)]
                        .iter()
                        .cloned()
                        .fold(f64::MIN, f64::max)
                })
                .collect();
            let mut want = best(&pooled, 6);
            want.extend(20..24);
            // Decoding adds tokens without evicting.
            want.push(24);
            assert_eq!(seen[2][g], want, "head {g}");
            assert_eq!(seen[5][g].len(), 14);
        }
    }

    #[test]
    fn streaming_keeps_sinks_and_the_recent_window_in_budget_sized_storage() {
        let data = sequence(30);
        let sinks = Sinks::Count(2);
        for reindex in [false, true] {
            let mut c = cache(
                DropPolicy::StreamingLlm { sinks, reindex },
                Budget::Tokens(8),
            );
            let (_, seen) = run(&mut c, &data, &[10, 14], |c| (kept(c), c.stored_bytes()));
            let window =
                |end: usize| -> Vec<usize> { [0, 1].into_iter().chain(end - 6..end).collect() };
            assert_eq!(seen[0].0[0], window(10));
            assert_eq!(seen[1].0[1], window(24));
            assert_eq!(seen[7].0[0], window(30));
            let row_bytes = (64 + 64 + 2) * 4;
            for (_, bytes) in &seen {
                assert_eq!(*bytes, 2 * 2 * 9 * row_bytes);
            }
        }
        // The benchmark's sink count: int(0.021 · budget).
        let mut c = cache(
            DropPolicy::StreamingLlm {
                sinks: Sinks::Fraction(0.021),
                reindex: true,
            },
            Budget::Ratio(1.0),
        );
        let long = sequence(200);
        run(&mut c, &long, &[100], |_| ());
        // Budget 100 → 2 sinks; after 100 decoding steps the window is the last 98 tokens.
        let want: Vec<usize> = [0, 1].into_iter().chain(102..200).collect();
        assert_eq!(c.kept_positions(0, 0), Some(want));
    }

    /// Every query, in chunked prefill and in decoding, against a brute-force reading of
    /// `stream_llm.py`: its last `window` tokens at their true distance, and the sinks
    /// outside the window at distance `budget - 1 - i` (re-indexed) or their true distance.
    #[test]
    fn streaming_queries_see_exactly_sinks_and_their_own_window() {
        let data = sequence(40);
        let (q, k, v) = &data;
        let (rq, rk) = rotated(q, k);
        let values: HeadRows = v.to_vec3().unwrap();
        let at_seven: HeadRows = rope().apply_at(q, 7).unwrap().to_vec3().unwrap();
        for reindex in [true, false] {
            let mut c = cache(
                DropPolicy::StreamingLlm {
                    sinks: Sinks::Count(2),
                    reindex,
                },
                Budget::Tokens(8),
            );
            let (outs, _) = run(&mut c, &data, &[13, 17], |_| ());
            let out: HeadRows = Tensor::cat(&outs, 1).unwrap().to_vec3().unwrap();
            let mut worst = 0f32;
            for h in 0..4 {
                let g = h / 2;
                for p in 0..40usize {
                    let mut products: Vec<Vec<f32>> = Vec::new();
                    let mut vals: Vec<&Vec<f32>> = Vec::new();
                    for j in p.saturating_sub(5)..=p {
                        products.push(product(&rq[h][p], &rk[g][j]));
                        vals.push(&values[g][j]);
                    }
                    for j in (0..2).filter(|j| j + 6 <= p) {
                        let query = if reindex { &at_seven[h][p] } else { &rq[h][p] };
                        products.push(product(query, &rk[g][j]));
                        vals.push(&values[g][j]);
                    }
                    let want = oracle_output(&products, &vals);
                    worst = worst.max(row_difference(&out[h][p], &want));
                }
            }
            assert!(
                worst < 1e-4,
                "reindex={reindex}: max abs difference {worst}"
            );
        }
    }

    #[test]
    fn pyramid_budgets_fall_by_layer_and_total_the_uniform_budget() {
        let data = sequence(110);
        let mut c = scheduled(SNAPKV, Budget::Tokens(40), Schedule::Pyramid { beta: 20 });
        run(&mut c, &data, &[100], |_| ());
        let (first, last) = (c.layer_budget(0).unwrap(), c.layer_budget(1).unwrap());
        // Outside the window of 4: min = 36 // 20 = 1, max = 72 - 1 = 71, step 70.
        assert_eq!((first, last), (75, 5));
        assert_eq!(first + last, 2 * 40);
        assert_eq!(c.kept_tokens(0), 75 + 10);
        assert_eq!(c.kept_tokens(1), 5 + 10);
        // Any policy that chooses once takes the schedule; Knorm has no window: min = 40 // 20
        // = 2, max = 80 - 2 = 78.
        let knorm = DropPolicy::Keys(KeyScorer::Knorm);
        let mut c = scheduled(knorm, Budget::Tokens(40), Schedule::Pyramid { beta: 20 });
        run(&mut c, &data, &[100], |_| ());
        assert_eq!((c.layer_budget(0), c.layer_budget(1)), (Some(78), Some(2)));
        assert_eq!((c.kept_tokens(0), c.kept_tokens(1)), (78 + 10, 2 + 10));
    }

    #[test]
    fn ratio_budgets_follow_the_prompt_and_bad_settings_are_refused() {
        assert_eq!(Budget::Ratio(4.0).tokens(4096), 1024);
        assert_eq!(Budget::Ratio(8.0).tokens(3), 1);
        // The benchmark's 6x: 0.17 of the input, not 1/6.
        assert_eq!(Budget::Fraction(0.17).tokens(5000), 850);
        assert_eq!(Budget::Ratio(6.0).tokens(5000), 833);
        let bad = |policy, budget| {
            DroppingCache::new(
                shape(),
                rope(),
                &Device::Cpu,
                DropSettings {
                    policy,
                    budget,
                    selection: Selection::PerHead,
                    schedule: Schedule::Uniform,
                    decoding: None,
                },
                KvPrecision::F32,
            )
            .is_err()
        };
        assert!(bad(DropPolicy::Tova, Budget::Ratio(0.5)));
        assert!(bad(DropPolicy::Tova, Budget::Tokens(0)));
        assert!(bad(DropPolicy::Tova, Budget::Fraction(0.0)));
        assert!(bad(DropPolicy::Tova, Budget::Fraction(1.5)));
        assert!(bad(
            DropPolicy::SnapKv {
                window: 4,
                kernel: 4,
                pool: Pool::Max
            },
            Budget::Ratio(2.0)
        ));
        let mut c = cache(DropPolicy::Tova, Budget::Ratio(2.0));
        let (q, k, v) = sequence(3);
        assert!(matches!(
            c.attend(0, 0, &q, &k, &v),
            Err(KvError::Invalid(_))
        ));
    }
}
