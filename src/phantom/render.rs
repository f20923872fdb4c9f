//! The renderer: fan, tissue and speckle, chambers, attenuation, burned-in labels, the ECG strip
//! and the grey bar, from the heart model at one instant.

use std::time::Duration;

use crate::frame::{Image, PixelRect};

use super::random::mix;
use super::*;

// ---------------------------------------------------------------------------------------------
// Imaging. Grey levels are in display units (0-255) before the probe's gain and offset.
// ---------------------------------------------------------------------------------------------

/// Half-opening of the fan each side of the beam axis (86 degrees in all), typical of cardiac
/// phased-array probes.
pub(super) const SECTOR_HALF_ANGLE_DEG: f64 = 43.0;
/// Echo levels at zero depth: blood is nearly anechoic, myocardium and valves bright.
pub(super) const LEVEL_BLOOD: f32 = 12.0;
pub(super) const LEVEL_TISSUE: f32 = 80.0;
pub(super) const LEVEL_MYOCARDIUM: f32 = 170.0;
pub(super) const LEVEL_VALVE: f32 = 190.0;
/// A pacemaker lead (metal in insulation) is the brightest reflector in the heart, and hides
/// what lies behind it along the beam: its acoustic shadow takes 16 dB off every echo deeper on
/// the same beams.
pub(super) const LEVEL_LEAD: f32 = 245.0;
pub(super) const LEAD_SHADOW_GREY: f32 = 70.0;
/// Log compression maps a 60 dB dynamic range onto 0-255.
pub(super) const GREY_PER_DB: f64 = 255.0 / 60.0;
/// Attenuation left after time-gain compensation, dB per cm of depth.
pub(super) const RESIDUAL_ATTENUATION_DB_PER_CM: f64 = 0.8;
/// Speckle cells: 0.08 cm along the beam, 0.6 degrees across it (lateral resolution degrades
/// with depth, so speckle widens with depth like on a real scanner).
pub(super) const SPECKLE_AXIAL_CM: f64 = 0.08;
pub(super) const SPECKLE_LATERAL_DEG: f64 = 0.6;
/// Share of the speckle variance that is frozen per patient (tissue texture) rather than new in
/// every frame (decorrelation from motion and blood flow).
pub(super) const SPECKLE_STATIC_SHARE: f64 = 0.7;
/// Tissue edges blur over this width (the point-spread function), at least one pixel.
pub(super) const EDGE_BLUR_CM: f64 = 0.06;
/// Lowest value inside the fan: the receiver's noise floor, so the fan's footprint is exactly
/// the set of non-zero pixels in every frame.
pub(super) const FAN_FLOOR: f32 = 1.0;
pub(super) const TEXT_LEVEL: u8 = 235;
pub(super) const ECG_LEVEL: u8 = 230;
/// ECG trace: how many seconds the strip shows.
pub(super) const ECG_WINDOW_S: f64 = 3.0;

/// Precomputed per-pixel tables (they depend on the image size and depth, not on time).
#[derive(Default)]
pub(super) struct Tables {
    /// Per row, the half-open span of fan pixels (empty when start == end).
    pub(super) spans: Vec<(usize, usize)>,
    /// Per pixel: grey levels lost to attenuation.
    pub(super) attenuation: Vec<f32>,
    /// Per pixel: the speckle cell in each of two grids offset by half a cell (their average
    /// hides the cell edges).
    pub(super) cells: [Vec<u32>; 2],
    pub(super) cell_count: usize,
    /// Per fan pixel: the frozen part of its speckle, weighted (`ws x (grid 0 + grid 1)` of the
    /// per-cell frozen values, the first term of every frame's speckle), so a frame reads one
    /// sequential value instead of two cells.
    pub(super) static_speckle_px: Vec<f32>,
    /// Annotations that never change (text, grey bar): (pixel index, value).
    pub(super) overlay: Vec<(u32, u8)>,
    pub(super) text_regions: Vec<PixelRect>,
}

impl Phantom {
    /// The frame at time `t`. Anatomy follows `t` exactly; the speckle belongs to the nearest
    /// frame index (round(t × fps)), so `render(frame_time(i))` is frame i of the stream.
    pub fn render(&self, t: Duration) -> Image {
        let p = &self.params;
        let (w, h) = (p.width, p.height);
        let state = self.heart_state(t);
        let mut level = vec![LEVEL_TISSUE; w * h];
        let half_edge = 0.5 * self.edge_cm();
        // Painter's order: walls and valves, then cavities over them, then open valve orifices,
        // then a lead's shadow and the lead. Out of the A4C plane there is no right heart.
        let right = state.right_heart;
        let walls = [
            (&state.lv_outer, true),
            (&state.rv_outer, right),
            (&state.la_outer, true),
            (&state.ra_outer, right),
        ];
        for (e, _) in walls.iter().filter(|(_, shown)| *shown) {
            self.paint(&mut level, e, LEVEL_MYOCARDIUM, half_edge);
        }
        for (e, _) in [(&state.mitral_valve, true), (&state.tricuspid_valve, right)]
            .iter()
            .filter(|(_, shown)| *shown)
        {
            self.paint(&mut level, e, LEVEL_VALVE, half_edge);
        }
        for (e, _) in [
            (&state.la_cavity, true),
            (&state.ra_cavity, right),
            (&state.rv_cavity, right),
            (&state.lv_cavity, true),
        ]
        .iter()
        .filter(|(_, shown)| *shown)
        {
            self.paint(&mut level, e, LEVEL_BLOOD, half_edge);
        }
        let tricuspid = if right { state.tricuspid_orifice } else { None };
        for e in [&state.mitral_orifice, &tricuspid].into_iter().flatten() {
            self.paint(&mut level, e, LEVEL_BLOOD, half_edge);
        }
        if let (Some(m), Some((band, chiari))) = (state.mimics, self.mimics_px(&state)) {
            let half_px = |cm: f64| 0.5 * cm / self.cm_per_px;
            let edge_px = 2.0 * half_edge / self.cm_per_px;
            paint_line(
                &mut level,
                (w, h),
                &band,
                half_px(m.band_cm),
                edge_px,
                LEVEL_MYOCARDIUM,
            );
            let grey = m.chiari_grey;
            paint_line(
                &mut level,
                (w, h),
                &chiari,
                half_px(CHIARI_CM),
                edge_px,
                grey,
            );
        }
        if let Some(line) = self.lead_px(&state) {
            self.paint_lead(&mut level, &line, half_edge);
        }

        let frame_index = (t.as_secs_f64() * p.fps).round() as u64;
        let [d0, d1] = self.dynamic_speckle(frame_index);
        let wd = ((1.0 - SPECKLE_STATIC_SHARE).sqrt() / 2.0) as f32;
        let (gain, offset) = (p.gain as f32, p.offset as f32);
        let tb = &self.tables;
        let mut out = vec![0u8; w * h];
        for (y, &(x0, x1)) in tb.spans.iter().enumerate() {
            let span = y * w + x0..y * w + x1;
            let pixels = out[span.clone()]
                .iter_mut()
                .zip(&level[span.clone()])
                .zip(&tb.attenuation[span.clone()])
                .zip(&tb.static_speckle_px[span.clone()])
                .zip(tb.cells[0][span.clone()].iter().zip(&tb.cells[1][span]));
            for ((((o, &lv), &att), &frozen), (&c0, &c1)) in pixels {
                let speckle = frozen + wd * (d0[c0 as usize] + d1[c1 as usize]);
                let v = offset + gain * (lv - att + speckle);
                *o = v.clamp(FAN_FLOOR, 255.0) as u8;
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

    // --- rendering ---------------------------------------------------------------------------

    pub(super) fn edge_cm(&self) -> f64 {
        EDGE_BLUR_CM.max(self.cm_per_px)
    }

    /// Pixel rectangle holding the ellipse grown by `grow_cm`, clipped to the image.
    pub(super) fn ellipse_box(&self, e: &Ellipse, grow_cm: f64) -> PixelRect {
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
    ///
    /// Per row, the pixels surely inside (`f <= f_in`) and surely outside (`f >= f_out`) are
    /// found from the implicit function's quadratic along the row ([`RowSpans`]), so only the
    /// edge band evaluates it per pixel: the same values, bit for bit, as evaluating every pixel
    /// of the box ([`Self::paint_every_pixel`], which the tests hold this to), at a fraction of
    /// the divisions (the phantom source renders 30 frames a second beside the model).
    pub(super) fn paint(&self, level: &mut [f32], e: &Ellipse, value: f32, half_edge: f64) {
        let w = self.params.width;
        let r = self.ellipse_box(e, half_edge);
        let ramp = EdgeRamp::new(e, half_edge);
        let (s, c) = self.tilt_rad.sin_cos();
        let step = self.cm_per_px;
        let (su, sv) = (step * s, step * c);
        let n = r.x1.saturating_sub(r.x0);
        for y in r.y0..r.y1 {
            let (u0, v0) = self.px_to_heart(r.x0 as f64 + 0.5, y as f64 + 0.5);
            let spans = RowSpans::new(e, (u0, v0), (su, sv), &ramp, n);
            let row = &mut level[y * w + r.x0..y * w + r.x1];
            // u and v advance by the same repeated additions as in `paint_every_pixel` (`su` is
            // its `step * s`), so an edge pixel sees exactly the coordinates it would have there.
            let (mut u, mut v) = (u0, v0);
            for _ in 0..spans.touched.0 {
                u += su;
                v += sv;
            }
            for (k, px) in row
                .iter_mut()
                .enumerate()
                .take(spans.touched.1)
                .skip(spans.touched.0)
            {
                let cover = if spans.inside(k) {
                    Some(1.0)
                } else {
                    ramp.cover(e, u, v)
                };
                if let Some(cover) = cover {
                    *px += (value - *px) * cover;
                }
                u += su;
                v += sv;
            }
        }
    }

    /// [`Self::paint`] evaluating the implicit function at every pixel of the box: the
    /// reference the row spans are tested against.
    #[cfg(test)]
    pub(super) fn paint_every_pixel(
        &self,
        level: &mut [f32],
        e: &Ellipse,
        value: f32,
        half_edge: f64,
    ) {
        let w = self.params.width;
        let r = self.ellipse_box(e, half_edge);
        let ramp = EdgeRamp::new(e, half_edge);
        let (s, c) = self.tilt_rad.sin_cos();
        let step = self.cm_per_px;
        for y in r.y0..r.y1 {
            let (mut u, mut v) = self.px_to_heart(r.x0 as f64 + 0.5, y as f64 + 0.5);
            let row = &mut level[y * w..(y + 1) * w];
            for px in &mut row[r.x0..r.x1] {
                if let Some(cover) = ramp.cover(e, u, v) {
                    *px += (value - *px) * cover;
                }
                u += step * s;
                v += step * c;
            }
        }
    }

    /// The lead's acoustic shadow, then the lead: a band `LEAD_CM` wide around its centre line
    /// (edges blurred like every tissue edge). The shadow starts beyond the lead on every beam
    /// (ray from the probe) that crosses it, ramping in over the blur width.
    pub(super) fn paint_lead(&self, level: &mut [f32], line: &[(f64, f64); 4], half_edge: f64) {
        let (w, h) = (self.params.width, self.params.height);
        let sec = self.layout.sector;
        let half_px = 0.5 * LEAD_CM / self.cm_per_px;
        let edge_px = 2.0 * half_edge / self.cm_per_px;
        // Per beam-angle bin (half a pixel wide at the fan's arc), the radius where the shadow
        // starts: the far side of the lead on that beam.
        let bins = (2.0 * sec.half_angle_rad * sec.radius_px / 0.5)
            .ceil()
            .max(1.0) as usize;
        let bin_of = |ang: f64| {
            let b = (ang + sec.half_angle_rad) / (2.0 * sec.half_angle_rad) * bins as f64;
            b.floor()
        };
        let mut start = vec![f64::INFINITY; bins];
        let (mut lo_ang, mut hi_ang) = (f64::INFINITY, f64::NEG_INFINITY);
        for seg in line.windows(2) {
            let ((ax, ay), (bx, by)) = (seg[0], seg[1]);
            let n = ((bx - ax).hypot(by - ay) / 0.25).ceil().max(1.0) as usize;
            for k in 0..=n {
                let f = k as f64 / n as f64;
                let (x, y) = (ax + f * (bx - ax), ay + f * (by - ay));
                let (dx, dy) = (x - sec.apex_x, y - sec.apex_y);
                let r = dx.hypot(dy);
                if r <= half_px {
                    continue;
                }
                let ang = dx.atan2(dy);
                let spread = (half_px / r).asin();
                lo_ang = lo_ang.min(ang - spread);
                hi_ang = hi_ang.max(ang + spread);
                let (b0, b1) = (bin_of(ang - spread), bin_of(ang + spread));
                let mut b = b0;
                while b <= b1 {
                    if b >= 0.0 && (b as usize) < bins {
                        let s = &mut start[b as usize];
                        *s = s.min(r + half_px);
                    }
                    b += 1.0;
                }
            }
        }
        let tb = &self.tables;
        for (y, &(x0, x1)) in tb.spans.iter().enumerate() {
            let dy = y as f64 + 0.5 - sec.apex_y;
            if dy <= 0.0 || x0 >= x1 {
                continue;
            }
            // Only the columns between the lead's extreme beams can be in its shadow.
            let xa = (sec.apex_x + dy * lo_ang.tan() - 1.0)
                .floor()
                .max(x0 as f64) as usize;
            let xb = (sec.apex_x + dy * hi_ang.tan() + 1.0).ceil().min(x1 as f64) as usize;
            for x in xa..xb.max(xa) {
                let dx = x as f64 + 0.5 - sec.apex_x;
                let b = bin_of(dx.atan2(dy));
                if b < 0.0 || b as usize >= bins {
                    continue;
                }
                let depth = dx.hypot(dy) - start[b as usize];
                if depth > 0.0 {
                    let f = (depth / edge_px).min(1.0) as f32;
                    let v = &mut level[y * w + x];
                    *v = (*v - LEAD_SHADOW_GREY * f).max(0.0);
                }
            }
        }
        paint_line(level, (w, h), line, half_px, edge_px, LEVEL_LEAD);
    }

    /// Per-frame speckle for both grids, from (seed, frame index).
    pub(super) fn dynamic_speckle(&self, frame_index: u64) -> [Vec<f32>; 2] {
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

    pub(super) fn build_tables(&self) -> Tables {
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
        let ws = (SPECKLE_STATIC_SHARE.sqrt() / 2.0) as f32;
        let mut static_speckle_px = vec![0f32; w * h];
        for (y, &(x0, x1)) in spans.iter().enumerate() {
            for i in y * w + x0..y * w + x1 {
                let (c0, c1) = (cells[0][i] as usize, cells[1][i] as usize);
                static_speckle_px[i] = ws * (static_speckle[0][c0] + static_speckle[1][c1]);
            }
        }
        let (overlay, text_regions) = self.build_overlay();
        Tables {
            spans,
            attenuation,
            cells,
            cell_count,
            static_speckle_px,
            overlay,
            text_regions,
        }
    }

    pub(super) fn labels(&self) -> (Vec<String>, Vec<String>) {
        let p = &self.params;
        let number = |v: f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", v.round() as i64)
            } else {
                format!("{v:.1}")
            }
        };
        (
            vec![
                "ECHONET PHANTOM".into(),
                format!("SYNTHETIC {}", p.view.label()),
            ],
            vec![
                format!("DEPTH {} CM", number(p.depth_cm)),
                format!("{} FPS", number(p.fps)),
                format!("HR {} BPM", p.heart_rate_bpm.round() as i64),
            ],
        )
    }

    /// Text blocks (top left: product, top right: acquisition) and the grey-scale bar.
    pub(super) fn build_overlay(&self) -> (Vec<(u32, u8)>, Vec<PixelRect>) {
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
    pub(super) fn draw_ecg(&self, out: &mut [u8], t: Duration) {
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
pub(super) fn ecg_mv(tb: f64, period: f64) -> f64 {
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

pub(super) const LUT_BITS: u32 = 12;

/// Log-compressed Rayleigh speckle, grey levels, indexed by a uniform 12-bit number and shifted
/// to zero mean (so speckle adds texture, not brightness).
pub(super) fn speckle_lut() -> Vec<f32> {
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

/// How an ellipse's edge blends: points whose scaled radius s = sqrt(f) is beyond 1 ± δ are at
/// least δ × (smallest semi-axis) from the boundary, i.e. fully in or out.
pub(super) struct EdgeRamp {
    /// `f` at or below this: fully inside.
    f_in: f64,
    /// `f` at or above this: fully outside.
    f_out: f64,
    /// The ramp's width, cm.
    edge: f64,
}

impl EdgeRamp {
    pub(super) fn new(e: &Ellipse, half_edge: f64) -> Self {
        let delta = half_edge / e.a_apex.min(e.a_base).min(e.b);
        Self {
            f_in: (1.0 - delta).max(0.0).powi(2),
            f_out: (1.0 + delta).powi(2),
            edge: 2.0 * half_edge,
        }
    }

    /// The ellipse's share of the point (u, v): `None` outside, else 0..1.
    #[inline]
    fn cover(&self, e: &Ellipse, u: f64, v: f64) -> Option<f32> {
        let (f, gu, gv) = e.implicit(u, v);
        if f >= self.f_out {
            return None;
        }
        Some(if f <= self.f_in {
            1.0
        } else {
            // First-order distance to the boundary: (f - 1) / |∇f|.
            let d = (f - 1.0) / (2.0 * (gu * gu + gv * gv).sqrt());
            (0.5 - d / self.edge).clamp(0.0, 1.0) as f32
        })
    }
}

/// Along one row of a paint box (pixel k at heart coordinates `(u0 + k su, v0 + k sv)`), the
/// pixels the ellipse may touch and those surely fully inside it, found from the implicit
/// value's quadratic in k on each half (apical, basal) of the ellipse. Both keep one pixel of
/// margin, far more than the rounding of the per-pixel coordinates: at one pixel from a root the
/// quadratic is at least its leading coefficient (about 1e-4) away from the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RowSpans {
    /// Pixels `touched.0..touched.1` may have `f < f_out`; no other pixel of the row has.
    touched: (usize, usize),
    /// Per half, pixels `lo..hi` have `f <= f_in` (empty when lo >= hi).
    inner: [(usize, usize); 2],
}

impl RowSpans {
    fn new(
        e: &Ellipse,
        (u0, v0): (f64, f64),
        (su, sv): (f64, f64),
        ramp: &EdgeRamp,
        n: usize,
    ) -> Self {
        let (du0, dv0) = (u0 - e.cu, v0 - e.cv);
        let mut touched: Option<(f64, f64)> = None;
        let mut inner = [(0usize, 0usize); 2];
        for (half, a) in [e.a_apex, e.a_base].into_iter().enumerate() {
            // The half's own stretch of the row: du = du0 + k su < 0 on the apical half.
            let domain = half_domain(du0, su, half == 0);
            let (a2, b2) = (a * a, e.b * e.b);
            let qa = su * su / a2 + sv * sv / b2;
            let qb = 2.0 * (du0 * su / a2 + dv0 * sv / b2);
            let qc = du0 * du0 / a2 + dv0 * dv0 / b2;
            let below = |t: f64| -> Option<(f64, f64)> {
                let disc = qb * qb - 4.0 * qa * (qc - t);
                // NaN (a degenerate ellipse) counts as no crossing.
                if qa.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                    || disc
                        .partial_cmp(&0.0)
                        .is_none_or(|o| o == std::cmp::Ordering::Less)
                {
                    return None;
                }
                let root = disc.sqrt();
                let (lo, hi) = ((-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa));
                let (lo, hi) = (lo.max(domain.0), hi.min(domain.1));
                (lo <= hi).then_some((lo, hi))
            };
            if let Some((lo, hi)) = below(ramp.f_out) {
                touched = Some(touched.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
            }
            if let Some((lo, hi)) = below(ramp.f_in) {
                inner[half] = pixel_range(lo + 1.0, hi - 1.0, n);
            }
        }
        let touched = touched.map_or((0, 0), |(lo, hi)| pixel_range(lo - 1.0, hi + 1.0, n));
        Self { touched, inner }
    }

    #[inline]
    fn inside(&self, k: usize) -> bool {
        self.inner.iter().any(|&(lo, hi)| (lo..hi).contains(&k))
    }
}

/// The k (real) where `du0 + k su` is negative (`apical`) or not: the stretch of a row on one
/// half of an ellipse.
fn half_domain(du0: f64, su: f64, apical: bool) -> (f64, f64) {
    if su == 0.0 {
        return if (du0 < 0.0) == apical {
            (f64::NEG_INFINITY, f64::INFINITY)
        } else {
            (f64::INFINITY, f64::NEG_INFINITY)
        };
    }
    let cross = -du0 / su;
    if (su > 0.0) == apical {
        (f64::NEG_INFINITY, cross)
    } else {
        (cross, f64::INFINITY)
    }
}

/// The whole pixels k in `[lo, hi]`, clipped to `0..n`, as a half-open range.
fn pixel_range(lo: f64, hi: f64, n: usize) -> (usize, usize) {
    if lo
        .partial_cmp(&hi)
        .is_none_or(|o| o == std::cmp::Ordering::Greater)
    {
        return (0, 0);
    }
    let start = lo.ceil().max(0.0);
    let end = (hi.floor() + 1.0).min(n as f64);
    if start >= end {
        (0, 0)
    } else {
        (start as usize, end as usize)
    }
}

/// Paints a band `2 half_px` wide around a polyline at echo level `grey`, its edges blurred over
/// `edge_px` like every tissue edge.
fn paint_line(
    level: &mut [f32],
    (w, h): (usize, usize),
    line: &[(f64, f64)],
    half_px: f64,
    edge_px: f64,
    grey: f32,
) {
    let r = polyline_box(line, half_px + edge_px, w, h);
    for y in r.y0..r.y1 {
        for x in r.x0..r.x1 {
            let d = polyline_distance(line, x as f64 + 0.5, y as f64 + 0.5);
            let cover = (0.5 - (d - half_px) / edge_px).clamp(0.0, 1.0) as f32;
            if cover > 0.0 {
                let v = &mut level[y * w + x];
                *v += (grey - *v) * cover;
            }
        }
    }
}
