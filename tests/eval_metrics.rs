//! `eval::metrics` against an independent computation: numpy values made by
//! tools/eval/metrics_reference.py (seed in the fixture), and a property test of the rank-based
//! AUC against brute force over every positive-negative pair.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use echonet_edge::eval::metrics;
use proptest::prelude::*;

/// Both sides compute in f64 from the same inputs; only summation order differs.
const R2_TOL: f64 = 1e-9;
const MAE_TOL: f64 = 1e-9;
const AUC_TOL: f64 = 1e-9;

fn reference() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval/metrics_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference fixture"))
        .expect("reference JSON")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn close(what: &str, actual: f64, expected: f64, tol: f64) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: {actual} vs numpy {expected} (tolerance {tol})"
    );
}

#[test]
fn regression_matches_numpy() {
    let r = &reference()["regression"];
    let (p, t) = (floats(&r["predictions"]), floats(&r["truths"]));
    assert_eq!(p.len(), 200);
    let m = metrics::regression(&p, &t).unwrap();
    let e = &r["expected"];
    close("R2", m.r2, e["r2"].as_f64().unwrap(), R2_TOL);
    close("MAE", m.mae, e["mae"].as_f64().unwrap(), MAE_TOL);
    close(
        "mean-prediction MAE",
        m.mean_prediction_mae,
        e["mean_prediction_mae"].as_f64().unwrap(),
        MAE_TOL,
    );
}

#[test]
fn auc_matches_numpy_brute_force_with_ties() {
    let b = &reference()["binary"];
    let (s, t) = (floats(&b["scores"]), floats(&b["truths"]));
    // The fixture is only a test of tie handling if it has ties.
    assert!(b["tied_pairs"].as_u64().unwrap() > 50);
    let m = metrics::binary(&s, &t).unwrap();
    close(
        "AUC",
        m.auc,
        b["expected"]["auc"].as_f64().unwrap(),
        AUC_TOL,
    );
    assert_eq!(
        m.positives as u64,
        b["expected"]["positives"].as_u64().unwrap()
    );
}

/// AUC by definition: every (positive, negative) pair, a win 1, a tie 1/2.
fn brute_force_auc(scores: &[f64], truths: &[f64]) -> f64 {
    let mut wins = 0.0;
    let mut pairs = 0.0;
    for (i, &si) in scores.iter().enumerate() {
        for (j, &sj) in scores.iter().enumerate() {
            if truths[i] == 1.0 && truths[j] == 0.0 {
                pairs += 1.0;
                wins += if si > sj {
                    1.0
                } else if si == sj {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs
}

proptest! {
    #[test]
    fn auc_equals_pairwise_count(
        // Scores from a small set of levels, so that ties are common.
        cases in prop::collection::vec((0u8..12, any::<bool>()), 2..60)
    ) {
        let scores: Vec<f64> = cases.iter().map(|(l, _)| *l as f64 / 11.0).collect();
        let truths: Vec<f64> = cases.iter().map(|(_, p)| if *p { 1.0 } else { 0.0 }).collect();
        let positives = truths.iter().filter(|&&t| t == 1.0).count();
        match metrics::auc(&scores, &truths) {
            Ok(auc) => {
                prop_assert!(positives > 0 && positives < truths.len());
                prop_assert!((auc - brute_force_auc(&scores, &truths)).abs() <= AUC_TOL);
            }
            Err(e) => {
                prop_assert!(positives == 0 || positives == truths.len());
                let is_one_class = matches!(e, metrics::MetricsError::OneClass { .. });
                prop_assert!(is_one_class);
            }
        }
    }
}
