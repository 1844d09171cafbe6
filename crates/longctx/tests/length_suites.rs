//! The suites whose prompts are fitted to lengths in the model's tokens: RULER's tasks on its
//! own data (fetched like the other assets) and InfiniteBench's synthetic tasks, at 4,096
//! tokens of the default model: each prompt fits with its answer's tokens reserved, fills
//! most of that length, and holds what a correct answer must contain in its context part;
//! and both suites through `run` and `report`.

use longctx_models::{load_model, LoadOptions};
use longctx_tasks::infinitebench::InfiniteTask;
use longctx_tasks::ruler::{RulerData, RulerTask};

mod common;
use common::longctx_ok;

#[test]
fn every_ruler_task_builds_at_4k_tokens_of_the_default_model() {
    let data =
        RulerData::from_dir(&longctx::assets::ruler_dir().expect("fetching RULER's data")).unwrap();
    let model = longctx::assets::default_model().expect("fetching the default model");
    let loaded = load_model(&model, &LoadOptions::default()).unwrap();
    let count = |text: &str| loaded.prompt_tokens(text, false).unwrap().len();
    for task in RulerTask::ALL {
        for index in 0..2 {
            let s = task.generate(&data, 4096, &count, 0, index).unwrap();
            let tokens = count(&s.prompt.text) + task.tokens_to_generate();
            assert!(tokens <= 4096, "{}: {tokens} tokens", task.name());
            assert!(
                tokens > 3600,
                "{}: only {tokens} of 4,096 tokens",
                task.name()
            );
            let context = &s.prompt.text[..s.prompt.question_at];
            assert!(!s.answers.is_empty());
            for answer in &s.answers {
                assert!(
                    context.contains(answer.as_str()),
                    "{} sample {index}: {answer:?} is not in the context",
                    task.name()
                );
            }
            // A perfect answer scores 1, an empty one 0.
            assert_eq!(task.score(&s.answers.join(", "), &s.answers), 1.0);
            assert_eq!(task.score("", &s.answers), 0.0);
        }
    }
}

#[test]
fn every_infinitebench_task_builds_at_4k_tokens_of_the_default_model() {
    let model = longctx::assets::default_model().expect("fetching the default model");
    let loaded = load_model(&model, &LoadOptions::default()).unwrap();
    let count = |text: &str| loaded.prompt_tokens(text, false).unwrap().len();
    for task in InfiniteTask::ALL {
        for index in 0..2 {
            let s = task.generate(4096, &count, 0, index).unwrap();
            let tokens = count(&s.prompt.text) + task.tokens_to_generate();
            assert!(
                tokens <= 4096 && tokens > 3600,
                "{}: {tokens} tokens",
                task.name()
            );
            let context = &s.prompt.text[..s.prompt.question_at];
            if task != InfiniteTask::MathFind {
                assert!(
                    context.contains(&s.answer),
                    "{}: {:?}",
                    task.name(),
                    s.answer
                );
            }
            assert_eq!(task.score(&s.answer, &s.answer), 1.0);
        }
    }
}

/// One task of each suite at 1,024 tokens through `run`, then `report`.
#[test]
fn both_suites_run_and_report() {
    let work = std::env::temp_dir().join(format!("longctx-suites-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let spec = work.join("spec.toml");
    std::fs::write(
        &spec,
        "methods = [\"baseline\"]\n[[models]]\npath = \"default\"\n\
         [ruler]\ntasks = [\"niah_single_1\"]\nlengths = [1024]\nsamples = 1\n\
         [infinitebench]\ntasks = [\"passkey\"]\nlengths = [1024]\nsamples = 1\n",
    )
    .unwrap();
    let db = work.join("results.db");
    longctx_ok(&[
        "run",
        "--spec",
        spec.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    let rows = longctx::store::Store::open_read_only(&db)
        .unwrap()
        .rows()
        .unwrap();
    let tasks: Vec<&str> = rows.iter().map(|r| r.key.task.as_str()).collect();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks.contains(&"ruler/niah_single_1:length=1024"),
        "{tasks:?}"
    );
    assert!(
        tasks.contains(&"infinitebench/passkey:length=1024"),
        "{tasks:?}"
    );
    assert!(rows
        .iter()
        .all(|r| r.prompt_tokens > 800 && r.prompt_tokens <= 1024));
    let out = work.join("report");
    longctx_ok(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## RULER") && report.contains("## InfiniteBench"),
        "{report}"
    );
}
