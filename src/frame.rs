//! A frame as it travels from a source to the model: pixels in a plain buffer (never a device
//! tensor, so any thread may hold it), the capture timestamps that latency and sampling are
//! measured from, and what the source knows about its geometry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Pixel layouts sources deliver after decoding. Everything is 8-bit: ultrasound B-mode is grey,
/// colour appears with Doppler overlays and burned-in annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    Gray8,
    Rgb8,
}

impl PixelFormat {
    pub fn channels(self) -> usize {
        match self {
            Self::Gray8 => 1,
            Self::Rgb8 => 3,
        }
    }
}

/// An image in row-major, interleaved layout (`width * height * channels` bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub format: PixelFormat,
    pub data: Vec<u8>,
}

impl Image {
    /// `None` when `data` does not hold exactly `width * height * channels` bytes.
    pub fn new(width: usize, height: usize, format: PixelFormat, data: Vec<u8>) -> Option<Self> {
        (data.len() == width * height * format.channels() && width > 0 && height > 0).then_some(
            Self {
                width,
                height,
                format,
                data,
            },
        )
    }

    pub fn gray(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        Self::new(width, height, PixelFormat::Gray8, data)
    }

    /// Luma of every pixel (ITU-R BT.601 weights for RGB).
    pub fn to_gray(&self) -> Vec<u8> {
        match self.format {
            PixelFormat::Gray8 => self.data.clone(),
            PixelFormat::Rgb8 => self
                .data
                .chunks_exact(3)
                .map(|p| {
                    ((p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114 + 500) / 1000) as u8
                })
                .collect(),
        }
    }
}

/// A rectangle in pixel coordinates, `x0..x1` by `y0..y1` (exclusive ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PixelRect {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl PixelRect {
    pub fn width(&self) -> usize {
        self.x1.saturating_sub(self.x0)
    }
    pub fn height(&self) -> usize {
        self.y1.saturating_sub(self.y0)
    }
}

/// What a source knows about its images beyond the pixels.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SourceGeometry {
    /// Imaging regions declared by the source (DICOM Sequence of Ultrasound Regions), if any.
    pub regions: Vec<PixelRect>,
    /// Physical size of a pixel, cm (from the same sequence), if known.
    pub cm_per_pixel: Option<(f64, f64)>,
}

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the source's stream, from 0; gaps mean frames lost before this process saw them.
    pub seq: u64,
    /// Time on the source's own timeline (device timestamp, or the clip's frame time): sampling
    /// at 10 fps is done on this clock.
    pub media_time: Duration,
    /// When the frame was captured: the driver's timestamp for V4L2 devices that flag it
    /// MONOTONIC, else when it entered this process. Capture-to-publish latency is measured from here.
    pub captured_at: Instant,
    /// Wall-clock time of `captured_at`, for output.
    pub captured_wall: SystemTime,
    pub image: Image,
    pub geometry: Arc<SourceGeometry>,
}
