//! The scanning sector: the part of an ultrasound frame that holds the image. Everything outside
//! it (patient text, ECG trace, logos, depth scale) is masked out before the model sees a frame,
//! as in EchoNet's preprocessing. A sector comes from a manual override, from the imaging regions
//! the source declares, or from [`SectorDetector`], which finds it in the images themselves.
//!
//! Coordinates are continuous pixel coordinates: x to the right, y down, pixel `(x, y)` covers
//! `[x, x + 1) x [y, y + 1)` and belongs to a sector when its centre does.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::PreprocessError;
use crate::frame::{PixelRect, SourceGeometry};

/// A fan-shaped sector (phased-array and curved probes): the ring between two radii around the
/// apex, between two angles. Angles are degrees from the +x axis in image coordinates (y down),
/// so straight down is 90 and angles grow clockwise on screen; the fan covers the angles from
/// `start_deg` to `end_deg`, which must be less than 180 degrees apart. A typical apical fan
/// opening downwards is about `start_deg = 45, end_deg = 135`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fan {
    /// Apex (where the beams start), pixels; may lie outside the image (often just above it).
    pub apex_x: f64,
    pub apex_y: f64,
    /// Radius of the near arc, pixels; 0 when the fan starts at the apex. Default 0.
    #[serde(default)]
    pub inner_radius: f64,
    /// Radius of the far arc, pixels.
    pub outer_radius: f64,
    /// First edge (the right-hand edge of a downward fan), degrees.
    pub start_deg: f64,
    /// Second edge (the left-hand edge of a downward fan), degrees.
    pub end_deg: f64,
}

impl Fan {
    /// Angular width, degrees.
    pub fn span_deg(&self) -> f64 {
        self.end_deg - self.start_deg
    }

    fn check(&self) -> Result<(), PreprocessError> {
        let bad = |reason: String| Err(PreprocessError::InvalidSector(reason));
        let values = [
            self.apex_x,
            self.apex_y,
            self.inner_radius,
            self.outer_radius,
            self.start_deg,
            self.end_deg,
        ];
        if values.iter().any(|v| !v.is_finite()) {
            return bad(format!("fan {self:?} has a non-finite value"));
        }
        if self.inner_radius < 0.0 || self.outer_radius <= self.inner_radius {
            return bad(format!(
                "fan radii {}..{} must satisfy 0 <= inner < outer",
                self.inner_radius, self.outer_radius
            ));
        }
        let span = self.span_deg();
        if !(span > 0.0 && span < 180.0) {
            return bad(format!(
                "fan angles {}..{} must span more than 0 and less than 180 degrees",
                self.start_deg, self.end_deg
            ));
        }
        Ok(())
    }

    /// Whether the point `(x, y)` lies in the fan.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        FanTest::new(self).contains(x, y)
    }
}

/// The fan membership test with its trigonometry done once: with a span under 180 degrees, a
/// point is between the edges when it lies clockwise of the start edge and anticlockwise of the
/// end edge, two cross products instead of an `atan2` per pixel.
struct FanTest {
    ax: f64,
    ay: f64,
    r2_in: f64,
    r2_out: f64,
    start: (f64, f64),
    end: (f64, f64),
}

impl FanTest {
    fn new(f: &Fan) -> Self {
        let (ss, sc) = f.start_deg.to_radians().sin_cos();
        let (es, ec) = f.end_deg.to_radians().sin_cos();
        Self {
            ax: f.apex_x,
            ay: f.apex_y,
            r2_in: f.inner_radius * f.inner_radius,
            r2_out: f.outer_radius * f.outer_radius,
            start: (sc, ss),
            end: (ec, es),
        }
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.ax, y - self.ay);
        let d2 = dx * dx + dy * dy;
        d2 >= self.r2_in
            && d2 <= self.r2_out
            && self.start.0 * dy - self.start.1 * dx >= 0.0
            && dx * self.end.1 - dy * self.end.0 >= 0.0
    }
}

/// What a sector is geometrically.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SectorShape {
    Fan(Fan),
    /// A rectangle: linear probes, declared regions, or a rectangular override.
    Rect(PixelRect),
    /// A convex polygon (vertices in order): a detected region that is not a fan.
    Convex {
        vertices: Vec<(f64, f64)>,
    },
}

/// One horizontal run of sector pixels: row `y`, columns `x0..x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub y: usize,
    pub x0: usize,
    pub x1: usize,
}

/// A sector rasterised for one frame size: its shape, pixel mask, the runs of that mask (what the
/// per-frame loops walk, so pixels outside cost nothing), bounding box and area.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sector {
    shape: SectorShape,
    width: usize,
    height: usize,
    bbox: PixelRect,
    area: usize,
    #[serde(skip)]
    mask: Vec<bool>,
    #[serde(skip)]
    runs: Vec<Run>,
}

impl Sector {
    /// The pixels of a `width` x `height` frame inside `fan`.
    pub fn fan(fan: Fan, width: usize, height: usize) -> Result<Self, PreprocessError> {
        fan.check()?;
        let test = FanTest::new(&fan);
        let mut mask = vec![false; width * height];
        for (y, row) in mask.chunks_exact_mut(width.max(1)).enumerate() {
            // Only the columns within the outer circle can be inside.
            let yc = y as f64 + 0.5;
            let dy = yc - fan.apex_y;
            let reach = test.r2_out - dy * dy;
            if reach < 0.0 {
                continue;
            }
            let half = reach.sqrt();
            let x0 = (fan.apex_x - half - 1.0).floor().clamp(0.0, width as f64) as usize;
            let x1 = (fan.apex_x + half + 1.0).ceil().clamp(0.0, width as f64) as usize;
            for (x, m) in row.iter_mut().enumerate().take(x1).skip(x0) {
                *m = test.contains(x as f64 + 0.5, yc);
            }
        }
        Self::from_mask(SectorShape::Fan(fan), width, height, mask)
    }

    /// `rect` clipped to a `width` x `height` frame.
    pub fn rect(rect: PixelRect, width: usize, height: usize) -> Result<Self, PreprocessError> {
        let clipped = PixelRect {
            x0: rect.x0.min(width),
            y0: rect.y0.min(height),
            x1: rect.x1.min(width),
            y1: rect.y1.min(height),
        };
        let mut mask = vec![false; width * height];
        for y in clipped.y0..clipped.y1 {
            let row = y * width;
            if let Some(cells) = mask.get_mut(row + clipped.x0..row + clipped.x1) {
                cells.fill(true);
            }
        }
        Self::from_mask(SectorShape::Rect(rect), width, height, mask)
    }

    /// The pixels inside a convex polygon (vertices in order, either direction).
    pub fn convex(
        vertices: Vec<(f64, f64)>,
        width: usize,
        height: usize,
    ) -> Result<Self, PreprocessError> {
        if vertices.len() < 3
            || vertices
                .iter()
                .any(|p| !p.0.is_finite() || !p.1.is_finite())
        {
            return Err(PreprocessError::InvalidSector(format!(
                "a convex region needs 3 or more finite vertices, got {vertices:?}"
            )));
        }
        let mut mask = vec![false; width * height];
        for (y, row) in mask.chunks_exact_mut(width.max(1)).enumerate() {
            // A convex polygon meets each row's centre line in one interval: the extreme
            // crossings of its edges.
            let yc = y as f64 + 0.5;
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for (i, &(px, py)) in vertices.iter().enumerate() {
                let (qx, qy) = vertices[(i + 1) % vertices.len()];
                if py == qy || yc < py.min(qy) || yc > py.max(qy) {
                    continue;
                }
                let x = px + (yc - py) * (qx - px) / (qy - py);
                lo = lo.min(x);
                hi = hi.max(x);
            }
            if lo > hi {
                continue;
            }
            let x0 = (lo - 0.5).ceil().max(0.0) as usize;
            let x1 = ((hi - 0.5).floor() + 1.0).clamp(0.0, width as f64) as usize;
            if let Some(cells) = row.get_mut(x0..x1.max(x0)) {
                cells.fill(true);
            }
        }
        Self::from_mask(SectorShape::Convex { vertices }, width, height, mask)
    }

    /// The largest imaging region the source declares (DICOM Sequence of Ultrasound Regions),
    /// clipped to the frame; `None` when there is none or none overlaps the frame.
    pub fn from_regions(geometry: &SourceGeometry, width: usize, height: usize) -> Option<Self> {
        let clipped_area = |r: &PixelRect| {
            let w = r.x1.min(width).saturating_sub(r.x0);
            let h = r.y1.min(height).saturating_sub(r.y0);
            w * h
        };
        let largest = geometry
            .regions
            .iter()
            .filter(|r| clipped_area(r) > 0)
            .max_by_key(|r| clipped_area(r))?;
        Self::rect(*largest, width, height).ok()
    }

    /// The sector a manual override describes, for a `width` x `height` frame.
    pub fn from_override(
        o: &SectorOverride,
        width: usize,
        height: usize,
    ) -> Result<Self, PreprocessError> {
        match o {
            SectorOverride::Rect(r) => Self::rect(
                PixelRect {
                    x0: r.x0,
                    y0: r.y0,
                    x1: r.x1,
                    y1: r.y1,
                },
                width,
                height,
            ),
            SectorOverride::Fan(f) => Self::fan(*f, width, height),
        }
    }

    fn from_mask(
        shape: SectorShape,
        width: usize,
        height: usize,
        mask: Vec<bool>,
    ) -> Result<Self, PreprocessError> {
        let runs = mask_runs(&mask, width);
        let area = runs.iter().map(|r| r.x1 - r.x0).sum();
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
            return Err(PreprocessError::EmptySector { width, height });
        };
        let bbox = PixelRect {
            x0: runs.iter().map(|r| r.x0).min().unwrap_or(0),
            y0: first.y,
            x1: runs.iter().map(|r| r.x1).max().unwrap_or(0),
            y1: last.y + 1,
        };
        Ok(Self {
            shape,
            width,
            height,
            bbox,
            area,
            mask,
            runs,
        })
    }

    pub fn shape(&self) -> &SectorShape {
        &self.shape
    }
    /// Frame size the mask was made for.
    pub fn frame_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }
    /// Smallest rectangle holding every sector pixel.
    pub fn bbox(&self) -> PixelRect {
        self.bbox
    }
    /// Number of sector pixels.
    pub fn area(&self) -> usize {
        self.area
    }
    /// Row-major, `width * height` entries.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }
    /// The mask as runs, top to bottom and left to right.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
    pub fn contains_pixel(&self, x: usize, y: usize) -> bool {
        x < self.width && self.mask.get(y * self.width + x).copied().unwrap_or(false)
    }

    /// Intersection over union of the two masks; 0 for different frame sizes.
    pub fn iou(&self, other: &Sector) -> f64 {
        if self.frame_size() != other.frame_size() {
            return 0.0;
        }
        let inter = self
            .mask
            .iter()
            .zip(&other.mask)
            .filter(|(a, b)| **a && **b)
            .count();
        let union = self.area + other.area - inter;
        if union == 0 {
            0.0
        } else {
            inter as f64 / union as f64
        }
    }
}

fn mask_runs(mask: &[bool], width: usize) -> Vec<Run> {
    let mut runs = Vec::new();
    for (y, row) in mask.chunks_exact(width.max(1)).enumerate() {
        let mut x = 0;
        while x < row.len() {
            if !row[x] {
                x += 1;
                continue;
            }
            let x0 = x;
            while x < row.len() && row[x] {
                x += 1;
            }
            runs.push(Run { y, x0, x1: x });
        }
    }
    runs
}

/// A rectangle for [`SectorOverride::Rect`], `x0..x1` by `y0..y1` pixels (exclusive ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RectOverride {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

/// A sector fixed by configuration, bypassing detection: for sources whose layout is known and
/// for screens detection gets wrong. In TOML, `kind = "rect"` with `x0, y0, x1, y1`, or
/// `kind = "fan"` with the fields of [`Fan`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SectorOverride {
    Rect(RectOverride),
    Fan(Fan),
}

/// How [`SectorDetector`] finds and keeps the sector. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Frame pairs accumulated per detection, which is also the re-detection period, frames
    /// (2-255). Default 24: 0.4 s at 60 fps, enough pairs that a pixel's change count separates
    /// speckle from a passing ECG trace.
    pub window_frames: usize,
    /// Grey-level step between consecutive frames that counts as a change, levels (0-255).
    /// Default 6: above capture noise, well below speckle decorrelation.
    pub change_threshold: u8,
    /// Share of a window's frame pairs in which a pixel must change to be scanning sector, 0-1.
    /// Default 0.3: B-mode speckle changes in most pairs; a moving ECG trace or clock digit
    /// touches a given pixel in a few; static text never.
    pub active_fraction: f64,
    /// Structures thinner than `2 * radius + 1` pixels (ECG traces, text strokes) are removed
    /// before the sector is taken, pixels. Default 2.
    pub opening_radius: usize,
    /// Smallest sector accepted, share of the frame area, 0-1. Default 0.05.
    pub min_area_fraction: f64,
    /// Smallest overlap (intersection over union of the fitted fan and the detected region) for
    /// a fan to be accepted instead of the region's convex hull, 0-1. Default 0.9.
    pub fan_min_iou: f64,
    /// Detections overlapping at least this much (IoU, 0-1) are the same sector. Default 0.95:
    /// about 2 % of a 300-pixel fan's boundary moving, beyond the 1-pixel jitter between windows.
    pub same_iou: f64,
    /// Consecutive detections that must agree on a different sector, or on none, before it
    /// replaces the current one. Default 3 (1.2 s at 60 fps with the default window).
    pub confirmations: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            window_frames: 24,
            change_threshold: 6,
            active_fraction: 0.3,
            opening_radius: 2,
            min_area_fraction: 0.05,
            fan_min_iou: 0.9,
            same_iou: 0.95,
            confirmations: 3,
        }
    }
}

impl DetectorConfig {
    pub fn check(&self) -> Result<(), PreprocessError> {
        let bad = |field: &'static str, reason: String| {
            Err(PreprocessError::InvalidConfig { field, reason })
        };
        if !(2..=255).contains(&self.window_frames) {
            return bad(
                "detector.window_frames",
                format!("is {}, expected 2 to 255", self.window_frames),
            );
        }
        for (field, v) in [
            ("detector.active_fraction", self.active_fraction),
            ("detector.min_area_fraction", self.min_area_fraction),
            ("detector.fan_min_iou", self.fan_min_iou),
            ("detector.same_iou", self.same_iou),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(field, format!("is {v}, expected 0 to 1"));
            }
        }
        if self.confirmations == 0 {
            return bad("detector.confirmations", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Finds the scanning sector from the images themselves, per stream. B-mode speckle changes from
/// frame to frame, while burned-in text and logos are static and an ECG trace is thin and passes
/// any one pixel only now and then. So each pixel counts the frames in which it changed; after
/// a window, pixels that changed often enough are the sector's candidates, an opening removes
/// thin structures, the largest connected region is kept, and a fan is fitted to it (apex from
/// the two straight edges, radius from the far arc) or, failing that, its convex hull is taken.
/// Cost per frame is one pass of compare-and-count; the detection itself runs once per window.
///
/// A new detection replaces the current sector only after `confirmations` consecutive windows
/// agree on it (hysteresis), so the mask does not flicker; the first sector is adopted at once.
#[derive(Debug)]
pub struct SectorDetector {
    cfg: DetectorConfig,
    width: usize,
    height: usize,
    prev: Vec<u8>,
    counts: Vec<u8>,
    pairs: usize,
    current: Option<Arc<Sector>>,
    /// A detection that differs from `current` and how many windows in a row have agreed on it.
    pending: Option<(Option<Arc<Sector>>, usize)>,
}

impl SectorDetector {
    pub fn new(cfg: DetectorConfig) -> Result<Self, PreprocessError> {
        cfg.check()?;
        Ok(Self {
            cfg,
            width: 0,
            height: 0,
            prev: Vec::new(),
            counts: Vec::new(),
            pairs: 0,
            current: None,
            pending: None,
        })
    }

    /// The sector now in force.
    pub fn current(&self) -> Option<&Arc<Sector>> {
        self.current.as_ref()
    }

    /// Forgets everything (a new stream, or the frame size changed).
    pub fn reset(&mut self) {
        self.width = 0;
        self.height = 0;
        self.prev.clear();
        self.counts.clear();
        self.pairs = 0;
        self.current = None;
        self.pending = None;
    }

    /// Adds one grey frame (`width * height` bytes) and returns the sector now in force.
    pub fn push(
        &mut self,
        grey: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Option<Arc<Sector>>, PreprocessError> {
        if grey.len() != width * height || width == 0 || height == 0 {
            return Err(PreprocessError::BadFrame(format!(
                "{} grey bytes for a {width}x{height} frame",
                grey.len()
            )));
        }
        if (width, height) != (self.width, self.height) {
            self.reset();
            self.width = width;
            self.height = height;
            self.prev = grey.to_vec();
            self.counts = vec![0; grey.len()];
            return Ok(None);
        }
        let step = self.cfg.change_threshold;
        for ((c, &g), p) in self.counts.iter_mut().zip(grey).zip(self.prev.iter_mut()) {
            *c += (g.abs_diff(*p) >= step) as u8;
            *p = g;
        }
        self.pairs += 1;
        if self.pairs >= self.cfg.window_frames {
            let found = detect(&self.counts, self.pairs, width, height, &self.cfg).map(Arc::new);
            self.counts.fill(0);
            self.pairs = 0;
            self.adopt(found);
        }
        Ok(self.current.clone())
    }

    fn adopt(&mut self, found: Option<Arc<Sector>>) {
        let same = |a: &Option<Arc<Sector>>, b: &Option<Arc<Sector>>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iou(b) >= self.cfg.same_iou,
            _ => false,
        };
        if self.current.is_none() && found.is_some() {
            self.current = found;
            self.pending = None;
            return;
        }
        if same(&self.current, &found) {
            self.pending = None;
            return;
        }
        let agreeing = match &self.pending {
            Some((candidate, n)) if same(candidate, &found) => n + 1,
            _ => 1,
        };
        if agreeing >= self.cfg.confirmations {
            self.current = found;
            self.pending = None;
        } else {
            self.pending = Some((found, agreeing));
        }
    }
}

/// One window's detection: the sector the change counts show, or `None`.
fn detect(
    counts: &[u8],
    pairs: usize,
    width: usize,
    height: usize,
    cfg: &DetectorConfig,
) -> Option<Sector> {
    let needed = ((cfg.active_fraction * pairs as f64).ceil() as usize).clamp(1, 255) as u8;
    let active: Vec<bool> = counts.iter().map(|&c| c >= needed).collect();
    let r = cfg.opening_radius;
    // Opening drops thin structures; the closing after it fills speckle pin-holes so the edges
    // the fan is fitted to are clean. The closing's erosion counts the outside as set, so a
    // sector cut by the frame's border keeps its border rows.
    let opened = dilate(&erode(&active, width, height, r), width, height, r);
    let cleaned = morph(
        &dilate(&opened, width, height, r),
        width,
        height,
        r,
        true,
        true,
    );
    let (runs, area) = largest_component(&cleaned, width, height)?;
    if (area as f64) < cfg.min_area_fraction * (width * height) as f64 {
        return None;
    }
    let rows = row_extents(&runs);
    let hull = Sector::convex(convex_hull(&rows), width, height).ok()?;
    let mut component = vec![false; width * height];
    for run in &runs {
        if let Some(cells) = component.get_mut(run.y * width + run.x0..run.y * width + run.x1) {
            cells.fill(true);
        }
    }
    let fan = fit_fan(&rows, &component, width, height)
        .and_then(|f| Sector::fan(f, width, height).ok())
        .filter(|s| s.iou(&hull) >= cfg.fan_min_iou);
    Some(fan.unwrap_or(hull))
}

/// Separable binary morphology by a `(2r + 1)` square. With `value = true` an erosion (a cell
/// is set when its whole window is set: AND), with `value = false` a dilation (set when any cell
/// of the window is: OR). Cells beyond the border count as `outside`. Each step combines whole
/// shifted slices, which vectorises, instead of walking a window per cell.
fn morph(
    mask: &[bool],
    width: usize,
    height: usize,
    r: usize,
    value: bool,
    outside: bool,
) -> Vec<bool> {
    if width == 0 || mask.len() != width * height {
        return mask.to_vec();
    }
    let and = value;
    let mut rows = mask.to_vec();
    for (src, dst) in mask.chunks_exact(width).zip(rows.chunks_exact_mut(width)) {
        for d in 1..=r.min(width) {
            // The cell d to the right, then d to the left; the border's outside beyond.
            fold(&mut dst[..width - d], &src[d..], and);
            fold_const(&mut dst[width - d..], outside, and);
            fold(&mut dst[d..], &src[..width - d], and);
            fold_const(&mut dst[..d], outside, and);
        }
        if r >= width {
            fold_const(dst, outside, and);
        }
    }
    let mut out = rows.clone();
    let n = out.len();
    for d in 1..=r.min(height) {
        let shift = d * width;
        fold(&mut out[..n - shift], &rows[shift..], and);
        fold_const(&mut out[n - shift..], outside, and);
        fold(&mut out[shift..], &rows[..n - shift], and);
        fold_const(&mut out[..shift], outside, and);
    }
    if r >= height {
        fold_const(&mut out, outside, and);
    }
    out
}

/// `dst[i] = dst[i] AND src[i]` (or OR), element-wise.
fn fold(dst: &mut [bool], src: &[bool], and: bool) {
    if and {
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o &= v);
    } else {
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o |= v);
    }
}

/// `dst[i] = dst[i] AND v` (or OR) for a constant `v`.
fn fold_const(dst: &mut [bool], v: bool, and: bool) {
    if and && !v {
        dst.fill(false);
    } else if !and && v {
        dst.fill(true);
    }
}

/// Erosion, the outside counting as unset.
fn erode(mask: &[bool], width: usize, height: usize, r: usize) -> Vec<bool> {
    morph(mask, width, height, r, true, false)
}

/// Dilation, the outside counting as unset.
fn dilate(mask: &[bool], width: usize, height: usize, r: usize) -> Vec<bool> {
    morph(mask, width, height, r, false, false)
}

/// The largest 4-connected region of set cells, as runs sorted by row, and its area. Regions are
/// merged run by run (union-find on runs that overlap between neighbouring rows), one pass.
fn largest_component(mask: &[bool], width: usize, height: usize) -> Option<(Vec<Run>, usize)> {
    let runs = mask_runs(mask, width);
    let mut row_start = vec![0usize; height + 1];
    for run in &runs {
        row_start[run.y + 1] += 1;
    }
    for y in 0..height {
        row_start[y + 1] += row_start[y];
    }
    let mut parent: Vec<usize> = (0..runs.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for y in 1..height {
        let (mut a, a_end) = (row_start[y - 1], row_start[y]);
        let (mut b, b_end) = (row_start[y], row_start[y + 1]);
        while a < a_end && b < b_end {
            if runs[a].x0 < runs[b].x1 && runs[b].x0 < runs[a].x1 {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                if ra != rb {
                    parent[ra.max(rb)] = ra.min(rb);
                }
            }
            // Advance whichever run ends first; it cannot overlap anything further right.
            if runs[a].x1 < runs[b].x1 {
                a += 1;
            } else {
                b += 1;
            }
        }
    }
    let mut area = vec![0usize; runs.len()];
    for (i, run) in runs.iter().enumerate() {
        let root = find(&mut parent, i);
        area[root] += run.x1 - run.x0;
    }
    let (best, &best_area) = area.iter().enumerate().max_by_key(|(_, &a)| a)?;
    if best_area == 0 {
        return None;
    }
    let kept = (0..runs.len())
        .filter(|&i| find(&mut parent, i) == best)
        .map(|i| runs[i])
        .collect();
    Some((kept, best_area))
}

/// Per row of a region, top to bottom: `(y, leftmost x, one past the rightmost x)`.
fn row_extents(runs: &[Run]) -> Vec<(usize, usize, usize)> {
    let mut rows: Vec<(usize, usize, usize)> = Vec::new();
    for run in runs {
        match rows.last_mut() {
            Some(last) if last.0 == run.y => {
                last.1 = last.1.min(run.x0);
                last.2 = last.2.max(run.x1);
            }
            _ => rows.push((run.y, run.x0, run.x1)),
        }
    }
    rows
}

/// Convex hull (monotone chain) of the corners of each row's extreme pixels, so the hull covers
/// every pixel of the region.
fn convex_hull(rows: &[(usize, usize, usize)]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = Vec::with_capacity(rows.len() * 4);
    for &(y, x0, x1) in rows {
        let (y, x0, x1) = (y as f64, x0 as f64, x1 as f64);
        pts.extend([(x0, y), (x0, y + 1.0), (x1, y), (x1, y + 1.0)]);
    }
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
    for pass in 0..2 {
        let base = hull.len();
        let ordered: Box<dyn Iterator<Item = &(f64, f64)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in ordered {
            while hull.len() >= base + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        // The last point of each chain starts the other one.
        hull.pop();
    }
    hull
}

/// Rows from the top that may sit on a fan's straight edges before the far arc takes over.
const EDGE_SEED_SHARE: f64 = 0.2;
/// A row's extreme pixel within this distance of the fitted edge is on it, pixels.
const EDGE_TOLERANCE_PX: f64 = 2.0;
/// Consecutive off-line rows that end an edge.
const EDGE_MAX_MISSES: usize = 4;
/// Fewest rows an edge is fitted to.
const MIN_EDGE_ROWS: usize = 12;
/// Rays cast from the apex to measure the radii, over the middle of the fan.
const RADIUS_RAYS: usize = 33;

/// Least-squares line `x = a + b * y` through `(y, x)` points.
fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let my = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mx = points.iter().map(|p| p.1).sum::<f64>() / n;
    let syy: f64 = points.iter().map(|p| (p.0 - my) * (p.0 - my)).sum();
    let syx: f64 = points.iter().map(|p| (p.0 - my) * (p.1 - mx)).sum();
    if syy < 1e-9 {
        return None;
    }
    let b = syx / syy;
    Some((mx - b * my, b))
}

/// One straight edge of a fan from the region's extreme pixel per row (top to bottom): seeded on
/// the top rows (below the apex, where the edge is always straight), then extended down while
/// rows stay on the line, and refitted to those rows.
fn fit_edge(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len();
    // The first rows are the rounded tip the opening leaves near the apex.
    let skip = (n / 40).max(3);
    let seed_end = (skip + (n as f64 * EDGE_SEED_SHARE) as usize).min(n);
    if seed_end < skip + MIN_EDGE_ROWS {
        return None;
    }
    let mut line = fit_line(&points[skip..seed_end])?;
    for _ in 0..3 {
        let mut inliers = Vec::with_capacity(n);
        let mut misses = 0;
        for &(y, x) in &points[skip..] {
            if (x - (line.0 + line.1 * y)).abs() <= EDGE_TOLERANCE_PX {
                inliers.push((y, x));
                misses = 0;
            } else {
                misses += 1;
                if misses > EDGE_MAX_MISSES {
                    break;
                }
            }
        }
        if inliers.len() < MIN_EDGE_ROWS {
            return None;
        }
        line = fit_line(&inliers)?;
    }
    Some(line)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Fits a downward-opening fan (apex above, the display convention for echocardiography) to a
/// region given by its row extents and mask. `None` when the edges are not two straight lines
/// meeting above the region.
fn fit_fan(
    rows: &[(usize, usize, usize)],
    component: &[bool],
    width: usize,
    height: usize,
) -> Option<Fan> {
    // Rows clipped by the frame's sides show the border, not the fan's edge.
    let left: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1 > 0)
        .map(|r| (r.0 as f64 + 0.5, r.1 as f64))
        .collect();
    let right: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.2 < width)
        .map(|r| (r.0 as f64 + 0.5, r.2 as f64))
        .collect();
    let (al, bl) = fit_edge(&left)?;
    let (ar, br) = fit_edge(&right)?;
    // Edges must diverge downwards: the left one heads left of the right one.
    if bl >= br {
        return None;
    }
    let apex_y = (ar - al) / (bl - br);
    let apex_x = al + bl * apex_y;
    let top = rows.first()?.0 as f64;
    let bottom = rows.last()?.0 as f64 + 1.0;
    // The apex sits above the region (or at its tip), not absurdly far away; NaN fails too.
    let apex_plausible = apex_y <= top + 0.1 * (bottom - top) && apex_y >= -2.0 * height as f64;
    if !apex_plausible {
        return None;
    }
    // Downward directions (b, 1): the right edge has the smaller angle.
    let start_deg = 1f64.atan2(br).to_degrees();
    let end_deg = 1f64.atan2(bl).to_degrees();
    let span = end_deg - start_deg;
    if !(10.0..=175.0).contains(&span) {
        return None;
    }
    // Radii along rays over the middle 70 % of the fan, where the near and far arcs are the
    // region's boundary; the median ignores rays that cross dark chambers or clipped corners.
    let t_max = [
        (0.0, 0.0),
        (width as f64, 0.0),
        (0.0, height as f64),
        (width as f64, height as f64),
    ]
    .iter()
    .map(|&(x, y)| ((x - apex_x).powi(2) + (y - apex_y).powi(2)).sqrt())
    .fold(0.0, f64::max);
    const STEP: f64 = 0.25;
    let (mut inner, mut outer) = (Vec::new(), Vec::new());
    for k in 0..RADIUS_RAYS {
        let a = start_deg + span * (0.15 + 0.7 * k as f64 / (RADIUS_RAYS - 1) as f64);
        let (s, c) = a.to_radians().sin_cos();
        let (mut first, mut last) = (None, None);
        let mut t = 0.0;
        while t <= t_max {
            let (x, y) = (apex_x + t * c, apex_y + t * s);
            let inside = x >= 0.0 && y >= 0.0 && (x as usize) < width && (y as usize) < height;
            if inside && component[y as usize * width + x as usize] {
                first.get_or_insert(t);
                last = Some(t);
            }
            t += STEP;
        }
        if let (Some(f), Some(l)) = (first, last) {
            inner.push(f64::max(f - STEP / 2.0, 0.0));
            outer.push(l + STEP / 2.0);
        }
    }
    let inner_radius = median(&mut inner)?;
    let outer_radius = median(&mut outer)?;
    // An inner arc within a couple of pixels of the apex is the apex itself.
    let inner_radius = if inner_radius < 3.0 {
        0.0
    } else {
        inner_radius
    };
    let fan = Fan {
        apex_x,
        apex_y,
        inner_radius,
        outer_radius,
        start_deg,
        end_deg,
    };
    fan.check().ok().map(|_| fan)
}

impl Sector {
    /// The sector's outline as a closed polygon in frame pixels (x right, y down), for drawing on
    /// the display: arcs sampled every 2 degrees.
    pub fn outline(&self) -> Vec<(f32, f32)> {
        match self.shape() {
            SectorShape::Fan(f) => {
                let steps = (f.span_deg() / 2.0).ceil().max(1.0) as usize;
                let point = |r: f64, deg: f64| {
                    let a = deg.to_radians();
                    (
                        (f.apex_x + r * a.cos()) as f32,
                        (f.apex_y + r * a.sin()) as f32,
                    )
                };
                let angle = |i: usize| f.start_deg + f.span_deg() * i as f64 / steps as f64;
                let mut pts: Vec<(f32, f32)> = (0..=steps)
                    .map(|i| point(f.outer_radius, angle(i)))
                    .collect();
                if f.inner_radius > 0.0 {
                    pts.extend((0..=steps).rev().map(|i| point(f.inner_radius, angle(i))));
                } else {
                    pts.push(point(0.0, 0.0));
                }
                pts
            }
            SectorShape::Rect(r) => vec![
                (r.x0 as f32, r.y0 as f32),
                (r.x1 as f32, r.y0 as f32),
                (r.x1 as f32, r.y1 as f32),
                (r.x0 as f32, r.y1 as f32),
            ],
            SectorShape::Convex { vertices } => vertices
                .iter()
                .map(|(x, y)| (*x as f32, *y as f32))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::synth::{Phantom, Scene};
    use super::*;

    fn run_detector(det: &mut SectorDetector, scene: &Scene, frames: std::ops::Range<u32>) {
        for t in frames {
            det.push(&scene.grey(t), scene.width, scene.height).unwrap();
        }
    }

    fn fan_of(sector: &Sector) -> Fan {
        match sector.shape() {
            SectorShape::Fan(f) => *f,
            other => panic!("expected a fan, got {other:?}"),
        }
    }

    fn assert_fan_close(got: &Fan, want: &Fan) {
        let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
        assert!(
            close(got.apex_x, want.apex_x, 3.0)
                && close(got.apex_y, want.apex_y, 3.0)
                && close(got.start_deg, want.start_deg, 1.5)
                && close(got.end_deg, want.end_deg, 1.5)
                && close(got.outer_radius, want.outer_radius, 3.0)
                && close(got.inner_radius, want.inner_radius, 4.0),
            "fitted {got:?}\n  drawn {want:?}"
        );
    }

    #[test]
    fn fan_membership_follows_angles_and_radii() {
        let f = Fan {
            apex_x: 100.0,
            apex_y: 0.0,
            inner_radius: 10.0,
            outer_radius: 50.0,
            start_deg: 45.0,
            end_deg: 135.0,
        };
        assert!(f.contains(100.0, 30.0)); // straight down
        assert!(!f.contains(100.0, 5.0)); // inside the inner arc
        assert!(!f.contains(100.0, 51.0)); // beyond the outer arc
        assert!(!f.contains(130.0, 20.0)); // right of the 45-degree edge
        assert!(!f.contains(70.0, 20.0)); // left of the 135-degree edge
        assert!(f.contains(115.0, 20.0) && f.contains(85.0, 20.0));
        assert!(!f.contains(100.0, -30.0)); // the opposite direction
    }

    #[test]
    fn invalid_fans_are_refused() {
        let ok = Fan {
            apex_x: 10.0,
            apex_y: 0.0,
            inner_radius: 0.0,
            outer_radius: 50.0,
            start_deg: 45.0,
            end_deg: 135.0,
        };
        assert!(Sector::fan(ok, 64, 64).is_ok());
        for bad in [
            Fan {
                end_deg: 30.0,
                ..ok
            },
            Fan {
                end_deg: 250.0,
                ..ok
            },
            Fan {
                outer_radius: 0.0,
                ..ok
            },
            Fan {
                apex_x: f64::NAN,
                ..ok
            },
        ] {
            assert!(Sector::fan(bad, 64, 64).is_err(), "{bad:?}");
        }
        // A valid fan entirely outside the frame covers nothing.
        let away = Fan {
            apex_x: 1000.0,
            ..ok
        };
        assert!(matches!(
            Sector::fan(away, 64, 64),
            Err(PreprocessError::EmptySector { .. })
        ));
    }

    #[test]
    fn rect_and_regions() {
        let s = Sector::rect(
            PixelRect {
                x0: 2,
                y0: 3,
                x1: 100,
                y1: 7,
            },
            10,
            10,
        )
        .unwrap();
        assert_eq!(
            s.bbox(),
            PixelRect {
                x0: 2,
                y0: 3,
                x1: 10,
                y1: 7
            }
        );
        assert_eq!(s.area(), 32);
        assert!(s.contains_pixel(2, 3) && !s.contains_pixel(1, 3) && !s.contains_pixel(2, 7));
        let geometry = SourceGeometry {
            regions: vec![
                PixelRect {
                    x0: 0,
                    y0: 0,
                    x1: 4,
                    y1: 4,
                },
                PixelRect {
                    x0: 5,
                    y0: 0,
                    x1: 100,
                    y1: 100,
                },
                PixelRect {
                    x0: 50,
                    y0: 50,
                    x1: 90,
                    y1: 90,
                },
            ],
            cm_per_pixel: None,
        };
        // The second region is the largest once clipped to the 10x10 frame; the third is outside.
        let s = Sector::from_regions(&geometry, 10, 10).unwrap();
        assert_eq!(s.area(), 50);
        assert!(Sector::from_regions(&SourceGeometry::default(), 10, 10).is_none());
    }

    #[test]
    fn convex_polygon_covers_its_interior() {
        let s = Sector::convex(
            vec![(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)],
            20,
            20,
        )
        .unwrap();
        assert_eq!(s.area(), 100);
        let tri = Sector::convex(vec![(0.0, 0.0), (20.0, 0.0), (0.0, 20.0)], 20, 20).unwrap();
        assert!(
            tri.contains_pixel(0, 0) && tri.contains_pixel(9, 9) && !tri.contains_pixel(10, 10)
        );
    }

    #[test]
    fn override_parses_and_rejects_unknown_keys() {
        let fan: SectorOverride = toml::from_str(
            "kind = \"fan\"\napex_x = 320\napex_y = 40\nouter_radius = 400\nstart_deg = 45\nend_deg = 135\n",
        )
        .unwrap();
        assert!(matches!(fan, SectorOverride::Fan(f) if f.inner_radius == 0.0));
        let rect: SectorOverride =
            toml::from_str("kind = \"rect\"\nx0 = 1\ny0 = 2\nx1 = 30\ny1 = 40\n").unwrap();
        let s = Sector::from_override(&rect, 64, 64).unwrap();
        assert_eq!(s.area(), 29 * 38);
        let typo = toml::from_str::<SectorOverride>(
            "kind = \"fan\"\napex_x = 320\napex_y = 40\nouter_radius = 400\nstart_deg = 45\nend_deg = 135\nradius = 3\n",
        );
        assert!(typo.is_err());
        let typo = toml::from_str::<SectorOverride>(
            "kind = \"rect\"\nx0 = 1\ny0 = 2\nx1 = 30\ny1 = 40\nw = 1\n",
        );
        assert!(typo.is_err());
    }

    #[test]
    fn detects_fan_and_excludes_text_and_ecg() {
        let scene = Scene::standard();
        let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
        run_detector(&mut det, &scene, 0..25);
        let sector = det.current().cloned().expect("a sector after one window");
        assert_fan_close(&fan_of(&sector), &scene.fan);
        for (x, y) in scene.text_pixels().chain(scene.ecg_band_pixels()) {
            assert!(
                !sector.contains_pixel(x, y),
                "({x}, {y}) outside the fan is in the sector"
            );
        }
        // Almost all of the drawn fan is kept.
        let drawn = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        assert!(sector.iou(&drawn) > 0.98, "iou {}", sector.iou(&drawn));
    }

    #[test]
    fn detects_fan_with_slow_speckle_and_noisy_background() {
        // Speckle that changes every other frame (as at high frame rates) and capture noise on
        // the background: the fan is still found, the noise is not taken for sector.
        let mut scene = Scene::standard();
        scene.speckle_period = 2;
        scene.noise = 3;
        let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
        run_detector(&mut det, &scene, 0..25);
        let sector = det.current().cloned().expect("a sector");
        assert_fan_close(&fan_of(&sector), &scene.fan);
        assert!(!sector.contains_pixel(5, 470) && !sector.contains_pixel(630, 5));
    }

    #[test]
    fn detects_steered_fan_with_apex_above_the_frame() {
        let mut scene = Scene::standard();
        scene.fan = Fan {
            apex_x: 300.0,
            apex_y: -30.0,
            inner_radius: 0.0,
            outer_radius: 430.0,
            start_deg: 60.0,
            end_deg: 128.0,
        };
        let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
        run_detector(&mut det, &scene, 0..25);
        let sector = det.current().cloned().expect("a sector");
        let got = fan_of(&sector);
        // The fan is clipped by the top of the frame, so the near arc is where it enters: the
        // central ray crosses y = 0 at about 30 pixels from the apex.
        assert!((got.inner_radius - 30.0).abs() < 3.0, "{got:?}");
        assert_fan_close(
            &Fan {
                inner_radius: scene.fan.inner_radius,
                ..got
            },
            &scene.fan,
        );
        let drawn = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
        assert!(sector.iou(&drawn) > 0.98, "iou {}", sector.iou(&drawn));
    }

    #[test]
    fn rectangular_image_falls_back_to_convex_region() {
        let mut scene = Scene::standard();
        scene.phantom = Phantom::Rect(PixelRect {
            x0: 150,
            y0: 60,
            x1: 490,
            y1: 420,
        });
        let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
        run_detector(&mut det, &scene, 0..25);
        let sector = det.current().cloned().expect("a sector");
        assert!(
            matches!(sector.shape(), SectorShape::Convex { .. }),
            "{:?}",
            sector.shape()
        );
        let bbox = sector.bbox();
        assert!(
            bbox.x0.abs_diff(150) <= 1
                && bbox.x1.abs_diff(490) <= 1
                && bbox.y0.abs_diff(60) <= 1
                && bbox.y1.abs_diff(420) <= 1,
            "{bbox:?}"
        );
    }

    #[test]
    fn blank_sequence_has_no_sector() {
        let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
        let blank = vec![0u8; 640 * 480];
        for _ in 0..100 {
            assert!(det.push(&blank, 640, 480).unwrap().is_none());
        }
    }

    #[test]
    fn frozen_sequence_does_not_make_a_sector_from_text() {
        let scene = Scene::standard();
        let frozen = scene.grey(7);
        let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
        for _ in 0..100 {
            assert!(det
                .push(&frozen, scene.width, scene.height)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn sector_is_stable_and_changes_only_after_confirmations() {
        let cfg = DetectorConfig::default();
        let window = cfg.window_frames as u32;
        let a = Scene::standard();
        let mut b = Scene::standard();
        b.fan.apex_x += 30.0;
        let mut det = SectorDetector::new(cfg.clone()).unwrap();
        run_detector(&mut det, &a, 0..window + 1);
        let first = det.current().cloned().unwrap();
        // Many windows of the same scene keep the very same sector.
        let mut t = window + 1;
        for _ in 0..3 {
            run_detector(&mut det, &a, t..t + window);
            t += window;
            assert!(Arc::ptr_eq(det.current().unwrap(), &first));
        }
        // One window of a different fan is not enough, nor are two.
        for _ in 0..cfg.confirmations - 1 {
            run_detector(&mut det, &b, t..t + window);
            t += window;
            assert!(Arc::ptr_eq(det.current().unwrap(), &first));
        }
        // Back to the first scene: the pending change is forgotten.
        run_detector(&mut det, &a, t..t + window);
        t += window;
        for _ in 0..cfg.confirmations - 1 {
            run_detector(&mut det, &b, t..t + window);
            t += window;
            assert!(Arc::ptr_eq(det.current().unwrap(), &first));
        }
        run_detector(&mut det, &b, t..t + window);
        t += window;
        assert_fan_close(&fan_of(det.current().unwrap()), &b.fan);
        // A blank input drops the sector after the same number of windows.
        let blank = vec![0u8; a.width * a.height];
        for w in 0..cfg.confirmations {
            assert!(det.current().is_some(), "dropped after {w} windows");
            for _ in 0..window {
                det.push(&blank, a.width, a.height).unwrap();
            }
        }
        assert!(det.current().is_none());
        let _ = t;
    }

    #[test]
    fn bad_detector_config_is_refused() {
        for cfg in [
            DetectorConfig {
                window_frames: 1,
                ..Default::default()
            },
            DetectorConfig {
                window_frames: 300,
                ..Default::default()
            },
            DetectorConfig {
                active_fraction: 1.5,
                ..Default::default()
            },
            DetectorConfig {
                confirmations: 0,
                ..Default::default()
            },
        ] {
            assert!(SectorDetector::new(cfg).is_err());
        }
        assert!(toml::from_str::<DetectorConfig>("window = 3").is_err());
    }

    #[test]
    fn morphology_matches_a_direct_window_scan() {
        let (w, h) = (23, 17);
        let m: Vec<bool> = (0..w * h)
            .map(|i| !super::super::synth::hash(i as u32, 3, 9).is_multiple_of(3))
            .collect();
        for r in 0..4 {
            for (value, outside) in [(true, false), (true, true), (false, false), (false, true)] {
                let got = morph(&m, w, h, r, value, outside);
                for y in 0..h {
                    for x in 0..w {
                        let mut all = true;
                        for dy in -(r as isize)..=r as isize {
                            for dx in -(r as isize)..=r as isize {
                                let (xx, yy) = (x as isize + dx, y as isize + dy);
                                let v = if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize
                                {
                                    outside
                                } else {
                                    m[yy as usize * w + xx as usize]
                                };
                                all &= v == value;
                            }
                        }
                        let want = if value { all } else { !all };
                        assert_eq!(
                            got[y * w + x],
                            want,
                            "r {r} value {value} outside {outside} ({x},{y})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn morphology_removes_thin_lines_and_keeps_blocks() {
        let (w, h) = (40, 30);
        let mut m = vec![false; w * h];
        for y in 5..25 {
            for x in 5..20 {
                m[y * w + x] = true;
            }
        }
        for x in 0..w {
            m[27 * w + x] = true; // a 1-pixel line
        }
        let opened = dilate(&erode(&m, w, h, 2), w, h, 2);
        assert!(opened[27 * w..28 * w].iter().all(|v| !v));
        assert_eq!(opened.iter().filter(|v| **v).count(), 15 * 20);
        let (runs, area) = largest_component(&opened, w, h).unwrap();
        assert_eq!(area, 300);
        assert_eq!(runs.len(), 20);
    }
}
