//! The results store: one SQLite row per (model, method, task, sample), each committed on
//! its own, so that a killed run loses at most the sample in flight and a rerun skips what is
//! done. The method column holds the full spec (every setting spelled out), so changing a
//! setting makes new rows instead of mixing with old ones.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

/// The layout this build reads and writes; a database with another is refused.
pub const SCHEMA_VERSION: i64 = 1;

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
    #[error("results database {path} has schema version {found}; this longctx reads and writes version {SCHEMA_VERSION}. Use another --db (nothing in it was changed)")]
    Schema { path: PathBuf, found: i64 },
    /// Two stores disagree on a completed sample.
    #[error("{0}")]
    Conflict(String),
}

/// One completed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// The model's name (file stem).
    pub model: String,
    /// The method's full spec.
    pub method: String,
    /// Task name, e.g. `needle/passkey` or `longbench/qasper`.
    pub task: String,
    /// The sample's id within the task.
    pub sample: String,
    /// What the model answered.
    pub prediction: String,
    /// The task's primary score in [0, 1].
    pub score: f64,
    /// A secondary score where the task has one (needle partial match), else NaN.
    pub score2: f64,
    /// Prompt length in tokens.
    pub prompt_tokens: i64,
    /// Tokens layer 0 kept at the end.
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
    /// Hash of everything that determines the sample's outcome besides the key.
    pub settings_hash: String,
    /// The longctx version that produced it.
    pub version: String,
    /// When it completed, in seconds since the Unix epoch.
    pub timestamp: String,
}

/// An open results database.
pub struct Store {
    path: PathBuf,
    conn: Connection,
}

const COLUMNS: &str = "model, method, task, sample, prediction, score, score2, prompt_tokens, kept_tokens, kv_bytes, offloaded_bytes, uncompressed_bytes, fp16_bytes, prefill_ms, decode_ms, new_tokens, peak_rss, settings_hash, version, timestamp";

impl Store {
    /// Open (or create) the database at `path`, checking its schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlite {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let conn = Connection::open(path).map_err(fail)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(fail)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(fail)?;
        if tables == 0 {
            conn.execute_batch(&format!(
                "CREATE TABLE results (
                    model TEXT NOT NULL, method TEXT NOT NULL, task TEXT NOT NULL, sample TEXT NOT NULL,
                    prediction TEXT NOT NULL, score REAL NOT NULL, score2 REAL,
                    prompt_tokens INTEGER NOT NULL, kept_tokens INTEGER NOT NULL,
                    kv_bytes INTEGER NOT NULL, offloaded_bytes INTEGER NOT NULL,
                    uncompressed_bytes INTEGER NOT NULL, fp16_bytes INTEGER NOT NULL,
                    prefill_ms REAL NOT NULL, decode_ms REAL NOT NULL, new_tokens INTEGER NOT NULL,
                    peak_rss INTEGER NOT NULL, settings_hash TEXT NOT NULL,
                    version TEXT NOT NULL, timestamp TEXT NOT NULL,
                    PRIMARY KEY (model, method, task, sample));
                 PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(fail)?;
        } else if found != SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: path.to_path_buf(),
                found,
            });
        }
        conn.execute_batch("CREATE TABLE IF NOT EXISTS plans (fingerprint TEXT PRIMARY KEY);")
            .map_err(fail)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Add every row of `other` in one transaction, after checking that none conflicts
    /// (same key, different prediction): on a conflict nothing is written. Returns the rows
    /// added and the rows both already held.
    pub fn merge_from(&mut self, other: &Store) -> Result<(usize, usize), StoreError> {
        let incoming = other.rows()?;
        let mut fresh = Vec::new();
        let mut same = 0;
        for row in &incoming {
            match self.get(&row.model, &row.method, &row.task, &row.sample)? {
                Some(existing) if existing.prediction != row.prediction => {
                    return Err(StoreError::Conflict(format!(
                        "{} and {} disagree on model {}, method {}, task {}, sample {}: {:?} vs {:?}; nothing was merged",
                        self.path.display(),
                        other.path.display(),
                        row.model,
                        row.method,
                        row.task,
                        row.sample,
                        existing.prediction,
                        row.prediction
                    )))
                }
                Some(_) => same += 1,
                None => fresh.push(row),
            }
        }
        let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        for row in &fresh {
            insert_row(&tx, row).map_err(|e| StoreError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        }
        for plan in other.plans()? {
            tx.execute(
                "INSERT OR IGNORE INTO plans (fingerprint) VALUES (?1)",
                params![plan],
            )
            .map_err(|e| StoreError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        }
        tx.commit().map_err(|e| StoreError::Sqlite {
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

    /// Whether the sample is already stored.
    pub fn contains(
        &self,
        model: &str,
        method: &str,
        task: &str,
        sample: &str,
    ) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM results WHERE model = ?1 AND method = ?2 AND task = ?3 AND sample = ?4",
                params![model, method, task, sample],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.fail(e))
    }

    /// Store one completed sample (its own transaction). A row already stored under the
    /// same key is kept when it has the same prediction and refused otherwise.
    pub fn insert(&mut self, row: &ResultRow) -> Result<(), StoreError> {
        if let Some(existing) = self.get(&row.model, &row.method, &row.task, &row.sample)? {
            return if existing.prediction == row.prediction {
                Ok(())
            } else {
                Err(StoreError::Conflict(format!(
                    "conflicting results for model {}, method {}, task {}, sample {}: {:?} stored, {:?} offered",
                    row.model, row.method, row.task, row.sample, existing.prediction, row.prediction
                )))
            };
        }
        insert_row(&self.conn, row).map_err(|e| self.fail(e))
    }

    fn get(
        &self,
        model: &str,
        method: &str,
        task: &str,
        sample: &str,
    ) -> Result<Option<ResultRow>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM results WHERE model = ?1 AND method = ?2 AND task = ?3 AND sample = ?4"),
                params![model, method, task, sample],
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
                "SELECT {COLUMNS} FROM results ORDER BY model, method, task, sample"
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

fn insert_row(conn: &Connection, row: &ResultRow) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT INTO results ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
        params![
            row.model, row.method, row.task, row.sample, row.prediction, row.score,
            if row.score2.is_nan() { None } else { Some(row.score2) },
            row.prompt_tokens, row.kept_tokens, row.kv_bytes, row.offloaded_bytes,
            row.uncompressed_bytes, row.fp16_bytes, row.prefill_ms, row.decode_ms,
            row.new_tokens, row.peak_rss, row.settings_hash, row.version, row.timestamp
        ],
    )
    .map(|_| ())
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResultRow> {
    Ok(ResultRow {
        model: r.get(0)?,
        method: r.get(1)?,
        task: r.get(2)?,
        sample: r.get(3)?,
        prediction: r.get(4)?,
        score: r.get(5)?,
        score2: r.get::<_, Option<f64>>(6)?.unwrap_or(f64::NAN),
        prompt_tokens: r.get(7)?,
        kept_tokens: r.get(8)?,
        kv_bytes: r.get(9)?,
        offloaded_bytes: r.get(10)?,
        uncompressed_bytes: r.get(11)?,
        fp16_bytes: r.get(12)?,
        prefill_ms: r.get(13)?,
        decode_ms: r.get(14)?,
        new_tokens: r.get(15)?,
        peak_rss: r.get(16)?,
        settings_hash: r.get(17)?,
        version: r.get(18)?,
        timestamp: r.get(19)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(sample: &str, prediction: &str) -> ResultRow {
        ResultRow {
            model: "m".into(),
            method: "baseline".into(),
            task: "needle/passkey".into(),
            sample: sample.into(),
            prediction: prediction.into(),
            score: 1.0,
            score2: f64::NAN,
            prompt_tokens: 10,
            kept_tokens: 10,
            kv_bytes: 100,
            offloaded_bytes: 0,
            uncompressed_bytes: 100,
            fp16_bytes: 50,
            prefill_ms: 1.0,
            decode_ms: 2.0,
            new_tokens: 3,
            peak_rss: 4,
            settings_hash: "h".into(),
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
        store.insert(&row("a", "1234567")).unwrap();
        drop(store);
        let mut store = Store::open(&path).unwrap();
        assert!(store
            .contains("m", "baseline", "needle/passkey", "a")
            .unwrap());
        assert!(!store.contains("m", "h2o", "needle/passkey", "a").unwrap());
        store.insert(&row("a", "1234567")).unwrap();
        let err = store.insert(&row("a", "7654321")).unwrap_err().to_string();
        assert!(err.contains("conflicting results"), "{err}");
        let rows = store.rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].prediction, "1234567");
        assert!(rows[0].score2.is_nan());
    }

    #[test]
    fn another_schema_version_is_refused_and_left_alone() {
        let path = temp("schema");
        let mut store = Store::open(&path).unwrap();
        store.insert(&row("a", "x")).unwrap();
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
}
