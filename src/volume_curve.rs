//! EF from the LV volume curve (beyond the paper): a head that reads each frame's LV volume
//! gives a volume curve over the window; each detected beat's maximum is an end-diastolic and
//! each minimum an end-systolic volume, and EDV, ESV and EF are the means over the beats found.
//! The paper's estimator instead averages a per-frame EF; the two are reported side by side.

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
            idx.iter().map(|&i| volumes[i]).sum::<f64>() / idx.len() as f64
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
                // 10 fps undersamples a fast beat: the sampled extremes can miss the true ones.
                assert!(
                    (e.ef_percent - 50.0).abs() < 6.0,
                    "{bpm} bpm phase {phase}: {e:?}"
                );
            }
        }
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
