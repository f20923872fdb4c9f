//! JSON Lines publisher: one record per line to stdout or a file, flushed per line so a consumer
//! (or a crash) never sees half a record and nothing published is held back in a buffer.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{target}: cannot write: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct JsonlWriter {
    target: String,
    out: Box<dyn Write + Send>,
    /// The last write failed part-way: the next record starts on a new line, so a torn line
    /// never swallows the one after it.
    torn: bool,
}

impl JsonlWriter {
    pub fn stdout() -> Self {
        Self {
            target: "stdout".into(),
            out: Box::new(std::io::stdout()),
            torn: false,
        }
    }

    /// Appends to `path` (created if absent): a restarted daemon never overwrites earlier results.
    pub fn append_to(path: &Path) -> Result<Self, JsonlError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| JsonlError::Io {
                target: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            target: path.display().to_string(),
            // Unbuffered: each record is one write(2) on an O_APPEND file, so a failed write
            // leaves nothing queued to come out later in the middle of another line.
            out: Box::new(file),
            torn: false,
        })
    }

    pub fn write(&mut self, record: &serde_json::Value) -> Result<(), JsonlError> {
        let io = |source| JsonlError::Io {
            target: self.target.clone(),
            source,
        };
        let mut line = if self.torn {
            "\n".to_string()
        } else {
            String::new()
        };
        line.push_str(&record.to_string());
        line.push('\n');
        let written = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush());
        self.torn = written.is_err();
        written.map_err(io)
    }

    /// The file or `stdout`.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// The `publish.jsonl` value that turns JSON Lines off (as `off` turns the display off); a file
/// named `off` is written as `./off`.
pub const JSONL_OFF: &str = "off";

/// Where JSON Lines go: `-` for stdout, `off` for nowhere (`None`), else a file path.
pub fn open_target(target: &str) -> Result<Option<JsonlWriter>, JsonlError> {
    match target {
        "-" => Ok(Some(JsonlWriter::stdout())),
        JSONL_OFF => Ok(None),
        path => JsonlWriter::append_to(&PathBuf::from(path)).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_line_per_record_and_never_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut w = JsonlWriter::append_to(&path).unwrap();
        w.write(&serde_json::json!({"a": 1})).unwrap();
        drop(w);
        let mut w = JsonlWriter::append_to(&path).unwrap();
        w.write(&serde_json::json!({"a": 2})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn off_writes_nothing_and_dot_slash_off_is_a_file() {
        assert!(open_target(JSONL_OFF).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let off_file = dir.path().join("off");
        assert!(open_target(off_file.to_str().unwrap()).unwrap().is_some());
        assert!(off_file.exists());
    }

    #[test]
    fn unwritable_target_is_named() {
        let e = JsonlWriter::append_to(Path::new("/nonexistent-dir/x.jsonl"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent-dir/x.jsonl"));
    }
}
