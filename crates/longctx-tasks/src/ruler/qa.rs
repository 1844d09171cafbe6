//! RULER's question answering (`qa.py`): a SQuAD or HotpotQA question with its documents
//! among others (the same article's first for SQuAD, then random ones), numbered.

use super::data::QaSet;
use super::{prompt, RulerSample};
use crate::rng::Rng;

const TEMPLATE: &str = "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query} Answer:";

/// Question `index` (of a seeded order) with `size` documents (at least its own).
pub(super) fn sample(
    set: &QaSet,
    size: usize,
    seed: u64,
    index: usize,
    rng: &mut Rng,
) -> RulerSample {
    let item = &set.items[Rng::new(seed, &[0x5141, index as u64]).below(set.items.len())];
    let wanted = size.max(item.docs.len()).min(set.docs.len());
    let mut chosen = item.docs.clone();
    let mut related = item.related.clone();
    rng.shuffle(&mut related);
    chosen.extend(related.into_iter().take(wanted - chosen.len()));
    // Then random other documents, drawn without repeats.
    let mut taken: std::collections::HashSet<usize> = chosen.iter().copied().collect();
    while chosen.len() < wanted {
        let d = rng.below(set.docs.len());
        if taken.insert(d) {
            chosen.push(d);
        }
    }
    rng.shuffle(&mut chosen);
    let context = chosen
        .iter()
        .enumerate()
        .map(|(i, &d)| format!("Document {}:\n{}", i + 1, set.docs[d]))
        .collect::<Vec<_>>()
        .join("\n\n");
    RulerSample {
        prompt: prompt(TEMPLATE, &[("context", &context), ("query", &item.query)]),
        answers: item.answers.clone(),
    }
}
