//! `echonet eval --model BUNDLE (--data DIR | --phantom-seed S --phantom-clips N)`: the paper's
//! metrics on a held-out set. Every clip goes through the path of `echonet predict`; each
//! published estimate is paired with the clip's label of its base task (`ef_volume_curve` and
//! `ef_from_volumes` with `ef`). A table on stdout, or with `--json` one report object
//! (schema `echonet.eval/1`); `--plots DIR` writes Bland-Altman and scatter PNGs of every EF
//! estimator; `--predictions FILE` the per-clip pairs as JSON Lines, written as clips finish.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use echonet_edge::dataset::{self, Split};
use echonet_edge::eval::{self, plots, ClipEval, DatasetInfo, EvalReport, ModelInfo};
use echonet_edge::model::{read_bundle, TaskKind};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitArg {
    Test,
    Val,
    Train,
    All,
}

impl SplitArg {
    fn split(self) -> Option<Split> {
        match self {
            Self::Test => Some(Split::Test),
            Self::Val => Some(Split::Val),
            Self::Train => Some(Split::Train),
            Self::All => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Val => "val",
            Self::Train => "train",
            Self::All => "all",
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("dataset").required(true).args(["data", "phantom_seed"])))]
pub struct Args {
    /// Model bundle to evaluate.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset folder (EchoNet-Dynamic, clip manifest, or `echonet phantom` output).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate on phantom clips rendered in memory from this base seed (with --phantom-clips).
    #[arg(long, requires = "phantom_clips")]
    pub phantom_seed: Option<u64>,
    /// Number of in-memory phantom clips.
    #[arg(long, requires = "phantom_seed")]
    pub phantom_clips: Option<u32>,
    /// Frames per in-memory phantom clip, at 30 fps (>= 60 for the 20 frames at 10 fps).
    #[arg(long, requires = "phantom_seed")]
    pub phantom_frames: Option<u32>,
    /// Which split: default `test` when the dataset declares splits, else `all`.
    #[arg(long, value_enum)]
    pub split: Option<SplitArg>,
    /// One JSON report on stdout instead of the table (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write the regression metrics into the bundle's provenance (`test_<estimator>_<metric>`),
    /// with the test set named in its notes; the bundle gets a new content hash.
    #[arg(long)]
    pub record_metrics: bool,
    /// Write Bland-Altman and scatter PNGs of every EF estimator into this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Evaluate at most this many clips (the first of the split).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write each clip's predictions and truths as JSON Lines to this file.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Deployment profile (TOML) for preprocessing, quality and window settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting: `--set section.key=value` (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Also evaluate this bundle on the same clips and compare the two estimate by estimate
    /// (e.g. an int8 bundle `--against` its f32 form): per clip drift, MAE of each, and with
    /// `--plots` a Bland-Altman plot of this model's EF against the other's. Both run with the
    /// same device and threads; each in its own default precision.
    #[arg(long)]
    pub against: Option<PathBuf>,
    #[command(flatten)]
    pub run: super::RunArgs,
}

/// Default phantom clip length: 64 frames at 30 fps hold the 20 frames at 10 fps.
const PHANTOM_FRAMES: u32 = 64;
const PHANTOM_FPS: f64 = 30.0;

/// The clips to evaluate: a dataset folder, or phantom patients made in memory.
fn open_data(args: &Args) -> anyhow::Result<dataset::Dataset> {
    Ok(match (&args.data, args.phantom_seed, args.phantom_clips) {
        (Some(dir), _, _) => dataset::open(dir)?,
        (None, Some(seed), Some(clips)) => dataset::phantom::in_memory(
            seed,
            clips,
            args.phantom_frames.unwrap_or(PHANTOM_FRAMES),
            PHANTOM_FPS,
        )?,
        _ => anyhow::bail!("give --data DIR, or --phantom-seed S with --phantom-clips N"),
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::run::load_config(args.config.as_ref(), &args.overrides)?;
    let bundle = read_bundle(&args.model)?;
    let model = args.run.model(&bundle)?;
    let tasks = model.manifest().tasks.clone();

    let data = open_data(&args)?;
    let declares_splits = data.clips.iter().any(|c| c.split.is_some());
    let split = args.split.unwrap_or(if declares_splits {
        SplitArg::Test
    } else {
        SplitArg::All
    });
    anyhow::ensure!(
        declares_splits || split == SplitArg::All,
        "--split {}: {} declares no splits; use --split all",
        split.name(),
        data.origin
    );
    let mut records: Vec<_> = data
        .clips
        .iter()
        .filter(|c| split.split().is_none() || c.split == split.split())
        .collect();
    if let Some(limit) = args.limit {
        records.truncate(limit);
    }
    anyhow::ensure!(
        !records.is_empty(),
        "no clips to evaluate in {} (split {})",
        data.origin,
        split.name()
    );

    let mut lines = match &args.predictions {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let total = records.len();
    let mut clips: Vec<ClipEval> = Vec::with_capacity(total);
    for (i, record) in records.into_iter().enumerate() {
        let c = eval::evaluate_clip(
            record,
            &model,
            &config.preprocess,
            &config.window,
            config.pipeline.view_threshold,
        );
        tracing::info!(
            "{}/{total} {}: {}{}",
            i + 1,
            c.id,
            c.status,
            c.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        if let Some(w) = lines.as_mut() {
            serde_json::to_writer(&mut *w, &c)?;
            w.write_all(b"\n")?;
            w.flush()?;
        }
        clips.push(c);
    }

    let manifest = model.manifest();
    let mut report = EvalReport::new(
        ModelInfo {
            id: manifest.content_hash.clone(),
            bundle: args.model.display().to_string(),
            intended_use: manifest.intended_use.clone(),
            tasks: tasks.iter().map(|t| t.name.clone()).collect(),
            ood_gate: model.ood_gate(),
        },
        DatasetInfo {
            origin: data.origin.clone(),
            kind: serde_json::to_value(data.kind)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
            split: split.name().into(),
        },
        clips,
        &tasks,
    );

    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ef: Vec<(String, String)> = report
            .estimators
            .iter()
            .filter(|(name, r)| eval::base_task(name) == "ef" && r.kind == TaskKind::Regression)
            .map(|(name, r)| (name.clone(), r.unit.clone()))
            .collect();
        if ef.is_empty() {
            tracing::warn!("--plots: no EF estimate was published; no plots written");
        }
        for (name, unit) in ef {
            let (p, t) = eval::pairs_of(&report.clips, &name);
            let ba = dir.join(format!("{name}_bland_altman.png"));
            let sc = dir.join(format!("{name}_scatter.png"));
            let written = plots::bland_altman(&ba, &name, &unit, &p, &t)
                .and_then(|_| plots::scatter(&sc, &name, &unit, &p, &t));
            match written {
                Ok(_) => {
                    report.plots.push(ba.display().to_string());
                    report.plots.push(sc.display().to_string());
                }
                // Undefined metrics (too few clips, constant truth) are said, not fatal.
                Err(plots::PlotError::Metrics(e)) => {
                    tracing::warn!("--plots: {name}: not plotted: {e}")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    if args.record_metrics {
        record_metrics(&args.model, &report)?;
    }

    let against = match &args.against {
        Some(other) => Some(compare(&args, other, &config, &report, &model)?),
        None => None,
    };

    if args.json {
        eprint!("{}", report.table());
        let mut value = serde_json::to_value(&report)?;
        if let (Some(a), Some(obj)) = (against, value.as_object_mut()) {
            obj.insert("against".into(), a);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", report.table());
        for p in &report.plots {
            println!("wrote {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--against OTHER`: OTHER evaluated on the same clips; per regression estimate, this model's
/// estimates against OTHER's (drift per clip, bias and limits, both MAEs), Bland-Altman plots of
/// the EF estimates with `--plots`. The summary goes to stderr; the JSON is returned.
fn compare(
    args: &Args,
    other: &std::path::Path,
    config: &echonet_edge::config::Config,
    report: &EvalReport,
    model: &echonet_edge::model::EchoNetModel,
) -> anyhow::Result<serde_json::Value> {
    let bundle = read_bundle(other)?;
    let mut run = args.run.clone();
    run.dtype = None; // each bundle in its own default precision
    let other_model = run.model(&bundle)?;
    let by_id: std::collections::BTreeMap<&str, &ClipEval> =
        report.clips.iter().map(|c| (c.id.as_str(), c)).collect();
    let data = open_data(args)?;
    let mut theirs = Vec::new();
    for record in data
        .clips
        .iter()
        .filter(|c| by_id.contains_key(c.id.as_str()))
    {
        theirs.push(eval::evaluate_clip(
            record,
            &other_model,
            &config.preprocess,
            &config.window,
            config.pipeline.view_threshold,
        ));
    }
    let (this_p, other_p) = (model.precision(), other_model.precision());
    let (la, lb) = (
        format!("{this_p} ({})", args.model.display()),
        format!("{other_p} ({})", other.display()),
    );
    let mut estimators = serde_json::Map::new();
    let mut per_clip: Vec<serde_json::Value> = Vec::new();
    for (name, r) in &report.estimators {
        if r.kind != TaskKind::Regression {
            continue;
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut err_a = Vec::new();
        let mut err_b = Vec::new();
        for c in &theirs {
            let (Some(mine), Some(their)) = (
                by_id
                    .get(c.id.as_str())
                    .and_then(|m| m.predictions.get(name)),
                c.predictions.get(name),
            ) else {
                continue;
            };
            a.push(mine.prediction);
            b.push(their.prediction);
            if let (Some(t1), Some(t2)) = (mine.truth, their.truth) {
                err_a.push((mine.prediction - t1).abs());
                err_b.push((their.prediction - t2).abs());
            }
            per_clip.push(serde_json::json!({
                "id": c.id, "estimate": name, "this": mine.prediction, "other": their.prediction,
                "drift": mine.prediction - their.prediction,
            }));
        }
        if a.is_empty() {
            continue;
        }
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let n = d.len() as f64;
        let bias = d.iter().sum::<f64>() / n;
        let sd = (d.iter().map(|x| (x - bias).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let (mae_a, mae_b) = (mean(&err_a), mean(&err_b));
        eprintln!(
            "{name}: {this_p} - {other_p} over {} clips: mean |drift| {:.3}, max {:.3}, bias {:+.3}, 95% limits {:+.3} to {:+.3}; MAE {} vs {}",
            d.len(),
            d.iter().map(|x| x.abs()).sum::<f64>() / n,
            d.iter().fold(0f64, |m, x| m.max(x.abs())),
            bias,
            bias - 1.96 * sd,
            bias + 1.96 * sd,
            mae_a.map_or_else(|| "-".into(), |m| format!("{m:.3}")),
            mae_b.map_or_else(|| "-".into(), |m| format!("{m:.3}")),
        );
        estimators.insert(
            name.clone(),
            serde_json::json!({
                "n": d.len(),
                "mean_abs_drift": d.iter().map(|x| x.abs()).sum::<f64>() / n,
                "max_abs_drift": d.iter().fold(0f64, |m, x| m.max(x.abs())),
                "bias": bias,
                "loa_lower": bias - 1.96 * sd,
                "loa_upper": bias + 1.96 * sd,
                "mae_this": mae_a,
                "mae_other": mae_b,
                "mae_change": mae_a.zip(mae_b).map(|(x, y)| x - y),
            }),
        );
        if let Some(dir) = &args.plots {
            if eval::base_task(name) == "ef" {
                let path = dir.join(format!("{name}_{this_p}_vs_{other_p}_bland_altman.png"));
                match plots::bland_altman_of(&path, name, &r.unit, &a, &b, (this_p, other_p)) {
                    Ok(_) => eprintln!("wrote {}", path.display()),
                    Err(plots::PlotError::Metrics(e)) => {
                        tracing::warn!("--plots: {name} against: not plotted: {e}")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(serde_json::json!({
        "this": la,
        "other": lb,
        "other_id": bundle.manifest.content_hash,
        "estimators": estimators,
        "clips": per_clip,
    }))
}

/// Rewrites the bundle with this evaluation's regression metrics in its provenance.
fn record_metrics(path: &std::path::Path, report: &EvalReport) -> anyhow::Result<()> {
    let bundle = read_bundle(path)?;
    let mut manifest = bundle.manifest.clone();
    let metrics = &mut manifest.provenance.metrics;
    metrics.retain(|k, _| !k.starts_with("test_"));
    for (name, r) in &report.estimators {
        if let Some(m) = &r.regression {
            for (what, v) in [
                ("n", m.n as f64),
                ("r2", m.r2),
                ("mae", m.mae),
                ("mean_prediction_mae", m.mean_prediction_mae),
                ("bias", m.bias),
            ] {
                metrics.insert(format!("test_{name}_{what}"), v);
            }
        }
        if let Some(m) = &r.binary {
            for (what, v) in [
                ("n", m.n as f64),
                ("positives", m.positives as f64),
                ("auc", m.auc),
                ("f1", m.f1),
                ("accuracy", m.accuracy),
            ] {
                metrics.insert(format!("test_{name}_{what}"), v);
            }
        }
    }
    if let Some(g) = &report.view_gate {
        metrics.insert("test_view_gate_frame_accuracy".into(), g.frame_accuracy);
        metrics.insert("test_view_gate_clip_accuracy".into(), g.clip_accuracy);
    }
    let note = format!(
        "test metrics: {} clips of {} ({} ok, {} withheld)",
        report.counts.clips, report.dataset.origin, report.counts.ok, report.counts.withheld
    );
    let notes = &mut manifest.provenance.notes;
    if let Some(i) = notes.find("; test metrics: ") {
        notes.truncate(i);
    }
    *notes = if notes.is_empty() {
        note
    } else {
        format!("{notes}; {note}")
    };
    manifest.content_hash.clear();
    // Its other sections (int8, OOD statistics) stay: only the provenance changes.
    let written = echonet_edge::model::bundle::write_bundle_sections(
        path,
        &manifest,
        &bundle.store.snapshot(),
        bundle.quantization.as_ref(),
        bundle.ood.as_ref(),
    )?;
    eprintln!(
        "recorded the metrics in {}: content_hash {}",
        path.display(),
        written.content_hash
    );
    Ok(())
}
