//! The bedside daemon assembled from a `Config`: the model bundle resolved (configured, else the
//! catalog's default, its hash checked), the frame source built, the sinks (JSON Lines, results
//! journal, bedside display with its saliency worker) opened, and the pipeline run. `echonet run`
//! only parses its arguments into a `Config`, calls this, and prints the summary; tests assemble
//! the daemon the same way without spawning the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::capture::dicom::DicomSource;
use crate::capture::images::ImagesSource;
use crate::capture::phantom::PhantomSource;
use crate::capture::v4l2::V4l2Source;
use crate::capture::FrameSource;
use crate::config::{Config, SourceKind};
use crate::explain::worker::SaliencyWorker;
use crate::frame::Image;
use crate::metrics::PipelineMetrics;
use crate::model::catalog::Catalog;
use crate::model::{read_bundle, Bundle, EchoNetModel, ModelError};
use crate::phantom::{PhantomParams, PhantomView};
use crate::pipeline::{BoxError, EstimateSink, Pipeline, PipelineError, RunLimits, RunSummary};
use crate::preprocess::{ModelInput, PreprocessError, Preprocessor};
use crate::publish::journal::{new_session_id, Journal, SessionInfo};
use crate::publish::jsonl::{open_target, JsonlError, JsonlWriter};
use crate::publish::record::EstimateRecord;
use crate::publish::{DisplayHub, DisplayServer, HubConfig, ServerConfig};

/// Why the daemon could not be assembled or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "no model bundle given, and no models folder at {dir}: pass --model BUNDLE (or set \
         model.bundle), or set ECHONET_MODELS_DIR to the folder that holds MANIFEST.toml and the \
         shipped bundles ({source})"
    )]
    NoModelsFolder {
        dir: PathBuf,
        source: Box<ModelError>,
    },
    #[error(
        "no model bundle: {manifest} names no default model; pass --model BUNDLE (make run \
         MODEL=...) or set model.bundle"
    )]
    NoDefaultModel { manifest: PathBuf },
    #[error("{0}")]
    CatalogHash(Box<CatalogMismatch>),
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Display(String),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Jsonl(#[from] JsonlError),
    #[error("starting the saliency worker: {0}")]
    Saliency(std::io::Error),
    /// Building the model (the caller's builder) or starting the pipeline.
    #[error(transparent)]
    Run(#[from] PipelineError),
}

impl From<ModelError> for DaemonError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// A shipped bundle whose contents are not the ones the catalog pins.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: content hash {found} differs from {expected} in {manifest} (entry {entry:?}): the \
     file is not the bundle the catalog ships"
)]
pub struct CatalogMismatch {
    pub file: PathBuf,
    pub found: String,
    pub expected: String,
    pub manifest: PathBuf,
    pub entry: String,
}

/// The bundle to load: configured, else the catalog's default (its pinned hash checked).
pub fn resolve_bundle(config: &Config) -> Result<PathBuf, DaemonError> {
    if let Some(b) = &config.model.bundle {
        return Ok(b.clone());
    }
    let dir = Catalog::default_dir();
    let manifest = dir.join("MANIFEST.toml");
    let catalog = Catalog::load(&manifest).map_err(|source| DaemonError::NoModelsFolder {
        dir: dir.clone(),
        source: Box::new(source),
    })?;
    let entry = catalog
        .default
        .as_ref()
        .and_then(|id| catalog.models.iter().find(|m| &m.id == id))
        .ok_or_else(|| DaemonError::NoDefaultModel {
            manifest: manifest.clone(),
        })?;
    // The catalog pins each shipped bundle's hash: a swapped or stale file is refused.
    let path = Catalog::entry_path(&dir, entry);
    let bundle = read_bundle(&path)?;
    if bundle.manifest.content_hash != entry.content_hash {
        return Err(DaemonError::CatalogHash(Box::new(CatalogMismatch {
            file: path,
            found: bundle.manifest.content_hash,
            expected: entry.content_hash.clone(),
            manifest,
            entry: entry.id.clone(),
        })));
    }
    Ok(path)
}

/// The source kind `config` names, `auto` resolved: the V4L2 device when there is one, else the
/// built-in phantom, with the reason for the fallback.
pub fn resolve_source_kind(config: &Config, inputs: &[PathBuf]) -> (SourceKind, Option<String>) {
    let s = &config.source;
    match s.kind {
        SourceKind::Auto => {
            let device = inputs
                .first()
                .cloned()
                .unwrap_or_else(|| s.v4l2.device.clone());
            if device.exists() {
                (SourceKind::V4l2, None)
            } else {
                (
                    SourceKind::Phantom,
                    Some(format!(
                        "no capture device at {}: playing the built-in phantom (choose with \
                         --source, or --input DEVICE)",
                        device.display()
                    )),
                )
            }
        }
        k => (k, None),
    }
}

/// The frame source `config` names (`inputs` override its paths): `auto` is the V4L2 device when
/// there is one, else the built-in phantom.
pub fn build_source(
    config: &Config,
    inputs: &[PathBuf],
) -> Result<Box<dyn FrameSource>, DaemonError> {
    let s = &config.source;
    // The fallback's reason is told once, by `run_daemon`'s notice.
    let (kind, _fallback) = resolve_source_kind(config, inputs);
    Ok(match kind {
        SourceKind::Phantom => {
            // The live demo always shows an apical four-chamber view: a patient drawn in another
            // view would only ever be withheld as `not_a4c` (clips in other views are for
            // training and evaluating the view gate).
            let params = PhantomParams {
                fps: s.phantom.fps,
                view: PhantomView::A4c,
                ..PhantomParams::random(s.phantom.seed)
            };
            // The phantom's truth, so a demo can be checked against the display at a glance.
            tracing::info!(
                seed = s.phantom.seed,
                edv_ml = format!("{:.1}", params.edv_ml),
                esv_ml = format!("{:.1}", params.esv_ml),
                ef_percent = format!("{:.1}", params.ef_percent()),
                heart_rate_bpm = format!("{:.0}", params.heart_rate_bpm),
                pacemaker = params.pacemaker,
                la_dilation = params.la_dilation(),
                lv_wall_normal = params.lv_wall_normal(),
                "phantom patient (ground truth)"
            );
            Box::new(
                PhantomSource::new(params, s.pacing)
                    .map_err(|e| DaemonError::Source(e.to_string()))?,
            )
        }
        SourceKind::Dicom => {
            let paths: Vec<PathBuf> = if inputs.is_empty() {
                s.dicom.paths.clone()
            } else {
                inputs.to_vec()
            };
            if paths.is_empty() {
                return Err(DaemonError::Source(
                    "source.kind is dicom but no files are given (source.dicom.paths or --input)"
                        .into(),
                ));
            }
            Box::new(
                DicomSource::from_paths(&paths, s.pacing, s.loop_playback)
                    .map_err(|e| DaemonError::Source(e.to_string()))?,
            )
        }
        SourceKind::Images => {
            let folder = inputs
                .first()
                .cloned()
                .or_else(|| s.images.folder.clone())
                .ok_or_else(|| {
                    DaemonError::Source(
                        "source.kind is images but no folder is given (source.images.folder or \
                         --input)"
                            .into(),
                    )
                })?;
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
pub fn display_address(config: &Config) -> Result<SocketAddr, DaemonError> {
    let addr: SocketAddr = config.publish.http.parse().map_err(|_| {
        DaemonError::Display(format!(
            "publish.http {:?}: expected IP:port (e.g. 127.0.0.1:8470) or off",
            config.publish.http
        ))
    })?;
    if !addr.ip().is_loopback() {
        if !config.publish.allow_remote_display {
            return Err(DaemonError::Display(format!(
                "publish.http {addr} is not a loopback address: the display has no login and \
                 would be open to the network; set publish.allow_remote_display = true to serve it there"
            )));
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
    fn publish(&mut self, record: &EstimateRecord) {
        let written = match record.to_json() {
            Ok(line) => self.writer.write_line(&line).map_err(|e| e.to_string()),
            Err(e) => Err(format!(
                "{}: record not written, it cannot be made JSON: {e}",
                self.writer.target()
            )),
        };
        match written {
            Ok(()) => {
                self.metrics.records_written.fetch_add(1, Ordering::Relaxed);
                self.health.succeeded(&self.writer.target());
            }
            Err(e) => {
                self.metrics
                    .record_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.health.failed(e);
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
    durability: crate::publish::journal::Durability,
    session: SessionInfo,
    journal: Option<Journal>,
    last_attempt: Option<std::time::Instant>,
    metrics: Arc<PipelineMetrics>,
    health: FaultLatch,
}

const JOURNAL_RETRY: Duration = Duration::from_secs(10);

impl JournalSink {
    fn open(&mut self) -> Result<(), crate::publish::journal::JournalError> {
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
    fn publish(&mut self, record: &EstimateRecord) {
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
    fn publish(&mut self, record: &EstimateRecord) {
        if let Err(e) = self.hub.publish_estimate(record) {
            tracing::warn!("display: {e}");
        }
    }
    fn frame(&mut self, image: &Image, outline: Option<&[(f32, f32)]>) {
        if let Err(e) = self.hub.publish_frame(image, outline.map(|o| o.to_vec())) {
            tracing::warn!("display frame: {e}");
        }
    }
    fn model_input(&mut self, input: &ModelInput) {
        self.hub.set_model_input(input.clone());
    }
    fn fault(&mut self, reason: &str) {
        self.hub.set_fault("pipeline", Some(reason.to_string()));
    }
}

/// What a daemon run needs besides its `Config`.
pub struct DaemonOptions {
    /// Source paths overriding the profile's (`--input`).
    pub inputs: Vec<PathBuf>,
    /// Exam id recorded with every journal row.
    pub exam: Option<String>,
    pub limits: RunLimits,
    /// Set to finish the frame in flight, flush every sink and return (SIGINT, SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// Told, in words for the person who started the run, where the display is and when the
    /// source fell back to the phantom (and why). The CLI prints these on stderr.
    pub notices: Option<Notices>,
}

/// Where a daemon run's notices for the person go (see [`DaemonOptions::notices`]).
pub type Notices = Box<dyn Fn(&str) + Send + Sync>;

/// Builds the model from the bundle on the inference thread (which then owns the device).
pub type ModelBuilder = Box<dyn FnOnce(&Bundle) -> Result<EchoNetModel, BoxError> + Send>;

/// Assembles the daemon from `config` and runs it until the source ends, `stop` is set or a
/// limit is reached; returns the run's summary (stage failures and write failures are in it,
/// for the caller to turn into an exit status).
pub fn run_daemon(
    config: &Config,
    options: DaemonOptions,
    build_model: ModelBuilder,
) -> Result<RunSummary, DaemonError> {
    // Before anything slow: a display open to the network is refused (or warned about) first.
    let display_addr = (config.publish.http != "off")
        .then(|| display_address(config))
        .transpose()?;
    let bundle_path = resolve_bundle(config)?;
    // Read and verify the bundle before anything starts, so a bad file fails fast and clearly.
    let bundle = read_bundle(&bundle_path)?;
    // Each notice reaches the person once: through the caller's channel (the CLI prints it on
    // stderr, beside the log), else as a log line.
    let notice = |text: &str| match &options.notices {
        Some(n) => n(text),
        None => tracing::info!("{text}"),
    };
    if let (_, Some(why)) = resolve_source_kind(config, &options.inputs) {
        notice(&format!("source: {why}"));
    }
    let source = build_source(config, &options.inputs)?;
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
        hub.set_saliency_worker(
            SaliencyWorker::spawn(bundle.manifest.clone(), bundle.store.snapshot())
                .map_err(DaemonError::Saliency)?,
        );
        let metrics_for_hub = metrics.clone();
        hub.set_metrics_provider(move || metrics_for_hub.render_prometheus());
        let server = DisplayServer::start(
            hub.clone(),
            ServerConfig {
                addr,
                ..Default::default()
            },
        )
        .map_err(|e| DaemonError::Display(e.to_string()))?;
        notice(&format!("bedside display: {}", server.url()));
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
                exam_id: options.exam.clone(),
                started_at: crate::timefmt::rfc3339_millis(std::time::SystemTime::now()),
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
    if let Some(writer) = jsonl {
        sinks.insert(
            0,
            Box::new(JsonlSink {
                writer,
                metrics: metrics.clone(),
                health: FaultLatch::new("jsonl", display_hub),
            }),
        );
    }

    let pipeline = Pipeline {
        model_id,
        config: config.pipeline.clone(),
        window: config.window.clone(),
        limits: options.limits,
        metrics,
        stop: options.stop,
    };
    tracing::info!(
        model = %bundle_path.display(), intended_use = %bundle.manifest.intended_use, "starting"
    );
    let bundle = Arc::new(Mutex::new(Some(bundle)));
    let build = move || -> Result<EchoNetModel, BoxError> {
        let b = bundle
            .lock()
            .map_err(|_| "bundle lock poisoned")?
            .take()
            .ok_or("model built twice")?;
        build_model(&b)
    };
    let summary = pipeline
        .run(source, Box::new(preprocessor), build, sinks)
        .map_err(DaemonError::Run);
    if let Some(s) = server {
        s.shutdown();
    }
    summary
}
