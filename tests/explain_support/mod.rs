//! Shared by the saliency tests (`explain.rs`, `explain_commands.rs`): the bundled model's path
//! and phantom frames through the runtime's own preprocessing, with the phantom's truth beside them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use echonet_edge::frame::{Frame, SourceGeometry};
use echonet_edge::model::InputSpec;
use echonet_edge::phantom::{Phantom, PhantomParams};
use echonet_edge::preprocess::{PreparedInput, PreprocessConfig, Preprocessor, Sector};

pub const BUNDLED: &str = "models/echonet-phantom-demo.safetensors";

pub fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED)
}

/// Phantom frames through the runtime's preprocessing: (prepared input, sector, LV mask and
/// dilated LV mask in source pixels, phantom, time).
pub struct PhantomFrame {
    pub input: PreparedInput,
    pub sector: Arc<Sector>,
    pub lv: Vec<bool>,
    pub phantom: Arc<Phantom>,
    pub t: Duration,
}

/// Frame `index` of a phantom's stream, as a capture source hands it over.
pub fn frame_at(phantom: &Phantom, index: u64, geometry: &Arc<SourceGeometry>) -> Frame {
    let t = phantom.frame_time(index);
    Frame {
        seq: index,
        media_time: t,
        captured_at: Instant::now(),
        captured_wall: SystemTime::now(),
        image: phantom.render(t),
        geometry: geometry.clone(),
    }
}

pub fn phantom_frames(seeds: &[u64], per_clip: usize, spec: &InputSpec) -> Vec<PhantomFrame> {
    let mut out = Vec::new();
    for &seed in seeds {
        let phantom = Arc::new(Phantom::new(PhantomParams::random(seed)).unwrap());
        let mut pre = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let geometry = Arc::new(phantom.geometry());
        // 10 fps samples from a 30 fps clip, spread over the beat.
        for k in 0..per_clip as u64 {
            let index = 3 * k;
            let (frame, t) = (
                frame_at(&phantom, index, &geometry),
                phantom.frame_time(index),
            );
            let p = pre.process(&frame, spec).unwrap();
            if let (Some(input), Some(sector)) = (p.input, p.sector) {
                out.push(PhantomFrame {
                    input,
                    sector,
                    lv: phantom.lv_mask(t),
                    phantom: phantom.clone(),
                    t,
                });
            }
        }
    }
    out
}
