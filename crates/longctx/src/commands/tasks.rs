use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use longctx_tasks::infinitebench::InfiniteTask;
use longctx_tasks::longbench::{load, OnBadLine, DATASETS};
use longctx_tasks::needle::{NeedleGrid, MAX_NEW_TOKENS};
use longctx_tasks::ruler::RulerTask;
use longctx_tasks::synthetic::SyntheticTask;

/// `longctx tasks`.
#[derive(Args)]
pub struct TasksArgs {
    /// LongBench's data/ directory, to count samples.
    #[arg(long)]
    longbench_dir: Option<PathBuf>,
}

pub fn run(args: TasksArgs) -> Result<()> {
    println!("| task | category | metric | samples | max new tokens | chat template |");
    println!("|---|---|---|--:|--:|---|");
    for d in DATASETS {
        let samples = match &args.longbench_dir {
            Some(dir) if dir.join(format!("{}.jsonl", d.name)).exists() => {
                load(dir, d.name, OnBadLine::Skip)?
                    .samples
                    .len()
                    .to_string()
            }
            Some(_) => "absent".into(),
            None => "-".into(),
        };
        println!(
            "| longbench/{} | {} | {} | {} | {} | {} |",
            d.name,
            d.category.title(),
            d.metric.name(),
            samples,
            d.max_new_tokens(),
            if d.uses_chat_template() {
                "yes"
            } else {
                "no (raw)"
            }
        );
    }
    let paper = NeedleGrid::paper(0);
    println!(
        "| needle/passkey (paper grid) | Needle | exact + partial match | {} ({} lengths {}..{} words x {} depths x {} trials) | {MAX_NEW_TOKENS} | no (raw, as the benchmark feeds it) |",
        paper.lengths.len() * paper.depths.len() * paper.trials,
        paper.lengths.len(),
        paper.lengths[0],
        paper.lengths[paper.lengths.len() - 1],
        paper.depths.len(),
        paper.trials
    );
    println!(
        "| needle/passkey (fitted grid) | Needle | exact + partial match | 300 (10 lengths 512..W words, W the longest haystack that fits the model's context with the answer) | {MAX_NEW_TOKENS} | no (raw, as the benchmark feeds it) |"
    );
    for task in RulerTask::ALL {
        println!(
            "| ruler/{} | RULER: {} | {} | any (seeded), at lengths in the model's tokens | {} | no (RULER's base template) |",
            task.name(),
            task.about(),
            task.metric_name(),
            task.tokens_to_generate()
        );
    }
    for task in InfiniteTask::ALL {
        println!(
            "| infinitebench/{} | InfiniteBench: {} | {} | any (seeded), at lengths in the model's tokens | {} | no (its open-model template) |",
            task.name(),
            task.about(),
            task.metric_name(),
            task.tokens_to_generate()
        );
    }
    for task in SyntheticTask::ALL {
        println!(
            "| synthetic/{} | Synthetic (generated; a lighter RULER-like suite sized in words) | {} | any (seeded) | {} | yes |",
            task.name(),
            task.metric_name(),
            task.max_new_tokens()
        );
    }
    Ok(())
}
