//! RULER (Hsieh et al., 2024): thirteen synthetic tasks at a length set in the model's own
//! tokens, built from RULER's data ([`data`]) the way its generators build them
//! (`niah.py`, `variable_tracking.py`, `common_words_extraction.py`,
//! `freq_words_extraction.py`, `qa.py`, with the arguments of `synthetic.yaml`), with its
//! templates and answer prefixes, and scored by its string-match metrics.
//!
//! | task | construction | score |
//! |---|---|---|
//! | `niah_single_1` | one number needle in a repeated "The grass is green…" haystack | `string_match_all` |
//! | `niah_single_2` | one number needle in the essay haystack | `string_match_all` |
//! | `niah_single_3` | one UUID needle in the essays | `string_match_all` |
//! | `niah_multikey_1` | four keyed number needles in the essays, one asked | `string_match_all` |
//! | `niah_multikey_2` | one needle among needles with other keys | `string_match_all` |
//! | `niah_multikey_3` | one UUID-keyed UUID needle among such needles | `string_match_all` |
//! | `niah_multivalue` | four values under one key, all asked | `string_match_all` |
//! | `niah_multiquery` | four keyed needles, all asked | `string_match_all` |
//! | `vt` | a chain of five variable assignments in noise, after one worked example | `string_match_all` |
//! | `cwe` | the ten words repeated 30× among words repeated 3×, after one worked example | `string_match_all` |
//! | `fwe` | the three most frequent coded words of a Zipf(2) text | `string_match_all` |
//! | `qa_1` | a SQuAD question among SQuAD paragraphs | `string_match_part` |
//! | `qa_2` | a HotpotQA question among HotpotQA paragraphs | `string_match_part` |
//!
//! What differs from RULER's own scripts, on purpose: draws come from this crate's seeded
//! generator, not Python's `random` (other samples, the same construction); the essays are
//! split into sentences at `.`, `!` or `?` followed by a space, where RULER uses NLTK's
//! punkt model (not installable from a package registry); and prompts use RULER's `base`
//! template (the task's template and its answer prefix, no chat template).

mod cwe;
pub mod data;
mod fwe;
mod niah;
mod qa;
mod vt;

pub use data::{RulerData, RulerDataError};

use crate::fit::largest_fitting;
use crate::prompt::{from_template as prompt, Prompt};
use crate::rng::Rng;

/// RULER's thirteen tasks, in `synthetic.yaml`'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RulerTask {
    NiahSingle1,
    NiahSingle2,
    NiahSingle3,
    NiahMultikey1,
    NiahMultikey2,
    NiahMultikey3,
    NiahMultivalue,
    NiahMultiquery,
    VariableTracking,
    CommonWords,
    FrequentWords,
    QaSquad,
    QaHotpot,
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RulerSample {
    /// The prompt; its question part follows the generated context.
    pub prompt: Prompt,
    /// What a correct answer contains.
    pub answers: Vec<String>,
}

/// Why a sample could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RulerError {
    #[error("RULER {task}: even the smallest sample takes {tokens} tokens, more than {budget} (a length of {length} less {reserve} to generate)")]
    TooShort {
        task: &'static str,
        tokens: usize,
        budget: usize,
        length: usize,
        reserve: usize,
    },
}

impl RulerTask {
    /// Every task.
    pub const ALL: [Self; 13] = [
        Self::NiahSingle1,
        Self::NiahSingle2,
        Self::NiahSingle3,
        Self::NiahMultikey1,
        Self::NiahMultikey2,
        Self::NiahMultikey3,
        Self::NiahMultivalue,
        Self::NiahMultiquery,
        Self::VariableTracking,
        Self::CommonWords,
        Self::FrequentWords,
        Self::QaSquad,
        Self::QaHotpot,
    ];

    /// RULER's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::NiahSingle1 => "niah_single_1",
            Self::NiahSingle2 => "niah_single_2",
            Self::NiahSingle3 => "niah_single_3",
            Self::NiahMultikey1 => "niah_multikey_1",
            Self::NiahMultikey2 => "niah_multikey_2",
            Self::NiahMultikey3 => "niah_multikey_3",
            Self::NiahMultivalue => "niah_multivalue",
            Self::NiahMultiquery => "niah_multiquery",
            Self::VariableTracking => "vt",
            Self::CommonWords => "cwe",
            Self::FrequentWords => "fwe",
            Self::QaSquad => "qa_1",
            Self::QaHotpot => "qa_2",
        }
    }

    /// The task of that name.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What it asks, in a line.
    pub fn about(self) -> &'static str {
        match self {
            Self::NiahSingle1 => "one number needle, repeated-sentence haystack",
            Self::NiahSingle2 => "one number needle, essay haystack",
            Self::NiahSingle3 => "one UUID needle, essay haystack",
            Self::NiahMultikey1 => "one of four keyed needles, essay haystack",
            Self::NiahMultikey2 => "one needle in a haystack of needles",
            Self::NiahMultikey3 => "one UUID needle in a haystack of UUID needles",
            Self::NiahMultivalue => "four values under one key",
            Self::NiahMultiquery => "four keys asked at once",
            Self::VariableTracking => "variables bound along a chain of assignments",
            Self::CommonWords => "the ten most common words of a list",
            Self::FrequentWords => "the three most frequent coded words",
            Self::QaSquad => "SQuAD question among SQuAD paragraphs",
            Self::QaHotpot => "HotpotQA question among HotpotQA paragraphs",
        }
    }

    /// Tokens RULER generates for it (`constants.py`), reserved when fitting the prompt.
    pub fn tokens_to_generate(self) -> usize {
        match self {
            Self::VariableTracking => 30,
            Self::CommonWords => 120,
            Self::FrequentWords => 50,
            Self::QaSquad | Self::QaHotpot => 32,
            _ => 128,
        }
    }

    /// RULER's metric for it.
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::QaSquad | Self::QaHotpot => "string_match_part",
            _ => "string_match_all",
        }
    }

    /// The sample's score in [0, 1]: the share of answers the prediction contains
    /// (`string_match_all`), or whether it contains any (`string_match_part`), ignoring case,
    /// after RULER's `postprocess_pred`.
    pub fn score(self, prediction: &str, answers: &[String]) -> f64 {
        let prediction = postprocess(prediction).to_lowercase();
        let hits = answers
            .iter()
            .map(|a| prediction.contains(&a.to_lowercase()));
        match self {
            Self::QaSquad | Self::QaHotpot => f64::from(u8::from(hits.into_iter().any(|h| h))),
            _ if answers.is_empty() => 0.0,
            _ => hits.filter(|&h| h).count() as f64 / answers.len() as f64,
        }
    }

    /// Sample `index`, as long as fits in `length` tokens with the task's generation
    /// reserved; `count` gives a text's length in the model's tokens.
    pub fn generate(
        self,
        data: &RulerData,
        length: usize,
        count: &dyn Fn(&str) -> usize,
        seed: u64,
        index: usize,
    ) -> Result<RulerSample, RulerError> {
        let reserve = self.tokens_to_generate();
        let budget = length.saturating_sub(reserve);
        let build = |size: usize| -> RulerSample {
            let mut rng = Rng::new(
                seed,
                &[0x52_55_4C_45_52, self as u64, size as u64, index as u64],
            );
            match self {
                Self::VariableTracking => vt::sample(size, count, &mut rng),
                Self::CommonWords => cwe::sample(data, size, length, &mut rng),
                Self::FrequentWords => fwe::sample(size, length, &mut rng),
                Self::QaSquad => qa::sample(&data.squad, size, seed, index, &mut rng),
                Self::QaHotpot => qa::sample(&data.hotpotqa, size, seed, index, &mut rng),
                needle => niah::sample(niah::Setting::of(needle), data, size, &mut rng),
            }
        };
        let largest = match self {
            Self::NiahSingle2
            | Self::NiahSingle3
            | Self::NiahMultikey1
            | Self::NiahMultivalue
            | Self::NiahMultiquery => data.essay.len(),
            Self::CommonWords => cwe::pool(data).len(),
            Self::QaSquad => data.squad.docs.len(),
            Self::QaHotpot => data.hotpotqa.docs.len(),
            _ => usize::MAX / 2,
        };
        let fits = |size: usize| count(&build(size).prompt.text) <= budget;
        if !fits(1) {
            return Err(RulerError::TooShort {
                task: self.name(),
                tokens: count(&build(1).prompt.text),
                budget,
                length,
                reserve,
            });
        }
        Ok(build(largest_fitting(largest, fits)))
    }
}

/// RULER's `postprocess_pred`: trimmed, control characters made newlines.
fn postprocess(prediction: &str) -> String {
    prediction
        .trim()
        .chars()
        .map(|c| if (c as u32) < 0x20 { '\n' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small data set in RULER's shapes, for tests that need no download.
    pub(crate) fn tiny_data() -> RulerData {
        let words = |w: &str| w.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let qa =
            |docs: &[&str], query: &str, answer: &str, gold: Vec<usize>, related: Vec<usize>| {
                data::QaSet {
                    docs: docs.iter().map(|d| d.to_string()).collect(),
                    items: vec![data::QaItem {
                        query: query.into(),
                        answers: vec![answer.into()],
                        docs: gold,
                        related,
                    }],
                }
            };
        RulerData::new(
            words(
                &"It was a cold day. The city slept! Did anyone notice? Nobody did. ".repeat(200),
            ),
            [
                words("apple river stone cloud forest engine market window garden letter"),
                words("red quiet bright heavy sudden gentle"),
                words("run sing build carry follow measure"),
            ],
            qa(
                &[
                    "Paris is the capital of France.",
                    "France is in Europe.",
                    "Rome is old.",
                ],
                "What is the capital of France?",
                "Paris",
                vec![0],
                vec![1],
            ),
            qa(
                &[
                    "Ed Wood\nEd Wood is a film.",
                    "Tim Burton\nHe directed it.",
                    "Other\nNoise.",
                ],
                "Who directed Ed Wood?",
                "Tim Burton",
                vec![0, 1],
                vec![],
            ),
        )
    }

    /// Every task at a length its tiny data allows, counting a word as a token: the prompt
    /// fits and holds every answer.
    #[test]
    fn every_task_fits_and_holds_its_answers() {
        let data = tiny_data();
        let count = |text: &str| text.split_whitespace().count();
        for task in RulerTask::ALL {
            let s = task.generate(&data, 1500, &count, 7, 0).unwrap();
            assert!(
                count(&s.prompt.text) + task.tokens_to_generate() <= 1500,
                "{}",
                task.name()
            );
            assert!(!s.answers.is_empty(), "{}", task.name());
            let context = &s.prompt.text[..s.prompt.question_at];
            for answer in &s.answers {
                assert!(
                    context.contains(answer.as_str()),
                    "{}: {answer} not in the context",
                    task.name()
                );
            }
            assert_eq!(
                s,
                task.generate(&data, 1500, &count, 7, 0).unwrap(),
                "{} is deterministic",
                task.name()
            );
        }
        let err = RulerTask::NiahSingle1
            .generate(&data, 100, &count, 7, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("niah_single_1") && err.contains("more than"),
            "{err}"
        );
    }

    #[test]
    fn scores_follow_rulers_string_match() {
        let answers = vec!["1234567".to_string(), "Blue-Fox".to_string()];
        let all = RulerTask::NiahMultivalue;
        assert_eq!(
            all.score(" the numbers are 1234567 and blue-fox\n", &answers),
            1.0
        );
        assert_eq!(all.score("1234567", &answers), 0.5);
        assert_eq!(all.score("", &answers), 0.0);
        let part = RulerTask::QaSquad;
        assert_eq!(part.score("It was blue-fox.", &answers), 1.0);
        assert_eq!(part.score("no idea", &answers), 0.0);
    }
}
