//! The bedside display's HTTP server: the page, the latest estimate, a Server-Sent Events stream,
//! the trend history, the live frame, Prometheus metrics and a health check, all read from a
//! `DisplayHub`. Synchronous: an accept thread hands each connection (up to `max_connections`
//! open at once; more are answered 503 and closed) to a thread of its own, which reads one
//! bounded request (`http_wire`), answers it and closes; a stream client keeps its thread (and its
//! connection slot) up to `max_stream_clients`.
//!
//! Nothing here can hold up the publisher: the hub never waits for a client, and a client that
//! stops reading is cut off by a send timeout on its socket as soon as an event no longer fits in
//! its socket buffers. A closed or reset connection shows up at the next write, which the
//! heartbeat guarantees every few seconds.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http_wire::{
    read_request, write_response, ConnectionSlots, RequestHead, SlotGuard, WireError, WireLimits,
};
use super::hub::{DisplayHub, Health, Subscription};
use crate::explain::worker::Refusal;
use crate::preprocess::ModelInput;

/// The page: one file, CSS and JS inline, so the display works with no network at all.
const PAGE: &str = include_str!("assets/display.html");

/// Default port of the display (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 8470;

/// How often idle threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// The content security policy of the page: everything from this server or inline, so a copy of
/// the page edited to pull a script from elsewhere fails loudly instead of half-working offline.
const PAGE_CSP: &str =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'";

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Where to listen. Default 127.0.0.1:8470; port 0 picks a free port
    /// (`DisplayServer::local_addr` reports it).
    pub addr: SocketAddr,
    /// Stream (`/api/stream`) clients served at once; more get 503. Default 8.
    pub max_stream_clients: usize,
    /// A stream with nothing to send writes a comment this often, so a closed or reset
    /// connection shows up as a write error (and proxies keep the stream open). Default 2 s.
    pub heartbeat: Duration,
    /// Connections open at once, streams included; one more is answered 503 and closed at once.
    /// Default 32.
    pub max_connections: usize,
    /// A write to a client that takes longer than this fails and the connection is closed.
    /// Default 5 s.
    pub send_timeout: Duration,
    /// A request must arrive whole (head of at most 8 KiB and 64 lines, body of at most 8 KiB)
    /// within this, or it is answered 408 and closed. Default 5 s.
    pub request_timeout: Duration,
}

/// Request head bytes accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Header lines accepted.
pub const MAX_HEADERS: usize = 64;
/// A larger declared body is refused with 413 before a byte of it is read.
pub const MAX_BODY_BYTES: u64 = 8 * 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            max_stream_clients: 8,
            heartbeat: Duration::from_secs(2),
            max_connections: 32,
            send_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("display server cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("display server could not start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The endpoints, for routing and for the per-endpoint request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Page,
    Latest,
    Stream,
    History,
    Frame,
    FrameOutline,
    Saliency,
    Metrics,
    Healthz,
    NotFound,
}

impl Endpoint {
    const ALL: [Endpoint; 10] = [
        Self::Page,
        Self::Latest,
        Self::Stream,
        Self::History,
        Self::Frame,
        Self::FrameOutline,
        Self::Saliency,
        Self::Metrics,
        Self::Healthz,
        Self::NotFound,
    ];

    fn route(path: &str) -> Self {
        match path {
            "/" | "/index.html" => Self::Page,
            "/api/latest" => Self::Latest,
            "/api/stream" => Self::Stream,
            "/api/history" => Self::History,
            "/api/frame" => Self::Frame,
            "/api/frame/outline" => Self::FrameOutline,
            "/api/saliency" => Self::Saliency,
            "/metrics" => Self::Metrics,
            "/healthz" => Self::Healthz,
            _ => Self::NotFound,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Page => "page",
            Self::Latest => "latest",
            Self::Stream => "stream",
            Self::History => "history",
            Self::Frame => "frame",
            Self::FrameOutline => "frame_outline",
            Self::Saliency => "saliency",
            Self::Metrics => "metrics",
            Self::Healthz => "healthz",
            Self::NotFound => "not_found",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// Refusals before a handler, by `WireError::label` (plus `connection_limit`).
const REFUSAL_LABELS: [&str; 8] = [
    "connection_limit",
    "timeout",
    "head_too_large",
    "too_many_headers",
    "body_too_large",
    "malformed",
    "bad_version",
    "chunked_body",
];

struct Shared {
    hub: Arc<DisplayHub>,
    config: ServerConfig,
    limits: WireLimits,
    stop: AtomicBool,
    requests: [AtomicU64; Endpoint::ALL.len()],
    refused: [AtomicU64; REFUSAL_LABELS.len()],
    slots: Arc<ConnectionSlots>,
}

impl Shared {
    fn count_refusal(&self, label: &str) {
        if let Some(i) = REFUSAL_LABELS.iter().position(|l| *l == label) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running display server. Dropping it (or `shutdown`) stops the workers and ends every stream
/// within a fraction of a second (a stream stuck writing to a client within `send_timeout`).
pub struct DisplayServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DisplayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DisplayServer {
    pub fn start(hub: Arc<DisplayHub>, config: ServerConfig) -> Result<Self, ServerError> {
        let requested = config.addr;
        let bind_error = |source| ServerError::Bind {
            addr: requested,
            source,
        };
        let listener = TcpListener::bind(requested).map_err(bind_error)?;
        // Non-blocking, so the accept thread can wait in poll(2) with a timeout and see `stop`.
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let limits = WireLimits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
            request_timeout: config.request_timeout,
        };
        let shared = Arc::new(Shared {
            hub,
            config,
            limits,
            stop: AtomicBool::new(false),
            requests: Default::default(),
            refused: Default::default(),
            slots: Arc::new(ConnectionSlots::default()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("display-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))
            .map_err(ServerError::Thread)?;
        tracing::debug!("display at http://{addr}/");
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address actually bound (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn shutdown(self) {
        // Drop does the work.
    }
}

impl Drop for DisplayServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.acceptor.take() {
            if handle.join().is_err() {
                tracing::error!("the display accept thread panicked");
            }
        }
        // The accept thread dropped the listener; connection threads see `stop` within `POLL`.
    }
}

/// Waits for connections (poll with a timeout, so `stop` is seen) and gives each a thread, or a
/// 503 when `max_connections` are open.
fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stop.load(Ordering::Relaxed) {
        pfd.revents = 0;
        // SAFETY: one valid pollfd for the listener's open descriptor, which outlives the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => admit(shared, stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!("display server: accept failed: {e}");
                    std::thread::sleep(POLL);
                    break;
                }
            }
        }
    }
}

fn admit(shared: &Arc<Shared>, mut stream: TcpStream) {
    let configured = stream.set_nonblocking(false).is_ok()
        && stream
            .set_write_timeout(Some(shared.config.send_timeout))
            .is_ok();
    if !configured {
        return;
    }
    let _ = stream.set_nodelay(true);
    let Some(slot) = shared.slots.try_take(shared.config.max_connections.max(1)) else {
        shared.count_refusal("connection_limit");
        shared.slots.rejected.fetch_add(1, Ordering::Relaxed);
        // A fresh socket's send buffer takes this at once; the short timeout bounds the rest.
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let body = error_json(
            "too many connections",
            &format!(
                "{} connections are open (limit {})",
                shared.slots.open(),
                shared.config.max_connections
            ),
        );
        let _ = write_response(
            &mut stream,
            503,
            &[("Content-Type", JSON), NO_STORE, ("Retry-After", "1")],
            body.as_bytes(),
            false,
        );
        return;
    };
    let thread_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("display-conn".into())
        .spawn(move || serve_connection(&thread_shared, stream, slot));
    if let Err(e) = spawned {
        // The closure (stream and slot) is dropped: the connection closes, the slot frees.
        tracing::warn!("display: no thread for a connection: {e}");
    }
}

fn serve_connection(shared: &Arc<Shared>, mut stream: TcpStream, slot: SlotGuard) {
    let stop = || shared.stop.load(Ordering::Relaxed);
    let head = match read_request(&mut stream, &shared.limits, &stop) {
        Ok(head) => head,
        Err(e) => {
            refuse(shared, &mut stream, &e);
            return;
        }
    };
    let request = Request {
        head,
        stream: Some(stream),
        slot: Some(slot),
    };
    // A bug in one handler must not take the server down: the request (dropped during
    // unwinding) is answered 500 by `Request`'s drop.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| handle(shared, request)));
    if outcome.is_err() {
        tracing::error!("display request handler panicked");
    }
}

/// Answers a request refused by the wire layer (nothing for a peer that is gone).
fn refuse(shared: &Shared, stream: &mut TcpStream, error: &WireError) {
    shared.count_refusal(error.label());
    let Some(status) = error.status() else {
        return;
    };
    tracing::debug!(
        "display: refused a request: {}",
        error.reason(&shared.limits)
    );
    let body = error_json(
        crate::publish::http_wire::reason_phrase(status),
        &error.reason(&shared.limits),
    );
    let _ = write_response(
        stream,
        status,
        &[("Content-Type", JSON), NO_STORE],
        body.as_bytes(),
        false,
    );
}

/// One request read from a connection. Answered exactly once (or turned into a stream); one
/// dropped unanswered (a handler that panicked) is answered 500.
struct Request {
    head: RequestHead,
    stream: Option<TcpStream>,
    slot: Option<SlotGuard>,
}

impl Request {
    fn url(&self) -> &str {
        &self.head.target
    }

    fn method(&self) -> &str {
        &self.head.method
    }

    fn respond(mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let head_only = self.head.method == "HEAD";
        if let Some(mut stream) = self.stream.take() {
            if let Err(e) = write_response(&mut stream, status, headers, body, head_only) {
                tracing::debug!("display client went away: {e}");
            }
        }
    }

    /// The raw connection and its slot, for a response written over time (SSE).
    fn into_stream(mut self) -> Option<(TcpStream, SlotGuard)> {
        Some((self.stream.take()?, self.slot.take()?))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let body = error_json("internal error", "the request handler failed");
            let _ = write_response(
                &mut stream,
                500,
                &[("Content-Type", JSON), NO_STORE],
                body.as_bytes(),
                false,
            );
        }
    }
}

fn respond(request: Request, status: u16, body: &[u8], headers: &[(&str, &str)]) {
    request.respond(status, headers, body);
}

const JSON: &str = "application/json; charset=utf-8";
const NO_STORE: (&str, &str) = ("Cache-Control", "no-store");

fn respond_json(request: Request, status: u16, body: String, extra: &[(&str, &str)]) {
    let mut headers = vec![("Content-Type", JSON), NO_STORE];
    headers.extend_from_slice(extra);
    respond(request, status, body.as_bytes(), &headers);
}

fn error_json(error: &str, reason: &str) -> String {
    serde_json::json!({ "error": error, "reason": reason }).to_string()
}

fn handle(shared: &Arc<Shared>, request: Request) {
    let path = request
        .url()
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    let endpoint = Endpoint::route(&path);
    shared.requests[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    let method = request.method().to_string();
    let allowed = match endpoint {
        Endpoint::Stream => method == "GET",
        _ => method == "GET" || method == "HEAD",
    };
    if endpoint != Endpoint::NotFound && !allowed {
        let allow = if endpoint == Endpoint::Stream {
            "GET"
        } else {
            "GET, HEAD"
        };
        respond_json(
            request,
            405,
            error_json("method not allowed", &format!("{method} {path}")),
            &[("Allow", allow)],
        );
        return;
    }
    let hub = &shared.hub;
    match endpoint {
        Endpoint::Page => respond(
            request,
            200,
            PAGE.as_bytes(),
            &[
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Security-Policy", PAGE_CSP),
                ("X-Content-Type-Options", "nosniff"),
                ("Cache-Control", "no-cache"),
            ],
        ),
        Endpoint::Latest => match hub.latest() {
            Some(latest) => {
                // The age lets a polling page tell an old number from a live one without
                // comparing its clock with ours.
                let age_ms = format!("{:.0}", latest.received.elapsed().as_secs_f64() * 1000.0);
                respond_json(
                    request,
                    200,
                    latest.json.to_string(),
                    &[("X-Estimate-Age-Ms", &age_ms)],
                );
            }
            None => respond_json(
                request,
                503,
                error_json(
                    "no estimate yet",
                    "the publisher has not produced an estimate since the display started",
                ),
                &[("Retry-After", "1")],
            ),
        },
        Endpoint::Stream => start_stream(shared, request),
        Endpoint::History => match hub.history_json() {
            Ok(body) => respond_json(request, 200, body, &[]),
            Err(e) => respond_json(
                request,
                500,
                error_json("history unavailable", &e.to_string()),
                &[],
            ),
        },
        Endpoint::Frame => match hub.frame() {
            Some(frame) => {
                let seq = frame.seq.to_string();
                respond(
                    request,
                    200,
                    &frame.bytes,
                    &[
                        ("Content-Type", frame.content_type),
                        NO_STORE,
                        ("X-Frame-Seq", &seq),
                    ],
                );
            }
            None => respond_json(
                request,
                503,
                error_json("no frame yet", "the publisher has not published a frame"),
                &[("Retry-After", "1")],
            ),
        },
        Endpoint::FrameOutline => match hub.frame() {
            Some(frame) => respond_json(request, 200, frame.meta.to_string(), &[]),
            None => respond_json(
                request,
                503,
                error_json("no frame yet", "the publisher has not published a frame"),
                &[("Retry-After", "1")],
            ),
        },
        Endpoint::Saliency => saliency(hub, request),
        Endpoint::Metrics => {
            let mut text = hub.render_metrics();
            render_request_counters(shared, &mut text);
            respond(
                request,
                200,
                text.as_bytes(),
                &[
                    ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                    NO_STORE,
                ],
            );
        }
        Endpoint::Healthz => {
            let (status, body) = match hub.health() {
                Health::Fed { .. } => (200, "ok\n".to_string()),
                Health::NeverFed => (503, "stale: no estimate or heartbeat yet\n".to_string()),
                Health::Failed { faults } => (503, format!("failed: {}\n", faults.join("; "))),
                Health::Stale { age } => (
                    503,
                    format!(
                        "stale: no estimate or heartbeat for {:.1} s\n",
                        age.as_secs_f64()
                    ),
                ),
            };
            respond(
                request,
                status,
                body.as_bytes(),
                &[("Content-Type", "text/plain; charset=utf-8"), NO_STORE],
            );
        }
        Endpoint::NotFound => respond_json(request, 404, error_json("not found", &path), &[]),
    }
}

fn render_request_counters(shared: &Shared, out: &mut String) {
    use std::fmt::Write as _;
    let name = "echonet_display_http_requests_total";
    let _ = write!(
        out,
        "# HELP {name} HTTP requests to the display, by endpoint.\n# TYPE {name} counter\n"
    );
    for endpoint in Endpoint::ALL {
        let count = shared.requests[endpoint.index()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {count}", endpoint.label());
    }
    let name = "echonet_display_http_refused_total";
    let _ = write!(
        out,
        "# HELP {name} Connections or requests refused before reaching an endpoint, by reason.\n# TYPE {name} counter\n"
    );
    for (i, label) in REFUSAL_LABELS.iter().enumerate() {
        let count = shared.refused[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{reason=\"{label}\"}} {count}");
    }
    let name = "echonet_display_http_connections";
    let _ = write!(
        out,
        "# HELP {name} Open display connections (streams included).\n# TYPE {name} gauge\n{name} {}\n",
        shared.slots.open()
    );
}

/// Hands a stream request to a thread of its own, or answers 503 at the client limit.
fn start_stream(shared: &Arc<Shared>, request: Request) {
    let subscription = match shared.hub.subscribe(shared.config.max_stream_clients) {
        Ok(s) => s,
        Err(e) => {
            respond_json(
                request,
                503,
                error_json("too many stream clients", &e.to_string()),
                &[("Retry-After", "5")],
            );
            return;
        }
    };
    // This connection's thread becomes the stream's: it already holds the connection's slot.
    if let Some((stream, _slot)) = request.into_stream() {
        run_stream(shared, &subscription, stream);
    }
}

/// Writes the SSE response until the client goes away or the server stops. Events waiting in the
/// queue are written together and flushed once.
fn run_stream(shared: &Shared, subscription: &Subscription, mut out: TcpStream) {
    let head = "HTTP/1.1 200 OK\r\n\
                Content-Type: text/event-stream; charset=utf-8\r\n\
                Cache-Control: no-store\r\n\
                Connection: close\r\n\
                X-Accel-Buffering: no\r\n\r\n\
                retry: 1000\n\n";
    if out
        .write_all(head.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    let heartbeat = shared.config.heartbeat;
    let mut last_write = Instant::now();
    let mut buf = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let wait = heartbeat.saturating_sub(last_write.elapsed()).min(POLL);
        buf.clear();
        if let Some(event) = subscription.recv_timeout(wait) {
            push_event(&mut buf, event.name, &event.data);
            // Whatever else is already queued goes out in the same write.
            for event in std::iter::from_fn(|| subscription.try_recv()).take(32) {
                push_event(&mut buf, event.name, &event.data);
            }
        } else if last_write.elapsed() >= heartbeat {
            buf.push_str(": heartbeat\n\n");
        } else {
            continue;
        }
        if out
            .write_all(buf.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // Closed, reset, or not reading within the send timeout: the client is gone, and
            // dropping the subscription removes it from the hub.
            return;
        }
        last_write = Instant::now();
    }
}

fn push_event(buf: &mut String, name: &str, data: &str) {
    buf.push_str("event: ");
    buf.push_str(name);
    buf.push('\n');
    // Compact JSON has no raw newlines, but SSE needs one `data:` line per line whatever comes.
    for line in data.split('\n') {
        buf.push_str("data: ");
        buf.push_str(line);
        buf.push('\n');
    }
    buf.push('\n');
}

/// The value of `key` in the request's query string (no percent-decoding: task names are plain).
fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1.split('#').next()?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `GET /api/saliency?task=lv_volume[&samples=N]`: the SmoothGrad map of the newest usable model
/// input, as a PNG, from the low-priority saliency worker. 404 before any usable frame, 503 while
/// another map is being computed (or with no worker), 400 for an unknown task.
fn saliency(hub: &DisplayHub, request: Request) {
    let Some(worker) = hub.saliency_worker() else {
        respond_json(
            request,
            503,
            error_json(
                "saliency unavailable",
                "this display has no saliency worker (no model attached)",
            ),
            &[],
        );
        return;
    };
    let Some(ModelInput { seq, input, sector }) = hub.model_input() else {
        respond_json(
            request,
            404,
            error_json(
                "no frame yet",
                "no usable frame has reached the model since the display started",
            ),
            &[("Retry-After", "1")],
        );
        return;
    };
    let url = request.url().to_string();
    let task = query_param(&url, "task");
    let samples = match query_param(&url, "samples").map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            respond_json(
                request,
                400,
                error_json("bad request", "samples must be a whole number"),
                &[],
            );
            return;
        }
    };
    match worker.request(input, sector, task, samples) {
        Ok(r) => {
            let seq = seq.to_string();
            let ms = format!("{:.0}", r.compute.as_secs_f64() * 1000.0);
            respond(
                request,
                200,
                &r.png,
                &[
                    ("Content-Type", "image/png"),
                    NO_STORE,
                    ("X-Frame-Seq", &seq),
                    ("X-Saliency-Task", &r.task),
                    ("X-Saliency-Ms", &ms),
                ],
            );
        }
        Err(e @ Refusal::Busy) => respond_json(
            request,
            503,
            error_json("busy", &e.to_string()),
            &[("Retry-After", "1")],
        ),
        Err(e @ Refusal::BadRequest(_)) => {
            respond_json(request, 400, error_json("bad request", &e.to_string()), &[])
        }
        Err(e @ Refusal::Unavailable(_)) => respond_json(
            request,
            503,
            error_json("saliency unavailable", &e.to_string()),
            &[],
        ),
        Err(e @ Refusal::Failed(_)) => respond_json(
            request,
            500,
            error_json("saliency failed", &e.to_string()),
            &[],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_labels() {
        assert_eq!(Endpoint::route("/"), Endpoint::Page);
        assert_eq!(
            Endpoint::route("/api/frame/outline"),
            Endpoint::FrameOutline
        );
        assert_eq!(Endpoint::route("/api/latest/"), Endpoint::NotFound);
        let labels: std::collections::HashSet<_> =
            Endpoint::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(labels.len(), Endpoint::ALL.len());
        assert!(Endpoint::ALL
            .iter()
            .enumerate()
            .all(|(i, e)| e.index() == i));
    }

    #[test]
    fn events_split_lines() {
        let mut buf = String::new();
        push_event(&mut buf, "estimate", "{\"a\":1}\nx");
        assert_eq!(buf, "event: estimate\ndata: {\"a\":1}\ndata: x\n\n");
    }
}
