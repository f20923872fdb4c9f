//! The source stage (on the thread that called `Pipeline::run`): pulls frames until the source
//! ends, `stop` is set or a limit is reached; reports trouble to the publisher, marks gaps for
//! the window, and reopens a lost device with doubling backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::queue::{send_unless_dead, BoundedSender, DropReason, ToPrep, ToPublish};
use super::{RunLimits, StageWatch};
use crate::capture::{FrameSource, SourceError};
use crate::metrics::PipelineMetrics;

/// What the source loop needs besides the source itself.
pub(super) struct SourceStage<'a> {
    pub to_prepare: BoundedSender<ToPrep>,
    /// The same queue as `to_prepare`, for gaps, which must not be dropped.
    pub gaps: &'a Sender<ToPrep>,
    pub notices: &'a Sender<ToPublish>,
    pub limits: RunLimits,
    pub started: Instant,
    pub reconnect_max: Duration,
    pub stop: &'a AtomicBool,
    /// True once the preprocessing thread has ended (nothing would take the frames).
    pub downstream_finished: &'a dyn Fn() -> bool,
    pub metrics: Arc<PipelineMetrics>,
    pub watch: Arc<StageWatch>,
}

impl SourceStage<'_> {
    /// The stream broke: the publisher is told (stale notices say why) and the window gets a
    /// gap, so frames on both sides of it never mix.
    fn report_break(&self, e: &SourceError) {
        send_unless_dead(
            self.notices,
            ToPublish::SourceTrouble(e.to_string()),
            &self.watch,
        );
        send_unless_dead(self.gaps, ToPrep::Gap(e.to_string()), &self.watch);
    }
}

/// The source loop.
pub(super) fn run_source_stage(source: &mut dyn FrameSource, stage: SourceStage<'_>) {
    let metrics = &stage.metrics;
    let watch = &stage.watch;
    let mut captured: u64 = 0;
    let mut backoff = Duration::from_millis(250);
    let mut in_trouble = false;
    loop {
        if stage.stop.load(Ordering::Relaxed)
            || stage
                .limits
                .duration
                .is_some_and(|d| stage.started.elapsed() >= d)
            || stage.limits.frames.is_some_and(|n| captured >= n)
            || (stage.downstream_finished)()
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
                    send_unless_dead(stage.notices, ToPublish::SourceOk, watch);
                }
                stage.to_prepare.send(ToPrep::Frame(frame), metrics, watch);
            }
            Ok(None) => break,
            Err(e) => {
                metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                match &e {
                    SourceError::BadFrame { .. } => {
                        metrics.drop_frame(DropReason::BadFrame.as_str());
                        tracing::warn!("{e}");
                    }
                    SourceError::Timeout { .. } => {
                        tracing::warn!("{e}");
                        in_trouble = true;
                        stage.report_break(&e);
                    }
                    SourceError::Disconnected { .. } => {
                        tracing::warn!("{e}; reopening in {backoff:?}");
                        in_trouble = true;
                        stage.report_break(&e);
                        sleep_unless_stopped(backoff, stage.stop);
                        backoff = (backoff * 2).min(stage.reconnect_max);
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
