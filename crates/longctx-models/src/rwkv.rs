//! RWKV-6 "Finch" (Peng et al., 2024) and RWKV-7 "Goose" (Peng et al., 2025), read from
//! llama.cpp's GGUF layouts (`rwkv6`, `rwkv7`) and computed as llama.cpp's graphs compute them
//! (src/models/rwkv6*.cpp, rwkv7*.cpp): layer-normed blocks whose time mixing carries a
//! `head × head` matrix state per head and whose inputs mix each token with the one before
//! (token shift). The state is constant in the context's length: per layer the two shifted
//! rows and the WKV matrices.
//!
//! It runs under [`Recurrent`]: projections one GEMM per chunk, the WKV recurrence token by
//! token. Checked against llama.cpp's logits on tiny random GGUF files, in prefill and in
//! decoding (`scripts/rwkv_reference.py`, `tests/linear.rs`).

use crate::gguf::GgufFile;
use crate::recurrent::{embed, silu, Checkpoint, Projection, Recurrent, RecurrentNetwork};
use crate::{ComputeProfile, LanguageModel, LoadOptions, ModelError, Result};

/// llama.cpp's epsilon for the per-head group norm of the WKV output.
const GROUP_NORM_EPS: f32 = 64e-5;

/// A layer norm's weight and bias.
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNorm {
    fn load(w: &Checkpoint, name: &str, width: usize) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(&format!("{name}.weight"), &[width])?,
            bias: w.tensor(&format!("{name}.bias"), &[width])?,
        })
    }

    /// Each `width`-wide row of `x` normalized (ggml's `norm`), then scaled and shifted.
    fn apply(&self, x: &[f32], eps: f32) -> Vec<f32> {
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(self.weight.len()) {
            normalize(row, eps);
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = *v * w + b;
            }
        }
        out
    }
}

/// `row` to zero mean and unit variance (ggml's `norm`).
fn normalize(row: &mut [f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let scale = 1.0 / (variance + eps).sqrt();
    row.iter_mut().for_each(|v| *v = (*v - mean) * scale);
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// RWKV-6's time mixing weights.
struct TimeMix6 {
    lerp_x: Vec<f32>,
    /// Hidden → 5 × `mix` (tanh), then per stream `mix` → hidden.
    w1: Projection,
    w2: Vec<Projection>,
    /// The five streams' static mix (w, k, v, r, g), `[5, hidden]`.
    lerp: Vec<f32>,
    /// The bonus of the current token, `[heads, head]`.
    first: Vec<f32>,
    decay: Vec<f32>,
    /// The decay's data-dependent part (tanh inside).
    decay_lora: LowRank,
    gate: Projection,
    receptance: Projection,
    lerp_r: Vec<f32>,
}

/// RWKV-7's time mixing weights.
struct TimeMix7 {
    /// The six streams' mix (r, w, k, v, a, g), `[6, hidden]`.
    lerp: Vec<f32>,
    /// Decay: base and low-rank part (tanh inside).
    w0: Vec<f32>,
    w: LowRank,
    /// In-context learning rate: base and low-rank part.
    a0: Vec<f32>,
    a: LowRank,
    /// The value residual's gate toward the first layer's values (unused in layer 0).
    v0: Vec<f32>,
    v: LowRank,
    /// The output gate (sigmoid inside).
    g: LowRank,
    k_k: Vec<f32>,
    k_a: Vec<f32>,
    r_k: Vec<f32>,
}

/// A low-rank map `up(f(down x))`, RWKV's "LoRA" for data-dependent parameters.
struct LowRank {
    down: Projection,
    up: Projection,
}

impl LowRank {
    /// `name1` (hidden → rank) and `name2` (rank → hidden).
    fn load(w: &Checkpoint, name: &str, rank: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            down: w.projection(&format!("{name}1"), rank, hidden, false)?,
            up: w.projection(&format!("{name}2"), hidden, rank, false)?,
        })
    }

    /// `t` rows of `x` through the map, `inner` applied between the two projections.
    fn apply(&self, x: &[f32], t: usize, inner: fn(f32) -> f32) -> Result<Vec<f32>> {
        let middle: Vec<f32> = self.down.apply(x, t)?.into_iter().map(inner).collect();
        self.up.apply(&middle, t)
    }

    fn weights(&self) -> usize {
        self.down.weights + self.up.weights
    }
}

/// The low-rank widths a version's time mixing is read with.
#[derive(Clone, Copy)]
enum Ranks {
    Six {
        mix: usize,
        decay: usize,
    },
    Seven {
        decay: usize,
        iclr: usize,
        value: usize,
        gate: usize,
    },
}

/// A layer's time mixing, by version.
enum Version {
    Six(Box<TimeMix6>),
    Seven(Box<TimeMix7>),
}

/// One block's weights.
struct Layer {
    attn_norm: LayerNorm,
    ffn_norm: LayerNorm,
    key: Projection,
    value: Projection,
    receptance: Projection,
    output: Projection,
    group_norm: LayerNorm,
    time: Version,
    ffn_lerp_k: Vec<f32>,
    ffn_key: Projection,
    ffn_value: Projection,
}

/// One layer's sequence state.
struct State {
    /// The last token's normed input to time mixing and to channel mixing.
    attn_shift: Vec<f32>,
    ffn_shift: Vec<f32>,
    /// Per head, the WKV matrix, `[heads, head, head]`.
    wkv: Vec<f32>,
}

/// An RWKV-6 or RWKV-7 network and its sequence state.
pub(crate) struct Rwkv {
    hidden: usize,
    head: usize,
    vocab: usize,
    eps: f32,
    /// RWKV-6 halves the residual stream after every this many layers (0: never).
    rescale_every: usize,
    embeddings: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    output_norm: LayerNorm,
    lm_head: Projection,
    states: Vec<State>,
}

/// Read an `rwkv6` or `rwkv7` GGUF file as a runnable model.
pub fn load_gguf(gguf: GgufFile, options: &LoadOptions) -> Result<Box<dyn LanguageModel>> {
    Ok(Box::new(Rwkv::from_gguf(gguf, options)?))
}

impl Rwkv {
    fn from_gguf(gguf: GgufFile, options: &LoadOptions) -> Result<Recurrent<Self>> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        let key = |k: &str| gguf.get_usize(&format!("{arch}.{k}"));
        let hidden = key("embedding_length")?;
        let head = key("wkv.head_size")?;
        let layers = key("block_count")?;
        let ffn = key("feed_forward_length")?;
        let eps = gguf.get_f64(&format!("{arch}.attention.layer_norm_epsilon"))? as f32;
        let rescale_every = key("rescale_every_n_layers").unwrap_or(0);
        let shift = key("token_shift_count").unwrap_or(2);
        let bad = |reason: String| ModelError::BadGguf {
            path: gguf.path().to_path_buf(),
            reason,
        };
        if head == 0 || hidden % head != 0 || shift != 2 {
            return Err(bad(format!(
                "{arch}: embedding length {hidden}, head size {head} and token shift count {shift} are not ones this model runs (the head size must divide the width; two shifts)"
            )));
        }
        // The low-rank widths of each version's time mixing.
        let ranks = match arch.as_str() {
            "rwkv6" => Ranks::Six {
                mix: key("time_mix_extra_dim")?,
                decay: key("time_decay_extra_dim")?,
            },
            "rwkv7" => {
                let rank = |k: &str| key(&format!("attention.{k}_lora_rank"));
                Ranks::Seven {
                    decay: rank("decay")?,
                    iclr: rank("iclr")?,
                    value: rank("value_residual_mix")?,
                    gate: rank("gate")?,
                }
            }
            other => return Err(bad(format!("architecture {other} is not RWKV-6 or RWKV-7"))),
        };
        let w = Checkpoint::gguf(gguf, options);
        let vocab = w.dims("token_embd.weight")?[0];
        let load_layer = |b: usize| -> Result<Layer> {
            let n = |name: &str| format!("blk.{b}.{name}");
            let proj = |name: &str, out: usize, inp: usize| w.projection(&n(name), out, inp, false);
            let vector = |name: &str| w.tensor(&n(&format!("{name}.weight")), &[hidden]);
            let lerp = |name: &str| w.tensor(&n(&format!("{name}.weight")), &[1, 1, hidden]);
            let time = match ranks {
                Ranks::Six { mix, decay } => {
                    let w2 = w.tensor(&n("time_mix_w2.weight"), &[5, hidden, mix])?;
                    Version::Six(Box::new(TimeMix6 {
                        lerp_x: lerp("time_mix_lerp_x")?,
                        w1: proj("time_mix_w1", 5 * mix, hidden)?,
                        w2: w2
                            .chunks_exact(hidden * mix)
                            .map(|m| Projection::new(m.to_vec(), hidden, mix, None))
                            .collect::<Result<_>>()?,
                        lerp: w.tensor(&n("time_mix_lerp_fused.weight"), &[5, 1, 1, hidden])?,
                        first: w.tensor(&n("time_mix_first.weight"), &[hidden / head, head])?,
                        decay: vector("time_mix_decay")?,
                        decay_lora: LowRank::load(&w, &n("time_mix_decay_w"), decay, hidden)?,
                        gate: proj("time_mix_gate", hidden, hidden)?,
                        receptance: proj("channel_mix_receptance", hidden, hidden)?,
                        lerp_r: lerp("channel_mix_lerp_r")?,
                    }))
                }
                Ranks::Seven {
                    decay,
                    iclr,
                    value,
                    gate,
                } => {
                    // Layer 0's value-residual LoRA is unused and sized by the ICLR rank.
                    let value = if b == 0 { iclr } else { value };
                    Version::Seven(Box::new(TimeMix7 {
                        lerp: w.tensor(&n("time_mix_lerp_fused.weight"), &[6, 1, 1, hidden])?,
                        w0: vector("time_mix_w0")?,
                        w: LowRank::load(&w, &n("time_mix_w"), decay, hidden)?,
                        a0: vector("time_mix_a0")?,
                        a: LowRank::load(&w, &n("time_mix_a"), iclr, hidden)?,
                        v0: vector("time_mix_v0")?,
                        v: LowRank::load(&w, &n("time_mix_v"), value, hidden)?,
                        g: LowRank::load(&w, &n("time_mix_g"), gate, hidden)?,
                        k_k: vector("time_mix_k_k")?,
                        k_a: vector("time_mix_k_a")?,
                        r_k: vector("time_mix_r_k")?,
                    }))
                }
            };
            Ok(Layer {
                attn_norm: LayerNorm::load(&w, &n("attn_norm"), hidden)?,
                ffn_norm: LayerNorm::load(&w, &n("attn_norm_2"), hidden)?,
                key: proj("time_mix_key", hidden, hidden)?,
                value: proj("time_mix_value", hidden, hidden)?,
                receptance: proj("time_mix_receptance", hidden, hidden)?,
                output: proj("time_mix_output", hidden, hidden)?,
                group_norm: LayerNorm::load(&w, &n("time_mix_ln"), hidden)?,
                time,
                ffn_lerp_k: lerp("channel_mix_lerp_k")?,
                ffn_key: proj("channel_mix_key", ffn, hidden)?,
                ffn_value: proj("channel_mix_value", hidden, ffn)?,
            })
        };
        let layers = (0..layers).map(load_layer).collect::<Result<Vec<_>>>()?;
        let states = layers
            .iter()
            .map(|_| State {
                attn_shift: vec![0.0; hidden],
                ffn_shift: vec![0.0; hidden],
                wkv: vec![0.0; hidden * head],
            })
            .collect();
        let network = Self {
            hidden,
            head,
            vocab,
            eps,
            rescale_every,
            embeddings: w.tensor("token_embd.weight", &[vocab, hidden])?,
            embed_norm: LayerNorm::load(&w, "token_embd_norm", hidden)?,
            output_norm: LayerNorm::load(&w, "output_norm", hidden)?,
            lm_head: w.projection("output", vocab, hidden, false)?,
            layers,
            states,
        };
        Ok(Recurrent::new(network, &w, options))
    }
}

/// Each row of `x` with the row before it (`shift` for the first): the token-shifted input.
/// Updates `shift` to the last row.
fn shifted(x: &[f32], shift: &mut [f32]) -> Vec<f32> {
    let width = shift.len();
    let mut previous = shift.to_vec();
    previous.extend_from_slice(&x[..x.len() - width]);
    shift.copy_from_slice(&x[x.len() - width..]);
    previous
}

/// `x + (previous − x) · mix`, row by row (`mix` one hidden-wide row).
fn lerp(x: &[f32], previous: &[f32], mix: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(previous)
        .zip(mix.iter().cycle())
        .map(|((x, p), m)| x + (p - x) * m)
        .collect()
}

/// A chunk's normed rows as time mixing reads them.
struct Rows<'a> {
    /// `[t, hidden]`.
    x: &'a [f32],
    /// Each row's predecessor (the token shift), `[t, hidden]`.
    previous: &'a [f32],
    t: usize,
    /// Width of a WKV head.
    head: usize,
}

impl Layer {
    /// Time mixing of a chunk's rows through the layer's WKV state. `first_values` carries
    /// RWKV-7's first-layer values to later layers.
    fn time_mix(
        &self,
        rows: &Rows,
        wkv: &mut [f32],
        first_values: &mut Option<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        match &self.time {
            Version::Six(m) => self.time_mix6(m, rows, wkv),
            Version::Seven(m) => self.time_mix7(m, rows, wkv, first_values),
        }
    }

    /// RWKV-6: data-dependent token shift (five streams through a shared LoRA), a decay per
    /// channel and token, and the WKV-6 recurrence per head:
    /// out_j = Σ_i r_i (u_i k_i v_j + S_ij); S_ij ← S_ij w_i + k_i v_j.
    fn time_mix6(&self, m: &TimeMix6, rows: &Rows, wkv: &mut [f32]) -> Result<Vec<f32>> {
        let &Rows {
            x,
            previous,
            t,
            head,
        } = rows;
        let hidden = self.group_norm.weight.len();
        let mixed: Vec<f32> =
            m.w1.apply(&lerp(x, previous, &m.lerp_x), t)?
                .into_iter()
                .map(f32::tanh)
                .collect();
        let width = m.w1.outputs() / 5;
        // Stream s: x + (previous − x) · (lerp_s + W2_s · tanh(W1 · xxx)_s).
        let stream = |s: usize| -> Result<Vec<f32>> {
            let slice: Vec<f32> = mixed
                .chunks_exact(5 * width)
                .flat_map(|row| row[s * width..(s + 1) * width].iter().copied())
                .collect();
            let offsets = m.w2[s].apply(&slice, t)?;
            let base = &m.lerp[s * hidden..(s + 1) * hidden];
            Ok(x.iter()
                .zip(previous)
                .zip(offsets.iter().zip(base.iter().cycle()))
                .map(|((x, p), (o, b))| x + (p - x) * (o + b))
                .collect())
        };
        let (xw, xk, xv, xr, xg) = (stream(0)?, stream(1)?, stream(2)?, stream(3)?, stream(4)?);
        let decay: Vec<f32> = m
            .decay_lora
            .apply(&xw, t, f32::tanh)?
            .into_iter()
            .zip(m.decay.iter().cycle())
            .map(|(d, base)| (-(d + base).exp()).exp())
            .collect();
        let (r, k, v) = (
            self.receptance.apply(&xr, t)?,
            self.key.apply(&xk, t)?,
            self.value.apply(&xv, t)?,
        );
        let mut out = vec![0f32; t * hidden];
        for step in 0..t {
            for (h, state) in wkv.chunks_exact_mut(head * head).enumerate() {
                let at = step * hidden + h * head..step * hidden + (h + 1) * head;
                let (r, k, v, w) = (
                    &r[at.clone()],
                    &k[at.clone()],
                    &v[at.clone()],
                    &decay[at.clone()],
                );
                let u = &m.first[h * head..(h + 1) * head];
                let out = &mut out[at];
                for (i, s) in state.chunks_exact_mut(head).enumerate() {
                    for ((s, o), v) in s.iter_mut().zip(out.iter_mut()).zip(v) {
                        let kv = k[i] * v;
                        *o += r[i] * (u[i] * kv + *s);
                        *s = *s * w[i] + kv;
                    }
                }
            }
        }
        let mut out = self.group_norm_heads(out, head);
        for (o, g) in out.iter_mut().zip(m.gate.apply(&xg, t)?) {
            *o *= silu(g);
        }
        self.output.apply(&out, t)
    }

    /// RWKV-7: six statically mixed streams, LoRA decay, in-context learning rate and gate,
    /// values pulled toward the first layer's, then the WKV-7 recurrence.
    fn time_mix7(
        &self,
        m: &TimeMix7,
        rows: &Rows,
        wkv: &mut [f32],
        first_values: &mut Option<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let &Rows {
            x,
            previous,
            t,
            head,
        } = rows;
        let hidden = self.group_norm.weight.len();
        let stream = |s: usize| lerp(x, previous, &m.lerp[s * hidden..(s + 1) * hidden]);
        let (xr, xw, xk, xv, xa, xg) = (
            stream(0),
            stream(1),
            stream(2),
            stream(3),
            stream(4),
            stream(5),
        );
        let decay: Vec<f32> =
            m.w.apply(&xw, t, f32::tanh)?
                .into_iter()
                .zip(m.w0.iter().cycle())
                .map(|(d, base)| (-0.606531 * sigmoid(d + base)).exp())
                .collect();
        let mut v = self.value.apply(&xv, t)?;
        match first_values {
            None => *first_values = Some(v.clone()),
            Some(first) => {
                let mix = m.v.apply(&xv, t, |x| x)?;
                for ((v, f), (g, base)) in v
                    .iter_mut()
                    .zip(first.iter())
                    .zip(mix.iter().zip(m.v0.iter().cycle()))
                {
                    *v += (f - *v) * sigmoid(g + base);
                }
            }
        }
        let gate = m.g.apply(&xg, t, sigmoid)?;
        let a: Vec<f32> =
            m.a.apply(&xa, t, |x| x)?
                .into_iter()
                .zip(m.a0.iter().cycle())
                .map(|(a, base)| sigmoid(a + base))
                .collect();
        let k = self.key.apply(&xk, t)?;
        let r = self.receptance.apply(&xr, t)?;
        self.wkv7(m, t, head, wkv, r, k, v, decay, a, gate)
    }

    /// RWKV-7's WKV recurrence and output (the "generalized delta rule"): per head,
    /// sa_i = −Σ_j kk_j S_ij; S_ij ← S_ij w_j + v_i k_j + sa_i kk_j a_j; out_i = Σ_j S_ij r_j.
    #[allow(clippy::too_many_arguments)]
    fn wkv7(
        &self,
        m: &TimeMix7,
        t: usize,
        head: usize,
        wkv: &mut [f32],
        r: Vec<f32>,
        mut k: Vec<f32>,
        v: Vec<f32>,
        decay: Vec<f32>,
        a: Vec<f32>,
        gate: Vec<f32>,
    ) -> Result<Vec<f32>> {
        let hidden = self.group_norm.weight.len();
        // kk: k · k_k, L2-normalized per head; k ← k (1 + (a − 1) k_a).
        let mut kk: Vec<f32> = k
            .iter()
            .zip(m.k_k.iter().cycle())
            .map(|(k, s)| k * s)
            .collect();
        for h in kk.chunks_exact_mut(head) {
            let norm = h.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            h.iter_mut().for_each(|v| *v /= norm);
        }
        for ((k, a), ka) in k.iter_mut().zip(&a).zip(m.k_a.iter().cycle()) {
            let scaled = *k * ka;
            *k += a * scaled - scaled;
        }
        let mut out = vec![0f32; t * hidden];
        for step in 0..t {
            let row = step * hidden..(step + 1) * hidden;
            for (h, state) in wkv.chunks_exact_mut(head * head).enumerate() {
                let at = row.start + h * head..row.start + (h + 1) * head;
                let (r, k, v, w, kk, a) = (
                    &r[at.clone()],
                    &k[at.clone()],
                    &v[at.clone()],
                    &decay[at.clone()],
                    &kk[at.clone()],
                    &a[at.clone()],
                );
                let out = &mut out[at];
                for (i, s) in state.chunks_exact_mut(head).enumerate() {
                    let sa: f32 = -s.iter().zip(kk).map(|(s, kk)| s * kk).sum::<f32>();
                    let mut result = 0f32;
                    for j in 0..head {
                        s[j] = s[j] * w[j] + v[i] * k[j] + sa * kk[j] * a[j];
                        result += s[j] * r[j];
                    }
                    out[i] = result;
                }
            }
        }
        let mut out = self.group_norm_heads(out, head);
        // Plus each head's value scaled by Σ (k r r_k) over the head, then the gate.
        for step in 0..t {
            for h in 0..hidden / head {
                let at = step * hidden + h * head..step * hidden + (h + 1) * head;
                let rk: f32 = k[at.clone()]
                    .iter()
                    .zip(&r[at.clone()])
                    .zip(&m.r_k[h * head..(h + 1) * head])
                    .map(|((k, r), s)| k * r * s)
                    .sum();
                for (o, v) in out[at.clone()].iter_mut().zip(&v[at]) {
                    *o += v * rk;
                }
            }
        }
        for (o, g) in out.iter_mut().zip(&gate) {
            *o *= g;
        }
        self.output.apply(&out, t)
    }

    /// The WKV output normalized per head (no affine), then by the group norm's weight and
    /// bias over the whole width.
    fn group_norm_heads(&self, mut out: Vec<f32>, head: usize) -> Vec<f32> {
        for h in out.chunks_exact_mut(head) {
            normalize(h, GROUP_NORM_EPS);
        }
        let n = &self.group_norm;
        for row in out.chunks_exact_mut(n.weight.len()) {
            for ((v, w), b) in row.iter_mut().zip(&n.weight).zip(&n.bias) {
                *v = *v * w + b;
            }
        }
        out
    }

    /// Channel mixing of `t` normed rows: `V relu(K xk)²`, gated by `σ(R xr)` in RWKV-6.
    fn channel_mix(&self, x: &[f32], previous: &[f32], t: usize) -> Result<Vec<f32>> {
        let k: Vec<f32> = self
            .ffn_key
            .apply(&lerp(x, previous, &self.ffn_lerp_k), t)?
            .into_iter()
            .map(|v| v.max(0.0).powi(2))
            .collect();
        let mut out = self.ffn_value.apply(&k, t)?;
        if let Version::Six(m) = &self.time {
            let r = m.receptance.apply(&lerp(x, previous, &m.lerp_r), t)?;
            for (o, r) in out.iter_mut().zip(r) {
                *o *= sigmoid(r);
            }
        }
        Ok(out)
    }
}

impl RecurrentNetwork for Rwkv {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn forward(&mut self, tokens: &[u32], _position: usize) -> Result<Vec<f32>> {
        let t = tokens.len();
        let mut x = self
            .embed_norm
            .apply(&embed(&self.embeddings, self.hidden, tokens), self.eps);
        // RWKV-7's first layer's values, mixed into every later layer's.
        let mut first_values = None;
        for (l, (layer, state)) in self.layers.iter().zip(&mut self.states).enumerate() {
            let normed = layer.attn_norm.apply(&x, self.eps);
            let previous = shifted(&normed, &mut state.attn_shift);
            let rows = Rows {
                x: &normed,
                previous: &previous,
                t,
                head: self.head,
            };
            let mixed = layer.time_mix(&rows, &mut state.wkv, &mut first_values)?;
            for (xv, m) in x.iter_mut().zip(mixed) {
                *xv += m;
            }
            let normed = layer.ffn_norm.apply(&x, self.eps);
            let previous = shifted(&normed, &mut state.ffn_shift);
            for (xv, m) in x.iter_mut().zip(layer.channel_mix(&normed, &previous, t)?) {
                *xv += m;
            }
            if self.rescale_every > 0 && (l + 1) % self.rescale_every == 0 {
                x.iter_mut().for_each(|v| *v *= 0.5);
            }
        }
        Ok(self.output_norm.apply(&x, self.eps))
    }

    fn logits(&self, hidden: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.lm_head.apply(hidden, rows)
    }

    fn state_bytes(&self) -> usize {
        self.states
            .iter()
            .map(|s| s.attn_shift.len() + s.ffn_shift.len() + s.wkv.len())
            .sum::<usize>()
            * std::mem::size_of::<f32>()
    }

    fn reset(&mut self) {
        for s in &mut self.states {
            s.attn_shift.fill(0.0);
            s.ffn_shift.fill(0.0);
            s.wkv.fill(0.0);
        }
    }

    fn compute_profile(&self) -> ComputeProfile {
        // The WKV update and read-out: a few multiply-adds per state entry.
        let wkv = 3 * self.hidden * self.head * self.layers.len();
        ComputeProfile {
            layer_weights: self.layer_weights() + wkv,
            head_weights: self.vocab * self.hidden,
            attention: Vec::new(),
        }
    }

    fn school(&self) -> &'static str {
        "linear-time"
    }
}

impl Rwkv {
    /// Matrix weights in the layers (what each token is multiplied by).
    fn layer_weights(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let shared = l.key.weights
                    + l.value.weights
                    + l.receptance.weights
                    + l.output.weights
                    + l.ffn_key.weights
                    + l.ffn_value.weights;
                let own = match &l.time {
                    Version::Six(m) => {
                        m.w1.weights
                            + m.w2.iter().map(|p| p.weights).sum::<usize>()
                            + m.decay_lora.weights()
                            + m.gate.weights
                            + m.receptance.weights
                    }
                    Version::Seven(m) => [&m.w, &m.a, &m.v, &m.g].iter().map(|l| l.weights()).sum(),
                };
                shared + own
            })
            .sum()
    }
}
