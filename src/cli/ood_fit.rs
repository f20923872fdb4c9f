//! `echonet ood-fit INPUT OUTPUT (--calibration DIR | --phantom-seed S [--phantom-clips N])`:
//! fits the out-of-distribution statistics (`model::ood`) onto an existing bundle, e.g. a
//! converted one or one trained before the gate existed, and writes it with the section.
//!
//! Frames go through the runtime's own path, as `echonet quantize` feeds it: each clip's frames
//! sampled at the paper's 10 fps from its start and prepared by the profile's preprocessor; the
//! features are the bundle's own at its run precision (an int8 bundle's int8 features). Patients
//! are split as `echonet train` splits them (the dataset's declared train/val split, else
//! `--val-fraction` of the patients drawn with `--split-seed`): training patients' frames give
//! the mean and directions, validation patients' frames the threshold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use echonet_edge::dataset;
use echonet_edge::dataset::phantom::VIEW_TASK;
use echonet_edge::model::bundle::write_bundle_sections;
use echonet_edge::model::ood::{self, FitSettings, OodStats};
use echonet_edge::model::{read_bundle, EchoNetModel, RunOptions};
use echonet_edge::preprocess::{FramePreparer, Preprocessor};
use echonet_edge::sampler::{Decision, Sampler};
use echonet_edge::train::data::{split_patients, ClipInfo, TrainData};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["calibration", "phantom_seed"])))]
pub struct Args {
    /// Bundle to fit the statistics onto (any precision; an int8 bundle is scored in int8).
    pub input: PathBuf,
    /// Bundle to write: the input with the statistics (it may be the input itself).
    pub output: PathBuf,
    /// Clips of the model's training domain: a dataset folder in any layout `echonet eval` reads.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Phantom patients rendered in memory from this base seed (for a phantom-trained model,
    /// the seed it was trained on).
    #[arg(long)]
    pub phantom_seed: Option<u64>,
    /// Phantom patients to render (with --phantom-seed).
    #[arg(long, default_value_t = 400, requires = "phantom_seed")]
    pub phantom_clips: u32,
    /// Sampled frames per clip (10 fps from the clip's start; `echonet train`'s default 20).
    #[arg(long, default_value_t = 20)]
    pub frames_per_clip: usize,
    /// Share of patients held out to set the threshold when the data declares no split.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Seed of that split (`echonet train --seed`, default 1: the same patients as training).
    #[arg(long, default_value_t = 1)]
    pub split_seed: u64,
    /// Principal directions kept.
    #[arg(long, default_value_t = ood::DEFAULT_COMPONENTS)]
    pub components: usize,
    /// Validation percentile the threshold starts from.
    #[arg(long, default_value_t = ood::DEFAULT_PERCENTILE)]
    pub percentile: f64,
    /// The threshold is the percentile's distance times this (at least 1).
    #[arg(long, default_value_t = ood::DEFAULT_MARGIN)]
    pub margin: f64,
    /// Deployment profile (TOML) whose preprocessing prepares the frames.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// CPU threads; default: every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Frames per forward pass.
const BATCH: usize = 16;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    echonet_edge::runtime::configure_cpu_threads(args.threads);
    let settings = FitSettings {
        components: args.components,
        percentile: args.percentile,
        margin: args.margin,
    };
    settings.check().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.frames_per_clip > 0,
        "--frames-per-clip must be at least 1"
    );
    let bundle = read_bundle(&args.input)?;
    let config = super::run::load_config(args.config.as_ref(), &[])?;
    let data = match (&args.calibration, args.phantom_seed) {
        (Some(dir), _) => dataset::open(dir)?,
        (None, Some(seed)) => dataset::phantom::in_memory(
            seed,
            args.phantom_clips,
            args.frames_per_clip as u32,
            10.0,
        )?,
        _ => anyhow::bail!("give --calibration DIR or --phantom-seed S"),
    };
    let model = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu())?;
    let spec = bundle.manifest.input.clone();

    // Patients split as training splits them.
    let infos = TrainData {
        clips: data
            .clips
            .iter()
            .map(|c| ClipInfo {
                id: c.id.clone(),
                patient: c.patient.clone(),
                split: c.split,
                labels: BTreeMap::new(),
            })
            .collect(),
        ..Default::default()
    };
    let split = split_patients(&infos, args.val_fraction, args.split_seed);
    let train: BTreeSet<&str> = split.train.iter().map(String::as_str).collect();
    let val: BTreeSet<&str> = split.val.iter().map(String::as_str).collect();

    let mut train_frames: Vec<Vec<f32>> = Vec::new();
    let mut val_frames: Vec<Vec<f32>> = Vec::new();
    let mut val_clip: Vec<usize> = Vec::new();
    let mut shape = None;
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    let mut other_views = 0usize;
    for (ci, record) in data.clips.iter().enumerate() {
        let validation = val.contains(record.patient.as_str());
        if !validation && !train.contains(record.patient.as_str()) {
            continue;
        }
        // The gate's domain is the view the heads were trained for (as `echonet train` fits
        // it): clips labelled as another view are the view gate's to refuse.
        if record.labels.get(VIEW_TASK) == Some(&0.0) {
            other_views += 1;
            continue;
        }
        let frames = record
            .load_frames()
            .with_context(|| format!("clip {}", record.id))?;
        let mut pre = Preprocessor::new(config.preprocess.clone())
            .with_context(|| "the profile's preprocessing")?;
        let mut sampler = Sampler::paper();
        let mut taken = 0;
        for frame in &frames {
            if taken >= args.frames_per_clip {
                break;
            }
            if sampler.offer(frame.media_time) != Decision::Take {
                continue;
            }
            taken += 1;
            let prepared = pre.prepare(frame, &spec);
            let Some(input) = prepared.input else {
                for r in prepared.reasons {
                    *rejected.entry(r.as_str().to_string()).or_default() += 1;
                }
                continue;
            };
            let dims = (input.channels, input.height, input.width);
            anyhow::ensure!(
                *shape.get_or_insert(dims) == dims,
                "clip {}: frames of different sizes ({dims:?} after {shape:?})",
                record.id
            );
            if validation {
                val_frames.push(input.data.clone());
                val_clip.push(ci);
            } else {
                train_frames.push(input.data.clone());
            }
        }
    }
    let dims = shape.context("no frame passed preprocessing")?;
    let feats = |frames: &[Vec<f32>]| -> anyhow::Result<Vec<Vec<f32>>> {
        let refs: Vec<&[f32]> = frames.iter().map(Vec::as_slice).collect();
        Ok(ood::features_of(&model, &refs, dims, BATCH)?)
    };
    let (train_f, val_f) = (feats(&train_frames)?, feats(&val_frames)?);
    let tool = format!(
        "echonet ood-fit {} ({} features)",
        env!("CARGO_PKG_VERSION"),
        model.precision()
    );
    let stats = OodStats::fit(&train_f, &val_f, &val_clip, &settings, &data.origin, &tool)
        .with_context(|| format!("fitting the statistics on {}", data.origin))?;
    let written = write_bundle_sections(
        &args.output,
        &bundle.manifest,
        &bundle.store.snapshot(),
        bundle.quantization.as_ref(),
        Some(&stats),
    )?;
    let val_d: Vec<f64> = val_f.iter().map(|f| stats.distance(f)).collect();
    let report = serde_json::json!({
        "output": args.output.display().to_string(),
        "content_hash": written.content_hash,
        "ood_gate": ood::gate_description(Some(&stats)),
        "source": data.origin,
        "train_patients": split.train.len(),
        "validation_patients": split.val.len(),
        "train_frames": train_f.len(),
        "validation_frames": val_f.len(),
        "rejected_frames": rejected,
        "other_view_clips_skipped": other_views,
        "components": stats.info.components,
        "residual_variance": stats.info.residual_variance,
        "validation_distance_median": ood::percentile(&val_d, 50.0),
        "validation_distance_max": ood::percentile(&val_d, 100.0),
        "percentile": stats.info.percentile,
        "percentile_distance": stats.info.percentile_distance,
        "margin": stats.info.margin,
        "threshold": stats.info.threshold,
        "validation_clips": stats.info.fit.validation_clips,
        "window_percentile_distance": stats.info.window_percentile_distance,
        "window_threshold": stats.info.window_threshold,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
