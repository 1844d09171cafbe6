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

/// The LCS table of `a` (rows) against `b` (columns) without holding it whole: every
/// `step`-th row is kept, and the rows a traceback reads are recomputed one block at a time.
/// Memory is about `2·√rows·(columns + 1)` cells where the whole table needs
/// `rows·columns`; the values are exactly the table's.
struct CheckpointedTable<'s, 'a> {
    a: &'s [&'a str],
    b: &'s [&'a str],
    step: usize,
    checkpoints: Vec<Vec<u32>>,
    /// Rows `block_start..=block_start + step` (as many as exist).
    block: Vec<Vec<u32>>,
    block_start: usize,
}

impl<'s, 'a> CheckpointedTable<'s, 'a> {
    fn new(a: &'s [&'a str], b: &'s [&'a str]) -> Self {
        let step = ((a.len() as f64).sqrt() as usize).max(1);
        let mut table = Self {
            a,
            b,
            step,
            checkpoints: vec![vec![0; b.len() + 1]],
            block: Vec::new(),
            block_start: usize::MAX,
        };
        let mut row = table.checkpoints[0].clone();
        for i in 1..=a.len() {
            row = table.next_row(&row, i);
            if i % step == 0 {
                table.checkpoints.push(row.clone());
            }
        }
        table
    }

    /// Row `i` from row `i - 1`: the package's recurrence.
    fn next_row(&self, previous: &[u32], i: usize) -> Vec<u32> {
        let mut row = vec![0u32; self.b.len() + 1];
        for j in 1..=self.b.len() {
            row[j] = if self.a[i - 1] == self.b[j - 1] {
                previous[j - 1] + 1
            } else {
                previous[j].max(row[j - 1])
            };
        }
        row
    }

    /// `table[i][j]`; reads are expected to move towards row 0, as a traceback does.
    fn get(&mut self, i: usize, j: usize) -> u32 {
        if !(self.block_start..=self.block_start.saturating_add(self.step)).contains(&i) {
            // A block that also holds row i - 1, read next by the traceback.
            let start = i.saturating_sub(1) / self.step * self.step;
            let mut rows = vec![self.checkpoints[start / self.step].clone()];
            for r in start + 1..=(start + self.step).min(self.a.len()) {
                let next = self.next_row(&rows[rows.len() - 1], r);
                rows.push(next);
            }
            self.block = rows;
            self.block_start = start;
        }
        self.block[i - self.block_start][j]
    }
}

/// Words of one LCS of `x` and `y`, recovered the way `_recon_lcs` walks its table (ties go
/// to the column before). The table is held checkpointed along the longer of the two, so a
/// multi-megabyte line costs memory about the square root of the table's.
fn lcs_words<'a>(x: &[&'a str], y: &[&'a str]) -> Vec<&'a str> {
    let transposed = y.len() > x.len();
    let mut table = if transposed {
        CheckpointedTable::new(y, x)
    } else {
        CheckpointedTable::new(x, y)
    };
    // The recurrence is symmetric, so table[i][j] is the transposed table's [j][i].
    let mut cell = |i: usize, j: usize| {
        if transposed {
            table.get(j, i)
        } else {
            table.get(i, j)
        }
    };
    let (mut i, mut j) = (x.len(), y.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            out.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if cell(i - 1, j) > cell(i, j - 1) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table and `_recon_lcs`'s walk, as the package holds it: the reference the
    /// checkpointed table must follow exactly, ties included.
    fn lcs_words_whole<'a>(x: &[&'a str], y: &[&'a str]) -> Vec<&'a str> {
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

    #[test]
    fn the_checkpointed_walk_is_the_whole_tables() {
        let vocabulary = ["a", "b", "c", "d"];
        let mut state = 7u64;
        let mut word = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            vocabulary[(state >> 33) as usize % vocabulary.len()]
        };
        for (n, m) in [
            (0, 5),
            (1, 1),
            (3, 40),
            (40, 3),
            (17, 17),
            (100, 37),
            (9, 250),
        ] {
            let x: Vec<&str> = (0..n).map(|_| word()).collect();
            let y: Vec<&str> = (0..m).map(|_| word()).collect();
            assert_eq!(lcs_words(&x, &y), lcs_words_whole(&x, &y), "{n}x{m}");
        }
    }

    /// A five-megabyte prediction against a short answer: scored, in bounded memory.
    #[test]
    fn a_huge_line_is_scored() {
        let huge = "the cat sat on a mat ".repeat(250_000);
        let f = rouge_l_f(&huge, "the cat sat on the mat");
        assert!(f > 0.0 && f < 1.0, "{f}");
    }
}
