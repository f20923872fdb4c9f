//! Shared helpers for the integration tests: the `echonet` binary as a command, fixture paths, the
//! PyTorch goldens, and a converted bundle of the parity fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use echonet_edge::model::import::{convert, ConvertOptions, ConvertSpec};
use echonet_edge::model::StorageDtype;

/// The `echonet` binary built for this test run, as a command started in the source tree, logging
/// warnings only (`ECHONET_LOG=warn`) and reading nothing from stdin. The one way tests run it.
pub fn echonet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_echonet"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ECHONET_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// Relative L2 error allowed on pooled features against PyTorch, f32 (issue #2).
pub const F32_FEATURE_TOL: f64 = 1e-4;
/// The same for an f16 bundle computed in f16.
pub const F16_FEATURE_TOL: f64 = 1e-2;

/// The source tree: where the test was built, unless ECHONET_SOURCE_DIR says otherwise (a test
/// binary carried to another machine, as scripts/gpu-check.sh does, finds its fixtures there).
pub fn source_dir() -> PathBuf {
    std::env::var_os("ECHONET_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(name: &str) -> PathBuf {
    source_dir().join("tests/fixtures/parity").join(name)
}

/// One case of `golden_w0125.json` (made by tools/parity/make_goldens.py, seed 20261127).
pub struct GoldenCase {
    pub input: PathBuf,
    pub features: Vec<Vec<f32>>,
    pub outputs: Vec<serde_json::Map<String, serde_json::Value>>,
}

pub fn golden(case: &str) -> GoldenCase {
    let text = std::fs::read_to_string(fixture("golden_w0125.json")).expect("golden file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("golden JSON");
    let c = &v["cases"][case];
    GoldenCase {
        input: fixture(c["input"].as_str().expect("input name")),
        features: serde_json::from_value(c["features"].clone()).expect("features"),
        outputs: serde_json::from_value(c["outputs"].clone()).expect("outputs"),
    }
}

pub fn relative_l2(actual: &[f32], expected: &[f32]) -> f64 {
    echonet_edge::model::import::relative_l2(actual, expected)
}

/// Converts the parity fixture (`.pth` or `.safetensors`) to a bundle in `dir`.
pub fn convert_fixture(source: &str, dir: &Path, dtype: StorageDtype) -> PathBuf {
    let out = dir.join(format!("{source}.{}.safetensors", dtype.as_str()));
    let spec = ConvertSpec::from_toml_file(&fixture("tasks.toml")).expect("tasks.toml");
    let opts = ConvertOptions {
        dtype,
        input_size: None,
        extra_tasks: vec![],
        intended_use: None,
        probe_frames: 2,
    };
    convert(&fixture(source), &out, &spec, &opts).expect("fixture converts");
    out
}
