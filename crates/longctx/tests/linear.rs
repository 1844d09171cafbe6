//! Linear-time and hybrid models against references we did not write: tiny random Mamba,
//! Mamba-2 and RecurrentGemma written with their logits by `scripts/linear_reference.py`
//! (transformers' sequential or chunked paths in f32; the script says where it corrects
//! transformers), and tiny random RWKV-6 and RWKV-7 GGUF files with llama.cpp's logits from
//! `scripts/rwkv_reference.py`.
//! Prefill (one pass) and decoding (a prefix, then one token at a time) must give the same
//! logits as the reference within 1e-4 (f32 sums in another order), and the state stays the
//! same size whatever was read.

use std::path::{Path, PathBuf};

use longctx_models::{load_model, DecodeActivations, LoadOptions, Logits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    ids: Vec<u32>,
    /// How many of `ids` the prefill reference covers.
    prefill_tokens: usize,
    prefill: Vec<f32>,
    decode_from: usize,
    decode: Vec<f32>,
    /// A text and the reference's token ids for it (GGUF fixtures, whose vocabulary we read).
    text: Option<String>,
    text_ids: Option<Vec<u32>>,
}

fn worst(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture `name`'s logits in prefill and in decoding against its reference, and its
/// state's size (`state` bytes) before and after reading.
/// Returns the bytes of weights the model holds.
fn matches_reference(name: &str, format: Format, state: usize) -> usize {
    let (file, options) = match format {
        Format::GgufQ8 => (
            "reference_logits-q8_0.json",
            LoadOptions {
                decode_activations: DecodeActivations::F32,
                ..LoadOptions::default()
            },
        ),
        _ => ("reference_logits.json", LoadOptions::default()),
    };
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join(file)).unwrap()).unwrap();
    let mut loaded = load_model(&model_path(name, format), &options).unwrap();
    let name = format!("{name} ({format:?})");
    if let (Some(text), Some(ids)) = (&reference.text, &reference.text_ids) {
        let ours = loaded.tokenizer.encode(text, true).unwrap();
        assert_eq!(&ours, ids, "{name}: token ids of {text:?}");
        assert_eq!(&loaded.tokenizer.decode(&ours, true).unwrap(), text);
    }
    let model = loaded.model.as_mut();
    assert!(model.cache().is_none(), "{name} keeps no KV cache");
    assert_eq!(model.state_bytes(), state, "{name}: state before reading");
    let prefill: Vec<f32> = model
        .append(&reference.ids[..reference.prefill_tokens], Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let diff = worst(&prefill, &reference.prefill);
    eprintln!("{name}: prefill logits within {diff:.1e}");
    assert!(diff < 1e-4, "{name}: prefill logits differ by {diff}");
    assert_eq!(model.state_bytes(), state, "{name}: state after prefill");

    model.reset();
    let split = reference.decode_from;
    let mut decoded: Vec<f32> = model
        .append(&reference.ids[..split], Logits::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for &id in &reference.ids[split..reference.ids.len() - 1] {
        decoded.extend(
            model
                .step(id)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    let diff = worst(&decoded, &reference.decode[..decoded.len()]);
    eprintln!("{name}: decoding logits within {diff:.1e}");
    assert!(diff < 1e-4, "{name}: decoding logits differ by {diff}");
    assert_eq!(model.state_bytes(), state, "{name}: state after decoding");
    // No KV method applies to it.
    let err = model
        .set_cache(Box::new(|_, _, _| unreachable!("never built")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("without a KV cache"), "{err}");
    model.weight_bytes()
}

/// Which of a fixture's files a test loads.
#[derive(Clone, Copy, Debug)]
enum Format {
    /// The Hugging Face folder.
    Folder,
    /// `<name>.gguf` in it.
    Gguf,
    /// `<name>-q8_0.gguf`, read with f32 activations: it must give the logits of the values
    /// its Q8_0 blocks hold (`reference_logits-q8_0.json`).
    GgufQ8,
}

fn model_path(name: &str, format: Format) -> PathBuf {
    match format {
        Format::Folder => fixture(name),
        Format::Gguf => fixture(name).join(format!("{name}.gguf")),
        Format::GgufQ8 => fixture(name).join(format!("{name}-q8_0.gguf")),
    }
}

/// 2 layers × (128 channels × 4 convolution inputs + 128 × 16 states), in f32.
const MAMBA_STATE: usize = 2 * (128 * 4 + 128 * 16) * 4;

#[test]
fn mamba_logits_match_transformers_in_prefill_and_decoding() {
    matches_reference("tiny_mamba", Format::Folder, MAMBA_STATE);
    // The same weights as llama.cpp's converter writes them.
    matches_reference("tiny_mamba", Format::Gguf, MAMBA_STATE);
}

#[test]
fn mamba2_logits_match_transformers_in_prefill_and_decoding() {
    // 2 layers × ((128 + 2 groups × 2 × 16) channels × 4 inputs + 8 heads × 16 × 16 states).
    let state = 2 * (192 * 4 + 8 * 16 * 16) * 4;
    matches_reference("tiny_mamba2", Format::Folder, state);
    matches_reference("tiny_mamba2", Format::Gguf, state);
}

#[test]
fn recurrent_gemma_logits_match_transformers_past_its_window() {
    // 3 recurrent layers × (48 channels × 4 inputs + 48) and one attention layer's window of
    // 16 keys and values of one 12-wide head.
    matches_reference(
        "tiny_recurrent_gemma",
        Format::Folder,
        (3 * (48 * 4 + 48) + 2 * 16 * 12) * 4,
    );
}

#[test]
fn rwkv6_logits_match_llama_cpp_in_prefill_and_decoding() {
    rwkv_matches_llama_cpp("tiny_rwkv6");
}

#[test]
fn rwkv7_logits_match_llama_cpp_in_prefill_and_decoding() {
    rwkv_matches_llama_cpp("tiny_rwkv7");
}

/// An RWKV fixture in f32 and in Q8_0; the quantized matrices stay quantized in memory.
fn rwkv_matches_llama_cpp(name: &str) {
    // 2 layers × (2 shifted rows of 128 + 2 heads × 64 × 64 WKV states).
    let state = 2 * (2 * 128 + 2 * 64 * 64) * 4;
    let f32_bytes = matches_reference(name, Format::Gguf, state);
    let q8_bytes = matches_reference(name, Format::GgufQ8, state);
    assert!(
        q8_bytes * 10 < f32_bytes * 6,
        "{name}: {q8_bytes} bytes of weights held from Q8_0 against {f32_bytes} from f32"
    );
}

/// The tiny Mamba through `bench` and `run`: the state stands where KV bytes stand, the same
/// at 512 and 8,192 tokens; a KV method on it is refused; the needle runs end to end, beside
/// the tiny RecurrentGemma and the tiny RWKV-7 GGUF, and the report shows each under its school
/// with the paper's rows of those schools.
#[test]
fn a_recurrent_model_benches_and_runs_with_its_state() {
    use std::process::Command;
    let dir = fixture("tiny_mamba");
    let longctx = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let model = dir.to_str().unwrap();
    let (ok, stdout, stderr) = longctx(&[
        "bench",
        "--model",
        model,
        "--contexts",
        "512,8192",
        "--decode-tokens",
        "8",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let state = MAMBA_STATE;
    for row in &rows {
        assert_eq!(row["kv_bytes"], state, "{row}");
    }
    let (ok, _, stderr) = longctx(&[
        "bench",
        "--model",
        model,
        "--contexts",
        "64",
        "--method",
        "h2o-4x",
    ]);
    assert!(
        !ok && stderr.contains("a KV-cache method on a model without a KV cache"),
        "{stderr}"
    );

    let work = std::env::temp_dir().join(format!("longctx-linear-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let hybrid = fixture("tiny_recurrent_gemma");
    let hybrid = hybrid.to_str().unwrap();
    let rwkv = model_path("tiny_rwkv7", Format::Gguf);
    let rwkv = rwkv.to_str().unwrap();
    let spec = work.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "methods = [\"baseline\"]\n[[models]]\npath = \"{model}\"\n[[models]]\npath = \"{hybrid}\"\n[[models]]\npath = \"{rwkv}\"\n\
             [needle]\nlengths = 1\nmin_words = 200\nmax_words = 200\ndepths = 1\ntrials = 1\nmax_new_tokens = 4\n"
        ),
    )
    .unwrap();
    let db = work.join("results.db");
    let (ok, _, stderr) = longctx(&[
        "run",
        "--spec",
        spec.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let rows = longctx::store::Store::open_read_only(&db)
        .unwrap()
        .rows()
        .unwrap();
    assert_eq!(rows.len(), 3);
    let mamba = rows.iter().find(|r| r.key.model == "tiny_mamba").unwrap();
    assert_eq!((mamba.kv_bytes, mamba.kept_tokens), (state as i64, 0));
    let out = work.join("report");
    let (ok, _, stderr) = longctx(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--paper",
    ]);
    assert!(ok, "{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for expected in [
        "| tiny_mamba | native (linear-time) |",
        "| tiny_recurrent_gemma | native (hybrid) |",
        "| tiny_rwkv7 | native (linear-time) |",
        "| Mamba-2.8B | native |",
        "| R-Gemma-2B-it | 12.0 |",
    ] {
        assert!(
            report.contains(expected),
            "{expected} missing from:\n{report}"
        );
    }
}
