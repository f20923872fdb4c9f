//! Offline studies (`echonet predict`): one result per clip, from the paper's 20 frames at 10 fps
//! taken from the clip's start, through the same sampler, preprocessing, inference step
//! (`pipeline::InferenceStep`, view and out-of-distribution gates included, the view gate at
//! the profile's `pipeline.view_threshold`) and window as the live daemon (the clip's
//! usable frames run as one batch). A clip too short for 20 frames at 10 fps, or with too few
//! usable frames, is withheld with its reasons; a file that cannot be read is refused with the
//! reason.

use std::time::Duration;

use serde::Serialize;

use crate::aggregate::{
    FramePrediction, OodWindow, RollingWindow, Status, TaskEstimate, Verdict, WindowConfig,
    WindowQuality,
};
use crate::frame::Frame;
use crate::model::EchoNetModel;
use crate::pipeline::{InferenceStep, StepOutput};
use crate::preprocess::{FramePreparer, PreparedInput, UnfitReason};
use crate::sampler::{Decision, Sampler};

/// What became of a clip: serialised as `ok`, `withheld` or `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipStatus {
    /// An estimate from enough usable frames.
    Ok,
    /// Read, but not enough usable frames (or not an echocardiogram): no estimate.
    Withheld,
    /// The file could not be used at all.
    Refused,
}

impl ClipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Withheld => "withheld",
            Self::Refused => "refused",
        }
    }
}

impl std::fmt::Display for ClipStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Comparisons with the serialised name, for reports and tests.
impl PartialEq<&str> for ClipStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipResult {
    pub file: String,
    pub status: ClipStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub estimates: std::collections::BTreeMap<String, TaskEstimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<WindowQuality>,
    /// The window's distances from the training frames, when the bundle's OOD gate is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodWindow>,
    /// Source frame indices used (the sampled frames), and their media times in ms.
    pub frames_used: Vec<u64>,
    pub frame_times_ms: Vec<f64>,
    pub source_frames: usize,
    /// What each sampled frame gave: the heads' outputs, or why it was unfit. The same numbers
    /// `echonet infer` prints for the frame, and the daemon feeds its window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<FrameOutcome>,
}

/// One sampled frame of a clip: its source frame number and the inference step's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameOutcome {
    pub frame: u64,
    /// Task name -> reported value, when the frame was fit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<std::collections::BTreeMap<String, f64>>,
    /// Why it was unfit (empty when fit).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unfit: Vec<String>,
    /// Its distance from the training frames, when the OOD gate is on and the model ran on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood_distance: Option<f64>,
}

impl FrameOutcome {
    pub fn new(frame: u64, verdict: &Verdict, ood_distance: Option<f64>) -> Self {
        match verdict {
            Verdict::Valid(o) => Self {
                frame,
                outputs: Some(o.clone()),
                unfit: Vec::new(),
                ood_distance,
            },
            Verdict::Invalid(rs) => Self {
                frame,
                outputs: None,
                unfit: rs.iter().map(|r| r.as_str().to_string()).collect(),
                ood_distance,
            },
        }
    }
}

impl ClipResult {
    pub fn refused(file: &str, reason: String) -> Self {
        Self {
            file: file.to_string(),
            status: ClipStatus::Refused,
            reason: Some(reason),
            estimates: Default::default(),
            quality: None,
            ood: None,
            frames_used: vec![],
            frame_times_ms: vec![],
            source_frames: 0,
            frames: vec![],
        }
    }
}

/// Frames per forward pass in offline prediction on CUDA: the window's 20 frames in one batch,
/// where a batch of 20 costs little more than one frame (and a partial batch is padded to the
/// same shape, so one captured CUDA graph serves every clip).
pub const CUDA_OFFLINE_BATCH: usize = 20;

/// The clip's window in one batch: on CUDA padded to [`CUDA_OFFLINE_BATCH`]; on the CPU the
/// prepared plan runs the usable frames together (weights packed once, read once per layer).
fn offline_batch(model: &EchoNetModel, window: &WindowConfig) -> usize {
    if model.device().is_cuda() {
        CUDA_OFFLINE_BATCH
    } else {
        window.frames.max(1)
    }
}

/// Runs one clip. `frames` are in display order with their media times; `view_threshold` is
/// the profile's `pipeline.view_threshold`, as the daemon applies it.
pub fn predict_clip(
    file: &str,
    frames: &[Frame],
    model: &EchoNetModel,
    preparer: &mut dyn FramePreparer,
    window: &WindowConfig,
    view_threshold: f64,
) -> ClipResult {
    predict_clip_batched(
        file,
        frames,
        model,
        preparer,
        window,
        view_threshold,
        offline_batch(model, window),
    )
}

/// Each usable input's verdict through the daemon's inference step, `batch` frames per forward
/// pass (a short last batch padded with copies of its last frame when `pad` is set); a failed
/// pass marks its frames `inference_error`.
fn infer_inputs(
    file: &str,
    inputs: &[(u64, std::sync::Arc<PreparedInput>)],
    step: &InferenceStep,
    model: &EchoNetModel,
    batch: usize,
    pad: bool,
) -> Vec<StepOutput> {
    let mut verdicts = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(batch.max(1)) {
        let chunk_inputs: Vec<&PreparedInput> = chunk.iter().map(|(_, i)| i.as_ref()).collect();
        let pad_to = if pad { batch } else { chunk.len() };
        match step.infer(model, &chunk_inputs, pad_to) {
            Ok(out) => verdicts.extend(out),
            Err(e) => {
                let seqs: Vec<u64> = chunk.iter().map(|(s, _)| *s).collect();
                tracing::error!("{file}: frames {seqs:?}: inference failed: {e}");
                verdicts.extend(chunk.iter().map(|_| StepOutput {
                    verdict: Verdict::Invalid(vec![UnfitReason::InferenceError]),
                    ood_distance: None,
                }));
            }
        }
    }
    verdicts
}

/// [`predict_clip`] with `batch` frames per forward pass (partial batches padded on CUDA). The
/// frames are sampled and prepared first, then inferred together, then pushed to the window in
/// order: the result is the same as one frame at a time, up to the kernels' rounding.
pub fn predict_clip_batched(
    file: &str,
    frames: &[Frame],
    model: &EchoNetModel,
    preparer: &mut dyn FramePreparer,
    window: &WindowConfig,
    view_threshold: f64,
    batch: usize,
) -> ClipResult {
    let step = InferenceStep::new(model, view_threshold);
    let mut sampler = Sampler::paper();
    let mut ring = RollingWindow::new(window.clone());
    ring.set_ood_threshold(step.ood_threshold());
    let spec = model.manifest().input.clone();
    let mut used = Vec::new();
    let mut times = Vec::new();
    // (frame, its verdict when already known, or the index of its input)
    let mut taken: Vec<(&Frame, Result<usize, Vec<UnfitReason>>)> = Vec::new();
    let mut inputs: Vec<(u64, std::sync::Arc<PreparedInput>)> = Vec::new();
    for frame in frames {
        if used.len() >= window.frames {
            break;
        }
        if sampler.offer(frame.media_time) != Decision::Take {
            continue;
        }
        used.push(frame.seq);
        times.push(frame.media_time.as_secs_f64() * 1000.0);
        let prepared = preparer.prepare(frame, &spec);
        match prepared.input {
            None => taken.push((frame, Err(prepared.reasons))),
            Some(input) => {
                taken.push((frame, Ok(inputs.len())));
                inputs.push((frame.seq, input));
            }
        }
    }
    let mut verdicts: Vec<Option<StepOutput>> =
        infer_inputs(file, &inputs, &step, model, batch, model.device().is_cuda())
            .into_iter()
            .map(Some)
            .collect();
    let mut outcomes = Vec::with_capacity(taken.len());
    for (frame, slot) in taken {
        let (verdict, ood_distance) = match slot {
            Err(reasons) => (Verdict::Invalid(reasons), None),
            Ok(i) => verdicts
                .get_mut(i)
                .and_then(Option::take)
                .map(|o| (o.verdict, o.ood_distance))
                .unwrap_or_else(|| (Verdict::Invalid(vec![UnfitReason::InferenceError]), None)),
        };
        outcomes.push(FrameOutcome::new(frame.seq, &verdict, ood_distance));
        ring.push(FramePrediction {
            seq: frame.seq,
            media_time: frame.media_time,
            captured_at: frame.captured_at,
            captured_wall: frame.captured_wall,
            verdict,
            ood_distance,
        });
    }
    let base = ClipResult {
        file: file.to_string(),
        status: ClipStatus::Withheld,
        reason: None,
        estimates: Default::default(),
        quality: None,
        ood: None,
        frames_used: used.clone(),
        frame_times_ms: times,
        source_frames: frames.len(),
        frames: outcomes,
    };
    if used.len() < window.frames {
        let span = frames
            .last()
            .map(|f| f.media_time)
            .unwrap_or(Duration::ZERO);
        // The frames there were still went through the quality gate: say what it found too.
        let partial = ring.estimate(&model.manifest().tasks);
        let ood = partial.as_ref().and_then(|e| e.ood.clone());
        let quality = partial.map(|e| e.quality);
        let found: Vec<String> = quality
            .iter()
            .flat_map(|q| q.reasons.iter().map(|(r, n)| format!("{r} {n}")))
            .collect();
        return ClipResult {
            reason: Some(format!(
                "clip too short: {} frames over {:.2} s give {} of the {} frames needed at 10 fps{}",
                frames.len(),
                span.as_secs_f64(),
                used.len(),
                window.frames,
                if found.is_empty() { String::new() } else { format!("; unusable frames: {}", found.join(", ")) }
            )),
            quality,
            ood,
            ..base
        };
    }
    match ring.estimate(&model.manifest().tasks) {
        None => ClipResult {
            reason: Some("no frames".into()),
            ..base
        },
        Some(e) => ClipResult {
            status: match e.status {
                Status::Ok => ClipStatus::Ok,
                _ => ClipStatus::Withheld,
            },
            reason: e.withheld_reason,
            estimates: e.estimates,
            quality: Some(e.quality),
            ood: e.ood,
            ..base
        },
    }
}

/// One still image (a PNG/JPEG frame) made ready for the model as the daemon makes a frame
/// ready: the sector (override, else declared region, else found in the image itself), black
/// outside it, the sector's box cropped, letterboxed, normalised, and the quality gate.
#[derive(Debug, Clone)]
pub struct StillFrame {
    /// The network input, when the frame passed the quality gate.
    pub input: Option<PreparedInput>,
    pub sector: Option<std::sync::Arc<crate::preprocess::Sector>>,
    /// Why the frame is unfit (empty when fit).
    pub unfit: Vec<UnfitReason>,
}

/// [`StillFrame`] for `image` with the profile's preprocessing settings.
pub fn prepare_still(
    image: crate::frame::Image,
    spec: &crate::model::InputSpec,
    config: &crate::preprocess::PreprocessConfig,
) -> Result<StillFrame, crate::preprocess::PreprocessError> {
    let mut pre = crate::preprocess::Preprocessor::for_stills(config.clone())?;
    let frame = Frame {
        seq: 0,
        media_time: Duration::ZERO,
        captured_at: std::time::Instant::now(),
        captured_wall: std::time::SystemTime::now(),
        image,
        geometry: std::sync::Arc::new(crate::frame::SourceGeometry::default()),
    };
    let p = pre.process(&frame, spec)?;
    Ok(StillFrame {
        unfit: p.quality.reasons.iter().map(|r| (*r).into()).collect(),
        input: p.input,
        sector: p.sector,
    })
}

/// A still frame's verdict through the daemon's inference step (view gate at `view_threshold`,
/// the profile's, and the OOD gate) with its distance: the unfit reasons when preprocessing
/// refused it.
pub fn infer_still(
    still: &StillFrame,
    model: &EchoNetModel,
    view_threshold: f64,
) -> Result<StepOutput, crate::pipeline::InferenceError> {
    let Some(input) = &still.input else {
        return Ok(StepOutput {
            verdict: Verdict::Invalid(still.unfit.clone()),
            ood_distance: None,
        });
    };
    let step = InferenceStep::new(model, view_threshold);
    let mut v = step.infer(model, &[input], 1)?;
    v.pop().ok_or(crate::pipeline::InferenceError::OutputCount {
        outputs: 0,
        frames: 1,
    })
}
