//! The daemon assembled by the library from a `Config` (`echonet_edge::daemon::run_daemon`), as
//! `echonet run` assembles it, without spawning the binary: the configured bundle, the phantom
//! source, JSON Lines to a file and the results journal; and the errors of a bad assembly.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use echonet_edge::config::{Config, EMBEDDED_DEFAULT};
use echonet_edge::daemon::{run_daemon, DaemonError, DaemonOptions, ModelBuilder};
use echonet_edge::model::{EchoNetModel, RunOptions, StorageDtype};
use echonet_edge::pipeline::RunLimits;
use echonet_edge::publish::journal::Journal;

fn config(overrides: &[String]) -> Config {
    Config::from_toml_with_overrides(EMBEDDED_DEFAULT, Path::new("<embedded>"), overrides).unwrap()
}

fn cpu_builder() -> ModelBuilder {
    Box::new(|bundle| Ok(EchoNetModel::from_bundle(bundle, &RunOptions::cpu())?))
}

fn options(frames: u64) -> DaemonOptions {
    DaemonOptions {
        inputs: vec![],
        exam: Some("exam-1".into()),
        limits: RunLimits {
            duration: None,
            frames: Some(frames),
        },
        stop: Arc::new(AtomicBool::new(false)),
        notices: None,
    }
}

#[test]
fn the_library_assembles_and_runs_the_daemon_from_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let jsonl = dir.path().join("out.jsonl");
    let journal = dir.path().join("journal.sqlite");
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let cfg = config(&[
        format!("model.bundle={}", quote(&bundle)),
        "source.kind=\"phantom\"".into(),
        "source.pacing=\"as_fast_as_possible\"".into(),
        format!("publish.jsonl={}", quote(&jsonl)),
        format!("publish.journal={}", quote(&journal)),
        "publish.http=\"off\"".into(),
    ]);
    // 90 phantom frames at 30 fps: 3 s of media time, 30 sampled frames, a full window.
    let summary = run_daemon(&cfg, options(90), cpu_builder()).unwrap();
    assert_eq!(summary.frames_captured, 90);
    assert!(summary.stage_failures.is_empty(), "{summary:?}");
    assert!(summary.records_written > 0, "{summary:?}");
    assert_eq!(summary.record_write_failures, 0);
    let lines = std::fs::read_to_string(&jsonl).unwrap();
    assert_eq!(lines.lines().count() as u64, summary.records_written);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["schema"], "echonet.estimate/1");
    let sessions = Journal::open_existing(&journal)
        .unwrap()
        .sessions()
        .unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].exam_id.as_deref(), Some("exam-1"));
    assert_eq!(summary.records_journaled, summary.records_written);
}

#[test]
fn a_bad_assembly_is_a_typed_error_naming_what_to_fix() {
    let cfg = config(&[
        "model.bundle=\"/nonexistent/m.safetensors\"".into(),
        "publish.http=\"off\"".into(),
    ]);
    let e = run_daemon(&cfg, options(1), cpu_builder()).unwrap_err();
    assert!(matches!(e, DaemonError::Model(_)), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/m.safetensors"), "{e}");

    let cfg = config(&[
        "source.kind=\"dicom\"".into(),
        "publish.http=\"off\"".into(),
        "publish.jsonl=\"off\"".into(),
    ]);
    let e = run_daemon(&cfg, options(1), cpu_builder()).unwrap_err();
    assert!(matches!(e, DaemonError::Source(_)), "{e:?}");
    assert!(e.to_string().contains("source.dicom.paths"), "{e}");

    let cfg = config(&["publish.http=\"0.0.0.0:8470\"".into()]);
    let e = run_daemon(&cfg, options(1), cpu_builder()).unwrap_err();
    assert!(matches!(e, DaemonError::Display(_)), "{e:?}");
    assert!(e.to_string().contains("allow_remote_display"), "{e}");
}
