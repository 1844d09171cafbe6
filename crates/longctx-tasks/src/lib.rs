//! Long-context tasks and their official metrics. Text only: this crate never depends on a
//! tensor library, so metrics and prompts can be checked (and reused) without a model.

mod fit;
pub mod infinitebench;
pub mod longbench;
pub mod metrics;
pub mod needle;
pub mod passkeys;
pub mod predictions;
pub mod prompt;
mod rng;
pub mod ruler;
pub mod synthetic;

/// The version of every metric and answer post-processing rule in this crate: stored with
/// each result, so that a row scored by older rules is never reused as if current. Bump it
/// whenever a score could change for the same prediction.
pub const SCORING_VERSION: u32 = 1;
