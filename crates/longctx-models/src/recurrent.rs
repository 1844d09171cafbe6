//! What the models without a growing KV cache share (Mamba, Mamba-2, RecurrentGemma): a
//! network that carries a fixed-size state from token to token ([`RecurrentNetwork`]), the one
//! [`LanguageModel`] implementation they all run under ([`Recurrent`]), and the pieces their
//! blocks are built from (projections applied to a chunk at once, a causal convolution that
//! keeps its last inputs, norms and activations).
//!
//! Every architecture runs prefill and decoding through one code path: a chunk's projections
//! are one GEMM each (a single row in decoding), the convolution and the recurrence go token
//! by token, so the state after a prefill is the state after stepping through it and a token
//! costs the same whatever the context's length.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use longctx_kv::{Reservation, MAX_STREAM_POSITIONS};
use serde::de::DeserializeOwned;

use crate::gguf::GgufFile;
use crate::linear::Linear;
use crate::q8::DecodeActivations;
use crate::{ComputeProfile, LanguageModel, LoadOptions, Logits, ModelError, Result};

/// One architecture's network and its sequence state, as [`Recurrent`] drives it.
pub(crate) trait RecurrentNetwork: Send {
    /// Vocabulary size (logit rows).
    fn vocab_size(&self) -> usize;

    /// Width of the final hidden state.
    fn hidden_size(&self) -> usize;

    /// A chunk of tokens through every block, updating the state; `position` is the index of
    /// the chunk's first token in the sequence. Returns the final (normed) hidden states,
    /// `[tokens, hidden]`.
    fn forward(&mut self, tokens: &[u32], position: usize) -> Result<Vec<f32>>;

    /// Logits of `rows` final hidden states, `[rows, vocab]`.
    fn logits(&self, hidden: &[f32], rows: usize) -> Result<Vec<f32>>;

    /// Bytes of sequence state held now.
    fn state_bytes(&self) -> usize;

    /// Zero the state for a new sequence.
    fn reset(&mut self);

    /// The arithmetic per token, for time estimates.
    fn compute_profile(&self) -> ComputeProfile;

    /// "linear-time" (a recurrence alone) or "hybrid" (with local attention).
    fn school(&self) -> &'static str;
}

/// A recurrent network as a [`LanguageModel`]: feeds prompts in bounded chunks and counts
/// the tokens seen. It has no KV cache, so KV methods are refused (the trait's defaults).
pub(crate) struct Recurrent<N> {
    network: N,
    seen: usize,
    /// Bytes of weights the checkpoint's reading left held.
    weight_bytes: usize,
    /// Tokens per prefill chunk (`--prefill-chunk`): bounds the activations held.
    prefill_chunk: usize,
}

impl<N: RecurrentNetwork> Recurrent<N> {
    /// `network` as read from `checkpoint`, run as `options` say.
    pub(crate) fn new(network: N, checkpoint: &Checkpoint, options: &LoadOptions) -> Self {
        Self {
            network,
            seen: 0,
            weight_bytes: checkpoint.held_bytes(),
            prefill_chunk: options.prefill_chunk.max(1),
        }
    }
}

impl<N: RecurrentNetwork> LanguageModel for Recurrent<N> {
    fn append(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::Tokenizer(
                "cannot run the model on an empty token sequence".into(),
            ));
        }
        let vocab = self.network.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary"
            )));
        }
        let h = self.network.hidden_size();
        let mut rows = Vec::new();
        // Chunks bound the activations held; the state carries across them.
        let chunks: Vec<&[u32]> = tokens.chunks(self.prefill_chunk).collect();
        for (at, chunk) in chunks.iter().enumerate() {
            let hidden = self.network.forward(chunk, self.seen)?;
            self.seen += chunk.len();
            match logits {
                Logits::All => rows.extend(self.network.logits(&hidden, chunk.len())?),
                Logits::Last if at + 1 == chunks.len() => {
                    rows = self.network.logits(&hidden[hidden.len() - h..], 1)?;
                }
                Logits::Last => {}
            }
        }
        let n = rows.len() / vocab;
        Ok(Tensor::from_vec(rows, (n, vocab), &Device::Cpu)?)
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
        self.network.state_bytes()
    }

    fn reset(&mut self) {
        self.network.reset();
        self.seen = 0;
    }

    fn trained_context(&self) -> usize {
        MAX_STREAM_POSITIONS
    }

    fn vocab_size(&self) -> usize {
        self.network.vocab_size()
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn compute_profile(&self) -> ComputeProfile {
        self.network.compute_profile()
    }

    fn school(&self) -> Option<&'static str> {
        Some(self.network.school())
    }
}

/// Where a recurrent model's tensors come from: a Hugging Face folder's model.safetensors,
/// or a GGUF file (dequantized to f32).
enum Tensors {
    Safetensors(MmapedSafetensors),
    Gguf(GgufFile),
}

/// A checkpoint's tensors, read with checks: a missing tensor, or one of another shape than
/// the configuration gives, is an error naming the file and the tensor. It counts the bytes
/// of what it hands out, which the model then holds.
pub(crate) struct Checkpoint {
    path: std::path::PathBuf,
    tensors: Tensors,
    /// Keep dense f32 copies of quantized matrices for prefill (`--dense-weights`).
    dense_prefill: bool,
    /// Decoding's mat-vec kernels for quantized matrices.
    activations: DecodeActivations,
    held: std::cell::Cell<usize>,
}

impl Checkpoint {
    /// Open `dir`'s model.safetensors (one file, as the tiny and small checkpoints ship).
    pub(crate) fn safetensors(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let path = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not modified while the process runs.
        let tensors = unsafe { MmapedSafetensors::new(&path) }
            .map_err(|e| Self::bad_in(dir, format!("model.safetensors: {e}")))?;
        Ok(Self::with(dir, Tensors::Safetensors(tensors), options))
    }

    /// The tensors of an opened GGUF file; quantized matrices stay quantized.
    pub(crate) fn gguf(file: GgufFile, options: &LoadOptions) -> Self {
        let path = file.path().to_path_buf();
        Self::with(&path, Tensors::Gguf(file), options)
    }

    fn with(path: &Path, tensors: Tensors, options: &LoadOptions) -> Self {
        Self {
            path: path.to_path_buf(),
            tensors,
            dense_prefill: options.dense_prefill_weights,
            activations: options.decode_activations,
            held: std::cell::Cell::new(0),
        }
    }

    /// Bytes of everything handed out so far.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held.get()
    }

    fn hold(&self, bytes: usize) {
        self.held.set(self.held.get() + bytes);
    }

    fn bad_in(path: &Path, reason: String) -> ModelError {
        ModelError::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        }
    }

    /// An error about this checkpoint.
    pub(crate) fn bad(&self, reason: String) -> ModelError {
        Self::bad_in(&self.path, reason)
    }

    /// config.json, read as `what`'s config.
    pub(crate) fn config<C: DeserializeOwned>(dir: &Path, what: &str) -> Result<C> {
        serde_json::from_value(crate::config::read_hf_json(&dir.join("config.json"))?)
            .map_err(|e| Self::bad_in(dir, format!("config.json is not a {what} config: {e}")))
    }

    /// Tensor `name` in f32, any shape.
    fn load(&self, name: &str) -> Result<Tensor> {
        let t = match &self.tensors {
            Tensors::Safetensors(st) => st
                .load(name, &Device::Cpu)
                .map_err(|e| self.bad(format!("tensor {name}: {e}")))?,
            Tensors::Gguf(g) => g.tensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?,
        };
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The shape of tensor `name` (row-major order), from the file's tensor table.
    pub(crate) fn dims(&self, name: &str) -> Result<Vec<usize>> {
        match &self.tensors {
            Tensors::Gguf(g) => g
                .tensor_dims(name)
                .ok_or_else(|| self.bad(format!("tensor {name} is missing"))),
            Tensors::Safetensors(st) => st
                .get(name)
                .map(|view| view.shape().to_vec())
                .map_err(|e| self.bad(format!("tensor {name}: {e}"))),
        }
    }

    /// Tensor `name` in f32, checked to have `shape`.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.load(name)?;
        self.check(name, t.dims(), shape)?;
        self.hold(t.elem_count() * std::mem::size_of::<f32>());
        Ok(t.flatten_all()?.to_vec1()?)
    }

    /// `found` is `shape`; in GGUF, up to dimensions of size one, which writers keep or drop
    /// (llama.cpp's converter keeps `[1, 1, n]` where llama-quantize writes `[n]`).
    fn check(&self, name: &str, found: &[usize], shape: &[usize]) -> Result<()> {
        let squeezed =
            |dims: &[usize]| dims.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        let same = match self.tensors {
            Tensors::Safetensors(_) => found == shape,
            Tensors::Gguf(_) => squeezed(found) == squeezed(shape),
        };
        match same {
            true => Ok(()),
            false => Err(self.bad(format!(
                "tensor {name} has shape {found:?}, but the configuration asks for {shape:?}"
            ))),
        }
    }

    /// The output head: `lm_head` (`[vocab, hidden]`), or the embeddings when tied.
    pub(crate) fn output_head(
        &self,
        name: &str,
        tied: Option<&[f32]>,
        vocab: usize,
        hidden: usize,
    ) -> Result<Projection> {
        match tied {
            Some(embeddings) => {
                self.hold(std::mem::size_of_val(embeddings));
                Projection::new(embeddings.to_vec(), vocab, hidden, None)
            }
            None => self.projection(name, vocab, hidden, false),
        }
    }

    /// The linear layer `name` (`name.weight`, `[outputs, inputs]`, and `name.bias` when
    /// `bias`); a quantized GGUF matrix stays quantized.
    pub(crate) fn projection(
        &self,
        name: &str,
        outputs: usize,
        inputs: usize,
        bias: bool,
    ) -> Result<Projection> {
        let bias = match bias {
            true => Some(self.tensor(&format!("{name}.bias"), &[outputs])?),
            false => None,
        };
        let bias = bias
            .map(|b| Tensor::from_vec(b, outputs, &Device::Cpu))
            .transpose()?;
        let weight = format!("{name}.weight");
        let linear = match &self.tensors {
            Tensors::Gguf(g) => {
                let q = g.tensor(&weight, &Device::Cpu)?;
                self.check(&weight, q.shape().dims(), &[outputs, inputs])?;
                Linear::from_qtensor(q, self.dense_prefill, self.activations, bias)?
            }
            Tensors::Safetensors(_) => {
                let w = self.load(&weight)?;
                self.check(&weight, w.dims(), &[outputs, inputs])?;
                Linear::from_dense(w, bias)
            }
        };
        self.hold(linear.bytes());
        Ok(Projection {
            linear,
            inputs,
            weights: outputs * inputs,
        })
    }

    /// The depthwise causal convolution `name` (`[channels, 1, width]` weights as PyTorch
    /// stores them, `[channels, width]` as llama.cpp does; a bias when `bias`).
    pub(crate) fn convolution(
        &self,
        name: &str,
        channels: usize,
        width: usize,
        bias: bool,
    ) -> Result<CausalConv> {
        let weight = format!("{name}.weight");
        let shape: &[usize] = match self.tensors {
            Tensors::Safetensors(_) => &[channels, 1, width],
            Tensors::Gguf(_) => &[channels, width],
        };
        Ok(CausalConv {
            weights: self.tensor(&weight, shape)?,
            bias: match bias {
                true => self.tensor(&format!("{name}.bias"), &[channels])?,
                false => vec![0.0; channels],
            },
            width,
        })
    }
}

/// The two layouts a checkpoint of the Mamba family comes in: Hugging Face's
/// (`backbone.layers.N.mixer.in_proj`, ...) and llama.cpp's GGUF (`blk.N.ssm_in`, ...).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SsmLayout {
    HuggingFace,
    Gguf,
}

impl SsmLayout {
    /// Layer `l`'s tensor, named `backbone.layers.{l}.{hf}` or `blk.{l}.{gguf}`.
    pub(crate) fn layer(self, l: usize, hf: &str, gguf: &str) -> String {
        match self {
            SsmLayout::HuggingFace => format!("backbone.layers.{l}.{hf}"),
            SsmLayout::Gguf => format!("blk.{l}.{gguf}"),
        }
    }

    /// A tensor outside the layers.
    pub(crate) fn top(self, hf: &str, gguf: &str) -> String {
        match self {
            SsmLayout::HuggingFace => hf.to_string(),
            SsmLayout::Gguf => gguf.to_string(),
        }
    }
}

/// A linear layer `x Wᵀ (+ b)` applied to a chunk of rows at once (one GEMM; in decoding a
/// mat-vec, through the quantized kernels when the checkpoint is quantized), so prefill and
/// decoding share it.
pub(crate) struct Projection {
    linear: Linear,
    inputs: usize,
    /// Weights each row is multiplied by (bias excluded).
    pub(crate) weights: usize,
}

impl Projection {
    /// From W, `[outputs, inputs]` row-major, and an optional bias (not counted by any
    /// checkpoint: the caller's tensors were).
    pub(crate) fn new(
        weights: Vec<f32>,
        outputs: usize,
        inputs: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let weight = Tensor::from_vec(weights, (outputs, inputs), &Device::Cpu)?;
        let bias = bias
            .map(|b| Tensor::from_vec(b, outputs, &Device::Cpu))
            .transpose()?;
        Ok(Self {
            linear: Linear::from_dense(weight, bias),
            inputs,
            weights: outputs * inputs,
        })
    }

    /// Width of each output row.
    pub(crate) fn outputs(&self) -> usize {
        self.linear.outputs()
    }

    /// `rows` rows of `x` (row-major) projected: `rows × outputs` values.
    pub(crate) fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let x = Tensor::from_slice(x, (rows, self.inputs), &Device::Cpu)?;
        Ok(self.linear.forward(&x)?.flatten_all()?.to_vec1()?)
    }
}

/// A depthwise causal convolution over channels (PyTorch's `Conv1d(groups=channels)` with
/// left padding), fed one token at a time: its state is each channel's last `width` inputs.
pub(crate) struct CausalConv {
    /// `[channels, width]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    width: usize,
}

impl CausalConv {
    /// A zeroed input window for this convolution: `[channels, width]`, oldest first.
    pub(crate) fn empty_state(&self) -> Vec<f32> {
        vec![0.0; self.weights.len()]
    }

    /// Push one token's `input` (one value per channel) into `window` and write the
    /// convolution's output per channel into `out`.
    pub(crate) fn step(&self, window: &mut [f32], input: &[f32], out: &mut [f32]) {
        let k = self.width;
        for (ch, ((window, w), (x, y))) in window
            .chunks_exact_mut(k)
            .zip(self.weights.chunks_exact(k))
            .zip(input.iter().zip(out.iter_mut()))
            .enumerate()
        {
            window.rotate_left(1);
            window[k - 1] = *x;
            *y = window.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + self.bias[ch];
        }
    }
}

/// A state-space layer's sequence state (Mamba, Mamba-2): the convolution's last inputs and
/// the recurrent state.
pub(crate) struct SsmState {
    /// `[channels, width]`, oldest first.
    pub(crate) conv: Vec<f32>,
    pub(crate) ssm: Vec<f32>,
}

impl SsmState {
    /// A zeroed state for `conv` and `ssm` values of recurrent state.
    pub(crate) fn new(conv: &CausalConv, ssm: usize) -> Self {
        Self {
            conv: conv.empty_state(),
            ssm: vec![0.0; ssm],
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        (self.conv.len() + self.ssm.len()) * std::mem::size_of::<f32>()
    }

    /// Zero it for a new sequence.
    pub(crate) fn reset(&mut self) {
        self.conv.fill(0.0);
        self.ssm.fill(0.0);
    }
}

/// What Mamba and Mamba-2 share around their layers' mixers: the embeddings, the final
/// norm and output head, and each layer's convolution and SSM state.
pub(crate) struct SsmShell {
    pub(crate) embeddings: Vec<f32>,
    pub(crate) norm_f: Vec<f32>,
    /// The output projection (the embeddings, when tied).
    lm_head: Projection,
    /// Per layer: the convolution's last inputs and the recurrent state.
    pub(crate) states: Vec<SsmState>,
}

impl SsmShell {
    /// Read from `w` in `layout` around layers whose convolutions are `convs`, each with
    /// `ssm` values of recurrent state.
    pub(crate) fn load<'a>(
        w: &Checkpoint,
        layout: SsmLayout,
        [vocab, hidden]: [usize; 2],
        tied: bool,
        convs: impl Iterator<Item = &'a CausalConv>,
        ssm: usize,
    ) -> Result<Self> {
        let embeddings = w.tensor(
            &layout.top("backbone.embeddings.weight", "token_embd.weight"),
            &[vocab, hidden],
        )?;
        let tied = tied.then_some(embeddings.as_slice());
        Ok(Self {
            lm_head: w.output_head(&layout.top("lm_head", "output"), tied, vocab, hidden)?,
            norm_f: w.tensor(
                &layout.top("backbone.norm_f.weight", "output_norm.weight"),
                &[hidden],
            )?,
            states: convs.map(|conv| SsmState::new(conv, ssm)).collect(),
            embeddings,
        })
    }

    /// Logits of `rows` final hidden states.
    pub(crate) fn logits(&self, hidden: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.lm_head.apply(hidden, rows)
    }

    /// Bytes of the layers' states.
    pub(crate) fn state_bytes(&self) -> usize {
        self.states.iter().map(SsmState::bytes).sum()
    }

    /// Zero every layer's state.
    pub(crate) fn reset(&mut self) {
        self.states.iter_mut().for_each(SsmState::reset);
    }
}

/// SiLU (x·σ(x)).
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// PyTorch's softplus (β = 1, linear above 20).
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// RMS norm of one row, scaled by `weight`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + eps as f32).sqrt();
    x.iter().zip(weight).map(|(v, w)| w * (v * scale)).collect()
}

/// RMS norm of each `width`-wide row of `x`.
pub(crate) fn rms_norm_rows(x: &[f32], width: usize, weight: &[f32], eps: f64) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|row| rms_norm(row, weight, eps))
        .collect()
}

/// Each token's embedding row, `[tokens, hidden]`.
pub(crate) fn embed(embeddings: &[f32], hidden: usize, tokens: &[u32]) -> Vec<f32> {
    tokens
        .iter()
        .flat_map(|&id| embeddings[id as usize * hidden..(id as usize + 1) * hidden].iter())
        .copied()
        .collect()
}
