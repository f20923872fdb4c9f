//! Live capture from a V4L2 device (frame grabber or USB capture of the scanner's video output)
//! with mmap streaming. Negotiates YUYV, GREY, MJPEG, RGB24 or BGR24 at the device's native rate,
//! logs what it got, reads with a timeout, and reports a lost device (unplugged: ENODEV and
//! friends) as `Disconnected` so the pipeline marks the estimate stale and reopens it with backoff.
//! Timestamps come from the driver (monotonic), so sampling follows the device's own clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{FrameSource, SourceError, SourceInfo};
use crate::frame::{Frame, Image, PixelFormat, SourceGeometry};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    /// Device node. Default `/dev/video0`.
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// Requested size in pixels; the driver may adjust it (the negotiated size is logged).
    /// Default: keep the device's current size.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// Preferred pixel format: YUYV, GREY, MJPG, RGB3 or BGR3. Default: the first of these the
    /// device offers, in that order.
    #[serde(default)]
    pub fourcc: Option<String>,
    /// Longest wait for one frame, ms. Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// mmap buffers. Default 4.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_buffers() -> u32 {
    4
}

impl Default for V4l2Config {
    fn default() -> Self {
        Self {
            device: default_device(),
            width: None,
            height: None,
            fourcc: None,
            timeout_ms: default_timeout_ms(),
            buffers: default_buffers(),
        }
    }
}

const SUPPORTED: [&[u8; 4]; 5] = [b"YUYV", b"GREY", b"MJPG", b"RGB3", b"BGR3"];

/// Negotiated stream parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub fourcc: [u8; 4],
    pub width: usize,
    pub height: usize,
    /// Bytes per line (0 when the driver does not say; then the tight stride is assumed).
    pub stride: usize,
}

pub struct V4l2Source {
    config: V4l2Config,
    stream: Option<v4l::io::mmap::Stream<'static>>,
    device: Option<Device>,
    negotiated: Option<Negotiated>,
    fps: Option<f64>,
    first_timestamp: Option<Duration>,
    seq: u64,
}

impl V4l2Source {
    pub fn new(config: V4l2Config) -> Self {
        Self {
            config,
            stream: None,
            device: None,
            negotiated: None,
            fps: None,
            first_timestamp: None,
            seq: 0,
        }
    }

    fn name(&self) -> String {
        self.config.device.display().to_string()
    }

    fn lost(&self, reason: String) -> SourceError {
        SourceError::Disconnected {
            source_name: self.name(),
            reason,
        }
    }

    fn open(&mut self) -> Result<(), SourceError> {
        let path = &self.config.device;
        let dev = Device::with_path(path).map_err(|e| self.lost(format!("cannot open: {e}")))?;
        let offered: Vec<[u8; 4]> = dev
            .enum_formats()
            .map_err(|e| self.lost(format!("cannot list formats: {e}")))?
            .into_iter()
            .map(|f| f.fourcc.repr)
            .collect();
        let wanted: Vec<[u8; 4]> = match &self.config.fourcc {
            Some(f) => {
                let b = f.as_bytes();
                if b.len() != 4 || !SUPPORTED.iter().any(|s| s.as_slice() == b) {
                    return Err(SourceError::Fatal {
                        source_name: self.name(),
                        reason: format!("fourcc {f:?} is not one of YUYV, GREY, MJPG, RGB3, BGR3"),
                    });
                }
                vec![[b[0], b[1], b[2], b[3]]]
            }
            None => SUPPORTED.iter().map(|s| **s).collect(),
        };
        let Some(fourcc) = wanted.iter().find(|w| offered.contains(w)).copied() else {
            let names: Vec<String> = offered
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            return Err(SourceError::Fatal {
                source_name: self.name(),
                reason: format!("the device offers {names:?}, none of which this build decodes (YUYV, GREY, MJPG, RGB3, BGR3)"),
            });
        };
        let mut fmt = dev
            .format()
            .map_err(|e| self.lost(format!("cannot read the format: {e}")))?;
        fmt.fourcc = FourCC::new(&fourcc);
        if let Some(w) = self.config.width {
            fmt.width = w;
        }
        if let Some(h) = self.config.height {
            fmt.height = h;
        }
        let fmt = dev
            .set_format(&fmt)
            .map_err(|e| self.lost(format!("cannot set the format: {e}")))?;
        if fmt.fourcc.repr != fourcc {
            return Err(SourceError::Fatal {
                source_name: self.name(),
                reason: format!(
                    "asked for {} but the driver chose {}",
                    String::from_utf8_lossy(&fourcc),
                    fmt.fourcc
                ),
            });
        }
        self.fps = dev.params().ok().and_then(|p| {
            let (n, d) = (p.interval.numerator, p.interval.denominator);
            (n > 0).then(|| d as f64 / n as f64)
        });
        let mut stream = v4l::io::mmap::Stream::with_buffers(
            &dev,
            Type::VideoCapture,
            self.config.buffers.max(2),
        )
        .map_err(|e| self.lost(format!("cannot start mmap streaming: {e}")))?;
        stream.set_timeout(Duration::from_millis(self.config.timeout_ms.max(1)));
        let negotiated = Negotiated {
            fourcc,
            width: fmt.width as usize,
            height: fmt.height as usize,
            stride: fmt.stride as usize,
        };
        tracing::info!(
            device = %path.display(), format = %String::from_utf8_lossy(&fourcc),
            width = negotiated.width, height = negotiated.height, fps = ?self.fps,
            "V4L2 format negotiated"
        );
        self.negotiated = Some(negotiated);
        self.stream = Some(stream);
        self.device = Some(dev);
        self.first_timestamp = None;
        Ok(())
    }
}

/// Converts one captured buffer to an image. Pure, so every format is testable without hardware.
pub fn decode_buffer(n: &Negotiated, buf: &[u8]) -> Result<Image, String> {
    let (w, h) = (n.width, n.height);
    let tight = |bpp: usize| {
        if n.stride >= w * bpp {
            n.stride
        } else {
            w * bpp
        }
    };
    let rows = |bpp: usize| -> Result<Vec<&[u8]>, String> {
        let stride = tight(bpp);
        if buf.len() < stride * (h - 1) + w * bpp {
            return Err(format!(
                "buffer of {} bytes is too short for {w}x{h} at {stride} bytes per line",
                buf.len()
            ));
        }
        Ok((0..h)
            .map(|y| &buf[y * stride..y * stride + w * bpp])
            .collect())
    };
    let bad = || format!("{w}x{h}: empty image");
    match &n.fourcc {
        b"GREY" => {
            let data: Vec<u8> = rows(1)?.concat();
            Image::new(w, h, PixelFormat::Gray8, data).ok_or_else(bad)
        }
        b"RGB3" | b"BGR3" => {
            let mut data: Vec<u8> = rows(3)?.concat();
            if &n.fourcc == b"BGR3" {
                data.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
            }
            Image::new(w, h, PixelFormat::Rgb8, data).ok_or_else(bad)
        }
        b"YUYV" => {
            let mut data = Vec::with_capacity(w * h * 3);
            for row in rows(2)? {
                for quad in row.chunks_exact(4) {
                    let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
                    data.extend_from_slice(&yuv_to_rgb(y0, u, v));
                    data.extend_from_slice(&yuv_to_rgb(y1, u, v));
                }
                if w % 2 == 1 {
                    // An odd width leaves one pixel of a pair: it shares the last pair's chroma.
                    data.truncate(data.len() - 3);
                }
            }
            Image::new(w, h, PixelFormat::Rgb8, data).ok_or_else(bad)
        }
        b"MJPG" => {
            let img = image::load_from_memory_with_format(buf, image::ImageFormat::Jpeg)
                .map_err(|e| format!("MJPEG frame: {e}"))?;
            let (iw, ih) = (img.width() as usize, img.height() as usize);
            if img.color().has_color() {
                Image::new(iw, ih, PixelFormat::Rgb8, img.to_rgb8().into_raw()).ok_or_else(bad)
            } else {
                Image::new(iw, ih, PixelFormat::Gray8, img.to_luma8().into_raw()).ok_or_else(bad)
            }
        }
        other => Err(format!(
            "unsupported fourcc {}",
            String::from_utf8_lossy(other)
        )),
    }
}

/// BT.601 limited-range YCbCr to RGB.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as f32 - 16.0) * 1.164;
    let d = u as f32 - 128.0;
    let e = v as f32 - 128.0;
    let clamp = |x: f32| x.round().clamp(0.0, 255.0) as u8;
    [
        clamp(c + 1.596 * e),
        clamp(c - 0.392 * d - 0.813 * e),
        clamp(c + 2.017 * d),
    ]
}

/// Errors that mean the device went away (unplugged, driver reset): reopen rather than give up.
fn is_device_loss(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_codes::ENODEV | libc_codes::ENXIO | libc_codes::EIO | libc_codes::ESHUTDOWN)
    )
}

/// The few errno values needed, without a libc dependency.
mod libc_codes {
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const ENODEV: i32 = 19;
    pub const ESHUTDOWN: i32 = 108;
}

impl FrameSource for V4l2Source {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "v4l2",
            name: self.name(),
            format: match &self.negotiated {
                Some(n) => format!(
                    "{} {}x{}",
                    String::from_utf8_lossy(&n.fourcc),
                    n.width,
                    n.height
                ),
                None => "not negotiated".into(),
            },
            nominal_fps: self.fps,
            frame_count: None,
        }
    }

    fn start(&mut self) -> Result<(), SourceError> {
        self.stream = None;
        self.device = None;
        self.open()
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let (Some(stream), Some(n)) = (self.stream.as_mut(), self.negotiated) else {
            return Err(self.lost("not open".into()));
        };
        let result = stream.next().map(|(buf, meta)| {
            let used = (meta.bytesused as usize).min(buf.len());
            let ts = Duration::new(
                meta.timestamp.sec.max(0) as u64,
                (meta.timestamp.usec.max(0) as u32).saturating_mul(1000),
            );
            (
                decode_buffer(&n, &buf[..if used == 0 { buf.len() } else { used }]),
                ts,
            )
        });
        let (decoded, ts) = match result {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(SourceError::Timeout {
                    source_name: self.name(),
                    timeout: Duration::from_millis(self.config.timeout_ms),
                })
            }
            Err(e) => {
                // Any other read error: drop the stream so the pipeline's reopen starts clean.
                self.stream = None;
                self.device = None;
                let kind = if is_device_loss(&e) {
                    "device lost"
                } else {
                    "read failed"
                };
                return Err(self.lost(format!("{kind}: {e}")));
            }
        };
        let seq = self.seq;
        self.seq += 1;
        let image = decoded.map_err(|reason| SourceError::BadFrame {
            source_name: self.name(),
            seq,
            reason,
        })?;
        let first = *self.first_timestamp.get_or_insert(ts);
        Ok(Some(Frame {
            seq,
            media_time: ts.saturating_sub(first),
            captured_at: Instant::now(),
            captured_wall: SystemTime::now(),
            image,
            geometry: Arc::new(SourceGeometry::default()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(fourcc: &[u8; 4], w: usize, h: usize, stride: usize) -> Negotiated {
        Negotiated {
            fourcc: *fourcc,
            width: w,
            height: h,
            stride,
        }
    }

    #[test]
    fn grey_with_padded_stride() {
        let buf = [1u8, 2, 0, 0, 3, 4, 0, 0];
        let img = decode_buffer(&neg(b"GREY", 2, 2, 4), &buf).unwrap();
        assert_eq!(img.data, vec![1, 2, 3, 4]);
    }

    #[test]
    fn bgr_is_swapped_to_rgb() {
        let img = decode_buffer(&neg(b"BGR3", 1, 1, 0), &[10, 20, 30]).unwrap();
        assert_eq!(img.data, vec![30, 20, 10]);
    }

    #[test]
    fn yuyv_grey_and_colour() {
        // Y=235 with neutral chroma is white; Y=16 is black; strong V is red.
        let img = decode_buffer(
            &neg(b"YUYV", 4, 1, 0),
            &[235, 128, 16, 128, 81, 90, 81, 240],
        )
        .unwrap();
        assert_eq!(&img.data[0..3], &[255, 255, 255]);
        assert_eq!(&img.data[3..6], &[0, 0, 0]);
        let red = &img.data[6..9];
        assert!(red[0] > 200 && red[1] < 40 && red[2] < 40, "{red:?}");
    }

    #[test]
    fn short_buffer_is_a_bad_frame_not_a_panic() {
        let e = decode_buffer(&neg(b"YUYV", 640, 480, 1280), &[0u8; 1000]).unwrap_err();
        assert!(e.contains("too short"), "{e}");
        assert!(decode_buffer(&neg(b"MJPG", 640, 480, 0), &[0xFF, 0xD8, 0x00]).is_err());
    }

    #[test]
    fn mjpeg_decodes() {
        let mut jpeg = Vec::new();
        image::GrayImage::from_pixel(16, 8, image::Luma([77]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let img = decode_buffer(&neg(b"MJPG", 16, 8, 0), &jpeg).unwrap();
        assert_eq!(
            (img.width, img.height, img.format),
            (16, 8, PixelFormat::Gray8)
        );
        assert!((img.data[0] as i32 - 77).abs() <= 2);
    }

    #[test]
    fn missing_device_is_reported_as_lost_with_its_path() {
        let mut s = V4l2Source::new(V4l2Config {
            device: "/dev/video-does-not-exist".into(),
            ..Default::default()
        });
        let e = s.start().unwrap_err();
        assert!(matches!(e, SourceError::Disconnected { .. }));
        assert!(e.to_string().contains("/dev/video-does-not-exist"));
        assert!(s.next_frame().is_err());
    }
}
