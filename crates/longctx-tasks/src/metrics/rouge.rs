//! ROUGE-L F as the `rouge` 1.0.1 Python package computes it through
//! `Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["f"]`, which LongBench calls.
//!
//! Its semantics, kept here: texts are split into "sentences" on '.', empty pieces dropped,
//! whitespace inside each collapsed; words are split on single spaces; word counts and the
//! union of LCS words are *sets* (the package's default `exclusive=True`); F carries the
//! package's 1e-8 in the denominator. An error inside the package (it raises on an empty
//! hypothesis or reference) makes LongBench score 0.

use std::collections::HashSet;

use super::text::py_split_whitespace;

/// Sentences as the package builds them.
fn sentences(text: &str) -> Vec<String> {
    text.split('.')
        .filter(|s| !s.is_empty())
        .map(|s| py_split_whitespace(s).join(" "))
        .collect()
}

/// `_split_into_words`: every sentence split on single spaces (so "" yields one empty word).
fn words(sentences: &[String]) -> Vec<&str> {
    sentences.iter().flat_map(|s| s.split(' ')).collect()
}

/// Words of one LCS of `x` and `y`, recovered the way `_recon_lcs` walks its table.
fn lcs_words<'a>(x: &[&'a str], y: &[&'a str]) -> Vec<&'a str> {
    let (n, m) = (x.len(), y.len());
    let mut table = vec![vec![0u32; m + 1]; n + 1];
    for i in 1..=n {
        for j in 1..=m {
            table[i][j] = if x[i - 1] == y[j - 1] {
                table[i - 1][j - 1] + 1
            } else {
                table[i - 1][j].max(table[i][j - 1])
            };
        }
    }
    let (mut i, mut j) = (n, m);
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            out.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[i - 1][j] > table[i][j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    out
}

/// ROUGE-L F of `prediction` against `ground_truth`; 0 where the package would raise.
pub fn rouge_l_f(prediction: &str, ground_truth: &str) -> f64 {
    let hyp = sentences(prediction);
    let refs = sentences(ground_truth);
    if hyp.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let m = words(&refs).into_iter().collect::<HashSet<_>>().len();
    let n = words(&hyp).into_iter().collect::<HashSet<_>>().len();
    let mut union: HashSet<&str> = HashSet::new();
    for r in &refs {
        let reference_words: Vec<&str> = r.split(' ').collect();
        for h in &hyp {
            let hyp_words: Vec<&str> = h.split(' ').collect();
            union.extend(lcs_words(&reference_words, &hyp_words));
        }
    }
    let llcs = union.len() as f64;
    let (r_lcs, p_lcs) = (llcs / m as f64, llcs / n as f64);
    2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))
}
