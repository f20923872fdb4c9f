//! `echonet`: the command-line edge of echonet-edge. Errors become `anyhow` here and nowhere else.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "echonet",
    version,
    about = "EchoNet echocardiography model at the bedside"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a bundle on a frame (PNG/JPEG) or a normalised float32 .npy batch; JSON on stdout.
    Infer(cli::infer::Args),
    /// Turn a PyTorch state dict (.pt/.pth) or plain safetensors into a model bundle.
    Convert(cli::convert::Args),
    /// An int8 bundle from an f32 one: activation scales calibrated on clips or phantom
    /// patients, weights per output channel, drift on held-out frames recorded in the bundle.
    Quantize(cli::quantize::Args),
    /// Fit the out-of-distribution statistics (pooled-feature mean, principal directions,
    /// threshold on validation frames) onto a bundle, from clips or phantom patients.
    OodFit(cli::ood_fit::Args),
    /// Time one forward pass: median and p90 ms/frame, frames/s.
    Bench(cli::bench::Args),
    /// Check devices, CUDA, bundles and configuration.
    Doctor(cli::doctor::Args),
    /// Write synthetic apical-4-chamber clips (multi-frame DICOM) with their ground-truth CSVs.
    Phantom(cli::phantom::Args),
    /// List a capture device's formats, sizes and rates, capture a few seconds, report the real
    /// frame rate, timestamp jitter, dropped frames and the format the daemon would use.
    ProbeCapture(cli::probe_capture::Args),
    /// The bedside daemon: live capture to rolling EF/ESV/EDV estimates, JSON Lines and display.
    Run(cli::run::Args),
    /// Offline studies: one JSON result per DICOM clip (20 frames at 10 fps from its start).
    Predict(cli::predict::Args),
    /// The paper's metrics (R², MAE, Bland-Altman, AUC) of a bundle on a held-out dataset.
    Eval(cli::eval::Args),
    /// Train EchoNet heads (the paper's recipe) and write the best validation network as a bundle.
    Train(cli::train::Args),
    /// SmoothGrad saliency maps of one task over a frame or a clip's sampled frames (PNG + .npy).
    Saliency(cli::explain::SaliencyArgs),
    /// Occlusion sensitivity maps: how a task's output moves when a black patch covers each place.
    Occlusion(cli::explain::OcclusionArgs),
    /// One session of the results journal as CSV, JSON and a FHIR Observation bundle.
    Export(cli::export::Args),
    /// Check a deployment profile as `run` would load it (same options): every setting and its
    /// range, the display address, the model bundle and its hash, the inputs, the journal.
    CheckConfig(cli::run::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ECHONET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(a) => cli::infer::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Quantize(a) => cli::quantize::run(a),
        Command::OodFit(a) => cli::ood_fit::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Doctor(a) => cli::doctor::run(a),
        Command::Phantom(a) => cli::phantom::run(a),
        Command::ProbeCapture(a) => cli::probe_capture::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Predict(a) => cli::predict::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Saliency(a) => cli::explain::saliency(a),
        Command::Occlusion(a) => cli::explain::occlusion(a),
        Command::Export(a) => cli::export::run(a),
        Command::CheckConfig(a) => cli::run::check_config(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
