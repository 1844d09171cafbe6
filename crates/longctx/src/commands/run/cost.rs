//! How long a sample should take on a given model: the plan's estimates, the shards' cost
//! balance and the progress bars' ETA.
//!
//! A sample's time is the model's arithmetic ([`ComputeProfile`]) at rates measured on this
//! project's 2-core VM (2 threads) with the default model, SmolLM2-135M Q4_1, f16 keys and
//! values: `longctx bench --contexts 512,4096,8000 --decode-tokens 32 --threads 2` (at
//! 85286fb) prefilled 512 tokens in 0.77 s, 4,096 in 11.3 s and 8,000 in 33.4 s (`a·n +
//! b·n²` through the first and last gives the middle within 1%), and decoded at 8.67 ms a
//! token after 512 tokens and 25.4 ms after 8,000. Other models scale by their shape; the rates of their
//! weight formats and attention geometry differ somewhat, so the figure is a guide for
//! planning, not a measurement.

use longctx_models::ComputeProfile;

/// Multiply-adds per second of the layers' weights in prefill (f32 GEMMs on weights
/// dequantized per chunk).
const PREFILL_WEIGHT_RATE: f64 = 8.02e10;
/// Multiply-adds per second of prefill attention (scores and value sums, tiled kernel).
const PREFILL_ATTENTION_RATE: f64 = 4.85e10;
/// Weights per second read by decoding's quantized mat-vecs (8-bit activations).
const DECODE_WEIGHT_RATE: f64 = 1.79e10;
/// Multiply-adds per second of a decoding query's attention.
const DECODE_ATTENTION_RATE: f64 = 1.54e10;
/// Tokens per word of English prose for plans without a haystack to measure the
/// tokenizer on (SmolLM2's 49K vocabulary makes 1.38 of the haystack's).
pub const TOKENS_PER_WORD: f64 = 1.4;
/// Tokens a prompt has beyond its words (template, instruction, question).
const PROMPT_OVERHEAD_TOKENS: f64 = 100.0;

/// A model's profile and how many of its tokens a word of text makes.
#[derive(Debug, Clone)]
pub struct ModelCost {
    pub profile: ComputeProfile,
    pub tokens_per_word: f64,
}

impl ModelCost {
    /// Estimated seconds to prefill `words` words of context and decode `new_tokens`.
    pub fn seconds(&self, words: f64, new_tokens: usize) -> f64 {
        let p = &self.profile;
        let n = words * self.tokens_per_word + PROMPT_OVERHEAD_TOKENS;
        let prefill = self.prefill_seconds(words);
        let decode_attention: f64 = p
            .attention
            .iter()
            .map(|a| 2.0 * a.width as f64 * a.window.map_or(n, |w| n.min(w as f64)))
            .sum();
        let per_token = (p.layer_weights + p.head_weights) as f64 / DECODE_WEIGHT_RATE
            + decode_attention / DECODE_ATTENTION_RATE;
        prefill + new_tokens as f64 * per_token
    }

    /// Estimated seconds to prefill `words` words of context (the last position's logits).
    fn prefill_seconds(&self, words: f64) -> f64 {
        let p = &self.profile;
        let n = words * self.tokens_per_word + PROMPT_OVERHEAD_TOKENS;
        let attention: f64 = p
            .attention
            .iter()
            .map(|a| 2.0 * a.width as f64 * visible_pairs(n, a.window))
            .sum();
        p.layer_weights as f64 * n / PREFILL_WEIGHT_RATE
            + p.head_weights as f64 / DECODE_WEIGHT_RATE
            + attention / PREFILL_ATTENTION_RATE
    }

    /// Estimated seconds to compress `words` words to the share `kept` at the cost of
    /// `prefills` prefills of them (the model scoring for itself), then prefill what is left
    /// and decode `new_tokens`.
    pub fn compressed_seconds(
        &self,
        words: f64,
        kept: f64,
        prefills: f64,
        new_tokens: usize,
    ) -> f64 {
        prefills * self.prefill_seconds(words) + self.seconds(words * kept, new_tokens)
    }
}

/// Query–key pairs a causal prefill of `n` tokens computes when each query sees at most
/// `window` keys (itself included).
fn visible_pairs(n: f64, window: Option<usize>) -> f64 {
    match window {
        Some(w) if (w as f64) < n => {
            let w = w as f64;
            w * (w + 1.0) / 2.0 + (n - w) * w
        }
        _ => n * (n + 1.0) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longctx_models::AttentionWork;

    /// SmolLM2-135M's shape: 30 layers of 9 query heads × 64.
    fn smollm2() -> ModelCost {
        ModelCost {
            profile: ComputeProfile {
                layer_weights: 106_168_320,
                head_weights: 28_311_552,
                attention: vec![
                    AttentionWork {
                        width: 576,
                        window: None
                    };
                    30
                ],
            },
            tokens_per_word: 1.4,
        }
    }

    /// The fit reproduces the measurements it came from (within 5%): `bench` at 512 tokens
    /// (0.77 s prefill + 32 tokens at 8.67 ms) and at 8,000 (33.4 s + 32 at 25.4 ms).
    #[test]
    fn reproduces_the_default_models_measurements() {
        let model = smollm2();
        for (tokens, measured) in [
            (512.0, 0.773 + 32.0 * 0.00867),
            (8000.0, 33.39 + 32.0 * 0.0254),
        ] {
            let words = ((tokens - PROMPT_OVERHEAD_TOKENS) / 1.4) as usize;
            let estimate = model.seconds(words as f64, 32);
            assert!(
                (estimate / measured - 1.0).abs() < 0.05,
                "{tokens} tokens: estimated {estimate:.2} s, measured {measured:.2} s"
            );
        }
    }

    /// A window bounds attention's work: a local layer costs linearly past its window.
    #[test]
    fn windows_bound_attention_pairs() {
        assert_eq!(visible_pairs(4.0, None), 10.0);
        assert_eq!(visible_pairs(4.0, Some(8)), 10.0);
        assert_eq!(visible_pairs(6.0, Some(2)), 3.0 + 4.0 * 2.0);
    }
}
