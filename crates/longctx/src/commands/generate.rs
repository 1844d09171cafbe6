use std::io::Write;

use anyhow::Result;
use clap::Args;
use longctx_models::{generate_greedy, GenerationSettings};

use super::{MethodArg, ModelArgs};

/// `longctx generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// The user's message.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Feed the prompt as raw text, without the model's chat template (a model that ships
    /// none, such as a pretrained one, always reads raw text).
    #[arg(long)]
    no_chat: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    method: MethodArg,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.max_new_tokens == 0 {
        anyhow::bail!("--max-new-tokens 0 would generate nothing: pass at least 1");
    }
    let (mut loaded, method) = args.model.load(&args.method)?;
    let chat = !args.no_chat && loaded.chat.is_some();
    if !args.no_chat && !chat {
        tracing::info!(
            "{} ships no chat template: the prompt is fed as raw text",
            loaded.source.display()
        );
    }
    let prompt = loaded.prompt_tokens(&args.prompt, chat)?;
    let settings = GenerationSettings {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: loaded.tokenizer.stop_tokens().to_vec(),
        min_new_tokens: 0,
    };
    let tokenizer = &loaded.tokenizer;
    let mut shown = 0;
    let mut produced = Vec::new();
    let mut stdout = std::io::stdout();
    // Stream text as it becomes whole: decode everything so far and print the new suffix.
    let generation = generate_greedy(loaded.model.as_mut(), &prompt, &settings, |token| {
        produced.push(token);
        if let Ok(text) = tokenizer.decode(&produced, true) {
            if text.len() > shown && text.is_char_boundary(shown) && !text.ends_with('\u{fffd}') {
                let _ = write!(stdout, "{}", &text[shown..]);
                let _ = stdout.flush();
                shown = text.len();
            }
        }
        true
    })?;
    let text = tokenizer.decode(&generation.tokens, true)?;
    if text.len() > shown {
        print!("{}", &text[shown..]);
    }
    println!();
    let decode_rate = generation.decode_steps as f64 / generation.decode.as_secs_f64().max(1e-9);
    tracing::info!(
        "method {method}: {} prompt tokens in {:.2}s ({:.1} tok/s); {} tokens generated, decode {:.1} tok/s; KV cache {} bytes",
        generation.prompt_tokens,
        generation.prefill.as_secs_f64(),
        generation.prompt_tokens as f64 / generation.prefill.as_secs_f64().max(1e-9),
        generation.tokens.len(),
        decode_rate,
        loaded.model.state_bytes()
    );
    Ok(())
}
