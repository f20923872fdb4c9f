//! From per-frame predictions to the published estimate: a rolling window of the last 20 sampled
//! frames (the paper's 20 frames at 10 fps), the mean of each head over the valid frames (the
//! paper's aggregation), the per-frame spread as an uncertainty figure, EF recomputed from the
//! ESV and EDV means when both heads exist, EDV/ESV/EF from the volume curve when the bundle has
//! a per-frame `lv_volume` head (see `volume_curve`), and the decision to withhold when too few
//! frames in the window were fit to use.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::dataset::LV_VOLUME;
use crate::model::ood::OodThresholds;
use crate::model::TaskSpec;
use crate::preprocess::UnfitReason;
use crate::volume_curve;

/// The paper's window: 20 frames, one every 100 ms.
pub const PAPER_WINDOW: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Sampled frames per estimate. Default 20 (the paper).
    #[serde(default = "default_window")]
    pub frames: usize,
    /// Valid frames needed in the window to publish a number; fewer and the estimate is withheld
    /// with its reasons. Default 16 (80 % of the window).
    #[serde(default = "default_min_valid")]
    pub min_valid_frames: usize,
    /// Longest media time the window may span, ms. 20 frames at 10 fps span 1.9 s; a window
    /// stretched by dropped frames (inference slower than 10 fps, a stuttering source) no longer
    /// follows the paper's sampling and is withheld. Default 2500.
    #[serde(default = "default_max_span_ms")]
    pub max_span_ms: u64,
    /// Largest difference between the paper's mean of per-frame EF (`ef`) and EF from the
    /// volume curve (`ef_volume_curve`) before the estimate is flagged as low agreement,
    /// percentage points (0.5-50). Default 14: twice the paper's 7.0-point EF MAE (Ghorbani et
    /// al.; 4.1, the default's earlier source, is EchoNet-Dynamic's video model); two readings of
    /// the same frames further apart than twice the paper's typical error mean the model is
    /// unsure what it sees. On unseen phantom patients the bundled model's estimates are
    /// flagged at 19-20 % (README, "The bundled demo model").
    #[serde(default = "default_ef_agreement_margin")]
    pub ef_agreement_margin: f64,
}

fn default_window() -> usize {
    PAPER_WINDOW
}
fn default_min_valid() -> usize {
    16
}
fn default_max_span_ms() -> u64 {
    2500
}
fn default_ef_agreement_margin() -> f64 {
    14.0
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            frames: default_window(),
            min_valid_frames: default_min_valid(),
            max_span_ms: default_max_span_ms(),
            ef_agreement_margin: default_ef_agreement_margin(),
        }
    }
}

/// What became of one sampled frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The model ran: task name -> reported value.
    Valid(BTreeMap<String, f64>),
    /// The frame was unfit to feed an estimate, for these reasons.
    Invalid(Vec<UnfitReason>),
}

#[derive(Debug, Clone)]
pub struct FramePrediction {
    pub seq: u64,
    pub media_time: Duration,
    pub captured_at: Instant,
    pub captured_wall: SystemTime,
    pub verdict: Verdict,
    /// Its distance from the bundle's training frames, when the OOD gate is on and the model
    /// ran on it (`model::ood`).
    pub ood_distance: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Withheld,
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEstimate {
    pub value: f64,
    pub unit: String,
    /// Sample standard deviation of the per-frame values in the window (same unit); None when it
    /// cannot be computed (one frame, or a derived figure).
    pub spread: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowQuality {
    pub valid_frames: usize,
    pub window: usize,
    /// Invalid frames in the window by reason.
    pub reasons: BTreeMap<String, u32>,
}

/// How far the window's two EF readings lie apart: the paper's mean of per-frame EF and EF from
/// the volume curve. `low` when further apart than the configured margin: the number is
/// published, flagged, for a clinician to look at the images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EfAgreement {
    /// |ef - ef_volume_curve|, percentage points.
    pub difference: f64,
    /// `window.ef_agreement_margin`, percentage points.
    pub margin: f64,
    pub low: bool,
}

/// How close the window's frames lie to the model's training frames (published when the
/// bundle's OOD gate is on): a user sees how near a refusal was, or how far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OodWindow {
    /// Largest and median distance over the window's frames the model ran on.
    pub distance_max: f64,
    pub distance_median: f64,
    /// The bundle's threshold: beyond it a frame is `out_of_distribution`.
    pub threshold: f64,
    /// The bundle's window threshold: a median beyond it withholds the window.
    pub window_threshold: f64,
    /// Frames beyond the threshold.
    pub frames_beyond: u32,
}

/// The start of the withheld reason when the window lacks in-distribution frames; the display
/// shows the reason as it is and flags this prefix.
pub const OOD_WITHHELD_CAUSE: &str = "out of the model's training domain";
/// The start of a withheld reason when most frames are not an apical four-chamber view.
pub const VIEW_WITHHELD_CAUSE: &str = "not an apical four-chamber view";

#[derive(Debug, Clone)]
pub struct Estimate {
    pub status: Status,
    pub withheld_reason: Option<String>,
    pub estimates: BTreeMap<String, TaskEstimate>,
    pub quality: WindowQuality,
    /// The two EF readings compared, when the window has both (`None` otherwise).
    pub agreement: Option<EfAgreement>,
    /// The window's OOD distances, when the gate is on and the model ran on any frame.
    pub ood: Option<OodWindow>,
    /// The newest frame of the window: the estimate's capture time and sequence number.
    pub newest_seq: u64,
    pub captured_at: Instant,
    pub captured_wall: SystemTime,
}

#[derive(Debug)]
pub struct RollingWindow {
    config: WindowConfig,
    frames: VecDeque<FramePrediction>,
    /// One frame's inference cost measured at warm-up, when it exceeds the 10 fps budget: a
    /// stretched window is then explained as inference being too slow.
    slow_inference_ms: Option<f64>,
    /// Inference fell behind while the window filled although one frame fits the budget (the
    /// rest of the daemon shares the cores, or the machine slowed after warm-up): the running
    /// cost per frame and the sampled frames the inference queue dropped.
    inference_backlog: Option<(f64, u64)>,
    /// The bundle's OOD thresholds, when its gate is on.
    ood_threshold: Option<OodThresholds>,
}

/// One sampled frame every 100 ms (10 fps): the most one frame's inference may cost.
pub const FRAME_BUDGET_MS: f64 = 100.0;

/// What to do when inference is over the budget, said wherever slowness is reported (the
/// start-up log, and the withheld reason the display shows in place of the number).
pub const SLOW_INFERENCE_ADVICE: &str =
    "run it on a GPU (--device cuda), use an int8 model or a smaller variant";

/// The start of a withheld reason when slow inference stretched the window: the cost, the
/// budget and what to do. The display shows the reason as it is and flags this prefix.
pub fn slow_inference_cause(ms_per_frame: f64) -> String {
    format!(
        "inference too slow ({ms_per_frame:.0} ms per frame, budget {FRAME_BUDGET_MS:.0} ms; \
         {SLOW_INFERENCE_ADVICE}): "
    )
}

/// The start of a withheld reason when the inference queue dropped sampled frames although one
/// frame alone fits the budget: the running cost, the drops and what to do (the same prefix as
/// [`slow_inference_cause`], which the display flags).
pub fn inference_backlog_cause(ms_per_frame: f64, dropped: u64) -> String {
    format!(
        "inference too slow ({ms_per_frame:.0} ms per frame, with the rest of the daemon on the same \
         cores; {dropped} sampled frames dropped at the inference queue; {SLOW_INFERENCE_ADVICE}): "
    )
}

fn mean_and_spread(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let spread = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, spread)
}

impl RollingWindow {
    pub fn new(config: WindowConfig) -> Self {
        let capacity = config.frames.max(1);
        Self {
            config,
            frames: VecDeque::with_capacity(capacity),
            slow_inference_ms: None,
            inference_backlog: None,
            ood_threshold: None,
        }
    }

    /// The OOD gate's thresholds (None: off); estimates then carry the window's distances, and
    /// a window whose median distance is beyond `window_median` is withheld.
    pub fn set_ood_threshold(&mut self, threshold: Option<OodThresholds>) {
        self.ood_threshold = threshold;
    }

    /// Records what one frame's inference costs (measured at warm-up); above
    /// [`FRAME_BUDGET_MS`] a window withheld for dropped frames names slow inference as the cause.
    pub fn set_inference_cost(&mut self, ms_per_frame: f64) {
        self.slow_inference_ms = (ms_per_frame > FRAME_BUDGET_MS).then_some(ms_per_frame);
    }

    /// Records, before an estimate, whether the inference queue dropped sampled frames since
    /// the previous one (`dropped` of them; 0: it kept up) and the running cost of one frame's
    /// inference, so that a window withheld for dropped frames names slow inference as the cause
    /// even when the warm-up measurement was within the budget.
    pub fn set_inference_backlog(&mut self, running_ms_per_frame: f64, dropped: u64) {
        self.inference_backlog = (dropped > 0).then_some((running_ms_per_frame, dropped));
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn push(&mut self, p: FramePrediction) {
        if self.frames.len() == self.config.frames.max(1) {
            self.frames.pop_front();
        }
        self.frames.push_back(p);
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.frames.len() >= self.config.frames.max(1)
    }

    /// Empties the window (after the source was lost: frames before and after a gap must not mix).
    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// The estimate over the current window, or None while it is empty.
    pub fn estimate(&self, tasks: &[TaskSpec]) -> Option<Estimate> {
        let newest = self.frames.back()?;
        let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
        let mut per_task: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut valid = 0;
        for f in &self.frames {
            match &f.verdict {
                Verdict::Valid(outputs) => {
                    valid += 1;
                    for t in tasks {
                        if let Some(v) = outputs.get(&t.name) {
                            per_task.entry(t.name.as_str()).or_default().push(*v);
                        }
                    }
                }
                Verdict::Invalid(rs) => {
                    for r in rs {
                        *reasons.entry(r.as_str().to_string()).or_default() += 1;
                    }
                }
            }
        }
        let quality = WindowQuality {
            valid_frames: valid,
            window: self.config.frames,
            reasons,
        };
        let mut estimate = Estimate {
            status: Status::Ok,
            withheld_reason: None,
            estimates: BTreeMap::new(),
            quality,
            agreement: None,
            ood: self.ood_window(),
            newest_seq: newest.seq,
            captured_at: newest.captured_at,
            captured_wall: newest.captured_wall,
        };
        let span = newest.media_time.saturating_sub(
            self.frames
                .front()
                .map(|f| f.media_time)
                .unwrap_or_default(),
        );
        if span > Duration::from_millis(self.config.max_span_ms) {
            estimate.status = Status::Withheld;
            let cause = match (self.slow_inference_ms, self.inference_backlog) {
                (Some(ms), _) => slow_inference_cause(ms),
                (None, Some((ms, dropped))) => inference_backlog_cause(ms, dropped),
                (None, None) => String::new(),
            };
            estimate.withheld_reason = Some(format!(
                "{cause}the window's {} frames span {:.1} s (at most {:.1} s): frames were dropped, so it is not {} frames at 10 fps",
                self.frames.len(),
                span.as_secs_f64(),
                self.config.max_span_ms as f64 / 1000.0,
                self.config.frames
            ));
            return Some(estimate);
        }
        if valid < self.config.min_valid_frames {
            let why: Vec<String> = estimate
                .quality
                .reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            estimate.status = Status::Withheld;
            let ood_frames = estimate
                .quality
                .reasons
                .get(UnfitReason::OutOfDistribution.as_str())
                .copied()
                .unwrap_or(0);
            let most = estimate
                .quality
                .reasons
                .values()
                .copied()
                .max()
                .unwrap_or(0);
            let view_frames = estimate
                .quality
                .reasons
                .get(UnfitReason::NotA4c.as_str())
                .copied()
                .unwrap_or(0);
            // The main reason is named first. The view when the view gate refused most of the
            // window: the domain statistics are the A4C frames', so another view is out of the
            // domain too, and moving the probe is what fixes it. Otherwise the domain when it is
            // the commonest reason: no setting or probe position fixes that.
            let cause = match &estimate.ood {
                _ if 2 * view_frames as usize > self.frames.len() => format!(
                    "{VIEW_WITHHELD_CAUSE}: the view gate refused {view_frames} of {} frames; ",
                    self.frames.len()
                ),
                Some(o) if ood_frames > 0 && ood_frames == most => format!(
                    "{OOD_WITHHELD_CAUSE}: {ood_frames} of {} frames lie beyond the training frames (distance up to {:.2}, threshold {:.2}); ",
                    self.frames.len(),
                    o.distance_max,
                    o.threshold
                ),
                _ => String::new(),
            };
            estimate.withheld_reason = Some(format!(
                "{cause}only {valid} of {} frames usable (need {}){}",
                self.frames.len(),
                self.config.min_valid_frames,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {}", why.join(", "))
                }
            ));
            return Some(estimate);
        }
        if let Some(o) = &estimate.ood {
            // Frames that pass one by one, but whose median lies beyond what the validation
            // clips' medians reach: a consistent shift the single-frame threshold is too wide
            // to see (a flipped fan, another machine's speckle).
            if o.distance_median.is_nan() || o.distance_median > o.window_threshold {
                estimate.status = Status::Withheld;
                estimate.withheld_reason = Some(format!(
                    "{OOD_WITHHELD_CAUSE}: the window's median distance {:.2} is beyond {:.2}, which no validation clip's median reached",
                    o.distance_median, o.window_threshold
                ));
                return Some(estimate);
            }
        }
        for t in tasks {
            let Some(values) = per_task.get(t.name.as_str()) else {
                continue;
            };
            if t.name == LV_VOLUME {
                // A per-frame volume is not averaged: its curve gives EDV, ESV and EF below.
                if values.iter().any(|v| !v.is_finite()) {
                    estimate.status = Status::Withheld;
                    estimate.withheld_reason =
                        Some(format!("model output for {} is not finite", t.name));
                    estimate.estimates.clear();
                    return Some(estimate);
                }
                continue;
            }
            if values.iter().any(|v| !v.is_finite()) {
                estimate.status = Status::Withheld;
                estimate.withheld_reason =
                    Some(format!("model output for {} is not finite", t.name));
                estimate.estimates.clear();
                return Some(estimate);
            }
            let (value, spread) = mean_and_spread(values);
            if let Some((lo, hi)) = t.plausible_range() {
                if !(lo..=hi).contains(&value) {
                    estimate.status = Status::Withheld;
                    estimate.withheld_reason = Some(format!(
                        "implausible {} {value:.1} {} (possible range {lo}-{hi}): the model is not reading this image",
                        t.name, t.unit
                    ));
                    estimate.estimates.clear();
                    return Some(estimate);
                }
            }
            estimate.estimates.insert(
                t.name.clone(),
                TaskEstimate {
                    value,
                    unit: t.unit.clone(),
                    spread,
                },
            );
        }
        if let Some(curve) = per_task
            .get(LV_VOLUME)
            .and_then(|v| volume_curve::estimate(v))
        {
            let plausible = (0.0..=100.0).contains(&curve.ef_percent)
                && curve.edv_ml > 0.0
                && curve.edv_ml <= 1000.0;
            if !plausible {
                estimate.status = Status::Withheld;
                estimate.withheld_reason = Some(format!(
                    "implausible volume curve (EDV {:.1} mL, ESV {:.1} mL): the model is not reading this image",
                    curve.edv_ml, curve.esv_ml
                ));
                estimate.estimates.clear();
                return Some(estimate);
            }
            for (name, value, unit) in [
                ("edv_volume_curve", curve.edv_ml, "mL"),
                ("esv_volume_curve", curve.esv_ml, "mL"),
                ("ef_volume_curve", curve.ef_percent, "%"),
            ] {
                estimate.estimates.insert(
                    name.into(),
                    TaskEstimate {
                        value,
                        unit: unit.into(),
                        spread: None,
                    },
                );
            }
        }
        if let (Some(esv), Some(edv)) =
            (estimate.estimates.get("esv"), estimate.estimates.get("edv"))
        {
            if edv.value > 0.0 && esv.value >= 0.0 {
                let ef = 100.0 * (edv.value - esv.value) / edv.value;
                estimate.estimates.insert(
                    "ef_from_volumes".into(),
                    TaskEstimate {
                        value: ef,
                        unit: "%".into(),
                        spread: None,
                    },
                );
            }
        }
        if let (Some(mean), Some(curve)) = (
            estimate.estimates.get("ef"),
            estimate.estimates.get("ef_volume_curve"),
        ) {
            let difference = (mean.value - curve.value).abs();
            let margin = self.config.ef_agreement_margin;
            estimate.agreement = Some(EfAgreement {
                difference,
                margin,
                low: difference > margin,
            });
        }
        Some(estimate)
    }

    fn ood_window(&self) -> Option<OodWindow> {
        let threshold = self.ood_threshold?;
        let mut d: Vec<f64> = self.frames.iter().filter_map(|f| f.ood_distance).collect();
        if d.is_empty() {
            return None;
        }
        // NaN (features not finite) sorts last and counts as beyond.
        d.sort_by(f64::total_cmp);
        let n = d.len();
        let median = if n % 2 == 1 {
            d[n / 2]
        } else {
            0.5 * (d[n / 2 - 1] + d[n / 2])
        };
        Some(OodWindow {
            distance_max: d[n - 1],
            distance_median: median,
            threshold: threshold.frame,
            window_threshold: threshold.window_median,
            frames_beyond: d
                .iter()
                .filter(|x| x.is_nan() || **x > threshold.frame)
                .count() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::QualityReason;

    fn tasks() -> Vec<TaskSpec> {
        ["ef", "esv", "edv"]
            .iter()
            .filter_map(|n| TaskSpec::echonet_default(n))
            .collect()
    }

    fn frame(seq: u64, verdict: Verdict) -> FramePrediction {
        FramePrediction {
            seq,
            media_time: Duration::from_millis(seq * 100),
            captured_at: Instant::now(),
            captured_wall: SystemTime::now(),
            verdict,
            ood_distance: None,
        }
    }

    fn valid(ef: f64, esv: f64, edv: f64) -> Verdict {
        Verdict::Valid(
            [("ef", ef), ("esv", esv), ("edv", edv)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        )
    }

    #[test]
    fn volume_head_gives_curve_estimates_not_a_mean() {
        let mut t = tasks();
        t.push(TaskSpec {
            name: LV_VOLUME.into(),
            kind: crate::model::TaskKind::Regression,
            unit: "mL".into(),
            scale: 1.0,
            offset: 0.0,
            description: String::new(),
        });
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20u64 {
            // 60 bpm at 10 fps: ED every 10 frames.
            let phase = (i as f64 / 10.0) * 2.0 * std::f64::consts::PI;
            let v = 40.0 + 60.0 * 0.5 * (1.0 + phase.cos());
            let mut out: BTreeMap<String, f64> =
                [("ef", 50.0), ("esv", 45.0), ("edv", 95.0), (LV_VOLUME, v)]
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
            if i == 7 {
                out.remove(LV_VOLUME);
            }
            w.push(frame(i, Verdict::Valid(out)));
        }
        let e = w.estimate(&t).unwrap();
        assert_eq!(e.status, Status::Ok);
        assert!(
            !e.estimates.contains_key(LV_VOLUME),
            "no mean of a per-frame volume"
        );
        assert!((e.estimates["edv_volume_curve"].value - 100.0).abs() < 1e-9);
        assert!((e.estimates["esv_volume_curve"].value - 40.0).abs() < 1e-9);
        assert!((e.estimates["ef_volume_curve"].value - 60.0).abs() < 1e-9);
        assert!(
            (e.estimates["ef"].value - 50.0).abs() < 1e-12,
            "the paper's estimate stays"
        );
        // Mean EF 50 against curve EF 60: 10 points apart, within the default margin (14).
        let a = e.agreement.clone().unwrap();
        assert!(
            (a.difference - 10.0).abs() < 1e-9 && a.margin == 14.0 && !a.low,
            "{a:?}"
        );
    }

    /// Issue #13 item 3: the two EF readings further apart than the margin flag the estimate
    /// (published, not withheld); within it, no flag; without a volume head, nothing to compare.
    #[test]
    fn ef_readings_that_disagree_are_flagged() {
        let mut t = tasks();
        t.push(TaskSpec {
            name: LV_VOLUME.into(),
            kind: crate::model::TaskKind::Regression,
            unit: "mL".into(),
            scale: 1.0,
            offset: 0.0,
            description: String::new(),
        });
        let run = |mean_ef: f64, margin: f64| {
            let mut w = RollingWindow::new(WindowConfig {
                ef_agreement_margin: margin,
                ..WindowConfig::default()
            });
            for i in 0..20u64 {
                let phase = (i as f64 / 10.0) * 2.0 * std::f64::consts::PI;
                let v = 40.0 + 60.0 * 0.5 * (1.0 + phase.cos());
                let out = [
                    ("ef", mean_ef),
                    ("esv", 45.0),
                    ("edv", 95.0),
                    (LV_VOLUME, v),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
                w.push(frame(i, Verdict::Valid(out)));
            }
            w.estimate(&t).unwrap()
        };
        // Curve EF is 60 %: a mean of 30 % is 30 points off.
        let e = run(30.0, 10.0);
        assert_eq!(e.status, Status::Ok, "flagged, still published");
        let a = e.agreement.unwrap();
        assert!(a.low && (a.difference - 30.0).abs() < 1e-9, "{a:?}");
        assert!(!run(58.0, 10.0).agreement.unwrap().low);
        assert!(
            run(58.0, 1.0).agreement.unwrap().low,
            "the margin is the setting's"
        );
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20 {
            w.push(frame(i, valid(55.0, 40.0, 90.0)));
        }
        assert!(w.estimate(&tasks()).unwrap().agreement.is_none());
    }

    #[test]
    fn mean_spread_and_ef_from_volumes() {
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20 {
            let d = if i % 2 == 0 { 1.0 } else { -1.0 };
            w.push(frame(i, valid(50.0 + d, 50.0 + d, 100.0 + d)));
        }
        let e = w.estimate(&tasks()).unwrap();
        assert_eq!(e.status, Status::Ok);
        assert!((e.estimates["ef"].value - 50.0).abs() < 1e-12);
        // Sample std of +-1 over 20 frames: sqrt(20/19).
        assert!((e.estimates["ef"].spread.unwrap() - (20.0f64 / 19.0).sqrt()).abs() < 1e-12);
        assert!((e.estimates["ef_from_volumes"].value - 50.0).abs() < 1e-12);
        assert_eq!(e.estimates["edv"].unit, "mL");
        assert_eq!(e.newest_seq, 19);
    }

    #[test]
    fn window_rolls_over_the_last_20() {
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..40 {
            w.push(frame(i, valid(i as f64, 1.0, 2.0)));
        }
        assert_eq!(w.len(), 20);
        // Mean of 20..39.
        assert!((w.estimate(&tasks()).unwrap().estimates["ef"].value - 29.5).abs() < 1e-12);
    }

    #[test]
    fn too_few_valid_frames_withholds_with_reasons() {
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20 {
            let v = match i % 4 {
                0 => Verdict::Invalid(vec![QualityReason::Frozen.into()]),
                1 => Verdict::Invalid(vec![QualityReason::NoSector.into()]),
                _ => valid(55.0, 40.0, 90.0),
            };
            w.push(frame(i, v));
        }
        let e = w.estimate(&tasks()).unwrap();
        assert_eq!(e.status, Status::Withheld);
        assert!(e.estimates.is_empty());
        assert_eq!(e.quality.valid_frames, 10);
        assert_eq!(e.quality.reasons["frozen"], 5);
        let why = e.withheld_reason.unwrap();
        assert!(
            why.contains("only 10 of 20")
                && why.contains("frozen 5")
                && why.contains("no_sector 5"),
            "{why}"
        );
    }

    /// Issue #13 item 2: frames beyond the OOD threshold are not used, and a window short of
    /// in-distribution frames says it is out of the model's training domain, with its
    /// distances; a window whose frames pass one by one but whose median is beyond the window
    /// threshold is withheld too; a window near the training frames is published with them.
    #[test]
    fn out_of_distribution_windows_are_withheld_and_say_so() {
        let thresholds = OodThresholds {
            frame: 2.5,
            window_median: 1.8,
        };
        let run = |distance: &dyn Fn(u64) -> f64| {
            let mut w = RollingWindow::new(WindowConfig::default());
            w.set_ood_threshold(Some(thresholds));
            for i in 0..20u64 {
                let d = distance(i);
                let mut f = if d > thresholds.frame {
                    frame(i, Verdict::Invalid(vec![UnfitReason::OutOfDistribution]))
                } else {
                    frame(i, valid(55.0, 40.0, 90.0))
                };
                f.ood_distance = Some(d);
                w.push(f);
            }
            w.estimate(&tasks()).unwrap()
        };
        let run_with = |verdict: &dyn Fn(u64) -> (Verdict, f64)| {
            let mut w = RollingWindow::new(WindowConfig::default());
            w.set_ood_threshold(Some(thresholds));
            for i in 0..20u64 {
                let (v, d) = verdict(i);
                let mut f = frame(i, v);
                f.ood_distance = Some(d);
                w.push(f);
            }
            w.estimate(&tasks()).unwrap()
        };
        let e = run(&|i| if i < 15 { 3.0 + i as f64 / 10.0 } else { 1.0 });
        assert_eq!(e.status, Status::Withheld);
        assert_eq!(e.quality.reasons["out_of_distribution"], 15);
        let why = e.withheld_reason.unwrap();
        assert!(why.starts_with(OOD_WITHHELD_CAUSE), "{why}");
        assert!(
            why.contains("15 of 20 frames") && why.contains("distance up to 4.40"),
            "{why}"
        );
        let o = e.ood.unwrap();
        assert_eq!((o.frames_beyond, o.threshold), (15, 2.5));

        // All pass one by one, but the median (2.2) is beyond 1.8.
        let e = run(&|i| 2.0 + (i % 5) as f64 / 10.0);
        assert_eq!(e.status, Status::Withheld);
        let why = e.withheld_reason.unwrap();
        assert!(
            why.starts_with(OOD_WITHHELD_CAUSE) && why.contains("median distance 2.20"),
            "{why}"
        );

        let e = run(&|i| 0.9 + i as f64 / 100.0);
        assert_eq!(e.status, Status::Ok);
        let o = e.ood.unwrap();
        assert!((o.distance_max - 1.09).abs() < 1e-12 && (o.distance_median - 0.995).abs() < 1e-12);
        assert_eq!(o.frames_beyond, 0);

        // Another reason leading: the usual reason, no OOD cause first.
        let mut w = RollingWindow::new(WindowConfig::default());
        w.set_ood_threshold(Some(thresholds));
        for i in 0..20 {
            w.push(frame(
                i,
                Verdict::Invalid(vec![QualityReason::Frozen.into()]),
            ));
        }
        let e = w.estimate(&tasks()).unwrap();
        assert!(e.ood.is_none(), "no frame ran");
        assert!(e.withheld_reason.unwrap().starts_with("only 0 of 20"));

        // Another view: refused by the view gate and beyond the A4C frames' statistics alike.
        // The view is named first, since moving the probe fixes it.
        let e = run_with(&|i| {
            let reasons = if i < 18 {
                vec![UnfitReason::NotA4c, UnfitReason::OutOfDistribution]
            } else {
                vec![UnfitReason::OutOfDistribution]
            };
            (Verdict::Invalid(reasons), 4.0)
        });
        let why = e.withheld_reason.unwrap();
        assert!(
            why.starts_with("not an apical four-chamber view: the view gate refused 18 of 20"),
            "{why}"
        );
        // More frames beyond the domain than refused as a view: the domain leads.
        let e = run_with(&|i| {
            let reasons = if i < 3 {
                vec![UnfitReason::NotA4c, UnfitReason::OutOfDistribution]
            } else {
                vec![UnfitReason::OutOfDistribution]
            };
            (Verdict::Invalid(reasons), 4.0)
        });
        assert!(e.withheld_reason.unwrap().starts_with(OOD_WITHHELD_CAUSE));
    }

    #[test]
    fn invalid_frames_below_the_limit_do_not_bias_the_mean() {
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20 {
            let v = if i < 3 {
                Verdict::Invalid(vec![QualityReason::LowSignal.into()])
            } else {
                valid(60.0, 30.0, 75.0)
            };
            w.push(frame(i, v));
        }
        let e = w.estimate(&tasks()).unwrap();
        assert_eq!(e.status, Status::Ok);
        assert_eq!(e.estimates["ef"].value, 60.0);
        assert_eq!(e.quality.reasons["low_signal"], 3);
    }

    /// Fills the window with 20 valid frames `step_ms` apart in media time (more than the
    /// sampler's 100 ms when sampled frames were lost).
    fn push_stretched(w: &mut RollingWindow, step_ms: u64) {
        for i in 0..20u64 {
            let mut f = frame(i, valid(50.0, 30.0, 60.0));
            f.media_time = Duration::from_millis(i * step_ms);
            w.push(f);
        }
    }

    #[test]
    fn a_window_stretched_by_dropped_frames_is_withheld() {
        let mut w = RollingWindow::new(WindowConfig::default());
        // Every other sampled frame lost: 20 frames over 3.8 s.
        push_stretched(&mut w, 200);
        let e = w.estimate(&tasks()).unwrap();
        assert_eq!(e.status, Status::Withheld);
        assert!(e.estimates.is_empty());
        let reason = e.withheld_reason.unwrap();
        assert!(reason.contains("span 3.8 s"));
        assert!(!reason.contains("inference too slow"), "{reason}");
    }

    #[test]
    fn slow_inference_is_named_as_the_cause_of_a_stretched_window() {
        let mut w = RollingWindow::new(WindowConfig::default());
        w.set_inference_cost(160.0);
        push_stretched(&mut w, 200);
        let reason = w.estimate(&tasks()).unwrap().withheld_reason.unwrap();
        assert!(
            reason.starts_with("inference too slow (160 ms per frame, budget 100 ms; "),
            "{reason}"
        );
        assert!(
            reason.contains("GPU") && reason.contains("int8") && reason.contains("smaller variant"),
            "{reason}"
        );
        // Within budget: the plain reason.
        w.set_inference_cost(40.0);
        let reason = w.estimate(&tasks()).unwrap().withheld_reason.unwrap();
        assert!(reason.starts_with("the window's 20 frames"), "{reason}");
    }

    /// One frame fitted the budget at warm-up (99 ms), but the inference queue dropped frames
    /// while the window filled: the stretched window still names slow inference, with the
    /// running cost and the drops; once the queue keeps up again the plain reason returns.
    #[test]
    fn inference_queue_drops_name_slow_inference_even_within_the_warm_up_budget() {
        let mut w = RollingWindow::new(WindowConfig::default());
        w.set_inference_cost(99.0);
        push_stretched(&mut w, 140);
        w.set_inference_backlog(104.4, 13);
        let reason = w.estimate(&tasks()).unwrap().withheld_reason.unwrap();
        assert!(
            reason.starts_with(
                "inference too slow (104 ms per frame, with the rest of the daemon on the same \
                 cores; 13 sampled frames dropped at the inference queue; "
            ),
            "{reason}"
        );
        assert!(
            reason.contains("GPU") && reason.contains("int8"),
            "{reason}"
        );
        assert!(reason.contains("span 2.7 s"), "{reason}");
        w.set_inference_backlog(95.0, 0);
        let reason = w.estimate(&tasks()).unwrap().withheld_reason.unwrap();
        assert!(reason.starts_with("the window's 20 frames"), "{reason}");
        // A warm-up cost over the budget keeps its own wording.
        w.set_inference_cost(160.0);
        w.set_inference_backlog(170.0, 4);
        let reason = w.estimate(&tasks()).unwrap().withheld_reason.unwrap();
        assert!(
            reason.starts_with("inference too slow (160 ms per frame, budget 100 ms; "),
            "{reason}"
        );
    }

    #[test]
    fn implausible_means_are_never_published() {
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20 {
            w.push(frame(i, valid(-1.0, 30.0, 60.0)));
        }
        let e = w.estimate(&tasks()).unwrap();
        assert_eq!(e.status, Status::Withheld);
        assert!(e.estimates.is_empty());
        assert!(e.withheld_reason.unwrap().contains("implausible ef -1.0 %"));
    }

    #[test]
    fn non_finite_output_is_never_published() {
        let mut w = RollingWindow::new(WindowConfig::default());
        for i in 0..20 {
            w.push(frame(
                i,
                valid(if i == 7 { f64::NAN } else { 50.0 }, 1.0, 2.0),
            ));
        }
        let e = w.estimate(&tasks()).unwrap();
        assert_eq!(e.status, Status::Withheld);
        assert!(e.estimates.is_empty());
    }
}
