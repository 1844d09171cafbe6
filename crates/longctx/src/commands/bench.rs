use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use longctx_models::{argmax, Reservation};
use serde::Serialize;

use super::{MethodArg, ModelArgs};
use crate::memory;

/// `longctx bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,2048,4096,8192")]
    contexts: Vec<usize>,
    /// Tokens decoded after each prompt.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Grow one prompt this many tokens at a time up to the largest of `--contexts` (or
    /// the model's context), decoding `--decode-tokens` after each step: prefill and decode
    /// speed as the context grows, like llama.cpp's sweep bench.
    #[arg(long)]
    sweep: Option<usize>,
    /// With `--sweep`: also draw the speeds against the context into this PNG (and an SVG
    /// beside it).
    #[arg(long, requires = "sweep")]
    figure: Option<std::path::PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    method: MethodArg,
}

/// One context length's measurements.
#[derive(Serialize)]
struct BenchRow {
    method: String,
    context: usize,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    /// Tokens kept after the run, averaged over layers.
    kept_tokens: f64,
    /// Tokens each layer keeps after the run.
    kept_tokens_per_layer: Vec<usize>,
    /// Bytes attention reads from.
    kv_bytes: usize,
    /// `kv_bytes` by group of layers, for a model whose layers keep different caches
    /// (Gemma-3's global layers under the method, its local ones in their window).
    kv_bytes_by_group: std::collections::BTreeMap<&'static str, usize>,
    /// Bytes of evicted context kept for retrieval (InfLLM).
    offloaded_bytes: usize,
    /// Mean bytes of keys, values and metadata a decoding step read, where the cache reads
    /// part of what it holds (Quest); `None` where a step reads all it holds.
    read_bytes_per_decoded_token: Option<f64>,
    /// Every token seen in the method's uncompressed format.
    uncompressed_bytes: usize,
    /// `uncompressed_bytes / kv_bytes`.
    measured_ratio: f64,
    kv_fp16_equivalent_bytes: usize,
    peak_rss_bytes: u64,
}

/// The KV bytes, with each group's share where layers keep different caches.
fn kv_bytes_cell(row: &BenchRow) -> String {
    if row.kv_bytes_by_group.is_empty() {
        return row.kv_bytes.to_string();
    }
    let shares: Vec<String> = row
        .kv_bytes_by_group
        .iter()
        .map(|(group, bytes)| format!("{group} {bytes}"))
        .collect();
    format!("{} ({})", row.kv_bytes, shares.join(" + "))
}

/// Deterministic prompt tokens (a fixed-seed LCG over the vocabulary, as llama-bench uses random tokens).
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (mut loaded, method) = args.model.load(&args.method)?;
    let limit = loaded.model.context_limit();
    if let Some(step) = args.sweep {
        return sweep(&args, step, &mut loaded, &method.to_string());
    }
    if let Some(&too_long) = args
        .contexts
        .iter()
        .find(|&&c| c.saturating_add(args.decode_tokens) > limit || c == 0)
    {
        anyhow::bail!("--contexts {too_long}: a context plus --decode-tokens ({}) must be between 1 and the model's context of {limit} tokens", args.decode_tokens);
    }
    let vocab = loaded.model.vocab_size();
    let model = loaded.model.as_mut();
    // A model without a KV cache reports its recurrent state alone.
    let recurrent = model.cache().is_none();
    if !args.json {
        println!(
            "weights held: {} MiB (quantized blocks, and dense f32 copies for prefill with --dense-weights)\n",
            memory::mib(model.weight_bytes() as u64)
        );
        println!("method: {method}\n");
        match recurrent {
            true => {
                println!("sequence state: recurrent (no KV cache; its size does not follow the context)\n");
                println!("| context | prefill tok/s | decode tok/s | state bytes | peak RSS MiB |");
                println!("|--:|--:|--:|--:|--:|");
            }
            false => {
                println!("| context | prefill tok/s | decode tok/s | kept tokens | KV bytes | offloaded bytes | bytes read per decoded token | measured ratio | KV fp16-equivalent | peak RSS MiB |");
                println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            }
        }
    }
    for &context in &args.contexts {
        let tokens = prompt(context, vocab);
        model.reset();
        memory::reset_peak();
        model.reserve(Reservation::prompt(context, args.decode_tokens))?;
        let start = Instant::now();
        let mut logits = model.prefill(&tokens)?;
        let prefill = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..args.decode_tokens {
            logits = model.step(argmax(&logits)?)?;
        }
        let decode = start.elapsed().as_secs_f64();
        let seen = context + args.decode_tokens;
        let (prefill_tokens_per_s, decode_tokens_per_s) = (
            context as f64 / prefill,
            args.decode_tokens as f64 / decode.max(1e-9),
        );
        let row = match model.cache() {
            Some(cache) => {
                let shape = cache.shape();
                BenchRow {
                    method: method.to_string(),
                    context,
                    prefill_tokens_per_s,
                    decode_tokens_per_s,
                    kept_tokens: cache.mean_kept_tokens(),
                    kept_tokens_per_layer: (0..shape.layers)
                        .map(|l| cache.kept_tokens(l))
                        .collect(),
                    kv_bytes: cache.stored_bytes(),
                    kv_bytes_by_group: cache.stored_bytes_by_group().into_iter().collect(),
                    offloaded_bytes: cache.offloaded_bytes(),
                    read_bytes_per_decoded_token: cache.decode_reads().and_then(|r| r.per_step()),
                    uncompressed_bytes: cache.uncompressed_bytes_per_token() * seen,
                    measured_ratio: (cache.uncompressed_bytes_per_token() * seen) as f64
                        / cache.stored_bytes().max(1) as f64,
                    kv_fp16_equivalent_bytes: shape.fp16_bytes_per_token() * seen,
                    peak_rss_bytes: memory::peak_rss_bytes().unwrap_or(0),
                }
            }
            // A recurrent model: its state stands where KV bytes stand, and keeps no tokens.
            None => BenchRow {
                method: method.to_string(),
                context,
                prefill_tokens_per_s,
                decode_tokens_per_s,
                kept_tokens: 0.0,
                kept_tokens_per_layer: Vec::new(),
                kv_bytes: model.state_bytes(),
                kv_bytes_by_group: [("state", model.state_bytes())].into_iter().collect(),
                offloaded_bytes: 0,
                read_bytes_per_decoded_token: None,
                uncompressed_bytes: model.state_bytes(),
                measured_ratio: 1.0,
                kv_fp16_equivalent_bytes: 0,
                peak_rss_bytes: memory::peak_rss_bytes().unwrap_or(0),
            },
        };
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else if recurrent {
            println!(
                "| {} | {:.1} | {:.1} | {} | {} |",
                row.context,
                row.prefill_tokens_per_s,
                row.decode_tokens_per_s,
                row.kv_bytes,
                memory::mib(row.peak_rss_bytes)
            );
        } else {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2}x | {} | {} |",
                row.context,
                row.prefill_tokens_per_s,
                row.decode_tokens_per_s,
                row.kept_tokens,
                kv_bytes_cell(&row),
                row.offloaded_bytes,
                row.read_bytes_per_decoded_token
                    .map_or("all held".into(), |b| format!("{b:.0}")),
                row.measured_ratio,
                row.kv_fp16_equivalent_bytes,
                memory::mib(row.peak_rss_bytes)
            );
        }
    }
    Ok(())
}

/// One step of a sweep: the speeds at a depth.
#[derive(Serialize)]
struct SweepRow {
    method: String,
    /// Tokens in the cache before the step.
    depth: usize,
    /// The step's prompt tokens per second, prefilled after `depth` tokens.
    prefill_tokens_per_s: f64,
    /// Tokens per second decoded after the step's prompt.
    decode_tokens_per_s: f64,
    kv_bytes: usize,
    peak_rss_bytes: u64,
}

/// `bench --sweep STEP`: one prompt grown `step` tokens at a time, `--decode-tokens`
/// decoded after each step (they stay in the context, so each depth includes the earlier
/// steps' decoded tokens).
fn sweep(
    args: &BenchArgs,
    step: usize,
    loaded: &mut longctx_models::LoadedModel,
    method: &str,
) -> Result<()> {
    let limit = loaded.model.context_limit();
    let end = args
        .contexts
        .iter()
        .copied()
        .max()
        .unwrap_or(limit)
        .min(limit);
    if step == 0 || step + args.decode_tokens > end {
        anyhow::bail!("--sweep {step}: a step plus --decode-tokens ({}) must be between 1 and the sweep's end, {end} tokens (the largest of --contexts, within the model's context)", args.decode_tokens);
    }
    let vocab = loaded.model.vocab_size();
    let model = loaded.model.as_mut();
    let steps = end / (step + args.decode_tokens);
    let tokens = prompt(steps * step, vocab);
    model.reset();
    memory::reset_peak();
    model.reserve(Reservation::prompt(
        steps * step,
        steps * args.decode_tokens,
    ))?;
    if !args.json {
        println!(
            "method: {method}; {steps} steps of {step} prompt tokens, {} decoded after each\n",
            args.decode_tokens
        );
        println!("| depth | prefill tok/s | decode tok/s | KV bytes | peak RSS MiB |");
        println!("|--:|--:|--:|--:|--:|");
    }
    let mut rows = Vec::with_capacity(steps);
    for chunk in tokens.chunks_exact(step) {
        let depth = model.seen_tokens();
        let start = Instant::now();
        let mut logits = if depth == 0 {
            model.prefill(chunk)?
        } else {
            model.append(chunk, longctx_models::Logits::Last)?
        };
        let prefill = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..args.decode_tokens {
            logits = model.step(argmax(&logits)?)?;
        }
        let decode = start.elapsed().as_secs_f64();
        let row = SweepRow {
            method: method.to_string(),
            depth,
            prefill_tokens_per_s: step as f64 / prefill,
            decode_tokens_per_s: args.decode_tokens as f64 / decode.max(1e-9),
            kv_bytes: model
                .cache()
                .map_or(model.state_bytes(), |c| c.stored_bytes()),
            peak_rss_bytes: memory::peak_rss_bytes().unwrap_or(0),
        };
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "| {} | {:.1} | {:.1} | {} | {} |",
                row.depth,
                row.prefill_tokens_per_s,
                row.decode_tokens_per_s,
                row.kv_bytes,
                memory::mib(row.peak_rss_bytes)
            );
        }
        rows.push(row);
    }
    if let Some(path) = &args.figure {
        write_sweep_figure(path, method, &rows)?;
    }
    Ok(())
}

/// The sweep's speeds against depth, as PNG at `path` and SVG beside it.
fn write_sweep_figure(path: &std::path::Path, method: &str, rows: &[SweepRow]) -> Result<()> {
    use crate::figures::{self, Axis};
    let series = vec![
        (
            "prefill".to_string(),
            rows.iter()
                .map(|r| (r.depth as f64, r.prefill_tokens_per_s))
                .collect::<Vec<_>>(),
        ),
        (
            "decode".to_string(),
            rows.iter()
                .map(|r| (r.depth as f64, r.decode_tokens_per_s))
                .collect(),
        ),
    ];
    let fastest = rows
        .iter()
        .flat_map(|r| [r.prefill_tokens_per_s, r.decode_tokens_per_s])
        .fold(0.0, f64::max);
    let deepest = rows.last().map_or(1.0, |r| r.depth as f64);
    let svg = figures::curves(
        &format!("{method}: speed as the context grows"),
        ("tokens already in the context", &Axis::from_zero(deepest)),
        ("tokens/s", &Axis::from_zero(fastest)),
        &series,
        None,
    );
    let png = figures::png(&svg).map_err(|e| anyhow::anyhow!("drawing the figure: {e}"))?;
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
    let svg_path = path.with_extension("svg");
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!("figure: {} (and {})", path.display(), svg_path.display());
    Ok(())
}
