//! `echonet predict FILE_OR_DIR...`: offline studies. One JSON line per clip on stdout: the
//! estimate from the paper's 20 frames at 10 fps from the clip's start, or `withheld` with the
//! reasons, or `refused` with why the file could not be used. Every line names the model that
//! made it (`model`: id, content hash, intended use), as the daemon's records do. Folders expand
//! to their `.dcm` files. A clip that is not ultrasound is withheld before any inference.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use echonet_edge::capture::dicom::DicomClip;
use echonet_edge::frame::Frame;
use echonet_edge::model::read_bundle;
use echonet_edge::offline::{predict_clip, ClipResult, ClipStatus};
use echonet_edge::preprocess::Preprocessor;
use echonet_edge::publish::record::ModelInfo;

/// One line of output: the clip's result and the model that made it.
#[derive(serde::Serialize)]
struct PredictLine<'a> {
    #[serde(flatten)]
    result: &'a ClipResult,
    model: &'a ModelInfo,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// DICOM files, or folders of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Model bundle; default: model.bundle of the profile, else the bundled default model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Deployment profile (TOML) for preprocessing, quality and window settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting: `--set section.key=value` (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub run: super::RunArgs,
}

fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.is_file())
                        .collect()
                })
                .unwrap_or_default();
            files.retain(|f| {
                f.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
            });
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

pub fn load_frames(path: &Path) -> Result<(DicomClip, Vec<Frame>), String> {
    let clip = DicomClip::open(path).map_err(|e| e.to_string())?;
    let geometry = clip.geometry();
    let times = clip.frame_times().to_vec();
    let mut frames = Vec::with_capacity(clip.frame_count());
    for (i, t) in times.iter().enumerate().take(clip.frame_count()) {
        let image = clip.frame(i).map_err(|e| e.to_string())?;
        frames.push(Frame {
            seq: i as u64,
            media_time: *t,
            captured_at: Instant::now(),
            captured_wall: SystemTime::now(),
            image,
            geometry: geometry.clone(),
        });
    }
    Ok((clip, frames))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut overrides = args.overrides.clone();
    if let Some(m) = &args.model {
        overrides.push(format!(
            "model.bundle={}",
            toml::Value::String(m.display().to_string())
        ));
    }
    let config = super::run::load_config(args.config.as_ref(), &overrides)?;
    let bundle_path = echonet_edge::daemon::resolve_bundle(&config)?;
    let bundle = read_bundle(&bundle_path)?;
    let model = args.run.model(&bundle)?;
    // As `echonet run` names it: the bundle's file name without its extension.
    let model_info = ModelInfo {
        id: bundle_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        intended_use: bundle.manifest.intended_use.clone(),
        content_hash: bundle.manifest.content_hash.clone(),
        precision: model.precision().to_string(),
        ood_gate: model.ood_gate(),
    };
    let files = expand(&args.paths);
    anyhow::ensure!(
        !files.is_empty(),
        "no DICOM files found in {:?}",
        args.paths
    );
    let total = files.len();
    let mut refused = 0usize;
    for file in files {
        let name = file.display().to_string();
        let result = match load_frames(&file) {
            Err(reason) => ClipResult::refused(&name, reason),
            Ok((clip, frames)) => {
                let facts = clip.facts();
                let is_us =
                    facts.is_ultrasound_sop_class || facts.modality.as_deref() == Some("US");
                if !is_us {
                    let mut r = ClipResult::refused(
                        &name,
                        format!(
                            "not an ultrasound image (modality {}, SOP class {}): EchoNet reads apical-4-chamber echocardiograms",
                            facts.modality.as_deref().unwrap_or("absent"),
                            facts.sop_class_uid.as_deref().unwrap_or("absent")
                        ),
                    );
                    r.status = ClipStatus::Withheld;
                    r.source_frames = frames.len();
                    r
                } else {
                    let mut pre = Preprocessor::new(config.preprocess.clone())?;
                    pre.set_source_fps(clip.nominal_fps());
                    predict_clip(
                        &name,
                        &frames,
                        &model,
                        &mut pre,
                        &config.window,
                        config.pipeline.view_threshold,
                    )
                }
            }
        };
        if result.status == ClipStatus::Refused {
            refused += 1;
        }
        let line = PredictLine {
            result: &result,
            model: &model_info,
        };
        println!("{}", serde_json::to_string(&line)?);
    }
    if refused == total {
        // Nothing could be read: a script must not take this for a study with results.
        anyhow::bail!("none of the {total} input(s) could be used (each line above says why)");
    }
    Ok(ExitCode::SUCCESS)
}
