//! Text ↔ token ids, built from GGUF metadata or a Hugging Face `tokenizer.json`.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::GgufFile;
use crate::rwkv_vocab::RwkvVocab;
use crate::sentencepiece::SentencePiece;
use crate::{ModelError, Result};

/// A model's tokenizer with the ids that matter for generation.
pub struct TextTokenizer {
    inner: Backend,
    bos: Option<u32>,
    add_bos: bool,
    stop_tokens: Vec<u32>,
}

/// What turns text into ids: a Hugging Face tokenizer (BPE vocabularies, tokenizer.json), a
/// SentencePiece vocabulary tokenized as llama.cpp does, or RWKV's world vocabulary.
enum Backend {
    Hf(Box<Tokenizer>),
    SentencePiece(Box<SentencePiece>),
    Rwkv(Box<RwkvVocab>),
}

impl Backend {
    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Backend::Hf(t) => t.token_to_id(token),
            Backend::SentencePiece(v) => v.id(token),
            Backend::Rwkv(v) => v.id(token),
        }
    }
}

/// Llama-3's pre-tokenizer regex ("llama-bpe" in GGUF).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex: Llama-3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn split(pattern: &str) -> Result<PreTokenizerWrapper> {
    let pattern = SplitPattern::Regex(pattern.to_string());
    Ok(Split::new(pattern, SplitDelimiterBehavior::Isolated, false)
        .map_err(tok_err)?
        .into())
}

impl TextTokenizer {
    /// Build the tokenizer that GGUF metadata describes: byte-level BPE
    /// (`tokenizer.ggml.model = gpt2`), RWKV's world vocabulary (`rwkv`), or Gemma's
    /// SentencePiece vocabulary (`llama` in a Gemma file), tokenized as llama.cpp does.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        let architecture = g.get_str("general.architecture").unwrap_or("");
        let tokens = g.get_strings("tokenizer.ggml.tokens")?;
        let types = g.get_ints("tokenizer.ggml.token_type").unwrap_or_default();
        let inner = match model {
            "gpt2" => {
                let mut bpe = Self::byte_level_bpe(g, &tokens)?;
                // Control (3) and user-defined (4) tokens are matched whole in text, as
                // llama.cpp does with parse_special.
                let specials: Vec<AddedToken> = tokens
                    .iter()
                    .zip(types.iter())
                    .filter(|(_, &t)| t == 3 || t == 4)
                    .map(|(s, _)| AddedToken::from(s.to_string(), true))
                    .collect();
                bpe.add_special_tokens(specials).map_err(tok_err)?;
                Backend::Hf(Box::new(bpe))
            }
            "llama" if architecture.starts_with("gemma") => {
                let scores = g.get_floats("tokenizer.ggml.scores")?;
                if scores.len() != tokens.len() || types.len() != tokens.len() {
                    return Err(ModelError::BadGguf {
                        path: g.path().to_path_buf(),
                        reason: format!(
                            "{} tokenizer scores and {} token types for {} tokens",
                            scores.len(),
                            types.len(),
                            tokens.len()
                        ),
                    });
                }
                Backend::SentencePiece(Box::new(SentencePiece::new(
                    tokens.iter().map(|t| t.to_string()).collect(),
                    scores.iter().map(|&x| x as f32).collect(),
                    types,
                )))
            }
            "rwkv" => Backend::Rwkv(Box::new(RwkvVocab::new(&tokens, &types))),
            other => {
                return Err(ModelError::Unsupported {
                    what: format!(
                        "GGUF tokenizer model \"{other}\" of architecture \"{architecture}\" in {}",
                        g.path().display()
                    ),
                    hint: "byte-level BPE (gpt2), RWKV's world vocabulary (rwkv) and Gemma's SentencePiece vocabularies are read from GGUF; for other SentencePiece models pass the Hugging Face directory with tokenizer.json".into(),
                })
            }
        };
        let id = |k: &str| g.get_usize(k).ok().map(|v| v as u32);
        let mut stop_tokens: Vec<u32> = id("tokenizer.ggml.eos_token_id")
            .into_iter()
            .chain(id("tokenizer.ggml.eot_token_id"))
            .collect();
        for name in [
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<end_of_turn>",
        ] {
            if let Some(i) = inner.token_to_id(name) {
                stop_tokens.push(i);
            }
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        let add_bos = matches!(
            g.metadata.get("tokenizer.ggml.add_bos_token"),
            Some(crate::gguf::MetaValue::Bool(true))
        );
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            add_bos,
            stop_tokens,
        })
    }

    /// GPT-2-style byte-level BPE from the vocabulary, merges and pre-tokenizer name.
    fn byte_level_bpe(g: &GgufFile, tokens: &[&str]) -> Result<Tokenizer> {
        let merges = g.get_strings("tokenizer.ggml.merges")?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("merge \"{m}\" has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let byte_level =
            |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
        let pre_tokenizer = match pre {
            "default" | "gpt2" | "gpt-2" => Sequence::new(vec![byte_level(true)]),
            "smollm" | "starcoder" | "refact" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]),
            "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]),
            "qwen2" => Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)]),
            other => {
                return Err(ModelError::Unsupported {
                    what: format!("GGUF pre-tokenizer \"{other}\""),
                    hint: "gpt2, smollm, llama-bpe and qwen2 are implemented; pass the Hugging Face directory instead".into(),
                })
            }
        };
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        Ok(inner)
    }

    /// Load `tokenizer.json`; BOS and stop tokens come from the directory's tokenizer_config.json
    /// and generation_config.json when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path).map_err(|e| ModelError::BadCheckpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let read_json = |name: &str| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
        };
        let token_field = |v: &serde_json::Value, k: &str| -> Option<String> {
            match v.get(k)? {
                serde_json::Value::String(s) => Some(s.clone()),
                obj => obj.get("content")?.as_str().map(str::to_string),
            }
        };
        let config = read_json("tokenizer_config.json").unwrap_or_default();
        let bos = token_field(&config, "bos_token").and_then(|t| inner.token_to_id(&t));
        let mut stop_tokens: Vec<u32> = token_field(&config, "eos_token")
            .and_then(|t| inner.token_to_id(&t))
            .into_iter()
            .collect();
        if let Some(generation) = read_json("generation_config.json") {
            match generation.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => {
                    stop_tokens.extend(n.as_u64().map(|v| v as u32))
                }
                Some(serde_json::Value::Array(a)) => {
                    stop_tokens.extend(a.iter().filter_map(|n| n.as_u64().map(|v| v as u32)))
                }
                _ => {}
            }
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        // tokenizer.json's post-processor adds BOS itself when the model wants it.
        Ok(Self {
            inner: Backend::Hf(Box::new(inner)),
            bos,
            add_bos: false,
            stop_tokens,
        })
    }

    /// Token ids of `text`; `at_start` adds what the model expects at a sequence's start (BOS).
    /// Special tokens written in the text (e.g. by a chat template) map to their ids.
    pub fn encode(&self, text: &str, at_start: bool) -> Result<Vec<u32>> {
        let mut ids = match &self.inner {
            Backend::Hf(t) => t
                .encode(text, at_start)
                .map_err(tok_err)?
                .get_ids()
                .to_vec(),
            Backend::SentencePiece(v) => v.encode(text),
            Backend::Rwkv(v) => v.encode(text),
        };
        if at_start && self.add_bos {
            if let Some(b) = self.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Text of `ids`; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.inner {
            Backend::Hf(t) => t.decode(ids, skip_special).map_err(tok_err),
            Backend::SentencePiece(v) => Ok(v.decode(ids, skip_special)),
            Backend::Rwkv(v) => Ok(v.decode(ids, skip_special)),
        }
    }

    /// Ids that end generation (end-of-sequence, end-of-turn).
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_token(&self) -> Option<u32> {
        self.bos
    }

    /// The token string of an id (for templates that name BOS/EOS).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::SentencePiece(v) => v.piece(id).map(str::to_string),
            Backend::Rwkv(v) => v.piece(id),
        }
    }
}
