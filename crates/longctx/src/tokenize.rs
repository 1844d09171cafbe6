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
