//! The paper's metrics over paired predictions and truths. Regression: R², MAE, RMSE, the MAE of
//! always predicting the mean of the truths (the paper's baseline), bias and Bland-Altman 95 %
//! limits of agreement. Binary: AUC (Mann-Whitney, ties count one half), F1 and accuracy at a
//! probability of 0.5. Every figure is defined or an error says why not; nothing is NaN.

use serde::{Deserialize, Serialize};

/// Probability at or above which a binary prediction counts as positive.
pub const BINARY_THRESHOLD: f64 = 0.5;

/// Bland-Altman's 95 % limits: bias ± this many standard deviations of the differences.
pub const LOA_SD: f64 = 1.96;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("no pairs: metrics need at least one prediction with its truth")]
    Empty,
    #[error("{predictions} predictions but {truths} truths: they must pair one to one")]
    LengthMismatch { predictions: usize, truths: usize },
    #[error("{which} {index} is {value}: every prediction and truth must be finite")]
    NonFinite {
        which: &'static str,
        index: usize,
        value: f64,
    },
    #[error("truth {index} is {value}: binary truths must be 0 or 1")]
    NotBinary { index: usize, value: f64 },
    #[error("AUC undefined: all {n} truths are {class} (AUC needs at least one positive and one negative)")]
    OneClass { n: usize, class: &'static str },
    #[error("R² undefined: all {n} truths equal {value} (no variance to explain)")]
    ConstantTruth { n: usize, value: f64 },
}

pub type Result<T> = std::result::Result<T, MetricsError>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub n: usize,
    /// 1 - SS_res / SS_tot.
    pub r2: f64,
    pub mae: f64,
    pub rmse: f64,
    /// MAE of always predicting the mean of the truths (the paper's baseline).
    pub mean_prediction_mae: f64,
    /// Mean of prediction - truth.
    pub bias: f64,
    /// Sample standard deviation (n - 1) of prediction - truth.
    pub sd_difference: f64,
    /// Bland-Altman 95 % limits of agreement: bias ∓ 1.96 SD.
    pub loa_lower: f64,
    pub loa_upper: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub n: usize,
    pub positives: usize,
    pub negatives: usize,
    /// Mann-Whitney AUC: the probability that a random positive scores above a random negative,
    /// ties counting one half.
    pub auc: f64,
    /// At a predicted probability >= [`BINARY_THRESHOLD`].
    pub f1: f64,
    pub accuracy: f64,
    pub threshold: f64,
}

fn check_pairs(predictions: &[f64], truths: &[f64]) -> Result<()> {
    if predictions.len() != truths.len() {
        return Err(MetricsError::LengthMismatch {
            predictions: predictions.len(),
            truths: truths.len(),
        });
    }
    if predictions.is_empty() {
        return Err(MetricsError::Empty);
    }
    for (which, values) in [("prediction", predictions), ("truth", truths)] {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(MetricsError::NonFinite {
                which,
                index,
                value,
            });
        }
    }
    Ok(())
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Regression metrics of `predictions` against `truths` (same order, same unit).
pub fn regression(predictions: &[f64], truths: &[f64]) -> Result<RegressionMetrics> {
    check_pairs(predictions, truths)?;
    let n = truths.len();
    let truth_mean = mean(truths);
    let ss_tot: f64 = truths.iter().map(|t| (t - truth_mean).powi(2)).sum();
    if ss_tot == 0.0 {
        return Err(MetricsError::ConstantTruth {
            n,
            value: truths[0],
        });
    }
    let diffs: Vec<f64> = predictions.iter().zip(truths).map(|(p, t)| p - t).collect();
    let ss_res: f64 = diffs.iter().map(|d| d * d).sum();
    let bias = mean(&diffs);
    // ss_tot > 0 means at least two distinct truths, so n >= 2.
    let sd_difference =
        (diffs.iter().map(|d| (d - bias).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
    Ok(RegressionMetrics {
        n,
        r2: 1.0 - ss_res / ss_tot,
        mae: diffs.iter().map(|d| d.abs()).sum::<f64>() / n as f64,
        rmse: (ss_res / n as f64).sqrt(),
        mean_prediction_mae: truths.iter().map(|t| (t - truth_mean).abs()).sum::<f64>() / n as f64,
        bias,
        sd_difference,
        loa_lower: bias - LOA_SD * sd_difference,
        loa_upper: bias + LOA_SD * sd_difference,
    })
}

/// Mann-Whitney AUC from average ranks (ties share their mean rank, which counts a tied
/// positive-negative pair as one half). `truths` are 0 or 1.
pub fn auc(scores: &[f64], truths: &[f64]) -> Result<f64> {
    let positives = check_binary(scores, truths)?;
    let n = truths.len();
    let negatives = n - positives;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut positive_rank_sum = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j share their mean.
        let rank = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            if truths[k] == 1.0 {
                positive_rank_sum += rank;
            }
        }
        i = j;
    }
    let p = positives as f64;
    Ok((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Checks the pairs and that the truths are 0/1 of both classes; returns the positives.
fn check_binary(scores: &[f64], truths: &[f64]) -> Result<usize> {
    check_pairs(scores, truths)?;
    if let Some((index, &value)) = truths
        .iter()
        .enumerate()
        .find(|(_, &t)| t != 0.0 && t != 1.0)
    {
        return Err(MetricsError::NotBinary { index, value });
    }
    let positives = truths.iter().filter(|&&t| t == 1.0).count();
    let n = truths.len();
    if positives == 0 {
        return Err(MetricsError::OneClass {
            n,
            class: "negative",
        });
    }
    if positives == n {
        return Err(MetricsError::OneClass {
            n,
            class: "positive",
        });
    }
    Ok(positives)
}

/// Binary metrics of predicted probabilities against 0/1 truths.
pub fn binary(scores: &[f64], truths: &[f64]) -> Result<BinaryMetrics> {
    let positives = check_binary(scores, truths)?;
    let auc = auc(scores, truths)?;
    let (mut tp, mut fp, mut fn_, mut correct) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &t) in scores.iter().zip(truths) {
        let predicted = s >= BINARY_THRESHOLD;
        let actual = t == 1.0;
        match (predicted, actual) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
        if predicted == actual {
            correct += 1;
        }
    }
    let n = truths.len();
    // At least one positive, so 2tp + fp + fn >= 1.
    let f1 = 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
    Ok(BinaryMetrics {
        n,
        positives,
        negatives: n - positives,
        auc,
        f1,
        accuracy: correct as f64 / n as f64,
        threshold: BINARY_THRESHOLD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn regression_by_hand() {
        // truths 1,2,3,4 (mean 2.5, SS_tot 5); predictions 2,2,2,6: diffs 1,0,-1,2.
        let m = regression(&[2.0, 2.0, 2.0, 6.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.n, 4);
        close(m.r2, 1.0 - 6.0 / 5.0);
        close(m.mae, 4.0 / 4.0);
        close(m.rmse, (6.0f64 / 4.0).sqrt());
        // |t - 2.5| = 1.5, 0.5, 0.5, 1.5.
        close(m.mean_prediction_mae, 1.0);
        close(m.bias, 0.5);
        // (0.25 + 0.25 + 2.25 + 2.25) / 3 = 5/3.
        let sd = (5.0f64 / 3.0).sqrt();
        close(m.sd_difference, sd);
        close(m.loa_lower, 0.5 - 1.96 * sd);
        close(m.loa_upper, 0.5 + 1.96 * sd);
    }

    #[test]
    fn perfect_predictions_have_r2_one() {
        let t = [10.0, 20.0, 35.0];
        let m = regression(&t, &t).unwrap();
        close(m.r2, 1.0);
        close(m.mae, 0.0);
        close(m.loa_upper, 0.0);
    }

    #[test]
    fn regression_errors() {
        assert_eq!(regression(&[], &[]), Err(MetricsError::Empty));
        assert_eq!(
            regression(&[1.0], &[1.0, 2.0]),
            Err(MetricsError::LengthMismatch {
                predictions: 1,
                truths: 2
            })
        );
        assert!(matches!(
            regression(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(MetricsError::NonFinite {
                which: "prediction",
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            regression(&[1.0, 2.0], &[f64::INFINITY, 2.0]),
            Err(MetricsError::NonFinite {
                which: "truth",
                index: 0,
                ..
            })
        ));
        let e = regression(&[1.0, 2.0], &[3.0, 3.0]).unwrap_err();
        assert_eq!(e, MetricsError::ConstantTruth { n: 2, value: 3.0 });
        assert!(e.to_string().contains("R² undefined"), "{e}");
    }

    #[test]
    fn auc_by_hand_with_ties() {
        // Positives score 0.8, 0.4; negatives 0.4, 0.1. Pairs: (0.8>0.4)=1, (0.8>0.1)=1,
        // (0.4=0.4)=0.5, (0.4>0.1)=1 → 3.5 / 4.
        close(
            auc(&[0.8, 0.4, 0.4, 0.1], &[1.0, 1.0, 0.0, 0.0]).unwrap(),
            0.875,
        );
        // Perfectly wrong, and all tied.
        close(auc(&[0.1, 0.9], &[1.0, 0.0]).unwrap(), 0.0);
        close(auc(&[0.5, 0.5, 0.5], &[1.0, 0.0, 1.0]).unwrap(), 0.5);
    }

    #[test]
    fn binary_by_hand() {
        // Scores 0.9 (1), 0.6 (0), 0.5 (1), 0.2 (1), 0.1 (0) at 0.5:
        // predicted 1,1,1,0,0 → TP 2, FP 1, FN 1, TN 1.
        let m = binary(&[0.9, 0.6, 0.5, 0.2, 0.1], &[1.0, 0.0, 1.0, 1.0, 0.0]).unwrap();
        assert_eq!((m.n, m.positives), (5, 3));
        close(m.f1, 4.0 / 6.0);
        close(m.accuracy, 3.0 / 5.0);
        // Pairs (pos, neg): 0.9>{0.6,0.1}=2, 0.5 vs 0.6 =0, 0.5>0.1 =1, 0.2 vs 0.6 =0,
        // 0.2>0.1 =1 → 4/6.
        close(m.auc, 4.0 / 6.0);
    }

    #[test]
    fn binary_errors() {
        let e = binary(&[0.2, 0.7], &[1.0, 1.0]).unwrap_err();
        assert_eq!(
            e,
            MetricsError::OneClass {
                n: 2,
                class: "positive"
            }
        );
        assert!(e.to_string().starts_with("AUC undefined"), "{e}");
        assert!(matches!(
            auc(&[0.2, 0.7], &[0.0, 0.0]),
            Err(MetricsError::OneClass {
                class: "negative",
                ..
            })
        ));
        assert_eq!(
            binary(&[0.2, 0.7], &[1.0, 0.5]),
            Err(MetricsError::NotBinary {
                index: 1,
                value: 0.5
            })
        );
        assert_eq!(binary(&[], &[]), Err(MetricsError::Empty));
        assert!(matches!(
            binary(&[f64::NAN, 0.1], &[1.0, 0.0]),
            Err(MetricsError::NonFinite { .. })
        ));
    }
}
