//! RULER's tasks on its own data (fetched like the other assets) at 4,096 tokens of the
//! default model: each prompt fits with its answer's tokens reserved, fills most of that
//! length, and holds what a correct answer must contain in its context part.

use longctx_models::{load_model, LoadOptions};
use longctx_tasks::ruler::{RulerData, RulerTask};

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
