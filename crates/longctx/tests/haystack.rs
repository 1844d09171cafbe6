//! The needle test and the synthetic suite on the real haystack (the 49 Paul Graham essays,
//! fetched and verified by `longctx fetch`).

use longctx_tasks::needle::{words, Haystack, NeedleGrid};
use longctx_tasks::synthetic::SyntheticTask;

fn haystack() -> Haystack {
    Haystack::from_dir(&longctx::assets::haystack_dir().expect("fetching the haystack")).unwrap()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn paper_grid_on_the_essays_is_pinned() {
    let h = haystack();
    assert_eq!(h.texts().len(), 49);
    let samples = NeedleGrid::paper(0).samples(&h);
    assert_eq!(samples.len(), 300);
    for s in samples.iter().filter(|s| s.trial == 0) {
        let haystack_words = words(&s.prompt.text).len();
        // The prompt holds the N haystack words plus the instruction, needle and question.
        assert!(
            haystack_words >= s.length && haystack_words <= s.length + 60,
            "{} words for {}",
            haystack_words,
            s.length
        );
    }
    let all: String = samples
        .iter()
        .map(|s| format!("{}|{}|{}\n", s.key, s.needle_word, s.prompt.text))
        .collect();
    assert_eq!(
        fnv1a(all.as_bytes()),
        PINNED,
        "the paper grid's prompts changed"
    );
}

/// FNV-1a of the paper grid (seed 0) on the essays in file-name order, as first generated.
const PINNED: u64 = 7139867267105897014;

#[test]
fn synthetic_tasks_build_from_the_essays() {
    let h = haystack();
    for task in SyntheticTask::ALL {
        let s = task.generate(&h, 4000, 0, 0);
        assert!(
            !s.answers.is_empty() && words(&s.prompt.text).len() > 3000,
            "{}",
            task.name()
        );
        let perfect = s.answers.join(" ");
        assert_eq!(task.score(&perfect, &s.answers), 1.0, "{}", task.name());
    }
}

#[test]
fn the_fitted_grid_fits_the_default_model() {
    use longctx_models::{load_model, LoadOptions};
    let loaded = load_model(
        &longctx::assets::default_model().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let context = loaded.model.context_limit();
    let per_word =
        longctx::tokenize::haystack_tokens_per_word(&loaded.tokenizer, context, &haystack());
    let grid = NeedleGrid::fitted(context, per_word, 0).unwrap();
    let longest = *grid.lengths.last().unwrap();
    assert!(
        longest > 4000,
        "longest haystack {longest} words for an {context}-token model"
    );
    let one = NeedleGrid {
        lengths: vec![longest],
        depths: vec![0.5],
        trials: 1,
        seed: 0,
    };
    let prompt = &one.samples(&haystack())[0].prompt.text;
    let tokens = loaded.prompt_tokens(prompt, true).unwrap().len();
    eprintln!("fitted grid: longest {longest} words = {tokens} prompt tokens (context {context})");
    assert!(
        tokens + longctx_tasks::needle::MAX_NEW_TOKENS <= context,
        "{tokens} prompt tokens"
    );
}
