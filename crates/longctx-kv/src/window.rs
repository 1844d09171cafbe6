//! Sliding-window attention with a memory, as StreamingLLM and InfLLM run it in the
//! benchmark's code (InfLLM's `stream_llm.py` and `context_manager.py`): every query sees
//! exactly its own last `window` tokens (itself included), plus memory tokens (sinks,
//! retrieved blocks) that lie *outside* its window, all under one softmax. A token is never
//! seen twice and never beyond the window, whatever the chunk size, so chunked prefill gives
//! the same outputs as one whole-prompt pass.
//!
//! Local keys are rotated at their positions and queries at theirs (RoPE depends only on the
//! distance, so this is the reference's relative window). Memory keys are read by a second
//! rotation of the queries chosen by the caller: InfLLM rotates queries at one fixed angle
//! for unrotated memory keys ("memory at a fixed distance"); StreamingLLM re-indexes its
//! sinks the same way.

use candle_core::{Tensor, D};
use rayon::prelude::*;

use crate::{KvError, Result};

/// Memory keys a chunk may read beside its window.
pub struct Memory<'a> {
    /// Queries as they read the memory (`[q_heads, t, d]`, rotated as the policy decides).
    pub queries: &'a Tensor,
    /// `[kv_heads, m, d]` keys, rotated as the policy decides.
    pub keys: &'a Tensor,
    /// `[kv_heads, m, d]` values.
    pub values: &'a Tensor,
    /// For each memory token, the first query position that reads it. A token's own
    /// position plus the window reads it only outside every query's window (it is read
    /// through the window before); a smaller value lets queries read it in both.
    pub visible_from: &'a [usize],
}

/// What [`windowed_attention`] returns.
pub struct Windowed {
    /// `[q_heads, t, d]`.
    pub out: Tensor,
    /// `[kv_heads, group · t, l]` probabilities of the local keys.
    local_probs: Tensor,
    q_heads: usize,
}

impl Windowed {
    /// Per query head, the probability each local key received, summed over the chunk's
    /// queries (`[q_heads][l]`): InfLLM picks block representatives by it. Computed on
    /// request, so policies that do not need it pay nothing.
    pub fn local_weights(&self) -> Result<Vec<Vec<f32>>> {
        let (_, rows, l) = self.local_probs.dims3()?;
        let t = rows * self.local_probs.dim(0)? / self.q_heads;
        Ok(self
            .local_probs
            .reshape((self.q_heads, t, l))?
            .sum(D::Minus2)?
            .to_vec2()?)
    }
}

/// Attention of `t` queries at positions `first..first + t` over local keys at
/// `local_positions` (ascending; the chunk's own keys included), each query seeing the local
/// keys at distance `0..window` and the memory tokens [`Memory::visible_from`] says it reads.
///
/// `q` is `[q_heads, t, d]` rotated at the queries' positions, `k`, `v` are
/// `[kv_heads, l, d]`; query head `h` reads key/value head `h / (q_heads / kv_heads)`.
pub fn windowed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    local_positions: &[usize],
    first: usize,
    window: usize,
    memory: Option<Memory<'_>>,
) -> Result<Windowed> {
    let (q_heads, t, d) = q.dims3()?;
    let (kv_heads, l, _) = k.dims3()?;
    if q_heads % kv_heads != 0 || local_positions.len() != l || window == 0 {
        return Err(KvError::Invalid(format!(
            "windowed attention: {q_heads} query heads over {kv_heads} kv heads, {l} keys with {} positions, window {window}",
            local_positions.len()
        )));
    }
    let group = q_heads / kv_heads;
    let rows = group * t;
    let by_group =
        |x: &Tensor| -> Result<Tensor> { Ok(x.contiguous()?.reshape((kv_heads, rows, d))?) };
    let mut local: Vec<f32> = by_group(q)?
        .matmul(&k.contiguous()?.t()?)?
        .flatten_all()?
        .to_vec1()?;
    let (m, mut remembered): (usize, Vec<f32>) = match &memory {
        Some(mem) if !mem.visible_from.is_empty() => (
            mem.visible_from.len(),
            by_group(mem.queries)?
                .matmul(&mem.keys.contiguous()?.t()?)?
                .flatten_all()?
                .to_vec1()?,
        ),
        _ => (0, Vec::new()),
    };
    let visible_from = memory.as_ref().map_or(&[][..], |mem| mem.visible_from);
    let scale = 1.0 / (d as f32).sqrt();
    // One softmax per query row over both parts; masked entries become 0.
    let rows_local = local.par_chunks_mut(l.max(1));
    let rows_memory: Vec<&mut [f32]> = if m == 0 {
        (0..kv_heads * rows).map(|_| &mut [][..]).collect()
    } else {
        remembered.chunks_mut(m).collect()
    };
    rows_local
        .zip(rows_memory.into_par_iter())
        .enumerate()
        .for_each(|(row, (loc, mem))| {
            let p = first + row % t;
            let seen_local = |j: usize| local_positions[j] <= p && p - local_positions[j] < window;
            let seen_memory = |j: usize| visible_from[j] <= p;
            let mut max = f32::NEG_INFINITY;
            for (j, s) in loc.iter().enumerate() {
                if seen_local(j) {
                    max = max.max(s * scale);
                }
            }
            for (j, s) in mem.iter().enumerate() {
                if seen_memory(j) {
                    max = max.max(s * scale);
                }
            }
            let mut total = 0f32;
            for (j, s) in loc.iter_mut().enumerate() {
                *s = if seen_local(j) {
                    (*s * scale - max).exp()
                } else {
                    0.0
                };
                total += *s;
            }
            for (j, s) in mem.iter_mut().enumerate() {
                *s = if seen_memory(j) {
                    (*s * scale - max).exp()
                } else {
                    0.0
                };
                total += *s;
            }
            let inv = 1.0 / total;
            loc.iter_mut().chain(mem.iter_mut()).for_each(|s| *s *= inv);
        });
    let device = q.device();
    let local_probs = Tensor::from_vec(local, (kv_heads, rows, l), device)?;
    let mut out = local_probs.matmul(&v.contiguous()?)?;
    if let Some(mem) = memory.as_ref().filter(|_| m > 0) {
        let memory_probs = Tensor::from_vec(remembered, (kv_heads, rows, m), device)?;
        out = (out + memory_probs.matmul(&mem.values.contiguous()?)?)?;
    }
    Ok(Windowed {
        out: out.reshape((q_heads, t, d))?,
        local_probs,
        q_heads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::HeadRows;
    use crate::testutil::{oracle_output, product, row_difference};
    use candle_core::Device;

    /// Each query's output recomputed from its visible keys alone (f64 oracle).
    #[test]
    fn each_query_sees_its_window_and_the_memory_outside_it_once() {
        let dev = Device::Cpu;
        let (t, d) = (7, 8);
        // Local keys: two old sinks (positions 0, 1) and a contiguous run 10..=22; the chunk
        // is the last 7 (positions 16..=22); window 5.
        let positions: Vec<usize> = [0, 1].into_iter().chain(10..23).collect();
        let l = positions.len();
        let q = Tensor::randn(0f32, 1.0, (4, t, d), &dev).unwrap();
        let qm = Tensor::randn(0f32, 1.0, (4, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, l, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, l, d), &dev).unwrap();
        let mk = k.narrow(1, 0, 2).unwrap();
        let mv = v.narrow(1, 0, 2).unwrap();
        let got = windowed_attention(
            &q,
            &k,
            &v,
            &positions,
            16,
            5,
            Some(Memory {
                queries: &qm,
                keys: &mk,
                values: &mv,
                visible_from: &[5, 6],
            }),
        )
        .unwrap();
        let (q3, qm3): (HeadRows, HeadRows) = (q.to_vec3().unwrap(), qm.to_vec3().unwrap());
        let (k3, v3): (HeadRows, HeadRows) = (k.to_vec3().unwrap(), v.to_vec3().unwrap());
        let out: HeadRows = got.out.to_vec3().unwrap();
        let mut worst = 0f32;
        for h in 0..4 {
            let g = h / 2;
            for i in 0..t {
                let p = 16 + i;
                // Window keys are read by q, the sinks by qm; the sinks sit at distance >= 5
                // from every query here, so they are always memory.
                let mut products: Vec<Vec<f32>> = Vec::new();
                let mut vals: Vec<&Vec<f32>> = Vec::new();
                for (j, &kp) in positions.iter().enumerate() {
                    if kp <= p && p - kp < 5 {
                        products.push(product(&q3[h][i], &k3[g][j]));
                        vals.push(&v3[g][j]);
                    }
                }
                assert_eq!(products.len(), 5, "query {p} sees exactly its window");
                for j in 0..2 {
                    products.push(product(&qm3[h][i], &k3[g][j]));
                    vals.push(&v3[g][j]);
                }
                worst = worst.max(row_difference(&out[h][i], &oracle_output(&products, &vals)));
            }
        }
        assert!(worst < 1e-5, "max abs difference {worst}");
        // The window weights sum to the probability mass the window received.
        let mass: f32 = got.local_weights().unwrap()[0].iter().sum();
        assert!(mass > 0.0 && mass < t as f32);
    }
}
