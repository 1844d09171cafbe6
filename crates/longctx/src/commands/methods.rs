use anyhow::Result;

use crate::methods::{Method, PRESETS};

/// `longctx methods`: every preset with its school, nominal ratio and spec.
pub fn run() -> Result<()> {
    println!("| method | school | nominal ratio (vs 16-bit) | settings |");
    println!("|---|---|--:|---|");
    for p in PRESETS {
        let method = Method::parse(p.name)?;
        println!(
            "| {} | {} | {:.2}x | `{}` |",
            p.name,
            p.school,
            method.nominal_ratio(),
            p.spec
        );
    }
    println!("\nSpecs take explicit settings too, e.g. `flexgen:bits=8,group=64` (bits 2|4|8; group must divide the head dimension).");
    Ok(())
}
