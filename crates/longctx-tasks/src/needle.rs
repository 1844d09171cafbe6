//! The passkey needle-in-a-haystack test, as the benchmark's published configuration
//! (`20480words_10x10x3_7digits`) builds it, with one fix: essays are taken in file-name order,
//! not directory-listing order, so every machine builds the same haystack.
//!
//! Construction: the essays are concatenated in order, cycled, until they hold at least N
//! words (a word is a run of non-space characters with its trailing whitespace), cut to the
//! first N words and stripped. The needle sentence is inserted at word `int(N·depth)`:
//! `content = before + " " + needle + " " + after + " "`, and the prompt is
//! `INSTRUCTION + content + QUESTION`. Keys are 7 independent random digits from a seeded
//! generator keyed by (seed, length, depth, trial), so any subset of the grid reproduces
//! the same keys.

use std::path::Path;

use crate::prompt::Prompt;

/// The instruction that opens the prompt (the benchmark's config, "memorize it").
pub const INSTRUCTION: &str =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n";
/// The question that closes the prompt.
pub const QUESTION: &str = "\nWhat is the pass key? The pass key is ";
/// The needle sentence; `<PASS KEY>` stands for the key.
pub const NEEDLE_TEMPLATE: &str =
    "The pass key is <PASS KEY>. Remember it. <PASS KEY> is the pass key.";
/// Longest haystack a grid may ask for, in words (and longest generated context of any
/// task): beyond what a streamed input may reach.
pub const MAX_WORDS: usize = 1 << 22;
/// Most samples a needle grid may hold.
pub const MAX_GRID_SAMPLES: usize = 1 << 20;
/// Tokens the benchmark lets the model generate.
pub const MAX_NEW_TOKENS: usize = 256;
/// The benchmark feeds the prompt as raw text (no chat template): it ends with "The pass key
/// is", for the model to complete.
pub const USES_CHAT_TEMPLATE: bool = false;

/// Errors of building the test.
#[derive(Debug, thiserror::Error)]
pub enum NeedleError {
    /// The essay directory is missing or holds no `.txt` files.
    #[error("haystack {path}: {reason} (run `longctx fetch` to download the Paul Graham essays)")]
    Haystack { path: String, reason: String },
    /// A grid setting is out of range.
    #[error("needle grid: {0}")]
    Grid(String),
}

/// The essays a haystack is cut from, in file-name order.
#[derive(Debug, Clone)]
pub struct Haystack {
    essays: Vec<String>,
}

/// Words as the benchmark counts them: `re.findall(r"[^\s]+[\s]*", text)`.
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        let space = crate::metrics::is_py_space(c);
        match (start, space) {
            (None, false) => {
                start = Some(i);
                in_space = false;
            }
            (Some(s), false) if in_space => {
                out.push(&text[s..i]);
                start = Some(i);
                in_space = false;
            }
            (Some(_), true) => in_space = true,
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(crate::metrics::is_py_space)
}

impl Haystack {
    /// Read every `*.txt` in `dir`, sorted by file name.
    pub fn from_dir(dir: &Path) -> Result<Self, NeedleError> {
        let err = |reason: String| NeedleError::Haystack {
            path: dir.display().to_string(),
            reason,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err("no .txt essays".into()));
        }
        let essays = files
            .iter()
            .map(|f| std::fs::read_to_string(f).map_err(|e| err(format!("{}: {e}", f.display()))))
            .collect::<Result<_, _>>()?;
        Ok(Self { essays })
    }

    /// The essays, in order.
    pub fn texts(&self) -> &[String] {
        &self.essays
    }

    /// A haystack from texts already in order (tests, other corpora).
    pub fn from_texts(essays: Vec<String>) -> Self {
        Self { essays }
    }

    /// The first `n` words of the cycled essays, stripped (`make_background`).
    pub fn background(&self, n: usize) -> String {
        let mut text = String::new();
        let mut counted = 0;
        for essay in self.essays.iter().cycle() {
            text.push_str(essay);
            counted += words(essay).len();
            if counted >= n {
                break;
            }
        }
        py_strip(&words(&text)[..n.min(words(&text).len())].concat()).to_string()
    }
}

/// The grid: haystack lengths (words) × depths × trials, and the seed of the keys.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleGrid {
    /// Haystack lengths in words.
    pub lengths: Vec<usize>,
    /// Needle depths in [0, 1].
    pub depths: Vec<f64>,
    /// Trials (different keys) per cell.
    pub trials: usize,
    /// Seed of the keys.
    pub seed: u64,
}

/// `n` values evenly spaced from `min` to `max` inclusive, as the benchmark computes them.
fn evenly(min: f64, max: f64, n: usize) -> Vec<f64> {
    if n <= 1 || min == max {
        return vec![min];
    }
    let steps = (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == 0 {
                min
            } else if i == n - 1 {
                max
            } else {
                i as f64 * (max - min) / steps + min
            }
        })
        .collect()
}

/// The longest haystack (words) whose prompt, with `max_new_tokens` for the answer, fits a
/// context of `context` tokens at `tokens_per_word` (measured with the model's tokenizer).
pub fn fitting_words(context: usize, tokens_per_word: f64, max_new_tokens: usize) -> usize {
    let overhead = 96 + max_new_tokens; // instruction, needle and question, then the answer
    (context.saturating_sub(overhead) as f64 / tokens_per_word).floor() as usize
}

impl NeedleGrid {
    /// Lengths `from..=to` (`count` of them, truncated to whole words), `depths` depths in [0, 1].
    pub fn new(
        from: usize,
        to: usize,
        count: usize,
        depths: usize,
        trials: usize,
        seed: u64,
    ) -> Result<Self, NeedleError> {
        if from == 0 || from > to || count == 0 || depths == 0 || trials == 0 {
            return Err(NeedleError::Grid(format!(
                "lengths {from}..{to} in {count} steps, {depths} depths, {trials} trials: need 0 < from <= to and positive counts"
            )));
        }
        if to > MAX_WORDS {
            return Err(NeedleError::Grid(format!(
                "a haystack of {to} words is beyond the {MAX_WORDS} words any model here can read"
            )));
        }
        let cells = count
            .checked_mul(depths)
            .and_then(|n| n.checked_mul(trials));
        if cells.is_none_or(|n| n > MAX_GRID_SAMPLES) {
            return Err(NeedleError::Grid(format!(
                "{count} lengths × {depths} depths × {trials} trials is more than {MAX_GRID_SAMPLES} samples"
            )));
        }
        Ok(Self {
            lengths: evenly(from as f64, to as f64, count)
                .into_iter()
                .map(|v| v as usize)
                .collect(),
            depths: evenly(0.0, 1.0, depths),
            trials,
            seed,
        })
    }

    /// The paper's grid: 10 lengths from 512 to 20,480 words × 10 depths × 3 trials.
    pub fn paper(seed: u64) -> Self {
        Self::new(512, 20480, 10, 10, 3, seed).expect("the paper's grid is valid")
    }

    /// The paper's grid scaled to a model of `context` tokens: the longest haystack is the
    /// largest that fits with the instruction, question and answer, at `tokens_per_word`
    /// (measured on the haystack with the model's tokenizer).
    pub fn fitted(context: usize, tokens_per_word: f64, seed: u64) -> Result<Self, NeedleError> {
        let words = fitting_words(context, tokens_per_word, MAX_NEW_TOKENS);
        Self::new(512.min(words), words, 10, 10, 3, seed)
    }

    /// Every sample of the grid, cell by cell.
    pub fn samples(&self, haystack: &Haystack) -> Vec<NeedleSample> {
        let mut out = Vec::new();
        for (li, &length) in self.lengths.iter().enumerate() {
            let background = haystack.background(length);
            for (di, &depth) in self.depths.iter().enumerate() {
                for trial in 0..self.trials {
                    let key = passkey(self.seed, li as u64, di as u64, trial as u64);
                    out.push(NeedleSample::build(&background, length, depth, trial, key));
                }
            }
        }
        out
    }
}

/// One prompt of the test.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleSample {
    /// Haystack length in words (as requested).
    pub length: usize,
    /// Needle depth.
    pub depth: f64,
    /// Trial index within the cell.
    pub trial: usize,
    /// The 7-digit key.
    pub key: String,
    /// Word index of the needle's first word within the haystack (`int(N·depth)`).
    pub needle_word: usize,
    /// The full prompt; its question is [`QUESTION`].
    pub prompt: Prompt,
}

impl NeedleSample {
    fn build(background: &str, length: usize, depth: f64, trial: usize, key: String) -> Self {
        let all = words(background);
        let at = (all.len() as f64 * depth) as usize;
        let needle = NEEDLE_TEMPLATE.replace("<PASS KEY>", &key);
        let content = [
            py_strip(&all[..at].concat()),
            needle.as_str(),
            py_strip(&all[at..].concat()),
            "",
        ]
        .join(" ");
        Self {
            length,
            depth,
            trial,
            key,
            needle_word: at,
            prompt: Prompt::new(format!("{INSTRUCTION}{content}"), QUESTION),
        }
    }
}

/// Seven independent random digits for one (seed, length, depth, trial).
fn passkey(seed: u64, length: u64, depth: u64, trial: u64) -> String {
    crate::rng::Rng::new(seed, &[length, depth, trial]).digits(7)
}

/// Exact match (the key appears in the normalized answer) and partial match (longest
/// common substring of key and raw answer / key length), as the benchmark scores them.
pub fn score(key: &str, response: &str) -> (f64, f64) {
    let exact = f64::from(u8::from(normalize(response).contains(&normalize(key))));
    let a: Vec<char> = key.chars().collect();
    let b: Vec<char> = response.chars().collect();
    let mut best = 0;
    let mut previous = vec![0usize; b.len() + 1];
    for x in &a {
        let mut current = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            if x == y {
                current[j + 1] = previous[j] + 1;
                best = best.max(current[j + 1]);
            }
        }
        previous = current;
    }
    (
        exact,
        if a.is_empty() {
            0.0
        } else {
            best as f64 / a.len() as f64
        },
    )
}

/// The needle metric's normalization: lowercase, no ASCII punctuation, articles removed
/// (replaced by nothing, unlike LongBench), whitespace collapsed.
fn normalize(s: &str) -> String {
    let kept: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let spaced = crate::metrics::remove_articles(&kept, "");
    crate::metrics::py_split_whitespace(&spaced).join(" ")
}

/// One scored answer of the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeedleOutcome {
    /// Haystack length in words.
    pub length: usize,
    /// Needle depth.
    pub depth: f64,
    /// Exact match, 0 or 1.
    pub exact: f64,
    /// Partial match in [0, 1].
    pub partial: f64,
}

/// Mean exact and partial match over a group of outcomes, with its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeedleMean {
    /// Mean exact match in [0, 1].
    pub exact: f64,
    /// Mean partial match in [0, 1].
    pub partial: f64,
    /// Outcomes averaged.
    pub count: usize,
}

fn mean(outcomes: &[&NeedleOutcome]) -> NeedleMean {
    let n = outcomes.len().max(1) as f64;
    NeedleMean {
        exact: outcomes.iter().map(|o| o.exact).sum::<f64>() / n,
        partial: outcomes.iter().map(|o| o.partial).sum::<f64>() / n,
        count: outcomes.len(),
    }
}

/// Scores per cell (length × depth, over trials), per length (over depths and trials) and overall.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleSummary {
    /// `(length, depth, mean)` in grid order.
    pub cells: Vec<(usize, f64, NeedleMean)>,
    /// `(length, mean)` in grid order.
    pub lengths: Vec<(usize, NeedleMean)>,
    /// Every outcome.
    pub overall: NeedleMean,
}

/// Group outcomes as the paper's heatmaps and tables do.
pub fn summarize(outcomes: &[NeedleOutcome]) -> NeedleSummary {
    let mut cells: Vec<(usize, f64)> = Vec::new();
    let mut lengths: Vec<usize> = Vec::new();
    for o in outcomes {
        if !cells.contains(&(o.length, o.depth)) {
            cells.push((o.length, o.depth));
        }
        if !lengths.contains(&o.length) {
            lengths.push(o.length);
        }
    }
    let of = |keep: &dyn Fn(&NeedleOutcome) -> bool| {
        mean(&outcomes.iter().filter(|o| keep(o)).collect::<Vec<_>>())
    };
    NeedleSummary {
        cells: cells
            .iter()
            .map(|&(l, d)| (l, d, of(&|o| o.length == l && o.depth == d)))
            .collect(),
        lengths: lengths
            .iter()
            .map(|&l| (l, of(&|o| o.length == l)))
            .collect(),
        overall: of(&|_| true),
    }
}
