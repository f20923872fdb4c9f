//! Issue #13: offline commands apply the daemon's gates with the daemon's settings. `predict`,
//! `infer` and `eval` read the profile (`--config`, `--set`) and use its
//! `pipeline.view_threshold` (they used a built-in 0.5 before), and the bundle's
//! out-of-distribution gate, whose distances they print.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::echonet;
use echonet_edge::model::bundle::write_bundle_sections;
use echonet_edge::model::{read_bundle, TaskKind, TaskSpec};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = echonet()
        .env("ECHONET_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The demo bundle with its `view_a4c` head replaced by one that says 0.6 for every frame (zero
/// weights, bias logit(0.6)): a threshold of 0.5 passes every frame, 0.7 none.
fn bundle_with_view_head(dir: &Path) -> PathBuf {
    let demo =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/echonet-phantom-demo.safetensors");
    let b = read_bundle(&demo).unwrap();
    let mut manifest = b.manifest.clone();
    let head = TaskSpec {
        name: "view_a4c".into(),
        kind: TaskKind::Binary,
        unit: "probability".into(),
        scale: 1.0,
        offset: 0.0,
        description: "apical four-chamber view (test head: always 0.6)".into(),
    };
    let mut tensors = b.store.snapshot();
    let dim = manifest.architecture.head_input_dim();
    tensors.insert(
        head.weight_name(),
        Tensor::zeros((1, dim), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let logit = (0.6f32 / 0.4).ln();
    tensors.insert(
        head.bias_name(),
        Tensor::new(&[logit], &Device::Cpu).unwrap(),
    );
    manifest.tasks.retain(|t| t.name != head.name);
    manifest.tasks.push(head);
    let path = dir.join("view.safetensors");
    write_bundle_sections(&path, &manifest, &tensors, None, b.ood.as_ref()).unwrap();
    path
}

#[test]
fn predict_infer_and_eval_use_the_profiles_view_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundle_with_view_head(d);
    let model = model.to_str().unwrap();
    let ph = d.join("ph");
    let (ok, _, err) = run(&[
        "phantom",
        "--out",
        ph.to_str().unwrap(),
        "--clips",
        "2",
        "--seed",
        "133",
        "--frames",
        "75",
    ]);
    assert!(ok, "{err}");
    let clip = ph.join("clip_0000.dcm");
    let clip = clip.to_str().unwrap();

    let predict = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["predict", clip, "--model", model, "--threads", "1"];
        args.extend_from_slice(extra);
        let (ok, out, err) = run(&args);
        assert!(ok, "{err}");
        serde_json::from_str(out.lines().next().unwrap()).unwrap()
    };
    let default = predict(&[]);
    assert_eq!(default["status"], "ok", "{default}");
    assert!(default["model"]["ood_gate"]
        .as_str()
        .unwrap()
        .starts_with("on: "));
    let frames = default["frames"].as_array().unwrap();
    assert!(
        frames
            .iter()
            .all(|f| f["ood_distance"].as_f64().unwrap() > 0.0),
        "{default}"
    );
    assert!(
        default["ood"]["distance_median"].as_f64().is_some(),
        "{default}"
    );

    // The profile's threshold, by --set and by --config: every frame is not_a4c.
    let raised = predict(&["--set", "pipeline.view_threshold=0.7"]);
    assert_eq!(raised["status"], "withheld", "{raised}");
    assert_eq!(raised["quality"]["reasons"]["not_a4c"], 20, "{raised}");
    let profile = d.join("profile.toml");
    std::fs::write(&profile, "[pipeline]\nview_threshold = 0.7\n").unwrap();
    let from_file = predict(&["--config", profile.to_str().unwrap()]);
    assert_eq!(
        from_file["quality"]["reasons"]["not_a4c"], 20,
        "{from_file}"
    );

    // infer on a PNG of a frame: the same gate.
    let dicom = echonet_edge::capture::dicom::DicomClip::open(Path::new(clip)).unwrap();
    let img = dicom.frame(30).unwrap();
    let png = d.join("f.png");
    image::GrayImage::from_raw(img.width as u32, img.height as u32, img.to_gray())
        .unwrap()
        .save(&png)
        .unwrap();
    let png = png.to_str().unwrap();
    let (ok, out, err) = run(&["infer", "--model", model, "--input", png]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["frames"][0]["outputs"].is_object(), "{v}");
    assert!(v["frames"][0]["ood_distance"].as_f64().is_some(), "{v}");
    let (ok, out, _) = run(&[
        "infer",
        "--model",
        model,
        "--set",
        "pipeline.view_threshold=0.7",
        "--input",
        png,
    ]);
    assert!(!ok, "an unfit frame exits non-zero");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["frames"][0]["unfit"][0], "not_a4c", "{v}");

    // eval over the folder: scored on what the daemon would publish.
    let (ok, out, err) = run(&[
        "eval",
        "--model",
        model,
        "--data",
        ph.to_str().unwrap(),
        "--json",
        "--set",
        "pipeline.view_threshold=0.7",
    ]);
    assert!(ok || out.contains("withheld"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["counts"]["withheld"], 2, "{v}");
    assert_eq!(v["counts"]["ok"], 0, "{v}");
}
