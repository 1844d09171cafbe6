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
    /// Tokens to produce before a stop token may be chosen: until then stop tokens are
    /// never picked (transformers' `min_length`, which LongBench's samsum sets to one new
    /// token).
    pub min_new_tokens: usize,
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
    argmax_except(logits, &[])
}

/// [`argmax`] over every token but `banned` (their logits count as minus infinity).
pub fn argmax_except(logits: &Tensor, banned: &[u32]) -> Result<u32> {
    let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut best: Option<usize> = None;
    for (i, x) in v.iter().enumerate() {
        if banned.contains(&(i as u32)) {
            continue;
        }
        if best.is_none_or(|b| *x > v[b]) {
            best = Some(i);
        }
    }
    Ok(best.unwrap_or(0) as u32)
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
        let next = if tokens.len() < settings.min_new_tokens {
            argmax_except(&logits, &settings.stop_tokens)?
        } else {
            argmax(&logits)?
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Logits that always prefer token 0 ("\n"), then 1 (end of sequence), then 2.
    struct PrefersNewline {
        seen: usize,
    }

    impl LanguageModel for PrefersNewline {
        fn append(&mut self, tokens: &[u32], _: crate::Logits) -> Result<Tensor> {
            self.seen += tokens.len();
            Ok(Tensor::new(&[[3f32, 2.0, 1.0]], &Device::Cpu)?)
        }
        fn end_prefill(&mut self) -> Result<()> {
            Ok(())
        }
        fn reserve(&mut self, _: usize, _: usize) -> Result<()> {
            Ok(())
        }
        fn seen_tokens(&self) -> usize {
            self.seen
        }
        fn context_limit(&self) -> usize {
            100
        }
        fn state_bytes(&self) -> usize {
            0
        }
        fn reset(&mut self) {
            self.seen = 0;
        }
    }

    /// LongBench's samsum rule (`min_length = prompt + 1` with `eos_token_id = [eos, "\n"]`):
    /// neither stop token can be the first new token, and the newline ends the answer after.
    #[test]
    fn stop_tokens_cannot_come_before_min_new_tokens() {
        let mut model = PrefersNewline { seen: 0 };
        let settings = |min_new_tokens| GenerationSettings {
            max_new_tokens: 5,
            stop_tokens: vec![0, 1],
            min_new_tokens,
        };
        let g = generate_greedy(&mut model, &[7, 7], &settings(1), |_| true).unwrap();
        assert_eq!((g.tokens, g.stop), (vec![2], StopReason::StopToken));
        let g = generate_greedy(&mut model, &[7, 7], &settings(0), |_| true).unwrap();
        assert_eq!((g.tokens, g.stop), (vec![], StopReason::StopToken));
    }

    #[test]
    fn banned_tokens_are_skipped_and_ties_go_to_the_first() {
        let logits = Tensor::new(&[1f32, 5.0, 5.0, 3.0], &Device::Cpu).unwrap();
        assert_eq!(argmax(&logits).unwrap(), 1);
        assert_eq!(argmax_except(&logits, &[1]).unwrap(), 2);
        assert_eq!(argmax_except(&logits, &[1, 2]).unwrap(), 3);
    }
}
