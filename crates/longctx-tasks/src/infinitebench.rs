//! InfiniteBench's synthetic retrieval tasks (Zhang et al., 2024), generated the way its
//! `data/construct_synthetic_dataset.py` builds them, at a length set in the model's own
//! tokens, with the prompt templates it uses for open models (`yarn_mistral_templates` in
//! `src/prompt.py`), its answer lengths (`src/eval_utils.py`) and its metrics
//! (`src/compute_scores.py`).
//!
//! | task | construction | score |
//! |---|---|---|
//! | `passkey` | "The pass key is 12345. Remember it. …" among repeated noise lines | the first integer of the answer is the key |
//! | `number_string` | a 10-digit sequence (5 digits, 5 of them doubled) among noise lines | the first integer is the sequence |
//! | `kv_retrieval` | a JSON object of UUID (version 4) keys and values; one key asked | the value is a word of the answer |
//! | `math_find` | a list of integers 0..99; its largest, second largest, …, smallest or median asked | the first number of the answer equals it |
//!
//! InfiniteBench fixes its lengths (128K tokens and more) and its samples; here both are
//! chosen (seeded draws, the needle's depth and the asked key drawn uniformly).

use crate::fit::largest_fitting;
use crate::prompt::{from_template, Prompt};
use crate::rng::Rng;

/// The four synthetic tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InfiniteTask {
    Passkey,
    NumberString,
    KvRetrieval,
    MathFind,
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq)]
pub struct InfiniteSample {
    pub prompt: Prompt,
    /// The expected answer.
    pub answer: String,
}

/// Why a sample could not be built.
#[derive(Debug, thiserror::Error)]
#[error("InfiniteBench {task}: even the smallest sample takes {tokens} tokens, more than the {budget} a length of {length} leaves")]
pub struct TooShort {
    task: &'static str,
    tokens: usize,
    budget: usize,
    length: usize,
}

const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";

/// math_find's questions: the target's name, and the answer's input line.
const TARGETS: [&str; 7] = [
    "largest number",
    "second largest number",
    "third largest number",
    "smallest number",
    "second smallest number",
    "third smallest number",
    "median",
];

impl InfiniteTask {
    /// Every task.
    pub const ALL: [Self; 4] = [
        Self::Passkey,
        Self::NumberString,
        Self::KvRetrieval,
        Self::MathFind,
    ];

    /// InfiniteBench's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Passkey => "passkey",
            Self::NumberString => "number_string",
            Self::KvRetrieval => "kv_retrieval",
            Self::MathFind => "math_find",
        }
    }

    /// The task of that name.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What it asks, in a line.
    pub fn about(self) -> &'static str {
        match self {
            Self::Passkey => "a 5-digit pass key among noise lines",
            Self::NumberString => "a 10-digit sequence among noise lines",
            Self::KvRetrieval => "the value of one UUID key in a JSON object",
            Self::MathFind => "the largest, smallest, … or median of a number list",
        }
    }

    /// InfiniteBench's answer length for it (`eval_utils.py`).
    pub fn tokens_to_generate(self) -> usize {
        match self {
            Self::Passkey => 6,
            Self::NumberString => 12,
            Self::KvRetrieval => 50,
            Self::MathFind => 3,
        }
    }

    /// The name of its metric in `compute_scores.py`.
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::Passkey | Self::NumberString => "first_int_match",
            Self::KvRetrieval => "kv_retrieval (value among the words)",
            Self::MathFind => "first number equals",
        }
    }

    /// 1 or 0, as `compute_scores.py`'s `get_score_one_<task>` decides.
    pub fn score(self, prediction: &str, answer: &str) -> f64 {
        let right = match self {
            Self::Passkey | Self::NumberString => first_int(prediction) == answer,
            Self::KvRetrieval => {
                let spaced: String = prediction
                    .chars()
                    .map(|c| match c {
                        '\n' | ':' | '"' | '\'' | '.' | ',' | '?' | '!' | '{' | '}' => ' ',
                        c => c,
                    })
                    .collect();
                spaced.split_whitespace().any(|w| w == answer)
            }
            Self::MathFind => first_number(prediction).is_some_and(|found| {
                match (answer.contains('.'), found.contains('.')) {
                    // A float label: the first number read as a float.
                    (true, _) => found.parse::<f64>().ok() == answer.parse::<f64>().ok(),
                    // An int label: Python's int() of a float string raises; no score.
                    (false, true) => false,
                    (false, false) => {
                        found.trim_start_matches('0') == answer.trim_start_matches('0')
                    }
                }
            }),
        };
        f64::from(u8::from(right))
    }

    /// Sample `index`, as long as fits in `length` tokens with the answer's reserved; `count`
    /// gives a text's length in the model's tokens.
    pub fn generate(
        self,
        length: usize,
        count: &dyn Fn(&str) -> usize,
        seed: u64,
        index: usize,
    ) -> Result<InfiniteSample, TooShort> {
        let budget = length.saturating_sub(self.tokens_to_generate());
        let build = |size: usize| {
            // The sample's draws that do not depend on its size (key, depth, question)…
            let mut fixed = Rng::new(seed, &[0x494E_4642, self as u64, index as u64]);
            // …and those that do (the list, the records).
            let mut sized = Rng::new(seed, &[0x494E_4642, self as u64, index as u64, size as u64]);
            self.build(size, &mut fixed, &mut sized)
        };
        let fits = |size: usize| count(&build(size).prompt.text) <= budget;
        if !fits(1) {
            return Err(TooShort {
                task: self.name(),
                tokens: count(&build(1).prompt.text),
                budget,
                length,
            });
        }
        Ok(build(largest_fitting(usize::MAX / 4, fits)))
    }

    fn build(self, size: usize, fixed: &mut Rng, sized: &mut Rng) -> InfiniteSample {
        match self {
            Self::Passkey | Self::NumberString => {
                let (key, needle, question, template) = match self {
                    Self::Passkey => (
                        fixed.digits(5),
                        "The pass key is {key}. Remember it. {key} is the pass key.\n",
                        "What is the pass key?",
                        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information.\n\n{context}\n\n{input}\n\nThe pass key is",
                    ),
                    _ => {
                        // Five digits, then five times a digit doubled in place.
                        let mut digits: Vec<char> = fixed.digits(5).chars().collect();
                        for k in 0..5 {
                            let at = fixed.below(5 + k);
                            digits.insert(at, digits[at]);
                        }
                        (
                            digits.into_iter().collect(),
                            "The sequence of digits is {key}. Remember it. {key} is the sequence of digits.\n",
                            "What is the sequence of digits?",
                            "There is an important info hidden inside a lot of irrelevant text. Find it. I will quiz you about the important information there.\n\n{context}\n\n{input}\n\nThe sequence of digits is",
                        )
                    }
                };
                // The needle at a depth drawn once per sample, in noise lines.
                let before = ((fixed.next_u64() as u128 * (size as u128 + 1)) >> 64) as usize;
                let context = format!(
                    "{}{}{}",
                    NOISE.repeat(before),
                    needle.replace("{key}", &key),
                    NOISE.repeat(size - before)
                );
                InfiniteSample {
                    prompt: from_template(template, &[("context", &context), ("input", question)]),
                    answer: key,
                }
            }
            Self::KvRetrieval => {
                let records: Vec<(String, String)> =
                    (0..size).map(|_| (sized.uuid4(), sized.uuid4())).collect();
                let asked = ((fixed.next_u64() as u128 * size as u128) >> 64) as usize;
                let object = records
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let context = format!("JSON data:\n{{{object}}}");
                let question = format!(
                    "\nKey: \"{}\"\nThe value associated with the specified key is: ",
                    records[asked].0
                );
                InfiniteSample {
                    prompt: from_template(
                        "Extract the value corresponding to the specified key in the JSON object below.\n\n{context}\n\n{input}",
                        &[("context", &context), ("input", &question)],
                    ),
                    answer: records[asked].1.clone(),
                }
            }
            Self::MathFind => {
                let target = TARGETS[fixed.below(TARGETS.len())];
                let (list, answer) = number_list(target, size, sized);
                let input = format!(
                    "You should answer with only one number, no other words. The {target} of the list is: "
                );
                // eval_utils.py: "What is {the target} in the following list?"
                let prefix = format!("What is the {target} in the following list?");
                let context = format!(
                    "[{}]",
                    list.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                InfiniteSample {
                    prompt: from_template(
                        "{prefix}\n\n{context}\n\n{input}",
                        &[
                            ("prefix", &prefix),
                            ("context", &context),
                            ("input", &input),
                        ],
                    ),
                    answer,
                }
            }
        }
    }
}

/// `generate_random_list`: `length` integers in 0..=99 with the range narrowed as it narrows
/// it (the top drawn in 80..=99 for the largest, the bottom in 0..=19 for the smallest), and
/// the target's value (the k-th distinct largest or smallest; the median, as a float where
/// it falls between two).
fn number_list(target: &str, length: usize, rng: &mut Rng) -> (Vec<u32>, String) {
    let mut range = |lo: u32, hi: u32| lo + rng.below((hi - lo + 1) as usize) as u32;
    // The median flips a coin between the two.
    let low_side = target.contains("smallest") || (!target.contains("largest") && range(0, 1) == 0);
    let (lo, hi) = match low_side {
        true => (range(0, 19), 99),
        false => (0, range(79, 99)),
    };
    let list: Vec<u32> = (0..length).map(|_| range(lo, hi)).collect();
    let mut distinct: Vec<u32> = list.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let nth = |k: usize, largest: bool| {
        let at = match largest {
            true => distinct.len().checked_sub(k + 1),
            false => (k < distinct.len()).then_some(k),
        };
        // With too few distinct values Python's loop empties the list and raises; the
        // extreme stands in.
        at.map_or(
            distinct[if largest { 0 } else { distinct.len() - 1 }],
            |i| distinct[i],
        )
    };
    let answer = match target {
        "largest number" => nth(0, true).to_string(),
        "second largest number" => nth(1, true).to_string(),
        "third largest number" => nth(2, true).to_string(),
        "smallest number" => nth(0, false).to_string(),
        "second smallest number" => nth(1, false).to_string(),
        "third smallest number" => nth(2, false).to_string(),
        _ => {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            let n = sorted.len();
            match n % 2 {
                1 => sorted[n / 2].to_string(),
                _ => format!("{:?}", (sorted[n / 2] + sorted[n / 2 - 1]) as f64 / 2.0),
            }
        }
    };
    (list, answer)
}

/// `first_int_match`: the first run of digits.
fn first_int(text: &str) -> &str {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

/// The first match of `\d+\.\d+|\d+`.
fn first_number(text: &str) -> Option<&str> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let rest = &text[start..];
    let int_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let after = &rest[int_end..];
    let fraction = after
        .strip_prefix('.')
        .map(|f| f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len()))
        .filter(|&n| n > 0);
    Some(match fraction {
        Some(n) => &rest[..int_end + 1 + n],
        None => &rest[..int_end],
    })
}
