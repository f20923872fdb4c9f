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

/// The sector's edge in prepared-input pixels: inside pixels with an outside 4-neighbour.
pub fn sector_outline(sector: &Sector, spec: &InputSpec) -> Result<Vec<bool>> {
    let (w, h) = sector.frame_size();
    let inside = mask_to_input(sector.mask(), w, h, sector, spec)?;
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

/// The prepared input in grey (mean of its channels, de-normalised to 0..255) with the map laid
/// over it, the sector outline in cyan, enlarged `scale` times (nearest neighbour).
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
    let top = if top > 0.0 { top } else { 1.0 };
    let scale = scale.max(1);
    let mut img = image::RgbImage::new((w * scale) as u32, (h * scale) as u32);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let g = grey[i] * 0.7;
            let v = map.data[i] / top;
            let (colour, alpha) = match colouring {
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
            };
            let mut px = colour.map(|c| g * (1.0 - alpha) + c * alpha);
            if outline.and_then(|o| o.get(i)).copied().unwrap_or(false) {
                px = [0.0, 220.0, 220.0];
            }
            let rgb = image::Rgb(px.map(|c| c.round().clamp(0.0, 255.0) as u8));
            for dy in 0..scale {
                for dx in 0..scale {
                    img.put_pixel((x * scale + dx) as u32, (y * scale + dy) as u32, rgb);
                }
            }
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
