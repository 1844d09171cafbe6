//! One entry point that turns `--model PATH` into a runnable model, its tokenizer and its
//! chat template, whether PATH is a GGUF file, a Hugging Face directory or a cached hub id.

use std::path::{Path, PathBuf};

use crate::gguf::GgufFile;
use crate::{
    mamba, mamba2, recurrent_gemma, rwkv, ChatTemplate, LanguageModel, LlamaModel, LoadOptions,
    ModelError, Result, TextTokenizer,
};

/// Reads one architecture's Hugging Face folder.
type HfLoader = fn(&Path, &LoadOptions) -> Result<Box<dyn LanguageModel>>;

/// The Hugging Face `model_type`s with a network of their own (linear-time and hybrid
/// architectures, run under `recurrent::Recurrent`); every other type loads as a decoder of
/// [`LlamaModel`]'s layout. A new architecture is its module plus one row here.
const OWN_NETWORKS: &[(&str, HfLoader)] = &[
    ("mamba", mamba::load),
    ("mamba2", mamba2::load),
    ("recurrent_gemma", recurrent_gemma::load),
];

/// Reads one architecture's GGUF file.
type GgufLoader = fn(GgufFile, &LoadOptions) -> Result<Box<dyn LanguageModel>>;

/// The GGUF `general.architecture`s with a network of their own; every other one loads as a
/// decoder of [`LlamaModel`]'s layout (or is refused by its architecture table).
const OWN_GGUF_NETWORKS: &[(&str, GgufLoader)] = &[
    ("mamba", mamba::load_gguf),
    ("mamba2", mamba2::load_gguf),
    ("rwkv6", rwkv::load_gguf),
    ("rwkv7", rwkv::load_gguf),
];

/// A model ready to run, with what is needed to talk to it.
pub struct LoadedModel {
    /// The network and its sequence state, whatever its architecture (chosen from the file's
    /// metadata: a network of its own for the recurrent and hybrid folders `load` lists, otherwise a decoder of
    /// [`LlamaModel`]'s layout per [`crate::config::Architecture`]'s table).
    pub model: Box<dyn LanguageModel>,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template, when the weights ship one.
    pub chat: Option<ChatTemplate>,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// Marks where a prompt splits while the chat template renders it: a private-use character
/// no template rewrites (a prompt that holds it is refused).
const SPLIT_MARK: char = '\u{E000}';

impl LoadedModel {
    /// Token ids of a prompt, wrapped in the chat template when `chat` is set.
    pub fn prompt_tokens(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.rendered(text, chat)?, true)
    }

    /// Token ids of a prompt in two parts, the context `text[..at]` and the question
    /// `text[at..]`, each tokenized on its own (as kvpress tokenizes context and question),
    /// inside the chat template when `chat` is set. Returns the ids and how many belong to
    /// the context part (the template's opening included).
    pub fn prompt_tokens_split(
        &self,
        text: &str,
        at: usize,
        chat: bool,
    ) -> Result<(Vec<u32>, usize)> {
        if text.contains(SPLIT_MARK) || !text.is_char_boundary(at) {
            return Err(ModelError::Tokenizer(format!(
                "cannot split this prompt at byte {at} (inside a character, or the prompt holds U+E000)"
            )));
        }
        let marked = format!("{}{SPLIT_MARK}{}", &text[..at], &text[at..]);
        let rendered = self.rendered(&marked, chat)?;
        let Some((context, question)) = rendered.split_once(SPLIT_MARK) else {
            return Err(ModelError::ChatTemplate(
                "the chat template dropped the point where the question begins".into(),
            ));
        };
        let mut ids = self.tokenizer.encode(context, true)?;
        let context_tokens = ids.len();
        ids.extend(self.tokenizer.encode(question, false)?);
        Ok((ids, context_tokens))
    }

    /// The text the model reads: the prompt, inside the chat template when `chat` is set.
    fn rendered(&self, text: &str, chat: bool) -> Result<String> {
        match (&self.chat, chat) {
            (Some(template), true) => template.user_prompt(text),
            (None, true) => Err(ModelError::ChatTemplate(format!(
                "{} ships no chat template; run with --no-chat",
                self.source.display()
            ))),
            (_, false) => Ok(text.to_string()),
        }
    }
}

/// Find the files behind `spec`: an existing path, or an `org/name` id in the local
/// Hugging Face cache (`$HF_HOME/hub` or `~/.cache/huggingface/hub`).
pub fn resolve_model_path(spec: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(spec);
    if direct.exists() {
        return Ok(direct);
    }
    let hub = std::env::var_os("HF_HOME")
        .map(|h| PathBuf::from(h).join("hub"))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        });
    if let (Some(hub), Some((org, name))) = (hub, spec.split_once('/')) {
        let snapshots = hub.join(format!("models--{org}--{name}")).join("snapshots");
        if let Ok(entries) = std::fs::read_dir(&snapshots) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").exists())
                .collect();
            dirs.sort();
            if let Some(dir) = dirs.pop() {
                return Ok(dir);
            }
        }
    }
    Err(ModelError::Io {
        path: direct,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or directory, and no such model id in the local Hugging Face cache; pass a GGUF file or a directory with config.json",
        ),
    })
}

fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Load a model from a GGUF file or a Hugging Face directory.
pub fn load_model(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    if path.is_dir() {
        if !path.join("config.json").exists() {
            return Err(ModelError::BadCheckpoint {
                path: path.into(),
                reason: "a model directory needs config.json, *.safetensors and tokenizer.json"
                    .into(),
            });
        }
        let config = crate::config::read_hf_json(&path.join("config.json"))?;
        let model_type = config.get("model_type").and_then(|t| t.as_str());
        let own = OWN_NETWORKS
            .iter()
            .find(|(name, _)| model_type == Some(*name));
        let model: Box<dyn LanguageModel> = match own {
            Some((_, load)) => load(path, options)?,
            None => Box::new(LlamaModel::from_hf_dir(path, options)?),
        };
        let tokenizer = TextTokenizer::from_hf_dir(path)?;
        let config: serde_json::Value = std::fs::read_to_string(path.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let chat = config
            .get("chat_template")
            .and_then(|t| t.as_str())
            .map(|src| template(src, &tokenizer));
        return Ok(LoadedModel {
            model,
            tokenizer,
            chat,
            source: path.into(),
        });
    }
    if !is_gguf(path) {
        return Err(ModelError::BadGguf {
            path: path.into(),
            reason: "--model must be a GGUF file or a Hugging Face model directory".into(),
        });
    }
    let gguf = GgufFile::open(path)?;
    let own = OWN_GGUF_NETWORKS
        .iter()
        .find(|(name, _)| gguf.get_str("general.architecture").ok() == Some(*name));
    // The architecture is checked before anything else, so an unsupported model says so first.
    if own.is_none() {
        crate::config::LlamaConfig::from_gguf(&gguf)?;
    }
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let chat = gguf
        .get_str("tokenizer.chat_template")
        .ok()
        .map(|src| template(src, &tokenizer));
    let model = match own {
        Some((_, load)) => load(gguf, options)?,
        None => Box::new(LlamaModel::from_gguf(gguf, options)?),
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        chat,
        source: path.into(),
    })
}

fn template(src: &str, tokenizer: &TextTokenizer) -> ChatTemplate {
    let name = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    ChatTemplate::new(
        src.to_string(),
        name(tokenizer.bos_token()),
        name(tokenizer.stop_tokens().first().copied()),
    )
}
