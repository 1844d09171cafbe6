use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use crate::{KvError, Result};

/// Queries processed together in one score matrix: bounds attention memory to
/// `ATTENTION_QUERY_BLOCK × keys` per head, whatever the chunk or context length.
pub const ATTENTION_QUERY_BLOCK: usize = 256;

/// Causal grouped-query attention of rotated queries over a run of keys/values.
///
/// `q` is `[q_heads, t, d]`; `k`, `v` are `[kv_heads, n, d]` and may be strided views into
/// preallocated storage. Query `i` sits at key index `first_query_key + i` and sees keys
/// `0..=first_query_key + i`. Query head `h` reads key/value head `h / (q_heads / kv_heads)`,
/// as Llama's `repeat_kv` does, without copying any key.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_query_key: usize,
) -> Result<Tensor> {
    blocked_attention(q, k, v, first_query_key, None)
}

/// [`causal_attention`] that also returns, per key/value head, the attention each key
/// received summed over the queries and the head's group of query heads (`[kv_heads][n]`):
/// the signal attention-guided eviction policies (H2O, SnapKV, TOVA, InfLLM) rank tokens by.
pub fn causal_attention_with_weights(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_query_key: usize,
) -> Result<(Tensor, Vec<Vec<f32>>)> {
    let (kv_heads, n, _) = k.dims3()?;
    let mut weights = vec![vec![0f32; n]; kv_heads];
    let out = blocked_attention(q, k, v, first_query_key, Some(&mut weights))?;
    Ok((out, weights))
}

fn blocked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_query_key: usize,
    mut weights: Option<&mut Vec<Vec<f32>>>,
) -> Result<Tensor> {
    let (q_heads, t, d) = q.dims3()?;
    let (kv_heads, n, _) = k.dims3()?;
    if q_heads % kv_heads != 0 || first_query_key + t > n {
        return Err(KvError::Invalid(format!(
            "attention over {n} keys with {t} queries from key {first_query_key} ({q_heads} query heads, {kv_heads} kv heads)"
        )));
    }
    let group = q_heads / kv_heads;
    if t == 1 && weights.is_none() {
        if let Some(out) = single_query_attention(q, k, v, first_query_key + 1)? {
            return Ok(out);
        }
    }
    let scale = 1.0 / (d as f32).sqrt();
    let mut blocks = Vec::with_capacity(t.div_ceil(ATTENTION_QUERY_BLOCK));
    for start in (0..t).step_by(ATTENTION_QUERY_BLOCK) {
        let len = ATTENTION_QUERY_BLOCK.min(t - start);
        let visible = first_query_key + start + len;
        let q_block = q
            .narrow(1, start, len)?
            .contiguous()?
            .reshape((kv_heads, group * len, d))?;
        let keys = k.narrow(1, 0, visible)?;
        let values = v.narrow(1, 0, visible)?;
        // Scale, causal mask and softmax in one pass over the scores, row by row: query `i`
        // of the block sees the first `earlier + i + 1` keys, the rest get probability 0.
        let mut scores: Vec<f32> = q_block.matmul(&keys.t()?)?.flatten_all()?.to_vec1()?;
        let earlier = visible - len;
        scores
            .par_chunks_mut(visible)
            .enumerate()
            .for_each(|(row, s)| kernels::causal_softmax(s, earlier + row % len + 1, scale));
        let probs = Tensor::from_vec(scores, (kv_heads, group * len, visible), q.device())?;
        if let Some(weights) = weights.as_deref_mut() {
            let received: Vec<Vec<f32>> = probs.sum(1)?.to_vec2()?;
            for (total, head) in weights.iter_mut().zip(received) {
                total.iter_mut().zip(head).for_each(|(w, p)| *w += p);
            }
        }
        let out = probs.matmul(&values)?;
        blocks.push(out.reshape((q_heads, len, d))?);
    }
    Ok(Tensor::cat(&blocks, 1)?)
}

/// Softmax of `row · scale`, in place (one decoding query's scores).
pub(crate) fn softmax_in_place(row: &mut [f32], scale: f32) {
    let n = row.len();
    kernels::causal_softmax(row, n, scale);
}

/// One decoding query per head over plain row-major key/value rows of each kv head
/// (`keys[g]` holds `n` rows of `d`): returns the output `[q_heads * d]` and adds each key's
/// attention, summed over the head's group of query heads, into `weights[g]`.
pub(crate) fn attend_rows(
    query: &[f32],
    keys: &[&[f32]],
    values: &[&[f32]],
    d: usize,
    weights: &mut [Vec<f32>],
) -> Vec<f32> {
    let kv_heads = keys.len();
    let q_heads = query.len() / d;
    let group = q_heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let per_group: Vec<(Vec<f32>, Vec<f32>)> = (0..kv_heads)
        .into_par_iter()
        .map(|g| {
            let n = keys[g].len() / d;
            let key_rows = rows(keys[g], 0, d, n, d);
            let value_rows = rows(values[g], 0, d, n, d);
            let mut received = vec![0f32; n];
            let mut out = Vec::with_capacity(group * d);
            for h in g * group..(g + 1) * group {
                out.extend(kernels::attend_one(
                    &query[h * d..(h + 1) * d],
                    &key_rows,
                    &value_rows,
                    scale,
                    Some(&mut received),
                ));
            }
            (out, received)
        })
        .collect();
    let mut out = Vec::with_capacity(q_heads * d);
    for ((o, received), total) in per_group.into_iter().zip(weights.iter_mut()) {
        out.extend(o);
        total.iter_mut().zip(received).for_each(|(w, p)| *w += p);
    }
    out
}

/// One query of one head over `keys`/`values` rows: the single-query kernel (SIMD where the
/// CPU has it); adds each row's probability into `received`.
pub(crate) fn attend_one_head(
    query: &[f32],
    keys: &[&[f32]],
    values: &[&[f32]],
    received: &mut [f32],
) -> Vec<f32> {
    let scale = 1.0 / (query.len() as f32).sqrt();
    kernels::attend_one(query, keys, values, scale, Some(received))
}

/// Keys below which one query's heads run on one thread (thread hand-off costs more).
const PARALLEL_MIN_KEYS: usize = 1024;

/// The decoding step's attention (one query per head) read straight from the cache buffers:
/// no score tensor, no copy of the keys or values, one pass per head. `None` when the
/// buffers are not f32 rows in CPU memory (the tensor path then serves).
fn single_query_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    visible: usize,
) -> Result<Option<Tensor>> {
    let (q_heads, _, d) = q.dims3()?;
    let kv_heads = k.dim(0)?;
    let group = q_heads / kv_heads;
    let query: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) = (&*k_storage, &*v_storage) else {
        return Ok(None);
    };
    let (Ok(keys), Ok(values)) = (k_cpu.as_slice::<f32>(), v_cpu.as_slice::<f32>()) else {
        return Ok(None);
    };
    let (ks, vs) = (k_layout.stride(), v_layout.stride());
    if ks[2] != 1 || vs[2] != 1 {
        return Ok(None);
    }
    let (k0, v0) = (k_layout.start_offset(), v_layout.start_offset());
    let scale = 1.0 / (d as f32).sqrt();
    let head = |h: usize| -> Vec<f32> {
        let g = h / group;
        let key_rows = rows(keys, k0 + g * ks[0], ks[1], visible, d);
        let value_rows = rows(values, v0 + g * vs[0], vs[1], visible, d);
        kernels::attend_one(
            &query[h * d..(h + 1) * d],
            &key_rows,
            &value_rows,
            scale,
            None,
        )
    };
    let out: Vec<f32> = if visible >= PARALLEL_MIN_KEYS {
        (0..q_heads).into_par_iter().flat_map_iter(head).collect()
    } else {
        (0..q_heads).flat_map(head).collect()
    };
    Ok(Some(Tensor::from_vec(out, (q_heads, 1, d), q.device())?))
}

/// `count` rows of `width` floats starting at `base`, `stride` apart.
fn rows(data: &[f32], base: usize, stride: usize, count: usize, width: usize) -> Vec<&[f32]> {
    (0..count)
        .map(|j| &data[base + j * stride..base + j * stride + width])
        .collect()
}

mod kernels {
    //! One head's softmax attention for one query, in plain loops the compiler vectorizes
    //! (with AVX2 + FMA where the CPU has them).

    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(bc.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ac.zip(bc) {
            for i in 0..16 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn attend_generic(
        q: &[f32],
        keys: &[&[f32]],
        values: &[&[f32]],
        scale: f32,
        received: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let mut scores: Vec<f32> = keys.iter().map(|k| dot(q, k) * scale).collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        if let Some(received) = received {
            for (r, s) in received.iter_mut().zip(&scores) {
                *r += s / total;
            }
        }
        let mut out = vec![0f32; q.len()];
        for (p, v) in scores.iter().zip(values) {
            let w = p / total;
            for (o, x) in out.iter_mut().zip(v.iter()) {
                *o += w * x;
            }
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(
        q: &[f32],
        keys: &[&[f32]],
        values: &[&[f32]],
        scale: f32,
        received: Option<&mut [f32]>,
    ) -> Vec<f32> {
        attend_generic(q, keys, values, scale, received)
    }

    /// `e^x` for `x <= 0` to about 2e-7 relative error, branch-free so that loops over it
    /// vectorize: `2^n · e^r` with `n = round(x·log2 e)`, `|r| <= ln2/2`, and a degree-6
    /// Taylor polynomial for `e^r`. Arguments below -87 give 0-ish subnormal-free results.
    #[inline(always)]
    fn exp_nonpositive(x: f32) -> f32 {
        let x = x.max(-87.0);
        let n = (x * std::f32::consts::LOG2_E).round();
        let r = x - n * std::f32::consts::LN_2;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        p * f32::from_bits(((n as i32 + 127) << 23) as u32)
    }

    #[inline(always)]
    fn causal_softmax_generic(row: &mut [f32], valid: usize, scale: f32) {
        let (seen, hidden) = row.split_at_mut(valid);
        let max = seen.iter().cloned().fold(f32::NEG_INFINITY, f32::max) * scale;
        let mut total = 0f32;
        for x in seen.iter_mut() {
            *x = exp_nonpositive(*x * scale - max);
            total += *x;
        }
        let inv = 1.0 / total;
        seen.iter_mut().for_each(|x| *x *= inv);
        hidden.iter_mut().for_each(|x| *x = 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn causal_softmax_avx2(row: &mut [f32], valid: usize, scale: f32) {
        causal_softmax_generic(row, valid, scale)
    }

    /// In place: `row[..valid]` becomes softmax(row[..valid] · scale), the rest 0.
    pub fn causal_softmax(row: &mut [f32], valid: usize, scale: f32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { causal_softmax_avx2(row, valid, scale) };
        }
        causal_softmax_generic(row, valid, scale)
    }

    /// Softmax(q·Kᵀ·scale)·V for one head; adds each key's probability into `received`.
    pub fn attend_one(
        q: &[f32],
        keys: &[&[f32]],
        values: &[&[f32]],
        scale: f32,
        received: Option<&mut [f32]>,
    ) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { attend_avx2(q, keys, values, scale, received) };
        }
        attend_generic(q, keys, values, scale, received)
    }
}

/// Softmax-weighted sum recomputed naively, one query at a time: the oracle for tests.
#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index arithmetic mirrors the formula, which is the point of an oracle
pub(crate) fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_query_key: usize,
) -> Vec<f32> {
    let (q_heads, t, d) = q.dims3().unwrap();
    let kv_heads = k.dim(0).unwrap();
    let q: Vec<Vec<Vec<f32>>> = q.to_vec3().unwrap();
    let k: Vec<Vec<Vec<f32>>> = k.to_vec3().unwrap();
    let v: Vec<Vec<Vec<f32>>> = v.to_vec3().unwrap();
    let mut out = Vec::new();
    for h in 0..q_heads {
        let kh = h / (q_heads / kv_heads);
        for i in 0..t {
            let seen = first_query_key + i + 1;
            let s: Vec<f64> = (0..seen)
                .map(|j| {
                    (0..d)
                        .map(|x| (q[h][i][x] * k[kh][j][x]) as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for x in 0..d {
                out.push(
                    (0..seen)
                        .map(|j| w[j] / z * v[kh][j][x] as f64)
                        .sum::<f64>() as f32,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_naive_attention_across_query_blocks_and_gqa() {
        let dev = Device::Cpu;
        let t = ATTENTION_QUERY_BLOCK + 37;
        let n = t + 11;
        let q = Tensor::randn(0f32, 1.0, (6, t, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, n, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, n, 8), &dev).unwrap();
        let got: Vec<f32> = causal_attention(&q, &k, &v, 11)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = naive_attention(&q, &k, &v, 11);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "max abs difference {worst}");
    }

    #[test]
    fn single_query_path_matches_naive_attention_on_strided_buffers() {
        let dev = Device::Cpu;
        for n in [5, PARALLEL_MIN_KEYS + 3] {
            // Keys live in a larger buffer, as in a cache with spare capacity.
            let k = Tensor::randn(0f32, 1.0, (2, n + 9, 8), &dev)
                .unwrap()
                .narrow(1, 0, n)
                .unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, n + 9, 8), &dev)
                .unwrap()
                .narrow(1, 0, n)
                .unwrap();
            let q = Tensor::randn(0f32, 1.0, (6, 1, 8), &dev).unwrap();
            let got: Vec<f32> = causal_attention(&q, &k, &v, n - 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = naive_attention(&q, &k, &v, n - 1);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "n={n}: max abs difference {worst}");
        }
    }

    #[test]
    fn rejects_queries_past_the_keys() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 4, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(matches!(
            causal_attention(&q, &k, &k, 1),
            Err(KvError::Invalid(_))
        ));
    }
}
