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
    /// A second instance of the same model, for LongLLMLingua's contrast: the text scored
    /// without the question before it, beside the text scored after it.
    pub contrast: Option<&'a mut dyn LanguageModel>,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
}

impl Scorer<'_> {
    /// Token count with the tokenizer's start token, as `get_token_length` counts.
    fn length(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text, true)?.len())
    }

    /// The mean surprisal of a text read from a fresh state (`get_ppl` at sentence
    /// granularity), of its tokens from `from` on: the coarse stage's rank.
    fn perplexity(&mut self, text: &str, from: usize) -> Result<f32> {
        let mut ids = self.tokenizer.encode(text, true)?;
        ids.truncate(self.model.trained_context());
        self.model.reset();
        let losses = surprisals(self.model, &ids)?;
        self.model.reset();
        let losses = &losses[from.min(losses.len())..];
        Ok(losses.iter().sum::<f32>() / losses.len() as f32)
    }

    /// Where `text` starts in the tokens of `prefix + text` (`get_prefix_length`): the
    /// first cut whose tokens decode to `prefix`, checked on the text's first 100 characters.
    fn prefix_length(&self, prefix: &str, text: &str) -> Result<usize> {
        let head: String = text.chars().take(100).collect();
        let possible = self
            .tokenizer
            .encode(prefix, false)?
            .len()
            .saturating_sub(3)
            .max(1);
        let ids = self.tokenizer.encode(&format!("{prefix}{head}"), false)?;
        let mut at = possible;
        for i in possible..ids.len() {
            at = i;
            if self.tokenizer.decode(&ids[..i], false)? == prefix {
                break;
            }
        }
        if at >= ids.len() || self.tokenizer.decode(&ids[at..], false)? != head {
            bail!(
                "LongLLMLingua: the question's tokens do not end where the context's begin (the two merge across the blank line), so the context cannot be scored apart"
            );
        }
        Ok(at)
    }
}

/// Feed `tokens` after what `model` holds; the surprisal (nats) of each token after the
/// first given all before it: `tokens.len() - 1` values. Fed a chunk at a time, so that no
/// more than a chunk's logits are held.
fn surprisals(model: &mut dyn LanguageModel, tokens: &[u32]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
    for (i, chunk) in tokens.chunks(SCORED_CHUNK).enumerate() {
        let logits = model.append(chunk, Logits::All)?;
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
/// `compress_prompt(contexts, rate=…)` does with no instruction and no question; with a
/// `question`, as LongLLMLingua with its README's settings (`rank_method="longllmlingua"`,
/// `condition_in_question="after_condition"`, `reorder_context="sort"`,
/// `dynamic_context_compression_ratio=0.3`, `condition_compare=True`), the question not
/// appended to the result. The question needs the scorer's `contrast` model.
pub fn compress(
    scorer: &mut Scorer,
    contexts: &[String],
    settings: &LlmLinguaSettings,
    question: Option<&str>,
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
    // The instruction (and without LongLLMLingua the question) is empty, but counts its
    // start token as the reference counts it; a question kept apart is not subtracted.
    let empty = scorer.length("")? as f64;
    let question_length = match question {
        Some(q) => scorer.length(q)? as f64,
        None => empty,
    };
    let subtracted = empty + if question.is_some() { 0.0 } else { empty };
    let target = match settings.target {
        Target::Rate(rate) => {
            (empty + question_length + lengths.iter().sum::<usize>() as f64) * rate - subtracted
        }
        Target::Tokens(n) => n as f64,
    };
    let (contexts, shares) = if contexts.len() > 1 {
        coarse_filter(
            scorer,
            contexts,
            &lengths,
            target,
            settings.context_budget,
            question,
        )?
    } else {
        (contexts, vec![0.0])
    };
    let (texts, start) = match question {
        Some(q) => {
            let start = scorer.prefix_length(&format!("{q}\n\n"), &contexts[0])?;
            let texts: Vec<String> = std::iter::once(q.to_string())
                .chain(contexts.iter().cloned())
                .collect();
            (texts, start)
        }
        None => (contexts.clone(), 0),
    };
    let windows = window_plan(scorer, &contexts, &shares, target, settings.window)?;
    let ids = scorer.tokenizer.encode(&texts.join("\n\n"), false)?;
    let input_tokens = ids.len() - start;
    let kept = fine_filter(scorer, ids, &windows, settings.window, start)?;
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

/// What LongLLMLingua appends to the question to rank contexts by.
const RANKING_SUFFIX: &str = " We can get the answer to this question in the given documents.";

/// The spread of LongLLMLingua's shares over the contexts it keeps (`dynamic_context_
/// compression_ratio`): the best-ranked keeps this much more, the last this much less.
const DYNAMIC_SHARE: f64 = 0.3;

/// The coarse stage (`control_context_budget`), kept until the budget (target +
/// `context_budget`) is spent. LLMLingua: contexts by perplexity, highest first, put back in
/// their order. LongLLMLingua: by the question's perplexity after each context, lowest
/// first, left in that order, with shares from +0.3 to −0.3 by rank. Returns the contexts
/// kept and each one's share offset.
fn coarse_filter(
    scorer: &mut Scorer,
    contexts: Vec<String>,
    lengths: &[usize],
    target: f64,
    context_budget: usize,
    question: Option<&str>,
) -> Result<(Vec<String>, Vec<f64>)> {
    let mut ranked = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let rank = match question {
                None => scorer.perplexity(c, 0)?,
                Some(q) => {
                    let from = scorer.length(c)?.saturating_sub(1);
                    scorer.perplexity(&format!("{c}{q}{RANKING_SUFFIX}"), from)?
                }
            };
            Ok((i, rank))
        })
        .collect::<Result<Vec<_>>>()?;
    // Python's sort is stable (ties stay in order); a one-token context has no
    // perplexity (NaN) and ranks last.
    ranked.sort_by(|a, b| {
        let order = match question {
            None => b.1.total_cmp(&a.1),
            Some(_) => a.1.total_cmp(&b.1),
        };
        (a.1.is_nan().cmp(&b.1.is_nan())).then(order)
    });
    let mut budget = if target < 0.0 { 100.0 } else { target } + context_budget as f64;
    let mut used = Vec::new();
    for (i, _) in ranked {
        budget -= lengths[i] as f64;
        used.push(i);
        if budget < 0.0 {
            break;
        }
    }
    let shares = match question {
        None => {
            used.sort_unstable();
            vec![0.0; used.len()]
        }
        Some(_) => {
            let n = used.len();
            (0..n)
                .map(|rank| match n {
                    1 => 0.0,
                    _ => (n as f64 - 1.0 - 2.0 * rank as f64) * (DYNAMIC_SHARE / (n - 1) as f64),
                })
                .collect()
        }
    };
    Ok((
        used.into_iter().map(|i| contexts[i].clone()).collect(),
        shares,
    ))
}

/// The fine stage's windows (`get_dynamic_compression_ratio`): each a list of (tokens,
/// kept share) parts, a context's share `target / (Σ (length + 2) + 1)` plus its offset,
/// clamped to [0, 1].
fn window_plan(
    scorer: &Scorer,
    contexts: &[String],
    offsets: &[f64],
    target: f64,
    window: usize,
) -> Result<Vec<Vec<(usize, f64)>>> {
    let lengths = contexts
        .iter()
        .map(|c| Ok(scorer.tokenizer.encode(c, false)?.len() + 2))
        .collect::<Result<Vec<usize>>>()?;
    let tau = target / (lengths.iter().sum::<usize>() + 1) as f64;
    let shares: Vec<f64> = offsets.iter().map(|o| (tau + o).clamp(0.0, 1.0)).collect();
    Ok(plan_windows(&lengths, &shares, window))
}

/// [`window_plan`] from the lengths (each context's tokens plus two) and their shares.
fn plan_windows(lengths: &[usize], shares: &[f64], window: usize) -> Vec<Vec<(usize, f64)>> {
    let (mut plan, mut last, mut parts) = (Vec::new(), 1usize, Vec::new());
    for (&length, &share) in lengths.iter().zip(shares) {
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
/// following token's loss fails `keeps` are dropped. Returns the new `end`.
fn cut(
    losses: &mut Vec<f32>,
    ids: &mut Vec<u32>,
    end: isize,
    part: usize,
    keeps: impl Fn(f32) -> bool,
) -> isize {
    let mut keep: Vec<bool> = losses.iter().map(|&l| keeps(l)).collect();
    keep.extend(losses.first().map(|&l| l > 0.0));
    let n = keep.len();
    for k in &mut keep[py_end(end, n)..] {
        *k = true;
    }
    for k in &mut keep[..py_end(end - part as isize, n)] {
        *k = true;
    }
    retain_by(losses, &keep);
    keep.resize(ids.len(), true);
    let dropped = keep[..py_end(end, keep.len())]
        .iter()
        .filter(|k| !**k)
        .count();
    retain_by(ids, &keep);
    end - dropped as isize
}

/// One sequence the fine stage scores: its ids, every loss computed so far (loss `j` is
/// token `j + 1`'s), whether its model holds a prefix of it, and where the next losses go.
struct Track<'m> {
    model: &'m mut dyn LanguageModel,
    ids: Vec<u32>,
    losses: Vec<f32>,
    cached: bool,
    ready_end: isize,
}

impl<'m> Track<'m> {
    fn new(model: &'m mut dyn LanguageModel, ids: Vec<u32>) -> Self {
        model.reset();
        Self {
            model,
            ids,
            losses: Vec::new(),
            cached: false,
            ready_end: 0,
        }
    }

    /// `get_ppl` from the cached prefix to `end` (the whole sequence on the first window),
    /// the new losses written at `ready_end..end - 1`; then the cache kept up to
    /// `end - window` (dropped after the first window). Returns how many losses it computed.
    fn score(
        &mut self,
        end: isize,
        first: bool,
        step: isize,
        max_positions: usize,
    ) -> Result<usize> {
        let past = if self.cached {
            self.model.seen_tokens()
        } else {
            self.model.reset();
            0
        };
        let stop = if first {
            self.ids.len()
        } else {
            py_end(end, self.ids.len())
        };
        let stop = stop.min(past + max_positions);
        let fresh = surprisals(self.model, &self.ids[past.min(stop)..stop])?;
        if first {
            self.losses = fresh.clone();
        } else {
            let upto = py_end(end - 1, usize::MAX);
            if upto > self.losses.len() {
                self.losses.resize(upto, 0.0);
            }
            let from = py_end(self.ready_end, upto);
            if upto - from != fresh.len() {
                // Where the kept text and the next window pass the scorer's context, the
                // reference's cache slide leaves its losses short of where it writes them
                // (llmlingua 0.2.2 raises a shape error there).
                bail!(
                    "the kept text and its next window outgrow the scorer's context of {max_positions} tokens, where LLMLingua's cache slide misplaces its losses ({} losses for positions {from}..{upto}; llmlingua 0.2.2 fails there too): score with a model of a longer context, or keep less (a lower rate)",
                    fresh.len()
                );
            }
            self.losses[from..upto].copy_from_slice(&fresh);
        }
        if first {
            self.model.reset();
            self.cached = false;
        } else {
            let seen = self.model.seen_tokens();
            self.model.forget(py_end(end - step, seen)..seen)?;
            self.cached = true;
        }
        Ok(fresh.len())
    }

    /// The scorer's cache slides past its context: `gone` tokens leave the ids' front and
    /// the cache's rows after its first `keep`.
    fn slide(&mut self, keep: usize, gone: usize) -> Result<Vec<u32>> {
        self.ready_end -= gone as isize;
        self.model
            .forget(keep..keep + gone)
            .context("sliding the scorer's cache")?;
        Ok(self.ids.drain(..gone).collect())
    }
}

/// The fine stage (`iterative_compress_prompt` with no split or segments): the ids kept
/// after the first `start` (the question, for LongLLMLingua). With the scorer's contrast
/// model (`condition_compare`), a token is kept by how much less surprising the question
/// makes the next token: the loss without it minus the loss with it.
fn fine_filter(
    scorer: &mut Scorer,
    ids: Vec<u32>,
    windows: &[Vec<(usize, f64)>],
    window: usize,
    start: usize,
) -> Result<Vec<u32>> {
    let max_positions = scorer.model.trained_context();
    let step = window as isize;
    let offset = start as isize;
    let contrast_ids = ids[start.min(ids.len())..].to_vec();
    let mut main = Track::new(&mut *scorer.model, ids);
    let mut contrast = match (&mut scorer.contrast, start) {
        (_, 0) => None,
        (Some(model), _) => Some(Track::new(&mut **model, contrast_ids)),
        (None, _) => bail!("LongLLMLingua needs a second instance of the scorer"),
    };
    let mut popped: Vec<u32> = Vec::new();
    let mut end = (window + start).min(main.ids.len()) as isize;
    let mut index = 0usize;
    while end <= main.ids.len() as isize {
        if end > max_positions as isize && main.cached {
            // The scorer's cache slides: drop the oldest tokens after the first ten.
            let gone = end as usize - max_positions;
            let keep = (CACHE_START_TOKENS + start).min(max_positions);
            popped.extend(main.slide(keep, gone)?);
            end -= gone as isize;
            if let Some(c) = contrast.as_mut() {
                let keep = keep.min(c.model.seen_tokens().saturating_sub(gone));
                c.slide(keep, gone)?;
            }
        }
        let first = index == 0;
        if main.score(end, first, step, max_positions)? == 0 {
            break;
        }
        if let Some(c) = contrast.as_mut() {
            c.score(end - offset, first, step, max_positions)?;
            c.ready_end = if first && start > 0 {
                0
            } else {
                end - offset - step
            };
        }
        main.ready_end = if first && start > 0 { 0 } else { end - step };
        let Some(parts) = windows.get(index) else {
            // The reference indexes past its plan here (an IndexError); no text we build
            // reaches it, since the plan covers every token plus two per context.
            break;
        };
        for &(part, share) in parts {
            let window_end = end - step + part as isize;
            end = match contrast.as_mut() {
                None => {
                    let limit = threshold(&main.losses, share);
                    cut(&mut main.losses, &mut main.ids, window_end, part, |l| {
                        l > limit
                    })
                }
                Some(c) => cut_contrast(&mut main, c, start, window_end, part, share)?,
            } + step;
        }
        index += 1;
    }
    main.model.reset();
    if let Some(c) = contrast {
        c.model.reset();
    }
    popped.extend(main.ids);
    Ok(popped.split_off(start.min(popped.len())))
}

/// One window part's cut with the contrast (`get_compressed_input` given `self_loss`): the
/// question's tokens stay; a token is kept when the next token's loss without the question
/// exceeds its loss with it by more than the part's quantile of those differences.
fn cut_contrast(
    main: &mut Track,
    contrast: &mut Track,
    start: usize,
    end: isize,
    part: usize,
    share: f64,
) -> Result<isize> {
    let with = &main.losses[start.min(main.losses.len())..];
    if contrast.losses.len() < with.len() {
        bail!(
            "LongLLMLingua's two scorings disagree in length ({} against {})",
            contrast.losses.len(),
            with.len()
        );
    }
    let gain: Vec<f32> = contrast.losses[..with.len()]
        .iter()
        .zip(with)
        .map(|(without, with)| without - with)
        .collect();
    let limit = threshold(&gain, share);
    // The keep mask over the main sequence: the question's tokens (any loss > 0), then the
    // gains, then the extra element.
    let mut keep: Vec<bool> = main.losses[..start.min(main.losses.len())]
        .iter()
        .map(|&l| l > 0.0)
        .chain(gain.iter().map(|&g| g > limit))
        .collect();
    keep.extend(main.losses.first().map(|&l| l > 0.0));
    let n = keep.len();
    for k in &mut keep[py_end(end, n)..] {
        *k = true;
    }
    for k in &mut keep[..py_end(end - part as isize, n)] {
        *k = true;
    }
    retain_by(&mut main.losses, &keep);
    if keep.len() < contrast.losses.len() + start + 1 {
        keep.resize(contrast.losses.len() + start + 1, true);
    }
    let own = &keep[start.min(keep.len())..keep.len() - 1];
    retain_by(&mut contrast.losses, own);
    keep.resize(main.ids.len(), true);
    let dropped = keep[..py_end(end, keep.len())]
        .iter()
        .filter(|k| !**k)
        .count();
    retain_by(&mut main.ids, &keep);
    retain_by(&mut contrast.ids, &keep[start.min(keep.len())..]);
    Ok(end - dropped as isize)
}

/// Keep the items whose flag is set (items past the flags are kept).
fn retain_by<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    items.retain(|_| {
        i += 1;
        keep.get(i - 1).copied().unwrap_or(true)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_planned_as_the_reference_plans_them() {
        // One context of 450 tokens (452 with its two): 199, 200, then the 53 left.
        assert_eq!(
            plan_windows(&[452], &[0.25], 200),
            vec![vec![(199, 0.25)], vec![(200, 0.25)], vec![(53, 0.25)]]
        );
        // Short contexts share a window; a long one closes it.
        assert_eq!(
            plan_windows(&[50, 60, 300], &[0.5; 3], 200),
            vec![
                vec![(50, 0.5), (60, 0.5), (89, 0.5)],
                vec![(200, 0.5)],
                vec![(11, 0.5)]
            ]
        );
        assert_eq!(plan_windows(&[63], &[0.5], 200), vec![vec![(63, 0.5)]]);
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
        let end = cut(&mut losses, &mut ids, 5, 5, |l| l > 1.0);
        // Token 1's next (token 2) has loss 0.5 → dropped; tokens 3 and 4 likewise; token
        // 5 is past the window; the mask's extra element is index 5.
        assert_eq!(ids, vec![10, 12, 15]);
        assert_eq!(losses, vec![3.0, 4.0]);
        assert_eq!(end, 2);
    }
}
