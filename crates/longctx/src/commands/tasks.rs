use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use longctx_tasks::longbench::{load, OnBadLine, DATASETS};

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
    Ok(())
}
