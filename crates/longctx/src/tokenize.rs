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

/// The paper's needle grid scaled to a model: its longest haystack is the largest whose
/// prompt, with the answer's tokens, fits the model's context. Tokens per word are measured
/// on the haystack itself with the model's tokenizer (at the paper's longest length, or the
/// whole cycled text the context could hold).
pub fn fitted_needle_grid(
    tokenizer: &TextTokenizer,
    context: usize,
    haystack: &longctx_tasks::needle::Haystack,
    seed: u64,
) -> Result<longctx_tasks::needle::NeedleGrid, longctx_tasks::needle::NeedleError> {
    let probe_words = context; // more words than the context can hold in any tokenizer
    let probe = haystack.background(probe_words);
    let tokens = ModelTokenizer(tokenizer).encode(&probe).len();
    let per_word = tokens as f64 / longctx_tasks::needle::words(&probe).len().max(1) as f64;
    longctx_tasks::needle::NeedleGrid::fitted(context, per_word * 1.02, seed)
}
