//! The heart model: physiology constants, the LV volume curve, the four chambers and valves as
//! ellipses in the heart frame at any instant, and the map between heart and pixel coordinates.

use std::time::Duration;

use super::random::SplitMix64;
use super::*;

// ---------------------------------------------------------------------------------------------
// Physiology and anatomy. Lengths in cm, volumes in mL; every number below is a typical adult
// value from echocardiography reference ranges, not a tuning knob of the renderer.
// ---------------------------------------------------------------------------------------------

/// Systole (ED to ES) takes a third of the beat.
pub(super) const SYSTOLE_FRACTION: f64 = 1.0 / 3.0;
/// Diastole, in fractions of its own duration: early (E-wave) filling brings 75 % of the stroke
/// volume by 45 %, diastasis follows, and the atrial kick (A-wave) adds the last 25 % from 75 %.
pub(super) const E_FILL_SHARE: f64 = 0.75;
pub(super) const E_FILL_END: f64 = 0.45;
pub(super) const A_FILL_START: f64 = 0.75;

/// LV cavity long axis at the reference volume, and the volume it refers to: an adult LV of
/// 120 mL is about 8.2 cm from apex to mitral plane in the apical view.
pub(super) const LV_REF_LENGTH_CM: f64 = 8.2;
pub(super) const LV_REF_VOLUME_ML: f64 = 120.0;
/// The long axis scales as V^(1/6): from ED to an ES at 40 % of EDV it shortens by about 14 %
/// (the mitral annulus moves toward the apex), the rest of the volume change is the short axis.
pub(super) const LV_LENGTH_EXPONENT: f64 = 1.0 / 6.0;
/// Myocardial volume, conserved through the beat (so the wall thickens as the cavity empties):
/// 1.2 mL per mL of EDV for a 120 mL ventricle, relatively less in dilated ones (exponent 0.7),
/// which is the eccentric remodelling seen in large, poorly contracting hearts.
pub(super) const MYO_ML_PER_EDV_ML_AT_REF: f64 = 1.2;
pub(super) const MYO_EDV_EXPONENT: f64 = 0.7;
/// Thickness of the closed mitral/tricuspid leaflets and annulus.
pub(super) const VALVE_CM: f64 = 0.2;
/// RV free wall and atrial walls.
pub(super) const RV_WALL_CM: f64 = 0.4;
pub(super) const ATRIAL_WALL_CM: f64 = 0.25;
/// Extra thickness of the septum beyond the LV wall (its RV side).
pub(super) const SEPTUM_EXTRA_CM: f64 = 0.15;
/// RV at ED in a 120 mL heart: 3.0 cm wide, 0.8 times the LV length, narrowing by a quarter in
/// systole; the tricuspid annulus sits 0.5 cm nearer the apex than the mitral annulus.
pub(super) const RV_ED_WIDTH_CM: f64 = 3.0;
pub(super) const RV_LENGTH_OF_LV: f64 = 0.8;
pub(super) const RV_SYSTOLIC_NARROWING: f64 = 0.25;
pub(super) const TRICUSPID_APICAL_OFFSET_CM: f64 = 0.5;
/// Atria at ED in a 120 mL heart (long x wide); they fill while the ventricles empty.
pub(super) const LA_SIZE_CM: (f64, f64) = (4.4, 3.8);
pub(super) const RA_SIZE_CM: (f64, f64) = (4.0, 3.4);
pub(super) const ATRIAL_SYSTOLIC_GROWTH: f64 = 0.15;
/// Open mitral orifice at peak filling, as a fraction of the LV short axis.
pub(super) const VALVE_ORIFICE_OF_D: f64 = 0.35;

/// Epicardial LV apex below the probe (cm), its lateral offset to screen right (cm) and the tilt
/// of the LV long axis (base toward screen right), before each patient's jitter.
pub(super) const APEX_DEPTH_CM: f64 = 2.4;
pub(super) const APEX_LATERAL_CM: f64 = 0.3;
pub(super) const AXIS_TILT_DEG: f64 = 5.0;
/// In the two-chamber view the right heart is out of the plane and the LV moves toward the middle
/// of the fan: its apex 0.4 cm left of the beam axis puts the standard patient's tilted cavity
/// centre on it (each patient's position jitter comes on top).
pub(super) const APEX_LATERAL_A2C_CM: f64 = -0.4;

/// A pacemaker/ICD lead: its echo is about as wide as the lead (2-3 mm), it enters the right
/// atrium from the venous side (below the atrium in the apical view), bows a little toward the
/// free wall, crosses the tricuspid valve and ends near the RV apex. How far past the atrium's
/// far wall it shows, and where along the RV it ends (fraction of the RV cavity's half-length
/// from its centre toward the apex).
pub(super) const LEAD_CM: f64 = 0.22;
pub(super) const LEAD_BEYOND_RA_CM: f64 = 2.0;
pub(super) const LEAD_TIP_OF_RV_HALF: f64 = 0.8;

/// Lead mimics ([`PhantomParams::lead_mimics`]). The moderator band is a muscular bar 0.3-0.5 cm
/// thick crossing the RV from the septum to the free wall in the cavity's apical half (each end
/// this fraction of the RV's half-length from its centre toward the apex). The Chiari network
/// is a thin (1.8 mm) filament across the RA from the inferior vena cava's side toward the
/// interatrial septum, swaying with the beat.
pub(super) const MODERATOR_BAND_CM: (f64, f64) = (0.3, 0.5);
pub(super) const MODERATOR_BAND_SEPTAL_OF_RV_HALF: (f64, f64) = (0.3, 0.55);
pub(super) const MODERATOR_BAND_FREE_WALL_OF_RV_HALF: (f64, f64) = (0.5, 0.75);
pub(super) const CHIARI_CM: f64 = 0.18;
pub(super) const CHIARI_SWAY_OF_RA_HALF_WIDTH: f64 = 0.15;
/// Salt of the mimics' per-patient draws (their own stream: the patient is otherwise unchanged).
const MIMIC_SALT: u64 = 0x4d49_4d49_4353_0000;

/// The lead mimics' centre lines in pixels: the moderator band's, the Chiari filament's.
pub(super) type MimicLines = ([(f64, f64); 2], [(f64, f64); 4]);

/// Where a patient's lead mimics lie at one instant, in the heart frame (u, v).
#[derive(Debug, Clone, Copy)]
pub(super) struct LeadMimics {
    /// The moderator band's centre line (septal end to free-wall end) and its thickness, cm.
    pub(super) band: [(f64, f64); 2],
    pub(super) band_cm: f64,
    /// The Chiari filament's centre line and its echo level (grey, before gain and offset).
    pub(super) chiari: [(f64, f64); 4],
    pub(super) chiari_grey: f32,
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
pub(super) struct Ellipse {
    pub(super) cu: f64,
    pub(super) cv: f64,
    pub(super) a_apex: f64,
    pub(super) a_base: f64,
    pub(super) b: f64,
}

impl Ellipse {
    pub(super) fn symmetric(cu: f64, cv: f64, a: f64, b: f64) -> Self {
        Self {
            cu,
            cv,
            a_apex: a,
            a_base: a,
            b,
        }
    }

    /// Implicit value f (< 1 inside) and the semi-axis used for the point.
    pub(super) fn implicit(&self, u: f64, v: f64) -> (f64, f64, f64) {
        let du = u - self.cu;
        let dv = v - self.cv;
        let a = if du < 0.0 { self.a_apex } else { self.a_base };
        let f = (du / a) * (du / a) + (dv / self.b) * (dv / self.b);
        (f, du / (a * a), dv / (self.b * self.b))
    }
}

/// Every structure of the heart at one instant.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeartState {
    pub(super) volume_ml: f64,
    pub(super) length_cm: f64,
    pub(super) diameter_cm: f64,
    pub(super) wall_cm: f64,
    pub(super) lv_cavity: Ellipse,
    pub(super) lv_outer: Ellipse,
    pub(super) rv_cavity: Ellipse,
    pub(super) rv_outer: Ellipse,
    pub(super) la_cavity: Ellipse,
    pub(super) la_outer: Ellipse,
    pub(super) ra_cavity: Ellipse,
    pub(super) ra_outer: Ellipse,
    /// Closed leaflets across each annulus, drawn under the cavities so only the part between
    /// ventricle and atrium shows.
    pub(super) mitral_valve: Ellipse,
    pub(super) tricuspid_valve: Ellipse,
    pub(super) mitral_orifice: Option<Ellipse>,
    pub(super) tricuspid_orifice: Option<Ellipse>,
    /// Whether the right heart (RV, RA, tricuspid valve) is in the imaging plane (A4C).
    pub(super) right_heart: bool,
    /// A pacemaker lead's centre line in the heart frame (u, v), from outside the RA to its tip
    /// in the RV, when the patient has one and the right heart is in the plane.
    pub(super) lead: Option<[(f64, f64); 4]>,
    /// The lead mimics, when the patient has them and the right heart is in the plane.
    pub(super) mimics: Option<LeadMimics>,
}

/// Fraction of the stroke volume in the LV at `phase` (0..1 of the beat): 1 at ED (phase 0),
/// 0 at ES (phase 1/3); C¹-smooth.
pub(super) fn fill_fraction(phase: f64) -> f64 {
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
pub(super) fn filling_rate(phase: f64) -> f64 {
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
pub(super) fn smooth_step(z: f64) -> f64 {
    let z = z.clamp(0.0, 1.0);
    0.5 * (1.0 - (std::f64::consts::PI * z).cos())
}

/// Cavity long axis at volume `v`.
pub(super) fn lv_length_cm(v: f64) -> f64 {
    LV_REF_LENGTH_CM * (v / LV_REF_VOLUME_ML).powf(LV_LENGTH_EXPONENT)
}

/// Uniform wall thickness t of a prolate shell around an L x D cavity holding `myo_ml`:
/// π (L + 2t)(D + 2t)² / 6 = V + M, solved by bisection (the left side grows with t).
pub(super) fn wall_thickness_cm(length: f64, diameter: f64, cavity_ml: f64, myo_ml: f64) -> f64 {
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

impl Phantom {
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
    /// Row-major: which pixels' centres lie on the pacemaker lead's echo (within half the lead's
    /// width of its centre line) at `t`; all false without a visible lead. The truth a saliency
    /// check holds the pacemaker head to.
    pub fn lead_mask(&self, t: Duration) -> Vec<bool> {
        let (w, h) = (self.params.width, self.params.height);
        let mut mask = vec![false; w * h];
        if let Some(line) = self.lead_px(&self.heart_state(t)) {
            let half = 0.5 * LEAD_CM / self.cm_per_px;
            let r = polyline_box(&line, half, w, h);
            for y in r.y0..r.y1 {
                for x in r.x0..r.x1 {
                    let d = polyline_distance(&line, x as f64 + 0.5, y as f64 + 0.5);
                    mask[y * w + x] = d <= half;
                }
            }
        }
        mask
    }

    /// The lead mimics' centre lines in pixel coordinates: the moderator band and the Chiari
    /// filament.
    pub(super) fn mimics_px(&self, s: &HeartState) -> Option<MimicLines> {
        s.mimics.map(|m| {
            (
                m.band.map(|(u, v)| self.heart_to_px(u, v)),
                m.chiari.map(|(u, v)| self.heart_to_px(u, v)),
            )
        })
    }

    /// The lead's centre line in pixel coordinates.
    pub(super) fn lead_px(&self, s: &HeartState) -> Option<[(f64, f64); 4]> {
        s.lead.map(|pts| pts.map(|(u, v)| self.heart_to_px(u, v)))
    }

    // --- anatomy -----------------------------------------------------------------------------

    pub(super) fn heart_state(&self, t: Duration) -> HeartState {
        let p = &self.params;
        let phase = self.cardiac_phase(t);
        let fill = fill_fraction(phase);
        let volume = p.esv_ml + (p.edv_ml - p.esv_ml) * fill;
        let l = lv_length_cm(volume);
        let d = (6.0 * volume / (std::f64::consts::PI * l)).sqrt();
        let wall = wall_thickness_cm(l, d, volume, self.myo_ml);
        let right_heart = p.view.is_a4c();
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
        // A dilated LA grows in length and toward the lateral wall (screen right): its septal
        // side stays where a normal atrium's is, so the interatrial septum is kept.
        let la_w = la_b * squeeze;
        let (la_cavity, la_outer) = atrium(
            mitral_u + VALVE_CM,
            la_w * (p.la_scale - 1.0),
            LA_SIZE_CM.0 * p.la_scale,
            la_w * p.la_scale,
        );
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
        let lead = (p.pacemaker && right_heart).then(|| {
            let far = ra_cavity.cu + ra_cavity.a_base + ATRIAL_WALL_CM + LEAD_BEYOND_RA_CM;
            [
                (far, rv_cv - 0.5 * ra_cavity.b),
                (ra_cavity.cu, rv_cv - 0.3 * ra_cavity.b),
                (tricuspid_u + VALVE_CM / 2.0, rv_cv),
                (
                    rv_cavity.cu - LEAD_TIP_OF_RV_HALF * rv_cavity.a_apex,
                    rv_cv + 0.15 * rv_cavity.b,
                ),
            ]
        });
        let mimics = (p.lead_mimics && right_heart).then(|| {
            let mut rng = SplitMix64::new(p.seed ^ MIMIC_SALT);
            let toward_apex = |f: f64| rv_cavity.cu - f * rv_cavity.a_apex;
            let septal = toward_apex(rng.uniform(MODERATOR_BAND_SEPTAL_OF_RV_HALF));
            let free_wall = toward_apex(rng.uniform(MODERATOR_BAND_FREE_WALL_OF_RV_HALF));
            let band_cm = rng.uniform(MODERATOR_BAND_CM);
            let grey = rng.uniform((f64::from(LEVEL_VALVE), f64::from(LEVEL_LEAD) - 20.0));
            let sway = CHIARI_SWAY_OF_RA_HALF_WIDTH
                * ra_cavity.b
                * (2.0 * std::f64::consts::PI * phase).sin();
            let (cu, cv, a, b) = (ra_cavity.cu, ra_cavity.cv, ra_cavity.a_base, ra_cavity.b);
            LeadMimics {
                // Ends a little inside the walls, so the bar joins them.
                band: [
                    (septal, rv_cv + 1.1 * rv_cavity.b),
                    (free_wall, rv_cv - 1.1 * rv_cavity.b),
                ],
                band_cm,
                chiari: [
                    (cu + 0.75 * a, cv + 0.55 * b),
                    (cu + 0.3 * a, cv + 0.1 * b + sway),
                    (cu - 0.15 * a, cv - 0.2 * b - sway),
                    (cu - 0.55 * a, cv - 0.6 * b),
                ],
                chiari_grey: grey as f32,
            }
        });
        HeartState {
            right_heart,
            lead,
            mimics,
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
    pub(super) fn apex_cm(&self) -> (f64, f64) {
        let lateral = if self.params.view.is_a4c() {
            APEX_LATERAL_CM
        } else {
            APEX_LATERAL_A2C_CM
        };
        (
            lateral + self.params.shift_cm.0,
            APEX_DEPTH_CM + self.params.shift_cm.1,
        )
    }

    pub(super) fn heart_to_px(&self, u: f64, v: f64) -> (f64, f64) {
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

    pub(super) fn px_to_heart(&self, px: f64, py: f64) -> (f64, f64) {
        let (x0, z0) = self.apex_cm();
        let sec = &self.layout.sector;
        let x = (px - sec.apex_x) * self.cm_per_px - x0;
        let z = (py - sec.apex_y) * self.cm_per_px - z0;
        let (s, c) = self.tilt_rad.sin_cos();
        (x * s + z * c, x * c - z * s)
    }

    /// The LV cavity must stay inside the fan through the whole beat (with room for its blurred
    /// edge), or its pixel area would no longer encode the volume.
    pub(super) fn check_fit(&self) -> Result<(), PhantomError> {
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
}

/// Distance from (x, y) to the nearest point of a polyline.
pub(super) fn polyline_distance(line: &[(f64, f64)], x: f64, y: f64) -> f64 {
    line.windows(2)
        .map(|seg| {
            let ((ax, ay), (bx, by)) = (seg[0], seg[1]);
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            let k = if len2 > 0.0 {
                (((x - ax) * dx + (y - ay) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            ((x - ax - k * dx).powi(2) + (y - ay - k * dy).powi(2)).sqrt()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Pixel rectangle holding a polyline grown by `grow_px`, clipped to a `w` x `h` image.
pub(super) fn polyline_box(
    line: &[(f64, f64)],
    grow_px: f64,
    w: usize,
    h: usize,
) -> crate::frame::PixelRect {
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for &(x, y) in line {
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let clip = |v: f64, hi: usize| v.clamp(0.0, hi as f64) as usize;
    crate::frame::PixelRect {
        x0: clip((x0 - grow_px).floor() - 1.0, w),
        y0: clip((y0 - grow_px).floor() - 1.0, h),
        x1: clip((x1 + grow_px).ceil() + 1.0, w),
        y1: clip((y1 + grow_px).ceil() + 1.0, h),
    }
}
