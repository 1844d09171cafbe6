//! Greedy generation, written once above [`LanguageModel`].

use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::{LanguageModel, Result};

/// What bounds a generation.
#[derive(Debug, Clone)]
pub struct GenerationSettings {
    /// Most tokens to produce.
    pub max_new_tokens: usize,
    /// Token ids that end the answer (not included in it).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` were produced.
    Length,
    /// The caller's callback asked to stop (e.g. a stop string was seen).
    Caller,
    /// The model's context is full.
    Context,
}

/// The generated tokens and how long each phase took.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, stop token excluded.
    pub tokens: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Time to process the prompt and produce the first token's logits.
    pub prefill: Duration,
    /// Time of all decoding steps.
    pub decode: Duration,
    /// Decoding steps run (each one forward pass of one token).
    pub decode_steps: usize,
    /// Why it ended.
    pub stop: StopReason,
}

/// Index of the largest logit; the first one on ties, as `torch.argmax` picks.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// Greedy decoding from a fresh sequence. `on_token` sees each new token and returns
/// `false` to stop there (the token is kept).
pub fn generate_greedy(
    model: &mut dyn LanguageModel,
    prompt: &[u32],
    settings: &GenerationSettings,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    model.reset();
    model.reserve(prompt.len(), settings.max_new_tokens)?;
    let start = Instant::now();
    let mut logits = model.prefill(prompt)?;
    let prefill = start.elapsed();
    let start = Instant::now();
    let mut tokens = Vec::new();
    let mut steps = 0;
    let stop = loop {
        if tokens.len() >= settings.max_new_tokens {
            break StopReason::Length;
        }
        let next = argmax(&logits)?;
        if settings.stop_tokens.contains(&next) {
            break StopReason::StopToken;
        }
        tokens.push(next);
        if !on_token(next) {
            break StopReason::Caller;
        }
        if tokens.len() >= settings.max_new_tokens {
            break StopReason::Length;
        }
        if model.seen_tokens() >= model.context_limit() {
            break StopReason::Context;
        }
        logits = model.step(next)?;
        steps += 1;
    };
    Ok(Generation {
        tokens,
        prompt_tokens: prompt.len(),
        prefill,
        decode: start.elapsed(),
        decode_steps: steps,
        stop,
    })
}
