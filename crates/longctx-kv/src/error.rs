/// Errors raised by cache policies and attention.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A tensor operation failed (shape mismatch, allocation).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A position lies beyond the RoPE table, i.e. beyond the context the model was set up for.
    #[error("position {position} is beyond the model's context of {limit} tokens; shorten the input or raise the context limit (e.g. with a RoPE base override)")]
    ContextExceeded { position: usize, limit: usize },
    /// A policy setting does not fit the model (e.g. a group not dividing the head dimension).
    #[error("invalid setting: {0}")]
    Setting(String),
    /// The caller broke the cache's calling contract (wrong layer, wrong shapes).
    #[error("invalid cache use: {0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, KvError>;
