//! LLMLingua-2 (Pan et al., Findings of ACL 2024): each token gets a probability of being
//! kept from an XLM-RoBERTa token classifier; tokens are merged into words (their mean
//! probability), and a chunk keeps the words above a percentile of its words' probabilities
//! weighted by their GPT-3.5 token counts. A port of `compress_prompt_llmlingua2` of
//! Microsoft's `llmlingua` 0.2.2 called as the benchmark called it (its
//! `pipeline/llmlingua2/inference.py`): force tokens `\n . ! ? ,` (kept whatever their
//! probability), chunks of at most 510 tokens ending at `.` or `\n`, `drop_consecutive`
//! (a forced token repeated with nothing kept between drops its repeats). A force token the
//! tokenizer splits stands for one of the tokens llmlingua adds, `[NEW0]` … `[NEW99]`.
//!
//! The GPT-3.5 token counts (cl100k_base) come from `bpe-openai`, whose vocabulary equals
//! tiktoken's. As in llmlingua 0.2.2 (and its later versions), a chunk reaches the encoder
//! between the strings `[CLS]` and `[SEP]`, BERT's, which XLM-RoBERTa reads as `<unk>`: the
//! benchmark's probabilities were computed so, and these are.

use anyhow::{bail, Result};

use super::xlm_roberta::TokenClassifier;
use super::Target;

/// The benchmark's force tokens.
pub const FORCE_TOKENS: [&str; 5] = ["\n", ".", "!", "?", ","];
/// The benchmark's chunk end tokens.
const CHUNK_END_TOKENS: [&str; 2] = [".", "\n"];
/// Tokens of a chunk, leaving room for `<s>` and `</s>` in the classifier's 512.
const CHUNK_TOKENS: usize = 510;
/// The classifier's sequence length (`max_seq_len`): longer inputs are cut to it.
const SEQUENCE_TOKENS: usize = 512;
/// What llmlingua puts around a chunk: BERT's start and end tokens.
const FRAME: (&str, &str) = ("[CLS]", "[SEP]");
/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// Tokens the classifier's tokenizer marks as special, skipped when merging into words.
const SPECIAL_TOKENS: [&str; 5] = ["<s>", "</s>", "<unk>", "<pad>", "<mask>"];

/// The result of compressing one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Compressed {
    /// The compressed text.
    pub text: String,
    /// Every word of the input with whether it was kept (1) or not (0), in order
    /// (`return_word_label`).
    pub labels: Vec<u8>,
}

/// The compressor: the classifier, its force-token substitutions and the GPT counter.
pub struct LlmLingua2<'a> {
    model: &'a TokenClassifier,
    /// Force tokens the tokenizer splits, and the added token standing for each.
    token_map: Vec<(String, String)>,
    chunk_ends: Vec<String>,
    gpt: &'static bpe_openai::Tokenizer,
}

impl<'a> LlmLingua2<'a> {
    /// Prepare the substitutions for `model`'s tokenizer; a folder without llmlingua's added
    /// tokens is an error saying how to prepare it.
    pub fn new(model: &'a TokenClassifier) -> Result<Self> {
        let mut token_map = Vec::new();
        for (i, t) in FORCE_TOKENS.iter().enumerate() {
            if tokenize(model, t)?.len() != 1 {
                let added = format!("[NEW{i}]");
                if model.tokenizer.token_to_id(&added).is_none() {
                    bail!(
                        "{}: the tokenizer lacks {added}, which llmlingua adds to stand for the force token {t:?}: prepare the folder with scripts/llmlingua2_prepare.py (see the README)",
                        model.folder.display()
                    );
                }
                token_map.push((t.to_string(), added));
            }
        }
        let mut chunk_ends: Vec<String> = CHUNK_END_TOKENS.iter().map(|t| t.to_string()).collect();
        for (original, added) in &token_map {
            if CHUNK_END_TOKENS.contains(&original.as_str()) {
                chunk_ends.push(added.clone());
            }
        }
        Ok(Self {
            model,
            token_map,
            chunk_ends,
            gpt: bpe_openai::cl100k_base(),
        })
    }

    /// Compress `text` to `target` (a rate of its GPT tokens, or a number of them).
    pub fn compress(&self, text: &str, target: Target) -> Result<Compressed> {
        let rate = match target {
            Target::Rate(r) => r,
            Target::Tokens(n) => (n as f64 / self.gpt.count(text) as f64).min(1.0),
        };
        let mut text = text.to_string();
        for (original, added) in &self.token_map {
            text = text.replace(original, added);
        }
        let chunks = self.chunks(&text)?;
        let reduce = (1.0 - rate).max(0.0);
        let (mut out, mut labels) = (String::new(), Vec::new());
        for chunk in &chunks {
            if reduce <= 0.0 {
                // Nothing to drop: the chunks as they are, force tokens put back.
                let mut kept = chunk.clone();
                for (original, added) in &self.token_map {
                    kept = kept.replace(added, original);
                }
                out.push_str(&kept);
                continue;
            }
            let (kept, chunk_labels) = self.compress_chunk(chunk, reduce)?;
            out.push_str(&kept);
            labels.extend(chunk_labels);
        }
        Ok(Compressed { text: out, labels })
    }

    /// The text cut into chunks of at most 510 tokens, each ending at its last chunk end
    /// token (`__chunk_context`), decoded back to text.
    fn chunks(&self, text: &str) -> Result<Vec<String>> {
        let tokens = tokenize(self.model, text)?;
        let n = tokens.len();
        let (mut chunks, mut start) = (Vec::new(), 0);
        while start < n {
            if start + CHUNK_TOKENS > n - 1 {
                chunks.push(self.detokenize(&tokens[start..n])?);
                break;
            }
            let mut end = start + CHUNK_TOKENS;
            for j in 0..end - start {
                if self.chunk_ends.contains(&tokens[end - j]) {
                    end -= j;
                    break;
                }
            }
            chunks.push(self.detokenize(&tokens[start..=end])?);
            start = end + 1;
        }
        Ok(chunks)
    }

    /// One chunk: words and their probabilities, then the kept words as text and every
    /// word's label (`__compress` for one chunk).
    fn compress_chunk(&self, chunk: &str, reduce: f64) -> Result<(String, Vec<u8>)> {
        // llmlingua frames a chunk with BERT's [CLS] and [SEP] (its TokenClfDataset is built
        // with its default model name), which XLM-RoBERTa's vocabulary reads as <unk>.
        let mut tokens = vec![FRAME.0.to_string()];
        tokens.extend(tokenize(self.model, chunk)?);
        tokens.push(FRAME.1.into());
        tokens.truncate(SEQUENCE_TOKENS);
        let vocabulary = &self.model.tokenizer;
        let unknown = vocabulary.token_to_id("<unk>").unwrap_or(0);
        let ids: Vec<u32> = tokens
            .iter()
            .map(|t| vocabulary.token_to_id(t).unwrap_or(unknown))
            .collect();
        // Words are merged from the ids' tokens (`convert_ids_to_tokens`): <unk> for those.
        let tokens: Vec<String> = ids
            .iter()
            .map(|&id| vocabulary.id_to_token(id).unwrap_or_else(|| "<unk>".into()))
            .collect();
        let probs = self.model.keep_probabilities(&ids)?;
        let (words, mut word_probs) = self.words(&tokens, &probs);
        if words.is_empty() {
            return Ok((String::new(), Vec::new()));
        }
        let is_force = |w: &str| FORCE_TOKENS.contains(&w);
        // A forced token repeated with no kept word between loses its repeats.
        let threshold = percentile(&word_probs, (100.0 * reduce) as i64 as f64);
        let (mut between, mut previous): (bool, Option<&str>) = (false, None);
        for (word, p) in words.iter().zip(word_probs.iter_mut()) {
            if is_force(word) {
                if between {
                    between = false;
                } else if previous == Some(word.as_str()) {
                    *p = Prob::python(0.0);
                }
                previous = Some(word.as_str());
            } else {
                between |= f64::from(p.value) > threshold;
            }
        }
        // The percentile over GPT tokens: each word counted as many times as it has.
        let weighted: Vec<Prob> = words
            .iter()
            .zip(&word_probs)
            .flat_map(|(w, &p)| std::iter::repeat_n(p, self.gpt.count(w)))
            .collect();
        if weighted.is_empty() {
            return Ok((String::new(), vec![0; words.len()]));
        }
        let threshold = percentile(&weighted, (100.0 * reduce + 1.0) as i64 as f64);
        let (mut kept, mut labels): (Vec<String>, Vec<u8>) = (Vec::new(), Vec::new());
        for (word, &p) in words.iter().zip(&word_probs) {
            let p = f64::from(p.value);
            if p > threshold || (threshold == 1.0 && p == threshold) {
                if is_force(word) && kept.last() == Some(word) {
                    labels.push(0);
                } else {
                    kept.push(word.clone());
                    labels.push(1);
                }
            } else {
                labels.push(0);
            }
        }
        Ok((self.detokenize(&kept)?, labels))
    }

    /// Tokens merged into words (`__merge_token_to_word`): a word starts at a token with
    /// the word-start mark, a punctuation character or a force token; forced words keep
    /// probability 1. Returns the words (added tokens put back) and their mean probability.
    fn words(&self, tokens: &[String], probs: &[f32]) -> (Vec<String>, Vec<Prob>) {
        let added = |t: &str| self.token_map.iter().any(|(_, a)| a == t);
        let (mut words, mut word_probs): (Vec<String>, Vec<Vec<f32>>) = (Vec::new(), Vec::new());
        let mut forced_alone: Vec<bool> = Vec::new();
        for (token, &prob) in tokens.iter().zip(probs) {
            if SPECIAL_TOKENS.contains(&token.as_str()) {
                continue;
            }
            let pure = token.trim_start_matches('▁');
            // Python's `token in string.punctuation`: a substring test.
            let starts = PUNCTUATION.contains(token.as_str())
                || FORCE_TOKENS.contains(&token.as_str())
                || added(token)
                || token.starts_with('▁');
            if starts || words.is_empty() {
                let forced = FORCE_TOKENS.contains(&pure) || added(pure);
                let mut word = token.clone();
                for (original, added) in &self.token_map {
                    word = word.replace(added, original);
                }
                words.push(word);
                word_probs.push(vec![if forced { 1.0 } else { prob }]);
                forced_alone.push(forced);
            } else {
                words.last_mut().expect("a word is open").push_str(pure);
                word_probs.last_mut().expect("a word is open").push(prob);
                *forced_alone.last_mut().expect("a word is open") = false;
            }
        }
        // The mean as Python sums NumPy float32 values: in f32, in order; a word of one
        // forced token keeps Python's float 1.0.
        let means = word_probs
            .iter()
            .zip(&forced_alone)
            .map(|(p, &alone)| match alone {
                true => Prob::python(1.0),
                false => Prob::numpy(p.iter().fold(0f32, |s, &x| s + x) / p.len() as f32),
            })
            .collect();
        (words, means)
    }

    fn detokenize(&self, tokens: &[String]) -> Result<String> {
        use tokenizers::Decoder;
        match self.model.tokenizer.get_decoder() {
            Some(decoder) => decoder
                .decode(tokens.to_vec())
                .map_err(|e| anyhow::anyhow!("decoding tokens: {e}")),
            None => Ok(tokens.concat()),
        }
    }
}

/// A text's tokens as strings, without special tokens (`tokenizer.tokenize`).
fn tokenize(model: &TokenClassifier, text: &str) -> Result<Vec<String>> {
    let encoding = model
        .tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing for {}: {e}", model.folder.display()))?;
    Ok(encoding.get_tokens().to_vec())
}

/// A word's probability as llmlingua holds it: a NumPy float32, or a Python float (a forced
/// word's 1.0, a dropped repeat's 0.0). One Python float in a list makes NumPy's
/// percentile of it float64 arithmetic; without, it is float32's.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prob {
    value: f32,
    python: bool,
}

impl Prob {
    fn python(value: f32) -> Self {
        Self {
            value,
            python: true,
        }
    }

    fn numpy(value: f32) -> Self {
        Self {
            value,
            python: false,
        }
    }
}

/// NumPy's `percentile(values, q)` with its default linear interpolation, in the precision
/// NumPy would use for that list.
fn percentile(values: &[Prob], q: f64) -> f64 {
    let mut sorted: Vec<f32> = values.iter().map(|p| p.value).collect();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let at = (n - 1) as f64 * (q / 100.0);
    let below = at.floor();
    let gamma = at - below;
    let (i, j) = (below as usize, (below as usize + 1).min(n - 1));
    if values.iter().any(|p| p.python) {
        let (a, b) = (f64::from(sorted[i]), f64::from(sorted[j]));
        lerp(a, b, gamma)
    } else {
        f64::from(lerp(sorted[i], sorted[j], gamma as f32))
    }
}

/// NumPy's `_lerp`: from the nearer end, so that the ends are exact.
fn lerp<T>(a: T, b: T, t: T) -> T
where
    T: Copy
        + PartialOrd
        + From<f32>
        + std::ops::Sub<Output = T>
        + std::ops::Add<Output = T>
        + std::ops::Mul<Output = T>,
{
    let diff = b - a;
    if t >= T::from(0.5) {
        b - diff * (T::from(1.0) - t)
    } else {
        a + diff * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_as_numpy_does() {
        let numpy: Vec<Prob> = [0.1f32, 0.4, 0.2, 0.9].map(Prob::numpy).to_vec();
        // numpy.percentile(np.array([0.1, 0.4, 0.2, 0.9], dtype=float32), q), q = 0, 50, 76, 100.
        assert_eq!(percentile(&numpy, 0.0), f64::from(0.1f32));
        assert_eq!(percentile(&numpy, 50.0), f64::from(0.3f32));
        assert_eq!(percentile(&numpy, 76.0), f64::from(0.53999996f32));
        assert_eq!(percentile(&numpy, 100.0), f64::from(0.9f32));
        // The same values with one of them a Python float: float64 arithmetic.
        let mut mixed = numpy.clone();
        mixed[3].python = true;
        assert_eq!(percentile(&mixed, 50.0), 0.30000000447034836);
        assert_eq!(percentile(&mixed, 76.0), 0.5399999976158143);
    }
}
