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
use serde_json::Value;

use super::frame_mask::{mask_outside, FramePolicy};
use crate::explain::worker::SaliencyWorker;
use crate::frame::{Image, PixelFormat};
use crate::preprocess::PreparedInput;

/// The `schema` value of every estimate the hub accepts (docs/estimate-schema.md).
pub const ESTIMATE_SCHEMA: &str = "echonet.estimate/1";

/// The trend keeps these tasks; others are shown live but not plotted.
const TREND_TASKS: [&str; 3] = ["ef", "esv", "edv"];

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

/// Why an estimate was refused. A refused estimate changes nothing the display shows.
#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error("estimate is not a JSON object")]
    NotAnObject,
    #[error("estimate schema is {found:?}, expected \"{ESTIMATE_SCHEMA}\"")]
    Schema { found: Option<String> },
    #[error("estimate status is {found:?}, expected \"ok\", \"withheld\" or \"stale\"")]
    Status { found: Option<String> },
    #[error("estimates.{task}.value is neither a number nor null")]
    Value { task: String },
    #[error("estimate could not be serialised: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// Why a frame was not published.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame buffer holds {len} bytes, not {width}x{height}x{channels}")]
    Buffer {
        width: usize,
        height: usize,
        channels: usize,
        len: usize,
    },
    #[error("sector outline point {index} is not finite")]
    Outline { index: usize },
    #[error("frame could not be encoded: {0}")]
    Encode(#[from] image::ImageError),
    #[error("frame metadata could not be serialised: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// A subscription was refused because the hub already serves its limit of stream clients.
#[derive(Debug, thiserror::Error)]
#[error("the display already serves {limit} stream clients")]
pub struct SubscriberLimit {
    pub limit: usize,
}

/// `status` of an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EstimateStatus {
    Ok,
    Withheld,
    Stale,
}

impl EstimateStatus {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Self::Ok),
            "withheld" => Some(Self::Withheld),
            "stale" => Some(Self::Stale),
            _ => None,
        }
    }
}

/// The latest accepted estimate, serialised once and shared by every reader.
#[derive(Debug, Clone)]
pub struct LatestEstimate {
    pub json: Arc<str>,
    pub seq: Option<u64>,
    pub status: EstimateStatus,
    pub received: Instant,
}

/// One point of the trend. Time is when the hub received the estimate (Unix ms), so the trend
/// needs no parsing of the publisher's timestamps and is monotone on this machine's clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    pub t_ms: f64,
    pub seq: Option<u64>,
    pub status: EstimateStatus,
    pub ef: Option<f64>,
    pub esv: Option<f64>,
    pub edv: Option<f64>,
}

/// The latest frame as the page fetches it.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub seq: u64,
    pub content_type: &'static str,
    pub bytes: Arc<[u8]>,
    /// JSON: seq, source and encoded sizes, and the outline in source pixel coordinates.
    pub meta: Arc<str>,
}

/// One event for stream subscribers: an SSE event name and its JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct HubEvent {
    pub name: &'static str,
    pub data: Arc<str>,
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

struct Subscriber {
    id: u64,
    tx: Sender<HubEvent>,
    /// The hub's own end of the queue, used only to throw the oldest event away when it is full.
    oldest: Receiver<HubEvent>,
    dropped: Arc<AtomicU64>,
}

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
    model_input: Option<(u64, Arc<PreparedInput>)>,
    saliency: Option<Arc<SaliencyWorker>>,
    /// Open faults by key (`pipeline`, `journal`, ...), shown by `/healthz`.
    faults: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
struct Counters {
    estimates: AtomicU64,
    estimates_rejected: AtomicU64,
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

    /// Accepts one estimate (schema `echonet.estimate/1`): it becomes the latest, joins the trend
    /// and goes to every subscriber. Unknown fields are kept and passed on, so a newer publisher
    /// can add fields without breaking an older display.
    pub fn publish_estimate(&self, estimate: Value) -> Result<(), EstimateError> {
        let checked = check_estimate(&estimate);
        let (status, point_values) = match checked {
            Ok(v) => v,
            Err(e) => {
                self.counters
                    .estimates_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let seq = estimate.get("seq").and_then(Value::as_u64);
        let json: Arc<str> = serde_json::to_string(&estimate)?.into();
        let now = Instant::now();
        let point = TrendPoint {
            t_ms: unix_ms(SystemTime::now()),
            seq,
            status,
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
            seq,
            status,
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

    /// Offers the live frame. Returns `Ok(false)` without any work when the last frame was
    /// encoded less than `frame_interval` ago. `sector_outline` is a polygon in the image's
    /// pixel coordinates (x right, y down).
    pub fn publish_frame(
        &self,
        image: &Image,
        sector_outline: Option<Vec<(f32, f32)>>,
    ) -> Result<bool, FrameError> {
        // `Image`'s fields are public, so its invariant is checked again here: a bad buffer must
        // be an error, never an out-of-bounds panic on the publisher's thread.
        let channels = image.format.channels();
        if image.width == 0
            || image.height == 0
            || image.data.len() != image.width * image.height * channels
        {
            self.counters.frames_failed.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::Buffer {
                width: image.width,
                height: image.height,
                channels,
                len: image.data.len(),
            });
        }
        if let Some(index) = sector_outline
            .as_deref()
            .and_then(|o| o.iter().position(|(x, y)| !x.is_finite() || !y.is_finite()))
        {
            self.counters.frames_failed.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::Outline { index });
        }
        {
            let mut gate = lock(&self.frame_gate);
            let now = Instant::now();
            if gate.is_some_and(|last| now.duration_since(last) < self.config.frame_interval) {
                self.counters.frames_skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            *gate = Some(now);
        }
        let masked;
        let image = match (self.config.frame_policy, sector_outline.as_deref()) {
            (FramePolicy::Unmasked, _) => image,
            // Burned-in text lies outside the sector: with no sector known, or frames off,
            // nothing is served.
            (FramePolicy::Off, _) | (FramePolicy::Sector, None) => {
                self.counters
                    .frames_withheld
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            (FramePolicy::Sector, Some(outline)) => {
                masked = mask_outside(image, outline);
                &masked
            }
        };
        let encoded = encode_frame(
            image,
            self.config.frame_max_side,
            self.config.frame_jpeg_quality,
        );
        let (width, height, bytes) = match encoded {
            Ok(v) => v,
            Err(e) => {
                self.counters.frames_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let seq = self.frame_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let meta = FrameMeta {
            seq,
            content_type: "image/jpeg",
            source_width: image.width,
            source_height: image.height,
            width,
            height,
            outline: sector_outline.map(|o| o.into_iter().map(|(x, y)| [x, y]).collect()),
        };
        let meta: Arc<str> = serde_json::to_string(&meta)?.into();
        let frame = EncodedFrame {
            seq,
            content_type: "image/jpeg",
            bytes: bytes.into(),
            meta: meta.clone(),
        };
        let mut state = lock(&self.state);
        state.frame = Some(frame);
        self.fan_out(
            &mut state,
            HubEvent {
                name: "frame",
                data: meta,
            },
        );
        drop(state);
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        Ok(true)
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

    /// Registers a stream subscriber, unless `limit` are already registered. Its queue starts
    /// with a `snapshot` event (the latest estimate and its age, so a page that connects late
    /// can tell an old number from a live one) and the latest `frame` event.
    pub fn subscribe(self: &Arc<Self>, limit: usize) -> Result<Subscription, SubscriberLimit> {
        let (tx, rx) = crossbeam_channel::bounded(self.config.subscriber_queue.max(3));
        let mut state = lock(&self.state);
        if state.subscribers.len() >= limit {
            self.counters.sse_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubscriberLimit { limit });
        }
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        // The queue is new and holds at least three events, so these cannot fail.
        if let Some(latest) = &state.latest {
            let age_ms = latest.received.elapsed().as_secs_f64() * 1000.0;
            let data = format!("{{\"age_ms\":{age_ms:.1},\"estimate\":{}}}", latest.json);
            let _ = tx.try_send(HubEvent {
                name: "snapshot",
                data: data.into(),
            });
        }
        if let Some(frame) = &state.frame {
            let _ = tx.try_send(HubEvent {
                name: "frame",
                data: frame.meta.clone(),
            });
        }
        if !state.faults.is_empty() {
            let _ = tx.try_send(faults_event(&state));
        }
        let dropped = Arc::new(AtomicU64::new(0));
        state.subscribers.push(Subscriber {
            id,
            tx,
            oldest: rx.clone(),
            dropped: dropped.clone(),
        });
        Ok(Subscription {
            hub: Arc::clone(self),
            id,
            rx,
            dropped,
        })
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.state).subscribers.len()
    }

    /// Events thrown away because a subscriber's queue was full, over all subscribers.
    pub fn dropped_events(&self) -> u64 {
        self.counters.sse_dropped.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition: the publisher's text (if any) followed by the hub's counters.
    /// Keeps the newest usable model input (the normalised frame) of source frame `seq`.
    pub fn set_model_input(&self, seq: u64, input: Arc<PreparedInput>) {
        lock(&self.state).model_input = Some((seq, input));
    }

    pub fn model_input(&self) -> Option<(u64, Arc<PreparedInput>)> {
        lock(&self.state).model_input.clone()
    }

    /// Attaches the saliency worker that `/api/saliency` asks.
    pub fn set_saliency_worker(&self, worker: Arc<SaliencyWorker>) {
        lock(&self.state).saliency = Some(worker);
    }

    pub fn saliency_worker(&self) -> Option<Arc<SaliencyWorker>> {
        lock(&self.state).saliency.clone()
    }

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
            ("echonet_display_estimates_rejected_total", "counter", "Estimates refused by the display hub (bad schema or status).", load(&c.estimates_rejected)),
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

    /// Offers `event` to every subscriber without waiting: a full queue loses its oldest event.
    fn fan_out(&self, state: &mut State, event: HubEvent) {
        let mut dropped_total = 0;
        state
            .subscribers
            .retain(|sub| match sub.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(event)) => {
                    // Only the hub sends, and it holds the lock, so once the oldest is out there is
                    // room; a subscriber that read in the meantime only makes more room.
                    let made_room = sub.oldest.try_recv().is_ok();
                    let delivered = sub.tx.try_send(event).is_ok();
                    let lost = u64::from(made_room) + u64::from(!delivered);
                    sub.dropped.fetch_add(lost, Ordering::Relaxed);
                    dropped_total += lost;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        if dropped_total > 0 {
            self.counters
                .sse_dropped
                .fetch_add(dropped_total, Ordering::Relaxed);
        }
    }

    fn unsubscribe(&self, id: u64) {
        lock(&self.state).subscribers.retain(|s| s.id != id);
    }
}

/// A stream subscriber's end of its queue. Dropping it unregisters the subscriber, which is how
/// a disconnected client leaves the hub.
pub struct Subscription {
    hub: Arc<DisplayHub>,
    id: u64,
    rx: Receiver<HubEvent>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event, waiting at most `timeout`; `None` when none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<HubEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    pub fn try_recv(&self) -> Option<HubEvent> {
        self.rx.try_recv().ok()
    }

    /// Events this subscriber lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

#[derive(Serialize)]
struct FrameMeta {
    seq: u64,
    content_type: &'static str,
    source_width: usize,
    source_height: usize,
    width: usize,
    height: usize,
    outline: Option<Vec<[f32; 2]>>,
}

/// Checks what the display relies on and pulls out the trend values (ef, esv, edv). Only a
/// status of "ok" puts numbers on the trend: a withheld or stale estimate must not be plotted
/// as if it were a measurement.
fn check_estimate(v: &Value) -> Result<(EstimateStatus, [Option<f64>; 3]), EstimateError> {
    let obj = v.as_object().ok_or(EstimateError::NotAnObject)?;
    let schema = obj.get("schema").and_then(Value::as_str);
    if schema != Some(ESTIMATE_SCHEMA) {
        return Err(EstimateError::Schema {
            found: obj.get("schema").map(value_text),
        });
    }
    let status = obj
        .get("status")
        .and_then(Value::as_str)
        .and_then(EstimateStatus::parse)
        .ok_or_else(|| EstimateError::Status {
            found: obj.get("status").map(value_text),
        })?;
    let mut values = [None; 3];
    let mut curve = [None; 3];
    if let Some(Value::Object(estimates)) = obj.get("estimates") {
        for (task, entry) in estimates {
            let value = match entry.get("value") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_f64(),
                Some(_) => return Err(EstimateError::Value { task: task.clone() }),
            };
            let value = value.filter(|_| status == EstimateStatus::Ok);
            if let Some(i) = TREND_TASKS.iter().position(|t| t == task) {
                values[i] = value;
            }
            if let Some(i) = TREND_TASKS
                .iter()
                .position(|t| task.strip_suffix("_volume_curve") == Some(t))
            {
                curve[i] = value;
            }
        }
    }
    // As the display: the volume-curve figures when the model gives all three.
    if curve.iter().all(Option::is_some) {
        values = curve;
    }
    Ok((status, values))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Box-downscales by the smallest integer factor that brings the longest side to `max_side` or
/// less (an average, so speckle does not alias), then encodes JPEG. Integer factors keep this a
/// single pass over the pixels, cheap enough for the publisher's thread at 5 fps.
fn encode_frame(
    image: &Image,
    max_side: usize,
    quality: u8,
) -> Result<(usize, usize, Vec<u8>), image::ImageError> {
    let channels = image.format.channels();
    let longest = image.width.max(image.height);
    let factor = longest.div_ceil(max_side.max(1)).max(1);
    let (width, height) = (
        (image.width / factor).max(1),
        (image.height / factor).max(1),
    );
    let pixels = if factor == 1 {
        std::borrow::Cow::Borrowed(&image.data)
    } else {
        let mut out = vec![0u8; width * height * channels];
        let row_len = image.width * channels;
        for oy in 0..height {
            for ox in 0..width {
                for c in 0..channels {
                    let mut sum = 0u32;
                    let mut n = 0u32;
                    for y in oy * factor..((oy + 1) * factor).min(image.height) {
                        let row = &image.data[y * row_len..(y + 1) * row_len];
                        for x in ox * factor..((ox + 1) * factor).min(image.width) {
                            sum += u32::from(row[x * channels + c]);
                            n += 1;
                        }
                    }
                    out[(oy * width + ox) * channels + c] = (sum / n.max(1)) as u8;
                }
            }
        }
        std::borrow::Cow::Owned(out)
    };
    let color = match image.format {
        PixelFormat::Gray8 => image::ExtendedColorType::L8,
        PixelFormat::Rgb8 => image::ExtendedColorType::Rgb8,
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100)).encode(
        &pixels,
        width as u32,
        height as u32,
        color,
    )?;
    Ok((width, height, bytes))
}

/// The open faults as the page's `faults` event: `{"faults":["key: reason",...]}` (empty when
/// the last one cleared).
fn faults_event(state: &State) -> HubEvent {
    let list: Vec<String> = state
        .faults
        .iter()
        .map(|(k, r)| format!("{k}: {r}"))
        .collect();
    HubEvent {
        name: "faults",
        data: serde_json::json!({ "faults": list }).to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn estimate(seq: u64, status: &str, ef: f64) -> Value {
        json!({"schema": ESTIMATE_SCHEMA, "seq": seq, "status": status,
               "estimates": {"ef": {"value": ef, "unit": "%", "spread": 1.0},
                             "esv": {"value": 40.0, "unit": "mL", "spread": null}}})
    }

    #[test]
    fn refuses_wrong_schema_status_and_values() {
        let hub = DisplayHub::new(HubConfig::default());
        assert!(matches!(
            hub.publish_estimate(json!([1])),
            Err(EstimateError::NotAnObject)
        ));
        let e = hub.publish_estimate(json!({"schema": "echonet.estimate/2", "status": "ok"}));
        assert!(
            matches!(e, Err(EstimateError::Schema { found: Some(s) }) if s == "echonet.estimate/2")
        );
        let e = hub.publish_estimate(json!({"schema": ESTIMATE_SCHEMA, "status": "fine"}));
        assert!(matches!(e, Err(EstimateError::Status { found: Some(s) }) if s == "fine"));
        let e = hub.publish_estimate(json!({"schema": ESTIMATE_SCHEMA, "status": "ok",
            "estimates": {"ef": {"value": "55"}}}));
        assert!(matches!(e, Err(EstimateError::Value { task }) if task == "ef"));
        assert!(hub.latest().is_none());
        assert!(hub
            .render_metrics()
            .contains("echonet_display_estimates_rejected_total 4\n"));
    }

    #[test]
    fn volume_curve_figures_replace_the_means_on_the_trend() {
        let hub = DisplayHub::new(HubConfig::default());
        let mut e = estimate(1, "ok", 55.0);
        e["estimates"]["ef_volume_curve"] = json!({"value": 61.0, "unit": "%", "spread": null});
        e["estimates"]["esv_volume_curve"] = json!({"value": 39.0, "unit": "mL", "spread": null});
        e["estimates"]["edv_volume_curve"] = json!({"value": 100.0, "unit": "mL", "spread": null});
        hub.publish_estimate(e).unwrap();
        let h = hub.history();
        assert_eq!(
            (h[0].ef, h[0].esv, h[0].edv),
            (Some(61.0), Some(39.0), Some(100.0))
        );
    }

    #[test]
    fn only_ok_estimates_put_numbers_on_the_trend() {
        let hub = DisplayHub::new(HubConfig::default());
        hub.publish_estimate(estimate(1, "ok", 55.0)).unwrap();
        hub.publish_estimate(estimate(2, "withheld", 20.0)).unwrap();
        let h = hub.history();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].ef, h[0].esv, h[0].edv),
            (Some(55.0), Some(40.0), None)
        );
        assert_eq!((h[1].status, h[1].ef), (EstimateStatus::Withheld, None));
        assert_eq!(hub.latest().unwrap().seq, Some(2));
    }

    #[test]
    fn history_is_pruned_by_age_and_count() {
        let hub = DisplayHub::new(HubConfig {
            history_window: Duration::from_millis(100),
            history_max_points: 3,
            ..HubConfig::default()
        });
        for i in 0..5 {
            hub.publish_estimate(estimate(i, "ok", 50.0)).unwrap();
        }
        let seqs: Vec<_> = hub.history().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![Some(2), Some(3), Some(4)]);
        std::thread::sleep(Duration::from_millis(150));
        assert!(hub.history().is_empty());
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let hub = DisplayHub::new(HubConfig {
            subscriber_queue: 4,
            ..HubConfig::default()
        });
        let sub = hub.subscribe(8).unwrap();
        for i in 0..10 {
            hub.publish_estimate(estimate(i, "ok", 50.0)).unwrap();
        }
        assert_eq!(sub.dropped(), 6);
        assert_eq!(hub.dropped_events(), 6);
        let seqs: Vec<u64> = std::iter::from_fn(|| sub.try_recv())
            .map(|e| {
                serde_json::from_str::<Value>(&e.data).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![6, 7, 8, 9]);
    }

    #[test]
    fn subscribe_starts_with_snapshot_and_respects_limit() {
        let hub = DisplayHub::new(HubConfig::default());
        hub.publish_estimate(estimate(7, "ok", 61.0)).unwrap();
        let a = hub.subscribe(2).unwrap();
        let _b = hub.subscribe(2).unwrap();
        assert!(hub.subscribe(2).is_err());
        let first = a.try_recv().unwrap();
        assert_eq!(first.name, "snapshot");
        let v: Value = serde_json::from_str(&first.data).unwrap();
        assert_eq!(v["estimate"]["seq"], 7);
        assert!(v["age_ms"].as_f64().unwrap() >= 0.0);
        drop(a);
        assert_eq!(hub.subscriber_count(), 1);
        assert!(hub
            .render_metrics()
            .contains("echonet_display_sse_rejected_total 1\n"));
    }

    #[test]
    fn frames_are_downscaled_rate_limited_and_announced() {
        let hub = DisplayHub::new(HubConfig {
            frame_interval: Duration::from_secs(60),
            ..HubConfig::default()
        });
        let sub = hub.subscribe(8).unwrap();
        let data: Vec<u8> = (0..640 * 480 * 3).map(|i| (i % 251) as u8).collect();
        let img = Image::new(640, 480, PixelFormat::Rgb8, data).unwrap();
        let outline = vec![(320.0, 0.0), (0.0, 400.0), (640.0, 400.0)];
        assert!(hub.publish_frame(&img, Some(outline.clone())).unwrap());
        assert!(!hub.publish_frame(&img, Some(outline)).unwrap());
        let frame = hub.frame().unwrap();
        let decoded = image::load_from_memory(&frame.bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 240));
        let ev = sub.try_recv().unwrap();
        assert_eq!(ev.name, "frame");
        let meta: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(meta["source_width"], 640);
        assert_eq!(meta["outline"][1], json!([0.0, 400.0]));
        let bad = hub.publish_frame(&img, Some(vec![(f32::NAN, 1.0)]));
        assert!(matches!(bad, Err(FrameError::Outline { index: 0 })));
        let short = Image {
            width: 640,
            height: 480,
            format: PixelFormat::Gray8,
            data: vec![0; 10],
        };
        let bad = hub.publish_frame(&short, None);
        assert!(matches!(bad, Err(FrameError::Buffer { len: 10, .. })));
        assert!(hub
            .render_metrics()
            .contains("echonet_display_frames_failed_total 2\n"));
    }

    #[test]
    fn box_downscale_averages_blocks() {
        let img = Image::gray(4, 2, vec![0, 100, 10, 30, 200, 100, 50, 70]).unwrap();
        let (w, h, bytes) = encode_frame(&img, 2, 100).unwrap();
        assert_eq!((w, h), (2, 1));
        let decoded = image::load_from_memory(&bytes).unwrap().to_luma8();
        let px: Vec<i32> = decoded.pixels().map(|p| i32::from(p.0[0])).collect();
        // Block averages are 100 and 40; JPEG at quality 100 keeps them within a few levels.
        assert!(
            (px[0] - 100).abs() <= 3 && (px[1] - 40).abs() <= 3,
            "{px:?}"
        );
    }

    #[test]
    fn health_follows_estimates_and_heartbeats() {
        let hub = DisplayHub::new(HubConfig {
            stale_after: Duration::from_millis(50),
            ..HubConfig::default()
        });
        assert_eq!(hub.health(), Health::NeverFed);
        hub.heartbeat();
        assert!(matches!(hub.health(), Health::Fed { .. }));
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(hub.health(), Health::Stale { .. }));
        hub.publish_estimate(estimate(1, "ok", 50.0)).unwrap();
        assert!(matches!(hub.health(), Health::Fed { .. }));
    }
}
