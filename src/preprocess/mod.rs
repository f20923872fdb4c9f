//! Per-frame preprocessing between capture and inference: find the scanning sector, judge the
//! frame's quality, and turn a usable frame into the network's input the way EchoNet was trained
//! (everything outside the sector masked to black, the sector cropped, resized to the input size
//! and normalised).
//!
//! - `sector`: the sector (fan, rectangle or convex region), from an override, the source's
//!   declared regions, or detection from the images (`SectorDetector`)
//! - `mask`: black outside the sector, cropped to its bounding box
//! - `resize`: area-averaging / bilinear resampling, letterboxed to keep the aspect ratio
//! - `quality`: reasons a frame is not used, their thresholds and counters
//!
//! [`Preprocessor`] holds one stream's state and runs all of it per frame; [`prepare`] is the
//! stateless image-to-input step.

pub mod mask;
pub mod quality;
pub mod resize;
pub mod sector;
#[cfg(test)]
mod synth;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, Image, PixelFormat, PixelRect};
use crate::model::InputSpec;

pub use quality::{
    assess, low_frame_rate, FrameQuality, QualityConfig, QualityCounts, QualityReason, SectorStats,
    UnfitReason,
};
pub use sector::{
    detect_still, DetectorConfig, Fan, Sector, SectorDetector, SectorOverride, SectorShape,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("sector: {0}")]
    InvalidSector(String),
    #[error("the sector covers no pixel of a {width}x{height} frame")]
    EmptySector { width: usize, height: usize },
    #[error("frame is {image:?} (width, height) but the sector was made for {sector:?}")]
    SizeMismatch {
        image: (usize, usize),
        sector: (usize, usize),
    },
    #[error("malformed frame: {0}")]
    BadFrame(String),
    #[error("input spec: {0}")]
    InvalidSpec(String),
    #[error("preprocess config `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },
}

/// BT.601 luma, the same weights as `Image::to_gray`, so every grey plane in the pipeline agrees.
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114 + 500) / 1000) as u8
}

/// A frame as luma into `out` (resized as needed), reusing its allocation between frames.
fn grey_into(image: &Image, out: &mut Vec<u8>) {
    match image.format {
        PixelFormat::Gray8 => {
            out.clear();
            out.extend_from_slice(&image.data);
        }
        PixelFormat::Rgb8 => {
            // Writing into a sized buffer compiles tighter than extending one.
            out.resize(image.data.len() / 3, 0);
            for (o, p) in out.iter_mut().zip(image.data.chunks_exact(3)) {
                *o = luma(p[0], p[1], p[2]);
            }
        }
    }
}

/// The preprocessing section of a deployment profile. Every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Sector detection from the images (used when there is no override and the source
    /// declares no imaging region).
    pub detector: DetectorConfig,
    pub quality: QualityConfig,
    /// A fixed sector, bypassing detection and declared regions. Default: none.
    pub sector_override: Option<SectorOverride>,
}

impl PreprocessConfig {
    pub fn check(&self) -> Result<(), PreprocessError> {
        self.detector.check()?;
        self.quality.check()
    }
}

/// The network input for one frame: `channels x height x width` f32, normalised as the bundle's
/// [`InputSpec`] says. `channels` is 1 for a grey frame even when the network's stem is RGB with
/// the same normalisation on every channel: the model folds a grey frame into its first
/// convolution exactly, at a third of the cost.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedInput {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

fn check_spec(spec: &InputSpec) -> Result<(), PreprocessError> {
    let bad = |m: String| Err(PreprocessError::InvalidSpec(m));
    if spec.channels != 1 && spec.channels != 3 {
        return bad(format!("channels is {}, expected 1 or 3", spec.channels));
    }
    if spec.mean.len() != spec.channels || spec.std.len() != spec.channels {
        return bad(format!(
            "{} means and {} standard deviations for {} channels",
            spec.mean.len(),
            spec.std.len(),
            spec.channels
        ));
    }
    if spec.mean.iter().any(|m| !m.is_finite())
        || spec.std.iter().any(|s| !(*s > 0.0 && s.is_finite()))
    {
        return bad("means must be finite and standard deviations finite and > 0".into());
    }
    if spec.height == 0 || spec.width == 0 {
        return bad(format!("size {}x{} is empty", spec.width, spec.height));
    }
    Ok(())
}

/// Channels [`prepare`] produces for `spec`: 1 when the stem is grey, or RGB with one
/// normalisation for every channel (a grey frame replicated is then exact); 3 otherwise.
pub fn output_channels(spec: &InputSpec) -> usize {
    let uniform =
        spec.mean.windows(2).all(|w| w[0] == w[1]) && spec.std.windows(2).all(|w| w[0] == w[1]);
    if spec.channels == 1 || (spec.channels == 3 && uniform) {
        1
    } else {
        3
    }
}

/// One frame to the network's input: black outside the sector, cropped to the sector's
/// bounding box, resized into `spec.height x spec.width` keeping the aspect ratio (black
/// padding, see `resize`), then `(pixel / 255 - mean[c]) / std[c]`.
pub fn prepare(
    image: &Image,
    sector: &Sector,
    spec: &InputSpec,
) -> Result<PreparedInput, PreprocessError> {
    prepare_with(image, None, sector, spec, &mut Vec::new())
}

/// [`prepare`] with the frame's luma plane when the caller already has it, and reused scratch.
fn prepare_with(
    image: &Image,
    grey: Option<&[u8]>,
    sector: &Sector,
    spec: &InputSpec,
    scratch: &mut Vec<f32>,
) -> Result<PreparedInput, PreprocessError> {
    check_spec(spec)?;
    let channels = output_channels(spec);
    let crop = match grey {
        Some(plane) if channels == 1 => {
            mask::check_frame(image, sector)?;
            mask::masked_crop_plane(plane, sector)?
        }
        _ => mask::masked_crop(image, sector, channels == 1)?,
    };
    let place = resize::letterbox(crop.width, crop.height, spec.width, spec.height);
    let resampler = resize::Resampler::new(crop.width, crop.height, place.width, place.height);
    let plane = spec.height * spec.width;
    let mut data = vec![0f32; channels * plane];
    for (c, out) in data.chunks_exact_mut(plane).enumerate() {
        // (p / 255 - mean) / std as one multiply-add.
        let scale = 1.0 / (255.0 * spec.std[c]);
        let offset = -spec.mean[c] / spec.std[c];
        // Padding is black, normalised like any black pixel.
        out.fill(offset);
        resampler.run(
            crop.plane(c),
            scratch,
            out,
            spec.width,
            place.x,
            place.y,
            |v| v * scale + offset,
        );
    }
    Ok(PreparedInput {
        data,
        channels,
        height: spec.height,
        width: spec.width,
    })
}

/// What preprocessing made of one frame.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The network input; `None` when the frame is not usable (see `quality`).
    pub input: Option<PreparedInput>,
    pub quality: FrameQuality,
    /// The sector in force for this frame, shared (not copied) between frames while it holds.
    pub sector: Option<Arc<Sector>>,
}

/// A sector that does not come from detection (override or declared regions), kept as long as
/// its source and the frame size stay the same.
#[derive(Debug)]
struct FixedSector {
    /// The declared regions it was made from; empty for the override.
    regions: Vec<PixelRect>,
    sector: Option<Arc<Sector>>,
    /// Frames until the fan is fitted again inside a declared region where no fit was found yet
    /// (the rectangle is used meanwhile); `None` once fitted, and for the override.
    refit_in: Option<u32>,
}

/// Frames between attempts to fit the fan inside a declared region while none fits (a black
/// start of a clip): 10, a sixth of a second at 60 fps.
const REGION_REFIT_FRAMES: u32 = 10;

/// One stream's preprocessing state: the sector detector, the previous frame (for `frozen`),
/// the configuration, and scratch buffers reused from frame to frame.
#[derive(Debug)]
pub struct Preprocessor {
    config: PreprocessConfig,
    detector: SectorDetector,
    size: Option<(usize, usize)>,
    fixed: Option<FixedSector>,
    grey: Vec<u8>,
    prev: Vec<u8>,
    has_prev: bool,
    source_fps: Option<f64>,
    scratch: Vec<f32>,
    /// Frames are unrelated stills (`echonet infer`/`saliency`/`occlusion` on an image): without
    /// an override or declared region each frame's sector is found in the frame itself
    /// ([`detect_still`]), as motion cannot show it.
    still: bool,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Result<Self, PreprocessError> {
        config.check()?;
        Ok(Self {
            detector: SectorDetector::new(config.detector.clone())?,
            config,
            size: None,
            fixed: None,
            grey: Vec::new(),
            prev: Vec::new(),
            has_prev: false,
            source_fps: None,
            scratch: Vec::new(),
            still: false,
        })
    }

    /// A preprocessor for still images: the same sector rules, mask, crop, resize, normalisation
    /// and quality gate as a stream, except that, with neither an override nor a declared region,
    /// the sector is found in each frame by itself ([`detect_still`]) rather than from motion.
    pub fn for_stills(config: PreprocessConfig) -> Result<Self, PreprocessError> {
        Ok(Self {
            still: true,
            ..Self::new(config)?
        })
    }

    /// The source's frame rate, when it says: every frame of a stream slower than
    /// `quality.min_source_fps` is rejected as `low_frame_rate`.
    pub fn set_source_fps(&mut self, fps: Option<f64>) {
        self.source_fps = fps;
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// Finds the sector, checks the frame, and prepares the network input when the frame is
    /// usable. Errors are for malformed frames, an override that misses the frame, or a bad
    /// `spec`; an unusable frame is not an error but a `Processed` with reasons.
    pub fn process(
        &mut self,
        frame: &Frame,
        spec: &InputSpec,
    ) -> Result<Processed, PreprocessError> {
        let image = &frame.image;
        let (w, h) = (image.width, image.height);
        if w == 0 || h == 0 || image.data.len() != w * h * image.format.channels() {
            return Err(PreprocessError::BadFrame(format!(
                "frame {}: {} bytes for a {w}x{h} {:?} image",
                frame.seq,
                image.data.len(),
                image.format
            )));
        }
        if self.size != Some((w, h)) {
            // A new geometry: nothing learnt about the old one applies.
            self.size = Some((w, h));
            self.fixed = None;
            self.has_prev = false;
            self.detector.reset();
        }
        grey_into(image, &mut self.grey);
        let sector = self.sector_for(frame)?;
        let stats = match &sector {
            Some(s) => Some(SectorStats::measure(
                image,
                &self.grey,
                self.has_prev.then_some(self.prev.as_slice()),
                s,
                self.config.quality.colour_min_chroma,
            )?),
            None => None,
        };
        let mut quality = assess(stats.as_ref(), &self.config.quality);
        if let Some(r) = self
            .source_fps
            .and_then(|fps| low_frame_rate(fps, &self.config.quality))
        {
            quality.reasons.push(r);
        }
        let input = match (&sector, quality.is_valid()) {
            (Some(s), true) => Some(prepare_with(
                image,
                Some(&self.grey),
                s,
                spec,
                &mut self.scratch,
            )?),
            _ => None,
        };
        std::mem::swap(&mut self.grey, &mut self.prev);
        self.has_prev = true;
        Ok(Processed {
            input,
            quality,
            sector,
        })
    }

    /// Override first, then the source's declared regions, then detection.
    fn sector_for(&mut self, frame: &Frame) -> Result<Option<Arc<Sector>>, PreprocessError> {
        let (w, h) = (frame.image.width, frame.image.height);
        if let Some(o) = &self.config.sector_override {
            if let Some(f) = &self.fixed {
                return Ok(f.sector.clone());
            }
            let sector = Some(Arc::new(Sector::from_override(o, w, h)?));
            self.fixed = Some(FixedSector {
                regions: Vec::new(),
                sector: sector.clone(),
                refit_in: None,
            });
            return Ok(sector);
        }
        let regions = &frame.geometry.regions;
        if !regions.is_empty() {
            let cached = self
                .fixed
                .as_mut()
                .filter(|f| f.regions == *regions && f.refit_in.is_none_or(|n| n != 0));
            let sector = match cached {
                Some(f) => {
                    f.refit_in = f.refit_in.map(|n| n.saturating_sub(1));
                    f.sector.clone()
                }
                None => {
                    // The fan inside the declared rectangle, so text the rectangle holds is
                    // masked; the rectangle itself until a frame shows the fan.
                    let found = Sector::in_regions(
                        &frame.geometry,
                        &self.grey,
                        w,
                        h,
                        &self.config.detector,
                    );
                    let refit_in = match &found {
                        Some((_, false)) => Some(REGION_REFIT_FRAMES),
                        _ => None,
                    };
                    let s = found.map(|(s, _)| Arc::new(s));
                    self.fixed = Some(FixedSector {
                        regions: regions.clone(),
                        sector: s.clone(),
                        refit_in,
                    });
                    s
                }
            };
            if sector.is_some() {
                return Ok(sector);
            }
        }
        if self.still {
            return Ok(detect_still(&self.grey, w, h, None, &self.config.detector).map(Arc::new));
        }
        self.detector.push(&self.grey, w, h)
    }
}

/// A frame made ready for the model (or found unfit) by the preprocessing stage: what the frame
/// path carries from preprocess to inference and the display.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The normalised input, shared: the inference stage and the display's saliency worker read
    /// the same buffer. `None` when the frame must not feed an estimate.
    pub input: Option<Arc<PreparedInput>>,
    /// Why the frame is unfit (empty when fit).
    pub reasons: Vec<UnfitReason>,
    /// The sector in force (shared while it holds): its outline for the display, and what
    /// saliency maps may attribute to.
    pub sector: Option<Arc<Sector>>,
}

/// The newest usable model input, kept for on-demand work (the display's saliency maps): the
/// normalised frame of source frame `seq` and the sector it was cut from.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub seq: u64,
    pub input: Arc<PreparedInput>,
    pub sector: Option<Arc<Sector>>,
}

/// The preprocessing stage's seam (the live pipeline and offline prediction): sector, mask,
/// crop, resize, normalise, quality checks. Tests put their own preparers here.
pub trait FramePreparer: Send {
    fn prepare(&mut self, frame: &Frame, spec: &InputSpec) -> Prepared;
}

/// The preprocessing stage. A malformed frame or a configuration that cannot apply to it is
/// logged and the frame marked unusable (`bad_frame`), never a panic.
impl FramePreparer for Preprocessor {
    fn prepare(&mut self, frame: &Frame, spec: &InputSpec) -> Prepared {
        match self.process(frame, spec) {
            Ok(p) => Prepared {
                input: p.input.map(Arc::new),
                reasons: p.quality.reasons.iter().map(|r| (*r).into()).collect(),
                sector: p.sector,
            },
            Err(e) => {
                tracing::warn!("frame {}: {e}", frame.seq);
                Prepared {
                    input: None,
                    reasons: vec![UnfitReason::BadFrame],
                    sector: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::synth::Scene;
    use super::*;
    use crate::frame::SourceGeometry;

    fn spec(size: usize, channels: usize, mean: f32, std: f32) -> InputSpec {
        InputSpec {
            height: size,
            width: size,
            channels,
            mean: vec![mean; channels],
            std: vec![std; channels],
        }
    }

    fn rect(x0: usize, y0: usize, x1: usize, y1: usize) -> PixelRect {
        PixelRect { x0, y0, x1, y1 }
    }

    fn frame(seq: u64, image: Image, geometry: SourceGeometry) -> Frame {
        Frame {
            seq,
            media_time: Duration::from_millis(seq * 16),
            captured_at: Instant::now(),
            captured_wall: SystemTime::now(),
            image,
            geometry: Arc::new(geometry),
        }
    }

    #[test]
    fn known_image_gives_known_values() {
        // 20x10 frame of white "text" with an 8x4 sector at (4, 2) whose columns alternate 0
        // and 200; a 4x2 output halves it, averaging each pair to 100.
        let mut data = vec![255u8; 200];
        for y in 2..6 {
            for x in 4..12 {
                data[y * 20 + x] = if x % 2 == 0 { 0 } else { 200 };
            }
        }
        let image = Image::gray(20, 10, data).unwrap();
        let sector = Sector::rect(rect(4, 2, 12, 6), 20, 10).unwrap();
        let spec = InputSpec {
            height: 2,
            width: 4,
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
        };
        let out = prepare(&image, &sector, &spec).unwrap();
        let want = (100.0 / 255.0 - 0.5) / 0.25;
        assert_eq!((out.channels, out.height, out.width), (1, 2, 4));
        for v in &out.data {
            assert!((v - want).abs() < 1e-5, "{v} vs {want}");
        }
    }

    #[test]
    fn letterbox_padding_is_normalised_black() {
        // A 40x10 sector of 255 into 20x20: content 20x5 at rows 7..12, the rest black.
        let image = Image::gray(40, 10, vec![255; 400]).unwrap();
        let sector = Sector::rect(rect(0, 0, 40, 10), 40, 10).unwrap();
        let spec = spec(20, 1, 0.5, 0.5);
        let out = prepare(&image, &sector, &spec).unwrap();
        let black = (0.0 - 0.5) / 0.5;
        let white = (1.0 - 0.5) / 0.5;
        for y in 0..20 {
            let want = if (7..12).contains(&y) { white } else { black };
            for x in 0..20 {
                assert!((out.data[y * 20 + x] - want).abs() < 1e-5, "({x},{y})");
            }
        }
    }

    #[test]
    fn text_outside_the_sector_never_reaches_the_output() {
        // The sector holds black, everything outside it is bright text: the output is all black.
        let scene = Scene::standard();
        let sector = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        let data = sector
            .mask()
            .iter()
            .map(|&inside| if inside { 0 } else { 255 })
            .collect();
        let image = Image::gray(scene.width, scene.height, data).unwrap();
        for spec in [spec(299, 3, 0.5, 0.5), spec(96, 1, 0.2, 0.3)] {
            let out = prepare(&image, &sector, &spec).unwrap();
            let black = -spec.mean[0] / spec.std[0];
            assert!(out.data.iter().all(|&v| (v - black).abs() < 1e-6));
        }
        // And with bright speckle inside, only the fan's area lights up: the top corners of the
        // bounding box (outside the fan) stay black.
        let image = scene.image(3, PixelFormat::Rgb8);
        let spec = spec(299, 3, 0.5, 0.5);
        let out = prepare(&image, &sector, &spec).unwrap();
        let black = -1.0;
        let place = resize::letterbox(sector.bbox().width(), sector.bbox().height(), 299, 299);
        let corner = place.y * 299 + place.x;
        assert!((out.data[corner] - black).abs() < 1e-6);
        assert!(out.data.iter().any(|&v| v > 0.0));
    }

    #[test]
    fn output_channels_and_length_follow_the_spec() {
        let scene = Scene::standard();
        let sector = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        let image = scene.image(1, PixelFormat::Rgb8);
        let imagenet = InputSpec {
            height: 224,
            width: 160,
            channels: 3,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        };
        for (spec, channels) in [
            (spec(299, 3, 0.5, 0.5), 1),
            (spec(299, 1, 0.5, 0.5), 1),
            (imagenet, 3),
        ] {
            let out = prepare(&image, &sector, &spec).unwrap();
            assert_eq!(out.channels, channels);
            assert_eq!(out.data.len(), channels * spec.height * spec.width);
            assert!(out.data.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn rgb_channels_normalise_separately() {
        let px = [10u8, 100, 200];
        let image = Image::new(8, 8, PixelFormat::Rgb8, px.repeat(64)).unwrap();
        let sector = Sector::rect(rect(2, 2, 6, 6), 8, 8).unwrap();
        let spec = InputSpec {
            height: 8,
            width: 8,
            channels: 3,
            mean: vec![0.1, 0.2, 0.3],
            std: vec![0.5, 0.6, 0.7],
        };
        let out = prepare(&image, &sector, &spec).unwrap();
        for (c, &p) in px.iter().enumerate() {
            let want = (p as f32 / 255.0 - spec.mean[c]) / spec.std[c];
            // Enlarging a constant 4x4 to 8x8 keeps it constant.
            for v in &out.data[c * 64..(c + 1) * 64] {
                assert!((v - want).abs() < 1e-5, "channel {c}: {v} vs {want}");
            }
        }
        // With one normalisation for all channels the same frame goes in as its luma.
        let uniform = spec_with_size(8);
        let out = prepare(&image, &sector, &uniform).unwrap();
        let want = (luma(10, 100, 200) as f32 / 255.0 - 0.5) / 0.5;
        assert_eq!(out.channels, 1);
        assert!(out.data.iter().all(|v| (v - want).abs() < 1e-5));
    }

    fn spec_with_size(size: usize) -> InputSpec {
        spec(size, 3, 0.5, 0.5)
    }

    #[test]
    fn bad_spec_and_mismatched_sector_are_errors() {
        let image = Image::gray(8, 8, vec![0; 64]).unwrap();
        let sector = Sector::rect(rect(0, 0, 8, 8), 8, 8).unwrap();
        let mut s = spec_with_size(8);
        s.std[1] = 0.0;
        assert!(matches!(
            prepare(&image, &sector, &s),
            Err(PreprocessError::InvalidSpec(_))
        ));
        let mut s = spec_with_size(8);
        s.channels = 2;
        assert!(prepare(&image, &sector, &s).is_err());
        let other = Sector::rect(rect(0, 0, 8, 8), 9, 8).unwrap();
        assert!(matches!(
            prepare(&image, &other, &spec_with_size(8)),
            Err(PreprocessError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn preprocessor_detects_then_prepares() {
        let scene = Scene::standard();
        let spec = spec_with_size(299);
        let mut pre = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let window = pre.config().detector.window_frames as u64;
        let mut counts = QualityCounts::default();
        for t in 0..window + 10 {
            let f = frame(
                t,
                scene.image(t as u32, PixelFormat::Rgb8),
                SourceGeometry::default(),
            );
            let p = pre.process(&f, &spec).unwrap();
            counts.record(&p.quality);
            if t < window {
                assert_eq!(p.quality.reasons, vec![QualityReason::NoSector]);
                assert!(p.input.is_none() && p.sector.is_none());
            } else {
                assert!(p.quality.is_valid(), "frame {t}: {:?}", p.quality);
                let input = p.input.unwrap();
                assert_eq!(input.data.len(), 299 * 299);
                assert!(matches!(p.sector.unwrap().shape(), SectorShape::Fan(_)));
            }
        }
        assert_eq!(counts.no_sector, window);
    }

    #[test]
    fn override_bypasses_detection_and_frozen_frames_are_dropped() {
        let scene = Scene::standard();
        let config = PreprocessConfig {
            sector_override: Some(SectorOverride::Fan(scene.fan)),
            ..Default::default()
        };
        let mut pre = Preprocessor::new(config).unwrap();
        let spec = spec_with_size(64);
        let img = scene.image(0, PixelFormat::Gray8);
        let first = pre
            .process(&frame(0, img.clone(), SourceGeometry::default()), &spec)
            .unwrap();
        assert!(first.quality.is_valid() && first.input.is_some());
        let again = pre
            .process(&frame(1, img, SourceGeometry::default()), &spec)
            .unwrap();
        assert_eq!(again.quality.reasons, vec![QualityReason::Frozen]);
        assert!(again.input.is_none());
        assert!(Arc::ptr_eq(
            first.sector.as_ref().unwrap(),
            again.sector.as_ref().unwrap()
        ));
        // An override that misses the frame is an error, not a silent fallback.
        let away = PreprocessConfig {
            sector_override: Some(SectorOverride::Fan(Fan {
                apex_x: 5000.0,
                ..scene.fan
            })),
            ..Default::default()
        };
        let mut pre = Preprocessor::new(away).unwrap();
        let f = frame(
            0,
            scene.image(0, PixelFormat::Gray8),
            SourceGeometry::default(),
        );
        assert!(pre.process(&f, &spec).is_err());
    }

    #[test]
    fn declared_regions_are_used_and_size_changes_reset() {
        let scene = Scene::standard();
        let geometry = SourceGeometry {
            regions: vec![rect(40, 40, 600, 460)],
            cm_per_pixel: None,
        };
        let mut pre = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let spec = spec_with_size(64);
        let p = pre
            .process(
                &frame(0, scene.image(0, PixelFormat::Gray8), geometry.clone()),
                &spec,
            )
            .unwrap();
        assert!(p.quality.is_valid());
        // The fan inside the rectangle, not the rectangle: its box lies within the region.
        let s = p.sector.unwrap();
        assert!(matches!(s.shape(), SectorShape::Fan(_)), "{:?}", s.shape());
        let b = s.bbox();
        assert!(
            b.x0 >= 40 && b.y0 >= 40 && b.x1 <= 600 && b.y1 <= 460,
            "{b:?}"
        );
        // A different frame size starts over: no previous frame, no sector carried across.
        let small = Image::gray(320, 240, vec![0; 320 * 240]).unwrap();
        let p = pre
            .process(&frame(1, small, SourceGeometry::default()), &spec)
            .unwrap();
        assert_eq!(p.quality.reasons, vec![QualityReason::NoSector]);
    }

    /// Issue #13 item 4: a declared region that holds burned-in text (the whole screen here:
    /// text, logo, depth marks) gets the fan fitted inside it, so none of that text reaches the
    /// network, from the first frame.
    #[test]
    fn text_inside_a_declared_region_is_masked() {
        let scene = Scene::standard();
        let geometry = SourceGeometry {
            regions: vec![rect(0, 0, 640, 480)],
            cm_per_pixel: None,
        };
        let truth = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        for format in [PixelFormat::Gray8, PixelFormat::Rgb8] {
            let mut pre = Preprocessor::new(PreprocessConfig::default()).unwrap();
            let p = pre
                .process(
                    &frame(0, scene.image(0, format), geometry.clone()),
                    &spec_with_size(64),
                )
                .unwrap();
            assert!(p.quality.is_valid() && p.input.is_some());
            let s = p.sector.unwrap();
            assert!(matches!(s.shape(), SectorShape::Fan(_)), "{:?}", s.shape());
            assert!(s.iou(&truth) > 0.97, "IoU {}", s.iou(&truth));
            let leaked: Vec<_> = scene
                .text_pixels()
                .filter(|&(x, y)| s.contains_pixel(x, y))
                .collect();
            assert!(
                leaked.is_empty(),
                "text inside the sector: {:?}",
                &leaked[..leaked.len().min(5)]
            );
        }
        // The old behaviour, for contrast: the rectangle itself keeps the text.
        let r = Sector::from_regions(&geometry, 640, 480).unwrap();
        assert!(scene.text_pixels().any(|(x, y)| r.contains_pixel(x, y)));
    }

    /// A black first frame fits nothing: the rectangle is used until a later frame shows the fan.
    #[test]
    fn a_black_start_is_refitted_later() {
        let scene = Scene::standard();
        let geometry = SourceGeometry {
            regions: vec![rect(0, 0, 640, 480)],
            cm_per_pixel: None,
        };
        let mut pre = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let spec = spec_with_size(32);
        let black = Image::gray(640, 480, vec![0; 640 * 480]).unwrap();
        let p = pre
            .process(&frame(0, black, geometry.clone()), &spec)
            .unwrap();
        assert!(matches!(p.sector.unwrap().shape(), SectorShape::Rect(_)));
        let mut shape = None;
        for t in 1..=REGION_REFIT_FRAMES as u64 + 1 {
            let f = frame(
                t,
                scene.image(t as u32, PixelFormat::Gray8),
                geometry.clone(),
            );
            shape = pre
                .process(&f, &spec)
                .unwrap()
                .sector
                .map(|s| s.shape().clone());
        }
        assert!(matches!(shape, Some(SectorShape::Fan(_))), "{shape:?}");
    }

    /// Still frames (a PNG for `echonet infer`): the sector comes from the frame itself, the
    /// same fan motion detection finds, and the text never reaches the input.
    #[test]
    fn a_still_frame_finds_its_own_fan() {
        let scene = Scene::standard();
        let truth = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        let mut pre = Preprocessor::for_stills(PreprocessConfig::default()).unwrap();
        let p = pre
            .process(
                &frame(
                    0,
                    scene.image(5, PixelFormat::Rgb8),
                    SourceGeometry::default(),
                ),
                &spec_with_size(64),
            )
            .unwrap();
        assert!(p.quality.is_valid() && p.input.is_some(), "{:?}", p.quality);
        let s = p.sector.unwrap();
        assert!(matches!(s.shape(), SectorShape::Fan(_)), "{:?}", s.shape());
        assert!(s.iou(&truth) > 0.97, "IoU {}", s.iou(&truth));
        assert!(!scene.text_pixels().any(|(x, y)| s.contains_pixel(x, y)));
        // A stream preprocessor needs motion: one frame is not enough.
        let mut live = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let p = live
            .process(
                &frame(
                    0,
                    scene.image(5, PixelFormat::Rgb8),
                    SourceGeometry::default(),
                ),
                &spec_with_size(64),
            )
            .unwrap();
        assert_eq!(p.quality.reasons, vec![QualityReason::NoSector]);
        // A black frame has no sector at all.
        let black = Image::gray(640, 480, vec![0; 640 * 480]).unwrap();
        let p = pre
            .process(
                &frame(1, black, SourceGeometry::default()),
                &spec_with_size(64),
            )
            .unwrap();
        assert_eq!(p.quality.reasons, vec![QualityReason::NoSector]);
    }

    #[test]
    fn slow_source_rejects_every_frame() {
        let scene = Scene::standard();
        let config = PreprocessConfig {
            sector_override: Some(SectorOverride::Fan(scene.fan)),
            ..Default::default()
        };
        let mut pre = Preprocessor::new(config).unwrap();
        pre.set_source_fps(Some(7.5));
        let f = frame(
            0,
            scene.image(0, PixelFormat::Gray8),
            SourceGeometry::default(),
        );
        let p = pre.process(&f, &spec_with_size(64)).unwrap();
        assert_eq!(p.quality.reasons, vec![QualityReason::LowFrameRate]);
        assert!(p.input.is_none());
    }

    #[test]
    fn config_parses_from_toml() {
        let c: PreprocessConfig = toml::from_str(
            "[detector]\nwindow_frames = 30\n[quality]\nfrozen_below = 2.0\n[sector_override]\nkind = \"rect\"\nx0 = 0\ny0 = 0\nx1 = 10\ny1 = 10\n",
        )
        .unwrap();
        assert_eq!(c.detector.window_frames, 30);
        assert!(c.check().is_ok());
        assert!(toml::from_str::<PreprocessConfig>("[detectr]\n").is_err());
        assert_eq!(
            toml::from_str::<PreprocessConfig>("").unwrap(),
            PreprocessConfig::default()
        );
    }
}
