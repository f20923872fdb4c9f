//! `echonet train`: trains EchoNet heads on a dataset folder (EchoNet-Dynamic, a clip manifest,
//! an `echonet phantom` folder) or on phantom clips rendered in memory, and writes the best
//! validation network as a bundle. Settings come from `--config FILE` (a `TrainConfig` TOML),
//! then the flags below.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use echonet_edge::dataset::{self, Dataset};
use echonet_edge::model::Provenance;
use echonet_edge::train::data::{prepare, split_patients, FramePick};
use echonet_edge::train::trainer::{
    train_run, HeadLayout, InitWeights, Progress, RunControl, RunOutcome, TrainConfig,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset folder (FileList.csv, manifest.csv or an `echonet phantom` folder).
    #[arg(long, conflicts_with = "phantom_seed")]
    pub data: Option<PathBuf>,
    /// Train on phantom patients of this base seed, rendered in memory (clip i: seed S*1000+i).
    #[arg(long)]
    pub phantom_seed: Option<u64>,
    /// Phantom patients to render.
    #[arg(long, default_value_t = 400)]
    pub phantom_clips: u32,
    /// Share of the phantom patients (0 to 1) drawn with lead mimics: a moderator band in the
    /// RV and a Chiari filament in the RA, bright lines that are not a pacemaker lead (hard
    /// negatives for the `pacemaker` head). Default 0: none.
    #[arg(long, default_value_t = 0.0, requires = "phantom_seed")]
    pub phantom_lead_mimics: f64,
    /// The bundle to write (the best validation network).
    #[arg(long)]
    pub out: PathBuf,
    /// Folder for checkpoints (written every --eval-every steps) and each run's best bundle;
    /// default: the --out path with its extension replaced by `.work` (models/x.safetensors ->
    /// models/x.work).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Continue from the checkpoints in the work folder.
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune: start from this bundle's weights (and its heads' scale and offset) instead of
    /// a seeded initialisation. Its width, input size and heads (in order) must be the run's.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Stop every run at this step with a checkpoint (continue later with --resume).
    #[arg(long)]
    pub pause_at: Option<usize>,
    /// TrainConfig TOML; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Optimiser steps per run (default 1500, or --config's steps).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Width multiplier of the network's channels, e.g. 0.125, 0.25 or 1 (default 0.25).
    #[arg(long)]
    pub width: Option<f64>,
    /// Side of the square model input, pixels (default 96).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Comma-separated heads, e.g. `ef,esv,edv,lv_volume`.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<String>>,
    /// `shared` (one backbone, every head) or `per_task` (one network per task, as the paper).
    #[arg(long)]
    pub heads: Option<String>,
    /// Peak learning rate, decayed along a cosine to 5 % of it (default 1e-3).
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW weight decay (default 1e-4).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Grid over learning rates, e.g. `1e-3,3e-4`.
    #[arg(long, value_delimiter = ',')]
    pub lr_grid: Option<Vec<f64>>,
    /// Grid over weight decays, e.g. `1e-4,0`.
    #[arg(long, value_delimiter = ',')]
    pub weight_decay_grid: Option<Vec<f64>>,
    /// Training-time Gaussian noise inside the sector, as a fraction of each frame's range
    /// (default 0: off; SmoothGrad explains with 0.15).
    #[arg(long)]
    pub augment_noise: Option<f64>,
    /// Frames per optimiser step (default 24).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Validate, keep the best network and write a checkpoint every this many steps (default 100).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Seed of the patient split, weight initialisation, batches and augmentation (default 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The intended-use statement written into the bundle (default: "research and
    /// demonstration only; not for clinical use").
    #[arg(long)]
    pub intended_use: Option<String>,
    /// CPU threads; default every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn config(args: &Args) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let de = toml::Deserializer::parse(&text)
                .with_context(|| format!("{}: not valid TOML", p.display()))?;
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{}: {}: {}", p.display(), e.path(), e.inner()))?
        }
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(if let Some(v) = &args.$field { cfg.$field = v.clone(); })*};
    }
    set!(
        steps,
        width,
        input_size,
        tasks,
        lr,
        weight_decay,
        lr_grid,
        weight_decay_grid,
        batch_size,
        eval_every,
        seed,
        intended_use
    );
    if let Some(n) = args.augment_noise {
        cfg.augment.noise = n;
    }
    if let Some(h) = &args.heads {
        cfg.heads = match h.as_str() {
            "shared" => HeadLayout::Shared,
            "per_task" | "per-task" => HeadLayout::PerTask,
            other => bail!("--heads {other:?}: expected shared or per_task"),
        };
    }
    cfg.check()?;
    Ok(cfg)
}

fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = config(&args)?;
    let threads = echonet_edge::runtime::configure_cpu_threads(args.threads);
    let device = echonet_edge::runtime::open_device(args.device.parse()?)?;
    let dataset: Dataset = match (&args.data, args.phantom_seed) {
        (Some(dir), None) => dataset::open(dir)?,
        // 10 fps clips: exactly the frames the 10 fps sampler would take from any frame rate.
        (None, Some(seed)) => {
            let mut set = dataset::phantom::in_memory(
                seed,
                args.phantom_clips,
                cfg.frames_per_clip as u32,
                10.0,
            )?;
            // Zero (the default) leaves the set as it is; anything else is checked (a negative
            // or NaN share is refused, not ignored).
            if args.phantom_lead_mimics != 0.0 {
                dataset::phantom::add_lead_mimics(&mut set, args.phantom_lead_mimics)?;
            }
            set
        }
        _ => bail!("give --data DIR or --phantom-seed S"),
    };
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| args.out.with_extension("work"));
    // Ctrl-C (or SIGTERM) stops every run after its current step with a checkpoint, so it can be
    // resumed with --resume even before the first validation; a second Ctrl-C quits at once.
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, interrupt.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, interrupt.clone())
            .context("installing the signal handler")?;
    }
    eprintln!(
        "training; checkpoints every {} steps in {} (Ctrl-C stops with a checkpoint; --resume continues)",
        cfg.eval_every,
        work_dir.display()
    );
    let command: Vec<String> = std::env::args().collect();
    let provenance = Provenance {
        source: format!("echonet train ({})", command[1..].join(" ")),
        data: dataset.origin.clone(),
        created: today(),
        tool: format!("echonet-edge {}", env!("CARGO_PKG_VERSION")),
        metrics: Default::default(),
        notes: String::new(),
    };

    let prep_started = Instant::now();
    let layouts: Vec<(String, TrainConfig)> = match cfg.heads {
        HeadLayout::Shared => vec![(String::new(), cfg.clone())],
        HeadLayout::PerTask => cfg
            .tasks
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    TrainConfig {
                        tasks: vec![t.clone()],
                        ..cfg.clone()
                    },
                )
            })
            .collect(),
    };
    // Read and checked against every run's network before the data is rendered, so a
    // mismatched bundle fails at once (with `--heads per_task` each run has one head).
    let init = match &args.init {
        Some(path) => {
            let w = InitWeights::read(path)?;
            for (_, run_cfg) in &layouts {
                w.check(run_cfg)?;
            }
            Some(Arc::new(w))
        }
        None => None,
    };
    let data = prepare(
        &dataset,
        &cfg.tasks,
        &cfg.input_spec(),
        FramePick {
            sampled: cfg.frames_per_clip,
        },
    )?;
    let split = split_patients(&data, cfg.val_fraction, cfg.seed);
    tracing::info!(
        clips = data.clips.len(),
        frames = data.frames.len(),
        rejected = ?data.rejected,
        train_patients = split.train.len(),
        val_patients = split.val.len(),
        threads,
        seconds = format!("{:.1}", prep_started.elapsed().as_secs_f64()),
        "data prepared"
    );

    for (task, layout_cfg) in &layouts {
        let (data, cfg) = if task.is_empty() {
            (&data, layout_cfg)
        } else {
            // One network per task: keep only that label column (and the frames that have it).
            (&project(&data, &cfg.tasks, task), layout_cfg)
        };
        let out = if task.is_empty() {
            args.out.clone()
        } else {
            with_suffix(&args.out, task)
        };
        let lrs = if cfg.lr_grid.is_empty() {
            vec![cfg.lr]
        } else {
            cfg.lr_grid.clone()
        };
        let wds = if cfg.weight_decay_grid.is_empty() {
            vec![cfg.weight_decay]
        } else {
            cfg.weight_decay_grid.clone()
        };
        let mut results: Vec<(f64, f64, RunOutcome)> = Vec::new();
        for &lr in &lrs {
            for &wd in &wds {
                let name = format!(
                    "{}lr{lr:e}_wd{wd:e}",
                    if task.is_empty() {
                        String::new()
                    } else {
                        format!("{task}_")
                    }
                );
                let dir = work_dir.join(&name);
                let outcome = train_run(
                    cfg,
                    lr,
                    wd,
                    data,
                    &split,
                    &provenance,
                    &dir,
                    RunControl {
                        resume: args.resume,
                        pause_at: args.pause_at,
                        interrupt: Some(interrupt.clone()),
                        init: init.clone(),
                    },
                    &device,
                    &Progress::new(&name),
                )?;
                results.push((lr, wd, outcome));
                if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        println!(
            "{:<14} {:<12} {:>10} {:>6} {:>10}  per-head validation",
            "lr", "weight decay", "val loss", "step", "s/step"
        );
        for (lr, wd, o) in &results {
            let per: Vec<String> = o
                .best
                .per_task
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect();
            // A run stopped before its first validation has no loss to show (the trainer's
            // placeholder is infinite): say so rather than print "inf".
            let loss = if o.best.loss.is_finite() {
                format!("{:.4}", o.best.loss)
            } else {
                "none".to_string()
            };
            let per = if per.is_empty() && !o.best.loss.is_finite() {
                "not validated yet".to_string()
            } else {
                per.join(", ")
            };
            println!(
                "{:<14} {:<12} {:>10} {:>6} {:>10.2}  {}",
                format!("{lr:e}"),
                format!("{wd:e}"),
                loss,
                o.best.step,
                o.seconds_per_step,
                per
            );
        }
        if results.iter().any(|r| !r.2.finished) {
            println!(
                "paused; continue with the same command and --resume (checkpoints in {})",
                work_dir.display()
            );
            if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            continue;
        }
        let best = results
            .iter()
            .min_by(|a, b| a.2.best.loss.total_cmp(&b.2.best.loss))
            .context("no training run finished")?;
        std::fs::copy(&best.2.bundle, &out)
            .with_context(|| format!("copying {} to {}", best.2.bundle.display(), out.display()))?;
        // The OOD gate's statistics: training frames -> mean and directions, validation frames
        // -> threshold. Too few frames (a tiny run) leaves the gate off, said here.
        match echonet_edge::train::ood::record_ood_statistics(&out, data, &split, &dataset.origin) {
            Ok(stats) => eprintln!(
                "recorded the out-of-distribution statistics: {}",
                echonet_edge::model::ood::gate_description(Some(&stats))
            ),
            Err(e) => eprintln!(
                "warning: no out-of-distribution statistics recorded ({e}); the gate is off for this bundle (fit them later with `echonet ood-fit`)"
            ),
        }
        println!(
            "wrote {} (lr {:e}, weight decay {:e}, step {}, val loss {:.4}; {:.0} s of training)",
            out.display(),
            best.0,
            best.1,
            best.2.best.step,
            best.2.best.loss,
            best.2.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `models/x.safetensors` + `ef` -> `models/x.ef.safetensors`.
fn with_suffix(path: &Path, task: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{task}.safetensors"))
}

/// The data with only `task`'s label column, without frames lacking it.
fn project(
    data: &echonet_edge::train::data::TrainData,
    tasks: &[String],
    task: &str,
) -> echonet_edge::train::data::TrainData {
    let c = tasks.iter().position(|t| t == task).unwrap_or(0);
    echonet_edge::train::data::TrainData {
        clips: data.clips.clone(),
        frames: data
            .frames
            .iter()
            .filter(|f| f.labels[c].is_some())
            .map(|f| echonet_edge::train::data::TrainFrame {
                labels: vec![f.labels[c]],
                ..f.clone()
            })
            .collect(),
        rejected: data.rejected.clone(),
    }
}
