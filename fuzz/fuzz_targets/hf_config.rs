//! A Hugging Face `config.json` of arbitrary bytes: the config reader and its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longctx_models::config::LlamaConfig;

fuzz_target!(|bytes: &[u8]| {
    let dir = std::env::temp_dir().join(format!("longctx-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, bytes).unwrap();
    let _ = LlamaConfig::from_hf_config(&path);
});
