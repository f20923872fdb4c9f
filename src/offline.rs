//! Offline studies (`echonet predict`): one result per clip, from the paper's 20 frames at 10 fps
//! taken from the clip's start, through the same sampler, preprocessing, model and window as the
//! live daemon (the clip's usable frames run as one batch). A clip too short for 20 frames at 10 fps, or with too few usable frames, is
//! withheld with its reasons; a file that cannot be read is refused with the reason.

use std::time::Duration;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::aggregate::{
    FramePrediction, RollingWindow, Status, TaskEstimate, Verdict, WindowConfig, WindowQuality,
};
use crate::frame::Frame;
use crate::model::EchoNetModel;
use crate::pipeline::FramePreparer;
use crate::sampler::{Decision, Sampler};

#[derive(Debug, Clone, Serialize)]
pub struct ClipResult {
    pub file: String,
    /// "ok", "withheld" or "refused".
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub estimates: std::collections::BTreeMap<String, TaskEstimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<WindowQuality>,
    /// Source frame indices used (the sampled frames), and their media times in ms.
    pub frames_used: Vec<u64>,
    pub frame_times_ms: Vec<f64>,
    pub source_frames: usize,
}

impl ClipResult {
    pub fn refused(file: &str, reason: String) -> Self {
        Self {
            file: file.to_string(),
            status: "refused".into(),
            reason: Some(reason),
            estimates: Default::default(),
            quality: None,
            frames_used: vec![],
            frame_times_ms: vec![],
            source_frames: 0,
        }
    }
}

/// Runs one clip. `frames` are in display order with their media times.
pub fn predict_clip(
    file: &str,
    frames: &[Frame],
    model: &EchoNetModel,
    preparer: &mut dyn FramePreparer,
    window: &WindowConfig,
) -> ClipResult {
    let mut sampler = Sampler::paper();
    let mut ring = RollingWindow::new(window.clone());
    let spec = model.manifest().input.clone();
    let mut used = Vec::new();
    let mut times = Vec::new();
    // Sample and prepare first, then run every usable frame of the clip as one batch.
    let mut sampled = Vec::new();
    for frame in frames {
        if used.len() >= window.frames {
            break;
        }
        if sampler.offer(frame.media_time) != Decision::Take {
            continue;
        }
        used.push(frame.seq);
        times.push(frame.media_time.as_secs_f64() * 1000.0);
        sampled.push((frame, preparer.prepare(frame, &spec)));
    }
    let mut batch = Vec::new();
    let mut batch_shape = None;
    for (_, prepared) in &sampled {
        if let Some((data, shape)) = &prepared.input {
            if batch_shape.is_none_or(|s| s == *shape) {
                batch_shape = Some(*shape);
                batch.extend_from_slice(data);
            }
        }
    }
    let mut outputs = match batch_shape {
        Some([c, h, w]) => {
            let n = batch.len() / (c * h * w);
            match Tensor::from_vec(batch, (n, c, h, w), &Device::Cpu)
                .map_err(crate::model::ModelError::from)
                .and_then(|x| model.infer(&x, false))
            {
                Ok(out) if out.len() == n => out.into_iter().map(Some).collect(),
                Ok(out) => {
                    tracing::error!("{file}: {n} frames in, {} results out", out.len());
                    vec![None; n]
                }
                Err(e) => {
                    tracing::error!("{file}: inference on the clip's {n} frames failed: {e}");
                    vec![None; n]
                }
            }
        }
        None => Vec::new(),
    }
    .into_iter();
    for (frame, prepared) in sampled {
        let verdict = match prepared.input {
            None => Verdict::Invalid(prepared.reasons),
            Some((_, shape)) if Some(shape) != batch_shape => {
                // Preparation gives every frame the model's input size; a mismatch is a bug.
                tracing::error!("{file}: frame {} prepared as {shape:?}", frame.seq);
                Verdict::Invalid(vec!["inference_error".into()])
            }
            Some(_) => match outputs.next().flatten() {
                Some(out) => Verdict::Valid(out.outputs),
                None => Verdict::Invalid(vec!["inference_error".into()]),
            },
        };
        ring.push(FramePrediction {
            seq: frame.seq,
            media_time: frame.media_time,
            captured_at: frame.captured_at,
            captured_wall: frame.captured_wall,
            verdict,
        });
    }
    let base = ClipResult {
        file: file.to_string(),
        status: "withheld".into(),
        reason: None,
        estimates: Default::default(),
        quality: None,
        frames_used: used.clone(),
        frame_times_ms: times,
        source_frames: frames.len(),
    };
    if used.len() < window.frames {
        let span = frames
            .last()
            .map(|f| f.media_time)
            .unwrap_or(Duration::ZERO);
        // The frames there were still went through the quality gate: say what it found too.
        let quality = ring.estimate(&model.manifest().tasks).map(|e| e.quality);
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
                Status::Ok => "ok".into(),
                _ => "withheld".into(),
            },
            reason: e.withheld_reason,
            estimates: e.estimates,
            quality: Some(e.quality),
            ..base
        },
    }
}
