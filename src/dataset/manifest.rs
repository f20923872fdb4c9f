//! A CSV manifest of clips: `manifest.csv` in a folder, one row per clip.
//!
//! Columns: `path` (relative to the folder: a DICOM file, an `.avi` file, or a folder of PNG/JPEG
//! frames), `patient` (required: splits keep a patient's clips together), optional `split`
//! (train/val/test), optional `fps` (required for image folders; overrides an AVI's own rate),
//! and any of the EchoNet task names as label columns (an empty cell is an unknown label; binary
//! tasks take 0 or 1). Per-frame LV volumes come from an optional `frame_labels.csv` (`path`,
//! `frame`, `lv_volume`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::echonet_dynamic::number;
use super::phantom::{parse, read_rows, read_table};
use super::{ClipRecord, ClipSource, Dataset, DatasetError, DatasetKind, Result, Split, LV_VOLUME};
use crate::model::heads::{TaskKind, TaskSpec};

/// Columns that are not labels.
pub const BASE_COLUMNS: [&str; 4] = ["path", "patient", "split", "fps"];
/// Label columns: the EchoNet tasks.
pub const LABEL_COLUMNS: [&str; 10] = [
    "ef",
    "esv",
    "edv",
    "pacemaker",
    "la_dilation",
    "lv_wall_normal",
    "age",
    "sex",
    "weight",
    "height",
];

fn invalid(path: &Path, what: String) -> DatasetError {
    DatasetError::Invalid {
        path: path.to_path_buf(),
        what,
    }
}

/// Reads `dir/manifest.csv` (and `dir/frame_labels.csv` when present).
pub fn open_manifest(dir: &Path) -> Result<Dataset> {
    let manifest = dir.join("manifest.csv");
    let (header, rows) = read_table(&manifest, &["path", "patient"])?;
    let unknown: Vec<&String> = header
        .iter()
        .filter(|h| !BASE_COLUMNS.contains(&h.as_str()) && !LABEL_COLUMNS.contains(&h.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(
            &manifest,
            format!(
                "unknown column(s) {}: accepted columns are {} and the labels {}",
                unknown
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                BASE_COLUMNS.join(", "),
                LABEL_COLUMNS.join(", ")
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut clips = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        let cell = |c: &str| row.get(c).map(String::as_str).unwrap_or("");
        let rel = cell("path").to_string();
        if rel.is_empty() {
            return Err(invalid(
                &manifest,
                format!("line {line}, column path: empty cell"),
            ));
        }
        if !seen.insert(rel.clone()) {
            return Err(invalid(
                &manifest,
                format!("line {line}, column path: {rel:?} is listed twice"),
            ));
        }
        let patient = cell("patient").to_string();
        if patient.is_empty() {
            return Err(invalid(
                &manifest,
                format!("line {line}, column patient: empty cell (every clip needs its patient)"),
            ));
        }
        let split = match cell("split") {
            "" => None,
            s => Some(
                s.parse::<Split>()
                    .map_err(|e| invalid(&manifest, format!("line {line}, column split: {e}")))?,
            ),
        };
        let fps = match cell("fps") {
            "" => None,
            t => {
                let f = number(&manifest, *line, "fps", t)?;
                if f <= 0.0 {
                    return Err(invalid(
                        &manifest,
                        format!("line {line}, column fps: {f} is not a positive frame rate"),
                    ));
                }
                Some(f)
            }
        };
        let mut labels = BTreeMap::new();
        for task in LABEL_COLUMNS {
            let text = cell(task);
            if text.is_empty() {
                continue;
            }
            let v = number(&manifest, *line, task, text)?;
            let binary =
                TaskSpec::echonet_default(task).is_some_and(|t| t.kind == TaskKind::Binary);
            if binary && v != 0.0 && v != 1.0 {
                return Err(invalid(
                    &manifest,
                    format!("line {line}, column {task}: {text:?}: a binary label is 0 or 1"),
                ));
            }
            labels.insert(task.to_string(), v);
        }
        let full = dir.join(&rel);
        let source = if full.is_dir() {
            let fps = fps.ok_or_else(|| {
                invalid(
                    &manifest,
                    format!("line {line}, column fps: {rel:?} is a folder of frames and needs its frame rate"),
                )
            })?;
            ClipSource::ImageFolder { dir: full, fps }
        } else if full.is_file() {
            let ext = full
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if ext.as_deref() == Some("avi") {
                ClipSource::Avi { path: full, fps }
            } else {
                ClipSource::Dicom(full)
            }
        } else {
            return Err(invalid(
                &manifest,
                format!(
                    "line {line}, column path: {} does not exist",
                    full.display()
                ),
            ));
        };
        let id = match rel.rsplit_once('.') {
            Some((stem, ext)) if !ext.contains('/') && !stem.is_empty() => stem.to_string(),
            _ => rel.trim_end_matches('/').to_string(),
        };
        clips.push((
            rel,
            ClipRecord {
                id,
                patient,
                split,
                labels,
                frame_labels: BTreeMap::new(),
                source,
            },
        ));
    }
    let frame_path = dir.join("frame_labels.csv");
    if frame_path.is_file() {
        let index: BTreeMap<String, usize> = clips
            .iter()
            .enumerate()
            .map(|(i, (rel, _))| (rel.clone(), i))
            .collect();
        for (line, row) in read_rows(&frame_path, &["path", "frame", "lv_volume"])? {
            let i = *index.get(&row["path"]).ok_or_else(|| {
                invalid(
                    &frame_path,
                    format!(
                        "line {line}, column path: {:?} is not a path of manifest.csv",
                        row["path"]
                    ),
                )
            })?;
            let frame: usize = parse(&frame_path, line, "frame", &row["frame"])?;
            let v = number(&frame_path, line, "lv_volume", &row["lv_volume"])?;
            if v < 0.0 {
                return Err(invalid(
                    &frame_path,
                    format!("line {line}, column lv_volume: {v} is negative"),
                ));
            }
            if let Some((_, clip)) = clips.get_mut(i) {
                clip.frame_labels
                    .entry(frame)
                    .or_default()
                    .insert(LV_VOLUME.to_string(), v);
            }
        }
    }
    Ok(Dataset {
        origin: dir.display().to_string(),
        kind: DatasetKind::Manifest,
        clips: clips.into_iter().map(|(_, c)| c).collect(),
    })
}
