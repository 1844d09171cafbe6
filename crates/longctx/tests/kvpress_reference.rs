//! Our token-dropping policies against NVIDIA kvpress's presses on the default model: the
//! positions each layer and key/value head keeps after the same prompt's prefill. The fixture
//! and the script that wrote it: `tests/fixtures/kvpress.json`, `scripts/kvpress_reference.py`
//! (kvpress 0.5.5, transformers 5.2, float32 weights dequantized from the same GGUF).
//! ExpectedAttentionPress and KVzipPress with their defaults; DuoAttentionPress with a given head pattern. ChunkKVPress and AdaKVPress are compared over KnormPress. RandomPress is left out: its draws come from torch's generator, which ours does not copy.

use longctx::methods::Method;
use longctx_kv::HeadPattern;
use longctx_models::{load_model, DecodeActivations, KvPrecision, LoadOptions, Reservation};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kvpress.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn as_positions(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as usize)
        .collect()
}

/// kvpress ran the model in f32, keys and values included, and decoding's
/// activations too: so do we here.
fn f32_options() -> LoadOptions {
    LoadOptions {
        kv_precision: KvPrecision::F32,
        decode_activations: DecodeActivations::F32,
        ..LoadOptions::default()
    }
}

/// Positions every layer and key/value head keeps after prefilling `ids` under `spec`.
fn kept(spec: &str, ids: &[u32]) -> Vec<Vec<Vec<usize>>> {
    kept_with(spec, None, ids)
}

/// [`kept`] with DuoAttention's head pattern given.
fn kept_with(spec: &str, heads: Option<&HeadPattern>, ids: &[u32]) -> Vec<Vec<Vec<usize>>> {
    let path = longctx::assets::default_model().expect("fetching the default model");
    let mut loaded = load_model(&path, &f32_options()).unwrap();
    longctx::commands::install_with(&mut loaded, &Method::parse(spec).unwrap(), heads).unwrap();
    let model = &mut loaded.model;
    model.reserve(Reservation::prompt(ids.len(), 0)).unwrap();
    model.prefill(ids).unwrap();
    let shape = model.cache().unwrap().shape();
    (0..shape.layers)
        .map(|l| {
            (0..shape.kv_heads)
                .map(|g| model.cache().unwrap().kept_positions(l, g).unwrap())
                .collect()
        })
        .collect()
}

/// StreamingLLMPress(n_sink=4) chooses once after the prefill; our window slides through it
/// and must end on the same 4 sinks and recent tokens, in every layer and head.
#[test]
fn streamingllm_keeps_what_kvpress_keeps() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let ours = kept("streamingllm:ratio=4,sinks=4,reindex=true", &ids);
    for (l, layer) in f["kept"]["streamingllm"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (g, head) in layer.as_array().unwrap().iter().enumerate() {
            assert_eq!(ours[l][g], as_positions(head), "layer {l} head {g}");
        }
    }
}

/// Compares kept sets where the reference also gave its scores. Allowed differences, and
/// only these: a position whose score is within 1e-5 of the cut (float rounding between two
/// implementations may order such near-ties either way), and `forced` positions the
/// reference always keeps where our policy ranks them (then ours holds one other instead).
/// Returns the near-tie swaps and the forced positions we dropped.
fn compare_up_to_near_ties(
    name: &str,
    ours: &[Vec<Vec<usize>>],
    kept: &Value,
    scores_of: impl Fn(usize, usize) -> Vec<f64>,
    forced: impl Fn(usize) -> bool,
) -> (usize, usize) {
    let (mut near_ties, mut forced_dropped) = (0, 0);
    for (l, layer) in kept.as_array().unwrap().iter().enumerate() {
        for (g, head) in layer.as_array().unwrap().iter().enumerate() {
            let scores = scores_of(l, g);
            let theirs = as_positions(head);
            let mine = &ours[l][g];
            assert_eq!(mine.len(), theirs.len(), "{name} layer {l} head {g}");
            // The score at the cut: the lowest the reference kept by rank.
            let cut = theirs
                .iter()
                .filter(|&&p| !forced(p))
                .map(|&p| scores[p])
                .fold(f64::INFINITY, f64::min);
            let mut spare = 0;
            for &p in theirs.iter().filter(|p| !mine.contains(p)) {
                if forced(p) {
                    forced_dropped += 1;
                    spare += 1;
                    continue;
                }
                assert!(
                    (scores[p] - cut).abs() < 1e-5,
                    "{name} layer {l} head {g}: kvpress keeps {p} (score {}, cut {cut}), we do not",
                    scores[p]
                );
                near_ties += 1;
            }
            for &p in mine.iter().filter(|p| !theirs.contains(p)) {
                if (scores[p] - cut).abs() < 1e-5 {
                    continue;
                }
                assert!(
                    spare > 0,
                    "{name} layer {l} head {g}: we keep {p} (score {}, cut {cut}), kvpress does not",
                    scores[p]
                );
                spare -= 1;
            }
        }
    }
    (near_ties, forced_dropped)
}

fn scores(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect()
}

/// TOVAPress scores by the last prompt token's attention averaged over all heads, as ours
/// does; kvpress always keeps the last token (TOVA's own cache does not, nor do we).
#[test]
fn tova_keeps_what_kvpress_keeps_up_to_near_ties() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let last = ids.len() - 1;
    let ours = kept("tova-4x", &ids);
    let (ties, dropped) = compare_up_to_near_ties(
        "tova",
        &ours,
        &f["kept"]["tova"],
        |l, _| scores(&f["tova_scores"][l]),
        |p| p == last,
    );
    eprintln!("TOVA: {ties} near-tie swaps, last token dropped by us in {dropped} layer-heads");
}

/// SnapKVPress(window 64, kernel 5): average pooling and per-group means, which our
/// `snapkv` does with `pool=avg`; both always keep the observation window.
#[test]
fn snapkv_with_average_pooling_keeps_what_kvpress_keeps_up_to_near_ties() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let window_from = ids.len() - 64;
    let ours = kept("snapkv:ratio=4,window=64,kernel=5,pool=avg", &ids);
    let (ties, _) = compare_up_to_near_ties(
        "snapkv",
        &ours,
        &f["kept"]["snapkv"],
        |l, g| scores(&f["snapkv_scores"][l][g]),
        |p| p >= window_from,
    );
    eprintln!("SnapKV: {ties} near-tie swaps");
}

/// KnormPress and KeyDiffPress score each key/value head's keys alone (rotated, as the cache
/// holds them) and keep the top quarter; ours keep the same tokens, up to near-ties.
#[test]
fn key_scorers_keep_what_kvpress_keeps_up_to_near_ties() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    for name in ["knorm", "keydiff"] {
        let ours = kept(&format!("{name}-4x"), &ids);
        let (ties, _) = compare_up_to_near_ties(
            name,
            &ours,
            &f["kept"][name],
            |l, g| scores(&f[format!("{name}_scores")][l][g]),
            |_| false,
        );
        eprintln!("{name}: {ties} near-tie swaps");
    }
}

/// ExpectedAttentionPress with its defaults (512 future positions, 4 sinks, covariance and
/// value norms) keeps the same tokens per key/value head as `expected-attention-4x`, up to
/// near-ties; both always keep the 4 sinks.
#[test]
fn expected_attention_keeps_what_kvpress_keeps_up_to_near_ties() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let ours = kept("expected-attention-4x", &ids);
    for layer in &ours {
        for head in layer {
            assert!(head.starts_with(&[0, 1, 2, 3]), "sinks kept: {head:?}");
        }
    }
    let (ties, _) = compare_up_to_near_ties(
        "expected_attention",
        &ours,
        &f["kept"]["expected_attention"],
        |l, g| scores(&f["expected_attention_scores"][l][g]),
        |p| p < 4,
    );
    eprintln!("expected attention: {ties} near-tie swaps");
}

/// KVzipPress on the passage inside the chat template's user turn (as kvpress's pipeline
/// formats a context): the model repeats it after the template's opening, and one budget
/// over all layers and heads keeps the best scores. With its defaults (one pass) and with
/// chunks of 100 tokens (later passes quote the previous chunk's last 8 tokens), each
/// layer's and head's kept set equals kvpress's, up to scores within 1e-5 of the global cut;
/// both keep the 4 sinks, and the template's opening, never repeated, scores nothing.
#[test]
fn kvzip_keeps_what_kvpress_keeps_per_layer_and_head() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["kvzip_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    for (name, spec) in [
        ("kvzip", "kvzip-4x"),
        ("kvzip_chunked", "kvzip:ratio=4,sinks=4,chunk=100"),
    ] {
        let ours = kept(spec, &ids);
        let theirs: Vec<Vec<Vec<usize>>> = f["kept"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_array().unwrap().iter().map(as_positions).collect())
            .collect();
        let recorded = &f[format!("{name}_scores")];
        let score = |l: usize, g: usize, p: usize| recorded[l][g][p].as_f64().unwrap();
        let cut = theirs
            .iter()
            .enumerate()
            .flat_map(|(l, layer)| {
                layer.iter().enumerate().flat_map(move |(g, head)| {
                    head.iter().filter(|&&p| p >= 4).map(move |&p| (l, g, p))
                })
            })
            .map(|(l, g, p)| score(l, g, p))
            .fold(f64::INFINITY, f64::min);
        let (mut differences, mut sizes_differ) = (0, 0);
        for (l, (mine, want)) in ours.iter().zip(&theirs).enumerate() {
            let sizes: Vec<usize> = want.iter().map(Vec::len).collect();
            sizes_differ += usize::from(sizes.iter().any(|&n| n != sizes[0]));
            for (g, (mine, want)) in mine.iter().zip(want).enumerate() {
                assert!(
                    mine.starts_with(&[0, 1, 2, 3]),
                    "{name} layer {l} head {g}: sinks"
                );
                for p in mine
                    .iter()
                    .filter(|p| !want.contains(p))
                    .chain(want.iter().filter(|p| !mine.contains(p)))
                {
                    assert!(
                        (score(l, g, *p) - cut).abs() < 1e-5,
                        "{name} layer {l} head {g}: position {p} (score {}, cut {cut}) kept by one side only",
                        score(l, g, *p)
                    );
                    differences += 1;
                }
            }
        }
        let total: usize = ours.iter().flatten().map(Vec::len).sum();
        let want_total: usize = theirs.iter().flatten().map(Vec::len).sum();
        assert_eq!(total, want_total, "{name}: kept over all layers and heads");
        eprintln!("{name}: {sizes_differ} of 30 layers with heads of different sizes, {differences} near-tie differences, {total} kept");
    }
}

/// ChunkKVPress over KnormPress (chunks of 20, compression 0.75) keeps whole chunks, the
/// same for every head: ours keeps the same chunks in every layer. A chunk's score is the
/// mean over its tokens of Knorm's scores summed over heads; a swap is allowed only between
/// chunks scoring within 1e-5 of the cut.
#[test]
fn chunkkv_keeps_the_chunks_kvpress_keeps() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let ours = kept("chunkkv:chunk=20,press=knorm,ratio=4", &ids);
    let mut swaps = 0;
    for (l, layer) in f["kept"]["chunkkv"].as_array().unwrap().iter().enumerate() {
        let heads = layer.as_array().unwrap();
        let theirs = as_positions(&heads[0]);
        for (g, head) in heads.iter().enumerate() {
            assert_eq!(as_positions(head), theirs, "kvpress, layer {l} head {g}");
            assert_eq!(ours[l][g], ours[l][0], "ours, layer {l} head {g}");
        }
        if ours[l][0] == theirs {
            continue;
        }
        let per_head: Vec<Vec<f64>> = (0..heads.len())
            .map(|g| scores(&f["knorm_scores"][l][g]))
            .collect();
        let chunk_score = |p: usize| {
            let (start, end) = (p / 20 * 20, (p / 20 * 20 + 20).min(ids.len()));
            let total: f64 = (start..end)
                .map(|t| per_head.iter().map(|s| s[t]).sum::<f64>())
                .sum();
            total / (end - start) as f64
        };
        let cut = theirs
            .iter()
            .map(|&p| chunk_score(p))
            .fold(f64::INFINITY, f64::min);
        for p in theirs.iter().filter(|p| !ours[l][0].contains(p)) {
            assert!(
                (chunk_score(*p) - cut).abs() < 1e-5,
                "layer {l}: kvpress keeps the chunk of {p} (score {}, cut {cut}), we do not",
                chunk_score(*p)
            );
        }
        swaps += 1;
    }
    eprintln!("chunkkv: {swaps} layers with near-tie swaps");
}

/// AdaKVPress over KnormPress (safeguard 0.2, compression 0.75): each head's kept set, of
/// its own size, equals kvpress's, up to near-ties of Knorm's scores at the layer's cut.
#[test]
fn adakv_keeps_what_kvpress_keeps_per_head() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let ours = kept("adakv:safeguard=0.2,press=knorm,ratio=4", &ids);
    let (mut swaps, mut ragged) = (0, 0);
    for (l, layer) in f["kept"]["adakv"].as_array().unwrap().iter().enumerate() {
        let theirs: Vec<Vec<usize>> = layer.as_array().unwrap().iter().map(as_positions).collect();
        let sizes: Vec<usize> = theirs.iter().map(Vec::len).collect();
        ragged += usize::from(sizes.iter().any(|&n| n != sizes[0]));
        // The layer's cut: the lowest score kvpress kept outside each head's safeguarded
        // best ⌊83 × 0.2⌋.
        let scores: Vec<Vec<f64>> = (0..theirs.len())
            .map(|g| scores(&f["knorm_scores"][l][g]))
            .collect();
        let safe = ((ids.len() / 4) as f64 * 0.2) as usize;
        let unguarded = |g: usize| {
            let s = &scores[g];
            let mut order: Vec<usize> = (0..s.len()).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            theirs[g]
                .iter()
                .filter(|p| !order[..safe].contains(p))
                .map(|&p| s[p])
                .collect::<Vec<f64>>()
        };
        let cut = (0..theirs.len())
            .flat_map(unguarded)
            .fold(f64::INFINITY, f64::min);
        for (g, (mine, want)) in ours[l].iter().zip(&theirs).enumerate() {
            for p in mine
                .iter()
                .filter(|p| !want.contains(p))
                .chain(want.iter().filter(|p| !mine.contains(p)))
            {
                assert!(
                    (scores[g][*p] - cut).abs() < 1e-5,
                    "layer {l} head {g}: position {p} (score {}, cut {cut}) kept by one side only",
                    scores[g][*p]
                );
                swaps += 1;
            }
        }
    }
    eprintln!(
        "adakv: {ragged} of 30 layers with heads of different sizes, {swaps} near-tie differences"
    );
    assert!(
        ragged > 0,
        "AdaKV should give heads different budgets somewhere"
    );
}

/// DuoAttentionPress (head_compression_ratio 0.75) with the fixture's head pattern, 16
/// sinks and a window of 64 (kvpress reads these from DuoAttention's released patterns,
/// which cannot be fetched here; the script hands it a seeded one): the same heads stream,
/// each keeping the same positions, and the others keep everything.
#[test]
fn duo_attention_keeps_what_kvpress_keeps_per_head() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let rows: Vec<Vec<f64>> = f["duo_pattern"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    let pattern = HeadPattern::new(rows.len(), rows[0].len(), rows.concat()).unwrap();
    let ours = kept_with(
        "duo-attention:ratio=4,sinks=16,recent=64",
        Some(&pattern),
        &ids,
    );
    let mut streaming = 0;
    for (l, layer) in f["kept"]["duo_attention"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (g, head) in layer.as_array().unwrap().iter().enumerate() {
            let want = as_positions(head);
            streaming += usize::from(want.len() < ids.len());
            assert_eq!(ours[l][g], want, "layer {l} head {g}");
        }
    }
    assert_eq!(streaming, 68, "round(90 heads x 0.75) stream");
}

/// kvpress's pipeline is the query-agnostic protocol: the context prefilled and compressed,
/// the question fed after it, then greedy tokens. Ours, fed the same way, gives the
/// question's last logits (top 20, to 2e-3) and the same 8 tokens, with no compression and
/// under SnapKV (`pool=avg`).
#[test]
fn the_query_agnostic_protocol_answers_as_kvpress_pipeline() {
    let f = fixture();
    let ids: Vec<u32> = as_positions(&f["ids"]).iter().map(|&i| i as u32).collect();
    let question: Vec<u32> = as_positions(&f["question_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    let path = longctx::assets::default_model().expect("fetching the default model");
    for (name, spec) in [
        ("baseline", "baseline"),
        ("snapkv", "snapkv:ratio=4,window=64,kernel=5,pool=avg"),
    ] {
        let want = &f["answers"][name];
        let mut loaded = load_model(&path, &f32_options()).unwrap();
        longctx::commands::install(&mut loaded, &Method::parse(spec).unwrap()).unwrap();
        let model = &mut loaded.model;
        model
            .reserve(Reservation {
                prompt: ids.len(),
                appended: question.len(),
                new_tokens: 8,
                budget_input: None,
            })
            .unwrap();
        let mut logits = model.prefill(&ids).unwrap();
        for &t in &question {
            logits = model.step(t).unwrap();
        }
        let row: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        for (id, value) in want["top_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(scores(&want["top_logits"]))
        {
            let ours = row[id.as_u64().unwrap() as usize] as f64;
            assert!(
                (ours - value).abs() < 2e-3,
                "{name}: logit of {id}: {ours} vs {value}"
            );
        }
        let mut tokens = vec![longctx_models::argmax(&logits).unwrap()];
        for _ in 1..8 {
            let next = model.step(*tokens.last().unwrap()).unwrap();
            tokens.push(longctx_models::argmax(&next).unwrap());
        }
        let want_tokens: Vec<u32> = as_positions(&want["tokens"])
            .iter()
            .map(|&t| t as u32)
            .collect();
        assert_eq!(tokens, want_tokens, "{name}");
    }
}
