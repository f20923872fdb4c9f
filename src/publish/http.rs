//! The bedside display's HTTP server: the page, the latest estimate, a Server-Sent Events stream,
//! the trend history, the live frame, Prometheus metrics and a health check, all read from a
//! `DisplayHub`. Synchronous (tiny_http): a few worker threads answer short requests, and every
//! stream client gets its own thread, up to a limit.
//!
//! Nothing here can hold up the publisher: the hub never waits for a client, and a client that
//! stops reading is cut off by a send timeout on its socket as soon as an event no longer fits in
//! its socket buffers. A closed or reset connection shows up at the next write, which the
//! heartbeat guarantees every few seconds.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::hub::{DisplayHub, Health, Subscription};
use crate::explain::worker::Refusal;

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
    /// Threads answering the short requests. Default 2.
    pub workers: usize,
    /// A write to a client that takes longer than this fails and the connection is closed.
    /// Default 5 s.
    pub send_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            max_stream_clients: 8,
            heartbeat: Duration::from_secs(2),
            workers: 2,
            send_timeout: Duration::from_secs(5),
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
    #[error("display server on {addr} could not start: {reason}")]
    Start { addr: SocketAddr, reason: String },
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

struct Shared {
    hub: Arc<DisplayHub>,
    config: ServerConfig,
    stop: AtomicBool,
    requests: [AtomicU64; Endpoint::ALL.len()],
}

/// A running display server. Dropping it (or `shutdown`) stops the workers and ends every stream
/// within a fraction of a second (a stream stuck writing to a client within `send_timeout`).
pub struct DisplayServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
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
        let listener = TcpListener::bind(requested).map_err(|source| ServerError::Bind {
            addr: requested,
            source,
        })?;
        // Linux (and the BSDs) copy the send timeout of a listening socket to the sockets it
        // accepts; tiny_http gives no other way to bound a write to a client that stops reading.
        socket2::SockRef::from(&listener)
            .set_write_timeout(Some(config.send_timeout))
            .map_err(|source| ServerError::Bind {
                addr: requested,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: requested,
            source,
        })?;
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(|e| ServerError::Start {
                addr,
                reason: e.to_string(),
            })?;
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            hub,
            config,
            stop: AtomicBool::new(false),
            requests: Default::default(),
        });
        let mut this = Self {
            addr,
            shared,
            workers: Vec::new(),
        };
        for i in 0..this.shared.config.workers.max(1) {
            let shared = Arc::clone(&this.shared);
            let server = Arc::clone(&server);
            let handle = std::thread::Builder::new()
                .name(format!("display-http-{i}"))
                .spawn(move || worker(&shared, &server))
                .map_err(ServerError::Thread)?;
            this.workers.push(handle);
        }
        tracing::info!("display at http://{addr}/");
        Ok(this)
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
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a display worker thread panicked");
            }
        }
        // The last worker dropped the tiny_http server, which closes the listener.
    }
}

fn worker(shared: &Arc<Shared>, server: &tiny_http::Server) {
    while !shared.stop.load(Ordering::Relaxed) {
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => {
                // A bug in one handler must not shrink the pool: the request (dropped during
                // unwinding) is answered 500 by tiny_http and the worker goes on.
                let outcome =
                    std::panic::catch_unwind(AssertUnwindSafe(|| handle(shared, request)));
                if outcome.is_err() {
                    tracing::error!("display request handler panicked");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("display server: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond<R: std::io::Read>(
    request: Request,
    mut response: Response<R>,
    headers: &[(&str, &str)],
) {
    for (name, value) in headers {
        if let Some(h) = header(name, value) {
            response.add_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!("display client went away: {e}");
    }
}

const JSON: &str = "application/json; charset=utf-8";
const NO_STORE: (&str, &str) = ("Cache-Control", "no-store");

fn respond_json(request: Request, status: u16, body: String, extra: &[(&str, &str)]) {
    let mut headers = vec![("Content-Type", JSON), NO_STORE];
    headers.extend_from_slice(extra);
    respond(
        request,
        Response::from_string(body).with_status_code(StatusCode(status)),
        &headers,
    );
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
    let method = request.method().clone();
    let allowed = match endpoint {
        Endpoint::Stream => method == Method::Get,
        _ => method == Method::Get || method == Method::Head,
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
            Response::from_string(PAGE),
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
                    Response::from_data(frame.bytes.to_vec()),
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
                Response::from_string(text),
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
                Response::from_string(body).with_status_code(StatusCode(status)),
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
    let thread_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("display-sse".into())
        .spawn(move || {
            let writer = request.into_writer();
            run_stream(&thread_shared, &subscription, writer);
        });
    if let Err(e) = spawned {
        // The closure, request included, is dropped: tiny_http answers it 500, and dropping the
        // subscription unregisters it.
        tracing::warn!("display: no thread for a stream client: {e}");
    }
}

/// Writes the SSE response until the client goes away or the server stops. Events waiting in the
/// queue are written together and flushed once.
fn run_stream(shared: &Shared, subscription: &Subscription, mut out: Box<dyn Write + Send>) {
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
    let Some((seq, input)) = hub.model_input() else {
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
    match worker.request(input, task, samples) {
        Ok(r) => {
            let seq = seq.to_string();
            let ms = format!("{:.0}", r.compute.as_secs_f64() * 1000.0);
            respond(
                request,
                Response::from_data(r.png),
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
