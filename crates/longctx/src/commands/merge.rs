use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::store::Store;

/// `longctx merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The database to merge into (created if absent).
    out: PathBuf,
    /// Shard databases of one plan.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run(args: MergeArgs) -> Result<()> {
    // Inputs are only read: a mistyped or empty file is refused, never turned into a store.
    let mut inputs = Vec::new();
    for path in &args.inputs {
        inputs.push(Store::open_read_only(path)?);
    }
    // Shards of one plan carry the same fingerprint; anything else is a different experiment.
    let first = inputs[0].plans()?;
    for store in &inputs[1..] {
        let plans = store.plans()?;
        if plans != first {
            anyhow::bail!(
                "{} holds plan(s) {:?} but {} holds {:?}: these are shards of different plans; nothing was merged",
                inputs[0].path().display(),
                first,
                store.path().display(),
                plans
            );
        }
    }
    let mut out = Store::open(&args.out)?;
    let held = out.plans()?;
    if !held.is_empty() && held != first {
        let message = format!(
            "{} already holds plan(s) {:?} but the inputs hold {:?}: merge into another output; nothing was merged",
            args.out.display(),
            held,
            first
        );
        anyhow::bail!(message);
    }
    let (added, same) = match out.merge_from(&inputs) {
        Ok(counts) => counts,
        Err(e) => {
            out.discard_if_unused();
            return Err(e.into());
        }
    };
    println!(
        "merged {} databases into {}: {added} rows added, {same} already there",
        inputs.len(),
        args.out.display()
    );
    Ok(())
}
