//! DuoAttention (Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with
//! Retrieval and Streaming Heads", ICLR 2025): a few key/value heads ("retrieval heads")
//! need the whole context, the others ("streaming heads") only the first tokens (sinks)
//! and a recent window. Which heads are which is a property of the model, found once by a
//! calibration and kept as a [`HeadPattern`]: one score per layer and key/value head, as
//! DuoAttention publishes its patterns (`full_attention_heads.tsv`).
//!
//! The original learns a gate per head by gradient descent on synthetic passkey prompts
//! (distilling the last hidden states of the answers). This engine has no training, so
//! [`DuoCalibration`] measures directly what the gates are trained to predict: how far each
//! head's attention output moves, on the answer tokens of passkey prompts, when the head
//! reads only its sinks and recent window instead of the whole context. A head scores the
//! relative distance `‖o_full − o_stream‖ / ‖o_full‖`, averaged over its query heads and
//! the scored tokens; the lowest-scoring heads become streaming heads. The prompts
//! themselves are built above this crate (it knows no text).
//!
//! Applied as kvpress's `DuoAttentionPress` applies it: the prompt is attended in full,
//! then each streaming head keeps its sinks and recent window and the retrieval heads keep
//! everything; decoded tokens are kept (the original's streaming heads also slide their
//! window while decoding, which changes nothing for answers shorter than the window).

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::cache::Reservation;
use crate::tiled::{lanes_dot, lanes_max};
use crate::{FullCache, KvCache, KvError, KvPrecision, KvShape, Result, RopeTable};

/// Settings of DuoAttention's streaming heads (DuoAttention's released patterns use 64
/// sinks and a window of 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuoAttention {
    /// Leading tokens a streaming head keeps.
    pub sinks: usize,
    /// Latest tokens a streaming head keeps.
    pub recent: usize,
}

impl DuoAttention {
    /// Settings that cannot run are refused.
    pub fn validate(&self) -> Result<()> {
        if self.recent == 0 {
            return Err(KvError::Setting(
                "recent must be positive (the window a streaming head keeps; DuoAttention uses 256)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Which of a streaming head's rows (at ascending `positions`) it keeps: the sinks and
    /// the last `recent` rows.
    pub(crate) fn streaming_keep(&self, positions: impl Iterator<Item = usize>) -> Vec<bool> {
        let positions: Vec<usize> = positions.collect();
        let window_from = positions.len().saturating_sub(self.recent);
        positions
            .iter()
            .enumerate()
            .map(|(i, &p)| p < self.sinks || i >= window_from)
            .collect()
    }
}

/// How much each key/value head of each layer needs the whole context: higher scores mark
/// retrieval heads. Read and written in DuoAttention's `full_attention_heads.tsv` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPattern {
    layers: usize,
    kv_heads: usize,
    /// Row-major `[layer][kv_head]`.
    scores: Vec<f64>,
}

impl HeadPattern {
    /// A pattern of `layers × kv_heads` finite scores, row-major.
    pub fn new(layers: usize, kv_heads: usize, scores: Vec<f64>) -> Result<Self> {
        if layers == 0 || kv_heads == 0 || scores.len() != layers * kv_heads {
            return Err(KvError::Invalid(format!(
                "a head pattern of {layers} layers × {kv_heads} heads needs {} scores, not {}",
                layers * kv_heads,
                scores.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(KvError::Invalid(format!(
                "head pattern score of layer {} head {} is {}: scores must be finite",
                i / kv_heads,
                i % kv_heads,
                scores[i]
            )));
        }
        Ok(Self {
            layers,
            kv_heads,
            scores,
        })
    }

    /// Layers covered.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Key/value heads per layer.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// The score of one head.
    pub fn score(&self, layer: usize, kv_head: usize) -> f64 {
        self.scores[layer * self.kv_heads + kv_head]
    }

    /// One line per layer, the heads' scores tab-separated (DuoAttention's file layout).
    pub fn to_tsv(&self) -> String {
        self.scores
            .chunks(self.kv_heads)
            .map(|row| {
                let cells: Vec<String> = row.iter().map(|s| format!("{s:.8}")).collect();
                cells.join("\t") + "\n"
            })
            .collect()
    }

    /// Parse [`HeadPattern::to_tsv`]'s layout; every line must hold the same number of
    /// finite numbers.
    pub fn from_tsv(text: &str) -> Result<Self> {
        let mut scores = Vec::new();
        let mut width = None;
        let mut layers = 0;
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let row: Vec<f64> = line
                .split_whitespace()
                .map(|cell| {
                    cell.parse().map_err(|_| {
                        KvError::Invalid(format!(
                            "head pattern line {}: \"{cell}\" is not a number",
                            i + 1
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            if *width.get_or_insert(row.len()) != row.len() {
                return Err(KvError::Invalid(format!(
                    "head pattern line {} has {} scores, the first has {}",
                    i + 1,
                    row.len(),
                    width.unwrap_or(0)
                )));
            }
            scores.extend(row);
            layers += 1;
        }
        Self::new(layers, width.unwrap_or(0), scores)
    }

    /// Which heads stream (`[layer][kv_head]`): the `round(heads × share)` lowest scores
    /// over every layer, as kvpress's `DuoAttentionPress` chooses (ties to the earlier head).
    pub fn streaming(&self, share: f64) -> Vec<Vec<bool>> {
        let count = ((self.scores.len() as f64 * share).round() as usize).min(self.scores.len());
        let mut order: Vec<usize> = (0..self.scores.len()).collect();
        order.sort_by(|&a, &b| self.scores[a].total_cmp(&self.scores[b]).then(a.cmp(&b)));
        let mut streaming = vec![vec![false; self.kv_heads]; self.layers];
        for &i in &order[..count] {
            streaming[i / self.kv_heads][i % self.kv_heads] = true;
        }
        streaming
    }
}

/// The running sums of a calibration: what [`DuoCalibration`] adds to and its caller
/// reads, shared between them.
#[derive(Debug, Clone)]
pub struct DuoTally {
    /// Positions from which queries are scored in the sequence being fed (the answers).
    pub scored_from: usize,
    /// Summed relative output distances, `[layer][kv_head]`.
    sums: Vec<Vec<f64>>,
    /// Scored (query head, token) pairs per layer and key/value head.
    counts: Vec<Vec<u64>>,
}

impl Default for DuoTally {
    /// Nothing scored, nothing to score until `scored_from` is set.
    fn default() -> Self {
        Self {
            scored_from: usize::MAX,
            sums: Vec::new(),
            counts: Vec::new(),
        }
    }
}

impl DuoTally {
    /// Scored (query head, token) pairs so far, over all layers and heads.
    pub fn scored(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// The mean relative distance per head; refused when nothing was scored.
    pub fn pattern(&self) -> Result<HeadPattern> {
        let mut scores = Vec::new();
        for (sums, counts) in self.sums.iter().zip(&self.counts) {
            for (&s, &c) in sums.iter().zip(counts) {
                if c == 0 {
                    return Err(KvError::Invalid(
                        "the calibration scored no token of some head: its answers must lie beyond the sinks and window".into(),
                    ));
                }
                scores.push(s / c as f64);
            }
        }
        HeadPattern::new(
            self.sums.len(),
            self.sums.first().map_or(0, Vec::len),
            scores,
        )
    }
}

/// A full cache (f32) that also scores, for every query at or after
/// [`DuoTally::scored_from`], how far each head's output would move if the head kept only
/// its sinks and recent window: DuoAttention's calibration (see the module's text). The
/// full output is the one it returns; only the streaming one is computed beside it.
pub struct DuoCalibration {
    inner: FullCache,
    shape: KvShape,
    rope: Arc<RopeTable>,
    duo: DuoAttention,
    /// `[layer][kv_head]` rotated keys and values seen, f32 row-major.
    held: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
    tally: Arc<Mutex<DuoTally>>,
}

impl DuoCalibration {
    /// A calibrating cache adding to `tally`, whose sums start again at zero for `shape`.
    pub fn new(
        shape: KvShape,
        rope: Arc<RopeTable>,
        duo: DuoAttention,
        tally: Arc<Mutex<DuoTally>>,
    ) -> Result<Self> {
        duo.validate()?;
        let mut sums = tally.lock().map_err(poisoned)?;
        sums.sums = vec![vec![0.0; shape.kv_heads]; shape.layers];
        sums.counts = vec![vec![0; shape.kv_heads]; shape.layers];
        drop(sums);
        Ok(Self {
            inner: FullCache::new(shape, rope.clone(), &Device::Cpu, KvPrecision::F32),
            shape,
            rope,
            duo,
            held: vec![vec![(Vec::new(), Vec::new()); shape.kv_heads]; shape.layers],
            tally,
        })
    }

    /// Drop the rows seen, keeping their allocations: a new sequence starts.
    fn forget_rows(&mut self) {
        for (keys, values) in self.held.iter_mut().flatten() {
            keys.clear();
            values.clear();
        }
    }
}

/// The relative distance between a query's attention output over all `n` rows (`full`,
/// what the full cache returned) and over the sinks and the last `recent` rows only;
/// `None` when both read the same rows.
fn streaming_distance(
    query: &[f32],
    full: &[f32],
    (keys, values): (&[f32], &[f32]),
    n: usize,
    duo: DuoAttention,
) -> Option<f64> {
    let d = query.len();
    let window_from = n.saturating_sub(duo.recent);
    if window_from <= duo.sinks {
        return None;
    }
    let rows: Vec<usize> = (0..duo.sinks).chain(window_from..n).collect();
    let scale = 1.0 / (d as f32).sqrt();
    let logits: Vec<f32> = rows
        .iter()
        .map(|&j| lanes_dot(query, &keys[j * d..(j + 1) * d]) * scale)
        .collect();
    let max = lanes_max(&logits);
    let mut kept = vec![0f32; d];
    let mut z = 0f64;
    for (&j, &l) in rows.iter().zip(&logits) {
        let e = (l - max).exp();
        z += e as f64;
        let v = &values[j * d..(j + 1) * d];
        kept.iter_mut().zip(v).for_each(|(o, &x)| *o += e * x);
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&f, &k) in full.iter().zip(&kept) {
        let (f, k) = (f as f64, k as f64 / z);
        diff += (f - k) * (f - k);
        norm += f * f;
    }
    Some((diff / norm.max(f64::MIN_POSITIVE)).sqrt())
}

impl KvCache for DuoCalibration {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, reservation: Reservation) -> Result<()> {
        self.forget_rows();
        self.inner.reserve(reservation)
    }

    fn attend(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let out = self.inner.attend(layer, pos, q, k, v)?;
        let d = self.shape.head_dim;
        let keys: Vec<Vec<f32>> = self.rope.apply(k, pos)?.flatten(1, 2)?.to_vec2()?;
        let values: Vec<Vec<f32>> = v.flatten(1, 2)?.to_vec2()?;
        for ((held_k, held_v), (k, v)) in self.held[layer].iter_mut().zip(keys.iter().zip(&values))
        {
            held_k.extend_from_slice(k);
            held_v.extend_from_slice(v);
        }
        let scored_from = self.tally.lock().map_err(poisoned)?.scored_from;
        let t = q.dim(1)?;
        if pos + t <= scored_from {
            return Ok(out);
        }
        let queries: Vec<Vec<f32>> = self.rope.apply(q, pos)?.flatten(1, 2)?.to_vec2()?;
        let outputs: Vec<Vec<f32>> = out.flatten(1, 2)?.to_vec2()?;
        let group = self.shape.q_heads / self.shape.kv_heads;
        let (duo, held) = (self.duo, &self.held[layer]);
        let first = scored_from.saturating_sub(pos);
        // Per query head: summed distances and how many tokens they cover.
        let per_head: Vec<(f64, u64)> = queries
            .par_iter()
            .zip(&outputs)
            .enumerate()
            .map(|(h, (rows, full))| {
                let (keys, values) = &held[h / group];
                (first..t).fold((0.0, 0), |(sum, count), i| {
                    let (query, full) = (&rows[i * d..(i + 1) * d], &full[i * d..(i + 1) * d]);
                    let held = (&keys[..], &values[..]);
                    match streaming_distance(query, full, held, pos + i + 1, duo) {
                        Some(x) => (sum + x, count + 1),
                        None => (sum, count),
                    }
                })
            })
            .collect();
        let mut tally = self.tally.lock().map_err(poisoned)?;
        for (h, (sum, count)) in per_head.into_iter().enumerate() {
            tally.sums[layer][h / group] += sum;
            tally.counts[layer][h / group] += count;
        }
        Ok(out)
    }

    fn end_prefill(&mut self) -> Result<()> {
        self.inner.end_prefill()
    }

    fn stored_bytes(&self) -> usize {
        self.inner.stored_bytes()
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        self.inner.kept_tokens(layer)
    }

    fn reset(&mut self) {
        self.forget_rows();
        self.inner.reset()
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> KvError {
    KvError::Invalid("a calibration thread panicked while adding to its tally".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::HeadRows;
    use crate::testutil::{full_outputs, max_difference, rope, rotated, run, sequence, shape};

    #[test]
    fn patterns_read_back_what_they_write_and_refuse_ragged_files() {
        let pattern = HeadPattern::new(2, 3, vec![0.5, 0.1, 0.9, 0.0, 1.0, 0.25]).unwrap();
        assert_eq!(HeadPattern::from_tsv(&pattern.to_tsv()).unwrap(), pattern);
        assert!(HeadPattern::from_tsv("0.1\t0.2\n0.3\n").is_err());
        assert!(HeadPattern::from_tsv("0.1\tx\n").is_err());
        assert!(HeadPattern::from_tsv("").is_err());
        assert!(HeadPattern::new(1, 2, vec![0.1, f64::NAN]).is_err());
    }

    #[test]
    fn the_lowest_scores_over_all_layers_stream() {
        let pattern = HeadPattern::new(2, 3, vec![0.5, 0.1, 0.9, 0.0, 1.0, 0.25]).unwrap();
        assert_eq!(
            pattern.streaming(0.5),
            vec![vec![false, true, false], vec![true, false, true]]
        );
        assert_eq!(pattern.streaming(0.0), vec![vec![false; 3]; 2]);
        assert_eq!(pattern.streaming(1.0), vec![vec![true; 3]; 2]);
    }

    #[test]
    fn streaming_heads_keep_their_sinks_and_window() {
        let duo = DuoAttention {
            sinks: 2,
            recent: 3,
        };
        let keep = duo.streaming_keep([0, 1, 2, 5, 6, 7, 9].into_iter());
        assert_eq!(keep, vec![true, true, false, false, true, true, true]);
        assert_eq!(duo.streaming_keep([0, 1].into_iter()), vec![true, true]);
    }

    /// The calibrating cache attends as the full cache does, and its per-head scores equal
    /// the distances recomputed by hand from the rotated rows.
    #[test]
    fn calibration_attends_in_full_and_scores_each_head_by_hand() {
        let data = sequence(24);
        let s = shape();
        let duo = DuoAttention {
            sinks: 2,
            recent: 5,
        };
        let tally = Arc::new(Mutex::new(DuoTally::default()));
        tally.lock().unwrap().scored_from = 15;
        let mut cache = DuoCalibration::new(s, rope(), duo, tally.clone()).unwrap();
        let chunks = [10, 7, 4, 3];
        let outputs = run(&mut cache, &data, &chunks, |_| ()).0;
        assert!(max_difference(&outputs, &full_outputs(&data, &chunks)) < 1e-5);

        let (q, k) = rotated(&data.0, &data.1);
        let v: HeadRows = data.2.to_vec3().unwrap();
        let group = s.q_heads / s.kv_heads;
        let tally = tally.lock().unwrap();
        for g in 0..s.kv_heads {
            let (mut sum, mut count) = (0.0, 0);
            for queries in &q[g * group..(g + 1) * group] {
                for (p, query) in queries.iter().enumerate().take(24).skip(15) {
                    // By hand: softmax over 0..=p against the sinks and the last 5 rows.
                    let logits: Vec<f64> = (0..=p)
                        .map(|j| {
                            query
                                .iter()
                                .zip(&k[g][j])
                                .map(|(a, b)| (a * b) as f64)
                                .sum::<f64>()
                                / (s.head_dim as f64).sqrt()
                        })
                        .collect();
                    let output = |rows: &dyn Fn(usize) -> bool| -> Vec<f64> {
                        let z: f64 = (0..=p).filter(|&j| rows(j)).map(|j| logits[j].exp()).sum();
                        (0..s.head_dim)
                            .map(|c| {
                                (0..=p)
                                    .filter(|&j| rows(j))
                                    .map(|j| logits[j].exp() * v[g][j][c] as f64)
                                    .sum::<f64>()
                                    / z
                            })
                            .collect()
                    };
                    let full = output(&|_| true);
                    let kept = output(&|j| j < 2 || j + 5 > p);
                    let diff: f64 = full.iter().zip(&kept).map(|(a, b)| (a - b).powi(2)).sum();
                    let norm: f64 = full.iter().map(|a| a * a).sum();
                    sum += (diff / norm).sqrt();
                    count += 1;
                }
            }
            let mean = tally.pattern().unwrap().score(0, g);
            let expected = sum / count as f64;
            assert!(
                (mean - expected).abs() < 1e-4 * expected,
                "head {g}: {mean} against {expected}"
            );
            assert_eq!(tally.counts[0][g], count);
        }
    }
}
