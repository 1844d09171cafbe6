//! Our policies against the code of the methods' own repositories, run on seeded random
//! tensors by scripts kept in `scripts/`; the fixtures are in `tests/fixtures/`.
//!
//! - `benchmark_windowed.json` (`scripts/windowed_reference.py`, on a GPU): outputs of the
//!   vendored `inf_llm/attention` package of `henryzhongsc/longctx_bench` (`ContextManager`,
//!   `stream_llm_forward`, torch implementation, float32). One layer of 4 query heads over 2
//!   key/value heads of 32 channels, 80 prompt tokens then 24 decoding steps. The reference
//!   fed the prompt in one call; we feed it in two chunks of 40, which must change nothing
//!   (InfLLM's retrieval chunks of 8 stay whole).
//! - `h2o.json` (`scripts/h2o_reference.py`, CPU, transformers 4.40.2): outputs of the
//!   benchmark's `LlamaFlashAttention2_h2o` (`pipeline/h2o/utils_hh/modify_llama.py`) at
//!   heavy = recent = 0.125, its flash prompt pass replaced by the same causal attention in
//!   PyTorch; one layer of 4 query heads over 2 key/value heads of 16 channels.
//! - `h2o_original.json` (`scripts/h2o_original_reference.py`, CPU, transformers 4.36.2):
//!   outputs and kept positions of the original H2O's real-dropping `H2OLlamaAttention`
//!   (FMInference/H2O `h2o_hf/utils_real_drop/modify_llama.py`), used as is: 4 heads of 16
//!   channels (it has no grouped-query attention), 80 prompt tokens, 24 steps, 10 heavy and
//!   10 recent.
//! - `flexgen.json` (`scripts/flexgen_reference.py`, CPU, transformers 4.40.2): outputs of
//!   the benchmark's simulated-quantization `LlamaFlashAttention2`
//!   (`pipeline/flexgen/models/llama_simquant.py`) at 2 and 4 bits, groups of 32 per token;
//!   its flash pass replaced by PyTorch, its quantizer's minimum and scale rounded to float16.
//!   One layer of 4 query heads over 2 key/value heads of 64 channels, 80 prompt tokens, 24
//!   steps.
//! - `tova.json` (`scripts/tova_reference.py`): TOVA's own `TOVACache.reduce`, driven as
//!   its patched Llama attention does (store, attend, reduce), cache of 24 tokens, 60
//!   prompt tokens then 20 decoding steps: outputs and kept positions.
//! - `selection.json` (`scripts/selection_reference.py`): the positions SnapKV and PyramidKV
//!   keep after prefill in Zefan-Cai/KVCache-Factory's `update_kv` (kv-head mode, max
//!   pooling), 3 layers of 4 query heads over 2 key/value heads, prompts of 100 and 50 tokens.
//! - `kivi.json` (`scripts/kivi_reference.py`, CPU, transformers 4.36.2): outputs of the
//!   benchmark's `LlamaFlashAttention_KIVI` (`pipeline/kivi/models/llama_kivi.py`) at 2 and
//!   4 bits, groups of 16, residual 32; its flash pass, Triton quantizer and CUDA
//!   dequantizing matmul replaced by the same computations in PyTorch (float32, with what the
//!   benchmark holds in float16 rounded to float16). One layer of 4 query heads over 2
//!   key/value heads of 32 channels, 80 prompt tokens, then 56 decoding steps.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use longctx_kv::{
    Budget, DecodeActivations, DropPolicy, DropSettings, DroppingCache, FlexGenSettings, Heads,
    InfLlmCache, InfLlmRemainder, InfLlmSettings, KiviCache, KiviSettings, KvCache, KvPrecision,
    KvShape, Pool, QuantizedPrefill, Reservation, RopeSettings, RopeStyle, RopeTable,
    RowQuantCache, Schedule, Selection, Sinks,
};
use serde_json::Value;

/// A token-dropping cache in f32, the precision every reference here ran in.
fn dropping(shape: KvShape, rope: Arc<RopeTable>, settings: DropSettings) -> DroppingCache {
    DroppingCache::new(shape, rope, &Device::Cpu, settings, KvPrecision::F32).unwrap()
}

fn load(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rope(json: &Value, head_dim: usize) -> Arc<RopeTable> {
    Arc::new(
        RopeTable::new(
            &RopeSettings {
                theta: json["theta"].as_f64().unwrap(),
                head_dim,
                style: RopeStyle::Half,
                scaling: None,
                max_positions: 512,
            },
            &Device::Cpu,
        )
        .unwrap(),
    )
}

struct Fixture {
    json: Value,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    prompt: usize,
    tokens: usize,
    shape: KvShape,
    rope: Arc<RopeTable>,
}

fn number(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("fixture field {key}")) as usize
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// A fixture of one layer's queries, keys and values (before RoPE) and reference outputs.
fn fixture(name: &str) -> Fixture {
    let json = load(name);
    let (heads, kv_heads, d, tokens) = (
        number(&json, "q_heads"),
        number(&json, "kv_heads"),
        number(&json, "head_dim"),
        number(&json, "tokens"),
    );
    let tensor = |key: &str, h: usize| {
        Tensor::from_vec(floats(&json[key]), (h, tokens, d), &Device::Cpu).unwrap()
    };
    Fixture {
        q: tensor("q", heads),
        k: tensor("k", kv_heads),
        v: tensor("v", kv_heads),
        prompt: number(&json, "prompt"),
        tokens,
        shape: KvShape {
            layers: 1,
            q_heads: heads,
            kv_heads,
            head_dim: d,
        },
        rope: rope(&json, d),
        json,
    }
}

/// Our outputs for every token (prompt in chunks of 40 and the rest, then one token a
/// step), against the reference's, as the largest absolute difference; `observe` sees the
/// cache after the prompt (its end included) and after each decoding step.
fn difference_observed<C: KvCache>(
    f: &Fixture,
    cache: &mut C,
    outputs: &Value,
    mut observe: impl FnMut(&C),
) -> f32 {
    cache
        .reserve(Reservation::prompt(f.prompt, f.tokens - f.prompt))
        .unwrap();
    let spans = [(0, 40), (40, f.prompt - 40)]
        .into_iter()
        .chain((f.prompt..f.tokens).map(|p| (p, 1)));
    let mut outs = Vec::new();
    for (start, len) in spans {
        let part = |x: &Tensor| x.narrow(1, start, len).unwrap();
        outs.push(
            cache
                .attend(0, start, &part(&f.q), &part(&f.k), &part(&f.v))
                .unwrap(),
        );
        if start + len == f.prompt {
            cache.end_prefill().unwrap();
        }
        if start + len >= f.prompt {
            observe(cache);
        }
    }
    let got: Vec<f32> = Tensor::cat(&outs, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = floats(outputs);
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn difference<C: KvCache>(f: &Fixture, cache: &mut C, outputs: &Value) -> f32 {
    difference_observed(f, cache, outputs, |_| ())
}

fn cases<'a>(f: &'a Fixture, method: &'a str) -> impl Iterator<Item = &'a Value> {
    f.json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(move |c| c["method"] == method)
}

#[test]
fn infllm_equals_the_benchmarks_context_manager() {
    let f = fixture("benchmark_windowed.json");
    let mut seen = 0;
    for case in cases(&f, "infllm") {
        let (n_init, n_local, topk, block) = (
            number(case, "n_init"),
            number(case, "n_local"),
            number(case, "topk"),
            number(case, "block"),
        );
        // Fractions of a budget that `infllm_utils.py` turns into the reference's counts.
        let budget = n_init + topk * block + n_local;
        let settings = InfLlmSettings {
            budget: Budget::Tokens(budget),
            sinks: (n_init as f64 + 0.5) / budget as f64,
            retrieved: ((topk * block) as f64 + 0.5) / budget as f64,
            block,
            representatives: number(case, "representatives"),
            chunk: number(case, "chunk"),
            remainder: InfLlmRemainder::Chunk,
        };
        let mut cache = InfLlmCache::new(f.shape, f.rope.clone(), &Device::Cpu, settings).unwrap();
        let diff = difference(&f, &mut cache, &case["outputs"]);
        let split = cache.split().unwrap();
        assert_eq!(
            (split.n_init, split.topk, split.n_local),
            (n_init, topk, n_local)
        );
        eprintln!("infllm topk={topk}: max abs difference {diff:e}");
        assert!(diff < 1e-5, "topk={topk}: max abs difference {diff}");
        // Blocks really formed (and, with topk = 0, were never read).
        assert!(cache.offloaded_bytes() > 0);
        seen += 1;
    }
    assert_eq!(seen, 2);
}

#[test]
fn streamingllm_equals_the_benchmarks_stream_llm() {
    let f = fixture("benchmark_windowed.json");
    let case = cases(&f, "streamingllm")
        .next()
        .expect("a streamingllm case");
    let (n_init, n_local) = (number(case, "n_init"), number(case, "n_local"));
    let settings = DropSettings {
        selection: Selection::PerHead,
        schedule: Schedule::Uniform,
        decoding: None,
        policy: DropPolicy::StreamingLlm {
            sinks: Sinks::Count(n_init),
            reindex: true,
        },
        budget: Budget::Tokens(n_init + n_local),
    };
    let mut cache = dropping(f.shape, f.rope.clone(), settings);
    let diff = difference(&f, &mut cache, &case["outputs"]);
    eprintln!("streamingllm: max abs difference {diff:e}");
    assert!(diff < 1e-5, "max abs difference {diff}");
    assert_eq!(cache.kept_tokens(0), n_init + n_local);
}

/// The kept positions of every layer's key/value heads after prefill (the prompt in chunks
/// of 30 and the rest), for a SnapKV-style policy with a budget of `capacity` tokens.
fn kept_after_prefill(
    selection: &Value,
    layers: &[Value],
    tokens: usize,
    (policy, schedule): (DropPolicy, Schedule),
) -> Vec<Vec<Vec<usize>>> {
    let (heads, kv_heads, d) = (
        number(selection, "q_heads"),
        number(selection, "kv_heads"),
        number(selection, "head_dim"),
    );
    let shape = KvShape {
        layers: layers.len(),
        q_heads: heads,
        kv_heads,
        head_dim: d,
    };
    let settings = DropSettings {
        selection: Selection::PerHead,
        schedule,
        decoding: None,
        policy,
        budget: Budget::Tokens(number(selection, "capacity")),
    };
    let mut cache = dropping(shape, rope(selection, d), settings);
    cache.reserve(Reservation::prompt(tokens, 0)).unwrap();
    let tensor = |layer: &Value, key: &str, h: usize| {
        Tensor::from_vec(floats(&layer[key]), (h, tokens, d), &Device::Cpu).unwrap()
    };
    for (start, len) in [(0, 30), (30, tokens - 30)] {
        for (l, layer) in layers.iter().enumerate() {
            let part = |key: &str, h: usize| tensor(layer, key, h).narrow(1, start, len).unwrap();
            cache
                .attend(
                    l,
                    start,
                    &part("q", heads),
                    &part("k", kv_heads),
                    &part("v", kv_heads),
                )
                .unwrap();
        }
    }
    cache.end_prefill().unwrap();
    (0..layers.len())
        .map(|l| {
            (0..kv_heads)
                .map(|g| cache.kept_positions(l, g).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn snapkv_and_pyramidkv_keep_what_kvcache_factory_keeps() {
    let selection = load("selection.json");
    let (window, kernel) = (number(&selection, "window"), number(&selection, "kernel"));
    let snapkv = DropPolicy::SnapKv {
        window,
        kernel,
        pool: Pool::Max,
    };
    let pyramid = Schedule::Pyramid {
        beta: number(&selection, "beta"),
    };
    let policies = [
        ("snapkv", (snapkv, Schedule::Uniform)),
        ("pyramidkv", (snapkv, pyramid)),
    ];
    let (mut compared, mut ties) = (0, 0);
    for case in selection["cases"].as_array().unwrap() {
        let tokens = number(case, "tokens");
        let layers = case["layers"].as_array().unwrap();
        for (name, policy) in policies {
            let got = kept_after_prefill(&selection, layers, tokens, policy);
            for (l, layer) in layers.iter().enumerate() {
                let pooled = floats(&layer["pooled"]);
                let scored = tokens - window;
                for (g, want) in layer["kept"][name].as_array().unwrap().iter().enumerate() {
                    let want: Vec<usize> = floats(want).iter().map(|&p| p as usize).collect();
                    let ours = &got[l][g];
                    let at = format!("{name}, {tokens} tokens, layer {l}, head {g}");
                    assert_eq!(ours.len(), want.len(), "{at}");
                    // The difference is only a choice among equal pooled scores at the cut:
                    // max pooling spreads each peak over `kernel` positions, and torch.topk
                    // picks arbitrarily among ties where ours keeps the earliest.
                    let score = |p: usize| pooled[g * scored + p];
                    let cut = want
                        .iter()
                        .filter(|&&p| p < scored)
                        .map(|&p| score(p))
                        .fold(f32::INFINITY, f32::min);
                    for p in want.iter().filter(|p| !ours.contains(p)) {
                        assert!((score(*p) - cut).abs() <= 1e-6 * cut.abs(), "{at}: {p}");
                        ties += 1;
                    }
                    for p in ours.iter().filter(|p| !want.contains(p)) {
                        assert!(
                            *p < scored && (score(*p) - cut).abs() <= 1e-6 * cut.abs(),
                            "{at}: {p}"
                        );
                    }
                    compared += 1;
                }
            }
        }
    }
    eprintln!("{compared} kept sets compared; {ties} positions differ, all ties at the cut");
    assert_eq!(compared, 2 * 2 * 3 * 2);
}

#[test]
fn h2o_equals_the_benchmarks_heavy_hitter_attention() {
    let f = fixture("h2o.json");
    // heavy = recent = 0.125 of the tokens seen at the first decoding step: ratio 4.
    let ratio = 0.5 / f.json["heavy_ratio"].as_f64().unwrap();
    let settings = DropSettings {
        selection: Selection::PerHead,
        schedule: Schedule::Uniform,
        decoding: None,
        policy: DropPolicy::H2O {
            count_prefill: false,
            heads: Heads::Query,
        },
        budget: Budget::Ratio(ratio),
    };
    let mut cache = dropping(f.shape, f.rope.clone(), settings);
    let diff = difference(&f, &mut cache, &f.json["outputs"]);
    eprintln!("h2o: max abs difference {diff:e}");
    // transformers 4.40 computes RoPE's frequencies in float32 (ours: f64, then rounded):
    // about 7e-6 here, so this bound is looser than the others'.
    assert!(diff < 5e-5, "max abs difference {diff}");
    // int(0.125 · 81) = 10 heavy and 10 recent, per query head, after the last step.
    for h in 0..f.shape.q_heads {
        assert_eq!(cache.read_positions(0, h).unwrap().len(), 20);
    }
}

/// Runs `settings` over fixture `name`, comparing outputs (within `bound`) and the positions
/// each key/value head keeps after the prompt and after every decoding step with the
/// reference's (`kept`: one list per call, one per head).
fn keeps_and_attends_as(name: &str, settings: DropSettings, bound: f32) {
    let f = fixture(name);
    let mut cache = dropping(f.shape, f.rope.clone(), settings);
    let mut kept = Vec::new();
    let diff = difference_observed(&f, &mut cache, &f.json["outputs"], |c| {
        kept.push(
            (0..f.shape.kv_heads)
                .map(|g| c.kept_positions(0, g).unwrap())
                .collect::<Vec<_>>(),
        )
    });
    eprintln!("{name}: max abs difference {diff:e}");
    assert!(diff < bound, "{name}: max abs difference {diff}");
    let want: Vec<Vec<Vec<usize>>> = f.json["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            step.as_array()
                .unwrap()
                .iter()
                .map(|head| floats(head).iter().map(|&p| p as usize).collect())
                .collect()
        })
        .collect();
    assert_eq!(kept.len(), want.len());
    for (step, (ours, theirs)) in kept.iter().zip(&want).enumerate() {
        assert_eq!(ours, theirs, "{name}: after call {step}");
    }
}

#[test]
fn tova_keeps_and_attends_as_tovas_own_cache() {
    let size = number(&load("tova.json"), "cache_size");
    let settings = DropSettings {
        selection: Selection::PerHead,
        schedule: Schedule::Uniform,
        decoding: None,
        policy: DropPolicy::Tova,
        budget: Budget::Tokens(size),
    };
    keeps_and_attends_as("tova.json", settings, 1e-5);
}

/// The original H2O (`h2o-original`): prompt attention starts the scores, and the cache is cut
/// to heavy + recent after the prompt and after every step.
#[test]
fn h2o_original_keeps_and_attends_as_fminference_h2o() {
    let f = load("h2o_original.json");
    let settings = DropSettings {
        selection: Selection::PerHead,
        schedule: Schedule::Uniform,
        decoding: None,
        policy: DropPolicy::H2O {
            count_prefill: true,
            heads: Heads::KeyValue,
        },
        // A token budget is split as the reference's hh_size and recent_size (10 each).
        budget: Budget::Tokens(number(&f, "hh_size") + number(&f, "recent_size")),
    };
    // transformers 4.36 computes RoPE's frequencies in float32, as in the h2o.json test.
    keeps_and_attends_as("h2o_original.json", settings, 5e-5);
}

/// For each bit width of a quantization fixture: our outputs under `cache(bits, false)`
/// against the reference's, and under `cache(bits, true)`, a variant that quantizes other
/// tokens or at other moments, which must be far off; `contrast` names the variant.
fn quantized_cases<C: KvCache>(
    name: &str,
    contrast: &str,
    cache: impl Fn(&Fixture, u32, bool) -> C,
) {
    let f = fixture(name);
    let mut compared = 0;
    for case in f.json["cases"].as_array().unwrap() {
        let bits = number(case, "bits") as u32;
        let diff = difference(&f, &mut cache(&f, bits, false), &case["outputs"]);
        let other = difference(&f, &mut cache(&f, bits, true), &case["outputs"]);
        eprintln!("{name} {bits}-bit: max abs difference {diff:e} ({contrast}: {other:e})");
        // The references held in float16 what we hold in 16 bits (minima, scales, KIVI's
        // full-precision window); what remains is float32 summation order.
        assert!(diff < 2e-4, "{name} {bits}-bit: max abs difference {diff}");
        assert!(
            other > 10.0 * diff,
            "{name} {bits}-bit: {other} against {diff}"
        );
        compared += 1;
    }
    assert_eq!(compared, 2);
}

#[test]
fn kivi_equals_the_benchmarks_quantized_attention() {
    quantized_cases("kivi.json", "residual halved", |f, bits, halved| {
        let residual = number(&f.json, "residual");
        let settings = KiviSettings {
            bits,
            group: number(&f.json, "group"),
            residual: if halved { residual / 2 } else { residual },
        };
        // f32 decoding arithmetic: the reference multiplies dequantized codes in float32.
        let activations = DecodeActivations::F32;
        KiviCache::new(f.shape, f.rope.clone(), &Device::Cpu, settings, activations).unwrap()
    });
}

/// FlexGen as the benchmark ran it (`flexgen-4bit`): everything attention reads quantized;
/// the original's rule (full-precision prefill and own token) is the contrast.
#[test]
fn flexgen_equals_the_benchmarks_simulated_quantization() {
    quantized_cases("flexgen.json", "prefill=full", |f, bits, original| {
        let settings = FlexGenSettings {
            bits,
            group: number(&f.json, "group"),
            prefill: if original {
                QuantizedPrefill::Full
            } else {
                QuantizedPrefill::Quantized
            },
        };
        RowQuantCache::new(f.shape, f.rope.clone(), &Device::Cpu, settings.rows()).unwrap()
    });
}
