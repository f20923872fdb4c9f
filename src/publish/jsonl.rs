//! JSON Lines publisher: one record per line to stdout or a file, flushed per line so a consumer
//! (or a crash) never sees half a record and nothing published is held back in a buffer.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{target}: cannot write: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// Longest wait for one line to be taken by the target. A reader that stops reading (a full
/// pipe on stdout) must not hold the publisher, and with it `--duration` and SIGTERM, forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes lines on a thread of its own, so that a write that blocks (stdout a pipe nobody
/// reads, a hung network file system) costs the publisher at most [`WRITE_TIMEOUT`] once: the
/// line is counted as failed, and until that write returns every further line fails at once.
/// Lines are never interleaved: one write at a time, whole lines, and a line after a failed
/// one starts on a new line.
pub struct JsonlWriter {
    target: String,
    lines: Sender<Vec<u8>>,
    done: Receiver<std::io::Result<()>>,
    /// A line timed out and is still in the writer thread.
    pending: bool,
}

impl JsonlWriter {
    pub fn stdout() -> Result<Self, JsonlError> {
        Self::to_writer("stdout", Box::new(std::io::stdout()))
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
        // Unbuffered: each record is one write(2) on an O_APPEND file, so a failed write
        // leaves nothing queued to come out later in the middle of another line.
        Self::to_writer(&path.display().to_string(), Box::new(file))
    }

    /// Lines to any writer; `target` names it in errors.
    pub fn to_writer(target: &str, out: Box<dyn Write + Send>) -> Result<Self, JsonlError> {
        let (lines, lines_rx) = bounded::<Vec<u8>>(1);
        let (done_tx, done) = bounded(1);
        std::thread::Builder::new()
            .name("jsonl-writer".into())
            .spawn(move || {
                let mut out = out;
                // The last write failed part-way: the next line starts on a new line, so a torn
                // line never swallows the one after it.
                let mut torn = false;
                for mut line in lines_rx {
                    if torn {
                        line.insert(0, b'\n');
                    }
                    let written = out.write_all(&line).and_then(|()| out.flush());
                    torn = written.is_err();
                    if done_tx.send(written).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| JsonlError::Io {
                target: target.to_string(),
                source,
            })?;
        Ok(Self {
            target: target.to_string(),
            lines,
            done,
            pending: false,
        })
    }

    /// Writes `json` (one JSON value, no newline) as one line.
    pub fn write_line(&mut self, json: &str) -> Result<(), JsonlError> {
        let io = |kind: ErrorKind, what: &str| JsonlError::Io {
            target: self.target.clone(),
            source: std::io::Error::new(kind, what.to_string()),
        };
        let stuck = || {
            format!(
                "a line has waited more than {} s to be taken (is the reader still reading?)",
                WRITE_TIMEOUT.as_secs()
            )
        };
        if self.pending {
            match self.done.try_recv() {
                // The late line went (or failed) at last: this one may go.
                Ok(_) => self.pending = false,
                Err(TryRecvError::Empty) => return Err(io(ErrorKind::TimedOut, &stuck())),
                Err(TryRecvError::Disconnected) => {
                    return Err(io(ErrorKind::BrokenPipe, "the writer thread has ended"))
                }
            }
        }
        let mut line = json.as_bytes().to_vec();
        line.push(b'\n');
        if self.lines.try_send(line).is_err() {
            return Err(io(ErrorKind::BrokenPipe, "the writer thread has ended"));
        }
        match self.done.recv_timeout(WRITE_TIMEOUT) {
            Ok(written) => written.map_err(|source| JsonlError::Io {
                target: self.target.clone(),
                source,
            }),
            Err(RecvTimeoutError::Timeout) => {
                self.pending = true;
                Err(io(ErrorKind::TimedOut, &stuck()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(io(ErrorKind::BrokenPipe, "the writer thread has ended"))
            }
        }
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
        "-" => JsonlWriter::stdout().map(Some),
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
        w.write_line(r#"{"a":1}"#).unwrap();
        drop(w);
        let mut w = JsonlWriter::append_to(&path).unwrap();
        w.write_line(r#"{"a":2}"#).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    /// A writer that blocks until it is let go, as stdout does when its reader stops reading.
    struct Blocking(
        crossbeam_channel::Receiver<()>,
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    );

    impl Write for Blocking {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_stops_reading_costs_one_timeout_then_lines_fail_at_once() {
        let (release, gate) = crossbeam_channel::unbounded();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w =
            JsonlWriter::to_writer("stdout", Box::new(Blocking(gate, got.clone()))).unwrap();
        let e = w.write_line(r#"{"a":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("stdout: cannot write:"), "{e}");
        assert!(e.to_string().contains("still reading"), "{e}");
        // Still stuck: refused without waiting for the target.
        assert!(w.write_line(r#"{"a":2}"#).is_err());
        // The reader comes back: the late line goes, then the next one.
        release.send(()).unwrap();
        release.send(()).unwrap();
        let mut wrote = false;
        for _ in 0..200 {
            if w.write_line(r#"{"a":3}"#).is_ok() {
                wrote = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(wrote);
        assert_eq!(&got.lock().unwrap()[..], b"{\"a\":1}\n{\"a\":3}\n");
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
