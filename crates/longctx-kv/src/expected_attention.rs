//! Expected Attention (Devoto et al., "Expectation-based KV cache compression", 2025;
//! kvpress's `ExpectedAttentionPress`): a token is kept by the attention that queries *yet to
//! come* are expected to pay it. The prompt's queries (before RoPE, sinks left out) give a
//! mean and covariance per query head; both are turned by the mean RoPE rotation of the next
//! `future` positions; a key `k` then scores `exp(μ·k/√d + ½ kᵀΣk/d)`, normalized over the
//! prompt, averaged over the head's query group and scaled by `‖v‖`. The first `sinks`
//! tokens are always kept.

use candle_core::{DType, Device, Tensor};

use crate::{KvError, Result, RopeTable};

/// Most future positions whose rotations are averaged: far beyond any context served here.
const MAX_FUTURE: usize = 1 << 20;

/// Settings of Expected Attention (kvpress's defaults: 512 future positions, 4 sinks,
/// covariance and value norms on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedAttention {
    /// Positions after the prompt whose RoPE rotations are averaged (`n_future_positions`).
    pub future: usize,
    /// Leading tokens kept whatever they score, and left out of the query statistics
    /// (`n_sink`).
    pub sinks: usize,
    /// Whether the covariance term enters the expected logit (`use_covariance`).
    pub covariance: bool,
    /// Whether scores are scaled by the value's norm (`use_vnorm`).
    pub vnorm: bool,
}

/// The first and second moments of one layer's prompt queries before RoPE, per query
/// head, summed as chunks arrive (the queries themselves are not kept).
#[derive(Debug, Clone)]
pub(crate) struct QueryMoments {
    heads: usize,
    width: usize,
    count: usize,
    /// `[head][i]`: Σ q_i.
    sum: Vec<f64>,
    /// `[head][i][j]`: Σ q_i q_j.
    gram: Vec<f64>,
}

impl QueryMoments {
    pub(crate) fn new(heads: usize, width: usize) -> Self {
        Self {
            heads,
            width,
            count: 0,
            sum: vec![0.0; heads * width],
            gram: vec![0.0; heads * width * width],
        }
    }

    /// Add a chunk's queries `q` (`[heads, t, width]`, before RoPE) at positions from
    /// `first`; positions below `sinks` are left out, as kvpress drops the sinks' hidden
    /// states before projecting queries.
    pub(crate) fn add(&mut self, q: &Tensor, first: usize, sinks: usize) -> Result<()> {
        let t = q.dim(1)?;
        let skip = sinks.saturating_sub(first).min(t);
        if skip == t {
            return Ok(());
        }
        let q = q
            .narrow(1, skip, t - skip)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let sum: Vec<f32> = q.sum(1)?.flatten_all()?.to_vec1()?;
        // Per chunk in f32 (a GEMM), across chunks in f64.
        let gram: Vec<f32> = q
            .transpose(1, 2)?
            .contiguous()?
            .matmul(&q)?
            .flatten_all()?
            .to_vec1()?;
        self.sum
            .iter_mut()
            .zip(sum)
            .for_each(|(a, b)| *a += b as f64);
        self.gram
            .iter_mut()
            .zip(gram)
            .for_each(|(a, b)| *a += b as f64);
        self.count += t - skip;
        Ok(())
    }

    /// Mean and covariance (divided by the count, as kvpress) of `head`; zeros before any
    /// query was added.
    fn mean_and_covariance(&self, head: usize) -> (Vec<f64>, Vec<f64>) {
        let d = self.width;
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum[head * d..(head + 1) * d]
            .iter()
            .map(|s| s / n)
            .collect();
        let gram = &self.gram[head * d * d..(head + 1) * d * d];
        let covariance = (0..d * d)
            .map(|ij| gram[ij] / n - mean[ij / d] * mean[ij % d])
            .collect();
        (mean, covariance)
    }
}

/// One key/value head's prompt rows, as the cache holds them once the prompt ends.
pub(crate) struct PromptRows<'a> {
    /// Keys after RoPE, row-major.
    pub keys: &'a [f32],
    /// Values, row-major.
    pub values: &'a [f32],
    /// Absolute positions of the rows.
    pub positions: &'a [usize],
}

impl ExpectedAttention {
    /// Settings that cannot score are refused.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_FUTURE).contains(&self.future) {
            return Err(KvError::Setting(format!(
                "future={} must be between 1 and {MAX_FUTURE} (positions whose rotations are averaged; kvpress uses 512)",
                self.future
            )));
        }
        Ok(())
    }

    /// Scores of every held row of each key/value head of one layer, once a prompt of
    /// `prompt` tokens has been cached: sinks score above everything else in the layer.
    pub(crate) fn scores(
        &self,
        moments: &QueryMoments,
        rope: &RopeTable,
        prompt: usize,
        heads: &[PromptRows],
    ) -> Result<Vec<Vec<f32>>> {
        let d = moments.width;
        let group = moments.heads / heads.len();
        let rotation = rope.mean_rotation(prompt, self.future)?;
        // μ' = R μ and Σ' = R Σ Rᵀ per query head.
        let turned: Vec<(Vec<f64>, Vec<f64>)> = (0..moments.heads)
            .map(|h| {
                let (mean, cov) = moments.mean_and_covariance(h);
                let mean = mat_vec(&rotation, &mean, d);
                let cov = match self.covariance {
                    true => {
                        let rc = mat_mul(&rotation, &cov, d);
                        mat_mul_transposed(&rc, &rotation, d)
                    }
                    false => Vec::new(),
                };
                (mean, cov)
            })
            .collect();
        let scale = (d as f64).sqrt();
        let mut out = Vec::with_capacity(heads.len());
        for (g, rows) in heads.iter().enumerate() {
            let n = rows.positions.len();
            let scored: Vec<usize> = (0..n)
                .filter(|&i| rows.positions[i] >= self.sinks)
                .collect();
            let mut mean_weights = vec![0f64; scored.len()];
            let queries = &turned[g * group..(g + 1) * group];
            // kᵀΣ'k for every key and query head of the group, by one product with the
            // group's covariances side by side.
            let quadratic: Option<Vec<f32>> = match self.covariance {
                true => {
                    let keys = Tensor::from_slice(rows.keys, (n, d), &Device::Cpu)?;
                    let side_by_side: Vec<f32> = (0..d)
                        .flat_map(|i| {
                            queries.iter().flat_map(move |(_, cov)| {
                                (0..d).map(move |j| cov[i * d + j] as f32)
                            })
                        })
                        .collect();
                    let sigma = Tensor::from_vec(side_by_side, (d, group * d), &Device::Cpu)?;
                    Some(keys.matmul(&sigma)?.flatten_all()?.to_vec1()?)
                }
                false => None,
            };
            for (h, (mean, _)) in queries.iter().enumerate() {
                let logits: Vec<f64> = scored
                    .iter()
                    .map(|&i| {
                        let k = &rows.keys[i * d..(i + 1) * d];
                        let linear: f64 = k.iter().zip(mean).map(|(&a, b)| a as f64 * b).sum();
                        let quad = quadratic.as_ref().map_or(0.0, |q| {
                            let kq = &q[(i * group + h) * d..(i * group + h + 1) * d];
                            k.iter().zip(kq).map(|(&a, &b)| a as f64 * b as f64).sum()
                        });
                        linear / scale + quad / d as f64 / 2.0
                    })
                    .collect();
                let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exp: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
                let total: f64 = exp.iter().sum();
                mean_weights
                    .iter_mut()
                    .zip(exp)
                    .for_each(|(m, e)| *m += e / total / group as f64);
            }
            let mut scores = vec![f32::NAN; n];
            for (&i, w) in scored.iter().zip(mean_weights) {
                let norm = match self.vnorm {
                    true => rows.values[i * d..(i + 1) * d]
                        .iter()
                        .map(|&v| v as f64 * v as f64)
                        .sum::<f64>()
                        .sqrt(),
                    false => 1.0,
                };
                scores[i] = (w * norm) as f32;
            }
            out.push(scores);
        }
        // Sinks: the layer's highest score plus one, as kvpress pads them.
        let highest = out
            .iter()
            .flatten()
            .filter(|s| !s.is_nan())
            .cloned()
            .fold(0f32, f32::max);
        out.iter_mut()
            .flatten()
            .filter(|s| s.is_nan())
            .for_each(|s| *s = highest + 1.0);
        Ok(out)
    }
}

/// `m · v` for a `d × d` row-major `m`.
fn mat_vec(m: &[f64], v: &[f64], d: usize) -> Vec<f64> {
    (0..d)
        .map(|i| (0..d).map(|j| m[i * d + j] * v[j]).sum())
        .collect()
}

/// `a · b` for `d × d` row-major matrices.
fn mat_mul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let x = a[i * d + k];
            if x != 0.0 {
                for j in 0..d {
                    out[i * d + j] += x * b[k * d + j];
                }
            }
        }
    }
    out
}

/// `a · bᵀ` for `d × d` row-major matrices.
fn mat_mul_transposed(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    (0..d * d)
        .map(|ij| {
            let (i, j) = (ij / d, ij % d);
            (0..d).map(|k| a[i * d + k] * b[j * d + k]).sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;
    use crate::{RopeSettings, RopeStyle};

    /// An f64 oracle written from kvpress's formula with every query kept: explicit centred
    /// covariance, the rotation averaged by rotating unit vectors.
    #[test]
    fn scores_follow_kvpress_formula_on_random_queries() {
        let (heads, kv_heads, d, n, sinks) = (4, 2, 8, 23, 3);
        let rope = RopeTable::new(
            &RopeSettings {
                theta: 10000.0,
                head_dim: d,
                style: RopeStyle::Half,
                scaling: None,
                max_positions: 64,
            },
            &Device::Cpu,
        )
        .unwrap();
        let q = noise(heads * n * d, 1);
        let keys = noise(kv_heads * n * d, 2);
        let values = noise(kv_heads * n * d, 3);
        let settings = ExpectedAttention {
            future: 16,
            sinks,
            covariance: true,
            vnorm: true,
        };
        // Queries arrive in two chunks, the first shorter than the sinks.
        let qt = Tensor::from_vec(q.clone(), (heads, n, d), &Device::Cpu).unwrap();
        let mut moments = QueryMoments::new(heads, d);
        moments.add(&qt.narrow(1, 0, 2).unwrap(), 0, sinks).unwrap();
        moments
            .add(&qt.narrow(1, 2, n - 2).unwrap(), 2, sinks)
            .unwrap();
        let positions: Vec<usize> = (0..n).collect();
        let rows: Vec<PromptRows> = (0..kv_heads)
            .map(|g| PromptRows {
                keys: &keys[g * n * d..(g + 1) * n * d],
                values: &values[g * n * d..(g + 1) * n * d],
                positions: &positions,
            })
            .collect();
        let ours = settings.scores(&moments, &rope, n, &rows).unwrap();

        // The mean rotation, column by column: R e_j averaged over the future positions.
        let mut r = vec![0f64; d * d];
        for j in 0..d {
            let mut e = vec![0f32; d];
            e[j] = 1.0;
            for p in n..n + 16 {
                let t = Tensor::from_vec(e.clone(), (1, 1, d), &Device::Cpu).unwrap();
                let y: Vec<f32> = rope
                    .apply(&t, p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for i in 0..d {
                    r[i * d + j] += y[i] as f64 / 16.0;
                }
            }
        }
        let mut want = vec![vec![0f64; n]; kv_heads];
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let rowsq: Vec<&[f32]> = (sinks..n)
                .map(|t| &q[(h * n + t) * d..(h * n + t + 1) * d])
                .collect();
            let m = rowsq.len() as f64;
            let mu: Vec<f64> = (0..d)
                .map(|i| rowsq.iter().map(|r| r[i] as f64).sum::<f64>() / m)
                .collect();
            let cov: Vec<f64> = (0..d * d)
                .map(|ij| {
                    rowsq
                        .iter()
                        .map(|r| (r[ij / d] as f64 - mu[ij / d]) * (r[ij % d] as f64 - mu[ij % d]))
                        .sum::<f64>()
                        / m
                })
                .collect();
            let mu = mat_vec(&r, &mu, d);
            let cov = mat_mul_transposed(&mat_mul(&r, &cov, d), &r, d);
            let logits: Vec<f64> = (sinks..n)
                .map(|t| {
                    let k: Vec<f64> = keys[(g * n + t) * d..(g * n + t + 1) * d]
                        .iter()
                        .map(|&x| x as f64)
                        .collect();
                    let lin: f64 = k.iter().zip(&mu).map(|(a, b)| a * b).sum();
                    let quad: f64 = (0..d * d).map(|ij| k[ij / d] * cov[ij] * k[ij % d]).sum();
                    lin / (d as f64).sqrt() + quad / d as f64 / 2.0
                })
                .collect();
            let total: f64 = logits.iter().map(|l| l.exp()).sum();
            for (t, l) in (sinks..n).zip(&logits) {
                want[g][t] += l.exp() / total / 2.0;
            }
        }
        let mut highest = 0f64;
        for g in 0..kv_heads {
            for t in sinks..n {
                let v = &values[(g * n + t) * d..(g * n + t + 1) * d];
                want[g][t] *= v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                highest = highest.max(want[g][t]);
                assert!(
                    (ours[g][t] as f64 - want[g][t]).abs() < 1e-5 * want[g][t].max(1e-3),
                    "head {g} token {t}: {} vs {}",
                    ours[g][t],
                    want[g][t]
                );
            }
        }
        for (g, head) in ours.iter().enumerate() {
            for (t, &sink) in head[..sinks].iter().enumerate() {
                assert!(
                    (sink as f64 - (highest + 1.0)).abs() < 1e-4,
                    "sink {t} of {g}"
                );
            }
        }
    }
}
