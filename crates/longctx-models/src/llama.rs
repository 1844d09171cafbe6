//! The Llama-family forward pass (Llama 2/3, Mistral, LongChat, SmolLM2, Qwen2), written over
//! a [`KvCache`] so that any cache policy plugs in without touching the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use longctx_kv::{
    FullCache, KvCache, KvShape, Reservation, RopeScaling, RopeTable, MAX_STREAM_POSITIONS,
};

use crate::config::{LlamaConfig, MAX_CONTEXT};
use crate::gguf::GgufFile;
use crate::linear::Linear;
use crate::{LanguageModel, Logits, ModelError, Result};

/// Tokens processed per prefill chunk: peak activation memory is bounded by chunk × context.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// How to load weights and how far the context may reach.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Replace the RoPE base θ (the needle test enlarges it to reach past the trained context).
    pub rope_theta: Option<f64>,
    /// Allow positions up to this many tokens instead of the trained context.
    pub context: Option<usize>,
    /// Tokens per prefill chunk.
    pub prefill_chunk: usize,
    /// Keep dense f32 copies of quantized weights for prefill GEMMs (faster prefill, more memory).
    pub dense_prefill_weights: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            rope_theta: None,
            context: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            dense_prefill_weights: true,
        }
    }
}

struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama-family transformer with its sequence state (a KV cache).
pub struct LlamaModel {
    config: LlamaConfig,
    embeddings: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    lm_head: Linear,
    rope: Arc<RopeTable>,
    cache: Box<dyn KvCache>,
    seen: usize,
    prefill_chunk: usize,
    weight_bytes: usize,
}

/// Where weights come from, so one loader serves GGUF files and Hugging Face directories.
enum Weights {
    Gguf(GgufFile),
    Safetensors(MmapedSafetensors, PathBuf),
}

/// A tensor's expected shape, dimension by dimension; `None` takes any size.
type Shape<'a> = &'a [Option<usize>];

impl Weights {
    /// The file or folder the weights come from.
    fn path(&self) -> PathBuf {
        match self {
            Weights::Gguf(g) => g.path().to_path_buf(),
            Weights::Safetensors(_, dir) => dir.clone(),
        }
    }

    /// A shape that differs from the config's is an error naming the file and tensor:
    /// a damaged or mislabelled checkpoint must not run with whatever shapes it holds.
    fn check_shape(&self, gguf: &str, hf: &str, found: &[usize], want: Shape) -> Result<()> {
        let fits = found.len() == want.len()
            && found
                .iter()
                .zip(want)
                .all(|(f, w)| w.is_none_or(|w| w == *f));
        if fits {
            return Ok(());
        }
        let name = match self {
            Weights::Gguf(_) => gguf,
            Weights::Safetensors(..) => hf,
        };
        let want: Vec<String> = want
            .iter()
            .map(|w| w.map_or("any".into(), |w| w.to_string()))
            .collect();
        Err(ModelError::BadCheckpoint {
            path: self.path(),
            reason: format!(
                "tensor {name} has shape {found:?}, but the model's config asks for [{}]",
                want.join(", ")
            ),
        })
    }

    fn vector(&self, gguf: &str, hf: &str, want: Shape) -> Result<Tensor> {
        let t = match self {
            Weights::Gguf(g) => g.tensor(gguf, &Device::Cpu)?.dequantize(&Device::Cpu)?,
            Weights::Safetensors(st, dir) => st
                .load(hf, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| ModelError::BadCheckpoint {
                    path: dir.clone(),
                    reason: format!("tensor {hf}: {e}"),
                })?,
        };
        self.check_shape(gguf, hf, t.dims(), want)?;
        Ok(t)
    }

    fn has(&self, gguf: &str, hf: &str) -> bool {
        match self {
            Weights::Gguf(g) => g.has_tensor(gguf),
            Weights::Safetensors(st, _) => st.get(hf).is_ok(),
        }
    }

    /// A `[outputs, inputs]` projection, with its bias when named.
    fn linear(
        &self,
        gguf: &str,
        hf: &str,
        bias: Option<(&str, &str)>,
        dense: bool,
        want: Shape,
    ) -> Result<Linear> {
        let bias = match bias {
            Some((gb, hb)) => Some(self.vector(gb, hb, &want[..1])?),
            None => None,
        };
        match self {
            Weights::Gguf(g) => {
                let q = g.tensor(gguf, &Device::Cpu)?;
                self.check_shape(gguf, hf, q.shape().dims(), want)?;
                Linear::from_qtensor(q, dense, bias)
            }
            Weights::Safetensors(..) => Ok(Linear::from_dense(self.vector(gguf, hf, want)?, bias)),
        }
    }
}

impl LlamaModel {
    /// Load a GGUF file.
    pub fn from_gguf(gguf: GgufFile, options: &LoadOptions) -> Result<Self> {
        let mut config = LlamaConfig::from_gguf(&gguf)?;
        if gguf.has_tensor("rope_freqs.weight") {
            let factors: Vec<f32> = gguf
                .tensor("rope_freqs.weight", &Device::Cpu)?
                .dequantize(&Device::Cpu)?
                .to_vec1()?;
            config.rope.scaling = Some(RopeScaling::FreqFactors(factors));
        }
        Self::build(config, Weights::Gguf(gguf), options)
    }

    /// Load a Hugging Face directory (config.json + *.safetensors).
    pub fn from_hf_dir(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config = LlamaConfig::from_hf_config(&dir.join("config.json"))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ModelError::Io {
                path: dir.into(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::BadCheckpoint {
                path: dir.into(),
                reason: "no *.safetensors files".into(),
            });
        }
        // SAFETY: read-only maps of files this process does not modify.
        let st =
            unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::BadCheckpoint {
                path: dir.into(),
                reason: format!("unreadable safetensors: {e}"),
            })?;
        Self::build(config, Weights::Safetensors(st, dir.into()), options)
    }

    fn build(mut config: LlamaConfig, w: Weights, options: &LoadOptions) -> Result<Self> {
        if let Some(theta) = options.rope_theta {
            config.rope.theta = theta;
        }
        if let Some(context) = options.context {
            if context == 0 || context > MAX_CONTEXT {
                return Err(ModelError::Unsupported {
                    what: format!("--context {context}"),
                    hint: format!("a context holds between 1 and {MAX_CONTEXT} tokens (the RoPE table is built for it)"),
                });
            }
            config.context = context;
        }
        config.rope.max_positions = config.context;
        let dense = options.dense_prefill_weights;
        let (hidden, inner) = (Some(config.hidden), Some(config.intermediate));
        let q_width = Some(config.heads * config.head_dim);
        let kv_width = Some(config.kv_heads * config.head_dim);
        let embeddings = w.vector(
            "token_embd.weight",
            "model.embed_tokens.weight",
            &[None, hidden],
        )?;
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let g = |n: &str| format!("blk.{i}.{n}");
            let h = |n: &str| format!("model.layers.{i}.{n}");
            let lin = |gn: &str, hn: &str, with_bias: bool, want: Shape| {
                let bias = with_bias.then(|| {
                    (
                        g(&gn.replace("weight", "bias")),
                        h(&hn.replace("weight", "bias")),
                    )
                });
                w.linear(
                    &g(gn),
                    &h(hn),
                    bias.as_ref().map(|(a, c)| (a.as_str(), c.as_str())),
                    dense,
                    want,
                )
            };
            let qkv_bias = config.qkv_bias;
            blocks.push(Block {
                attn_norm: w.vector(
                    &g("attn_norm.weight"),
                    &h("input_layernorm.weight"),
                    &[hidden],
                )?,
                q: lin(
                    "attn_q.weight",
                    "self_attn.q_proj.weight",
                    qkv_bias,
                    &[q_width, hidden],
                )?,
                k: lin(
                    "attn_k.weight",
                    "self_attn.k_proj.weight",
                    qkv_bias,
                    &[kv_width, hidden],
                )?,
                v: lin(
                    "attn_v.weight",
                    "self_attn.v_proj.weight",
                    qkv_bias,
                    &[kv_width, hidden],
                )?,
                o: lin(
                    "attn_output.weight",
                    "self_attn.o_proj.weight",
                    false,
                    &[hidden, q_width],
                )?,
                ffn_norm: w.vector(
                    &g("ffn_norm.weight"),
                    &h("post_attention_layernorm.weight"),
                    &[hidden],
                )?,
                gate: lin(
                    "ffn_gate.weight",
                    "mlp.gate_proj.weight",
                    false,
                    &[inner, hidden],
                )?,
                up: lin(
                    "ffn_up.weight",
                    "mlp.up_proj.weight",
                    false,
                    &[inner, hidden],
                )?,
                down: lin(
                    "ffn_down.weight",
                    "mlp.down_proj.weight",
                    false,
                    &[hidden, inner],
                )?,
            });
        }
        let final_norm = w.vector("output_norm.weight", "model.norm.weight", &[hidden])?;
        let tied = !w.has("output.weight", "lm_head.weight");
        let lm_head = if !tied {
            w.linear(
                "output.weight",
                "lm_head.weight",
                None,
                true,
                &[None, hidden],
            )?
        } else {
            // Tied embeddings: the output projection is the embedding matrix, shared, not copied.
            match &w {
                Weights::Gguf(_) => w
                    .linear(
                        "token_embd.weight",
                        "model.embed_tokens.weight",
                        None,
                        false,
                        &[None, hidden],
                    )?
                    .with_dense(embeddings.clone()),
                Weights::Safetensors(..) => Linear::from_dense(embeddings.clone(), None),
            }
        };
        let rope = Arc::new(RopeTable::new(&config.rope, &Device::Cpu)?);
        let cache: Box<dyn KvCache> = Box::new(FullCache::new(
            config.kv_shape(),
            rope.clone(),
            &Device::Cpu,
        ));
        let shared_embeddings = if tied { embeddings.elem_count() * 4 } else { 0 };
        let weight_bytes = embeddings.elem_count() * 4 + lm_head.bytes() - shared_embeddings
            + blocks
                .iter()
                .map(|b| {
                    [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                        .iter()
                        .map(|l| l.bytes())
                        .sum::<usize>()
                })
                .sum::<usize>();
        Ok(Self {
            config,
            embeddings,
            blocks,
            final_norm,
            lm_head,
            rope,
            cache,
            seen: 0,
            prefill_chunk: options.prefill_chunk.max(1),
            weight_bytes,
        })
    }

    /// Hyper-parameters (after any overrides).
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Install another cache policy, built for this model's geometry and RoPE; the sequence restarts.
    pub fn set_cache(&mut self, build: impl FnOnce(KvShape, Arc<RopeTable>) -> Box<dyn KvCache>) {
        self.cache = build(self.config.kv_shape(), self.rope.clone());
        self.seen = 0;
    }

    /// The RoPE table caches rotate with.
    pub fn rope(&self) -> Arc<RopeTable> {
        self.rope.clone()
    }

    /// The cache in use (for byte and kept-token accounting).
    pub fn cache(&self) -> &dyn KvCache {
        self.cache.as_ref()
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn heads_first(x: &Tensor, t: usize, heads: usize, d: usize) -> Result<Tensor> {
        Ok(x.reshape((t, heads, d))?.transpose(0, 1)?.contiguous()?)
    }

    /// One chunk through every block; returns the final hidden states `[t, hidden]`.
    fn forward_chunk(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let t = tokens.len();
        let c = &self.config;
        let (heads, kv_heads, d, eps) = (c.heads, c.kv_heads, c.head_dim, c.rms_eps as f32);
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let q = Self::heads_first(&b.q.forward(&h)?, t, heads, d)?;
            let k = Self::heads_first(&b.k.forward(&h)?, t, kv_heads, d)?;
            let v = Self::heads_first(&b.v.forward(&h)?, t, kv_heads, d)?;
            let attn = self.cache.attend(layer, self.seen, &q, &k, &v)?;
            let attn = attn.transpose(0, 1)?.reshape((t, heads * d))?;
            x = (x + b.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let mlp = (b.gate.forward(&h)?.silu()? * b.up.forward(&h)?)?;
            x = (x + b.down.forward(&mlp)?)?;
        }
        self.seen += t;
        Ok(candle_nn::ops::rms_norm(&x, &self.final_norm, eps)?)
    }
}

impl LanguageModel for LlamaModel {
    fn append(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::Tokenizer(
                "cannot run the model on an empty token sequence".into(),
            ));
        }
        let needed = self.seen + tokens.len();
        if needed > self.context_limit() {
            return Err(ModelError::ContextTooLong {
                needed,
                limit: self.context_limit(),
            });
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.embeddings.dim(0).unwrap_or(0))
        {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary"
            )));
        }
        let mut outputs = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.prefill_chunk).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let hidden = self.forward_chunk(chunk)?;
            match logits {
                Logits::All => outputs.push(self.lm_head.forward(&hidden)?),
                Logits::Last if i == last => outputs.push(
                    self.lm_head
                        .forward(&hidden.narrow(0, chunk.len() - 1, 1)?)?,
                ),
                Logits::Last => {}
            }
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }

    fn end_prefill(&mut self) -> Result<()> {
        Ok(self.cache.end_prefill()?)
    }

    /// A prompt longer than the model can hold is refused here, before storage is sized by it.
    fn reserve(&mut self, mut r: Reservation) -> Result<()> {
        let needed = r.prompt.saturating_add(r.appended);
        if needed > self.context_limit() {
            return Err(ModelError::ContextTooLong {
                needed,
                limit: self.context_limit(),
            });
        }
        let room = self.context_limit() - needed;
        r.new_tokens = r.new_tokens.min(room);
        Ok(self.cache.reserve(r)?)
    }

    fn seen_tokens(&self) -> usize {
        self.seen
    }

    /// The trained (or `--context`) window, unless the cache streams: a policy whose
    /// attention spans a bounded distance reads any input up to the stream ceiling.
    fn context_limit(&self) -> usize {
        if self.cache.streams() {
            MAX_STREAM_POSITIONS
        } else {
            self.config.context
        }
    }

    fn state_bytes(&self) -> usize {
        self.cache.stored_bytes()
    }

    fn reset(&mut self) {
        self.cache.reset();
        self.seen = 0;
    }
}
