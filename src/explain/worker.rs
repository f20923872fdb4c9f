//! The bedside's saliency worker: one low-priority thread owning its own CPU copy of the trainable
//! network, fed through a one-slot channel. A request while another is queued or running is
//! refused at once (busy, counted) rather than queued, so the display can never pile work up; the
//! work runs in a one-thread pool at the lowest scheduling priority, so live inference keeps the
//! cores it had.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use crossbeam_channel::{bounded, Sender, TrySendError};

use super::{display_scale, overlay, png_bytes, Colouring, Explainer, SmoothGrad};
use crate::model::Manifest;
use crate::preprocess::{PreparedInput, Sector};
use crate::train::TrainableIrv1;

/// Why no map came back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("a saliency map is already being computed; try again when it is done")]
    Busy,
    #[error("{0}")]
    BadRequest(String),
    #[error("saliency failed: {0}")]
    Failed(String),
    #[error("the saliency worker is not running: {0}")]
    Unavailable(String),
}

/// A finished map: PNG bytes (the map over the model input) and how long it took.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub png: Vec<u8>,
    pub compute: Duration,
    pub task: String,
}

struct Job {
    input: Arc<PreparedInput>,
    /// The sector the input was cut from: the map has no mass outside it.
    sector: Option<Arc<Sector>>,
    task: String,
    samples: usize,
    reply: Sender<Result<Rendered, Refusal>>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    busy: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    compute_ms_total: AtomicU64,
}

/// Handle on the worker thread; cheap to share (`Arc`). Dropping the last handle ends the thread.
pub struct SaliencyWorker {
    tx: Sender<Job>,
    in_flight: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tasks: Vec<String>,
    /// Longest a request waits for its map.
    pub timeout: Duration,
}

impl std::fmt::Debug for SaliencyWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaliencyWorker")
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

/// Sets the calling thread's nice value to 19 (Linux: per thread); best effort.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread; no memory is shared with them.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        if r != 0 {
            tracing::debug!("saliency worker: could not lower its priority");
        }
    }
}

impl SaliencyWorker {
    /// Starts the thread. `tensors` are the bundle's (`Bundle.store.snapshot()`); the network is
    /// built on the worker thread, in f32 on the CPU, whatever device the live model uses.
    pub fn spawn(
        manifest: Manifest,
        tensors: BTreeMap<String, Tensor>,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = bounded::<Job>(1);
        let in_flight = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let tasks: Vec<String> = manifest.tasks.iter().map(|t| t.name.clone()).collect();
        let flag = in_flight.clone();
        let c = counters.clone();
        std::thread::Builder::new()
            .name("saliency".into())
            .spawn(move || {
                lower_priority();
                let built = build(&manifest, tensors);
                let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
                for job in rx.iter() {
                    let t0 = Instant::now();
                    let result = match (&built, &pool) {
                        (Err(e), _) => Err(Refusal::Unavailable(e.clone())),
                        (_, Err(e)) => Err(Refusal::Unavailable(e.to_string())),
                        (Ok(ex), Ok(pool)) => pool.install(|| render(ex, &job)),
                    };
                    match &result {
                        Ok(_) => {
                            c.done.fetch_add(1, Ordering::Relaxed);
                            c.compute_ms_total
                                .fetch_add(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let _ = job.reply.send(result.map(|png| Rendered {
                        png,
                        compute: t0.elapsed(),
                        task: job.task.clone(),
                    }));
                    flag.store(false, Ordering::Release);
                }
            })?;
        Ok(Arc::new(Self {
            tx,
            in_flight,
            counters,
            tasks,
            timeout: Duration::from_secs(60),
        }))
    }

    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    /// The SmoothGrad map of `task` (default: `lv_volume` when the model has it, else its first
    /// task) over `input`, as a PNG. Refuses at once when a map is already being computed.
    pub fn request(
        &self,
        input: Arc<PreparedInput>,
        sector: Option<Arc<Sector>>,
        task: Option<&str>,
        samples: Option<usize>,
    ) -> Result<Rendered, Refusal> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let task = match task {
            Some(t) => t.to_string(),
            None => self
                .tasks
                .iter()
                .find(|t| *t == "lv_volume")
                .or(self.tasks.first())
                .cloned()
                .ok_or_else(|| Refusal::BadRequest("the model has no tasks".into()))?,
        };
        if !self.tasks.contains(&task) {
            return Err(Refusal::BadRequest(format!(
                "task {task:?} is not one of the model's tasks ({})",
                self.tasks.join(", ")
            )));
        }
        let samples = samples.unwrap_or(SmoothGrad::default().samples);
        if !(1..=200).contains(&samples) {
            return Err(Refusal::BadRequest(format!(
                "samples {samples}: expected 1 to 200"
            )));
        }
        if self.in_flight.swap(true, Ordering::AcqRel) {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Busy);
        }
        let (reply, answer) = bounded(1);
        let job = Job {
            input,
            sector,
            task,
            samples,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.in_flight.store(false, Ordering::Release);
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Busy);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.in_flight.store(false, Ordering::Release);
                return Err(Refusal::Unavailable("the worker thread has ended".into()));
            }
        }
        answer
            .recv_timeout(self.timeout)
            .map_err(|_| Refusal::Failed("no answer from the worker in time".into()))?
    }

    /// Prometheus text of the worker's counters.
    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        for (name, help, v) in [
            (
                "echonet_saliency_requests_total",
                "Saliency maps asked for.",
                &c.requests,
            ),
            (
                "echonet_saliency_busy_total",
                "Saliency requests refused because one was running.",
                &c.busy,
            ),
            (
                "echonet_saliency_done_total",
                "Saliency maps computed.",
                &c.done,
            ),
            (
                "echonet_saliency_failed_total",
                "Saliency maps that failed.",
                &c.failed,
            ),
            (
                "echonet_saliency_compute_ms_total",
                "Milliseconds spent computing saliency maps.",
                &c.compute_ms_total,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
    }
}

fn build(manifest: &Manifest, tensors: BTreeMap<String, Tensor>) -> Result<Explainer, String> {
    let mut map = HashMap::new();
    for (name, t) in tensors {
        let t = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| e.to_string())?;
        map.insert(name, t);
    }
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    let net = TrainableIrv1::build(
        &manifest.architecture,
        manifest.input.channels,
        &manifest.tasks,
        vb,
    )
    .map_err(|e| e.to_string())?;
    Ok(Explainer::new(net, manifest.input.clone(), DType::F32))
}

fn render(ex: &Explainer, job: &Job) -> Result<Vec<u8>, Refusal> {
    let fail = |e: super::ExplainError| Refusal::Failed(e.to_string());
    let task = ex.task_index(&job.task).map_err(fail)?;
    let cfg = SmoothGrad {
        samples: job.samples,
        ..SmoothGrad::default()
    };
    let inside = match &job.sector {
        Some(s) => Some(super::sector_inside(s, ex.spec()).map_err(fail)?),
        None => None,
    };
    let map = ex
        .smoothgrad(&job.input, inside.as_deref(), task, &cfg)
        .map_err(fail)?;
    let side = job.input.width.max(job.input.height);
    let img = overlay(
        &job.input,
        ex.spec(),
        &map,
        Colouring::Magnitude,
        None,
        display_scale(side),
    )
    .map_err(fail)?;
    let top = super::colour_top(
        &map.smoothed(super::SALIENCY_DISPLAY_SIGMA),
        Colouring::Magnitude,
    );
    let legend = super::Legend {
        title: format!("SmoothGrad: {}", job.task),
        high: format!("{top:.1e}"),
        low: "0".into(),
    };
    png_bytes(&super::annotate(&img, Colouring::Magnitude, &legend)).map_err(fail)
}
