//! KV-cache policies and the attention math they own.
//!
//! A transformer layer hands a [`KvCache`] the projected queries, keys and values of a
//! chunk (before RoPE) and receives the attention output. Owning attention lets each
//! policy decide what it stores, in what precision and what a query may see, without the
//! model knowing which policy runs. This crate knows nothing of tokens-as-text or tasks.

mod attention;
mod cache;
mod drop_then_quantize;
mod dropping;
mod duo;
mod error;
mod expected_attention;
mod full;
mod grouped;
mod halves;
mod infllm;
mod key_scorers;
mod kivi;
mod kvzip;
mod query_heads;
mod quest;
mod rope;
mod row_cache;
mod row_formats;
mod rows;
#[cfg(test)]
mod testutil;
mod tiled;
mod window;

pub use attention::{causal_attention, causal_attention_with_weights};
pub use cache::{
    CacheNumerics, DecodeActivations, DecodeReads, KvCache, KvPrecision, KvShape, Reservation,
    DECODE_RESERVE,
};
pub use drop_then_quantize::DropThenQuantize;
pub use dropping::{
    Budget, DecodingBudget, DropPolicy, DropSettings, DroppingCache, Heads, Pool, Schedule,
    Selection, Sinks,
};
pub use duo::{DuoAttention, DuoCalibration, DuoTally, HeadPattern};
pub use error::{KvError, Result};
pub use expected_attention::ExpectedAttention;
pub use full::FullCache;
pub use grouped::{GroupedCache, LayerGroup};
pub use halves::f16_bits_to_f32;
pub use infllm::{InfLlmCache, InfLlmRemainder, InfLlmSettings, InfLlmSplit};
pub use key_scorers::KeyScorer;
pub use kivi::{KiviCache, KiviSettings};
pub use kvzip::KvZip;
pub use quest::{QuestCache, QuestSettings};
pub use rope::{RopeScaling, RopeSettings, RopeStyle, RopeTable, MAX_STREAM_POSITIONS};
pub use row_cache::{FlexGenSettings, QuantizedPrefill, RowQuantCache, RowQuantSettings};
pub use row_formats::{hadamard, rotation_blocks, GgmlType, QuantRows, RowFormat};
pub use window::{windowed_attention, Memory, Windowed};

/// The version of the caches' arithmetic, recorded with stored results so that a result is
/// not reused once a policy computes differently under the same settings. 2: KIVI decodes
/// by byte dot products when decoding's activations are int8.
pub const KV_ARITHMETIC_VERSION: u32 = 2;
