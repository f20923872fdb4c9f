//! Screen geometry: the exact scan sector and where the fan, text, ECG strip and grey bar go.

use crate::frame::PixelRect;

use super::*;

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
pub(super) struct Layout {
    pub(super) sector: SectorTruth,
    pub(super) margin: usize,
    pub(super) text_scale: usize,
    pub(super) ecg: PixelRect,
    pub(super) bar: PixelRect,
}

impl Layout {
    pub(super) fn new(width: usize, height: usize) -> Self {
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
