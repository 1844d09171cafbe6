//! Prompt compressors, the paper's third school: text in, shorter text out, then the model
//! reads it with its full cache. Which part of a prompt is compressed is the benchmark's
//! rule: a LongBench sample's context field (its instruction and question are kept), the
//! needle's and the synthetic tasks' whole prompt.

pub mod llmlingua;
pub mod llmlingua2;
pub mod xlm_roberta;

use std::path::PathBuf;

use anyhow::Result;
pub use llmlingua::{Compressed, LlmLinguaSettings, Scorer, Target};
use longctx_models::LoadedModel;
pub use xlm_roberta::TokenClassifier;

/// How the compressible text reaches the compressor: whole (the benchmark passes one
/// string), or cut at blank lines into contexts for the coarse stage to rank and choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One context: only the fine (token-level) stage runs.
    Whole,
    /// Paragraphs (text between blank lines), joined back with blank lines.
    Paragraphs,
}

impl Split {
    /// How the spec spells it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Whole => "none",
            Split::Paragraphs => "paragraphs",
        }
    }
}

/// LLMLingua-1 as a method spec names it.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmLingua {
    /// Its settings.
    pub settings: LlmLinguaSettings,
    /// How the text is divided for the coarse stage.
    pub split: Split,
    /// The scoring model: `default` (the default model) or a model as `--model` takes it.
    pub scorer: String,
    /// LongLLMLingua: the sample's question conditions the compression (and the question
    /// part of the prompt is kept, not compressed).
    pub question: bool,
}

/// LLMLingua-2 as a method spec names it.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmLingua2Spec {
    /// How much to keep, in GPT-3.5 tokens (llmlingua's count).
    pub target: Target,
    /// The classifier's Hugging Face folder, or `default` for [`llmlingua2_default_folder`].
    pub model: String,
}

/// Where `model=default` looks for LLMLingua-2's classifier: the benchmark's
/// `microsoft/llmlingua-2-xlm-roberta-large-meetingbank`, prepared by
/// `scripts/llmlingua2_prepare.py`, in longctx's cache (it cannot be fetched here).
pub fn llmlingua2_default_folder() -> PathBuf {
    crate::assets::cache_dir().join("models/llmlingua-2-xlm-roberta-large-meetingbank")
}

/// A prompt compressor as a method spec names it.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptCompressor {
    /// LLMLingua-1: a causal LM's surprisal, on this engine.
    LlmLingua(LlmLingua),
    /// LLMLingua-2: an XLM-RoBERTa token classifier.
    LlmLingua2(LlmLingua2Spec),
}

/// The model a compressor runs, loaded.
pub enum CompressorModel<'a> {
    /// LLMLingua-1's scoring LM, and for LongLLMLingua a second instance of it.
    Scorer(&'a mut LoadedModel, Option<&'a mut LoadedModel>),
    /// LLMLingua-2's classifier.
    Classifier(&'a TokenClassifier),
}

impl PromptCompressor {
    /// The scorer that stands for the default model.
    pub const DEFAULT_SCORER: &'static str = "default";

    /// What to keep.
    pub fn target(&self) -> Target {
        match self {
            PromptCompressor::LlmLingua(c) => c.settings.target,
            PromptCompressor::LlmLingua2(c) => c.target,
        }
    }

    /// The share of tokens kept, where the settings give one.
    pub fn rate(&self) -> Option<f64> {
        match self.target() {
            Target::Rate(r) => Some(r),
            Target::Tokens(_) => None,
        }
    }

    /// The compressor's time in prefills of the prompt it is given, when the scorer is the
    /// model itself, for plans. Measured with the default model (`run --spec
    /// experiments/needle-llmlingua.toml` and the same grid under `longllmlingua-4x`):
    /// LLMLingua reads the text once whole, then window by window with the kept part of the
    /// window before (2.5× the baseline's prefill time at 774 tokens, 2.8× at 2,883);
    /// LongLLMLingua does so twice and ranks paragraphs (4.7× at 774, 5.6× at 2,201).
    /// LLMLingua-2's classifier is not the model, so its cost is not modelled (zero).
    pub fn prefills(&self) -> f64 {
        match self {
            PromptCompressor::LlmLingua(c) if c.question => 5.2,
            PromptCompressor::LlmLingua(_) => 2.8,
            PromptCompressor::LlmLingua2(_) => 0.0,
        }
    }

    /// Whether the compressor reads the sample's question (LongLLMLingua).
    pub fn reads_question(&self) -> bool {
        matches!(self, PromptCompressor::LlmLingua(c) if c.question)
    }

    /// The method and its target in a phrase, for messages.
    pub fn label(&self) -> String {
        let name = match self {
            PromptCompressor::LlmLingua(c) if c.question => "longllmlingua",
            PromptCompressor::LlmLingua(_) => "llmlingua",
            PromptCompressor::LlmLingua2(_) => "llmlingua2",
        };
        match self.target() {
            Target::Rate(r) => format!("{name} (keeping {:.1}% of tokens)", 100.0 * r),
            Target::Tokens(n) => format!("{name} (keeping {n} tokens)"),
        }
    }

    /// Compress one text with its loaded model; `question` is read where the compressor
    /// reads one ([`PromptCompressor::reads_question`]).
    pub fn compress(&self, model: CompressorModel, text: &str, question: &str) -> Result<String> {
        match (self, model) {
            (PromptCompressor::LlmLingua(c), CompressorModel::Scorer(loaded, contrast)) => {
                let contexts: Vec<String> = match c.split {
                    Split::Whole => vec![text.to_string()],
                    Split::Paragraphs => text.split("\n\n").map(str::to_string).collect(),
                };
                let mut scorer = Scorer {
                    model: loaded.model.as_mut(),
                    contrast: match contrast {
                        Some(m) => Some(m.model.as_mut()),
                        None => None,
                    },
                    tokenizer: &loaded.tokenizer,
                };
                let question = c.question.then_some(question);
                Ok(llmlingua::compress(&mut scorer, &contexts, &c.settings, question)?.text)
            }
            (PromptCompressor::LlmLingua2(c), CompressorModel::Classifier(classifier)) => {
                Ok(llmlingua2::LlmLingua2::new(classifier)?
                    .compress(text, c.target)?
                    .text)
            }
            _ => anyhow::bail!("{}: given the other compressor's model", self.label()),
        }
    }
}
