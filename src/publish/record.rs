//! The published estimate record, schema `echonet.estimate/1` (documented in
//! docs/estimate-schema.md): one JSON object per estimate, the same for JSON Lines, `/api/latest`
//! and `/api/stream`.

use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};

use crate::aggregate::{Estimate, Status, WindowQuality};
use crate::timefmt::rfc3339_millis;

pub const SCHEMA: &str = "echonet.estimate/1";

/// Which model produced the numbers, carried in every record.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub intended_use: String,
    pub content_hash: String,
    /// What the model computes in: `f32`, `f16`, `bf16` or `int8` (`EchoNetModel::precision`).
    pub precision: String,
}

/// Where the frames came from.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSummary {
    pub kind: String,
    pub name: String,
}

/// The record for an estimate (ok or withheld), published at `published_at`.
pub fn estimate_record(
    e: &Estimate,
    published_at: Instant,
    published_wall: SystemTime,
    model: &ModelInfo,
    source: &SourceSummary,
) -> Value {
    let latency_ms = published_at
        .saturating_duration_since(e.captured_at)
        .as_secs_f64()
        * 1000.0;
    json!({
        "schema": SCHEMA,
        "seq": e.newest_seq,
        "capture_time": rfc3339_millis(e.captured_wall),
        "publish_time": rfc3339_millis(published_wall),
        "latency_ms": (latency_ms * 1000.0).round() / 1000.0,
        "status": e.status,
        "withheld_reason": e.withheld_reason,
        "estimates": e.estimates,
        "quality": e.quality,
        "agreement": e.agreement,
        "model": model,
        "source": source,
    })
}

/// The record saying no current estimate exists: no numbers, the reason, and when the last
/// frame was captured (if any).
pub fn stale_record(
    reason: &str,
    last_capture: Option<SystemTime>,
    published_wall: SystemTime,
    quality: WindowQuality,
    model: &ModelInfo,
    source: &SourceSummary,
) -> Value {
    json!({
        "schema": SCHEMA,
        "seq": null,
        "capture_time": last_capture.map(rfc3339_millis),
        "publish_time": rfc3339_millis(published_wall),
        "latency_ms": null,
        "status": Status::Stale,
        "withheld_reason": reason,
        "estimates": {},
        "quality": quality,
        "model": model,
        "source": source,
    })
}
