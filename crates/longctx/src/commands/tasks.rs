use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use longctx_tasks::longbench::{load, OnBadLine, DATASETS};
use longctx_tasks::needle::{Haystack, NeedleGrid, MAX_NEW_TOKENS};
use longctx_tasks::synthetic::SyntheticTask;

/// `longctx tasks`.
#[derive(Args)]
pub struct TasksArgs {
    /// LongBench's data/ directory, to count samples.
    #[arg(long)]
    longbench_dir: Option<PathBuf>,
    /// Print the needle prompt (before the chat template) for WORDS:DEPTH, key seed 0,
    /// trial 0, as `run` builds it: to reproduce a sample with another tool.
    #[arg(long, value_name = "WORDS:DEPTH")]
    needle_prompt: Option<String>,
}

/// The prompt `run` builds for one haystack length and depth (a one-cell grid).
fn print_needle_prompt(spec: &str) -> Result<()> {
    let parsed = spec
        .split_once(':')
        .and_then(|(w, d)| Some((w.parse::<usize>().ok()?, d.parse::<f64>().ok()?)))
        .filter(|(w, d)| *w > 0 && (0.0..=1.0).contains(d));
    let Some((words, depth)) = parsed else {
        anyhow::bail!(
            "--needle-prompt {spec}: expected WORDS:DEPTH, e.g. 2048:0.5 (depth in [0, 1])"
        );
    };
    let haystack = Haystack::from_dir(&crate::assets::haystack_dir()?)?;
    let grid = NeedleGrid {
        lengths: vec![words],
        depths: vec![depth],
        trials: 1,
        seed: 0,
    };
    let sample = &grid.samples(&haystack)[0];
    eprintln!("key {}", sample.key);
    print!("{}", sample.prompt);
    Ok(())
}

pub fn run(args: TasksArgs) -> Result<()> {
    if let Some(spec) = &args.needle_prompt {
        return print_needle_prompt(spec);
    }
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
    for task in SyntheticTask::ALL {
        println!(
            "| synthetic/{} | Synthetic (generated) | {} | any (seeded) | {} | yes |",
            task.name(),
            task.metric_name(),
            task.max_new_tokens()
        );
    }
    Ok(())
}
