//! The daemon and the offline command as a user runs them: `echonet run` on the built-in phantom
//! prints one estimate per sampled frame after the window fills and a summary; `echonet predict`
//! refuses or withholds every real non-cardiac DICOM fixture, never publishing an EF for them.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use echonet_edge::model::StorageDtype;

#[test]
fn run_on_the_phantom_publishes_estimates_with_latency_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let summary = dir.path().join("summary.json");
    let out = echonet()
        .args([
            "run",
            "--source",
            "phantom",
            "--duration",
            "5",
            "--http",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&bundle)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is a JSON record"))
        .collect();
    let ok: Vec<_> = lines.iter().filter(|r| r["status"] == "ok").collect();
    // 5 s at 10 fps is 50 sampled frames; estimates start once 20 are in: about 30.
    assert!(ok.len() >= 20 && ok.len() <= 33, "{} estimates", ok.len());
    for r in &ok {
        assert_eq!(r["schema"], "echonet.estimate/1");
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(r["source"]["kind"], "phantom");
        assert!(r["estimates"]["ef"]["value"].is_number());
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(s["latency_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(s["rss_end_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(
        s["frames_sampled"].as_u64().unwrap(),
        s["frames_inferred"].as_u64().unwrap()
    );
}

/// A new user is told on stderr where the display is and why the phantom is playing.
#[test]
fn run_says_where_the_display_is_and_why_the_phantom_plays() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let out = echonet()
        .args([
            "run",
            "--source",
            "auto",
            "--set",
            "source.v4l2.device=\"/nonexistent/video9\"",
            "--duration",
            "1",
            "--http",
            "127.0.0.1:0",
            "--jsonl",
            "off",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let display = stderr
        .lines()
        .find(|l| l.starts_with("bedside display: http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no display line: {stderr}"));
    assert!(display.ends_with('/'), "{display}");
    assert!(
        stderr.contains(
            "source: no capture device at /nonexistent/video9: playing the built-in phantom"
        ),
        "{stderr}"
    );
    // Each is told once: not again by the daemon's or the HTTP server's log lines.
    for told_once in ["/nonexistent/video9", "http://127.0.0.1:"] {
        assert_eq!(
            stderr.matches(told_once).count(),
            1,
            "{told_once}: {stderr}"
        );
    }
}

#[test]
fn run_refuses_a_missing_or_damaged_bundle_clearly() {
    let out = echonet()
        .args([
            "run",
            "--source",
            "phantom",
            "--duration",
            "1",
            "--http",
            "off",
            "--model",
            "/nonexistent/m.safetensors",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/m.safetensors"));
}

#[test]
fn run_rejects_an_unknown_setting_by_its_path() {
    let out = echonet()
        .args(["run", "--set", "window.min_valid=3", "--model", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("window.min_valid"));
}

#[test]
fn predict_never_publishes_an_ef_for_the_real_non_cardiac_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom");
    let out = echonet()
        .arg("predict")
        .arg(&fixtures)
        .arg("--model")
        .arg(&bundle)
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 5, "{results:?}");
    for r in &results {
        let file = r["file"].as_str().unwrap();
        assert_ne!(r["status"], "ok", "{file} got an estimate");
        assert_eq!(r["estimates"], serde_json::json!({}), "{file}");
        assert!(
            !r["reason"].as_str().unwrap_or("").is_empty(),
            "{file} has no reason"
        );
    }
    let by_name = |n: &str| {
        results
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(n))
            .unwrap()
    };
    assert_eq!(by_name("MR_truncated.dcm")["status"], "refused");
    assert!(by_name("US1_J2KR.dcm")["reason"]
        .as_str()
        .unwrap()
        .contains("JPEG 2000"));
}

#[test]
fn predict_gives_an_estimate_for_a_phantom_clip() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let clips = dir.path().join("clips");
    let out = echonet()
        .args([
            "phantom", "--clips", "1", "--seed", "5", "--frames", "75", "--out",
        ])
        .arg(&clips)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = echonet()
        .arg("predict")
        .arg(&clips)
        .arg("--model")
        .arg(&bundle)
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["frames_used"].as_array().unwrap().len(), 20);
    assert!(r["estimates"]["ef"]["value"].is_number());
    // Every line names the model that made it, as the daemon's records do.
    let bundle_hash = echonet_edge::model::read_bundle(&bundle)
        .unwrap()
        .manifest
        .content_hash;
    assert_eq!(r["model"]["content_hash"], bundle_hash.as_str(), "{r}");
    assert_eq!(r["model"]["precision"], "f32", "{r}");
    assert!(!r["model"]["id"].as_str().unwrap().is_empty(), "{r}");
    assert!(
        !r["model"]["intended_use"].as_str().unwrap().is_empty(),
        "{r}"
    );
}

#[test]
fn predict_of_a_missing_file_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let out = echonet()
        .args([
            "predict",
            "/nonexistent/clip.dcm",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], "refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could be used"));
}

#[test]
fn jsonl_off_writes_no_file_named_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = echonet()
        .current_dir(dir.path())
        .args([
            "run",
            "--source",
            "phantom",
            "--frames",
            "3",
            "--http",
            "off",
            "--jsonl",
            "off",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("off").exists());
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_models_folder_names_the_model_flag_and_the_environment_variable() {
    let out = echonet()
        .env("ECHONET_MODELS_DIR", "/nonexistent/models")
        .args([
            "run", "--source", "phantom", "--frames", "1", "--http", "off",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--model"), "{err}");
    assert!(err.contains("ECHONET_MODELS_DIR"), "{err}");
    assert!(err.contains("/nonexistent/models"), "{err}");
}
