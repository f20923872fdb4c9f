//! `echonet probe-capture DEVICE`: lists a capture device's formats, sizes and frame intervals,
//! captures for a few seconds and reports the real frame rate, timestamp jitter, dropped
//! sequence numbers and the format the daemon would use (src/capture/v4l2/probe.rs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use echonet_edge::capture::v4l2::probe::probe;
use echonet_edge::capture::v4l2::V4l2Config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Device node, e.g. /dev/video0.
    pub device: PathBuf,
    /// Seconds to capture for the rate and jitter figures.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Size to negotiate (as source.v4l2.width/height); default: the device's current size.
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// Pixel format to insist on (as source.v4l2.fourcc).
    #[arg(long)]
    pub fourcc: Option<String>,
    /// Longest wait for one frame, ms.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        anyhow::bail!(
            "--seconds {}: expected more than 0 and at most 3600",
            args.seconds
        );
    }
    let config = V4l2Config {
        device: args.device.clone(),
        width: args.width,
        height: args.height,
        fourcc: args.fourcc.clone(),
        timeout_ms: args.timeout_ms,
        ..Default::default()
    };
    let report = probe(&config, args.seconds)
        .with_context(|| format!("probing {}", args.device.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    // A device that lists formats but delivers no frame is not ready for a cart.
    let captured = report.capture.as_ref().is_some_and(|c| c.frames > 0);
    Ok(if captured && report.capture_error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
