use std::path::PathBuf;

/// Errors raised while loading or running a model. Each names the input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A GGUF file is truncated, corrupt or not GGUF at all.
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    /// A safetensors file or config.json is malformed or inconsistent.
    #[error("{path}: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    /// The model's architecture or tokenizer is not one this crate implements.
    #[error("{what} is not supported: {hint}")]
    Unsupported { what: String, hint: String },
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The input does not fit the model's context.
    #[error("the input needs {needed} tokens but the model's context is {limit}; shorten the input, or extend the context explicitly (e.g. --rope-theta with --context)")]
    ContextTooLong { needed: usize, limit: usize },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The KV cache refused an operation.
    #[error(transparent)]
    Kv(#[from] longctx_kv::KvError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
