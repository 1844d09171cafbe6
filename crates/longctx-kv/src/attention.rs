use candle_core::{Device, Tensor};

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
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, first_query_key: usize) -> Result<Tensor> {
    let (q_heads, t, d) = q.dims3()?;
    let (kv_heads, n, _) = k.dims3()?;
    if q_heads % kv_heads != 0 || first_query_key + t > n {
        return Err(KvError::Invalid(format!(
            "attention over {n} keys with {t} queries from key {first_query_key} ({q_heads} query heads, {kv_heads} kv heads)"
        )));
    }
    let group = q_heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
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
        let scores = (q_block.matmul(&keys.t()?)? * scale)?;
        let scores = if len > 1 {
            let mask = causal_mask(len, visible, q.device())?;
            scores.reshape((kv_heads, group, len, visible))?.broadcast_add(&mask)?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.reshape((kv_heads, group * len, visible))?.matmul(&values.contiguous()?)?;
        blocks.push(out.reshape((q_heads, len, d))?);
    }
    Ok(Tensor::cat(&blocks, 1)?)
}

/// Additive mask `[len, visible]`: the last `len` keys are the block's own, seen causally.
fn causal_mask(len: usize, visible: usize, device: &Device) -> Result<Tensor> {
    let earlier = visible - len;
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..visible).map(move |j| if j > earlier + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (len, visible), device)?)
}

/// Softmax-weighted sum recomputed naively, one query at a time: the oracle for tests.
#[cfg(test)]
pub(crate) fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor, first_query_key: usize) -> Vec<f32> {
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
                .map(|j| (0..d).map(|x| (q[h][i][x] * k[kh][j][x]) as f64).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for x in 0..d {
                out.push((0..seen).map(|j| w[j] / z * v[kh][j][x] as f64).sum::<f64>() as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_attention_across_query_blocks_and_gqa() {
        let dev = Device::Cpu;
        let t = ATTENTION_QUERY_BLOCK + 37;
        let n = t + 11;
        let q = Tensor::randn(0f32, 1.0, (6, t, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, n, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, n, 8), &dev).unwrap();
        let got: Vec<f32> = causal_attention(&q, &k, &v, 11).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = naive_attention(&q, &k, &v, 11);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "max abs difference {worst}");
    }

    #[test]
    fn rejects_queries_past_the_keys() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 4, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(matches!(causal_attention(&q, &k, &k, 1), Err(KvError::Invalid(_))));
    }
}
