//! LongBench middle truncation in the default model's tokens, on a real sample row.

use std::path::Path;

use longctx::tokenize::ModelTokenizer;
use longctx_models::{load_model, LoadOptions};
use longctx_tasks::longbench::{load, truncate_middle, Dataset, OnBadLine, Tokenize};

#[test]
fn a_real_prompt_is_cut_in_the_middle_to_max_length_tokens() {
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/longbench/sample");
    if !sample.is_dir() {
        eprintln!("skipped: {} is absent", sample.display());
        return;
    }
    let loaded = load_model(
        &longctx::assets::default_model().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let tokenizer = ModelTokenizer(&loaded.tokenizer);
    let dataset = Dataset::by_name("qasper").unwrap();
    let row = &load(&sample, "qasper", OnBadLine::Fail).unwrap().samples[0];
    let prompt = dataset.prompt(row).text;
    let full = tokenizer.encode(&prompt).len();
    assert!(full > 2000, "the sample prompt has {full} tokens");
    let cut = truncate_middle(&prompt, 1000, &tokenizer);
    let ids = tokenizer.encode(&cut);
    // Re-tokenizing the joined halves may merge a token or two across the seam.
    assert!(
        (995..=1000).contains(&ids.len()),
        "{} tokens after truncation",
        ids.len()
    );
    let head = tokenizer.decode(&tokenizer.encode(&prompt)[..500]);
    assert!(cut.starts_with(&head));
    assert!(cut.ends_with(&prompt[prompt.len() - 40..]));
}
