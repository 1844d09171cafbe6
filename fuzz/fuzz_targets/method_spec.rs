//! A method spec of arbitrary text: parsing, the round trip through its canonical form, and
//! building its cache for a small model (where the model-dependent settings are checked).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use longctx::methods::Method;
use longctx_kv::{KvShape, RopeSettings, RopeStyle, RopeTable};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(method) = Method::parse(text) else {
        return;
    };
    // The canonical form names every setting and parses back to the same method.
    let again = Method::parse(&method.to_string()).expect("a method's own spec parses");
    assert_eq!(again, method, "{text}");
    let shape = KvShape {
        layers: 2,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 8,
    };
    let rope = RopeSettings {
        theta: 10000.0,
        head_dim: 8,
        style: RopeStyle::Half,
        scaling: None,
        max_positions: 64,
    };
    let rope = Arc::new(RopeTable::new(&rope, &candle_core::Device::Cpu).unwrap());
    let _ = method.build_cache(shape, rope);
});
