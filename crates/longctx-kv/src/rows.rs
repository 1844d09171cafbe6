use candle_core::{Device, Tensor};
use half::f16;

use crate::tiled::KvElement;
use crate::{KvPrecision, Result};

/// Key or value elements in the cache's precision.
#[derive(Debug, Clone)]
pub(crate) enum Elements {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// Stored rows, read in their precision: what the attention kernels take.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowsView<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl<'a> RowsView<'a> {
    /// Rows `range` of `width` elements each.
    pub(crate) fn rows(self, range: std::ops::Range<usize>, width: usize) -> Self {
        let elements = range.start * width..range.end * width;
        match self {
            RowsView::F16(v) => RowsView::F16(&v[elements]),
            RowsView::F32(v) => RowsView::F32(&v[elements]),
        }
    }
}

/// Apply `$body` to the vector inside an [`Elements`], whatever its type.
macro_rules! each {
    ($elements:expr, $v:ident => $body:expr) => {
        match $elements {
            Elements::F16($v) => $body,
            Elements::F32($v) => $body,
        }
    };
}

impl Elements {
    fn new(precision: KvPrecision) -> Self {
        match precision {
            KvPrecision::F16 => Elements::F16(Vec::new()),
            KvPrecision::F32 => Elements::F32(Vec::new()),
        }
    }

    fn push(&mut self, row: &[f32]) {
        match self {
            Elements::F16(v) => v.extend(row.iter().map(|&x| f16::from_f32(x))),
            Elements::F32(v) => v.extend_from_slice(row),
        }
    }

    fn fit(&mut self, target: usize) {
        each!(self, v => {
            let target = target.max(v.len());
            if v.capacity() > target {
                v.shrink_to(target);
            } else {
                v.reserve_exact(target - v.len());
            }
        })
    }

    fn reserve_exact(&mut self, extra: usize) {
        each!(self, v => v.reserve_exact(extra))
    }

    fn copy_within(&mut self, from: std::ops::Range<usize>, to: usize) {
        each!(self, v => v.copy_within(from, to))
    }

    fn truncate(&mut self, len: usize) {
        each!(self, v => v.truncate(len))
    }

    fn bytes(&self) -> usize {
        match self {
            Elements::F16(v) => 2 * v.capacity(),
            Elements::F32(v) => 4 * v.capacity(),
        }
    }

    /// The elements, read in their precision.
    pub(crate) fn view(&self) -> RowsView<'_> {
        match self {
            Elements::F16(v) => RowsView::F16(v),
            Elements::F32(v) => RowsView::F32(v),
        }
    }
}

impl RowsView<'_> {
    /// The rows as a tensor of `shape`, in their precision.
    pub fn tensor(&self, shape: (usize, usize, usize), device: &Device) -> Result<Tensor> {
        Ok(match self {
            RowsView::F16(v) => Tensor::from_slice(v, shape, device)?,
            RowsView::F32(v) => Tensor::from_slice(v, shape, device)?,
        })
    }

    /// Every element widened to f32 (what a scorer reads).
    pub(crate) fn to_f32(self) -> Vec<f32> {
        match self {
            RowsView::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            RowsView::F32(v) => v.to_vec(),
        }
    }

    /// Rows `rows` (of `width` elements each), one after another, in their precision.
    pub(crate) fn gather(&self, rows: &[usize], width: usize) -> Elements {
        fn pick<E: Copy>(v: &[E], rows: &[usize], width: usize) -> Vec<E> {
            let mut out = Vec::with_capacity(rows.len() * width);
            for &j in rows {
                out.extend_from_slice(&v[j * width..(j + 1) * width]);
            }
            out
        }
        match self {
            RowsView::F16(v) => Elements::F16(pick(v, rows, width)),
            RowsView::F32(v) => Elements::F32(pick(v, rows, width)),
        }
    }
}

/// The element types rows may be held in, each read from a view of its own type.
pub(crate) trait ViewElement: KvElement {
    /// The view's elements, when they are of this type.
    fn of(view: RowsView<'_>) -> Option<&[Self]>;
}

impl ViewElement for f16 {
    fn of(view: RowsView<'_>) -> Option<&[f16]> {
        match view {
            RowsView::F16(v) => Some(v),
            RowsView::F32(_) => None,
        }
    }
}

impl ViewElement for f32 {
    fn of(view: RowsView<'_>) -> Option<&[f32]> {
        match view {
            RowsView::F32(v) => Some(v),
            RowsView::F16(_) => None,
        }
    }
}

/// The kept tokens of one key/value head, in f16 or f32 rows, with each token's absolute
/// position and an accumulated score: what token-dropping policies hold.
///
/// Eviction compacts rows in place, so storage never outgrows the capacity set for the
/// policy's budget, and [`TokenRows::set_capacity`] really returns memory when a
/// post-prefill policy shrinks to its budget.
#[derive(Debug, Clone)]
pub(crate) struct TokenRows {
    width: usize,
    keys: Elements,
    values: Elements,
    positions: Vec<u32>,
    scores: Vec<f32>,
}

impl TokenRows {
    /// No rows of `width` values yet, nothing allocated.
    pub fn new(width: usize, precision: KvPrecision) -> Self {
        Self {
            width,
            keys: Elements::new(precision),
            values: Elements::new(precision),
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
        self.keys.fit(rows * self.width);
        self.values.fit(rows * self.width);
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

    /// Append one token (rounded to the rows' precision).
    pub fn push(&mut self, key: &[f32], value: &[f32], position: usize, score: f32) {
        self.keys.push(key);
        self.values.push(value);
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

    /// Key rows, row-major, in their precision.
    pub fn keys(&self) -> RowsView<'_> {
        self.keys.view()
    }

    /// Value rows, row-major, in their precision.
    pub fn values(&self) -> RowsView<'_> {
        self.values.view()
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
        self.keys.bytes()
            + self.values.bytes()
            + 4 * (self.positions.capacity() + self.scores.capacity())
    }

    /// Forget every token, keeping allocations.
    pub fn clear(&mut self) {
        self.keys.truncate(0);
        self.values.truncate(0);
        self.positions.clear();
        self.scores.clear();
    }
}

/// Per-head token rows, `[head][token][channel]`: a chunk's keys or values as plain vectors.
pub(crate) type HeadRows = Vec<Vec<Vec<f32>>>;

/// Keys and values of several heads' rows as `[heads, n, width]` tensors in their
/// precision (every head holds the same number of tokens).
pub(crate) fn stack_heads(heads: &[TokenRows], device: &Device) -> Result<(Tensor, Tensor)> {
    let (n, w) = (heads[0].len(), heads[0].width);
    let stack = |view: fn(&TokenRows) -> RowsView<'_>| -> Result<Tensor> {
        let per_head: Vec<Tensor> = heads
            .iter()
            .map(|h| view(h).tensor((1, n, w), device))
            .collect::<Result<_>>()?;
        Ok(Tensor::cat(&per_head, 0)?)
    };
    Ok((stack(TokenRows::keys)?, stack(TokenRows::values)?))
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

    /// Gathered elements as f32.
    fn widened(elements: Elements) -> Vec<f32> {
        match elements {
            Elements::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Elements::F32(v) => v,
        }
    }

    #[test]
    fn retain_compacts_in_order_and_capacity_really_shrinks() {
        let mut rows = TokenRows::new(2, KvPrecision::F32);
        rows.set_capacity(10);
        for i in 0..10 {
            rows.push(&[i as f32, 0.0], &[0.0, i as f32], i, i as f32);
        }
        rows.retain(&[
            true, false, false, true, false, false, false, false, true, true,
        ]);
        assert_eq!(rows.positions().collect::<Vec<_>>(), vec![0, 3, 8, 9]);
        let kept = widened(rows.keys().gather(&[0, 1, 2, 3], 2));
        assert_eq!(kept, vec![0.0, 0.0, 3.0, 0.0, 8.0, 0.0, 9.0, 0.0]);
        assert_eq!(rows.scores(), &[0.0, 3.0, 8.0, 9.0]);
        rows.set_capacity(4);
        assert_eq!(rows.bytes(), 4 * (8 + 8 + 4 + 4));
    }

    /// f16 rows hold each element in 2 bytes, rounded as f16 rounds.
    #[test]
    fn f16_rows_take_half_the_bytes() {
        let mut rows = TokenRows::new(2, KvPrecision::F16);
        rows.set_capacity(4);
        rows.push(&[1.0 / 3.0, 2.0], &[0.5, -1.0], 0, 0.0);
        assert_eq!(rows.bytes(), 2 * (8 + 8) + 4 * (4 + 4));
        let third = f16::from_f32(1.0 / 3.0).to_f32();
        assert_eq!(widened(rows.keys().gather(&[0], 2)), vec![third, 2.0]);
        assert_ne!(third, 1.0 / 3.0);
    }

    #[test]
    fn top_k_prefers_high_scores_then_early_tokens() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.9, 0.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[0.1, 0.5], 5), vec![0, 1]);
    }
}
