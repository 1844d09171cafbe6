//! Long-context tasks and their official metrics. Text only: this crate never depends on a
//! tensor library, so metrics and prompts can be checked (and reused) without a model.

pub mod longbench;
pub mod metrics;
pub mod needle;
pub mod predictions;
mod rng;
pub mod synthetic;
