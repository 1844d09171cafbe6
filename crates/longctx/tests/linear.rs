//! Linear-time models against transformers: a tiny random Mamba written with its logits by
//! `scripts/mamba_reference.py` (transformers 4.45's sequential path, in f32). Prefill (one
//! pass over 40 tokens) and decoding (24 tokens, then one at a time) must give the same logits
//! as transformers' within 1e-4 (f32 sums in another order), and the state stays the same
//! size whatever was read.

use std::path::Path;

use longctx_models::{load_model, LoadOptions, Logits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    ids: Vec<u32>,
    prefill: Vec<f32>,
    decode_from: usize,
    decode: Vec<f32>,
}

fn worst(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mamba_logits_match_transformers_in_prefill_and_decoding() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_mamba");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_logits.json")).unwrap())
            .unwrap();
    let mut loaded = load_model(&dir, &LoadOptions::default()).unwrap();
    let model = loaded.model.as_mut();
    assert!(
        model.cache().is_none(),
        "a recurrent model keeps no KV cache"
    );
    let prefill: Vec<f32> = model
        .append(&reference.ids, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let diff = worst(&prefill, &reference.prefill);
    assert!(diff < 1e-4, "prefill logits differ by {diff}");
    let state = model.state_bytes();

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
    assert!(diff < 1e-4, "decoding logits differ by {diff}");
    // Constant state: 2 layers × (128 × 4 convolution inputs + 128 × 16 states) in f32.
    assert_eq!(state, 2 * (128 * 4 + 128 * 16) * 4);
    assert_eq!(model.state_bytes(), state);
    // No KV method applies to it.
    let err = model
        .set_cache(Box::new(|_, _, _| unreachable!("never built")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("without a KV cache"), "{err}");
}

/// The tiny Mamba through `bench` and `run`: the state stands where KV bytes stand, the same
/// at 512 and 8,192 tokens; a KV method on it is refused; the needle runs end to end.
#[test]
fn a_recurrent_model_benches_and_runs_with_its_state() {
    use std::process::Command;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_mamba");
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
    let state = 2 * (128 * 4 + 128 * 16) * 4;
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
    let spec = work.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "methods = [\"baseline\"]\n[[models]]\npath = \"{model}\"\n\
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
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].kv_bytes, rows[0].kept_tokens), (state as i64, 0));
}
