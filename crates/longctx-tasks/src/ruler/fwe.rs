//! RULER's frequent words extraction (`freq_words_extraction.py`, α = 2): a text of random
//! six-letter "coded words" whose counts follow Zipf's law; the most frequent is replaced by
//! dots (noise), and the next three are asked.

use super::{prompt, RulerSample};
use crate::rng::Rng;

const TEMPLATE: &str = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text? Answer: According to the coded text above, the three most frequently appeared words are:";

const WORD_LEN: usize = 6;

/// ζ(2) = π²/6, the normalizer of Zipf(2) counts.
const ZETA_2: f64 = std::f64::consts::PI * std::f64::consts::PI / 6.0;

/// A text of about `size` coded words over a vocabulary of `length / 50` (RULER's default).
pub(super) fn sample(size: usize, length: usize, rng: &mut Rng) -> RulerSample {
    let vocab_size = (length / 50).max(4);
    let mut vocab = std::collections::BTreeSet::new();
    while vocab.len() < vocab_size {
        vocab.insert(
            (0..WORD_LEN)
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect::<String>(),
        );
    }
    let mut vocab: Vec<String> = vocab.into_iter().collect();
    rng.shuffle(&mut vocab);
    vocab[0] = "...".into();
    // The k-th word (from 1) appears ⌊size · k^-2 / ζ(2)⌋ times.
    let mut words: Vec<&str> = vocab
        .iter()
        .enumerate()
        .flat_map(|(k, w)| {
            let times = (size as f64 * ((k + 1) as f64).powi(-2) / ZETA_2) as usize;
            std::iter::repeat_n(w.as_str(), times)
        })
        .collect();
    rng.shuffle(&mut words);
    RulerSample {
        prompt: prompt(TEMPLATE, &[("context", &words.join(" "))]),
        answers: vocab[1..4].to_vec(),
    }
}
