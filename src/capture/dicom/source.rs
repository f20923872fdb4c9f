//! The DICOM replay frame source: plays clips from files and folders in order, optionally
//! looping, on one continuous media timeline, skipping (and counting) files that cannot be opened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{DicomClip, DicomError};
use crate::capture::{FrameSource, Pacing, ReplayClock, SourceError, SourceInfo};
use crate::frame::Frame;

/// Replays DICOM files as a frame source: one file, a list, or folders of `.dcm` files (sorted by
/// name), optionally looping. Media times run on across files and loops: each clip starts where
/// the previous one ended ([`DicomClip::duration`]).
pub struct DicomSource {
    name: String,
    files: Vec<PathBuf>,
    /// Files that failed to open, skipped from then on.
    bad: Vec<bool>,
    skipped: u64,
    loop_playback: bool,
    clock: ReplayClock,
    /// The clip being replayed and its index in `files`.
    current: Option<(usize, DicomClip)>,
    /// What `info` reports about the latest clip opened, kept after the replay ends.
    latest: Option<ClipSummary>,
    /// Next file to open.
    cursor: usize,
    frame_index: usize,
    time_offset: Duration,
    seq: u64,
    started: bool,
}

impl DicomSource {
    /// A source over one file, or over the `.dcm` files of a folder.
    pub fn new(
        path: impl AsRef<Path>,
        pacing: Pacing,
        loop_playback: bool,
    ) -> Result<Self, DicomError> {
        Self::from_paths([path.as_ref()], pacing, loop_playback)
    }

    /// A source over several paths, each a file or a folder (expanded to its `.dcm` files, sorted
    /// by name), replayed in the order given.
    pub fn from_paths<P: AsRef<Path>>(
        paths: impl IntoIterator<Item = P>,
        pacing: Pacing,
        loop_playback: bool,
    ) -> Result<Self, DicomError> {
        let mut files = Vec::new();
        let mut given = Vec::new();
        for path in paths {
            let path = path.as_ref();
            given.push(path.to_path_buf());
            if path.is_dir() {
                files.extend(dicom_files_in(path)?);
            } else {
                files.push(path.to_path_buf());
            }
        }
        let name = match given.as_slice() {
            [] => {
                return Err(DicomError::NoFiles {
                    path: PathBuf::new(),
                })
            }
            [one] => one.display().to_string(),
            [first, rest @ ..] => format!("{} and {} more", first.display(), rest.len()),
        };
        if files.is_empty() {
            return Err(DicomError::NoFiles {
                path: given.swap_remove(0),
            });
        }
        Ok(Self {
            name,
            bad: vec![false; files.len()],
            files,
            skipped: 0,
            loop_playback,
            clock: ReplayClock::new(pacing),
            current: None,
            latest: None,
            cursor: 0,
            frame_index: 0,
            time_offset: Duration::ZERO,
            seq: 0,
            started: false,
        })
    }

    /// The files replayed, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Files skipped because they could not be opened (each counted once).
    pub fn skipped_files(&self) -> u64 {
        self.skipped
    }

    /// The clip being replayed.
    pub fn current_clip(&self) -> Option<&DicomClip> {
        self.current.as_ref().map(|(_, clip)| clip)
    }

    fn fatal(&self, reason: String) -> SourceError {
        SourceError::Fatal {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// Moves to the next playable file; `Ok(false)` at the end of a non-looping list.
    fn open_next_clip(&mut self) -> Result<bool, SourceError> {
        let n = self.files.len();
        loop {
            if self.cursor >= n {
                if !self.loop_playback {
                    return Ok(false);
                }
                if self.bad.iter().all(|&bad| bad) {
                    return Err(self.fatal(format!("none of the {n} files could be opened")));
                }
                self.cursor = 0;
            }
            let index = self.cursor;
            self.cursor += 1;
            if self.bad[index] {
                continue;
            }
            // Looping over a single playable file: replay the clip already in memory.
            if matches!(&self.current, Some((i, _)) if *i == index) {
                self.frame_index = 0;
                return Ok(true);
            }
            // Drop the finished clip first: only one file's data is held at a time.
            self.current = None;
            match DicomClip::open(&self.files[index]) {
                Ok(clip) => {
                    tracing::info!(file = %self.files[index].display(), format = %clip.format_description(), frames = clip.frame_count(), "replaying DICOM clip");
                    self.latest = Some(ClipSummary {
                        format: clip.format_description(),
                        nominal_fps: clip.nominal_fps(),
                        frames: clip.frame_count(),
                    });
                    self.current = Some((index, clip));
                    self.frame_index = 0;
                    return Ok(true);
                }
                // The error names the file already, which is this source's name: say it once.
                Err(e) if n == 1 => {
                    return Err(SourceError::Fatal {
                        source_name: "DICOM replay".into(),
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping DICOM file");
                    self.bad[index] = true;
                    self.skipped += 1;
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ClipSummary {
    format: String,
    nominal_fps: Option<f64>,
    frames: usize,
}

/// The `.dcm` files of a folder (extension in any case), sorted by name.
fn dicom_files_in(folder: &Path) -> Result<Vec<PathBuf>, DicomError> {
    let list_error = |source| DicomError::ListFolder {
        path: folder.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        let is_dcm = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("dcm"));
        if is_dcm && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DicomError::NoFiles {
            path: folder.to_path_buf(),
        });
    }
    Ok(files)
}

impl FrameSource for DicomSource {
    fn pacing(&self) -> Pacing {
        self.clock.pacing()
    }

    fn info(&self) -> SourceInfo {
        let latest = self.latest.as_ref();
        SourceInfo {
            kind: "dicom",
            name: self.name.clone(),
            format: latest.map_or_else(|| "not opened yet".to_string(), |c| c.format.clone()),
            nominal_fps: latest.and_then(|c| c.nominal_fps),
            // Known only for one file played once; a list's files are opened as they come.
            frame_count: latest
                .filter(|_| self.files.len() == 1 && !self.loop_playback)
                .map(|c| c.frames as u64),
        }
    }

    fn start(&mut self) -> Result<(), SourceError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        if self.open_next_clip()? {
            Ok(())
        } else {
            Err(self.fatal(format!(
                "none of the {} files could be opened",
                self.files.len()
            )))
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if !self.started {
            self.start()?;
        }
        loop {
            let Some((_, clip)) = &self.current else {
                return Ok(None);
            };
            if self.frame_index < clip.frame_count() {
                let index = self.frame_index;
                self.frame_index += 1;
                let seq = self.seq;
                self.seq += 1;
                let clip_time = clip.frame_times().get(index).copied().unwrap_or_default();
                let media_time = self.time_offset.saturating_add(clip_time);
                return match clip.frame(index) {
                    Ok(image) => {
                        let geometry = clip.geometry();
                        self.clock.wait_until(media_time);
                        Ok(Some(Frame {
                            seq,
                            media_time,
                            captured_at: Instant::now(),
                            captured_wall: SystemTime::now(),
                            image,
                            geometry,
                        }))
                    }
                    Err(e) => Err(SourceError::BadFrame {
                        source_name: self.name.clone(),
                        seq,
                        reason: e.to_string(),
                    }),
                };
            }
            self.time_offset = self.time_offset.saturating_add(clip.duration());
            if !self.open_next_clip()? {
                self.current = None;
                return Ok(None);
            }
        }
    }
}
