//! Exact ports of LongBench's official metrics (`metrics.py` of the LongBench repository),
//! including their quirks, so that scores computed here equal the official ones.

mod difflib;
mod rouge;
mod text;

pub use difflib::sequence_matcher_ratio;
pub use rouge::rouge_l_f;

use text::is_py_word;
pub use text::{is_py_space, py_split_whitespace};

/// The metrics LongBench uses, by the names of its `dataset2metric` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Token F1 after SQuAD-style normalization.
    QaF1,
    /// ROUGE-L F of the `rouge` 1.0.1 package.
    Rouge,
    /// Share of the class names found in the prediction that is the gold class.
    Classification,
    /// Share of digit runs in the prediction equal to the gold paragraph number.
    Retrieval,
    /// Share of digit runs in the prediction equal to the gold count.
    Count,
    /// fuzzywuzzy `ratio` of the first code line of the prediction.
    CodeSim,
}

impl Metric {
    /// Score one prediction against one reference answer, in [0, 1].
    ///
    /// `all_classes` is used by [`Metric::Classification`] only.
    pub fn score(self, prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
        match self {
            Metric::QaF1 => qa_f1(prediction, ground_truth),
            Metric::Rouge => rouge_l_f(prediction, ground_truth),
            Metric::Classification => classification(prediction, ground_truth, all_classes),
            Metric::Retrieval => retrieval(prediction, ground_truth),
            Metric::Count => count(prediction, ground_truth),
            Metric::CodeSim => code_sim(prediction, ground_truth),
        }
    }

    /// The name LongBench's tables use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::QaF1 => "qa_f1",
            Metric::Rouge => "rouge",
            Metric::Classification => "classification",
            Metric::Retrieval => "retrieval",
            Metric::Count => "count",
            Metric::CodeSim => "code_sim",
        }
    }

    /// The metric of a name from [`Metric::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Metric::QaF1,
            Metric::Rouge,
            Metric::Classification,
            Metric::Retrieval,
            Metric::Count,
            Metric::CodeSim,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// `normalize_answer`: lowercase, drop ASCII punctuation, replace the words a/an/the by a
/// space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = remove_articles(&no_punct, " ");
    py_split_whitespace(&no_articles).join(" ")
}

/// `re.sub(r"\b(a|an|the)\b", replacement, text)`: every whole run of word characters
/// equal to an article is replaced.
pub fn remove_articles(text: &str, replacement: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_py_word(chars[i]) {
            let start = i;
            while i < chars.len() && is_py_word(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push_str(if matches!(word.as_str(), "a" | "an" | "the") {
                replacement
            } else {
                &word
            });
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Token-level F1 of two token lists (multiset overlap).
fn f1_tokens(prediction: &[&str], ground_truth: &[&str]) -> f64 {
    let mut remaining: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for t in ground_truth {
        *remaining.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in prediction {
        if let Some(n) = remaining.get_mut(t) {
            if *n > 0 {
                *n -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / prediction.len() as f64;
    let recall = same as f64 / ground_truth.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `qa_f1_score`.
pub fn qa_f1(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    f1_tokens(&py_split_whitespace(&p), &py_split_whitespace(&g))
}

/// Maximal runs of decimal digits, as Python's `re.findall(r"\d+", s)`.
fn digit_runs(s: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut current = String::new();
    for c in s.chars() {
        if text::is_py_decimal(c) {
            current.push(c);
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// Share of digit runs equal to `target`; 0 when there are none.
fn share_equal(prediction: &str, target: &str) -> f64 {
    let runs = digit_runs(prediction);
    if runs.is_empty() {
        return 0.0;
    }
    runs.iter().filter(|r| r.as_str() == target).count() as f64 / runs.len() as f64
}

/// `count_score`: the gold answer is compared as text (`str(ground_truth)`).
pub fn count(prediction: &str, ground_truth: &str) -> f64 {
    share_equal(prediction, ground_truth)
}

/// `retrieval_score`: the gold id is the first number after "Paragraph " in the answer.
pub fn retrieval(prediction: &str, ground_truth: &str) -> f64 {
    let Some(id) = paragraph_id(ground_truth) else {
        // The official code raises IndexError here; LongBench answers always carry an id.
        return 0.0;
    };
    share_equal(prediction, &id)
}

/// First match of `Paragraph (\d+)`.
fn paragraph_id(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(at) = rest.find("Paragraph ") {
        let after = &rest[at + "Paragraph ".len()..];
        let digits: String = after
            .chars()
            .take_while(|c| text::is_py_decimal(*c))
            .collect();
        if !digits.is_empty() {
            return Some(digits);
        }
        rest = &rest[at + 1..];
    }
    None
}

/// `classification_score`, including the official loop that removes items from the list
/// it iterates over (which skips the element after each removal).
pub fn classification(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matches: Vec<&str> = all_classes
        .iter()
        .map(String::as_str)
        .filter(|c| prediction.contains(c))
        .collect();
    let mut i = 0;
    while i < matches.len() {
        let term = matches[i];
        if ground_truth.contains(term) && term != ground_truth {
            // list.remove removes the first equal element; the iterator index still advances.
            let first = matches
                .iter()
                .position(|m| *m == term)
                .expect("term is in the list");
            matches.remove(first);
        }
        i += 1;
    }
    if matches.contains(&ground_truth) {
        1.0 / matches.len() as f64
    } else {
        0.0
    }
}

/// `code_sim_score`: the first line (after leading newlines) without a backtick, `#` or
/// `//`, compared with fuzzywuzzy's `ratio`.
pub fn code_sim(prediction: &str, ground_truth: &str) -> f64 {
    let line = prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|l| !l.contains('`') && !l.contains('#') && !l.contains("//"))
        .unwrap_or("");
    fuzz_ratio(line, ground_truth) as f64 / 100.0
}

/// fuzzywuzzy `fuzz.ratio`: equal strings 100, an empty one 0, else the difflib ratio × 100
/// rounded half to even.
pub fn fuzz_ratio(a: &str, b: &str) -> u32 {
    if a == b {
        return 100;
    }
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    (100.0 * sequence_matcher_ratio(&a, &b)).round_ties_even() as u32
}
