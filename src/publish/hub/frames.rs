//! The live frame for the display: checked, rate-limited, masked to the sector by policy,
//! box-downscaled and JPEG-encoded on the caller's thread outside the hub's lock.

use super::*;

/// Why a frame was not published.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame buffer holds {len} bytes, not {width}x{height}x{channels}")]
    Buffer {
        width: usize,
        height: usize,
        channels: usize,
        len: usize,
    },
    #[error("sector outline point {index} is not finite")]
    Outline { index: usize },
    #[error("frame could not be encoded: {0}")]
    Encode(#[from] image::ImageError),
    #[error("frame metadata could not be serialised: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// The latest frame as the page fetches it.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub seq: u64,
    pub content_type: &'static str,
    pub bytes: Arc<[u8]>,
    /// JSON: seq, source and encoded sizes, and the outline in source pixel coordinates.
    pub meta: Arc<str>,
}
impl DisplayHub {
    /// Offers the live frame. Returns `Ok(false)` without any work when the last frame was
    /// encoded less than `frame_interval` ago. `sector_outline` is a polygon in the image's
    /// pixel coordinates (x right, y down).
    pub fn publish_frame(
        &self,
        image: &Image,
        sector_outline: Option<Vec<(f32, f32)>>,
    ) -> Result<bool, FrameError> {
        // `Image`'s fields are public, so its invariant is checked again here: a bad buffer must
        // be an error, never an out-of-bounds panic on the publisher's thread.
        let channels = image.format.channels();
        if image.width == 0
            || image.height == 0
            || image.data.len() != image.width * image.height * channels
        {
            self.counters.frames_failed.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::Buffer {
                width: image.width,
                height: image.height,
                channels,
                len: image.data.len(),
            });
        }
        if let Some(index) = sector_outline
            .as_deref()
            .and_then(|o| o.iter().position(|(x, y)| !x.is_finite() || !y.is_finite()))
        {
            self.counters.frames_failed.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::Outline { index });
        }
        {
            let mut gate = lock(&self.frame_gate);
            let now = Instant::now();
            if gate.is_some_and(|last| now.duration_since(last) < self.config.frame_interval) {
                self.counters.frames_skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            *gate = Some(now);
        }
        let masked;
        let image = match (self.config.frame_policy, sector_outline.as_deref()) {
            (FramePolicy::Unmasked, _) => image,
            // Burned-in text lies outside the sector: with no sector known, or frames off,
            // nothing is served.
            (FramePolicy::Off, _) | (FramePolicy::Sector, None) => {
                self.counters
                    .frames_withheld
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            (FramePolicy::Sector, Some(outline)) => {
                masked = mask_outside(image, outline);
                &masked
            }
        };
        let encoded = encode_frame(
            image,
            self.config.frame_max_side,
            self.config.frame_jpeg_quality,
        );
        let (width, height, bytes) = match encoded {
            Ok(v) => v,
            Err(e) => {
                self.counters.frames_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let seq = self.frame_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let meta = FrameMeta {
            seq,
            content_type: "image/jpeg",
            source_width: image.width,
            source_height: image.height,
            width,
            height,
            outline: sector_outline.map(|o| o.into_iter().map(|(x, y)| [x, y]).collect()),
        };
        let meta: Arc<str> = serde_json::to_string(&meta)?.into();
        let frame = EncodedFrame {
            seq,
            content_type: "image/jpeg",
            bytes: bytes.into(),
            meta: meta.clone(),
        };
        let mut state = lock(&self.state);
        state.frame = Some(frame);
        self.fan_out(
            &mut state,
            HubEvent {
                name: "frame",
                data: meta,
            },
        );
        drop(state);
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

#[derive(Serialize)]
struct FrameMeta {
    seq: u64,
    content_type: &'static str,
    source_width: usize,
    source_height: usize,
    width: usize,
    height: usize,
    outline: Option<Vec<[f32; 2]>>,
}

/// Box-downscales by the smallest integer factor that brings the longest side to `max_side` or
/// less (an average, so speckle does not alias), then encodes JPEG. Integer factors keep this a
/// single pass over the pixels, cheap enough for the publisher's thread at 5 fps.
pub(super) fn encode_frame(
    image: &Image,
    max_side: usize,
    quality: u8,
) -> Result<(usize, usize, Vec<u8>), image::ImageError> {
    let channels = image.format.channels();
    let longest = image.width.max(image.height);
    let factor = longest.div_ceil(max_side.max(1)).max(1);
    let (width, height) = (
        (image.width / factor).max(1),
        (image.height / factor).max(1),
    );
    let pixels = if factor == 1 {
        std::borrow::Cow::Borrowed(&image.data)
    } else {
        let mut out = vec![0u8; width * height * channels];
        let row_len = image.width * channels;
        for oy in 0..height {
            for ox in 0..width {
                for c in 0..channels {
                    let mut sum = 0u32;
                    let mut n = 0u32;
                    for y in oy * factor..((oy + 1) * factor).min(image.height) {
                        let row = &image.data[y * row_len..(y + 1) * row_len];
                        for x in ox * factor..((ox + 1) * factor).min(image.width) {
                            sum += u32::from(row[x * channels + c]);
                            n += 1;
                        }
                    }
                    out[(oy * width + ox) * channels + c] = (sum / n.max(1)) as u8;
                }
            }
        }
        std::borrow::Cow::Owned(out)
    };
    let color = match image.format {
        PixelFormat::Gray8 => image::ExtendedColorType::L8,
        PixelFormat::Rgb8 => image::ExtendedColorType::Rgb8,
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100)).encode(
        &pixels,
        width as u32,
        height as u32,
        color,
    )?;
    Ok((width, height, bytes))
}
