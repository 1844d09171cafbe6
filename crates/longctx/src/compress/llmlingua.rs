//! LLMLingua (Jiang et al., EMNLP 2023): a prompt shortened by a small causal LM's token
//! surprisal, coarse to fine — contexts ranked by perplexity and kept within a budget, then
//! tokens dropped window by window, each window scored conditioned on what was kept before
//! it. A port of `PromptCompressor.compress_prompt` of Microsoft's `llmlingua` 0.2.2 (the
//! version the benchmark pinned), with its defaults: iterative size 200, context budget
//! "+100", rank method "llmlingua", no question, no sentence filter.
//!
//! The port keeps the reference's arithmetic where it is unusual, because it decides what
//! is kept (each is checked against the package by `tests/llmlingua.rs`):
//! - a token is kept by the surprisal of the token *after* it (the loss vector is indexed by
//!   label position minus one and applied to input positions);
//! - the last token of each window is always kept (the keep mask's extra element);
//! - the threshold of a window is a quantile over every loss computed so far, including
//!   the first whole-text pass's losses of tokens not yet reached, which stay in place as
//!   the sequence is shortened;
//! - windows are planned from each context's length plus two, starting one token in, and
//!   the tail beyond the last full window is never compressed; a text shorter than a window
//!   is kept almost whole (Python's negative slice bounds, reproduced by [`py_end`]);
//! - past the scorer's context, the oldest tokens after the first ten leave its cache.

use anyhow::{bail, Context, Result};
use longctx_models::{LanguageModel, Logits, TextTokenizer};

/// Tokens of the scorer's cache kept at its start when the window slides past its context
/// (`cache_bos_num` in the reference).
const CACHE_START_TOKENS: usize = 10;

/// Tokens scored per call of the model: a chunk's logits (vocabulary × this, 96 MiB for a
/// 49K vocabulary in f32, held twice while read) are all that is held at once. The model's
/// own prefill chunk: smaller ones made the fixture test's scoring 1.3× slower.
const SCORED_CHUNK: usize = 512;

/// How much to keep: a rate of the prompt's tokens or a number of tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The share of tokens kept, in (0, 1] (`rate`; 1/4 for a 4× preset).
    Rate(f64),
    /// Tokens to keep (`target_token`).
    Tokens(usize),
}

/// LLMLingua's settings, as a method spec names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmLinguaSettings {
    /// How much of the prompt to keep.
    pub target: Target,
    /// Tokens per window of the fine, token-level stage (`iterative_size`).
    pub window: usize,
    /// Tokens added to the target for the coarse, context-level stage (`context_budget`
    /// "+100").
    pub context_budget: usize,
}

/// The scorer: a causal LM and its tokenizer, run on this project's engine.
pub struct Scorer<'a> {
    /// The model; its cache must keep every token (the baseline), since windows rewind it.
    pub model: &'a mut dyn LanguageModel,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
}

impl Scorer<'_> {
    /// Token count with the tokenizer's start token, as `get_token_length` counts.
    fn length(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text, true)?.len())
    }

    /// Feed `tokens` after what the model holds; the surprisal (nats) of each token after
    /// the first given all before it: `tokens.len() - 1` values. Fed a chunk at a time, so
    /// that no more than a chunk's logits are held.
    fn surprisals(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
        for (i, chunk) in tokens.chunks(SCORED_CHUNK).enumerate() {
            let logits = self.model.append(chunk, Logits::All)?;
            let rows: Vec<Vec<f32>> = logits.to_vec2()?;
            let next = &tokens[(i * SCORED_CHUNK + 1).min(tokens.len())..];
            out.extend(rows.iter().zip(next).map(|(row, &next)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
                max + sum.ln() - row[next as usize]
            }));
        }
        Ok(out)
    }

    /// Mean surprisal of a text read from a fresh state (`get_ppl` at sentence
    /// granularity): the coarse stage's rank.
    fn perplexity(&mut self, text: &str) -> Result<f32> {
        let mut ids = self.tokenizer.encode(text, true)?;
        ids.truncate(self.model.trained_context());
        self.model.reset();
        let losses = self.surprisals(&ids)?;
        self.model.reset();
        Ok(losses.iter().sum::<f32>() / losses.len() as f32)
    }
}

/// The result of compressing one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Compressed {
    /// The compressed text (the kept tokens decoded).
    pub text: String,
    /// The token ids kept, in the scorer's vocabulary.
    pub kept: Vec<u32>,
    /// Tokens of the input text (scorer's vocabulary, no start token).
    pub input_tokens: usize,
}

/// Compress `contexts` (one text, or several for the coarse stage to choose from) as
/// `compress_prompt(contexts, rate=…)` does with no instruction and no question.
pub fn compress(
    scorer: &mut Scorer,
    contexts: &[String],
    settings: &LlmLinguaSettings,
) -> Result<Compressed> {
    let contexts: Vec<String> = if contexts.is_empty() {
        vec![" ".into()]
    } else {
        contexts.to_vec()
    };
    let lengths = contexts
        .iter()
        .map(|c| scorer.length(c))
        .collect::<Result<Vec<_>>>()?;
    // The instruction and question are empty, but count their start tokens as the
    // reference does.
    let empty = scorer.length("")? as f64;
    let target = match settings.target {
        Target::Rate(rate) => {
            (2.0 * empty + lengths.iter().sum::<usize>() as f64) * rate - 2.0 * empty
        }
        Target::Tokens(n) => n as f64,
    };
    let contexts = if contexts.len() > 1 {
        coarse_filter(scorer, contexts, &lengths, target, settings.context_budget)?
    } else {
        contexts
    };
    let windows = window_plan(scorer, &contexts, target, settings.window)?;
    let ids = scorer.tokenizer.encode(&contexts.join("\n\n"), false)?;
    let input_tokens = ids.len();
    let kept = fine_filter(scorer, ids, &windows, settings.window)?;
    let text = scorer
        .tokenizer
        .decode(&kept, false)?
        .replace("<s> ", "")
        .replace("<s>", "");
    Ok(Compressed {
        text: if text.trim().is_empty() {
            String::new()
        } else {
            text
        },
        kept,
        input_tokens,
    })
}

/// The coarse stage (`control_context_budget`): contexts by perplexity, highest first, kept
/// until the budget (target + `context_budget`) is spent, then put back in their order.
fn coarse_filter(
    scorer: &mut Scorer,
    contexts: Vec<String>,
    lengths: &[usize],
    target: f64,
    context_budget: usize,
) -> Result<Vec<String>> {
    let mut ranked = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| Ok((i, scorer.perplexity(c)?)))
        .collect::<Result<Vec<_>>>()?;
    // Highest first, ties in their order (Python's sort is stable); a one-token context
    // has no perplexity (NaN) and ranks last.
    ranked.sort_by(|a, b| (a.1.is_nan().cmp(&b.1.is_nan())).then(b.1.total_cmp(&a.1)));
    let mut budget = if target < 0.0 { 100.0 } else { target } + context_budget as f64;
    let mut used = Vec::new();
    for (i, _) in ranked {
        budget -= lengths[i] as f64;
        used.push(i);
        if budget < 0.0 {
            break;
        }
    }
    used.sort_unstable();
    Ok(used.into_iter().map(|i| contexts[i].clone()).collect())
}

/// The fine stage's windows (`get_dynamic_compression_ratio` with no dynamic ratio): each a
/// list of (tokens, kept share) parts, every share `target / (Σ (length + 2) + 1)` clamped
/// to [0, 1].
fn window_plan(
    scorer: &Scorer,
    contexts: &[String],
    target: f64,
    window: usize,
) -> Result<Vec<Vec<(usize, f64)>>> {
    let lengths = contexts
        .iter()
        .map(|c| Ok(scorer.tokenizer.encode(c, false)?.len() + 2))
        .collect::<Result<Vec<usize>>>()?;
    let tau = target / (lengths.iter().sum::<usize>() + 1) as f64;
    Ok(plan_windows(&lengths, tau.clamp(0.0, 1.0), window))
}

/// [`window_plan`] from the lengths (each context's tokens plus two) and the kept share.
fn plan_windows(lengths: &[usize], share: f64, window: usize) -> Vec<Vec<(usize, f64)>> {
    let (mut plan, mut last, mut parts) = (Vec::new(), 1usize, Vec::new());
    for &length in lengths {
        if last + length >= window {
            parts.push((window - last, share));
            plan.push(std::mem::take(&mut parts));
            last = last + length - window;
            if last > window {
                let whole = last / window;
                plan.extend(std::iter::repeat_n(vec![(window, share)], whole));
                last -= whole * window;
            }
            if last > 0 {
                parts.push((last, share));
            }
        } else {
            last += length;
            parts.push((length, share));
        }
    }
    if !parts.is_empty() {
        plan.push(parts);
    }
    plan
}

/// Python's bound `x[:end]` (or `x[end:]`) on a sequence of `len`: a negative `end`
/// counts from the back.
fn py_end(end: isize, len: usize) -> usize {
    if end < 0 {
        len.saturating_sub(end.unsigned_abs())
    } else {
        (end as usize).min(len)
    }
}

/// The threshold of a window (`get_estimate_threshold_base_distribution`): the loss at
/// rank `⌊n · share⌋ − 1` from the top; minus infinity (keep all) at share 1.
fn threshold(losses: &[f32], share: f64) -> f32 {
    if share == 1.0 {
        return f32::NEG_INFINITY;
    }
    let mut sorted: Vec<f32> = losses.iter().copied().filter(|&l| l != 10000.0).collect();
    if sorted.is_empty() {
        return f32::NEG_INFINITY;
    }
    sorted.sort_by(|a, b| b.total_cmp(a));
    let at = ((sorted.len() as f64 * share) as isize - 1).clamp(0, sorted.len() as isize - 1);
    sorted[at as usize]
}

/// One window part's cut (`get_compressed_input`): tokens in `end - part .. end` whose
/// following token's loss is at most `threshold` are dropped. Returns the new `end`.
fn cut(
    losses: &mut Vec<f32>,
    ids: &mut Vec<u32>,
    end: isize,
    part: usize,
    threshold: f32,
) -> isize {
    let mut keep: Vec<bool> = losses.iter().map(|&l| l > threshold).collect();
    keep.extend(losses.first().map(|&l| l > 0.0));
    let n = keep.len();
    for k in &mut keep[py_end(end, n)..] {
        *k = true;
    }
    for k in &mut keep[..py_end(end - part as isize, n)] {
        *k = true;
    }
    let mut i = 0;
    losses.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    keep.resize(ids.len(), true);
    let dropped = keep[..py_end(end, keep.len())]
        .iter()
        .filter(|k| !**k)
        .count();
    let mut i = 0;
    ids.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    end - dropped as isize
}

/// The fine stage (`iterative_compress_prompt` with no condition, split or segments): the
/// ids kept.
fn fine_filter(
    scorer: &mut Scorer,
    mut ids: Vec<u32>,
    windows: &[Vec<(usize, f64)>],
    window: usize,
) -> Result<Vec<u32>> {
    let max_positions = scorer.model.trained_context();
    let step = window as isize;
    let mut popped: Vec<u32> = Vec::new();
    let mut end = window.min(ids.len()) as isize;
    let mut losses: Option<Vec<f32>> = None;
    let (mut cached, mut ready_end, mut index) = (false, 0isize, 0usize);
    scorer.model.reset();
    while end <= ids.len() as isize {
        if end > max_positions as isize && cached {
            // The scorer's cache slides: drop the oldest tokens after the first ten.
            let e = end as usize - max_positions;
            let s = CACHE_START_TOKENS.min(max_positions);
            popped.extend(ids.drain(..e));
            scorer
                .model
                .forget(s..s + e)
                .context("sliding the scorer's cache")?;
            end -= e as isize;
            ready_end -= e as isize;
        }
        let past = if cached {
            scorer.model.seen_tokens()
        } else {
            scorer.model.reset();
            0
        };
        let stop = if index > 0 { end as usize } else { ids.len() };
        let stop = stop.min(past + max_positions).min(ids.len());
        let fresh = scorer.surprisals(&ids[past..stop])?;
        if fresh.is_empty() {
            break;
        }
        let all = match losses.take() {
            Some(mut all) => {
                let upto = py_end(end - 1, usize::MAX);
                if upto > all.len() {
                    all.resize(upto, 0.0);
                }
                let from = ready_end.max(0) as usize;
                if upto - from.min(upto) != fresh.len() {
                    bail!(
                        "LLMLingua's window bookkeeping lost its place ({} losses for {from}..{upto})",
                        fresh.len()
                    );
                }
                all[from..upto].copy_from_slice(&fresh);
                all
            }
            None => fresh,
        };
        if index > 0 {
            let keep = py_end(end - step, scorer.model.seen_tokens());
            let seen = scorer.model.seen_tokens();
            scorer.model.forget(keep..seen)?;
            cached = true;
        } else {
            scorer.model.reset();
            cached = false;
        }
        ready_end = end - step;
        let Some(parts) = windows.get(index) else {
            // The reference indexes past its plan here (an IndexError); no text we build
            // reaches it, since the plan covers every token plus two per context.
            break;
        };
        let mut all = all;
        for &(part, share) in parts {
            let limit = threshold(&all, share);
            end = cut(&mut all, &mut ids, end - step + part as isize, part, limit) + step;
        }
        losses = Some(all);
        index += 1;
    }
    scorer.model.reset();
    popped.extend(ids);
    Ok(popped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_planned_as_the_reference_plans_them() {
        // One context of 450 tokens (452 with its two): 199, 200, then the 53 left.
        assert_eq!(
            plan_windows(&[452], 0.25, 200),
            vec![vec![(199, 0.25)], vec![(200, 0.25)], vec![(53, 0.25)]]
        );
        // Short contexts share a window; a long one closes it.
        assert_eq!(
            plan_windows(&[50, 60, 300], 0.5, 200),
            vec![
                vec![(50, 0.5), (60, 0.5), (89, 0.5)],
                vec![(200, 0.5)],
                vec![(11, 0.5)]
            ]
        );
        assert_eq!(plan_windows(&[63], 0.5, 200), vec![vec![(63, 0.5)]]);
    }

    #[test]
    fn python_bounds_count_negatives_from_the_back() {
        assert_eq!(py_end(3, 10), 3);
        assert_eq!(py_end(12, 10), 10);
        assert_eq!(py_end(-4, 10), 6);
        assert_eq!(py_end(-14, 10), 0);
    }

    #[test]
    fn the_threshold_is_a_quantile_from_the_top() {
        let losses = [1.0, 5.0, 3.0, 2.0, 4.0, 10000.0];
        // Five losses (the 10000 padding is left out): rank ⌊5 · 0.4⌋ − 1 = 1 from the top.
        assert_eq!(threshold(&losses, 0.4), 4.0);
        assert_eq!(threshold(&losses, 0.6), 3.0);
        assert_eq!(threshold(&losses, 0.01), 5.0);
        assert_eq!(threshold(&losses, 1.0), f32::NEG_INFINITY);
    }

    #[test]
    fn a_cut_keeps_by_the_next_tokens_loss_and_the_windows_last_token() {
        // Tokens 0..6, losses of tokens 1..6 at indices 0..5; window 0..5.
        let mut losses = vec![3.0, 0.5, 4.0, 0.2, 0.1];
        let mut ids = vec![10, 11, 12, 13, 14, 15];
        let end = cut(&mut losses, &mut ids, 5, 5, 1.0);
        // Token 1's next (token 2) has loss 0.5 → dropped; tokens 3 and 4 likewise; token
        // 5 is past the window; the mask's extra element is index 5.
        assert_eq!(ids, vec![10, 12, 15]);
        assert_eq!(losses, vec![3.0, 4.0]);
        assert_eq!(end, 2);
    }
}
