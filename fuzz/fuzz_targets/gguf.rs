//! The GGUF reader on arbitrary bytes: open (header, metadata, tensor directory, bounds),
//! then the model config and the tokenizer built from the metadata. Any input must give a
//! value or an error, never a panic or an allocation sized by an unchecked count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longctx_models::config::LlamaConfig;
use longctx_models::gguf::GgufFile;
use longctx_models::TextTokenizer;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("longctx-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    if let Ok(gguf) = GgufFile::open(&path) {
        let _ = LlamaConfig::from_gguf(&gguf);
        let _ = TextTokenizer::from_gguf(&gguf);
    }
});
