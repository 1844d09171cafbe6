//! Heap allocations per decoded token, by method: a measurement for the work on an
//! allocation-free decoding step (not asserted; run by hand):
//!
//! `cargo test --release -p longctx --test allocations -- --ignored --nocapture`
//!
//! A counting allocator wraps the system's in this test binary only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use longctx::methods::Method;
use longctx_models::{argmax, load_model, LoadOptions, Reservation};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
#[ignore = "a measurement, run by hand"]
fn allocations_per_decoded_token() {
    let path = longctx::assets::default_model().expect("fetching the default model");
    let prompt = "Name three colours of the rainbow. ".repeat(60);
    for spec in [
        "baseline",
        "kivi-2bit",
        "flexgen-4bit",
        "streamingllm-4x",
        "snapkv-4x",
    ] {
        let method = Method::parse(spec).unwrap();
        let mut loaded = load_model(&path, &LoadOptions::default()).unwrap();
        loaded
            .model
            .set_cache(Box::new(|shape, rope, numerics| {
                method.build_cache(shape, rope, numerics, None)
            }))
            .unwrap();
        let tokens = loaded.prompt_tokens(&prompt, true).unwrap();
        let model = &mut loaded.model;
        let steps = 32;
        model
            .reserve(Reservation::prompt(tokens.len(), steps + 4))
            .unwrap();
        let mut logits = model.prefill(&tokens).unwrap();
        // Warm-up steps grow the buffers that are reused afterwards.
        for _ in 0..4 {
            logits = model.step(argmax(&logits).unwrap()).unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..steps {
            logits = model.step(argmax(&logits).unwrap()).unwrap();
        }
        let per_token = (ALLOCATIONS.load(Ordering::Relaxed) - before) / steps;
        eprintln!(
            "{spec}: {per_token} allocations per decoded token after {} prompt tokens",
            tokens.len()
        );
    }
}
