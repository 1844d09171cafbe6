//! Subcommands and the options they share.

pub mod bench;
pub mod calibrate_duo;
pub mod export;
pub mod generate;
pub mod merge;
pub mod methods;
pub mod models;
pub mod perplexity;
pub mod report;
pub mod run;
pub mod score;
pub mod tasks;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use longctx_models::{
    load_model, resolve_model_path, DecodeActivations, KvPrecision, LoadOptions, LoadedModel,
    ReplayPrompt, DEFAULT_PREFILL_CHUNK,
};

use crate::assets;
use crate::methods::Method;
use longctx_kv::HeadPattern;

/// Most worker threads allowed per core: inference pools spin-wait, so far more threads than
/// cores only slow every one of them down (100,000 hang the machine).
const MAX_THREADS_PER_CORE: usize = 8;

/// Long-context efficiency workbench: what a KV-cache method costs in quality and saves in memory and time.
#[derive(Parser)]
#[command(name = "longctx", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and verify the default model and the needle haystack (or one named model)
    /// into the cache.
    Fetch(FetchArgs),
    /// Generate an answer to a prompt (greedy).
    Generate(generate::GenerateArgs),
    /// Perplexity of a text file over consecutive non-overlapping windows.
    Perplexity(perplexity::PerplexityArgs),
    /// Prefill and decode speed, KV bytes and peak memory at several context lengths.
    Bench(bench::BenchArgs),
    /// List the KV-cache methods and presets.
    Methods,
    /// Calibrate DuoAttention's head pattern of a model (done at the first use of a
    /// duo-attention method too) and print it.
    CalibrateDuo(calibrate_duo::CalibrateDuoArgs),
    /// List the models fetchable by name.
    Models,
    /// Run methods over tasks and store every sample's result (resumable).
    Run(run::RunArgs),
    /// Print the plan's cells and estimated cost without running anything.
    Plan(run::PlanCommandArgs),
    /// Union shard databases into one, refusing conflicting rows and different plans.
    Merge(merge::MergeArgs),
    /// Write stored predictions in another tool's layout (LongBench's pred/ + result.json).
    Export(export::ExportArgs),
    /// Write the report (markdown tables) from the results database.
    Report(report::ReportArgs),
    /// Score LongBench prediction files (official layout) with the official metrics.
    Score(score::ScoreArgs),
    /// List the tasks with their category, metric, sample count and generation length.
    Tasks(tasks::TasksArgs),
}

/// Options of `longctx fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// A model name from `longctx models` to fetch instead of the default assets.
    #[arg(long)]
    model: Option<String>,
}

/// Options that choose and configure the model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A model name from `longctx models` (fetched on first use), a GGUF file, a Hugging Face
    /// model directory, or an id in the local Hugging Face cache [default: smollm2-135m].
    #[arg(long)]
    model: Option<String>,
    /// Worker threads for matrix products [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Override the RoPE base θ (to reach past the trained context, with --context).
    #[arg(long)]
    rope_theta: Option<f64>,
    /// Allow sequences up to this many tokens instead of the model's trained context.
    #[arg(long)]
    context: Option<usize>,
    /// Tokens per prefill chunk (bounds activation memory).
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Hold dense f32 copies of the weights for prefill (four bytes per weight for the run)
    /// instead of dequantizing them for each prefill chunk (a few % of prefill time).
    #[arg(long)]
    dense_weights: bool,
    /// Precision of keys and values held uncompressed (the baseline, token-dropping
    /// methods, Gemma-3's local windows): f16 as the reference models hold them, or f32.
    #[arg(long, default_value = "f16", value_parser = parse_precision)]
    kv_precision: KvPrecision,
    /// Decoding's arithmetic against quantized data: int8 quantizes activations per block of
    /// 32 for integer dot products with Q4_0/Q4_1/Q8_0 weights, and KIVI's scaled query and
    /// probabilities per block for byte dot products with its codes (as llama.cpp; faster);
    /// f32 keeps them exact.
    #[arg(long, default_value = "int8")]
    decode_activations: DecodeActivations,
}

fn parse_precision(text: &str) -> std::result::Result<KvPrecision, String> {
    text.parse().map_err(|e: longctx_kv::KvError| e.to_string())
}

/// The KV-cache method option of single-method commands.
#[derive(Args, Clone)]
pub struct MethodArg {
    /// KV-cache method: a preset or spec (see `longctx methods`).
    #[arg(long, default_value = "baseline")]
    pub method: String,
}

impl MethodArg {
    /// The parsed method.
    pub fn parse(&self) -> Result<Method> {
        Ok(Method::parse(&self.method)?)
    }
}

/// Give the model a fresh cache of `method`'s policy, for the layers the model lets it serve
/// (model-dependent settings are checked here).
pub fn install(loaded: &mut LoadedModel, method: &Method) -> Result<()> {
    // A model without a KV cache (a recurrence) runs as it is under the baseline, and reads
    // a compressor's prompt as it is; a KV method on it is refused by the model.
    if loaded.model.cache().is_none() && matches!(method, Method::Baseline | Method::Compressor(_))
    {
        return Ok(());
    }
    // DuoAttention's cache reads the model's head pattern (calibrated on first use).
    let heads = match method.head_pattern_settings() {
        Some(duo) => Some(crate::head_patterns::head_pattern(loaded, duo)?),
        None => None,
    };
    install_with(loaded, method, heads.as_ref())
}

/// [`install`] with DuoAttention's head pattern given rather than calibrated (`None` for
/// every other method).
pub fn install_with(
    loaded: &mut LoadedModel,
    method: &Method,
    heads: Option<&HeadPattern>,
) -> Result<()> {
    loaded
        .model
        .set_cache(Box::new(|shape, rope, numerics| {
            method.build_cache(shape, rope, numerics, heads)
        }))
        .with_context(|| format!("method \"{method}\""))?;
    // KVzip's cache has the model repeat each prompt: its instructions in the model's tokens.
    if loaded
        .model
        .cache()
        .and_then(|c| c.replay_chunk())
        .is_some()
    {
        let prompt = ReplayPrompt::new(&loaded.tokenizer, loaded.chat.as_ref())?;
        loaded.model.set_replay_prompt(prompt);
    }
    Ok(())
}

impl ModelArgs {
    /// Load the model with `method`'s cache; a bad spec, or a prompt compressor (these
    /// commands feed token streams, not a task's prompt), fails before anything is fetched.
    pub fn load(&self, method: &MethodArg) -> Result<(LoadedModel, Method)> {
        let method = method.parse()?;
        if method.compressor().is_some() {
            anyhow::bail!(
                "method \"{}\" is a prompt compressor: this command runs KV-cache methods on tokens it feeds itself; run a compressor on a task with `longctx run --methods {}`",
                method,
                method
            );
        }
        let mut loaded = self.load_bare()?;
        install(&mut loaded, &method)?;
        Ok((loaded, method))
    }

    /// The model's file or directory; the default model is fetched if it is not cached.
    pub fn model_path(&self) -> Result<PathBuf> {
        Ok(match self.model.as_deref() {
            None => assets::default_model()?,
            Some(name) => match assets::named_model(name) {
                Some(model) => assets::fetch_model(model)?,
                None => resolve_model_path(name)?,
            },
        })
    }

    /// Set up threads (checked first), fetch the default model if needed, and load it with
    /// the baseline cache.
    pub fn load_bare(&self) -> Result<LoadedModel> {
        if let Some(n) = self.threads {
            // Spin-waiting pools far beyond the cores stall the machine: allow a few per core.
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            if n == 0 || n > MAX_THREADS_PER_CORE * cores {
                anyhow::bail!(
                    "threads={n} (from --threads or the spec) must be between 1 and {} ({MAX_THREADS_PER_CORE} per core on this machine's {cores})",
                    MAX_THREADS_PER_CORE * cores
                );
            }
            // candle's CPU kernels size their pools from this variable at first use.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        if let Some(theta) = self.rope_theta {
            if !(theta.is_finite() && theta > 0.0) {
                anyhow::bail!("--rope-theta {theta} must be a positive number (RoPE's base)");
            }
        }
        if self.prefill_chunk == 0 {
            anyhow::bail!("--prefill-chunk 0: a prefill chunk holds at least 1 token");
        }
        let path = self.model_path()?;
        let options = LoadOptions {
            rope_theta: self.rope_theta,
            context: self.context,
            prefill_chunk: self.prefill_chunk,
            dense_prefill_weights: self.dense_weights,
            kv_precision: self.kv_precision,
            decode_activations: self.decode_activations,
        };
        load_model(&path, &options).with_context(|| format!("loading {}", path.display()))
    }
}

/// A file-name-safe form of a model or method name (other characters become `_`).
pub(crate) fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fetch(args) => {
            let Some(name) = args.model else {
                let model = assets::default_model()?;
                println!("model     {}", model.display());
                let haystack = assets::haystack_dir()?;
                println!("haystack  {}", haystack.display());
                return Ok(());
            };
            let model = assets::named_model(&name).ok_or_else(|| {
                let names: Vec<&str> = assets::MODELS.iter().map(|m| m.name).collect();
                anyhow::anyhow!(
                    "no model named \"{name}\"; the names are {} (`longctx models` lists them)",
                    names.join(", ")
                )
            })?;
            println!("{}", assets::fetch_model(model)?.display());
            Ok(())
        }
        Command::Generate(args) => generate::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Score(args) => score::run(args),
        Command::Methods => methods::run(),
        Command::CalibrateDuo(args) => calibrate_duo::run(args),
        Command::Models => models::run(),
        Command::Run(args) => run::run(args),
        Command::Plan(args) => run::print_plan(args),
        Command::Merge(args) => merge::run(args),
        Command::Export(args) => export::run(args),
        Command::Report(args) => report::run(args),
        Command::Tasks(args) => tasks::run(args),
    }
}
