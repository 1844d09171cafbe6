//! The decoder hyper-parameters (the Llama family and Gemma-3), read from GGUF metadata or a
//! Hugging Face config.json.

use std::path::Path;

use longctx_kv::{KvShape, RopeScaling, RopeSettings, RopeStyle};
use serde_json::Value;

use crate::gguf::GgufFile;
use crate::{ModelError, Result};

/// Architectures this forward pass implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, LongChat, SmolLM2 (and Mistral, which GGUF files label "llama").
    Llama,
    /// Mistral checkpoints from Hugging Face (the Llama layout).
    Mistral,
    /// Qwen2: the Llama layout with biases on the q/k/v projections.
    Qwen2,
    /// Gemma-3: the Llama layout with a scaled embedding, q/k norms, norms after attention
    /// and the MLP, GELU, and local (sliding-window) layers between global ones.
    Gemma3,
}

/// Every architecture implemented: its GGUF `general.architecture` names, its Hugging Face
/// `model_type`s, and the RoPE layout of its GGUF files (llama.cpp's converter permutes
/// Llama q/k rows for interleaved RoPE; Qwen2 and Gemma keep NEOX order; Hugging Face
/// checkpoints are all NEOX). Adding an architecture starts with a row here.
const ARCHITECTURES: [(Architecture, &[&str], &[&str], RopeStyle); 4] = [
    (
        Architecture::Llama,
        &["llama", "mistral"],
        &["llama"],
        RopeStyle::Interleaved,
    ),
    (Architecture::Mistral, &[], &["mistral"], RopeStyle::Half),
    (Architecture::Qwen2, &["qwen2"], &["qwen2"], RopeStyle::Half),
    (
        Architecture::Gemma3,
        &["gemma3"],
        &["gemma3_text"],
        RopeStyle::Half,
    ),
];

impl Architecture {
    /// The architecture and RoPE layout of a GGUF `general.architecture` name, if this crate
    /// implements it.
    pub fn from_gguf_name(name: &str) -> Option<(Self, RopeStyle)> {
        ARCHITECTURES
            .iter()
            .find(|(_, gguf, _, _)| gguf.contains(&name))
            .map(|&(a, _, _, style)| (a, style))
    }

    /// The architecture of a Hugging Face `model_type`, if this crate implements it.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        ARCHITECTURES
            .iter()
            .find(|(_, _, hf, _)| hf.contains(&model_type))
            .map(|&(a, ..)| a)
    }

    /// The names one kind of file uses, for error messages.
    fn names(gguf: bool) -> String {
        let names: Vec<&str> = ARCHITECTURES
            .iter()
            .flat_map(|(_, g, h, _)| if gguf { *g } else { *h })
            .copied()
            .collect();
        names.join(", ")
    }
}

/// Gemma's local/global pattern over `layers` layers: every `every`-th layer (from 1) global.
/// Built for at most [`MAX_LAYERS`] + 1 layers: a header claiming more is refused by the
/// config's check, not allocated for.
fn layer_pattern(layers: usize, every: usize) -> Vec<bool> {
    (0..layers.min(MAX_LAYERS + 1))
        .map(|l| !(l + 1).is_multiple_of(every))
        .collect()
}

/// Most layers a model header may claim.
pub const MAX_LAYERS: usize = 1024;
/// Most attention heads.
pub const MAX_HEADS: usize = 1024;
/// Largest head dimension.
pub const MAX_HEAD_DIM: usize = 1024;
/// Largest hidden or feed-forward width.
pub const MAX_WIDTH: usize = 1 << 18;
/// Largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 22;
/// Longest context (header or `--context`): the RoPE table is built for it, so 1M positions
/// at most (512 MiB at head dimension 128); longer inputs can only be streamed.
pub const MAX_CONTEXT: usize = 1 << 20;

/// What Gemma-3 adds to the Llama layout's hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaLayout {
    /// Tokens a local layer attends to, its own included.
    pub sliding_window: usize,
    /// For each layer, whether it is local (sliding-window) rather than global.
    pub local_layers: Vec<bool>,
    /// RoPE base of the local layers (the global ones use `rope.theta`).
    pub local_rope_theta: f64,
    /// Scores are scaled by `query_pre_attn_scalar^-1/2` (not `head_dim^-1/2`).
    pub query_pre_attn_scalar: f64,
}

/// Hyper-parameters of one Llama-family model.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Which variant of the layout.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Positions the model was trained for.
    pub context: usize,
    /// RoPE angles.
    pub rope: RopeSettings,
    /// Whether q/k/v projections carry biases.
    pub qkv_bias: bool,
    /// Gemma-3's additions; `None` for the Llama layout.
    pub gemma: Option<GemmaLayout>,
}

impl LlamaConfig {
    /// Whether `layer` attends within a sliding window (Gemma-3's local layers).
    pub fn is_local(&self, layer: usize) -> bool {
        self.gemma
            .as_ref()
            .is_some_and(|g| g.local_layers.get(layer) == Some(&true))
    }

    /// The attention geometry caches are built for.
    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.layers,
            q_heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    fn check(self, source: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::BadCheckpoint {
            path: source.into(),
            reason,
        };
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.heads, self.kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2)
            || self.layers == 0
            || self.hidden == 0
            || self.context == 0
        {
            return Err(bad(
                "hidden size, layer count, context and an even head dimension must be positive"
                    .into(),
            ));
        }
        // Everything below sizes an allocation (layers, the RoPE table, buffers): a header
        // claiming more than any model has is refused before anything is sized by it.
        let sizes = [
            (
                "layer count (block_count / num_hidden_layers)",
                self.layers,
                MAX_LAYERS,
            ),
            ("attention heads", self.heads, MAX_HEADS),
            ("head dimension", self.head_dim, MAX_HEAD_DIM),
            ("hidden size", self.hidden, MAX_WIDTH),
            ("feed-forward size", self.intermediate, MAX_WIDTH),
            ("vocabulary size", self.vocab, MAX_VOCAB),
            (
                "context (context_length / max_position_embeddings)",
                self.context,
                MAX_CONTEXT,
            ),
        ];
        for (what, value, most) in sizes {
            if value > most {
                return Err(bad(format!(
                    "its {what} is {value}, beyond the {most} this loader accepts: the header is damaged or not a model's"
                )));
            }
        }
        if let Some(g) = &self.gemma {
            // The window sizes the local layers' caches.
            if g.local_layers.len() != self.layers {
                return Err(bad(format!(
                    "{} layer types for {} layers",
                    g.local_layers.len(),
                    self.layers
                )));
            }
            if g.sliding_window == 0 || g.sliding_window > self.context {
                return Err(bad(format!(
                    "its sliding window is {} tokens, outside 1..={} (its context)",
                    g.sliding_window, self.context
                )));
            }
        }
        Ok(self)
    }

    /// Read from GGUF metadata (`general.architecture` selects the key prefix).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        let (architecture, style) =
            Architecture::from_gguf_name(arch).ok_or_else(|| ModelError::Unsupported {
                what: format!("GGUF architecture \"{arch}\" in {}", g.path().display()),
                hint: format!("supported architectures are {}", Architecture::names(true)),
            })?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.get_usize(&key("embedding_length"))?;
        let heads = g.get_usize(&key("attention.head_count"))?;
        let kv_heads = g
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(heads);
        let head_dim = g
            .get_usize(&key("rope.dimension_count"))
            .or_else(|_| g.get_usize(&key("attention.key_length")))
            .unwrap_or(hidden / heads.max(1));
        let layers = g.get_usize(&key("block_count"))?;
        let context = g.get_usize(&key("context_length"))?;
        let vocab = match g.get_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => g.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let scaling = match g.get_str(&key("rope.scaling.type")) {
            Ok("linear") => Some(RopeScaling::Linear {
                factor: g.get_f64(&key("rope.scaling.factor"))?,
            }),
            Ok("none") | Err(_) => None,
            Ok(other) => {
                return Err(ModelError::Unsupported {
                    what: format!("RoPE scaling \"{other}\""),
                    hint: "linear and Llama-3 scaling are implemented".into(),
                })
            }
        };
        Self {
            architecture,
            hidden,
            intermediate: g.get_usize(&key("feed_forward_length"))?,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            context,
            rope: RopeSettings {
                theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0),
                head_dim,
                style,
                scaling,
                max_positions: context,
            },
            qkv_bias: architecture == Architecture::Qwen2,
            gemma: match architecture {
                // As llama.cpp reads Gemma-3: the window from the file; the pattern (5 local
                // layers per global one), the local RoPE base and the query scale (head_dim,
                // or hidden / heads for the 62-layer 27B) are fixed by the architecture.
                Architecture::Gemma3 => Some(GemmaLayout {
                    sliding_window: g.get_usize(&key("attention.sliding_window"))?,
                    local_layers: layer_pattern(layers, 6),
                    local_rope_theta: 10_000.0,
                    query_pre_attn_scalar: if layers == 62 {
                        (hidden / heads.max(1)) as f64
                    } else {
                        head_dim as f64
                    },
                }),
                _ => None,
            },
        }
        .check(g.path())
    }

    /// Read from a Hugging Face `config.json` (transformers 4.x and 5.x layouts).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::BadCheckpoint {
            path: path.into(),
            reason,
        };
        let v = read_hf_json(path)?;
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("missing integer field \"{k}\"")))
        };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture =
            Architecture::from_model_type(model_type).ok_or_else(|| ModelError::Unsupported {
                what: format!("model_type \"{model_type}\" in {}", path.display()),
                hint: format!("supported model types are {}", Architecture::names(false)),
            })?;
        let hidden = num("hidden_size")?;
        let heads = num("num_attention_heads")?;
        let kv_heads = num("num_key_value_heads").unwrap_or(heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(hidden / heads.max(1));
        // transformers 5 moves rope_theta and rope_scaling into `rope_parameters`, per layer
        // type for Gemma-3 (its global layers' and its local layers').
        let all_params = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .filter(|p| !p.is_null());
        let rope_params = all_params.map(|p| p.get("full_attention").unwrap_or(p));
        let theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10000.0);
        let scaling = match rope_params {
            None => None,
            Some(p) => {
                let kind = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let f = |k: &str| {
                    p.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| bad(format!("rope scaling needs \"{k}\"")))
                };
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: f("factor")?,
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_positions: f("original_max_position_embeddings")? as usize,
                    }),
                    other => {
                        return Err(ModelError::Unsupported {
                            what: format!("rope scaling \"{other}\""),
                            hint: "linear and llama3 are implemented".into(),
                        })
                    }
                }
            }
        };
        let context = num("max_position_embeddings")?;
        let layers = num("num_hidden_layers")?;
        let gemma = match architecture {
            Architecture::Gemma3 => {
                Some(Self::gemma_from_hf(&v, all_params, layers, head_dim, path)?)
            }
            _ => None,
        };
        let qkv_bias = architecture == Architecture::Qwen2
            || v.get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        Self {
            architecture,
            hidden,
            intermediate: num("intermediate_size")?,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab: num("vocab_size")?,
            rms_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            context,
            rope: RopeSettings {
                theta,
                head_dim,
                style: RopeStyle::Half,
                scaling,
                max_positions: context,
            },
            qkv_bias,
            gemma,
        }
        .check(path)
    }

    /// Gemma-3's additions from a `gemma3_text` config.json: layer types (or the 4.x
    /// pattern), window, local RoPE base and query scale. Soft-capping (Gemma-2) and other
    /// activations are refused, not ignored.
    fn gemma_from_hf(
        v: &Value,
        rope_params: Option<&Value>,
        layers: usize,
        head_dim: usize,
        path: &Path,
    ) -> Result<GemmaLayout> {
        let unsupported = |what: String| ModelError::Unsupported {
            what: format!("{what} in {}", path.display()),
            hint: "Gemma-3's text layout (GELU-tanh, no soft-capping) is implemented".into(),
        };
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(unsupported(format!("{key} = {}", v[key])));
            }
        }
        match v.get("hidden_activation").and_then(Value::as_str) {
            None | Some("gelu_pytorch_tanh") => {}
            Some(other) => return Err(unsupported(format!("hidden_activation \"{other}\""))),
        }
        let local_layers = match v.get("layer_types").and_then(Value::as_array) {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            None => {
                let every = ["sliding_window_pattern", "_sliding_window_pattern"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_u64))
                    .unwrap_or(6)
                    .max(1) as usize;
                layer_pattern(layers, every)
            }
        };
        let local_rope_theta = rope_params
            .and_then(|p| p.get("sliding_attention"))
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_local_base_freq"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        Ok(GemmaLayout {
            sliding_window: v
                .get("sliding_window")
                .and_then(Value::as_u64)
                .ok_or_else(|| ModelError::BadCheckpoint {
                    path: path.into(),
                    reason: "missing integer field \"sliding_window\"".into(),
                })? as usize,
            local_layers,
            local_rope_theta,
            query_pre_attn_scalar: v
                .get("query_pre_attn_scalar")
                .and_then(Value::as_f64)
                .unwrap_or(head_dim as f64),
        })
    }
}

/// A Hugging Face JSON file (config.json). Python writes unbounded floats as `Infinity`
/// (Mamba-2's `time_step_limit`), which is not JSON; such constants are read as null.
pub(crate) fn read_hf_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&python_constants_as_null(&text)).map_err(|e| ModelError::BadCheckpoint {
        path: path.into(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// `text` with Python's `Infinity`, `-Infinity` and `NaN` outside strings replaced by `null`.
fn python_constants_as_null(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if !in_string {
            if let Some(constant) = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|c| rest.starts_with(c))
            {
                out.push_str("null");
                rest = &rest[constant.len()..];
                continue;
            }
        }
        match (in_string, escaped, ch) {
            (true, false, '\\') => escaped = true,
            (true, false, '"') | (false, _, '"') => in_string = !in_string,
            _ => escaped = false,
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_constants_outside_strings_become_null() {
        let text =
            r#"{"limit": [0.0, Infinity], "low": -Infinity, "x": NaN, "s": "Infinity \" NaN"}"#;
        let value: serde_json::Value =
            serde_json::from_str(&python_constants_as_null(text)).unwrap();
        assert_eq!(value["limit"], serde_json::json!([0.0, null]));
        assert!(value["low"].is_null() && value["x"].is_null());
        assert_eq!(value["s"], "Infinity \" NaN");
    }
}
