//! The decoder forward pass of the Llama family (Llama 2/3, Mistral, LongChat, SmolLM2, Qwen2)
//! and of Gemma-3, which adds to the same blocks (a scaled embedding, q/k norms, norms after
//! attention and the MLP, GELU, local sliding-window layers), written over a [`KvCache`] so
//! that any cache policy plugs in without touching the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use longctx_kv::{
    Budget, CacheNumerics, DropPolicy, DropSettings, DroppingCache, FullCache, GroupedCache,
    KvCache, KvError, KvPrecision, KvShape, LayerGroup, Reservation, RopeScaling, RopeSettings,
    RopeTable, Schedule, Selection, Sinks, MAX_STREAM_POSITIONS,
};

use crate::config::{Architecture, LlamaConfig, MAX_CONTEXT};
use crate::gguf::GgufFile;
use crate::linear::Linear;
use crate::q8::DecodeActivations;
use crate::{
    AttentionWork, ComputeProfile, LanguageModel, Logits, ModelError, ReplayPrompt, Result,
};

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
    /// Hold dense f32 copies of quantized weights for prefill's GEMMs (four bytes per weight
    /// for the run) instead of dequantizing them for each prefill chunk.
    pub dense_prefill_weights: bool,
    /// The precision of keys and values held uncompressed (the baseline's, token-dropping
    /// methods', the local layers' windows).
    pub kv_precision: KvPrecision,
    /// Whether decoding's mat-vecs quantize activations to 8 bits (integer kernels).
    pub decode_activations: DecodeActivations,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            rope_theta: None,
            context: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            dense_prefill_weights: false,
            kv_precision: KvPrecision::default(),
            decode_activations: DecodeActivations::default(),
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
    /// Gemma-3: RMS norms of each query and key head, before RoPE.
    qk_norms: Option<(Tensor, Tensor)>,
    /// Gemma-3: RMS norms of the attention's and the MLP's outputs, before the residual add.
    post_norms: Option<(Tensor, Tensor)>,
}

/// A cache builder: what a method makes of a geometry, a RoPE table and the model's numeric
/// choices (the precision of keys and values held uncompressed, decoding's activations).
pub type CacheBuilder<'a> = dyn FnOnce(KvShape, Arc<RopeTable>, CacheNumerics) -> std::result::Result<Box<dyn KvCache>, KvError>
    + 'a;

/// A Llama-family transformer with its sequence state (a KV cache).
pub struct LlamaModel {
    config: LlamaConfig,
    /// The token table; also the output projection when the model ties them.
    embeddings: Linear,
    blocks: Vec<Block>,
    final_norm: Tensor,
    /// The output projection when it is not the token table.
    lm_head: Option<Linear>,
    rope: Arc<RopeTable>,
    /// Gemma-3's local layers' RoPE (their own base).
    local_rope: Option<Arc<RopeTable>>,
    cache: Box<dyn KvCache>,
    seen: usize,
    prefill_chunk: usize,
    /// KVzip's replay instructions, given once the method is installed.
    replay: Option<ReplayPrompt>,
    /// What caches are built with: uncompressed keys' and values' precision, decoding's
    /// activations.
    numerics: CacheNumerics,
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

    /// An RMS norm's weight of `width` values. Gemma scales by `1 + weight`: its GGUF files
    /// store the sum (llama.cpp's converter adds the 1), its Hugging Face checkpoints the
    /// weight alone, so `one_plus` adds it to those.
    fn norm(&self, gguf: &str, hf: &str, width: Option<usize>, one_plus: bool) -> Result<Tensor> {
        let w = self.vector(gguf, hf, &[width])?;
        Ok(match self {
            Weights::Safetensors(..) if one_plus => (w + 1.0)?,
            _ => w,
        })
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
        activations: DecodeActivations,
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
                Linear::from_qtensor(q, dense, activations, bias)
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
        let embeddings = w.linear(
            "token_embd.weight",
            "model.embed_tokens.weight",
            None,
            dense,
            options.decode_activations,
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
                    options.decode_activations,
                    want,
                )
            };
            let qkv_bias = config.qkv_bias;
            let gemma = config.architecture == Architecture::Gemma3;
            let norm = |gn: &str, hn: &str, width| w.norm(&g(gn), &h(hn), width, gemma);
            let head = Some(config.head_dim);
            blocks.push(Block {
                attn_norm: norm("attn_norm.weight", "input_layernorm.weight", hidden)?,
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
                // Llama's norm before the MLP is transformers' "post_attention_layernorm";
                // Gemma names its own norm after attention so.
                ffn_norm: if gemma {
                    norm(
                        "ffn_norm.weight",
                        "pre_feedforward_layernorm.weight",
                        hidden,
                    )?
                } else {
                    norm("ffn_norm.weight", "post_attention_layernorm.weight", hidden)?
                },
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
                qk_norms: match gemma {
                    true => Some((
                        norm("attn_q_norm.weight", "self_attn.q_norm.weight", head)?,
                        norm("attn_k_norm.weight", "self_attn.k_norm.weight", head)?,
                    )),
                    false => None,
                },
                post_norms: match gemma {
                    true => Some((
                        norm(
                            "post_attention_norm.weight",
                            "post_attention_layernorm.weight",
                            hidden,
                        )?,
                        norm(
                            "post_ffw_norm.weight",
                            "post_feedforward_layernorm.weight",
                            hidden,
                        )?,
                    )),
                    false => None,
                },
            });
        }
        let final_norm = w.norm(
            "output_norm.weight",
            "model.norm.weight",
            hidden,
            config.architecture == Architecture::Gemma3,
        )?;
        // Tied embeddings: the output projection is the token table, shared, not copied.
        let lm_head = match w.has("output.weight", "lm_head.weight") {
            true => Some(w.linear(
                "output.weight",
                "lm_head.weight",
                None,
                dense,
                options.decode_activations,
                &[None, hidden],
            )?),
            false => None,
        };
        let rope = Arc::new(RopeTable::new(&config.rope, &Device::Cpu)?);
        let local_rope = match &config.gemma {
            Some(g) => {
                let settings = RopeSettings {
                    theta: g.local_rope_theta,
                    scaling: None,
                    ..config.rope.clone()
                };
                Some(Arc::new(RopeTable::new(&settings, &Device::Cpu)?))
            }
            None => None,
        };
        let weight_bytes = embeddings.bytes()
            + lm_head.as_ref().map_or(0, Linear::bytes)
            + blocks
                .iter()
                .map(|b| {
                    [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                        .iter()
                        .map(|l| l.bytes())
                        .sum::<usize>()
                })
                .sum::<usize>();
        let mut model = Self {
            cache: Box::new(FullCache::new(
                config.kv_shape(),
                rope.clone(),
                &Device::Cpu,
                options.kv_precision,
            )),
            config,
            embeddings,
            blocks,
            final_norm,
            lm_head,
            rope,
            local_rope,
            seen: 0,
            prefill_chunk: options.prefill_chunk.max(1),
            replay: None,
            numerics: CacheNumerics {
                precision: options.kv_precision,
                activations: options.decode_activations,
            },
            weight_bytes,
        };
        model.set_cache(Box::new(|shape, rope, numerics| {
            Ok(Box::new(FullCache::new(
                shape,
                rope,
                &Device::Cpu,
                numerics.precision,
            )))
        }))?;
        Ok(model)
    }

    fn heads_first(x: &Tensor, t: usize, heads: usize, d: usize) -> Result<Tensor> {
        Ok(x.reshape((t, heads, d))?.transpose(0, 1)?.contiguous()?)
    }

    /// One chunk through every block; returns the final hidden states `[t, hidden]`.
    fn forward_chunk(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let t = tokens.len();
        let c = &self.config;
        let (heads, kv_heads, d, eps) = (c.heads, c.kv_heads, c.head_dim, c.rms_eps as f32);
        let mut x = self.embeddings.rows(tokens)?;
        let gemma = c.gemma.as_ref();
        if gemma.is_some() {
            x = (x * (c.hidden as f64).sqrt())?;
        }
        // The caches scale scores by head_dim^-1/2; Gemma's scale is folded into the queries.
        let query_scale = gemma.map(|g| (d as f64 / g.query_pre_attn_scalar).sqrt());
        let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, eps);
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = norm(&x, &b.attn_norm)?;
            let mut q = Self::heads_first(&b.q.forward(&h)?, t, heads, d)?;
            let mut k = Self::heads_first(&b.k.forward(&h)?, t, kv_heads, d)?;
            let v = Self::heads_first(&b.v.forward(&h)?, t, kv_heads, d)?;
            if let Some((q_norm, k_norm)) = &b.qk_norms {
                (q, k) = (norm(&q, q_norm)?, norm(&k, k_norm)?);
            }
            if let Some(scale) = query_scale.filter(|&s| s != 1.0) {
                q = (q * scale)?;
            }
            let attn = self.cache.attend(layer, self.seen, &q, &k, &v)?;
            let attn = attn.transpose(0, 1)?.reshape((t, heads * d))?;
            let mut attn = b.o.forward(&attn)?;
            if let Some((after_attn, _)) = &b.post_norms {
                attn = norm(&attn, after_attn)?;
            }
            x = (x + attn)?;
            let h = norm(&x, &b.ffn_norm)?;
            let gate = b.gate.forward(&h)?;
            let gate = match gemma {
                Some(_) => gate.gelu()?,
                None => gate.silu()?,
            };
            let mut mlp = b.down.forward(&(gate * b.up.forward(&h)?)?)?;
            if let Some((_, after_mlp)) = &b.post_norms {
                mlp = norm(&mlp, after_mlp)?;
            }
            x = (x + mlp)?;
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
            .find(|&&id| id as usize >= self.embeddings.outputs())
        {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary"
            )));
        }
        // On a pool thread, the parallel loops inside start without waking the caller.
        rayon::scope(|_| {
            let mut outputs = Vec::new();
            let chunks: Vec<&[u32]> = tokens.chunks(self.prefill_chunk).collect();
            let last = chunks.len() - 1;
            for (i, chunk) in chunks.into_iter().enumerate() {
                let hidden = self.forward_chunk(chunk)?;
                let output = self.lm_head.as_ref().unwrap_or(&self.embeddings);
                match logits {
                    Logits::All => outputs.push(output.forward(&hidden)?),
                    Logits::Last if i == last => {
                        outputs.push(output.forward(&hidden.narrow(0, chunk.len() - 1, 1)?)?)
                    }
                    Logits::Last => {}
                }
            }
            Ok(Tensor::cat(&outputs, 0)?)
        })
    }

    fn end_prefill(&mut self) -> Result<()> {
        Ok(self.cache.end_prefill()?)
    }

    fn set_replay_prompt(&mut self, prompt: ReplayPrompt) {
        self.replay = Some(prompt);
    }

    /// Each pass's tokens run through every layer at the positions after the prompt, then
    /// the cache forgets them and the sequence is the prompt again.
    fn reconstruct(&mut self, prompt: &[u32]) -> Result<()> {
        let Some(chunk) = self.cache.replay_chunk() else {
            return Ok(());
        };
        let Some(replay) = self.replay.as_ref() else {
            return Err(ModelError::Unsupported {
                what: "KVzip without its replay prompt".into(),
                hint: "install the method with longctx's `install`, which tokenizes the replay instructions for the model".into(),
            });
        };
        if prompt.len() != self.seen {
            return Err(ModelError::Unsupported {
                what: format!(
                    "KVzip replaying a prompt of {} tokens in a sequence of {}",
                    prompt.len(),
                    self.seen
                ),
                hint: "prefill the whole prompt at once, from the start of a sequence".into(),
            });
        }
        let passes = replay.passes(prompt, chunk);
        rayon::scope(|_| {
            for (span, ids) in passes {
                self.cache.begin_replay(span)?;
                for part in ids.chunks(self.prefill_chunk) {
                    self.forward_chunk(part)?;
                }
                self.cache.end_replay()?;
                self.seen = prompt.len();
            }
            Ok(())
        })
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

    fn forget(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        if range.end > self.seen {
            return Err(ModelError::Kv(longctx_kv::KvError::Invalid(format!(
                "cannot forget tokens {range:?}: the sequence holds {}",
                self.seen
            ))));
        }
        self.cache.forget(range.clone())?;
        self.seen -= range.len();
        Ok(())
    }

    /// Gemma-3's local layers keep their sliding window; the method serves the global ones.
    fn set_cache(&mut self, build: Box<CacheBuilder>) -> Result<()> {
        self.cache = match (&self.config.gemma, &self.local_rope) {
            (Some(gemma), Some(local_rope)) => {
                let (local, global): (Vec<usize>, Vec<usize>) =
                    (0..self.config.layers).partition(|&l| self.config.is_local(l));
                let shape = |layers: &[usize]| KvShape {
                    layers: layers.len(),
                    ..self.config.kv_shape()
                };
                let window = DropSettings {
                    selection: Selection::PerHead,
                    schedule: Schedule::Uniform,
                    decoding: None,
                    policy: DropPolicy::StreamingLlm {
                        sinks: Sinks::Count(0),
                        reindex: false,
                    },
                    budget: Budget::Tokens(gemma.sliding_window),
                };
                let local_cache = DroppingCache::new(
                    shape(&local),
                    local_rope.clone(),
                    &Device::Cpu,
                    window,
                    self.numerics.precision,
                )?;
                let global_cache = build(shape(&global), self.rope.clone(), self.numerics)?;
                if global_cache.replay_chunk().is_some() {
                    return Err(ModelError::Unsupported {
                        what: "KVzip on Gemma-3's mixed local and global layers (the local windows would slide over the replay)".into(),
                        hint: "run it on a model whose layers all attend globally (kvpress refuses Gemma-3 too)".into(),
                    });
                }
                Box::new(GroupedCache::new(vec![
                    LayerGroup {
                        name: "global",
                        layers: global,
                        cache: global_cache,
                    },
                    LayerGroup {
                        name: "local",
                        layers: local,
                        cache: Box::new(local_cache),
                    },
                ])?)
            }
            _ => build(self.config.kv_shape(), self.rope.clone(), self.numerics)?,
        };
        self.seen = 0;
        Ok(())
    }

    fn cache(&self) -> Option<&dyn KvCache> {
        Some(self.cache.as_ref())
    }

    fn trained_context(&self) -> usize {
        self.config.context
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn compute_profile(&self) -> ComputeProfile {
        let c = &self.config;
        let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let attention_projections = c.hidden * (q + 2 * kv) + q * c.hidden;
        let mlp = 3 * c.hidden * c.intermediate;
        ComputeProfile {
            layer_weights: c.layers * (attention_projections + mlp),
            head_weights: c.vocab * c.hidden,
            attention: (0..c.layers)
                .map(|l| AttentionWork {
                    width: q,
                    window: c
                        .gemma
                        .as_ref()
                        .filter(|_| c.is_local(l))
                        .map(|g| g.sliding_window),
                })
                .collect(),
        }
    }
}
