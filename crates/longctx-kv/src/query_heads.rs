//! Token choice per query head over shared key/value rows, as the benchmark's H2O
//! (`h2o/utils_hh/modify_llama.py`) scores and masks each query head on its own after
//! `repeat_kv`. A key/value head stores the union of the rows its group of query heads still
//! reads (so the bytes held are what a real cache must keep); each query head carries its
//! own accumulated attention and which rows it reads.

use rayon::prelude::*;

use crate::attention::attend_read_rows;
use crate::rows::{top_k, TokenRows};
use crate::Result;

/// One query head's view of its key/value head's rows (same order).
struct View {
    scores: Vec<f32>,
    alive: Vec<bool>,
}

/// Every query head's view for one layer.
pub(crate) struct QueryHeadViews {
    group: usize,
    views: Vec<View>,
}

impl QueryHeadViews {
    /// Views of `rows` (one per key/value head) in which every query head reads every row
    /// and has scored none.
    pub fn new(rows: &[TokenRows], q_heads: usize) -> Self {
        let group = q_heads / rows.len();
        let views = (0..q_heads)
            .map(|h| {
                let n = rows[h / group].len();
                View {
                    scores: vec![0.0; n],
                    alive: vec![true; n],
                }
            })
            .collect();
        Self { group, views }
    }

    /// A new token, stored in every key/value head and read by every query head.
    pub fn push_row(&mut self) {
        for v in &mut self.views {
            v.scores.push(0.0);
            v.alive.push(true);
        }
    }

    /// One decoding query per head (`query` is `[q_heads · d]`) over the rows each head
    /// reads; adds each row's probability to the head's score and returns `[q_heads · d]`.
    pub fn attend(&mut self, query: &[f32], rows: &[TokenRows], d: usize) -> Result<Vec<f32>> {
        let group = self.group;
        let per_head: Vec<Vec<f32>> = self
            .views
            .par_iter_mut()
            .enumerate()
            .map(|(h, view)| {
                let read: Vec<usize> = (0..view.alive.len()).filter(|&r| view.alive[r]).collect();
                let mut received = vec![0f32; read.len()];
                let out = attend_read_rows(
                    &query[h * d..(h + 1) * d],
                    &rows[h / group],
                    &read,
                    &mut received,
                )?;
                for (&r, p) in read.iter().zip(received) {
                    view.scores[r] += p;
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(per_head.concat())
    }

    /// Each query head keeps the last `recent` rows and the `heavy` highest-scored of the
    /// others it still reads, once it reads more than both together.
    pub fn choose(&mut self, heavy: usize, recent: usize) {
        for view in &mut self.views {
            let n = view.alive.len();
            if view.alive.iter().filter(|a| **a).count() <= heavy + recent {
                continue;
            }
            let older = n.saturating_sub(recent);
            let candidates: Vec<usize> = (0..older).filter(|&r| view.alive[r]).collect();
            let scores: Vec<f32> = candidates.iter().map(|&r| view.scores[r]).collect();
            let mut alive = vec![false; n];
            for i in top_k(&scores, heavy) {
                alive[candidates[i]] = true;
            }
            alive[older..].iter_mut().for_each(|a| *a = true);
            view.alive = alive;
        }
    }

    /// Which rows of key/value head `g` some query head of its group still reads.
    pub fn read_by_group(&self, g: usize) -> Vec<bool> {
        let group = &self.views[g * self.group..(g + 1) * self.group];
        (0..group[0].alive.len())
            .map(|r| group.iter().any(|v| v.alive[r]))
            .collect()
    }

    /// Drop the rows of key/value head `g` whose flag is unset from its query heads' views,
    /// as [`TokenRows::retain`] drops them from the head.
    pub fn retain(&mut self, g: usize, keep: &[bool]) {
        for view in &mut self.views[g * self.group..(g + 1) * self.group] {
            let mut flags = keep.iter();
            view.scores.retain(|_| *flags.next().unwrap_or(&false));
            let mut flags = keep.iter();
            view.alive.retain(|_| *flags.next().unwrap_or(&false));
        }
    }

    /// Indices (into its key/value head's rows) of the rows query head `h` reads.
    pub fn read_rows(&self, h: usize) -> Vec<usize> {
        let alive = &self.views[h].alive;
        (0..alive.len()).filter(|&r| alive[r]).collect()
    }

    /// Bytes of the views: a score and a flag per row and query head.
    pub fn bytes(&self) -> usize {
        self.views
            .iter()
            .map(|v| 4 * v.scores.capacity() + v.alive.capacity())
            .sum()
    }
}
