//! KVzip's replay prompts: what the model is fed, after a prompt, to repeat it chunk by
//! chunk (kvpress's `KVzipPress.prepare`). The cache scores the prompt by the attention
//! these passes pay it ([`longctx_kv::KvCache::begin_replay`]).

use std::ops::Range;

use crate::{ChatTemplate, Result, TextTokenizer};

/// What kvpress asks before the first chunk.
const FIRST: &str = "\n\nRepeat the previous context exactly.";
/// What kvpress asks before every later chunk, followed by the previous chunk's last tokens.
const NEXT: &str = "\n\nRepeat the part of the previous context exactly, starting with";
/// Tokens of the previous chunk quoted before a later chunk (kvpress's `prev_postfix_size`).
const QUOTED: usize = 8;

/// The token ids of KVzip's replay instructions for one model, tokenized once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPrompt {
    /// The instruction before the first chunk.
    first: Vec<u32>,
    /// The instruction before every later chunk.
    next: Vec<u32>,
    /// What closes the user's turn and opens the answer (the chat template's), or a newline.
    suffix: Vec<u32>,
    /// The chat template's opening of a user turn: a prompt that starts with it is repeated
    /// from after it, as kvpress skips it (`prefix_length`).
    opening: Vec<u32>,
}

impl ReplayPrompt {
    /// kvpress's replay prompt for a model with `chat`'s template (a newline closes the
    /// turn without one), tokenized without special tokens as kvpress does.
    pub fn new(tokenizer: &TextTokenizer, chat: Option<&ChatTemplate>) -> Result<Self> {
        let (opening, suffix) = match chat {
            None => (String::new(), "\n".to_string()),
            Some(chat) => {
                // kvpress renders a dummy turn and cuts it around the dummy text.
                let dummy = "dummy context";
                let separator = format!("\n{}", "#".repeat(dummy.len()));
                let rendered = chat.user_prompt(&format!("{dummy}{separator}"))?;
                let (context, suffix) = rendered.split_once(&separator).ok_or_else(|| {
                    crate::ModelError::ChatTemplate(
                        "the chat template dropped the text KVzip's replay prompt is cut at".into(),
                    )
                })?;
                let opening = context.split(dummy).next().unwrap_or_default();
                (opening.to_string(), suffix.to_string())
            }
        };
        Ok(Self {
            first: tokenizer.encode(FIRST, false)?,
            next: tokenizer.encode(NEXT, false)?,
            suffix: tokenizer.encode(&suffix, false)?,
            opening: tokenizer.encode(&opening, false)?,
        })
    }

    /// The replay passes over `prompt`: each repeats the prompt's tokens at its span, in
    /// chunks of `chunk` after the template's opening (when the prompt starts with it).
    pub fn passes(&self, prompt: &[u32], chunk: usize) -> Vec<(Range<usize>, Vec<u32>)> {
        let start = match !self.opening.is_empty() && prompt.starts_with(&self.opening) {
            true => self.opening.len(),
            false => 0,
        };
        let chunks: Vec<&[u32]> = prompt[start..].chunks(chunk.max(1)).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let mut ids = match i {
                    0 => self.first.clone(),
                    _ => {
                        let previous = chunks[i - 1];
                        let mut ids = self.next.clone();
                        ids.extend(&previous[previous.len().saturating_sub(QUOTED)..]);
                        ids
                    }
                };
                ids.extend(&self.suffix);
                ids.extend(*part);
                let from = start + i * chunk;
                (from..from + part.len(), ids)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt() -> ReplayPrompt {
        ReplayPrompt {
            first: vec![1, 1],
            next: vec![2],
            suffix: vec![9],
            opening: vec![7, 7, 7],
        }
    }

    #[test]
    fn passes_skip_the_opening_and_quote_the_previous_chunk() {
        let context: Vec<u32> = [7, 7, 7].into_iter().chain(100..120).collect();
        let passes = prompt().passes(&context, 9);
        let spans: Vec<Range<usize>> = passes.iter().map(|(s, _)| s.clone()).collect();
        assert_eq!(spans, [3..12, 12..21, 21..23]);
        assert_eq!(
            passes[0].1,
            [1, 1, 9, 100, 101, 102, 103, 104, 105, 106, 107, 108]
        );
        // The second quotes the first chunk's last 8 tokens.
        let mut second = vec![2, 101, 102, 103, 104, 105, 106, 107, 108, 9];
        second.extend(109..118);
        assert_eq!(passes[1].1, second);
        assert_eq!(passes[2].1[..1], [2]);
        assert_eq!(passes[2].1[passes[2].1.len() - 2..], [118, 119]);
        // Without the opening, the whole prompt is repeated.
        let raw: Vec<u32> = (100..110).collect();
        assert_eq!(prompt().passes(&raw, 2048)[0].0, 0..10);
    }
}
