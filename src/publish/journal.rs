//! The results journal: every published record (estimate, withheld window, stale notice) appended
//! to a local SQLite database, one row per record, each in its own transaction, before the display
//! sees it. One `session` row per daemon run names the model (id and content hash) and source.
//!
//! Durability: the database is in WAL mode. A committed row survives the process being killed
//! (SIGKILL, a crash) whatever the setting: it is in the WAL file. `synchronous` decides what a
//! power cut may take: `full` (the default) syncs the WAL at every commit, so nothing committed is
//! lost; `normal` syncs only at checkpoints, so the last rows before the cut may go, but the
//! database always opens consistent. No patient identifier is stored: the exam id is whatever the
//! operator passes (`--exam`), nothing is read from the images' headers.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::EstimateRecord;
use crate::timefmt::rfc3339_millis;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {what}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal {}: a record could not be written as JSON: {reason}", path.display())]
    Record { path: PathBuf, reason: String },
    #[error("journal {}: no session {session:?} (sessions: {known})", path.display())]
    NoSession {
        path: PathBuf,
        session: String,
        known: String,
    },
}

/// SQLite's `synchronous` for the journal (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit synced to disk: a power cut loses nothing committed.
    #[default]
    Full,
    /// Synced at checkpoints only: faster on slow storage; a power cut may lose the last rows.
    Normal,
}

/// Who made the records of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub exam_id: Option<String>,
    pub started_at: String,
    pub model_id: String,
    pub model_hash: String,
    pub intended_use: String,
    pub source_kind: String,
    pub source_name: String,
    pub version: String,
}

/// One journal row, as exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalRow {
    pub row: i64,
    pub session_id: String,
    pub exam_id: Option<String>,
    pub status: String,
    pub withheld_reason: Option<String>,
    pub seq: Option<i64>,
    pub capture_time: Option<String>,
    pub publish_time: Option<String>,
    pub ef_percent: Option<f64>,
    pub edv_ml: Option<f64>,
    pub esv_ml: Option<f64>,
    pub valid_frames: Option<i64>,
    pub window_frames: Option<i64>,
    pub model_id: String,
    pub model_hash: String,
    /// The record exactly as published.
    pub record: Value,
}

/// [`EstimateRecord::displayed_numbers`] of a record read back as JSON (a journal row, a JSON
/// Lines line).
pub fn displayed_numbers(record: &Value) -> (Option<f64>, Option<f64>, Option<f64>) {
    super::record::displayed_numbers(|task| record["estimates"][task]["value"].as_f64())
}

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT PRIMARY KEY,
    exam_id      TEXT,
    started_at   TEXT NOT NULL,
    model_id     TEXT NOT NULL,
    model_hash   TEXT NOT NULL,
    intended_use TEXT NOT NULL,
    source_kind  TEXT NOT NULL,
    source_name  TEXT NOT NULL,
    version      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    row             INTEGER PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions(session_id),
    exam_id         TEXT,
    status          TEXT NOT NULL,
    withheld_reason TEXT,
    seq             INTEGER,
    capture_time    TEXT,
    publish_time    TEXT,
    ef_percent      REAL,
    edv_ml          REAL,
    esv_ml          REAL,
    valid_frames    INTEGER,
    window_frames   INTEGER,
    model_id        TEXT NOT NULL,
    model_hash      TEXT NOT NULL,
    record_json     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_session ON records(session_id, row);
";

/// A session id unique enough for one cart: start time to the microsecond plus the process id.
pub fn new_session_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:06}-{}",
        crate::timefmt::rfc3339_millis(SystemTime::now())
            .replace([':', '.'], "")
            .trim_end_matches('Z'),
        now.subsec_micros(),
        std::process::id()
    )
}

pub struct Journal {
    path: PathBuf,
    conn: Connection,
    session: Option<SessionInfo>,
}

impl Journal {
    /// Opens (creating if absent) the journal at `path`, in WAL mode with `durability`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, JournalError> {
        let err = |what| {
            let path = path.to_path_buf();
            move |source| JournalError::Sqlite { path, what, source }
        };
        let conn = Connection::open(path).map_err(err("cannot open"))?;
        // A writer that finds the database locked (an export running) waits a little, bounded.
        conn.busy_timeout(std::time::Duration::from_millis(500))
            .map_err(err("setting the busy timeout"))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err("switching to WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                "journal {}: journal mode is {mode}, not WAL",
                path.display()
            );
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync}; {SCHEMA_SQL}"))
            .map_err(err("creating the tables"))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
            session: None,
        })
    }

    /// Opens an existing journal for reading (export); never creates one.
    pub fn open_existing(path: &Path) -> Result<Self, JournalError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| JournalError::Sqlite {
            path: path.to_path_buf(),
            what: "cannot open",
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
            session: None,
        })
    }

    fn sqlite(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError + '_ {
        move |source| JournalError::Sqlite {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Starts a session: its row is written now, and every record appended after belongs to it.
    pub fn begin_session(&mut self, info: SessionInfo) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO sessions (session_id, exam_id, started_at, model_id, model_hash, \
                 intended_use, source_kind, source_name, version) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    info.session_id,
                    info.exam_id,
                    info.started_at,
                    info.model_id,
                    info.model_hash,
                    info.intended_use,
                    info.source_kind,
                    info.source_name,
                    info.version
                ],
            )
            .map_err(self.sqlite("writing the session"))?;
        self.session = Some(info);
        Ok(())
    }

    /// Appends one published record (its own transaction: committed when this returns Ok).
    pub fn append(&mut self, record: &EstimateRecord) -> Result<(), JournalError> {
        let Some(session) = &self.session else {
            return Ok(());
        };
        let (ef, edv, esv) = record.displayed_numbers();
        let json = record.to_json().map_err(|e| JournalError::Record {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.conn
            .execute(
                "INSERT INTO records (session_id, exam_id, status, withheld_reason, seq, \
                 capture_time, publish_time, ef_percent, edv_ml, esv_ml, valid_frames, \
                 window_frames, model_id, model_hash, record_json) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    session.session_id,
                    session.exam_id,
                    record.status_text(),
                    record.withheld_reason,
                    record.seq.and_then(|s| i64::try_from(s).ok()),
                    record.capture_time.map(rfc3339_millis),
                    rfc3339_millis(record.publish_time),
                    ef,
                    edv,
                    esv,
                    i64::try_from(record.quality.valid_frames).ok(),
                    i64::try_from(record.quality.window).ok(),
                    record.model.id,
                    record.model.content_hash,
                    json
                ],
            )
            .map_err(|source| JournalError::Sqlite {
                path: self.path.clone(),
                what: "appending a record",
                source,
            })?;
        Ok(())
    }

    /// Session ids in the journal, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionInfo>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT session_id, exam_id, started_at, model_id, model_hash, intended_use, \
                 source_kind, source_name, version FROM sessions ORDER BY started_at, session_id",
            )
            .map_err(self.sqlite("listing sessions"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SessionInfo {
                    session_id: r.get(0)?,
                    exam_id: r.get(1)?,
                    started_at: r.get(2)?,
                    model_id: r.get(3)?,
                    model_hash: r.get(4)?,
                    intended_use: r.get(5)?,
                    source_kind: r.get(6)?,
                    source_name: r.get(7)?,
                    version: r.get(8)?,
                })
            })
            .map_err(self.sqlite("listing sessions"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.sqlite("listing sessions"))
    }

    /// One session and its rows, in the order they were written.
    pub fn session_rows(
        &self,
        session_id: &str,
    ) -> Result<(SessionInfo, Vec<JournalRow>), JournalError> {
        let sessions = self.sessions()?;
        let Some(info) = sessions
            .iter()
            .find(|s| s.session_id == session_id)
            .cloned()
        else {
            return Err(JournalError::NoSession {
                path: self.path.clone(),
                session: session_id.to_string(),
                known: if sessions.is_empty() {
                    "none".into()
                } else {
                    sessions
                        .iter()
                        .map(|s| s.session_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT row, session_id, exam_id, status, withheld_reason, seq, capture_time, \
                 publish_time, ef_percent, edv_ml, esv_ml, valid_frames, window_frames, model_id, \
                 model_hash, record_json FROM records WHERE session_id = ?1 ORDER BY row",
            )
            .map_err(self.sqlite("reading records"))?;
        let rows = stmt
            .query_map([session_id], |r| {
                let json: String = r.get(15)?;
                Ok(JournalRow {
                    row: r.get(0)?,
                    session_id: r.get(1)?,
                    exam_id: r.get(2)?,
                    status: r.get(3)?,
                    withheld_reason: r.get(4)?,
                    seq: r.get(5)?,
                    capture_time: r.get(6)?,
                    publish_time: r.get(7)?,
                    ef_percent: r.get(8)?,
                    edv_ml: r.get(9)?,
                    esv_ml: r.get(10)?,
                    valid_frames: r.get(11)?,
                    window_frames: r.get(12)?,
                    model_id: r.get(13)?,
                    model_hash: r.get(14)?,
                    record: serde_json::from_str(&json).unwrap_or(Value::Null),
                })
            })
            .map_err(self.sqlite("reading records"))?;
        let rows = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sqlite("reading records"))?;
        Ok((info, rows))
    }

    /// SQLite's own consistency check; "ok" for a sound database.
    pub fn integrity_check(&self) -> Result<String, JournalError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .optional()
            .map_err(self.sqlite("checking integrity"))
            .map(|v| v.unwrap_or_default())
    }
}
