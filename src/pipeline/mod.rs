//! The live pipeline: source -> sampler + preprocessing -> inference (owns the device and the
//! model) -> publisher, each stage a named type and thread body in its own file (`source`,
//! `prepare`, `infer`, `publish`), joined by bounded queues (`queue`): drop-oldest on the live
//! frame path, a display frame dropped rather than an estimate pushed out of the publisher's
//! queue, and waiting everywhere for a replay paced as fast as possible; every drop counted by
//! reason. The model is built and warmed up on the inference thread
//! before the source starts, so the first frames do not pay for it. Shutdown (stop flag, end of a
//! finite source, or a run limit) drains every stage in order: the frame in flight finishes and
//! every sink is flushed. Frames travel one way: preprocess knows nothing of this module.

mod infer;
mod prepare;
mod publish;
mod queue;
mod sink;
mod source;
mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use serde::{Deserialize, Serialize};

use crate::aggregate::WindowConfig;
use crate::capture::SourceError;
use crate::capture::{FrameSource, Pacing, SourceInfo};
use crate::metrics::PipelineMetrics;
use crate::model::{EchoNetModel, ModelError};
use crate::preprocess::FramePreparer;
use crate::publish::record::SourceSummary;

pub use infer::{InferenceError, InferenceStep, StepOutput};
pub use queue::DropReason;
pub use sink::EstimateSink;
pub use watch::StageWatch;

use infer::{run_inference_stage, InferenceStage};
use prepare::{run_prepare_stage, PrepareStage};
use publish::{run_publish_stage, PublishStage};
use queue::{BoundedSender, ToInfer, ToPrep, ToPublish, WhenFull};

/// Whatever error the caller's model builder returns (it runs on the inference thread).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `e` and every cause under it, joined by ": ".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why [`Pipeline::run`] could not run. Once the source has started, trouble (a dead stage,
/// failing sinks) ends the run with a summary that says so instead (`RunSummary`).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("starting the {stage} thread: {error}")]
    Spawn {
        stage: &'static str,
        error: std::io::Error,
    },
    /// The caller's builder failed (its whole cause chain is in the message).
    #[error("building the model on the inference thread: {}", chain(.0.as_ref()))]
    BuildModel(BoxError),
    #[error("warming the model up on the inference thread: {0}")]
    WarmUp(ModelError),
    #[error("the inference thread ended before the model was ready{detail}")]
    InferenceEnded { detail: String },
    #[error("starting the source: {0}")]
    StartSource(SourceError),
}
use source::{run_source_stage, SourceStage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Frames each inter-stage queue holds before the oldest is dropped. Default 4.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// With no new estimate for this long (ms), a stale notice is published. Default 2000.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// Live frames handed to the display at most this often (ms). Default 200 (5 fps).
    #[serde(default = "default_display_interval_ms")]
    pub display_interval_ms: u64,
    /// Longest wait between attempts to reopen a lost source (ms); waits double from 250 ms.
    /// Default 5000.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// A bundle head named `view_a4c` (binary) below this probability marks the frame "not_a4c".
    /// Default 0.5.
    #[serde(default = "default_view_threshold")]
    pub view_threshold: f64,
}

fn default_queue_depth() -> usize {
    4
}
fn default_stale_after_ms() -> u64 {
    2000
}
fn default_display_interval_ms() -> u64 {
    200
}
fn default_reconnect_max_ms() -> u64 {
    5000
}
/// The default `view_threshold`, also what offline prediction uses.
pub const DEFAULT_VIEW_THRESHOLD: f64 = 0.5;

fn default_view_threshold() -> f64 {
    DEFAULT_VIEW_THRESHOLD
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_depth: default_queue_depth(),
            stale_after_ms: default_stale_after_ms(),
            display_interval_ms: default_display_interval_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            view_threshold: default_view_threshold(),
        }
    }
}

/// Bounds on a run; None = unbounded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLimits {
    pub duration: Option<Duration>,
    /// Captured frames.
    pub frames: Option<u64>,
}

/// What a run did, for the end-of-run report.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub source: SourceInfo,
    pub wall_s: f64,
    pub frames_captured: u64,
    pub frames_sampled: u64,
    pub frames_inferred: u64,
    pub estimates_published: u64,
    pub estimates_withheld: u64,
    pub stale_published: u64,
    /// Records written whole to the JSON Lines output, and those that failed: the counts above
    /// say what was published, these what reached the file.
    pub records_written: u64,
    pub record_write_failures: u64,
    /// Records committed to the results journal, and those it could not take.
    pub records_journaled: u64,
    pub journal_write_failures: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
    pub invalid_frames: std::collections::BTreeMap<String, u64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub rss_after_warmup_mb: Option<f64>,
    pub rss_end_mb: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    /// Stages that died (panicked), each with its message. Non-empty = the run failed: the
    /// caller must exit non-zero.
    pub stage_failures: Vec<String>,
    /// The model's out-of-distribution gate: `on: threshold ...` or `off: the bundle has no
    /// training statistics`.
    pub ood_gate: String,
}

/// Resident set size of this process, MB (Linux; None elsewhere).
pub fn rss_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub struct Pipeline {
    /// Names the model in every record; default: the bundle's provenance source.
    pub model_id: Option<String>,
    pub config: PipelineConfig,
    pub window: WindowConfig,
    pub limits: RunLimits,
    pub metrics: Arc<PipelineMetrics>,
    pub stop: Arc<AtomicBool>,
}

impl Pipeline {
    /// Runs until the source ends, `stop` is set, or a limit is reached. `build_model` runs on
    /// the inference thread, which then owns the device.
    pub fn run<M, E>(
        &self,
        mut source: Box<dyn FrameSource>,
        preparer: Box<dyn FramePreparer>,
        build_model: M,
        sinks: Vec<Box<dyn EstimateSink>>,
    ) -> Result<RunSummary, PipelineError>
    where
        M: FnOnce() -> Result<EchoNetModel, E> + Send + 'static,
        E: Into<BoxError>,
    {
        let spawn = |stage: &'static str| move |error| PipelineError::Spawn { stage, error };
        let started = Instant::now();
        let watch = Arc::new(StageWatch::default());
        let depth = self.config.queue_depth.max(1);
        let (prep_tx, prep_rx) = bounded::<ToPrep>(depth);
        let (infer_tx, infer_rx) = bounded::<ToInfer>(depth);
        let (pub_tx, pub_rx) = bounded::<ToPublish>(64);
        let (ready_tx, ready_rx) = bounded(1);
        // A replay released as fast as the model takes it: every queue waits for room, so the
        // whole recording is inferred and nothing is dropped for speed.
        let replay_whole = source.pacing() == Pacing::AsFastAsPossible;
        let frames_when_full = if replay_whole {
            WhenFull::Wait
        } else {
            WhenFull::DropOldest
        };
        let to_publish = |reason, when_full| BoundedSender {
            tx: pub_tx.clone(),
            oldest: pub_rx.clone(),
            reason,
            when_full,
        };

        let inference_stage = InferenceStage {
            build_model,
            window: self.window.clone(),
            view_threshold: self.config.view_threshold,
            model_id: self.model_id.clone(),
            metrics: self.metrics.clone(),
            watch: watch.clone(),
            samples: infer_rx.clone(),
            publish: to_publish(DropReason::QueueFullPublish, frames_when_full),
            ready: ready_tx,
        };
        let watch_infer = watch.clone();
        let inference = thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                watch_infer.run_stage("inference", || run_inference_stage(inference_stage));
            })
            .map_err(spawn("inference"))?;

        let ready = match ready_rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let _ = inference.join();
                return Err(e);
            }
            Err(_) => {
                let _ = inference.join();
                return Err(PipelineError::InferenceEnded {
                    detail: watch
                        .failures()
                        .first()
                        .map(|f| format!(": {f}"))
                        .unwrap_or_default(),
                });
            }
        };
        let rss_after_warmup = rss_mb("VmRSS:");

        // Source: opened after the model is warm.
        source.start().map_err(PipelineError::StartSource)?;
        let info = source.info();
        // Under systemd (Type=notify): the model is warm and the source open.
        crate::sd_notify::notify("READY=1");
        tracing::info!(
            source = %info.kind, name = %info.name, format = %info.format,
            fps = ?info.nominal_fps, model = %ready.info.id,
            intended_use = %ready.info.intended_use,
            "pipeline started"
        );

        let publish_stage = PublishStage {
            sinks,
            messages: pub_rx.clone(),
            model: ready.info.clone(),
            source: SourceSummary {
                kind: info.kind.to_string(),
                name: info.name.clone(),
            },
            stale_after: Duration::from_millis(self.config.stale_after_ms.max(1)),
            window_len: self.window.frames,
            metrics: self.metrics.clone(),
            watch: watch.clone(),
        };
        let watch_pub = watch.clone();
        let publisher = thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                watch_pub
                    .run_stage("publisher", || run_publish_stage(publish_stage))
                    .flatten()
            })
            .map_err(spawn("publisher"))?;

        let prepare_stage = PrepareStage {
            preparer,
            spec: ready.input,
            frames: prep_rx.clone(),
            to_infer: BoundedSender {
                tx: infer_tx.clone(),
                oldest: infer_rx,
                reason: DropReason::QueueFullInference,
                when_full: frames_when_full,
            },
            gaps: infer_tx,
            // A display frame never pushes an estimate out of the shared queue.
            to_display: to_publish(
                DropReason::QueueFullDisplay,
                if replay_whole {
                    WhenFull::Wait
                } else {
                    WhenFull::DropNew
                },
            ),
            display_every: Duration::from_millis(self.config.display_interval_ms),
            metrics: self.metrics.clone(),
            watch: watch.clone(),
        };
        let watch_prep = watch.clone();
        let prep = thread::Builder::new()
            .name("preprocess".into())
            .spawn(move || {
                watch_prep.run_stage("preprocess", || run_prepare_stage(prepare_stage));
            })
            .map_err(spawn("preprocess"))?;
        let source_notices = pub_tx.clone();
        drop(pub_tx);
        drop(pub_rx);

        // Source loop on this thread.
        let prep_finished = || prep.is_finished();
        run_source_stage(
            source.as_mut(),
            SourceStage {
                to_prepare: BoundedSender {
                    tx: prep_tx.clone(),
                    oldest: prep_rx,
                    reason: DropReason::QueueFullPreprocess,
                    when_full: frames_when_full,
                },
                gaps: &prep_tx,
                notices: &source_notices,
                limits: self.limits,
                started,
                reconnect_max: Duration::from_millis(self.config.reconnect_max_ms.max(250)),
                stop: &self.stop,
                downstream_finished: &prep_finished,
                metrics: self.metrics.clone(),
                watch: watch.clone(),
            },
        );
        crate::sd_notify::notify("STOPPING=1");
        drop(prep_tx);
        // run_stage catches a stage's panic; a join error here means one escaped it (a panic
        // while panicking), which is recorded all the same.
        if prep.join().is_err() {
            watch.fail("the preprocess thread ended abnormally".into());
        }
        if inference.join().is_err() {
            watch.fail("the inference thread ended abnormally".into());
        }
        drop(source_notices);
        let rss_peak = match publisher.join() {
            Ok(peak) => peak,
            Err(_) => {
                watch.fail("the publisher thread ended abnormally".into());
                None
            }
        };
        let m = &self.metrics;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Ok(RunSummary {
            ood_gate: ready.info.ood_gate.clone(),
            source: info,
            wall_s: started.elapsed().as_secs_f64(),
            frames_captured: load(&m.frames_captured),
            frames_sampled: load(&m.frames_sampled),
            frames_inferred: load(&m.frames_inferred),
            estimates_published: load(&m.estimates_published),
            estimates_withheld: load(&m.estimates_withheld),
            stale_published: load(&m.stale_published),
            records_written: load(&m.records_written),
            record_write_failures: load(&m.record_write_failures),
            records_journaled: load(&m.records_journaled),
            journal_write_failures: load(&m.journal_write_failures),
            drops: m.drops(),
            invalid_frames: m.invalid_frames(),
            latency_p50_ms: m.latency_capture_to_publish.percentile_ms(0.5),
            latency_p99_ms: m.latency_capture_to_publish.percentile_ms(0.99),
            rss_after_warmup_mb: rss_after_warmup,
            rss_end_mb: rss_mb("VmRSS:"),
            rss_peak_mb: rss_peak,
            stage_failures: watch.failures(),
        })
    }
}
