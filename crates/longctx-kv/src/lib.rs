//! KV-cache policies and the attention math they own.
//!
//! A transformer layer hands a [`KvCache`] the projected queries, keys and values of a
//! chunk (before RoPE) and receives the attention output. Owning attention lets each
//! policy decide what it stores, in what precision and what a query may see, without the
//! model knowing which policy runs. This crate knows nothing of tokens-as-text or tasks.

mod attention;
mod cache;
mod error;
mod flexgen;
mod full;
mod rope;

pub use attention::{causal_attention, ATTENTION_QUERY_BLOCK};
pub use cache::{KvCache, KvShape};
pub use error::{KvError, Result};
pub use flexgen::{FlexGenCache, FlexGenSettings, PackedRows};
pub use full::FullCache;
pub use rope::{RopeScaling, RopeSettings, RopeStyle, RopeTable};
