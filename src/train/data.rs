//! Training frames: each clip's frames sampled at 10 fps (as the runtime samples them) plus any
//! frame with its own label, run through the runtime's own preprocessing (sector mask, crop,
//! resize, normalisation), and kept in memory with their labels and their patient. Splitting is
//! by patient, never by frame.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::dataset::{ClipRecord, Dataset, Split};
use crate::model::InputSpec;
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::sampler::{Decision, Sampler};

use super::augment::TrainRng;

/// One prepared frame and what is known about it.
#[derive(Debug, Clone)]
pub struct TrainFrame {
    /// Index of its clip in [`TrainData::clips`].
    pub clip: usize,
    /// Source frame index in the clip.
    pub frame: usize,
    /// Media time in the clip, seconds.
    pub time_s: f64,
    /// `height x width` normalised grey pixels.
    pub pixels: Vec<f32>,
    /// Label per task (in task units), `None` where unknown.
    pub labels: Vec<Option<f64>>,
}

/// A clip's identity and labels, without its frames.
#[derive(Debug, Clone)]
pub struct ClipInfo {
    pub id: String,
    pub patient: String,
    pub split: Option<Split>,
    pub labels: BTreeMap<String, f64>,
}

#[derive(Debug, Default)]
pub struct TrainData {
    pub clips: Vec<ClipInfo>,
    pub frames: Vec<TrainFrame>,
    /// Frames the quality gate or the decoder rejected, by reason.
    pub rejected: BTreeMap<String, usize>,
}

/// How many frames to take from a clip.
#[derive(Debug, Clone, Copy)]
pub struct FramePick {
    /// Frames sampled at 10 fps from the clip's start (the paper's 20 by default).
    pub sampled: usize,
}

/// One clip's prepared frames and its rejected frames by reason.
type PreparedClip = (Vec<TrainFrame>, BTreeMap<String, usize>);

/// Source frame indices to prepare: the 10 fps samples, plus frames with their own labels when
/// labels are sparse (EchoNet-Dynamic's traced frames).
fn pick_indices(clip: &ClipRecord, times: &[f64], pick: FramePick) -> Vec<usize> {
    let mut sampler = Sampler::paper();
    let mut chosen = BTreeSet::new();
    for (i, t) in times.iter().enumerate() {
        if chosen.len() >= pick.sampled {
            break;
        }
        if sampler.offer(std::time::Duration::from_secs_f64(*t)) == Decision::Take {
            chosen.insert(i);
        }
    }
    if clip.frame_labels.len() < times.len() {
        chosen.extend(clip.frame_labels.keys().filter(|k| **k < times.len()));
    }
    chosen.into_iter().collect()
}

/// Loads, samples and prepares every clip (in parallel over clips) for `tasks`.
pub fn prepare(
    dataset: &Dataset,
    tasks: &[String],
    spec: &InputSpec,
    pick: FramePick,
) -> Result<TrainData, crate::dataset::DatasetError> {
    let per_clip: Vec<Result<PreparedClip, _>> = dataset
        .clips
        .par_iter()
        .enumerate()
        .map(|(ci, clip)| prepare_clip(ci, clip, tasks, spec, pick))
        .collect();
    let mut data = TrainData::default();
    for (clip, result) in dataset.clips.iter().zip(per_clip) {
        let (frames, rejected) = result?;
        data.frames.extend(frames);
        for (r, n) in rejected {
            *data.rejected.entry(r).or_default() += n;
        }
        data.clips.push(ClipInfo {
            id: clip.id.clone(),
            patient: clip.patient.clone(),
            split: clip.split,
            labels: clip.labels.clone(),
        });
    }
    Ok(data)
}

fn prepare_clip(
    ci: usize,
    clip: &ClipRecord,
    tasks: &[String],
    spec: &InputSpec,
    pick: FramePick,
) -> Result<PreparedClip, crate::dataset::DatasetError> {
    let frames = clip.load_frames()?;
    let times: Vec<f64> = frames.iter().map(|f| f.media_time.as_secs_f64()).collect();
    let wanted = pick_indices(clip, &times, pick);
    let mut pre = Preprocessor::new(PreprocessConfig::default()).map_err(|e| {
        crate::dataset::DatasetError::Invalid {
            path: clip.id.clone().into(),
            what: e.to_string(),
        }
    })?;
    // Without a declared imaging region the sector is found from motion over many consecutive
    // frames (as the live detector does): a first pass over the whole clip finds it, so the
    // sampled frames, even the first, are prepared with the sector in force.
    if frames.iter().any(|f| f.geometry.regions.is_empty()) {
        for f in &frames {
            let _ = pre.process(f, spec);
        }
    }
    let mut out = Vec::new();
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &wanted {
        let processed = match pre.process(&frames[i], spec) {
            Ok(p) => p,
            Err(e) => {
                *rejected.entry(format!("preprocess: {e}")).or_default() += 1;
                continue;
            }
        };
        let Some(input) = processed.input else {
            for r in &processed.quality.reasons {
                *rejected.entry(r.as_str().to_string()).or_default() += 1;
            }
            continue;
        };
        let labels = tasks
            .iter()
            .map(|t| {
                clip.frame_labels
                    .get(&i)
                    .and_then(|l| l.get(t))
                    .or_else(|| clip.labels.get(t))
                    .copied()
            })
            .collect::<Vec<_>>();
        if labels.iter().all(Option::is_none) {
            continue;
        }
        out.push(TrainFrame {
            clip: ci,
            frame: i,
            time_s: times[i],
            pixels: input.data,
            labels,
        });
    }
    Ok((out, rejected))
}

/// Patients for training and for model selection.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientSplit {
    pub train: Vec<String>,
    pub val: Vec<String>,
}

/// The dataset's own train/val split when it declares one (test clips are never used); else
/// `val_fraction` of the patients, drawn with `seed`, held out.
pub fn split_patients(data: &TrainData, val_fraction: f64, seed: u64) -> PatientSplit {
    let declared = data.clips.iter().any(|c| c.split.is_some());
    let mut train = BTreeSet::new();
    let mut val = BTreeSet::new();
    if declared {
        for c in &data.clips {
            match c.split {
                Some(Split::Train) => {
                    train.insert(c.patient.clone());
                }
                Some(Split::Val) => {
                    val.insert(c.patient.clone());
                }
                _ => {}
            }
        }
        // A patient in both declared splits is kept out of training.
        train.retain(|p| !val.contains(p));
    } else {
        let mut patients: Vec<String> = data
            .clips
            .iter()
            .map(|c| c.patient.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut rng = TrainRng::new(seed ^ 0x0053_504c_4954);
        rng.shuffle(&mut patients);
        let n_val = ((patients.len() as f64 * val_fraction).round() as usize).clamp(
            usize::from(patients.len() > 1),
            patients.len().saturating_sub(1),
        );
        val.extend(patients.drain(..n_val));
        train.extend(patients);
    }
    PatientSplit {
        train: train.into_iter().collect(),
        val: val.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(patients: &[&str], splits: &[Option<Split>]) -> TrainData {
        TrainData {
            clips: patients
                .iter()
                .zip(splits)
                .enumerate()
                .map(|(i, (p, s))| ClipInfo {
                    id: format!("c{i}"),
                    patient: p.to_string(),
                    split: *s,
                    labels: BTreeMap::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn split_is_by_patient_and_ten_percent() {
        let names: Vec<String> = (0..50).map(|i| format!("p{}", i / 2)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = data(&refs, &[None; 50]);
        let s = split_patients(&d, 0.1, 4);
        assert_eq!(s.val.len() + s.train.len(), 25);
        assert_eq!(s.val.len(), 3, "10 % of 25 patients, rounded");
        assert!(s.val.iter().all(|p| !s.train.contains(p)));
        assert_eq!(s, split_patients(&d, 0.1, 4), "deterministic by seed");
        assert_ne!(s.val, split_patients(&d, 0.1, 5).val);
    }

    #[test]
    fn declared_splits_win_and_test_is_never_used() {
        let d = data(
            &["a", "b", "c", "d"],
            &[
                Some(Split::Train),
                Some(Split::Val),
                Some(Split::Test),
                Some(Split::Train),
            ],
        );
        let s = split_patients(&d, 0.5, 1);
        assert_eq!(s.train, vec!["a", "d"]);
        assert_eq!(s.val, vec!["b"]);
    }
}
