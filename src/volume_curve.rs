//! EF from the LV volume curve (beyond the paper): a head that reads each frame's LV volume
//! gives a volume curve over the window; each detected beat's maximum is an end-diastolic and
//! each minimum an end-systolic volume, and EDV, ESV and EF are the means over the beats found.
//! The paper's estimator instead averages a per-frame EF; the two are reported side by side.
//!
//! The 10 fps samples rarely fall on the true end-diastole and end-systole: each extreme is
//! refined between the samples by the parabola through it and its two neighbours (its vertex,
//! at most half a sample away), keeping the paper's sampling. On a sampled cosine beat this cuts
//! the worst EF error over 50-130 bpm and every phase from 3.0 to 1.0 points, and the mean bias
//! from -1.4 to -0.3 (see the tests).

use serde::Serialize;

/// A peak or trough must rise above (or fall below) its neighbours by this share of the curve's
/// full range to count as a beat's extreme, so that noise on a flat stretch is not a beat.
pub const MIN_PROMINENCE: f64 = 0.25;
/// Samples either side a peak must dominate: at 10 fps, ±2 frames is ±200 ms, shorter than half
/// a beat at up to 150 bpm.
pub const NEIGHBOURHOOD: usize = 2;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurveEstimate {
    pub edv_ml: f64,
    pub esv_ml: f64,
    pub ef_percent: f64,
    /// Peaks and troughs averaged; 0 when the curve showed no clear beat and the window's
    /// maximum and minimum were used.
    pub peaks: usize,
    pub troughs: usize,
}

/// Indices of the samples that are the extreme of their ±`NEIGHBOURHOOD` stretch (ties: the
/// first) and stand out from the stretch by the prominence threshold. `sign` +1 finds peaks, -1
/// troughs.
fn extremes(v: &[f64], sign: f64, threshold: f64) -> Vec<usize> {
    let n = v.len();
    let mut out = Vec::new();
    for i in 1..n.saturating_sub(1) {
        let lo = i.saturating_sub(NEIGHBOURHOOD);
        let hi = (i + NEIGHBOURHOOD).min(n - 1);
        let here = sign * v[i];
        let dominates =
            (lo..=hi).all(|j| j == i || sign * v[j] < here || (sign * v[j] == here && j > i));
        if !dominates {
            continue;
        }
        // Prominence: how far it stands above the lowest point on each side up to the window edge
        // or to a higher sample, whichever comes first; the smaller of the two sides.
        let side = |range: &mut dyn Iterator<Item = usize>| {
            let mut low = here;
            for j in range {
                let x = sign * v[j];
                if x > here {
                    break;
                }
                low = low.min(x);
            }
            here - low
        };
        let left = side(&mut (0..i).rev());
        let right = side(&mut (i + 1..n));
        if left.min(right) >= threshold {
            out.push(i);
        }
    }
    out
}

/// The extreme near sample `i` between the samples: the vertex of the parabola through samples
/// `i - 1`, `i`, `i + 1`, its offset limited to half a sample (beyond that another sample would
/// be the extreme), so the correction is at most an eighth of the neighbours' difference. The
/// sample itself at the window's edges or on a straight stretch.
fn vertex(v: &[f64], i: usize) -> f64 {
    let (Some(&a), Some(&b), Some(&c)) = (
        i.checked_sub(1).and_then(|j| v.get(j)),
        v.get(i),
        v.get(i + 1),
    ) else {
        return v.get(i).copied().unwrap_or(f64::NAN);
    };
    let curvature = a - 2.0 * b + c;
    if curvature == 0.0 {
        return b;
    }
    let offset = (0.5 * (a - c) / curvature).clamp(-0.5, 0.5);
    b - 0.25 * (a - c) * offset
}

/// EDV, ESV and EF from a window's per-frame LV volumes (in time order, mL). `None` when fewer
/// than 3 volumes are given, a volume is not finite, or the largest is not positive.
pub fn estimate(volumes: &[f64]) -> Option<CurveEstimate> {
    if volumes.len() < 3 || volumes.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let max = volumes.iter().copied().fold(f64::MIN, f64::max);
    let min = volumes.iter().copied().fold(f64::MAX, f64::min);
    if max <= 0.0 {
        return None;
    }
    let threshold = MIN_PROMINENCE * (max - min);
    let peaks = extremes(volumes, 1.0, threshold);
    let troughs = extremes(volumes, -1.0, threshold);
    let mean_at = |idx: &[usize], fallback: f64| {
        if idx.is_empty() {
            fallback
        } else {
            idx.iter().map(|&i| vertex(volumes, i)).sum::<f64>() / idx.len() as f64
        }
    };
    let edv = mean_at(&peaks, max);
    let esv = mean_at(&troughs, min).max(0.0);
    Some(CurveEstimate {
        edv_ml: edv,
        esv_ml: esv,
        ef_percent: 100.0 * (edv - esv) / edv,
        peaks: peaks.len(),
        troughs: troughs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(edv: f64, esv: f64, bpm: f64, phase: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|k| {
                let t = k as f64 / 10.0;
                let c = (2.0 * std::f64::consts::PI * (t * bpm / 60.0 + phase)).cos();
                esv + (edv - esv) * 0.5 * (1.0 + c)
            })
            .collect()
    }

    #[test]
    fn clean_beats_give_their_extremes() {
        // 60 bpm, 10 fps: samples hit the exact maxima and minima.
        let e = estimate(&curve(120.0, 48.0, 60.0, 0.0, 20)).unwrap();
        assert!((e.edv_ml - 120.0).abs() < 1e-9, "{e:?}");
        assert!((e.esv_ml - 48.0).abs() < 1e-9);
        assert!((e.ef_percent - 60.0).abs() < 1e-9);
        assert_eq!((e.peaks, e.troughs), (1, 2));
    }

    #[test]
    fn every_rate_and_phase_stays_close() {
        for bpm in [50.0, 72.0, 90.0, 110.0] {
            for phase in [0.0, 0.13, 0.37, 0.5, 0.81] {
                let e = estimate(&curve(150.0, 75.0, bpm, phase, 20)).unwrap();
                // 10 fps undersamples a fast beat; the parabolic vertex recovers most of what
                // the samples miss (python check of this very curve: worst 1.02 points with the
                // vertex, 3.01 without).
                assert!(
                    (e.ef_percent - 50.0).abs() < 1.1,
                    "{bpm} bpm phase {phase}: {e:?}"
                );
            }
        }
    }

    /// Issue #13 item 6: over rates and phases the vertex leaves little bias where the plain
    /// samples underestimate EF (the same python check: mean error -0.32 vs -1.37 points over
    /// 50-130 bpm and seven phases).
    #[test]
    fn refined_extremes_remove_most_of_the_bias() {
        let mut sum = 0.0;
        let mut n = 0.0;
        for bpm in [50.0, 60.0, 72.0, 90.0, 110.0, 130.0] {
            for phase in [0.0, 0.13, 0.25, 0.37, 0.5, 0.6, 0.81] {
                sum += estimate(&curve(150.0, 75.0, bpm, phase, 20))
                    .unwrap()
                    .ef_percent
                    - 50.0;
                n += 1.0;
            }
        }
        let bias = sum / n;
        assert!(bias.abs() < 0.5, "mean EF error {bias}");
        // A sample exactly on the extreme stays: the parabola is symmetric about it.
        assert_eq!(vertex(&[1.0, 3.0, 1.0], 1), 3.0);
        // Half a sample away at most: a flat top takes the midpoint's parabola value.
        assert!((vertex(&[3.0, 3.0, 1.0], 1) - 3.25).abs() < 1e-12);
        assert_eq!(vertex(&[5.0, 2.0], 0), 5.0);
    }

    #[test]
    fn noise_on_a_flat_curve_is_not_a_beat() {
        let v: Vec<f64> = (0..20)
            .map(|k| 100.0 + if k % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let e = estimate(&v).unwrap();
        // A ±0.5 mL ripple has no beat in it: whatever counts as a peak or trough, EF stays ~1 %.
        assert!(e.ef_percent < 2.0, "{e:?}");
    }

    #[test]
    fn refuses_short_or_broken_curves() {
        assert!(estimate(&[1.0, 2.0]).is_none());
        assert!(estimate(&[1.0, f64::NAN, 2.0]).is_none());
        assert!(estimate(&[0.0, 0.0, 0.0]).is_none());
    }
}
