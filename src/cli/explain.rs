//! `echonet saliency` and `echonet occlusion`: where the model looks, offline. The input is a
//! PNG/JPEG frame (preprocessed as `echonet infer` and the daemon do: sector, mask, crop) or a
//! DICOM clip (the 10 fps
//! sampler's frames from the start, preprocessed as the daemon does, at most `--frames`). Per
//! frame: `<name>.png` (the map over the prepared input, smoothed for saliency, sector outline in
//! cyan, a title with the method, task and unit, a colour bar with its scale) and `<name>.npy`
//! (the raw map, f32 [H, W]; occlusion in the task's unit); one JSON line per frame on stdout
//! with the task's value for the frame (`output`, `unit`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use echonet_edge::explain::{
    annotate, colour_top, display_scale, overlay, png_bytes, sector_inside, sector_outline,
    write_npy, Colouring, Explainer, Legend, Map2d, Occlusion, SmoothGrad, SALIENCY_DISPLAY_SIGMA,
};
use echonet_edge::model::{read_bundle, EchoNetModel, InputSpec};
use echonet_edge::offline::prepare_still;
use echonet_edge::preprocess::{PreparedInput, Preprocessor, Sector};
use echonet_edge::sampler::{Decision, Sampler};

#[derive(clap::Args, Debug)]
pub struct Common {
    /// Model bundle.
    #[arg(long)]
    pub model: PathBuf,
    /// A PNG/JPEG frame, or a DICOM clip.
    #[arg(long)]
    pub input: PathBuf,
    /// The task whose raw head output is explained (e.g. lv_volume, edv, esv, ef).
    #[arg(long)]
    pub task: String,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Most sampled frames of a clip to explain.
    #[arg(long, default_value_t = 20)]
    pub frames: usize,
    /// CPU threads; default: every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct SaliencyArgs {
    #[command(flatten)]
    pub common: Common,
    /// Noisy copies averaged (SmoothGrad N).
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
    /// Noise sigma as a fraction of the input's range (the paper recommends 0.10-0.20).
    #[arg(long, default_value_t = 0.15)]
    pub noise: f64,
    /// Seed of the noise: the same seed gives the same map.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
pub struct OcclusionArgs {
    #[command(flatten)]
    pub common: Common,
    /// Side of the black patch, prepared-input pixels.
    #[arg(long, default_value_t = 12)]
    pub patch: usize,
    /// Step between patch positions, pixels.
    #[arg(long, default_value_t = 4)]
    pub stride: usize,
}

/// One frame to explain: its name, the prepared input, the sector it was cut from (clips).
struct Item {
    name: String,
    source_frame: Option<u64>,
    input: PreparedInput,
    sector: Option<Arc<Sector>>,
}

fn load_items(path: &Path, spec: &InputSpec, max_frames: usize) -> anyhow::Result<Vec<Item>> {
    let config = super::run::load_config(None, &[])?;
    if super::infer::is_image(path) {
        // The daemon's preprocessing, as `echonet infer` does: sector found in the image,
        // masked, cropped, letterboxed; never a stretch of the whole frame.
        let image = echonet_edge::capture::images::decode_image_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let still = prepare_still(image, spec, &config.preprocess)
            .with_context(|| format!("preprocessing {}", path.display()))?;
        let Some(input) = still.input else {
            let names: Vec<&str> = still.unfit.iter().map(|r| r.as_str()).collect();
            anyhow::bail!("{}: frame not usable: {}", path.display(), names.join(", "));
        };
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("frame")
            .to_string();
        return Ok(vec![Item {
            name: stem,
            source_frame: None,
            input,
            sector: still.sector,
        }]);
    }
    let (clip, frames) = super::predict::load_frames(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut pre = Preprocessor::new(config.preprocess.clone())?;
    pre.set_source_fps(clip.nominal_fps());
    let mut sampler = Sampler::paper();
    let mut items = Vec::new();
    let mut sampled = 0;
    for frame in &frames {
        if sampled >= max_frames {
            break;
        }
        if sampler.offer(frame.media_time) != Decision::Take {
            continue;
        }
        sampled += 1;
        let processed = pre.process(frame, spec)?;
        match processed.input {
            Some(input) => items.push(Item {
                name: format!("frame_{:04}", frame.seq),
                source_frame: Some(frame.seq),
                input,
                sector: processed.sector,
            }),
            None => tracing::warn!(
                "{}: frame {} not usable ({:?}); skipped",
                path.display(),
                frame.seq,
                processed.quality.reasons
            ),
        }
    }
    anyhow::ensure!(
        !items.is_empty(),
        "{}: none of the {sampled} sampled frames passed the quality gate",
        path.display()
    );
    Ok(items)
}

fn write_outputs(
    out: &Path,
    item: &Item,
    spec: &InputSpec,
    map: &Map2d,
    colouring: Colouring,
    legend: &Legend,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let outline = match &item.sector {
        Some(s) => Some(sector_outline(s, spec)?),
        None => None,
    };
    let img = overlay(
        &item.input,
        spec,
        map,
        colouring,
        outline.as_deref(),
        display_scale(item.input.width.max(item.input.height)),
    )?;
    let img = annotate(&img, colouring, legend);
    let png = out.join(format!("{}.png", item.name));
    std::fs::write(&png, png_bytes(&img)?).with_context(|| format!("writing {}", png.display()))?;
    let npy = out.join(format!("{}.npy", item.name));
    write_npy(&npy, map)?;
    Ok((png, npy))
}

/// ", frame 12" for a clip's frame, nothing for a single image.
fn frame_note(item: &Item) -> String {
    item.source_frame
        .map(|f| format!(" frame {f}"))
        .unwrap_or_default()
}

fn setup(common: &Common) -> anyhow::Result<echonet_edge::model::Bundle> {
    echonet_edge::runtime::configure_cpu_threads(common.threads);
    std::fs::create_dir_all(&common.out)
        .with_context(|| format!("creating {}", common.out.display()))?;
    Ok(read_bundle(&common.model)?)
}

pub fn saliency(args: SaliencyArgs) -> anyhow::Result<ExitCode> {
    let c = &args.common;
    let bundle = setup(c)?;
    let explainer = Explainer::from_bundle(&bundle)?;
    let task = explainer.task_index(&c.task)?;
    let task_spec = bundle.manifest.tasks.iter().find(|t| t.name == c.task);
    let spec = bundle.manifest.input.clone();
    let cfg = SmoothGrad {
        samples: args.samples,
        noise: args.noise,
        seed: args.seed,
        ..SmoothGrad::default()
    };
    for item in load_items(&c.input, &spec, c.frames)? {
        let inside = match &item.sector {
            Some(sector) => Some(sector_inside(sector, &spec)?),
            None => None,
        };
        let map = explainer.smoothgrad(&item.input, inside.as_deref(), task, &cfg)?;
        // The task's value for this very input (trainable form, eval mode), in its unit: the
        // number the map explains, and the one `echonet infer` prints for the frame.
        let raw: Vec<f32> = explainer
            .outputs(&explainer.tensor(&item.input)?)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let value = match (raw.get(task), task_spec) {
            (Some(r), Some(t)) => Some(t.finish(*r as f64)),
            _ => None,
        };
        let unit = task_spec.map(|t| t.unit.clone()).unwrap_or_default();
        let top = colour_top(&map.smoothed(SALIENCY_DISPLAY_SIGMA), Colouring::Magnitude);
        let legend = Legend {
            title: format!("SmoothGrad: {} ({unit}){}", c.task, frame_note(&item)),
            high: format!("{top:.1e} {unit}"),
            low: "0".into(),
        };
        let (png, npy) = write_outputs(&c.out, &item, &spec, &map, Colouring::Magnitude, &legend)?;
        let line = serde_json::json!({
            "frame": item.source_frame,
            "task": c.task,
            "png": png,
            "npy": npy,
            "output": value,
            "unit": task_spec.map(|t| t.unit.clone()),
            "samples": cfg.samples,
            "noise": cfg.noise,
            "max": map.data.iter().fold(0f32, |a, v| a.max(*v)),
        });
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn occlusion(args: OcclusionArgs) -> anyhow::Result<ExitCode> {
    let c = &args.common;
    let bundle = setup(c)?;
    let opts = echonet_edge::model::RunOptions::cpu();
    let model = EchoNetModel::from_bundle(&bundle, &opts)?;
    let spec = bundle.manifest.input.clone();
    let cfg = Occlusion {
        patch: args.patch,
        stride: args.stride,
        ..Occlusion::default()
    };
    for item in load_items(&c.input, &spec, c.frames)? {
        let r = echonet_edge::explain::occlusion_map(&model, &item.input, &c.task, &cfg)?;
        let top = colour_top(&r.map, Colouring::Signed);
        let legend = Legend {
            title: format!("Occlusion: {} ({}){}", c.task, r.unit, frame_note(&item)),
            high: format!("+{top:.1} {}", r.unit),
            low: format!("-{top:.1} {}", r.unit),
        };
        let (png, npy) = write_outputs(&c.out, &item, &spec, &r.map, Colouring::Signed, &legend)?;
        let (lo, hi) = r
            .map
            .data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let line = serde_json::json!({
            "frame": item.source_frame,
            "task": c.task,
            "png": png,
            "npy": npy,
            "output": r.value,
            "unit": r.unit,
            "raw_output": r.base,
            "positions": r.positions,
            "min_change": lo,
            "max_change": hi,
        });
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
