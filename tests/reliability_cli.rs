//! The daemon and the offline command against careless and hostile input, as an operator would
//! meet it: nonsense `--duration` and settings, FIFOs and devices where files belong, an output
//! that cannot be written, a display address open to the network, inputs that are all unusable;
//! and the results journal: written, exported, and sound after SIGKILL at random moments.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use echonet_edge::model::StorageDtype;
use echonet_edge::publish::journal::{displayed_numbers, Journal};

/// Runs `cmd`, killing it if it outlives `limit` (a hang is a failure, not a stuck test).
fn run_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn nonsense_durations_and_settings_are_refused_before_anything_starts() {
    for d in ["-1", "nan", "inf", "1e300", "0"] {
        let out = run_within(
            echonet().args(["run", "--http", "off", "--duration", d]),
            Duration::from_secs(20),
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "--duration {d}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("--duration"), "{d}: {}", stderr(&out));
    }
    for (set, key) in [
        ("window.min_valid_frames=0", "window.min_valid_frames"),
        ("window.frames=100000", "window.frames"),
        ("pipeline.view_threshold=nan", "pipeline.view_threshold"),
        ("source.images.fps=1e-9", "source.images.fps"),
    ] {
        let out = run_within(
            echonet().args(["run", "--http", "off", "--set", set]),
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2), "{set}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(e.contains(key) && e.contains("expected"), "{set}: {e}");
    }
    let out = run_within(
        echonet().args(["run", "--http", "off", "--threads", "5000"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("model.threads"), "{}", stderr(&out));
}

#[test]
fn fifos_and_devices_are_refused_where_files_belong() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("clip.dcm");
    mkfifo(&fifo);
    // As the model: no open that blocks, no read of /dev/zero that never ends.
    for model in [fifo.as_path(), Path::new("/dev/zero")] {
        let out = run_within(
            echonet()
                .args(["run", "--http", "off", "--source", "phantom", "--model"])
                .arg(model),
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("expected a regular file"),
            "{}",
            stderr(&out)
        );
    }
    // As the DICOM input of predict: refused by name, and (nothing else usable) exit non-zero.
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let out = run_within(
        echonet()
            .arg("predict")
            .arg(&fifo)
            .arg(dir.path().join("missing.dcm"))
            .arg("--model")
            .arg(&bundle),
        Duration::from_secs(60),
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|r| r["status"] == "refused"));
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("FIFO"),
        "{}",
        lines[0]
    );
    assert!(
        stderr(&out).contains("none of the 2 input(s)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_fifo_as_the_live_dicom_input_does_not_hang_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("clip.dcm");
    mkfifo(&fifo);
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let out = run_within(
        echonet()
            .args([
                "run",
                "--http",
                "off",
                "--source",
                "dicom",
                "--duration",
                "3",
                "--threads",
                "1",
                "--input",
            ])
            .arg(&fifo)
            .arg("--model")
            .arg(&bundle),
        Duration::from_secs(60),
    );
    assert!(stderr(&out).contains("FIFO"), "{}", stderr(&out));
}

#[test]
fn unwritable_output_is_counted_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let summary = dir.path().join("summary.json");
    // /dev/full: every write fails with "no space left on device".
    let out = run_within(
        echonet()
            .args([
                "run",
                "--source",
                "phantom",
                "--duration",
                "4",
                "--http",
                "off",
            ])
            .args(["--threads", "1", "--jsonl", "/dev/full", "--model"])
            .arg(&bundle)
            .arg("--summary")
            .arg(&summary),
        Duration::from_secs(90),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["records_written"], 0, "{s}");
    let failed = s["record_write_failures"].as_u64().unwrap();
    let published = s["estimates_published"].as_u64().unwrap()
        + s["estimates_withheld"].as_u64().unwrap()
        + s["stale_published"].as_u64().unwrap();
    assert_eq!(failed, published, "{s}");
    assert!(
        stderr(&out).contains("could not be written to /dev/full"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_network_display_needs_the_explicit_setting() {
    let out = run_within(
        echonet().args(["run", "--source", "phantom", "--http", "0.0.0.0:0"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("not a loopback address") && e.contains("allow_remote_display"),
        "{e}"
    );
    // check-config says the same, and passes with the setting.
    let out = run_within(
        echonet().args(["check-config", "--http", "0.0.0.0:8470"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run_within(
        echonet().args([
            "check-config",
            "--http",
            "0.0.0.0:8470",
            "--source",
            "phantom",
            "--set",
            "publish.allow_remote_display=true",
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok  display: http://0.0.0.0:8470/"), "{text}");
    assert!(
        stderr(&out).contains("OPEN TO THE NETWORK"),
        "{}",
        stderr(&out)
    );
}

/// The newest session's records, after SQLite's integrity check passes (none before the
/// daemon got as far as starting one).
fn journal_rows(path: &Path) -> (String, Vec<serde_json::Value>) {
    if !path.exists() {
        return (String::new(), Vec::new());
    }
    let j = Journal::open_existing(path).unwrap();
    assert_eq!(j.integrity_check().unwrap(), "ok");
    let Some(session) = j.sessions().unwrap().last().map(|s| s.session_id.clone()) else {
        return (String::new(), Vec::new());
    };
    let (_, rows) = j.session_rows(&session).unwrap();
    (session, rows.into_iter().map(|r| r.record).collect())
}

#[test]
fn the_journal_records_every_published_record_and_exports_it() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let journal = dir.path().join("journal.sqlite");
    let out = run_within(
        echonet()
            .args([
                "run",
                "--source",
                "phantom",
                "--duration",
                "4",
                "--http",
                "off",
            ])
            .args(["--threads", "1", "--exam", "ACC-1", "--journal"])
            .arg(&journal)
            .arg("--model")
            .arg(&bundle),
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let published: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (session, rows) = journal_rows(&journal);
    assert_eq!(
        rows, published,
        "the journal holds exactly what was published"
    );
    assert!(rows.iter().any(|r| r["status"] == "ok"));

    let export = dir.path().join("export");
    let out = run_within(
        echonet()
            .args(["export", "--session", &session, "--journal"])
            .arg(&journal)
            .arg("--out")
            .arg(&export),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stem: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let csv = std::fs::read_to_string(export.join(format!("{stem}.csv"))).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
    assert!(csv.contains("ACC-1"));
    let fhir: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(export.join(format!("{stem}.fhir.json"))).unwrap(),
    )
    .unwrap();
    // One Observation per number an "ok" estimate carries (this fixture model has no volume
    // heads, so EF only).
    let numbers: usize = rows
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| {
            let (ef, edv, esv) = displayed_numbers(r);
            [ef, edv, esv].iter().filter(|v| v.is_some()).count()
        })
        .sum();
    let entries = fhir["entry"].as_array().unwrap();
    assert!(numbers > 0);
    assert_eq!(entries.len(), numbers);
    assert!(entries
        .iter()
        .any(|e| e["resource"]["code"]["coding"][0]["code"] == "10230-1"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(export.join(format!("{stem}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(json["records"].as_array().unwrap().len(), rows.len());
    // An unknown session is an error naming the known ones.
    let out = run_within(
        echonet()
            .args(["export", "--session", "nope", "--journal"])
            .arg(&journal),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&session), "{}", stderr(&out));
}

#[test]
fn sigkill_at_random_moments_loses_at_most_the_record_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let journal = dir.path().join("journal.sqlite");
    // Deterministic "random" kill moments, spread over start-up and steady state.
    let mut state: u64 = 0x5EED_1234;
    for round in 0..3 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = Duration::from_millis(1500 + state % 3000);
        let jsonl = dir.path().join(format!("out{round}.jsonl"));
        let mut child = echonet()
            .args([
                "run",
                "--source",
                "phantom",
                "--http",
                "off",
                "--threads",
                "1",
            ])
            .args(["--set", "source.pacing=as_fast_as_possible", "--jsonl"])
            .arg(&jsonl)
            .arg("--journal")
            .arg(&journal)
            .arg("--model")
            .arg(&bundle)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let published: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
            .unwrap_or_default()
            .lines()
            // A line torn by the kill is not a published record.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let (_, rows) = journal_rows(&journal);
        // JSON Lines are written first, then the journal: the journal may miss the one record
        // in flight, never hold one that was not published, never lose an earlier one.
        assert!(
            rows.len() <= published.len() && published.len() - rows.len() <= 1,
            "round {round} (kill after {after:?}): {} journal rows, {} published",
            rows.len(),
            published.len()
        );
        assert_eq!(rows[..], published[..rows.len()], "round {round}");
    }
}

/// One HTTP/1.1 GET over a plain socket: the status line and everything read until the server
/// closes, `until` appears, or `limit` passes (an SSE stream never closes).
fn http_get(port: u16, path: &str, until: &str, limit: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let (started, mut got, mut buf) = (Instant::now(), Vec::new(), [0u8; 4096]);
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if !until.is_empty() && String::from_utf8_lossy(&got).contains(until) {
            break;
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// A journal that cannot be written (its folder is a file: no permission trick that root would
/// ignore) never stops the live results: JSON Lines and the display carry on, `/healthz` fails
/// naming the journal, the page is sent a `faults` event, every lost row is counted, and the run
/// ends non-zero.
#[test]
fn an_unwritable_journal_is_flagged_on_healthz_and_the_page_while_results_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let not_a_folder = dir.path().join("not-a-folder");
    std::fs::write(&not_a_folder, b"a file").unwrap();
    let journal = not_a_folder.join("journal.sqlite");
    let (jsonl, summary) = (
        dir.path().join("out.jsonl"),
        dir.path().join("summary.json"),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = echonet()
        .args([
            "run",
            "--source",
            "phantom",
            "--duration",
            "60",
            "--threads",
            "1",
        ])
        .args(["--http", &format!("127.0.0.1:{port}"), "--jsonl"])
        .arg(&jsonl)
        .arg("--journal")
        .arg(&journal)
        .arg("--summary")
        .arg(&summary)
        .arg("--model")
        .arg(&bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (mut health, mut latest, mut stream) = (String::new(), String::new(), String::new());
    while started.elapsed() < Duration::from_secs(50) {
        std::thread::sleep(Duration::from_millis(200));
        if !health.contains("503") {
            health = http_get(port, "/healthz", "", Duration::from_secs(2)).unwrap_or_default();
        }
        if !latest.contains("200 OK") {
            latest = http_get(port, "/api/latest", "", Duration::from_secs(2)).unwrap_or_default();
        }
        if !stream.contains("event: faults") {
            stream = http_get(port, "/api/stream", "event: faults", Duration::from_secs(2))
                .unwrap_or_default();
        }
        if health.contains("503") && latest.contains("200 OK") && stream.contains("event: faults") {
            break;
        }
    }
    // SIGTERM: the run ends as a supervisor would end it, writing its summary.
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        health.contains("503") && health.contains("journal"),
        "{health}\n{err}"
    );
    assert!(
        health.contains("not-a-folder"),
        "the fault names the file: {health}"
    );
    assert!(
        latest.contains("200 OK"),
        "the display carries on: {latest}"
    );
    let faults_line = stream
        .lines()
        .skip_while(|l| *l != "event: faults")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        faults_line.starts_with("data: ") && faults_line.contains("journal"),
        "{stream}"
    );
    assert_eq!(out.status.code(), Some(2), "{err}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let written = s["records_written"].as_u64().unwrap();
    assert!(written > 0, "JSON Lines carry on: {s}");
    assert_eq!(s["records_journaled"], 0, "{s}");
    assert_eq!(s["journal_write_failures"].as_u64(), Some(written), "{s}");
    assert!(err.contains("could not be journaled"), "{err}");
}

/// The DICOM's patient name and id never leave the process: not in JSON Lines, the logs (at
/// debug level), the display's endpoints and stream, or the journal's bytes.
#[test]
fn patient_identifiers_reach_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    let out = run_within(
        echonet()
            .args(["phantom", "--clips", "1", "--seed", "7", "--frames", "40"])
            .args(["--width", "320", "--height", "240", "--out"])
            .arg(&clips),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let clip = std::fs::read_dir(&clips)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    // What the phantom writes as the patient (src/cli/phantom.rs): seed 7, clip 0.
    let identifiers = ["PHANTOM^SYNTHETIC", "PHANTOM-7000"];
    let raw = std::fs::read(&clip).unwrap();
    for id in identifiers {
        assert!(
            raw.windows(id.len()).any(|w| w == id.as_bytes()),
            "the clip does not carry {id}: the test would prove nothing"
        );
    }
    let journal = dir.path().join("journal.sqlite");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = echonet()
        .env("ECHONET_LOG", "debug")
        .args([
            "run",
            "--source",
            "dicom",
            "--duration",
            "30",
            "--threads",
            "1",
        ])
        .args(["--http", &format!("127.0.0.1:{port}"), "--input"])
        .arg(&clip)
        .arg("--journal")
        .arg(&journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut served = String::new();
    while started.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_millis(300));
        let latest = http_get(port, "/api/latest", "", Duration::from_secs(2)).unwrap_or_default();
        if latest.contains("200 OK") {
            served = latest;
            for path in ["/metrics", "/api/history", "/healthz", "/api/frame/outline"] {
                served += &http_get(port, path, "", Duration::from_secs(2)).unwrap_or_default();
            }
            served += &http_get(
                port,
                "/api/stream",
                "event: estimate",
                Duration::from_secs(3),
            )
            .unwrap_or_default();
            break;
        }
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        served.contains("\"status\""),
        "no estimate was served: {served}"
    );
    let mut outputs = vec![
        ("JSON Lines", out.stdout.clone()),
        ("logs", out.stderr.clone()),
        ("endpoints", served.into_bytes()),
    ];
    for suffix in ["", "-wal"] {
        let mut name = journal.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(bytes) = std::fs::read(&name) {
            outputs.push(("journal", bytes));
        }
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\""));
    for (what, bytes) in &outputs {
        for id in identifiers {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "{id} found in the {what}"
            );
        }
    }
}

/// JSON Lines to a pipe whose reader stops reading: the full pipe blocks a write, which used to
/// hold the publisher and with it the whole shutdown, so neither `--duration` nor SIGTERM ended
/// the run. Now the line waits at most 2 s, the rest are counted as failures, the run ends on
/// time, and the exit status says records were lost.
#[test]
fn a_jsonl_reader_that_stops_reading_does_not_hang_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let mut cmd = echonet();
    cmd.args([
        "run",
        "--source",
        "phantom",
        "--duration",
        "8",
        "--threads",
        "1",
    ])
    .args([
        "--set",
        "source.pacing=as_fast_as_possible",
        "--http",
        "off",
    ])
    .arg("--summary")
    .arg(&summary);
    // run_within reads stdout only once the child has exited: until then nobody reads the pipe,
    // and at about 25 records a second its 64 KiB fill in a few seconds.
    let out = run_within(&mut cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let failed = s["record_write_failures"].as_u64().unwrap();
    let written = s["records_written"].as_u64().unwrap();
    assert!(failed > 0 && written > 0, "{s}");
    assert!(stderr(&out).contains("still reading"), "{}", stderr(&out));
    // Whatever did reach the pipe is whole lines.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}
