use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use longctx_models::{LanguageModel, Logits, Reservation};

use super::{install, MethodArg, ModelArgs};
use crate::methods::Method;
use longctx_models::LoadedModel;

/// How a text is cut into windows and which positions are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Consecutive non-overlapping windows of `--ctx` tokens (a shorter text is one window),
    /// every position after a window's first scored.
    Full,
    /// llama.cpp's `llama-perplexity`: windows of `--ctx` tokens, each window's first token
    /// replaced by BOS when the model starts sequences with it, only the positions from
    /// `ctx/2` on scored; at least `2·ctx` tokens are needed.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

/// `longctx perplexity`.
#[derive(Args)]
pub struct PerplexityArgs {
    /// The text to score.
    #[arg(long)]
    text: PathBuf,
    /// Window length in tokens; windows do not overlap and each restarts the sequence.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Which windows and positions are scored: full, or llama.cpp (as `llama-perplexity`).
    #[arg(long, value_enum, default_value_t = Protocol::Full)]
    protocol: Protocol,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    method: MethodArg,
    /// Also measure the method's damage as practitioners do for KV quantization: in each
    /// window the first half is the prompt (compressed where the method compresses a
    /// prompt), the second half is fed a token at a time, and each next-token distribution
    /// is compared with the uncompressed cache's by KL divergence.
    #[arg(long)]
    kl: bool,
}

/// Most bytes of log-probabilities `--kl` holds for one window: the uncompressed cache's and
/// the method's, each the second half's positions × the vocabulary, in f32.
const MAX_REFERENCE_BYTES: usize = 2 << 30;

/// Summed negative log-likelihood of `window[from + 1..]`, each token given everything
/// before it in the window, and how many tokens that is.
pub fn window_nll(
    model: &mut dyn LanguageModel,
    window: &[u32],
    from: usize,
) -> Result<(f64, usize)> {
    model.reset();
    model.reserve(Reservation::prompt(window.len(), 0))?;
    let logits = model.append(window, Logits::All)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, 1)?;
    let rows: Vec<Vec<f32>> = log_probs.to_vec2()?;
    let nll: f64 = window[from + 1..]
        .iter()
        .zip(&rows[from..])
        .map(|(&next, row)| -(row[next as usize] as f64))
        .sum();
    Ok((nll, window.len() - from - 1))
}

/// Log-probabilities of each next token after `window[..split]`: that prefix is the prompt
/// (the method compresses at its end), then `window[split..]` is fed a token at a time.
/// Row `i` predicts `window[split + i]`.
pub fn continuation_log_probs(
    model: &mut dyn LanguageModel,
    window: &[u32],
    split: usize,
) -> Result<Vec<Vec<f32>>> {
    model.reset();
    model.reserve(Reservation::prompt(split, window.len() - split))?;
    let mut rows = Vec::with_capacity(window.len() - split);
    let mut logits = model.prefill(&window[..split])?;
    for &token in &window[split..] {
        rows.push(
            candle_nn::ops::log_softmax(&logits, 1)?
                .to_vec2::<f32>()?
                .remove(0),
        );
        if rows.len() < window.len() - split {
            logits = model.step(token)?;
        }
    }
    Ok(rows)
}

/// KL(reference ‖ method) of one next-token distribution, from log-probabilities, in nats.
pub fn kl_divergence(reference: &[f32], method: &[f32]) -> f64 {
    reference
        .iter()
        .zip(method)
        .map(|(&r, &m)| {
            let p = (r as f64).exp();
            if p == 0.0 {
                0.0
            } else {
                p * (r as f64 - m as f64)
            }
        })
        .sum()
}

/// The damage a method does to a text's continuations against the uncompressed cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damage {
    /// Mean KL(uncompressed ‖ method) per scored token, in nats.
    pub kl: f64,
    /// Largest KL of one token.
    pub max_kl: f64,
    /// Share of tokens whose most likely next token differs.
    pub top1_changed: f64,
    /// Summed negative log-likelihood of the continuations, uncompressed and under the method.
    pub nll: (f64, f64),
    /// Tokens scored.
    pub scored: usize,
}

/// Score the second half of each `ctx`-token window of `tokens` (a shorter text is one
/// window) under the uncompressed cache and under `method`, the first half being the
/// prompt; `install` puts a method's cache on the model.
pub fn damage(
    loaded: &mut LoadedModel,
    method: &Method,
    tokens: &[u32],
    ctx: usize,
) -> Result<Damage> {
    let (mut kl, mut max_kl, mut changed, mut nll, mut scored) = (0.0, 0f64, 0, (0.0, 0.0), 0);
    for window in whole_windows(tokens, ctx) {
        let split = window.len() / 2;
        let bytes = 2 * (window.len() - split) * loaded.model.vocab_size() * 4;
        if bytes > MAX_REFERENCE_BYTES {
            anyhow::bail!(
                "--kl holds two sets of log-probabilities (uncompressed and the method's) of half a window: {} MiB at --ctx {ctx} and this vocabulary, over the {} MiB allowed; use a smaller --ctx",
                bytes >> 20,
                MAX_REFERENCE_BYTES >> 20
            );
        }
        install(loaded, &Method::Baseline)?;
        let reference = continuation_log_probs(loaded.model.as_mut(), window, split)?;
        install(loaded, method)?;
        let ours = continuation_log_probs(loaded.model.as_mut(), window, split)?;
        for ((r, m), &next) in reference.iter().zip(&ours).zip(&window[split..]) {
            let d = kl_divergence(r, m);
            kl += d;
            max_kl = max_kl.max(d);
            changed += usize::from(argmax(r) != argmax(m));
            nll.0 -= r[next as usize] as f64;
            nll.1 -= m[next as usize] as f64;
            scored += 1;
        }
    }
    let n = scored.max(1) as f64;
    Ok(Damage {
        kl: kl / n,
        max_kl,
        top1_changed: changed as f64 / n,
        nll,
        scored,
    })
}

/// Index of the largest value (the first of equals).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Consecutive whole windows of `ctx` tokens, so that every window is scored in the same
/// conditions (a tail shorter than a window is left out); a text shorter than one window is
/// a single window.
fn whole_windows(tokens: &[u32], ctx: usize) -> Vec<&[u32]> {
    if tokens.len() < ctx {
        vec![tokens]
    } else {
        tokens.chunks_exact(ctx).collect()
    }
}

/// A text's score: summed negative log-likelihood, tokens scored, windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Summed negative log-likelihood.
    pub nll: f64,
    /// Tokens scored.
    pub scored: usize,
    /// Windows run.
    pub windows: usize,
}

/// Score `tokens` (the text as the tokenizer encodes it, BOS included where the model adds
/// one) in windows of `ctx` under `protocol`; `bos` is the token a llama.cpp window starts
/// with.
pub fn score(
    model: &mut dyn LanguageModel,
    tokens: &[u32],
    ctx: usize,
    protocol: Protocol,
    bos: Option<u32>,
) -> Result<Score> {
    let (mut nll, mut scored, mut windows) = (0.0, 0, 0);
    match protocol {
        Protocol::Full => {
            for window in whole_windows(tokens, ctx) {
                let (n, c) = window_nll(model, window, 0)?;
                (nll, scored, windows) = (nll + n, scored + c, windows + 1);
            }
        }
        Protocol::LlamaCpp => {
            if tokens.len() < 2 * ctx {
                anyhow::bail!(
                    "the text is {} tokens; llama.cpp's protocol needs at least 2 x --ctx ({})",
                    tokens.len(),
                    2 * ctx
                );
            }
            for chunk in tokens.chunks_exact(ctx) {
                let mut window = chunk.to_vec();
                if let Some(bos) = bos {
                    window[0] = bos;
                }
                let (n, c) = window_nll(model, &window, ctx / 2)?;
                (nll, scored, windows) = (nll + n, scored + c, windows + 1);
            }
        }
    }
    Ok(Score {
        nll,
        scored,
        windows,
    })
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    if args.ctx < 2 {
        anyhow::bail!("--ctx must be at least 2 tokens");
    }
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading --text {}", args.text.display()))?;
    let (mut loaded, method) = args.model.load(&args.method)?;
    let limit = loaded.model.context_limit();
    if args.ctx > limit {
        anyhow::bail!(
            "--ctx {} is longer than the model's context of {limit} tokens",
            args.ctx
        );
    }
    let tokens = loaded.tokenizer.encode(&text, true)?;
    if tokens.len() < 2 {
        anyhow::bail!(
            "{} has fewer than 2 tokens; nothing to score",
            args.text.display()
        );
    }
    // The model starts sequences with BOS when its tokenizer put one first.
    let bos = loaded
        .tokenizer
        .bos_token()
        .filter(|b| tokens.first() == Some(b));
    if args.kl {
        if args.protocol != Protocol::Full {
            anyhow::bail!("--kl scores second halves of its own windows; leave --protocol at full");
        }
        let d = damage(&mut loaded, &method, &tokens, args.ctx)?;
        let per_token = |nll: f64| nll / d.scored.max(1) as f64;
        println!(
            "tokens {}  scored {} (second halves of {}-token windows)  KL {:.6} nats/token (max {:.4})  top-1 changed {:.2}%  perplexity {:.4} uncompressed, {:.4} under {method}",
            tokens.len(),
            d.scored,
            args.ctx.min(tokens.len()),
            d.kl,
            d.max_kl,
            100.0 * d.top1_changed,
            per_token(d.nll.0).exp(),
            per_token(d.nll.1).exp(),
        );
        return Ok(());
    }
    if method != Method::Baseline && method.compresses_after_prefill() {
        eprintln!(
            "note: each window is one prefill, so {method}, which compresses once a prompt is read, scores as the uncompressed cache here; --kl measures it on continuations"
        );
    }
    let s = score(loaded.model.as_mut(), &tokens, args.ctx, args.protocol, bos)?;
    println!(
        "tokens {}  windows {} x {}  scored {}  nll {:.6}  perplexity {:.4}  protocol {:?}  method {method}",
        tokens.len(),
        s.windows,
        args.ctx.min(tokens.len()),
        s.scored,
        s.nll / s.scored as f64,
        (s.nll / s.scored as f64).exp(),
        args.protocol,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use longctx_models::Result as ModelResult;

    /// Uniform logits over 4 tokens; records every window it is fed.
    #[derive(Default)]
    struct Uniform {
        fed: Vec<Vec<u32>>,
    }

    impl LanguageModel for Uniform {
        fn append(&mut self, tokens: &[u32], _: Logits) -> ModelResult<Tensor> {
            self.fed.push(tokens.to_vec());
            Ok(Tensor::zeros(
                (tokens.len(), 4),
                candle_core::DType::F32,
                &Device::Cpu,
            )?)
        }
        fn end_prefill(&mut self) -> ModelResult<()> {
            Ok(())
        }
        fn reserve(&mut self, _: Reservation) -> ModelResult<()> {
            Ok(())
        }
        fn seen_tokens(&self) -> usize {
            0
        }
        fn context_limit(&self) -> usize {
            64
        }
        fn state_bytes(&self) -> usize {
            0
        }
        fn reset(&mut self) {}
        fn trained_context(&self) -> usize {
            64
        }
        fn vocab_size(&self) -> usize {
            4
        }
        fn weight_bytes(&self) -> usize {
            0
        }
        fn compute_profile(&self) -> longctx_models::ComputeProfile {
            longctx_models::ComputeProfile {
                layer_weights: 0,
                head_weights: 0,
                attention: Vec::new(),
            }
        }
    }

    /// llama.cpp's protocol on 20 tokens at ctx 8: 2 windows, each starting with BOS and
    /// scoring positions 4..=6 (3 tokens); uniform logits give ln 4 per token.
    #[test]
    fn llama_cpp_protocol_scores_the_second_half_after_bos() {
        let tokens: Vec<u32> = (0..20).map(|i| i % 4).collect();
        let mut model = Uniform::default();
        let s = score(&mut model, &tokens, 8, Protocol::LlamaCpp, Some(3)).unwrap();
        assert_eq!((s.windows, s.scored), (2, 6));
        assert!(
            (s.nll - 6.0 * 4f64.ln()).abs() < 1e-5,
            "f32 log-softmax: {}",
            s.nll
        );
        assert_eq!(model.fed[1][0], 3, "the window starts with BOS");
        assert_eq!(model.fed[1][1..], tokens[9..16]);
        let full = score(&mut Uniform::default(), &tokens, 8, Protocol::Full, Some(3)).unwrap();
        assert_eq!((full.windows, full.scored), (2, 14));
        let short = score(
            &mut Uniform::default(),
            &tokens[..15],
            8,
            Protocol::LlamaCpp,
            None,
        );
        assert!(short
            .unwrap_err()
            .to_string()
            .contains("at least 2 x --ctx (16)"));
    }
}
