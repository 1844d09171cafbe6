use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use longctx_tasks::longbench::{self, Dataset, OnBadLine};
use serde_json::json;

use super::slug;
use crate::store::Store;

/// Layouts `export` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// LongBench's: `pred/<dataset>.jsonl` (pred, answers, all_classes, length) and
    /// `result.json`, one directory per model and method.
    Longbench,
}

/// `longctx export`.
#[derive(Args)]
pub struct ExportArgs {
    /// The layout to write.
    #[arg(long, value_enum)]
    format: Format,
    /// The results database.
    #[arg(long, default_value = "results/longctx.db")]
    db: PathBuf,
    /// LongBench's data directory (the references come from the data files).
    #[arg(long)]
    longbench_dir: PathBuf,
    /// Where to write.
    #[arg(long, default_value = "export")]
    out: PathBuf,
}

/// Dataset → sample id → prediction, for one model and method.
type PredictionsByDataset<'a> = BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>;

pub fn run(args: ExportArgs) -> Result<()> {
    let Format::Longbench = args.format;
    if !args.db.exists() {
        anyhow::bail!("no results database at {}", args.db.display());
    }
    let rows = Store::open(&args.db)?.rows()?;
    let mut runs: BTreeMap<(&str, &str), PredictionsByDataset> = BTreeMap::new();
    for r in &rows {
        if let Some(dataset) = r.task.strip_prefix("longbench/") {
            runs.entry((&r.model, &r.method))
                .or_default()
                .entry(dataset)
                .or_default()
                .insert(&r.sample, &r.prediction);
        }
    }
    if runs.is_empty() {
        anyhow::bail!("{} holds no LongBench rows to export", args.db.display());
    }
    for ((model, method), datasets) in &runs {
        let dir = args.out.join(slug(model)).join(slug(method));
        std::fs::create_dir_all(dir.join("pred"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut result = BTreeMap::new();
        for (name, predictions) in datasets {
            let dataset = Dataset::by_name(name)?;
            let loaded = longbench::load(&args.longbench_dir, name, OnBadLine::Fail)?;
            let mut lines = String::new();
            let mut scores = Vec::new();
            for (i, sample) in loaded.samples.iter().enumerate() {
                let id = if sample.id.is_empty() {
                    format!("line={}", i + 1)
                } else {
                    sample.id.clone()
                };
                let Some(pred) = predictions.get(id.as_str()) else {
                    continue;
                };
                scores.push(dataset.score(pred, &sample.answers, &sample.all_classes));
                lines += &json!({
                    "pred": pred,
                    "answers": sample.answers,
                    "all_classes": sample.all_classes,
                    "length": sample.length,
                })
                .to_string();
                lines.push('\n');
            }
            if scores.len() != predictions.len() {
                anyhow::bail!(
                    "{} has {} {name} predictions but only {} match samples in {}: is it the data the run used?",
                    args.db.display(),
                    predictions.len(),
                    scores.len(),
                    args.longbench_dir.display()
                );
            }
            let path = dir.join("pred").join(format!("{name}.jsonl"));
            std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
            result.insert(name.to_string(), longbench::dataset_score(&scores));
        }
        let path = dir.join("result.json");
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", dir.display());
    }
    Ok(())
}
