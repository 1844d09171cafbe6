//! The benchmark run end to end on the default model with tiny tasks: the real store, plan,
//! shards and merge. Each sample takes about a second.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use longctx::store::Store;

fn longctx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longctx-runtest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A spec of `methods` over a two-depth needle of 120 words and one synthetic sample.
fn spec(dir: &Path, methods: &str) -> PathBuf {
    let path = dir.join("spec.toml");
    std::fs::write(
        &path,
        format!(
            "methods = [{methods}]\n[[models]]\npath = \"default\"\n\
             [needle]\nlengths = 1\nmin_words = 120\nmax_words = 120\ndepths = 2\ntrials = 1\nmax_new_tokens = 24\n\
             [synthetic]\ntasks = [\"niah_multikey\"]\nwords = 150\nsamples = 1\n"
        ),
    )
    .unwrap();
    path
}

/// `(model, method, task, sample, prediction, score)` of every row.
fn outcomes(db: &Path) -> Vec<(String, String, String, String, String, u64)> {
    Store::open_read_only(db)
        .unwrap()
        .rows()
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.key.model,
                r.key.method,
                r.key.task,
                r.key.sample,
                r.prediction,
                r.score.to_bits(),
            )
        })
        .collect()
}

fn run_ok(args: &[&str]) -> String {
    let out = longctx(args);
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn a_rerun_skips_stored_samples_and_report_reads_the_store() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("rerun");
    let spec = spec(&dir, "\"baseline\", \"snapkv-4x\"");
    let db = dir.join("results.db");
    let (spec, db_s) = (spec.to_str().unwrap(), db.to_str().unwrap());
    let first = run_ok(&["run", "--spec", spec, "--db", db_s]);
    assert!(first.contains("6 samples: 6 run, 0 already"), "{first}");
    let second = run_ok(&["run", "--spec", spec, "--db", db_s]);
    assert!(second.contains("6 samples: 0 run, 6 already"), "{second}");
    let out_dir = dir.join("report");
    let out = longctx(&["report", "--db", db_s, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains("| baseline | 2 |"), "{report}");
    assert!(report.contains("## Synthetic suite"), "{report}");
    assert!(report.contains("![baseline](needle_"), "{report}");
    assert!(out_dir.join("results.csv").exists());
    // Every figure is written as SVG and as PNG.
    let figures: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "svg"))
        .collect();
    assert!(figures.len() >= 2, "{figures:?}");
    for svg in figures {
        let png = std::fs::read(svg.with_extension("png")).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{}", svg.display());
    }
    // The plan command lists the same cells without running them.
    let plan = longctx(&["plan", "--spec", spec]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("4 cells, 6 samples"), "{text}");
}

#[test]
fn three_shards_merged_equal_one_process() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("shards");
    let spec = spec(&dir, "\"baseline\", \"streamingllm-4x\", \"h2o-4x\"");
    let spec = spec.to_str().unwrap();
    let whole = dir.join("whole.db");
    run_ok(&["run", "--spec", spec, "--db", whole.to_str().unwrap()]);
    let mut shards = Vec::new();
    for i in 0..3 {
        let db = dir.join(format!("shard{i}.db"));
        let log = run_ok(&[
            "run",
            "--spec",
            spec,
            "--shard",
            &format!("{i}/3"),
            "--db",
            db.to_str().unwrap(),
        ]);
        assert!(log.contains("3 samples: 3 run"), "shard {i}: {log}");
        shards.push(db.to_str().unwrap().to_string());
    }
    let merged = dir.join("merged.db");
    let mut args = vec!["merge", merged.to_str().unwrap()];
    args.extend(shards.iter().map(String::as_str));
    let out = longctx(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(outcomes(&merged), outcomes(&whole));
    assert_eq!(outcomes(&merged).len(), 9);
    // Shards of another plan are refused, and the target is left as it was.
    let other_dir = temp_dir("other");
    let other_spec = spec_for_other(&other_dir);
    let other = other_dir.join("other.db");
    run_ok(&[
        "run",
        "--spec",
        other_spec.to_str().unwrap(),
        "--db",
        other.to_str().unwrap(),
    ]);
    let out = longctx(&[
        "merge",
        dir.join("mixed.db").to_str().unwrap(),
        &shards[0],
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("shards of different plans"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("mixed.db").exists());
    // An output that holds another plan is refused too, and left as it was.
    let out = longctx(&["merge", other.to_str().unwrap(), &shards[0]]);
    assert!(
        stderr(&out).contains("already holds plan(s)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(outcomes(&other).len(), 3);
}

#[test]
fn rows_made_with_other_settings_are_refused_or_replaced() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("stale");
    let spec = spec(&dir, "\"baseline\"");
    let db = dir.join("results.db");
    let (spec, db_s) = (spec.to_str().unwrap(), db.to_str().unwrap());
    run_ok(&["run", "--spec", spec, "--db", db_s]);
    let before = outcomes(&db);
    // Other RoPE base and context on the same database: refused, naming both, nothing run.
    let other = ["--rope-theta", "20000", "--context", "4096"];
    let mut args = vec!["run", "--spec", spec, "--db", db_s];
    args.extend(other);
    let out = longctx(&args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("3 of the plan's samples are stored")
            && err.contains("context trained vs 4096")
            && err.contains("rope_theta trained vs 20000")
            && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(outcomes(&db), before);
    // --replace runs them again under the new settings, in place of the old rows.
    args.push("--replace");
    let log = run_ok(&args);
    assert!(log.contains("3 samples: 3 run, 0 already"), "{log}");
    let rows = Store::open_read_only(&db).unwrap().rows().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.settings.0["rope_theta"] == "20000"));
    // The same settings again: everything is reused.
    let log = run_ok(&args);
    assert!(log.contains("3 samples: 0 run, 3 already"), "{log}");
}

/// Two model folders of one name but different content: their rows share a key, so the
/// second is refused, naming the model's hash.
#[test]
fn another_model_under_the_same_name_is_refused() {
    let dir = temp_dir("same-name");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama3");
    for (copy, eps) in [("a", 1e-5), ("b", 1e-6)] {
        let model = dir.join(copy).join("tiny");
        std::fs::create_dir_all(&model).unwrap();
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
        let config = model.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        c["rms_norm_eps"] = eps.into();
        std::fs::write(&config, c.to_string()).unwrap();
    }
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        "methods = [\"baseline\"]\n[[models]]\npath = \"default\"\n[needle]\nlengths = 1\nmin_words = 40\nmax_words = 40\ndepths = 1\ntrials = 1\nmax_new_tokens = 4\n",
    )
    .unwrap();
    let db = dir.join("results.db");
    let run = |copy: &str| {
        longctx(&[
            "run",
            "--spec",
            spec.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--model",
            dir.join(copy).join("tiny").to_str().unwrap(),
        ])
    };
    let first = run("a");
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run("b");
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("model_sha256"),
        "{}",
        stderr(&second)
    );
}

/// Both protocols in one run: each method's rows under each, reported apart. The full cache
/// answers alike under both (only the prefill's end moves); SnapKV's choice differs, as its
/// budget and observation window then come from the context alone.
#[test]
fn the_query_agnostic_protocol_runs_beside_the_papers() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("protocols");
    let spec = spec(&dir, "\"baseline\", \"snapkv-4x\"");
    let db = dir.join("results.db");
    let (spec, db_s) = (spec.to_str().unwrap(), db.to_str().unwrap());
    let log = run_ok(&[
        "run",
        "--spec",
        spec,
        "--db",
        db_s,
        "--protocols",
        "paper,query-agnostic",
    ]);
    assert!(log.contains("12 samples: 12 run"), "{log}");
    let rows = Store::open_read_only(&db).unwrap().rows().unwrap();
    let find = |method: &str, protocol: &str, sample: &str| {
        rows.iter()
            .find(|r| {
                r.key.method.starts_with(method)
                    && r.key.protocol == protocol
                    && r.key.sample == sample
            })
            .unwrap()
    };
    for r in rows.iter().filter(|r| r.key.protocol == "query-agnostic") {
        let paper = find(&r.key.method, "paper", &r.key.sample);
        if r.key.method == "baseline" {
            assert_eq!(r.kept_tokens, r.prompt_tokens + r.new_tokens);
            assert_eq!(r.score, paper.score, "{}", r.key);
        } else {
            assert_ne!(r.kept_tokens, paper.kept_tokens, "{}", r.key);
        }
    }
    let out_dir = dir.join("report");
    let out = longctx(&["report", "--db", db_s, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains("| baseline [query-agnostic] |"), "{report}");
    assert!(report.contains("| baseline |"), "{report}");
}

fn spec_for_other(dir: &Path) -> PathBuf {
    spec(dir, "\"baseline\"")
}

#[test]
fn kill_9_loses_at_most_the_sample_in_flight() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("kill");
    let spec = spec(&dir, "\"baseline\", \"kivi-2bit\", \"tova-4x\"");
    let db = dir.join("results.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args([
            "run",
            "--spec",
            spec.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let stored = loop {
        let n = Store::open_read_only(&db)
            .ok()
            .and_then(|s| s.rows().ok())
            .map_or(0, |r| r.len());
        if n >= 2 || Instant::now() > deadline {
            break n;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        stored >= 2,
        "the run stored {stored} rows before the deadline"
    );
    let before = outcomes(&db);
    assert!(
        before.len() >= stored && before.len() < 9,
        "{} rows",
        before.len()
    );
    let log = run_ok(&[
        "run",
        "--spec",
        spec.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(
        log.contains(&format!(
            "9 samples: {} run, {} already",
            9 - before.len(),
            before.len()
        )),
        "{log}"
    );
    let after = outcomes(&db);
    assert_eq!(after.len(), 9);
    // What was stored before the kill is still there, unchanged.
    assert!(before.iter().all(|row| after.contains(row)));
}

#[test]
fn bad_specs_and_incompatible_databases_are_clear_errors() {
    let dir = temp_dir("bad");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "methods = [\"baseline\"]\nmodels = [{ path = \"default\" }]\nthread = 2\n",
    )
    .unwrap();
    let out = longctx(&[
        "run",
        "--spec",
        bad.to_str().unwrap(),
        "--db",
        dir.join("x.db").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown field `thread`"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        &bad,
        "methods = [\"baseline\"]\nmodels = [{ path = \"default\" }]\nthreads = 2\n",
    )
    .unwrap();
    let out = longctx(&["plan", "--spec", bad.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("the experiment has no tasks"),
        "{}",
        stderr(&out)
    );
    // A needle longer than the model's context fails before any sample runs, even the short
    // ones planned ahead of it.
    longctx::assets::default_model().expect("fetching the default model");
    std::fs::write(
        &bad,
        "methods = [\"baseline\"]\nmodels = [{ path = \"default\" }]\n[needle]\nlengths = 2\nmin_words = 100\nmax_words = 7000\ndepths = 1\ntrials = 1\nmax_new_tokens = 8\n",
    )
    .unwrap();
    let db = dir.join("long.db");
    let out = longctx(&[
        "run",
        "--spec",
        bad.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("words=7000")
            && stderr(&out).contains("exceeds the model's context of 8192"),
        "{}",
        stderr(&out)
    );
    assert!(
        !db.exists(),
        "a run that failed before its first sample left {db:?}"
    );
    // Reading commands never write: an empty file stays empty.
    let empty = dir.join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let out = longctx(&[
        "report",
        "--db",
        empty.to_str().unwrap(),
        "--out",
        dir.join("r").to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("not a longctx results database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    let old = dir.join("old.db");
    drop(Store::open(&old).unwrap());
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7")
        .unwrap();
    let out = longctx(&[
        "report",
        "--db",
        old.to_str().unwrap(),
        "--out",
        dir.join("r").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("schema version 7"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn longbench_rows_export_to_the_official_layout_and_rescore_identically() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("longbench");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let line = |id: &str, context: &str, input: &str, answer: &str| {
        serde_json::json!({
            "_id": id, "context": context, "input": input, "answers": [answer],
            "length": 40, "all_classes": ["Location", "Person", "Number"],
        })
        .to_string()
    };
    std::fs::write(
        data.join("trec.jsonl"),
        [
            line("t1", "Question: Where is Paris?\nType: Location\nQuestion: Who wrote Hamlet?\nType: Person", "How many legs has a spider?", "Number"),
            line("t2", "Question: How many days in a week?\nType: Number", "Where is Rome?", "Location"),
        ]
        .join("\n"),
    )
    .unwrap();
    std::fs::write(
        data.join("qasper.jsonl"),
        line(
            "q1",
            "The study used 12 volunteers from Oslo.",
            "How many volunteers took part?",
            "12 volunteers",
        ),
    )
    .unwrap();
    // LongBench-E's file of the same dataset: one sample in each of two length buckets.
    let line_e = |id: &str, length: usize, input: &str, answer: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&line(
            id,
            "Question: Where is Paris?\nType: Location",
            input,
            answer,
        ))
        .unwrap();
        v["length"] = length.into();
        v.to_string()
    };
    std::fs::write(
        data.join("trec_e.jsonl"),
        [
            line_e("e1", 1200, "Who painted the Mona Lisa?", "Person"),
            line_e("e2", 5200, "Where is Berlin?", "Location"),
        ]
        .join("\n"),
    )
    .unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        "methods = [\"baseline\", \"h2o-2x\"]\n[[models]]\npath = \"default\"\n",
    )
    .unwrap();
    let db = dir.join("results.db");
    let log = run_ok(&[
        "run",
        "--spec",
        spec.to_str().unwrap(),
        "--longbench-dir",
        data.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(log.contains("10 samples: 10 run"), "{log}");
    // The plan is the data, not where it lies: a copy elsewhere is the same plan (shards may
    // mount it at different paths), and a changed file is another plan.
    let plan_id = |data: &Path| {
        let out = longctx(&[
            "plan",
            "--spec",
            spec.to_str().unwrap(),
            "--longbench-dir",
            data.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.rsplit_once("(plan ")
            .expect("a plan line")
            .1
            .to_string()
    };
    let copy = dir.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["trec.jsonl", "qasper.jsonl", "trec_e.jsonl"] {
        std::fs::copy(data.join(name), copy.join(name)).unwrap();
    }
    assert_eq!(plan_id(&copy), plan_id(&data));
    let qasper = std::fs::read_to_string(copy.join("qasper.jsonl")).unwrap();
    std::fs::write(copy.join("qasper.jsonl"), qasper.replace("Oslo", "Bergen")).unwrap();
    assert_ne!(plan_id(&copy), plan_id(&data));
    let report_dir = dir.join("report");
    run_ok(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(report.contains("## LongBench-E"), "{report}");
    assert!(
        report.contains("| baseline | trec | 2 |") && report.contains(" | - |"),
        "LongBench-E rows fill two buckets and leave 8k+ empty:\n{report}"
    );
    let out = dir.join("export");
    let exported = longctx(&[
        "export",
        "--format",
        "longbench",
        "--db",
        db.to_str().unwrap(),
        "--longbench-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    for method in ["baseline", "h2o_ratio_2_count_prefill_false_heads_query"] {
        let run_dir = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join(method);
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join("result.json")).unwrap())
                .unwrap();
        // The official scorer's port, run on the exported files, gives the same scores.
        let scored = longctx(&["score", run_dir.join("pred").to_str().unwrap()]);
        let table = String::from_utf8_lossy(&scored.stdout).into_owned();
        for dataset in ["trec", "qasper"] {
            let score = result[dataset].as_f64().unwrap();
            assert!(table.contains(&format!("| {dataset} |")), "{table}");
            assert!(
                table.contains(&format!("{score:.2} |")),
                "{dataset} {score} not in\n{table}"
            );
        }
        // LongBench-E predictions rescore per bucket as exported.
        let result_e: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join("result_e.json")).unwrap())
                .unwrap();
        let scored = longctx(&["score", "--e", run_dir.join("pred_e").to_str().unwrap()]);
        let table = String::from_utf8_lossy(&scored.stdout).into_owned();
        assert!(result_e["trec"]["8k+"].is_null(), "{result_e}");
        let (short, middle) = (
            result_e["trec"]["0-4k"].as_f64().unwrap(),
            result_e["trec"]["4-8k"].as_f64().unwrap(),
        );
        let row = format!("| trec | {short:.2} | {middle:.2} | NaN |");
        assert!(table.contains(&row), "{row} not in\n{table}");
    }
}

#[test]
fn a_needle_without_max_words_is_fitted_to_the_model() {
    use longctx_models::{load_model, LoadOptions};
    let model = longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("fitted");
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        "methods = [\"baseline\"]\n[[models]]\npath = \"default\"\n\
         [needle]\nlengths = 2\nmin_words = 500\ndepths = 1\ntrials = 1\nmax_new_tokens = 16\n",
    )
    .unwrap();
    let prompts = dir.join("prompts");
    let out = longctx(&[
        "plan",
        "--spec",
        spec.to_str().unwrap(),
        "--dump-prompts",
        prompts.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 cells, 2 samples"), "{text}");
    let longest = std::fs::read_dir(prompts.join("needle_passkey_max_new_tokens_16"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .max_by_key(String::len)
        .unwrap();
    // The longest prompt fills the context but for the answer (within the 2% margin the
    // words-per-token estimate keeps).
    let loaded = load_model(&model, &LoadOptions::default()).unwrap();
    let context = loaded.model.context_limit();
    let tokens = loaded.prompt_tokens(&longest, false).unwrap().len();
    assert!(
        tokens + 16 <= context && tokens + 16 > context * 95 / 100,
        "{tokens} prompt tokens for a context of {context}"
    );
}

/// The benchmark's truncation protocol: a LongBench prompt longer than max_length reaches
/// StreamingLLM whole, with the budget of max_length tokens, and every other method cut in
/// the middle; `--truncation middle` cuts it for every method.
#[test]
fn streaming_methods_read_long_prompts_whole() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("truncation");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let context = "Question: Where is Paris?\nType: Location\n".repeat(120);
    let row = serde_json::json!({
        "_id": "t1", "context": context, "input": "How many legs has a spider?",
        "answers": ["Number"], "length": 900, "all_classes": ["Location", "Number"],
    });
    std::fs::write(data.join("trec.jsonl"), row.to_string()).unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "methods = [\"baseline\", \"streamingllm-4x\"]\n[[models]]\npath = \"default\"\nmax_length = 300\n[longbench]\ndir = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let rows = |extra: &[&str], db: &str| {
        let db = dir.join(db);
        let mut args = vec![
            "run",
            "--spec",
            spec.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ];
        args.extend(extra);
        run_ok(&args);
        Store::open_read_only(&db).unwrap().rows().unwrap()
    };
    let paper = rows(&[], "paper.db");
    let (cut, streamed) = (&paper[0], &paper[1]);
    assert!(cut.key.method == "baseline" && streamed.key.method.starts_with("streamingllm"));
    assert_eq!(cut.settings.0["truncation"], "middle");
    assert_eq!(streamed.settings.0["truncation"], "stream");
    assert!(cut.prompt_tokens <= 300 + 40, "{}", cut.prompt_tokens);
    assert!(streamed.prompt_tokens > 1000, "{}", streamed.prompt_tokens);
    // The budget is a quarter of max_length, not of the whole input.
    assert!(
        streamed.kept_tokens <= 300 / 4 + 1,
        "{}",
        streamed.kept_tokens
    );
    let middle = rows(&["--truncation", "middle"], "middle.db");
    assert_eq!(middle[1].settings.0["truncation"], "middle");
    assert_eq!(middle[1].prompt_tokens, cut.prompt_tokens);
}

#[test]
fn a_prompt_compressor_stores_both_prompts_and_its_time() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("llmlingua");
    let path = dir.join("spec.toml");
    std::fs::write(
        &path,
        "methods = [\"baseline\", \"llmlingua-4x\", \"longllmlingua-4x\"]\n[[models]]\npath = \"default\"\n\
         [needle]\nlengths = 1\nmin_words = 600\nmax_words = 600\ndepths = 2\ntrials = 1\nmax_new_tokens = 16\n",
    )
    .unwrap();
    let db = dir.join("results.db");
    let (spec, db_s) = (path.to_str().unwrap(), db.to_str().unwrap());
    run_ok(&["run", "--spec", spec, "--db", db_s]);
    let rows = Store::open_read_only(&db).unwrap().rows().unwrap();
    let of = |question: &str| -> Vec<_> {
        rows.iter()
            .filter(|r| r.key.method.contains(question))
            .collect()
    };
    let (compressed, conditioned, full) = (
        of("question=none"),
        of("question=condition"),
        of("baseline"),
    );
    assert_eq!((compressed.len(), conditioned.len(), full.len()), (2, 2, 2));
    // LongLLMLingua keeps the question part and the budget's 100 extra tokens: less.
    for (c, b) in conditioned.iter().zip(&full) {
        let ratio = c.original_tokens as f64 / c.prompt_tokens as f64;
        assert!((1.5..5.0).contains(&ratio), "{}: ratio {ratio}", c.key);
        assert!(c.compress_ms > 0.0, "{}", c.key);
        assert_eq!(c.original_tokens, b.prompt_tokens, "{}", c.key);
    }
    for (c, b) in compressed.iter().zip(&full) {
        // The prompt it was given is the baseline's; it read about a quarter of it (the tail
        // after the last full window stays whole, so a 900-token prompt keeps more).
        assert_eq!(c.original_tokens, b.prompt_tokens, "{}", c.key);
        let ratio = c.original_tokens as f64 / c.prompt_tokens as f64;
        assert!((2.0..5.0).contains(&ratio), "{}: ratio {ratio}", c.key);
        assert!(
            c.compress_ms > 0.0 && c.kv_bytes < b.kv_bytes / 2,
            "{}",
            c.key
        );
        assert!(c.settings.0.contains_key("scorer_sha256"), "{}", c.key);
        assert_eq!((b.original_tokens, b.compress_ms), (b.prompt_tokens, 0.0));
    }
    let out_dir = dir.join("report");
    let out = longctx(&["report", "--db", db_s, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains("| compression s (mean) |"), "{report}");
    assert!(report.contains(" → "), "{report}");

    // Bad input: a rate outside (0, 1], a scorer that cannot be loaded, a task whose whole
    // prompt is compressed under the protocol that needs its question apart.
    let fails = |args: &[&str], needle: &str| {
        let out = longctx(args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    };
    let other = dir.join("other.db");
    let other = other.to_str().unwrap();
    let with_method = |name: &str, method: &str| {
        let path = dir.join(name);
        let text = std::fs::read_to_string(spec).unwrap().replace(
            "\"baseline\", \"llmlingua-4x\", \"longllmlingua-4x\"",
            &format!(
                "\"llmlingua:{method},window=200,context_budget=100,split=none,question=none\""
            ),
        );
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let bad_rate = with_method("rate.toml", "rate=1.5,scorer=default");
    fails(
        &["run", "--spec", &bad_rate, "--db", other],
        "rate=1.5 must be a number in (0, 1]",
    );
    // On the command line too: a spec's settings stay with it among comma-separated methods.
    fails(
        &[
            "run",
            "--spec",
            spec,
            "--db",
            other,
            "--methods",
            "baseline,llmlingua:rate=1.5,window=200,context_budget=100,split=none,question=none,scorer=default,h2o-4x",
        ],
        "rate=1.5 must be a number in (0, 1]",
    );
    let bad_scorer = with_method("scorer.toml", "rate=0.25,scorer=/no/such/model.gguf");
    fails(
        &["run", "--spec", &bad_scorer, "--db", other],
        "its scorer \"/no/such/model.gguf\" cannot be loaded",
    );
    for (method, why) in [
        ("llmlingua-4x", "run it under --protocols paper"),
        (
            "longllmlingua-4x",
            "reads the question to compress the context, which the query-agnostic protocol withholds",
        ),
    ] {
        let args = ["run", "--spec", spec, "--db", other, "--methods", method];
        fails(&[&args[..], &["--protocols", "query-agnostic"]].concat(), why);
    }
    fails(
        &["bench", "--method", "llmlingua-4x", "--contexts", "64"],
        "is a prompt compressor",
    );
    // A LongBench sample whose context field is empty has nothing to compress; one without
    // a question cannot condition LongLLMLingua.
    let data = dir.join("longbench");
    std::fs::create_dir_all(&data).unwrap();
    let row = |context: &str, input: &str| {
        serde_json::json!({"input": input, "context": context, "answers": ["x"], "length": 3,
            "all_classes": null, "_id": "a", "dataset": "hotpotqa", "language": "en"})
        .to_string()
    };
    for (context, input, method, why) in [
        ("", "Who?", "llmlingua-4x", "its context field is empty"),
        (
            "Some text here.",
            "",
            "longllmlingua-4x",
            "it has no question",
        ),
    ] {
        std::fs::write(data.join("hotpotqa.jsonl"), row(context, input) + "\n").unwrap();
        let lb = dir.join("longbench.toml");
        std::fs::write(
            &lb,
            format!(
                "methods = [\"{method}\"]\n[[models]]\npath = \"default\"\n[longbench]\ndir = \"{}\"\n",
                data.display()
            ),
        )
        .unwrap();
        fails(&["run", "--spec", lb.to_str().unwrap(), "--db", other], why);
    }
    let no_classifier = dir.join("classifier.toml");
    std::fs::write(
        &no_classifier,
        std::fs::read_to_string(spec).unwrap().replace(
            "\"baseline\", \"llmlingua-4x\", \"longllmlingua-4x\"",
            "\"llmlingua2:rate=0.25,model=/no/such/folder\"",
        ),
    )
    .unwrap();
    fails(
        &[
            "run",
            "--spec",
            no_classifier.to_str().unwrap(),
            "--db",
            other,
        ],
        "LLMLingua-2's classifier is not in /no/such/folder",
    );
    assert!(!Path::new(other).exists());
}

#[test]
fn llmlingua2_runs_with_a_classifier_from_a_folder() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = temp_dir("llmlingua2");
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llmlingua2/tiny-xlm-roberta-large");
    let path = dir.join("spec.toml");
    std::fs::write(
        &path,
        format!(
            "methods = [\"llmlingua2:rate=0.25,model={}\"]\n[[models]]\npath = \"default\"\n\
             [needle]\nlengths = 1\nmin_words = 600\nmax_words = 600\ndepths = 1\ntrials = 1\nmax_new_tokens = 8\n",
            folder.display()
        ),
    )
    .unwrap();
    let db = dir.join("results.db");
    run_ok(&[
        "run",
        "--spec",
        path.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    let rows = Store::open_read_only(&db).unwrap().rows().unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    // A random classifier keeps about a quarter of the GPT tokens; the model's own tokens
    // follow roughly.
    let ratio = r.original_tokens as f64 / r.prompt_tokens as f64;
    assert!(ratio > 2.0, "{}: ratio {ratio}", r.key);
    assert!(r.compress_ms > 0.0 && r.settings.0.contains_key("scorer_sha256"));
}
