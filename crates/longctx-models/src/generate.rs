//! Greedy generation, written once above [`LanguageModel`].

use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::{LanguageModel, Reservation, Result};

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
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    generate_greedy_fed(model, prompt, Feed::default(), settings, on_token)
}

/// How a prompt is fed to the model before its answer is generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feed {
    /// How many of the prompt's tokens are the prefill (the rest, the question, follows
    /// under the compressed cache: kvpress's query-agnostic protocol); `None`: all of them.
    pub context: Option<usize>,
    /// The input length a token-dropping policy's budget derives from, when not the
    /// prefill's (the benchmark's budget `min(L, max_length)` for a streamed input).
    pub budget_input: Option<usize>,
}

/// Greedy decoding fed as `feed` says. With a context split, only `prompt[..context]` is the
/// prefill: the cache policy sizes its budget from it and compresses it at the end of
/// prefill; the rest of the prompt (the question) is then fed one token at a time under the
/// compressed cache, as decoding steps are, before the answer is generated. Both phases
/// count as prefill time.
pub fn generate_greedy_fed(
    model: &mut dyn LanguageModel,
    prompt: &[u32],
    feed: Feed,
    settings: &GenerationSettings,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let context = feed.context.unwrap_or(prompt.len());
    if context == 0 || context > prompt.len() {
        return Err(crate::ModelError::Tokenizer(format!(
            "the context part of a prompt must hold between 1 and {} tokens, not {context}",
            prompt.len()
        )));
    }
    model.reset();
    model.reserve(Reservation {
        prompt: context,
        appended: prompt.len() - context,
        new_tokens: settings.max_new_tokens,
        budget_input: feed.budget_input,
    })?;
    let start = Instant::now();
    let mut logits = model.prefill(&prompt[..context])?;
    for &token in &prompt[context..] {
        logits = model.step(token)?;
    }
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
        fn reserve(&mut self, _: Reservation) -> Result<()> {
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
        fn trained_context(&self) -> usize {
            100
        }
        fn vocab_size(&self) -> usize {
            3
        }
        fn weight_bytes(&self) -> usize {
            0
        }
        fn compute_profile(&self) -> crate::ComputeProfile {
            crate::ComputeProfile {
                layer_weights: 0,
                head_weights: 0,
                attention: Vec::new(),
            }
        }
    }

    /// A model without a KV cache has none to report and refuses a KV method.
    #[test]
    fn a_model_without_a_kv_cache_refuses_kv_methods() {
        let mut model = PrefersNewline { seen: 0 };
        assert!(model.cache().is_none());
        let err = model
            .set_cache(Box::new(|_, _, _| unreachable!("never built")))
            .unwrap_err();
        assert!(err.to_string().contains("without a KV cache"), "{err}");
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

    /// A model that records how it was fed: the reserved prompt, then each call's length.
    #[derive(Default)]
    struct Recorder {
        reserved: Reservation,
        calls: Vec<(usize, bool)>,
        prefilled: bool,
    }

    impl LanguageModel for Recorder {
        fn append(&mut self, tokens: &[u32], _: crate::Logits) -> Result<Tensor> {
            self.calls.push((tokens.len(), self.prefilled));
            Ok(Tensor::new(&[[0f32, 1.0]], &Device::Cpu)?)
        }
        fn end_prefill(&mut self) -> Result<()> {
            self.prefilled = true;
            Ok(())
        }
        fn reserve(&mut self, r: Reservation) -> Result<()> {
            self.reserved = r;
            Ok(())
        }
        fn seen_tokens(&self) -> usize {
            self.calls.iter().map(|c| c.0).sum()
        }
        fn context_limit(&self) -> usize {
            100
        }
        fn state_bytes(&self) -> usize {
            0
        }
        fn reset(&mut self) {
            *self = Self::default();
        }
        fn trained_context(&self) -> usize {
            100
        }
        fn vocab_size(&self) -> usize {
            2
        }
        fn weight_bytes(&self) -> usize {
            0
        }
        fn compute_profile(&self) -> crate::ComputeProfile {
            crate::ComputeProfile {
                layer_weights: 0,
                head_weights: 0,
                attention: Vec::new(),
            }
        }
    }

    /// The query-agnostic protocol: the budget comes from the context alone, the context is
    /// one prefill that ends before the question, and the question follows token by token.
    #[test]
    fn the_question_is_fed_after_the_context_is_compressed() {
        let settings = GenerationSettings {
            max_new_tokens: 2,
            stop_tokens: vec![0],
            min_new_tokens: 0,
        };
        let mut model = Recorder::default();
        let feed = Feed {
            context: Some(7),
            budget_input: Some(5),
        };
        let g = generate_greedy_fed(&mut model, &[5; 10], feed, &settings, |_| true).unwrap();
        let want = Reservation {
            prompt: 7,
            appended: 3,
            new_tokens: 2,
            budget_input: Some(5),
        };
        assert_eq!(model.reserved, want);
        assert_eq!(
            model.calls,
            vec![(7, false), (1, true), (1, true), (1, true), (1, true)]
        );
        assert_eq!(
            (g.prompt_tokens, g.tokens, g.decode_steps),
            (10, vec![1, 1], 1)
        );
        generate_greedy(&mut model, &[5; 10], &settings, |_| true).unwrap();
        assert_eq!(model.reserved, Reservation::prompt(10, 2));
        assert_eq!(model.calls[0], (10, false));
        for bad in [0, 11] {
            let feed = Feed {
                context: Some(bad),
                budget_input: None,
            };
            assert!(generate_greedy_fed(&mut model, &[5; 10], feed, &settings, |_| true).is_err());
        }
    }

    #[test]
    fn banned_tokens_are_skipped_and_ties_go_to_the_first() {
        let logits = Tensor::new(&[1f32, 5.0, 5.0, 3.0], &Device::Cpu).unwrap();
        assert_eq!(argmax(&logits).unwrap(), 1);
        assert_eq!(argmax_except(&logits, &[1]).unwrap(), 2);
        assert_eq!(argmax_except(&logits, &[1, 2]).unwrap(), 3);
    }
}
