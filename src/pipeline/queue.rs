//! What travels between the stages, and how it is sent: bounded queues with a drop-oldest policy
//! (every drop counted by its `DropReason`), and a waiting send for items that must not be lost.

use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::StageWatch;
use crate::aggregate::Estimate;
use crate::frame::{Frame, Image};
use crate::metrics::PipelineMetrics;
use crate::preprocess::{ModelInput, Prepared};

/// Why a frame was dropped on its way through the pipeline; counted by name in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The preprocessing queue was full: the oldest captured frame made room.
    QueueFullPreprocess,
    /// The inference queue was full.
    QueueFullInference,
    /// The publisher's queue was full (an estimate).
    QueueFullPublish,
    /// The publisher's queue was full (a display frame).
    QueueFullDisplay,
    /// A frame with the media time of the one before it.
    DuplicateTimestamp,
    /// The source delivered a corrupt or short buffer.
    BadFrame,
}

impl DropReason {
    /// The counter label: `queue_full_inference`, `duplicate_timestamp`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFullPreprocess => "queue_full_preprocess",
            Self::QueueFullInference => "queue_full_inference",
            Self::QueueFullPublish => "queue_full_publish",
            Self::QueueFullDisplay => "queue_full_display",
            Self::DuplicateTimestamp => "duplicate_timestamp",
            Self::BadFrame => "bad_frame",
        }
    }
}

/// Source -> preprocess.
pub(super) enum ToPrep {
    Frame(Frame),
    /// The stream broke (device lost, timeout): the window must not mix frames across it.
    Gap(String),
}

/// One sampled, prepared frame with its timing.
pub(super) struct Sample {
    pub seq: u64,
    pub media_time: Duration,
    pub captured_at: Instant,
    pub captured_wall: SystemTime,
    pub prepared: Prepared,
}

/// Preprocess -> inference.
pub(super) enum ToInfer {
    Sample(Box<Sample>),
    Gap(String),
}

/// The live frame for the display, its sector outline, and the newest usable model input.
pub(super) struct DisplayFrame {
    pub image: Image,
    pub outline: Option<Vec<(f32, f32)>>,
    pub input: Option<ModelInput>,
}

/// Inference, preprocess and source -> publisher.
pub(super) enum ToPublish {
    Estimate(Box<Estimate>),
    Frame(Box<DisplayFrame>),
    SourceTrouble(String),
    SourceOk,
}

/// A queue's sending end with its own receiver, used only to drop the oldest item when full.
pub(super) struct DropOldest<T> {
    pub tx: Sender<T>,
    pub oldest: Receiver<T>,
    pub reason: DropReason,
    /// Wait for room instead of dropping: set for the frame path of a replay released as fast
    /// as the consumer takes it ([`crate::capture::Pacing::AsFastAsPossible`]), where a drop
    /// would lose part of the recording for nothing.
    pub wait: bool,
}

impl<T> DropOldest<T> {
    /// Sends with the drop-oldest policy: when the queue is full, the oldest queued item is
    /// dropped (and counted) to make room. Returns false when the receiving stage has gone, or
    /// any stage has died (the queue itself never disconnects: this holds a receiver).
    pub fn send(&self, item: T, metrics: &PipelineMetrics, watch: &StageWatch) -> bool {
        if watch.any_failed() {
            return false;
        }
        if self.wait {
            return send_unless_dead(&self.tx, item, watch);
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => false,
            Err(TrySendError::Full(item)) => {
                if self.oldest.try_recv().is_ok() {
                    metrics.drop_frame(self.reason.as_str());
                }
                match self.tx.try_send(item) {
                    Ok(()) => true,
                    Err(TrySendError::Disconnected(_)) => false,
                    Err(TrySendError::Full(_)) => {
                        metrics.drop_frame(self.reason.as_str());
                        true
                    }
                }
            }
        }
    }
}

/// Sends an item that must not be dropped (a gap, a source notice), waiting for room in short
/// slices; gives up (false) when the receiver is gone or a stage has died, so a dead stage never
/// blocks its sender forever.
pub(super) fn send_unless_dead<T>(tx: &Sender<T>, mut item: T, watch: &StageWatch) -> bool {
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
