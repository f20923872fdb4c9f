//! A pure-Rust AVI (RIFF) reader for dataset clips: no system libraries, no C codecs.
//!
//! The container is parsed in full (RIFF `AVI ` with `LIST hdrl` / `LIST movi` / `idx1`, and the
//! OpenDML `RIFF AVIX` extensions that follow it); the video stream's frames are then decoded
//! when its codec is one of:
//!
//! - Motion JPEG (`MJPG` and aliases): each chunk one JPEG; the standard Huffman tables are put
//!   in when a frame omits them (AVI MJPEG allows that);
//! - uncompressed DIB (`BI_RGB`, 8-bit palette or 24-bit BGR, bottom-up unless the height is
//!   negative, rows padded to 4 bytes);
//! - 8-bit grey (`Y800`, `GREY`, `Y8  `).
//!
//! Any other codec (MPEG-4 Part 2 `FMP4`/`XVID`/`DIVX`, H.264, ...) is refused by name with a
//! conversion hint. Every malformed file is an error naming the file and what is wrong; sizes are
//! checked against the file before anything is allocated.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{frame_at, DatasetError, Result};
use crate::frame::{Frame, Image, PixelFormat, SourceGeometry};

mod mjpeg;
mod riff;
#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "test-support"))]
mod writer;

pub use mjpeg::{encode_jpeg, with_default_huffman_tables};
#[cfg(any(test, feature = "test-support"))]
pub use writer::{write_avi, AviSpec};

use riff::*;

/// Largest frame side accepted (the EchoNet-Dynamic videos are 112x112).
pub const MAX_SIDE: u32 = 8192;
/// Largest total of decoded pixel bytes one clip may produce.
pub const MAX_DECODED_BYTES: usize = 2 << 30;

/// The codecs this reader decodes, for error messages.
pub const SUPPORTED: &str =
    "MJPG (Motion JPEG), uncompressed DIB (BI_RGB 8-bit palette or 24-bit), Y800/GREY";
/// How to convert a clip into a codec this reader decodes.
pub const CONVERT_HINT: &str = "convert it with `ffmpeg -i in.avi -c:v mjpeg -q:v 2 out.avi`";

/// How the video stream's frames are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Mjpeg,
    /// BI_RGB with this many bits per pixel (8 with a palette, or 24).
    Dib(u16),
    Grey,
}

/// What the headers say about the video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AviInfo {
    pub width: u32,
    pub height: u32,
    /// DIB rows run bottom-up (positive `biHeight`).
    pub bottom_up: bool,
    /// Frame count the main header declares (`dwTotalFrames`; informative only).
    pub declared_frames: u32,
    /// Frame period from the stream header (`dwScale / dwRate`), else the main header.
    pub frame_period: Duration,
    /// `fccHandler` of the stream header.
    pub handler: [u8; 4],
    /// `biCompression` of the stream format (0 = BI_RGB).
    pub compression: [u8; 4],
    pub bit_count: u16,
    /// Palette of 8-bit DIBs, as RGB.
    pub palette: Vec<[u8; 3]>,
}

/// A parsed AVI: headers and the byte ranges of the video stream's frame chunks, in order.
#[derive(Debug, Clone)]
pub struct AviFile {
    pub path: PathBuf,
    pub info: AviInfo,
    data: Vec<u8>,
    /// Payload ranges of the video frames (empty = repeat the previous frame).
    chunks: Vec<Range<usize>>,
}

/// Printable form of a FOURCC (`"FMP4"`, or hex when not printable).
pub fn fourcc_text(f: [u8; 4]) -> String {
    if f.iter().all(|b| (0x20..0x7f).contains(b)) {
        format!("{:?}", String::from_utf8_lossy(&f))
    } else {
        format!("0x{:08x}", u32::from_le_bytes(f))
    }
}

fn describe_codec(f: [u8; 4]) -> &'static str {
    let up: Vec<u8> = f.iter().map(|b| b.to_ascii_uppercase()).collect();
    match up.as_slice() {
        b"FMP4" | b"XVID" | b"DIVX" | b"DX50" | b"MP4V" | b"DIV3" | b"MP42" | b"MP43" | b"M4S2" => {
            "MPEG-4 Part 2"
        }
        b"H264" | b"X264" | b"AVC1" | b"DAVC" => "H.264",
        b"HEVC" | b"H265" | b"HVC1" => "H.265",
        b"FFV1" => "FFV1",
        b"IYUV" | b"I420" | b"YV12" | b"YUY2" | b"UYVY" => "raw YUV",
        _ => "an unsupported codec",
    }
}

impl AviFile {
    /// Reads and parses `path` (the whole file is read: dataset clips are small).
    pub fn open(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, data)
    }

    /// Parses an AVI held in memory; `path` names it in errors.
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Self> {
        let r = Reader { path };
        if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"AVI " {
            return Err(r.bad("not an AVI file (no RIFF 'AVI ' header)"));
        }
        let top = chunks(&r, &data, 0..data.len(), "file")?;
        let mut info: Option<AviInfo> = None;
        let mut video_stream: Option<usize> = None;
        let mut movi_lists: Vec<Range<usize>> = Vec::new();
        let mut idx1: Option<Range<usize>> = None;
        for (n, riff) in top.iter().enumerate() {
            if &riff.id != b"RIFF" {
                continue; // stray data after the RIFF chunks
            }
            let kind = list_type(&data, riff).ok_or_else(|| r.bad("RIFF chunk without a type"))?;
            match (&kind, n) {
                (b"AVI ", 0) => {}
                (b"AVIX", _) if n > 0 => {}
                _ => {
                    return Err(r.bad(format!(
                        "RIFF chunk {n} has type {}: expected 'AVI ' first, then 'AVIX' extensions",
                        fourcc_text(kind)
                    )))
                }
            }
            let body = riff.body.start + 4..riff.body.end;
            for c in chunks(&r, &data, body, "RIFF")? {
                match &c.id {
                    b"LIST" => match list_type(&data, &c).as_ref() {
                        Some(b"hdrl") if n == 0 => {
                            let (i, s) = parse_hdrl(&r, &data, c.body.start + 4..c.body.end)?;
                            info = Some(i);
                            video_stream = Some(s);
                        }
                        Some(b"movi") => movi_lists.push(c.at..c.body.end),
                        _ => {}
                    },
                    b"idx1" if n == 0 => idx1 = Some(c.body.clone()),
                    _ => {}
                }
            }
        }
        let info = info.ok_or_else(|| r.bad("no LIST 'hdrl' header list"))?;
        let stream = video_stream.ok_or_else(|| r.bad("no video stream"))?;
        if movi_lists.is_empty() {
            return Err(r.bad("no LIST 'movi' (the file holds no frames)"));
        }
        let ids = [frame_id(stream, b"dc"), frame_id(stream, b"db")];
        // Frames from the index when it is present and consistent, else from the movi lists.
        // (An OpenDML file's idx1 covers only its first RIFF: scan instead.)
        let from_index = idx1
            .as_ref()
            .filter(|_| movi_lists.len() == 1)
            .and_then(|ix| frames_from_idx1(&data, ix.clone(), movi_lists[0].clone(), &ids));
        let chunks = match from_index {
            Some(c) if !c.is_empty() => c,
            _ => {
                let mut out = Vec::new();
                for movi in &movi_lists {
                    // Skip the 'LIST' header and the 'movi' type.
                    scan_movi(&r, &data, movi.start + 12..movi.end, &ids, &mut out, 0)?;
                }
                out
            }
        };
        if chunks.is_empty() {
            return Err(r.bad(format!(
                "no frames of video stream {stream} ('{:02}dc'/'{:02}db' chunks) in 'movi'",
                stream, stream
            )));
        }
        if chunks.first().is_some_and(|c| c.is_empty()) {
            return Err(r.bad("the first video frame is empty (nothing to repeat)"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            info,
            data,
            chunks,
        })
    }

    /// Number of video frames found in the file.
    pub fn frame_count(&self) -> usize {
        self.chunks.len()
    }

    /// Which decoder the stream needs, or the refusal naming its FOURCC.
    pub fn codec(&self) -> Result<Codec> {
        let i = &self.info;
        let norm = |f: [u8; 4]| f.map(|b| b.to_ascii_uppercase());
        let comp = norm(i.compression);
        let handler = norm(i.handler);
        let mjpeg = |f: &[u8; 4]| matches!(f, b"MJPG" | b"JPEG" | b"AVRN" | b"DMB1" | b"MJLS");
        if mjpeg(&comp) || (comp == [0; 4] && mjpeg(&handler)) {
            return Ok(Codec::Mjpeg);
        }
        if matches!(&comp, b"Y800" | b"GREY" | b"Y8  " | b"GRAY") {
            return Ok(Codec::Grey);
        }
        if comp == [0; 4] || &comp == b"DIB " || &comp == b"RGB " || &comp == b"RAW " {
            return match i.bit_count {
                8 if !i.palette.is_empty() => Ok(Codec::Dib(8)),
                8 => Ok(Codec::Grey),
                24 => Ok(Codec::Dib(24)),
                b => Err(DatasetError::Decode {
                    path: self.path.clone(),
                    what: format!(
                        "uncompressed DIB with {b} bits per pixel is not supported (supported: {SUPPORTED}); {CONVERT_HINT}"
                    ),
                }),
            };
        }
        let shown = if comp == [0; 4] {
            i.handler
        } else {
            i.compression
        };
        Err(DatasetError::Decode {
            path: self.path.clone(),
            what: format!(
                "video codec FOURCC {} (handler {}, {}) cannot be decoded: supported codecs are {SUPPORTED}; {CONVERT_HINT}",
                fourcc_text(shown),
                fourcc_text(i.handler),
                describe_codec(shown)
            ),
        })
    }

    /// Every frame decoded, with media times k * period (`fps` overrides the file's rate).
    pub fn decode_all(&self, fps: Option<f64>) -> Result<Vec<Frame>> {
        let codec = self.codec()?;
        let period = match fps {
            Some(f) if f.is_finite() && f > 0.0 && f < 100_000.0 => {
                Duration::from_secs_f64(1.0 / f)
            }
            Some(f) => {
                return Err(DatasetError::Invalid {
                    path: self.path.clone(),
                    what: format!(
                        "frame rate {f}: expected a positive number of frames per second"
                    ),
                })
            }
            None => self.info.frame_period,
        };
        let per_frame = self.info.width as usize * self.info.height as usize * 3;
        if per_frame.saturating_mul(self.chunks.len()) > MAX_DECODED_BYTES {
            return Err(self.decode_err(format!(
                "{} frames of {}x{} would need more than {} MiB decoded",
                self.chunks.len(),
                self.info.width,
                self.info.height,
                MAX_DECODED_BYTES >> 20
            )));
        }
        let geometry = Arc::new(SourceGeometry::default());
        let mut frames: Vec<Frame> = Vec::with_capacity(self.chunks.len());
        for (k, range) in self.chunks.iter().enumerate() {
            let image = if range.is_empty() {
                match frames.last() {
                    Some(f) => f.image.clone(),
                    None => return Err(self.decode_err("the first video frame is empty".into())),
                }
            } else {
                self.decode_frame(codec, k, &self.data[range.clone()])?
            };
            let t = period.checked_mul(k as u32).unwrap_or(Duration::MAX);
            frames.push(frame_at(k, t, image, &geometry));
        }
        Ok(frames)
    }

    fn decode_err(&self, what: String) -> DatasetError {
        DatasetError::Decode {
            path: self.path.clone(),
            what,
        }
    }

    fn decode_frame(&self, codec: Codec, k: usize, bytes: &[u8]) -> Result<Image> {
        let (w, h) = (self.info.width as usize, self.info.height as usize);
        let image = match codec {
            Codec::Mjpeg => {
                let jpeg = with_default_huffman_tables(bytes);
                let mut reader = image::ImageReader::with_format(
                    std::io::Cursor::new(&jpeg[..]),
                    image::ImageFormat::Jpeg,
                );
                // A damaged frame cannot make the decoder allocate beyond the stream's size.
                let mut limits = image::Limits::default();
                limits.max_image_width = Some(self.info.width);
                limits.max_image_height = Some(self.info.height);
                reader.limits(limits);
                let img = reader
                    .decode()
                    .map_err(|e| self.decode_err(format!("frame {k}: JPEG: {e}")))?;
                if img.width() as usize != w || img.height() as usize != h {
                    return Err(self.decode_err(format!(
                        "frame {k}: JPEG is {}x{} but the stream is {w}x{h}",
                        img.width(),
                        img.height()
                    )));
                }
                if img.color().has_color() {
                    Image::new(w, h, PixelFormat::Rgb8, img.to_rgb8().into_raw())
                } else {
                    Image::new(w, h, PixelFormat::Gray8, img.to_luma8().into_raw())
                }
            }
            Codec::Grey => {
                let need = w * h;
                let rows = bytes.get(..need).ok_or_else(|| {
                    self.decode_err(format!(
                        "frame {k}: {} bytes, expected {need} for {w}x{h} grey",
                        bytes.len()
                    ))
                })?;
                Image::new(w, h, PixelFormat::Gray8, rows.to_vec())
            }
            Codec::Dib(bits) => {
                let bpp = bits as usize / 8;
                let stride = (w * bpp + 3) & !3;
                let need = stride * h;
                if bytes.len() < need {
                    return Err(self.decode_err(format!(
                        "frame {k}: {} bytes, expected {need} for a {w}x{h} {bits}-bit DIB",
                        bytes.len()
                    )));
                }
                let mut rgb = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    let src_row = if self.info.bottom_up { h - 1 - y } else { y };
                    let row = &bytes[src_row * stride..src_row * stride + w * bpp];
                    if bits == 24 {
                        for p in row.chunks_exact(3) {
                            rgb.extend_from_slice(&[p[2], p[1], p[0]]);
                        }
                    } else {
                        for &i in row {
                            let c = self.info.palette.get(i as usize).ok_or_else(|| {
                                self.decode_err(format!(
                                    "frame {k}: palette index {i} beyond the {}-entry palette",
                                    self.info.palette.len()
                                ))
                            })?;
                            rgb.extend_from_slice(c);
                        }
                    }
                }
                Image::new(w, h, PixelFormat::Rgb8, rgb)
            }
        };
        let image = image.ok_or_else(|| self.decode_err(format!("frame {k}: empty image")))?;
        Ok(grey_if_equal(image))
    }
}

/// An RGB image whose three channels are equal everywhere becomes grey.
pub fn grey_if_equal(image: Image) -> Image {
    if image.format == PixelFormat::Rgb8
        && image
            .data
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2])
    {
        let data = image.data.chunks_exact(3).map(|p| p[0]).collect();
        Image {
            format: PixelFormat::Gray8,
            data,
            ..image
        }
    } else {
        image
    }
}

/// Decodes every frame of the AVI at `path` (see [`AviFile::decode_all`]).
pub fn load_frames(path: &Path, fps: Option<f64>) -> Result<Vec<Frame>> {
    AviFile::open(path)?.decode_all(fps)
}
