//! Picks frames at the paper's 10 fps from their media timestamps, whatever the source's rate
//! (13.2, 25, 30, 60 fps, or irregular): a fixed 100 ms grid anchored at the first frame, each slot
//! filled by the first frame that arrives within half a source frame interval before it or any
//! time after it. Frame counts are never used, so a 76 ms clip is sampled as correctly as a 33 ms
//! one. Duplicated or backwards timestamps and empty slots are counted, never silent.

use std::time::Duration;

/// The paper's sampling interval: 20 frames over 2 s.
pub const PAPER_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Use this frame for the slot that was due.
    Take,
    /// Between slots: not needed.
    Skip,
    /// Timestamp not after the previous frame's: a repeated or out-of-order frame.
    Duplicate,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SamplerCounts {
    pub seen: u64,
    pub taken: u64,
    pub skipped: u64,
    pub duplicates: u64,
    /// Slots no frame arrived for (the source was slower than 10 fps, or frames were lost).
    pub empty_slots: u64,
}

#[derive(Debug, Clone)]
pub struct Sampler {
    interval: Duration,
    next_due: Option<Duration>,
    last_time: Option<Duration>,
    /// Smoothed source frame interval, for the early-acceptance tolerance.
    source_interval: Option<Duration>,
    counts: SamplerCounts,
}

impl Sampler {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_due: None,
            last_time: None,
            source_interval: None,
            counts: SamplerCounts::default(),
        }
    }

    pub fn paper() -> Self {
        Self::new(PAPER_INTERVAL)
    }

    pub fn counts(&self) -> SamplerCounts {
        self.counts
    }

    /// The source's observed frame rate, once two frames have been seen.
    pub fn observed_fps(&self) -> Option<f64> {
        self.source_interval
            .filter(|d| !d.is_zero())
            .map(|d| 1.0 / d.as_secs_f64())
    }

    /// Decides for a frame with media time `t`.
    pub fn offer(&mut self, t: Duration) -> Decision {
        self.counts.seen += 1;
        if let Some(last) = self.last_time {
            if t <= last {
                self.counts.duplicates += 1;
                return Decision::Duplicate;
            }
            let dt = t - last;
            // Exponential smoothing keeps one irregular frame from moving the tolerance much.
            self.source_interval = Some(match self.source_interval {
                None => dt,
                Some(s) => (s * 7 + dt) / 8,
            });
        }
        self.last_time = Some(t);
        let Some(due) = self.next_due else {
            self.next_due = Some(t + self.interval);
            self.counts.taken += 1;
            return Decision::Take;
        };
        let tolerance = self
            .source_interval
            .map(|s| (s / 2).min(self.interval / 2))
            .unwrap_or(Duration::ZERO);
        if t + tolerance < due {
            self.counts.skipped += 1;
            return Decision::Skip;
        }
        // This frame fills the due slot; slots wholly passed before it stayed empty.
        let mut next = due + self.interval;
        while next <= t + tolerance {
            self.counts.empty_slots += 1;
            next += self.interval;
        }
        self.next_due = Some(next);
        self.counts.taken += 1;
        Decision::Take
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(frame_ms: f64, seconds: f64) -> (Vec<Duration>, SamplerCounts) {
        let mut s = Sampler::paper();
        let mut taken = Vec::new();
        let n = (seconds * 1000.0 / frame_ms) as usize;
        for i in 0..n {
            let t = Duration::from_secs_f64(i as f64 * frame_ms / 1000.0);
            if s.offer(t) == Decision::Take {
                taken.push(t);
            }
        }
        (taken, s.counts())
    }

    /// Every taken frame lies within half a source frame of its 100 ms grid slot, and the slots
    /// are filled in order, one frame each.
    fn assert_on_grid(taken: &[Duration], frame_ms: f64) {
        for (k, t) in taken.iter().enumerate() {
            let slot = k as f64 * 100.0;
            let err = t.as_secs_f64() * 1000.0 - slot;
            assert!(
                err.abs() <= frame_ms / 2.0 + 1e-6,
                "frame {k} at {t:?} is {err} ms from its slot"
            );
        }
    }

    #[test]
    fn frame_time_76ms_is_sampled_by_timestamp() {
        let (taken, c) = run(76.0, 10.0);
        assert_eq!(taken.len(), 100, "10 s at 10 fps");
        assert_on_grid(&taken, 76.0);
        assert_eq!(c.empty_slots, 0);
        // 76 ms frames: not every frame, not every other frame (as frame counting would do).
        assert!(c.skipped > 20 && c.skipped < 40, "{c:?}");
    }

    #[test]
    fn common_rates() {
        for (fps, every) in [(25.0, 2.5), (30.0, 3.0), (60.0, 6.0)] {
            let frame_ms = 1000.0 / fps;
            let (taken, c) = run(frame_ms, 10.0);
            assert!(
                (taken.len() as i64 - 100).abs() <= 1,
                "{fps} fps: {}",
                taken.len()
            );
            assert_on_grid(&taken, frame_ms);
            let ratio = c.seen as f64 / c.taken as f64;
            assert!(
                (ratio - every).abs() / every < 0.02,
                "{fps} fps: one frame in {ratio}"
            );
            assert_eq!(c.empty_slots, 0);
        }
    }

    #[test]
    fn rate_13_2_fps() {
        let frame_ms = 1000.0 / 13.2;
        let (taken, _) = run(frame_ms, 20.0);
        assert!((taken.len() as i64 - 200).abs() <= 1, "{}", taken.len());
        assert_on_grid(&taken, frame_ms);
    }

    #[test]
    fn slow_source_takes_every_frame_and_counts_empty_slots() {
        let (taken, c) = run(200.0, 10.0);
        assert_eq!(taken.len(), 50);
        assert_eq!(c.empty_slots, 49);
    }

    #[test]
    fn duplicates_and_backwards_times_are_counted() {
        let mut s = Sampler::paper();
        assert_eq!(s.offer(Duration::from_millis(0)), Decision::Take);
        assert_eq!(s.offer(Duration::from_millis(0)), Decision::Duplicate);
        assert_eq!(s.offer(Duration::from_millis(50)), Decision::Skip);
        assert_eq!(s.offer(Duration::from_millis(40)), Decision::Duplicate);
        assert_eq!(s.offer(Duration::from_millis(100)), Decision::Take);
        assert_eq!(s.counts().duplicates, 2);
        assert_eq!(s.counts().seen, 5);
    }

    #[test]
    fn lost_frames_leave_counted_gaps() {
        let mut s = Sampler::paper();
        for ms in [0u64, 33, 67, 100, 133, 167, 200] {
            s.offer(Duration::from_millis(ms));
        }
        // 800 ms of frames lost.
        assert_eq!(s.offer(Duration::from_millis(1000)), Decision::Take);
        assert_eq!(s.counts().empty_slots, 7);
    }
}
