//! Every shipped deployment profile parses, and a misspelt key in one is an error naming it.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::echonet;
use echonet_edge::config::Config;

#[test]
fn every_profile_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected the default, jetson, clinic and demo profiles, found {seen}"
    );
}

#[test]
fn misspelt_key_names_its_path() {
    let text = "[model]\ndevice = \"cpu\"\nthreds = 2\n";
    let e = Config::from_toml_str(text, Path::new("p.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("p.toml") && e.contains("threds") && e.contains("model"),
        "{e}"
    );
}

#[test]
fn doctor_passes_on_this_checkout() {
    let out = echonet()
        .args(["doctor", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor prints JSON");
    assert_eq!(v["ok"], true, "{v}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for expected in ["build", "cpu", "cuda", "model catalog", "config"] {
        assert!(
            names.contains(&expected),
            "doctor lacks {expected}: {names:?}"
        );
    }
    // The CPU binary says so and where the CUDA one comes from (a CUDA build lists its GPUs).
    let cuda = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "cuda")
        .unwrap();
    if !cfg!(feature = "cuda") {
        assert_eq!(cuda["detail"]["usable"], false, "{cuda}");
        let reason = cuda["detail"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("CPU binary") && reason.contains("make cuda"),
            "{reason}"
        );
    }
}

#[test]
fn doctor_text_lines_stay_short() {
    let out = echonet().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() > 3, "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 120, "long doctor line: {line}");
    }
    // What to do about CUDA is said within the width, not cut off.
    if !cfg!(feature = "cuda") {
        let reason = text
            .lines()
            .find(|l| l.trim_start().starts_with("reason: CPU binary"))
            .unwrap_or_else(|| panic!("no CUDA reason line: {text}"));
        assert!(reason.contains("`make cuda`"), "{reason}");
        assert!(!reason.ends_with("(--json for all)"), "{reason}");
    }
}
