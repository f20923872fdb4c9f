//! The live pipeline: source thread -> sampler + preprocessing thread -> inference thread (owns
//! the device and the model) -> publisher thread. Stages pass plain buffers over bounded crossbeam
//! channels with a drop-oldest policy; every drop is counted by reason. The model is built and
//! warmed up on the inference thread before the source starts, so the first frames do not pay for
//! it. Shutdown (stop flag, end of a finite source, or a run limit) drains every stage in order:
//! the frame in flight finishes and every sink is flushed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use candle_core::{Device, Tensor};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use crate::aggregate::{FramePrediction, RollingWindow, Verdict, WindowConfig, WindowQuality};
use crate::capture::{FrameSource, SourceError, SourceInfo};
use crate::frame::{Frame, Image};
use crate::metrics::PipelineMetrics;
use crate::model::{EchoNetModel, InputSpec, TaskKind};
use crate::preprocess::PreparedInput;
use crate::publish::record::{estimate_record, stale_record, ModelInfo, SourceSummary};
use crate::sampler::{Decision, Sampler};

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
fn default_view_threshold() -> f64 {
    0.5
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

/// A frame made ready for the model (or found unfit), by the preprocessing stage.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// `[C, H, W]` normalised values, or None when the frame must not feed an estimate.
    pub input: Option<(Vec<f32>, [usize; 3])>,
    /// Why the frame is unfit (empty when fit).
    pub reasons: Vec<String>,
    /// The scanning sector's outline in frame pixels, for the display.
    pub outline: Option<Vec<(f32, f32)>>,
}

/// The preprocessing stage's seam: sector, mask, crop, resize, normalise, quality checks.
pub trait FramePreparer: Send {
    fn prepare(&mut self, frame: &Frame, spec: &InputSpec) -> Prepared;
}

/// Where published records go (JSON Lines, the display hub, a test's collector).
pub trait EstimateSink: Send {
    fn publish(&mut self, record: &serde_json::Value);
    /// The live frame for the display; most sinks ignore it.
    fn frame(&mut self, _image: &Image, _outline: Option<&[(f32, f32)]>) {}
    /// The latest usable model input (normalised, `[C, H, W]`) of source frame `seq`, offered at
    /// the display's pace for on-demand work (saliency maps); most sinks ignore it.
    fn model_input(&mut self, _seq: u64, _input: &Arc<PreparedInput>) {}
    /// A pipeline stage died: the run cannot produce estimates any more and is ending. Sinks
    /// that report health (the display) fail it; most ignore it.
    fn fault(&mut self, _reason: &str) {}
    /// Called once at the end of the run.
    fn finish(&mut self) {}
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
}

/// Which stages of a run have died, shared by all its threads. A stage that dies can no longer
/// take from its queue, and the drop-oldest senders never see its queue disconnect (they hold a
/// receiver to drop from), so every sender and waiter asks this instead.
#[derive(Debug, Default)]
pub struct StageWatch {
    failed: AtomicBool,
    failures: std::sync::Mutex<Vec<String>>,
}

impl StageWatch {
    pub fn any_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn fail(&self, reason: String) {
        tracing::error!("{reason}");
        if let Ok(mut f) = self.failures.lock() {
            f.push(reason);
        }
        self.failed.store(true, Ordering::Release);
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Runs a stage's body; a panic is recorded (with its message) instead of vanishing.
    fn run_stage<T>(&self, stage: &str, body: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(v) => Some(v),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-text panic".into());
                self.fail(format!("the {stage} stage died: {message}"));
                None
            }
        }
    }
}

enum ToPrep {
    Frame(Frame),
    /// The stream broke (device lost, timeout): the window must not mix frames across it.
    Gap(String),
}

struct Sample {
    seq: u64,
    media_time: Duration,
    captured_at: Instant,
    captured_wall: SystemTime,
    prepared: Prepared,
}

enum ToInfer {
    Sample(Box<Sample>),
    Gap(String),
}

enum ToPublish {
    Estimate(Box<crate::aggregate::Estimate>),
    Frame(
        Image,
        Option<Vec<(f32, f32)>>,
        Option<(u64, Arc<PreparedInput>)>,
    ),
    SourceTrouble(String),
    SourceOk,
}

/// Sends with the drop-oldest policy: when the queue is full, the oldest queued item is dropped
/// (and counted) to make room. Returns false when the receiving stage has gone, or any stage has
/// died (the queue itself never disconnects: the sender holds a receiver to drop from).
fn send_drop_oldest<T>(
    tx: &Sender<T>,
    rx: &Receiver<T>,
    item: T,
    metrics: &PipelineMetrics,
    reason: &str,
    watch: &StageWatch,
) -> bool {
    if watch.any_failed() {
        return false;
    }
    match tx.try_send(item) {
        Ok(()) => true,
        Err(TrySendError::Disconnected(_)) => false,
        Err(TrySendError::Full(item)) => {
            if rx.try_recv().is_ok() {
                metrics.drop_frame(reason);
            }
            match tx.try_send(item) {
                Ok(()) => true,
                Err(TrySendError::Disconnected(_)) => false,
                Err(TrySendError::Full(_)) => {
                    metrics.drop_frame(reason);
                    true
                }
            }
        }
    }
}

/// Sends an item that must not be dropped (a gap, a source notice), waiting for room in short
/// slices; gives up (false) when the receiver is gone or a stage has died, so a dead stage never
/// blocks its sender forever.
fn send_unless_dead<T>(tx: &Sender<T>, mut item: T, watch: &StageWatch) -> bool {
    loop {
        if watch.any_failed() {
            return false;
        }
        match tx.send_timeout(item, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => item = back,
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
        }
    }
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
    pub fn run<M>(
        &self,
        mut source: Box<dyn FrameSource>,
        mut preparer: Box<dyn FramePreparer>,
        build_model: M,
        mut sinks: Vec<Box<dyn EstimateSink>>,
    ) -> anyhow::Result<RunSummary>
    where
        M: FnOnce() -> anyhow::Result<EchoNetModel> + Send + 'static,
    {
        let started = Instant::now();
        let watch = Arc::new(StageWatch::default());
        let depth = self.config.queue_depth.max(1);
        let (prep_tx, prep_rx) = bounded::<ToPrep>(depth);
        let (infer_tx, infer_rx) = bounded::<ToInfer>(depth);
        let (pub_tx, pub_rx) = bounded::<ToPublish>(64);
        let (ready_tx, ready_rx) =
            bounded::<anyhow::Result<(ModelInfo, InputSpec, Vec<crate::model::TaskSpec>)>>(1);

        // Receivers kept only to drop the oldest item when a queue is full.
        let infer_rx_keep = infer_rx.clone();
        let pub_rx_keep = pub_rx.clone();

        // Inference thread: build, warm up, then serve samples.
        let metrics = self.metrics.clone();
        let window_cfg = self.window.clone();
        let view_threshold = self.config.view_threshold;
        let pub_tx_infer = pub_tx.clone();
        let pub_rx_infer = pub_rx_keep.clone();
        let model_id = self.model_id.clone();
        let watch_infer = watch.clone();
        let inference = thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let watch = watch_infer;
                watch.run_stage("inference", || {
                    let (model, inference_cost_ms) = match build_model().and_then(|m| {
                        let spec = m.manifest().input.clone();
                        let warm = Tensor::zeros(
                            (1, spec.channels, spec.height, spec.width),
                            candle_core::DType::F32,
                            &Device::Cpu,
                        )?;
                        m.infer(&warm, false)?;
                        // The first call made the buffers; the second is what a frame costs.
                        let t0 = Instant::now();
                        m.infer(&warm, false)?;
                        Ok((m, t0.elapsed().as_secs_f64() * 1000.0))
                    }) {
                        Ok((m, frame_ms)) => {
                            warn_if_too_slow(frame_ms, &m);
                            (m, frame_ms)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let manifest = model.manifest().clone();
                    let info = ModelInfo {
                        id: model_id.unwrap_or_else(|| manifest.provenance.source.clone()),
                        intended_use: manifest.intended_use.clone(),
                        content_hash: manifest.content_hash.clone(),
                    };
                    let _ =
                        ready_tx.send(Ok((info, manifest.input.clone(), manifest.tasks.clone())));
                    let mut window = RollingWindow::new(window_cfg);
                    window.set_inference_cost(inference_cost_ms);
                    let has_view_head = manifest
                        .tasks
                        .iter()
                        .any(|t| t.name == "view_a4c" && t.kind == TaskKind::Binary);
                    for msg in infer_rx.iter() {
                        let sample = match msg {
                            ToInfer::Gap(reason) => {
                                tracing::info!(
                                    "window cleared after a break in the stream: {reason}"
                                );
                                window.clear();
                                continue;
                            }
                            ToInfer::Sample(s) => s,
                        };
                        let verdict = match &sample.prepared.input {
                            None => Verdict::Invalid(sample.prepared.reasons.clone()),
                            Some((data, [c, h, w])) => {
                                let t0 = Instant::now();
                                let result =
                                    Tensor::from_slice(data, (1, *c, *h, *w), &Device::Cpu)
                                        .map_err(crate::model::ModelError::from)
                                        .and_then(|x| model.infer(&x, false));
                                metrics.latency_inference.observe(t0.elapsed());
                                metrics.frames_inferred.fetch_add(1, Ordering::Relaxed);
                                match result {
                                    Ok(mut frames) if !frames.is_empty() => {
                                        let outputs = frames.swap_remove(0).outputs;
                                        match outputs.get("view_a4c") {
                                            Some(p) if has_view_head && *p < view_threshold => {
                                                Verdict::Invalid(vec!["not_a4c".into()])
                                            }
                                            _ => Verdict::Valid(outputs),
                                        }
                                    }
                                    Ok(_) => Verdict::Invalid(vec!["inference_error".into()]),
                                    Err(e) => {
                                        tracing::error!(seq = sample.seq, "inference failed: {e}");
                                        Verdict::Invalid(vec!["inference_error".into()])
                                    }
                                }
                            }
                        };
                        if let Verdict::Invalid(reasons) = &verdict {
                            for r in reasons {
                                metrics.invalid_frame(r);
                            }
                        }
                        window.push(FramePrediction {
                            seq: sample.seq,
                            media_time: sample.media_time,
                            captured_at: sample.captured_at,
                            captured_wall: sample.captured_wall,
                            verdict,
                        });
                        if window.is_full() {
                            if let Some(e) = window.estimate(&manifest.tasks) {
                                if !send_drop_oldest(
                                    &pub_tx_infer,
                                    &pub_rx_infer,
                                    ToPublish::Estimate(Box::new(e)),
                                    &metrics,
                                    "queue_full_publish",
                                    &watch,
                                ) {
                                    break;
                                }
                            }
                        }
                    }
                });
            })?;

        let (model_info, spec, _tasks) = match ready_rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let _ = inference.join();
                return Err(e.context("building the model on the inference thread"));
            }
            Err(_) => {
                let _ = inference.join();
                anyhow::bail!(
                    "the inference thread ended before the model was ready{}",
                    watch
                        .failures()
                        .first()
                        .map(|f| format!(": {f}"))
                        .unwrap_or_default()
                );
            }
        };
        let rss_after_warmup = rss_mb("VmRSS:");

        // Source: opened after the model is warm.
        source
            .start()
            .map_err(|e| anyhow::anyhow!("starting the source: {e}"))?;
        let info = source.info();
        // Under systemd (Type=notify): the model is warm and the source open.
        crate::sd_notify::notify("READY=1");
        let summary_source = SourceSummary {
            kind: info.kind.to_string(),
            name: info.name.clone(),
        };
        tracing::info!(
            source = %info.kind, name = %info.name, format = %info.format,
            fps = ?info.nominal_fps, model = %model_info.id, intended_use = %model_info.intended_use,
            "pipeline started"
        );

        // Publisher thread.
        let metrics = self.metrics.clone();
        let stale_after = Duration::from_millis(self.config.stale_after_ms.max(1));
        let window_len = self.window.frames;
        let watch_pub = watch.clone();
        let publisher = thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let watch = watch_pub;
                watch.run_stage("publisher", || {
                    let mut fault_reported = false;
                    // A dead stage: one stale notice naming it, and every sink told (the display
                    // fails /healthz). The run is ending; nothing more will come.
                    let mut report_fault = |sinks: &mut Vec<Box<dyn EstimateSink>>| {
                        if fault_reported || !watch.any_failed() {
                            return;
                        }
                        fault_reported = true;
                        let reason = watch.failures().join("; ");
                        let quality = WindowQuality {
                            valid_frames: 0,
                            window: window_len,
                            reasons: Default::default(),
                        };
                        let record = stale_record(
                            &reason,
                            None,
                            SystemTime::now(),
                            quality,
                            &model_info,
                            &summary_source,
                        );
                        metrics.stale_published.fetch_add(1, Ordering::Relaxed);
                        for s in sinks.iter_mut() {
                            s.publish(&record);
                            s.fault(&reason);
                        }
                    };
                    let mut last_estimate: Option<Instant> = None;
                    let mut last_stale: Option<Instant> = None;
                    let mut last_capture: Option<SystemTime> = None;
                    let mut trouble: Option<String> = None;
                    let started = Instant::now();
                    let mut rss_peak = rss_mb("VmRSS:").unwrap_or(0.0);
                    let mut last_rss_check = Instant::now();
                    loop {
                        let msg = pub_rx.recv_timeout(Duration::from_millis(100));
                        let now = Instant::now();
                        match msg {
                            Ok(ToPublish::Estimate(e)) => {
                                let record = estimate_record(
                                    &e,
                                    now,
                                    SystemTime::now(),
                                    &model_info,
                                    &summary_source,
                                );
                                metrics
                                    .latency_capture_to_publish
                                    .observe(now.saturating_duration_since(e.captured_at));
                                match e.status {
                                    crate::aggregate::Status::Ok => {
                                        metrics.estimates_published.fetch_add(1, Ordering::Relaxed)
                                    }
                                    _ => metrics.estimates_withheld.fetch_add(1, Ordering::Relaxed),
                                };
                                for s in sinks.iter_mut() {
                                    s.publish(&record);
                                }
                                last_estimate = Some(now);
                                last_stale = None;
                                last_capture = Some(e.captured_wall);
                            }
                            Ok(ToPublish::Frame(img, outline, input)) => {
                                for s in sinks.iter_mut() {
                                    s.frame(&img, outline.as_deref());
                                    if let Some((seq, input)) = &input {
                                        s.model_input(*seq, input);
                                    }
                                }
                            }
                            Ok(ToPublish::SourceTrouble(reason)) => trouble = Some(reason),
                            Ok(ToPublish::SourceOk) => trouble = None,
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                        // Stale: no fresh estimate for too long (after the first one, or after start-up).
                        let since = last_estimate.unwrap_or(started);
                        if now.duration_since(since) >= stale_after
                            && last_stale.is_none_or(|t| now.duration_since(t) >= stale_after)
                        {
                            let reason = trouble.clone().unwrap_or_else(|| {
                                if last_estimate.is_some() {
                                    format!(
                                        "no new estimate for {:.1} s",
                                        now.duration_since(since).as_secs_f64()
                                    )
                                } else {
                                    "waiting for the first window of frames".to_string()
                                }
                            });
                            let quality = WindowQuality {
                                valid_frames: 0,
                                window: window_len,
                                reasons: Default::default(),
                            };
                            let record = stale_record(
                                &reason,
                                last_capture,
                                SystemTime::now(),
                                quality,
                                &model_info,
                                &summary_source,
                            );
                            metrics.stale_published.fetch_add(1, Ordering::Relaxed);
                            for s in sinks.iter_mut() {
                                s.publish(&record);
                            }
                            last_stale = Some(now);
                        }
                        if now.duration_since(last_rss_check) >= Duration::from_secs(1) {
                            rss_peak = rss_peak.max(rss_mb("VmRSS:").unwrap_or(0.0));
                            last_rss_check = now;
                        }
                        report_fault(&mut sinks);
                    }
                    report_fault(&mut sinks);
                    for s in sinks.iter_mut() {
                        s.finish();
                    }
                    rss_peak
                })
            })?;

        // Sampler + preprocessing thread.
        let metrics = self.metrics.clone();
        let display_every = Duration::from_millis(self.config.display_interval_ms);
        let pub_tx_prep = pub_tx.clone();
        let pub_rx_prep = pub_rx_keep.clone();
        let infer_rx_prep = infer_rx_keep;
        let prep_rx_source = prep_rx.clone();
        let watch_prep = watch.clone();
        let prep = thread::Builder::new()
            .name("preprocess".into())
            .spawn(move || {
                let watch = watch_prep;
                watch.run_stage("preprocess", || {
                    let mut sampler = Sampler::paper();
                    let mut last_display: Option<Instant> = None;
                    let mut last_outline: Option<Vec<(f32, f32)>> = None;
                    // The newest usable model input, handed to the display with the next frame.
                    let mut last_input: Option<(u64, Arc<PreparedInput>)> = None;
                    for msg in prep_rx.iter() {
                        let frame = match msg {
                            ToPrep::Gap(reason) => {
                                sampler = Sampler::paper();
                                if !send_unless_dead(&infer_tx, ToInfer::Gap(reason), &watch) {
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
                                metrics.drop_frame("duplicate_timestamp");
                                continue;
                            }
                        };
                        if take {
                            metrics.frames_sampled.fetch_add(1, Ordering::Relaxed);
                            let t0 = Instant::now();
                            let prepared = preparer.prepare(&frame, &spec);
                            metrics.latency_preprocess.observe(t0.elapsed());
                            last_outline = prepared.outline.clone();
                            if let Some((data, [channels, height, width])) = &prepared.input {
                                last_input = Some((
                                    frame.seq,
                                    Arc::new(PreparedInput {
                                        data: data.clone(),
                                        channels: *channels,
                                        height: *height,
                                        width: *width,
                                    }),
                                ));
                            }
                            let sample = Sample {
                                seq: frame.seq,
                                media_time: frame.media_time,
                                captured_at: frame.captured_at,
                                captured_wall: frame.captured_wall,
                                prepared,
                            };
                            if !send_drop_oldest(
                                &infer_tx,
                                &infer_rx_prep,
                                ToInfer::Sample(Box::new(sample)),
                                &metrics,
                                "queue_full_inference",
                                &watch,
                            ) {
                                break;
                            }
                        }
                        if last_display.is_none_or(|t| t.elapsed() >= display_every) {
                            last_display = Some(Instant::now());
                            let msg = ToPublish::Frame(
                                frame.image,
                                last_outline.clone(),
                                last_input.take(),
                            );
                            send_drop_oldest(
                                &pub_tx_prep,
                                &pub_rx_prep,
                                msg,
                                &metrics,
                                "queue_full_display",
                                &watch,
                            );
                        }
                    }
                });
            })?;
        let source_notices = pub_tx.clone();
        drop(pub_tx);

        // Source loop on this thread.
        let metrics = self.metrics.clone();
        let mut captured: u64 = 0;
        let mut backoff = Duration::from_millis(250);
        let reconnect_max = Duration::from_millis(self.config.reconnect_max_ms.max(250));
        let mut in_trouble = false;
        loop {
            if self.stop.load(Ordering::Relaxed)
                || self.limits.duration.is_some_and(|d| started.elapsed() >= d)
                || self.limits.frames.is_some_and(|n| captured >= n)
                || prep.is_finished()
                || watch.any_failed()
            {
                break;
            }
            // The frame loop is alive: systemd's watchdog restarts the daemon if this stops.
            crate::sd_notify::watchdog_ping();
            match source.next_frame() {
                Ok(Some(frame)) => {
                    captured += 1;
                    metrics.frames_captured.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(250);
                    if in_trouble {
                        in_trouble = false;
                        send_unless_dead(&source_notices, ToPublish::SourceOk, &watch);
                    }
                    send_drop_oldest(
                        &prep_tx,
                        &prep_rx_source,
                        ToPrep::Frame(frame),
                        &metrics,
                        "queue_full_preprocess",
                        &watch,
                    );
                }
                Ok(None) => break,
                Err(e) => {
                    metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                    match &e {
                        SourceError::BadFrame { .. } => {
                            metrics.drop_frame("bad_frame");
                            tracing::warn!("{e}");
                        }
                        SourceError::Timeout { .. } => {
                            tracing::warn!("{e}");
                            in_trouble = true;
                            send_unless_dead(
                                &source_notices,
                                ToPublish::SourceTrouble(e.to_string()),
                                &watch,
                            );
                            send_unless_dead(&prep_tx, ToPrep::Gap(e.to_string()), &watch);
                        }
                        SourceError::Disconnected { .. } => {
                            tracing::warn!("{e}; reopening in {backoff:?}");
                            in_trouble = true;
                            send_unless_dead(
                                &source_notices,
                                ToPublish::SourceTrouble(e.to_string()),
                                &watch,
                            );
                            send_unless_dead(&prep_tx, ToPrep::Gap(e.to_string()), &watch);
                            sleep_unless_stopped(backoff, &self.stop);
                            backoff = (backoff * 2).min(reconnect_max);
                            metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = source.start() {
                                tracing::warn!("reopening failed: {e}");
                            }
                        }
                        SourceError::Fatal { .. } => {
                            tracing::error!("{e}");
                            break;
                        }
                    }
                }
            }
        }
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

/// Sleeps up to `d`, waking early when `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        thread::sleep(
            Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
        );
    }
}

/// Says at start-up, with what to do, when one frame's inference exceeds the 10 fps budget.
fn warn_if_too_slow(frame_ms: f64, model: &crate::model::EchoNetModel) {
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
