//! Replay of a folder of PNG/JPEG frames at a stated frame rate (files in name order), for demos
//! and for feeding frames exported from other systems. A file that cannot be decoded is reported
//! as a bad frame (counted and skipped by the pipeline), never a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{FrameSource, Pacing, ReplayClock, SourceError, SourceInfo};
use crate::frame::{Frame, Image, PixelFormat, SourceGeometry};

pub struct ImagesSource {
    folder: PathBuf,
    files: Vec<PathBuf>,
    fps: f64,
    pacing: Pacing,
    loop_playback: bool,
    clock: ReplayClock,
    next: usize,
    seq: u64,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

impl ImagesSource {
    pub fn new(folder: &Path, fps: f64, pacing: Pacing, loop_playback: bool) -> Self {
        Self {
            folder: folder.to_path_buf(),
            files: Vec::new(),
            fps,
            pacing,
            loop_playback,
            clock: ReplayClock::new(pacing),
            next: 0,
            seq: 0,
        }
    }

    fn fatal(&self, reason: String) -> SourceError {
        SourceError::Fatal {
            source_name: self.folder.display().to_string(),
            reason,
        }
    }
}

/// Largest image file read as one frame.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;

/// Decodes one image file into a frame image (grey stays grey, anything else becomes RGB).
pub fn decode_image_file(path: &Path) -> Result<Image, String> {
    // A FIFO or device in the folder would block or never end; a huge file is refused by size.
    let bytes = crate::safe_file::read_capped(path, MAX_IMAGE_FILE_BYTES, "an image frame")
        .map_err(|e| e.to_string())?;
    let img = image::load_from_memory(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let decoded = if img.color().has_color() {
        Image::new(w, h, PixelFormat::Rgb8, img.to_rgb8().into_raw())
    } else {
        Image::new(w, h, PixelFormat::Gray8, img.to_luma8().into_raw())
    };
    decoded.ok_or_else(|| format!("{}: empty image", path.display()))
}

impl FrameSource for ImagesSource {
    fn pacing(&self) -> Pacing {
        self.clock.pacing()
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "images",
            name: self.folder.display().to_string(),
            format: format!("{} PNG/JPEG files", self.files.len()),
            nominal_fps: Some(self.fps),
            frame_count: Some(self.files.len() as u64),
        }
    }

    fn start(&mut self) -> Result<(), SourceError> {
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(self.fatal(format!("fps is {}, expected a positive number", self.fps)));
        }
        let entries = std::fs::read_dir(&self.folder)
            .map_err(|e| self.fatal(format!("cannot list the folder: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(self.fatal("no .png, .jpg or .jpeg files in the folder".into()));
        }
        self.files = files;
        self.clock = ReplayClock::new(self.pacing);
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.next >= self.files.len() {
            if !self.loop_playback || self.files.is_empty() {
                return Ok(None);
            }
            self.next = 0;
        }
        let path = self.files[self.next].clone();
        self.next += 1;
        let seq = self.seq;
        self.seq += 1;
        let media_time = Duration::try_from_secs_f64(seq as f64 / self.fps).map_err(|_| {
            self.fatal(format!(
                "frame {seq} at {} fps has no representable time",
                self.fps
            ))
        })?;
        self.clock.wait_until(media_time);
        let image = decode_image_file(&path).map_err(|reason| SourceError::BadFrame {
            source_name: self.folder.display().to_string(),
            seq,
            reason,
        })?;
        Ok(Some(Frame {
            seq,
            media_time,
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

    #[test]
    fn plays_files_in_order_at_the_stated_rate_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        for (i, v) in [10u8, 20, 30].iter().enumerate() {
            image::GrayImage::from_pixel(8, 6, image::Luma([*v]))
                .save(dir.path().join(format!("f{i}.png")))
                .unwrap();
        }
        std::fs::write(dir.path().join("f3.jpg"), b"not a jpeg").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let mut s = ImagesSource::new(dir.path(), 25.0, Pacing::AsFastAsPossible, false);
        s.start().unwrap();
        assert_eq!(s.info().frame_count, Some(4));
        let mut values = Vec::new();
        for _ in 0..3 {
            let f = s.next_frame().unwrap().unwrap();
            assert_eq!(f.image.format, PixelFormat::Gray8);
            values.push((f.image.data[0], f.media_time));
        }
        assert_eq!(values[2], (30, Duration::from_millis(80)));
        let err = s.next_frame().unwrap_err().to_string();
        assert!(err.contains("f3.jpg"), "{err}");
        assert!(s.next_frame().unwrap().is_none());
    }

    #[test]
    fn empty_or_missing_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ImagesSource::new(dir.path(), 30.0, Pacing::AsFastAsPossible, true);
        assert!(s.start().unwrap_err().to_string().contains("no .png"));
        let mut s = ImagesSource::new(
            Path::new("/nonexistent/frames"),
            30.0,
            Pacing::AsFastAsPossible,
            true,
        );
        assert!(s
            .start()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/frames"));
    }
}
