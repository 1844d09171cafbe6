//! A synthetic long-context suite in the spirit of RULER, generated deterministically from a
//! seed and the essay haystack, so the synthetic category runs without LongBench's data.
//!
//! | task | construction | score |
//! |---|---|---|
//! | `niah_multikey` | 4 needles "One of the special magic numbers for KEY is: VALUE." with different keys at random depths; one key is asked | the value appears |
//! | `niah_multivalue` | 4 needles with the same key and different values | share of values that appear |
//! | `niah_multiquery` | 4 needles with different keys; all four are asked | share of values that appear |
//! | `variable_tracking` | a chain `VAR A = 12345.`, `VAR B = VAR A.`, … (5 names) spread over the haystack | share of the names that appear |
//! | `common_words` | a numbered word list where 10 words occur 5× as often as the others | share of the 10 that appear |
//! | `passage_count` | essay paragraphs, some repeated, shuffled, numbered | LongBench's count metric |
//! | `passage_retrieval` | numbered essay paragraphs and a quotation (the first 24 words of one) | LongBench's retrieval metric |
//!
//! "Appears" is RULER's `string_match_all`: case-insensitive substring of the answer.

use crate::metrics::Metric;
use crate::needle::{words, Haystack};
use crate::prompt::Prompt;
use crate::rng::Rng;

/// The tasks of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticTask {
    /// One of four keyed needles is asked.
    MultiKeyNeedle,
    /// Four values under one key are asked.
    MultiValueNeedle,
    /// Four keyed needles are all asked.
    MultiQueryNeedle,
    /// Variables bound along a chain of assignments.
    VariableTracking,
    /// The ten most frequent words of a list.
    CommonWords,
    /// Unique paragraphs among repeated ones.
    PassageCount,
    /// The paragraph a quotation comes from.
    PassageRetrieval,
}

/// Adjectives and nouns that make needle keys and the common-words vocabulary.
const ADJECTIVES: [&str; 24] = [
    "amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly",
    "keen", "lunar", "mellow", "noble", "olive", "proud", "quiet", "rusty", "silent", "tidy",
    "urban", "vivid", "woolen", "young",
];
const NOUNS: [&str; 24] = [
    "anchor", "barrel", "candle", "dolphin", "engine", "falcon", "garden", "harbor", "island",
    "jacket", "kettle", "ladder", "meadow", "needle", "orchard", "pepper", "quarry", "river",
    "saddle", "tunnel", "valley", "walnut", "yard", "zebra",
];

/// One generated sample: the prompt and what a correct answer contains.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSample {
    /// The full prompt (used as is: no chat template needed, but one may be applied); its
    /// question part is what follows the generated context.
    pub prompt: Prompt,
    /// Reference answers (all must appear, or LongBench's metric on the first).
    pub answers: Vec<String>,
}

/// Insert `sentences` before the given word positions of `text` (positions ascending).
fn insert_at(text: &str, mut inserts: Vec<(usize, String)>) -> String {
    inserts.sort_by_key(|(p, _)| *p);
    let all = words(text);
    let mut out =
        String::with_capacity(text.len() + inserts.iter().map(|(_, s)| s.len() + 1).sum::<usize>());
    let mut next = inserts.into_iter().peekable();
    for (i, w) in all.iter().enumerate() {
        while let Some((_, s)) = next.next_if(|(p, _)| *p <= i) {
            out.push_str(&s);
            out.push(' ');
        }
        out.push_str(w);
    }
    for (_, s) in next {
        out.push(' ');
        out.push_str(&s);
    }
    out
}

/// Paragraphs of the essays with 40 to 200 words, in order: long enough to quote, short
/// enough that the last one added overshoots the target length by little.
fn paragraphs(haystack: &Haystack) -> Vec<String> {
    haystack
        .texts()
        .iter()
        .flat_map(|t| t.split("\n\n"))
        .map(|p| words(p).concat().trim().replace('\n', " "))
        .filter(|p| (40..=200).contains(&words(p).len()))
        .collect()
}

/// The chosen paragraphs as LongBench lays them out: "Paragraph i: text", blank-line separated.
fn numbered(pool: &[String], chosen: &[usize]) -> String {
    chosen
        .iter()
        .enumerate()
        .map(|(i, &p)| format!("Paragraph {}: {}", i + 1, pool[p]))
        .collect::<Vec<_>>()
        .join("\n\n")
}

impl SyntheticTask {
    /// Every task, in report order.
    pub const ALL: [SyntheticTask; 7] = [
        Self::MultiKeyNeedle,
        Self::MultiValueNeedle,
        Self::MultiQueryNeedle,
        Self::VariableTracking,
        Self::CommonWords,
        Self::PassageCount,
        Self::PassageRetrieval,
    ];

    /// The task's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MultiKeyNeedle => "niah_multikey",
            Self::MultiValueNeedle => "niah_multivalue",
            Self::MultiQueryNeedle => "niah_multiquery",
            Self::VariableTracking => "variable_tracking",
            Self::CommonWords => "common_words",
            Self::PassageCount => "passage_count",
            Self::PassageRetrieval => "passage_retrieval",
        }
    }

    /// Look a task up by name.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Tokens to generate (RULER's lengths for its tasks; LongBench's for the passage tasks).
    pub fn max_new_tokens(self) -> usize {
        match self {
            Self::MultiKeyNeedle | Self::MultiValueNeedle | Self::MultiQueryNeedle => 128,
            Self::VariableTracking => 30,
            Self::CommonWords => 120,
            Self::PassageCount | Self::PassageRetrieval => 32,
        }
    }

    /// The metric's name, for listings.
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::PassageCount => "count",
            Self::PassageRetrieval => "retrieval",
            _ => "string_match_all",
        }
    }

    /// Score a prediction in [0, 1].
    pub fn score(self, prediction: &str, answers: &[String]) -> f64 {
        match self {
            Self::PassageCount => Metric::Count.score(prediction, &answers[0], &[]),
            Self::PassageRetrieval => Metric::Retrieval.score(prediction, &answers[0], &[]),
            _ => {
                let lower = prediction.to_lowercase();
                answers
                    .iter()
                    .filter(|a| lower.contains(&a.to_lowercase()))
                    .count() as f64
                    / answers.len().max(1) as f64
            }
        }
    }

    /// Sample `index` of this task with a context of about `target_words` words.
    pub fn generate(
        self,
        haystack: &Haystack,
        target_words: usize,
        seed: u64,
        index: usize,
    ) -> SyntheticSample {
        let mut rng = Rng::new(seed, &[self as u64, target_words as u64, index as u64]);
        let background = || haystack.background(target_words);
        let positions = |rng: &mut Rng, n: usize| -> Vec<usize> {
            (0..n).map(|_| rng.below(target_words.max(1))).collect()
        };
        match self {
            Self::MultiKeyNeedle | Self::MultiValueNeedle | Self::MultiQueryNeedle => {
                let mut keys: Vec<String> = Vec::new();
                while keys.len() < 4 {
                    let k = format!("{}-{}", ADJECTIVES[rng.below(24)], NOUNS[rng.below(24)]);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                if self == Self::MultiValueNeedle {
                    keys = vec![keys[0].clone(); 4];
                }
                let values: Vec<String> = (0..4).map(|_| rng.digits(7)).collect();
                let at = positions(&mut rng, 4);
                let inserts = at
                    .into_iter()
                    .zip(keys.iter().zip(&values))
                    .map(|(p, (k, v))| {
                        (
                            p,
                            format!("One of the special magic numbers for {k} is: {v}."),
                        )
                    })
                    .collect();
                let context = insert_at(&background(), inserts);
                let (asked, answers) = match self {
                    Self::MultiKeyNeedle => (keys[0].clone(), vec![values[0].clone()]),
                    Self::MultiValueNeedle => (keys[0].clone(), values.clone()),
                    _ => (
                        format!("{}, {}, {} and {}", keys[0], keys[1], keys[2], keys[3]),
                        values.clone(),
                    ),
                };
                let what = if self == Self::MultiKeyNeedle {
                    "the special magic number"
                } else {
                    "all the special magic numbers"
                };
                SyntheticSample {
                    prompt: Prompt::new(format!("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards.\n{context}"), &format!("\nWhat are {what} for {asked} mentioned in the provided text? The special magic numbers for {asked} mentioned in the provided text are")),
                    answers,
                }
            }
            Self::VariableTracking => {
                let value = rng.digits(5);
                let names: Vec<String> = (0..5)
                    .map(|_| {
                        (0..5)
                            .map(|_| char::from(b'A' + rng.below(26) as u8))
                            .collect()
                    })
                    .collect();
                let mut at = positions(&mut rng, 5);
                at.sort_unstable();
                let chain = (0..5).map(|i| {
                    if i == 0 {
                        format!("VAR {} = {value}.", names[0])
                    } else {
                        format!("VAR {} = VAR {}.", names[i], names[i - 1])
                    }
                });
                let context = insert_at(&background(), at.into_iter().zip(chain).collect());
                SyntheticSample {
                    prompt: Prompt::new(format!("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}"), &format!("\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the value {value}, they are: ")),
                    answers: names,
                }
            }
            Self::CommonWords => {
                let mut vocabulary: Vec<&str> =
                    ADJECTIVES.iter().chain(NOUNS.iter()).copied().collect();
                rng.shuffle(&mut vocabulary);
                let (common, rare) = vocabulary.split_at(10);
                // 10 common words at 5 copies per rare copy; list length about target_words / 2 (each entry "N. word").
                let rare_copies = (target_words / 2 / (10 * 5 + rare.len())).max(1);
                let mut list: Vec<&str> = common
                    .iter()
                    .flat_map(|w| std::iter::repeat_n(*w, 5 * rare_copies))
                    .chain(
                        rare.iter()
                            .flat_map(|w| std::iter::repeat_n(*w, rare_copies)),
                    )
                    .collect();
                rng.shuffle(&mut list);
                let context = list
                    .iter()
                    .enumerate()
                    .map(|(i, w)| format!("{}. {w}", i + 1))
                    .collect::<Vec<_>>()
                    .join(" ");
                SyntheticSample {
                    prompt: Prompt::new(format!("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}"), "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:"),
                    answers: common.iter().map(|w| w.to_string()).collect(),
                }
            }
            Self::PassageCount | Self::PassageRetrieval => {
                let pool = paragraphs(haystack);
                let mut chosen: Vec<usize> = Vec::new();
                let mut total = 0;
                while total < target_words && !pool.is_empty() {
                    let p = if self == Self::PassageCount && !chosen.is_empty() && rng.below(3) == 0
                    {
                        chosen[rng.below(chosen.len())]
                    } else {
                        rng.below(pool.len())
                    };
                    total += words(&pool[p]).len();
                    chosen.push(p);
                }
                rng.shuffle(&mut chosen);
                let context = numbered(&pool, &chosen);
                if self == Self::PassageCount {
                    let mut unique = chosen.clone();
                    unique.sort_unstable();
                    unique.dedup();
                    return SyntheticSample {
                        prompt: Prompt::new(format!("There are some paragraphs below sourced from essays. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}"), "\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: "),
                        answers: vec![unique.len().to_string()],
                    };
                }
                let target = rng.below(chosen.len().max(1));
                let quote = words(&pool[chosen[target]])[..24]
                    .concat()
                    .trim()
                    .to_string();
                SyntheticSample {
                    prompt: Prompt::new(format!("Here are {} paragraphs from essays, along with a quotation. Please determine which paragraph the quotation is from.\n\n{context}", chosen.len()), &format!("\n\nThe following is the quotation.\n\n{quote}\n\nPlease enter the number of the paragraph that the quotation is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ")),
                    answers: vec![format!("Paragraph {}", target + 1)],
                }
            }
        }
    }
}
