//! `echonet run`: the bedside daemon's command line. Parses the arguments into a `Config`
//! (profile + overrides), hands it to the library's `daemon::run_daemon` (which assembles and
//! runs source -> sampler -> preprocessing -> inference -> window -> JSON Lines, journal and the
//! bedside display), and prints the run summary. SIGINT and SIGTERM finish the frame in flight,
//! flush every output and exit 0. `echonet check-config` checks the same settings without
//! starting anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use echonet_edge::config::{Config, SourceKind, EMBEDDED_DEFAULT};
use echonet_edge::daemon::{
    display_address, resolve_bundle, run_daemon, DaemonOptions, ModelBuilder,
};
use echonet_edge::model::read_bundle;
use echonet_edge::pipeline::RunLimits;
use echonet_edge::publish::journal::Journal;
use echonet_edge::publish::jsonl::JSONL_OFF;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Deployment profile (TOML); default: the embedded firmware-config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any setting: `--set section.key=value` (repeatable), e.g. `--set window.min_valid_frames=14`.
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Model bundle (overrides model.bundle).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Source kind: auto, phantom, dicom, images or v4l2 (overrides source.kind). Replayed
    /// sources (dicom, images) loop forever by default, as a demo cart does; add
    /// `--set source.loop_playback=false` to play them once and exit.
    #[arg(long)]
    pub source: Option<String>,
    /// For dicom: files/folders; for images: the folder; for v4l2: the device node.
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` (overrides model.device).
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16, bf16 or int8 (overrides model.dtype).
    #[arg(long)]
    pub dtype: Option<String>,
    /// CPU threads (overrides model.threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, allow_hyphen_values = true)]
    pub duration: Option<f64>,
    /// Stop after this many captured frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// JSON Lines target: `-` for stdout, `off` for none, else a file appended to (overrides
    /// publish.jsonl).
    #[arg(long)]
    pub jsonl: Option<String>,
    /// Display server address or `off` (overrides publish.http).
    #[arg(long)]
    pub http: Option<String>,
    /// Write the end-of-run summary as JSON to this file too.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Results journal, SQLite (overrides publish.journal).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Exam id recorded with every journal row (an accession number, say); none by default.
    #[arg(long)]
    pub exam: Option<String>,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The profile with every command-line override applied, checked.
pub fn load_config(path: Option<&PathBuf>, overrides: &[String]) -> anyhow::Result<Config> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.clone(),
        ),
        None => (
            EMBEDDED_DEFAULT.to_string(),
            PathBuf::from("<embedded default profile>"),
        ),
    };
    Ok(Config::from_toml_with_overrides(&text, &name, overrides)?)
}

/// Longest `--duration` accepted, seconds (about 31 years: effectively unbounded, but a number
/// a `Duration` can hold).
const MAX_DURATION_S: f64 = 1e9;

/// `--duration` as a `Duration`: a finite number of seconds above 0.
pub fn parse_duration(seconds: f64) -> anyhow::Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_DURATION_S) {
        bail!("--duration {seconds}: expected a number of seconds above 0 and at most {MAX_DURATION_S:e}");
    }
    Duration::try_from_secs_f64(seconds)
        .with_context(|| format!("--duration {seconds}: not representable as a duration"))
}

impl Args {
    fn overrides(&self) -> Vec<String> {
        let mut o = self.overrides.clone();
        let mut set = |k: &str, v: String| o.push(format!("{k}={v}"));
        if let Some(m) = &self.model {
            set("model.bundle", quoted(&m.display().to_string()));
        }
        if let Some(s) = &self.source {
            set("source.kind", quoted(s));
        }
        if let Some(d) = &self.device {
            set("model.device", quoted(d));
        }
        if let Some(d) = &self.dtype {
            set("model.dtype", quoted(d));
        }
        if let Some(t) = self.threads {
            set("model.threads", t.to_string());
        }
        if let Some(j) = &self.jsonl {
            set("publish.jsonl", quoted(j));
        }
        if let Some(h) = &self.http {
            set("publish.http", quoted(h));
        }
        if let Some(j) = &self.journal {
            set("publish.journal", quoted(&j.display().to_string()));
        }
        o
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let duration = args.duration.map(parse_duration).transpose()?;
    let config = load_config(args.config.as_ref(), &args.overrides())?;
    let threads =
        echonet_edge::runtime::configure_cpu_threads(Some(config.model.threads).filter(|t| *t > 0));
    let run_args = super::RunArgs {
        device: config.model.device.clone(),
        dtype: (config.model.dtype != "auto").then(|| config.model.dtype.clone()),
        threads: Some(threads),
        conv: "auto".into(),
        no_cuda_graph: false,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }
    // Device choice and dtype are settled when the bundle is known; the device itself is opened
    // by the builder, which runs on the inference thread: that thread creates, owns and alone
    // uses it (candle's CUDA device binds its context and stream to the thread that uses it).
    let build_model: ModelBuilder = Box::new(move |bundle| {
        let build = || -> anyhow::Result<_> {
            let plan = run_args.plan(bundle.manifest.dtype.candle())?;
            tracing::info!(device = %plan.choice, dtype = ?plan.dtype, threads, "opening the device");
            let model = plan.build_model(bundle)?;
            tracing::info!(device = ?model.device(), "device opened on the inference thread");
            Ok(model)
        };
        build().map_err(Into::into)
    });
    let summary = run_daemon(
        &config,
        DaemonOptions {
            inputs: args.input.clone(),
            exam: args.exam.clone(),
            limits: RunLimits {
                duration,
                frames: args.frames,
            },
            stop,
            notices: Some(Box::new(|text: &str| eprintln!("{text}"))),
        },
        build_model,
    )?;
    let text = serde_json::to_string_pretty(&summary)?;
    eprintln!("run summary:\n{text}");
    if let Some(path) = &args.summary {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if !summary.stage_failures.is_empty() {
        // Non-zero, so a supervisor (systemd Restart=on-failure) restarts the daemon.
        bail!("the pipeline failed: {}", summary.stage_failures.join("; "));
    }
    if summary.record_write_failures > 0 {
        bail!(
            "{} of {} records could not be written to {}",
            summary.record_write_failures,
            summary.record_write_failures + summary.records_written,
            config.publish.jsonl
        );
    }
    if summary.journal_write_failures > 0 {
        let journal = config.publish.journal.as_deref().unwrap_or(Path::new("-"));
        bail!(
            "{} of {} records could not be journaled to {}",
            summary.journal_write_failures,
            summary.journal_write_failures + summary.records_journaled,
            journal.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `echonet check-config`: everything `run` would check before starting, and a little more,
/// without opening a device or starting a thread. Prints one `ok` line per check; the first
/// failure is the error (exit 2).
pub fn check_config(args: Args) -> anyhow::Result<ExitCode> {
    let ok = |what: String| println!("ok  {what}");
    if let Some(d) = args.duration {
        parse_duration(d)?;
    }
    let config = load_config(args.config.as_ref(), &args.overrides())?;
    ok(format!(
        "settings: {} (every value in its range)",
        args.config
            .as_ref()
            .map_or("<embedded default profile>".into(), |p| p
                .display()
                .to_string())
    ));
    if config.publish.http == "off" {
        ok("display: off".into());
    } else {
        let addr = display_address(&config)?;
        ok(format!(
            "display: http://{addr}/ (frame policy {:?})",
            config.publish.frame
        ));
    }
    let bundle_path = resolve_bundle(&config)?;
    let bundle = read_bundle(&bundle_path)?;
    ok(format!(
        "model: {} ({}, {})",
        bundle_path.display(),
        bundle.manifest.content_hash,
        bundle.manifest.intended_use
    ));
    let s = &config.source;
    match s.kind {
        SourceKind::Dicom => {
            let paths = if args.input.is_empty() {
                s.dicom.paths.clone()
            } else {
                args.input.clone()
            };
            anyhow::ensure!(
                !paths.is_empty(),
                "source.kind is dicom but no files are given (source.dicom.paths or --input)"
            );
            for p in &paths {
                if !p.is_dir() {
                    echonet_edge::safe_file::check_regular(p)?;
                }
            }
            ok(format!("source: dicom, {} path(s)", paths.len()));
        }
        SourceKind::Images => {
            let folder = args
                .input
                .first()
                .cloned()
                .or_else(|| s.images.folder.clone())
                .context("source.kind is images but no folder is given")?;
            anyhow::ensure!(
                folder.is_dir(),
                "source.images.folder {}: not a folder",
                folder.display()
            );
            ok(format!("source: images in {}", folder.display()));
        }
        SourceKind::V4l2 | SourceKind::Auto => {
            let device = args
                .input
                .first()
                .cloned()
                .unwrap_or_else(|| s.v4l2.device.clone());
            use std::os::unix::fs::FileTypeExt;
            match std::fs::metadata(&device) {
                Ok(m) if m.file_type().is_char_device() => {
                    ok(format!("source: capture device {}", device.display()))
                }
                Ok(_) => bail!(
                    "source.v4l2.device {}: not a character device",
                    device.display()
                ),
                Err(e) if s.kind == SourceKind::V4l2 => {
                    bail!("source.v4l2.device {}: {e}", device.display())
                }
                Err(_) => ok(format!(
                    "source: auto; no device at {}, the phantom would play",
                    device.display()
                )),
            }
        }
        SourceKind::Phantom => ok(format!("source: phantom, seed {}", s.phantom.seed)),
    }
    if config.publish.jsonl == JSONL_OFF {
        ok("jsonl: off".into());
    } else if config.publish.jsonl != "-" {
        let path = PathBuf::from(&config.publish.jsonl);
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        anyhow::ensure!(
            dir.is_dir(),
            "publish.jsonl {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
        ok(format!("jsonl: {}", path.display()));
    }
    if let Some(path) = &config.publish.journal {
        if path.exists() {
            let journal = Journal::open_existing(path)?;
            let integrity = journal.integrity_check()?;
            anyhow::ensure!(
                integrity == "ok",
                "journal {}: integrity check: {integrity}",
                path.display()
            );
            ok(format!(
                "journal: {} ({} session(s), integrity ok)",
                path.display(),
                journal.sessions()?.len()
            ));
        } else {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            anyhow::ensure!(
                dir.is_dir(),
                "publish.journal {}: folder {} does not exist",
                path.display(),
                dir.display()
            );
            ok(format!("journal: {} (will be created)", path.display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
