//! LongBench (v1, English): the 16 datasets, their official prompts, generation lengths,
//! truncation and scoring rules, and a loader for the official `data/<dataset>.jsonl` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::metrics::Metric;
use crate::prompt::Prompt;

/// The official prompt templates (`dataset2prompt.json` of LongBench).
const PROMPTS: &str = include_str!("../data/dataset2prompt.json");
/// The official generation lengths (`dataset2maxlen.json` of LongBench).
const MAX_LENGTHS: &str = include_str!("../data/dataset2maxlen.json");

/// LongBench's six task categories, as the paper's Table 2 groups datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// narrativeqa, qasper, multifieldqa_en.
    SingleDocQa,
    /// hotpotqa, 2wikimqa, musique.
    MultiDocQa,
    /// gov_report, qmsum, multi_news.
    Summarization,
    /// trec, triviaqa, samsum.
    FewShot,
    /// passage_count, passage_retrieval_en.
    Synthetic,
    /// lcc, repobench-p.
    Code,
}

impl Category {
    /// Every category in the paper's column order.
    pub const ALL: [Category; 6] = [
        Self::SingleDocQa,
        Self::MultiDocQa,
        Self::Summarization,
        Self::FewShot,
        Self::Synthetic,
        Self::Code,
    ];

    /// The column title the paper uses.
    pub fn title(self) -> &'static str {
        match self {
            Self::SingleDocQa => "Single-doc QA",
            Self::MultiDocQa => "Multi-doc QA",
            Self::Summarization => "Summarization",
            Self::FewShot => "Few-shot",
            Self::Synthetic => "Synthetic",
            Self::Code => "Code",
        }
    }
}

/// One LongBench dataset and its official rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dataset {
    /// The official name (file stem in `data/`).
    pub name: &'static str,
    /// Task category.
    pub category: Category,
    /// Scoring metric.
    pub metric: Metric,
}

/// The 16 English datasets, in LongBench's order.
pub const DATASETS: [Dataset; 16] = [
    Dataset {
        name: "narrativeqa",
        category: Category::SingleDocQa,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "qasper",
        category: Category::SingleDocQa,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "multifieldqa_en",
        category: Category::SingleDocQa,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "hotpotqa",
        category: Category::MultiDocQa,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "2wikimqa",
        category: Category::MultiDocQa,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "musique",
        category: Category::MultiDocQa,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "gov_report",
        category: Category::Summarization,
        metric: Metric::Rouge,
    },
    Dataset {
        name: "qmsum",
        category: Category::Summarization,
        metric: Metric::Rouge,
    },
    Dataset {
        name: "multi_news",
        category: Category::Summarization,
        metric: Metric::Rouge,
    },
    Dataset {
        name: "trec",
        category: Category::FewShot,
        metric: Metric::Classification,
    },
    Dataset {
        name: "triviaqa",
        category: Category::FewShot,
        metric: Metric::QaF1,
    },
    Dataset {
        name: "samsum",
        category: Category::FewShot,
        metric: Metric::Rouge,
    },
    Dataset {
        name: "passage_count",
        category: Category::Synthetic,
        metric: Metric::Count,
    },
    Dataset {
        name: "passage_retrieval_en",
        category: Category::Synthetic,
        metric: Metric::Retrieval,
    },
    Dataset {
        name: "lcc",
        category: Category::Code,
        metric: Metric::CodeSim,
    },
    Dataset {
        name: "repobench-p",
        category: Category::Code,
        metric: Metric::CodeSim,
    },
];

/// Errors of loading and scoring; each names the file (and line) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LongBenchError {
    /// The name is not one of the 16 English datasets (an `_e` suffix is allowed).
    #[error("unknown LongBench dataset \"{0}\"; known: narrativeqa, qasper, multifieldqa_en, hotpotqa, 2wikimqa, musique, gov_report, qmsum, multi_news, trec, triviaqa, samsum, passage_count, passage_retrieval_en, lcc, repobench-p (add _e for LongBench-E)")]
    UnknownDataset(String),
    /// The data or prediction directory or file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line is not valid UTF-8 or JSON, or lacks a field.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A file holds no usable line: scoring it would count 0 and lower the averages.
    #[error("{0} holds no usable line (empty, blank or every line skipped): fill it or remove it")]
    Empty(PathBuf),
}

/// What to do with a bad line of a data or prediction file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadLine {
    /// Stop with an error naming the file and line.
    Fail,
    /// Report the line and go on with the others.
    Skip,
}

impl Dataset {
    /// Look a dataset up by name; `name_e` selects the same dataset's LongBench-E file.
    pub fn by_name(name: &str) -> Result<Self, LongBenchError> {
        let base = name.strip_suffix("_e").unwrap_or(name);
        DATASETS
            .iter()
            .copied()
            .find(|d| d.name == base)
            .ok_or_else(|| LongBenchError::UnknownDataset(name.to_string()))
    }

    /// The official prompt template.
    pub fn template(self) -> String {
        let table: BTreeMap<String, String> =
            serde_json::from_str(PROMPTS).expect("the embedded prompt table is valid JSON");
        table[self.name].clone()
    }

    /// Tokens to generate, per `dataset2maxlen.json`.
    pub fn max_new_tokens(self) -> usize {
        let table: BTreeMap<String, usize> =
            serde_json::from_str(MAX_LENGTHS).expect("the embedded length table is valid JSON");
        table[self.name]
    }

    /// Whether the chat template is applied (LongBench leaves few-shot and code prompts raw).
    pub fn uses_chat_template(self) -> bool {
        !matches!(
            self.name,
            "trec" | "triviaqa" | "samsum" | "lcc" | "repobench-p"
        )
    }

    /// Whether only the first line of a prediction is scored (and generation stops at a
    /// newline for samsum).
    pub fn first_line_only(self) -> bool {
        matches!(self.name, "trec" | "triviaqa" | "samsum")
    }

    /// Whether the newline token ends generation and neither it nor end-of-sequence may be
    /// the first new token: samsum, where pred.py passes `eos_token_id=[eos, "\n"]` with
    /// `min_length = context_length + 1`.
    pub fn stops_at_newline(self) -> bool {
        self.name == "samsum"
    }

    /// The prompt for a sample: the template with `{context}` and `{input}` filled in one
    /// pass, as Python's `str.format` does (the official templates have no other fields or
    /// braces): a `{input}` inside the context stays as it is. Its question part starts where
    /// the context ends (every official template puts the context before the question).
    pub fn prompt(self, sample: &Sample) -> Prompt {
        let template = self.template();
        let mut out =
            String::with_capacity(template.len() + sample.context.len() + sample.input.len());
        let mut question_at = None;
        let mut rest = template.as_str();
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let (field, value) = if rest.starts_with("{context}") {
                ("{context}", sample.context.as_str())
            } else if rest.starts_with("{input}") {
                ("{input}", sample.input.as_str())
            } else {
                ("{", "{")
            };
            out.push_str(value);
            if field == "{context}" {
                question_at = Some(out.len());
            }
            rest = &rest[field.len()..];
        }
        out.push_str(rest);
        Prompt {
            question_at: question_at.unwrap_or(out.len()),
            text: out,
        }
    }

    /// One sample's score: the best over its reference answers, after first-line cutting.
    pub fn score(self, prediction: &str, answers: &[String], all_classes: &[String]) -> f64 {
        let prediction = if self.first_line_only() {
            prediction
                .trim_start_matches('\n')
                .split('\n')
                .next()
                .unwrap_or("")
        } else {
            prediction
        };
        answers
            .iter()
            .map(|a| self.metric.score(prediction, a, all_classes))
            .fold(0.0, f64::max)
    }
}

/// One LongBench sample (the official fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The question or instruction.
    pub input: String,
    /// The long context.
    pub context: String,
    /// Reference answers.
    pub answers: Vec<String>,
    /// Length in words (LongBench-E buckets by it).
    pub length: usize,
    /// Class names (trec).
    pub all_classes: Vec<String>,
    /// Sample id.
    pub id: String,
}

/// A loaded data file: the samples, and the lines that were skipped with why.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Samples in file order.
    pub samples: Vec<Sample>,
    /// Skipped lines (only with [`OnBadLine::Skip`]).
    pub skipped: Vec<LongBenchError>,
}

fn field_str(v: &Value, key: &str) -> Result<String, String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("field \"{key}\" is missing or not a string"))
}

pub(crate) fn field_strings(v: &Value, key: &str, required: bool) -> Result<Vec<String>, String> {
    match v.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("field \"{key}\" holds a non-string"))
            })
            .collect(),
        Some(Value::Null) | None if !required => Ok(Vec::new()),
        _ => Err(format!(
            "field \"{key}\" is missing or not a list of strings"
        )),
    }
}

/// The `answers` field: a non-empty list of strings (a sample cannot be scored without one).
pub(crate) fn answers_field(v: &Value) -> Result<Vec<String>, String> {
    let answers = field_strings(v, "answers", true)?;
    if answers.is_empty() {
        return Err(
            "field \"answers\" is empty: a sample needs at least one reference answer".into(),
        );
    }
    Ok(answers)
}

/// Parse one line of an official data file.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let answers = answers_field(&v)?;
    Ok(Sample {
        input: field_str(&v, "input")?,
        context: field_str(&v, "context")?,
        answers,
        length: v
            .get("length")
            .and_then(Value::as_u64)
            .ok_or("field \"length\" is missing or not a whole number")? as usize,
        all_classes: field_strings(&v, "all_classes", false)?,
        id: field_str(&v, "_id")?,
    })
}

/// Read `path` line by line with `parse`, applying the bad-line policy.
pub(crate) fn read_jsonl<T>(
    path: &Path,
    on_bad: OnBadLine,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<(Vec<T>, Vec<LongBenchError>), LongBenchError> {
    let bytes = std::fs::read(path).map_err(|source| LongBenchError::Io {
        path: path.into(),
        source,
    })?;
    let (mut items, mut skipped) = (Vec::new(), Vec::new());
    // Line by line as bytes, so that one line of invalid UTF-8 is a bad line like any other.
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let parsed = match std::str::from_utf8(raw) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => parse(line),
            Err(e) => Err(format!("not valid UTF-8 ({e})")),
        };
        match parsed {
            Ok(item) => items.push(item),
            Err(reason) => {
                let err = LongBenchError::BadLine {
                    path: path.into(),
                    line: i + 1,
                    reason,
                };
                match on_bad {
                    OnBadLine::Fail => return Err(err),
                    OnBadLine::Skip => skipped.push(err),
                }
            }
        }
    }
    Ok((items, skipped))
}

/// Load `dir/<name>.jsonl` (the official layout: LongBench's `data/` directory).
pub fn load(dir: &Path, name: &str, on_bad: OnBadLine) -> Result<Loaded, LongBenchError> {
    Dataset::by_name(name)?;
    if !dir.is_dir() {
        return Err(LongBenchError::Io {
            path: dir.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let (samples, skipped) = read_jsonl(&dir.join(format!("{name}.jsonl")), on_bad, parse_sample)?;
    Ok(Loaded { samples, skipped })
}

/// A tokenizer as truncation needs it; the model crate's tokenizer implements it in the CLI.
pub trait Tokenize {
    /// Token ids of `text`, without special tokens.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Text of `ids`, special tokens skipped.
    fn decode(&self, ids: &[u32]) -> String;
}

/// LongBench's middle truncation: a prompt over `max_length` tokens keeps its first and last
/// `max_length / 2` tokens, decoded and joined.
pub fn truncate_middle(prompt: &str, max_length: usize, tokenizer: &dyn Tokenize) -> String {
    let ids = tokenizer.encode(prompt);
    if ids.len() <= max_length {
        return prompt.to_string();
    }
    let half = max_length / 2;
    tokenizer.decode(&ids[..half]) + &tokenizer.decode(&ids[ids.len() - half..])
}

/// A dataset's score: 100 × mean, rounded to 2 decimals as Python's `round` does.
pub fn dataset_score(sample_scores: &[f64]) -> f64 {
    if sample_scores.is_empty() {
        return 0.0;
    }
    round2(100.0 * sample_scores.iter().sum::<f64>() / sample_scores.len() as f64)
}

/// Python's `round(x, 2)`: correctly rounded, ties to even on the exact binary value.
pub fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().expect("a formatted float parses")
}

/// LongBench-E buckets by the `length` field (words): 0–4k, 4k–8k, 8k+.
pub fn length_bucket(length: usize) -> &'static str {
    match length {
        0..4000 => "0-4k",
        4000..8000 => "4-8k",
        _ => "8k+",
    }
}

/// LongBench-E's score per length bucket of `(score, length)` samples, in bucket order:
/// 100 × mean, 2 decimals, as its `scorer_e`; `None` for an empty bucket.
pub fn bucket_scores(samples: &[(f64, usize)]) -> BTreeMap<&'static str, Option<f64>> {
    ["0-4k", "4-8k", "8k+"]
        .into_iter()
        .map(|bucket| {
            let at: Vec<f64> = samples
                .iter()
                .filter(|(_, length)| length_bucket(*length) == bucket)
                .map(|(score, _)| *score)
                .collect();
            (bucket, (!at.is_empty()).then(|| dataset_score(&at)))
        })
        .collect()
}

/// Averages over datasets: the paper's 15-dataset mean (passage_count left out) and
/// LongBench's mean over the six category means. `None` when a required dataset is absent.
pub fn averages(scores: &BTreeMap<&str, f64>) -> (Option<f64>, Option<f64>) {
    let paper: Vec<f64> = DATASETS
        .iter()
        .filter(|d| d.name != "passage_count")
        .filter_map(|d| scores.get(d.name).copied())
        .collect();
    let paper_avg = (paper.len() == 15).then(|| round2(paper.iter().sum::<f64>() / 15.0));
    let categories: Option<Vec<f64>> = Category::ALL
        .iter()
        .map(|c| category_score(scores, *c))
        .collect();
    let category_avg = categories.map(|c| round2(c.iter().sum::<f64>() / c.len() as f64));
    (paper_avg, category_avg)
}

/// Mean of a category's dataset scores; `None` unless every one of them is present.
pub fn category_score(scores: &BTreeMap<&str, f64>, category: Category) -> Option<f64> {
    let members: Vec<&Dataset> = DATASETS.iter().filter(|d| d.category == category).collect();
    let found: Vec<f64> = members
        .iter()
        .filter_map(|d| scores.get(d.name).copied())
        .collect();
    (found.len() == members.len()).then(|| round2(found.iter().sum::<f64>() / found.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round2_is_pythons_round() {
        // Python: round(0.125, 2) == 0.12, round(0.375, 2) == 0.38, round(2.675, 2) == 2.67.
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(0.375), 0.38);
        assert_eq!(round2(2.675), 2.67);
        assert_eq!(round2(33.333333), 33.33);
    }

    #[test]
    fn unknown_and_e_names() {
        assert!(matches!(
            Dataset::by_name("nonsense"),
            Err(LongBenchError::UnknownDataset(_))
        ));
        assert_eq!(Dataset::by_name("qasper_e").unwrap().name, "qasper");
        assert_eq!(Dataset::by_name("samsum").unwrap().max_new_tokens(), 128);
    }

    /// `str.format` fills the template once: braces and field names inside the context or
    /// the question are text, not fields.
    #[test]
    fn fields_inside_the_context_survive_substitution() {
        let sample = Sample {
            input: "what is {context}?".into(),
            context: "code: f\"{input}\" and {x}".into(),
            answers: vec![],
            length: 0,
            all_classes: vec![],
            id: "0".into(),
        };
        for d in DATASETS {
            let template = d.template();
            let want = template
                .split("{context}")
                .map(|part| {
                    part.split("{input}")
                        .collect::<Vec<_>>()
                        .join(&sample.input)
                })
                .collect::<Vec<_>>()
                .join(&sample.context);
            let prompt = d.prompt(&sample);
            assert_eq!(prompt.text, want, "{}", d.name);
            // The question part starts right after the context and holds the question.
            assert!(prompt.text[..prompt.question_at].ends_with(&sample.context));
            assert_eq!(
                prompt.question().contains(&sample.input),
                template.contains("{input}"),
                "{}",
                d.name
            );
            assert!(
                d.prompt(&sample).text.contains("f\"{input}\" and {x}"),
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn first_line_scoring_and_best_answer() {
        let trec = Dataset::by_name("trec").unwrap();
        let classes = vec!["City".to_string(), "Country".to_string()];
        assert_eq!(
            trec.score("\n\nCity\nCountry", &["City".into()], &classes),
            1.0
        );
        let qa = Dataset::by_name("hotpotqa").unwrap();
        assert_eq!(
            qa.score("Paris", &["London".into(), "Paris".into()], &[]),
            1.0
        );
    }

    struct Chars;
    impl Tokenize for Chars {
        fn encode(&self, text: &str) -> Vec<u32> {
            text.chars().map(|c| c as u32).collect()
        }
        fn decode(&self, ids: &[u32]) -> String {
            ids.iter().filter_map(|&i| char::from_u32(i)).collect()
        }
    }

    #[test]
    fn middle_truncation_keeps_both_ends() {
        assert_eq!(truncate_middle("abcdefghij", 4, &Chars), "abij");
        assert_eq!(truncate_middle("abcdefghij", 5, &Chars), "abij");
        assert_eq!(truncate_middle("abc", 4, &Chars), "abc");
    }

    #[test]
    fn buckets() {
        assert_eq!(length_bucket(3999), "0-4k");
        assert_eq!(length_bucket(4000), "4-8k");
        assert_eq!(length_bucket(8000), "8k+");
    }
}

#[cfg(test)]
mod average_tests {
    use super::*;

    #[test]
    fn averages_need_every_dataset_and_leave_passage_count_out_of_the_paper_mean() {
        let mut scores: BTreeMap<&str, f64> = DATASETS.iter().map(|d| (d.name, 30.0)).collect();
        scores.insert("passage_count", 0.0);
        let (paper, categories) = averages(&scores);
        assert_eq!(paper, Some(30.0));
        // Synthetic = (0 + 30) / 2 = 15; the six category means average to (5 × 30 + 15) / 6.
        assert_eq!(category_score(&scores, Category::Synthetic), Some(15.0));
        assert_eq!(categories, Some(27.5));
        scores.remove("lcc");
        assert_eq!(averages(&scores), (None, None));
    }
}
