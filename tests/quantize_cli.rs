//! `echonet quantize` end to end on the bundled demo model: calibration on phantom patients, the
//! int8 bundle it writes (section, drift per task, f32 layers with reasons), and that bundle run
//! by `infer`, `bench` and `eval --against` as int8; `--dtype int8` refused where it cannot run.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::echonet;
use echonet_edge::model::read_bundle;

/// The demo model's shipped int8 variant may move EF (volume curve) MAE on unseen phantom
/// patients by at most this many points (issue #10's bar).
const EF_MAE_CHANGE_MAX: f64 = 0.5;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One normalised grey 96x96 frame as a float32 `[1, 1, 96, 96]` .npy: a smooth blob on a dark
/// background, roughly what the demo model sees.
fn npy_frame(size: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, {size}, {size}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let c = size as f32 / 2.0;
    for y in 0..size {
        for x in 0..size {
            let r2 = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)) / (c * c);
            let v = if r2 < 0.4 { 0.6 - r2 } else { -0.9 };
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[test]
fn quantize_writes_an_int8_bundle_that_runs_as_int8() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8.safetensors");
    let report = json_of(
        &echonet()
            .args(["quantize", "models/echonet-phantom-demo.safetensors"])
            .arg(&out)
            .args([
                "--phantom-seed",
                "31",
                "--phantom-clips",
                "4",
                "--frames",
                "4",
            ])
            .args(["--held-out", "4", "--method", "mse", "--threads", "1"])
            .output()
            .unwrap(),
    );
    assert_eq!(report["method"], "mse");
    let bundle = read_bundle(&out).unwrap();
    let q = bundle.quantization.as_ref().unwrap();
    assert_eq!(q.info.calibration.frames, 4);
    assert_eq!(q.info.calibration.held_out_frames, 4);
    assert!(q.info.calibration.source.contains("seed=31"));
    for task in ["ef", "esv", "edv", "lv_volume"] {
        let d = &q.info.drift[task];
        assert!(
            d.mean_abs.is_finite() && d.max_abs >= d.mean_abs,
            "{task}: {d:?}"
        );
    }
    assert!(q.info.features_rel_l2 > 0.0 && q.info.features_rel_l2 < 0.1);
    assert!(q.info.layers[0].reason.as_deref().unwrap().contains("stem"));
    assert_eq!(report["content_hash"], bundle.manifest.content_hash);

    // infer: int8 by default, f32 when asked; the outputs move a little, not a lot.
    let npy = dir.path().join("frame.npy");
    std::fs::write(&npy, npy_frame(96)).unwrap();
    let frame = npy.to_str().unwrap();
    let infer = |dtype: &str| {
        json_of(
            &echonet()
                .args(["infer", "--model"])
                .arg(&out)
                .args(["--input", frame, "--dtype", dtype, "--threads", "1"])
                .output()
                .unwrap(),
        )
    };
    let (a, b) = (infer("int8"), infer("f32"));
    let ef = |v: &serde_json::Value| v["frames"][0]["outputs"]["ef"].as_f64().unwrap();
    assert!((ef(&a) - ef(&b)).abs() < 5.0, "{} vs {}", ef(&a), ef(&b));
    assert_ne!(ef(&a), ef(&b));

    // bench reports the precision.
    let bench = json_of(
        &echonet()
            .args(["bench", "--model"])
            .arg(&out)
            .args(["--iters", "1", "--threads", "1", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(bench["precision"], "int8");
    assert!(bench["conv_kernel"].as_str().unwrap().contains("int8"));

    // --dtype int8 on a bundle without the section: refused, saying what to do.
    let refused = echonet()
        .args([
            "infer",
            "--model",
            "models/echonet-phantom-demo.safetensors",
        ])
        .args(["--input", frame, "--dtype", "int8"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("no int8 section") && err.contains("echonet quantize"),
        "{err}"
    );

    // A bad method is named.
    let bad = echonet()
        .args(["quantize", "models/echonet-phantom-demo.safetensors"])
        .arg(dir.path().join("x.safetensors"))
        .args(["--phantom-seed", "1", "--method", "kl"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("minmax, percentile or mse"),
        "{err}"
    );
}

#[test]
fn shipped_int8_model_holds_its_accuracy_against_f32() {
    let out = json_of(
        &echonet()
            .args([
                "eval",
                "--model",
                "models/echonet-phantom-demo-int8.safetensors",
            ])
            .args(["--against", "models/echonet-phantom-demo.safetensors"])
            .args([
                "--phantom-seed",
                "903",
                "--phantom-clips",
                "10",
                "--threads",
                "2",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    let a = &out["against"]["estimators"]["ef_volume_curve"];
    // Clips 1 and 9 of seed 903 are two-chamber views, withheld by the view gate (issue #13).
    assert_eq!(a["n"], 8);
    let change = a["mae_change"].as_f64().unwrap();
    assert!(
        change.abs() <= EF_MAE_CHANGE_MAX,
        "EF MAE moved by {change}"
    );
    assert!(a["max_abs_drift"].as_f64().unwrap() > 0.0);
    assert!(out["against"]["this"].as_str().unwrap().starts_with("int8"));
    assert!(out["against"]["other"].as_str().unwrap().starts_with("f32"));
}
