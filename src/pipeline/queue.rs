//! What travels between the stages, and how it is sent: bounded queues whose senders say what a
//! full queue does (`WhenFull`: drop the oldest, drop the new item, or wait; every drop counted
//! by its `DropReason`), and a waiting send for items that must not be lost.

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

/// What a sender does when its queue is full; every item dropped is counted by the sender's
/// [`DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WhenFull {
    /// Drop the oldest queued item to make room: the live frame path, where the newest frame is
    /// the one worth having.
    DropOldest,
    /// Drop the item being sent: display frames, which share the publisher's queue with the
    /// estimates and must never push one out.
    DropNew,
    /// Wait for room: a replay released as fast as the consumer takes it
    /// ([`crate::capture::Pacing::AsFastAsPossible`]), where a drop would lose part of the
    /// recording for nothing.
    Wait,
}

/// A bounded queue's sending end with its own receiver, used only to drop the oldest item when
/// full ([`WhenFull::DropOldest`]).
pub(super) struct BoundedSender<T> {
    pub tx: Sender<T>,
    pub oldest: Receiver<T>,
    pub reason: DropReason,
    pub when_full: WhenFull,
}

impl<T> BoundedSender<T> {
    /// Sends; when the queue is full, does what `when_full` says (a drop is counted). Returns
    /// false when the receiving stage has gone, or any stage has died (the queue itself never
    /// disconnects: this holds a receiver).
    pub fn send(&self, item: T, metrics: &PipelineMetrics, watch: &StageWatch) -> bool {
        if watch.any_failed() {
            return false;
        }
        let item = match self.tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(item)) => item,
        };
        match self.when_full {
            WhenFull::Wait => return send_unless_dead(&self.tx, item, watch),
            WhenFull::DropNew => {}
            WhenFull::DropOldest => {
                if self.oldest.try_recv().is_ok() {
                    metrics.drop_frame(self.reason.as_str());
                }
                match self.tx.try_send(item) {
                    Ok(()) => return true,
                    Err(TrySendError::Disconnected(_)) => return false,
                    // Refilled by another sender meanwhile: this item goes instead.
                    Err(TrySendError::Full(_)) => {}
                }
            }
        }
        metrics.drop_frame(self.reason.as_str());
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    fn sender(when_full: WhenFull) -> (BoundedSender<u32>, Receiver<u32>) {
        let (tx, rx) = bounded(2);
        let sender = BoundedSender {
            tx,
            oldest: rx.clone(),
            reason: DropReason::QueueFullDisplay,
            when_full,
        };
        (sender, rx)
    }

    /// Three items into a queue of two: drop-oldest keeps the newest two, drop-new keeps what
    /// was queued (a display frame never pushes an estimate out of the publisher's queue), and
    /// wait returns once the consumer has taken one, dropping nothing. Every drop is counted.
    #[test]
    fn a_full_queue_drops_the_oldest_drops_the_new_or_waits_as_told() {
        let (metrics, watch) = (PipelineMetrics::default(), StageWatch::default());
        let drops = || metrics.dropped(DropReason::QueueFullDisplay.as_str());

        let (s, rx) = sender(WhenFull::DropOldest);
        for i in 1..=3 {
            assert!(s.send(i, &metrics, &watch));
        }
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(drops(), 1);

        let (s, rx) = sender(WhenFull::DropNew);
        for i in 1..=3 {
            assert!(s.send(i, &metrics, &watch));
        }
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(drops(), 2);

        let (s, rx) = sender(WhenFull::Wait);
        std::thread::scope(|scope| {
            let consumer = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                rx.recv_timeout(Duration::from_secs(5)).ok()
            });
            for i in 1..=3 {
                assert!(s.send(i, &metrics, &watch));
            }
            assert_eq!(consumer.join().unwrap(), Some(1));
        });
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(drops(), 2);
    }
}
