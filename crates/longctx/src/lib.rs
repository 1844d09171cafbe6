//! The workbench that binds models, KV-cache methods and tasks: fetching default assets,
//! the command line, and (in later modules) the runner, store and report.

pub mod assets;
pub mod commands;
pub mod compress;
pub mod experiment;
pub mod figures;
pub mod head_patterns;
pub mod html;
pub mod memory;
pub mod methods;
pub mod stats;
pub mod store;
pub mod tokenize;
