//! The phantom patient and its acquisition: `PhantomParams`, seeded random patients, validation.

use super::random::SplitMix64;
use super::*;

/// Everything that defines one phantom patient and its acquisition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhantomParams {
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    pub heart_rate_bpm: f64,
    pub edv_ml: f64,
    pub esv_ml: f64,
    /// Depth of the scan sector; sets `cm_per_pixel`.
    pub depth_cm: f64,
    /// Seeds the speckle (and, through [`PhantomParams::random`], the patient).
    pub seed: u64,
    /// Probe gain (multiplies echo levels) and offset (grey levels added).
    pub gain: f64,
    pub offset: f64,
    /// LV long-axis tilt added to the standard view, degrees (positive: base toward screen right).
    pub tilt_deg: f64,
    /// Heart position jitter (lateral to screen right, axial downward), cm.
    pub shift_cm: (f64, f64),
}

impl Default for PhantomParams {
    /// A healthy adult at rest (EDV 120 mL, ESV 48 mL: EF 60 %, 72 bpm) at 640x480, 30 fps,
    /// 16 cm depth, neutral probe settings.
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fps: 30.0,
            heart_rate_bpm: 72.0,
            edv_ml: 120.0,
            esv_ml: 48.0,
            depth_cm: 16.0,
            seed: 0,
            gain: 1.0,
            offset: 0.0,
            tilt_deg: 0.0,
            shift_cm: (0.0, 0.0),
        }
    }
}

/// Ranges [`PhantomParams::random`] draws from (uniformly).
pub const RANDOM_EDV_ML: (f64, f64) = (70.0, 220.0);
pub const RANDOM_EF_PERCENT: (f64, f64) = (15.0, 75.0);
pub const RANDOM_HEART_RATE_BPM: (f64, f64) = (50.0, 110.0);
pub const RANDOM_GAIN: (f64, f64) = (0.85, 1.2);
pub const RANDOM_OFFSET: (f64, f64) = (-8.0, 10.0);
pub const RANDOM_TILT_DEG: (f64, f64) = (-5.0, 5.0);
pub const RANDOM_SHIFT_CM: (f64, f64) = (-0.3, 0.3);

impl PhantomParams {
    /// A plausible patient drawn deterministically from `seed` (image size, fps and depth at
    /// their defaults): EDV 70-220 mL, EF 15-75 % (ESV = EDV (1 - EF)), heart rate 50-110 bpm,
    /// probe gain 0.85-1.2 and offset -8..10 grey levels, LV tilt ±5° and position ±0.3 cm.
    pub fn random(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5048_414e_544f_4d00);
        let edv = rng.uniform(RANDOM_EDV_ML);
        let ef = rng.uniform(RANDOM_EF_PERCENT);
        let heart_rate_bpm = rng.uniform(RANDOM_HEART_RATE_BPM);
        let gain = rng.uniform(RANDOM_GAIN);
        let offset = rng.uniform(RANDOM_OFFSET);
        let tilt_deg = rng.uniform(RANDOM_TILT_DEG);
        let shift_cm = (rng.uniform(RANDOM_SHIFT_CM), rng.uniform(RANDOM_SHIFT_CM));
        Self {
            edv_ml: edv,
            esv_ml: edv * (1.0 - ef / 100.0),
            heart_rate_bpm,
            gain,
            offset,
            tilt_deg,
            shift_cm,
            seed,
            ..Self::default()
        }
    }

    /// Ejection fraction, percent: (EDV - ESV) / EDV.
    pub fn ef_percent(&self) -> f64 {
        100.0 * (self.edv_ml - self.esv_ml) / self.edv_ml
    }

    /// Seconds per heartbeat.
    pub fn beat_period_s(&self) -> f64 {
        60.0 / self.heart_rate_bpm
    }

    pub(super) fn validate(&self) -> Result<(), PhantomError> {
        fn check(
            ok: bool,
            name: &'static str,
            value: String,
            reason: &'static str,
        ) -> Result<(), PhantomError> {
            if ok {
                Ok(())
            } else {
                Err(PhantomError::InvalidParam {
                    name,
                    value,
                    reason,
                })
            }
        }
        check(
            (160..=4096).contains(&self.width),
            "width",
            self.width.to_string(),
            "must be 160..=4096 px",
        )?;
        check(
            (120..=4096).contains(&self.height),
            "height",
            self.height.to_string(),
            "must be 120..=4096 px",
        )?;
        check(
            self.fps.is_finite() && (0.5..=1000.0).contains(&self.fps),
            "fps",
            self.fps.to_string(),
            "must be 0.5..=1000",
        )?;
        check(
            self.heart_rate_bpm.is_finite() && (20.0..=250.0).contains(&self.heart_rate_bpm),
            "heart_rate_bpm",
            self.heart_rate_bpm.to_string(),
            "must be 20..=250",
        )?;
        check(
            self.edv_ml.is_finite() && (10.0..=400.0).contains(&self.edv_ml),
            "edv_ml",
            self.edv_ml.to_string(),
            "must be 10..=400 mL",
        )?;
        check(
            self.esv_ml.is_finite() && self.esv_ml >= 1.0 && self.esv_ml < self.edv_ml,
            "esv_ml",
            self.esv_ml.to_string(),
            "must be at least 1 mL and below EDV",
        )?;
        check(
            self.depth_cm.is_finite() && (6.0..=30.0).contains(&self.depth_cm),
            "depth_cm",
            self.depth_cm.to_string(),
            "must be 6..=30 cm",
        )?;
        check(
            self.gain.is_finite() && (0.1..=10.0).contains(&self.gain),
            "gain",
            self.gain.to_string(),
            "must be 0.1..=10",
        )?;
        check(
            self.offset.is_finite() && self.offset.abs() <= 128.0,
            "offset",
            self.offset.to_string(),
            "must be within ±128 grey levels",
        )?;
        check(
            self.tilt_deg.is_finite() && self.tilt_deg.abs() <= 30.0,
            "tilt_deg",
            self.tilt_deg.to_string(),
            "must be within ±30 degrees",
        )?;
        check(
            self.shift_cm.0.is_finite()
                && self.shift_cm.1.is_finite()
                && self.shift_cm.0.abs() <= 3.0
                && self.shift_cm.1.abs() <= 3.0,
            "shift_cm",
            format!("{:?}", self.shift_cm),
            "must be within ±3 cm each way",
        )
    }
}

/// The seed of clip `index` in a set generated from `base`: `base * 1000 + index`, so a set holds
/// at most 1000 clips and sets from different bases never share a clip. `None` on overflow or
/// for an index of 1000 or more.
pub fn clip_seed(base: u64, index: u32) -> Option<u64> {
    if index >= 1000 {
        return None;
    }
    base.checked_mul(1000)?.checked_add(u64::from(index))
}
