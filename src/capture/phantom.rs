//! The built-in synthetic apical-4-chamber echo ("phantom"): the product's demo source, the test
//! source of the whole pipeline, and the training data of the bundled model.
//!
//! Everything is a pure function of [`PhantomParams`] and the time: the same seed gives the same
//! bytes on every machine, and the ground truth (LV volume, the LV cavity's pixels, the exact fan)
//! is available beside every frame.
//!
//! The LV cavity is drawn as an ellipse whose long axis `L` (apex to mitral plane) and area `A`
//! satisfy the single-plane area-length relation `V = 8 A² / (3 π L)`; for an ellipse
//! (`A = π L D / 4`) this is the prolate-ellipsoid volume `V = π L D² / 6`. Pixels are square,
//! `cm_per_pixel = depth_cm / sector radius in pixels`, so `A = (pixels inside the LV ellipse) ×
//! cm_per_pixel²` recovers the volume from the image.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::capture::{FrameSource, Pacing, ReplayClock, SourceError, SourceInfo};
use crate::frame::{Frame, Image, PixelRect, SourceGeometry};

/// Why a phantom could not be built from its parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhantomError {
    #[error("phantom parameter {name} = {value}: {reason}")]
    InvalidParam {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "the LV cavity (EDV {edv_ml:.1} mL) leaves the {depth_cm} cm scan sector of a \
         {width}x{height} image; use a larger depth or a smaller EDV"
    )]
    DoesNotFit {
        edv_ml: f64,
        depth_cm: f64,
        width: usize,
        height: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Physiology and anatomy. Lengths in cm, volumes in mL; every number below is a typical adult
// value from echocardiography reference ranges, not a tuning knob of the renderer.
// ---------------------------------------------------------------------------------------------

/// Systole (ED to ES) takes a third of the beat.
const SYSTOLE_FRACTION: f64 = 1.0 / 3.0;
/// Diastole, in fractions of its own duration: early (E-wave) filling brings 75 % of the stroke
/// volume by 45 %, diastasis follows, and the atrial kick (A-wave) adds the last 25 % from 75 %.
const E_FILL_SHARE: f64 = 0.75;
const E_FILL_END: f64 = 0.45;
const A_FILL_START: f64 = 0.75;

/// LV cavity long axis at the reference volume, and the volume it refers to: an adult LV of
/// 120 mL is about 8.2 cm from apex to mitral plane in the apical view.
const LV_REF_LENGTH_CM: f64 = 8.2;
const LV_REF_VOLUME_ML: f64 = 120.0;
/// The long axis scales as V^(1/6): from ED to an ES at 40 % of EDV it shortens by about 14 %
/// (the mitral annulus moves toward the apex), the rest of the volume change is the short axis.
const LV_LENGTH_EXPONENT: f64 = 1.0 / 6.0;
/// Myocardial volume, conserved through the beat (so the wall thickens as the cavity empties):
/// 1.2 mL per mL of EDV for a 120 mL ventricle, relatively less in dilated ones (exponent 0.7),
/// which is the eccentric remodelling seen in large, poorly contracting hearts.
const MYO_ML_PER_EDV_ML_AT_REF: f64 = 1.2;
const MYO_EDV_EXPONENT: f64 = 0.7;
/// Thickness of the closed mitral/tricuspid leaflets and annulus.
const VALVE_CM: f64 = 0.2;
/// RV free wall and atrial walls.
const RV_WALL_CM: f64 = 0.4;
const ATRIAL_WALL_CM: f64 = 0.25;
/// Extra thickness of the septum beyond the LV wall (its RV side).
const SEPTUM_EXTRA_CM: f64 = 0.15;
/// RV at ED in a 120 mL heart: 3.0 cm wide, 0.8 times the LV length, narrowing by a quarter in
/// systole; the tricuspid annulus sits 0.5 cm nearer the apex than the mitral annulus.
const RV_ED_WIDTH_CM: f64 = 3.0;
const RV_LENGTH_OF_LV: f64 = 0.8;
const RV_SYSTOLIC_NARROWING: f64 = 0.25;
const TRICUSPID_APICAL_OFFSET_CM: f64 = 0.5;
/// Atria at ED in a 120 mL heart (long x wide); they fill while the ventricles empty.
const LA_SIZE_CM: (f64, f64) = (4.4, 3.8);
const RA_SIZE_CM: (f64, f64) = (4.0, 3.4);
const ATRIAL_SYSTOLIC_GROWTH: f64 = 0.15;
/// Open mitral orifice at peak filling, as a fraction of the LV short axis.
const VALVE_ORIFICE_OF_D: f64 = 0.35;

/// Epicardial LV apex below the probe (cm), its lateral offset to screen right (cm) and the tilt
/// of the LV long axis (base toward screen right), before each patient's jitter.
const APEX_DEPTH_CM: f64 = 2.4;
const APEX_LATERAL_CM: f64 = 0.3;
const AXIS_TILT_DEG: f64 = 5.0;

// ---------------------------------------------------------------------------------------------
// Imaging. Grey levels are in display units (0-255) before the probe's gain and offset.
// ---------------------------------------------------------------------------------------------

/// Half-opening of the fan each side of the beam axis (86 degrees in all), typical of cardiac
/// phased-array probes.
const SECTOR_HALF_ANGLE_DEG: f64 = 43.0;
/// Echo levels at zero depth: blood is nearly anechoic, myocardium and valves bright.
const LEVEL_BLOOD: f32 = 12.0;
const LEVEL_TISSUE: f32 = 80.0;
const LEVEL_MYOCARDIUM: f32 = 170.0;
const LEVEL_VALVE: f32 = 190.0;
/// Log compression maps a 60 dB dynamic range onto 0-255.
const GREY_PER_DB: f64 = 255.0 / 60.0;
/// Attenuation left after time-gain compensation, dB per cm of depth.
const RESIDUAL_ATTENUATION_DB_PER_CM: f64 = 0.8;
/// Speckle cells: 0.08 cm along the beam, 0.6 degrees across it (lateral resolution degrades
/// with depth, so speckle widens with depth like on a real scanner).
const SPECKLE_AXIAL_CM: f64 = 0.08;
const SPECKLE_LATERAL_DEG: f64 = 0.6;
/// Share of the speckle variance that is frozen per patient (tissue texture) rather than new in
/// every frame (decorrelation from motion and blood flow).
const SPECKLE_STATIC_SHARE: f64 = 0.7;
/// Tissue edges blur over this width (the point-spread function), at least one pixel.
const EDGE_BLUR_CM: f64 = 0.06;
/// Lowest value inside the fan: the receiver's noise floor, so the fan's footprint is exactly
/// the set of non-zero pixels in every frame.
const FAN_FLOOR: f32 = 1.0;
const TEXT_LEVEL: u8 = 235;
const ECG_LEVEL: u8 = 230;
/// ECG trace: how many seconds the strip shows.
const ECG_WINDOW_S: f64 = 3.0;

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

    fn validate(&self) -> Result<(), PhantomError> {
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

/// The exact scan sector: a wedge of a disc with its apex (the probe) at the top centre.
/// A pixel belongs to it when its centre `(x + 0.5, y + 0.5)` does.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SectorTruth {
    /// Apex in pixel coordinates (continuous; the top-left corner of the image is (0, 0)).
    pub apex_x: f64,
    pub apex_y: f64,
    pub radius_px: f64,
    /// Half the opening, each side of straight down.
    pub half_angle_rad: f64,
}

impl SectorTruth {
    /// Angle of the fan's left edge, radians from straight down (negative: screen left).
    pub fn start_angle_rad(&self) -> f64 {
        -self.half_angle_rad
    }

    /// Angle of the fan's right edge, radians from straight down.
    pub fn end_angle_rad(&self) -> f64 {
        self.half_angle_rad
    }

    /// Whether the point lies in the fan (edges included).
    pub fn contains_point(&self, x: f64, y: f64) -> bool {
        let dx = x - self.apex_x;
        let dy = y - self.apex_y;
        // |angle| <= half  <=>  |dx| <= dy tan(half) for points below the apex.
        dy > 0.0
            && dx * dx + dy * dy <= self.radius_px * self.radius_px
            && dx.abs() <= dy * self.half_angle_rad.tan()
    }

    /// Whether pixel `(x, y)` belongs to the fan.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        self.contains_point(x as f64 + 0.5, y as f64 + 0.5)
    }

    /// Row-major membership of every pixel of a `width` x `height` image.
    pub fn mask(&self, width: usize, height: usize) -> Vec<bool> {
        let mut m = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                m.push(self.contains(x, y));
            }
        }
        m
    }

    /// Smallest rectangle holding every fan pixel of a `width` x `height` image.
    pub fn bounding_box(&self, width: usize, height: usize) -> PixelRect {
        let mut r = PixelRect {
            x0: width,
            y0: height,
            x1: 0,
            y1: 0,
        };
        for y in 0..height {
            for x in 0..width {
                if self.contains(x, y) {
                    r.x0 = r.x0.min(x);
                    r.y0 = r.y0.min(y);
                    r.x1 = r.x1.max(x + 1);
                    r.y1 = r.y1.max(y + 1);
                }
            }
        }
        r
    }
}

/// Where everything goes on screen; depends only on the image size.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Layout {
    sector: SectorTruth,
    margin: usize,
    text_scale: usize,
    ecg: PixelRect,
    bar: PixelRect,
}

impl Layout {
    fn new(width: usize, height: usize) -> Self {
        let (w, h) = (width as f64, height as f64);
        let margin = (width / 80).max(2);
        let gap = 4.0;
        let apex_y = (0.05 * h).round().max(2.0);
        let ecg_h = (0.14 * h).round();
        let bar_w = (width / 64).max(4);
        let half = SECTOR_HALF_ANGLE_DEG.to_radians();
        // The fan fills the height above the ECG strip unless the width (which must also hold
        // the grey bar at the right) is the tighter limit.
        let bar_x0 = width - margin - bar_w;
        let radius_by_height = h - apex_y - ecg_h - gap;
        let radius_by_width = (bar_x0 as f64 - gap - w / 2.0) / half.sin();
        let radius_px = radius_by_height.min(radius_by_width).floor();
        let sector = SectorTruth {
            apex_x: w / 2.0,
            apex_y,
            radius_px,
            half_angle_rad: half,
        };
        let sector_bottom = (apex_y + radius_px).ceil() as usize;
        // The strip keeps its height at the bottom even when the fan is narrower than tall.
        let ecg = PixelRect {
            x0: margin,
            y0: (sector_bottom + gap as usize)
                .max(height - margin - ecg_h as usize)
                .min(height - margin - 1),
            x1: width - margin,
            y1: height - margin,
        };
        let text_scale = (height / 240).max(1);
        // The bar sits beside the right edge of the fan, below the text block.
        let text_block_bottom = margin + 3 * 9 * text_scale;
        let bar = PixelRect {
            x0: bar_x0,
            y0: (apex_y + 0.2 * radius_px)
                .round()
                .max((text_block_bottom + 2 * margin) as f64) as usize,
            x1: bar_x0 + bar_w,
            y1: (apex_y + 0.7 * radius_px).round() as usize,
        };
        Self {
            sector,
            margin,
            text_scale,
            ecg,
            bar,
        }
    }
}

/// The exact scan sector of a `width` x `height` phantom image (independent of depth and patient).
pub fn sector_truth(width: usize, height: usize) -> SectorTruth {
    Layout::new(width, height).sector
}

/// The LV at one instant, in physical and pixel terms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LvShape {
    pub volume_ml: f64,
    /// Cavity long axis L, apex to mitral plane.
    pub length_cm: f64,
    /// Cavity short axis D.
    pub diameter_cm: f64,
    /// Cavity area A = π L D / 4 (so V = 8 A² / (3 π L)).
    pub area_cm2: f64,
    /// Myocardial wall thickness.
    pub wall_cm: f64,
    /// Cavity centre, pixel coordinates.
    pub centre_px: (f64, f64),
    /// Long-axis angle from straight down, radians (positive: base toward screen right).
    pub tilt_rad: f64,
}

/// Centres (pixel coordinates) of the four chamber cavities at one instant.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChamberCentres {
    pub lv: (f64, f64),
    pub rv: (f64, f64),
    pub la: (f64, f64),
    pub ra: (f64, f64),
}

/// An ellipse in the heart frame (u along the LV long axis from the epicardial apex toward the
/// base, v across it toward screen right), cm. Its apical and basal halves may differ in length
/// (the LV wall is thick at the apex and only valve-thin at the base).
#[derive(Debug, Clone, Copy)]
struct Ellipse {
    cu: f64,
    cv: f64,
    a_apex: f64,
    a_base: f64,
    b: f64,
}

impl Ellipse {
    fn symmetric(cu: f64, cv: f64, a: f64, b: f64) -> Self {
        Self {
            cu,
            cv,
            a_apex: a,
            a_base: a,
            b,
        }
    }

    /// Implicit value f (< 1 inside) and the semi-axis used for the point.
    fn implicit(&self, u: f64, v: f64) -> (f64, f64, f64) {
        let du = u - self.cu;
        let dv = v - self.cv;
        let a = if du < 0.0 { self.a_apex } else { self.a_base };
        let f = (du / a) * (du / a) + (dv / self.b) * (dv / self.b);
        (f, du / (a * a), dv / (self.b * self.b))
    }
}

/// Every structure of the heart at one instant.
#[derive(Debug, Clone, Copy)]
struct HeartState {
    volume_ml: f64,
    length_cm: f64,
    diameter_cm: f64,
    wall_cm: f64,
    lv_cavity: Ellipse,
    lv_outer: Ellipse,
    rv_cavity: Ellipse,
    rv_outer: Ellipse,
    la_cavity: Ellipse,
    la_outer: Ellipse,
    ra_cavity: Ellipse,
    ra_outer: Ellipse,
    /// Closed leaflets across each annulus, drawn under the cavities so only the part between
    /// ventricle and atrium shows.
    mitral_valve: Ellipse,
    tricuspid_valve: Ellipse,
    mitral_orifice: Option<Ellipse>,
    tricuspid_orifice: Option<Ellipse>,
}

/// Fraction of the stroke volume in the LV at `phase` (0..1 of the beat): 1 at ED (phase 0),
/// 0 at ES (phase 1/3); C¹-smooth.
fn fill_fraction(phase: f64) -> f64 {
    if phase < SYSTOLE_FRACTION {
        smooth_step(1.0 - phase / SYSTOLE_FRACTION)
    } else {
        let x = (phase - SYSTOLE_FRACTION) / (1.0 - SYSTOLE_FRACTION);
        E_FILL_SHARE * smooth_step(x / E_FILL_END)
            + (1.0 - E_FILL_SHARE) * smooth_step((x - A_FILL_START) / (1.0 - A_FILL_START))
    }
}

/// Filling rate in diastole, normalised so that peak early filling is 1; 0 in systole. The
/// atrioventricular valves open in proportion (and close in diastasis, as real leaflets drift).
fn filling_rate(phase: f64) -> f64 {
    if phase < SYSTOLE_FRACTION {
        return 0.0;
    }
    let x = (phase - SYSTOLE_FRACTION) / (1.0 - SYSTOLE_FRACTION);
    let bell = |z: f64| {
        if (0.0..=1.0).contains(&z) {
            (std::f64::consts::PI * z).sin()
        } else {
            0.0
        }
    };
    let e = E_FILL_SHARE / E_FILL_END * bell(x / E_FILL_END);
    let a = (1.0 - E_FILL_SHARE) / (1.0 - A_FILL_START)
        * bell((x - A_FILL_START) / (1.0 - A_FILL_START));
    ((e + a) / (E_FILL_SHARE / E_FILL_END)).min(1.0)
}

/// Cosine ease from 0 (z <= 0) to 1 (z >= 1) with zero slope at both ends.
fn smooth_step(z: f64) -> f64 {
    let z = z.clamp(0.0, 1.0);
    0.5 * (1.0 - (std::f64::consts::PI * z).cos())
}

/// Cavity long axis at volume `v`.
fn lv_length_cm(v: f64) -> f64 {
    LV_REF_LENGTH_CM * (v / LV_REF_VOLUME_ML).powf(LV_LENGTH_EXPONENT)
}

/// Uniform wall thickness t of a prolate shell around an L x D cavity holding `myo_ml`:
/// π (L + 2t)(D + 2t)² / 6 = V + M, solved by bisection (the left side grows with t).
fn wall_thickness_cm(length: f64, diameter: f64, cavity_ml: f64, myo_ml: f64) -> f64 {
    let outer =
        |t: f64| std::f64::consts::PI * (length + 2.0 * t) * (diameter + 2.0 * t).powi(2) / 6.0;
    let target = cavity_ml + myo_ml;
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if outer(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Precomputed per-pixel tables (they depend on the image size and depth, not on time).
#[derive(Default)]
struct Tables {
    /// Per row, the half-open span of fan pixels (empty when start == end).
    spans: Vec<(usize, usize)>,
    /// Per pixel: grey levels lost to attenuation.
    attenuation: Vec<f32>,
    /// Per pixel: the speckle cell in each of two grids offset by half a cell (their average
    /// hides the cell edges).
    cells: [Vec<u32>; 2],
    cell_count: usize,
    /// Per cell: the frozen part of the speckle.
    static_speckle: [Vec<f32>; 2],
    /// Annotations that never change (text, grey bar): (pixel index, value).
    overlay: Vec<(u32, u8)>,
    text_regions: Vec<PixelRect>,
}

/// The phantom: a patient, a probe and a screen layout. Cheap to render from any thread
/// (`&self` only).
pub struct Phantom {
    params: PhantomParams,
    layout: Layout,
    cm_per_px: f64,
    tilt_rad: f64,
    myo_ml: f64,
    tables: Tables,
    speckle_lut: Vec<f32>,
}

impl std::fmt::Debug for Phantom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phantom")
            .field("params", &self.params)
            .field("sector", &self.layout.sector)
            .field("cm_per_px", &self.cm_per_px)
            .finish_non_exhaustive()
    }
}

impl Phantom {
    pub fn new(params: PhantomParams) -> Result<Self, PhantomError> {
        params.validate()?;
        let layout = Layout::new(params.width, params.height);
        let cm_per_px = params.depth_cm / layout.sector.radius_px;
        let speckle_lut = speckle_lut();
        let myo_ml = MYO_ML_PER_EDV_ML_AT_REF
            * LV_REF_VOLUME_ML.powf(1.0 - MYO_EDV_EXPONENT)
            * params.edv_ml.powf(MYO_EDV_EXPONENT);
        // The tables are built only once the patient is known to fit: they cost a few ms.
        let mut phantom = Self {
            tilt_rad: (AXIS_TILT_DEG + params.tilt_deg).to_radians(),
            tables: Tables::default(),
            params,
            layout,
            cm_per_px,
            myo_ml,
            speckle_lut,
        };
        phantom.check_fit()?;
        phantom.tables = phantom.build_tables();
        Ok(phantom)
    }

    pub fn params(&self) -> &PhantomParams {
        &self.params
    }

    /// The exact scan sector.
    pub fn sector(&self) -> SectorTruth {
        self.layout.sector
    }

    /// Physical size of a (square) pixel.
    pub fn cm_per_pixel(&self) -> f64 {
        self.cm_per_px
    }

    /// The sector's bounding box as the one imaging region, and the pixel size.
    pub fn geometry(&self) -> SourceGeometry {
        SourceGeometry {
            regions: vec![self
                .layout
                .sector
                .bounding_box(self.params.width, self.params.height)],
            cm_per_pixel: Some((self.cm_per_px, self.cm_per_px)),
        }
    }

    /// Rectangles holding every burned-in annotation outside the fan: the text blocks, the ECG
    /// strip and the grey-scale bar. Everything else outside the fan is black.
    pub fn annotation_regions(&self) -> Vec<PixelRect> {
        let mut r = self.tables.text_regions.clone();
        r.push(self.layout.ecg);
        r.push(self.layout.bar);
        r
    }

    /// Media time of frame `index`: index / fps.
    pub fn frame_time(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.params.fps)
    }

    /// Position in the heartbeat, 0..1, with ED at 0 and ES at 1/3.
    pub fn cardiac_phase(&self, t: Duration) -> f64 {
        (t.as_secs_f64() / self.params.beat_period_s()).fract()
    }

    /// LV volume: EDV at the start of every beat, falling smoothly to ESV at one third of the
    /// beat (end-systole), then refilling (early filling, diastasis, atrial kick) to EDV.
    pub fn lv_volume_ml(&self, t: Duration) -> f64 {
        let p = &self.params;
        p.esv_ml + (p.edv_ml - p.esv_ml) * fill_fraction(self.cardiac_phase(t))
    }

    /// The LV cavity's size and place at `t`.
    pub fn lv_shape(&self, t: Duration) -> LvShape {
        let s = self.heart_state(t);
        let e = s.lv_cavity;
        LvShape {
            volume_ml: s.volume_ml,
            length_cm: s.length_cm,
            diameter_cm: s.diameter_cm,
            area_cm2: std::f64::consts::PI * s.length_cm * s.diameter_cm / 4.0,
            wall_cm: s.wall_cm,
            centre_px: self.heart_to_px(e.cu, e.cv),
            tilt_rad: self.tilt_rad,
        }
    }

    /// Cavity centres of the four chambers at `t`.
    pub fn chamber_centres(&self, t: Duration) -> ChamberCentres {
        let s = self.heart_state(t);
        let c = |e: Ellipse| self.heart_to_px(e.cu, e.cv);
        ChamberCentres {
            lv: c(s.lv_cavity),
            rv: c(s.rv_cavity),
            la: c(s.la_cavity),
            ra: c(s.ra_cavity),
        }
    }

    /// Row-major: which pixels' centres lie inside the LV cavity at `t`.
    pub fn lv_mask(&self, t: Duration) -> Vec<bool> {
        let e = self.heart_state(t).lv_cavity;
        let (w, h) = (self.params.width, self.params.height);
        let mut mask = vec![false; w * h];
        let r = self.ellipse_box(&e, 0.0);
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                let (u, v) = self.px_to_heart(x as f64 + 0.5, y as f64 + 0.5);
                mask[y * w + x] = e.implicit(u, v).0 <= 1.0;
            }
        }
        mask
    }

    /// The frame at time `t`. Anatomy follows `t` exactly; the speckle belongs to the nearest
    /// frame index (round(t × fps)), so `render(frame_time(i))` is frame i of the stream.
    pub fn render(&self, t: Duration) -> Image {
        let p = &self.params;
        let (w, h) = (p.width, p.height);
        let state = self.heart_state(t);
        let mut level = vec![LEVEL_TISSUE; w * h];
        let half_edge = 0.5 * self.edge_cm();
        // Painter's order: walls and valves, then cavities over them, then open valve orifices.
        for e in [
            &state.lv_outer,
            &state.rv_outer,
            &state.la_outer,
            &state.ra_outer,
        ] {
            self.paint(&mut level, e, LEVEL_MYOCARDIUM, half_edge);
        }
        for e in [&state.mitral_valve, &state.tricuspid_valve] {
            self.paint(&mut level, e, LEVEL_VALVE, half_edge);
        }
        for e in [
            &state.la_cavity,
            &state.ra_cavity,
            &state.rv_cavity,
            &state.lv_cavity,
        ] {
            self.paint(&mut level, e, LEVEL_BLOOD, half_edge);
        }
        for e in [&state.mitral_orifice, &state.tricuspid_orifice]
            .into_iter()
            .flatten()
        {
            self.paint(&mut level, e, LEVEL_BLOOD, half_edge);
        }

        let frame_index = (t.as_secs_f64() * p.fps).round() as u64;
        let dynamic = self.dynamic_speckle(frame_index);
        let ws = (SPECKLE_STATIC_SHARE.sqrt() / 2.0) as f32;
        let wd = ((1.0 - SPECKLE_STATIC_SHARE).sqrt() / 2.0) as f32;
        let (gain, offset) = (p.gain as f32, p.offset as f32);
        let tb = &self.tables;
        let mut out = vec![0u8; w * h];
        for (y, &(x0, x1)) in tb.spans.iter().enumerate() {
            for i in y * w + x0..y * w + x1 {
                let (c0, c1) = (tb.cells[0][i] as usize, tb.cells[1][i] as usize);
                let speckle = ws * (tb.static_speckle[0][c0] + tb.static_speckle[1][c1])
                    + wd * (dynamic[0][c0] + dynamic[1][c1]);
                let v = offset + gain * (level[i] - tb.attenuation[i] + speckle);
                out[i] = v.clamp(FAN_FLOOR, 255.0) as u8;
            }
        }
        for &(i, v) in &tb.overlay {
            out[i as usize] = v;
        }
        self.draw_ecg(&mut out, t);
        Image {
            width: w,
            height: h,
            format: crate::frame::PixelFormat::Gray8,
            data: out,
        }
    }

    // --- anatomy -----------------------------------------------------------------------------

    fn heart_state(&self, t: Duration) -> HeartState {
        let p = &self.params;
        let phase = self.cardiac_phase(t);
        let fill = fill_fraction(phase);
        let volume = p.esv_ml + (p.edv_ml - p.esv_ml) * fill;
        let l = lv_length_cm(volume);
        let d = (6.0 * volume / (std::f64::consts::PI * l)).sqrt();
        let wall = wall_thickness_cm(l, d, volume, self.myo_ml);
        // Other chambers scale with the heart's size (dilated ventricles come with large atria).
        let size = (p.edv_ml / LV_REF_VOLUME_ML).cbrt();

        let lv_cavity = Ellipse::symmetric(wall + l / 2.0, 0.0, l / 2.0, d / 2.0);
        let lv_outer = Ellipse {
            cu: lv_cavity.cu,
            cv: 0.0,
            a_apex: l / 2.0 + wall,
            a_base: l / 2.0 + VALVE_CM,
            b: d / 2.0 + wall,
        };
        let mitral_u = wall + l;

        let rv_w = RV_ED_WIDTH_CM * size * (1.0 - RV_SYSTOLIC_NARROWING * (1.0 - fill));
        let rv_l = RV_LENGTH_OF_LV * lv_length_cm(p.edv_ml) * (1.0 - 0.1 * (1.0 - fill));
        let tricuspid_u = mitral_u - TRICUSPID_APICAL_OFFSET_CM;
        // The RV cavity stays left of the line v = -(D/2 + wall + extra), so it never cuts into
        // the LV wall whatever the two ellipses' sizes.
        let rv_cv = -(d / 2.0 + wall + SEPTUM_EXTRA_CM + rv_w / 2.0);
        let rv_cavity = Ellipse::symmetric(tricuspid_u - rv_l / 2.0, rv_cv, rv_l / 2.0, rv_w / 2.0);
        let rv_outer = Ellipse {
            cu: rv_cavity.cu,
            cv: rv_cv,
            a_apex: rv_l / 2.0 + RV_WALL_CM,
            a_base: rv_l / 2.0 + VALVE_CM,
            b: rv_w / 2.0 + RV_WALL_CM,
        };

        let atrial_growth = 1.0 + ATRIAL_SYSTOLIC_GROWTH * (1.0 - fill);
        let half_width = |wid: f64| wid * size * atrial_growth / 2.0;
        // The atria sit under their ventricles (LA on the LV axis, RA on the RV's); where the
        // ventricles are narrow both are narrowed alike so an interatrial septum (two atrial
        // walls) always separates them.
        let (la_b, ra_b) = (half_width(LA_SIZE_CM.1), half_width(RA_SIZE_CM.1));
        let squeeze = ((-rv_cv - 2.0 * ATRIAL_WALL_CM) / (la_b + ra_b)).min(1.0);
        let atrium = |top: f64, cv: f64, len: f64, b: f64| {
            let a = len * size * atrial_growth / 2.0;
            // The atrial wall starts where the ventricle's valve plane ends.
            let cu = top + ATRIAL_WALL_CM + a;
            (
                Ellipse::symmetric(cu, cv, a, b),
                Ellipse::symmetric(cu, cv, a + ATRIAL_WALL_CM, b + ATRIAL_WALL_CM),
            )
        };
        let (la_cavity, la_outer) = atrium(mitral_u + VALVE_CM, 0.0, LA_SIZE_CM.0, la_b * squeeze);
        let (ra_cavity, ra_outer) =
            atrium(tricuspid_u + VALVE_CM, rv_cv, RA_SIZE_CM.0, ra_b * squeeze);

        // The leaflets span a little more than the widest orifice, centred on the annulus.
        let leaflets = |u: f64, cv: f64, width: f64| {
            Ellipse::symmetric(
                u + VALVE_CM / 2.0,
                cv,
                VALVE_CM,
                0.6 * VALVE_ORIFICE_OF_D * width,
            )
        };
        let opening = filling_rate(phase);
        let orifice = |u: f64, cv: f64, width: f64| {
            (opening > 0.05).then(|| {
                Ellipse::symmetric(
                    u + VALVE_CM / 2.0,
                    cv,
                    1.5 * VALVE_CM,
                    opening * width / 2.0,
                )
            })
        };
        HeartState {
            volume_ml: volume,
            length_cm: l,
            diameter_cm: d,
            wall_cm: wall,
            lv_cavity,
            lv_outer,
            rv_cavity,
            rv_outer,
            la_cavity,
            la_outer,
            ra_cavity,
            ra_outer,
            mitral_valve: leaflets(mitral_u, 0.0, d),
            tricuspid_valve: leaflets(tricuspid_u, rv_cv, rv_w),
            mitral_orifice: orifice(mitral_u, 0.0, VALVE_ORIFICE_OF_D * d),
            tricuspid_orifice: orifice(tricuspid_u, rv_cv, VALVE_ORIFICE_OF_D * rv_w),
        }
    }

    /// Epicardial apex in cm from the probe (lateral to screen right, depth down).
    fn apex_cm(&self) -> (f64, f64) {
        (
            APEX_LATERAL_CM + self.params.shift_cm.0,
            APEX_DEPTH_CM + self.params.shift_cm.1,
        )
    }

    fn heart_to_px(&self, u: f64, v: f64) -> (f64, f64) {
        let (x0, z0) = self.apex_cm();
        let (s, c) = self.tilt_rad.sin_cos();
        let x = x0 + u * s + v * c;
        let z = z0 + u * c - v * s;
        let sec = &self.layout.sector;
        (
            sec.apex_x + x / self.cm_per_px,
            sec.apex_y + z / self.cm_per_px,
        )
    }

    fn px_to_heart(&self, px: f64, py: f64) -> (f64, f64) {
        let (x0, z0) = self.apex_cm();
        let sec = &self.layout.sector;
        let x = (px - sec.apex_x) * self.cm_per_px - x0;
        let z = (py - sec.apex_y) * self.cm_per_px - z0;
        let (s, c) = self.tilt_rad.sin_cos();
        (x * s + z * c, x * c - z * s)
    }

    /// The LV cavity must stay inside the fan through the whole beat (with room for its blurred
    /// edge), or its pixel area would no longer encode the volume.
    fn check_fit(&self) -> Result<(), PhantomError> {
        let p = &self.params;
        let period = p.beat_period_s();
        let margin_px = self.edge_cm() / self.cm_per_px + 1.0;
        let sec = self.layout.sector;
        // Moving the apex down by margin / sin(half angle) moves the straight edges inward by
        // the margin; the arc shrinks by it as well.
        let inner = SectorTruth {
            apex_y: sec.apex_y + margin_px / sec.half_angle_rad.sin(),
            radius_px: sec.radius_px - margin_px - margin_px / sec.half_angle_rad.sin(),
            ..sec
        };
        for k in 0..24 {
            let t = Duration::from_secs_f64(period * k as f64 / 24.0);
            let e = self.heart_state(t).lv_cavity;
            for j in 0..96 {
                let ang = std::f64::consts::TAU * j as f64 / 96.0;
                let a = if ang.cos() < 0.0 { e.a_apex } else { e.a_base };
                let (x, y) = self.heart_to_px(e.cu + a * ang.cos(), e.cv + e.b * ang.sin());
                if !inner.contains_point(x, y) {
                    return Err(PhantomError::DoesNotFit {
                        edv_ml: p.edv_ml,
                        depth_cm: p.depth_cm,
                        width: p.width,
                        height: p.height,
                    });
                }
            }
        }
        Ok(())
    }

    // --- rendering ---------------------------------------------------------------------------

    fn edge_cm(&self) -> f64 {
        EDGE_BLUR_CM.max(self.cm_per_px)
    }

    /// Pixel rectangle holding the ellipse grown by `grow_cm`, clipped to the image.
    fn ellipse_box(&self, e: &Ellipse, grow_cm: f64) -> PixelRect {
        let (s, c) = self.tilt_rad.sin_cos();
        let a = e.a_apex.max(e.a_base) + grow_cm;
        let b = e.b + grow_cm;
        let hx = ((a * s).powi(2) + (b * c).powi(2)).sqrt() / self.cm_per_px;
        let hy = ((a * c).powi(2) + (b * s).powi(2)).sqrt() / self.cm_per_px;
        let (cx, cy) = self.heart_to_px(e.cu, e.cv);
        let (w, h) = (self.params.width as f64, self.params.height as f64);
        let clip = |v: f64, hi: f64| v.clamp(0.0, hi) as usize;
        PixelRect {
            x0: clip((cx - hx).floor() - 1.0, w),
            y0: clip((cy - hy).floor() - 1.0, h),
            x1: clip((cx + hx).ceil() + 1.0, w),
            y1: clip((cy + hy).ceil() + 1.0, h),
        }
    }

    /// Blends `value` into `level` over the ellipse, with an edge ramp `2 * half_edge` cm wide
    /// centred on the boundary (so the blended area equals the ellipse's area).
    fn paint(&self, level: &mut [f32], e: &Ellipse, value: f32, half_edge: f64) {
        let w = self.params.width;
        let r = self.ellipse_box(e, half_edge);
        // Points whose scaled radius s = sqrt(f) is beyond 1 ± δ are at least δ × (smallest
        // semi-axis) from the boundary, i.e. fully in or out.
        let delta = half_edge / e.a_apex.min(e.a_base).min(e.b);
        let f_in = (1.0 - delta).max(0.0).powi(2);
        let f_out = (1.0 + delta).powi(2);
        let edge = 2.0 * half_edge;
        let (s, c) = self.tilt_rad.sin_cos();
        let step = self.cm_per_px;
        for y in r.y0..r.y1 {
            let (mut u, mut v) = self.px_to_heart(r.x0 as f64 + 0.5, y as f64 + 0.5);
            let row = &mut level[y * w..(y + 1) * w];
            for px in &mut row[r.x0..r.x1] {
                let (f, gu, gv) = e.implicit(u, v);
                if f < f_out {
                    let cover = if f <= f_in {
                        1.0
                    } else {
                        // First-order distance to the boundary: (f - 1) / |∇f|.
                        let d = (f - 1.0) / (2.0 * (gu * gu + gv * gv).sqrt());
                        (0.5 - d / edge).clamp(0.0, 1.0)
                    } as f32;
                    *px += (value - *px) * cover;
                }
                u += step * s;
                v += step * c;
            }
        }
    }

    /// Per-frame speckle for both grids, from (seed, frame index).
    fn dynamic_speckle(&self, frame_index: u64) -> [Vec<f32>; 2] {
        let n = self.tables.cell_count;
        let mut out = [vec![0f32; n], vec![0f32; n]];
        for (g, table) in out.iter_mut().enumerate() {
            let key =
                mix(self.params.seed ^ mix(frame_index.wrapping_add(1) ^ ((g as u64 + 1) << 60)));
            for (i, v) in table.iter_mut().enumerate() {
                *v = self.speckle_lut[(mix(key ^ i as u64) >> (64 - LUT_BITS)) as usize];
            }
        }
        out
    }

    fn build_tables(&self) -> Tables {
        let p = &self.params;
        let (w, h) = (p.width, p.height);
        let sec = self.layout.sector;
        let mut spans = Vec::with_capacity(h);
        for y in 0..h {
            let inside: Vec<usize> = (0..w).filter(|&x| sec.contains(x, y)).collect();
            // A row of a wedge of a disc is one interval (both conditions bound |dx|).
            spans.push(match (inside.first(), inside.last()) {
                (Some(&a), Some(&b)) => (a, b + 1),
                _ => (0, 0),
            });
        }
        let grey_per_cm = (RESIDUAL_ATTENUATION_DB_PER_CM * GREY_PER_DB) as f32;
        let axial_px = SPECKLE_AXIAL_CM / self.cm_per_px;
        let lateral_rad = SPECKLE_LATERAL_DEG.to_radians();
        let n_r = (sec.radius_px / axial_px).ceil() as usize + 2;
        let n_a = (2.0 * sec.half_angle_rad / lateral_rad).ceil() as usize + 2;
        let cell_count = n_r * n_a;
        let mut attenuation = vec![0f32; w * h];
        let mut cells = [vec![0u32; w * h], vec![0u32; w * h]];
        for (y, &(x0, x1)) in spans.iter().enumerate() {
            for x in x0..x1 {
                let dx = x as f64 + 0.5 - sec.apex_x;
                let dy = y as f64 + 0.5 - sec.apex_y;
                let r = (dx * dx + dy * dy).sqrt();
                let ang = dx.atan2(dy) + sec.half_angle_rad;
                let i = y * w + x;
                attenuation[i] = (r * self.cm_per_px) as f32 * grey_per_cm;
                for (g, grid) in cells.iter_mut().enumerate() {
                    let off = 0.5 * g as f64;
                    let ir = ((r / axial_px + off) as usize).min(n_r - 1);
                    let ia = ((ang / lateral_rad + off).max(0.0) as usize).min(n_a - 1);
                    grid[i] = (ir * n_a + ia) as u32;
                }
            }
        }
        let mut static_speckle = [vec![0f32; cell_count], vec![0f32; cell_count]];
        for (g, table) in static_speckle.iter_mut().enumerate() {
            let key = mix(p.seed ^ mix(0xA5A5_0000 + g as u64));
            for (i, v) in table.iter_mut().enumerate() {
                *v = self.speckle_lut[(mix(key ^ i as u64) >> (64 - LUT_BITS)) as usize];
            }
        }
        let (overlay, text_regions) = self.build_overlay();
        Tables {
            spans,
            attenuation,
            cells,
            cell_count,
            static_speckle,
            overlay,
            text_regions,
        }
    }

    fn labels(&self) -> (Vec<String>, Vec<String>) {
        let p = &self.params;
        let number = |v: f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", v.round() as i64)
            } else {
                format!("{v:.1}")
            }
        };
        (
            vec!["ECHONET PHANTOM".into(), "SYNTHETIC A4C".into()],
            vec![
                format!("DEPTH {} CM", number(p.depth_cm)),
                format!("{} FPS", number(p.fps)),
                format!("HR {} BPM", p.heart_rate_bpm.round() as i64),
            ],
        )
    }

    /// Text blocks (top left: product, top right: acquisition) and the grey-scale bar.
    fn build_overlay(&self) -> (Vec<(u32, u8)>, Vec<PixelRect>) {
        let (w, h) = (self.params.width, self.params.height);
        let lay = &self.layout;
        let sec = lay.sector;
        let mut canvas = vec![0u8; w * h];
        let s = lay.text_scale;
        let (left, right) = self.labels();
        let mut regions = Vec::new();
        for (lines, right_aligned) in [(left, false), (right, true)] {
            let mut rect: Option<PixelRect> = None;
            for (k, line) in lines.iter().enumerate() {
                let text_w = font::text_width(line, s);
                let x = if right_aligned {
                    w.saturating_sub(lay.margin + text_w)
                } else {
                    lay.margin
                };
                let y = lay.margin + k * font::LINE_HEIGHT * s;
                if let Some(r) = font::draw(&mut canvas, w, h, x, y, line, s, TEXT_LEVEL) {
                    rect = Some(match rect {
                        None => r,
                        Some(q) => PixelRect {
                            x0: q.x0.min(r.x0),
                            y0: q.y0.min(r.y0),
                            x1: q.x1.max(r.x1),
                            y1: q.y1.max(r.y1),
                        },
                    });
                }
            }
            regions.extend(rect);
        }
        // Grey-scale bar: 16 steps from white (top) to black.
        let bar = lay.bar;
        for y in bar.y0..bar.y1 {
            let step = 15 - (16 * (y - bar.y0) / bar.height().max(1)).min(15);
            for x in bar.x0..bar.x1 {
                canvas[y * w + x] = (step * 17) as u8;
            }
        }
        let mut overlay = Vec::new();
        for (i, &v) in canvas.iter().enumerate() {
            // Annotations live outside the fan by construction; the check keeps it true on
            // any image size.
            if v != 0 && !sec.contains(i % w, i / w) {
                overlay.push((i as u32, v));
            }
        }
        (overlay, regions)
    }

    /// A scrolling ECG: the right end of the strip is `t`, the left end `t - 3 s`; R waves fall
    /// on the beat starts (end-diastole).
    fn draw_ecg(&self, out: &mut [u8], t: Duration) {
        let w = self.params.width;
        let r = self.layout.ecg;
        if r.width() < 2 || r.height() < 4 {
            return;
        }
        let baseline = r.y0 as f64 + 0.7 * r.height() as f64;
        let amplitude = 0.6 * r.height() as f64;
        let thick = self.layout.text_scale;
        let period = self.params.beat_period_s();
        let now = t.as_secs_f64();
        let span = (r.width() - 1) as f64;
        let y_at = |x: usize| {
            let tau = now - ECG_WINDOW_S * (1.0 - (x - r.x0) as f64 / span);
            let y = baseline - amplitude * ecg_mv(tau.rem_euclid(period), period);
            (y.round() as usize).clamp(r.y0, r.y1 - 1)
        };
        let mut prev = y_at(r.x0);
        for x in r.x0..r.x1 {
            let y = y_at(x);
            let (lo, hi) = (prev.min(y), prev.max(y));
            for yy in lo..=(hi + thick - 1).min(r.y1 - 1) {
                out[yy * w + x] = ECG_LEVEL;
            }
            prev = y;
        }
    }
}

/// ECG amplitude (R wave = 1) at `tb` seconds into a beat of `period` seconds: P wave 0.16 s
/// before the R wave, QRS at the beat start (ED), T wave ending near end-systole. Waves are
/// Gaussians; each is evaluated at its nearest occurrence so the trace is periodic.
fn ecg_mv(tb: f64, period: f64) -> f64 {
    // (centre s, width s, amplitude)
    let waves = [
        (-0.16, 0.025, 0.12),
        (-0.02, 0.008, -0.12),
        (0.0, 0.010, 1.0),
        (0.025, 0.010, -0.25),
        (period * SYSTOLE_FRACTION - 0.08, 0.045, 0.3),
    ];
    waves
        .iter()
        .map(|&(c, wdt, amp)| {
            let d = (tb - c).rem_euclid(period);
            let d = d.min(period - d);
            amp * (-0.5 * (d / wdt).powi(2)).exp()
        })
        .sum()
}

const LUT_BITS: u32 = 12;

/// Log-compressed Rayleigh speckle, grey levels, indexed by a uniform 12-bit number and shifted
/// to zero mean (so speckle adds texture, not brightness).
fn speckle_lut() -> Vec<f32> {
    let n = 1usize << LUT_BITS;
    let db: Vec<f64> = (0..n)
        .map(|i| {
            let u = (i as f64 + 0.5) / n as f64;
            // Rayleigh amplitude (σ = 1) by inverting its CDF; its RMS is √2.
            let a = (-2.0 * (1.0 - u).ln()).sqrt();
            20.0 * (a / std::f64::consts::SQRT_2).log10()
        })
        .collect();
    let mean = db.iter().sum::<f64>() / n as f64;
    db.iter()
        .map(|d| ((d - mean) * GREY_PER_DB) as f32)
        .collect()
}

/// SplitMix64's output function: a fast 64-bit mixer, so hashes of neighbouring inputs are
/// unrelated.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic random numbers for drawing patients (not for anything secret).
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, (lo, hi): (f64, f64)) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }
}

/// A 5x7 bitmap font for the burned-in labels (capitals, digits and a little punctuation).
mod font {
    use crate::frame::PixelRect;

    pub const GLYPH_W: usize = 5;
    pub const GLYPH_H: usize = 7;
    pub const ADVANCE: usize = 6;
    pub const LINE_HEIGHT: usize = 9;

    /// Rows top to bottom; bit 4 is the leftmost column.
    pub fn glyph(c: char) -> Option<[u8; GLYPH_H]> {
        Some(match c {
            'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
            'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
            'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
            'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
            'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
            'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
            'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
            'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
            'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
            'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
            'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
            'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
            'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
            'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
            'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
            'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
            'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
            'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
            'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
            'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
            'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
            'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
            'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
            'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
            'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
            'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
            '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
            '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
            '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
            '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
            '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
            '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
            '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
            '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
            '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
            '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
            ' ' => [0; GLYPH_H],
            '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
            ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
            '-' => [0, 0, 0, 0x1F, 0, 0, 0],
            '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
            '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
            _ => return None,
        })
    }

    pub fn text_width(text: &str, scale: usize) -> usize {
        let n = text.chars().count();
        if n == 0 {
            0
        } else {
            (n * ADVANCE - (ADVANCE - GLYPH_W)) * scale
        }
    }

    /// Draws `text` with its top-left corner at (x, y), clipped to the canvas; returns the
    /// rectangle of the lit pixels, if any. Characters without a glyph are left blank.
    #[allow(clippy::too_many_arguments)]
    pub fn draw(
        canvas: &mut [u8],
        width: usize,
        height: usize,
        x: usize,
        y: usize,
        text: &str,
        scale: usize,
        value: u8,
    ) -> Option<PixelRect> {
        let mut lit: Option<PixelRect> = None;
        for (k, c) in text.chars().enumerate() {
            let Some(rows) = glyph(c) else { continue };
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - gx)) == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let px = x + (k * ADVANCE + gx) * scale + sx;
                            let py = y + gy * scale + sy;
                            if px < width && py < height {
                                canvas[py * width + px] = value;
                                let r = lit.get_or_insert(PixelRect {
                                    x0: px,
                                    y0: py,
                                    x1: px + 1,
                                    y1: py + 1,
                                });
                                r.x0 = r.x0.min(px);
                                r.y0 = r.y0.min(py);
                                r.x1 = r.x1.max(px + 1);
                                r.y1 = r.y1.max(py + 1);
                            }
                        }
                    }
                }
            }
        }
        lit
    }
}

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
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Pixels of `img` below `threshold` among those where `region` is set.
    fn dark_in(img: &Image, region: &[bool], threshold: u8) -> usize {
        img.data
            .iter()
            .zip(region)
            .filter(|&(&v, &r)| r && v < threshold)
            .count()
    }

    fn in_any(rects: &[PixelRect], x: usize, y: usize) -> bool {
        rects
            .iter()
            .any(|r| (r.x0..r.x1).contains(&x) && (r.y0..r.y1).contains(&y))
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let a = Phantom::new(PhantomParams::random(11)).unwrap();
        let b = Phantom::new(PhantomParams::random(11)).unwrap();
        let c = Phantom::new(PhantomParams::random(12)).unwrap();
        assert_eq!(PhantomParams::random(11), PhantomParams::random(11));
        assert_ne!(PhantomParams::random(11), PhantomParams::random(12));
        for k in [0, 1, 17] {
            let t = a.frame_time(k);
            assert_eq!(a.render(t).data, b.render(t).data, "frame {k}");
            assert_ne!(a.render(t).data, c.render(t).data, "frame {k}");
        }
        // Same patient, only the speckle seed changed: still different bytes.
        let d = Phantom::new(PhantomParams {
            seed: 12,
            ..PhantomParams::random(11)
        })
        .unwrap();
        assert_ne!(a.render(Duration::ZERO).data, d.render(Duration::ZERO).data);
        // Speckle changes from frame to frame.
        assert_ne!(
            a.render(a.frame_time(0)).data,
            a.render(a.frame_time(1)).data
        );
    }

    #[test]
    fn random_patients_are_in_range_and_fit_the_sector() {
        for seed in 0..400 {
            let p = PhantomParams::random(seed);
            let ef = p.ef_percent();
            assert!((70.0..220.0).contains(&p.edv_ml), "{p:?}");
            assert!((15.0..75.0).contains(&ef), "{p:?}");
            assert!((50.0..110.0).contains(&p.heart_rate_bpm), "{p:?}");
            assert!((0.85..1.2).contains(&p.gain) && (-8.0..10.0).contains(&p.offset));
            assert!(
                p.tilt_deg.abs() <= 5.0 && p.shift_cm.0.abs() <= 0.3 && p.shift_cm.1.abs() <= 0.3
            );
            if let Err(e) = Phantom::new(p) {
                panic!("seed {seed}: {e}");
            }
        }
        // The corners of the drawn ranges fit too (largest and smallest hearts, tilted and
        // shifted every way).
        for edv in [RANDOM_EDV_ML.0, RANDOM_EDV_ML.1] {
            for ef in [RANDOM_EF_PERCENT.0, RANDOM_EF_PERCENT.1] {
                for tilt in [RANDOM_TILT_DEG.0, RANDOM_TILT_DEG.1] {
                    for sx in [RANDOM_SHIFT_CM.0, RANDOM_SHIFT_CM.1] {
                        for sz in [RANDOM_SHIFT_CM.0, RANDOM_SHIFT_CM.1] {
                            let p = PhantomParams {
                                edv_ml: edv,
                                esv_ml: edv * (1.0 - ef / 100.0),
                                tilt_deg: tilt,
                                shift_cm: (sx, sz),
                                ..PhantomParams::default()
                            };
                            assert!(Phantom::new(p.clone()).is_ok(), "{p:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn volume_curve_hits_edv_at_beat_start_and_esv_at_end_systole() {
        for seed in [1, 2, 3, 99] {
            let p = PhantomParams::random(seed);
            let ph = Phantom::new(p.clone()).unwrap();
            let period = p.beat_period_s();
            let close = |v: f64, want: f64| (v - want).abs() <= 0.005 * want;
            for beat in 0..3 {
                let start = beat as f64 * period;
                assert!(close(ph.lv_volume_ml(secs(start)), p.edv_ml), "{p:?}");
                assert!(
                    close(ph.lv_volume_ml(secs(start + period / 3.0)), p.esv_ml),
                    "{p:?}"
                );
            }
            // Over a fine grid the curve stays within [ESV, EDV] and reaches both; it moves
            // smoothly (no step bigger than the steepest systolic slope allows).
            let n = 3000;
            let vols: Vec<f64> = (0..=n)
                .map(|i| ph.lv_volume_ml(secs(2.0 * period * i as f64 / n as f64)))
                .collect();
            let (lo, hi) = vols
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(
                close(lo, p.esv_ml) && close(hi, p.edv_ml),
                "{lo} {hi} {p:?}"
            );
            let max_step =
                (p.edv_ml - p.esv_ml) * std::f64::consts::PI / 2.0 * 3.0 * (2.0 / n as f64) * 1.01;
            assert!(vols.windows(2).all(|w| (w[1] - w[0]).abs() <= max_step));
            let ef = 100.0 * (hi - lo) / hi;
            assert!(
                (ef - p.ef_percent()).abs() < 0.5,
                "{ef} vs {}",
                p.ef_percent()
            );
            assert!((p.ef_percent() - 100.0 * (p.edv_ml - p.esv_ml) / p.edv_ml).abs() < 1e-12);
            // Systole is the first third: volume falls there and rises after.
            assert!(ph.lv_volume_ml(secs(0.1 * period)) > ph.lv_volume_ml(secs(0.2 * period)));
            assert!(ph.lv_volume_ml(secs(0.5 * period)) < ph.lv_volume_ml(secs(0.9 * period)));
        }
    }

    #[test]
    fn lv_mask_follows_the_area_length_relation() {
        for seed in [4, 5, 6] {
            let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
            let cm2 = ph.cm_per_pixel().powi(2);
            let period = ph.params().beat_period_s();
            for frac in [0.0, 0.1, 0.2, 1.0 / 3.0, 0.5, 0.8] {
                let t = secs(frac * period);
                let shape = ph.lv_shape(t);
                let pixels = ph.lv_mask(t).iter().filter(|&&m| m).count();
                let area = pixels as f64 * cm2;
                assert!(
                    (area - shape.area_cm2).abs() < 0.015 * shape.area_cm2,
                    "{area} vs {shape:?}"
                );
                // V = 8 A² / (3 π L) from the pixel area recovers the volume.
                let v = 8.0 * area * area / (3.0 * std::f64::consts::PI * shape.length_cm);
                assert!(
                    (v - shape.volume_ml).abs() < 0.03 * shape.volume_ml,
                    "{v} vs {shape:?}"
                );
                assert!((shape.volume_ml - ph.lv_volume_ml(t)).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn rendered_lv_cavity_grows_with_volume() {
        for seed in [7, 8, 9] {
            let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
            let period = ph.params().beat_period_s();
            // The known LV region: the cavity at ED, above the mitral plane at ES (the base
            // descends toward the apex in systole, bringing the left atrium with it).
            let es = ph.heart_state(secs(period / 3.0));
            let base_es = es.wall_cm + es.length_cm;
            let w = ph.params().width;
            let region: Vec<bool> = ph
                .lv_mask(Duration::ZERO)
                .iter()
                .enumerate()
                .map(|(i, &m)| {
                    let (u, _) = ph.px_to_heart((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
                    m && u < base_es
                })
                .collect();
            let mut samples: Vec<(f64, usize, usize)> = (0..8)
                .map(|k| {
                    let t = secs(period * (0.1 + 0.12 * k as f64));
                    let dark = dark_in(&ph.render(t), &region, 60);
                    let truth = ph
                        .lv_mask(t)
                        .iter()
                        .zip(&region)
                        .filter(|&(&m, &r)| m && r)
                        .count();
                    (ph.lv_volume_ml(t), dark, truth)
                })
                .collect();
            samples.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Diastasis is a plateau: equal volumes there may differ by a speckle pixel or two.
            samples.dedup_by(|b, a| b.0 - a.0 < 1.0);
            assert!(samples.len() >= 6, "{samples:?}");
            for w in samples.windows(2) {
                assert!(
                    w[1].1 > w[0].1,
                    "dark pixels not growing with volume: {samples:?}"
                );
            }
            for &(v, dark, truth) in &samples {
                let err = (dark as f64 - truth as f64).abs() / truth as f64;
                assert!(
                    err < 0.05,
                    "V {v}: {dark} dark pixels vs {truth} in the cavity"
                );
            }
        }
    }

    #[test]
    fn outside_the_fan_only_annotations_and_the_fan_matches_its_truth() {
        for (w, h, seed) in [
            (640, 480, 21),
            (320, 240, 22),
            (1024, 768, 23),
            (480, 640, 24),
        ] {
            let ph = Phantom::new(PhantomParams {
                width: w,
                height: h,
                ..PhantomParams::random(seed)
            })
            .unwrap();
            let sec = ph.sector();
            let opening = (sec.end_angle_rad() - sec.start_angle_rad()).to_degrees();
            assert!((75.0..=90.0).contains(&opening));
            let notes = ph.annotation_regions();
            for r in &notes {
                for y in r.y0..r.y1 {
                    for x in r.x0..r.x1 {
                        assert!(
                            !sec.contains(x, y),
                            "{w}x{h}: annotation {r:?} overlaps the fan"
                        );
                    }
                }
            }
            let mask = sec.mask(w, h);
            for k in [0, 5, 13] {
                let img = ph.render(ph.frame_time(k));
                for y in 0..h {
                    for x in 0..w {
                        let v = img.data[y * w + x];
                        if mask[y * w + x] {
                            assert!(v > 0, "{w}x{h}: fan pixel ({x},{y}) is black");
                        } else if v != 0 {
                            assert!(in_any(&notes, x, y), "{w}x{h}: stray pixel ({x},{y}) = {v}");
                        }
                    }
                }
                // Text, ECG and bar are all there.
                for r in &notes {
                    let lit = (r.y0..r.y1)
                        .flat_map(|y| (r.x0..r.x1).map(move |x| (x, y)))
                        .filter(|&(x, y)| img.data[y * w + x] > 0)
                        .count();
                    assert!(lit > 20, "{w}x{h}: annotation {r:?} is empty");
                }
            }
            let g = ph.geometry();
            assert_eq!(g.regions, vec![sec.bounding_box(w, h)]);
            let bb = g.regions[0];
            assert!(
                mask[bb.y0 * w + (bb.x0 + bb.x1) / 2]
                    || (bb.x0..bb.x1).any(|x| mask[bb.y0 * w + x])
            );
            assert!((0..h).all(|y| !mask[y * w + bb.x0.saturating_sub(1)] || bb.x0 == 0));
            let (cx, cy) = g.cm_per_pixel.unwrap();
            assert_eq!(cx, cy);
            assert!((cx * sec.radius_px - ph.params().depth_cm).abs() < 1e-9);
        }
    }

    #[test]
    fn ecg_scrolls_and_peaks_at_end_diastole() {
        let ph = Phantom::new(PhantomParams::default()).unwrap();
        let r = ph.layout.ecg;
        let strip = |img: &Image| -> Vec<u8> {
            (r.y0..r.y1)
                .flat_map(|y| img.data[y * img.width + r.x0..y * img.width + r.x1].to_vec())
                .collect()
        };
        let a = strip(&ph.render(ph.frame_time(0)));
        let b = strip(&ph.render(ph.frame_time(3)));
        assert_ne!(a, b);
        let period = ph.params().beat_period_s();
        let peak = (0..1000)
            .map(|i| period * i as f64 / 1000.0)
            .max_by(|&x, &y| ecg_mv(x, period).total_cmp(&ecg_mv(y, period)))
            .unwrap();
        assert!(peak.min(period - peak) < 0.005, "R wave at {peak} s");
        // At ED the newest column (right end) is at the top of the R wave.
        let img = ph.render(secs(period * 2.0));
        let col = r.x1 - 1;
        let top = (r.y0..r.y1)
            .find(|&y| img.data[y * img.width + col] > 0)
            .unwrap();
        assert!(top < r.y0 + r.height() / 4, "top {top} in {r:?}");
    }

    #[test]
    fn apical_four_chamber_layout() {
        for seed in [30, 31, 32, 33] {
            let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
            let c = ph.chamber_centres(Duration::ZERO);
            assert!(c.lv.0 > c.rv.0, "LV right of RV: {c:?}");
            assert!(c.la.0 > c.ra.0, "LA right of RA: {c:?}");
            assert!(
                c.la.1 > c.lv.1 && c.ra.1 > c.rv.1,
                "atria below ventricles: {c:?}"
            );
            assert!(
                c.lv.1 < ph.params().height as f64 / 2.0,
                "LV in the upper half: {c:?}"
            );
        }
    }

    #[test]
    fn chambers_never_merge() {
        // Cavities of different chambers are separated by wall at every phase, for small
        // hyperdynamic and large failing hearts alike.
        for (edv, ef) in [(70.0, 75.0), (220.0, 15.0), (140.0, 73.0), (120.0, 60.0)] {
            let ph = Phantom::new(PhantomParams {
                edv_ml: edv,
                esv_ml: edv * (1.0 - ef / 100.0),
                ..PhantomParams::default()
            })
            .unwrap();
            let period = ph.params().beat_period_s();
            for k in 0..12 {
                let st = ph.heart_state(secs(period * k as f64 / 12.0));
                let gap = (st.la_cavity.cv - st.la_cavity.b) - (st.ra_cavity.cv + st.ra_cavity.b);
                assert!(
                    gap >= 2.0 * ATRIAL_WALL_CM - 1e-9,
                    "interatrial septum {gap} cm"
                );
                let sep = (st.lv_cavity.cv - st.lv_cavity.b) - (st.rv_cavity.cv + st.rv_cavity.b);
                assert!(sep >= st.wall_cm, "interventricular septum {sep} cm");
                let lv_base = st.lv_cavity.cu + st.lv_cavity.a_base;
                let la_top = st.la_cavity.cu - st.la_cavity.a_apex;
                assert!(
                    la_top - lv_base >= VALVE_CM,
                    "mitral plane {} cm",
                    la_top - lv_base
                );
            }
        }
    }

    #[test]
    fn standard_view_has_the_lv_right_of_centre() {
        let ph = Phantom::new(PhantomParams::default()).unwrap();
        let c = ph.chamber_centres(Duration::ZERO);
        assert!(c.lv.0 > ph.params().width as f64 / 2.0 && c.rv.0 < ph.params().width as f64 / 2.0);
    }

    #[test]
    fn wall_thickens_in_systole_and_mitral_valve_opens_in_diastole() {
        let ph = Phantom::new(PhantomParams::default()).unwrap();
        let period = ph.params().beat_period_s();
        let ed = ph.lv_shape(Duration::ZERO);
        let es = ph.lv_shape(secs(period / 3.0));
        assert!(es.wall_cm > ed.wall_cm * 1.2 && es.length_cm < ed.length_cm);
        assert!(ph.heart_state(secs(period * 0.2)).mitral_orifice.is_none());
        assert!(ph.heart_state(secs(period * 0.45)).mitral_orifice.is_some());
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let ok = PhantomParams::default();
        for p in [
            PhantomParams {
                esv_ml: 130.0,
                ..ok.clone()
            },
            PhantomParams {
                fps: 0.0,
                ..ok.clone()
            },
            PhantomParams {
                fps: f64::NAN,
                ..ok.clone()
            },
            PhantomParams {
                width: 100,
                ..ok.clone()
            },
            PhantomParams {
                heart_rate_bpm: 0.0,
                ..ok.clone()
            },
        ] {
            assert!(matches!(
                Phantom::new(p),
                Err(PhantomError::InvalidParam { .. })
            ));
        }
        let big = PhantomParams {
            edv_ml: 220.0,
            depth_cm: 8.0,
            ..ok
        };
        assert!(matches!(
            Phantom::new(big),
            Err(PhantomError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn clip_seeds_are_distinct_and_bounded() {
        assert_eq!(clip_seed(5, 0), Some(5000));
        assert_eq!(clip_seed(5, 999), Some(5999));
        assert_eq!(clip_seed(6, 0), Some(6000));
        assert_eq!(clip_seed(5, 1000), None);
        assert_eq!(clip_seed(u64::MAX, 0), None);
    }

    #[test]
    fn labels_use_only_drawable_characters() {
        let ph = Phantom::new(PhantomParams {
            fps: 29.97,
            depth_cm: 15.5,
            ..PhantomParams::random(3)
        })
        .unwrap();
        let (l, r) = ph.labels();
        for line in l.iter().chain(&r) {
            assert!(line.chars().all(|c| font::glyph(c).is_some()), "{line}");
        }
        assert!(r.contains(&"29.9 FPS".to_string()) || r.contains(&"30.0 FPS".to_string()));
    }

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

    /// `cargo test --release --lib render_time -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run by hand in release"]
    fn render_time() {
        let ph = Phantom::new(PhantomParams::random(1)).unwrap();
        let mut ms: Vec<f64> = (0..300)
            .map(|k| {
                let started = Instant::now();
                std::hint::black_box(ph.render(ph.frame_time(k)));
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "640x480 render: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            ms[150], ms[270], ms[299]
        );
        assert!(ms[150] < 10.0);
    }
}
