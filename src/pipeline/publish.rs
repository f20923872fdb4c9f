//! The publisher stage: turns estimates into typed records for the sinks (which serialise them),
//! hands display frames and model inputs to the sinks, publishes stale notices when estimates
//! stop, and reports a dead stage to every sink once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::queue::ToPublish;
use super::{rss_mb, EstimateSink, StageWatch};
use crate::aggregate::{Status, WindowQuality};
use crate::metrics::PipelineMetrics;
use crate::publish::record::{EstimateRecord, ModelInfo, SourceSummary};

/// Everything the publisher thread owns.
pub(super) struct PublishStage {
    pub sinks: Vec<Box<dyn EstimateSink>>,
    pub messages: Receiver<ToPublish>,
    pub model: ModelInfo,
    pub source: SourceSummary,
    pub stale_after: Duration,
    pub window_len: usize,
    pub metrics: Arc<PipelineMetrics>,
    pub watch: Arc<StageWatch>,
}

impl PublishStage {
    fn no_frames_quality(&self) -> WindowQuality {
        WindowQuality {
            valid_frames: 0,
            window: self.window_len,
            reasons: Default::default(),
        }
    }

    fn publish_stale(&mut self, reason: &str, last_capture: Option<SystemTime>) {
        let record = EstimateRecord::stale(
            reason,
            last_capture,
            SystemTime::now(),
            self.no_frames_quality(),
            &self.model,
            &self.source,
        );
        self.metrics.stale_published.fetch_add(1, Ordering::Relaxed);
        for s in self.sinks.iter_mut() {
            s.publish(&record);
        }
    }

    /// A dead stage: one stale notice naming it, and every sink told (the display fails
    /// /healthz). The run is ending; nothing more will come.
    fn report_fault(&mut self) {
        let reason = self.watch.failures().join("; ");
        self.publish_stale(&reason, None);
        for s in self.sinks.iter_mut() {
            s.fault(&reason);
        }
    }
}

/// The publisher thread's body; returns the peak resident set size it saw (MB).
pub(super) fn run_publish_stage(mut stage: PublishStage) -> Option<f64> {
    let mut fault_reported = false;
    let mut last_estimate: Option<Instant> = None;
    let mut last_stale: Option<Instant> = None;
    let mut last_capture: Option<SystemTime> = None;
    let mut trouble: Option<String> = None;
    let started = Instant::now();
    let mut rss_peak = rss_mb("VmRSS:").unwrap_or(0.0);
    let mut last_rss_check = Instant::now();
    loop {
        let msg = stage.messages.recv_timeout(Duration::from_millis(100));
        let now = Instant::now();
        match msg {
            Ok(ToPublish::Estimate(e)) => {
                let record = EstimateRecord::estimate(
                    &e,
                    now,
                    SystemTime::now(),
                    &stage.model,
                    &stage.source,
                );
                stage
                    .metrics
                    .latency_capture_to_publish
                    .observe(now.saturating_duration_since(e.captured_at));
                match e.status {
                    Status::Ok => stage
                        .metrics
                        .estimates_published
                        .fetch_add(1, Ordering::Relaxed),
                    _ => stage
                        .metrics
                        .estimates_withheld
                        .fetch_add(1, Ordering::Relaxed),
                };
                for s in stage.sinks.iter_mut() {
                    s.publish(&record);
                }
                last_estimate = Some(now);
                last_stale = None;
                last_capture = Some(e.captured_wall);
            }
            Ok(ToPublish::Frame(frame)) => {
                for s in stage.sinks.iter_mut() {
                    s.frame(&frame.image, frame.outline.as_deref());
                    if let Some(input) = &frame.input {
                        s.model_input(input);
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
        if now.duration_since(since) >= stage.stale_after
            && last_stale.is_none_or(|t| now.duration_since(t) >= stage.stale_after)
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
            stage.publish_stale(&reason, last_capture);
            last_stale = Some(now);
        }
        if now.duration_since(last_rss_check) >= Duration::from_secs(1) {
            rss_peak = rss_peak.max(rss_mb("VmRSS:").unwrap_or(0.0));
            last_rss_check = now;
        }
        if !fault_reported && stage.watch.any_failed() {
            fault_reported = true;
            stage.report_fault();
        }
    }
    if !fault_reported && stage.watch.any_failed() {
        stage.report_fault();
    }
    for s in stage.sinks.iter_mut() {
        s.finish();
    }
    Some(rss_peak)
}
