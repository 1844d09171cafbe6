use candle_core::{Device, Tensor};

use crate::Result;

/// The kept tokens of one key/value head in f32 rows, with each token's absolute position
/// and an accumulated score: what token-dropping policies hold.
///
/// Eviction compacts rows in place, so storage never outgrows the capacity set for the
/// policy's budget, and [`TokenRows::set_capacity`] really returns memory when a
/// post-prefill policy shrinks to its budget.
#[derive(Debug, Clone)]
pub(crate) struct TokenRows {
    width: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    positions: Vec<u32>,
    scores: Vec<f32>,
}

impl TokenRows {
    /// No rows of `width` values yet, nothing allocated.
    pub fn new(width: usize) -> Self {
        Self {
            width,
            keys: Vec::new(),
            values: Vec::new(),
            positions: Vec::new(),
            scores: Vec::new(),
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Tokens that fit without growing.
    pub fn capacity(&self) -> usize {
        self.positions.capacity()
    }

    /// Room for exactly `rows` tokens (never less than those held): grows or frees memory.
    pub fn set_capacity(&mut self, rows: usize) {
        fn fit<T>(v: &mut Vec<T>, target: usize) {
            let target = target.max(v.len());
            if v.capacity() > target {
                v.shrink_to(target);
            } else {
                v.reserve_exact(target - v.len());
            }
        }
        fit(&mut self.keys, rows * self.width);
        fit(&mut self.values, rows * self.width);
        fit(&mut self.positions, rows);
        fit(&mut self.scores, rows);
    }

    /// Room for `extra` more tokens without growing past them (no doubling).
    pub fn reserve_exact(&mut self, extra: usize) {
        self.keys.reserve_exact(extra * self.width);
        self.values.reserve_exact(extra * self.width);
        self.positions.reserve_exact(extra);
        self.scores.reserve_exact(extra);
    }

    /// Append one token.
    pub fn push(&mut self, key: &[f32], value: &[f32], position: usize, score: f32) {
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
        self.positions.push(position as u32);
        self.scores.push(score);
    }

    /// Keep the tokens whose flag is set (`keep.len()` equals the tokens held), in order.
    pub fn retain(&mut self, keep: &[bool]) {
        let w = self.width;
        let mut to = 0;
        for (from, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            if from != to {
                self.keys.copy_within(from * w..(from + 1) * w, to * w);
                self.values.copy_within(from * w..(from + 1) * w, to * w);
                self.positions[to] = self.positions[from];
                self.scores[to] = self.scores[from];
            }
            to += 1;
        }
        self.keys.truncate(to * w);
        self.values.truncate(to * w);
        self.positions.truncate(to);
        self.scores.truncate(to);
    }

    /// Key rows, row-major.
    pub fn keys(&self) -> &[f32] {
        &self.keys
    }

    /// Value rows, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Absolute position of each kept token.
    pub fn positions(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.positions.iter().map(|&p| p as usize)
    }

    /// Each kept token's score (accumulated attention, or the latest attention).
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Scores, to update in place.
    pub fn scores_mut(&mut self) -> &mut [f32] {
        &mut self.scores
    }

    /// Bytes allocated: key and value rows plus the per-token bookkeeping.
    pub fn bytes(&self) -> usize {
        4 * (self.keys.capacity()
            + self.values.capacity()
            + self.positions.capacity()
            + self.scores.capacity())
    }

    /// Forget every token, keeping allocations.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.positions.clear();
        self.scores.clear();
    }
}

/// Per-head token rows, `[head][token][channel]`: a chunk's keys or values as plain vectors.
pub(crate) type HeadRows = Vec<Vec<Vec<f32>>>;

/// Keys and values of several heads' rows as `[heads, n, width]` tensors (every head holds
/// the same number of tokens).
pub(crate) fn stack_heads(heads: &[TokenRows], device: &Device) -> Result<(Tensor, Tensor)> {
    let (n, w) = (heads[0].len(), heads[0].width);
    let keys: Vec<f32> = heads.iter().flat_map(|h| h.keys.iter().copied()).collect();
    let values: Vec<f32> = heads
        .iter()
        .flat_map(|h| h.values.iter().copied())
        .collect();
    Ok((
        Tensor::from_vec(keys, (heads.len(), n, w), device)?,
        Tensor::from_vec(values, (heads.len(), n, w), device)?,
    ))
}

/// Indices of the `k` largest scores (all of them when fewer), in ascending index order.
/// Ties go to the earlier token, so selection is deterministic.
pub(crate) fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_compacts_in_order_and_capacity_really_shrinks() {
        let mut rows = TokenRows::new(2);
        rows.set_capacity(10);
        for i in 0..10 {
            rows.push(&[i as f32, 0.0], &[0.0, i as f32], i, i as f32);
        }
        rows.retain(&[
            true, false, false, true, false, false, false, false, true, true,
        ]);
        assert_eq!(rows.positions().collect::<Vec<_>>(), vec![0, 3, 8, 9]);
        assert_eq!(rows.keys(), &[0.0, 0.0, 3.0, 0.0, 8.0, 0.0, 9.0, 0.0]);
        assert_eq!(rows.scores(), &[0.0, 3.0, 8.0, 9.0]);
        rows.set_capacity(4);
        assert_eq!(rows.bytes(), 4 * (8 + 8 + 4 + 4));
    }

    #[test]
    fn top_k_prefers_high_scores_then_early_tokens() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.9, 0.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[0.1, 0.5], 5), vec![0, 1]);
    }
}
