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
    // Replayed as fast as possible, the queues wait for the model instead of dropping: every
    // sampled frame is inferred (a fast machine once rendered the 90 frames in 86 ms, dropped 33
    // and never filled a window).
    assert!(summary.drops.is_empty(), "{summary:?}");
    assert_eq!(
        summary.frames_inferred, summary.frames_sampled,
        "{summary:?}"
    );
    assert!(summary.stage_failures.is_empty(), "{summary:?}");
    assert!(summary.records_written > 0, "{summary:?}");
    assert_eq!(summary.record_write_failures, 0);
    let lines = std::fs::read_to_string(&jsonl).unwrap();
    assert_eq!(lines.lines().count() as u64, summary.records_written);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["schema"], "echonet.estimate/1");
    // A converted bundle has no training statistics: the gate is off, and every record and the
    // summary say so.
    let off = echonet_edge::model::ood::GATE_OFF;
    assert_eq!(first["model"]["ood_gate"], off);
    assert_eq!(first["ood"], serde_json::Value::Null);
    assert_eq!(summary.ood_gate, off);
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

/// Issue #13 item 2 at the daemon: a source that is not echo (the phantom's fan shape, filled
/// with a moving outdoor-like texture, so the sector is found and the model runs) publishes
/// `withheld` out of the model's training domain, with the frames counted by reason.
#[test]
fn a_run_over_a_non_echo_source_is_withheld_as_out_of_domain() {
    let dir = tempfile::tempdir().unwrap();
    let frames_dir = dir.path().join("frames");
    std::fs::create_dir(&frames_dir).unwrap();
    let clip = echonet_edge::dataset::phantom::in_memory(77, 1, 150, 30.0)
        .unwrap()
        .clips
        .remove(0)
        .load_frames()
        .unwrap();
    let grey: Vec<Vec<u8>> = clip.iter().map(|f| f.image.to_gray()).collect();
    let (w, h) = (clip[0].image.width, clip[0].image.height);
    // The fan: pixels whose speckle changes between the first frames (text and ECG do not).
    let fan: Vec<bool> = (0..w * h)
        .map(|i| grey[0][i] != grey[1][i] || grey[1][i] != grey[2][i])
        .collect();
    let mut state = 12345u64;
    for (k, g) in grey.iter().enumerate() {
        let mut px = g.clone();
        for (i, p) in px.iter_mut().enumerate() {
            if !fan[i] {
                continue;
            }
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            // Stripes and blocks (a building, a field) under moving grain: not tissue.
            let base = 110.0 + 70.0 * ((x / 9.0).sin() * (y / 23.0 + k as f64 / 10.0).cos());
            let grain = ((state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 40.0;
            *p = (base + grain).clamp(1.0, 255.0) as u8;
        }
        image::GrayImage::from_raw(w as u32, h as u32, px)
            .unwrap()
            .save(frames_dir.join(format!("f{k:04}.png")))
            .unwrap();
    }
    let jsonl = dir.path().join("out.jsonl");
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let bundled =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/echonet-phantom-demo.safetensors");
    let cfg = config(&[
        format!("model.bundle={}", quote(&bundled)),
        "source.kind=\"images\"".into(),
        format!("source.images.folder={}", quote(&frames_dir)),
        // Real time: every sampled frame is inferred (as fast as possible would drop some).
        "source.pacing=\"real_time\"".into(),
        format!("publish.jsonl={}", quote(&jsonl)),
        "publish.http=\"off\"".into(),
    ]);
    let summary = run_daemon(&cfg, options(150), cpu_builder()).unwrap();
    assert!(summary.stage_failures.is_empty(), "{summary:?}");
    assert!(summary.ood_gate.starts_with("on: "), "{}", summary.ood_gate);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &records {
        eprintln!(
            "{} {} {} {}",
            r["seq"], r["status"], r["quality"]["reasons"], r["ood"]
        );
    }
    eprintln!("invalid frames {:?}", summary.invalid_frames);
    assert!(
        records.iter().all(|r| r["status"] != "ok"),
        "an estimate was published"
    );
    let last = records.last().unwrap();
    assert_eq!(last["status"], "withheld", "{last}");
    let reason = last["withheld_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("out of the model's training domain"),
        "{reason}"
    );
    let d = &last["ood"];
    assert!(
        d["distance_max"].as_f64().unwrap() > d["threshold"].as_f64().unwrap()
            || d["distance_median"].as_f64().unwrap() > d["window_threshold"].as_f64().unwrap(),
        "{last}"
    );
    eprintln!(
        "non-echo run: {reason}; invalid frames {:?}",
        summary.invalid_frames
    );
}
