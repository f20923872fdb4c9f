//! Parity with PyTorch: the fixture network (width 0.125, 75x75, random BN-randomised weights)
//! converted from its PyTorch files must reproduce the goldens of tools/parity/make_goldens.py.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use echonet_edge::input::load_npy;
use echonet_edge::model::{conv_kernel_named, read_bundle, EchoNetModel, RunOptions, StorageDtype};

fn model(bundle: &std::path::Path, kernel: &str) -> EchoNetModel {
    let b = read_bundle(bundle).expect("bundle reads");
    let opts = RunOptions {
        kernel: conv_kernel_named(kernel).expect("kernel"),
        ..RunOptions::cpu()
    };
    EchoNetModel::from_bundle(&b, &opts).expect("model builds")
}

fn check_case(m: &EchoNetModel, case: &str, tol: f64) {
    let g = golden(case);
    let out = m
        .infer(&load_npy(&g.input).expect("npy"), true)
        .expect("infer");
    assert_eq!(out.len(), g.features.len());
    for (i, (frame, expected)) in out.iter().zip(&g.features).enumerate() {
        let err = relative_l2(frame.features.as_ref().expect("features"), expected);
        assert!(
            err <= tol,
            "{case} frame {i}: features rel L2 {err:e} > {tol:e}"
        );
        for (task, v) in &g.outputs[i] {
            let want = v.as_f64().expect("number");
            let got = frame.outputs[task];
            let rel = (got - want).abs() / want.abs().max(1.0);
            assert!(
                rel <= tol * 10.0,
                "{case} frame {i} {task}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn pth_import_matches_pytorch_f32_with_every_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    for kernel in ["cpu-plan", "cpu-gemm", "candle"] {
        let m = model(&bundle, kernel);
        check_case(&m, "rgb", F32_FEATURE_TOL);
        check_case(&m, "gray", F32_FEATURE_TOL);
    }
}

#[test]
fn safetensors_import_matches_pytorch_f32() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.safetensors", dir.path(), StorageDtype::F32);
    check_case(&model(&bundle, "auto"), "rgb", F32_FEATURE_TOL);
}

#[test]
fn f16_bundle_stays_within_f16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F16);
    let m = model(&bundle, "auto");
    assert_eq!(m.dtype(), candle_core::DType::F16);
    check_case(&m, "rgb", F16_FEATURE_TOL);
    check_case(&m, "gray", F16_FEATURE_TOL);
}

#[test]
fn grey_frame_equals_its_rgb_replication() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(
        &convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32),
        "auto",
    );
    let grey = load_npy(&fixture("input_gray_75.npy")).unwrap();
    let rgb = grey.repeat((1, 3, 1, 1)).unwrap();
    let a = m.infer(&grey, true).unwrap();
    let b = m.infer(&rgb, true).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let err = relative_l2(x.features.as_ref().unwrap(), y.features.as_ref().unwrap());
        assert!(
            err <= F32_FEATURE_TOL,
            "grey fold differs from replication: {err:e}"
        );
    }
}

/// The command-line contract others use to check parity: `echonet infer --features` JSON.
#[test]
fn infer_cli_prints_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let g = golden("rgb");
    let out = echonet()
        .args(["infer", "--model"])
        .arg(&bundle)
        .arg("--input")
        .arg(&g.input)
        .args(["--features", "--threads", "1"])
        .output()
        .expect("run echonet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let frames = v["frames"].as_array().expect("frames array");
    assert_eq!(frames.len(), 2);
    for (i, f) in frames.iter().enumerate() {
        let feats: Vec<f32> = serde_json::from_value(f["features"].clone()).unwrap();
        assert!(relative_l2(&feats, &g.features[i]) <= F32_FEATURE_TOL);
        assert!(f["outputs"]["ef"].is_number() && f["outputs"]["pacemaker"].is_number());
    }
    // Without --features, no features key.
    let out = echonet()
        .args(["infer", "--model"])
        .arg(&bundle)
        .arg("--input")
        .arg(&g.input)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["frames"][0].get("features").is_none());
}

#[test]
fn convert_cli_reports_reduced_precision_deviation() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("f16.safetensors");
    let out = echonet()
        .arg("convert")
        .arg(fixture("irv1_w0125.pth"))
        .arg(&out_path)
        .arg("--config")
        .arg(fixture("tasks.toml"))
        .args(["--dtype", "f16", "--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dev = &v["deviation_from_f32"];
    let rel = dev["features_rel_l2"].as_f64().expect("deviation reported");
    assert!(rel > 0.0 && rel < F16_FEATURE_TOL, "f16 deviation {rel}");
    assert!(dev["outputs_max_abs"]["ef"].as_f64().is_some());
    assert_eq!(v["dtype"], "f16");
    assert!(v["content_hash"].as_str().unwrap().starts_with("sha256:"));
}
