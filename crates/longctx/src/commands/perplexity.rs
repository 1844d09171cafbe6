use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use longctx_models::{LanguageModel, Logits, Reservation};

use super::{MethodArg, ModelArgs};

/// `longctx perplexity`.
#[derive(Args)]
pub struct PerplexityArgs {
    /// The text to score.
    #[arg(long)]
    text: PathBuf,
    /// Window length in tokens; windows do not overlap and each restarts the sequence.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    method: MethodArg,
}

/// Summed negative log-likelihood of `window[1..]` given its prefix, and the count scored.
pub fn window_nll(model: &mut dyn LanguageModel, window: &[u32]) -> Result<(f64, usize)> {
    model.reset();
    model.reserve(Reservation::prompt(window.len(), 0))?;
    let logits = model.append(window, Logits::All)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, 1)?;
    let rows: Vec<Vec<f32>> = log_probs.to_vec2()?;
    let nll: f64 = window[1..]
        .iter()
        .enumerate()
        .map(|(i, &next)| -(rows[i][next as usize] as f64))
        .sum();
    Ok((nll, window.len() - 1))
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
    // Whole windows only, so every window is scored in the same conditions; a text shorter
    // than one window is scored as a single window.
    let windows: Vec<&[u32]> = if tokens.len() < args.ctx {
        vec![&tokens[..]]
    } else {
        tokens.chunks_exact(args.ctx).collect()
    };
    let (mut nll, mut count) = (0.0, 0);
    for window in &windows {
        let (n, c) = window_nll(loaded.model.as_mut(), window)?;
        nll += n;
        count += c;
    }
    println!(
        "tokens {}  windows {} x {}  scored {}  nll {:.6}  perplexity {:.4}  method {method}",
        tokens.len(),
        windows.len(),
        windows[0].len(),
        count,
        nll / count as f64,
        (nll / count as f64).exp()
    );
    Ok(())
}
