//! Shared by the display tests: a server on an ephemeral port, estimates in schema v1, a
//! blocking HTTP client that does not treat 4xx/5xx as errors, and a WebDriver client.
#![allow(dead_code)]

pub mod webdriver;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use echonet_edge::aggregate::{Status, TaskEstimate, WindowQuality};
use echonet_edge::publish::{
    DisplayHub, DisplayServer, EstimateRecord, HubConfig, ModelInfo, ServerConfig, SourceSummary,
};
use serde_json::{json, Value};

pub const INTENDED_USE: &str = "demo, trained on synthetic phantom, not for clinical use";

pub fn start(hub: HubConfig, server: ServerConfig) -> (Arc<DisplayHub>, DisplayServer) {
    let hub = DisplayHub::new(hub);
    let server = DisplayServer::start(
        hub.clone(),
        ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..server
        },
    )
    .expect("display server starts");
    (hub, server)
}

/// 2026-11-27T10:00:00.123Z
fn capture_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_773_600_123)
}

/// An `ok` estimate with every field of schema v1, as the publisher hands it to the display.
pub fn estimate(seq: u64, ef: f64) -> EstimateRecord {
    let task = |value: f64, unit: &str, spread: Option<f64>| TaskEstimate {
        value,
        unit: unit.into(),
        spread,
    };
    EstimateRecord {
        seq: Some(seq),
        capture_time: Some(capture_time()),
        publish_time: capture_time() + Duration::from_millis(47),
        latency_ms: Some(47.0),
        status: Status::Ok,
        withheld_reason: None,
        estimates: [
            ("ef".to_string(), task(ef, "%", Some(3.2))),
            ("esv".to_string(), task(48.0, "mL", Some(5.0))),
            ("edv".to_string(), task(107.0, "mL", Some(6.1))),
            ("ef_from_volumes".to_string(), task(55.1, "%", None)),
        ]
        .into_iter()
        .collect(),
        quality: WindowQuality {
            valid_frames: 18,
            window: 20,
            reasons: [("frozen".to_string(), 2)].into_iter().collect(),
        },
        agreement: None,
        ood: None,
        model: ModelInfo {
            id: "echonet-phantom-v1".into(),
            intended_use: INTENDED_USE.into(),
            content_hash: "sha256:0123456789abcdef0123456789abcdef".into(),
            precision: "f32".into(),
            ood_gate: "off: the bundle has no training statistics".into(),
        },
        source: SourceSummary {
            kind: "phantom".into(),
            name: "seed 1".into(),
        },
    }
}

/// [`estimate`] as it must appear on the wire (`/api/latest`, the stream, JSON Lines), spelled
/// out by hand in schema v1.
pub fn estimate_json(seq: u64, ef: f64) -> Value {
    json!({
        "schema": "echonet.estimate/1",
        "seq": seq,
        "capture_time": "2026-11-27T10:00:00.123Z",
        "publish_time": "2026-11-27T10:00:00.170Z",
        "latency_ms": 47.0,
        "status": "ok",
        "withheld_reason": null,
        "estimates": {
            "ef": {"value": ef, "unit": "%", "spread": 3.2},
            "esv": {"value": 48.0, "unit": "mL", "spread": 5.0},
            "edv": {"value": 107.0, "unit": "mL", "spread": 6.1},
            "ef_from_volumes": {"value": 55.1, "unit": "%", "spread": null}
        },
        "quality": {"valid_frames": 18, "window": 20, "reasons": {"frozen": 2}},
        "agreement": null,
        "ood": null,
        "model": {"id": "echonet-phantom-v1", "intended_use": INTENDED_USE,
                  "content_hash": "sha256:0123456789abcdef0123456789abcdef",
                  "precision": "f32",
                  "ood_gate": "off: the bundle has no training statistics"},
        "source": {"kind": "phantom", "name": "seed 1"}
    })
}

pub fn withheld(seq: u64, reason: &str) -> EstimateRecord {
    EstimateRecord {
        status: Status::Withheld,
        withheld_reason: Some(reason.to_string()),
        estimates: Default::default(),
        ..estimate(seq, 0.0)
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub fn get(server: &DisplayServer, path: &str) -> Reply {
    get_within(server, path, Duration::from_secs(20))
}

/// `get` for a request whose answer may take long on a loaded machine (a saliency map is
/// computed at the lowest CPU priority, behind every other test running in parallel).
pub fn get_within(server: &DisplayServer, path: &str, limit: Duration) -> Reply {
    let url = format!("http://{}{path}", server.local_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limit))
        .build()
        .into();
    let mut r = agent.get(&url).call().expect("GET");
    Reply {
        status: r.status().as_u16(),
        content_type: r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        headers: r.headers().clone(),
        body: r.body_mut().read_to_vec().expect("body"),
    }
}
