//! Scoring prediction files in LongBench's official layout (`pred/<dataset>.jsonl`, lines
//! with `pred`, `answers`, `all_classes`, `length`), as LongBench's `eval.py` does, so that
//! predictions made by any tool can be scored with these metrics.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::longbench::{
    answers_field, bucket_scores, dataset_score, field_strings, read_jsonl, Dataset,
    LongBenchError, OnBadLine,
};

/// One prediction line.
#[derive(Debug, Clone)]
struct PredictionLine {
    pred: String,
    answers: Vec<String>,
    all_classes: Vec<String>,
    length: Option<usize>,
}

fn parse_line(line: &str) -> Result<PredictionLine, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let answers = answers_field(&v)?;
    Ok(PredictionLine {
        pred: v
            .get("pred")
            .and_then(Value::as_str)
            .ok_or("field \"pred\" is missing or not a string")?
            .to_string(),
        answers,
        all_classes: field_strings(&v, "all_classes", false)?,
        length: v.get("length").and_then(Value::as_u64).map(|l| l as usize),
    })
}

/// One dataset's scores.
#[derive(Debug)]
pub struct DatasetResult {
    /// Dataset name as the file is named.
    pub file_stem: String,
    /// The dataset's rules.
    pub dataset: Dataset,
    /// Each sample's score in [0, 1], in file order.
    pub sample_scores: Vec<f64>,
    /// Each sample's length field, when present.
    pub lengths: Vec<Option<usize>>,
    /// 100 × mean, 2 decimals.
    pub score: f64,
    /// LongBench-E buckets (0-4k, 4-8k, 8k+): 100 × mean, 2 decimals; NaN for an empty bucket, as numpy gives.
    pub buckets: BTreeMap<&'static str, f64>,
    /// Lines skipped (with [`OnBadLine::Skip`]).
    pub skipped: Vec<LongBenchError>,
}

/// Score every `<dataset>.jsonl` in `dir` (files of other names are an error, naming them).
pub fn score_directory(
    dir: &Path,
    on_bad: OnBadLine,
) -> Result<Vec<DatasetResult>, LongBenchError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LongBenchError::Io {
        path: dir.into(),
        source,
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LongBenchError::Io {
            path: dir.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no <dataset>.jsonl prediction files",
            ),
        });
    }
    files.iter().map(|path| score_file(path, on_bad)).collect()
}

/// Score one prediction file.
pub fn score_file(path: &Path, on_bad: OnBadLine) -> Result<DatasetResult, LongBenchError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let dataset = Dataset::by_name(&stem)?;
    let (lines, skipped) = read_jsonl(path, on_bad, parse_line)?;
    if lines.is_empty() {
        return Err(LongBenchError::Empty(path.into()));
    }
    // eval.py scores every line with the class list of the file's *last* line (its loop
    // variable); LongBench's files carry one list per dataset, so this only matters for
    // hand-made files, where we keep the official behaviour.
    let classes = lines
        .last()
        .map(|l| l.all_classes.clone())
        .unwrap_or_default();
    let sample_scores: Vec<f64> = lines
        .iter()
        .map(|l| dataset.score(&l.pred, &l.answers, &classes))
        .collect();
    let lengths: Vec<Option<usize>> = lines.iter().map(|l| l.length).collect();
    let with_length: Vec<(f64, usize)> = sample_scores
        .iter()
        .zip(&lengths)
        .filter_map(|(score, length)| Some((*score, (*length)?)))
        .collect();
    let buckets = bucket_scores(&with_length)
        .into_iter()
        .map(|(bucket, score)| (bucket, score.unwrap_or(f64::NAN)))
        .collect();
    Ok(DatasetResult {
        file_stem: stem,
        dataset,
        score: dataset_score(&sample_scores),
        sample_scores,
        lengths,
        buckets,
        skipped,
    })
}
