//! DuoAttention's calibration prompts: several passkeys hidden in a long text, then asked
//! for one after another, as its `MultiplePasskeyRetrievalDataset` builds them (needle
//! "Remember this sequence of words, it's the {ordinal} passkey to the vault: ", question
//! "Based on the content of the book, what is the {ordinal} passkey to the vault?\nPasskey: ",
//! passkeys of NATO-alphabet words, depths drawn from 20 steps between 0.1 and 0.9, context
//! lengths evenly spread). What differs: the text is the Paul Graham essays taken from the
//! last file backwards (DuoAttention reads BookSum, which cannot be fetched here), so that
//! it shares nothing with the needle task's haystack, which reads them from the first file
//! on (the 49 essays' last one, 13,628 words, starts past 98,000 words); positions are
//! counted in words, not tokens; no padding to a multiple of 16.

use crate::needle::{words, Haystack};
use crate::rng::Rng;

/// The words a passkey is drawn from (DuoAttention's `PASSKEY_ALPHABET`).
const ALPHABET: [&str; 26] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
];

/// Ordinals naming the passkeys.
const ORDINALS: [&str; 20] = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
];

/// Depth steps passkeys are placed at.
const DEPTH_STEPS: usize = 20;

/// How many prompts, how long, with how many passkeys of how many words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasskeyCalibration {
    /// Prompts, their text lengths evenly spread from `min_words` to `max_words`.
    pub prompts: usize,
    /// Shortest text, in words.
    pub min_words: usize,
    /// Longest text, in words.
    pub max_words: usize,
    /// Passkeys per prompt (at most 20, DuoAttention's 10).
    pub passkeys: usize,
    /// Words per passkey (DuoAttention's 32).
    pub passkey_words: usize,
    /// Seed of the passkeys and their depths.
    pub seed: u64,
}

/// One calibration prompt: the context holding the passkeys, then the questions each
/// followed by its passkey (what the calibration scores, as DuoAttention's labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationPrompt {
    /// The book with its passkeys.
    pub context: String,
    /// Every question with its passkey, in order.
    pub answers: String,
}

impl PasskeyCalibration {
    /// Refuse settings that build nothing, or more passkeys than there are ordinals.
    pub fn validate(&self) -> Result<(), String> {
        if self.prompts == 0 || self.passkey_words == 0 || self.min_words == 0 {
            return Err("prompts, passkey words and lengths must be positive".into());
        }
        if self.passkeys == 0 || self.passkeys > ORDINALS.len() {
            return Err(format!(
                "passkeys={} must be between 1 and {}",
                self.passkeys,
                ORDINALS.len()
            ));
        }
        if self.max_words < self.min_words {
            return Err(format!(
                "max_words={} is below min_words={}",
                self.max_words, self.min_words
            ));
        }
        Ok(())
    }

    /// The prompts, their text read from `essays`' last file backwards.
    pub fn prompts(&self, essays: &Haystack) -> Vec<CalibrationPrompt> {
        let backwards = Haystack::from_texts(essays.texts().iter().rev().cloned().collect());
        let book = backwards.background(self.max_words);
        let book = words(&book);
        (0..self.prompts)
            .map(|i| {
                let length = match self.prompts {
                    1 => self.max_words,
                    n => self.min_words + (self.max_words - self.min_words) * i / (n - 1),
                };
                self.prompt(&book[..length.min(book.len())], i as u64)
            })
            .collect()
    }

    fn prompt(&self, book: &[&str], index: u64) -> CalibrationPrompt {
        let mut rng = Rng::new(self.seed, &[index]);
        let mut steps: Vec<usize> = (0..DEPTH_STEPS).collect();
        rng.shuffle(&mut steps);
        let mut depths: Vec<f64> = steps[..self.passkeys]
            .iter()
            .map(|&s| 0.1 + 0.8 * s as f64 / (DEPTH_STEPS - 1) as f64)
            .collect();
        depths.sort_by(f64::total_cmp);
        let keys: Vec<String> = (0..self.passkeys)
            .map(|_| {
                let words: Vec<&str> = (0..self.passkey_words)
                    .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                    .collect();
                words.join(" ")
            })
            .collect();
        let mut context = String::from("This is a very long story book: <book> ");
        let mut from = 0;
        for (i, (depth, key)) in depths.iter().zip(&keys).enumerate() {
            let at = (book.len() as f64 * depth) as usize;
            context += &book[from..at].concat();
            context += &format!(
                "\n\nRemember this sequence of words, it's the {} passkey to the vault: {key}\n\n",
                ORDINALS[i]
            );
            from = at;
        }
        context += &book[from..].concat();
        context += " </book>.\n\n";
        let answers = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                format!(
                    "Based on the content of the book, what is the {} passkey to the vault?\nPasskey: {key}\n\n",
                    ORDINALS[i]
                )
            })
            .collect();
        CalibrationPrompt { context, answers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn essays() -> Haystack {
        Haystack::from_texts(
            (0..4)
                .map(|e| {
                    (0..500)
                        .map(|w| format!("essay{e}word{w} "))
                        .collect::<String>()
                })
                .collect(),
        )
    }

    #[test]
    fn prompts_hide_each_passkey_once_and_ask_for_all_in_order() {
        let calibration = PasskeyCalibration {
            prompts: 3,
            min_words: 200,
            max_words: 600,
            passkeys: 4,
            passkey_words: 5,
            seed: 7,
        };
        let prompts = calibration.prompts(&essays());
        assert_eq!(prompts.len(), 3);
        for p in &prompts {
            let asked: Vec<&str> = p
                .answers
                .split("Passkey: ")
                .skip(1)
                .map(|rest| rest.split("\n\n").next().unwrap())
                .collect();
            assert_eq!(asked.len(), 4);
            for (i, key) in asked.iter().enumerate() {
                assert_eq!(key.split(' ').count(), 5);
                assert!(key.split(' ').all(|w| ALPHABET.contains(&w)));
                assert_eq!(p.context.matches(*key).count(), 1);
                assert!(p.context.contains(&format!("the {} passkey", ORDINALS[i])));
            }
        }
        // Lengths spread evenly, read from the last essay backwards.
        let text_words = |p: &CalibrationPrompt| p.context.matches("essay").count();
        assert_eq!(
            prompts.iter().map(text_words).collect::<Vec<_>>(),
            [200, 400, 600]
        );
        assert!(prompts[0].context.contains("essay3word0 "));
        assert!(!prompts[2].context.contains("essay0"));
        assert_eq!(prompts, calibration.prompts(&essays()));
        let more = PasskeyCalibration {
            passkeys: 21,
            ..calibration
        };
        assert!(more.validate().is_err());
    }
}
