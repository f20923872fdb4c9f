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

struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn bad(&self, what: impl Into<String>) -> DatasetError {
        DatasetError::Invalid {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn i32_at(d: &[u8], o: usize) -> Option<i32> {
    u32_at(d, o).map(|v| v as i32)
}
fn cc_at(d: &[u8], o: usize) -> Option<[u8; 4]> {
    d.get(o..o.checked_add(4)?)?.try_into().ok()
}

/// One chunk: its id, payload range, and (for RIFF/LIST) its list type.
struct Chunk {
    id: [u8; 4],
    body: Range<usize>,
    /// Offset of the chunk header.
    at: usize,
}

/// Chunks inside `range` of `data`; each must fit inside `range`.
fn chunks(r: &Reader, data: &[u8], range: Range<usize>, what: &str) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        if range.end - pos < 8 {
            // Trailing padding shorter than a chunk header: tolerated (some writers pad lists).
            break;
        }
        let id = cc_at(data, pos)
            .ok_or_else(|| r.bad(format!("{what}: chunk header at byte {pos} is cut off")))?;
        let size = u32_at(data, pos + 4)
            .ok_or_else(|| r.bad(format!("{what}: chunk header at byte {pos} is cut off")))?
            as usize;
        let start = pos + 8;
        let end = start
            .checked_add(size)
            .filter(|e| *e <= range.end)
            .ok_or_else(|| {
                r.bad(format!(
                    "{what}: chunk {} at byte {pos} declares {size} bytes but only {} remain (truncated or corrupt file)",
                    fourcc_text(id),
                    range.end - start
                ))
            })?;
        out.push(Chunk {
            id,
            body: start..end,
            at: pos,
        });
        // Chunks are padded to an even size.
        pos = end + (size & 1);
    }
    Ok(out)
}

fn list_type(data: &[u8], c: &Chunk) -> Option<[u8; 4]> {
    if c.body.len() >= 4 {
        cc_at(data, c.body.start)
    } else {
        None
    }
}

struct StreamHeader {
    kind: [u8; 4],
    handler: [u8; 4],
    scale: u32,
    rate: u32,
    format: Option<Range<usize>>,
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

fn frame_id(stream: usize, suffix: &[u8; 2]) -> [u8; 4] {
    let tens = b'0' + (stream / 10 % 10) as u8;
    let ones = b'0' + (stream % 10) as u8;
    [tens, ones, suffix[0], suffix[1]]
}

/// Video chunks of a movi list (descending into `LIST rec ` groups).
fn scan_movi(
    r: &Reader,
    data: &[u8],
    range: Range<usize>,
    ids: &[[u8; 4]; 2],
    out: &mut Vec<Range<usize>>,
    depth: usize,
) -> Result<()> {
    if depth > 4 {
        return Err(r.bad("'movi' lists nested too deeply"));
    }
    for c in chunks(r, data, range, "movi")? {
        if &c.id == b"LIST" {
            scan_movi(
                r,
                data,
                c.body.start.saturating_add(4).min(c.body.end)..c.body.end,
                ids,
                out,
                depth + 1,
            )?;
        } else if ids.contains(&c.id) {
            out.push(c.body);
        }
    }
    Ok(())
}

/// The video frames as the legacy index lists them, or `None` when the index does not agree with
/// the file (then the movi list is scanned instead).
fn frames_from_idx1(
    data: &[u8],
    ix: Range<usize>,
    movi: Range<usize>,
    ids: &[[u8; 4]; 2],
) -> Option<Vec<Range<usize>>> {
    let entries = data.get(ix)?;
    let mut out = Vec::new();
    // Offsets are relative to the 'movi' type field (usual) or absolute; decided on the first
    // video entry by checking which points at a matching chunk header.
    let mut base: Option<usize> = None;
    for e in entries.chunks_exact(16) {
        let id = cc_at(e, 0)?;
        if !ids.contains(&id) {
            continue;
        }
        let offset = u32_at(e, 8)? as usize;
        let size = u32_at(e, 12)? as usize;
        let b = match base {
            Some(b) => b,
            None => {
                let rel = movi.start + 8;
                let b = [rel, 0]
                    .into_iter()
                    .find(|b| cc_at(data, b + offset) == Some(id))?;
                base = Some(b);
                b
            }
        };
        let at = b.checked_add(offset)?;
        if cc_at(data, at) != Some(id) || u32_at(data, at + 4)? as usize != size {
            return None;
        }
        let start = at + 8;
        let end = start.checked_add(size)?;
        if end > data.len() {
            return None;
        }
        out.push(start..end);
    }
    Some(out)
}

/// Main header, and the first video stream's header and format.
fn parse_hdrl(r: &Reader, data: &[u8], range: Range<usize>) -> Result<(AviInfo, usize)> {
    let mut avih: Option<Range<usize>> = None;
    let mut streams: Vec<StreamHeader> = Vec::new();
    for c in chunks(r, data, range, "hdrl")? {
        match &c.id {
            b"avih" => avih = Some(c.body.clone()),
            b"LIST" if list_type(data, &c).as_ref() == Some(b"strl") => {
                let mut sh: Option<StreamHeader> = None;
                let mut format = None;
                for s in chunks(r, data, c.body.start + 4..c.body.end, "strl")? {
                    match &s.id {
                        b"strh" => {
                            let d = &data[s.body.clone()];
                            let short = || {
                                r.bad(format!(
                                    "stream {} header 'strh' is {} bytes, too short",
                                    streams.len(),
                                    d.len()
                                ))
                            };
                            sh = Some(StreamHeader {
                                kind: cc_at(d, 0).ok_or_else(short)?,
                                handler: cc_at(d, 4).ok_or_else(short)?,
                                scale: u32_at(d, 20).ok_or_else(short)?,
                                rate: u32_at(d, 24).ok_or_else(short)?,
                                format: None,
                            })
                        }
                        b"strf" => format = Some(s.body.clone()),
                        _ => {}
                    }
                }
                let mut sh = sh.ok_or_else(|| {
                    r.bad(format!("stream {} has no 'strh' header", streams.len()))
                })?;
                sh.format = format;
                streams.push(sh);
            }
            _ => {}
        }
    }
    let avih = avih.ok_or_else(|| r.bad("no main header 'avih'"))?;
    let a = &data[avih];
    let short = || {
        r.bad(format!(
            "main header 'avih' is {} bytes, expected 56",
            a.len()
        ))
    };
    let us_per_frame = u32_at(a, 0).ok_or_else(short)?;
    let declared_frames = u32_at(a, 16).ok_or_else(short)?;
    let avih_w = u32_at(a, 32).ok_or_else(short)?;
    let avih_h = u32_at(a, 36).ok_or_else(short)?;
    let (stream, sh) = streams
        .iter()
        .enumerate()
        .find(|(_, s)| &s.kind == b"vids")
        .ok_or_else(|| r.bad("no video stream ('strh' of type 'vids')"))?;
    let f = sh
        .format
        .clone()
        .ok_or_else(|| r.bad(format!("video stream {stream} has no format 'strf'")))?;
    let bih = &data[f];
    let fshort = || {
        r.bad(format!(
            "video format 'strf' is {} bytes, expected a 40-byte BITMAPINFOHEADER",
            bih.len()
        ))
    };
    let bi_size = u32_at(bih, 0).ok_or_else(fshort)? as usize;
    let bi_w = i32_at(bih, 4).ok_or_else(fshort)?;
    let bi_h = i32_at(bih, 8).ok_or_else(fshort)?;
    let bit_count = u16_at(bih, 14).ok_or_else(fshort)?;
    let compression = cc_at(bih, 16).ok_or_else(fshort)?;
    let clr_used = u32_at(bih, 32).ok_or_else(fshort)?;
    let (width, height, bottom_up) = if bi_w != 0 && bi_h != 0 {
        (bi_w.unsigned_abs(), bi_h.unsigned_abs(), bi_h > 0)
    } else {
        (avih_w, avih_h, true)
    };
    if bi_w < 0 || width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(r.bad(format!(
            "frame size {bi_w}x{bi_h} (main header {avih_w}x{avih_h}): expected 1 to {MAX_SIDE} pixels a side"
        )));
    }
    let mut palette = Vec::new();
    if bit_count == 8 && compression == [0; 4] {
        let entries = if clr_used == 0 {
            256
        } else {
            clr_used as usize
        };
        let start = bi_size.max(40);
        if entries > 256 {
            return Err(r.bad(format!(
                "palette of {entries} colours: at most 256 for 8-bit frames"
            )));
        }
        for i in 0..entries {
            match bih.get(start + 4 * i..start + 4 * i + 3) {
                Some(q) => palette.push([q[2], q[1], q[0]]),
                None => break,
            }
        }
    }
    let period_s = if sh.scale > 0 && sh.rate > 0 {
        sh.scale as f64 / sh.rate as f64
    } else {
        us_per_frame as f64 / 1e6
    };
    if !(period_s > 0.0 && period_s <= 3600.0) {
        return Err(r.bad(format!(
            "frame period is zero or absurd (strh dwScale {} / dwRate {}, avih {} µs per frame)",
            sh.scale, sh.rate, us_per_frame
        )));
    }
    Ok((
        AviInfo {
            width,
            height,
            bottom_up,
            declared_frames,
            frame_period: Duration::from_secs_f64(period_s),
            handler: sh.handler,
            compression,
            bit_count,
            palette,
        },
        stream,
    ))
}

/// The standard (JPEG Annex K.3) Huffman tables as one DHT segment, for MJPEG frames without one.
fn standard_dht() -> Vec<u8> {
    const DC_LUM_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHR_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUM_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_LUM_VALS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHR_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_CHR_VALS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUM_BITS, &DC_VALS),
        (0x10, &AC_LUM_BITS, &AC_LUM_VALS),
        (0x01, &DC_CHR_BITS, &DC_VALS),
        (0x11, &AC_CHR_BITS, &AC_CHR_VALS),
    ];
    let len: usize = 2 + tables
        .iter()
        .map(|(_, b, v)| 1 + b.len() + v.len())
        .sum::<usize>();
    let mut seg = vec![0xff, 0xc4, (len >> 8) as u8, len as u8];
    for (class_id, bits, vals) in tables {
        seg.push(class_id);
        seg.extend_from_slice(bits);
        seg.extend_from_slice(vals);
    }
    seg
}

/// `jpeg` with the standard Huffman tables inserted before its first SOS when it has no DHT
/// segment; unchanged otherwise (or when its markers cannot be walked: the decoder then reports).
pub fn with_default_huffman_tables(jpeg: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    if jpeg.len() < 4 || jpeg[0] != 0xff || jpeg[1] != 0xd8 {
        return Cow::Borrowed(jpeg);
    }
    let mut pos = 2;
    while pos + 4 <= jpeg.len() {
        if jpeg[pos] != 0xff {
            return Cow::Borrowed(jpeg);
        }
        let marker = jpeg[pos + 1];
        match marker {
            0xc4 => return Cow::Borrowed(jpeg), // has DHT
            0xda => {
                let mut out = Vec::with_capacity(jpeg.len() + 420);
                out.extend_from_slice(&jpeg[..pos]);
                out.extend_from_slice(&standard_dht());
                out.extend_from_slice(&jpeg[pos..]);
                return Cow::Owned(out);
            }
            0xff => pos += 1, // fill byte
            0x01 | 0xd0..=0xd7 => pos += 2,
            _ => {
                let len = ((jpeg[pos + 2] as usize) << 8) | jpeg[pos + 3] as usize;
                pos += 2 + len;
            }
        }
    }
    Cow::Borrowed(jpeg)
}

/// Decodes every frame of the AVI at `path` (see [`AviFile::decode_all`]).
pub fn load_frames(path: &Path, fps: Option<f64>) -> Result<Vec<Frame>> {
    AviFile::open(path)?.decode_all(fps)
}

/// The video stream of an AVI to write (tests, tools that make small clips).
#[derive(Debug, Clone)]
pub struct AviSpec {
    pub width: u32,
    pub height: u32,
    /// Frames per second as a rational `rate / scale`.
    pub rate: u32,
    pub scale: u32,
    /// `fccHandler` and `biCompression` (`[0; 4]` for BI_RGB).
    pub handler: [u8; 4],
    pub compression: [u8; 4],
    pub bit_count: u16,
    /// RGBQUADs after the BITMAPINFOHEADER (8-bit DIB palettes), as RGB.
    pub palette: Vec<[u8; 3]>,
    /// Write a legacy `idx1` index.
    pub index: bool,
}

impl AviSpec {
    /// Motion JPEG at `fps` frames per second.
    pub fn mjpeg(width: u32, height: u32, fps: u32) -> Self {
        Self {
            width,
            height,
            rate: fps,
            scale: 1,
            handler: *b"MJPG",
            compression: *b"MJPG",
            bit_count: 24,
            palette: Vec::new(),
            index: true,
        }
    }
}

fn put_chunk(out: &mut Vec<u8>, id: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(id);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
}

fn put_list(out: &mut Vec<u8>, id: &[u8; 4], kind: &[u8; 4], body: &[u8]) {
    let mut b = Vec::with_capacity(body.len() + 4);
    b.extend_from_slice(kind);
    b.extend_from_slice(body);
    put_chunk(out, id, &b);
}

/// A single-stream AVI holding `frames` (already coded payloads, one '00dc' chunk each).
pub fn write_avi(spec: &AviSpec, frames: &[Vec<u8>]) -> Vec<u8> {
    let le = |v: u32| v.to_le_bytes();
    let us = (1e6 * spec.scale as f64 / spec.rate.max(1) as f64) as u32;
    let mut avih = Vec::new();
    for v in [
        us,
        0,
        0,
        0x10,
        frames.len() as u32,
        0,
        1,
        0,
        spec.width,
        spec.height,
        0,
        0,
        0,
        0,
    ] {
        avih.extend_from_slice(&le(v));
    }
    let mut strh = Vec::new();
    strh.extend_from_slice(b"vids");
    strh.extend_from_slice(&spec.handler);
    for v in [
        0u32,
        0,
        0,
        spec.scale,
        spec.rate,
        0,
        frames.len() as u32,
        0,
        u32::MAX,
        0,
    ] {
        strh.extend_from_slice(&le(v));
    }
    strh.extend_from_slice(&[0u8; 8]); // rcFrame
    let mut strf = Vec::new();
    strf.extend_from_slice(&le(40));
    strf.extend_from_slice(&le(spec.width));
    strf.extend_from_slice(&le(spec.height));
    strf.extend_from_slice(&1u16.to_le_bytes());
    strf.extend_from_slice(&spec.bit_count.to_le_bytes());
    strf.extend_from_slice(&spec.compression);
    for v in [0u32, 0, 0, spec.palette.len() as u32, 0] {
        strf.extend_from_slice(&le(v));
    }
    for c in &spec.palette {
        strf.extend_from_slice(&[c[2], c[1], c[0], 0]);
    }
    let mut strl = Vec::new();
    put_chunk(&mut strl, b"strh", &strh);
    put_chunk(&mut strl, b"strf", &strf);
    let mut hdrl = Vec::new();
    put_chunk(&mut hdrl, b"avih", &avih);
    put_list(&mut hdrl, b"LIST", b"strl", &strl);
    let mut movi = Vec::new();
    let mut idx = Vec::new();
    for f in frames {
        // Offset from the 'movi' type field.
        let off = movi.len() as u32 + 4;
        put_chunk(&mut movi, b"00dc", f);
        idx.extend_from_slice(b"00dc");
        idx.extend_from_slice(&le(0x10));
        idx.extend_from_slice(&le(off));
        idx.extend_from_slice(&le(f.len() as u32));
    }
    let mut body = Vec::new();
    put_list(&mut body, b"LIST", b"hdrl", &hdrl);
    put_list(&mut body, b"LIST", b"movi", &movi);
    if spec.index {
        put_chunk(&mut body, b"idx1", &idx);
    }
    let mut out = Vec::new();
    put_list(&mut out, b"RIFF", b"AVI ", &body);
    out
}

/// One RGB (or grey, `channels == 1`) picture as a baseline JPEG, for MJPEG AVIs.
pub fn encode_jpeg(
    width: u32,
    height: u32,
    channels: u8,
    pixels: &[u8],
    quality: u8,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let colour = if channels == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode(pixels, width, height, colour)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32, k: u32) -> Vec<u8> {
        (0..w * h)
            .map(|i| ((i % w) * 4 + (i / w) * 2 + k * 10) as u8)
            .collect()
    }

    fn mjpeg_avi(w: u32, h: u32, n: u32, grey: bool, index: bool) -> Vec<u8> {
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|k| {
                let g = gradient(w, h, k);
                if grey {
                    encode_jpeg(w, h, 1, &g, 95).unwrap()
                } else {
                    let rgb: Vec<u8> = g.iter().flat_map(|&v| [v, 255 - v, v / 2]).collect();
                    encode_jpeg(w, h, 3, &rgb, 95).unwrap()
                }
            })
            .collect();
        write_avi(
            &AviSpec {
                index,
                ..AviSpec::mjpeg(w, h, 50)
            },
            &frames,
        )
    }

    fn parse(bytes: Vec<u8>) -> Result<AviFile> {
        AviFile::parse(Path::new("clip.avi"), bytes)
    }

    #[test]
    fn mjpeg_grey_round_trip_with_and_without_index() {
        for index in [true, false] {
            let avi = parse(mjpeg_avi(32, 24, 5, true, index)).unwrap();
            assert_eq!(avi.frame_count(), 5);
            assert_eq!(avi.codec().unwrap(), Codec::Mjpeg);
            let frames = avi.decode_all(None).unwrap();
            assert_eq!(frames.len(), 5);
            for (k, f) in frames.iter().enumerate() {
                assert_eq!((f.image.width, f.image.height), (32, 24));
                assert_eq!(f.image.format, PixelFormat::Gray8);
                assert_eq!(f.media_time, Duration::from_millis(20) * k as u32);
                let want = gradient(32, 24, k as u32);
                let err: f64 = f
                    .image
                    .data
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - *b as f64).abs())
                    .sum::<f64>()
                    / want.len() as f64;
                assert!(err < 3.0, "frame {k}: mean error {err}");
            }
        }
    }

    #[test]
    fn mjpeg_colour_decodes_rgb_and_fps_override() {
        let avi = parse(mjpeg_avi(16, 16, 3, false, true)).unwrap();
        let frames = avi.decode_all(Some(10.0)).unwrap();
        assert_eq!(frames[0].image.format, PixelFormat::Rgb8);
        assert_eq!(frames[2].media_time, Duration::from_millis(200));
    }

    #[test]
    fn missing_huffman_tables_are_inserted() {
        let g = gradient(16, 16, 0);
        let jpeg = encode_jpeg(16, 16, 1, &g, 90).unwrap();
        let reference = image::load_from_memory(&jpeg)
            .unwrap()
            .to_luma8()
            .into_raw();
        // Strip every DHT segment.
        let mut stripped = jpeg[..2].to_vec();
        let mut pos = 2;
        while jpeg[pos + 1] != 0xda {
            let len = ((jpeg[pos + 2] as usize) << 8) | jpeg[pos + 3] as usize;
            if jpeg[pos + 1] != 0xc4 {
                stripped.extend_from_slice(&jpeg[pos..pos + 2 + len]);
            }
            pos += 2 + len;
        }
        stripped.extend_from_slice(&jpeg[pos..]);
        assert!(stripped.len() < jpeg.len());
        let fixed = with_default_huffman_tables(&stripped);
        let decoded = image::load_from_memory(&fixed)
            .unwrap()
            .to_luma8()
            .into_raw();
        assert_eq!(decoded, reference);
        let avi = write_avi(&AviSpec::mjpeg(16, 16, 25), &[stripped]);
        let frames = parse(avi).unwrap().decode_all(None).unwrap();
        assert_eq!(frames[0].image.data, reference);
    }

    fn dib_avi(bits: u16, w: u32, h: u32, palette: Vec<[u8; 3]>, frames: &[Vec<u8>]) -> Vec<u8> {
        let spec = AviSpec {
            handler: *b"DIB ",
            compression: [0; 4],
            bit_count: bits,
            palette,
            ..AviSpec::mjpeg(w, h, 30)
        };
        write_avi(&spec, frames)
    }

    #[test]
    fn dib_24_bit_bottom_up_padded() {
        let (w, h) = (3u32, 2u32); // 9 bytes a row, padded to 12
                                   // Top row red, green, blue; bottom row grey levels. Stored bottom-up, BGR.
        let top = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
        let bottom = [[10, 10, 10], [20, 20, 20], [30, 30, 30]];
        let mut raw = Vec::new();
        for row in [bottom, top] {
            for p in row {
                raw.extend_from_slice(&[p[2], p[1], p[0]]);
            }
            raw.extend_from_slice(&[0, 0, 0]);
        }
        let avi = parse(dib_avi(24, w, h, vec![], &[raw])).unwrap();
        let f = avi.decode_all(None).unwrap();
        assert_eq!(f[0].image.format, PixelFormat::Rgb8);
        let want: Vec<u8> = top.iter().chain(bottom.iter()).flatten().copied().collect();
        assert_eq!(f[0].image.data, want);
        assert_eq!(f[0].media_time, Duration::ZERO);
    }

    #[test]
    fn dib_8_bit_grey_palette_becomes_gray8() {
        let palette: Vec<[u8; 3]> = (0..=255u8).map(|i| [i, i, i]).collect();
        let (w, h) = (5u32, 2u32); // 5 bytes a row, padded to 8
        let raw = vec![1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 9, 10, 0, 0, 0];
        let avi = parse(dib_avi(8, w, h, palette, &[raw.clone(), raw])).unwrap();
        let f = avi.decode_all(None).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].image.format, PixelFormat::Gray8);
        assert_eq!(f[0].image.data, vec![6, 7, 8, 9, 10, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn y800_grey() {
        let spec = AviSpec {
            handler: *b"Y800",
            compression: *b"Y800",
            bit_count: 8,
            ..AviSpec::mjpeg(4, 2, 25)
        };
        let avi = write_avi(&spec, &[(0..8).collect()]);
        let f = parse(avi).unwrap().decode_all(None).unwrap();
        assert_eq!(f[0].image.data, (0..8).collect::<Vec<u8>>());
    }

    #[test]
    fn mpeg4_is_refused_by_fourcc_with_hint() {
        let spec = AviSpec {
            handler: *b"FMP4",
            compression: *b"FMP4",
            ..AviSpec::mjpeg(8, 8, 50)
        };
        let avi = parse(write_avi(&spec, &[vec![0, 0, 1, 0xb0]])).unwrap();
        let e = avi.decode_all(None).unwrap_err().to_string();
        assert!(
            e.contains("clip.avi") && e.contains("FMP4") && e.contains("MPEG-4 Part 2"),
            "{e}"
        );
        assert!(
            e.contains("MJPG") && e.contains("ffmpeg -i in.avi -c:v mjpeg"),
            "{e}"
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        // Zero frame period.
        let spec = AviSpec {
            rate: 0,
            scale: 0,
            ..AviSpec::mjpeg(8, 8, 1)
        };
        let e = parse(write_avi(&spec, &[vec![1]])).unwrap_err().to_string();
        assert!(e.contains("clip.avi") && e.contains("frame period"), "{e}");
        // Absurd size.
        let e = parse(write_avi(&AviSpec::mjpeg(100_000, 8, 25), &[vec![1]]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame size"), "{e}");
        // Not an AVI.
        let e = parse(b"RIFF\x04\0\0\0WAVE".to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an AVI"), "{e}");
        // A chunk larger than the file.
        let mut bytes = mjpeg_avi(8, 8, 2, true, true);
        let n = bytes.len();
        bytes.truncate(n - 30);
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("clip.avi") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn opendml_avix_extension_is_read() {
        let jpegs: Vec<Vec<u8>> = (0..2)
            .map(|k| encode_jpeg(8, 8, 1, &gradient(8, 8, k), 90).unwrap())
            .collect();
        let mut bytes = write_avi(
            &AviSpec {
                index: false,
                ..AviSpec::mjpeg(8, 8, 25)
            },
            &jpegs[..1],
        );
        let mut movi = Vec::new();
        put_chunk(&mut movi, b"00dc", &jpegs[1]);
        put_chunk(&mut movi, b"ix00", &[0; 24]);
        let mut ext_body = Vec::new();
        put_list(&mut ext_body, b"LIST", b"movi", &movi);
        put_list(&mut bytes, b"RIFF", b"AVIX", &ext_body);
        let avi = parse(bytes).unwrap();
        assert_eq!(avi.frame_count(), 2);
        assert_eq!(avi.decode_all(None).unwrap().len(), 2);
    }

    #[test]
    fn empty_chunk_repeats_previous_frame_and_avih_period_is_the_fallback() {
        let jpeg = encode_jpeg(8, 8, 1, &gradient(8, 8, 1), 90).unwrap();
        let mut bytes = write_avi(&AviSpec::mjpeg(8, 8, 25), &[jpeg, Vec::new()]);
        // Zero the stream header's dwScale/dwRate: the main header's 40000 µs remains.
        let strh = bytes.windows(4).position(|w| w == b"strh").unwrap() + 8;
        bytes[strh + 20..strh + 28].fill(0);
        let frames = parse(bytes).unwrap().decode_all(None).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].image, frames[0].image);
        assert_eq!(frames[1].media_time, Duration::from_millis(40));
        let e = parse(write_avi(&AviSpec::mjpeg(8, 8, 25), &[Vec::new()])).unwrap_err();
        assert!(e.to_string().contains("first video frame is empty"), "{e}");
    }

    #[test]
    fn truncation_and_byte_flips_never_panic() {
        let good = mjpeg_avi(8, 8, 3, true, true);
        for cut in 0..good.len() {
            if let Ok(avi) = parse(good[..cut].to_vec()) {
                let _ = avi.decode_all(None);
            }
        }
        let dib = dib_avi(24, 3, 2, vec![], &[vec![7; 24]]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for base in [&good, &dib] {
            for _ in 0..3000 {
                let mut m = base.clone();
                for _ in 0..3 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let i = (seed as usize) % m.len();
                    m[i] = (seed >> 32) as u8;
                }
                if let Ok(avi) = parse(m) {
                    let _ = avi.decode_all(None);
                }
            }
        }
    }
}
