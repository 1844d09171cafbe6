//! `longctx calibrate-duo`: DuoAttention's head pattern of a model, calibrated (or read
//! from the cache directory) and printed with the heads a method streams.

use anyhow::Result;
use clap::Args;

use super::{MethodArg, ModelArgs};
use crate::head_patterns::{self, CALIBRATION};

/// Options of `longctx calibrate-duo`.
#[derive(Args)]
pub struct CalibrateDuoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A duo-attention method: its sinks and window define the pattern, its ratio which
    /// heads stream in the table.
    #[arg(long, default_value = "duo-attention-4x")]
    method: String,
}

/// Calibrate (once per model and settings) and print the pattern.
pub fn run(args: CalibrateDuoArgs) -> Result<()> {
    let method = MethodArg {
        method: args.method.clone(),
    }
    .parse()?;
    let Some(duo) = method.head_pattern_settings() else {
        anyhow::bail!(
            "method \"{method}\" reads no head pattern: give a duo-attention method (duo-attention-4x)"
        );
    };
    let mut loaded = args.model.load_bare()?;
    let path = head_patterns::pattern_path(&loaded.source, duo, &CALIBRATION)?;
    let pattern = head_patterns::head_pattern(&mut loaded, duo)?;
    let kept = method.nominal_ratio().map_or(1.0, |r| 1.0 / r);
    let streaming = pattern.streaming(1.0 - kept);
    println!("head pattern: {}", path.display());
    println!(
        "each head's mean relative output distance when it reads only {} sinks and {} recent tokens, on the answers of {} passkey prompts; * marks the {:.0}% that {method} streams",
        duo.sinks,
        duo.recent,
        CALIBRATION.prompts,
        100.0 * (1.0 - kept)
    );
    let heads: Vec<String> = (0..pattern.kv_heads())
        .map(|h| format!("head {h}"))
        .collect();
    println!("\n| layer | {} |", heads.join(" | "));
    println!("|--:|{}", "--:|".repeat(pattern.kv_heads()));
    for (layer, streams) in streaming.iter().enumerate() {
        let cells: Vec<String> = streams
            .iter()
            .enumerate()
            .map(|(h, &s)| format!("{:.4}{}", pattern.score(layer, h), if s { "*" } else { "" }))
            .collect();
        println!("| {layer} | {} |", cells.join(" | "));
    }
    Ok(())
}
