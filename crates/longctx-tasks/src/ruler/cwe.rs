//! RULER's common words extraction (`common_words_extraction.py`): a numbered list where ten
//! words recur 30 times and the others 3 times (6 and 1 below 4K tokens), after one worked
//! example.

use super::data::RulerData;
use super::niah::sample_distinct;
use super::{prompt, RulerSample};
use crate::prompt::fill;
use crate::prompt::Prompt;
use crate::rng::Rng;

const TEMPLATE: &str = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:";

const COMMON: usize = 10;

/// wonderwords' nouns, adjectives and verbs, deduplicated, sorted and shuffled with a fixed
/// seed (as `common_words_extraction.py` does at import).
pub(super) fn pool(data: &RulerData) -> &[String] {
    &data.list_words
}

/// `words` words drawn, the first ten repeated `common` times and the rest `rare` times,
/// shuffled and numbered: the list and the ten.
fn list(
    data: &RulerData,
    words: usize,
    common: usize,
    rare: usize,
    rng: &mut Rng,
) -> (String, Vec<String>) {
    let pool = pool(data);
    let drawn: Vec<&String> = sample_distinct(rng, pool.len(), words)
        .into_iter()
        .map(|i| &pool[i])
        .collect();
    let (top, rest) = drawn.split_at(COMMON.min(drawn.len()));
    let mut all: Vec<&String> = Vec::new();
    for _ in 0..common {
        all.extend(top);
    }
    for _ in 0..rare {
        all.extend(rest);
    }
    rng.shuffle(&mut all);
    (numbered(&all), top.iter().map(|w| w.to_string()).collect())
}

fn numbered(words: &[&String]) -> String {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sample of `size + 10` distinct words for a prompt of `length` tokens.
pub(super) fn sample(data: &RulerData, size: usize, length: usize, rng: &mut Rng) -> RulerSample {
    let ((example_words, example_common, example_rare), (common, rare)) = match length < 4096 {
        true => ((20, 3, 1), (6, 1)),
        false => ((40, 10, 3), (30, 3)),
    };
    let (example_list, example_answer) =
        list(data, example_words, example_common, example_rare, rng);
    let example = fill(TEMPLATE, &[("context", &example_list)])
        + " "
        + &numbered(&example_answer.iter().collect::<Vec<_>>());
    let words = (size + COMMON - 1).min(pool(data).len());
    let (context, answers) = list(data, words, common, rare, rng);
    let task = prompt(TEMPLATE, &[("context", &context)]);
    RulerSample {
        prompt: Prompt::new(
            format!("{example}\n{}", &task.text[..task.question_at]),
            task.question(),
        ),
        answers,
    }
}
