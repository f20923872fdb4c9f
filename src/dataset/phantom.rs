//! The phantom as a dataset: the folder `echonet phantom` writes (multi-frame DICOM clips,
//! `labels.csv`, `frame_volumes.csv`), or the same clips rendered in memory from a seed without
//! touching the disk. Every phantom clip is its own patient, and every frame of an apical
//! four-chamber clip carries its true LV volume.
//!
//! The volume tasks (ef, esv, edv, lv_volume) and the findings (pacemaker, la_dilation,
//! lv_wall_normal) are defined on the A4C view: a clip in another view is labelled only
//! `view_a4c` = 0, so no volume or finding loss ever sees it and evaluation has nothing of it
//! to score but the view.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ClipRecord, ClipSource, Dataset, DatasetError, DatasetKind, Result, LV_VOLUME};
use crate::phantom::{clip_seed, Phantom, PhantomParams};

/// The phantom's binary tasks, in `labels.csv`'s column order.
pub const FINDING_TASKS: [&str; 3] = ["pacemaker", "la_dilation", "lv_wall_normal"];
/// The view task: 1 for an apical four-chamber clip.
pub const VIEW_TASK: &str = "view_a4c";

/// Clip-level labels of a phantom patient, in task units (binary tasks 0/1): for an A4C clip the
/// volumes, the findings and `view_a4c` = 1; for another view only `view_a4c` = 0.
pub fn clip_labels(params: &PhantomParams) -> BTreeMap<String, f64> {
    let bit = |b: bool| f64::from(u8::from(b));
    let findings = [
        params.pacemaker,
        params.la_dilation(),
        params.lv_wall_normal(),
    ];
    labels_for_view(
        params.view.is_a4c(),
        [params.ef_percent(), params.esv_ml, params.edv_ml],
        findings.map(bit),
    )
}

/// Labels from their parts: `[ef, esv, edv]` and the findings in [`FINDING_TASKS`] order, kept
/// only for an A4C clip.
fn labels_for_view(a4c: bool, volumes: [f64; 3], findings: [f64; 3]) -> BTreeMap<String, f64> {
    let mut labels = BTreeMap::from([(VIEW_TASK.to_string(), if a4c { 1.0 } else { 0.0 })]);
    if a4c {
        labels.extend(
            ["ef", "esv", "edv"]
                .into_iter()
                .map(String::from)
                .zip(volumes),
        );
        labels.extend(FINDING_TASKS.into_iter().map(String::from).zip(findings));
    }
    labels
}

/// Clips `0..clips` of base seed `seed` (the patients `echonet phantom --seed seed` writes), with
/// `frames` frames each at `fps`, rendered when their frames are loaded.
pub fn in_memory(seed: u64, clips: u32, frames: u32, fps: f64) -> Result<Dataset> {
    let origin = format!("phantom:seed={seed},clips={clips},frames={frames},fps={fps}");
    let bad = |what: String| DatasetError::Invalid {
        path: origin.clone().into(),
        what,
    };
    if !(fps.is_finite() && fps > 0.0) || frames == 0 {
        return Err(bad(format!(
            "fps {fps} and frames {frames}: expected a positive rate and at least one frame"
        )));
    }
    let mut records = Vec::with_capacity(clips as usize);
    for i in 0..clips {
        let s = clip_seed(seed, i)
            .ok_or_else(|| bad(format!("seed {seed} too large for clip seeds S * 1000 + i")))?;
        let params = PhantomParams {
            fps,
            ..PhantomParams::random(s)
        };
        let phantom = Phantom::new(params.clone()).map_err(|e| bad(format!("clip {i}: {e}")))?;
        let volumes_shown = if params.view.is_a4c() { frames } else { 0 };
        let frame_labels = (0..volumes_shown as usize)
            .map(|k| {
                let v = phantom.lv_volume_ml(phantom.frame_time(k as u64));
                (k, BTreeMap::from([(LV_VOLUME.to_string(), v)]))
            })
            .collect();
        records.push(ClipRecord {
            id: format!("clip_{i:04}"),
            patient: format!("phantom-{s}"),
            split: None,
            labels: clip_labels(&params),
            frame_labels,
            source: ClipSource::Phantom { params, frames },
        });
    }
    Ok(Dataset {
        origin,
        kind: DatasetKind::Phantom,
        clips: records,
    })
}

/// Gives a share of a phantom dataset's patients lead mimics ([`PhantomParams::lead_mimics`]:
/// a moderator band and a Chiari filament, bright right-heart lines that are not a lead), as
/// training's hard negatives for the `pacemaker` head; labels are unchanged. Which patients get
/// them is drawn from each clip's seed, independent of its findings, so paced and unpaced
/// patients alike have them. `share` must be in 0..=1.
pub fn add_lead_mimics(dataset: &mut Dataset, share: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&share) {
        return Err(DatasetError::Invalid {
            path: dataset.origin.clone().into(),
            what: format!("lead-mimic share {share}: expected 0 to 1"),
        });
    }
    for clip in &mut dataset.clips {
        if let ClipSource::Phantom { params, .. } = &mut clip.source {
            let draw = crate::phantom::unit_draw(params.seed, MIMIC_DRAW_SALT);
            params.lead_mimics = draw < share;
        }
    }
    dataset.origin.push_str(&format!(",lead_mimics={share}"));
    Ok(())
}

/// Salt of the per-clip draw of [`add_lead_mimics`].
const MIMIC_DRAW_SALT: u64 = 0x4c45_4144_4d49_4d00;

/// Reads a folder written by `echonet phantom`.
pub fn open_folder(dir: &Path) -> Result<Dataset> {
    let labels_path = dir.join("labels.csv");
    let volumes_path = dir.join("frame_volumes.csv");
    let labels = read_rows(
        &labels_path,
        &["file", "seed", "edv_ml", "esv_ml", "ef_percent"],
    )?;
    let volumes = read_rows(&volumes_path, &["file", "frame", "lv_volume_ml"])?;
    let mut per_file: BTreeMap<String, BTreeMap<usize, BTreeMap<String, f64>>> = BTreeMap::new();
    for (line, row) in &volumes {
        let frame: usize = parse(&volumes_path, *line, "frame", &row["frame"])?;
        let v: f64 = parse(&volumes_path, *line, "lv_volume_ml", &row["lv_volume_ml"])?;
        per_file
            .entry(row["file"].clone())
            .or_default()
            .insert(frame, BTreeMap::from([(LV_VOLUME.to_string(), v)]));
    }
    let mut clips = Vec::with_capacity(labels.len());
    for (line, row) in &labels {
        let file = row["file"].clone();
        let path = dir.join(&file);
        if !path.is_file() {
            return Err(DatasetError::Invalid {
                path: labels_path.clone(),
                what: format!("line {line}: clip {file:?} is not in {}", dir.display()),
            });
        }
        let num = |col: &str| parse::<f64>(&labels_path, *line, col, &row[col]);
        // Folders written before the findings existed have no finding or view columns: their
        // clips are all A4C and carry only the volumes.
        let bit = |col: &str| -> Result<Option<f64>> {
            match row.get(col) {
                None => Ok(None),
                Some(text) => match text.as_str() {
                    "0" => Ok(Some(0.0)),
                    "1" => Ok(Some(1.0)),
                    _ => Err(DatasetError::Invalid {
                        path: labels_path.clone(),
                        what: format!("line {line}, column {col}: {text:?} is not 0 or 1"),
                    }),
                },
            }
        };
        let a4c = bit(VIEW_TASK)?.is_none_or(|v| v == 1.0);
        let volumes = [num("ef_percent")?, num("esv_ml")?, num("edv_ml")?];
        let mut clip_labels = labels_for_view(a4c, volumes, [0.0; 3]);
        for task in FINDING_TASKS {
            match bit(task)? {
                Some(v) if a4c => {
                    clip_labels.insert(task.to_string(), v);
                }
                _ => {
                    clip_labels.remove(task);
                }
            }
        }
        if bit(VIEW_TASK)?.is_none() {
            clip_labels.remove(VIEW_TASK);
        }
        let frame_labels = if a4c {
            per_file.remove(&file).unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        let id = file.trim_end_matches(".dcm").to_string();
        clips.push(ClipRecord {
            patient: format!("phantom-{}", row["seed"]),
            id,
            split: None,
            labels: clip_labels,
            frame_labels,
            source: super::ClipSource::Dicom(path),
        });
    }
    Ok(Dataset {
        origin: dir.display().to_string(),
        kind: DatasetKind::Phantom,
        clips,
    })
}

/// Rows of a CSV file with a header, as column -> text, with their 1-based line numbers; every
/// column in `required` must be in the header.
pub(crate) fn read_rows(
    path: &Path,
    required: &[&str],
) -> Result<Vec<(usize, BTreeMap<String, String>)>> {
    read_table(path, required).map(|(_, rows)| rows)
}

/// Rows of a CSV file with a header (see [`read_rows`]), and the header itself.
pub(crate) type Rows = Vec<(usize, BTreeMap<String, String>)>;

pub(crate) fn read_table(path: &Path, required: &[&str]) -> Result<(Vec<String>, Rows)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    for r in required {
        if !header.iter().any(|h| h == r) {
            return Err(DatasetError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "header has no column {r:?} (columns: {})",
                    header.join(", ")
                ),
            });
        }
    }
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let row = header
            .iter()
            .cloned()
            .zip(rec.iter().map(str::to_string))
            .collect();
        rows.push((i + 2, row));
    }
    Ok((header, rows))
}

fn csv_error(path: &Path, e: csv::Error) -> DatasetError {
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DatasetError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => DatasetError::Invalid {
            path: path.to_path_buf(),
            what: format!("not valid CSV: {other:?}"),
        },
    }
}

/// One cell parsed, or an error naming the file, line and column.
pub(crate) fn parse<T: std::str::FromStr>(
    path: &Path,
    line: usize,
    column: &str,
    text: &str,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| DatasetError::Invalid {
        path: path.to_path_buf(),
        what: format!("line {line}, column {column}: {text:?} is not a valid value ({e})"),
    })
}
