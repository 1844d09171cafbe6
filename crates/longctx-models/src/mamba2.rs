//! Mamba-2 (Dao & Gu, 2024: state-space duality), Hugging Face's `Mamba2ForCausalLM`
//! layout or llama.cpp's `mamba2` GGUF layout. Each layer holds a causal convolution's last `conv_kernel` inputs (over x, B and
//! C together) and a `heads × head_dim × state` recurrent state, whatever the context's
//! length. A head's decay is one scalar per token (A is a scalar per head), B and C are
//! shared by the heads of a group.
//!
//! It runs under [`Recurrent`] and steps the recurrence token by token: the same state as the
//! chunked SSD algorithm (the "dual" form transformers and mamba_ssm use in prefill) in
//! another order of sums. The gated norm is taken per group of `intermediate / n_groups`
//! channels as mamba_ssm (the code the paper ran) does; transformers normalizes the whole
//! width at once, which differs only when `n_groups > 1` (Mamba-Codestral, not the paper's
//! mamba2-2.7b); llama.cpp normalizes per group too, and its logits agree with this
//! reference (`scripts/linear_reference.py`). Checked against transformers' logits with mamba_ssm's gated norm, on a tiny
//! random model with two groups (`tests/linear.rs`).

use std::path::Path;

use serde::Deserialize;

use crate::gguf::GgufFile;
use crate::recurrent::{
    embed, rms_norm, rms_norm_rows, silu, softplus, CausalConv, Checkpoint, Projection, Recurrent,
    RecurrentNetwork, SsmLayout, SsmShell,
};
use crate::{ComputeProfile, LanguageModel, LoadOptions, ModelError, Result};

fn default_true() -> bool {
    true
}

fn unbounded_time_step() -> Vec<Option<f64>> {
    vec![Some(0.0), None]
}

/// The fields of a Mamba-2 config.json this model reads.
#[derive(Deserialize, Clone)]
struct Mamba2Config {
    vocab_size: usize,
    hidden_size: usize,
    state_size: usize,
    num_hidden_layers: usize,
    num_heads: usize,
    head_dim: usize,
    expand: usize,
    n_groups: usize,
    conv_kernel: usize,
    layer_norm_epsilon: f64,
    #[serde(default)]
    use_bias: bool,
    #[serde(default = "default_true")]
    use_conv_bias: bool,
    /// The bounds Δ is clamped to; an unbounded end is written `Infinity` (read as null).
    #[serde(default = "unbounded_time_step")]
    time_step_limit: Vec<Option<f64>>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

/// One Mamba-2 block's weights.
struct Layer {
    norm: Vec<f32>,
    /// Hidden → [z (gate), x, B, C, Δ].
    in_proj: Projection,
    /// Over x, B and C.
    conv: CausalConv,
    dt_bias: Vec<f32>,
    /// −exp(A_log), one per head.
    a: Vec<f32>,
    d: Vec<f32>,
    /// The gated norm's weight, `[intermediate]`.
    gated_norm: Vec<f32>,
    out_proj: Projection,
}

/// A Mamba-2 network and its sequence state.
pub(crate) struct Mamba2 {
    config: Mamba2Config,
    /// Hidden width, intermediate width (heads × head_dim), state size, B/C width (groups ×
    /// state) and the convolution's channels.
    sizes: (usize, usize, usize, usize, usize),
    /// Δ's clamp.
    dt_limit: (f32, f32),
    layers: Vec<Layer>,
    shell: SsmShell,
}

/// Read a Hugging Face Mamba-2 folder as a runnable model.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Box<dyn LanguageModel>> {
    let config: Mamba2Config = Checkpoint::config(dir, "Mamba-2")?;
    let w = Checkpoint::safetensors(dir, options)?;
    let network = Mamba2::new(config, &w, SsmLayout::HuggingFace)?;
    Ok(Box::new(Recurrent::new(network, &w, options)))
}

/// Read a llama.cpp `mamba2` GGUF file as a runnable model.
pub fn load_gguf(gguf: GgufFile, options: &LoadOptions) -> Result<Box<dyn LanguageModel>> {
    let key = |k: &str| gguf.get_usize(&format!("mamba2.{k}"));
    let (hidden, inner, heads) = (
        key("embedding_length")?,
        key("ssm.inner_size")?,
        key("ssm.time_step_rank")?,
    );
    if hidden == 0 || heads == 0 || !inner.is_multiple_of(hidden) || !inner.is_multiple_of(heads) {
        return Err(ModelError::BadGguf {
            path: gguf.path().to_path_buf(),
            reason: format!(
                "mamba2: inner size {inner} is not a multiple of the width {hidden} and of the head count {heads}"
            ),
        });
    }
    let config = Mamba2Config {
        vocab_size: 0,
        hidden_size: hidden,
        state_size: key("ssm.state_size")?,
        num_hidden_layers: key("block_count")?,
        num_heads: heads,
        head_dim: inner / heads,
        expand: inner / hidden,
        n_groups: key("ssm.group_count")?,
        conv_kernel: key("ssm.conv_kernel")?,
        layer_norm_epsilon: gguf.get_f64("mamba2.attention.layer_norm_rms_epsilon")?,
        use_bias: gguf.has_tensor("blk.0.ssm_in.bias"),
        use_conv_bias: gguf.has_tensor("blk.0.ssm_conv1d.bias"),
        time_step_limit: unbounded_time_step(),
        tie_word_embeddings: !gguf.has_tensor("output.weight"),
    };
    let w = Checkpoint::gguf(gguf, options);
    let config = Mamba2Config {
        vocab_size: w.dims("token_embd.weight")?[0],
        ..config
    };
    let network = Mamba2::new(config, &w, SsmLayout::Gguf)?;
    Ok(Box::new(Recurrent::new(network, &w, options)))
}

impl Mamba2 {
    /// The network of `w` in `layout`, checked against the configuration.
    fn new(c: Mamba2Config, w: &Checkpoint, layout: SsmLayout) -> Result<Self> {
        let (h, i, n) = (c.hidden_size, c.expand * c.hidden_size, c.state_size);
        if c.num_heads * c.head_dim != i
            || c.n_groups == 0
            || !c.num_heads.is_multiple_of(c.n_groups)
            || !i.is_multiple_of(c.n_groups)
        {
            return Err(w.bad(format!(
                "the configuration's heads ({} × {}), expand × hidden ({i}) and groups ({}) do not fit together",
                c.num_heads, c.head_dim, c.n_groups
            )));
        }
        let bc = c.n_groups * n;
        let conv_channels = i + 2 * bc;
        let heads = c.num_heads;
        // llama.cpp keeps per-head vectors as `[heads, 1]` and the gated norm per group.
        let (per_head, norm_shape): (&[usize], &[usize]) = match layout {
            SsmLayout::HuggingFace => (&[heads], &[i]),
            SsmLayout::Gguf => (&[heads, 1], &[c.n_groups, i / c.n_groups]),
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let name = |hf: &str, gguf: &str| layout.layer(l, hf, gguf);
                // Hugging Face stores log(−A); llama.cpp's converter stores A.
                let a = match layout {
                    SsmLayout::HuggingFace => w
                        .tensor(&name("mixer.A_log", ""), per_head)?
                        .iter()
                        .map(|v| -v.exp())
                        .collect(),
                    SsmLayout::Gguf => w.tensor(&name("", "ssm_a"), per_head)?,
                };
                Ok(Layer {
                    norm: w.tensor(&name("norm.weight", "attn_norm.weight"), &[h])?,
                    in_proj: w.projection(
                        &name("mixer.in_proj", "ssm_in"),
                        2 * i + 2 * bc + heads,
                        h,
                        c.use_bias,
                    )?,
                    conv: w.convolution(
                        &name("mixer.conv1d", "ssm_conv1d"),
                        conv_channels,
                        c.conv_kernel,
                        c.use_conv_bias,
                    )?,
                    dt_bias: w.tensor(&name("mixer.dt_bias", "ssm_dt.bias"), &[heads])?,
                    a,
                    d: w.tensor(&name("mixer.D", "ssm_d"), per_head)?,
                    gated_norm: w
                        .tensor(&name("mixer.norm.weight", "ssm_norm.weight"), norm_shape)?,
                    out_proj: w.projection(&name("mixer.out_proj", "ssm_out"), h, i, c.use_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let convs = layers.iter().map(|layer| &layer.conv);
        let shell = SsmShell::load(
            w,
            layout,
            [c.vocab_size, h],
            c.tie_word_embeddings,
            convs,
            i * n,
        )?;
        let bound = |at: usize, unbounded: f32| {
            c.time_step_limit
                .get(at)
                .copied()
                .flatten()
                .map_or(unbounded, |v| v as f32)
        };
        Ok(Self {
            sizes: (h, i, n, bc, conv_channels),
            dt_limit: (bound(0, 0.0), bound(1, f32::INFINITY)),
            layers,
            shell,
            config: c,
        })
    }
}

impl RecurrentNetwork for Mamba2 {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn forward(&mut self, tokens: &[u32], _position: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, i, n, bc, conv_channels) = self.sizes;
        let (heads, p) = (c.num_heads, c.head_dim);
        let heads_per_group = heads / c.n_groups;
        let group_width = i / c.n_groups;
        let width = 2 * i + 2 * bc + heads;
        let t = tokens.len();
        let mut x = embed(&self.shell.embeddings, h, tokens);
        let mut xbc = vec![0f32; conv_channels];
        let mut y = vec![0f32; t * i];
        for (layer, state) in self.layers.iter().zip(&mut self.shell.states) {
            let normed = rms_norm_rows(&x, h, &layer.norm, c.layer_norm_epsilon);
            let projected = layer.in_proj.apply(&normed, t)?;
            for (row, y) in projected.chunks_exact(width).zip(y.chunks_exact_mut(i)) {
                let (gate, rest) = row.split_at(i);
                let (conv_in, dt_raw) = rest.split_at(conv_channels);
                layer.conv.step(&mut state.conv, conv_in, &mut xbc);
                xbc.iter_mut().for_each(|v| *v = silu(*v));
                let (u, bcv) = xbc.split_at(i);
                let (b, cc) = bcv.split_at(bc);
                for (head, &dt_raw) in dt_raw.iter().enumerate() {
                    let g = head / heads_per_group;
                    let (b, cc) = (&b[g * n..(g + 1) * n], &cc[g * n..(g + 1) * n]);
                    let dt = softplus(dt_raw + layer.dt_bias[head])
                        .clamp(self.dt_limit.0, self.dt_limit.1);
                    let decay = (dt * layer.a[head]).exp();
                    for q in 0..p {
                        let ch = head * p + q;
                        let ssm = &mut state.ssm[ch * n..(ch + 1) * n];
                        let input = dt * u[ch];
                        let mut out = 0f32;
                        for s in 0..n {
                            ssm[s] = ssm[s] * decay + input * b[s];
                            out += ssm[s] * cc[s];
                        }
                        y[ch] = out + layer.d[head] * u[ch];
                    }
                }
                // The gated norm, per group of channels.
                for ((y, gate), weight) in y
                    .chunks_exact_mut(group_width)
                    .zip(gate.chunks_exact(group_width))
                    .zip(layer.gated_norm.chunks_exact(group_width))
                {
                    y.iter_mut().zip(gate).for_each(|(v, z)| *v *= silu(*z));
                    let normed = rms_norm(y, weight, c.layer_norm_epsilon);
                    y.copy_from_slice(&normed);
                }
            }
            let out = layer.out_proj.apply(&y, t)?;
            for (xv, o) in x.iter_mut().zip(out) {
                *xv += o;
            }
        }
        Ok(rms_norm_rows(
            &x,
            h,
            &self.shell.norm_f,
            c.layer_norm_epsilon,
        ))
    }

    fn logits(&self, hidden: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.shell.logits(hidden, rows)
    }

    fn state_bytes(&self) -> usize {
        self.shell.state_bytes()
    }

    fn reset(&mut self) {
        self.shell.reset();
    }

    fn school(&self) -> &'static str {
        "linear-time"
    }

    fn compute_profile(&self) -> ComputeProfile {
        let c = &self.config;
        let (h, i, n, bc, conv_channels) = self.sizes;
        let projections = h * (2 * i + 2 * bc + c.num_heads) + i * h;
        // The convolution, and per channel and state: the update and the read-out.
        let per_layer = projections + conv_channels * c.conv_kernel + 2 * i * n;
        ComputeProfile {
            layer_weights: c.num_hidden_layers * per_layer,
            head_weights: c.vocab_size * h,
            attention: Vec::new(),
        }
    }
}
