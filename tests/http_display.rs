//! The display server over real sockets: every endpoint, the SSE stream read raw, health
//! transitions, the Prometheus text format, client limits, and that a client that never reads
//! cannot slow the publisher down.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod display_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use display_support::{estimate, estimate_json, get, start, withheld};
use echonet_edge::frame::Image;
use echonet_edge::publish::frame_mask::FramePolicy;
use echonet_edge::publish::{DisplayServer, HubConfig, ServerConfig};
use serde_json::{json, Value};

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw `/api/stream` connection; reads only when asked.
struct RawStream {
    socket: TcpStream,
    seen: String,
}

impl RawStream {
    fn open(server: &DisplayServer) -> Self {
        let mut socket = TcpStream::connect(server.local_addr()).unwrap();
        socket
            .write_all(
                b"GET /api/stream HTTP/1.1\r\nHost: display\r\nAccept: text/event-stream\r\n\r\n",
            )
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            socket,
            seen: String::new(),
        }
    }

    /// Reads until `needle` has been seen after byte `from` of the stream; returns the text from
    /// there on.
    fn read_until(&mut self, from: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while !self.seen[from..].contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the stream within {timeout:?}; got {:?}",
                &self.seen[from..]
            );
            match self.socket.read(&mut buf) {
                Ok(0) => panic!("stream closed; got {:?}", self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("stream read: {e}"),
            }
        }
        self.seen[from..].to_string()
    }
}

/// The data of the first `event: NAME` in `text`.
fn event_data(text: &str, name: &str) -> Value {
    let start = text
        .find(&format!("event: {name}\n"))
        .expect("event present");
    let data_line = text[start..].lines().nth(1).expect("data line");
    let data = data_line.strip_prefix("data: ").expect("data: prefix");
    serde_json::from_str(data).expect("event data is JSON")
}

#[test]
fn latest_is_503_with_reason_before_the_first_estimate_then_the_estimate() {
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    let r = get(&server, "/api/latest");
    assert_eq!(r.status, 503);
    assert!(r.content_type.starts_with("application/json"));
    assert_eq!(r.json()["error"], "no estimate yet");
    assert!(r.json()["reason"].as_str().unwrap().contains("publisher"));

    hub.publish_estimate(&estimate(1, 55.1)).unwrap();
    hub.publish_estimate(&estimate(2, 41.0)).unwrap();
    let r = get(&server, "/api/latest");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), estimate_json(2, 41.0));
    let age: f64 = r.headers["x-estimate-age-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..5000.0).contains(&age), "{age}");
    assert_eq!(r.headers["cache-control"], "no-store");
}

#[test]
fn healthz_follows_the_feed_and_goes_stale() {
    let (hub, server) = start(
        HubConfig {
            stale_after: Duration::from_millis(300),
            ..HubConfig::default()
        },
        ServerConfig::default(),
    );
    let r = get(&server, "/healthz");
    assert_eq!(r.status, 503);
    assert!(r.text().starts_with("stale"), "{}", r.text());

    hub.publish_estimate(&estimate(1, 50.0)).unwrap();
    let r = get(&server, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));

    std::thread::sleep(Duration::from_millis(400));
    let r = get(&server, "/healthz");
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("no estimate or heartbeat for"),
        "{}",
        r.text()
    );

    // A heartbeat alone keeps the daemon healthy (e.g. while a window fills).
    hub.heartbeat();
    assert_eq!(get(&server, "/healthz").status, 200);
}

/// Parses Prometheus text exposition (format 0.0.4) strictly enough to catch malformed lines:
/// every sample belongs to a family declared by `# TYPE` before it, and every value is a float.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
            assert!(!name.is_empty() && !help.is_empty(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label k=v");
                    assert!(
                        !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                        "{line:?}"
                    );
                }
            }
        }
        assert!(
            types.contains_key(name),
            "sample before its # TYPE: {line:?}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[test]
fn metrics_are_prometheus_text_with_the_hubs_counters() {
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    hub.set_metrics_text(
        "# HELP echonet_frames_total Frames captured.\n# TYPE echonet_frames_total counter\n\
         echonet_frames_total 17"
            .to_string(),
    );
    hub.publish_estimate(&estimate(1, 50.0)).unwrap();
    get(&server, "/api/latest");
    get(&server, "/api/latest");
    get(&server, "/nope");
    let r = get(&server, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    let m = parse_metrics(&r.text());
    assert_eq!(m["echonet_frames_total"], 17.0);
    assert_eq!(m["echonet_display_estimates_total"], 1.0);
    assert_eq!(m["echonet_display_sse_clients"], 0.0);
    assert_eq!(m["echonet_display_sse_dropped_events_total"], 0.0);
    assert_eq!(
        m["echonet_display_http_requests_total{endpoint=\"latest\"}"],
        2.0
    );
    assert_eq!(
        m["echonet_display_http_requests_total{endpoint=\"not_found\"}"],
        1.0
    );
    assert_eq!(
        m["echonet_display_http_requests_total{endpoint=\"metrics\"}"],
        1.0
    );
    assert!(m.contains_key("echonet_display_last_update_age_seconds"));

    // A provider is asked on every scrape.
    let scrapes = Arc::new(AtomicU64::new(0));
    let counter = scrapes.clone();
    hub.set_metrics_provider(move || {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("# HELP echonet_scrapes_total Scrapes.\n# TYPE echonet_scrapes_total counter\nechonet_scrapes_total {n}\n")
    });
    assert_eq!(
        parse_metrics(&get(&server, "/metrics").text())["echonet_scrapes_total"],
        1.0
    );
    let m = parse_metrics(&get(&server, "/metrics").text());
    assert_eq!(m["echonet_scrapes_total"], 2.0);
    assert!(!m.contains_key("echonet_frames_total"));
}

#[test]
fn stream_sends_snapshot_then_each_estimate_and_heartbeats() {
    let (hub, server) = start(
        HubConfig::default(),
        ServerConfig {
            heartbeat: Duration::from_millis(150),
            ..ServerConfig::default()
        },
    );
    hub.publish_estimate(&estimate(1, 50.0)).unwrap();
    let mut stream = RawStream::open(&server);
    let head = stream.read_until(0, "\r\n\r\n", Duration::from_secs(5));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");

    // A late client learns the latest estimate and how old it is.
    stream.read_until(0, "event: snapshot\n", Duration::from_secs(5));
    let text = stream.read_until(0, "}}\n\n", Duration::from_secs(5));
    let snapshot = event_data(&text, "snapshot");
    assert_eq!(snapshot["estimate"]["seq"], 1);
    assert!(snapshot["age_ms"].as_f64().unwrap() >= 0.0);

    let from = stream.seen.len();
    hub.publish_estimate(&estimate(42, 63.0)).unwrap();
    stream.read_until(from, "event: estimate\n", Duration::from_secs(5));
    let text = stream.read_until(from, "}\n\n", Duration::from_secs(5));
    assert_eq!(event_data(&text, "estimate"), estimate_json(42, 63.0));

    let from = stream.seen.len();
    stream.read_until(from, ": heartbeat\n\n", Duration::from_secs(5));
}

#[test]
fn stream_clients_are_limited_and_disconnected_ones_removed() {
    let (hub, server) = start(
        HubConfig::default(),
        ServerConfig {
            max_stream_clients: 2,
            heartbeat: Duration::from_millis(100),
            ..ServerConfig::default()
        },
    );
    let mut a = RawStream::open(&server);
    let mut b = RawStream::open(&server);
    a.read_until(0, "retry:", Duration::from_secs(5));
    b.read_until(0, "retry:", Duration::from_secs(5));
    assert_eq!(hub.subscriber_count(), 2);

    let r = get(&server, "/api/stream");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "too many stream clients");

    // The heartbeat's write fails once the client is gone, and the slot frees up.
    drop(a);
    wait_for("the closed client to leave", Duration::from_secs(5), || {
        hub.subscriber_count() == 1
    });
    let mut c = RawStream::open(&server);
    c.read_until(0, "retry:", Duration::from_secs(5));
    let m = parse_metrics(&get(&server, "/metrics").text());
    assert_eq!(m["echonet_display_sse_clients"], 2.0);
    assert_eq!(m["echonet_display_sse_rejected_total"], 1.0);
    assert_eq!(
        m["echonet_display_http_requests_total{endpoint=\"stream\"}"],
        4.0
    );
}

#[test]
fn a_client_that_never_reads_does_not_block_the_publisher() {
    let (hub, server) = start(
        HubConfig::default(),
        ServerConfig {
            send_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        },
    );
    // Connects and never reads a byte.
    let _silent = RawStream::open(&server);
    wait_for("the client to subscribe", Duration::from_secs(5), || {
        hub.subscriber_count() == 1
    });

    // ~2 KB each, ~20 MB in all: more than the socket buffers hold, so the stream thread ends up
    // stuck in a write and the queue overflows.
    let mut template = estimate(0, 50.0);
    template.source.name = "x".repeat(2048);
    let started = Instant::now();
    for seq in 0..10_000u64 {
        let mut e = template.clone();
        e.seq = Some(seq);
        hub.publish_estimate(&e).unwrap();
    }
    let elapsed = started.elapsed();
    // Tens of milliseconds on an idle machine; the bound leaves room for a loaded CI runner, and
    // a publisher that waited on the client would take forever.
    assert!(
        elapsed < Duration::from_secs(10),
        "publishing took {elapsed:?}"
    );
    assert_eq!(hub.latest().unwrap().seq, Some(9_999));
    assert!(
        hub.dropped_events() > 0,
        "a full queue must drop (and count) events"
    );
    let m = parse_metrics(&get(&server, "/metrics").text());
    assert_eq!(
        m["echonet_display_sse_dropped_events_total"],
        hub.dropped_events() as f64
    );
    assert_eq!(m["echonet_display_estimates_total"], 10_000.0);

    // As estimates keep coming, a write to the stuck client runs into the send timeout, which
    // cuts it off and frees its slot. (A few heartbeat bytes can still be queued by the kernel,
    // so it takes real data to find out.)
    let mut seq = 10_000u64;
    wait_for(
        "the stuck client to be cut off",
        Duration::from_secs(10),
        || {
            let mut e = template.clone();
            e.seq = Some(seq);
            seq += 1;
            hub.publish_estimate(&e).unwrap();
            hub.subscriber_count() == 0
        },
    );
}

#[test]
fn history_returns_the_trend_points() {
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    hub.publish_estimate(&estimate(1, 55.0)).unwrap();
    hub.publish_estimate(&withheld(2, "too few valid frames (9/20)"))
        .unwrap();
    hub.publish_estimate(&estimate(3, 60.0)).unwrap();
    let r = get(&server, "/api/history");
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["window_s"], 600.0);
    assert!(h["now_ms"].as_f64().unwrap() > 1.7e12);
    let points = h["points"].as_array().unwrap();
    let summary: Vec<_> = points
        .iter()
        .map(|p| {
            (
                p["seq"].clone(),
                p["status"].clone(),
                p["ef"].clone(),
                p["edv"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(1), json!("ok"), json!(55.0), json!(107.0)),
            (json!(2), json!("withheld"), Value::Null, Value::Null),
            (json!(3), json!("ok"), json!(60.0), json!(107.0)),
        ]
    );
    assert!(points
        .windows(2)
        .all(|w| w[0]["t_ms"].as_f64() <= w[1]["t_ms"].as_f64()));
}

#[test]
fn frame_and_outline_are_served() {
    let (hub, server) = start(
        HubConfig {
            frame_interval: Duration::ZERO,
            // A frame without an outline is served only unmasked.
            frame_policy: FramePolicy::Unmasked,
            ..HubConfig::default()
        },
        ServerConfig::default(),
    );
    assert_eq!(get(&server, "/api/frame").status, 503);
    assert_eq!(get(&server, "/api/frame/outline").status, 503);

    let pixels: Vec<u8> = (0..800 * 600)
        .map(|i| ((i % 800) * 255 / 800) as u8)
        .collect();
    let image = Image::gray(800, 600, pixels).unwrap();
    let outline = vec![(400.0, 20.0), (60.0, 560.0), (740.0, 560.0)];
    assert!(hub.publish_frame(&image, Some(outline)).unwrap());
    assert!(hub.publish_frame(&image, None).unwrap());

    let r = get(&server, "/api/frame");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "image/jpeg");
    assert_eq!(r.headers["x-frame-seq"], "2");
    let decoded = image::load_from_memory(&r.body).unwrap();
    // 800 px wide, at most 320: a factor of 3.
    assert_eq!((decoded.width(), decoded.height()), (266, 200));

    let r = get(&server, "/api/frame/outline");
    assert_eq!(r.status, 200);
    let meta = r.json();
    assert_eq!(meta["seq"], 2);
    assert_eq!(
        (meta["source_width"].clone(), meta["width"].clone()),
        (json!(800), json!(266))
    );
    assert_eq!(meta["outline"], Value::Null);
}

#[test]
fn page_is_self_contained_and_carries_the_value_ids() {
    let (_hub, server) = start(HubConfig::default(), ServerConfig::default());
    let r = get(&server, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/html; charset=utf-8");
    assert!(r.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let page = r.text();
    for id in [
        "ef-value",
        "esv-value",
        "edv-value",
        "status",
        "intended-use",
        "withheld-reason",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "page lacks #{id}");
    }
    // Nothing from another origin: no CDN, no fonts, no external scripts.
    for needle in ["http://", "https://", "<script src", "<link", "@import"] {
        assert!(!page.contains(needle), "page contains {needle:?}");
    }
    assert!(page.contains("new EventSource('/api/stream')"));
    assert!(page.contains("fetch('/api/latest'"));
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let (_hub, server) = start(HubConfig::default(), ServerConfig::default());
    let r = get(&server, "/api/nothing");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not found");
    assert_eq!(get(&server, "/api/latest/extra").status, 404);

    let url = format!("http://{}/api/latest", server.local_addr());
    let r = display_support::agent().post(&url).send("x").unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
}

/// Sends `request` raw and returns everything the server writes before closing (bounded wait).
fn raw_exchange(server: &DisplayServer, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(server.local_addr()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before all of a hostile request is written.
    let _ = socket.write_all(request);
    let mut reply = Vec::new();
    let _ = socket.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn hostile_requests_get_a_clean_error_and_the_server_keeps_answering() {
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    hub.publish_estimate(&estimate(1, 50.0)).unwrap();

    // tiny_http allocated the declared body when discarding it: this aborted the daemon.
    let reply = raw_exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply}");
    assert!(
        reply.contains("99999999999"),
        "the error names the size: {reply}"
    );
    assert_eq!(get(&server, "/healthz").status, 200);

    // A header line of 1 MB: refused at the head limit, without reading it all.
    let mut long = b"GET /api/latest HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1 << 20));
    long.extend_from_slice(b"\r\n\r\n");
    let reply = raw_exchange(&server, &long);
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");

    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(raw_exchange(&server, &many).starts_with("HTTP/1.1 431 "));

    for (request, status) in [
        (
            &b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "501",
        ),
        (
            &b"GET /healthz HTTP/1.1\r\nContent-Length: -5\r\n\r\n"[..],
            "400",
        ),
        (
            &b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            "400",
        ),
        (&b"GET /healthz HTTP/9.9\r\n\r\n"[..], "505"),
        (&b"\x00\xff\xfe garbage\r\n\r\n"[..], "400"),
    ] {
        let reply = raw_exchange(&server, request);
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} -> {reply}",
            String::from_utf8_lossy(request)
        );
    }
    // A small body is read and discarded; the method is still refused by name.
    let reply = raw_exchange(
        &server,
        b"POST /api/latest HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
    // HEAD: the headers without the body.
    let reply = raw_exchange(&server, b"HEAD /healthz HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.ends_with("\r\n\r\n"), "HEAD sent a body: {reply:?}");

    assert_eq!(get(&server, "/healthz").status, 200);
    let m = parse_metrics(&get(&server, "/metrics").text());
    assert_eq!(
        m["echonet_display_http_refused_total{reason=\"body_too_large\"}"],
        1.0
    );
    assert_eq!(
        m["echonet_display_http_refused_total{reason=\"head_too_large\"}"],
        1.0
    );
}

#[test]
fn slow_and_surplus_connections_are_bounded() {
    let (hub, server) = start(
        HubConfig::default(),
        ServerConfig {
            max_connections: 3,
            request_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        },
    );
    hub.publish_estimate(&estimate(1, 50.0)).unwrap();
    // Three clients that send half a request line and stall (slowloris) hold every slot.
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(server.local_addr()).unwrap();
            s.write_all(b"GET /healthz HT").unwrap();
            s
        })
        .collect();
    // A fourth is answered 503 at once and closed (once the server has accepted all three).
    let mut reply = String::new();
    wait_for(
        "a surplus connection to be refused",
        Duration::from_secs(5),
        || {
            reply = raw_exchange(&server, b"GET /healthz HTTP/1.1\r\n\r\n");
            reply.starts_with("HTTP/1.1 503 ")
        },
    );
    assert!(reply.contains("too many connections"), "{reply}");

    // The stalled ones run into the request timeout: 408, then closed.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    }
    // Slots freed: the server answers again.
    wait_for("the server to answer again", Duration::from_secs(5), || {
        raw_exchange(&server, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 ")
    });
    let m = parse_metrics(&get(&server, "/metrics").text());
    assert!(m["echonet_display_http_refused_total{reason=\"connection_limit\"}"] >= 1.0);
    assert_eq!(
        m["echonet_display_http_refused_total{reason=\"timeout\"}"],
        3.0
    );
}

#[test]
fn the_served_frame_is_masked_to_the_sector_by_default() {
    let (hub, server) = start(
        HubConfig {
            frame_interval: Duration::ZERO,
            ..HubConfig::default()
        },
        ServerConfig::default(),
    );
    // A bright frame, as if text were burned in everywhere.
    let image = Image::gray(300, 200, vec![250; 300 * 200]).unwrap();
    // No sector known yet: nothing is served.
    assert!(!hub.publish_frame(&image, None).unwrap());
    assert_eq!(get(&server, "/api/frame").status, 503);

    let outline = vec![(150.0, 20.0), (40.0, 180.0), (260.0, 180.0)];
    assert!(hub.publish_frame(&image, Some(outline)).unwrap());
    let r = get(&server, "/api/frame");
    assert_eq!(r.status, 200);
    let decoded = image::load_from_memory(&r.body).unwrap().to_luma8();
    // Inside the triangle: bright; the top corners (where names and dates sit): black.
    assert!(decoded.get_pixel(150, 120)[0] > 200);
    assert!(decoded.get_pixel(5, 5)[0] < 20);
    assert!(decoded.get_pixel(294, 5)[0] < 20);

    // Frames off: nothing, whatever the outline.
    let (hub, server) = start(
        HubConfig {
            frame_policy: FramePolicy::Off,
            ..HubConfig::default()
        },
        ServerConfig::default(),
    );
    assert!(!hub
        .publish_frame(&image, Some(vec![(0.0, 0.0), (300.0, 0.0), (0.0, 200.0)]))
        .unwrap());
    assert_eq!(get(&server, "/api/frame").status, 503);
}

/// The trend history is what grew the daemon's memory in a soak (about 1.8 KB/s): it is capped,
/// by age (10 minutes) and by count (20 000 points, about 2 MB), so memory levels off whatever
/// the estimate rate. Here the count cap, with the daemon's settings: nothing ages out in a test
/// this short, and the oldest points go first.
#[test]
fn trend_history_levels_off_at_its_cap() {
    let config = HubConfig::default();
    let cap = config.history_max_points;
    assert_eq!(cap, 20_000);
    assert_eq!(config.history_window, Duration::from_secs(600));
    let (hub, server) = start(config, ServerConfig::default());
    let extra = 1_500u64;
    for seq in 0..cap as u64 + extra {
        hub.publish_estimate(&estimate(seq, 40.0 + (seq % 20) as f64))
            .unwrap();
        if seq as usize == cap - 1 {
            assert_eq!(hub.history().len(), cap);
        }
    }
    let history = hub.history();
    assert_eq!(history.len(), cap, "the history grew past its cap");
    assert_eq!(history.first().and_then(|p| p.seq), Some(extra));
    assert_eq!(
        history.last().and_then(|p| p.seq),
        Some(cap as u64 + extra - 1)
    );
    let metrics = get(&server, "/metrics").text();
    assert!(
        metrics.contains(&format!("echonet_display_history_points {cap}")),
        "{metrics}"
    );
    let served = get(&server, "/api/history").json();
    assert_eq!(served["points"].as_array().map(Vec::len), Some(cap));
}

/// A fault (the journal cannot be written, a stage died) reaches every page as a `faults` event
/// while the estimates keep coming; a page that connects later starts with it; clearing it sends
/// an empty list.
#[test]
fn faults_reach_the_page_as_events_while_estimates_carry_on() {
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    hub.publish_estimate(&estimate(1, 50.0)).unwrap();
    let early = hub.subscribe(4).unwrap();
    assert_eq!(early.try_recv().map(|e| e.name), Some("snapshot"));
    let reason = "journal /data/j.sqlite: disk I/O error";
    hub.set_fault("journal", Some(reason.to_string()));
    // The same fault again is no news.
    hub.set_fault("journal", Some(reason.to_string()));
    hub.publish_estimate(&estimate(2, 51.0)).unwrap();
    let e = early.try_recv().unwrap();
    assert_eq!(e.name, "faults");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v, json!({ "faults": [format!("journal: {reason}")] }));
    assert_eq!(early.try_recv().map(|e| e.name), Some("estimate"));
    assert!(early.try_recv().is_none());
    let r = get(&server, "/healthz");
    assert_eq!(r.status, 503);
    assert!(r.text().contains(reason), "{}", r.text());
    assert_eq!(get(&server, "/api/latest").status, 200);

    let late = hub.subscribe(4).unwrap();
    let names: Vec<&str> = std::iter::from_fn(|| late.try_recv().map(|e| e.name)).collect();
    assert_eq!(names, ["snapshot", "faults"]);

    hub.set_fault("journal", None);
    let e = early.try_recv().unwrap();
    assert_eq!(e.name, "faults");
    assert_eq!(&*e.data, r#"{"faults":[]}"#);
    assert_eq!(get(&server, "/healthz").status, 200);
}
