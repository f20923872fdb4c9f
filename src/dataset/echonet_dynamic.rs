//! The public EchoNet-Dynamic release (Stanford; 10,030 apical-4-chamber AVIs of 112x112):
//! `FileList.csv` (FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split),
//! `Videos/<FileName>.avi` and `VolumeTracings.csv` (FileName, X1, Y1, X2, Y2, Frame).
//!
//! Each video is its own patient. Its two traced frames are the end-diastolic and end-systolic
//! frames; which is which is decided by the LV volume of the tracing by the method of discs (the
//! first row of a frame is the long axis, the others are disc diameters across it). The frame
//! with the larger volume is labelled with the FileList's EDV, the smaller with its ESV: tracing
//! coordinates are pixels with no mL calibration, so only their order is used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::phantom::read_rows;
use super::{
    ClipRecord, ClipSource, Dataset, DatasetError, DatasetKind, MissingClips, OpenOptions,
    OpenReport, Result, Split, LV_VOLUME,
};

/// The columns of `FileList.csv` this reader needs.
pub const FILE_LIST_COLUMNS: [&str; 6] = ["FileName", "EF", "ESV", "EDV", "FPS", "Split"];
/// The columns of `VolumeTracings.csv`.
pub const TRACING_COLUMNS: [&str; 6] = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"];

/// One row of a tracing: a segment from (x1, y1) to (x2, y2), in pixels.
pub type Segment = (f64, f64, f64, f64);

/// Volume (pixel³) of a traced frame by the method of discs: `rows[0]` is the long axis, the
/// other rows are the diameters of equally thick discs stacked along it. `None` with fewer than
/// two rows.
pub fn disc_volume(rows: &[Segment]) -> Option<f64> {
    let len = |s: &Segment| ((s.2 - s.0).powi(2) + (s.3 - s.1).powi(2)).sqrt();
    let (axis, discs) = rows.split_first()?;
    if discs.is_empty() {
        return None;
    }
    let thickness = len(axis) / discs.len() as f64;
    Some(
        discs
            .iter()
            .map(|d| std::f64::consts::PI / 4.0 * len(d).powi(2) * thickness)
            .sum(),
    )
}

/// A file name without its `.avi` extension (FileList.csv names may or may not carry it).
fn stem(name: &str) -> &str {
    name.strip_suffix(".avi")
        .or_else(|| name.strip_suffix(".AVI"))
        .unwrap_or(name)
}

/// A finite number from a cell, or an error naming file, line and column.
pub(crate) fn number(path: &Path, line: usize, column: &str, text: &str) -> Result<f64> {
    if text.is_empty() {
        return Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            what: format!("line {line}, column {column}: empty cell, expected a number"),
        });
    }
    let v: f64 = super::phantom::parse(path, line, column, text)?;
    if !v.is_finite() {
        return Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            what: format!("line {line}, column {column}: {text:?} is not a finite number"),
        });
    }
    Ok(v)
}

/// Traced frames per video stem: frame -> segments in file order.
type Tracings = BTreeMap<String, BTreeMap<usize, Vec<Segment>>>;

fn read_tracings(path: &Path) -> Result<Tracings> {
    let mut out: Tracings = BTreeMap::new();
    for (line, row) in read_rows(path, &TRACING_COLUMNS)? {
        let num = |c: &str| number(path, line, c, &row[c]);
        let seg = (num("X1")?, num("Y1")?, num("X2")?, num("Y2")?);
        let frame: usize = super::phantom::parse(path, line, "Frame", &row["Frame"])?;
        out.entry(stem(&row["FileName"]).to_string())
            .or_default()
            .entry(frame)
            .or_default()
            .push(seg);
    }
    Ok(out)
}

/// Reads an EchoNet-Dynamic folder. Strict by default: a video named in `FileList.csv` but
/// missing from `Videos/` is an error; with [`MissingClips::Skip`] it is left out and listed in
/// the report. Videos without two usable traced frames keep their clip labels, have no frame
/// labels, and are listed in the report.
pub fn open_echonet_dynamic(dir: &Path, options: &OpenOptions) -> Result<(Dataset, OpenReport)> {
    let list_path = dir.join("FileList.csv");
    let tracings_path = dir.join("VolumeTracings.csv");
    let videos = dir.join("Videos");
    let rows = read_rows(&list_path, &FILE_LIST_COLUMNS)?;
    let mut tracings = if tracings_path.is_file() {
        read_tracings(&tracings_path)?
    } else {
        Tracings::new()
    };
    let mut report = OpenReport::default();
    let mut seen = BTreeSet::new();
    let mut clips = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        let name = row["FileName"].clone();
        if name.is_empty() {
            return Err(DatasetError::Invalid {
                path: list_path.clone(),
                what: format!("line {line}, column FileName: empty cell"),
            });
        }
        let id = stem(&name).to_string();
        if !seen.insert(id.clone()) {
            return Err(DatasetError::Invalid {
                path: list_path.clone(),
                what: format!("line {line}, column FileName: {name:?} is listed twice"),
            });
        }
        let num = |c: &str| number(&list_path, *line, c, &row[c]);
        let (ef, esv, edv) = (num("EF")?, num("ESV")?, num("EDV")?);
        let fps = num("FPS")?;
        if fps <= 0.0 {
            return Err(DatasetError::Invalid {
                path: list_path.clone(),
                what: format!("line {line}, column FPS: {fps} is not a positive frame rate"),
            });
        }
        let frame_count = match row.get("NumberOfFrames") {
            Some(t) => Some(super::phantom::parse::<usize>(
                &list_path,
                *line,
                "NumberOfFrames",
                t,
            )?),
            None => None,
        };
        for c in ["FrameHeight", "FrameWidth"] {
            if let Some(t) = row.get(c) {
                super::phantom::parse::<u32>(&list_path, *line, c, t)?;
            }
        }
        let split: Split = row["Split"]
            .parse()
            .map_err(|e: String| DatasetError::Invalid {
                path: list_path.clone(),
                what: format!("line {line}, column Split: {e}"),
            })?;
        let video = videos.join(format!("{id}.avi"));
        if !video.is_file() {
            match options.missing {
                MissingClips::Skip => {
                    report.skipped_missing.push(id);
                    continue;
                }
                MissingClips::Error => {
                    return Err(DatasetError::Invalid {
                        path: list_path.clone(),
                        what: format!(
                            "line {line}: video {} is missing (open with missing clips skipped to leave such clips out)",
                            video.display()
                        ),
                    })
                }
            }
        }
        let mut frame_labels = BTreeMap::new();
        let traced: Vec<(usize, f64)> = tracings
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .filter(|(f, _)| frame_count.is_none_or(|n| *f < n))
            .filter_map(|(f, rows)| disc_volume(&rows).map(|v| (f, v)))
            .collect();
        if traced.len() >= 2 {
            let by_volume = |a: &&(usize, f64), b: &&(usize, f64)| a.1.total_cmp(&b.1);
            if let (Some(small), Some(large)) = (
                traced.iter().min_by(by_volume),
                traced.iter().max_by(by_volume),
            ) {
                frame_labels.insert(small.0, BTreeMap::from([(LV_VOLUME.to_string(), esv)]));
                frame_labels.insert(large.0, BTreeMap::from([(LV_VOLUME.to_string(), edv)]));
            }
        } else {
            report.untraced.push(id.clone());
        }
        clips.push(ClipRecord {
            patient: id.clone(),
            id,
            split: Some(split),
            labels: BTreeMap::from([
                ("ef".to_string(), ef),
                ("esv".to_string(), esv),
                ("edv".to_string(), edv),
            ]),
            frame_labels,
            source: ClipSource::Avi {
                path: video,
                fps: Some(fps),
            },
        });
    }
    Ok((
        Dataset {
            origin: dir.display().to_string(),
            kind: DatasetKind::EchonetDynamic,
            clips,
        },
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disc_volume_of_a_cylinder() {
        // Axis of length 10 along y, 5 discs of diameter 4: V = pi * 2^2 * 10.
        let mut rows = vec![(0.0, 0.0, 0.0, 10.0)];
        rows.extend((0..5).map(|i| (-2.0, i as f64 * 2.0 + 1.0, 2.0, i as f64 * 2.0 + 1.0)));
        let v = disc_volume(&rows).unwrap();
        assert!((v - std::f64::consts::PI * 40.0).abs() < 1e-9, "{v}");
        assert_eq!(disc_volume(&rows[..1]), None);
    }

    #[test]
    fn stems() {
        assert_eq!(stem("0X1.avi"), "0X1");
        assert_eq!(stem("0X1"), "0X1");
    }
}
