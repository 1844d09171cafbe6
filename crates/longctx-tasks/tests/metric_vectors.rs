//! Every case of the official metric vectors (600 cases scored by LongBench's own Python
//! metrics) must match to 1e-9, and so must our own edge cases (empty strings, unicode,
//! punctuation only, very long inputs, autojunk), scored by LongBench's `metrics.py` with
//! rouge 1.0.1, fuzzywuzzy 0.18.0 (pure-Python difflib) and CPython 3.11.

use longctx_tasks::metrics::Metric;
use serde_json::Value;

/// Score every case; returns the descriptions of those that differ, and the count.
fn check(cases: impl Iterator<Item = Value>) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut total = 0;
    for (line_no, case) in cases.enumerate() {
        let metric = Metric::from_name(case["metric"].as_str().unwrap()).unwrap();
        let prediction = case["prediction"].as_str().unwrap();
        // count's gold answer is a number in the vectors; the official code compares str(it).
        let ground_truth = match &case["ground_truth"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let classes: Vec<String> = case["all_classes"]
            .as_array()
            .map(|a| a.iter().map(|c| c.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let want = case["score"].as_f64().unwrap();
        let got = metric.score(prediction, &ground_truth, &classes);
        total += 1;
        if (got - want).abs() > 1e-9 {
            failures.push(format!(
                "case {}: {} got {got} want {want}: {:?} vs {:?}",
                line_no + 1,
                metric.name(),
                prediction,
                ground_truth
            ));
        }
    }
    (failures, total)
}

#[test]
fn all_official_metric_vectors_match() {
    let text = include_str!("data/metric_vectors.jsonl");
    let (failures, total) = check(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    assert_eq!(total, 600);
    assert!(
        failures.is_empty(),
        "{} of {total} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn edge_cases_match_the_official_code() {
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("data/metric_edge_cases.json")).unwrap();
    let (failures, total) = check(cases.into_iter());
    assert!(total > 20);
    assert!(
        failures.is_empty(),
        "{} of {total} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
