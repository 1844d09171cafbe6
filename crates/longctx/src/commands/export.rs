use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use longctx_tasks::longbench::{self, Dataset, OnBadLine};
use serde_json::json;

use super::run::longbench_key;
use super::slug;
use crate::store::Store;

/// Layouts `export` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// LongBench's: `pred/<dataset>.jsonl` (pred, answers, all_classes, length) and
    /// `result.json`, one directory per model and method; LongBench-E rows go to
    /// `pred_e/` and `result_e.json` (scores per length bucket).
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

/// Data file (`qasper`, `qasper_e`) → sample id → prediction, for one model and method.
type PredictionsByFile<'a> = BTreeMap<String, BTreeMap<&'a str, &'a str>>;

pub fn run(args: ExportArgs) -> Result<()> {
    let Format::Longbench = args.format;
    if !args.db.exists() {
        anyhow::bail!("no results database at {}", args.db.display());
    }
    let rows = super::report::as_shown(&Store::open_read_only(&args.db)?.rows()?);
    let mut runs: BTreeMap<(&str, &str), PredictionsByFile> = BTreeMap::new();
    for r in &rows {
        let file = match (
            r.key.task.strip_prefix("longbench/"),
            r.key.task.strip_prefix("longbench-e/"),
        ) {
            (Some(name), _) => name.to_string(),
            (_, Some(name)) => format!("{name}_e"),
            _ => continue,
        };
        runs.entry((&r.key.model, &r.key.method))
            .or_default()
            .entry(file)
            .or_default()
            .insert(&r.key.sample, &r.prediction);
    }
    if runs.is_empty() {
        anyhow::bail!("{} holds no LongBench rows to export", args.db.display());
    }
    for ((model, method), files) in &runs {
        let dir = args.out.join(slug(model)).join(slug(method));
        // LongBench's scores per dataset, and LongBench-E's per dataset and length bucket.
        let mut result = BTreeMap::new();
        let mut result_e = BTreeMap::new();
        for (file, predictions) in files {
            let is_e = file.ends_with("_e");
            let dataset = Dataset::by_name(file)?;
            let loaded = longbench::load(&args.longbench_dir, file, OnBadLine::Fail)?;
            let mut lines = String::new();
            let mut scored = Vec::new();
            for (i, sample) in loaded.samples.iter().enumerate() {
                let (_, id) = longbench_key(file, i + 1, sample);
                let Some(pred) = predictions.get(id.as_str()) else {
                    continue;
                };
                let score = dataset.score(pred, &sample.answers, &sample.all_classes);
                scored.push((score, sample.length));
                lines += &json!({
                    "pred": pred,
                    "answers": sample.answers,
                    "all_classes": sample.all_classes,
                    "length": sample.length,
                })
                .to_string();
                lines.push('\n');
            }
            if scored.len() != predictions.len() {
                anyhow::bail!(
                    "{} has {} {file} predictions but only {} match samples in {}: is it the data the run used?",
                    args.db.display(),
                    predictions.len(),
                    scored.len(),
                    args.longbench_dir.display()
                );
            }
            let pred_dir = dir.join(if is_e { "pred_e" } else { "pred" });
            std::fs::create_dir_all(&pred_dir)
                .with_context(|| format!("creating {}", pred_dir.display()))?;
            let path = pred_dir.join(format!("{}.jsonl", dataset.name));
            std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
            if is_e {
                result_e.insert(dataset.name, longbench::bucket_scores(&scored));
            } else {
                let scores: Vec<f64> = scored.iter().map(|(score, _)| *score).collect();
                result.insert(dataset.name, longbench::dataset_score(&scores));
            }
        }
        for (name, value) in [
            ("result.json", serde_json::to_value(&result)?),
            ("result_e.json", serde_json::to_value(&result_e)?),
        ] {
            if value.as_object().is_some_and(|o| !o.is_empty()) {
                let path = dir.join(name);
                std::fs::write(&path, serde_json::to_string_pretty(&value)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        println!("{}", dir.display());
    }
    Ok(())
}
