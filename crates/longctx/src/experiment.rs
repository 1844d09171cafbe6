//! Experiment plans: which models, methods and tasks to run, read from a TOML spec (or the
//! built-in default), expanded into work items (one model × method × task × sample each),
//! and sliced into cost-balanced shards for clusters.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use longctx_kv::MAX_STREAM_POSITIONS;
use longctx_tasks::needle::{MAX_GRID_SAMPLES, MAX_WORDS};

use crate::methods::Method;

/// A whole experiment as written in a TOML file. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Models to run; `"default"` is the embedded default model.
    pub models: Vec<ModelSpec>,
    /// Methods to compare: presets or full specs.
    pub methods: Vec<String>,
    /// The needle test, if run.
    pub needle: Option<NeedleSpec>,
    /// The synthetic suite, if run.
    pub synthetic: Option<SyntheticSpec>,
    /// RULER's tasks, if run.
    pub ruler: Option<LengthSuiteSpec>,
    /// InfiniteBench's synthetic tasks, if run.
    pub infinitebench: Option<LengthSuiteSpec>,
    /// LongBench datasets, if run.
    pub longbench: Option<LongBenchSpec>,
    /// How prompts reach the model; each method runs under each protocol listed.
    #[serde(default = "paper_protocol")]
    pub protocols: Vec<Protocol>,
    /// How LongBench prompts longer than `max_length` reach each method.
    #[serde(default)]
    pub truncation: Truncation,
    /// Seed of every generated sample.
    #[serde(default)]
    pub seed: u64,
    /// Worker threads for matrix products (`--threads` overrides; default: all cores).
    /// Not part of the plan: shards may run on machines of different sizes.
    pub threads: Option<usize>,
}

/// How a prompt reaches the model, which decides what a question-aware method may use.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The paper's (and LongBench's): the whole prompt, question included, is the prefill,
    /// so a method compressing at the end of prefill has seen the question.
    Paper,
    /// kvpress's: the context is prefilled and compressed first, then the question is fed
    /// under the compressed cache, so no method can select for the question.
    QueryAgnostic,
}

impl Protocol {
    /// The name stored with each row and shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::QueryAgnostic => "query-agnostic",
        }
    }
}

/// How a LongBench prompt longer than `max_length` reaches a method.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// The benchmark's: methods that attend within a bounded distance (StreamingLLM,
    /// InfLLM) stream the whole input with the budget of `min(L, max_length)` tokens; every
    /// other method reads the prompt cut in the middle to `max_length`.
    #[default]
    Paper,
    /// Every method reads the prompt cut in the middle (LongBench's own rule).
    Middle,
}

fn paper_protocol() -> Vec<Protocol> {
    vec![Protocol::Paper]
}

/// One model of an experiment.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A name from `longctx models` (`"default"` is the default model), a GGUF file, a Hugging
    /// Face directory, or a cached hub id.
    pub path: String,
    /// LongBench prompts longer than this many tokens are cut in the middle (the paper's
    /// `max_length`); default: the model's context minus the dataset's answer length.
    pub max_length: Option<usize>,
}

/// The needle grid.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NeedleSpec {
    /// Number of haystack lengths, evenly spaced.
    pub lengths: usize,
    /// Shortest haystack in words.
    pub min_words: usize,
    /// Longest haystack in words; absent: the longest that fits each model's context
    /// (measured with its tokenizer), as the paper scales its grid to the model.
    pub max_words: Option<usize>,
    /// Depths, evenly spaced over [0, 1].
    pub depths: usize,
    /// Trials per length and depth.
    pub trials: usize,
    /// Most tokens generated per answer (the benchmark's 256).
    pub max_new_tokens: usize,
}

/// The synthetic suite.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// Task names (see `longctx tasks`).
    pub tasks: Vec<String>,
    /// Context length in words.
    pub words: usize,
    /// Samples per task.
    pub samples: usize,
}

/// A suite whose prompts are fitted to lengths in the model's own tokens (RULER,
/// InfiniteBench).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LengthSuiteSpec {
    /// Task names (see `longctx tasks`); every task of the suite when absent.
    pub tasks: Option<Vec<String>>,
    /// Prompt lengths in tokens, the answer's tokens included (RULER's `max_seq_length`).
    pub lengths: Vec<usize>,
    /// Samples per task and length.
    pub samples: usize,
}

impl LengthSuiteSpec {
    /// Check it as the `section` of a spec whose task names `known` accepts.
    fn check(&self, section: &str, known: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        if let Some(t) = self.tasks.iter().flatten().find(|t| !known(t)) {
            anyhow::bail!("unknown {section} task \"{t}\"; run `longctx tasks` for the list");
        }
        if self.tasks.as_ref().is_some_and(Vec::is_empty) || self.lengths.is_empty() {
            anyhow::bail!("{section}.tasks and {section}.lengths must not be empty");
        }
        if self.samples == 0 || self.samples > MAX_GRID_SAMPLES {
            anyhow::bail!(
                "{section}.samples = {} must be between 1 and {MAX_GRID_SAMPLES}",
                self.samples
            );
        }
        if let Some(l) = self.lengths.iter().find(|&&l| l == 0 || l > MAX_WORDS) {
            anyhow::bail!("{section}.lengths: {l} must be between 1 and {MAX_WORDS} tokens");
        }
        Ok(())
    }
}

/// LongBench datasets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LongBenchSpec {
    /// The directory holding `<dataset>.jsonl` files.
    pub dir: PathBuf,
    /// Datasets to run; empty means every dataset whose file is present.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// At most this many samples per dataset (first in file order).
    pub limit: Option<usize>,
}

/// The methods of the built-in experiment: the baseline, KV quantization at 4 and 2 bits,
/// and the paper's token dropping at 4× by recency (StreamingLLM): KIVI-4bit's nominal
/// 3.2× is near dropping's 4×, so the two schools are compared at a like ratio.
pub const DEFAULT_METHODS: [&str; 4] = ["baseline", "kivi-4bit", "kivi-2bit", "streamingllm-4x"];

/// Prompt length of the built-in run's RULER tasks, in the default model's tokens: the
/// longest at which its baseline found every needle of `niah_single_2` and
/// `niah_multikey_1` (3 of 3 each at 1,024; multikey 1 of 3 at 2,048).
pub const DEFAULT_LENGTH: usize = 1024;

impl ExperimentSpec {
    /// The built-in experiment, sized to run in about 3 minutes on a 2-core laptop CPU: the
    /// default model at its effective length (about 1,000 tokens), the passkey needle and
    /// two RULER retrieval tasks, 16 samples per method, so that the bootstrap intervals
    /// tell a method that keeps the baseline's score from one that loses it.
    pub fn builtin() -> Self {
        Self {
            models: vec![ModelSpec {
                path: "default".into(),
                max_length: None,
            }],
            methods: DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
            needle: Some(NeedleSpec {
                lengths: 1,
                min_words: 700,
                max_words: Some(700),
                depths: 3,
                trials: 2,
                max_new_tokens: 32,
            }),
            synthetic: None,
            ruler: Some(LengthSuiteSpec {
                tasks: Some(vec!["niah_single_2".into(), "niah_multikey_1".into()]),
                lengths: vec![DEFAULT_LENGTH],
                samples: 5,
            }),
            infinitebench: None,
            longbench: None,
            protocols: paper_protocol(),
            truncation: Truncation::Paper,
            seed: 0,
            threads: None,
        }
    }

    /// Read a TOML spec; any unknown key, bad value or unknown method is an error naming it.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading experiment spec {}: {e}", path.display()))?;
        let spec: Self = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "experiment spec {}: {}",
                path.display(),
                e.to_string().trim().replace('\n', " ")
            )
        })?;
        spec.check()
            .map_err(|e| anyhow::anyhow!("experiment spec {}: {e}", path.display()))?;
        Ok(spec)
    }

    /// Check what serde cannot: methods parse, tasks exist, counts are positive.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.models.is_empty() || self.methods.is_empty() || self.protocols.is_empty() {
            anyhow::bail!("give at least one model, one method and one protocol");
        }
        for m in &self.methods {
            Method::parse(m)?;
        }
        if let Some(s) = &self.synthetic {
            for t in &s.tasks {
                if longctx_tasks::synthetic::SyntheticTask::by_name(t).is_none() {
                    anyhow::bail!(
                        "unknown synthetic task \"{t}\"; run `longctx tasks` for the list"
                    );
                }
            }
            if s.words == 0 || s.samples == 0 {
                anyhow::bail!("synthetic.words and synthetic.samples must be positive");
            }
            if s.words > MAX_WORDS || s.samples > MAX_GRID_SAMPLES {
                anyhow::bail!(
                    "synthetic.words = {} and synthetic.samples = {} must be at most {MAX_WORDS} and {MAX_GRID_SAMPLES}",
                    s.words,
                    s.samples
                );
            }
        }
        if let Some(r) = &self.ruler {
            r.check("ruler", |t| {
                longctx_tasks::ruler::RulerTask::by_name(t).is_some()
            })?;
        }
        if let Some(i) = &self.infinitebench {
            i.check("infinitebench", |t| {
                longctx_tasks::infinitebench::InfiniteTask::by_name(t).is_some()
            })?;
        }
        if let Some(n) = &self.needle {
            longctx_tasks::needle::NeedleGrid::new(
                n.min_words,
                n.max_words.unwrap_or(n.min_words),
                n.lengths,
                n.depths,
                n.trials,
                self.seed,
            )?;
            if n.max_new_tokens == 0 || n.max_new_tokens > MAX_STREAM_POSITIONS {
                anyhow::bail!(
                    "needle.max_new_tokens = {} must be between 1 and {MAX_STREAM_POSITIONS}",
                    n.max_new_tokens
                );
            }
        }
        if self.threads == Some(0) {
            anyhow::bail!("threads must be at least 1");
        }
        if let Some(lb) = &self.longbench {
            for d in &lb.datasets {
                longctx_tasks::longbench::Dataset::by_name(d)?;
            }
        }
        Ok(())
    }
}

/// Most shards a plan may be cut into (the balancer keeps one load per shard).
pub const MAX_SHARDS: usize = 1 << 16;

/// Which slice of the plan a process runs: shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `i/N` with `0 <= i < N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count && count <= MAX_SHARDS => {
                Ok(Self { index, count })
            }
            _ => Err(format!(
                "--shard {s}: expected i/N with 0 <= i < N <= {MAX_SHARDS}, e.g. 0/4"
            )),
        }
    }
}

/// Assign items of the given costs to `count` shards, most expensive first, each to the
/// currently lightest shard (ties to the lower index): deterministic and balanced.
pub fn balance(costs: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0f64; count];
    let mut owner = vec![0; costs.len()];
    for i in order {
        let lightest = (0..count)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .expect("at least one shard");
        load[lightest] += costs[i];
        owner[i] = lightest;
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_reject_unknown_keys_and_methods() {
        let dir = std::env::temp_dir().join(format!("longctx-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let good = write(
            "good.toml",
            "methods = [\"baseline\", \"h2o-4x\"]\n[[models]]\npath = \"default\"\n[needle]\nlengths = 2\nmin_words = 100\nmax_words = 200\ndepths = 2\ntrials = 1\nmax_new_tokens = 16\n",
        );
        let spec = ExperimentSpec::from_file(&good).unwrap();
        assert_eq!(spec.methods.len(), 2);
        let err = |text: &str| {
            ExperimentSpec::from_file(&write("bad.toml", text))
                .unwrap_err()
                .to_string()
        };
        assert!(err("methods = [\"baseline\"]\nmodles = []\n").contains("unknown field `modles`"));
        assert!(
            err("methods = [\"h2o-5x\"]\n[[models]]\npath = \"default\"\n")
                .contains("unknown method \"h2o-5x\"")
        );
        assert!(err("methods = [\"baseline\"]\n[[models]]\npath = \"default\"\n[synthetic]\ntasks = [\"nope\"]\nwords = 10\nsamples = 1\n")
            .contains("unknown synthetic task \"nope\""));
        assert!(ExperimentSpec::builtin().check().is_ok());
    }

    #[test]
    fn shards_are_balanced_deterministic_and_parsed_strictly() {
        let costs = [5.0, 1.0, 4.0, 2.0, 3.0, 3.0];
        let owner = balance(&costs, 3);
        assert_eq!(owner, balance(&costs, 3));
        let mut load = [0.0; 3];
        for (c, o) in costs.iter().zip(&owner) {
            load[*o] += c;
        }
        assert_eq!(load, [6.0, 6.0, 6.0]);
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("0/18446744073709551615".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
