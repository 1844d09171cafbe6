//! InfiniteBench's synthetic tasks: its scorer's verdicts on 1,680 real predictions of seven
//! models (`tests/fixtures/infinitebench_scores.jsonl`, written by
//! `scripts/infinitebench_metric_reference.py` with the functions of its `compute_scores.py`)
//! reproduced exactly, and generated samples that fit their length and hold their answer.

use longctx_tasks::infinitebench::InfiniteTask;
use serde::Deserialize;

#[derive(Deserialize)]
struct Scored {
    task: String,
    model: String,
    prediction: String,
    label: String,
    score: f64,
}

#[test]
fn scores_equal_infinitebenchs_on_real_predictions() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/infinitebench_scores.jsonl"
    );
    let rows: Vec<Scored> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1680);
    let mut wrong = Vec::new();
    for r in &rows {
        let task = InfiniteTask::by_name(&r.task).unwrap();
        if task.score(&r.prediction, &r.label) != r.score {
            wrong.push(format!(
                "{} {}: {:?} vs {:?} -> {}",
                r.task, r.model, r.prediction, r.label, r.score
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differ, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Both verdicts occur for every task.
    for task in InfiniteTask::ALL {
        for score in [0.0, 1.0] {
            assert!(rows
                .iter()
                .any(|r| r.task == task.name() && r.score == score));
        }
    }
}

#[test]
fn samples_fit_their_length_and_hold_their_answer() {
    // A word a token: a stand-in tokenizer.
    let count = |text: &str| text.split_whitespace().count();
    for task in InfiniteTask::ALL {
        for index in 0..3 {
            let s = task.generate(2000, &count, 5, index).unwrap();
            let tokens = count(&s.prompt.text) + task.tokens_to_generate();
            assert!(tokens <= 2000 && tokens > 1800, "{}: {tokens}", task.name());
            assert_eq!(s, task.generate(2000, &count, 5, index).unwrap());
            // A right answer scores 1, a wrong one 0.
            assert_eq!(
                task.score(&format!("{} ", s.answer), &s.answer),
                1.0,
                "{}",
                task.name()
            );
            assert_eq!(task.score("none", &s.answer), 0.0);
            let context = &s.prompt.text[..s.prompt.question_at];
            match task {
                InfiniteTask::MathFind => {
                    // The answer follows from the list.
                    let list: Vec<u32> = context
                        [context.find('[').unwrap() + 1..context.find(']').unwrap()]
                        .split(", ")
                        .map(|n| n.parse().unwrap())
                        .collect();
                    let asked = s.prompt.question();
                    if asked.contains("The largest number") {
                        assert_eq!(s.answer, list.iter().max().unwrap().to_string());
                    }
                    if asked.contains("The smallest number") {
                        assert_eq!(s.answer, list.iter().min().unwrap().to_string());
                    }
                }
                _ => assert!(context.contains(&s.answer), "{}", task.name()),
            }
        }
    }
}
