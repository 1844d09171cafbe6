//! The model's tokenizer as the task crate's truncation needs it (the task crate never
//! depends on the model crate, so the two meet here).

use longctx_models::TextTokenizer;
use longctx_tasks::longbench::Tokenize;

/// Adapts a model tokenizer to [`Tokenize`]: no special tokens on either side, as
/// LongBench's `tokenizer(prompt)` / `decode(skip_special_tokens=True)` pair for the
/// tokenizers it runs (add_bos is handled when the final prompt is encoded).
pub struct ModelTokenizer<'a>(pub &'a TextTokenizer);

impl Tokenize for ModelTokenizer<'_> {
    fn encode(&self, text: &str) -> Vec<u32> {
        // A text the tokenizer cannot encode has no tokens to count; such text does not occur
        // in LongBench, and encoding only fails on internal errors of the tokenizer.
        self.0.encode(text, false).unwrap_or_default()
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, true).unwrap_or_default()
    }
}

/// The most haystack words the measure below reads: every trained context so far (32K)
/// whole, and a recurrent model's unbounded one a sample of that size.
const MAX_PROBE_WORDS: usize = 1 << 15;

/// Tokens per haystack word for this tokenizer, with a 2% margin: measured on as much cycled
/// haystack as a context of `context` tokens could hold (at most [`MAX_PROBE_WORDS`]), so
/// that needle grids can be scaled to the model (the paper scales its longest haystack to
/// what the model takes).
pub fn haystack_tokens_per_word(
    tokenizer: &TextTokenizer,
    context: usize,
    haystack: &longctx_tasks::needle::Haystack,
) -> f64 {
    // More words than the context holds as tokens.
    let probe = haystack.background(context.min(MAX_PROBE_WORDS));
    let tokens = ModelTokenizer(tokenizer).encode(&probe).len();
    1.02 * tokens as f64 / longctx_tasks::needle::words(&probe).len().max(1) as f64
}
