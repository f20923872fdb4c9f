//! `echonet run`: the bedside daemon. Source -> 10 fps sampler -> preprocessing -> inference ->
//! rolling window -> JSON Lines and the bedside display. Runs on the embedded default profile
//! (bundled model, the V4L2 device or else the built-in phantom) unless told otherwise; SIGINT and
//! SIGTERM finish the frame in flight, flush every output and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use echonet_edge::capture::dicom::DicomSource;
use echonet_edge::capture::images::ImagesSource;
use echonet_edge::capture::phantom::{PhantomParams, PhantomSource};
use echonet_edge::capture::v4l2::V4l2Source;
use echonet_edge::capture::FrameSource;
use echonet_edge::config::{Config, SourceKind, EMBEDDED_DEFAULT};
use echonet_edge::explain::worker::SaliencyWorker;
use echonet_edge::frame::Image;
use echonet_edge::metrics::PipelineMetrics;
use echonet_edge::model::catalog::Catalog;
use echonet_edge::model::{read_bundle, EchoNetModel};
use echonet_edge::pipeline::{EstimateSink, Pipeline, RunLimits};
use echonet_edge::preprocess::{PreparedInput, Preprocessor};
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
    #[arg(long)]
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

/// JSON Lines sink: a failed write is logged once per burst and counted, never fatal.
struct JsonlSink {
    writer: JsonlWriter,
    failures: u64,
}

impl EstimateSink for JsonlSink {
    fn publish(&mut self, record: &serde_json::Value) {
        if let Err(e) = self.writer.write(record) {
            if self.failures == 0 {
                tracing::error!("{e}");
            }
            self.failures += 1;
        }
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_ref(), &args.overrides())?;
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
    let mut sinks: Vec<Box<dyn EstimateSink>> = vec![Box::new(JsonlSink {
        writer: open_target(&config.publish.jsonl)?,
        failures: 0,
    })];
    let server = if config.publish.http != "off" {
        let addr = config.publish.http.parse().with_context(|| {
            format!(
                "publish.http {:?}: expected host:port or off",
                config.publish.http
            )
        })?;
        let hub = DisplayHub::new(HubConfig::default());
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
        sinks.push(Box::new(DisplaySink { hub }));
        Some(server)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }
    let pipeline = Pipeline {
        model_id: bundle_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned()),
        config: config.pipeline.clone(),
        window: config.window.clone(),
        limits: RunLimits {
            duration: args.duration.map(Duration::from_secs_f64),
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
    Ok(ExitCode::SUCCESS)
}
