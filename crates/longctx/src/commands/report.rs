use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use longctx_tasks::longbench::{bucket_scores, round2, Category, Dataset, DATASETS};

use super::run::longbench_e_length;
use super::slug;
use crate::figures;
use crate::methods::{presets, Method};
use crate::stats::{bootstrap_mean, bootstrap_mean_of_means, paired_difference, Interval};
use crate::store::{ResultRow, Store, MODEL_SCHOOL};

/// `longctx report`.
#[derive(Args)]
pub struct ReportArgs {
    /// The results database.
    #[arg(long, default_value = "results/longctx.db")]
    db: PathBuf,
    /// Directory the report is written to.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Put the paper's own numbers (its Table 2) beside ours for the methods it has.
    #[arg(long)]
    paper: bool,
}

/// The paper's Table 2 (category scores per model and method), carried as data.
const PAPER_TABLE2: &str = include_str!("../../data/paper/table2_category_scores.csv");

/// The paper's Table 9 (per-dataset LongBench scores of the linear-time and hybrid models).
const PAPER_TABLE9: &str = include_str!("../../data/paper/table9_linear_time_per_dataset.csv");

/// Rows by (model, shown method), in the order of [`method_rank`] within each model.
type Groups<'a> = Vec<((&'a str, &'a str), Vec<&'a ResultRow>)>;

fn group<'a>(rows: &'a [ResultRow], keep: impl Fn(&ResultRow) -> bool) -> Groups<'a> {
    let mut groups: BTreeMap<(&str, &str), Vec<&ResultRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| keep(r)) {
        groups
            .entry((&r.key.model, &r.key.method))
            .or_default()
            .push(r);
    }
    let mut groups: Groups = groups.into_iter().collect();
    groups.sort_by_key(|((model, method), _)| (*model, method_rank(method), *method));
    groups
}

/// Where a shown method sorts, as the paper's tables order them: by school (the baseline,
/// KV quantization, token dropping, prompt compression, then models run as they are), then
/// by nominal ratio (a fixed budget last).
fn method_rank(label: &str) -> (usize, u64) {
    const SCHOOLS: [&str; 5] = [
        "none",
        "KV quantization",
        "token dropping",
        "dropping + quantization",
        "prompt compression",
    ];
    let spec = label.split(" [").next().unwrap_or(label);
    match Method::parse(spec) {
        Ok(m) => (
            SCHOOLS
                .iter()
                .position(|s| *s == m.school())
                .unwrap_or(SCHOOLS.len()),
            m.nominal_ratio().map_or(u64::MAX, |r| (r * 1000.0) as u64),
        ),
        Err(_) => (SCHOOLS.len() + 1, 0),
    }
}

/// The words-length and depth of a needle sample id (`words=N depth=D trial=T`).
fn needle_cell(sample: &str) -> Option<(usize, f64)> {
    let mut parts = sample.split(' ');
    let words = parts.next()?.strip_prefix("words=")?.parse().ok()?;
    let depth = parts.next()?.strip_prefix("depth=")?.parse().ok()?;
    Some((words, depth))
}

fn mean(rows: &[&ResultRow], f: impl Fn(&ResultRow) -> f64) -> f64 {
    rows.iter().map(|r| f(r)).sum::<f64>() / rows.len().max(1) as f64
}

fn is_needle(r: &ResultRow) -> bool {
    r.key.task.starts_with("needle/")
}

/// The protocol every table assumes unless a row's method label says otherwise.
const PAPER_PROTOCOL: &str = "paper";

/// Rows with short method labels: a method that is a preset shows as the preset's name
/// (`snapkv-4x` for `snapkv:ratio=4,window=32,kernel=7,pool=max`, `snapkv-4x+q4_0` for a
/// composition of presets), a protocol's or school's suffix kept; any other as its spec. Returns the legend: each short label with its full
/// spec and school.
pub(crate) fn labelled(
    mut rows: Vec<ResultRow>,
) -> (Vec<ResultRow>, Vec<(String, String, &'static str)>) {
    let mut legend: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
    for r in &mut rows {
        let shown = r.key.method.clone();
        let (spec, suffix) = match shown.find(" [") {
            Some(at) => shown.split_at(at),
            None => (shown.as_str(), ""),
        };
        let Ok(method) = Method::parse(spec) else {
            continue;
        };
        let Some(name) = method.preset_name() else {
            continue;
        };
        legend.insert(name.clone(), (method.to_string(), method.school()));
        r.key.method = format!("{name}{suffix}");
    }
    let legend = legend
        .into_iter()
        .map(|(label, (spec, school))| (label, spec, school))
        .collect();
    (rows, legend)
}

/// The legend of short labels: each label's school and full spec.
fn legend_table(legend: &[(String, String, &str)]) -> String {
    let mut out = String::from("| label | school | full spec |\n|---|---|---|\n");
    for (label, spec, school) in legend {
        let _ = writeln!(out, "| {label} | {school} | `{spec}` |");
    }
    out
}

/// The label of a linear-time or hybrid model run as it is, as the paper's Table 2 names it,
/// followed by the school in parentheses.
const NATIVE: &str = "native";

/// Rows as the tables show them: a row run under another protocol than the paper's is a
/// method of its own, labelled `<spec> [<protocol>]`, so the two never share a cell; a
/// linear-time or hybrid model's baseline is labelled `native (<school>)`.
pub(crate) fn as_shown(rows: &[ResultRow]) -> Vec<ResultRow> {
    rows.iter()
        .cloned()
        .map(|mut r| {
            if let Some(school) = r.settings.0.get(MODEL_SCHOOL) {
                r.key.method = format!("{NATIVE} ({school})");
            }
            if r.key.protocol != PAPER_PROTOCOL {
                r.key.method = format!("{} [{}]", r.key.method, r.key.protocol);
            }
            r
        })
        .collect()
}

fn nominal(method: &str) -> String {
    let spec = method.split(" [").next().unwrap_or(method);
    Method::parse(spec)
        .ok()
        .and_then(|m| m.nominal_ratio())
        .map_or("-".into(), |r| format!("{r:.2}x"))
}

/// Seed of every bootstrap in a report, so that a report never changes between runs.
const BOOTSTRAP_SEED: u64 = 0x5EED;

/// Whether a row's (shown) method is the baseline, under any protocol.
fn is_baseline(method: &str) -> bool {
    method == "baseline" || method.starts_with("baseline [")
}

/// A group's mean score in percent with its 95% bootstrap interval over samples, and ▲ or
/// ▼ where its paired difference from the same model's baseline on the same samples (task,
/// sample and protocol) excludes zero. `all` holds every shown row.
fn score_cell(group: &[&ResultRow], all: &[ResultRow]) -> String {
    let scores: Vec<f64> = group.iter().map(|r| r.score).collect();
    let Some(i) = bootstrap_mean(&scores, BOOTSTRAP_SEED) else {
        return "-".into();
    };
    // One sample has no spread to resample.
    if scores.len() < 2 {
        return format!("{:.1}", 100.0 * i.mean);
    }
    let mut cell = format!(
        "{:.1} [{:.1}–{:.1}]",
        100.0 * i.mean,
        100.0 * i.low,
        100.0 * i.high
    );
    if let Some(mark) = against_baseline(group, all) {
        cell.push(' ');
        cell.push(mark);
    }
    cell
}

/// Fewest paired samples a difference is judged on (a bootstrap of fewer says nothing).
const MIN_PAIRS: usize = 5;

/// ▲ (better) or ▼ (worse) where the group differs from its model's baseline by a paired
/// interval that excludes zero (see [`difference_from_baseline`]).
fn against_baseline(group: &[&ResultRow], all: &[ResultRow]) -> Option<char> {
    let (_, d) = difference_from_baseline(group, all)?;
    d.excludes_zero()
        .then_some(if d.mean > 0.0 { '▲' } else { '▼' })
}

/// The group's paired difference from its model's baseline on the same samples (task,
/// sample and protocol), with the number of pairs; `None` for a baseline, or with fewer
/// than [`MIN_PAIRS`] pairs.
fn difference_from_baseline(group: &[&ResultRow], all: &[ResultRow]) -> Option<(usize, Interval)> {
    let first = group.first()?;
    if is_baseline(&first.key.method) {
        return None;
    }
    let key = |r: &ResultRow| {
        (
            r.key.task.clone(),
            r.key.sample.clone(),
            r.key.protocol.clone(),
        )
    };
    let base: std::collections::HashMap<_, f64> = all
        .iter()
        .filter(|r| r.key.model == first.key.model && is_baseline(&r.key.method))
        .map(|r| (key(r), r.score))
        .collect();
    let (ours, theirs): (Vec<f64>, Vec<f64>) = group
        .iter()
        .filter_map(|r| base.get(&key(r)).map(|b| (r.score, *b)))
        .unzip();
    if ours.len() < MIN_PAIRS {
        return None;
    }
    Some((
        ours.len(),
        paired_difference(&ours, &theirs, BOOTSTRAP_SEED)?,
    ))
}

/// The task a row belongs to, without its sample parameters (`ruler/vt:length=4096` →
/// `ruler/vt`).
fn task_name(r: &ResultRow) -> &str {
    r.key.task.split(':').next().unwrap_or(&r.key.task)
}

/// What these rows can and cannot show: what they cover, each method's difference from
/// its model's baseline over every sample both ran, and what a reader must not conclude.
fn scope_section(rows: &[ResultRow]) -> String {
    let mut out = String::new();
    let groups = group(rows, |_| true);
    let mut models: Vec<&str> = rows.iter().map(|r| r.key.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let mut tasks: Vec<&str> = rows.iter().map(task_name).collect();
    tasks.sort_unstable();
    tasks.dedup();
    let longest = rows.iter().map(|r| r.prompt_tokens).max().unwrap_or(0);
    let shortest = rows.iter().map(|r| r.prompt_tokens).min().unwrap_or(0);
    let mut per_cell: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for r in rows {
        *per_cell
            .entry((&r.key.model, &r.key.method, task_name(r)))
            .or_default() += 1;
    }
    let fewest = per_cell.values().min().copied().unwrap_or(0);
    let most = per_cell.values().max().copied().unwrap_or(0);
    let samples = match fewest == most {
        true => format!("{most}"),
        false => format!("{fewest}–{most}"),
    };
    let _ = writeln!(
        out,
        "Covered: {} model{} ({}); {} task{} ({}); prompts of {shortest}–{longest} tokens; {samples} samples per method and task.\n",
        models.len(),
        if models.len() == 1 { "" } else { "s" },
        models.join(", "),
        tasks.len(),
        if tasks.len() == 1 { "" } else { "s" },
        tasks.join(", "),
    );
    let compared: Vec<_> = groups
        .iter()
        .filter(|((_, method), _)| !is_baseline(method))
        .collect();
    let mut widest_unmarked: f64 = 0.0;
    if !compared.is_empty() {
        out += "Each method's score minus its model's baseline's, over every sample both ran (all tasks together; points, 95% paired bootstrap interval):\n\n| model | method | pairs | difference |\n|---|---|--:|--:|\n";
        for ((model, method), g) in compared {
            let cell = match difference_from_baseline(g, rows) {
                Some((pairs, i)) => {
                    if !i.excludes_zero() {
                        // Where every pair agreed the interval has no width, yet a
                        // difference on up to 3/n of the samples could go unseen (the rule
                        // of three), so that is the least it cannot exclude.
                        let unseen = 3.0 / pairs as f64;
                        widest_unmarked = widest_unmarked
                            .max(i.low.abs())
                            .max(i.high.abs())
                            .max(unseen);
                    }
                    let mark = match (i.excludes_zero(), i.mean > 0.0) {
                        (false, _) => "",
                        (true, true) => " ▲",
                        (true, false) => " ▼",
                    };
                    format!(
                        "{pairs} | {:+.1} [{:+.1} to {:+.1}]{mark}",
                        100.0 * i.mean,
                        100.0 * i.low,
                        100.0 * i.high
                    )
                }
                None => format!("- | no baseline on {MIN_PAIRS} or more of the same samples"),
            };
            let _ = writeln!(out, "| {model} | {method} | {cell} |");
        }
        out.push('\n');
    }
    out += "It can show a method that loses (▼) or gains (▲) against the baseline on these tasks at these lengths: its interval excludes zero. It cannot show:\n\n";
    if widest_unmarked > 0.0 {
        let _ = writeln!(
            out,
            "- that an unmarked method matches the baseline: it may differ by as much as its interval's bounds, and by at least 3/n of its n pairs where all agreed (up to {:.0} points here); more samples narrow this;",
            100.0 * widest_unmarked
        );
    }
    let _ = writeln!(
        out,
        "- behaviour at prompts longer than {longest} tokens, where the paper found compression costing more;"
    );
    if !rows.iter().any(|r| r.key.task.starts_with("longbench/")) {
        out += "- quality on real tasks: no LongBench rows here (run a spec with a `[longbench]` section);\n";
    }
    if models.len() == 1 {
        out += "- whether it holds on other models: one model ran;\n";
    }
    out += "- speed on other machines: the speeds below are this machine's, one run each (compare them as ratios within this report).\n";
    out
}

/// A compression ratio's cell: `-` for a model without a KV cache, whose state has no
/// per-token size to compare with.
fn ratio_cell(group: &[&ResultRow], ratio: f64) -> String {
    match group
        .iter()
        .any(|r| r.settings.0.contains_key(MODEL_SCHOOL))
    {
        true => "-".into(),
        false => format!("{ratio:.2}x"),
    }
}

/// The measured compression of a group: uncompressed bytes of the tokens seen / bytes held.
fn measured(group: &[&ResultRow]) -> f64 {
    mean(group, |r| {
        r.uncompressed_bytes as f64 / r.kv_bytes.max(1) as f64
    })
}

/// What a group of samples held and how fast it ran, as the needle and efficiency tables
/// report it.
struct Costs {
    kv_bytes: f64,
    offloaded_bytes: f64,
    /// Mean bytes a decoding step read, where the cache reads part of what it holds.
    read_bytes: Option<f64>,
    /// Every token seen at 16 bits / bytes held.
    vs_fp16: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    peak_rss_mib: f64,
}

impl Costs {
    /// Means over the group for bytes; speeds are totals (tokens / seconds) over the group.
    fn of(group: &[&ResultRow]) -> Self {
        let total = |f: fn(&ResultRow) -> f64| group.iter().map(|r| f(r)).sum::<f64>();
        // A prompt compressor's time is part of its prefill, over the prompt it was given.
        let prefill_s = total(|r| r.prefill_ms + r.compress_ms) / 1e3;
        let decode_s = total(|r| r.decode_ms) / 1e3;
        Self {
            kv_bytes: mean(group, |r| r.kv_bytes as f64),
            offloaded_bytes: mean(group, |r| r.offloaded_bytes as f64),
            read_bytes: {
                let read: Vec<f64> = group.iter().filter_map(|r| r.read_bytes).collect();
                (!read.is_empty()).then(|| read.iter().sum::<f64>() / read.len() as f64)
            },
            vs_fp16: mean(group, |r| r.fp16_bytes as f64 / r.kv_bytes.max(1) as f64),
            prefill_tokens_per_s: total(|r| r.original_tokens as f64) / prefill_s.max(1e-9),
            decode_tokens_per_s: total(|r| r.new_tokens as f64) / decode_s.max(1e-9),
            peak_rss_mib: group.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64
                / (1024.0 * 1024.0),
        }
    }

    /// The bytes read per decoded token, or `all held` where every step reads all the cache
    /// holds.
    fn read_cell(&self) -> String {
        self.read_bytes
            .map_or("all held".into(), |b| format!("{b:.0}"))
    }
}

/// The paper's name for a method, when the method is one of the paper's presets.
fn paper_name(method: &str) -> Option<String> {
    if method.starts_with(NATIVE) {
        return Some(NATIVE.into());
    }
    let parsed = Method::parse(method).ok()?;
    let preset = presets()
        .into_iter()
        .find(|p| Method::parse(&p.name).ok().as_ref() == Some(&parsed))?;
    let name = preset.name.as_str();
    let fixed = match name {
        "baseline" => Some("Baseline"),
        "kivi-2bit" => Some("KIVI-2bit"),
        "kivi-4bit" => Some("KIVI-4bit"),
        "flexgen-4bit" => Some("FlexGen-4bit"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let (family, ratio) = name.rsplit_once('-')?;
    let paper_family = match family {
        "streamingllm" => "StreamLLM",
        "h2o" => "H2O",
        "infllm" => "InfLLM",
        _ => return None,
    };
    Some(format!("{paper_family}-{ratio}"))
}

/// The needle table: accuracy overall and per length, compression, bytes and speed.
fn needle_table(rows: &[ResultRow]) -> String {
    let groups = group(rows, is_needle);
    let mut lengths: Vec<usize> = rows
        .iter()
        .filter(|r| is_needle(r))
        .filter_map(|r| needle_cell(&r.key.sample).map(|c| c.0))
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| model | method | samples | exact % | partial % | {} | nominal ratio | measured ratio | KV bytes held | offloaded bytes | bytes read per decoded token | vs 16-bit | prefill tok/s | decode tok/s | peak RSS MiB |",
        lengths.iter().map(|l| format!("{l} words")).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|{}--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        "--:|".repeat(lengths.len())
    );
    for ((model, method), group) in &groups {
        let per_length: Vec<String> = lengths
            .iter()
            .map(|l| {
                let at: Vec<&ResultRow> = group
                    .iter()
                    .copied()
                    .filter(|r| needle_cell(&r.key.sample).map(|c| c.0) == Some(*l))
                    .collect();
                if at.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0}", 100.0 * mean(&at, |r| r.score))
                }
            })
            .collect();
        let c = Costs::of(group);
        let _ = writeln!(
            out,
            "| {model} | {method} | {} | {} | {:.1} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {:.1} | {:.1} | {:.0} |",
            group.len(),
            score_cell(group, rows),
            100.0 * mean(group, |r| r.score2),
            per_length.join(" | "),
            nominal(method),
            ratio_cell(group, measured(group)),
            c.kv_bytes,
            c.offloaded_bytes,
            c.read_cell(),
            ratio_cell(group, c.vs_fp16),
            c.prefill_tokens_per_s,
            c.decode_tokens_per_s,
            c.peak_rss_mib,
        );
    }
    out
}

/// LongBench dataset scores of a group (100 × mean, rounded as the official scorer).
fn dataset_scores(group: &[&ResultRow]) -> BTreeMap<&'static str, (f64, Vec<f64>)> {
    let mut scores = BTreeMap::new();
    for d in DATASETS {
        let task = format!("longbench/{}", d.name);
        let samples: Vec<f64> = group
            .iter()
            .filter(|r| r.key.task == task)
            .map(|r| r.score)
            .collect();
        if !samples.is_empty() {
            scores.insert(
                d.name,
                (longctx_tasks::longbench::dataset_score(&samples), samples),
            );
        }
    }
    scores
}

/// A category as the paper's Table 2 reports it: the mean of its datasets' scores, with
/// passage_count left out as the paper does; marked "(k/n)" when datasets are missing.
fn category_cell(scores: &BTreeMap<&str, (f64, Vec<f64>)>, category: Category) -> String {
    let members: Vec<&Dataset> = DATASETS
        .iter()
        .filter(|d| d.category == category && d.name != "passage_count")
        .collect();
    let found: Vec<&(f64, Vec<f64>)> = members.iter().filter_map(|d| scores.get(d.name)).collect();
    if found.is_empty() {
        return "-".into();
    }
    let value = round2(found.iter().map(|s| s.0).sum::<f64>() / found.len() as f64);
    let spread = stratified(&found);
    if found.len() == members.len() {
        format!("{value:.1}{spread}")
    } else {
        format!("{value:.1}{spread} ({}/{})", found.len(), members.len())
    }
}

/// ` [low–high]` in percent, or nothing where no sample varies the estimate (one sample).
fn interval_suffix(interval: Option<Interval>, samples: usize) -> String {
    match interval {
        Some(i) if samples >= 2 => format!(" [{:.1}–{:.1}]", 100.0 * i.low, 100.0 * i.high),
        _ => String::new(),
    }
}

/// The interval of a mean of datasets' scores, each dataset resampled on its own.
fn stratified(datasets: &[&(f64, Vec<f64>)]) -> String {
    let groups: Vec<&[f64]> = datasets.iter().map(|d| d.1.as_slice()).collect();
    let samples = groups.iter().map(|g| g.len()).sum();
    interval_suffix(bootstrap_mean_of_means(&groups, BOOTSTRAP_SEED), samples)
}

/// The paper's Table 2 layout per model, and the per-dataset table (Tables 6–9 layout).
fn longbench_tables(rows: &[ResultRow]) -> Option<String> {
    let groups = group(rows, |r| {
        r.key.task.starts_with("longbench/") || is_needle(r)
    });
    if !rows.iter().any(|r| r.key.task.starts_with("longbench/")) {
        return None;
    }
    let mut out = String::from("| model | method | nominal ratio | measured ratio | ");
    out += &Category::ALL.map(|c| c.title()).join(" | ");
    out += " | LongBench avg | Needle |\n|---|---|--:|--:|";
    out += &"--:|".repeat(Category::ALL.len() + 2);
    out.push('\n');
    let mut per_dataset = String::from("| model | method | ");
    let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
    per_dataset += &names.join(" | ");
    per_dataset += " | avg |\n|---|---|";
    per_dataset += &"--:|".repeat(names.len() + 1);
    per_dataset.push('\n');
    for ((model, method), group) in &groups {
        let lb: Vec<&ResultRow> = group
            .iter()
            .copied()
            .filter(|r| r.key.task.starts_with("longbench/"))
            .collect();
        let scores = dataset_scores(&lb);
        let paper15: Vec<&(f64, Vec<f64>)> = scores
            .iter()
            .filter(|(n, _)| **n != "passage_count")
            .map(|(_, s)| s)
            .collect();
        let avg = if paper15.is_empty() {
            "-".into()
        } else {
            let v = round2(paper15.iter().map(|s| s.0).sum::<f64>() / paper15.len() as f64);
            let spread = stratified(&paper15);
            if paper15.len() == 15 {
                format!("{v:.1}{spread}")
            } else {
                format!("{v:.1}{spread} ({}/15)", paper15.len())
            }
        };
        let needle: Vec<&ResultRow> = group.iter().copied().filter(|r| is_needle(r)).collect();
        let needle = if needle.is_empty() {
            "-".into()
        } else {
            format!("{:.1}", 100.0 * mean(&needle, |r| r.score))
        };
        let cats: Vec<String> = Category::ALL
            .iter()
            .map(|c| category_cell(&scores, *c))
            .collect();
        let _ = writeln!(
            out,
            "| {model} | {method} | {} | {} | {} | {avg} | {needle} |",
            nominal(method),
            ratio_cell(group, measured(group)),
            cats.join(" | ")
        );
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                scores.get(n).map_or("-".into(), |(score, samples)| {
                    let i = bootstrap_mean(samples, BOOTSTRAP_SEED);
                    format!("{score:.1}{}", interval_suffix(i, samples.len()))
                })
            })
            .collect();
        let _ = writeln!(
            per_dataset,
            "| {model} | {method} | {} | {avg} |",
            cells.join(" | ")
        );
    }
    Some(format!(
        "### Categories (the paper's Table 2 layout)\n\n{out}\n### Per dataset (the paper's Tables 6-9 layout)\n\n{per_dataset}"
    ))
}

/// LongBench-E: each dataset's score per length bucket (words), as its `eval.py --e`
/// reports them.
fn longbench_e_table(rows: &[ResultRow]) -> Option<String> {
    let groups = group(rows, |r| r.key.task.starts_with("longbench-e/"));
    if groups.is_empty() {
        return None;
    }
    let mut out = String::from(
        "| model | method | dataset | samples | 0-4k | 4-8k | 8k+ |\n|---|---|---|--:|--:|--:|--:|\n",
    );
    for ((model, method), group) in &groups {
        let mut tasks: Vec<&str> = group.iter().map(|r| r.key.task.as_str()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        for task in tasks {
            let scored: Vec<(f64, usize)> = group
                .iter()
                .filter(|r| r.key.task == task)
                .filter_map(|r| Some((r.score, longbench_e_length(&r.key.sample)?)))
                .collect();
            let cells: Vec<String> = bucket_scores(&scored)
                .values()
                .map(|s| s.map_or("-".into(), |s| format!("{s:.2}")))
                .collect();
            let _ = writeln!(
                out,
                "| {model} | {method} | {} | {} | {} |",
                task.trim_start_matches("longbench-e/"),
                scored.len(),
                cells.join(" | ")
            );
        }
    }
    Some(out)
}

/// Per synthetic task, mean score per method.
/// A suite's table (tasks under `prefix`): the mean score per task, the samples per cell
/// (n) and the mean over the suite.
fn suite_table(rows: &[ResultRow], prefix: &str) -> Option<String> {
    let groups = group(rows, |r| r.key.task.starts_with(prefix));
    if groups.is_empty() {
        return None;
    }
    let mut tasks: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.key.task.strip_prefix(prefix))
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    let mut out = format!(
        "| model | method | n per task | {} | mean |\n|---|---|--:|{}--:|\n",
        tasks.join(" | "),
        "--:|".repeat(tasks.len())
    );
    for ((model, method), group) in &groups {
        let at = |t: &str| -> Vec<&ResultRow> {
            group
                .iter()
                .copied()
                .filter(|r| r.key.task.strip_prefix(prefix) == Some(t))
                .collect()
        };
        let cells: Vec<String> = tasks.iter().map(|t| score_cell(&at(t), rows)).collect();
        let n: Vec<usize> = tasks.iter().map(|t| at(t).len()).collect();
        let n = match (n.iter().min(), n.iter().max()) {
            (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
            (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
            _ => "0".into(),
        };
        let _ = writeln!(
            out,
            "| {model} | {method} | {n} | {} | {} |",
            cells.join(" | "),
            score_cell(group, rows)
        );
    }
    Some(out)
}

/// What each method really costs and saves, over every sample it ran.
pub(crate) fn efficiency_table(rows: &[ResultRow]) -> String {
    let mut out = String::from("| model | method | samples | mean score % | mean prompt tokens | mean kept tokens | KV bytes held (mean) | offloaded bytes (mean) | bytes read per decoded token | measured ratio | vs 16-bit | prefill tok/s | decode tok/s | peak RSS MiB |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for ((model, method), group) in &group(rows, |_| true) {
        let c = Costs::of(group);
        // A prompt compressor's prompt: the tokens it was given → the tokens the model read.
        let (given, read) = (
            mean(group, |r| r.original_tokens as f64),
            mean(group, |r| r.prompt_tokens as f64),
        );
        let tokens = if group.iter().any(|r| r.original_tokens != r.prompt_tokens) {
            format!("{given:.0} → {read:.0}")
        } else {
            format!("{read:.0}")
        };
        let _ = writeln!(
            out,
            "| {model} | {method} | {} | {} | {tokens} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.0} |",
            group.len(),
            score_cell(group, rows),
            mean(group, |r| r.kept_tokens as f64),
            c.kv_bytes,
            c.offloaded_bytes,
            c.read_cell(),
            ratio_cell(group, measured(group)),
            ratio_cell(group, c.vs_fp16),
            c.prefill_tokens_per_s,
            c.decode_tokens_per_s,
            c.peak_rss_mib,
        );
    }
    out
}

/// What each prompt compressor did, where one ran: the prompt's tokens before and after
/// (the ratio the model read at), and the time compressing took beside prefill's.
fn compression_table(rows: &[ResultRow]) -> Option<String> {
    let groups = group(rows, |r| {
        r.original_tokens != r.prompt_tokens || r.compress_ms > 0.0
    });
    if groups.is_empty() {
        return None;
    }
    let mut out = String::from("| model | method | samples | prompt tokens before | after | token ratio (mean) | compression s (mean) | prefill s (mean) |\n|---|---|--:|--:|--:|--:|--:|--:|\n");
    for ((model, method), group) in &groups {
        let _ = writeln!(
            out,
            "| {model} | {method} | {} | {:.0} | {:.0} | {:.2}x | {:.2} | {:.2} |",
            group.len(),
            mean(group, |r| r.original_tokens as f64),
            mean(group, |r| r.prompt_tokens as f64),
            mean(group, |r| r.original_tokens as f64
                / r.prompt_tokens.max(1) as f64),
            mean(group, |r| r.compress_ms / 1e3),
            mean(group, |r| r.prefill_ms / 1e3),
        );
    }
    Some(out)
}

/// The paper's Table 2 rows for the methods we ran (every model the paper has), and its
/// Table 9 (per dataset) when a linear-time or hybrid model ran.
fn paper_table(rows: &[ResultRow]) -> String {
    let mut ours: Vec<String> = rows
        .iter()
        .filter_map(|r| paper_name(&r.key.method))
        .collect();
    ours.sort_unstable();
    ours.dedup();
    let mut out = csv_table(PAPER_TABLE2, |line| {
        let method = line.split(',').nth(1).unwrap_or_default();
        ours.iter().any(|o| o == method)
    });
    if ours.iter().any(|o| o == NATIVE) {
        out += "\nPer dataset (the paper's Table 9):\n\n";
        out += &csv_table(PAPER_TABLE9, |_| true);
    }
    out
}

/// A CSV table (header first) as Markdown, keeping the data lines `keep` accepts.
fn csv_table(csv: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default().replace(',', " | ");
    let mut out = format!(
        "| {header} |\n|{}\n",
        "---|".repeat(header.split(" | ").count())
    );
    for line in lines.filter(|l| keep(l)) {
        let _ = writeln!(out, "| {} |", line.replace(',', " | "));
    }
    out
}

/// A needle heatmap (length × depth, exact match), as the paper's Figures 4–21 draw it.
fn needle_heatmap(model: &str, method: &str, group: &[&ResultRow]) -> Option<String> {
    let cells: Vec<(usize, f64)> = group
        .iter()
        .filter_map(|r| needle_cell(&r.key.sample))
        .collect();
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.0).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths: Vec<f64> = cells.iter().map(|c| c.1).collect();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    if lengths.is_empty() {
        return None;
    }
    let values: Vec<Vec<Option<f64>>> = depths
        .iter()
        .map(|d| {
            lengths
                .iter()
                .map(|l| {
                    let at: Vec<&ResultRow> = group
                        .iter()
                        .copied()
                        .filter(|r| needle_cell(&r.key.sample) == Some((*l, *d)))
                        .collect();
                    (!at.is_empty()).then(|| mean(&at, |r| r.score))
                })
                .collect()
        })
        .collect();
    Some(figures::heatmap(
        &format!("{model}: {method}"),
        "needle exact match by haystack length (words, columns) and depth (rows)",
        &lengths.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        &depths
            .iter()
            .map(|d| format!("{:.0}%", d * 100.0))
            .collect::<Vec<_>>(),
        &values,
    ))
}

/// Scores in [0, 100] of one model and method on each task family it ran: the LongBench
/// categories (passage_count left out), the needle test and each synthetic task.
fn family_scores(group: &[&ResultRow]) -> Vec<(String, f64)> {
    let lb: Vec<&ResultRow> = group
        .iter()
        .copied()
        .filter(|r| r.key.task.starts_with("longbench/"))
        .collect();
    let scores = dataset_scores(&lb);
    let mut out = Vec::new();
    for category in Category::ALL {
        let found: Vec<f64> = DATASETS
            .iter()
            .filter(|d| d.category == category && d.name != "passage_count")
            .filter_map(|d| scores.get(d.name).map(|s| s.0))
            .collect();
        if !found.is_empty() {
            out.push((
                category.title().to_string(),
                found.iter().sum::<f64>() / found.len() as f64,
            ));
        }
    }
    let needle: Vec<&ResultRow> = group.iter().copied().filter(|r| is_needle(r)).collect();
    if !needle.is_empty() {
        out.push(("Needle".to_string(), 100.0 * mean(&needle, |r| r.score)));
    }
    // Each synthetic and RULER task tests a different skill: one axis each.
    let suite_task = |r: &ResultRow| -> Option<String> {
        ["synthetic/", "ruler/", "infinitebench/"]
            .iter()
            .find_map(|p| r.key.task.strip_prefix(p))
            .map(str::to_string)
    };
    let mut synthetic: Vec<String> = group.iter().filter_map(|r| suite_task(r)).collect();
    synthetic.sort_unstable();
    synthetic.dedup();
    for task in &synthetic {
        let at: Vec<&ResultRow> = group
            .iter()
            .copied()
            .filter(|r| suite_task(r).as_ref() == Some(task))
            .collect();
        let name = task.split(':').next().unwrap_or(task);
        out.push((name.to_string(), 100.0 * mean(&at, |r| r.score)));
    }
    out
}

/// A method's name, its scores per task family, and its measured compression ratio.
type MethodScores<'a> = (&'a str, Vec<(String, f64)>, f64);

/// The series a method belongs to in score-vs-ratio curves: its spec without the ratio.
fn series_name(method: &str) -> String {
    // A short label (a preset's name) names its full spec; the ratio varies along a curve.
    let (label, suffix) = method.split_at(method.find(" [").unwrap_or(method.len()));
    let spec = Method::parse(label).map_or(label.to_string(), |m| m.to_string());
    let parts: Vec<&str> = spec
        .split([':', ','])
        .filter(|p| !p.starts_with("ratio="))
        .collect();
    format!("{}{suffix}", parts.join(" "))
}

/// Per model: a radar across task families (paper's Figure 1) and score-vs-ratio curves per
/// method family (Figures 2, 22–24). Returns markdown lines linking the written files.
fn summary_figures(rows: &[ResultRow], figures_dir: &mut FigureDir) -> Result<String> {
    let mut text = String::new();
    let groups = group(rows, |_| true);
    let mut models: Vec<&str> = groups.iter().map(|(k, _)| k.0).collect();
    models.dedup();
    for model in models {
        let methods: Vec<MethodScores> = groups
            .iter()
            .filter(|(k, _)| k.0 == model)
            .map(|(k, g)| (k.1, family_scores(g), measured(g)))
            .collect();
        // Axes every method has a score on.
        let axes: Vec<String> = methods
            .first()
            .map(|m| m.1.iter().map(|a| a.0.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| methods.iter().all(|m| m.1.iter().any(|s| &s.0 == a)))
            .collect();
        let overall = |scores: &[(String, f64)]| {
            let kept: Vec<f64> = scores
                .iter()
                .filter(|s| axes.contains(&s.0))
                .map(|s| s.1)
                .collect();
            kept.iter().sum::<f64>() / kept.len().max(1) as f64
        };
        if axes.len() >= 3 {
            let series: Vec<(String, Vec<f64>)> = methods
                .iter()
                .map(|(m, scores, _)| {
                    let values = axes
                        .iter()
                        .map(|a| scores.iter().find(|s| &s.0 == a).map_or(0.0, |s| s.1))
                        .collect();
                    (m.to_string(), values)
                })
                .collect();
            let shown = figures_dir.write(
                &format!("radar_{}", slug(model)),
                "radar",
                &figures::radar(&format!("{model}: scores by task family"), &axes, &series),
            )?;
            let _ = writeln!(text, "- {model}, by task family: {shown}");
        } else {
            let _ = writeln!(
                text,
                "- {model}: a radar needs at least 3 task families every method ran ({} here)",
                axes.len()
            );
        }
        if axes.is_empty() {
            continue;
        }
        let baseline = methods
            .iter()
            .find(|m| m.0 == "baseline")
            .map(|m| overall(&m.1));
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (m, scores, ratio) in &methods {
            if *m == "baseline" {
                continue;
            }
            let key = series_name(m);
            let point = (*ratio, overall(scores));
            match series.iter_mut().find(|s| s.0 == key) {
                Some(s) => s.1.push(point),
                None => series.push((key, vec![point])),
            }
        }
        let shown = figures_dir.write(
            &format!("score_vs_ratio_{}", slug(model)),
            "curves",
            &figures::curves(
                &format!("{model}: score against compression"),
                (
                    "measured compression ratio",
                    &figures::Axis::ratios(
                        series
                            .iter()
                            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
                            .fold(1.0, f64::max),
                    ),
                ),
                (
                    &format!("mean score over {}", axes.join(", ")),
                    &figures::Axis::percent(),
                ),
                &series,
                baseline,
            ),
        )?;
        let _ = writeln!(
            text,
            "- {model}, score against measured compression ratio: {shown}"
        );
    }
    Ok(text)
}

/// Every row as CSV (RFC 4180 quoting).
fn csv(rows: &[ResultRow]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("model,method,protocol,task,sample,prediction,score,score2,prompt_tokens,kept_tokens,kv_bytes,offloaded_bytes,uncompressed_bytes,fp16_bytes,prefill_ms,decode_ms,new_tokens,peak_rss,settings,version,timestamp,original_tokens,compress_ms,read_bytes\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{},{},{},{},{},{},{:.3},{}",
            quote(&r.key.model),
            quote(&r.key.method),
            quote(&r.key.protocol),
            quote(&r.key.task),
            quote(&r.key.sample),
            quote(&r.prediction),
            r.score,
            if r.score2.is_nan() {
                String::new()
            } else {
                r.score2.to_string()
            },
            r.prompt_tokens,
            r.kept_tokens,
            r.kv_bytes,
            r.offloaded_bytes,
            r.uncompressed_bytes,
            r.fp16_bytes,
            r.prefill_ms,
            r.decode_ms,
            r.new_tokens,
            r.peak_rss,
            quote(&r.settings.to_json()),
            r.version,
            r.timestamp,
            r.original_tokens,
            r.compress_ms,
            r.read_bytes.map_or(String::new(), |b| format!("{b:.0}"))
        );
    }
    out
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The figures of one report: written beside it as SVG and PNG, and kept (by the file names
/// the markdown links) so that `report.html` can carry them inline.
struct FigureDir<'a> {
    out: &'a Path,
    drawn: BTreeMap<String, String>,
}

impl<'a> FigureDir<'a> {
    fn new(out: &'a Path) -> Self {
        Self {
            out,
            drawn: BTreeMap::new(),
        }
    }

    /// Write a figure as `<stem>.svg` and `<stem>.png`; returns the markdown that shows it.
    fn write(&mut self, stem: &str, alt: &str, svg: &str) -> Result<String> {
        let (svg_file, png_file) = (format!("{stem}.svg"), format!("{stem}.png"));
        write(&self.out.join(&svg_file), svg)?;
        let png = figures::png(svg).map_err(|e| anyhow::anyhow!("drawing {png_file}: {e}"))?;
        write(&self.out.join(&png_file), png)?;
        let shown = format!("![{alt}]({png_file}) ([SVG]({svg_file}))");
        self.drawn.insert(svg_file, svg.to_string());
        self.drawn.insert(png_file, svg.to_string());
        Ok(shown)
    }
}

pub fn run(args: ReportArgs) -> Result<()> {
    if !args.db.exists() {
        anyhow::bail!(
            "no results database at {}: run `longctx run` first, or pass --db",
            args.db.display()
        );
    }
    let stored = Store::open_read_only(&args.db)?.rows()?;
    let (rows, legend) = labelled(as_shown(&stored));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut figures_dir = FigureDir::new(&args.out);
    let mut report = String::from("# longctx report\n\n");
    let _ = writeln!(
        report,
        "From `{}` ({} rows). A method marked `[query-agnostic]` ran under that protocol (context compressed before the question was read); every other row under the paper's (question inside the prompt). Measured ratio: every token seen in the method's uncompressed format / KV bytes held at the end of the sample (16-bit for quantizers, f32 for the baseline and token dropping). \"vs 16-bit\": every token seen at 16 bits / KV bytes held. Scores are means over samples in percent with a 95% bootstrap interval in brackets (2,000 seeded resamples; none for a single sample); ▲ or ▼ marks a method whose paired difference from the same model's baseline on the same samples (5 or more) has an interval that excludes zero. A linear-time or hybrid model run as it is shows as `native (<school>)`: its bytes held are its recurrent state (and local-attention window), the same at every length, and it has no ratio. All rows: `results.csv`.\n",
        args.db.display(),
        rows.len()
    );
    if !legend.is_empty() {
        report +=
            "Methods are shown by their preset's name; the legend gives each one's full spec:\n\n";
        report += &legend_table(&legend);
        report.push('\n');
    }
    report += "## What this run can and cannot show\n\n";
    report += &scope_section(&rows);
    report.push('\n');
    if let Some(tables) = longbench_tables(&rows) {
        report += "## LongBench\n\n";
        report += &tables;
        report.push('\n');
    }
    if let Some(table) = longbench_e_table(&rows) {
        report += "## LongBench-E (score by context length in words)\n\n";
        report += &table;
        report.push('\n');
    }
    if rows.iter().any(is_needle) {
        report += "## Needle (passkey retrieval)\n\n";
        report += &needle_table(&rows);
        report += "\nHeatmaps (length × depth):\n\n";
        for ((model, method), group) in &group(&rows, is_needle) {
            if let Some(svg) = needle_heatmap(model, method, group) {
                let stem = format!("needle_{}_{}", slug(model), slug(method));
                let shown = figures_dir.write(&stem, method, &svg)?;
                let _ = writeln!(report, "- {method}: {shown}");
            }
        }
        report.push('\n');
    }
    if let Some(table) = suite_table(&rows, "ruler/") {
        report += "## RULER\n\nEach task's prompts are fitted to the length in its name, in the model's own tokens (answer included), and scored by RULER's string match (% of the expected strings found).\n\n";
        report += &table;
        report.push('\n');
    }
    if let Some(table) = suite_table(&rows, "infinitebench/") {
        report += "## InfiniteBench (synthetic tasks)\n\nEach task's prompts are fitted to the length in its name, in the model's own tokens, and scored by InfiniteBench's metrics (% right).\n\n";
        report += &table;
        report.push('\n');
    }
    if let Some(table) = suite_table(&rows, "synthetic/") {
        report += "## Synthetic suite\n\n";
        report += &table;
        report.push('\n');
    }
    report += "## Figures\n\n";
    report += &summary_figures(&rows, &mut figures_dir)?;
    report += "\n## Efficiency (measured, every sample)\n\n";
    report += &efficiency_table(&rows);
    if let Some(table) = compression_table(&rows) {
        report += "\nA prompt compressor's prefill tokens per second above are those of the prompt it was given, over its compression and prefill time together. What it did:\n\n";
        report += &table;
    }
    if args.paper {
        report += "\n## The paper's numbers (Table 2) for the methods above\n\n";
        report += &paper_table(&rows);
    }
    write(&args.out.join("results.csv"), csv(&stored))?;
    let path = args.out.join("report.md");
    write(&path, &report)?;
    let html = args.out.join("report.html");
    write(
        &html,
        crate::html::page("longctx report", &report, &figures_dir.drawn),
    )?;
    print!("{report}");
    println!(
        "\nreport: {} (and {}, one self-contained page)",
        path.display(),
        html.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_names_follow_the_paper_tables() {
        assert_eq!(paper_name("baseline").as_deref(), Some("Baseline"));
        assert_eq!(
            paper_name("kivi:bits=2,group=32,residual=128").as_deref(),
            Some("KIVI-2bit")
        );
        assert_eq!(
            paper_name("streamingllm:ratio=4,sinks=0.021,reindex=true").as_deref(),
            Some("StreamLLM-4x")
        );
        assert_eq!(paper_name("h2o-8x").as_deref(), Some("H2O-8x"));
        assert_eq!(paper_name("snapkv-4x"), None);
        assert!(PAPER_TABLE2.lines().any(|l| l.contains(",H2O-4x,")));
    }

    #[test]
    fn categories_leave_passage_count_out_and_mark_missing_datasets() {
        let mut scores = BTreeMap::new();
        scores.insert("passage_count", (5.0, vec![0.05]));
        scores.insert("passage_retrieval_en", (67.0, vec![0.67]));
        scores.insert("qasper", (40.0, vec![0.40]));
        assert_eq!(category_cell(&scores, Category::Synthetic), "67.0");
        assert_eq!(category_cell(&scores, Category::SingleDocQa), "40.0 (1/3)");
        assert_eq!(category_cell(&scores, Category::Code), "-");
        // With samples that vary, the category carries a stratified interval.
        scores.insert("qasper", (50.0, vec![0.0, 1.0, 0.5, 0.5]));
        let cell = category_cell(&scores, Category::SingleDocQa);
        assert!(
            cell.starts_with("50.0 [") && cell.ends_with("] (1/3)"),
            "{cell}"
        );
    }

    /// A stored row of `method` on sample `sample`, scored `score`.
    fn row(method: &str, sample: usize, score: f64) -> ResultRow {
        let mut r = crate::store::tests::row(&sample.to_string(), "");
        r.key.method = method.into();
        r.score = score;
        r
    }

    #[test]
    fn scores_carry_intervals_and_marks_need_enough_pairs() {
        // The method fails 8 of the 10 samples the baseline answers.
        let mut rows: Vec<ResultRow> = (0..10).map(|i| row("baseline", i, 1.0)).collect();
        rows.extend((0..10).map(|i| row("h2o-4x", i, if i < 2 { 1.0 } else { 0.0 })));
        let of = |m: &str| {
            rows.iter()
                .filter(|r| r.key.method == m)
                .collect::<Vec<_>>()
        };
        assert_eq!(score_cell(&of("baseline"), &rows), "100.0 [100.0–100.0]");
        let cell = score_cell(&of("h2o-4x"), &rows);
        assert!(cell.starts_with("20.0 [") && cell.ends_with(" ▼"), "{cell}");
        // Four pairs are too few to judge; one sample has no interval.
        let few: Vec<&ResultRow> = of("h2o-4x").into_iter().skip(6).collect();
        assert!(!score_cell(&few, &rows).contains('▼'));
        assert_eq!(score_cell(&few[..1], &rows), "0.0");
    }

    #[test]
    fn the_scope_says_what_differences_the_samples_can_and_cannot_show() {
        let mut rows: Vec<ResultRow> = (0..10).map(|i| row("baseline", i, 1.0)).collect();
        rows.extend((0..10).map(|i| row("kivi-4bit", i, 1.0)));
        rows.extend((0..10).map(|i| row("h2o-4x", i, if i < 2 { 1.0 } else { 0.0 })));
        let scope = scope_section(&rows);
        assert!(
            scope.contains("| kivi-4bit | 10 | +0.0 [+0.0 to +0.0] |"),
            "{scope}"
        );
        assert!(scope.contains("| h2o-4x | 10 | -80.0 ["), "{scope}");
        assert!(scope.contains("] ▼ |"), "{scope}");
        // Ten agreeing pairs cannot exclude a difference on 3 of 10 samples.
        assert!(scope.contains("(up to 30 points here)"), "{scope}");
        assert!(scope.contains("no LongBench rows"), "{scope}");
        assert!(scope.contains("10 samples per method and task"), "{scope}");
    }

    #[test]
    fn presets_show_by_name_with_a_legend_and_share_a_curve_across_ratios() {
        let row = |method: &str| {
            let mut r = crate::store::tests::row("0", "");
            r.key.method = method.into();
            r
        };
        let four = Method::parse("snapkv-4x").unwrap().to_string();
        let eight = Method::parse("snapkv-8x").unwrap().to_string();
        let custom = "snapkv:ratio=3,window=32,kernel=7,pool=max".to_string();
        let rows = vec![
            row(&four),
            row(&format!("{eight} [query-agnostic]")),
            row(&custom),
            row("native (hybrid)"),
        ];
        let (rows, legend) = labelled(rows);
        let shown: Vec<&str> = rows.iter().map(|r| r.key.method.as_str()).collect();
        assert_eq!(
            shown,
            [
                "snapkv-4x",
                "snapkv-8x [query-agnostic]",
                custom.as_str(),
                "native (hybrid)"
            ]
        );
        assert_eq!(legend.len(), 2);
        assert_eq!(
            (legend[0].0.as_str(), legend[0].1.as_str(), legend[0].2),
            ("snapkv-4x", four.as_str(), "token dropping")
        );
        assert_eq!(series_name("snapkv-4x"), series_name(&custom));
        assert_eq!(
            series_name("snapkv-8x [query-agnostic]"),
            format!("{} [query-agnostic]", series_name(&custom))
        );
    }

    #[test]
    fn methods_sort_by_school_then_ratio() {
        let mut labels = vec![
            "snapkv-8x",
            "h2o-4x",
            "kivi-2bit",
            "native (hybrid)",
            "baseline [query-agnostic]",
            "baseline",
            "llmlingua-2x",
            "snapkv-2x",
        ];
        labels.sort_by_key(|l| (method_rank(l), *l));
        assert_eq!(
            labels,
            [
                "baseline",
                "baseline [query-agnostic]",
                "kivi-2bit",
                "snapkv-2x",
                "h2o-4x",
                "snapkv-8x",
                "llmlingua-2x",
                "native (hybrid)"
            ]
        );
    }
}
