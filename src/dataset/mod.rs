//! Labelled clips for training and evaluation: one [`ClipRecord`] per echo clip, with its patient
//! (splits are by patient, never by frame), its clip-level labels in task units, optional
//! per-frame labels (the LV volume of a traced or synthetic frame), and where its frames come
//! from. Three layouts are read: the public EchoNet-Dynamic release (`echonet_dynamic`), a CSV
//! manifest of DICOM files or image folders (`manifest`), and the phantom (`phantom`: a folder
//! written by `echonet phantom`, or clips rendered in memory from a seed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::frame::{Frame, SourceGeometry};
use crate::phantom::{Phantom, PhantomParams};

pub mod avi;
pub mod echonet_dynamic;
pub mod manifest;
pub mod phantom;

/// Name of the per-frame label (and head) that holds the left-ventricular volume in mL.
pub const LV_VOLUME: &str = "lv_volume";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be read at all.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what the layout expects: `what` names the row,
    /// column or field and what was expected.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    /// A clip's frames cannot be decoded (codec not supported, damaged file).
    #[error("{path}: {what}")]
    Decode { path: PathBuf, what: String },
    /// The folder matches none of the known layouts.
    #[error("{path}: not a dataset folder: expected FileList.csv (EchoNet-Dynamic), manifest.csv (clip manifest) or labels.csv (echonet phantom)")]
    UnknownLayout { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, DatasetError>;

/// A split a dataset declares (EchoNet-Dynamic's `Split` column, the manifest's `split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Self::Train),
            "val" | "validation" => Ok(Self::Val),
            "test" => Ok(Self::Test),
            other => Err(format!("split {other:?}: expected train, val or test")),
        }
    }
}

/// Where a clip's frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ClipSource {
    /// Rendered on demand: frame k is `render(k / params.fps)`.
    Phantom { params: PhantomParams, frames: u32 },
    /// A single- or multi-frame DICOM file (the DICOM source's decoder and timing).
    Dicom(PathBuf),
    /// An AVI file (EchoNet-Dynamic's videos); `fps` when the dataset states it, else the file's.
    Avi { path: PathBuf, fps: Option<f64> },
    /// A folder of PNG/JPEG frames in name order, at `fps`.
    ImageFolder { dir: PathBuf, fps: f64 },
}

/// One labelled clip.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipRecord {
    /// Unique within the dataset (file name without extension for file layouts).
    pub id: String,
    /// Patient key: every split keeps a patient's clips together.
    pub patient: String,
    /// The split the dataset declares, if any.
    pub split: Option<Split>,
    /// Clip-level labels by task name in the task's unit: "ef" (%), "esv"/"edv" (mL), binary
    /// tasks 0 or 1, ...
    pub labels: BTreeMap<String, f64>,
    /// Labels of single frames, by source frame index: [`LV_VOLUME`] (mL) for the phantom's every
    /// frame and for EchoNet-Dynamic's traced end-diastolic and end-systolic frames.
    pub frame_labels: BTreeMap<usize, BTreeMap<String, f64>>,
    pub source: ClipSource,
}

/// Which layout a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    EchonetDynamic,
    Manifest,
    Phantom,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder (or, for in-memory phantoms, a description such as `phantom:seed=7,clips=300`).
    pub origin: String,
    pub kind: DatasetKind,
    pub clips: Vec<ClipRecord>,
}

/// Reads the dataset in `dir`, recognising its layout by the index file it holds.
pub fn open(dir: &Path) -> Result<Dataset> {
    if dir.join("FileList.csv").is_file() {
        return echonet_dynamic::open_echonet_dynamic(dir, &OpenOptions::default())
            .map(|(dataset, _)| dataset);
    }
    if dir.join("manifest.csv").is_file() {
        return manifest::open_manifest(dir);
    }
    if dir.join("labels.csv").is_file() && dir.join("frame_volumes.csv").is_file() {
        return phantom::open_folder(dir);
    }
    Err(DatasetError::UnknownLayout {
        path: dir.to_path_buf(),
    })
}

fn frame_at(
    seq: usize,
    media_time: Duration,
    image: crate::frame::Image,
    geometry: &Arc<SourceGeometry>,
) -> Frame {
    Frame {
        seq: seq as u64,
        media_time,
        captured_at: Instant::now(),
        captured_wall: SystemTime::now(),
        image,
        geometry: geometry.clone(),
    }
}

impl ClipRecord {
    /// Every frame of the clip in display order, with media times from the clip's start.
    pub fn load_frames(&self) -> Result<Vec<Frame>> {
        match &self.source {
            ClipSource::Phantom { params, frames } => {
                let phantom = Phantom::new(params.clone()).map_err(|e| DatasetError::Invalid {
                    path: PathBuf::from(&self.id),
                    what: format!("phantom parameters: {e}"),
                })?;
                let geometry = Arc::new(phantom.geometry());
                Ok((0..*frames as usize)
                    .map(|k| {
                        let t = phantom.frame_time(k as u64);
                        frame_at(k, t, phantom.render(t), &geometry)
                    })
                    .collect())
            }
            ClipSource::Dicom(path) => load_dicom(path),
            ClipSource::Avi { path, fps } => avi::load_frames(path, *fps),
            ClipSource::ImageFolder { dir, fps } => load_image_folder(dir, *fps),
        }
    }
}

/// What to do with a clip whose frames file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingClips {
    /// An error naming the file (the default).
    #[default]
    Error,
    /// Leave the clip out and count it in the [`OpenReport`].
    Skip,
}

/// How a dataset is opened; `Default` is strict.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub missing: MissingClips,
}

/// What was left out or could not be used while opening a dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenReport {
    /// Clips left out because their video or frames are missing (with `MissingClips::Skip`).
    pub skipped_missing: Vec<String>,
    /// Clips kept without per-frame labels: no usable tracing (not two traced frames).
    pub untraced: Vec<String>,
}

/// Image files of a folder (PNG/JPEG), in name order.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let is_image = matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref(),
            Some("png" | "jpg" | "jpeg")
        );
        if is_image && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn load_image_folder(dir: &Path, fps: f64) -> Result<Vec<Frame>> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(DatasetError::Invalid {
            path: dir.to_path_buf(),
            what: format!("frame rate {fps}: expected a positive number of frames per second"),
        });
    }
    let files = image_files(dir)?;
    if files.is_empty() {
        return Err(DatasetError::Invalid {
            path: dir.to_path_buf(),
            what: "no PNG or JPEG frames in the folder".into(),
        });
    }
    let geometry = Arc::new(SourceGeometry::default());
    let period = Duration::from_secs_f64(1.0 / fps);
    let mut frames = Vec::with_capacity(files.len());
    for (k, f) in files.iter().enumerate() {
        let image =
            crate::capture::images::decode_image_file(f).map_err(|what| DatasetError::Decode {
                path: f.clone(),
                what,
            })?;
        let t = period.checked_mul(k as u32).unwrap_or(Duration::MAX);
        frames.push(frame_at(k, t, image, &geometry));
    }
    Ok(frames)
}

fn load_dicom(path: &Path) -> Result<Vec<Frame>> {
    use crate::capture::dicom::DicomClip;
    let decode = |e: crate::capture::dicom::DicomError| DatasetError::Decode {
        path: path.to_path_buf(),
        what: e.to_string(),
    };
    let clip = DicomClip::open(path).map_err(decode)?;
    let geometry = clip.geometry();
    let times = clip.frame_times().to_vec();
    let mut frames = Vec::with_capacity(clip.frame_count());
    for (i, t) in times.iter().enumerate().take(clip.frame_count()) {
        frames.push(frame_at(i, *t, clip.frame(i).map_err(decode)?, &geometry));
    }
    Ok(frames)
}
