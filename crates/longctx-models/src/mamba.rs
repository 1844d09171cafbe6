//! Mamba (Gu & Dao, 2023), a selective state-space model with no KV cache: Hugging Face's
//! `MambaForCausalLM` layout, read from a folder (config.json, model.safetensors). Each layer
//! holds a causal convolution's last `conv_kernel` inputs and an `intermediate × state`
//! recurrent state, whatever the context's length.
//!
//! Prefill and decoding run one code path: a chunk's projections are one GEMM each (a
//! single row in decoding), the convolution and the selective scan go token by token, so the
//! state after a prefill is the state after stepping through it, and a token costs the same
//! whatever the context's length. The scan is sequential (no parallel scan yet). Checked
//! against transformers' logits on a tiny random model, in prefill and in decoding
//! (`tests/linear.rs`).

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use longctx_kv::{Reservation, MAX_STREAM_POSITIONS};
use serde::Deserialize;

use crate::{ComputeProfile, LanguageModel, Logits, ModelError, Result, DEFAULT_PREFILL_CHUNK};

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

/// A projection `x Wᵀ (+ b)` applied to a chunk of rows at once (one GEMM; a single row
/// in decoding), so prefill and decoding share it.
struct Projection {
    /// Wᵀ, `[inputs, outputs]`, contiguous.
    transposed: Tensor,
    bias: Option<Tensor>,
    /// Weights held (bias excluded).
    weights: usize,
}

impl Projection {
    /// `rows` rows of `x` (row-major) projected: `rows × outputs` values.
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let inputs = self.transposed.dim(0)?;
        let x = Tensor::from_slice(x, (rows, inputs), &Device::Cpu)?;
        let mut y = x.matmul(&self.transposed)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y.flatten_all()?.to_vec1()?)
    }
}

/// One Mamba block's weights.
struct Layer {
    norm: Vec<f32>,
    in_proj: Projection,
    /// `[intermediate, conv_kernel]`.
    conv: Vec<f32>,
    conv_bias: Vec<f32>,
    x_proj: Projection,
    dt_proj: Projection,
    /// −exp(A_log), `[intermediate, state]`.
    a: Vec<f32>,
    d: Vec<f32>,
    out_proj: Projection,
}

/// One layer's sequence state.
#[derive(Clone)]
struct State {
    /// The convolution's last inputs, `[intermediate, conv_kernel]`, oldest first.
    conv: Vec<f32>,
    /// The recurrent state, `[intermediate, state]`.
    ssm: Vec<f32>,
}

/// A Mamba language model and its sequence state.
pub struct MambaModel {
    config: MambaConfig,
    embeddings: Vec<f32>,
    layers: Vec<Layer>,
    norm_f: Vec<f32>,
    /// The output projection (the embeddings, when tied).
    lm_head: Projection,
    states: Vec<State>,
    seen: usize,
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// PyTorch's softplus (β = 1, linear above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + eps as f32).sqrt();
    x.iter().zip(weight).map(|(v, w)| w * (v * scale)).collect()
}

impl MambaModel {
    /// Read a Hugging Face Mamba folder; a missing tensor or one of another shape than the
    /// config gives is an error naming the file and tensor.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::BadCheckpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let text =
            std::fs::read_to_string(dir.join("config.json")).map_err(|e| ModelError::Io {
                path: dir.join("config.json"),
                source: e,
            })?;
        let config: MambaConfig = serde_json::from_str(&text)
            .map_err(|e| bad(format!("config.json is not a Mamba config: {e}")))?;
        let path = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not modified while the process runs.
        let st = unsafe { MmapedSafetensors::new(&path) }
            .map_err(|e| bad(format!("model.safetensors: {e}")))?;
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .load(name, &Device::Cpu)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?
                .to_dtype(DType::F32)?;
            if t.dims() != shape {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, but config.json asks for {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.flatten_all()?.to_vec1()?)
        };
        let c = &config;
        let (h, i, n, k, r) = c.sizes();
        let projection = |values: Vec<f32>, rows: usize, cols: usize, bias: Option<Vec<f32>>| {
            Ok::<_, ModelError>(Projection {
                transposed: Tensor::from_vec(values, (rows, cols), &Device::Cpu)?
                    .t()?
                    .contiguous()?,
                bias: bias
                    .map(|b| Tensor::from_vec(b, rows, &Device::Cpu))
                    .transpose()?,
                weights: rows * cols,
            })
        };
        let matrix = |name: &str, rows: usize, cols: usize, bias: bool| -> Result<Projection> {
            let bias = match bias {
                true => Some(tensor(&format!("{name}.bias"), &[rows])?),
                false => None,
            };
            projection(
                tensor(&format!("{name}.weight"), &[rows, cols])?,
                rows,
                cols,
                bias,
            )
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let p = format!("backbone.layers.{l}");
                let a_log = tensor(&format!("{p}.mixer.A_log"), &[i, n])?;
                Ok(Layer {
                    norm: tensor(&format!("{p}.norm.weight"), &[h])?,
                    in_proj: matrix(&format!("{p}.mixer.in_proj"), 2 * i, h, c.use_bias)?,
                    conv: tensor(&format!("{p}.mixer.conv1d.weight"), &[i, 1, k])?,
                    conv_bias: match c.use_conv_bias {
                        true => tensor(&format!("{p}.mixer.conv1d.bias"), &[i])?,
                        false => vec![0.0; i],
                    },
                    x_proj: matrix(&format!("{p}.mixer.x_proj"), r + 2 * n, i, false)?,
                    dt_proj: matrix(&format!("{p}.mixer.dt_proj"), i, r, true)?,
                    a: a_log.iter().map(|v| -v.exp()).collect(),
                    d: tensor(&format!("{p}.mixer.D"), &[i])?,
                    out_proj: matrix(&format!("{p}.mixer.out_proj"), h, i, c.use_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embeddings = tensor("backbone.embeddings.weight", &[c.vocab_size, h])?;
        let lm_head = match c.tie_word_embeddings {
            true => projection(embeddings.clone(), c.vocab_size, h, None)?,
            false => matrix("lm_head", c.vocab_size, h, false)?,
        };
        let states = vec![
            State {
                conv: vec![0.0; i * k],
                ssm: vec![0.0; i * n],
            };
            c.num_hidden_layers
        ];
        Ok(Self {
            embeddings,
            norm_f: tensor("backbone.norm_f.weight", &[h])?,
            layers,
            lm_head,
            states,
            seen: 0,
            config,
        })
    }

    /// A chunk of tokens through every block, updating the state: the projections one GEMM
    /// per chunk, the convolution and the scan token by token (the same arithmetic for one
    /// token in decoding). Returns the final hidden states, `[tokens, hidden]`.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, i, n, k, r) = c.sizes();
        let t = tokens.len();
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&id| {
                self.embeddings[id as usize * h..(id as usize + 1) * h]
                    .iter()
                    .copied()
            })
            .collect();
        for (layer, state) in self.layers.iter().zip(&mut self.states) {
            let normed: Vec<f32> = x
                .chunks_exact(h)
                .flat_map(|row| rms_norm(row, &layer.norm, c.layer_norm_epsilon))
                .collect();
            let xz = layer.in_proj.apply(&normed, t)?;
            // The causal convolution over each input and the k − 1 before it.
            let mut conv_out = vec![0f32; t * i];
            for (row, out) in xz.chunks_exact(2 * i).zip(conv_out.chunks_exact_mut(i)) {
                for ch in 0..i {
                    let window = &mut state.conv[ch * k..(ch + 1) * k];
                    window.rotate_left(1);
                    window[k - 1] = row[ch];
                    let w = &layer.conv[ch * k..(ch + 1) * k];
                    let sum: f32 = window.iter().zip(w).map(|(a, b)| a * b).sum();
                    out[ch] = silu(sum + layer.conv_bias[ch]);
                }
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
        Ok(x.chunks_exact(h)
            .flat_map(|row| rms_norm(row, &self.norm_f, c.layer_norm_epsilon))
            .collect())
    }
}

impl LanguageModel for MambaModel {
    fn append(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::Tokenizer(
                "cannot run the model on an empty token sequence".into(),
            ));
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary"
            )));
        }
        let h = self.config.hidden_size;
        let mut rows = Vec::new();
        // Chunks bound the activations held; the state carries across them.
        let chunks: Vec<&[u32]> = tokens.chunks(DEFAULT_PREFILL_CHUNK).collect();
        for (at, chunk) in chunks.iter().enumerate() {
            let hidden = self.forward(chunk)?;
            self.seen += chunk.len();
            match logits {
                Logits::All => rows.extend(self.lm_head.apply(&hidden, chunk.len())?),
                Logits::Last if at + 1 == chunks.len() => {
                    rows = self.lm_head.apply(&hidden[hidden.len() - h..], 1)?;
                }
                Logits::Last => {}
            }
        }
        let v = self.config.vocab_size;
        let n = rows.len() / v;
        Ok(Tensor::from_vec(rows, (n, v), &Device::Cpu)?)
    }

    fn end_prefill(&mut self) -> Result<()> {
        Ok(())
    }

    fn reserve(&mut self, _reservation: Reservation) -> Result<()> {
        Ok(())
    }

    fn seen_tokens(&self) -> usize {
        self.seen
    }

    /// A recurrence reads any length; the bound is the one streamed inputs share.
    fn context_limit(&self) -> usize {
        MAX_STREAM_POSITIONS
    }

    fn state_bytes(&self) -> usize {
        self.states
            .iter()
            .map(|s| (s.conv.len() + s.ssm.len()) * std::mem::size_of::<f32>())
            .sum()
    }

    fn reset(&mut self) {
        for s in &mut self.states {
            s.conv.fill(0.0);
            s.ssm.fill(0.0);
        }
        self.seen = 0;
    }

    fn trained_context(&self) -> usize {
        MAX_STREAM_POSITIONS
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn weight_bytes(&self) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.norm.len()
                    + l.in_proj.weights
                    + l.conv.len()
                    + l.x_proj.weights
                    + l.dt_proj.weights
                    + l.a.len()
                    + l.d.len()
                    + l.out_proj.weights
            })
            .sum();
        // The tied head holds its own transposed copy of the embeddings.
        (layer + self.embeddings.len() + self.lm_head.weights) * std::mem::size_of::<f32>()
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
