//! LongBench loading and prompts against the official tables and real rows in
//! ../shared/reference/longbench (read in place, never copied; skipped where absent).

use std::path::{Path, PathBuf};

use longctx_tasks::longbench::{load, Dataset, LongBenchError, OnBadLine, DATASETS};

fn reference() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/longbench");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} is absent (the shared reference folder is not beside this checkout)",
            dir.display()
        );
        None
    }
}

#[test]
fn prompt_templates_and_lengths_equal_the_official_tables_byte_for_byte() {
    let Some(dir) = reference() else { return };
    let prompts: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dataset2prompt.json")).unwrap())
            .unwrap();
    let lengths: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dataset2maxlen.json")).unwrap())
            .unwrap();
    for d in DATASETS {
        assert_eq!(
            d.template().as_bytes(),
            prompts[d.name].as_str().unwrap().as_bytes(),
            "{}",
            d.name
        );
        assert_eq!(
            d.max_new_tokens() as u64,
            lengths[d.name].as_u64().unwrap(),
            "{}",
            d.name
        );
    }
}

#[test]
fn loads_the_real_sample_rows() {
    let Some(dir) = reference() else { return };
    let sample = dir.join("sample");
    let mut datasets = 0;
    for d in DATASETS {
        if !sample.join(format!("{}.jsonl", d.name)).exists() {
            continue;
        }
        let loaded = load(&sample, d.name, OnBadLine::Fail).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !loaded.samples.is_empty() && loaded.skipped.is_empty(),
            "{}",
            d.name
        );
        let prompt = d.prompt(&loaded.samples[0]);
        assert!(
            prompt.text.contains(&loaded.samples[0].context)
                && prompt.text.contains(&loaded.samples[0].input)
        );
        datasets += 1;
    }
    assert!(datasets >= 15, "found {datasets} sample files");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("longctx-lb-{tag}-{}", std::process::id()))
}

const GOOD: &str = r#"{"input": "q", "context": "c", "answers": ["a"], "length": 5, "dataset": "qasper", "language": "en", "all_classes": null, "_id": "x"}"#;

#[test]
fn bad_inputs_are_named() {
    let missing = load(
        Path::new("/nonexistent/longbench"),
        "qasper",
        OnBadLine::Fail,
    )
    .unwrap_err();
    // The library names the path; the command that called it names its own option.
    assert!(
        matches!(missing, LongBenchError::Io { .. })
            && missing.to_string().contains("/nonexistent/longbench")
            && !missing.to_string().contains("--longbench-dir"),
        "{missing}"
    );

    assert!(matches!(
        Dataset::by_name("qaspr"),
        Err(LongBenchError::UnknownDataset(_))
    ));
    assert!(load(&temp_dir("unknown"), "qaspr", OnBadLine::Fail)
        .unwrap_err()
        .to_string()
        .contains("unknown LongBench dataset \"qaspr\""));

    let dir = temp_dir("bad");
    let missing_field = GOOD.replace(r#""input": "q", "#, "");
    let empty_answers = GOOD.replace(r#"["a"]"#, "[]");
    write(
        &dir,
        "qasper.jsonl",
        &format!("{GOOD}\n{{not json\n{missing_field}\n{empty_answers}\n{GOOD}\n"),
    );
    let err = load(&dir, "qasper", OnBadLine::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("qasper.jsonl:2") && err.contains("not valid JSON"),
        "{err}"
    );
    let loaded = load(&dir, "qasper", OnBadLine::Skip).unwrap();
    assert_eq!(loaded.samples.len(), 2);
    let reasons: Vec<String> = loaded.skipped.iter().map(|e| e.to_string()).collect();
    assert!(reasons[0].contains(":2:"), "{reasons:?}");
    assert!(
        reasons[1].contains(":3:") && reasons[1].contains("\"input\""),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains(":4:") && reasons[2].contains("empty"),
        "{reasons:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
