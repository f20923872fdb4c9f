//! The last step of `echonet train`: the written bundle's out-of-distribution statistics
//! (`model::ood`), from the training patients' frames (mean and directions) and the validation
//! patients' frames (threshold), as the runtime sees them: the frames are the ones training
//! prepared with the runtime's `Preprocessor` (unaugmented), the features those of the bundle's
//! inference model, the one the daemon runs.

use std::collections::BTreeSet;
use std::path::Path;

use super::data::{PatientSplit, TrainData};
use super::TrainError;
use crate::dataset::phantom::VIEW_TASK;
use crate::model::bundle::{read_bundle, write_bundle_sections};
use crate::model::ood::{self, FitSettings, OodStats};
use crate::model::{EchoNetModel, RunOptions};

/// At most this many training frames (evenly spread) feed the statistics: 7200 frames of 224
/// features fit in seconds; a full-width network's 1792 features on a large dataset would not,
/// and the mean and 32 directions are settled long before.
pub const MAX_TRAIN_FRAMES: usize = 8000;
/// At most this many validation frames set the threshold.
pub const MAX_VALIDATION_FRAMES: usize = 4000;

/// Fits the statistics onto the bundle at `path` and rewrites it with them; returns them.
pub fn record_ood_statistics(
    path: &Path,
    data: &TrainData,
    split: &PatientSplit,
    origin: &str,
) -> Result<OodStats, TrainError> {
    let fail = |what: String| TrainError::Unsupported(format!("{}: {what}", path.display()));
    let bundle = read_bundle(path).map_err(|e| fail(e.to_string()))?;
    let model =
        EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).map_err(|e| fail(e.to_string()))?;
    let spec = &bundle.manifest.input;
    let dims = (spec.channels, spec.height, spec.width);
    // Frames and their clips, every n-th when there are more than `cap`.
    let pick = |patients: &[String], cap: usize| -> (Vec<&[f32]>, Vec<usize>) {
        let set: BTreeSet<&str> = patients.iter().map(String::as_str).collect();
        let all: Vec<_> = data
            .frames
            .iter()
            .filter(|f| set.contains(data.clips[f.clip].patient.as_str()))
            // The gate's domain is the view the heads were trained for; clips labelled as
            // another view are the view gate's to refuse, and would widen the thresholds.
            .filter(|f| data.clips[f.clip].labels.get(VIEW_TASK) != Some(&0.0))
            .collect();
        let step = all.len().div_ceil(cap).max(1);
        all.into_iter()
            .step_by(step)
            .map(|f| (f.pixels.as_slice(), f.clip))
            .unzip()
    };
    let features = |frames: &[&[f32]]| {
        ood::features_of(&model, frames, dims, 16).map_err(|e| fail(e.to_string()))
    };
    let train = features(&pick(&split.train, MAX_TRAIN_FRAMES).0)?;
    let (val_frames, val_clips) = pick(&split.val, MAX_VALIDATION_FRAMES);
    let val = features(&val_frames)?;
    let tool = format!(
        "echonet train {} ({} features)",
        env!("CARGO_PKG_VERSION"),
        model.precision()
    );
    let stats = OodStats::fit(
        &train,
        &val,
        &val_clips,
        &FitSettings::default(),
        origin,
        &tool,
    )
    .map_err(|e| fail(format!("OOD statistics: {e}")))?;
    write_bundle_sections(
        path,
        &bundle.manifest,
        &bundle.store.snapshot(),
        bundle.quantization.as_ref(),
        Some(&stats),
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(stats)
}
