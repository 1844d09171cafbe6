use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use longctx_models::{generate_greedy, GenerationSettings, LoadedModel};
use longctx_tasks::needle::{self, Haystack, NeedleGrid, NeedleSample, MAX_NEW_TOKENS};
use sha2::{Digest, Sha256};

use super::{install, ModelArgs};
use crate::methods::Method;
use crate::store::{ResultRow, Store};
use crate::{assets, memory};

/// The methods `run` compares unless told otherwise: the baseline, the three quantization
/// presets and every token-dropping family at 4×.
pub const DEFAULT_METHODS: &str = "baseline,kivi-2bit,kivi-4bit,flexgen-4bit,streamingllm-4x,streamingllm-4sinks-4x,h2o-4x,infllm-4x,snapkv-4x,pyramidkv-4x,tova-4x";

/// `longctx run`.
#[derive(Args)]
pub struct RunArgs {
    /// Methods to compare: presets or specs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_METHODS)]
    methods: Vec<String>,
    /// Needle haystack lengths: this many, evenly spaced from --needle-min-words.
    #[arg(long, default_value_t = 5)]
    needle_lengths: usize,
    /// Shortest haystack in words.
    #[arg(long, default_value_t = 512)]
    needle_min_words: usize,
    /// Longest haystack in words.
    #[arg(long, default_value_t = 5000)]
    needle_max_words: usize,
    /// Needle depths, evenly spaced over [0, 1].
    #[arg(long, default_value_t = 5)]
    needle_depths: usize,
    /// Trials (different keys) per length and depth.
    #[arg(long, default_value_t = 1)]
    needle_trials: usize,
    /// Most tokens generated per needle answer (the benchmark's 256 by default; the key
    /// comes first, so fewer suffice when time is short). Part of the task's key in the store.
    #[arg(long, default_value_t = MAX_NEW_TOKENS)]
    needle_max_new_tokens: usize,
    /// Seed of the needle keys.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The results database.
    #[arg(long, default_value = "results/longctx.db")]
    db: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

/// Seconds since the Unix epoch, as text.
fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

/// The needle task's name in the store: its generation length is part of it.
fn needle_task(max_new_tokens: usize) -> String {
    format!("needle/passkey:max_new_tokens={max_new_tokens}")
}

/// Run one needle sample under the installed method and measure it.
fn run_needle(
    loaded: &mut LoadedModel,
    model_name: &str,
    method: &Method,
    sample: &NeedleSample,
    max_new_tokens: usize,
) -> Result<ResultRow> {
    let prompt = loaded.prompt_tokens(&sample.prompt, needle::USES_CHAT_TEMPLATE)?;
    let limit = longctx_models::LanguageModel::context_limit(&loaded.model);
    if prompt.len() + max_new_tokens > limit {
        anyhow::bail!(
            "needle prompt of {} words is {} tokens; with {max_new_tokens} for the answer it exceeds the model's context of {limit}: lower --needle-max-words",
            sample.length,
            prompt.len()
        );
    }
    let task = needle_task(max_new_tokens);
    let settings = GenerationSettings {
        max_new_tokens,
        stop_tokens: loaded.tokenizer.stop_tokens().to_vec(),
    };
    memory::reset_peak();
    let generation = generate_greedy(&mut loaded.model, &prompt, &settings, |_| true)?;
    let prediction = loaded.tokenizer.decode(&generation.tokens, true)?;
    let (exact, partial) = needle::score(&sample.key, &prediction);
    let cache = loaded.model.cache();
    let seen = (prompt.len() + generation.decode_steps) as i64;
    let shape = loaded.model.config().kv_shape();
    let mut hash = Sha256::new();
    for part in [model_name, &method.to_string(), &task, &sample.prompt] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    Ok(ResultRow {
        model: model_name.into(),
        method: method.to_string(),
        task,
        sample: format!(
            "words={} depth={:.3} trial={}",
            sample.length, sample.depth, sample.trial
        ),
        prediction,
        score: exact,
        score2: partial,
        prompt_tokens: prompt.len() as i64,
        kept_tokens: cache.kept_tokens(0) as i64,
        kv_bytes: cache.stored_bytes() as i64,
        offloaded_bytes: cache.offloaded_bytes() as i64,
        uncompressed_bytes: cache.uncompressed_bytes_per_token() as i64 * seen,
        fp16_bytes: shape.fp16_bytes_per_token() as i64 * seen,
        prefill_ms: generation.prefill.as_secs_f64() * 1e3,
        decode_ms: generation.decode.as_secs_f64() * 1e3,
        new_tokens: generation.decode_steps as i64,
        peak_rss: memory::peak_rss_bytes().unwrap_or(0) as i64,
        settings_hash: format!("{:x}", hash.finalize()),
        version: env!("CARGO_PKG_VERSION").into(),
        timestamp: now(),
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    // Every spec is checked before anything is fetched, loaded or run.
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| Method::parse(m))
        .collect::<Result<_, _>>()?;
    let grid = NeedleGrid::new(
        args.needle_min_words,
        args.needle_max_words,
        args.needle_lengths,
        args.needle_depths,
        args.needle_trials,
        args.seed,
    )?;
    let mut store = Store::open(&args.db)?;
    let mut loaded = args.model.load_bare()?;
    let model_name = loaded
        .source
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let haystack = Haystack::from_dir(&assets::haystack_dir()?)?;
    let samples = grid.samples(&haystack);
    let total = methods.len() * samples.len();
    let (mut done, mut skipped) = (0, 0);
    let started = Instant::now();
    let task = needle_task(args.needle_max_new_tokens);
    for method in &methods {
        install(&mut loaded, method)?;
        for sample in &samples {
            done += 1;
            let id = format!(
                "words={} depth={:.3} trial={}",
                sample.length, sample.depth, sample.trial
            );
            if store.contains(&model_name, &method.to_string(), &task, &id)? {
                skipped += 1;
                continue;
            }
            let row = run_needle(
                &mut loaded,
                &model_name,
                method,
                sample,
                args.needle_max_new_tokens,
            )
            .with_context(|| format!("method {method}, needle sample {id}"))?;
            eprintln!(
                "[{done}/{total} {:.0}s] {method} {id}: exact {} prefill {:.1} tok/s, KV {} bytes",
                started.elapsed().as_secs_f64(),
                row.score,
                row.prompt_tokens as f64 / (row.prefill_ms / 1e3),
                row.kv_bytes
            );
            store.insert(&row)?;
        }
    }
    eprintln!(
        "{} samples: {} run, {skipped} already in {} (skipped)",
        total,
        total - skipped,
        args.db.display()
    );
    Ok(())
}
