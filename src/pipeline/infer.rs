//! The inference stage: the one per-frame inference step (model outputs -> `Verdict`, with the
//! view gate and the out-of-distribution gate), shared by the live daemon and offline prediction (`crate::offline`), and the
//! inference thread's body (build and warm the model, then window every sample).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use crossbeam_channel::{Receiver, Sender};

use super::queue::{BoundedSender, DropReason, ToInfer, ToPublish};
use super::{BoxError, PipelineError, StageWatch};
use crate::aggregate::{FramePrediction, RollingWindow, Verdict, WindowConfig};
use crate::metrics::PipelineMetrics;
use crate::model::ood::OodStats;
use crate::model::{EchoNetModel, InputSpec, ModelError, TaskKind, TaskSpec};
use crate::preprocess::{PreparedInput, UnfitReason};
use crate::publish::record::ModelInfo;

/// Why a call of the inference step gave no verdicts.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the model gave {outputs} outputs for a batch of {frames} frames")]
    OutputCount { outputs: usize, frames: usize },
}

impl From<candle_core::Error> for InferenceError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.into())
    }
}

/// The per-frame inference step: runs prepared inputs through the model (several per forward
/// pass when they share a shape) and turns each output into a `Verdict`, marking a frame the
/// bundle's `view_a4c` head rejects as `not_a4c`, and a frame whose pooled features lie beyond
/// the bundle's OOD threshold as `out_of_distribution` (from the features the same forward
/// pass computed for the heads).
#[derive(Debug, Clone)]
pub struct InferenceStep {
    /// The `view_a4c` probability below which a frame is `not_a4c`, when the bundle has that
    /// binary head.
    view_gate: Option<f64>,
    /// The bundle's training statistics, when it has them.
    ood: Option<Arc<OodStats>>,
}

/// One frame's result from the step: its verdict and, when the gate is on, its distance from
/// the training frames (also for a frame the gate refused, so a user sees how far it was).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    pub verdict: Verdict,
    pub ood_distance: Option<f64>,
}

impl InferenceStep {
    /// The step for `model`: the view gate at `view_threshold` when the bundle has a
    /// `view_a4c` head, the OOD gate when it has training statistics.
    pub fn new(model: &EchoNetModel, view_threshold: f64) -> Self {
        Self::with_gates(
            &model.manifest().tasks,
            view_threshold,
            model.ood().cloned(),
        )
    }

    pub fn with_gates(tasks: &[TaskSpec], view_threshold: f64, ood: Option<Arc<OodStats>>) -> Self {
        let has_view_head = tasks
            .iter()
            .any(|t| t.name == "view_a4c" && t.kind == TaskKind::Binary);
        Self {
            view_gate: has_view_head.then_some(view_threshold),
            ood,
        }
    }

    /// The OOD gate's thresholds, when it is on.
    pub fn ood_threshold(&self) -> Option<crate::model::ood::OodThresholds> {
        self.ood.as_ref().map(|o| o.thresholds())
    }

    /// One verdict per input, in order. Inputs of one shape go through in one forward pass,
    /// padded to `pad_to` frames with copies of the last (so a captured CUDA graph fits every
    /// call); mixed shapes run one pass per frame. An error fails the whole call.
    pub fn infer(
        &self,
        model: &EchoNetModel,
        inputs: &[&PreparedInput],
        pad_to: usize,
    ) -> Result<Vec<StepOutput>, InferenceError> {
        let features = self.ood.is_some();
        let Some(first) = inputs.first() else {
            return Ok(Vec::new());
        };
        let dims = |i: &PreparedInput| [i.channels, i.height, i.width];
        let [c, h, w] = dims(first);
        let outputs = if inputs.iter().all(|i| dims(i) == [c, h, w]) {
            let n = pad_to.max(inputs.len());
            let mut data = Vec::with_capacity(n * c * h * w);
            for k in 0..n {
                data.extend_from_slice(&inputs[k.min(inputs.len() - 1)].data);
            }
            let x = Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?;
            let mut out = model.infer(&x, features)?;
            out.truncate(inputs.len());
            out
        } else {
            let mut out = Vec::with_capacity(inputs.len());
            for i in inputs {
                let [c, h, w] = dims(i);
                let x = Tensor::from_slice(&i.data, (1, c, h, w), &Device::Cpu)?;
                out.extend(model.infer(&x, features)?);
            }
            out
        };
        if outputs.len() != inputs.len() {
            return Err(InferenceError::OutputCount {
                outputs: outputs.len(),
                frames: inputs.len(),
            });
        }
        Ok(outputs
            .into_iter()
            .map(|o| {
                let distance = match (&self.ood, &o.features) {
                    (Some(stats), Some(f)) => Some(stats.distance(f)),
                    _ => None,
                };
                StepOutput {
                    verdict: self.verdict(o.outputs, distance),
                    ood_distance: distance,
                }
            })
            .collect())
    }

    fn verdict(
        &self,
        outputs: std::collections::BTreeMap<String, f64>,
        distance: Option<f64>,
    ) -> Verdict {
        let mut reasons = Vec::new();
        // A NaN distance (features of the wrong width or not finite) is never in the domain.
        if let (Some(stats), Some(d)) = (&self.ood, distance) {
            if d.is_nan() || d > stats.threshold() {
                reasons.push(UnfitReason::OutOfDistribution);
            }
        }
        if let (Some(threshold), Some(p)) = (self.view_gate, outputs.get("view_a4c")) {
            if *p < threshold {
                reasons.push(UnfitReason::NotA4c);
            }
        }
        if reasons.is_empty() {
            Verdict::Valid(outputs)
        } else {
            Verdict::Invalid(reasons)
        }
    }
}

/// What the inference thread reports once the model is built and warm.
pub(super) struct ModelReady {
    pub info: ModelInfo,
    pub input: InputSpec,
}

/// Everything the inference thread owns.
pub(super) struct InferenceStage<M> {
    pub build_model: M,
    pub window: WindowConfig,
    pub view_threshold: f64,
    pub model_id: Option<String>,
    pub metrics: Arc<PipelineMetrics>,
    pub watch: Arc<StageWatch>,
    pub samples: Receiver<ToInfer>,
    pub publish: BoundedSender<ToPublish>,
    pub ready: Sender<Result<ModelReady, PipelineError>>,
}

/// Builds the model and measures one frame's cost (the first call makes the buffers, the
/// second is what a frame costs).
fn build_and_warm<M, E>(build_model: M) -> Result<(EchoNetModel, f64), PipelineError>
where
    M: FnOnce() -> Result<EchoNetModel, E>,
    E: Into<BoxError>,
{
    let model = build_model().map_err(|e| PipelineError::BuildModel(e.into()))?;
    let spec = model.manifest().input.clone();
    let warm = Tensor::zeros(
        (1, spec.channels, spec.height, spec.width),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .map_err(|e| PipelineError::WarmUp(e.into()))?;
    model.infer(&warm, false).map_err(PipelineError::WarmUp)?;
    let t0 = Instant::now();
    model.infer(&warm, false).map_err(PipelineError::WarmUp)?;
    Ok((model, t0.elapsed().as_secs_f64() * 1000.0))
}

/// The inference thread's body: build and warm the model, report it ready, then run every
/// sample through the `InferenceStep` into the rolling window and publish each full window's
/// estimate. A gap in the stream clears the window.
pub(super) fn run_inference_stage<M, E>(stage: InferenceStage<M>)
where
    M: FnOnce() -> Result<EchoNetModel, E>,
    E: Into<BoxError>,
{
    let InferenceStage {
        build_model,
        window,
        view_threshold,
        model_id,
        metrics,
        watch,
        samples,
        publish,
        ready,
    } = stage;
    let (model, inference_cost_ms) = match build_and_warm(build_model) {
        Ok((model, frame_ms)) => {
            warn_if_too_slow(frame_ms, &model);
            (model, frame_ms)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let manifest = model.manifest().clone();
    let info = ModelInfo {
        id: model_id.unwrap_or_else(|| manifest.provenance.source.clone()),
        intended_use: manifest.intended_use.clone(),
        content_hash: manifest.content_hash.clone(),
        precision: model.precision().to_string(),
        ood_gate: model.ood_gate(),
    };
    let _ = ready.send(Ok(ModelReady {
        info,
        input: manifest.input.clone(),
    }));
    let mut window = RollingWindow::new(window);
    window.set_inference_cost(inference_cost_ms);
    // The running cost of one frame (exponential mean over about the last 5 frames, from the
    // warm-up figure), and the inference queue's drop count as each of the window's frames
    // arrived: when frames are dropped there while a window fills although warm-up fitted the
    // budget (other work on the same cores, or a machine that slowed since), a withheld window
    // still says inference is the cause.
    let mut running_ms = inference_cost_ms;
    let queue_drops = || metrics.dropped(DropReason::QueueFullInference.as_str());
    let mut drops_at_arrival: VecDeque<u64> = VecDeque::with_capacity(window.config().frames + 1);
    let step = InferenceStep::new(&model, view_threshold);
    window.set_ood_threshold(step.ood_threshold());
    if step.ood_threshold().is_none() {
        // Once per run: every record says it too (`model.ood_gate`).
        tracing::warn!("out-of-distribution gate {}", model.ood_gate());
    }
    for msg in samples.iter() {
        let sample = match msg {
            ToInfer::Gap(reason) => {
                tracing::info!("window cleared after a break in the stream: {reason}");
                window.clear();
                drops_at_arrival.clear();
                continue;
            }
            ToInfer::Sample(s) => s,
        };
        drops_at_arrival.push_back(queue_drops());
        if drops_at_arrival.len() > window.config().frames.max(1) {
            drops_at_arrival.pop_front();
        }
        let mut ood_distance = None;
        let verdict = match &sample.prepared.input {
            None => Verdict::Invalid(sample.prepared.reasons.clone()),
            Some(input) => {
                let t0 = Instant::now();
                let result = step.infer(&model, &[input.as_ref()], 1);
                let took = t0.elapsed();
                metrics.latency_inference.observe(took);
                running_ms += 0.2 * (took.as_secs_f64() * 1000.0 - running_ms);
                metrics.frames_inferred.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(mut verdicts) if verdicts.len() == 1 => {
                        let out = verdicts.swap_remove(0);
                        ood_distance = out.ood_distance;
                        out.verdict
                    }
                    Ok(_) => Verdict::Invalid(vec![UnfitReason::InferenceError]),
                    Err(e) => {
                        tracing::error!(seq = sample.seq, "inference failed: {e}");
                        Verdict::Invalid(vec![UnfitReason::InferenceError])
                    }
                }
            }
        };
        if let Verdict::Invalid(reasons) = &verdict {
            for r in reasons {
                metrics.invalid_frame(r.as_str());
            }
        }
        window.push(FramePrediction {
            seq: sample.seq,
            media_time: sample.media_time,
            captured_at: sample.captured_at,
            captured_wall: sample.captured_wall,
            verdict,
            ood_distance,
        });
        if window.is_full() {
            let oldest = drops_at_arrival.front().copied().unwrap_or(0);
            window.set_inference_backlog(running_ms, queue_drops().saturating_sub(oldest));
            if let Some(e) = window.estimate(&manifest.tasks) {
                if !publish.send(ToPublish::Estimate(Box::new(e)), &metrics, &watch) {
                    break;
                }
            }
        }
    }
}

/// Says at start-up, with what to do, when one frame's inference exceeds the 10 fps budget.
fn warn_if_too_slow(frame_ms: f64, model: &EchoNetModel) {
    use crate::aggregate::FRAME_BUDGET_MS;
    if frame_ms > FRAME_BUDGET_MS {
        tracing::warn!(
            frame_ms = format!("{frame_ms:.0}"),
            budget_ms = FRAME_BUDGET_MS,
            backend = %model.backend_name(),
            "inference too slow: one frame takes {frame_ms:.0} ms, over the {FRAME_BUDGET_MS:.0} ms budget of 10 sampled frames/s; \
             frames will be dropped and windows withheld: {}; on the CPU also f32 rather than f16, or more cores",
            crate::aggregate::SLOW_INFERENCE_ADVICE
        );
    } else {
        tracing::info!(
            frame_ms = format!("{frame_ms:.1}"),
            budget_ms = FRAME_BUDGET_MS,
            backend = %model.backend_name(),
            "inference cost measured at warm-up"
        );
    }
}
