//! A LongBench prediction file of arbitrary bytes, scored as `longctx score` does: line
//! parsing (JSON, UTF-8, field types), each metric (classification, F1, ROUGE-L, code
//! similarity) and the length buckets, skipping bad lines and failing on them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longctx_tasks::longbench::OnBadLine;
use longctx_tasks::predictions::score_file;

fuzz_target!(|bytes: &[u8]| {
    let dir = std::env::temp_dir().join(format!("longctx-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The first byte picks the dataset, and so the metric.
    let Some((&pick, rest)) = bytes.split_first() else {
        return;
    };
    let name = ["trec", "qasper", "gov_report", "lcc", "passage_count", "hotpotqa_e"]
        [pick as usize % 6];
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, rest).unwrap();
    let _ = score_file(&path, OnBadLine::Skip);
    let _ = score_file(&path, OnBadLine::Fail);
});
