//! RULER's needle-in-a-haystack family (`niah.py`): needles "One of the special magic
//! {kind} for {key} is: {value}." in a haystack of repeated sentences, of essays, or of other
//! needles; one or more keys asked.

use super::data::RulerData;
use super::{prompt, RulerSample, RulerTask};
use crate::rng::Rng;

const TEMPLATE: &str = "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text? The special magic {type_needle_v} for {query} mentioned in the provided text are";

const NEEDLE: &str = "One of the special magic {type_needle_v} for {key} is: {value}.";

const REPEATED: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// What the haystack is made of.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Haystack {
    /// `REPEATED`, once per unit.
    Repeat,
    /// The essays' first words, one per unit.
    Essay,
    /// Other needles (random keys and values), one per unit.
    Needles,
}

/// What keys and values are.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Numbers,
    Words,
    Uuids,
}

/// A task's arguments in `synthetic.yaml`.
pub(super) struct Setting {
    haystack: Haystack,
    key: Kind,
    value: Kind,
    keys: usize,
    values: usize,
    queries: usize,
}

impl Setting {
    pub(super) fn of(task: RulerTask) -> Self {
        let (haystack, key, value, keys, values, queries) = match task {
            RulerTask::NiahSingle1 => (Haystack::Repeat, Kind::Words, Kind::Numbers, 1, 1, 1),
            RulerTask::NiahSingle2 => (Haystack::Essay, Kind::Words, Kind::Numbers, 1, 1, 1),
            RulerTask::NiahSingle3 => (Haystack::Essay, Kind::Words, Kind::Uuids, 1, 1, 1),
            RulerTask::NiahMultikey1 => (Haystack::Essay, Kind::Words, Kind::Numbers, 4, 1, 1),
            RulerTask::NiahMultikey2 => (Haystack::Needles, Kind::Words, Kind::Numbers, 1, 1, 1),
            RulerTask::NiahMultikey3 => (Haystack::Needles, Kind::Uuids, Kind::Uuids, 1, 1, 1),
            RulerTask::NiahMultivalue => (Haystack::Essay, Kind::Words, Kind::Numbers, 1, 4, 1),
            RulerTask::NiahMultiquery => (Haystack::Essay, Kind::Words, Kind::Numbers, 1, 1, 4),
            other => unreachable!("{} is not a needle task", other.name()),
        };
        // niah.py: `num_needle_k = max(num_needle_k, num_needle_q)`.
        Self {
            haystack,
            key,
            value,
            keys: keys.max(queries),
            values,
            queries,
        }
    }
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Numbers => "numbers",
            Kind::Words => "words",
            Kind::Uuids => "uuids",
        }
    }

    /// A random key or value: a 7-digit number, an adjective-noun pair of wonderwords' lists,
    /// or a version-4 UUID.
    fn draw(self, data: &RulerData, rng: &mut Rng) -> String {
        match self {
            Kind::Numbers => (1_000_000 + rng.below(9_000_000)).to_string(),
            Kind::Words => format!(
                "{}-{}",
                data.adjectives[rng.below(data.adjectives.len())],
                data.nouns[rng.below(data.nouns.len())]
            ),
            Kind::Uuids => rng.uuid4(),
        }
    }
}

/// Sentences of `text`, split after `.`, `!` or `?` followed by whitespace (RULER uses
/// NLTK's punkt model here).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 0..bytes.len().saturating_sub(1) {
        if matches!(bytes[i], b'.' | b'!' | b'?') && bytes[i + 1] == b' ' {
            out.push(&text[start..=i]);
            start = i + 2;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// `k` distinct values of `0..n`, in draw order (`random.sample`).
pub(super) fn sample_distinct(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + rng.below(n - i);
        pool.swap(i, j);
    }
    pool.truncate(k.min(n));
    pool
}

/// A sample whose haystack has `size` units.
pub(super) fn sample(s: Setting, data: &RulerData, size: usize, rng: &mut Rng) -> RulerSample {
    let needle = |key: &str, value: &str| {
        crate::prompt::fill(
            NEEDLE,
            &[
                ("type_needle_v", s.value.plural()),
                ("key", key),
                ("value", value),
            ],
        )
    };
    let mut keys = Vec::new();
    let mut values: Vec<Vec<String>> = Vec::new();
    let mut needles = Vec::new();
    for _ in 0..s.keys {
        keys.push(s.key.draw(data, rng));
        let mut these = Vec::new();
        for _ in 0..s.values {
            these.push(s.value.draw(data, rng));
            needles.push(needle(
                keys.last().expect("pushed"),
                these.last().expect("pushed"),
            ));
        }
        values.push(these);
    }
    rng.shuffle(&mut needles);
    let context = match s.haystack {
        Haystack::Essay => {
            let text = data.essay[..size.min(data.essay.len())].join(" ");
            let sents = sentences(text.trim());
            // Depths from 40 evenly spaced percentages, drawn without replacement.
            let depths: Vec<usize> = (0..40)
                .map(|i| (100.0 * i as f64 / 39.0).round() as usize)
                .collect();
            let mut cuts: Vec<usize> = sample_distinct(rng, depths.len(), needles.len())
                .into_iter()
                .map(|d| sents.len() * depths[d] / 100)
                .collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut last = 0;
            for (cut, needle) in cuts.iter().zip(&needles) {
                parts.push(sents[last..*cut].join(" "));
                parts.push(needle.clone());
                last = *cut;
            }
            parts.push(sents[last..].join(" "));
            parts.join(" ")
        }
        Haystack::Repeat | Haystack::Needles => {
            let mut lines: Vec<String> = (0..size)
                .map(|_| match s.haystack {
                    Haystack::Repeat => REPEATED.to_string(),
                    _ => needle(&s.key.draw(data, rng), &s.value.draw(data, rng)),
                })
                .collect();
            let mut at = sample_distinct(rng, size, needles.len());
            at.sort_unstable_by(|a, b| b.cmp(a));
            for (index, needle) in at.into_iter().zip(&needles) {
                lines.insert(index, needle.clone());
            }
            lines.join("\n")
        }
    };
    let asked: Vec<usize> = sample_distinct(rng, s.keys, s.queries);
    let queries: Vec<&str> = asked.iter().map(|&i| keys[i].as_str()).collect();
    let answers: Vec<String> = asked.iter().flat_map(|&i| values[i].clone()).collect();
    let query = match queries.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => queries.concat(),
    };
    // niah.py words a single asked value in the singular.
    let (template, kind) = match s.queries * s.values {
        1 => (
            TEMPLATE
                .replace("Some", "A")
                .replace("are all", "is")
                .replace("are", "is")
                .replace("answers", "answer"),
            s.value.plural().trim_end_matches('s'),
        ),
        _ => (TEMPLATE.to_string(), s.value.plural()),
    };
    RulerSample {
        prompt: prompt(
            &template,
            &[
                ("type_needle_v", kind),
                ("context", &context),
                ("query", &query),
            ],
        ),
        answers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_after_end_marks() {
        assert_eq!(sentences("A b. C d? E! f"), vec!["A b.", "C d?", "E!", "f"]);
        assert_eq!(sentences("No end"), vec!["No end"]);
    }

    #[test]
    fn uuids_are_version_4() {
        let data = super::super::tests::tiny_data();
        let mut rng = Rng::new(1, &[]);
        for _ in 0..20 {
            let u = Kind::Uuids.draw(&data, &mut rng);
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4");
            assert!("89ab".contains(&u[19..20]), "{u}");
        }
    }
}
