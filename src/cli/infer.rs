//! `echonet infer`: the parity contract. Prints `{"frames":[{"outputs":{task: value},
//! "features":[...]}]}` on stdout; `features` (the pooled trunk vector) only with `--features`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use echonet_edge::input::load_batch;
use echonet_edge::model::read_bundle;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle (.safetensors written by `echonet convert` or `echonet train`).
    #[arg(long)]
    pub model: PathBuf,
    /// A PNG/JPEG frame, or a float32 .npy [N,C,H,W] already normalised (preprocessing bypassed).
    #[arg(long)]
    pub input: PathBuf,
    /// Include the pooled feature vector of each frame.
    #[arg(long)]
    pub features: bool,
    #[command(flatten)]
    pub run: super::RunArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = read_bundle(&args.model)?;
    let model = args.run.model(&bundle)?;
    let batch = load_batch(&args.input, &bundle.manifest.input)?;
    let (h, w) = (batch.dims()[2], batch.dims()[3]);
    let spec = &bundle.manifest.input;
    if (h, w) != (spec.height, spec.width) {
        tracing::warn!(
            "{}: frames are {h}x{w} but the model was made for {}x{}; running anyway (the network is size-agnostic above 75x75)",
            args.input.display(),
            spec.height,
            spec.width
        );
    }
    let frames = model.infer(&batch, args.features).with_context(|| {
        format!(
            "running {} on {}",
            args.model.display(),
            args.input.display()
        )
    })?;
    let out = serde_json::json!({ "frames": frames });
    println!("{}", serde_json::to_string(&out)?);
    Ok(ExitCode::SUCCESS)
}
