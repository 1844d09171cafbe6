//! The synthetic suite: deterministic, answerable from its own prompt, scored 1 for a
//! perfect answer and 0 for an empty one.

use longctx_tasks::needle::{words, Haystack};
use longctx_tasks::synthetic::SyntheticTask;

fn haystack() -> Haystack {
    let paragraph = |i: usize| {
        (0..60)
            .map(|w| format!("w{i}x{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Haystack::from_texts(
        (0..6)
            .map(|e| {
                (0..5)
                    .map(|p| paragraph(e * 5 + p))
                    .collect::<Vec<_>>()
                    .join("\n\n")
                    + "\n"
            })
            .collect(),
    )
}

#[test]
fn every_task_is_deterministic_answerable_and_scored() {
    let h = haystack();
    for task in SyntheticTask::ALL {
        let a = task.generate(&h, 1500, 7, 0);
        assert_eq!(
            a,
            task.generate(&h, 1500, 7, 0),
            "{}: same seed, same sample",
            task.name()
        );
        assert_ne!(
            a,
            task.generate(&h, 1500, 7, 1),
            "{}: another index, another sample",
            task.name()
        );
        // The context is the target length, give or take one piece, plus the instructions.
        for (target, index) in [(800, 0), (800, 1), (1500, 0), (1500, 2), (3000, 3)] {
            let n = words(&task.generate(&h, target, 7, index).prompt.text).len();
            assert!(
                (target * 9 / 10..target + 400).contains(&n),
                "{}: {n} words for a target of {target}",
                task.name()
            );
        }
        let perfect = a.answers.join(", ");
        assert_eq!(task.score(&perfect, &a.answers), 1.0, "{}", task.name());
        assert_eq!(task.score("", &a.answers), 0.0, "{}", task.name());
        assert_eq!(SyntheticTask::by_name(task.name()), Some(task));
    }
}

#[test]
fn answers_are_in_the_context() {
    let h = haystack();
    for task in [
        SyntheticTask::MultiKeyNeedle,
        SyntheticTask::MultiValueNeedle,
        SyntheticTask::MultiQueryNeedle,
        SyntheticTask::VariableTracking,
    ] {
        let s = task.generate(&h, 2000, 3, 0);
        for a in &s.answers {
            assert!(
                s.prompt.text[..s.prompt.question_at].contains(a.as_str()),
                "{}: {a} not in the prompt's context part",
                task.name()
            );
        }
    }
    let s = SyntheticTask::VariableTracking.generate(&h, 2000, 3, 0);
    assert!(s
        .prompt
        .text
        .contains(&format!("VAR {} = VAR {}.", s.answers[1], s.answers[0])));
}

#[test]
fn common_words_are_five_times_as_frequent() {
    let s = SyntheticTask::CommonWords.generate(&haystack(), 3000, 1, 0);
    let count = |w: &str| {
        s.prompt
            .text
            .split(' ')
            .filter(|x| x.trim_end_matches('\n') == w)
            .count()
    };
    let common = count(&s.answers[0]);
    assert!(common >= 5);
    for w in ["amber", "anchor", "zebra", "young"] {
        if !s.answers.iter().any(|a| a == w) {
            assert_eq!(count(w) * 5, common, "{w}");
        }
    }
}

#[test]
fn passage_tasks_have_the_right_answers() {
    let h = haystack();
    let count = SyntheticTask::PassageCount.generate(&h, 2000, 5, 0);
    let listed: Vec<&str> = count
        .prompt
        .text
        .split("\n\nParagraph ")
        .skip(1)
        .map(|p| p.split_once(": ").unwrap().1.split("\n\n").next().unwrap())
        .collect();
    let mut unique = listed.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(count.answers, vec![unique.len().to_string()]);
    let retrieval = SyntheticTask::PassageRetrieval.generate(&h, 2000, 5, 0);
    let k: usize = retrieval.answers[0]
        .strip_prefix("Paragraph ")
        .unwrap()
        .parse()
        .unwrap();
    let quote = retrieval
        .prompt
        .text
        .split("The following is the quotation.\n\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    let paragraph = retrieval
        .prompt
        .text
        .split(&format!("Paragraph {k}: "))
        .nth(1)
        .unwrap();
    assert!(
        paragraph.starts_with(quote),
        "the quotation opens paragraph {k}"
    );
}
