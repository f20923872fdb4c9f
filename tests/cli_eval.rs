//! `echonet eval` as a user runs it: the fixture bundle on a few in-memory phantom clips. The
//! fixture's weights are random, so nothing is asserted about metric quality; the report's
//! structure, its metrics against `metrics::regression` recomputed from its own per-clip pairs,
//! the JSON Lines predictions and the plots are.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use echonet_edge::eval::metrics;
use echonet_edge::model::StorageDtype;

#[test]
fn eval_on_phantom_clips_reports_metrics_that_match_its_own_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    let plots = dir.path().join("plots");
    let lines = dir.path().join("predictions.jsonl");
    let out = echonet()
        .args([
            "eval",
            "--phantom-seed",
            "7",
            "--phantom-clips",
            "4",
            "--phantom-frames",
            "64",
            "--threads",
            "1",
            "--json",
            "--model",
        ])
        .arg(&bundle)
        .arg("--plots")
        .arg(&plots)
        .arg("--predictions")
        .arg(&lines)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The table goes to stderr with --json; stdout is the one report object.
    assert!(stderr.contains("estimator"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");

    assert_eq!(r["schema"], "echonet.eval/1");
    assert!(r["model"]["id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(r["model"]["tasks"], serde_json::json!(["ef", "pacemaker"]));
    assert_eq!(r["dataset"]["kind"], "phantom");
    assert_eq!(r["dataset"]["split"], "all");
    assert!(r["dataset"]["origin"]
        .as_str()
        .unwrap()
        .starts_with("phantom:seed=7,clips=4"));

    let c = &r["counts"];
    let clips = r["clips"].as_array().unwrap();
    assert_eq!(c["clips"], 4);
    assert_eq!(clips.len(), 4);
    assert_eq!(
        c["ok"].as_u64().unwrap()
            + c["withheld"].as_u64().unwrap()
            + c["refused"].as_u64().unwrap(),
        4
    );
    // Every clip not ok says why.
    for clip in clips {
        assert!(clip["id"].is_string() && clip["patient"].is_string());
        if clip["status"] != "ok" {
            assert!(clip["reason"].is_string(), "{clip}");
            assert!(clip["predictions"].as_object().unwrap().is_empty());
        }
    }
    assert!(
        c["ok"].as_u64().unwrap() >= 2,
        "{c}: too few ok clips to test metrics"
    );

    // EF: pairs recomputed from the per-clip entries give the reported metrics exactly.
    let (mut p, mut t) = (vec![], vec![]);
    for clip in clips {
        if let Some(e) = clip["predictions"].get("ef") {
            assert_eq!(e["label"], "ef");
            assert_eq!(e["unit"], "%");
            p.push(e["prediction"].as_f64().unwrap());
            t.push(e["truth"].as_f64().unwrap());
        }
    }
    let ef = &r["estimators"]["ef"];
    assert_eq!(ef["kind"], "regression");
    assert_eq!(ef["label"], "ef");
    assert_eq!(ef["n"].as_u64().unwrap() as usize, p.len());
    let expected = metrics::regression(&p, &t).unwrap();
    let reported: metrics::RegressionMetrics =
        serde_json::from_value(ef["regression"].clone()).unwrap();
    assert_eq!(reported, expected);

    // The phantom labels pacemaker leads (issue #13; clip 1 of seed 7 has one): the fixture
    // network's pacemaker head gets AUC/F1 from its own pairs, with the class counts.
    let pm = &r["estimators"]["pacemaker"];
    assert_eq!(pm["kind"], "binary");
    assert_eq!(pm["n"], c["ok"]);
    assert_eq!(pm["missing_truth"], 0);
    let (mut p, mut t) = (vec![], vec![]);
    for clip in clips {
        if let Some(e) = clip["predictions"].get("pacemaker") {
            p.push(e["prediction"].as_f64().unwrap());
            t.push(e["truth"].as_f64().unwrap());
        }
    }
    let expected = metrics::binary(&p, &t).unwrap();
    let reported: metrics::BinaryMetrics = serde_json::from_value(pm["binary"].clone()).unwrap();
    assert_eq!(reported, expected);
    assert_eq!((reported.positives, reported.negatives), (1, 3));

    // --predictions: the same per-clip objects, one a line.
    let text = std::fs::read_to_string(&lines).unwrap();
    let from_lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&from_lines, clips);

    // --plots: both EF plots, listed in the report, decodable PNGs.
    let listed: Vec<&str> = r["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for name in ["ef_bland_altman.png", "ef_scatter.png"] {
        let path = plots.join(name);
        assert!(listed.contains(&path.to_str().unwrap()), "{listed:?}");
        let img = image::open(&path).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            echonet_edge::eval::plots::PLOT_SIZE
        );
    }
}

#[test]
fn eval_table_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert_fixture("irv1_w0125.pth", dir.path(), StorageDtype::F32);
    // Too short for 20 frames at 10 fps: withheld with the reason, counted, not dropped.
    let out = echonet()
        .args([
            "eval",
            "--phantom-seed",
            "3",
            "--phantom-clips",
            "2",
            "--phantom-frames",
            "30",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("2 clips, 0 ok, 2 withheld, 0 refused"),
        "{table}"
    );
    assert!(table.contains("withheld 2: clip too short"), "{table}");

    // A phantom declares no splits: asking for the test split says so.
    let out = echonet()
        .args([
            "eval",
            "--phantom-seed",
            "3",
            "--phantom-clips",
            "2",
            "--split",
            "test",
            "--model",
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("declares no splits"), "{err}");

    // No dataset at all: clap refuses.
    let out = echonet()
        .args(["eval", "--model"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
