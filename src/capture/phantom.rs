//! The phantom (`crate::phantom`) as a frame source: frame `seq` shows media time `seq / fps`,
//! paced by a `ReplayClock`. A thin adapter; the patient, heart and renderer live in `crate::phantom`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::capture::{FrameSource, Pacing, ReplayClock, SourceError, SourceInfo};
use crate::frame::{Frame, SourceGeometry};
use crate::phantom::{Phantom, PhantomError, PhantomParams};

/// The phantom as an endless frame source: frame `seq` shows media time `seq / fps`.
pub struct PhantomSource {
    phantom: Phantom,
    clock: ReplayClock,
    geometry: Arc<SourceGeometry>,
    seq: u64,
    started: bool,
}

impl PhantomSource {
    pub fn new(params: PhantomParams, pacing: Pacing) -> Result<Self, PhantomError> {
        let phantom = Phantom::new(params)?;
        let geometry = Arc::new(phantom.geometry());
        Ok(Self {
            phantom,
            clock: ReplayClock::new(pacing),
            geometry,
            seq: 0,
            started: false,
        })
    }

    /// The phantom behind the stream, for its ground truth.
    pub fn phantom(&self) -> &Phantom {
        &self.phantom
    }
}

impl FrameSource for PhantomSource {
    fn pacing(&self) -> Pacing {
        self.clock.pacing()
    }

    fn info(&self) -> SourceInfo {
        let p = self.phantom.params();
        SourceInfo {
            kind: "phantom",
            name: format!("seed {}", p.seed),
            format: format!("Gray8 {}x{}", p.width, p.height),
            nominal_fps: Some(p.fps),
            frame_count: None,
        }
    }

    fn start(&mut self) -> Result<(), SourceError> {
        self.started = true;
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if !self.started {
            return Err(SourceError::Fatal {
                source_name: self.info().name,
                reason: "next_frame called before start".into(),
            });
        }
        let seq = self.seq;
        let media_time = self.phantom.frame_time(seq);
        self.clock.wait_until(media_time);
        let image = self.phantom.render(media_time);
        self.seq += 1;
        Ok(Some(Frame {
            seq,
            media_time,
            captured_at: Instant::now(),
            captured_wall: SystemTime::now(),
            image,
            geometry: Arc::clone(&self.geometry),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn source_streams_frames_at_media_time_seq_over_fps() {
        let params = PhantomParams::random(40);
        let mut src = PhantomSource::new(params.clone(), Pacing::AsFastAsPossible).unwrap();
        assert!(matches!(src.next_frame(), Err(SourceError::Fatal { .. })));
        let info = src.info();
        assert_eq!(info.kind, "phantom");
        assert_eq!(info.nominal_fps, Some(params.fps));
        assert_eq!(info.frame_count, None);
        src.start().unwrap();
        let reference = Phantom::new(params.clone()).unwrap();
        for seq in 0..4u64 {
            let f = src.next_frame().unwrap().unwrap();
            assert_eq!(f.seq, seq);
            assert_eq!(
                f.media_time,
                Duration::from_secs_f64(seq as f64 / params.fps)
            );
            assert_eq!(f.image, reference.render(reference.frame_time(seq)));
            assert_eq!(*f.geometry, reference.geometry());
        }
    }

    #[test]
    fn real_time_pacing_waits_for_media_time() {
        let params = PhantomParams {
            fps: 50.0,
            ..PhantomParams::default()
        };
        let mut src = PhantomSource::new(params, Pacing::RealTime).unwrap();
        src.start().unwrap();
        let started = Instant::now();
        for _ in 0..6 {
            src.next_frame().unwrap();
        }
        // Frame 5 is due 100 ms after frame 0.
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
