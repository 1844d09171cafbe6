//! The results store: one SQLite row per (model, method, protocol, task, sample), each
//! committed on its own, so that a killed run loses at most the sample in flight and a rerun
//! skips what is done. The method column holds the full spec (every setting spelled out), so
//! changing a setting makes new rows instead of mixing with old ones; everything else that
//! decides a row's outcome (the model file's hash, overrides, the prompt's tokens, the
//! scoring version) is its [`Settings`], compared before a stored row is reused or merged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// The layout this build writes. Version 2 added the protocol to the key and named settings
/// to every row; version 3 the prompt's tokens before a prompt compressor and the time it
/// took; version 4 the bytes a decoding step read, where a cache reads part of what it holds
/// (Quest). Versions 2 and 3 are read as they are (nothing compressed, nothing read
/// sparsely) and brought to version 4 when opened for writing; any other version is refused.
pub const SCHEMA_VERSION: i64 = 4;

/// The oldest layout this build still reads.
const OLDEST_READABLE: i64 = 2;

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("results database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The file was written by a build with another layout.
    #[error("results database {path} has schema version {found}; this longctx reads versions {OLDEST_READABLE} to {SCHEMA_VERSION}. Use another --db (nothing in it was changed)")]
    Schema { path: PathBuf, found: i64 },
    /// A read-only command was pointed at something that is not a results database.
    #[error("{path} is not a longctx results database ({why}): pass the --db a `longctx run` wrote (nothing was changed)")]
    NotResults { path: PathBuf, why: String },
    /// Two stores disagree on a completed sample.
    #[error("{0}")]
    Conflict(String),
}

/// Everything besides the key that decides a row's outcome, by name (model file hash,
/// context and RoPE overrides, prefill chunk, the prompt's tokens, seed, scoring version).
/// A stored row is reused only when its settings equal the run's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(pub BTreeMap<String, String>);

/// The setting naming the school of a model that is not a transformer ("linear-time",
/// "hybrid"); absent from transformers' rows.
pub const MODEL_SCHOOL: &str = "model_school";

impl Settings {
    /// Add one named setting.
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.0.insert(name.into(), value.to_string());
        self
    }

    /// The stored form: a JSON object with sorted keys.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a map of strings serializes")
    }

    fn from_json(text: &str) -> rusqlite::Result<Self> {
        serde_json::from_str(text).map(Self).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    }

    /// The settings that differ, as `name: <stored> here, <other> there` phrases; empty
    /// when equal.
    pub fn differences(&self, other: &Settings) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> =
            self.0.keys().chain(other.0.keys()).collect();
        names
            .into_iter()
            .filter_map(|name| {
                let (a, b) = (self.0.get(name), other.0.get(name));
                (a != b).then(|| {
                    format!(
                        "{name} {} vs {}",
                        a.map_or("(absent)", String::as_str),
                        b.map_or("(absent)", String::as_str)
                    )
                })
            })
            .collect()
    }
}

/// What identifies a row: one sample of one task under one method and protocol on one model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey {
    /// The model's name (file stem).
    pub model: String,
    /// The method's full spec.
    pub method: String,
    /// How the prompt reached the model (`paper` or `query-agnostic`).
    pub protocol: String,
    /// Task name, e.g. `needle/passkey` or `longbench/qasper`.
    pub task: String,
    /// The sample's id within the task.
    pub sample: String,
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model {}, method {}, protocol {}, task {}, sample {}",
            self.model, self.method, self.protocol, self.task, self.sample
        )
    }
}

/// One completed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Which sample, method and model.
    pub key: RowKey,
    /// What the model answered.
    pub prediction: String,
    /// The task's primary score in [0, 1].
    pub score: f64,
    /// A secondary score where the task has one (needle partial match), else NaN.
    pub score2: f64,
    /// Prompt length in tokens, as the model read it.
    pub prompt_tokens: i64,
    /// Prompt length in tokens before a prompt compressor (`prompt_tokens` for every other
    /// method): what the method was asked to read.
    pub original_tokens: i64,
    /// Time a prompt compressor took (zero for every other method); counted in the method's
    /// prefill cost.
    pub compress_ms: f64,
    /// Tokens kept at the end, averaged over layers.
    pub kept_tokens: i64,
    /// Bytes attention read from at the end (allocated capacity included).
    pub kv_bytes: i64,
    /// Bytes of evicted context kept for retrieval.
    pub offloaded_bytes: i64,
    /// Every token seen in the method's uncompressed format.
    pub uncompressed_bytes: i64,
    /// Every token seen at 16 bits.
    pub fp16_bytes: i64,
    /// Prefill wall time.
    pub prefill_ms: f64,
    /// Decoding wall time.
    pub decode_ms: f64,
    /// Tokens generated.
    pub new_tokens: i64,
    /// Peak resident memory of the process during the sample.
    pub peak_rss: i64,
    /// Mean bytes of keys, values and metadata a decoding step read, where the cache reads
    /// part of what it holds (Quest); `None` where every step reads all the cache holds.
    pub read_bytes: Option<f64>,
    /// Everything besides the key that decided the outcome.
    pub settings: Settings,
    /// The longctx version that produced it.
    pub version: String,
    /// When it completed, in seconds since the Unix epoch.
    pub timestamp: String,
}

/// An open results database.
pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// What opening created (the file, and the first folder that did not exist), so that a
    /// run that fails before its first row can leave nothing behind.
    created: Option<(PathBuf, Option<PathBuf>)>,
    /// The layout of the file (an older one is read, never written).
    schema: i64,
}

const COLUMNS: &str = "model, method, protocol, task, sample, prediction, score, score2, prompt_tokens, kept_tokens, kv_bytes, offloaded_bytes, uncompressed_bytes, fp16_bytes, prefill_ms, decode_ms, new_tokens, peak_rss, settings, version, timestamp, original_tokens, compress_ms, read_bytes";

/// What a version 2 database's rows are read with: no compressor ran, so the prompt before
/// compression is the prompt, and no cache read sparsely.
const COLUMNS_V2: &str = "model, method, protocol, task, sample, prediction, score, score2, prompt_tokens, kept_tokens, kv_bytes, offloaded_bytes, uncompressed_bytes, fp16_bytes, prefill_ms, decode_ms, new_tokens, peak_rss, settings, version, timestamp, prompt_tokens, 0.0, NULL";

/// What a version 3 database's rows are read with: no cache read sparsely.
const COLUMNS_V3: &str = "model, method, protocol, task, sample, prediction, score, score2, prompt_tokens, kept_tokens, kv_bytes, offloaded_bytes, uncompressed_bytes, fp16_bytes, prefill_ms, decode_ms, new_tokens, peak_rss, settings, version, timestamp, original_tokens, compress_ms, NULL";

const KEY_MATCH: &str =
    "model = ?1 AND method = ?2 AND protocol = ?3 AND task = ?4 AND sample = ?5";

impl Store {
    /// Open (or create) the database at `path` for writing, checking its schema version and
    /// that it can be written.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let mut created = None;
        if !path.exists() {
            let first_missing = path
                .ancestors()
                .skip(1)
                .filter(|d| !d.as_os_str().is_empty() && !d.exists())
                .last()
                .map(Path::to_path_buf);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| fail(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
            }
            created = Some((path.to_path_buf(), first_missing));
        }
        let conn = Connection::open(path).map_err(fail)?;
        let mut store = Self {
            path: path.to_path_buf(),
            conn,
            created,
            schema: SCHEMA_VERSION,
        };
        let result = store.init();
        if let Err(e) = result {
            store.discard_if_unused();
            return Err(e);
        }
        Ok(store)
    }

    fn init(&mut self) -> Result<(), StoreError> {
        let tables = self.table_count()?;
        if tables == 0 {
            self.conn
                .execute_batch(&format!(
                    "CREATE TABLE results (
                    model TEXT NOT NULL, method TEXT NOT NULL, protocol TEXT NOT NULL,
                    task TEXT NOT NULL, sample TEXT NOT NULL,
                    prediction TEXT NOT NULL, score REAL NOT NULL, score2 REAL,
                    prompt_tokens INTEGER NOT NULL, kept_tokens INTEGER NOT NULL,
                    kv_bytes INTEGER NOT NULL, offloaded_bytes INTEGER NOT NULL,
                    uncompressed_bytes INTEGER NOT NULL, fp16_bytes INTEGER NOT NULL,
                    prefill_ms REAL NOT NULL, decode_ms REAL NOT NULL, new_tokens INTEGER NOT NULL,
                    peak_rss INTEGER NOT NULL, settings TEXT NOT NULL,
                    version TEXT NOT NULL, timestamp TEXT NOT NULL,
                    original_tokens INTEGER NOT NULL, compress_ms REAL NOT NULL,
                    read_bytes REAL,
                    PRIMARY KEY (model, method, protocol, task, sample));
                 CREATE TABLE plans (fingerprint TEXT PRIMARY KEY);
                 PRAGMA user_version = {SCHEMA_VERSION};"
                ))
                .map_err(|e| self.fail(e))?;
        } else {
            self.check_schema()?;
            // Rows written before prompt compressors read their prompt whole; rows written
            // before sparse reads were recorded have none.
            let upgrades = [
                (
                    2,
                    "ALTER TABLE results ADD COLUMN original_tokens INTEGER NOT NULL DEFAULT 0;
                     ALTER TABLE results ADD COLUMN compress_ms REAL NOT NULL DEFAULT 0;
                     UPDATE results SET original_tokens = prompt_tokens;",
                ),
                (3, "ALTER TABLE results ADD COLUMN read_bytes REAL;"),
            ];
            let steps: String = upgrades
                .iter()
                .filter(|(from, _)| *from >= self.schema)
                .map(|(_, step)| *step)
                .collect();
            if !steps.is_empty() {
                self.conn
                    .execute_batch(&format!(
                        "BEGIN; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| self.fail(e))?;
                self.schema = SCHEMA_VERSION;
            }
        }
        // Fails now, not after the first sample, when the file cannot be written.
        self.conn
            .execute_batch("BEGIN IMMEDIATE; COMMIT;")
            .map_err(|e| self.fail(e))
    }

    /// Open an existing database only to read it: nothing is created or changed, even for a
    /// file that is not a results database.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let not_results = |why: &str| StoreError::NotResults {
            path: path.to_path_buf(),
            why: why.into(),
        };
        if !path.is_file() {
            return Err(not_results("no such file"));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| not_results(&e.to_string()))?;
        let mut store = Self {
            path: path.to_path_buf(),
            conn,
            created: None,
            schema: SCHEMA_VERSION,
        };
        match store.table_count() {
            Ok(0) => return Err(not_results("it holds no tables")),
            Ok(_) => {}
            Err(e) => return Err(not_results(&e.to_string())),
        }
        store.check_schema()?;
        Ok(store)
    }

    fn table_count(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.fail(e))
    }

    /// Read the file's layout version; one this build cannot read is an error.
    fn check_schema(&mut self) -> Result<(), StoreError> {
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.fail(e))?;
        if !(OLDEST_READABLE..=SCHEMA_VERSION).contains(&found) {
            return Err(StoreError::Schema {
                path: self.path.clone(),
                found,
            });
        }
        self.schema = found;
        Ok(())
    }

    /// The columns of [`read_row`]'s order, as this file's layout holds them.
    fn columns(&self) -> &'static str {
        match self.schema {
            2 => COLUMNS_V2,
            3 => COLUMNS_V3,
            _ => COLUMNS,
        }
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove what opening created (the file and folders) when no row was written to it:
    /// a run that fails before its first sample leaves nothing behind.
    pub fn discard_if_unused(self) {
        let Some((file, folder)) = self.created.clone() else {
            return;
        };
        if !self.rows().map(|r| r.is_empty()).unwrap_or(false) {
            return;
        }
        drop(self);
        let _ = std::fs::remove_file(&file);
        if let Some(folder) = folder {
            // Only folders left empty: from the file's up to the first one created.
            for dir in file.ancestors().skip(1) {
                if std::fs::remove_dir(dir).is_err() || dir == folder {
                    break;
                }
            }
        }
    }

    /// Record that rows of the plan with this fingerprint are written here.
    pub fn claim_plan(&mut self, fingerprint: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO plans (fingerprint) VALUES (?1)",
                params![fingerprint],
            )
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    /// Fingerprints of the plans whose rows this database holds, sorted.
    pub fn plans(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT fingerprint FROM plans ORDER BY fingerprint")
            .map_err(|e| self.fail(e))?;
        let plans = statement
            .query_map([], |r| r.get(0))
            .map_err(|e| self.fail(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.fail(e))?;
        Ok(plans)
    }

    /// Add every row of every input in one transaction, after checking that no two rows of
    /// the same key disagree (settings or prediction), among the inputs or with what this
    /// database holds: on a conflict nothing is written. Returns the rows added and the rows
    /// already held.
    pub fn merge_from(&mut self, inputs: &[Store]) -> Result<(usize, usize), StoreError> {
        let mut fresh: BTreeMap<RowKey, (ResultRow, &Path)> = BTreeMap::new();
        let mut same = 0;
        for input in inputs {
            for row in input.rows()? {
                let held = match self.stored(&row.key)? {
                    Some(existing) => Some((existing, self.path.as_path())),
                    None => fresh.get(&row.key).cloned(),
                };
                match held {
                    Some((existing, from)) => {
                        if let Some(why) = disagreement(&existing, &row) {
                            return Err(StoreError::Conflict(format!(
                                "{} and {} disagree on {} ({why}); nothing was merged",
                                from.display(),
                                input.path.display(),
                                row.key
                            )));
                        }
                        same += 1;
                    }
                    None => {
                        fresh.insert(row.key.clone(), (row, input.path.as_path()));
                    }
                }
            }
        }
        let mut plans = Vec::new();
        for input in inputs {
            plans.extend(input.plans()?);
        }
        let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        let written = (|| {
            for (row, _) in fresh.values() {
                insert_row(&tx, row, false)?;
            }
            for plan in &plans {
                tx.execute(
                    "INSERT OR IGNORE INTO plans (fingerprint) VALUES (?1)",
                    params![plan],
                )?;
            }
            tx.commit()
        })();
        written.map_err(|e| StoreError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        Ok((fresh.len(), same))
    }

    fn fail(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Store one completed sample (its own transaction). A row already stored under the
    /// same key is kept when it agrees (same settings and prediction) and refused otherwise,
    /// unless `replace` is set: then the new row takes its place.
    pub fn insert(&mut self, row: &ResultRow, replace: bool) -> Result<(), StoreError> {
        if !replace {
            if let Some(existing) = self.stored(&row.key)? {
                return match disagreement(&existing, row) {
                    None => Ok(()),
                    Some(why) => Err(StoreError::Conflict(format!(
                        "{} already holds {} and it disagrees ({why}): use another --db, or --replace",
                        self.path.display(),
                        row.key
                    ))),
                };
            }
        }
        insert_row(&self.conn, row, replace).map_err(|e| self.fail(e))
    }

    /// The row stored under `key`, if any.
    pub fn stored(&self, key: &RowKey) -> Result<Option<ResultRow>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM results WHERE {KEY_MATCH}", self.columns()),
                params![key.model, key.method, key.protocol, key.task, key.sample],
                read_row,
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    /// Every row, ordered by key.
    pub fn rows(&self) -> Result<Vec<ResultRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM results ORDER BY model, method, protocol, task, sample",
                self.columns()
            ))
            .map_err(|e| self.fail(e))?;
        let rows = statement
            .query_map([], read_row)
            .map_err(|e| self.fail(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(e))?;
        Ok(rows)
    }
}

/// Why two rows of one key cannot both stand (settings, then prediction), if they cannot.
fn disagreement(a: &ResultRow, b: &ResultRow) -> Option<String> {
    let settings = a.settings.differences(&b.settings);
    if !settings.is_empty() {
        return Some(format!("settings differ: {}", settings.join("; ")));
    }
    (a.prediction != b.prediction)
        .then(|| format!("predictions {:?} vs {:?}", a.prediction, b.prediction))
}

fn insert_row(conn: &Connection, row: &ResultRow, replace: bool) -> rusqlite::Result<()> {
    let verb = if replace {
        "INSERT OR REPLACE"
    } else {
        "INSERT"
    };
    let k = &row.key;
    conn.execute(
        &format!("{verb} INTO results ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"),
        params![
            k.model, k.method, k.protocol, k.task, k.sample, row.prediction, row.score,
            if row.score2.is_nan() { None } else { Some(row.score2) },
            row.prompt_tokens, row.kept_tokens, row.kv_bytes, row.offloaded_bytes,
            row.uncompressed_bytes, row.fp16_bytes, row.prefill_ms, row.decode_ms,
            row.new_tokens, row.peak_rss, row.settings.to_json(), row.version, row.timestamp,
            row.original_tokens, row.compress_ms, row.read_bytes
        ],
    )
    .map(|_| ())
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResultRow> {
    Ok(ResultRow {
        key: RowKey {
            model: r.get(0)?,
            method: r.get(1)?,
            protocol: r.get(2)?,
            task: r.get(3)?,
            sample: r.get(4)?,
        },
        prediction: r.get(5)?,
        score: r.get(6)?,
        score2: r.get::<_, Option<f64>>(7)?.unwrap_or(f64::NAN),
        prompt_tokens: r.get(8)?,
        kept_tokens: r.get(9)?,
        kv_bytes: r.get(10)?,
        offloaded_bytes: r.get(11)?,
        uncompressed_bytes: r.get(12)?,
        fp16_bytes: r.get(13)?,
        prefill_ms: r.get(14)?,
        decode_ms: r.get(15)?,
        new_tokens: r.get(16)?,
        peak_rss: r.get(17)?,
        settings: Settings::from_json(&r.get::<_, String>(18)?)?,
        version: r.get(19)?,
        timestamp: r.get(20)?,
        original_tokens: r.get(21)?,
        compress_ms: r.get(22)?,
        read_bytes: r.get(23)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(sample: &str, prediction: &str) -> ResultRow {
        ResultRow {
            key: RowKey {
                model: "m".into(),
                method: "baseline".into(),
                protocol: "paper".into(),
                task: "needle/passkey".into(),
                sample: sample.into(),
            },
            prediction: prediction.into(),
            score: 1.0,
            score2: f64::NAN,
            prompt_tokens: 10,
            original_tokens: 10,
            compress_ms: 0.0,
            kept_tokens: 10,
            kv_bytes: 100,
            offloaded_bytes: 0,
            uncompressed_bytes: 100,
            fp16_bytes: 50,
            prefill_ms: 1.0,
            decode_ms: 2.0,
            new_tokens: 3,
            peak_rss: 4,
            read_bytes: None,
            settings: Settings::default().with("rope_theta", "trained"),
            version: "0".into(),
            timestamp: "t".into(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("longctx-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("results.db")
    }

    #[test]
    fn rows_survive_reopening_and_conflicts_are_refused() {
        let path = temp("reopen");
        let mut store = Store::open(&path).unwrap();
        store.insert(&row("a", "1234567"), false).unwrap();
        drop(store);
        let mut store = Store::open(&path).unwrap();
        assert!(store.stored(&row("a", "").key).unwrap().is_some());
        let mut other = row("a", "1234567");
        other.key.method = "h2o".into();
        assert!(store.stored(&other.key).unwrap().is_none());
        store.insert(&row("a", "1234567"), false).unwrap();
        let err = store
            .insert(&row("a", "7654321"), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("predictions \"1234567\" vs \"7654321\""),
            "{err}"
        );
        let mut stale = row("a", "1234567");
        stale.settings = stale.settings.with("rope_theta", "1");
        let err = store.insert(&stale, false).unwrap_err().to_string();
        assert!(err.contains("rope_theta trained vs 1"), "{err}");
        assert!(err.contains("--replace"), "{err}");
        store.insert(&stale, true).unwrap();
        let rows = store.rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].settings, stale.settings);
        assert!(rows[0].score2.is_nan());
    }

    #[test]
    fn another_schema_version_is_refused_and_left_alone() {
        let path = temp("schema");
        let mut store = Store::open(&path).unwrap();
        store.insert(&row("a", "x"), false).unwrap();
        store
            .conn
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        drop(store);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn older_databases_are_read_as_they_are_and_upgraded_for_writing() {
        // Version 2's layout lacks the columns versions 3 and 4 added; version 3's the one
        // version 4 added.
        let cases = [
            (
                2,
                "ALTER TABLE results DROP COLUMN original_tokens;
                 ALTER TABLE results DROP COLUMN compress_ms;
                 ALTER TABLE results DROP COLUMN read_bytes;
                 INSERT INTO results VALUES ('m', 'baseline', 'paper', 'needle/passkey', 'a', 'x', 1.0, 0.5, 77, 77, 100, 0, 100, 50, 1.0, 2.0, 3, 4, '{}', '0', '0');",
            ),
            (
                3,
                "ALTER TABLE results DROP COLUMN read_bytes;
                 INSERT INTO results VALUES ('m', 'baseline', 'paper', 'needle/passkey', 'a', 'x', 1.0, 0.5, 77, 77, 100, 0, 100, 50, 1.0, 2.0, 3, 4, '{}', '0', '0', 77, 0.0);",
            ),
        ];
        for (old, layout) in cases {
            let path = temp(&format!("v{old}"));
            drop(Store::open(&path).unwrap());
            Connection::open(&path)
                .unwrap()
                .execute_batch(&format!("{layout} PRAGMA user_version = {old};"))
                .unwrap();
            let read = Store::open_read_only(&path).unwrap().rows().unwrap();
            assert_eq!((read[0].original_tokens, read[0].compress_ms), (77, 0.0));
            assert_eq!(read[0].read_bytes, None);
            let version = |p: &Path| -> i64 {
                Connection::open(p)
                    .unwrap()
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .unwrap()
            };
            assert_eq!(version(&path), old, "reading changed nothing");
            let mut store = Store::open(&path).unwrap();
            assert_eq!(store.rows().unwrap(), read);
            let mut sparse = row("b", "y");
            sparse.read_bytes = Some(1234.0);
            store.insert(&sparse, false).unwrap();
            assert_eq!(store.rows().unwrap().len(), 2);
            assert_eq!(store.rows().unwrap()[1].read_bytes, Some(1234.0));
            drop(store);
            assert_eq!(version(&path), SCHEMA_VERSION);
        }
    }

    #[test]
    fn reading_never_writes_and_an_unused_new_store_leaves_nothing() {
        let path = temp("readonly");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        let err = Store::open_read_only(&path).err().unwrap().to_string();
        assert!(err.contains("not a longctx results database"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let missing = path.with_file_name("missing.db");
        assert!(Store::open_read_only(&missing).is_err());
        assert!(!missing.exists());

        let nested = path.parent().unwrap().join("a/b/results.db");
        let store = Store::open(&nested).unwrap();
        store.discard_if_unused();
        assert!(!path.parent().unwrap().join("a").exists());
        let mut store = Store::open(&nested).unwrap();
        store.insert(&row("a", "x"), false).unwrap();
        store.discard_if_unused();
        assert_eq!(
            Store::open_read_only(&nested)
                .unwrap()
                .rows()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn merging_is_all_or_nothing_and_names_both_inputs() {
        let dir = temp("merge");
        let (a, b, out) = (
            dir.with_file_name("a.db"),
            dir.with_file_name("b.db"),
            dir.with_file_name("out.db"),
        );
        let mut sa = Store::open(&a).unwrap();
        sa.insert(&row("1", "x"), false).unwrap();
        sa.insert(&row("2", "y"), false).unwrap();
        let mut sb = Store::open(&b).unwrap();
        sb.insert(&row("3", "z"), false).unwrap();
        let mut stale = row("2", "y");
        stale.settings = stale.settings.with("model_sha256", "abc");
        sb.insert(&stale, false).unwrap();
        let mut target = Store::open(&out).unwrap();
        let err = target.merge_from(&[sa, sb]).unwrap_err().to_string();
        assert!(
            err.contains("a.db and") && err.contains("b.db disagree") && err.contains("sample 2"),
            "{err}"
        );
        assert!(err.contains("model_sha256 (absent) vs abc"), "{err}");
        assert!(target.rows().unwrap().is_empty());
    }
}
