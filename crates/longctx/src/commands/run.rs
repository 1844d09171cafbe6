use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use longctx_models::{generate_greedy_fed, GenerationSettings, LoadedModel, TextTokenizer};
use longctx_tasks::infinitebench::InfiniteTask;
use longctx_tasks::longbench::{self, Dataset, OnBadLine, DATASETS};
use longctx_tasks::needle::{self, Haystack, NeedleGrid};
use longctx_tasks::prompt::Prompt;
use longctx_tasks::ruler::{RulerData, RulerTask};
use longctx_tasks::synthetic::SyntheticTask;
use sha2::{Digest, Sha256};

mod cost;
mod fitting;
mod progress;

use cost::ModelCost;
use fitting::{fitted_prompt, model_settings, row_settings, Fitted};
use progress::Progress;

use super::{install, ModelArgs};
use crate::compress::{CompressorModel, PromptCompressor, TokenClassifier};
use crate::experiment::{
    balance, ExperimentSpec, LengthSuiteSpec, LongBenchSpec, Protocol, Shard, Truncation,
};
use crate::methods::{presets, Method};
use crate::store::{ResultRow, RowKey, Settings, Store, MODEL_SCHOOL};
use crate::tokenize::haystack_tokens_per_word;
use crate::{assets, head_patterns, memory};

/// Options that choose the plan, shared by `run` and `plan`.
#[derive(Args, Clone)]
pub struct PlanArgs {
    /// An experiment spec (TOML); without it, the built-in experiment.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Methods to compare instead of the spec's: presets or specs, comma-separated (a
    /// spec's own `key=value` settings stay with it).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// The paper's full grid: every preset (all methods at 2/4/6/8x).
    #[arg(long, conflicts_with = "methods")]
    full: bool,
    /// LongBench's data directory: adds every dataset whose file is present.
    #[arg(long)]
    longbench_dir: Option<PathBuf>,
    /// At most this many LongBench samples per dataset.
    #[arg(long)]
    longbench_limit: Option<usize>,
    /// Protocols to run every method under, comma-separated, instead of the spec's:
    /// `paper` (the question inside the prefill) or `query-agnostic` (context compressed
    /// first, then the question) [default: paper].
    #[arg(long, value_delimiter = ',', value_enum)]
    protocols: Option<Vec<Protocol>>,
    /// How LongBench prompts longer than max_length reach each method, instead of the
    /// spec's: `paper` (StreamingLLM and InfLLM stream the whole input, the others read it
    /// cut in the middle) or `middle` (every method reads it cut) [default: paper].
    #[arg(long, value_enum)]
    truncation: Option<Truncation>,
    /// Run only this slice of the plan: shard i of N (0-based), cost-balanced.
    #[arg(long)]
    shard: Option<Shard>,
    #[command(flatten)]
    model: ModelArgs,
}

/// `longctx plan`.
#[derive(Args)]
pub struct PlanCommandArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Also write each sample's prompt text (before any chat template or truncation) to
    /// DIR/<task>/<sample>.txt, to reproduce a sample with another tool.
    #[arg(long, value_name = "DIR")]
    dump_prompts: Option<PathBuf>,
}

/// `longctx run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// The results database.
    #[arg(long, default_value = "results/longctx.db")]
    db: PathBuf,
    /// Run again, and replace, the stored samples whose settings differ from this run's
    /// (without it, such a sample is an error that names the setting).
    #[arg(long)]
    replace: bool,
}

/// What one sample asks of the model and how its answer is scored.
enum Job {
    Needle {
        key: String,
    },
    Synthetic {
        task: SyntheticTask,
        answers: Vec<String>,
    },
    Ruler {
        task: RulerTask,
        answers: Vec<String>,
    },
    Infinite {
        task: InfiniteTask,
        answer: String,
    },
    LongBench {
        dataset: Dataset,
        sample: Box<longbench::Sample>,
    },
}

/// Builds one sample of a length-fitted suite: (task name, length, token counter, seed,
/// index) → the prompt, its answer length and how it is scored.
type SuiteBuilder<'a> =
    dyn Fn(&str, usize, &dyn Fn(&str) -> usize, u64, usize) -> Result<(Prompt, usize, Job)> + 'a;

/// A length-fitted suite's samples for model `m` (`suite` names its tasks, `every` when
/// the spec lists none), each prompt fitted to its length in the model's tokens, without
/// chat template (RULER's `base` template; InfiniteBench's open-model templates).
fn length_suite_samples(
    spec: &LengthSuiteSpec,
    suite: &str,
    loaded: &LoadedModel,
    m: usize,
    tokens_per_word: f64,
    seed: u64,
    build: &SuiteBuilder,
) -> Result<Vec<TaskSample>> {
    let context = loaded.model.trained_context();
    let count = |text: &str| {
        loaded
            .prompt_tokens(text, false)
            .map_or(usize::MAX, |t| t.len())
    };
    let every: Vec<String> = match suite {
        "ruler" => RulerTask::ALL
            .iter()
            .map(|t| t.name().to_string())
            .collect(),
        _ => InfiniteTask::ALL
            .iter()
            .map(|t| t.name().to_string())
            .collect(),
    };
    let mut samples = Vec::new();
    for name in spec.tasks.as_ref().unwrap_or(&every) {
        for &length in &spec.lengths {
            if length > context {
                anyhow::bail!(
                    "{suite}.lengths: {length} tokens is longer than model {}'s context of {context}",
                    loaded.source.display()
                );
            }
            for index in 0..spec.samples {
                let (prompt, max_new_tokens, job) = build(name, length, &count, seed, index)?;
                samples.push(TaskSample {
                    task: format!("{suite}/{name}:length={length}"),
                    id: format!("index={index}"),
                    model: Some(m),
                    chat: false,
                    max_new_tokens,
                    words: (length as f64 / tokens_per_word) as usize,
                    prompt,
                    job,
                });
            }
        }
    }
    Ok(samples)
}

/// One sample of one task, to run under every method.
struct TaskSample {
    task: String,
    id: String,
    /// The only model that runs it (a needle grid fitted to that model), or every model.
    model: Option<usize>,
    prompt: Prompt,
    chat: bool,
    max_new_tokens: usize,
    /// Words of context, for the cost estimate.
    words: usize,
    job: Job,
}

/// One unit of work: a model × method × protocol × task sample.
pub struct WorkItem {
    model: usize,
    method: usize,
    protocol: Protocol,
    sample: usize,
}

/// The expanded plan.
pub struct Plan {
    spec: ExperimentSpec,
    methods: Vec<Method>,
    samples: Vec<TaskSample>,
    items: Vec<WorkItem>,
    /// Each spec model's cost, for estimates.
    costs: Vec<ModelCost>,
}

/// Comma-separated methods as clap splits them, with each spec's settings put back: a
/// piece with `=` and no `:` (`window=200`) continues the spec before it
/// (`llmlingua:rate=0.25`), since a method name has neither.
fn rejoin_specs(pieces: &[String]) -> Vec<String> {
    let mut methods: Vec<String> = Vec::new();
    for piece in pieces {
        match methods.last_mut() {
            Some(last) if piece.contains('=') && !piece.contains(':') && last.contains(':') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => methods.push(piece.clone()),
        }
    }
    methods
}

impl PlanArgs {
    /// The spec with command-line overrides applied.
    fn spec(&self) -> Result<ExperimentSpec> {
        let mut spec = match &self.spec {
            Some(path) => ExperimentSpec::from_file(path)?,
            None => ExperimentSpec::builtin(),
        };
        if let Some(methods) = &self.methods {
            spec.methods = rejoin_specs(methods);
        }
        if let Some(protocols) = &self.protocols {
            spec.protocols = protocols.clone();
        }
        if let Some(truncation) = self.truncation {
            spec.truncation = truncation;
        }
        if self.full {
            spec.methods = presets().into_iter().map(|p| p.name).collect();
        }
        if let Some(dir) = &self.longbench_dir {
            spec.longbench = Some(LongBenchSpec {
                dir: dir.clone(),
                datasets: Vec::new(),
                limit: self.longbench_limit,
            });
        }
        if self.model.model.is_some() {
            spec.models.truncate(1);
            spec.models[0].path = self.model.model.clone().unwrap_or_default();
        }
        spec.check()?;
        if spec.needle.is_none()
            && spec.synthetic.is_none()
            && spec.ruler.is_none()
            && spec.infinitebench.is_none()
            && spec.longbench.is_none()
        {
            anyhow::bail!(
                "the experiment has no tasks: add [needle], [synthetic], [ruler], [infinitebench] or [longbench] to the spec, or pass --longbench-dir"
            );
        }
        Ok(spec)
    }

    /// How to load model `m` of the spec: its path, and the spec's threads unless
    /// `--threads` is given; `probe` holds no dense weight copies (to read the tokenizer and
    /// context only).
    fn model_args(&self, spec: &ExperimentSpec, m: usize, probe: bool) -> ModelArgs {
        let mut model = self.model.clone();
        let path = &spec.models[m].path;
        model.model = (path != "default").then(|| path.clone());
        model.threads = model.threads.or(spec.threads);
        model.dense_weights &= !probe;
        model
    }

    /// Expand the plan (tasks are built from the haystack and data files).
    pub fn plan(&self) -> Result<Plan> {
        let spec = self.spec()?;
        let methods: Vec<Method> = spec
            .methods
            .iter()
            .map(|m| Method::parse(m))
            .collect::<Result<_, _>>()?;
        // The LongBench files, checked before any model or data is fetched.
        let longbench_files = match &spec.longbench {
            Some(lb) => Some(longbench_files(lb)?),
            None => None,
        };
        let mut samples = Vec::new();
        let haystack = match spec.needle.is_some() || spec.synthetic.is_some() {
            true => Some(Haystack::from_dir(&assets::haystack_dir()?)?),
            false => None,
        };
        let ruler = match &spec.ruler {
            Some(r) => Some((r, RulerData::from_dir(&assets::ruler_dir()?)?)),
            None => None,
        };
        // Every model's context and cost, read from its file (weights stay quantized).
        let mut contexts = Vec::new();
        let mut costs = Vec::new();
        for m in 0..spec.models.len() {
            let loaded = self.model_args(&spec, m, true).load_bare()?;
            let context = loaded.model.context_limit();
            let tokens_per_word = haystack.as_ref().map_or(cost::TOKENS_PER_WORD, |h| {
                haystack_tokens_per_word(&loaded.tokenizer, context, h)
            });
            let fitted = |suite: &LengthSuiteSpec, name: &str, build: &SuiteBuilder| {
                length_suite_samples(suite, name, &loaded, m, tokens_per_word, spec.seed, build)
            };
            if let Some((r, data)) = &ruler {
                samples.extend(fitted(r, "ruler", &|name, length, count, seed, index| {
                    let task = RulerTask::by_name(name).expect("checked with the spec");
                    let s = task.generate(data, length, count, seed, index)?;
                    let job = Job::Ruler {
                        task,
                        answers: s.answers,
                    };
                    Ok((s.prompt, task.tokens_to_generate(), job))
                })?);
            }
            if let Some(i) = &spec.infinitebench {
                samples.extend(fitted(
                    i,
                    "infinitebench",
                    &|name, length, count, seed, index| {
                        let task = InfiniteTask::by_name(name).expect("checked with the spec");
                        let s = task.generate(length, count, seed, index)?;
                        let job = Job::Infinite {
                            task,
                            answer: s.answer,
                        };
                        Ok((s.prompt, task.tokens_to_generate(), job))
                    },
                )?);
            }
            contexts.push(context);
            costs.push(ModelCost {
                profile: loaded.model.compute_profile(),
                tokens_per_word,
            });
        }
        if let Some(haystack) = &haystack {
            if let Some(n) = &spec.needle {
                // One grid for every model, or without max_words one per model, its longest
                // haystack the longest that fits the model's context.
                let longest: Vec<(Option<usize>, usize)> = match n.max_words {
                    Some(words) => vec![(None, words)],
                    None => (0..spec.models.len())
                        .map(|m| {
                            let per_word = costs[m].tokens_per_word;
                            let words =
                                needle::fitting_words(contexts[m], per_word, n.max_new_tokens);
                            (Some(m), words)
                        })
                        .collect(),
                };
                for (model, max_words) in longest {
                    let grid = NeedleGrid::new(
                        n.min_words.min(max_words),
                        max_words,
                        n.lengths,
                        n.depths,
                        n.trials,
                        spec.seed,
                    )?;
                    for s in grid.samples(haystack) {
                        samples.push(TaskSample {
                            task: format!("needle/passkey:max_new_tokens={}", n.max_new_tokens),
                            id: format!(
                                "words={} depth={:.3} trial={}",
                                s.length, s.depth, s.trial
                            ),
                            model,
                            chat: needle::USES_CHAT_TEMPLATE,
                            max_new_tokens: n.max_new_tokens,
                            words: s.length,
                            prompt: s.prompt,
                            job: Job::Needle { key: s.key },
                        });
                    }
                }
            }
            if let Some(syn) = &spec.synthetic {
                for name in &syn.tasks {
                    let task = SyntheticTask::by_name(name).expect("checked with the spec");
                    for index in 0..syn.samples {
                        let s = task.generate(haystack, syn.words, spec.seed, index);
                        samples.push(TaskSample {
                            task: format!("synthetic/{name}:words={}", syn.words),
                            id: format!("index={index}"),
                            model: None,
                            chat: true,
                            max_new_tokens: task.max_new_tokens(),
                            words: syn.words,
                            prompt: s.prompt,
                            job: Job::Synthetic {
                                task,
                                answers: s.answers,
                            },
                        });
                    }
                }
            }
        }
        if let (Some(lb), Some(files)) = (&spec.longbench, longbench_files) {
            for file in files {
                let dataset = Dataset::by_name(&file)?;
                let loaded = longbench::load(&lb.dir, &file, OnBadLine::Fail)?;
                for (i, sample) in loaded
                    .samples
                    .into_iter()
                    .take(lb.limit.unwrap_or(usize::MAX))
                    .enumerate()
                {
                    let (task, id) = longbench_key(&file, i + 1, &sample);
                    samples.push(TaskSample {
                        task,
                        id,
                        model: None,
                        chat: dataset.uses_chat_template(),
                        max_new_tokens: dataset.max_new_tokens(),
                        words: sample.length,
                        prompt: dataset.prompt(&sample),
                        job: Job::LongBench {
                            dataset,
                            sample: Box::new(sample),
                        },
                    });
                }
            }
        }
        let mut items = Vec::new();
        for model in 0..spec.models.len() {
            for method in 0..methods.len() {
                for &protocol in &spec.protocols {
                    for (sample, s) in samples.iter().enumerate() {
                        if s.model.is_some_and(|only| only != model) {
                            continue;
                        }
                        items.push(WorkItem {
                            model,
                            method,
                            protocol,
                            sample,
                        });
                    }
                }
            }
        }
        for item in &items {
            if let Some(c) = methods[item.method].compressor() {
                compressible(&samples[item.sample], item.protocol, c)?;
            }
        }
        if items.is_empty() {
            anyhow::bail!(
                "the plan has no samples to run: check the spec's tasks (a LongBench limit of 0, empty data files, a needle grid with no length)"
            );
        }
        if let Some(shard) = self.shard {
            let seconds: Vec<f64> = items
                .iter()
                .map(|i| estimate(&costs[i.model], &methods[i.method], &samples[i.sample]))
                .collect();
            let owner = balance(&seconds, shard.count);
            items = items
                .into_iter()
                .zip(owner)
                .filter(|(_, o)| *o == shard.index)
                .map(|(i, _)| i)
                .collect();
        }
        Ok(Plan {
            spec,
            methods,
            samples,
            items,
            costs,
        })
    }
}

impl Plan {
    /// A work item's estimated seconds on this project's 2-core machine.
    fn estimated_seconds(&self, item: &WorkItem) -> f64 {
        let s = &self.samples[item.sample];
        estimate(&self.costs[item.model], &self.methods[item.method], s)
    }

    /// A fingerprint of what decides the plan's rows: the models (file names and
    /// max_length), the methods' full specs, the protocols and every sample's task, id,
    /// prompt (and where its question begins) and answer length. Shards of one plan share it wherever their files lie; `merge` refuses
    /// databases whose fingerprints differ.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |text: &str| {
            h.update(text.as_bytes());
            h.update([0]);
        };
        for m in &self.spec.models {
            part(&model_name(Path::new(&m.path)));
            part(&format!("{:?}", m.max_length));
        }
        for m in &self.methods {
            part(&m.to_string());
        }
        for p in &self.spec.protocols {
            part(p.name());
        }
        for s in &self.samples {
            part(&s.task);
            part(&s.id);
            part(&s.prompt.text);
            part(&s.prompt.question_at.to_string());
            part(&s.max_new_tokens.to_string());
        }
        format!("{:x}", h.finalize())[..16].to_string()
    }
}

/// A sample's estimated seconds under a method on a model: a prompt compressor's time
/// scoring the prompt, and the shorter prompt it leaves, or a cache's replay of the prompt
/// (KVzip), included.
fn estimate(cost: &ModelCost, method: &Method, s: &TaskSample) -> f64 {
    let words = s.words as f64;
    match method.compressor() {
        Some(c) => {
            // A target in tokens leaves an unknown share; count the prompt whole.
            let kept = c.rate().unwrap_or(1.0);
            cost.compressed_seconds(words, kept, c.prefills(), s.max_new_tokens)
        }
        None => cost.compressed_seconds(words, 1.0, method.extra_prefills(), s.max_new_tokens),
    }
}

/// The store's task and sample id of a LongBench row (`line` counts from 1). LongBench-E
/// files (`<name>_e`) are tasks of their own, and their ids carry the sample's length in
/// words, which the report buckets by.
pub(crate) fn longbench_key(
    file: &str,
    line: usize,
    sample: &longbench::Sample,
) -> (String, String) {
    let id = if sample.id.is_empty() {
        format!("line={line}")
    } else {
        sample.id.clone()
    };
    match file.strip_suffix("_e") {
        Some(name) => (
            format!("longbench-e/{name}"),
            format!("length={} {id}", sample.length),
        ),
        None => (format!("longbench/{file}"), id),
    }
}

/// The length in words that a LongBench-E sample id carries.
pub(crate) fn longbench_e_length(id: &str) -> Option<usize> {
    id.split_once(' ')?.0.strip_prefix("length=")?.parse().ok()
}

/// `longctx plan`: the cells and their estimated cost, without running anything.
pub fn print_plan(args: PlanCommandArgs) -> Result<()> {
    let plan = args.plan.plan()?;
    if let Some(dir) = &args.dump_prompts {
        for s in &plan.samples {
            let folder = dir.join(super::slug(&s.task));
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("creating {}", folder.display()))?;
            let path = folder.join(format!("{}.txt", super::slug(&s.id)));
            std::fs::write(&path, &s.prompt.text)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!(
            "{} prompts written under {}",
            plan.samples.len(),
            dir.display()
        );
    }
    let mut cells: Vec<(String, String, String, usize, f64)> = Vec::new();
    for item in &plan.items {
        let s = &plan.samples[item.sample];
        let key = (
            plan.spec.models[item.model].path.clone(),
            method_label(&plan.methods[item.method], item.protocol),
            s.task.clone(),
        );
        match cells
            .iter_mut()
            .find(|c| (&c.0, &c.1, &c.2) == (&key.0, &key.1, &key.2))
        {
            Some(c) => {
                c.3 += 1;
                c.4 += plan.estimated_seconds(item);
            }
            None => cells.push((key.0, key.1, key.2, 1, plan.estimated_seconds(item))),
        }
    }
    println!("| model | method | task | samples | est. minutes |");
    println!("|---|---|---|--:|--:|");
    for (model, method, task, n, secs) in &cells {
        println!("| {model} | {method} | {task} | {n} | {:.1} |", secs / 60.0);
    }
    let total: f64 = cells.iter().map(|c| c.4).sum();
    println!(
        "\n{} cells, {} samples, about {:.0} minutes on a 2-core CPU, each model's arithmetic at the rates measured with the default model (plan {})",
        cells.len(),
        plan.items.len(),
        total / 60.0,
        plan.fingerprint()
    );
    Ok(())
}

/// Seconds since the Unix epoch, as text.
fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

/// How a method and protocol are shown in logs and plans: the spec, with the protocol when
/// it is not the paper's.
fn method_label(method: &Method, protocol: Protocol) -> String {
    match protocol {
        Protocol::Paper => method.to_string(),
        other => format!("{method} [{}]", other.name()),
    }
}

/// How a sample's answer ends. With `stop_at_newline` (samsum) it is LongBench's pred.py:
/// `eos_token_id = [eos, encode("\n")[-1]]` and `min_length = prompt + 1`, so the exact
/// newline token ends the answer but neither it nor end-of-sequence can be the first token.
fn generation_settings(
    tokenizer: &TextTokenizer,
    max_new_tokens: usize,
    stop_at_newline: bool,
) -> Result<GenerationSettings> {
    let mut stop_tokens = tokenizer.stop_tokens().to_vec();
    if stop_at_newline {
        let newline = tokenizer.encode("\n", false)?;
        stop_tokens.extend(newline.last());
    }
    Ok(GenerationSettings {
        max_new_tokens,
        stop_tokens,
        min_new_tokens: usize::from(stop_at_newline),
    })
}

/// Whether a prompt compressor can run on a sample under a protocol: a LongBench sample needs
/// a context field to compress; a task whose whole prompt is compressed (the needle, the
/// synthetic tasks) keeps no question apart, which the query-agnostic protocol needs.
fn compressible(s: &TaskSample, protocol: Protocol, c: &PromptCompressor) -> Result<()> {
    let name = c.label();
    if c.reads_question() && protocol == Protocol::QueryAgnostic {
        anyhow::bail!(
            "{name} reads the question to compress the context, which the query-agnostic protocol withholds: run it under --protocols paper"
        );
    }
    let question = match &s.job {
        Job::LongBench { sample, .. } if sample.context.trim().is_empty() => anyhow::bail!(
            "{} sample {}: its context field is empty, so {name} has nothing to compress: run this task with a KV method, or drop the sample",
            s.task,
            s.id
        ),
        Job::LongBench { sample, .. } => sample.input.as_str(),
        _ if c.reads_question() => s.prompt.question(),
        _ if protocol == Protocol::QueryAgnostic => anyhow::bail!(
            "{}: {name} compresses this task's whole prompt, question included (the benchmark's rule), so the query-agnostic protocol has no question to append: run it under --protocols paper",
            s.task
        ),
        _ => "",
    };
    if c.reads_question() && question.trim().is_empty() {
        anyhow::bail!(
            "{} sample {}: it has no question, which {name} needs: run this task with llmlingua (question=none)",
            s.task,
            s.id
        );
    }
    Ok(())
}

/// A sample's prompt after `compressor` (running `model`), and the time that took:
/// LongBench's context field compressed and the template filled again (instruction and
/// question kept), or the whole prompt for the other tasks (LongLLMLingua: their context
/// part, read with their question part, which is kept).
fn compressed_prompt(
    compressor: &PromptCompressor,
    model: CompressorModel,
    s: &TaskSample,
) -> Result<(Prompt, f64)> {
    let started = Instant::now();
    let prompt = match &s.job {
        Job::LongBench { dataset, sample } => {
            let context = compressor.compress(model, &sample.context, &sample.input)?;
            dataset.prompt(&longbench::Sample {
                context,
                ..(**sample).clone()
            })
        }
        _ if compressor.reads_question() => {
            let context = &s.prompt.text[..s.prompt.question_at];
            let question = s.prompt.question();
            Prompt::new(compressor.compress(model, context, question)?, question)
        }
        _ => Prompt::new(compressor.compress(model, &s.prompt.text, "")?, ""),
    };
    Ok((prompt, started.elapsed().as_secs_f64() * 1e3))
}

/// A compressor's model, loaded once for a run.
enum LoadedCompressor {
    /// LLMLingua's scorer (`None`: the model under test itself), and LongLLMLingua's second
    /// instance of it.
    Scorer(Option<Box<LoadedModel>>, Option<Box<LoadedModel>>),
    Classifier(Box<TokenClassifier>),
}

/// Where a compressor's model is: LLMLingua's scorer as `--model` finds models, or
/// LLMLingua-2's classifier folder; one that cannot be found is an error naming it.
fn compressor_model_path(
    model: &ModelArgs,
    method: &Method,
    compressor: &PromptCompressor,
) -> Result<PathBuf> {
    match compressor {
        PromptCompressor::LlmLingua(c) => scorer_args(model, &c.scorer).model_path().with_context(|| {
            format!(
                "method \"{method}\": its scorer \"{}\" cannot be loaded (scorer= takes default, a name from `longctx models`, or a model file or folder)",
                c.scorer
            )
        }),
        PromptCompressor::LlmLingua2(c) => {
            let folder = match c.model.as_str() {
                PromptCompressor::DEFAULT_SCORER => crate::compress::llmlingua2_default_folder(),
                path => PathBuf::from(path),
            };
            if !folder.join("config.json").is_file() {
                anyhow::bail!(
                    "method \"{method}\": LLMLingua-2's classifier is not in {}: it cannot be fetched here; put microsoft/llmlingua-2-xlm-roberta-large-meetingbank there, prepared with scripts/llmlingua2_prepare.py (README, \"LLMLingua-2\"), or give model=FOLDER",
                    folder.display()
                );
            }
            Ok(folder)
        }
    }
}

/// Run one sample under the installed method, score and measure it.
fn run_sample(
    loaded: &mut LoadedModel,
    key: RowKey,
    fitted: &Fitted,
    settings: Settings,
    s: &TaskSample,
    compression: Compression,
) -> Result<ResultRow> {
    let stop_at_newline =
        matches!(&s.job, Job::LongBench { dataset, .. } if dataset.stops_at_newline());
    let generation_settings =
        generation_settings(&loaded.tokenizer, s.max_new_tokens, stop_at_newline)?;
    let generation = generate_greedy_fed(
        loaded.model.as_mut(),
        &fitted.tokens,
        fitted.feed,
        &generation_settings,
        |_| true,
    )?;
    let prediction = loaded.tokenizer.decode(&generation.tokens, true)?;
    let (score, score2) = match &s.job {
        Job::Needle { key } => needle::score(key, &prediction),
        Job::Synthetic { task, answers } => (task.score(&prediction, answers), f64::NAN),
        Job::Ruler { task, answers } => (task.score(&prediction, answers), f64::NAN),
        Job::Infinite { task, answer } => (task.score(&prediction, answer), f64::NAN),
        Job::LongBench { dataset, sample } => (
            dataset.score(&prediction, &sample.answers, &sample.all_classes),
            f64::NAN,
        ),
    };
    // A compressor's savings are against the prompt it was given: bytes follow the tokens
    // it removed.
    let seen = (compression.original_tokens + generation.decode_steps) as i64;
    // A recurrent model's state stands where KV bytes stand; it keeps no tokens and has no
    // 16-bit KV to compare with (zero).
    let (kept_tokens, kv_bytes, offloaded_bytes, uncompressed_bytes, fp16_bytes) =
        match loaded.model.cache() {
            Some(cache) => (
                cache.mean_kept_tokens().round() as i64,
                cache.stored_bytes() as i64,
                cache.offloaded_bytes() as i64,
                cache.uncompressed_bytes_per_token() as i64 * seen,
                cache.shape().fp16_bytes_per_token() as i64 * seen,
            ),
            None => {
                let state = loaded.model.state_bytes() as i64;
                (0, state, 0, state, 0)
            }
        };
    Ok(ResultRow {
        key,
        prediction,
        score,
        score2,
        prompt_tokens: fitted.tokens.len() as i64,
        original_tokens: compression.original_tokens as i64,
        compress_ms: compression.ms,
        kept_tokens,
        kv_bytes,
        offloaded_bytes,
        uncompressed_bytes,
        fp16_bytes,
        prefill_ms: generation.prefill.as_secs_f64() * 1e3,
        decode_ms: generation.decode.as_secs_f64() * 1e3,
        new_tokens: generation.decode_steps as i64,
        peak_rss: memory::peak_rss_bytes().unwrap_or(0) as i64,
        read_bytes: loaded
            .model
            .cache()
            .and_then(|c| c.decode_reads())
            .and_then(|r| r.per_step()),
        settings,
        version: env!("CARGO_PKG_VERSION").into(),
        timestamp: now(),
    })
}

/// What a prompt compressor did to a sample: the prompt's tokens before it (the fitted
/// prompt's for other methods) and the milliseconds it took.
struct Compression {
    original_tokens: usize,
    ms: f64,
}

/// The name results are stored under: the model file's stem (the default model's is
/// `SmolLM2-135M-Instruct.Q4_1`), the same wherever the file lives.
fn model_name(path: &Path) -> String {
    path.file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned())
}

/// A work item's estimated cost in the progress bars' unit (milliseconds).
fn cost_units(plan: &Plan, item: &WorkItem) -> u64 {
    (plan.estimated_seconds(item) * 1e3) as u64
}

pub fn run(args: RunArgs) -> Result<()> {
    // The whole plan (specs, tasks, data files) is checked before the database is touched.
    let plan = args.plan.plan()?;
    let mut store = Store::open(&args.db)?;
    match run_plan(&args, &plan, &mut store) {
        Ok(()) => Ok(()),
        Err(e) => {
            // A database this run created and never wrote a row to is removed again.
            store.discard_if_unused();
            Err(e)
        }
    }
}

/// How LLMLingua's scorer is loaded: the run's model options, with the scorer's file
/// (`default`: the default model).
fn scorer_args(model: &ModelArgs, scorer: &str) -> ModelArgs {
    let mut args = model.clone();
    args.model = (scorer != PromptCompressor::DEFAULT_SCORER).then(|| scorer.to_string());
    args.dense_weights = false;
    args
}

/// The key a work item's row is stored under.
fn row_key(plan: &Plan, names: &[String], item: &WorkItem) -> RowKey {
    let sample = &plan.samples[item.sample];
    RowKey {
        model: names[item.model].clone(),
        method: plan.methods[item.method].to_string(),
        protocol: item.protocol.name().into(),
        task: sample.task.clone(),
        sample: sample.id.clone(),
    }
}

fn run_plan(args: &RunArgs, plan: &Plan, store: &mut Store) -> Result<()> {
    store.claim_plan(&plan.fingerprint())?;
    let total = plan.items.len();
    let models: Vec<ModelArgs> = (0..plan.spec.models.len())
        .map(|m| args.plan.model_args(&plan.spec, m, false))
        .collect();
    let names: Vec<String> = models
        .iter()
        .map(|m| Ok(model_name(&m.model_path()?)))
        .collect::<Result<_>>()?;
    // Before anything runs: every prompt is built for its model (a generated prompt that
    // does not fit is an error now, not hours in), and every stored row is checked against
    // the settings this run would use.
    let mut pending: Vec<(&WorkItem, Settings)> = Vec::new();
    let mut stale: Vec<(RowKey, Vec<String>)> = Vec::new();
    // Each compressor's scoring model and its file's hash: a compressed prompt follows from
    // the prompt, the method's spec and the scorer, so rows record the scorer.
    let scorers: Vec<Option<(PathBuf, String)>> = plan
        .methods
        .iter()
        .map(|method| {
            method
                .compressor()
                .map(|c| {
                    let path = compressor_model_path(&models[0], method, c)?;
                    let sha = crate::assets::model_sha256(&path)
                        .with_context(|| format!("reading {} to fingerprint it", path.display()))?;
                    Ok((path, sha))
                })
                .transpose()
        })
        .collect::<Result<_>>()?;
    for (m, model_spec) in plan.spec.models.iter().enumerate() {
        let mine: Vec<&WorkItem> = plan.items.iter().filter(|i| i.model == m).collect();
        if mine.is_empty() {
            continue;
        }
        let mut probe = args.plan.model_args(&plan.spec, m, true).load_bare()?;
        let base = model_settings(&models[m], model_spec.max_length, plan.spec.seed)?;
        // The report shows a linear-time or hybrid model under its school. Transformers'
        // rows carry no such setting, so rows stored before it existed stay valid.
        let base = match probe.model.school() {
            Some(school) => base.with(MODEL_SCHOOL, school),
            None => base,
        };
        let streams: Vec<bool> = plan
            .methods
            .iter()
            .map(|method| {
                install(&mut probe, method)?;
                Ok(probe.model.cache().is_some_and(|c| c.streams()))
            })
            .collect::<Result<_>>()?;
        // DuoAttention's rows record the head pattern they ran with (calibrated above).
        let patterns: Vec<Option<String>> = plan
            .methods
            .iter()
            .map(|method| {
                method
                    .head_pattern_settings()
                    .map(|duo| {
                        Ok(head_patterns::fingerprint(&head_patterns::head_pattern(
                            &mut probe, duo,
                        )?))
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let mut of_sample: std::collections::BTreeMap<(usize, Protocol, bool), Settings> =
            std::collections::BTreeMap::new();
        for item in mine {
            let sample = &plan.samples[item.sample];
            let streamed = streams[item.method] && plan.spec.truncation == Truncation::Paper;
            let settings = match of_sample.get(&(item.sample, item.protocol, streamed)) {
                Some(settings) => settings.clone(),
                None => {
                    let fitted = fitted_prompt(
                        &probe,
                        model_spec.max_length,
                        sample,
                        &sample.prompt,
                        item.protocol,
                        streamed,
                    )
                    .with_context(|| format!("model {}", names[m]))?;
                    let settings = row_settings(&base, &fitted, sample, streamed);
                    of_sample.insert((item.sample, item.protocol, streamed), settings.clone());
                    settings
                }
            };
            // A compressor's row: the prompt above is the one it was given.
            let settings = match &scorers[item.method] {
                Some((_, sha)) => settings.with("scorer_sha256", sha),
                None => settings,
            };
            let settings = match &patterns[item.method] {
                Some(sha) => settings.with("head_pattern_sha256", sha),
                None => settings,
            };
            let key = row_key(plan, &names, item);
            match store.stored(&key)? {
                None => pending.push((item, settings)),
                Some(row) if row.settings == settings => {}
                Some(_) if args.replace => pending.push((item, settings)),
                Some(row) => stale.push((key, row.settings.differences(&settings))),
            }
        }
    }
    if let Some((key, differences)) = stale.first() {
        anyhow::bail!(
            "{} of the plan's samples are stored in {} with other settings than this run's, e.g. {key}: {} (stored vs now). Use a new --db, or pass --replace to run them again and replace the stored rows",
            stale.len(),
            args.db.display(),
            differences.join("; ")
        );
    }
    let skipped = total - pending.len();
    if skipped > 0 {
        eprintln!(
            "{skipped} of {total} samples are already in {} with the same settings and are skipped",
            args.db.display()
        );
    }
    let cost = |item: &WorkItem| cost_units(plan, item);
    let mut progress = Progress::new(pending.len(), pending.iter().map(|(i, _)| cost(i)).sum());
    let mut ran = 0;
    for (m, model_spec) in plan.spec.models.iter().enumerate() {
        let mine: Vec<&(&WorkItem, Settings)> =
            pending.iter().filter(|(i, _)| i.model == m).collect();
        if mine.is_empty() {
            continue;
        }
        let mut loaded = models[m].load_bare()?;
        let own_path = models[m].model_path()?;
        // Compressors' models other than the model itself, loaded once each (a scorer with
        // the model's options).
        let mut compressor_models: HashMap<PathBuf, LoadedCompressor> = HashMap::new();
        let mut installed = None;
        for (k, (item, settings)) in mine.iter().enumerate() {
            let (method, sample) = (&plan.methods[item.method], &plan.samples[item.sample]);
            let label = method_label(method, item.protocol);
            let same_cell = |other: &&&(&WorkItem, Settings)| {
                other.0.method == item.method
                    && other.0.protocol == item.protocol
                    && plan.samples[other.0.sample].task == sample.task
            };
            if k == 0 || !same_cell(&&mine[k - 1]) {
                let cell: Vec<_> = mine[k..].iter().take_while(|o| same_cell(o)).collect();
                progress.start_cell(
                    format!("{label} {} ({} samples)", sample.task, cell.len()),
                    cell.iter().map(|o| cost(o.0)).sum(),
                );
            }
            if installed != Some(item.method) {
                install(&mut loaded, method)?;
                installed = Some(item.method);
            }
            let streamed = loaded.model.cache().is_some_and(|c| c.streams())
                && plan.spec.truncation == Truncation::Paper;
            let context = || format!("method {label}, {} sample {}", sample.task, sample.id);
            // The sample's peak memory covers a prompt compressor's scoring too.
            memory::reset_peak();
            let (prompt, compress_ms) = match (method.compressor(), &scorers[item.method]) {
                (Some(c), Some((path, _))) => {
                    let entry = match compressor_models.entry(path.clone()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(match c {
                            PromptCompressor::LlmLingua(l) => LoadedCompressor::Scorer(
                                match *path == own_path {
                                    true => None,
                                    false => Some(Box::new(
                                        scorer_args(&models[m], &l.scorer).load_bare()?,
                                    )),
                                },
                                None,
                            ),
                            PromptCompressor::LlmLingua2(_) => {
                                LoadedCompressor::Classifier(Box::new(TokenClassifier::load(path)?))
                            }
                        }),
                    };
                    let model = match (entry, c) {
                        (LoadedCompressor::Scorer(main, contrast), PromptCompressor::LlmLingua(l)) => {
                            if l.question && contrast.is_none() {
                                *contrast =
                                    Some(Box::new(scorer_args(&models[m], &l.scorer).load_bare()?));
                            }
                            let main = match main {
                                Some(main) => main,
                                None => &mut loaded,
                            };
                            let contrast = contrast.as_deref_mut().filter(|_| l.question);
                            CompressorModel::Scorer(main, contrast)
                        }
                        (LoadedCompressor::Classifier(classifier), _) => {
                            CompressorModel::Classifier(classifier)
                        }
                        (LoadedCompressor::Scorer(..), _) => anyhow::bail!(
                            "{} is named both as LLMLingua's scorer and as LLMLingua-2's classifier: a folder is one or the other",
                            path.display()
                        ),
                    };
                    compressed_prompt(c, model, sample).with_context(context)?
                }
                _ => (sample.prompt.clone(), 0.0),
            };
            let fitted = fitted_prompt(
                &loaded,
                model_spec.max_length,
                sample,
                &prompt,
                item.protocol,
                streamed,
            )?;
            let original_tokens = match method.compressor() {
                Some(_) => loaded
                    .prompt_tokens(&sample.prompt.text, sample.chat && loaded.chat.is_some())?
                    .len(),
                None => fitted.tokens.len(),
            };
            let row = run_sample(
                &mut loaded,
                row_key(plan, &names, item),
                &fitted,
                settings.clone(),
                sample,
                Compression {
                    original_tokens,
                    ms: compress_ms,
                },
            )
            .with_context(context)?;
            store.insert(&row, args.replace)?;
            ran += 1;
            progress.finish_sample(
                cost(item),
                format!(
                    "{label} {} {}: score {:.2}, prefill {:.1} tok/s, KV {} bytes{}",
                    sample.task,
                    sample.id,
                    row.score,
                    row.original_tokens as f64 / ((row.prefill_ms + row.compress_ms) / 1e3),
                    row.kv_bytes,
                    match method.compressor() {
                        Some(_) => format!(
                            ", prompt {} -> {} tokens in {:.1} s",
                            row.original_tokens,
                            row.prompt_tokens,
                            row.compress_ms / 1e3
                        ),
                        None => String::new(),
                    }
                ),
            );
        }
    }
    progress.finish();
    eprintln!(
        "{total} samples: {ran} run, {skipped} already in {} (skipped), {:.0}s",
        args.db.display(),
        progress.started.elapsed().as_secs_f64()
    );
    // One screen: every method of the database, then where the full report comes from.
    println!(
        "{}",
        super::report::efficiency_table(
            &super::report::labelled(super::report::as_shown(&store.rows()?)).0
        )
    );
    println!(
        "results: {}\nreport:  longctx report --db {} --out report/   (writes report/report.md and report.html)",
        args.db.display(),
        args.db.display()
    );
    Ok(())
}

/// The LongBench files a spec reads: its own list, or every `<name>.jsonl` (LongBench) and
/// `<name>_e.jsonl` (LongBench-E) present; an error for a missing folder or one with none.
fn longbench_files(lb: &LongBenchSpec) -> Result<Vec<String>> {
    if !lb.dir.is_dir() {
        anyhow::bail!(
            "LongBench directory {} does not exist: pass the folder that holds LongBench's data/<name>.jsonl files",
            lb.dir.display()
        );
    }
    let files: Vec<String> = if lb.datasets.is_empty() {
        DATASETS
            .iter()
            .flat_map(|d| [d.name.to_string(), format!("{}_e", d.name)])
            .filter(|n| lb.dir.join(format!("{n}.jsonl")).exists())
            .collect()
    } else {
        lb.datasets.clone()
    };
    if files.is_empty() {
        anyhow::bail!(
            "LongBench directory {} holds no dataset file (such as hotpotqa.jsonl): pass the folder of LongBench's data/*.jsonl",
            lb.dir.display()
        );
    }
    Ok(files)
}
