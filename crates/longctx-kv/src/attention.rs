use candle_core::{DType, Layout, Storage, Tensor};
use half::f16;

use crate::rows::{RowsView, TokenRows, ViewElement};
use crate::tiled::{self, merge_parts, Causal, KvElement, StridedRows, WithStats};
use crate::{KvError, Result};

/// Causal grouped-query attention of rotated queries over a run of keys/values.
///
/// `q` is `[q_heads, t, d]`; `k`, `v` are `[kv_heads, n, d]`, f32 or f16, and may be strided
/// views into preallocated storage. Query `i` sits at key index `first_query_key + i` and
/// sees keys `0..=first_query_key + i`. Query head `h` reads key/value head
/// `h / (q_heads / kv_heads)`, as Llama's `repeat_kv` does, without copying any key: the
/// tiled kernel ([`crate::tiled`]) reads the cache's buffers in place.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_query_key: usize,
) -> Result<Tensor> {
    tensor_attention(q, k, v, first_query_key, None)
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
    let out = tensor_attention(q, k, v, first_query_key, Some(&mut weights))?;
    Ok((out, weights))
}

fn tensor_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_query_key: usize,
    weights: Option<&mut [Vec<f32>]>,
) -> Result<Tensor> {
    let (q_heads, t, d) = q.dims3()?;
    let (kv_heads, n, _) = k.dims3()?;
    if kv_heads == 0
        || q_heads % kv_heads != 0
        || first_query_key + t > n
        || v.dims3()? != k.dims3()?
    {
        return Err(KvError::Invalid(format!(
            "attention over {n} keys with {t} queries from key {first_query_key} ({q_heads} query heads, {kv_heads} kv heads, values {:?})",
            v.dims()
        )));
    }
    let queries: Vec<f32> = q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    // Keys and values are read in place when both are f16 or both f32 with unit stride
    // along the head dimension; anything else is first made so.
    let readable = |x: &Tensor| x.layout().stride()[2] == 1 || d == 1;
    let (k, v) = match (k.dtype(), v.dtype()) {
        (DType::F16, DType::F16) | (DType::F32, DType::F32) if readable(k) && readable(v) => {
            (k.clone(), v.clone())
        }
        _ => (
            k.to_dtype(DType::F32)?.contiguous()?,
            v.to_dtype(DType::F32)?.contiguous()?,
        ),
    };
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) = (&*k_storage, &*v_storage) else {
        return Err(KvError::Invalid(
            "attention runs on keys and values in CPU memory".into(),
        ));
    };
    let out = match k.dtype() {
        DType::F16 => run(
            &queries,
            (q_heads, t, d),
            (k_cpu.as_slice::<f16>()?, k_layout),
            (v_cpu.as_slice::<f16>()?, v_layout),
            first_query_key,
            weights,
        )?,
        _ => run(
            &queries,
            (q_heads, t, d),
            (k_cpu.as_slice::<f32>()?, k_layout),
            (v_cpu.as_slice::<f32>()?, v_layout),
            first_query_key,
            weights,
        )?,
    };
    Ok(Tensor::from_vec(out, (q_heads, t, d), q.device())?)
}

/// The tiled kernel over `[kv_heads, n, d]` buffers described by their layouts.
fn run<E: KvElement>(
    queries: &[f32],
    (q_heads, t, d): (usize, usize, usize),
    keys: (&[E], &Layout),
    values: (&[E], &Layout),
    first_query_key: usize,
    weights: Option<&mut [Vec<f32>]>,
) -> Result<Vec<f32>> {
    fn heads<'a, E>((data, layout): (&'a [E], &Layout)) -> Vec<StridedRows<'a, E>> {
        let (start, stride) = (layout.start_offset(), layout.stride());
        (0..layout.dims()[0])
            .map(|g| StridedRows {
                data,
                base: start + g * stride[0],
                stride: stride[1],
            })
            .collect()
    }
    tiled::attend(
        &Causal {
            queries,
            q_heads,
            t,
            width: d,
            keys: heads(keys),
            values: heads(values),
            first_query_key,
            scale: 1.0 / (d as f32).sqrt(),
        },
        weights,
    )
}

/// One decoding query per head (`query` is `[q_heads · d]`) over each key/value head's
/// kept rows (every head holding as many): returns the output `[q_heads · d]` and, with
/// `weights`, adds each row's attention, summed over the head's group of query heads, into
/// `weights[g]`.
pub(crate) fn attend_rows(
    query: &[f32],
    heads: &[TokenRows],
    d: usize,
    mut weights: Option<&mut [Vec<f32>]>,
) -> Result<Vec<f32>> {
    if heads.iter().all(|h| h.len() == heads[0].len()) {
        let keys = heads.iter().map(TokenRows::keys).collect();
        let values = heads.iter().map(TokenRows::values).collect();
        return Ok(decode_views(query, d, keys, values, weights)?.0);
    }
    // Heads that keep different numbers of tokens (AdaKV's): each head with its group of
    // query heads alone.
    let group = query.len() / d / heads.len();
    let mut out = Vec::with_capacity(query.len());
    for (g, h) in heads.iter().enumerate() {
        let queries = &query[g * group * d..(g + 1) * group * d];
        let head_weights = weights.as_deref_mut().map(|w| &mut w[g..=g]);
        let (keys, values) = (vec![h.keys()], vec![h.values()]);
        out.extend(decode_views(queries, d, keys, values, head_weights)?.0);
    }
    Ok(out)
}

/// [`attend_rows`] (without weights) where each head's first `memory.1` rows are read by
/// the query `memory.0` instead (StreamingLLM's re-indexed sinks, read from one fixed
/// position): the two softmax parts merged.
pub(crate) fn attend_rows_with_memory(
    query: &[f32],
    memory: Option<(&[f32], usize)>,
    heads: &[TokenRows],
    d: usize,
) -> Result<Vec<f32>> {
    let n = heads.first().map_or(0, TokenRows::len);
    let part = |q: &[f32], range: std::ops::Range<usize>| {
        let keys = heads
            .iter()
            .map(|h| h.keys().rows(range.clone(), d))
            .collect();
        let values = heads
            .iter()
            .map(|h| h.values().rows(range.clone(), d))
            .collect();
        decode_views(q, d, keys, values, None)
    };
    let Some((memory_query, sinks)) = memory.filter(|m| m.1 > 0) else {
        return Ok(part(query, 0..n)?.0);
    };
    let (window, window_stats) = part(query, sinks..n)?;
    let (memory, memory_stats) = part(memory_query, 0..sinks)?;
    let mut out = vec![0f32; query.len()];
    for (h, row) in out.chunks_exact_mut(d).enumerate() {
        // Normalized rows back to unnormalized ones, then merged as the kernel's parts are.
        let unnormalized = |rows: &[f32], (_, sum): (f32, f32)| -> Vec<f32> {
            rows[h * d..(h + 1) * d].iter().map(|x| x * sum).collect()
        };
        let (w, m) = (window_stats[h], memory_stats[h]);
        let (w_out, m_out) = (unnormalized(&window, w), unnormalized(&memory, m));
        let parts = [(w.0, w.1, &w_out[..]), (m.0, m.1, &m_out[..])];
        merge_parts(parts.into_iter(), row);
    }
    Ok(out)
}

/// One query of one head over the rows `read` of `rows` (H2O's per-query-head choice):
/// adds each read row's probability into `received`.
pub(crate) fn attend_read_rows(
    query: &[f32],
    rows: &TokenRows,
    read: &[usize],
    received: &mut [f32],
) -> Result<Vec<f32>> {
    let d = query.len();
    let (keys, values) = (rows.keys().gather(read, d), rows.values().gather(read, d));
    let mut weights = [vec![0f32; read.len()]];
    let (keys, values) = (vec![keys.view()], vec![values.view()]);
    let (out, _) = decode_views(query, d, keys, values, Some(&mut weights))?;
    for (total, w) in received.iter_mut().zip(&weights[0]) {
        *total += w;
    }
    Ok(out)
}

/// Contiguous rows of `d` elements of type `E`, one view per key/value head.
fn strided<'a, E: ViewElement>(
    views: Vec<RowsView<'a>>,
    d: usize,
) -> Result<Vec<StridedRows<'a, E>>> {
    views
        .into_iter()
        .map(|view| {
            E::of(view)
                .map(|data| StridedRows {
                    data,
                    base: 0,
                    stride: d,
                })
                .ok_or_else(|| KvError::Invalid("rows of one cache in different precisions".into()))
        })
        .collect()
}

/// [`decode_query`] in the views' precision.
fn decode_views(
    query: &[f32],
    d: usize,
    keys: Vec<RowsView<'_>>,
    values: Vec<RowsView<'_>>,
    weights: Option<&mut [Vec<f32>]>,
) -> Result<WithStats> {
    match keys.first() {
        Some(RowsView::F16(_)) => decode_query::<f16>(query, d, keys, values, weights),
        _ => decode_query::<f32>(query, d, keys, values, weights),
    }
}

/// The newest position's query of every head over per-key/value-head rows of `d`, in the
/// tiled kernel, with each head's softmax statistics.
fn decode_query<E: ViewElement>(
    query: &[f32],
    d: usize,
    keys: Vec<RowsView<'_>>,
    values: Vec<RowsView<'_>>,
    weights: Option<&mut [Vec<f32>]>,
) -> Result<WithStats> {
    let (keys, values) = (strided::<E>(keys, d)?, strided::<E>(values, d)?);
    let n = keys.first().map_or(0, |k| k.data.len() / d.max(1));
    if keys.iter().chain(&values).any(|k| k.data.len() != n * d) {
        return Err(KvError::Invalid(
            "a decoding query over heads of different lengths: decode each head alone".into(),
        ));
    }
    if n == 0 {
        return Err(KvError::Invalid(
            "a decoding query over no stored rows".into(),
        ));
    }
    tiled::attend_stats(
        &Causal {
            queries: query,
            q_heads: query.len() / d,
            t: 1,
            width: d,
            keys,
            values,
            first_query_key: n - 1,
            scale: 1.0 / (d as f32).sqrt(),
        },
        weights,
    )
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
        let t = 77;
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
        // Past 1,024 keys a decoding query's keys are split across threads.
        for n in [5, 3001] {
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

    /// f16 keys and values are read in place, as their f32 values would be.
    #[test]
    fn f16_buffers_attend_as_their_widened_values() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 30, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 50, 64), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 50, 64), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let (k, v) = (k.narrow(1, 0, 45).unwrap(), v.narrow(1, 0, 45).unwrap());
        let got: Vec<f32> = causal_attention(&q, &k, &v, 15)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let widen = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        let want = naive_attention(&q, &widen(&k), &widen(&v), 15);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "max abs difference {worst}");
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
