//! RecurrentGemma (Griffin: De et al., 2024; Botev et al., 2024), Hugging Face's
//! `RecurrentGemmaForCausalLM` layout: residual blocks whose temporal mixing is either a
//! recurrent block (two branches, a causal convolution and the RG-LRU recurrence on one) or
//! local multi-query attention over the last `attention_window_size` tokens, in the pattern
//! `block_types` repeats; each block ends in a gated GELU MLP.
//!
//! The state is constant in the context's length: per recurrent layer the convolution's last
//! inputs and one RG-LRU vector, per attention layer a ring of the window's keys and values
//! (allocated whole, so `state_bytes` does not grow).
//!
//! **Prefill attends within the window**, as Griffin defines local attention and as
//! transformers does in decoding. transformers' prefill instead masks only the future, so
//! a prompt longer than the window is attended whole before decoding falls back to the
//! window (the paper ran the model that way, with 7,500-token prompts and a 2,048 window);
//! the two agree on prompts up to the window. Checked against transformers' logits on a tiny
//! random model: a prefill within the window, and decoding well past it (`tests/linear.rs`).

use std::path::Path;

use serde::Deserialize;

use crate::recurrent::{
    embed, rms_norm_rows, softplus, CausalConv, Checkpoint, Projection, Recurrent, RecurrentNetwork,
};
use crate::{AttentionWork, ComputeProfile, LanguageModel, LoadOptions, Result};

/// The longest local-attention window read (the released models use 2,048): the window's
/// ring is allocated whole, so a config asking for more is refused before it is.
const MAX_WINDOW: usize = 1 << 20;

fn default_true() -> bool {
    true
}

/// The fields of a RecurrentGemma config.json this model reads.
#[derive(Deserialize, Clone)]
struct RecurrentGemmaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    lru_width: usize,
    attention_window_size: usize,
    conv1d_width: usize,
    logits_soft_cap: f32,
    rms_norm_eps: f64,
    rope_theta: f32,
    partial_rotary_factor: f64,
    block_types: Vec<String>,
    hidden_activation: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
}

/// A recurrent block's weights: `out(gelu(y(x)) ⊙ rglru(conv(x_branch(x))))`.
struct RecurrentBlock {
    linear_y: Projection,
    linear_x: Projection,
    linear_out: Projection,
    conv: CausalConv,
    /// Per head: the input gate's and the recurrent gate's block of the block-diagonal
    /// matrices, each `[block_width, block_width]` with its bias.
    input_gates: Vec<Projection>,
    recurrent_gates: Vec<Projection>,
    /// −8 · softplus(Λ): the log of the recurrence's decay is this times the recurrent gate.
    log_decay_scale: Vec<f32>,
}

/// A local-attention block's weights.
struct AttentionBlock {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
}

enum Temporal {
    Recurrent(RecurrentBlock),
    Attention(AttentionBlock),
}

/// One residual block's weights.
struct Layer {
    /// 1 + the pre-norm weight (Gemma's norm scales by 1 + w).
    temporal_norm: Vec<f32>,
    temporal: Temporal,
    channel_norm: Vec<f32>,
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

/// One layer's sequence state.
enum State {
    Recurrent {
        /// The convolution's last inputs, `[lru_width, conv1d_width]`.
        conv: Vec<f32>,
        /// The RG-LRU's hidden vector.
        hidden: Vec<f32>,
    },
    /// The window's keys and values, `[window, kv_heads × head_dim]`; position p sits in
    /// slot p mod window.
    Attention { keys: Vec<f32>, values: Vec<f32> },
}

/// A RecurrentGemma network and its sequence state.
pub(crate) struct RecurrentGemma {
    config: RecurrentGemmaConfig,
    /// Dimensions rotated by RoPE in each head (the first ones).
    rotary: usize,
    /// The rotary frequencies, as transformers computes them in f32.
    inverse_frequencies: Vec<f32>,
    /// √hidden rounded to bfloat16, as transformers scales the embeddings.
    embedding_scale: f32,
    embeddings: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: Projection,
    states: Vec<State>,
}

/// Read a Hugging Face RecurrentGemma folder as a runnable model.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Box<dyn LanguageModel>> {
    Ok(Box::new(RecurrentGemma::from_hf_dir(dir, options)?))
}

/// GELU, tanh approximation (`gelu_pytorch_tanh`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl RecurrentGemma {
    fn from_hf_dir(dir: &Path, options: &LoadOptions) -> Result<Recurrent<Self>> {
        let c: RecurrentGemmaConfig = Checkpoint::config(dir, "RecurrentGemma")?;
        let w = Checkpoint::safetensors(dir, options)?;
        let (h, lru, heads) = (c.hidden_size, c.lru_width, c.num_attention_heads);
        let rotary = (c.partial_rotary_factor * c.head_dim as f64) as usize;
        let sane = c.hidden_activation == "gelu_pytorch_tanh"
            && !c.block_types.is_empty()
            && heads > 0
            && lru % heads == 0
            && c.num_key_value_heads > 0
            && heads % c.num_key_value_heads == 0
            && rotary.is_multiple_of(2)
            && rotary <= c.head_dim
            && (1..=MAX_WINDOW).contains(&c.attention_window_size);
        if !sane {
            return Err(w.bad(format!(
                "config.json's activation ({}), block types ({:?}), heads ({heads}, {} for keys), \
                 LRU width ({lru}), rotary dimensions ({rotary} of {}) or window ({}, at most {MAX_WINDOW}) are not ones this model runs",
                c.hidden_activation,
                c.block_types,
                c.num_key_value_heads,
                c.head_dim,
                c.attention_window_size
            )));
        }
        let block_width = lru / heads;
        let (q_width, kv_width) = (heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let mlp = c.intermediate_size / 2;
        let one_plus = |v: Vec<f32>| v.into_iter().map(|x| 1.0 + x).collect::<Vec<_>>();
        let mut states = Vec::new();
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let t = format!("{p}.temporal_block");
            let temporal = match c.block_types[l % c.block_types.len()].as_str() {
                "recurrent" => {
                    let gates = |name: &str| -> Result<Vec<Projection>> {
                        let weights = w.tensor(
                            &format!("{t}.rg_lru.{name}_weight"),
                            &[heads, block_width, block_width],
                        )?;
                        let bias =
                            w.tensor(&format!("{t}.rg_lru.{name}_bias"), &[heads, block_width])?;
                        // transformers multiplies x by W (not Wᵀ): W is `[inputs, outputs]`.
                        weights
                            .chunks_exact(block_width * block_width)
                            .zip(bias.chunks_exact(block_width))
                            .map(|(m, b)| {
                                let mut transposed = vec![0f32; m.len()];
                                for i in 0..block_width {
                                    for j in 0..block_width {
                                        transposed[j * block_width + i] = m[i * block_width + j];
                                    }
                                }
                                Projection::new(
                                    transposed,
                                    block_width,
                                    block_width,
                                    Some(b.to_vec()),
                                )
                            })
                            .collect()
                    };
                    let block = RecurrentBlock {
                        linear_y: w.projection(&format!("{t}.linear_y"), lru, h, true)?,
                        linear_x: w.projection(&format!("{t}.linear_x"), lru, h, true)?,
                        linear_out: w.projection(&format!("{t}.linear_out"), h, lru, true)?,
                        conv: w.convolution(&format!("{t}.conv_1d"), lru, c.conv1d_width, true)?,
                        input_gates: gates("input_gate")?,
                        recurrent_gates: gates("recurrent_gate")?,
                        log_decay_scale: w
                            .tensor(&format!("{t}.rg_lru.recurrent_param"), &[lru])?
                            .into_iter()
                            .map(|v| -8.0 * softplus(v))
                            .collect(),
                    };
                    states.push(State::Recurrent {
                        conv: block.conv.empty_state(),
                        hidden: vec![0.0; lru],
                    });
                    Temporal::Recurrent(block)
                }
                "attention" => {
                    let bias = c.attention_bias;
                    // The projections first: their tensors bound the key width the window's
                    // ring is allocated with.
                    let block = AttentionBlock {
                        q_proj: w.projection(&format!("{t}.q_proj"), q_width, h, bias)?,
                        k_proj: w.projection(&format!("{t}.k_proj"), kv_width, h, bias)?,
                        v_proj: w.projection(&format!("{t}.v_proj"), kv_width, h, bias)?,
                        o_proj: w.projection(&format!("{t}.o_proj"), h, q_width, true)?,
                    };
                    states.push(State::Attention {
                        keys: vec![0.0; c.attention_window_size * kv_width],
                        values: vec![0.0; c.attention_window_size * kv_width],
                    });
                    Temporal::Attention(block)
                }
                other => {
                    return Err(w.bad(format!(
                    "config.json's block type {other:?} is neither \"recurrent\" nor \"attention\""
                )))
                }
            };
            layers.push(Layer {
                temporal_norm: one_plus(w.tensor(&format!("{p}.temporal_pre_norm.weight"), &[h])?),
                temporal,
                channel_norm: one_plus(w.tensor(&format!("{p}.channel_pre_norm.weight"), &[h])?),
                gate_proj: w.projection(&format!("{p}.mlp_block.gate_proj"), mlp, h, true)?,
                up_proj: w.projection(&format!("{p}.mlp_block.up_proj"), mlp, h, true)?,
                down_proj: w.projection(&format!("{p}.mlp_block.down_proj"), h, mlp, true)?,
            });
        }
        let embeddings = w.tensor("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let tied = c.tie_word_embeddings.then_some(embeddings.as_slice());
        let lm_head = w.output_head("lm_head", tied, c.vocab_size, h)?;
        let network = Self {
            rotary,
            inverse_frequencies: (0..rotary / 2)
                .map(|j| 1.0 / c.rope_theta.powf((2 * j) as f32 / rotary as f32))
                .collect(),
            embedding_scale: half::bf16::from_f64((h as f64).sqrt()).to_f32(),
            embeddings,
            final_norm: one_plus(w.tensor("model.final_norm.weight", &[h])?),
            layers,
            lm_head,
            states,
            config: c,
        };
        Ok(Recurrent::new(network, &w, options))
    }

    /// Rotate the first `rotary` dimensions of each `head_dim`-wide head in `x` to
    /// `position` (transformers' rotate-half layout).
    fn rope(&self, x: &mut [f32], position: usize) {
        let half = self.rotary / 2;
        for head in x.chunks_exact_mut(self.config.head_dim) {
            for (j, freq) in self.inverse_frequencies.iter().enumerate() {
                let angle = position as f32 * freq;
                let (sin, cos) = angle.sin_cos();
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * cos - b * sin;
                head[j + half] = b * cos + a * sin;
            }
        }
    }
}

impl RecurrentBlock {
    /// `t` normed rows through the recurrent block, from the sequence's `position`.
    fn forward(
        &self,
        x: &[f32],
        t: usize,
        position: usize,
        conv_state: &mut [f32],
        hidden: &mut [f32],
    ) -> Result<Vec<f32>> {
        let lru = hidden.len();
        let y_branch = self.linear_y.apply(x, t)?;
        let x_branch = self.linear_x.apply(x, t)?;
        let mut conv_out = vec![0f32; t * lru];
        for (row, out) in x_branch
            .chunks_exact(lru)
            .zip(conv_out.chunks_exact_mut(lru))
        {
            self.conv.step(conv_state, row, out);
        }
        // The gates, one GEMM per head over the chunk.
        let block_width = lru / self.input_gates.len();
        let mut input_gate = vec![0f32; t * lru];
        let mut recurrent_gate = vec![0f32; t * lru];
        for (head, (input, recurrent)) in self
            .input_gates
            .iter()
            .zip(&self.recurrent_gates)
            .enumerate()
        {
            let columns = head * block_width..(head + 1) * block_width;
            let slice: Vec<f32> = conv_out
                .chunks_exact(lru)
                .flat_map(|row| row[columns.clone()].iter().copied())
                .collect();
            for (gates, projection) in [(&mut input_gate, input), (&mut recurrent_gate, recurrent)]
            {
                let values = projection.apply(&slice, t)?;
                for (row, v) in gates
                    .chunks_exact_mut(lru)
                    .zip(values.chunks_exact(block_width))
                {
                    row[columns.clone()]
                        .iter_mut()
                        .zip(v)
                        .for_each(|(g, v)| *g = sigmoid(*v));
                }
            }
        }
        // The RG-LRU, token by token; the sequence's first token resets it.
        let mut out = vec![0f32; t * lru];
        for step in 0..t {
            let first = position + step == 0;
            for (ch, (h, scale)) in hidden.iter_mut().zip(&self.log_decay_scale).enumerate() {
                let i = step * lru + ch;
                let log_decay = scale * recurrent_gate[i];
                let gated = conv_out[i] * input_gate[i];
                *h = match first {
                    true => gated,
                    false => {
                        let normaliser = (1.0 - (2.0 * log_decay).exp()).sqrt();
                        log_decay.exp() * *h + gated * normaliser
                    }
                };
                out[i] = *h * gelu_tanh(y_branch[i]);
            }
        }
        self.linear_out.apply(&out, t)
    }
}

impl RecurrentNetwork for RecurrentGemma {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn forward(&mut self, tokens: &[u32], position: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let h = c.hidden_size;
        let t = tokens.len();
        let mut x = embed(&self.embeddings, h, tokens);
        x.iter_mut().for_each(|v| *v *= self.embedding_scale);
        let mut states = std::mem::take(&mut self.states);
        for (layer, state) in self.layers.iter().zip(&mut states) {
            let normed = rms_norm_rows(&x, h, &layer.temporal_norm, c.rms_norm_eps);
            let mixed = match (&layer.temporal, state) {
                (Temporal::Recurrent(block), State::Recurrent { conv, hidden }) => {
                    block.forward(&normed, t, position, conv, hidden)?
                }
                (Temporal::Attention(block), State::Attention { keys, values }) => {
                    self.attend(block, &normed, t, position, keys, values)?
                }
                _ => unreachable!("states are built layer by layer from the weights"),
            };
            for (xv, m) in x.iter_mut().zip(mixed) {
                *xv += m;
            }
            let normed = rms_norm_rows(&x, h, &layer.channel_norm, c.rms_norm_eps);
            let gate = layer.gate_proj.apply(&normed, t)?;
            let up = layer.up_proj.apply(&normed, t)?;
            let product: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| gelu_tanh(*g) * u)
                .collect();
            for (xv, o) in x.iter_mut().zip(layer.down_proj.apply(&product, t)?) {
                *xv += o;
            }
        }
        self.states = states;
        Ok(rms_norm_rows(&x, h, &self.final_norm, c.rms_norm_eps))
    }

    fn logits(&self, hidden: &[f32], rows: usize) -> Result<Vec<f32>> {
        let cap = self.config.logits_soft_cap;
        let mut logits = self.lm_head.apply(hidden, rows)?;
        logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        Ok(logits)
    }

    fn state_bytes(&self) -> usize {
        let values: usize = self
            .states
            .iter()
            .map(|s| match s {
                State::Recurrent { conv, hidden } => conv.len() + hidden.len(),
                State::Attention { keys, values } => keys.len() + values.len(),
            })
            .sum();
        values * std::mem::size_of::<f32>()
    }

    fn reset(&mut self) {
        for s in &mut self.states {
            match s {
                State::Recurrent { conv, hidden } => {
                    conv.fill(0.0);
                    hidden.fill(0.0);
                }
                State::Attention { keys, values } => {
                    keys.fill(0.0);
                    values.fill(0.0);
                }
            }
        }
    }

    fn school(&self) -> &'static str {
        "hybrid"
    }

    fn compute_profile(&self) -> ComputeProfile {
        let c = &self.config;
        // Matrix weights each token is multiplied by, per layer.
        let layer_weights = self
            .layers
            .iter()
            .map(|l| {
                let temporal = match &l.temporal {
                    Temporal::Recurrent(b) => [&b.linear_y, &b.linear_x, &b.linear_out]
                        .into_iter()
                        .chain(&b.input_gates)
                        .chain(&b.recurrent_gates)
                        .map(|p| p.weights)
                        .sum::<usize>(),
                    Temporal::Attention(b) => [&b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj]
                        .iter()
                        .map(|p| p.weights)
                        .sum(),
                };
                temporal + l.gate_proj.weights + l.up_proj.weights + l.down_proj.weights
            })
            .sum();
        let width = c.num_attention_heads * c.head_dim;
        let attention = self
            .layers
            .iter()
            .filter(|l| matches!(l.temporal, Temporal::Attention(_)))
            .map(|_| AttentionWork {
                width,
                window: Some(c.attention_window_size),
            })
            .collect();
        ComputeProfile {
            layer_weights,
            head_weights: c.vocab_size * c.hidden_size,
            attention,
        }
    }
}

impl RecurrentGemma {
    /// `t` normed rows through a local-attention block from the sequence's `position`: each
    /// token's key and value enter the window's ring, then its query attends to the window.
    fn attend(
        &self,
        block: &AttentionBlock,
        x: &[f32],
        t: usize,
        position: usize,
        keys: &mut [f32],
        values: &mut [f32],
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (d, window) = (c.head_dim, c.attention_window_size);
        let (q_width, kv_width) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let group = c.num_attention_heads / c.num_key_value_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut q = block.q_proj.apply(x, t)?;
        let mut k = block.k_proj.apply(x, t)?;
        let v = block.v_proj.apply(x, t)?;
        let mut out = vec![0f32; t * q_width];
        let mut scores = Vec::with_capacity(window);
        for step in 0..t {
            let pos = position + step;
            let (q, k) = (
                &mut q[step * q_width..(step + 1) * q_width],
                &mut k[step * kv_width..(step + 1) * kv_width],
            );
            self.rope(q, pos);
            self.rope(k, pos);
            let slot = pos % window;
            keys[slot * kv_width..(slot + 1) * kv_width].copy_from_slice(k);
            values[slot * kv_width..(slot + 1) * kv_width]
                .copy_from_slice(&v[step * kv_width..(step + 1) * kv_width]);
            let visible = (pos + 1).saturating_sub(window)..pos + 1;
            for head in 0..c.num_attention_heads {
                let kv = (head / group) * d..(head / group + 1) * d;
                let query = &q[head * d..(head + 1) * d];
                scores.clear();
                scores.extend(visible.clone().map(|p| {
                    let key = &keys[(p % window) * kv_width..][kv.clone()];
                    query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale
                }));
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0f32;
                scores.iter_mut().for_each(|s| {
                    *s = (*s - max).exp();
                    total += *s;
                });
                let o = &mut out[step * q_width + head * d..step * q_width + (head + 1) * d];
                for (p, weight) in visible.clone().zip(&scores) {
                    let value = &values[(p % window) * kv_width..][kv.clone()];
                    o.iter_mut()
                        .zip(value)
                        .for_each(|(o, v)| *o += weight / total * v);
                }
            }
        }
        block.o_proj.apply(&out, t)
    }
}
