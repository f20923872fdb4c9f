//! Per-frame quality checks: whether a frame can go to the model, and if not, why. Each reason
//! has its threshold in [`QualityConfig`]; the statistics are taken inside the sector only, so
//! burned-in text and the ECG trace neither hide a blank image nor make a frozen one look live.

use serde::{Deserialize, Serialize};

use super::sector::Sector;
use super::PreprocessError;
use crate::frame::{Image, PixelFormat};

/// Why a frame is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityReason {
    /// No scanning sector is known (yet), so nothing can be masked.
    NoSector,
    /// The image inside the sector did not change since the previous frame (frozen display).
    Frozen,
    /// The sector is (nearly) black or flat: no probe contact, gain at zero.
    LowSignal,
    /// Colour-Doppler overlay inside the sector; the model reads B-mode only.
    ColourDoppler,
    /// The source delivers fewer frames per second than the paper's 10 fps sampling needs.
    LowFrameRate,
}

impl QualityReason {
    pub const ALL: [QualityReason; 5] = [
        Self::NoSector,
        Self::Frozen,
        Self::LowSignal,
        Self::ColourDoppler,
        Self::LowFrameRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSector => "no_sector",
            Self::Frozen => "frozen",
            Self::LowSignal => "low_signal",
            Self::ColourDoppler => "colour_doppler",
            Self::LowFrameRate => "low_frame_rate",
        }
    }
}

/// Why a sampled frame could not feed an estimate. Travels as this enum from the stage that
/// finds it to the window; it becomes text (`as_str`) only in counters and published records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnfitReason {
    /// The quality gate refused it (no sector, frozen, low signal, colour Doppler, low rate).
    Quality(QualityReason),
    /// The frame was malformed, or the preprocessing configuration could not apply to it.
    BadFrame,
    /// The bundle's `view_a4c` head said it is not an apical four-chamber view.
    NotA4c,
    /// Its pooled features lie beyond the bundle's out-of-distribution threshold: the model
    /// was never trained on anything like it (see `model::ood`).
    OutOfDistribution,
    /// The model failed on it (or gave no output).
    InferenceError,
}

impl UnfitReason {
    /// The name used in records, counters and reports: `frozen`, `bad_frame`, `not_a4c`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quality(q) => q.as_str(),
            Self::BadFrame => "bad_frame",
            Self::NotA4c => "not_a4c",
            Self::OutOfDistribution => "out_of_distribution",
            Self::InferenceError => "inference_error",
        }
    }
}

impl From<QualityReason> for UnfitReason {
    fn from(q: QualityReason) -> Self {
        Self::Quality(q)
    }
}

impl std::fmt::Display for UnfitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for QualityReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds of the quality checks. Grey levels are 0-255 (BT.601 luma for colour frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// `frozen` when the mean absolute grey difference to the previous frame, inside the sector,
    /// is below this, grey levels. Default 0.5: a frozen digital display repeats itself exactly
    /// (0), while live B-mode moves by several levels per frame even at 60 fps. Raise it to
    /// about 2 for analogue captures, whose noise makes a frozen image differ slightly.
    pub frozen_below: f64,
    /// `low_signal` when the mean grey level inside the sector is below this, grey levels.
    /// Default 8: B-mode with contact averages 30 or more; below 8 the sector is black.
    pub low_signal_mean_below: f64,
    /// `low_signal` when the standard deviation of grey inside the sector is below this, grey
    /// levels. Default 4: speckle has a deviation of 20 or more; a flat sector has none.
    pub low_signal_std_below: f64,
    /// A pixel is strongly coloured when `max(R, G, B) - min(R, G, B)` is at least this, levels.
    /// Default 60: Doppler colour maps are far above it, tinted B-mode maps (sepia, blue) and
    /// compression noise below it.
    pub colour_min_chroma: u8,
    /// `colour_doppler` when the share of strongly coloured sector pixels is above this, 0-1.
    /// Default 0.02: a Doppler box covers a tenth of the sector or more, while thin coloured
    /// annotations (callipers, focus marks) stay well under 2 %.
    pub colour_doppler_share_above: f64,
    /// `low_frame_rate` below this source rate, frames per second. Default 10: the paper samples
    /// clips at 10 fps (one frame per 100 ms), impossible from a slower source.
    pub min_source_fps: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            frozen_below: 0.5,
            low_signal_mean_below: 8.0,
            low_signal_std_below: 4.0,
            colour_min_chroma: 60,
            colour_doppler_share_above: 0.02,
            min_source_fps: 10.0,
        }
    }
}

impl QualityConfig {
    pub fn check(&self) -> Result<(), PreprocessError> {
        let bad = |field: &'static str, reason: String| {
            Err(PreprocessError::InvalidConfig { field, reason })
        };
        for (field, v) in [
            ("quality.frozen_below", self.frozen_below),
            ("quality.low_signal_mean_below", self.low_signal_mean_below),
            ("quality.low_signal_std_below", self.low_signal_std_below),
            ("quality.min_source_fps", self.min_source_fps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, format!("is {v}, expected a finite value >= 0"));
            }
        }
        let share = self.colour_doppler_share_above;
        if !(0.0..=1.0).contains(&share) {
            return bad(
                "quality.colour_doppler_share_above",
                format!("is {share}, expected 0 to 1"),
            );
        }
        Ok(())
    }
}

/// The statistics of one frame inside its sector that the checks read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SectorStats {
    /// Sector pixels measured.
    pub pixels: usize,
    /// Mean and standard deviation of grey, levels.
    pub mean: f64,
    pub std: f64,
    /// Mean absolute grey difference to the previous frame, levels; `None` without one.
    pub mean_abs_diff: Option<f64>,
    /// Share of strongly coloured pixels, 0-1 (0 for grey frames).
    pub coloured_share: f64,
}

impl SectorStats {
    /// One pass over the sector's runs. `grey` is `image` as luma, `prev` the previous frame's.
    pub fn measure(
        image: &Image,
        grey: &[u8],
        prev: Option<&[u8]>,
        sector: &Sector,
        min_chroma: u8,
    ) -> Result<Self, PreprocessError> {
        super::mask::check_frame(image, sector)?;
        let n = image.width * image.height;
        if grey.len() != n || prev.is_some_and(|p| p.len() != n) {
            return Err(PreprocessError::BadFrame(format!(
                "grey planes of {} and {:?} bytes for a {}x{} frame",
                grey.len(),
                prev.map(|p| p.len()),
                image.width,
                image.height
            )));
        }
        let w = image.width;
        let (mut sum, mut sum_sq, mut sad, mut coloured) = (0u64, 0u64, 0u64, 0u64);
        for run in sector.runs() {
            let span = run.y * w + run.x0..run.y * w + run.x1;
            let Some(g) = grey.get(span.clone()) else {
                continue;
            };
            // Row sums fit u32 (a row of 255s squared is under 2^32 up to 66 000 pixels wide),
            // which keeps the inner loops vectorisable.
            sum += g.iter().map(|&v| v as u32).sum::<u32>() as u64;
            sum_sq += g.iter().map(|&v| v as u32 * v as u32).sum::<u32>() as u64;
            if let Some(p) = prev.and_then(|p| p.get(span.clone())) {
                sad += g
                    .iter()
                    .zip(p)
                    .map(|(&a, &b)| a.abs_diff(b) as u32)
                    .sum::<u32>() as u64;
            }
            if image.format == PixelFormat::Rgb8 {
                if let Some(rgb) = image.data.get(span.start * 3..span.end * 3) {
                    coloured += rgb
                        .chunks_exact(3)
                        .filter(|p| {
                            let hi = p[0].max(p[1]).max(p[2]);
                            let lo = p[0].min(p[1]).min(p[2]);
                            hi - lo >= min_chroma
                        })
                        .count() as u64;
                }
            }
        }
        let pixels = sector.area();
        let count = pixels.max(1) as f64;
        let mean = sum as f64 / count;
        let var = (sum_sq as f64 / count - mean * mean).max(0.0);
        Ok(Self {
            pixels,
            mean,
            std: var.sqrt(),
            mean_abs_diff: prev.map(|_| sad as f64 / count),
            coloured_share: coloured as f64 / count,
        })
    }
}

/// The verdict on one frame: valid when there is no reason against it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FrameQuality {
    pub reasons: Vec<QualityReason>,
}

impl FrameQuality {
    pub fn is_valid(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Applies the per-frame checks to a frame's sector statistics (`None`: no sector).
pub fn assess(stats: Option<&SectorStats>, cfg: &QualityConfig) -> FrameQuality {
    let Some(s) = stats else {
        return FrameQuality {
            reasons: vec![QualityReason::NoSector],
        };
    };
    let mut reasons = Vec::new();
    if s.mean_abs_diff.is_some_and(|d| d < cfg.frozen_below) {
        reasons.push(QualityReason::Frozen);
    }
    if s.mean < cfg.low_signal_mean_below || s.std < cfg.low_signal_std_below {
        reasons.push(QualityReason::LowSignal);
    }
    if s.coloured_share > cfg.colour_doppler_share_above {
        reasons.push(QualityReason::ColourDoppler);
    }
    FrameQuality { reasons }
}

/// The stream-level check: `Some(LowFrameRate)` when a source's frame rate (frames per second)
/// is below `cfg.min_source_fps`, or is not a number.
pub fn low_frame_rate(source_fps: f64, cfg: &QualityConfig) -> Option<QualityReason> {
    // Slower, or NaN (incomparable): either way the sampling cannot be trusted.
    let slow = !matches!(
        source_fps.partial_cmp(&cfg.min_source_fps),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    );
    slow.then_some(QualityReason::LowFrameRate)
}

/// Frames rejected per reason, e.g. for a stream summary: serialises as
/// `{"no_sector":0,"frozen":2,...}`. A frame with two reasons counts under both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityCounts {
    pub no_sector: u64,
    pub frozen: u64,
    pub low_signal: u64,
    pub colour_doppler: u64,
    pub low_frame_rate: u64,
}

impl QualityCounts {
    fn slot(&mut self, reason: QualityReason) -> &mut u64 {
        match reason {
            QualityReason::NoSector => &mut self.no_sector,
            QualityReason::Frozen => &mut self.frozen,
            QualityReason::LowSignal => &mut self.low_signal,
            QualityReason::ColourDoppler => &mut self.colour_doppler,
            QualityReason::LowFrameRate => &mut self.low_frame_rate,
        }
    }

    pub fn get(&self, reason: QualityReason) -> u64 {
        match reason {
            QualityReason::NoSector => self.no_sector,
            QualityReason::Frozen => self.frozen,
            QualityReason::LowSignal => self.low_signal,
            QualityReason::ColourDoppler => self.colour_doppler,
            QualityReason::LowFrameRate => self.low_frame_rate,
        }
    }

    pub fn add(&mut self, reason: QualityReason) {
        let slot = self.slot(reason);
        *slot = slot.saturating_add(1);
    }

    /// Counts every reason of one frame.
    pub fn record(&mut self, quality: &FrameQuality) {
        for &r in &quality.reasons {
            self.add(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::synth::Scene;
    use super::*;
    use crate::frame::PixelRect;

    fn measure(scene: &Scene, t: u32, prev_t: Option<u32>) -> SectorStats {
        let image = scene.image(t, PixelFormat::Rgb8);
        let sector = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        let prev = prev_t.map(|p| scene.grey(p));
        SectorStats::measure(
            &image,
            &image.to_gray(),
            prev.as_deref(),
            &sector,
            QualityConfig::default().colour_min_chroma,
        )
        .unwrap()
    }

    fn reasons(stats: &SectorStats) -> Vec<QualityReason> {
        assess(Some(stats), &QualityConfig::default()).reasons
    }

    #[test]
    fn a_good_phantom_frame_passes() {
        let s = measure(&Scene::standard(), 5, Some(4));
        assert!(
            s.mean > 30.0 && s.std > 20.0 && s.mean_abs_diff.unwrap() > 10.0,
            "{s:?}"
        );
        assert_eq!(reasons(&s), vec![]);
        // The first frame of a stream has nothing to be frozen against.
        assert_eq!(reasons(&measure(&Scene::standard(), 5, None)), vec![]);
    }

    #[test]
    fn no_sector() {
        let q = assess(None, &QualityConfig::default());
        assert_eq!(q.reasons, vec![QualityReason::NoSector]);
        assert!(!q.is_valid());
    }

    #[test]
    fn frozen_frame() {
        let s = measure(&Scene::standard(), 5, Some(5));
        assert_eq!(s.mean_abs_diff, Some(0.0));
        assert_eq!(reasons(&s), vec![QualityReason::Frozen]);
    }

    #[test]
    fn frozen_ignores_changes_outside_the_sector() {
        // Only the ECG trace (outside the sector) moves between these two frames.
        let scene = Scene::standard();
        let sector = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        let a = scene.image(5, PixelFormat::Gray8);
        let mut b = a.clone();
        let c = scene.image(9, PixelFormat::Gray8);
        for (i, (bv, cv)) in b.data.iter_mut().zip(&c.data).enumerate() {
            if !sector.mask()[i] {
                *bv = *cv;
            }
        }
        assert_ne!(a.data, b.data);
        let s = SectorStats::measure(&b, &b.data, Some(&a.data), &sector, 60).unwrap();
        assert_eq!(reasons(&s), vec![QualityReason::Frozen]);
    }

    #[test]
    fn low_signal_black_and_flat() {
        let mut scene = Scene::standard();
        scene.gain = 0.0;
        // A black sector is also unchanged from the previous (black) frame.
        assert_eq!(
            reasons(&measure(&scene, 5, Some(4))),
            vec![QualityReason::Frozen, QualityReason::LowSignal]
        );
        // Flat mid-grey: bright enough, but no speckle.
        let sector = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        let flat = Image::gray(
            scene.width,
            scene.height,
            vec![120; scene.width * scene.height],
        )
        .unwrap();
        let s = SectorStats::measure(&flat, &flat.data, None, &sector, 60).unwrap();
        assert_eq!((s.mean, s.std), (120.0, 0.0));
        assert_eq!(reasons(&s), vec![QualityReason::LowSignal]);
    }

    #[test]
    fn colour_doppler_box() {
        let mut scene = Scene::standard();
        scene.doppler = Some(PixelRect {
            x0: 260,
            y0: 150,
            x1: 380,
            y1: 300,
        });
        let s = measure(&scene, 5, Some(4));
        assert!(s.coloured_share > 0.05, "{s:?}");
        assert_eq!(reasons(&s), vec![QualityReason::ColourDoppler]);
        // The green ECG and yellow logo outside the sector never count.
        assert_eq!(measure(&Scene::standard(), 5, Some(4)).coloured_share, 0.0);
    }

    #[test]
    fn frame_rate_threshold() {
        let cfg = QualityConfig::default();
        assert_eq!(low_frame_rate(9.9, &cfg), Some(QualityReason::LowFrameRate));
        assert_eq!(
            low_frame_rate(f64::NAN, &cfg),
            Some(QualityReason::LowFrameRate)
        );
        assert_eq!(low_frame_rate(10.0, &cfg), None);
        assert_eq!(low_frame_rate(59.94, &cfg), None);
    }

    #[test]
    fn counts_serialise_by_reason_name() {
        let mut counts = QualityCounts::default();
        counts.record(&FrameQuality {
            reasons: vec![QualityReason::Frozen, QualityReason::LowSignal],
        });
        counts.record(&FrameQuality {
            reasons: vec![QualityReason::Frozen],
        });
        counts.record(&FrameQuality::default());
        assert_eq!(counts.get(QualityReason::Frozen), 2);
        let v = serde_json::to_value(counts).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"no_sector":0,"frozen":2,"low_signal":1,"colour_doppler":0,"low_frame_rate":0})
        );
        for r in QualityReason::ALL {
            assert_eq!(v[r.as_str()], counts.get(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: QualityConfig = toml::from_str("frozen_below = 2.0").unwrap();
        assert_eq!(cfg.frozen_below, 2.0);
        assert_eq!(cfg.min_source_fps, 10.0);
        assert!(toml::from_str::<QualityConfig>("frozen = 2.0").is_err());
        assert!(QualityConfig::default().check().is_ok());
        let bad = QualityConfig {
            colour_doppler_share_above: 2.0,
            ..Default::default()
        };
        assert!(bad.check().is_err());
    }
}
