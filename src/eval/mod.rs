//! Held-out evaluation (`echonet eval`): every clip of a dataset through the same path as
//! `echonet predict` (20 frames at 10 fps from the clip's start), each published estimate paired
//! with the clip's label of its base task, and the paper's metrics per estimator. Clips that are
//! withheld or refused are counted with their reasons, never dropped silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::WindowConfig;
use crate::dataset::{ClipRecord, ClipSource, Split};
use crate::frame::Frame;
use crate::model::{EchoNetModel, TaskKind, TaskSpec};
use crate::offline::{predict_clip, ClipResult, ClipStatus};
use crate::preprocess::{PreprocessConfig, Preprocessor};

pub mod metrics;
pub mod plots;

use metrics::{BinaryMetrics, RegressionMetrics};

/// Schema of the `echonet eval --json` report.
pub const REPORT_SCHEMA: &str = "echonet.eval/1";

/// Suffixes of estimates derived from another task's heads: an estimate `X<suffix>` compares
/// with label `X` when the clip has no label named like the estimate itself.
pub const DERIVED_SUFFIXES: [&str; 2] = ["_volume_curve", "_from_volumes"];

/// The task an estimate estimates: `ef_volume_curve` and `ef_from_volumes` → `ef`; any other
/// name is its own task.
pub fn base_task(estimate: &str) -> &str {
    DERIVED_SUFFIXES
        .iter()
        .find_map(|s| estimate.strip_suffix(s))
        .filter(|b| !b.is_empty())
        .unwrap_or(estimate)
}

/// An estimate's name in plain words, for plot titles: `ef_volume_curve` -> "Ejection fraction
/// (volume curve)". Unknown names are returned with underscores as spaces.
pub fn plain_name(estimate: &str) -> String {
    let base = base_task(estimate);
    let words = match base {
        "ef" => "Ejection fraction".to_string(),
        "esv" => "End-systolic volume".to_string(),
        "edv" => "End-diastolic volume".to_string(),
        "lv_volume" => "LV volume".to_string(),
        other => other.replace('_', " "),
    };
    match estimate[base.len()..].trim_start_matches('_') {
        "" => words,
        rest => format!("{words} ({})", rest.replace('_', " ")),
    }
}

/// Below this many clips, the table says that R² is not to be relied on.
pub const R2_MIN_CLIPS: usize = 30;

/// The label an estimate compares with, and its value: the label named like the estimate if the
/// clip has it, else the label of its base task.
pub fn truth_for<'a>(estimate: &'a str, labels: &BTreeMap<String, f64>) -> Option<(&'a str, f64)> {
    if let Some(v) = labels.get(estimate) {
        return Some((estimate, *v));
    }
    let base = base_task(estimate);
    labels.get(base).map(|v| (base, *v))
}

/// Regression or binary: the manifest's kind of the task named like the estimate, else of its
/// base task; estimates of no task of the bundle (e.g. `ef_from_volumes` without an `ef` head)
/// are regressions.
pub fn kind_of(estimate: &str, tasks: &[TaskSpec]) -> TaskKind {
    let find = |name: &str| tasks.iter().find(|t| t.name == name).map(|t| t.kind);
    find(estimate)
        .or_else(|| find(base_task(estimate)))
        .unwrap_or(TaskKind::Regression)
}

/// One estimate of one clip with the truth it is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub prediction: f64,
    /// None when the clip has no label for the estimate's task.
    pub truth: Option<f64>,
    /// The label compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub unit: String,
}

/// What became of one clip: its status, and for an `ok` clip its estimates paired with truths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipEval {
    pub id: String,
    pub patient: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// As `echonet predict`: serialised `ok`, `withheld` or `refused`.
    pub status: ClipStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Estimate name → prediction and truth; empty unless the clip is `ok`.
    pub predictions: BTreeMap<String, Paired>,
    /// For a clip labelled `view_a4c`: what the view gate made of its frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ClipView>,
}

/// The view gate on one clip whose view is known.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipView {
    /// The truth: an apical four-chamber clip.
    pub a4c: bool,
    /// Sampled frames that reached the model (fit, or refused only by the view gate).
    pub frames: usize,
    /// Of those, the frames the view gate refused (`not_a4c`).
    pub not_a4c: usize,
}

impl ClipView {
    /// The gate's call on the whole clip: not A4C when it refused most of the frames.
    pub fn called_a4c(&self) -> bool {
        2 * self.not_a4c < self.frames
    }
}

/// How well the view gate separates A4C clips from others, at the configured threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewGateReport {
    pub a4c_clips: usize,
    pub other_clips: usize,
    /// A4C frames let through, of all A4C frames that reached the model.
    pub a4c_frames_passed: usize,
    pub a4c_frames: usize,
    /// Frames of other views refused as `not_a4c`, of all such frames that reached the model.
    pub other_frames_refused: usize,
    pub other_frames: usize,
    /// Share of frames the gate called right.
    pub frame_accuracy: f64,
    /// Share of clips called right (a clip is called not A4C when most of its frames are).
    pub clip_accuracy: f64,
}

/// The view gate's figures over the clips with a known view; `None` when no clip has one or no
/// frame reached the model.
pub fn view_gate(clips: &[ClipEval]) -> Option<ViewGateReport> {
    let views: Vec<&ClipView> = clips.iter().filter_map(|c| c.view.as_ref()).collect();
    let frames: usize = views.iter().map(|v| v.frames).sum();
    if frames == 0 {
        return None;
    }
    let (a4c, other): (Vec<&ClipView>, Vec<&ClipView>) = views.iter().partition(|v| v.a4c);
    let a4c_frames: usize = a4c.iter().map(|v| v.frames).sum();
    let a4c_frames_passed: usize = a4c.iter().map(|v| v.frames - v.not_a4c).sum();
    let other_frames: usize = other.iter().map(|v| v.frames).sum();
    let other_frames_refused: usize = other.iter().map(|v| v.not_a4c).sum();
    let counted: Vec<&&ClipView> = views.iter().filter(|v| v.frames > 0).collect();
    let clips_right = counted.iter().filter(|v| v.called_a4c() == v.a4c).count();
    Some(ViewGateReport {
        a4c_clips: a4c.len(),
        other_clips: other.len(),
        a4c_frames_passed,
        a4c_frames,
        other_frames_refused,
        other_frames,
        frame_accuracy: (a4c_frames_passed + other_frames_refused) as f64 / frames as f64,
        clip_accuracy: clips_right as f64 / counted.len().max(1) as f64,
    })
}

impl ClipEval {
    /// Pairs an offline result with the clip's labels. Only an `ok` result's estimates count.
    pub fn pair(record: &ClipRecord, result: &ClipResult) -> Self {
        let predictions = if result.status == ClipStatus::Ok {
            result
                .estimates
                .iter()
                .map(|(name, e)| {
                    let truth = truth_for(name, &record.labels);
                    (
                        name.clone(),
                        Paired {
                            prediction: e.value,
                            truth: truth.map(|t| t.1),
                            label: truth.map(|t| t.0.to_string()),
                            unit: e.unit.clone(),
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let view = record.labels.get("view_a4c").map(|&truth| {
            let gated = |f: &&crate::offline::FrameOutcome| f.unfit.iter().any(|r| r == "not_a4c");
            ClipView {
                a4c: truth == 1.0,
                frames: result
                    .frames
                    .iter()
                    .filter(|f| f.outputs.is_some() || gated(f))
                    .count(),
                not_a4c: result.frames.iter().filter(gated).count(),
            }
        });
        Self {
            id: record.id.clone(),
            patient: record.patient.clone(),
            split: record.split,
            status: result.status,
            reason: result.reason.clone(),
            predictions,
            view,
        }
    }
}

/// The clip's frame rate as its source states it, else from its frames' media times.
pub fn source_fps(record: &ClipRecord, frames: &[Frame]) -> Option<f64> {
    match &record.source {
        ClipSource::Phantom { params, .. } => Some(params.fps),
        ClipSource::ImageFolder { fps, .. } => Some(*fps),
        ClipSource::Avi { fps: Some(fps), .. } => Some(*fps),
        ClipSource::Avi { fps: None, .. } | ClipSource::Dicom(_) => {
            let (first, last) = (frames.first()?, frames.last()?);
            let span = last.media_time.checked_sub(first.media_time)?.as_secs_f64();
            (frames.len() > 1 && span > 0.0).then(|| (frames.len() - 1) as f64 / span)
        }
    }
}

/// Runs one clip as `echonet predict` would (a fresh preprocessor per clip, told the clip's
/// frame rate) and pairs its estimates with the clip's labels. A clip whose frames cannot be
/// loaded is refused with the reason.
pub fn evaluate_clip(
    record: &ClipRecord,
    model: &EchoNetModel,
    preprocess: &PreprocessConfig,
    window: &WindowConfig,
    view_threshold: f64,
) -> ClipEval {
    let result = match record.load_frames() {
        Err(e) => ClipResult::refused(&record.id, e.to_string()),
        Ok(frames) => match Preprocessor::new(preprocess.clone()) {
            Err(e) => ClipResult::refused(&record.id, format!("preprocessing settings: {e}")),
            Ok(mut pre) => {
                pre.set_source_fps(source_fps(record, &frames));
                predict_clip(&record.id, &frames, model, &mut pre, window, view_threshold)
            }
        },
    };
    ClipEval::pair(record, &result)
}

/// How many clips were evaluated and what became of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub clips: usize,
    pub ok: usize,
    pub withheld: usize,
    pub refused: usize,
    /// Withheld and refused clips by reason.
    pub withheld_reasons: BTreeMap<String, usize>,
    pub refused_reasons: BTreeMap<String, usize>,
}

/// The metrics of one estimator over the `ok` clips that have its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorReport {
    /// The label compared with (the base task's).
    pub label: String,
    pub kind: TaskKind,
    pub unit: String,
    /// Pairs the metrics are over.
    pub n: usize,
    /// `ok` clips with this estimate but no label for it.
    pub missing_truth: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<BinaryMetrics>,
    /// Why the metrics are undefined (one class, constant truth, no pairs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Predictions and truths of one estimator, in clip order, over the clips that have both.
pub fn pairs_of(clips: &[ClipEval], estimate: &str) -> (Vec<f64>, Vec<f64>) {
    clips
        .iter()
        .filter_map(|c| c.predictions.get(estimate))
        .filter_map(|p| p.truth.map(|t| (p.prediction, t)))
        .unzip()
}

/// Counts the clips and computes every estimator's metrics.
pub fn summarise(
    clips: &[ClipEval],
    tasks: &[TaskSpec],
) -> (Counts, BTreeMap<String, EstimatorReport>) {
    let mut counts = Counts {
        clips: clips.len(),
        ..Default::default()
    };
    for c in clips {
        let reason = || c.reason.clone().unwrap_or_else(|| "no reason given".into());
        match c.status {
            ClipStatus::Ok => counts.ok += 1,
            ClipStatus::Refused => {
                counts.refused += 1;
                *counts.refused_reasons.entry(reason()).or_default() += 1;
            }
            ClipStatus::Withheld => {
                counts.withheld += 1;
                *counts.withheld_reasons.entry(reason()).or_default() += 1;
            }
        }
    }
    let mut names: BTreeMap<&str, &Paired> = BTreeMap::new();
    for c in clips {
        for (name, p) in &c.predictions {
            names.entry(name).or_insert(p);
        }
    }
    let mut reports = BTreeMap::new();
    for (name, first) in names {
        let (predictions, truths) = pairs_of(clips, name);
        let missing_truth = clips
            .iter()
            .filter_map(|c| c.predictions.get(name))
            .filter(|p| p.truth.is_none())
            .count();
        let kind = kind_of(name, tasks);
        let mut report = EstimatorReport {
            label: clips
                .iter()
                .filter_map(|c| c.predictions.get(name)?.label.clone())
                .next()
                .unwrap_or_else(|| base_task(name).to_string()),
            kind,
            unit: first.unit.clone(),
            n: predictions.len(),
            missing_truth,
            regression: None,
            binary: None,
            error: None,
        };
        if predictions.is_empty() {
            report.error = Some(format!(
                "no clip has a {:?} label to compare with",
                base_task(name)
            ));
        } else {
            match kind {
                TaskKind::Regression => match metrics::regression(&predictions, &truths) {
                    Ok(m) => report.regression = Some(m),
                    Err(e) => report.error = Some(e.to_string()),
                },
                TaskKind::Binary => match metrics::binary(&predictions, &truths) {
                    Ok(m) => report.binary = Some(m),
                    Err(e) => report.error = Some(e.to_string()),
                },
            }
        }
        reports.insert(name.to_string(), report);
    }
    (counts, reports)
}

/// The model a report is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The bundle's content hash (`sha256:...`).
    pub id: String,
    pub bundle: String,
    pub intended_use: String,
    pub tasks: Vec<String>,
    /// The out-of-distribution gate: `on: threshold ...` or `off: ...` (older reports: empty).
    #[serde(default)]
    pub ood_gate: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub origin: String,
    pub kind: String,
    /// "test", "val", "train" or "all".
    pub split: String,
}

/// `echonet eval --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub schema: String,
    pub model: ModelInfo,
    pub dataset: DatasetInfo,
    pub counts: Counts,
    pub estimators: BTreeMap<String, EstimatorReport>,
    /// The view gate on clips with a known view (`view_a4c` label), when the bundle has the
    /// `view_a4c` head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_gate: Option<ViewGateReport>,
    /// PNG files written by `--plots`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plots: Vec<String>,
    pub clips: Vec<ClipEval>,
}

impl EvalReport {
    pub fn new(
        model: ModelInfo,
        dataset: DatasetInfo,
        clips: Vec<ClipEval>,
        tasks: &[TaskSpec],
    ) -> Self {
        let (counts, estimators) = summarise(&clips, tasks);
        let gate = tasks
            .iter()
            .any(|t| t.name == "view_a4c" && t.kind == TaskKind::Binary);
        Self {
            schema: REPORT_SCHEMA.into(),
            model,
            dataset,
            counts,
            estimators,
            view_gate: if gate { view_gate(&clips) } else { None },
            plots: Vec::new(),
            clips,
        }
    }

    /// A plain-text table: one row per estimator.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let c = &self.counts;
        let _ = writeln!(
            s,
            "model {} on {} (split {}): {} clips, {} ok, {} withheld, {} refused",
            self.model.id,
            self.dataset.origin,
            self.dataset.split,
            c.clips,
            c.ok,
            c.withheld,
            c.refused
        );
        for (what, reasons) in [
            ("withheld", &c.withheld_reasons),
            ("refused", &c.refused_reasons),
        ] {
            // One line per cause (a reason's text before its first ':'), with the first
            // full reason as the example: reasons carry each clip's own numbers, so 13 clips of
            // another view would otherwise be 13 lines (the JSON keeps every reason).
            let mut causes: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
            for (r, n) in reasons {
                let cause = r.split(": ").next().unwrap_or(r);
                causes.entry(cause).or_insert((0, r)).0 += n;
            }
            for (cause, (n, example)) in causes {
                if cause == example {
                    let _ = writeln!(s, "  {what} {n}: {cause}");
                } else {
                    let _ = writeln!(s, "  {what} {n}: {cause} (e.g. {example})");
                }
            }
        }
        // Columns as wide as their longest entry (binary heads have long names and units).
        let widest = |head: &str, cells: Vec<usize>| cells.into_iter().fold(head.len(), usize::max);
        let (lw, uw) = (
            widest(
                "label",
                self.estimators.values().map(|r| r.label.len()).collect(),
            ),
            widest(
                "unit",
                self.estimators.values().map(|r| r.unit.len()).collect(),
            ),
        );
        let nw = widest(
            "estimator",
            self.estimators.keys().map(String::len).collect(),
        );
        let _ = writeln!(
            s,
            "{:<nw$} {:<lw$} {:<uw$} {:>5} {:>8} {:>9} {:>13} {:>9} {:>7} {:>7}",
            "estimator", "label", "unit", "n", "R2", "MAE", "mean-pred MAE", "bias", "AUC", "F1"
        );
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        for (name, r) in &self.estimators {
            let g = r.regression.as_ref();
            let b = r.binary.as_ref();
            let _ = write!(
                s,
                "{:<nw$} {:<lw$} {:<uw$} {:>5} {:>8} {:>9} {:>13} {:>9} {:>7} {:>7}",
                name,
                r.label,
                if r.unit.is_empty() { "-" } else { &r.unit },
                r.n,
                f(g.map(|m| m.r2), 3),
                f(g.map(|m| m.mae), 2),
                f(g.map(|m| m.mean_prediction_mae), 2),
                f(g.map(|m| m.bias), 2),
                f(b.map(|m| m.auc), 3),
                f(b.map(|m| m.f1), 3),
            );
            if let Some(e) = &r.error {
                let _ = write!(s, "  ({e})");
            }
            if let Some(b) = b {
                let _ = write!(s, "  [{} positive, {} negative]", b.positives, b.negatives);
            }
            if r.missing_truth > 0 {
                let _ = write!(s, "  [{} clips without a label]", r.missing_truth);
            }
            s.push('\n');
        }
        if let Some(g) = &self.view_gate {
            let _ = writeln!(
                s,
                "view gate: {}/{} A4C frames passed, {}/{} frames of other views refused \
                 (frame accuracy {:.3}); clips called right {:.3} ({} A4C, {} other)",
                g.a4c_frames_passed,
                g.a4c_frames,
                g.other_frames_refused,
                g.other_frames,
                g.frame_accuracy,
                g.clip_accuracy,
                g.a4c_clips,
                g.other_clips
            );
        }
        let _ = writeln!(
            s,
            "MAE, mean-pred MAE (the error of always predicting the mean) and bias are in each \
             row's unit; R2, AUC and F1 have none."
        );
        if let Some(n) = self
            .estimators
            .values()
            .filter(|r| r.regression.is_some())
            .map(|r| r.n)
            .filter(|n| *n < R2_MIN_CLIPS)
            .min()
        {
            let _ = writeln!(
                s,
                "caution: R2 from as few as {n} clips (under {R2_MIN_CLIPS}) can swing widely \
                 with one clip; read it with MAE and the Bland-Altman limits."
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_tasks_and_truths() {
        assert_eq!(base_task("ef_volume_curve"), "ef");
        assert_eq!(base_task("ef_from_volumes"), "ef");
        assert_eq!(base_task("edv_volume_curve"), "edv");
        assert_eq!(base_task("pacemaker"), "pacemaker");
        assert_eq!(base_task("_from_volumes"), "_from_volumes");
        let labels = BTreeMap::from([
            ("ef".to_string(), 55.0),
            ("esv_volume_curve".to_string(), 40.0),
        ]);
        assert_eq!(truth_for("ef", &labels), Some(("ef", 55.0)));
        assert_eq!(truth_for("ef_from_volumes", &labels), Some(("ef", 55.0)));
        assert_eq!(
            truth_for("esv_volume_curve", &labels),
            Some(("esv_volume_curve", 40.0))
        );
        assert_eq!(truth_for("edv_volume_curve", &labels), None);
    }

    fn clip(id: &str, status: &str, preds: &[(&str, f64, Option<f64>)]) -> ClipEval {
        ClipEval {
            id: id.into(),
            patient: id.into(),
            split: None,
            status: serde_json::from_value(serde_json::json!(status)).unwrap(),
            reason: (status != "ok").then(|| format!("{status} because")),
            view: None,
            predictions: preds
                .iter()
                .map(|(n, p, t)| {
                    (
                        n.to_string(),
                        Paired {
                            prediction: *p,
                            truth: *t,
                            label: t.map(|_| base_task(n).to_string()),
                            unit: "%".into(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn summarise_counts_and_pairs() {
        let tasks: Vec<TaskSpec> = ["ef"]
            .iter()
            .filter_map(|n| TaskSpec::echonet_default(n))
            .collect();
        let clips = vec![
            clip(
                "a",
                "ok",
                &[
                    ("ef", 50.0, Some(55.0)),
                    ("ef_from_volumes", 1.0, Some(55.0)),
                ],
            ),
            clip(
                "b",
                "ok",
                &[("ef", 60.0, Some(65.0)), ("pacemaker", 0.3, None)],
            ),
            clip("c", "withheld", &[]),
            clip("d", "refused", &[]),
            clip("e", "ok", &[("ef", 30.0, None)]),
        ];
        let (counts, reports) = summarise(&clips, &tasks);
        assert_eq!(
            (counts.clips, counts.ok, counts.withheld, counts.refused),
            (5, 3, 1, 1)
        );
        assert_eq!(counts.withheld_reasons["withheld because"], 1);
        assert_eq!(counts.refused_reasons["refused because"], 1);
        let ef = &reports["ef"];
        assert_eq!((ef.n, ef.missing_truth), (2, 1));
        assert_eq!(
            ef.regression.as_ref().unwrap(),
            &metrics::regression(&[50.0, 60.0], &[55.0, 65.0]).unwrap()
        );
        // One pair: constant truth, R² undefined, said so.
        let v = &reports["ef_from_volumes"];
        assert!(v.regression.is_none());
        assert!(v.error.as_deref().unwrap().contains("R² undefined"));
        let pm = &reports["pacemaker"];
        assert_eq!(pm.n, 0);
        assert!(pm.error.as_deref().unwrap().contains("pacemaker"));
        let table = EvalReport::new(
            ModelInfo {
                id: "sha256:x".into(),
                bundle: "b".into(),
                intended_use: "test".into(),
                tasks: vec!["ef".into()],
                ood_gate: String::new(),
            },
            DatasetInfo {
                origin: "o".into(),
                kind: "phantom".into(),
                split: "all".into(),
            },
            clips,
            &tasks,
        )
        .table();
        assert!(
            table.contains("5 clips, 3 ok, 1 withheld, 1 refused"),
            "{table}"
        );
        assert!(table.lines().any(|l| l.starts_with("ef ")), "{table}");
        // Units stated, and R² from two clips comes with a caution.
        assert!(table.contains(" unit "), "{table}");
        assert!(
            table.contains("caution: R2 from as few as 2 clips"),
            "{table}"
        );
    }

    #[test]
    fn table_groups_reasons_by_cause_and_fits_long_names() {
        let tasks: Vec<TaskSpec> = ["ef", "lv_wall_normal"]
            .iter()
            .filter_map(|n| TaskSpec::echonet_default(n))
            .collect();
        let mut clips: Vec<ClipEval> = (0..4)
            .map(|i| {
                clip(
                    &format!("c{i}"),
                    "ok",
                    &[
                        ("ef", 50.0 + i as f64, Some(52.0 + 2.0 * i as f64)),
                        ("lv_wall_normal", 0.2 * i as f64, Some((i % 2) as f64)),
                    ],
                )
            })
            .collect();
        for (id, why) in [
            ("w1", "not an apical four-chamber view: 20 of 20 frames"),
            ("w2", "not an apical four-chamber view: 18 of 20 frames"),
            ("w3", "source stalled"),
        ] {
            let mut c = clip(id, "withheld", &[]);
            c.reason = Some(why.into());
            clips.push(c);
        }
        let model = ModelInfo {
            id: "sha256:x".into(),
            bundle: "b".into(),
            intended_use: "test".into(),
            tasks: vec!["ef".into(), "lv_wall_normal".into()],
            ood_gate: String::new(),
        };
        let dataset = DatasetInfo {
            origin: "o".into(),
            kind: "phantom".into(),
            split: "all".into(),
        };
        let table = EvalReport::new(model, dataset, clips, &tasks).table();
        assert!(
            table.contains(
                "  withheld 2: not an apical four-chamber view (e.g. not an apical four-chamber \
                 view: 18 of 20 frames)"
            ),
            "{table}"
        );
        assert!(table.contains("  withheld 1: source stalled\n"), "{table}");
        // Every row's fixed columns are as wide as the header's, long names included.
        let lines: Vec<&str> = table.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("estimator"))
            .unwrap();
        let width = lines[header].len();
        let rows = &lines[header + 1..header + 1 + 2];
        assert!(
            rows.iter().any(|r| r.starts_with("lv_wall_normal ")),
            "{table}"
        );
        for row in rows {
            assert!(
                row.len() >= width && (row.len() == width || row[width..].starts_with("  ")),
                "misaligned:\n{}\n{row}",
                lines[header]
            );
        }
    }

    #[test]
    fn view_gate_counts_frames_and_calls_clips() {
        let with_view = |id: &str, a4c: bool, frames: usize, not_a4c: usize| ClipEval {
            view: Some(ClipView {
                a4c,
                frames,
                not_a4c,
            }),
            ..clip(id, "ok", &[])
        };
        let clips = vec![
            with_view("a", true, 20, 0),
            with_view("b", true, 20, 12), // most frames refused: called wrongly
            with_view("c", false, 20, 20),
            with_view("d", false, 10, 4), // most frames passed: called wrongly
            clip("e", "refused", &[]),    // no view label: not counted
        ];
        let g = view_gate(&clips).unwrap();
        assert_eq!((g.a4c_clips, g.other_clips), (2, 2));
        assert_eq!((g.a4c_frames_passed, g.a4c_frames), (28, 40));
        assert_eq!((g.other_frames_refused, g.other_frames), (24, 30));
        assert!((g.frame_accuracy - 52.0 / 70.0).abs() < 1e-12);
        assert!((g.clip_accuracy - 0.5).abs() < 1e-12);
        assert_eq!(view_gate(&clips[4..]), None, "no clip with a view");
    }

    #[test]
    fn plain_names_for_plot_titles() {
        assert_eq!(plain_name("ef"), "Ejection fraction");
        assert_eq!(
            plain_name("ef_volume_curve"),
            "Ejection fraction (volume curve)"
        );
        assert_eq!(
            plain_name("esv_from_volumes"),
            "End-systolic volume (from volumes)"
        );
        assert_eq!(plain_name("view_a4c"), "view a4c");
    }
}
