//! Frame sources: one trait, chosen by configuration. A source opens (and warms up) in `start`,
//! then yields frames until the end of its stream. Replay sources (DICOM, images, phantom) can run
//! in real time or as fast as possible, so the whole pipeline is testable without hardware.

pub mod dicom;
pub mod images;
pub mod phantom;
pub mod v4l2;

use std::time::{Duration, Instant};

/// Why a source could not give a frame. The pipeline handles each kind differently: a timeout or
/// a lost device marks the estimate stale (and the device is reopened with backoff); a bad frame
/// is counted and skipped; a fatal error ends the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: no frame within {timeout:?}")]
    Timeout {
        source_name: String,
        timeout: Duration,
    },
    #[error("{source_name}: device lost: {reason}")]
    Disconnected { source_name: String, reason: String },
    #[error("{source_name}: frame {seq} could not be decoded: {reason}")]
    BadFrame {
        source_name: String,
        seq: u64,
        reason: String,
    },
    #[error("{source_name}: {reason}")]
    Fatal { source_name: String, reason: String },
}

/// What a source says about itself, for the start-up summary and the published estimates.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceInfo {
    /// `v4l2`, `dicom`, `images` or `phantom`.
    pub kind: &'static str,
    /// Device path, file or folder, or the phantom's seed.
    pub name: String,
    /// Negotiated or decoded pixel format, in words (e.g. "YUYV 640x480", "MONOCHROME2 8-bit RLE").
    pub format: String,
    /// Frames per second the source claims, if it knows.
    pub nominal_fps: Option<f64>,
    /// Number of frames for a finite source.
    pub frame_count: Option<u64>,
}

pub trait FrameSource: Send {
    fn info(&self) -> SourceInfo;
    /// Opens the device or file and does any warm-up; called once before `next_frame`.
    fn start(&mut self) -> Result<(), SourceError>;
    /// The next frame; `Ok(None)` at the end of a finite stream. Blocks at most the source's read
    /// timeout (replay sources in real time sleep until the frame is due).
    fn next_frame(&mut self) -> Result<Option<crate::frame::Frame>, SourceError>;
    /// How frames are released: a live device runs in real time; a replay source as configured.
    /// With [`Pacing::AsFastAsPossible`] the pipeline waits for room in its queues instead of
    /// dropping frames, so a recording is replayed whole, as fast as the model takes it.
    fn pacing(&self) -> Pacing {
        Pacing::RealTime
    }
}

/// How a replay source paces its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// Each frame is released when its media time has elapsed since the start.
    RealTime,
    /// Frames are released as fast as the consumer takes them (media times unchanged).
    AsFastAsPossible,
}

/// Longest a replay source waits for one frame. A longer gap (a damaged frame time, an absurd
/// frame rate) is cut to this and the clock moves on with it, so `next_frame` always returns
/// within this and a stop request or run limit is seen in time.
pub const MAX_FRAME_WAIT: Duration = Duration::from_secs(2);

/// Releases replayed frames on time.
#[derive(Debug, Clone)]
pub struct ReplayClock {
    pacing: Pacing,
    start: Option<Instant>,
    /// Media time skipped by cutting over-long waits to `MAX_FRAME_WAIT`.
    skipped: Duration,
}

impl ReplayClock {
    pub fn new(pacing: Pacing) -> Self {
        Self {
            pacing,
            start: None,
            skipped: Duration::ZERO,
        }
    }

    pub fn pacing(&self) -> Pacing {
        self.pacing
    }

    /// Blocks until `media_time` after the first call (real time), or returns at once; never
    /// longer than `MAX_FRAME_WAIT`.
    pub fn wait_until(&mut self, media_time: Duration) {
        if self.pacing == Pacing::AsFastAsPossible {
            return;
        }
        let start = *self.start.get_or_insert_with(Instant::now);
        let target = media_time.saturating_sub(self.skipped);
        let elapsed = start.elapsed();
        if target <= elapsed {
            return;
        }
        let mut wait = target - elapsed;
        if wait > MAX_FRAME_WAIT {
            tracing::warn!(
                "next replayed frame is due in {:.1} s: waiting {:.0} s instead",
                wait.as_secs_f64(),
                MAX_FRAME_WAIT.as_secs_f64()
            );
            self.skipped += wait - MAX_FRAME_WAIT;
            wait = MAX_FRAME_WAIT;
        }
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_frame_time_waits_at_most_the_cap() {
        let mut clock = ReplayClock::new(Pacing::RealTime);
        clock.wait_until(Duration::ZERO);
        let t0 = Instant::now();
        clock.wait_until(Duration::from_secs(1_000_000_000));
        let waited = t0.elapsed();
        assert!(
            waited >= MAX_FRAME_WAIT && waited < MAX_FRAME_WAIT * 3,
            "{waited:?}"
        );
        // The clock moved on: a frame shortly after that one is due shortly.
        let t0 = Instant::now();
        clock.wait_until(Duration::from_secs(1_000_000_000) + Duration::from_millis(50));
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
}
