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
    /// Which view the probe shows (the EchoNet tasks are defined on the apical four-chamber).
    #[serde(default)]
    pub view: PhantomView,
    /// A pacemaker or ICD lead runs through the right atrium into the right ventricle.
    #[serde(default)]
    pub pacemaker: bool,
    /// Left-atrial size relative to a normal atrium of this heart (length and width); at
    /// [`LA_SEVERE_SCALE`] or more the atrium is severely dilated.
    #[serde(default = "one")]
    pub la_scale: f64,
    /// Myocardial volume relative to the normal for this EDV; above [`WALL_NORMAL_MAX_SCALE`]
    /// the LV walls are thickened (concentric hypertrophy).
    #[serde(default = "one")]
    pub wall_scale: f64,
    /// Bright linear echoes of the right heart that are not a lead: a moderator band across the
    /// RV's apical half and a Chiari network filament in the RA (tissue, not metal: no acoustic
    /// shadow, dimmer than a lead). Never drawn by [`PhantomParams::random`]; training turns them
    /// on for a share of its patients (`echonet train --phantom-lead-mimics`) as hard negatives
    /// for the `pacemaker` head, which then has to find the lead itself, not any bright line in
    /// the right heart (issue #13 item 5).
    #[serde(default)]
    pub lead_mimics: bool,
}

fn one() -> f64 {
    1.0
}

/// The view the phantom's probe shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhantomView {
    /// Apical four-chamber: LV right of centre, RV left, both atria below.
    #[default]
    A4c,
    /// Apical two-chamber: the LV and LA only (the probe rotated off the right heart), with the
    /// LV centred in the fan.
    A2c,
}

impl PhantomView {
    pub fn is_a4c(self) -> bool {
        self == Self::A4c
    }

    /// The label burned into the image ("A4C", "A2C").
    pub fn label(self) -> &'static str {
        match self {
            Self::A4c => "A4C",
            Self::A2c => "A2C",
        }
    }
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
            view: PhantomView::A4c,
            pacemaker: false,
            la_scale: 1.0,
            wall_scale: 1.0,
            lead_mimics: false,
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
/// Shares of random patients with each finding, and of clips in another view than A4C.
pub const RANDOM_PACEMAKER_SHARE: f64 = 0.25;
pub const RANDOM_LA_DILATED_SHARE: f64 = 0.25;
pub const RANDOM_WALL_THICK_SHARE: f64 = 0.35;
pub const RANDOM_NOT_A4C_SHARE: f64 = 0.15;
/// `la_scale` of normal and of severely dilated atria; the gap between them keeps the label
/// unambiguous (severe dilation is a clear finding, not a borderline one).
pub const RANDOM_LA_NORMAL_SCALE: (f64, f64) = (0.9, 1.15);
pub const RANDOM_LA_DILATED_SCALE: (f64, f64) = (1.45, 1.75);
/// `la_scale` from which an atrium counts as severely dilated (`la_dilation` = 1).
pub const LA_SEVERE_SCALE: f64 = 1.3;
/// `wall_scale` of normal and of thickened walls: 1.7-2.4 times the myocardium makes the ED
/// wall about 1.5-1.9 times as thick (about 1.4-1.8 cm instead of 0.9-1.0).
pub const RANDOM_WALL_NORMAL_SCALE: (f64, f64) = (0.85, 1.15);
pub const RANDOM_WALL_THICK_SCALE: (f64, f64) = (1.7, 2.4);
/// `wall_scale` up to which walls count as normal (`lv_wall_normal` = 1).
pub const WALL_NORMAL_MAX_SCALE: f64 = 1.3;

impl PhantomParams {
    /// A plausible patient drawn deterministically from `seed` (image size, fps and depth at
    /// their defaults): EDV 70-220 mL, EF 15-75 % (ESV = EDV (1 - EF)), heart rate 50-110 bpm,
    /// probe gain 0.85-1.2 and offset -8..10 grey levels, LV tilt ±5° and position ±0.3 cm.
    /// Findings come from a second stream of the same seed (so adding them left every earlier
    /// draw as it was): a pacemaker lead in 25 % of patients, a severely dilated left atrium in
    /// 25 %, thickened LV walls in 35 %, and an apical two-chamber view instead of the A4C in
    /// 15 % (each independent; see the `RANDOM_*` constants).
    pub fn random(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5048_414e_544f_4d00);
        let edv = rng.uniform(RANDOM_EDV_ML);
        let ef = rng.uniform(RANDOM_EF_PERCENT);
        let heart_rate_bpm = rng.uniform(RANDOM_HEART_RATE_BPM);
        let gain = rng.uniform(RANDOM_GAIN);
        let offset = rng.uniform(RANDOM_OFFSET);
        let tilt_deg = rng.uniform(RANDOM_TILT_DEG);
        let shift_cm = (rng.uniform(RANDOM_SHIFT_CM), rng.uniform(RANDOM_SHIFT_CM));
        let mut findings = SplitMix64::new(seed ^ 0x4649_4e44_494e_4753);
        let mut chance = |share: f64| findings.uniform((0.0, 1.0)) < share;
        let pacemaker = chance(RANDOM_PACEMAKER_SHARE);
        let la_dilated = chance(RANDOM_LA_DILATED_SHARE);
        let wall_thick = chance(RANDOM_WALL_THICK_SHARE);
        let view = if chance(RANDOM_NOT_A4C_SHARE) {
            PhantomView::A2c
        } else {
            PhantomView::A4c
        };
        let la_scale = findings.uniform(if la_dilated {
            RANDOM_LA_DILATED_SCALE
        } else {
            RANDOM_LA_NORMAL_SCALE
        });
        let wall_scale = findings.uniform(if wall_thick {
            RANDOM_WALL_THICK_SCALE
        } else {
            RANDOM_WALL_NORMAL_SCALE
        });
        Self {
            view,
            pacemaker,
            la_scale,
            wall_scale,
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

    /// Severe left-atrial dilation (`la_scale` at least [`LA_SEVERE_SCALE`]).
    pub fn la_dilation(&self) -> bool {
        self.la_scale >= LA_SEVERE_SCALE
    }

    /// Normal LV wall thickness (`wall_scale` at most [`WALL_NORMAL_MAX_SCALE`]).
    pub fn lv_wall_normal(&self) -> bool {
        self.wall_scale <= WALL_NORMAL_MAX_SCALE
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
        )?;
        check(
            self.la_scale.is_finite() && (0.5..=2.5).contains(&self.la_scale),
            "la_scale",
            self.la_scale.to_string(),
            "must be 0.5..=2.5",
        )?;
        check(
            self.wall_scale.is_finite() && (0.5..=3.0).contains(&self.wall_scale),
            "wall_scale",
            self.wall_scale.to_string(),
            "must be 0.5..=3",
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
