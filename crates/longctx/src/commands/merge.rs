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
    let mut inputs = Vec::new();
    for path in &args.inputs {
        if !path.exists() {
            anyhow::bail!("merge input {} does not exist", path.display());
        }
        inputs.push(Store::open(path)?);
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
    let (mut added, mut same) = (0, 0);
    for store in &inputs {
        let (a, s) = out.merge_from(store)?;
        added += a;
        same += s;
    }
    println!(
        "merged {} databases into {}: {added} rows added, {same} already there",
        inputs.len(),
        args.out.display()
    );
    Ok(())
}
