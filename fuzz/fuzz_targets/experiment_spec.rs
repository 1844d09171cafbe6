//! An experiment spec (TOML) of arbitrary bytes: parsing and every check on its sizes,
//! tasks and methods.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longctx::experiment::ExperimentSpec;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("longctx-fuzz-{}.toml", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let _ = ExperimentSpec::from_file(&path);
});
