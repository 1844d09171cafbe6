//! DuoAttention's calibration on the default model: a head pattern over every layer and
//! key/value head, the same on every run, smaller where the window covers more, and a clear
//! refusal where no prompt fits the model.

use longctx::head_patterns::{calibrate, pattern_path, CALIBRATION};
use longctx_kv::DuoAttention;
use longctx_models::{load_model, LoadOptions, LoadedModel};
use longctx_tasks::needle::Haystack;
use longctx_tasks::passkeys::PasskeyCalibration;

/// Two short prompts of 4 passkeys: seconds, not the real calibration's minutes.
const SMALL: PasskeyCalibration = PasskeyCalibration {
    prompts: 2,
    min_words: 300,
    max_words: 600,
    passkeys: 4,
    passkey_words: 8,
    seed: 1,
};

fn model(options: LoadOptions) -> LoadedModel {
    let path = longctx::assets::default_model().expect("fetching the default model");
    load_model(&path, &options).unwrap()
}

fn essays() -> Haystack {
    Haystack::from_dir(&longctx::assets::haystack_dir().expect("fetching the haystack")).unwrap()
}

#[test]
fn calibration_scores_every_head_alike_on_every_run_and_less_under_a_wider_window() {
    let (mut loaded, essays) = (model(LoadOptions::default()), essays());
    let duo = |recent| DuoAttention { sinks: 4, recent };
    let narrow = calibrate(&mut loaded, duo(32), &SMALL, &essays).unwrap();
    assert_eq!((narrow.layers(), narrow.kv_heads()), (30, 3));
    let scores: Vec<f64> = (0..30)
        .flat_map(|l| (0..3).map(move |h| (l, h)))
        .map(|(l, h)| narrow.score(l, h))
        .collect();
    assert!(
        scores.iter().all(|s| s.is_finite() && *s > 0.0),
        "{scores:?}"
    );
    assert_eq!(
        calibrate(&mut loaded, duo(32), &SMALL, &essays).unwrap(),
        narrow
    );
    // A head reading more of the context moves less when it streams: on average over heads.
    let wide = calibrate(&mut loaded, duo(256), &SMALL, &essays).unwrap();
    let mean = |p: &longctx_kv::HeadPattern| {
        (0..30)
            .flat_map(|l| (0..3).map(move |h| p.score(l, h)))
            .sum::<f64>()
            / 90.0
    };
    eprintln!(
        "mean distance: window 32 {:.4}, window 256 {:.4}",
        mean(&narrow),
        mean(&wide)
    );
    assert!(mean(&wide) < mean(&narrow));
    // A window covering every prompt leaves nothing to score.
    let err = calibrate(&mut loaded, duo(100_000), &SMALL, &essays).unwrap_err();
    assert!(format!("{err:#}").contains("scored no token"), "{err:#}");
}

#[test]
fn prompts_beyond_the_context_are_left_out_and_none_fitting_is_refused() {
    let mut short = model(LoadOptions {
        context: Some(256),
        ..LoadOptions::default()
    });
    let duo = DuoAttention {
        sinks: 4,
        recent: 32,
    };
    let err = calibrate(&mut short, duo, &SMALL, &essays()).unwrap_err();
    assert!(
        format!("{err:#}").contains("no calibration prompt fits"),
        "{err:#}"
    );
    // Patterns are kept apart by model, window and calibration.
    let path = longctx::assets::default_model().unwrap();
    let a = pattern_path(&path, duo, &CALIBRATION).unwrap();
    assert_ne!(
        a,
        pattern_path(&path, DuoAttention { recent: 64, ..duo }, &CALIBRATION).unwrap()
    );
    assert_ne!(a, pattern_path(&path, duo, &SMALL).unwrap());
}
