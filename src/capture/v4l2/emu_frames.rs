//! The frame file served by the emulated V4L2 device (tools/v4l2-emu/v4l2_emu.c), so tests and
//! demos can run the live capture path without hardware. Layout, little-endian:
//! `"V4L2EMU1"`, u32 width, height, channels (1 grey or 3 RGB), frame count; then every frame's
//! pixels (row-major, tight); then for each frame a u32 length and that many bytes of JPEG (the
//! MJPG stream; length 0 when left out). The emulator converts the pixels to whatever raw format
//! it was asked to serve.

use std::io::Write;
use std::path::Path;

use crate::dataset::avi::encode_jpeg;
use crate::frame::{Image, PixelFormat};
use crate::phantom::{Phantom, PhantomError, PhantomParams};

/// Why a frame file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmuFramesError {
    #[error("emulator frame file: {0}")]
    Invalid(String),
    #[error("writing the emulator frame file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Phantom(#[from] PhantomError),
}

/// JPEG quality of the MJPG stream: what UVC devices typically send.
const JPEG_QUALITY: u8 = 85;

/// Writes `frames` (all the same size and format, Gray8 or Rgb8) as a frame file, with a JPEG of
/// each when `with_jpeg` is set.
pub fn write_emu_frames(
    path: &Path,
    frames: &[Image],
    with_jpeg: bool,
) -> Result<(), EmuFramesError> {
    let first = frames
        .first()
        .ok_or_else(|| EmuFramesError::Invalid("no frames to write".into()))?;
    let channels: u32 = match first.format {
        PixelFormat::Gray8 => 1,
        PixelFormat::Rgb8 => 3,
    };
    let mut out = Vec::new();
    out.extend_from_slice(b"V4L2EMU1");
    for v in [
        first.width as u32,
        first.height as u32,
        channels,
        frames.len() as u32,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        if (f.width, f.height, f.format) != (first.width, first.height, first.format) {
            return Err(EmuFramesError::Invalid(format!(
                "frame {i} is {}x{} {:?}, the first is {}x{} {:?}",
                f.width, f.height, f.format, first.width, first.height, first.format
            )));
        }
        out.extend_from_slice(&f.data);
    }
    for f in frames {
        let jpeg = if with_jpeg {
            encode_jpeg(
                f.width as u32,
                f.height as u32,
                channels as u8,
                &f.data,
                JPEG_QUALITY,
            )
            .map_err(EmuFramesError::Invalid)?
        } else {
            Vec::new()
        };
        out.extend_from_slice(&(jpeg.len() as u32).to_le_bytes());
        out.extend_from_slice(&jpeg);
    }
    let io = |source| EmuFramesError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(&out).map_err(io)?;
    Ok(())
}

/// `count` consecutive phantom frames of `params` (frame k at its frame time).
pub fn phantom_frames(params: PhantomParams, count: usize) -> Result<Vec<Image>, EmuFramesError> {
    let phantom = Phantom::new(params)?;
    Ok((0..count as u64)
        .map(|k| phantom.render(phantom.frame_time(k)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_header_pixels_then_jpegs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let frames = vec![
            Image::new(4, 2, PixelFormat::Gray8, vec![7; 8]).unwrap(),
            Image::new(4, 2, PixelFormat::Gray8, vec![9; 8]).unwrap(),
        ];
        write_emu_frames(&path, &frames, true).unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(&b[..8], b"V4L2EMU1");
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        assert_eq!(
            (u32_at(8), u32_at(12), u32_at(16), u32_at(20)),
            (4, 2, 1, 2)
        );
        assert_eq!(&b[24..32], &[7; 8]);
        assert_eq!(&b[32..40], &[9; 8]);
        let jpeg_len = u32_at(40) as usize;
        assert_eq!(&b[44..46], &[0xFF, 0xD8], "a JPEG follows its length");
        let second = 44 + jpeg_len;
        assert_eq!(b.len(), second + 4 + u32_at(second) as usize);
    }

    #[test]
    fn mixed_sizes_and_empty_lists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        assert!(write_emu_frames(&path, &[], false).is_err());
        let frames = vec![
            Image::new(4, 2, PixelFormat::Gray8, vec![7; 8]).unwrap(),
            Image::new(2, 2, PixelFormat::Gray8, vec![9; 4]).unwrap(),
        ];
        let e = write_emu_frames(&path, &frames, false).unwrap_err();
        assert!(e.to_string().contains("frame 1 is 2x2"), "{e}");
    }
}
