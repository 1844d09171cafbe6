use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use std::collections::BTreeMap;

use longctx_tasks::longbench::{averages, category_score, Category, OnBadLine};
use longctx_tasks::predictions::score_directory;

/// `longctx score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// A directory of LongBench prediction files (`<dataset>.jsonl` with pred, answers, all_classes, length).
    dir: PathBuf,
    /// Print each sample's score as a JSON line instead of the table.
    #[arg(long)]
    per_sample: bool,
    /// LongBench-E: scores per length bucket (0-4k, 4-8k, 8k+ words).
    #[arg(long)]
    e: bool,
    /// Skip malformed lines (each is reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let on_bad = if args.skip_bad_lines {
        OnBadLine::Skip
    } else {
        OnBadLine::Fail
    };
    let results = score_directory(&args.dir, on_bad)?;
    for r in &results {
        for skipped in &r.skipped {
            tracing::warn!("skipped {skipped}");
        }
    }
    if args.per_sample {
        for r in &results {
            for (i, (score, length)) in r.sample_scores.iter().zip(&r.lengths).enumerate() {
                println!(
                    "{}",
                    serde_json::json!({"dataset": r.file_stem, "index": i, "length": length, "score": score})
                );
            }
        }
    } else if args.e {
        println!("| dataset | 0-4k | 4-8k | 8k+ |");
        println!("|---|--:|--:|--:|");
        for r in &results {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} |",
                r.file_stem, r.buckets["0-4k"], r.buckets["4-8k"], r.buckets["8k+"]
            );
        }
    } else {
        println!("| dataset | metric | samples | score |");
        println!("|---|---|--:|--:|");
        for r in &results {
            println!(
                "| {} | {} | {} | {:.2} |",
                r.file_stem,
                r.dataset.metric.name(),
                r.sample_scores.len(),
                r.score
            );
        }
        // A dataset's score for the averages comes from `<name>.jsonl`; a LongBench-E file
        // `<name>_e.jsonl` counts only where the plain file is absent.
        let mut scores: BTreeMap<&str, f64> = BTreeMap::new();
        for r in results.iter().filter(|r| r.file_stem != r.dataset.name) {
            scores.insert(r.dataset.name, r.score);
        }
        for r in results.iter().filter(|r| r.file_stem == r.dataset.name) {
            scores.insert(r.dataset.name, r.score);
        }
        let shown =
            |v: Option<f64>| v.map_or("n/a (datasets missing)".to_string(), |x| format!("{x:.2}"));
        println!();
        for category in Category::ALL {
            println!(
                "{}: {}",
                category.title(),
                shown(category_score(&scores, category))
            );
        }
        let (paper, longbench) = averages(&scores);
        println!(
            "Paper average (15 datasets, passage_count left out): {}",
            shown(paper)
        );
        println!(
            "LongBench average (mean of the 6 categories): {}",
            shown(longbench)
        );
    }
    Ok(())
}
