//! The display hub: the one place where the publisher hands estimates, frames and metrics to the
//! bedside display. It keeps what a page needs on connect (the latest estimate, a trend history of
//! the last minutes, the latest encoded frame) and fans every update out to stream subscribers.
//!
//! The publisher must never wait for a browser, so every call here is short and non-blocking:
//! each subscriber has a bounded queue and, when it is full, the oldest event is thrown away
//! (counted) instead of the publisher waiting. Frames are downscaled and encoded on the caller's
//! thread at a bounded rate, outside the hub's lock.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

use super::frame_mask::{mask_outside, FramePolicy};
use super::record::EstimateRecord;
use crate::aggregate::Status;
use crate::explain::worker::SaliencyWorker;
use crate::frame::{Image, PixelFormat};
use crate::preprocess::ModelInput;

mod fanout;
mod frames;
#[cfg(test)]
mod tests;

pub use fanout::{HubEvent, Subscription};
pub use frames::{EncodedFrame, FrameError};

use fanout::{faults_event, Subscriber};

#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// How far back the trend history reaches. Default 10 minutes.
    pub history_window: Duration,
    /// Upper bound on trend points whatever their age, so a publisher running far faster than
    /// expected cannot grow memory without bound. Default 20 000.
    pub history_max_points: usize,
    /// `/healthz` turns 503 when neither an estimate nor a heartbeat came for this long.
    /// Default 5 s.
    pub stale_after: Duration,
    /// Events queued per stream subscriber before the oldest is dropped. Default 64.
    pub subscriber_queue: usize,
    /// Minimum time between two encoded frames; frames offered sooner are skipped (cheaply).
    /// Default 200 ms (5 fps).
    pub frame_interval: Duration,
    /// Longest side of the encoded frame, pixels; larger frames are box-downscaled by an integer
    /// factor. Default 320.
    pub frame_max_side: usize,
    /// JPEG quality of the encoded frame, 1–100. Default 75.
    pub frame_jpeg_quality: u8,
    /// What of the frame is served: the scanning sector only (default), nothing, or all of it.
    pub frame_policy: FramePolicy,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history_window: Duration::from_secs(600),
            history_max_points: 20_000,
            stale_after: Duration::from_secs(5),
            subscriber_queue: 64,
            frame_interval: Duration::from_millis(200),
            frame_max_side: 320,
            frame_jpeg_quality: 75,
            frame_policy: FramePolicy::Sector,
        }
    }
}

/// A subscription was refused because the hub already serves its limit of stream clients.
#[derive(Debug, thiserror::Error)]
#[error("the display already serves {limit} stream clients")]
pub struct SubscriberLimit {
    pub limit: usize,
}

/// The latest estimate, serialised once and shared by every reader.
#[derive(Debug, Clone)]
pub struct LatestEstimate {
    pub json: Arc<str>,
    pub seq: Option<u64>,
    pub status: Status,
    pub received: Instant,
}

/// One point of the trend. Time is when the hub received the estimate (Unix ms), so the trend
/// needs no parsing of the publisher's timestamps and is monotone on this machine's clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    pub t_ms: f64,
    pub seq: Option<u64>,
    pub status: Status,
    pub ef: Option<f64>,
    pub esv: Option<f64>,
    pub edv: Option<f64>,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Neither an estimate nor a heartbeat since the hub was made.
    NeverFed,
    Fed {
        age: Duration,
    },
    Stale {
        age: Duration,
    },
    /// Something the daemon cannot recover from by itself (a pipeline stage died, results can no
    /// longer be recorded): reported whatever the feed does, each fault as `key: reason`.
    Failed {
        faults: Vec<String>,
    },
}

type MetricsProvider = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Default)]
struct State {
    latest: Option<LatestEstimate>,
    last_fed: Option<Instant>,
    history: VecDeque<(Instant, TrendPoint)>,
    frame: Option<EncodedFrame>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    metrics_text: Option<Arc<str>>,
    metrics_provider: Option<MetricsProvider>,
    /// The newest usable model input (source frame seq), for on-demand saliency maps.
    model_input: Option<ModelInput>,
    saliency: Option<Arc<SaliencyWorker>>,
    /// Open faults by key (`pipeline`, `journal`, ...), shown by `/healthz`.
    faults: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
struct Counters {
    estimates: AtomicU64,
    estimates_unwritable: AtomicU64,
    heartbeats: AtomicU64,
    frames: AtomicU64,
    frames_skipped: AtomicU64,
    frames_failed: AtomicU64,
    /// Frames not served under the frame policy (no sector known, or frames off).
    frames_withheld: AtomicU64,
    sse_dropped: AtomicU64,
    sse_rejected: AtomicU64,
}

/// Shared between the publisher and the display server (`Arc<DisplayHub>`; `Send + Sync`).
pub struct DisplayHub {
    config: HubConfig,
    state: Mutex<State>,
    /// Time of the last encoded frame; separate from `state` so the rate check never waits for
    /// a reader and encoding happens outside every lock.
    frame_gate: Mutex<Option<Instant>>,
    frame_seq: AtomicU64,
    counters: Counters,
}

impl std::fmt::Debug for DisplayHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayHub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex even if a thread panicked while holding it: the hub's state is only ever
/// replaced whole, never left half-written, and a panicking display thread must not take the
/// publisher down with a poisoned lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

impl DisplayHub {
    pub fn new(config: HubConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
            frame_gate: Mutex::new(None),
            frame_seq: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Takes one record (schema `echonet.estimate/1`): it becomes the latest, joins the trend
    /// and goes to every subscriber, written as JSON once here (the display's edge) and shared.
    /// Fails only if the record cannot be written as JSON (counted; nothing changes).
    pub fn publish_estimate(&self, record: &EstimateRecord) -> Result<(), serde_json::Error> {
        let json: Arc<str> = match record.to_json() {
            Ok(j) => j.into(),
            Err(e) => {
                self.counters
                    .estimates_unwritable
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let point_values = trend_values(record);
        let now = Instant::now();
        let point = TrendPoint {
            t_ms: unix_ms(SystemTime::now()),
            seq: record.seq,
            status: record.status,
            ef: point_values[0],
            esv: point_values[1],
            edv: point_values[2],
        };
        let event = HubEvent {
            name: "estimate",
            data: json.clone(),
        };
        let mut state = lock(&self.state);
        state.latest = Some(LatestEstimate {
            json,
            seq: record.seq,
            status: record.status,
            received: now,
        });
        state.last_fed = Some(now);
        state.history.push_back((now, point));
        self.prune_history(&mut state, now);
        self.fan_out(&mut state, event);
        drop(state);
        self.counters.estimates.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Tells the hub the publisher is alive without a new estimate (e.g. while it waits for a
    /// full window): keeps `/healthz` at 200. The page's own staleness is unaffected, because a
    /// heartbeat brings no new number.
    pub fn heartbeat(&self) {
        lock(&self.state).last_fed = Some(Instant::now());
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text from the publisher, served on `/metrics` ahead of the hub's own counters.
    pub fn set_metrics_text(&self, text: String) {
        let mut state = lock(&self.state);
        state.metrics_text = Some(text.into());
        state.metrics_provider = None;
    }

    /// Like `set_metrics_text`, but the text is made on every scrape (on the HTTP thread).
    pub fn set_metrics_provider(&self, provider: impl Fn() -> String + Send + Sync + 'static) {
        let mut state = lock(&self.state);
        state.metrics_provider = Some(Arc::new(provider));
        state.metrics_text = None;
    }

    pub fn latest(&self) -> Option<LatestEstimate> {
        lock(&self.state).latest.clone()
    }

    pub fn frame(&self) -> Option<EncodedFrame> {
        lock(&self.state).frame.clone()
    }

    pub fn history(&self) -> Vec<TrendPoint> {
        let mut state = lock(&self.state);
        self.prune_history(&mut state, Instant::now());
        state.history.iter().map(|(_, p)| p.clone()).collect()
    }

    /// `/api/history`: the window, the server's clock (so a page can place points on its own
    /// clock without trusting the two clocks agree) and the points, oldest first.
    pub fn history_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct History {
            window_s: f64,
            now_ms: f64,
            points: Vec<TrendPoint>,
        }
        serde_json::to_string(&History {
            window_s: self.config.history_window.as_secs_f64(),
            now_ms: unix_ms(SystemTime::now()),
            points: self.history(),
        })
    }

    /// Raises (Some) or clears (None) the fault named `key`; any open fault fails `/healthz`.
    /// A change goes to every page as a `faults` event (`{"faults":["key: reason",...]}`), so
    /// the bedside sees that results are not being recorded while the numbers carry on.
    pub fn set_fault(&self, key: &str, reason: Option<String>) {
        let mut state = lock(&self.state);
        let changed = match reason {
            Some(r) => state.faults.insert(key.to_string(), r.clone()).as_ref() != Some(&r),
            None => state.faults.remove(key).is_some(),
        };
        if changed {
            let event = faults_event(&state);
            self.fan_out(&mut state, event);
        }
    }

    pub fn health(&self) -> Health {
        let state = lock(&self.state);
        if !state.faults.is_empty() {
            return Health::Failed {
                faults: state
                    .faults
                    .iter()
                    .map(|(k, r)| format!("{k}: {r}"))
                    .collect(),
            };
        }
        match state.last_fed {
            None => Health::NeverFed,
            Some(t) => {
                let age = t.elapsed();
                if age > self.config.stale_after {
                    Health::Stale { age }
                } else {
                    Health::Fed { age }
                }
            }
        }
    }

    /// Keeps the newest usable model input (the normalised frame and its sector).
    pub fn set_model_input(&self, input: ModelInput) {
        lock(&self.state).model_input = Some(input);
    }

    pub fn model_input(&self) -> Option<ModelInput> {
        lock(&self.state).model_input.clone()
    }

    /// Attaches the saliency worker that `/api/saliency` asks.
    pub fn set_saliency_worker(&self, worker: Arc<SaliencyWorker>) {
        lock(&self.state).saliency = Some(worker);
    }

    pub fn saliency_worker(&self) -> Option<Arc<SaliencyWorker>> {
        lock(&self.state).saliency.clone()
    }

    /// Prometheus text exposition: the publisher's text (if any) followed by the hub's counters.
    pub fn render_metrics(&self) -> String {
        let (external_text, provider, clients, history_points, last_fed) = {
            let state = lock(&self.state);
            (
                state.metrics_text.clone(),
                state.metrics_provider.clone(),
                state.subscribers.len(),
                state.history.len(),
                state.last_fed,
            )
        };
        // The provider runs outside the lock: it is the publisher's code and may be slow.
        let mut out = match (external_text, provider) {
            (Some(text), _) => text.to_string(),
            (None, Some(provider)) => provider(),
            (None, None) => String::new(),
        };
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut families = vec![
            ("echonet_display_estimates_total", "counter", "Estimates accepted by the display hub.", load(&c.estimates)),
            ("echonet_display_estimates_rejected_total", "counter", "Estimates the display hub could not write as JSON.", load(&c.estimates_unwritable)),
            ("echonet_display_heartbeats_total", "counter", "Publisher heartbeats received.", load(&c.heartbeats)),
            ("echonet_display_frames_total", "counter", "Frames encoded for the display.", load(&c.frames)),
            ("echonet_display_frames_skipped_total", "counter", "Frames skipped by the display frame-rate limit.", load(&c.frames_skipped)),
            ("echonet_display_frames_failed_total", "counter", "Frames that could not be published (bad outline, encoder error).", load(&c.frames_failed)),
            ("echonet_display_frames_withheld_total", "counter", "Frames not served: no scanning sector known to mask to, or frames off.", load(&c.frames_withheld)),
            ("echonet_display_sse_clients", "gauge", "Connected Server-Sent Events clients.", clients as f64),
            ("echonet_display_sse_dropped_events_total", "counter", "Events dropped (oldest first) because a stream client was not reading fast enough.", load(&c.sse_dropped)),
            ("echonet_display_sse_rejected_total", "counter", "Stream clients refused because the client limit was reached.", load(&c.sse_rejected)),
            ("echonet_display_history_points", "gauge", "Points in the trend history.", history_points as f64),
        ];
        if let Some(t) = last_fed {
            families.push((
                "echonet_display_last_update_age_seconds",
                "gauge",
                "Seconds since the last estimate or heartbeat.",
                t.elapsed().as_secs_f64(),
            ));
        }
        for (name, kind, help, value) in families {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        if let Some(w) = self.saliency_worker() {
            w.render_metrics(&mut out);
        }
        out
    }

    fn prune_history(&self, state: &mut State, now: Instant) {
        let window = self.config.history_window;
        while let Some((t, _)) = state.history.front() {
            if now.duration_since(*t) > window
                || state.history.len() > self.config.history_max_points
            {
                state.history.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The trend values (ef, esv, edv) of a record. Only a status of "ok" puts numbers on the trend:
/// a withheld or stale estimate must not be plotted as if it were a measurement. The numbers are
/// the ones the display and the journal show ([`EstimateRecord::displayed_numbers`]: the
/// volume-curve figures when the model gives all three, else the heads, else EF from volumes).
fn trend_values(record: &EstimateRecord) -> [Option<f64>; 3] {
    if record.status != Status::Ok {
        return [None; 3];
    }
    let (ef, edv, esv) = record.displayed_numbers();
    [ef, esv, edv]
}
