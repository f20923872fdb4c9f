//! `echonet run`: the bedside daemon. Source -> 10 fps sampler -> preprocessing -> inference ->
//! rolling window -> JSON Lines and the bedside display. Runs on the embedded default profile
//! (bundled model, the V4L2 device or else the built-in phantom) unless told otherwise; SIGINT and
//! SIGTERM finish the frame in flight, flush every output and exit 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use echonet_edge::capture::dicom::DicomSource;
use echonet_edge::capture::images::ImagesSource;
use echonet_edge::capture::phantom::PhantomSource;
use echonet_edge::capture::v4l2::V4l2Source;
use echonet_edge::capture::FrameSource;
use echonet_edge::config::{Config, SourceKind, EMBEDDED_DEFAULT};
use echonet_edge::explain::worker::SaliencyWorker;
use echonet_edge::frame::Image;
use echonet_edge::metrics::PipelineMetrics;
use echonet_edge::model::catalog::Catalog;
use echonet_edge::model::{read_bundle, EchoNetModel};
use echonet_edge::phantom::PhantomParams;
use echonet_edge::pipeline::{EstimateSink, Pipeline, RunLimits};
use echonet_edge::preprocess::{PreparedInput, Preprocessor};
use echonet_edge::publish::journal::{new_session_id, Journal, SessionInfo};
use echonet_edge::publish::jsonl::{open_target, JsonlWriter};
use echonet_edge::publish::{DisplayHub, DisplayServer, HubConfig, ServerConfig};

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
    /// Source kind: auto, phantom, dicom, images or v4l2 (overrides source.kind).
    #[arg(long)]
    pub source: Option<String>,
    /// For dicom: files/folders; for images: the folder; for v4l2: the device node.
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` (overrides model.device).
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16 or bf16 (overrides model.dtype).
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
    /// JSON Lines target, `-` for stdout (overrides publish.jsonl).
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

/// The bundle to load: configured, else the catalog's default.
pub fn resolve_bundle(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(b) = &config.model.bundle {
        return Ok(b.clone());
    }
    let dir = Catalog::default_dir();
    let catalog = Catalog::load(&dir.join("MANIFEST.toml"))?;
    match catalog
        .default
        .as_ref()
        .and_then(|id| catalog.models.iter().find(|m| &m.id == id))
    {
        Some(entry) => {
            // The catalog pins each shipped bundle's hash: a swapped or stale file is refused.
            let path = Catalog::entry_path(&dir, entry);
            let bundle = echonet_edge::model::read_bundle(&path)?;
            if bundle.manifest.content_hash != entry.content_hash {
                bail!(
                    "{}: content hash {} differs from {} in {} (entry {:?}): the file is not the bundle the catalog ships",
                    path.display(),
                    bundle.manifest.content_hash,
                    entry.content_hash,
                    dir.join("MANIFEST.toml").display(),
                    entry.id
                );
            }
            Ok(path)
        }
        None => bail!(
            "no model bundle: {} names no default model; pass --model BUNDLE (make run MODEL=...) or set model.bundle",
            dir.join("MANIFEST.toml").display()
        ),
    }
}

pub fn build_source(config: &Config, inputs: &[PathBuf]) -> anyhow::Result<Box<dyn FrameSource>> {
    let s = &config.source;
    let kind = match s.kind {
        SourceKind::Auto => {
            let device = inputs
                .first()
                .cloned()
                .unwrap_or_else(|| s.v4l2.device.clone());
            if device.exists() {
                SourceKind::V4l2
            } else {
                tracing::info!(
                    "no capture device at {}: using the built-in phantom",
                    device.display()
                );
                SourceKind::Phantom
            }
        }
        k => k,
    };
    Ok(match kind {
        SourceKind::Phantom => {
            let params = PhantomParams {
                fps: s.phantom.fps,
                ..PhantomParams::random(s.phantom.seed)
            };
            // The phantom's truth, so a demo can be checked against the display at a glance.
            tracing::info!(
                seed = s.phantom.seed,
                edv_ml = format!("{:.1}", params.edv_ml),
                esv_ml = format!("{:.1}", params.esv_ml),
                ef_percent = format!("{:.1}", params.ef_percent()),
                heart_rate_bpm = format!("{:.0}", params.heart_rate_bpm),
                "phantom patient (ground truth)"
            );
            Box::new(PhantomSource::new(params, s.pacing)?)
        }
        SourceKind::Dicom => {
            let paths: Vec<PathBuf> = if inputs.is_empty() {
                s.dicom.paths.clone()
            } else {
                inputs.to_vec()
            };
            if paths.is_empty() {
                bail!(
                    "source.kind is dicom but no files are given (source.dicom.paths or --input)"
                );
            }
            Box::new(DicomSource::from_paths(&paths, s.pacing, s.loop_playback)?)
        }
        SourceKind::Images => {
            let folder = inputs.first().cloned().or_else(|| s.images.folder.clone()).context("source.kind is images but no folder is given (source.images.folder or --input)")?;
            Box::new(ImagesSource::new(
                &folder,
                s.images.fps,
                s.pacing,
                s.loop_playback,
            ))
        }
        SourceKind::V4l2 | SourceKind::Auto => {
            let mut cfg = s.v4l2.clone();
            if let Some(d) = inputs.first() {
                cfg.device = d.clone();
            }
            Box::new(V4l2Source::new(cfg))
        }
    })
}

/// The display's address: loopback, or anything else only with `publish.allow_remote_display`
/// (the display has no login), and then with a warning.
pub fn display_address(config: &Config) -> anyhow::Result<std::net::SocketAddr> {
    let addr: std::net::SocketAddr = config.publish.http.parse().with_context(|| {
        format!(
            "publish.http {:?}: expected IP:port (e.g. 127.0.0.1:8470) or off",
            config.publish.http
        )
    })?;
    if !addr.ip().is_loopback() {
        if !config.publish.allow_remote_display {
            bail!(
                "publish.http {addr} is not a loopback address: the display has no login and \
                 would be open to the network; set publish.allow_remote_display = true to serve it there"
            );
        }
        tracing::warn!(
            "THE BEDSIDE DISPLAY IS OPEN TO THE NETWORK on {addr}, without a login \
             (publish.allow_remote_display = true): anyone who can reach this port sees the \
             estimates and the live frame"
        );
    }
    Ok(addr)
}

/// JSON Lines sink: every record is counted as written or failed (`/metrics`, the run summary);
/// a failure is logged at the first of a burst and raises a `jsonl` fault on the display
/// (`/healthz` 503) until a write succeeds again. Never fatal: the display carries on.
struct JsonlSink {
    writer: JsonlWriter,
    metrics: Arc<PipelineMetrics>,
    health: FaultLatch,
}

/// A sink's health as the display sees it: the first failure of a burst is logged and raises the
/// sink's named fault (`/healthz` 503); the first success after it logs the recovery and clears it.
struct FaultLatch {
    fault: &'static str,
    hub: Option<Arc<DisplayHub>>,
    failing: bool,
}

impl FaultLatch {
    fn new(fault: &'static str, hub: Option<Arc<DisplayHub>>) -> Self {
        Self {
            fault,
            hub,
            failing: false,
        }
    }

    /// `target` names what is written again (a file, the journal) in the recovery log line.
    fn succeeded(&mut self, target: &dyn std::fmt::Display) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("{target}: writing again");
            if let Some(hub) = &self.hub {
                hub.set_fault(self.fault, None);
            }
        }
    }

    fn failed(&mut self, error: String) {
        if !self.failing {
            self.failing = true;
            tracing::error!("{error}");
            if let Some(hub) = &self.hub {
                hub.set_fault(self.fault, Some(error));
            }
        }
    }
}

impl EstimateSink for JsonlSink {
    fn publish(&mut self, record: &serde_json::Value) {
        match self.writer.write(record) {
            Ok(()) => {
                self.metrics.records_written.fetch_add(1, Ordering::Relaxed);
                self.health.succeeded(&self.writer.target());
            }
            Err(e) => {
                self.metrics
                    .record_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.health.failed(e.to_string());
            }
        }
    }
}

/// Journal sink: each record appended (committed) before the display sees it. A failure (disk
/// full, read-only) is counted, logged at the first of a burst and raises a `journal` fault on the
/// display until an append succeeds again; the run and the display carry on. A journal that could
/// not be opened is tried again every `JOURNAL_RETRY`.
struct JournalSink {
    path: PathBuf,
    durability: echonet_edge::publish::journal::Durability,
    session: SessionInfo,
    journal: Option<Journal>,
    last_attempt: Option<std::time::Instant>,
    metrics: Arc<PipelineMetrics>,
    health: FaultLatch,
}

const JOURNAL_RETRY: Duration = Duration::from_secs(10);

impl JournalSink {
    fn open(&mut self) -> Result<(), echonet_edge::publish::journal::JournalError> {
        let mut journal = Journal::open(&self.path, self.durability)?;
        journal.begin_session(self.session.clone())?;
        self.journal = Some(journal);
        Ok(())
    }

    fn report(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.metrics
                    .records_journaled
                    .fetch_add(1, Ordering::Relaxed);
                self.health
                    .succeeded(&format_args!("journal {}", self.path.display()));
            }
            Err(e) => {
                self.metrics
                    .journal_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.health.failed(e);
            }
        }
    }
}

impl EstimateSink for JournalSink {
    fn publish(&mut self, record: &serde_json::Value) {
        if self.journal.is_none() {
            if self
                .last_attempt
                .is_some_and(|t| t.elapsed() < JOURNAL_RETRY)
            {
                self.report(Err(format!(
                    "journal {}: not open (retrying every {} s)",
                    self.path.display(),
                    JOURNAL_RETRY.as_secs()
                )));
                return;
            }
            self.last_attempt = Some(std::time::Instant::now());
            if let Err(e) = self.open() {
                self.report(Err(e.to_string()));
                return;
            }
        }
        let result = match self.journal.as_mut() {
            Some(j) => j.append(record).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        self.report(result);
    }
}

/// Feeds the bedside display. Its `/metrics` reads the pipeline's counters through the hub's
/// provider when scraped, so nothing is rendered per estimate here.
struct DisplaySink {
    hub: Arc<DisplayHub>,
}

impl EstimateSink for DisplaySink {
    fn publish(&mut self, record: &serde_json::Value) {
        if let Err(e) = self.hub.publish_estimate(record.clone()) {
            tracing::warn!("display: {e}");
        }
    }
    fn frame(&mut self, image: &Image, outline: Option<&[(f32, f32)]>) {
        if let Err(e) = self.hub.publish_frame(image, outline.map(|o| o.to_vec())) {
            tracing::warn!("display frame: {e}");
        }
    }
    fn model_input(&mut self, seq: u64, input: &Arc<PreparedInput>) {
        self.hub.set_model_input(seq, input.clone());
    }
    fn fault(&mut self, reason: &str) {
        self.hub.set_fault("pipeline", Some(reason.to_string()));
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let duration = args.duration.map(parse_duration).transpose()?;
    let config = load_config(args.config.as_ref(), &args.overrides())?;
    // Before anything slow: a display open to the network is refused (or warned about) first.
    let display_addr = (config.publish.http != "off")
        .then(|| display_address(&config))
        .transpose()?;
    let threads =
        echonet_edge::runtime::configure_cpu_threads(Some(config.model.threads).filter(|t| *t > 0));
    let bundle_path = resolve_bundle(&config)?;
    // Read and verify the bundle before anything starts, so a bad file fails fast and clearly.
    let bundle = read_bundle(&bundle_path)?;
    let run_args = super::RunArgs {
        device: config.model.device.clone(),
        dtype: (config.model.dtype != "auto").then(|| config.model.dtype.clone()),
        threads: Some(threads),
        conv: "auto".into(),
        no_cuda_graph: false,
    };
    let source = build_source(&config, &args.input)?;
    let mut preprocessor = Preprocessor::new(config.preprocess.clone())?;
    preprocessor.set_source_fps(source.info().nominal_fps);

    let metrics = Arc::new(PipelineMetrics::default());
    let jsonl = open_target(&config.publish.jsonl)?;
    let model_id = bundle_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    let mut sinks: Vec<Box<dyn EstimateSink>> = Vec::new();
    let mut display_hub = None;
    let server = if let Some(addr) = display_addr {
        let hub = DisplayHub::new(HubConfig {
            frame_policy: config.publish.frame,
            ..HubConfig::default()
        });
        // Saliency maps on demand: a low-priority thread with its own CPU copy of the network,
        // always on the CPU in f32 whatever `model.device` says, so it never touches the GPU
        // that the inference thread owns.
        hub.set_saliency_worker(SaliencyWorker::spawn(
            bundle.manifest.clone(),
            bundle.store.snapshot(),
        )?);
        let metrics_for_hub = metrics.clone();
        hub.set_metrics_provider(move || metrics_for_hub.render_prometheus());
        let server = DisplayServer::start(
            hub.clone(),
            ServerConfig {
                addr,
                ..Default::default()
            },
        )?;
        tracing::info!("bedside display at {}", server.url());
        display_hub = Some(hub.clone());
        sinks.push(Box::new(DisplaySink { hub }));
        Some(server)
    } else {
        None
    };
    if let Some(path) = &config.publish.journal {
        let info = source.info();
        let mut sink = JournalSink {
            path: path.clone(),
            durability: config.publish.journal_durability,
            session: SessionInfo {
                session_id: new_session_id(),
                exam_id: args.exam.clone(),
                started_at: echonet_edge::timefmt::rfc3339_millis(std::time::SystemTime::now()),
                model_id: model_id.clone().unwrap_or_default(),
                model_hash: bundle.manifest.content_hash.clone(),
                intended_use: bundle.manifest.intended_use.clone(),
                source_kind: info.kind.to_string(),
                source_name: info.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            journal: None,
            last_attempt: None,
            metrics: metrics.clone(),
            health: FaultLatch::new("journal", display_hub.clone()),
        };
        sink.last_attempt = Some(std::time::Instant::now());
        match sink.open() {
            Ok(()) => tracing::info!(
                journal = %path.display(),
                session = %sink.session.session_id,
                "results journal open"
            ),
            // The display must carry on: the fault shows on /healthz and the sink retries.
            // Not counted: `journal_write_failures` counts records that were not journaled.
            Err(e) => sink.health.failed(e.to_string()),
        }
        sinks.insert(0, Box::new(sink));
    }
    sinks.insert(
        0,
        Box::new(JsonlSink {
            writer: jsonl,
            metrics: metrics.clone(),
            health: FaultLatch::new("jsonl", display_hub),
        }),
    );

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }
    let pipeline = Pipeline {
        model_id,
        config: config.pipeline.clone(),
        window: config.window.clone(),
        limits: RunLimits {
            duration,
            frames: args.frames,
        },
        metrics: metrics.clone(),
        stop,
    };
    // Device choice and dtype are settled here; the device itself is opened by `build`, which
    // runs on the inference thread: that thread creates, owns and alone uses it (candle's CUDA
    // device binds its context and stream to the thread that uses it).
    let plan = run_args.plan(bundle.manifest.dtype.candle())?;
    tracing::info!(
        model = %bundle_path.display(), intended_use = %bundle.manifest.intended_use,
        device = %plan.choice, dtype = ?plan.dtype, threads, "starting"
    );
    let bundle = Arc::new(Mutex::new(Some(bundle)));
    let build = move || -> anyhow::Result<EchoNetModel> {
        let b = bundle
            .lock()
            .map_err(|_| anyhow::anyhow!("bundle lock poisoned"))?
            .take()
            .context("model built twice")?;
        let model = plan.build_model(&b)?;
        tracing::info!(device = ?model.device(), "device opened on the inference thread");
        Ok(model)
    };
    let summary = pipeline.run(source, Box::new(preprocessor), build, sinks)?;
    if let Some(s) = server {
        s.shutdown();
    }
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
    if config.publish.jsonl != "-" {
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
