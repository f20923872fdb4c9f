//! `echonet convert INPUT OUTPUT`: PyTorch/safetensors weights to a verified bundle; with a
//! reduced `--dtype`, reports how far the reduced model's outputs move on a probe batch.
//!
//! Heads (`heads.<task>.weight` / `.bias`) read the output of `last_bn`: the trunk's 512-wide
//! batch-normalised embedding, not facenet's L2-normalised `forward()`; a head trained on the
//! normalised embedding gives wrong numbers here. A regression head's output is reported as
//! `raw * scale + offset`; with no `scale`/`offset` in the config that is the raw output
//! (scale 1, offset 0), which the command says. A network with no heads converts (features
//! only) with a warning.

use std::path::PathBuf;
use std::process::ExitCode;

use echonet_edge::model::import::{convert, ConvertOptions, ConvertSpec};
use echonet_edge::model::{StorageDtype, TaskKind, TaskSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PyTorch state dict (.pt/.pth) or safetensors file with facenet-pytorch parameter names.
    pub input: PathBuf,
    /// Bundle to write (.safetensors).
    pub output: PathBuf,
    /// TOML with `intended_use`, `[input]`, `[provenance]` and `[[task]]` entries (a task's
    /// `scale` and `offset` map the raw head output to its unit; default 1 and 0: the raw output).
    /// Heads read `last_bn`'s output (the batch-normalised embedding), not facenet's
    /// L2-normalised `forward()`.
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
    let notes = conversion_notes(&done.manifest.tasks);
    for note in &notes {
        tracing::warn!("{}: {note}", args.output.display());
    }
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
        "notes": notes,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// What a user should know about the converted heads: none at all, or a regression head
/// reported as its raw output because no scaling was given.
fn conversion_notes(tasks: &[TaskSpec]) -> Vec<String> {
    if tasks.is_empty() {
        return vec![
            "the network has no heads (no `heads.<task>.weight` tensors): the bundle gives \
             trunk features only and no estimates; add heads trained on `last_bn`'s output"
                .into(),
        ];
    }
    tasks
        .iter()
        .filter(|t| t.kind == TaskKind::Regression && t.scale == 1.0 && t.offset == 0.0)
        .map(|t| {
            format!(
                "task {}: no scale/offset given, so it reports the head's raw output (scale 1, \
                 offset 0) in {}; set `scale` and `offset` in the --config TOML's [[task]] if \
                 the head was trained on scaled targets",
                t.name, t.unit
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_heads_and_unscaled_regression_heads_are_said() {
        let notes = conversion_notes(&[]);
        assert!(notes[0].contains("no heads"), "{notes:?}");
        let mut ef = TaskSpec::echonet_default("ef").unwrap();
        ef.scale = 1.0;
        ef.offset = 0.0;
        let notes = conversion_notes(std::slice::from_ref(&ef));
        assert!(notes[0].contains("raw output"), "{notes:?}");
        ef.scale = 10.0;
        assert!(conversion_notes(&[ef]).is_empty());
    }
}
