//! `echonet convert INPUT OUTPUT`: PyTorch/safetensors weights to a verified bundle; with a
//! reduced `--dtype`, reports how far the reduced model's outputs move on a probe batch.

use std::path::PathBuf;
use std::process::ExitCode;

use echonet_edge::model::import::{convert, ConvertOptions, ConvertSpec};
use echonet_edge::model::StorageDtype;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PyTorch state dict (.pt/.pth) or safetensors file with facenet-pytorch parameter names.
    pub input: PathBuf,
    /// Bundle to write (.safetensors).
    pub output: PathBuf,
    /// TOML with `intended_use`, `[input]`, `[provenance]` and `[[task]]` entries.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Storage and compute precision of the bundle: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Square input size in pixels (default 299, or the config's `[input]`).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Add an EchoNet task by name (ef, esv, edv, pacemaker, ...); its `heads.NAME.*` must exist.
    #[arg(long = "task")]
    pub tasks: Vec<String>,
    /// What the model may be used for; shown wherever its numbers are shown.
    #[arg(long)]
    pub intended_use: Option<String>,
    /// Frames in the probe batch that measures reduced-precision deviation.
    #[arg(long, default_value_t = 2)]
    pub probe_frames: usize,
    /// CPU threads; default: every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    echonet_edge::runtime::configure_cpu_threads(args.threads);
    let dtype: StorageDtype = args.dtype.parse().map_err(anyhow::Error::msg)?;
    let spec = match &args.config {
        Some(p) => ConvertSpec::from_toml_file(p)?,
        None => ConvertSpec::default(),
    };
    let opts = ConvertOptions {
        dtype,
        input_size: args.input_size,
        extra_tasks: args.tasks.clone(),
        intended_use: args.intended_use.clone(),
        probe_frames: args.probe_frames.max(1),
    };
    let done = convert(&args.input, &args.output, &spec, &opts)?;
    if !done.dropped.is_empty() {
        tracing::info!(
            "left out {} tensor(s) of facenet's identity classifier: {}",
            done.dropped.len(),
            done.dropped.join(", ")
        );
    }
    let m = &done.manifest;
    let report = serde_json::json!({
        "output": args.output,
        "architecture": m.architecture,
        "input": m.input,
        "tasks": m.task_names(),
        "dtype": m.dtype.as_str(),
        "intended_use": m.intended_use,
        "content_hash": m.content_hash,
        "dropped": done.dropped,
        "deviation_from_f32": done.deviation,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
