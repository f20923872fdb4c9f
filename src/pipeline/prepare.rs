//! The sampler + preprocessing stage: picks frames on the 10 fps grid by media time, prepares
//! each taken frame (`FramePreparer`), sends it to inference, and hands the live frame to the
//! display at its own pace with the newest sector outline and usable model input.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::queue::{
    send_unless_dead, BoundedSender, DisplayFrame, DropReason, Sample, ToInfer, ToPrep, ToPublish,
};
use super::StageWatch;
use crate::metrics::PipelineMetrics;
use crate::model::InputSpec;
use crate::preprocess::{FramePreparer, ModelInput, Sector};
use crate::sampler::{Decision, Sampler};

/// Everything the preprocessing thread owns.
pub(super) struct PrepareStage {
    pub preparer: Box<dyn FramePreparer>,
    pub spec: InputSpec,
    pub frames: Receiver<ToPrep>,
    pub to_infer: BoundedSender<ToInfer>,
    /// The same queue as `to_infer`, for gaps, which must not be dropped.
    pub gaps: Sender<ToInfer>,
    pub to_display: BoundedSender<ToPublish>,
    pub display_every: Duration,
    pub metrics: Arc<PipelineMetrics>,
    pub watch: Arc<StageWatch>,
}

/// The preprocessing thread's body.
pub(super) fn run_prepare_stage(mut stage: PrepareStage) {
    let metrics = &stage.metrics;
    let watch = &stage.watch;
    let mut sampler = Sampler::paper();
    let mut last_display: Option<Instant> = None;
    // The sector of the newest sampled frame: the display's outline, traced at display pace.
    let mut last_sector: Option<Arc<Sector>> = None;
    // The newest usable model input, handed to the display with the next frame.
    let mut last_input: Option<ModelInput> = None;
    for msg in stage.frames.iter() {
        let frame = match msg {
            ToPrep::Gap(reason) => {
                sampler = Sampler::paper();
                if !send_unless_dead(&stage.gaps, ToInfer::Gap(reason), watch) {
                    break;
                }
                continue;
            }
            ToPrep::Frame(f) => f,
        };
        let take = match sampler.offer(frame.media_time) {
            Decision::Take => true,
            Decision::Skip => false,
            Decision::Duplicate => {
                metrics.drop_frame(DropReason::DuplicateTimestamp.as_str());
                continue;
            }
        };
        if take {
            metrics.frames_sampled.fetch_add(1, Ordering::Relaxed);
            let t0 = Instant::now();
            let prepared = stage.preparer.prepare(&frame, &stage.spec);
            metrics.latency_preprocess.observe(t0.elapsed());
            last_sector = prepared.sector.clone();
            if let Some(input) = &prepared.input {
                // Shared, not copied: the display's saliency worker reads the same buffer.
                last_input = Some(ModelInput {
                    seq: frame.seq,
                    input: Arc::clone(input),
                    sector: prepared.sector.clone(),
                });
            }
            let sample = Sample {
                seq: frame.seq,
                media_time: frame.media_time,
                captured_at: frame.captured_at,
                captured_wall: frame.captured_wall,
                prepared,
            };
            if !stage
                .to_infer
                .send(ToInfer::Sample(Box::new(sample)), metrics, watch)
            {
                break;
            }
        }
        if last_display.is_none_or(|t| t.elapsed() >= stage.display_every) {
            last_display = Some(Instant::now());
            let display = DisplayFrame {
                image: frame.image,
                outline: last_sector.as_ref().map(|s| s.outline()),
                input: last_input.take(),
            };
            stage
                .to_display
                .send(ToPublish::Frame(Box::new(display)), metrics, watch);
        }
    }
}
