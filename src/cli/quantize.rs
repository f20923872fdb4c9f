//! `echonet quantize INPUT OUTPUT [--calibration DIR | --phantom-seed S [--phantom-clips N]]
//! [--frames N] [--method minmax|percentile|mse] [--headroom F]`: an int8 bundle from an f32 one.
//!
//! Calibration frames go through the runtime's own path: each clip's frames are sampled at the
//! paper's 10 fps and prepared by the profile's preprocessor (sector crop, quality gates,
//! resize, normalisation), exactly as `echonet eval` and the daemon feed the model. Scales are fitted
//! on `--frames` frames from the first clips; the drift recorded in the bundle is measured on
//! `--held-out` frames from the clips after them (other patients), int8 against f32.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use echonet_edge::dataset;
use echonet_edge::model::bundle::{write_bundle_sections, QuantizedWeights};
use echonet_edge::model::cpu_plan::CpuPlan;
use echonet_edge::model::quantize::{self, Calibration, Method, Quantization};
use echonet_edge::model::{read_bundle, EchoNetModel, Int8Request, RunOptions, StorageDtype};
use echonet_edge::preprocess::{FramePreparer, Preprocessor};
use echonet_edge::sampler::{Decision, Sampler};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["calibration", "phantom_seed"])))]
pub struct Args {
    /// f32 bundle to quantise.
    pub input: PathBuf,
    /// int8 bundle to write.
    pub output: PathBuf,
    /// Calibration clips: a dataset folder in any layout `echonet eval` reads.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Calibrate on phantom patients rendered in memory from this base seed.
    #[arg(long)]
    pub phantom_seed: Option<u64>,
    /// Phantom patients to render (with --phantom-seed).
    #[arg(long, default_value_t = 8, requires = "phantom_seed")]
    pub phantom_clips: u32,
    /// Frames the activation scales are fitted on.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Frames held out from fitting (from later clips), on which the recorded drift is measured.
    #[arg(long, default_value_t = 16)]
    pub held_out: usize,
    /// How each activation range is chosen: minmax, percentile (0.01%/99.99%) or mse.
    #[arg(long, default_value = "percentile")]
    pub method: String,
    /// Each activation range is the method's range times this (>= 1): room for inputs brighter
    /// or busier than the calibration frames, where clipping costs far more than the coarser grid.
    #[arg(long, default_value_t = quantize::DEFAULT_HEADROOM)]
    pub headroom: f32,
    /// Deployment profile (TOML) whose preprocessing prepares the calibration frames.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also write the held-out frames (normalised, float32 `[N, C, H, W]` .npy) here, so another
    /// system (PyTorch, `echonet infer --input`) can be run on exactly the frames drift was
    /// measured on.
    #[arg(long)]
    pub dump_held_out: Option<PathBuf>,
    /// CPU threads; default: every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Sampled frames taken per clip, spread through it (every `STRIDE`th sampled frame).
const PER_CLIP: usize = 4;
const STRIDE: usize = 5;
/// Phantom clip length: 64 frames at 30 fps.
const PHANTOM_FRAMES: u32 = 64;
const PHANTOM_FPS: f64 = 30.0;
/// Frames per forward pass during calibration and drift measurement.
const BATCH: usize = 8;

/// One prepared frame (CHW floats) and its `(c, h, w)`.
type FrameData = (Vec<f32>, (usize, usize, usize));
type Frames = Vec<FrameData>;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    echonet_edge::runtime::configure_cpu_threads(args.threads);
    let method: Method = args.method.parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.headroom.is_finite() && args.headroom >= 1.0,
        "--headroom {}: expected a number >= 1",
        args.headroom
    );
    anyhow::ensure!(
        args.frames > 0 && args.held_out > 0,
        "--frames and --held-out must be at least 1"
    );
    let bundle = read_bundle(&args.input)?;
    anyhow::ensure!(
        bundle.quantization.is_none(),
        "{}: already an int8 bundle",
        args.input.display()
    );
    anyhow::ensure!(
        bundle.manifest.dtype == StorageDtype::F32,
        "{}: stored as {}; quantise an f32 bundle (`echonet convert --dtype f32`)",
        args.input.display(),
        bundle.manifest.dtype.as_str()
    );
    let config = super::run::load_config(args.config.as_ref(), &[])?;
    let data = match (&args.calibration, args.phantom_seed) {
        (Some(dir), _) => dataset::open(dir)?,
        (None, Some(seed)) => {
            dataset::phantom::in_memory(seed, args.phantom_clips, PHANTOM_FRAMES, PHANTOM_FPS)?
        }
        _ => anyhow::bail!("give --calibration DIR or --phantom-seed S"),
    };
    let spec = bundle.manifest.input.clone();

    // Fitting frames from the first clips, held-out frames from the clips after them.
    let mut fit: Frames = Vec::new();
    let mut held: Frames = Vec::new();
    for record in &data.clips {
        if held.len() >= args.held_out {
            break;
        }
        let frames = record
            .load_frames()
            .with_context(|| format!("calibration clip {}", record.id))?;
        let mut pre = Preprocessor::new(config.preprocess.clone())
            .with_context(|| "the profile's preprocessing")?;
        let mut sampler = Sampler::paper();
        let mut taken = 0usize;
        let mut sampled = 0usize;
        let fitting = fit.len() < args.frames;
        let want = if fitting { args.frames } else { args.held_out };
        let into = if fitting { &mut fit } else { &mut held };
        for frame in &frames {
            if taken >= PER_CLIP || into.len() >= want {
                break;
            }
            if sampler.offer(frame.media_time) != Decision::Take {
                continue;
            }
            sampled += 1;
            if !(sampled - 1).is_multiple_of(STRIDE) {
                continue;
            }
            if let Some(input) = pre.prepare(frame, &spec).input {
                into.push((
                    input.data.clone(),
                    (input.channels, input.height, input.width),
                ));
                taken += 1;
            }
        }
    }
    anyhow::ensure!(
        fit.len() == args.frames && held.len() == args.held_out,
        "{}: {} clips gave {} fitting and {} held-out frames that passed preprocessing; {} and {} asked for (fewer --frames/--held-out, or more clips)",
        data.origin,
        data.clips.len(),
        fit.len(),
        held.len(),
        args.frames,
        args.held_out
    );

    if let Some(path) = &args.dump_held_out {
        let (c, h, w) = held[0].1;
        let data: Vec<f32> = held.iter().flat_map(|f| f.0.iter().copied()).collect();
        std::fs::write(path, npy4(&data, [held.len(), c, h, w]))
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let opts = RunOptions {
        dtype: Some(DType::F32),
        int8: Int8Request::Off,
        ..RunOptions::cpu()
    };
    let reference = EchoNetModel::from_bundle(&bundle, &opts)?;
    let plan = reference
        .cpu_plan()
        .context("the f32 CPU plan is needed to calibrate")?;
    let batches = to_batches(&fit)?;
    let stats = quantize::calibrate(plan, &batches)?;
    let convs = CpuPlan::convolutions(reference.network())?;
    let (table, layers) = quantize::plan_table(&convs, &stats, method, args.headroom)?;
    let mut quant = QuantizedWeights {
        info: Quantization {
            scheme: quantize::SCHEME.into(),
            method,
            headroom: args.headroom,
            calibration: Calibration {
                source: data.origin.clone(),
                frames: fit.len(),
                held_out_frames: held.len(),
            },
            layers,
            drift: Default::default(),
            features_rel_l2: 0.0,
        },
        table,
    };

    // Drift on the held-out frames: the int8 model against the f32 one.
    let mut int8 = EchoNetModel::from_bundle(&bundle, &opts)?;
    int8.use_int8(&quant, &args.output)?;
    let tasks: Vec<String> = bundle
        .manifest
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let (mut f_ref, mut f_q, mut o_ref, mut o_q) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (data, (n, c, h, w)) in to_batches(&held)? {
        let x = Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?;
        for (model, feats, outs) in [
            (&reference, &mut f_ref, &mut o_ref),
            (&int8, &mut f_q, &mut o_q),
        ] {
            for frame in model.infer(&x, true)? {
                feats.extend(frame.features.unwrap_or_default());
                outs.push(
                    tasks
                        .iter()
                        .map(|t| frame.outputs.get(t).copied().unwrap_or(f64::NAN))
                        .collect::<Vec<f64>>(),
                );
            }
        }
    }
    let (drift, rel) = quantize::drift(&tasks, &f_ref, &f_q, &o_ref, &o_q);
    quant.info.drift = drift;
    quant.info.features_rel_l2 = rel;

    let mut manifest = bundle.manifest.clone();
    manifest.provenance.tool = format!("echonet quantize {}", env!("CARGO_PKG_VERSION"));
    let note = format!(
        "int8 ({}, headroom {}) of {} ({}), calibrated on {} frames of {}",
        method.as_str(),
        args.headroom,
        args.input.display(),
        bundle.manifest.content_hash,
        fit.len(),
        data.origin
    );
    manifest.provenance.notes = if manifest.provenance.notes.is_empty() {
        note
    } else {
        format!("{}; {note}", manifest.provenance.notes)
    };
    manifest.provenance.created = echonet_edge::model::bundle::utc_date_today();
    // The OOD statistics come along: an int8 bundle's distances are computed from its int8
    // features against the f32 training statistics (tests/ood.rs holds them to the phantom).
    let written = write_bundle_sections(
        &args.output,
        &manifest,
        &bundle.store.snapshot(),
        Some(&quant),
        bundle.ood.as_ref(),
    )?;
    let int8_layers = quant
        .info
        .layers
        .iter()
        .filter(|l| l.precision == "int8")
        .count();
    let report = serde_json::json!({
        "output": args.output.display().to_string(),
        "content_hash": written.content_hash,
        "method": method.as_str(),
        "headroom": args.headroom,
        "calibration": quant.info.calibration,
        "int8_layers": int8_layers,
        "f32_layers": quant.info.layers.iter().filter(|l| l.precision == "f32")
            .map(|l| serde_json::json!({"label": l.label, "reason": l.reason})).collect::<Vec<_>>(),
        "drift": quant.info.drift,
        "features_rel_l2": rel,
        "ood_gate": echonet_edge::model::ood::gate_description(bundle.ood.as_ref()),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Frames in batches of [`BATCH`] (frames of one shape per batch).
fn to_batches(frames: &[FrameData]) -> anyhow::Result<Vec<quantize::Batch>> {
    let mut out = Vec::new();
    for chunk in frames.chunks(BATCH) {
        let (c, h, w) = chunk[0].1;
        anyhow::ensure!(
            chunk.iter().all(|f| f.1 == (c, h, w)),
            "calibration frames of different sizes"
        );
        let data: Vec<f32> = chunk.iter().flat_map(|f| f.0.iter().copied()).collect();
        out.push((data, (chunk.len(), c, h, w)));
    }
    Ok(out)
}

/// A minimal NPY v1.0 file: little-endian f32, C order, 4-D.
fn npy4(data: &[f32], shape: [usize; 4]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}, {}), }}",
        shape[0], shape[1], shape[2], shape[3]
    );
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
