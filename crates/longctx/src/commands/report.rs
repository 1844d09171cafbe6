use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::methods::Method;
use crate::store::{ResultRow, Store};

/// `longctx report`.
#[derive(Args)]
pub struct ReportArgs {
    /// The results database.
    #[arg(long, default_value = "results/longctx.db")]
    db: PathBuf,
    /// Directory the report is written to.
    #[arg(long, default_value = "report")]
    out: PathBuf,
}

/// The words-length of a needle sample id (`words=N depth=… trial=…`).
fn needle_words(sample: &str) -> Option<usize> {
    sample
        .strip_prefix("words=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Mean of `f` over rows.
fn mean(rows: &[&ResultRow], f: impl Fn(&ResultRow) -> f64) -> f64 {
    rows.iter().map(|r| f(r)).sum::<f64>() / rows.len().max(1) as f64
}

/// The needle table: per model and method, accuracy overall and per length, the measured
/// compression, the bytes held and the speed.
fn needle_table(rows: &[ResultRow]) -> String {
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&ResultRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.task.starts_with("needle/passkey")) {
        groups
            .entry((&r.model, &r.method, &r.task))
            .or_default()
            .push(r);
    }
    let mut lengths: Vec<usize> = rows
        .iter()
        .filter_map(|r| needle_words(&r.sample))
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| model | method | task | samples | exact % | partial % | {} | nominal ratio | measured ratio | KV bytes held | offloaded bytes | vs 16-bit | prefill tok/s | decode tok/s | peak RSS MiB |",
        lengths.iter().map(|l| format!("{l} words")).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---|---|--:|--:|--:|{}--:|--:|--:|--:|--:|--:|--:|--:|",
        "--:|".repeat(lengths.len())
    );
    for ((model, method, task), group) in &groups {
        let nominal = Method::parse(method)
            .ok()
            .and_then(|m| m.nominal_ratio())
            .map_or("-".into(), |r| format!("{r:.2}x"));
        let per_length: Vec<String> = lengths
            .iter()
            .map(|l| {
                let at: Vec<&ResultRow> = group
                    .iter()
                    .copied()
                    .filter(|r| needle_words(&r.sample) == Some(*l))
                    .collect();
                if at.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0}", 100.0 * mean(&at, |r| r.score))
                }
            })
            .collect();
        let prefill_s: f64 = group.iter().map(|r| r.prefill_ms).sum::<f64>() / 1e3;
        let decode_s: f64 = group.iter().map(|r| r.decode_ms).sum::<f64>() / 1e3;
        let _ = writeln!(
            out,
            "| {model} | {method} | {task} | {} | {:.1} | {:.1} | {} | {nominal} | {:.2}x | {:.0} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.0} |",
            group.len(),
            100.0 * mean(group, |r| r.score),
            100.0 * mean(group, |r| r.score2),
            per_length.join(" | "),
            mean(group, |r| r.uncompressed_bytes as f64 / r.kv_bytes.max(1) as f64),
            mean(group, |r| r.kv_bytes as f64),
            mean(group, |r| r.offloaded_bytes as f64),
            mean(group, |r| r.fp16_bytes as f64 / r.kv_bytes.max(1) as f64),
            group.iter().map(|r| r.prompt_tokens as f64).sum::<f64>() / prefill_s.max(1e-9),
            group.iter().map(|r| r.new_tokens as f64).sum::<f64>() / decode_s.max(1e-9),
            group.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64 / (1024.0 * 1024.0),
        );
    }
    out
}

pub fn run(args: ReportArgs) -> Result<()> {
    if !args.db.exists() {
        anyhow::bail!(
            "no results database at {}: run `longctx run` first, or pass --db",
            args.db.display()
        );
    }
    let store = Store::open(&args.db)?;
    let rows = store.rows()?;
    let mut report = String::from("# longctx report\n\n");
    let _ = writeln!(
        report,
        "From `{}` ({} rows). Measured ratio: every token seen in the method's uncompressed format / KV bytes held at the end of the sample (16-bit for quantizers, f32 for the baseline and token dropping). \"vs 16-bit\": every token seen at 16 bits / KV bytes held.\n",
        args.db.display(),
        rows.len()
    );
    report.push_str("## Needle (passkey retrieval)\n\n");
    report.push_str(&needle_table(&rows));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join("report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    print!("{report}");
    println!("\nreport: {}", path.display());
    Ok(())
}
