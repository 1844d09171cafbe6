//! RULER's variable tracking (`variable_tracking.py`, one chain of four hops): `VAR X =
//! 12345` then `VAR Y = VAR X` and so on, spread over repeated noise sentences, after one
//! smaller worked example whose variable names are replaced by fresh ones.

use super::niah::sample_distinct;
use super::{prompt, RulerSample};
use crate::fit::largest_fitting;
use crate::prompt::Prompt;
use crate::rng::Rng;

const TEMPLATE: &str = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above. Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assgined the value {query}, they are: ";

const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";

const HOPS: usize = 4;

/// Tokens the worked example may take (RULER generates it at a length of 500 with 30 tokens
/// to generate).
const EXAMPLE_TOKENS: usize = 500 - 30;

fn letters(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + rng.below(26) as u8))
        .collect()
}

/// A chain of `HOPS + 1` distinct `name_len`-letter variables in `noises` noise sentences:
/// the context, the value and the variables.
fn chain(noises: usize, name_len: usize, rng: &mut Rng) -> (String, String, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    while names.len() < HOPS + 1 {
        let name = letters(rng, name_len);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let value = (10_000 + rng.below(89_999)).to_string();
    let links: Vec<String> = std::iter::once(format!("VAR {} = {value}", names[0]))
        .chain((0..HOPS).map(|j| format!("VAR {} = VAR {} ", names[j + 1], names[j])))
        .collect();
    let mut sentences = vec![NOISE.to_string(); noises];
    let mut at = sample_distinct(rng, noises, links.len());
    at.sort_unstable();
    for (j, (p, link)) in at.into_iter().zip(&links).enumerate() {
        sentences.insert(p + j, link.clone());
    }
    (sentences.join(" ").replace(". \n", ".\n"), value, names)
}

/// The worked example: its template loses the question's last word and its line breaks, as
/// `generate_input_output(is_icl=True)` makes it; then its answer, and its variable names
/// replaced by fresh ones of the same length (`randomize_icl`).
fn example(count: &dyn Fn(&str) -> usize, rng: &mut Rng) -> String {
    let cut = TEMPLATE
        .find(" Answer: A")
        .expect("the template has an answer prefix");
    let question: Vec<&str> = TEMPLATE[..cut].split_whitespace().collect();
    let template = format!(
        "{}{}",
        question[..question.len() - 1].join(" "),
        &TEMPLATE[cut..]
    );
    let build = |noises: usize, rng: &mut Rng| {
        let (context, value, names) = chain(noises + HOPS, 3, rng);
        let num_v = (HOPS + 1).to_string();
        let input = crate::prompt::fill(
            &template,
            &[("context", &context), ("query", &value), ("num_v", &num_v)],
        );
        (input, names)
    };
    let seed = rng.next_u64();
    let fresh = |noises: usize| Rng::new(seed, &[noises as u64]);
    let noises = largest_fitting(1 << 12, |n| {
        let (input, names) = build(n, &mut fresh(n));
        count(&format!("{input} {}", names.join(" "))) <= EXAMPLE_TOKENS
    });
    let (input, names) = build(noises, &mut fresh(noises));
    let mut text = format!("{input} {}\n\n", names.join(" "));
    for name in &names {
        text = text.replace(name.as_str(), &letters(rng, name.len()));
    }
    text
}

/// A sample with `size + 4` noise sentences after a worked example.
pub(super) fn sample(size: usize, count: &dyn Fn(&str) -> usize, rng: &mut Rng) -> RulerSample {
    let example = example(count, rng);
    let (context, value, names) = chain(size + HOPS, 5, rng);
    let num_v = (HOPS + 1).to_string();
    let task = prompt(
        TEMPLATE,
        &[("context", &context), ("query", &value), ("num_v", &num_v)],
    );
    RulerSample {
        prompt: Prompt::new(
            format!(" {example}\n\n{}", &task.text[..task.question_at]),
            task.question(),
        ),
        answers: names,
    }
}
