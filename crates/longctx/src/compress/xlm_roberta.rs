//! An XLM-RoBERTa token classifier (Hugging Face `XLMRobertaForTokenClassification`): what
//! LLMLingua-2 runs to give each token its probability of being kept. A post-norm BERT
//! encoder — learned absolute positions counted from the padding id + 1, exact-erf GELU —
//! and a linear head of two labels, read from a Hugging Face folder (config.json,
//! model.safetensors, tokenizer.json). Checked against transformers through LLMLingua-2's
//! outputs on a tiny random model (`tests/llmlingua.rs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

/// The fields of config.json the encoder needs.
#[derive(Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    pad_token_id: usize,
    layer_norm_eps: f64,
    hidden_act: String,
}

/// A weight and its bias.
struct Affine {
    weight: Tensor,
    bias: Tensor,
}

impl Affine {
    /// `x Wᵀ + b` for `x` of `[tokens, in]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// One encoder layer: self-attention and a GELU MLP, each followed by a residual LayerNorm.
struct Layer {
    query: Affine,
    key: Affine,
    value: Affine,
    attention_out: Affine,
    attention_norm: Affine,
    intermediate: Affine,
    output: Affine,
    output_norm: Affine,
}

/// The classifier and its tokenizer.
pub struct TokenClassifier {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: Affine,
    layers: Vec<Layer>,
    classifier: Affine,
    heads: usize,
    pad: usize,
    eps: f64,
    /// The tokenizer, with the tokens LLMLingua-2 added ([NEW0] … [NEW99]).
    pub tokenizer: tokenizers::Tokenizer,
    /// Tokens the encoder reads at most in one pass (its positions less the padding id's).
    pub max_tokens: usize,
    /// Where it was read from.
    pub folder: PathBuf,
}

impl TokenClassifier {
    /// Read a Hugging Face folder; a missing file, a tensor of another shape than the config
    /// gives, or an activation other than GELU is an error naming the folder.
    pub fn load(folder: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = folder.join(name);
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {} (an LLMLingua-2 model folder holds config.json, model.safetensors and tokenizer.json)",
                    path.display()
                )
            })
        };
        let config: Config = serde_json::from_str(&read("config.json")?)
            .with_context(|| format!("{}/config.json", folder.display()))?;
        if config.hidden_act != "gelu" {
            bail!(
                "{}/config.json: hidden_act {:?}; the XLM-RoBERTa classifier here runs \"gelu\"",
                folder.display(),
                config.hidden_act
            );
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            bail!(
                "{}/config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                folder.display(),
                config.hidden_size,
                config.num_attention_heads
            );
        }
        let weights_path = folder.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not modified while the process runs.
        let weights = unsafe { MmapedSafetensors::new(&weights_path) }
            .with_context(|| format!("reading {}", weights_path.display()))?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let tensor = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = weights
                .load(name, &Device::Cpu)
                .with_context(|| format!("{}: tensor {name}", weights_path.display()))?
                .to_dtype(DType::F32)?;
            if t.dims() != shape {
                bail!(
                    "{}: tensor {name} has shape {:?}, but config.json asks for {shape:?}",
                    weights_path.display(),
                    t.dims()
                );
            }
            Ok(t)
        };
        let affine = |name: &str, out: usize, input: Option<usize>| -> Result<Affine> {
            let weight = match input {
                Some(i) => tensor(&format!("{name}.weight"), &[out, i])?,
                None => tensor(&format!("{name}.weight"), &[out])?,
            };
            Ok(Affine {
                weight,
                bias: tensor(&format!("{name}.bias"), &[out])?,
            })
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("roberta.encoder.layer.{i}");
                Ok(Layer {
                    query: affine(&format!("{p}.attention.self.query"), h, Some(h))?,
                    key: affine(&format!("{p}.attention.self.key"), h, Some(h))?,
                    value: affine(&format!("{p}.attention.self.value"), h, Some(h))?,
                    attention_out: affine(&format!("{p}.attention.output.dense"), h, Some(h))?,
                    attention_norm: affine(&format!("{p}.attention.output.LayerNorm"), h, None)?,
                    intermediate: affine(
                        &format!("{p}.intermediate.dense"),
                        config.intermediate_size,
                        Some(h),
                    )?,
                    output: affine(
                        &format!("{p}.output.dense"),
                        h,
                        Some(config.intermediate_size),
                    )?,
                    output_norm: affine(&format!("{p}.output.LayerNorm"), h, None)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tokenizer_path = folder.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", tokenizer_path.display()))?;
        if tokenizer.get_vocab_size(true) > v {
            bail!(
                "{}: the tokenizer has {} tokens but the model embeds {v}: LLMLingua-2 adds [NEW0]..[NEW99] to both (see the README's LLMLingua-2 section to prepare a folder)",
                folder.display(),
                tokenizer.get_vocab_size(true)
            );
        }
        let word = tensor("roberta.embeddings.word_embeddings.weight", &[v, h])?;
        let position = tensor(
            "roberta.embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = weights
            .load(
                "roberta.embeddings.token_type_embeddings.weight",
                &Device::Cpu,
            )
            .with_context(|| format!("{}: token type embeddings", weights_path.display()))?
            .to_dtype(DType::F32)?
            .get(0)?;
        Ok(Self {
            word,
            position,
            token_type,
            embedding_norm: affine("roberta.embeddings.LayerNorm", h, None)?,
            layers,
            classifier: affine("classifier", 2, Some(h))?,
            heads: config.num_attention_heads,
            pad: config.pad_token_id,
            eps: config.layer_norm_eps,
            tokenizer,
            max_tokens: config
                .max_position_embeddings
                .saturating_sub(config.pad_token_id + 1),
            folder: folder.to_path_buf(),
        })
    }

    fn norm(&self, x: &Tensor, n: &Affine) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &n.weight,
            &n.bias,
            self.eps as f32,
        )?)
    }

    /// Each token's probability of label 1 ("keep") for one unpadded sequence of ids.
    pub fn keep_probabilities(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > self.max_tokens {
            bail!(
                "{} tokens are more than the classifier in {} reads at once ({})",
                n,
                self.folder.display(),
                self.max_tokens
            );
        }
        let cpu = Device::Cpu;
        let positions: Vec<u32> = (0..n).map(|i| (self.pad + 1 + i) as u32).collect();
        let x = self
            .word
            .index_select(&Tensor::new(ids, &cpu)?, 0)?
            .add(
                &self
                    .position
                    .index_select(&Tensor::new(positions, &cpu)?, 0)?,
            )?
            .broadcast_add(&self.token_type)?;
        let mut x = self.norm(&x, &self.embedding_norm)?;
        let width = x.dim(1)?;
        let d = width / self.heads;
        let scale = 1.0 / (d as f64).sqrt();
        let heads_first = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((n, self.heads, d))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        for layer in &self.layers {
            let q = heads_first(layer.query.apply(&x)?)?;
            let k = heads_first(layer.key.apply(&x)?)?;
            let v = heads_first(layer.value.apply(&x)?)?;
            let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * scale)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = p
                .matmul(&v)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((n, width))?;
            let attended = self.norm(
                &layer.attention_out.apply(&context)?.add(&x)?,
                &layer.attention_norm,
            )?;
            let inner = layer.intermediate.apply(&attended)?.gelu_erf()?;
            x = self.norm(
                &layer.output.apply(&inner)?.add(&attended)?,
                &layer.output_norm,
            )?;
        }
        let logits = self.classifier.apply(&x)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        Ok(probs.narrow(D::Minus1, 1, 1)?.flatten_all()?.to_vec1()?)
    }
}
