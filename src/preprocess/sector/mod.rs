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

mod detect;
mod fan_fit;
mod morphology;
#[cfg(test)]
mod tests;

pub use detect::{detect_still, DetectorConfig, SectorDetector};

use fan_fit::*;
use morphology::*;

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
        let largest = largest_region(geometry, width, height)?;
        Self::rect(largest, width, height).ok()
    }

    /// The scan sector inside the largest declared region: the fan (or convex region) fitted to
    /// the image in `grey` within the rectangle ([`detect_still`]), so text burned in inside the
    /// rectangle but outside the fan is masked. `Some((rect, false))` when nothing can be fitted
    /// (a black frame): the rectangle, to be fitted again on a later frame; `None` when no region
    /// overlaps the frame.
    pub fn in_regions(
        geometry: &SourceGeometry,
        grey: &[u8],
        width: usize,
        height: usize,
        cfg: &DetectorConfig,
    ) -> Option<(Self, bool)> {
        let largest = largest_region(geometry, width, height)?;
        let rect = Self::rect(largest, width, height).ok()?;
        match detect_still(grey, width, height, Some(rect.bbox()), cfg) {
            // A fit covering a sliver of the rectangle is a stray blob, not the image.
            Some(s) if s.area() * 4 >= rect.area() => Some((s, true)),
            _ => Some((rect, false)),
        }
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

/// The declared region with the largest area inside a `width` x `height` frame.
fn largest_region(geometry: &SourceGeometry, width: usize, height: usize) -> Option<PixelRect> {
    let clipped_area = |r: &PixelRect| {
        let w = r.x1.min(width).saturating_sub(r.x0);
        let h = r.y1.min(height).saturating_sub(r.y0);
        w * h
    };
    geometry
        .regions
        .iter()
        .filter(|r| clipped_area(r) > 0)
        .max_by_key(|r| clipped_area(r))
        .copied()
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
