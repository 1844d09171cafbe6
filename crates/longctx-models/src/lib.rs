//! Weights, tokenizers, chat templates and model architectures behind one
//! [`LanguageModel`] trait, so that generation, tasks and benchmarks are written once.

mod blocks;
mod chat;
pub mod config;
mod error;
mod generate;
pub mod gguf;
mod linear;
mod llama;
mod load;
mod mamba;
mod mamba2;
mod q8;
mod quant;
mod recurrent;
mod recurrent_gemma;
mod replay;
mod rwkv;
mod rwkv_vocab;
mod sentencepiece;
mod tokenizer;

use candle_core::Tensor;
use longctx_kv::KvCache;
pub use longctx_kv::{KvPrecision, Reservation};

pub use chat::ChatTemplate;
pub use error::{ModelError, Result};
pub use generate::{
    argmax, argmax_except, generate_greedy, generate_greedy_fed, Feed, Generation,
    GenerationSettings, StopReason,
};
pub use llama::{CacheBuilder, LlamaModel, LoadOptions, DEFAULT_PREFILL_CHUNK};
pub use load::{load_model, resolve_model_path, LoadedModel};
pub use q8::DecodeActivations;
pub use replay::ReplayPrompt;
pub use tokenizer::TextTokenizer;

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (prefill before generation).
    Last,
    /// Every position's (perplexity, reference comparisons).
    All,
}

/// The arithmetic a model does per token, so that plans can estimate the time of a sample
/// on any model from its shape (the constants that turn it into seconds live with the plan).
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeProfile {
    /// Weights every token is multiplied by in its layers (prefill and decoding alike).
    pub layer_weights: usize,
    /// Weights of the output head: multiplied once per prefill (its last position) and once
    /// per decoded token.
    pub head_weights: usize,
    /// Each attention layer's work per visible key.
    pub attention: Vec<AttentionWork>,
}

/// What one attention layer does for one query and one visible key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionWork {
    /// Query heads × head dimension: multiply-adds for the score, and again for the value.
    pub width: usize,
    /// The most keys a query sees (a sliding window), or `None` for the whole context.
    pub window: Option<usize>,
}

/// A language model holding one sequence's state (a KV cache, or a recurrent state): what
/// every command runs, whatever the architecture behind it.
pub trait LanguageModel: Send {
    /// Feed `tokens` after those already seen; returns f32 logits `[positions, vocab]`.
    fn append(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor>;

    /// Mark the end of the prompt (post-prefill cache policies act here).
    fn end_prefill(&mut self) -> Result<()>;

    /// Start a sequence as `reservation` describes it: sizes the state and gives
    /// token-dropping caches the prompt length their budget derives from.
    fn reserve(&mut self, reservation: Reservation) -> Result<()>;

    /// Tokens fed so far.
    fn seen_tokens(&self) -> usize;

    /// Most tokens a sequence may hold.
    fn context_limit(&self) -> usize;

    /// Bytes of sequence state really held (KV cache or recurrent state).
    fn state_bytes(&self) -> usize;

    /// Start a new sequence.
    fn reset(&mut self);

    /// Drop the seen tokens at `range` from the sequence state; the next token follows the
    /// ones left. A prompt compressor's scorer rewinds to the prefix it kept this way. A
    /// state that cannot (a recurrence, a compressing cache) refuses.
    fn forget(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        Err(ModelError::Unsupported {
            what: format!("forgetting tokens {range:?} of this model's sequence state"),
            hint: "score with a model whose cache keeps every token (a Llama-family model under the baseline)".into(),
        })
    }

    /// Install a cache policy: `build` makes it for the layers the model lets a method serve
    /// (all, or Gemma-3's global layers) from their geometry and RoPE; the sequence restarts.
    /// A model without a KV cache refuses.
    fn set_cache(&mut self, _build: Box<CacheBuilder>) -> Result<()> {
        Err(ModelError::Unsupported {
            what: "a KV-cache method on a model without a KV cache".into(),
            hint: "run it as it is (baseline)".into(),
        })
    }

    /// The cache in use (byte and kept-token accounting, kept sets), its shape spanning
    /// every layer; `None` for a model without one.
    fn cache(&self) -> Option<&dyn KvCache> {
        None
    }

    /// The trained context, or the one `--context` set: how long a prompt may be fitted to.
    fn trained_context(&self) -> usize;

    /// Vocabulary size (logit rows).
    fn vocab_size(&self) -> usize;

    /// Bytes of weights held in memory.
    fn weight_bytes(&self) -> usize;

    /// The arithmetic per token, for time estimates.
    fn compute_profile(&self) -> ComputeProfile;

    /// The school of an architecture that is not a transformer, as the paper's Table 2 groups
    /// models ("linear-time", "hybrid"); `None` for a transformer.
    fn school(&self) -> Option<&'static str> {
        None
    }

    /// Give the model KVzip's replay prompt, tokenized for it, for a cache that scores a
    /// prompt by having it repeated; a model without a KV cache has no use for it.
    fn set_replay_prompt(&mut self, _prompt: ReplayPrompt) {}

    /// Run the replay passes the cache asks for over the prompt just fed (`prompt`, the
    /// whole sequence so far), before the prompt ends: KVzip's reconstruction. Nothing for
    /// a cache that does not ask, or a model without one.
    fn reconstruct(&mut self, _prompt: &[u32]) -> Result<()> {
        Ok(())
    }

    /// Process a whole prompt; returns the last position's logits `[1, vocab]`.
    fn prefill(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let logits = self.append(tokens, Logits::Last)?;
        self.reconstruct(tokens)?;
        self.end_prefill()?;
        Ok(logits)
    }

    /// Feed one generated token; returns its logits `[1, vocab]`.
    fn step(&mut self, token: u32) -> Result<Tensor> {
        self.append(&[token], Logits::Last)
    }
}
