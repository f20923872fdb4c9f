//! Where the model looks: SmoothGrad saliency ([`saliency`]) through the trainable network's
//! backward pass, and occlusion sensitivity ([`occlusion`]) through the inference model. Both give
//! a [`Map2d`] over the prepared model input (the cropped, letterboxed, normalised frame); this
//! module turns maps into a heat overlay PNG and a `.npy` file, and maps source-pixel masks (the
//! scan sector, a phantom's left ventricle) into the prepared input's coordinates.

pub mod occlusion;
pub mod saliency;
pub mod worker;

use std::io::Write;
use std::path::Path;

use crate::frame::{Image, PixelFormat};
use crate::model::InputSpec;
use crate::preprocess::{prepare, PreparedInput, Sector};

pub use occlusion::{occlusion_map, Occlusion, OcclusionResult};
pub use saliency::{Explainer, SmoothGrad};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("task {task:?} is not one of the model's tasks ({known})")]
    UnknownTask { task: String, known: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

pub type Result<T> = std::result::Result<T, ExplainError>;

/// A map over the prepared input, row-major `height x width`.
#[derive(Debug, Clone, PartialEq)]
pub struct Map2d {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Map2d {
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }

    /// Share of the map's total (absolute) mass where `weight` (0..1 per pixel) is set, weighted.
    pub fn mass_share(&self, weight: &[f32]) -> f64 {
        let total: f64 = self.data.iter().map(|v| v.abs() as f64).sum();
        if total <= 0.0 {
            return 0.0;
        }
        let inside: f64 = self
            .data
            .iter()
            .zip(weight)
            .map(|(v, w)| v.abs() as f64 * *w as f64)
            .sum();
        inside / total
    }
}

/// Index of `task` among the model's head outputs.
pub fn task_index(tasks: &[String], task: &str) -> Result<usize> {
    tasks
        .iter()
        .position(|t| t == task)
        .ok_or_else(|| ExplainError::UnknownTask {
            task: task.to_string(),
            known: tasks.join(", "),
        })
}

/// The normalised value of a black pixel, per channel of the prepared input.
pub fn black_values(spec: &InputSpec, channels: usize) -> Vec<f32> {
    (0..channels)
        .map(|c| {
            let c = c.min(spec.mean.len().saturating_sub(1));
            match (spec.mean.get(c), spec.std.get(c)) {
                (Some(m), Some(s)) => -m / s,
                _ => 0.0,
            }
        })
        .collect()
}

/// Where a source-pixel mask (`width x height`, row-major) lands in the prepared input: the mask
/// rendered as an image and sent through [`prepare`] with the same sector (mask outside the
/// sector, crop, letterboxed area-average resize), so each value is the covered fraction, 0..1.
pub fn mask_to_input(
    mask: &[bool],
    width: usize,
    height: usize,
    sector: &Sector,
    spec: &InputSpec,
) -> Result<Vec<f32>> {
    let data = mask.iter().map(|&m| if m { 255u8 } else { 0 }).collect();
    let image = Image::new(width, height, PixelFormat::Gray8, data)
        .ok_or_else(|| ExplainError::Invalid(format!("mask is not {width}x{height}")))?;
    let unit = InputSpec {
        height: spec.height,
        width: spec.width,
        channels: 1,
        mean: vec![0.0],
        std: vec![1.0],
    };
    let prepared = prepare(&image, sector, &unit)?;
    Ok(prepared.data)
}

/// Each prepared-input pixel's share inside the scan sector (0..1): what SmoothGrad and
/// occlusion may attribute anything to.
pub fn sector_inside(sector: &Sector, spec: &InputSpec) -> Result<Vec<f32>> {
    let (w, h) = sector.frame_size();
    // Area averages of 0 and 1 can round a hair past 1.
    let mut inside = mask_to_input(sector.mask(), w, h, sector, spec)?;
    inside.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    Ok(inside)
}

/// The sector's edge in prepared-input pixels: inside pixels with an outside 4-neighbour.
pub fn sector_outline(sector: &Sector, spec: &InputSpec) -> Result<Vec<bool>> {
    let inside = sector_inside(sector, spec)?;
    let (iw, ih) = (spec.width, spec.height);
    let is_in = |x: isize, y: isize| -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < iw
            && (y as usize) < ih
            && inside[y as usize * iw + x as usize] > 0.5
    };
    let mut out = vec![false; iw * ih];
    for y in 0..ih as isize {
        for x in 0..iw as isize {
            if is_in(x, y)
                && !(is_in(x - 1, y) && is_in(x + 1, y) && is_in(x, y - 1) && is_in(x, y + 1))
            {
                out[y as usize * iw + x as usize] = true;
            }
        }
    }
    Ok(out)
}

/// A minimal NPY v1.0 file: little-endian f32, C order, shape `[height, width]`.
pub fn npy_bytes(map: &Map2d) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        map.height, map.width
    );
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * map.data.len());
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &map.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_npy(path: &Path, map: &Map2d) -> Result<()> {
    let io = |source| ExplainError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(&npy_bytes(map)).map_err(io)
}

/// A heat colour for t in 0..1: black-red-yellow-white ("hot").
fn hot(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0) * 3.0;
    [
        t.min(1.0),
        (t - 1.0).clamp(0.0, 1.0),
        (t - 2.0).clamp(0.0, 1.0),
    ]
}

/// How a map is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colouring {
    /// Non-negative (saliency): hot colours, scaled to the 99th percentile.
    Magnitude,
    /// Signed (occlusion): red where the output rises, blue where it falls, scaled to max |v|.
    Signed,
}

/// Gaussian width the saliency map is smoothed with before it is shown, prepared-input pixels.
/// The stem's stride-2 convolutions make raw gradients alternate from pixel to pixel (a
/// checkerboard that says nothing about anatomy); a sigma of 1.5 pixels leaves under 1 % of a
/// period-2 pattern (see the tests) while keeping structures of a few pixels.
pub const SALIENCY_DISPLAY_SIGMA: f64 = 1.5;

impl Map2d {
    /// The map blurred by a Gaussian of `sigma` pixels (separable, truncated at 3 sigma, weights
    /// renormalised at the borders).
    pub fn smoothed(&self, sigma: f64) -> Map2d {
        if sigma <= 0.0 || self.data.is_empty() {
            return self.clone();
        }
        let r = (3.0 * sigma).ceil() as isize;
        let kernel: Vec<f64> = (-r..=r)
            .map(|d| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp())
            .collect();
        let (w, h) = (self.width as isize, self.height as isize);
        let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
            let mut out = vec![0f32; src.len()];
            for y in 0..h {
                for x in 0..w {
                    let (mut s, mut n) = (0.0, 0.0);
                    for (k, wt) in kernel.iter().enumerate() {
                        let d = k as isize - r;
                        let (sx, sy) = if horizontal { (x + d, y) } else { (x, y + d) };
                        if sx < 0 || sy < 0 || sx >= w || sy >= h {
                            continue;
                        }
                        s += wt * src[(sy * w + sx) as usize] as f64;
                        n += wt;
                    }
                    out[(y * w + x) as usize] = if n > 0.0 { (s / n) as f32 } else { 0.0 };
                }
            }
            out
        };
        let data = pass(&pass(&self.data, true), false);
        Map2d {
            width: self.width,
            height: self.height,
            data,
        }
    }
}

/// The value a map's colours saturate at: the 99th percentile of |v| (saliency), or max |v|
/// (occlusion); 1 for an all-zero map.
pub fn colour_top(map: &Map2d, colouring: Colouring) -> f32 {
    let top = match colouring {
        Colouring::Magnitude => {
            let mut sorted: Vec<f32> = map.data.iter().map(|v| v.abs()).collect();
            sorted.sort_by(f32::total_cmp);
            sorted
                .get(((sorted.len() as f64 * 0.99) as usize).min(sorted.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        }
        Colouring::Signed => map.data.iter().fold(0f32, |a, v| a.max(v.abs())),
    };
    if top > 0.0 {
        top
    } else {
        1.0
    }
}

/// A map value `v` (already divided by the colour top) as (colour, opacity).
fn map_colour(colouring: Colouring, v: f32) -> ([f32; 3], f32) {
    match colouring {
        Colouring::Magnitude => {
            let t = v.abs().min(1.0);
            (hot(t).map(|c| c * 255.0), 0.85 * t.sqrt())
        }
        Colouring::Signed => {
            let t = v.clamp(-1.0, 1.0);
            if t >= 0.0 {
                ([255.0, 40.0, 40.0], 0.85 * t)
            } else {
                ([40.0, 90.0, 255.0], -0.85 * t)
            }
        }
    }
}

/// What a map's picture says about itself: a title (method, task, unit, frame) and the labels
/// at the two ends of its colour bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Legend {
    pub title: String,
    /// Label at the top of the bar (the saturating value).
    pub high: String,
    /// Label at the bottom of the bar.
    pub low: String,
}

/// Title band height and colour bar geometry of [`annotate`], output pixels.
const TITLE_BAND: usize = 26;
const BAR_GAP: usize = 8;
const BAR_WIDTH: usize = 14;
const LABEL_SPACE: usize = 78;

/// The overlay framed for reading: the title above (capitals, 5x7 font at twice its size), a
/// colour bar to the right with its end labels (and 0 in the middle of a signed bar).
pub fn annotate(img: &image::RgbImage, colouring: Colouring, legend: &Legend) -> image::RgbImage {
    use crate::phantom::font;
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (w, h) = (iw + BAR_GAP + BAR_WIDTH + LABEL_SPACE, ih + TITLE_BAND);
    let mut out = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([16, 16, 16]));
    image::imageops::replace(&mut out, img, 0, TITLE_BAND as i64);
    let bar_x = iw + BAR_GAP;
    for y in 0..ih {
        // Top of the bar is the saturating value; a signed bar runs +top .. -top.
        let f = 1.0 - y as f32 / (ih.max(2) - 1) as f32;
        let v = match colouring {
            Colouring::Magnitude => f,
            Colouring::Signed => 2.0 * f - 1.0,
        };
        let (c, a) = map_colour(colouring, v);
        let g = 60.0;
        let px = image::Rgb(c.map(|c| (g * (1.0 - a) + c * a).round().clamp(0.0, 255.0) as u8));
        for x in bar_x..bar_x + BAR_WIDTH {
            out.put_pixel(x as u32, (TITLE_BAND + y) as u32, px);
        }
    }
    let mut text = vec![0u8; w * h];
    let label_x = bar_x + BAR_WIDTH + 4;
    let bottom = (TITLE_BAND + ih).saturating_sub(font::GLYPH_H);
    let mid = (TITLE_BAND + ih / 2).saturating_sub(font::GLYPH_H / 2);
    let mut labels = vec![
        (6, 6, legend.title.to_uppercase(), 2),
        (label_x, TITLE_BAND, legend.high.to_uppercase(), 1),
        (label_x, bottom, legend.low.to_uppercase(), 1),
    ];
    if colouring == Colouring::Signed {
        labels.push((label_x, mid, "0".into(), 1));
    }
    for (x, y, t, scale) in labels {
        font::draw(&mut text, w, h, x, y, &t, scale, 255);
    }
    for (i, &t) in text.iter().enumerate() {
        if t > 0 {
            out.put_pixel((i % w) as u32, (i / w) as u32, image::Rgb([240, 240, 240]));
        }
    }
    out
}

/// The prepared input in grey (mean of its channels, de-normalised to 0..255) with the map laid
/// over it, the sector outline in cyan, enlarged `scale` times (bilinear, so the enlargement adds
/// no blocks). A saliency map (`Magnitude`) is smoothed first ([`SALIENCY_DISPLAY_SIGMA`]).
pub fn overlay(
    input: &PreparedInput,
    spec: &InputSpec,
    map: &Map2d,
    colouring: Colouring,
    outline: Option<&[bool]>,
    scale: usize,
) -> Result<image::RgbImage> {
    let (w, h) = (input.width, input.height);
    if map.width != w || map.height != h || input.data.len() != input.channels * w * h {
        return Err(ExplainError::Invalid(format!(
            "map {}x{} over an input of {w}x{h}",
            map.width, map.height
        )));
    }
    let plane = w * h;
    let grey: Vec<f32> = (0..plane)
        .map(|i| {
            let mut s = 0.0;
            for c in 0..input.channels {
                let k = c.min(spec.mean.len().saturating_sub(1));
                let (m, sd) = (
                    spec.mean.get(k).copied().unwrap_or(0.0),
                    spec.std.get(k).copied().unwrap_or(1.0),
                );
                s += (input.data[c * plane + i] * sd + m) * 255.0;
            }
            (s / input.channels.max(1) as f32).clamp(0.0, 255.0)
        })
        .collect();
    let smoothed;
    let map = match colouring {
        Colouring::Magnitude => {
            smoothed = map.smoothed(SALIENCY_DISPLAY_SIGMA);
            &smoothed
        }
        Colouring::Signed => map,
    };
    let top = colour_top(map, colouring);
    let base: Vec<[f32; 3]> = (0..plane)
        .map(|i| {
            let g = grey[i] * 0.7;
            let (colour, alpha) = map_colour(colouring, map.data[i] / top);
            colour.map(|c| g * (1.0 - alpha) + c * alpha)
        })
        .collect();
    let scale = scale.max(1);
    let mut img = image::RgbImage::new((w * scale) as u32, (h * scale) as u32);
    let at = |x: usize, y: usize| base[y.min(h - 1) * w + x.min(w - 1)];
    for oy in 0..h * scale {
        for ox in 0..w * scale {
            // Output pixel centre in input coordinates, bilinear between the four neighbours.
            let sx = ((ox as f32 + 0.5) / scale as f32 - 0.5).max(0.0);
            let sy = ((oy as f32 + 0.5) / scale as f32 - 0.5).max(0.0);
            let (x0, y0) = (sx as usize, sy as usize);
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let (a, b, c, d) = (
                at(x0, y0),
                at(x0 + 1, y0),
                at(x0, y0 + 1),
                at(x0 + 1, y0 + 1),
            );
            let mut px = [0f32; 3];
            for k in 0..3 {
                let top_row = a[k] * (1.0 - fx) + b[k] * fx;
                let bottom_row = c[k] * (1.0 - fx) + d[k] * fx;
                px[k] = top_row * (1.0 - fy) + bottom_row * fy;
            }
            let i = (oy / scale) * w + ox / scale;
            if outline.and_then(|o| o.get(i)).copied().unwrap_or(false) {
                px = [0.0, 220.0, 220.0];
            }
            let rgb = image::Rgb(px.map(|c| c.round().clamp(0.0, 255.0) as u8));
            img.put_pixel(ox as u32, oy as u32, rgb);
        }
    }
    Ok(img)
}

/// Encodes an image as PNG bytes.
pub fn png_bytes(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ExplainError::Png(e.to_string()))?;
    Ok(out.into_inner())
}

/// Enlargement that brings a prepared input of `side` pixels to at least 384 on screen.
pub fn display_scale(side: usize) -> usize {
    384usize.div_ceil(side.max(1)).clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let map = Map2d {
            width: 3,
            height: 2,
            data: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        };
        let b = npy_bytes(&map);
        assert_eq!(&b[..6], b"\x93NUMPY");
        assert_eq!(&b[6..8], &[1, 0]);
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        assert_eq!(b.len(), 10 + hl + 24);
        assert_eq!(&b[10 + hl + 4..10 + hl + 8], &1f32.to_le_bytes());
    }

    /// Issue #13 item 7: the period-2 checkerboard raw gradients show is gone from the shown map,
    /// while a broad blob survives.
    #[test]
    fn smoothing_removes_the_checkerboard_and_keeps_a_blob() {
        let (w, h) = (40, 40);
        let checker = Map2d {
            width: w,
            height: h,
            data: (0..w * h).map(|i| ((i % w + i / w) % 2) as f32).collect(),
        };
        let s = checker.smoothed(SALIENCY_DISPLAY_SIGMA);
        let inner: Vec<f32> = (10..30)
            .flat_map(|y| (10..30).map(move |x| (x, y)))
            .map(|(x, y)| s.data[y * w + x])
            .collect();
        let (lo, hi) = inner
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo < 0.01, "checkerboard left: {lo}..{hi}");
        let blob = Map2d {
            width: w,
            height: h,
            data: (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as f32 - 20.0, (i / w) as f32 - 20.0);
                    if x * x + y * y < 36.0 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect(),
        };
        let b = blob.smoothed(SALIENCY_DISPLAY_SIGMA);
        assert!(b.data[20 * w + 20] > 0.9 && b.data[2 * w + 2] < 1e-3);
    }

    /// The framed picture has its title band, colour bar (hot at the top, dark at the bottom)
    /// and lettering.
    #[test]
    fn annotation_adds_a_title_and_a_colour_bar() {
        let img = image::RgbImage::from_pixel(100, 80, image::Rgb([0, 0, 0]));
        let legend = Legend {
            title: "SmoothGrad: lv_volume (mL)".into(),
            high: "1.0e-2".into(),
            low: "0".into(),
        };
        let out = annotate(&img, Colouring::Magnitude, &legend);
        assert_eq!(
            out.width() as usize,
            100 + BAR_GAP + BAR_WIDTH + LABEL_SPACE
        );
        assert_eq!(out.height() as usize, 80 + TITLE_BAND);
        let bar_x = (100 + BAR_GAP + BAR_WIDTH / 2) as u32;
        let top = out.get_pixel(bar_x, TITLE_BAND as u32).0;
        let bottom = out.get_pixel(bar_x, (TITLE_BAND + 79) as u32).0;
        assert!(top.iter().map(|&c| c as u32).sum::<u32>() > 600, "{top:?}");
        assert!(
            bottom.iter().map(|&c| c as u32).sum::<u32>() < 200,
            "{bottom:?}"
        );
        let lettered = (0..out.width())
            .flat_map(|x| (0..TITLE_BAND as u32).map(move |y| (x, y)))
            .filter(|&(x, y)| out.get_pixel(x, y).0 == [240, 240, 240])
            .count();
        assert!(lettered > 100, "{lettered} title pixels");
    }

    #[test]
    fn mass_share_weights_absolute_values() {
        let map = Map2d {
            width: 2,
            height: 1,
            data: vec![-3.0, 1.0],
        };
        assert!((map.mass_share(&[1.0, 0.0]) - 0.75).abs() < 1e-12);
        assert_eq!(Map2d::zeros(2, 1).mass_share(&[1.0, 1.0]), 0.0);
    }
}
