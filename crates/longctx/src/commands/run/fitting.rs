//! A sample's prompt as one model reads it (cut or streamed, split for the query-agnostic
//! protocol, inside the chat template), and the settings its stored row is checked by.

use anyhow::{Context, Result};
use longctx_kv::MAX_STREAM_POSITIONS;
use longctx_models::{Feed, LoadedModel};
use longctx_tasks::longbench;
use longctx_tasks::prompt::Prompt;
use longctx_tasks::SCORING_VERSION;
use sha2::{Digest, Sha256};

use super::{Job, TaskSample};
use crate::commands::ModelArgs;
use crate::experiment::Protocol;
use crate::store::Settings;
use crate::tokenize::ModelTokenizer;

/// A sample's prompt as one model reads it under one protocol.
pub(super) struct Fitted {
    /// Token ids, chat template included.
    pub(super) tokens: Vec<u32>,
    /// How the tokens are fed: where the prefill the cache compresses ends (the context
    /// part under the query-agnostic protocol), and the input length a streamed prompt's
    /// budget derives from.
    pub(super) feed: Feed,
}

/// A sample's prompt (`prompt`: its own, or a compressor's shorter one) for this model:
/// LongBench prompts cut in the middle to `max_length`
/// (or, `streamed`, whole, with the budget of `min(L, max_length)` tokens), then the chat
/// template where the task uses it and the model ships one (a pretrained model without one
/// reads the raw prompt, as LongBench's `pred.py` feeds models it does not chat with; the
/// token ids, and so the stored prompt hash, differ). `max_length` defaults to the model's context less the
/// answer (`max_new_tokens`) and less what this model's chat template adds around the
/// prompt (measured on an empty message). Under the query-agnostic protocol the context and
/// the question are tokenized apart; a question cut by truncation is an error, as is a
/// prompt that leaves no room for the answer.
pub(super) fn fitted_prompt(
    loaded: &LoadedModel,
    max_length: Option<usize>,
    s: &TaskSample,
    prompt: &Prompt,
    protocol: Protocol,
    streamed: bool,
) -> Result<Fitted> {
    let context = loaded.model.trained_context();
    let chat = s.chat && loaded.chat.is_some();
    let limit = if streamed {
        MAX_STREAM_POSITIONS
    } else {
        context
    };
    let longbench_length = match &s.job {
        Job::LongBench { .. } => {
            let template = loaded.prompt_tokens("", chat)?.len();
            Some(max_length.unwrap_or(context.saturating_sub(s.max_new_tokens + template)))
        }
        _ => None,
    };
    let mut cut_to = longbench_length.filter(|_| !streamed);
    // With the default max_length, a cut that still comes out a few tokens long (tokens
    // merged or split again across the cut, or between context and question) is cut again
    // by that much.
    for _ in 0..8 {
        let text = match cut_to {
            Some(n) => {
                longbench::truncate_middle(&prompt.text, n, &ModelTokenizer(&loaded.tokenizer))
            }
            None => prompt.text.clone(),
        };
        let (tokens, context_tokens) = match protocol {
            Protocol::Paper => {
                let tokens = loaded.prompt_tokens(&text, chat)?;
                let n = tokens.len();
                (tokens, n)
            }
            Protocol::QueryAgnostic => {
                let question = prompt.question();
                if !text.ends_with(question) {
                    anyhow::bail!(
                        "{} sample {}: cutting the prompt to max_length reached into its question, which the query-agnostic protocol needs whole: raise max_length",
                        s.task,
                        s.id
                    );
                }
                loaded.prompt_tokens_split(&text, text.len() - question.len(), chat)?
            }
        };
        let over = (tokens.len() + s.max_new_tokens).saturating_sub(limit);
        match cut_to {
            _ if over == 0 => {
                let budget_input = longbench_length
                    .filter(|&n| streamed && context_tokens > n)
                    .map(|n| context_tokens.min(n));
                let feed = Feed {
                    context: Some(context_tokens),
                    budget_input,
                };
                return Ok(Fitted { tokens, feed });
            }
            Some(n) if max_length.is_none() && over < n => cut_to = Some(n - over),
            _ => anyhow::bail!(
                "{} sample {}: the prompt is {} tokens; with {} for the answer it exceeds the model's context of {limit}: shorten the task (needle max_words, synthetic words) or set max_length",
                s.task,
                s.id,
                tokens.len(),
                s.max_new_tokens
            ),
        }
    }
    anyhow::bail!(
        "{} sample {}: no cut of the prompt fits the model's context of {limit} with {} tokens for the answer: set max_length",
        s.task,
        s.id,
        s.max_new_tokens
    )
}

/// What a model's rows depend on besides their key and prompt: the model's content and the
/// options that change its numbers, the seed and the scoring rules.
pub(super) fn model_settings(
    args: &ModelArgs,
    max_length: Option<usize>,
    seed: u64,
) -> Result<Settings> {
    let path = args.model_path()?;
    let sha = crate::assets::model_sha256(&path)
        .with_context(|| format!("reading {} to fingerprint it", path.display()))?;
    let or_trained = |v: Option<String>| v.unwrap_or_else(|| "trained".into());
    Ok(Settings::default()
        .with("model_sha256", sha)
        .with("context", or_trained(args.context.map(|c| c.to_string())))
        .with(
            "rope_theta",
            or_trained(args.rope_theta.map(|t| t.to_string())),
        )
        .with("prefill_chunk", args.prefill_chunk)
        .with("kv_precision", args.kv_precision.name())
        .with("decode_activations", args.decode_activations.name())
        .with("kv_arithmetic", longctx_kv::KV_ARITHMETIC_VERSION)
        .with(
            "max_length",
            max_length.map_or("auto".into(), |m| m.to_string()),
        )
        .with("seed", seed)
        .with("scoring", SCORING_VERSION))
}

/// A row's settings: its model's, the exact tokens fed (and where the prefill ended, and
/// the budget's input length), the answer length and, for LongBench, whether the prompt
/// was streamed whole or cut.
pub(super) fn row_settings(
    model: &Settings,
    fitted: &Fitted,
    s: &TaskSample,
    streamed: bool,
) -> Settings {
    let mut hash = Sha256::new();
    for t in &fitted.tokens {
        hash.update(t.to_le_bytes());
    }
    let feed = &fitted.feed;
    for n in [feed.context, feed.budget_input] {
        hash.update((n.map_or(u64::MAX, |n| n as u64)).to_le_bytes());
    }
    let settings = model
        .clone()
        .with("prompt_sha256", format!("{:x}", hash.finalize()))
        .with("max_new_tokens", s.max_new_tokens);
    match (&s.job, streamed) {
        (Job::LongBench { .. }, true) => settings.with("truncation", "stream"),
        (Job::LongBench { .. }, false) => settings.with("truncation", "middle"),
        _ => settings,
    }
}
