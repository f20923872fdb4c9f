//! `SectorDetector`: finds the sector in the images themselves, from where speckle changes
//! between frames (counts over a window, opening, largest region, fan fit, hysteresis).

use super::*;

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
    /// Grey level from which a pixel counts as image when the sector must be found in one still
    /// frame (a single PNG for `echonet infer`, or the fan inside a declared region), levels
    /// (1-255). Default 1: outside the scan sector a digital frame is black (0), while the
    /// receiver's noise floor keeps even the anechoic blood pool above it; a chamber that touches
    /// the fan's edge would otherwise cut the edge the fan is fitted to. Raise it for a source
    /// with a noisy background. Thin text is removed by the opening, as in detection from motion.
    pub still_level: u8,
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
            still_level: 1,
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
        if self.still_level == 0 {
            return bad(
                "detector.still_level",
                "is 0, expected 1 to 255 (0 would count every pixel as image)".into(),
            );
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

    pub(super) fn adopt(&mut self, found: Option<Arc<Sector>>) {
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
pub(super) fn detect(
    counts: &[u8],
    pairs: usize,
    width: usize,
    height: usize,
    cfg: &DetectorConfig,
) -> Option<Sector> {
    let needed = ((cfg.active_fraction * pairs as f64).ceil() as usize).clamp(1, 255) as u8;
    let active: Vec<bool> = counts.iter().map(|&c| c >= needed).collect();
    region_to_sector(&active, width, height, cfg)
}

/// The sector of one still frame (`width * height` grey bytes), optionally only within `within`:
/// pixels at or above `still_level` are image, then the same opening, largest region and fan
/// fit as detection from motion. `None` when no region large enough is found. Static text is
/// as bright as tissue, so this serves where motion cannot: a single frame, or the fan inside a
/// declared region (whose text is outside the fan but inside the rectangle).
pub fn detect_still(
    grey: &[u8],
    width: usize,
    height: usize,
    within: Option<PixelRect>,
    cfg: &DetectorConfig,
) -> Option<Sector> {
    if grey.len() != width * height || width == 0 || height == 0 {
        return None;
    }
    let inside = |i: usize| match within {
        None => true,
        Some(r) => {
            let (x, y) = (i % width, i / width);
            x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1
        }
    };
    let active: Vec<bool> = grey
        .iter()
        .enumerate()
        .map(|(i, &g)| g >= cfg.still_level && inside(i))
        .collect();
    region_to_sector(&active, width, height, cfg)
}

/// From the pixels that look like image to the sector: opening, closing, largest region, then a
/// fan when one fits (else the region's convex hull).
fn region_to_sector(
    active: &[bool],
    width: usize,
    height: usize,
    cfg: &DetectorConfig,
) -> Option<Sector> {
    let r = cfg.opening_radius;
    // Opening drops thin structures; the closing after it fills speckle pin-holes so the edges
    // the fan is fitted to are clean. The closing's erosion counts the outside as set, so a
    // sector cut by the frame's border keeps its border rows.
    let opened = dilate(&erode(active, width, height, r), width, height, r);
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
