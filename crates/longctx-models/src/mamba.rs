//! Mamba (Gu & Dao, 2023), a selective state-space model with no KV cache: Hugging Face's
//! `MambaForCausalLM` layout, read from a folder (config.json, model.safetensors), or
//! llama.cpp's `mamba` GGUF layout. Each layer
//! holds a causal convolution's last `conv_kernel` inputs and an `intermediate × state`
//! recurrent state, whatever the context's length. It runs under [`Recurrent`]: the scan is
//! sequential (no parallel scan yet). Checked against transformers' logits on a tiny random
//! model, in prefill and in decoding, in both layouts (`tests/linear.rs`; the GGUF written by
//! llama.cpp's converter).

use std::path::Path;

use serde::Deserialize;

use crate::gguf::{GgufFile, MetaValue};
use crate::recurrent::{
    embed, rms_norm_rows, silu, softplus, CausalConv, Checkpoint, Projection, Recurrent,
    RecurrentNetwork, SsmLayout, SsmShell,
};
use crate::{ComputeProfile, LanguageModel, LoadOptions, ModelError, Result};

fn default_true() -> bool {
    true
}

/// The fields of a Mamba config.json this model reads.
#[derive(Deserialize, Clone)]
struct MambaConfig {
    vocab_size: usize,
    hidden_size: usize,
    state_size: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    conv_kernel: usize,
    time_step_rank: usize,
    layer_norm_epsilon: f64,
    #[serde(default)]
    use_bias: bool,
    #[serde(default = "default_true")]
    use_conv_bias: bool,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
}

impl MambaConfig {
    /// Hidden width, intermediate width, state size, convolution width and time-step rank.
    fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.hidden_size,
            self.intermediate_size,
            self.state_size,
            self.conv_kernel,
            self.time_step_rank,
        )
    }
}

/// One Mamba block's weights.
struct Layer {
    norm: Vec<f32>,
    in_proj: Projection,
    conv: CausalConv,
    x_proj: Projection,
    dt_proj: Projection,
    /// −exp(A_log), `[intermediate, state]`.
    a: Vec<f32>,
    d: Vec<f32>,
    out_proj: Projection,
}

/// A Mamba network and its sequence state.
pub(crate) struct Mamba {
    config: MambaConfig,
    layers: Vec<Layer>,
    shell: SsmShell,
}

/// Read a Hugging Face Mamba folder as a runnable model.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Box<dyn LanguageModel>> {
    let config: MambaConfig = Checkpoint::config(dir, "Mamba")?;
    let w = Checkpoint::safetensors(dir, options)?;
    let network = Mamba::new(config, &w, SsmLayout::HuggingFace)?;
    Ok(Box::new(Recurrent::new(network, &w, options)))
}

/// Read a llama.cpp `mamba` GGUF file as a runnable model.
pub fn load_gguf(gguf: GgufFile, options: &LoadOptions) -> Result<Box<dyn LanguageModel>> {
    let key = |k: &str| gguf.get_usize(&format!("mamba.{k}"));
    if let Ok(MetaValue::Bool(true)) = gguf.get("mamba.ssm.dt_b_c_rms") {
        return Err(ModelError::Unsupported {
            what: format!(
                "{}: Falcon-Mamba (norms on Δ, B and C)",
                gguf.path().display()
            ),
            hint: "run a Mamba model".into(),
        });
    }
    let config = MambaConfig {
        vocab_size: 0,
        hidden_size: key("embedding_length")?,
        state_size: key("ssm.state_size")?,
        num_hidden_layers: key("block_count")?,
        intermediate_size: key("ssm.inner_size")?,
        conv_kernel: key("ssm.conv_kernel")?,
        time_step_rank: key("ssm.time_step_rank")?,
        layer_norm_epsilon: gguf.get_f64("mamba.attention.layer_norm_rms_epsilon")?,
        use_bias: gguf.has_tensor("blk.0.ssm_in.bias"),
        use_conv_bias: gguf.has_tensor("blk.0.ssm_conv1d.bias"),
        tie_word_embeddings: !gguf.has_tensor("output.weight"),
    };
    let w = Checkpoint::gguf(gguf, options);
    let config = MambaConfig {
        vocab_size: w.dims("token_embd.weight")?[0],
        ..config
    };
    let network = Mamba::new(config, &w, SsmLayout::Gguf)?;
    Ok(Box::new(Recurrent::new(network, &w, options)))
}

impl Mamba {
    /// The network of `w` in `layout`; a missing tensor or one of another shape than the
    /// configuration gives is an error naming the file and tensor.
    fn new(config: MambaConfig, w: &Checkpoint, layout: SsmLayout) -> Result<Self> {
        let c = &config;
        let (h, i, n, k, r) = c.sizes();
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let name = |hf: &str, gguf: &str| layout.layer(l, hf, gguf);
                // Hugging Face stores log(−A); llama.cpp's converter stores A.
                let a = match layout {
                    SsmLayout::HuggingFace => w
                        .tensor(&name("mixer.A_log", ""), &[i, n])?
                        .iter()
                        .map(|v| -v.exp())
                        .collect(),
                    SsmLayout::Gguf => w.tensor(&name("", "ssm_a"), &[i, n])?,
                };
                Ok(Layer {
                    norm: w.tensor(&name("norm.weight", "attn_norm.weight"), &[h])?,
                    in_proj: w.projection(
                        &name("mixer.in_proj", "ssm_in"),
                        2 * i,
                        h,
                        c.use_bias,
                    )?,
                    conv: w.convolution(
                        &name("mixer.conv1d", "ssm_conv1d"),
                        i,
                        k,
                        c.use_conv_bias,
                    )?,
                    x_proj: w.projection(&name("mixer.x_proj", "ssm_x"), r + 2 * n, i, false)?,
                    dt_proj: w.projection(&name("mixer.dt_proj", "ssm_dt"), i, r, true)?,
                    a,
                    d: w.tensor(&name("mixer.D", "ssm_d"), &[i])?,
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
        Ok(Self {
            layers,
            shell,
            config,
        })
    }
}

impl RecurrentNetwork for Mamba {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The projections one GEMM per chunk, the convolution and the selective scan token by
    /// token (the same arithmetic for one token in decoding).
    fn forward(&mut self, tokens: &[u32], _position: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, i, n, _, r) = c.sizes();
        let t = tokens.len();
        let mut x = embed(&self.shell.embeddings, h, tokens);
        for (layer, state) in self.layers.iter().zip(&mut self.shell.states) {
            let normed = rms_norm_rows(&x, h, &layer.norm, c.layer_norm_epsilon);
            let xz = layer.in_proj.apply(&normed, t)?;
            let mut conv_out = vec![0f32; t * i];
            for (row, out) in xz.chunks_exact(2 * i).zip(conv_out.chunks_exact_mut(i)) {
                layer.conv.step(&mut state.conv, &row[..i], out);
                out.iter_mut().for_each(|v| *v = silu(*v));
            }
            let projected = layer.x_proj.apply(&conv_out, t)?;
            let dt_in: Vec<f32> = projected
                .chunks_exact(r + 2 * n)
                .flat_map(|row| row[..r].iter().copied())
                .collect();
            let dt: Vec<f32> = layer
                .dt_proj
                .apply(&dt_in, t)?
                .into_iter()
                .map(softplus)
                .collect();
            // The selective scan, token by token.
            let mut y = vec![0f32; t * i];
            for step in 0..t {
                let row = &projected[step * (r + 2 * n)..(step + 1) * (r + 2 * n)];
                let (b, cc) = row[r..].split_at(n);
                let dt = &dt[step * i..(step + 1) * i];
                let u = &conv_out[step * i..(step + 1) * i];
                let gate = &xz[step * 2 * i + i..(step + 1) * 2 * i];
                for ch in 0..i {
                    let ssm = &mut state.ssm[ch * n..(ch + 1) * n];
                    let a = &layer.a[ch * n..(ch + 1) * n];
                    let mut out = 0f32;
                    for s in 0..n {
                        ssm[s] = (a[s] * dt[ch]).exp() * ssm[s] + dt[ch] * b[s] * u[ch];
                        out += ssm[s] * cc[s];
                    }
                    y[step * i + ch] = (out + u[ch] * layer.d[ch]) * silu(gate[ch]);
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
        let (h, i, n, _, r) = c.sizes();
        let per_layer = 2 * i * h + i * c.conv_kernel + (r + 2 * n) * i + i * r + 3 * i * n + h * i;
        ComputeProfile {
            layer_weights: c.num_hidden_layers * per_layer,
            head_weights: c.vocab_size * h,
            attention: Vec::new(),
        }
    }
}
