//! `echonet infer`: one model call per input, as JSON: `{"frames":[{"outputs":{task: value},
//! "features":[...]}]}` on stdout; `features` (the pooled trunk vector) only with `--features`.
//! A `.npy` is already normalised (preprocessing bypassed: the parity contract). A PNG/JPEG frame
//! goes through the daemon's own path (`offline::prepare_still` + the inference step): the scan
//! sector found in the image, black outside it, its box cropped and letterboxed, the quality
//! gate and the view gate; an unfit frame prints `{"unfit": [reasons]}` instead of outputs and
//! the command exits 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use candle_core::{Device, Tensor};
use echonet_edge::aggregate::Verdict;
use echonet_edge::input::load_batch;
use echonet_edge::model::{read_bundle, EchoNetModel};
use echonet_edge::offline::{infer_still, prepare_still};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle (.safetensors written by `echonet convert` or `echonet train`).
    #[arg(long)]
    pub model: PathBuf,
    /// A PNG/JPEG frame (preprocessed as the daemon does), or a float32 .npy [N,C,H,W] already
    /// normalised (preprocessing bypassed). Repeatable: frames are printed in order.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Include the pooled feature vector of each frame.
    #[arg(long)]
    pub features: bool,
    /// Deployment profile (TOML) whose preprocessing settings apply to image frames.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting: `--set section.key=value` (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub run: super::RunArgs,
}

pub(crate) fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = read_bundle(&args.model)?;
    let model = args.run.model(&bundle)?;
    let config = super::run::load_config(args.config.as_ref(), &args.overrides)?;
    let spec = &bundle.manifest.input;
    let mut frames = Vec::new();
    let mut all_fit = true;
    for input in &args.input {
        let context = || format!("running {} on {}", args.model.display(), input.display());
        if !is_image(input) {
            let batch = load_batch(input)?;
            let (h, w) = (batch.dims()[2], batch.dims()[3]);
            if (h, w) != (spec.height, spec.width) {
                tracing::warn!(
                    "{}: frames are {h}x{w} but the model was made for {}x{}; running anyway (the network is size-agnostic above 75x75)",
                    input.display(),
                    spec.height,
                    spec.width
                );
            }
            for f in model.infer(&batch, args.features).with_context(context)? {
                frames.push(serde_json::to_value(f)?);
            }
            continue;
        }
        let image = echonet_edge::capture::images::decode_image_file(input)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let still = prepare_still(image, spec, &config.preprocess)
            .with_context(|| format!("preprocessing {}", input.display()))?;
        let out =
            infer_still(&still, &model, config.pipeline.view_threshold).with_context(context)?;
        let mut line = match out.verdict {
            Verdict::Valid(outputs) => serde_json::json!({ "outputs": outputs }),
            Verdict::Invalid(reasons) => {
                all_fit = false;
                let names: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
                eprintln!(
                    "{}: frame not usable: {}",
                    input.display(),
                    names.join(", ")
                );
                serde_json::json!({ "unfit": names })
            }
        };
        if let Some(d) = out.ood_distance {
            line["ood_distance"] = serde_json::json!(d);
        }
        if let (true, Some(x)) = (args.features, &still.input) {
            let t = Tensor::from_slice(&x.data, (1, x.channels, x.height, x.width), &Device::Cpu)?;
            if let Some(f) = EchoNetModel::infer(&model, &t, true)
                .with_context(context)?
                .pop()
            {
                line["features"] = serde_json::to_value(f.features)?;
            }
        }
        frames.push(line);
    }
    let out = serde_json::json!({ "frames": frames });
    println!("{}", serde_json::to_string(&out)?);
    Ok(if all_fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
