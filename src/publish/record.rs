//! The published estimate record, schema `echonet.estimate/1` (documented in
//! docs/estimate-schema.md): an estimate (ok or withheld) or a stale notice. It travels typed
//! from the publisher to every sink ([`EstimateRecord`]); a sink that writes it (JSON Lines, the
//! journal, the display's `/api/latest` and `/api/stream`) writes the same JSON object, made by
//! [`EstimateRecord::to_json`].

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::aggregate::{EfAgreement, Estimate, OodWindow, Status, TaskEstimate, WindowQuality};
use crate::timefmt::rfc3339_millis;

pub const SCHEMA: &str = "echonet.estimate/1";

/// Which model produced the numbers, carried in every record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub intended_use: String,
    pub content_hash: String,
    /// What the model computes in: `f32`, `f16`, `bf16` or `int8` (`EchoNetModel::precision`).
    pub precision: String,
    /// The out-of-distribution gate: `on: threshold ...`, or `off: the bundle has no training
    /// statistics` (`EchoNetModel::ood_gate`).
    pub ood_gate: String,
}

/// Where the frames came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceSummary {
    pub kind: String,
    pub name: String,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_millis(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339_millis(*t)),
        None => s.serialize_none(),
    }
}

/// The numbers the display shows as (EF, EDV, ESV), given each task's value, in the display's
/// order of preference: the volume-curve triple when the model has it, else the EF/ESV/EDV
/// heads, else EF from the volumes.
pub fn displayed_numbers(
    value: impl Fn(&str) -> Option<f64>,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let curve = (
        value("ef_volume_curve"),
        value("edv_volume_curve"),
        value("esv_volume_curve"),
    );
    if let (Some(_), Some(_), Some(_)) = curve {
        return curve;
    }
    (
        value("ef").or_else(|| value("ef_from_volumes")),
        value("edv"),
        value("esv"),
    )
}

/// One published record. `status` says which kind: `ok` and `withheld` records are estimates of
/// the window ending at frame `seq`; a `stale` record says no current estimate exists (no seq,
/// no numbers, the reason in `withheld_reason`, the last capture time if any).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EstimateRecord {
    pub seq: Option<u64>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub capture_time: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339")]
    pub publish_time: SystemTime,
    /// Capture of the newest frame to publication, ms (rounded to the microsecond).
    pub latency_ms: Option<f64>,
    pub status: Status,
    pub withheld_reason: Option<String>,
    pub estimates: BTreeMap<String, TaskEstimate>,
    pub quality: WindowQuality,
    /// The paper's mean EF against the volume curve's EF (null on stale notices and when the
    /// model lacks one of them).
    pub agreement: Option<EfAgreement>,
    /// The window's distances from the model's training frames (null when the gate is off, on
    /// stale notices, and when the model ran on no frame of the window).
    pub ood: Option<OodWindow>,
    pub model: ModelInfo,
    pub source: SourceSummary,
}

impl EstimateRecord {
    /// The record for an estimate (ok or withheld), published at `published_at`.
    pub fn estimate(
        e: &Estimate,
        published_at: Instant,
        published_wall: SystemTime,
        model: &ModelInfo,
        source: &SourceSummary,
    ) -> Self {
        let latency_ms = published_at
            .saturating_duration_since(e.captured_at)
            .as_secs_f64()
            * 1000.0;
        Self {
            seq: Some(e.newest_seq),
            capture_time: Some(e.captured_wall),
            publish_time: published_wall,
            latency_ms: Some((latency_ms * 1000.0).round() / 1000.0),
            status: e.status,
            withheld_reason: e.withheld_reason.clone(),
            estimates: e.estimates.clone(),
            quality: e.quality.clone(),
            agreement: e.agreement.clone(),
            ood: e.ood.clone(),
            model: model.clone(),
            source: source.clone(),
        }
    }

    /// The record saying no current estimate exists: no numbers, the reason, and when the last
    /// frame was captured (if any).
    pub fn stale(
        reason: &str,
        last_capture: Option<SystemTime>,
        published_wall: SystemTime,
        quality: WindowQuality,
        model: &ModelInfo,
        source: &SourceSummary,
    ) -> Self {
        Self {
            seq: None,
            capture_time: last_capture,
            publish_time: published_wall,
            latency_ms: None,
            status: Status::Stale,
            withheld_reason: Some(reason.to_string()),
            estimates: BTreeMap::new(),
            quality,
            agreement: None,
            ood: None,
            model: model.clone(),
            source: source.clone(),
        }
    }

    /// `status` as written: "ok", "withheld" or "stale".
    pub fn status_text(&self) -> &'static str {
        match self.status {
            Status::Ok => "ok",
            Status::Withheld => "withheld",
            Status::Stale => "stale",
        }
    }

    /// The value of `task` when this record carries a finite one (a non-finite value is
    /// written as null).
    pub fn value(&self, task: &str) -> Option<f64> {
        self.estimates
            .get(task)
            .map(|t| t.value)
            .filter(|v| v.is_finite())
    }

    /// The numbers the display shows as (EF, EDV, ESV): see [`displayed_numbers`].
    pub fn displayed_numbers(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        displayed_numbers(|task| self.value(task))
    }

    /// The record as the JSON object every sink writes: `schema` added, keys in sorted order at
    /// every level (as records have always been written), non-finite numbers as null.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        let mut v = serde_json::to_value(self)?;
        if let Value::Object(map) = &mut v {
            map.insert("schema".into(), Value::String(SCHEMA.into()));
        }
        Ok(v)
    }

    /// [`Self::to_value`] as one line of text (no newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        Ok(self.to_value()?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            id: "echonet-phantom-v1".into(),
            intended_use: "demo".into(),
            content_hash: "sha256:00".into(),
            precision: "f32".into(),
            ood_gate: "on: threshold 1.5".into(),
        }
    }

    fn source() -> SourceSummary {
        SourceSummary {
            kind: "phantom".into(),
            name: "seed 1".into(),
        }
    }

    fn quality() -> WindowQuality {
        WindowQuality {
            valid_frames: 18,
            window: 20,
            reasons: [("frozen".to_string(), 2)].into_iter().collect(),
        }
    }

    /// The typed record writes exactly what the publisher wrote when it built the JSON itself
    /// with `json!` (the reference below is that code, kept as it was), byte for byte.
    #[test]
    fn typed_records_write_the_schema_v1_json_byte_for_byte() {
        let captured_at = Instant::now();
        let captured_wall = UNIX_EPOCH + Duration::from_millis(1_795_860_000_123);
        let published_wall = captured_wall + Duration::from_millis(47);
        let published_at = captured_at + Duration::from_micros(47_250);
        let task = |value: f64, unit: &str, spread: Option<f64>| TaskEstimate {
            value,
            unit: unit.into(),
            spread,
        };
        let e = Estimate {
            status: Status::Ok,
            withheld_reason: None,
            estimates: [
                ("ef".to_string(), task(55.123456789, "%", Some(3.2))),
                ("esv".to_string(), task(48.0, "mL", Some(5.0))),
                ("ef_from_volumes".to_string(), task(f64::NAN, "%", None)),
            ]
            .into_iter()
            .collect(),
            quality: quality(),
            agreement: Some(EfAgreement {
                difference: 1.5,
                margin: 10.0,
                low: false,
            }),
            ood: Some(OodWindow {
                distance_max: 1.25,
                distance_median: 0.9,
                threshold: 1.5,
                window_threshold: 1.2,
                frames_beyond: 0,
            }),
            newest_seq: 42,
            captured_at,
            captured_wall,
        };
        let (m, s) = (model(), source());
        let typed = EstimateRecord::estimate(&e, published_at, published_wall, &m, &s);
        let latency_ms = published_at
            .saturating_duration_since(e.captured_at)
            .as_secs_f64()
            * 1000.0;
        let reference = json!({
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
            "ood": e.ood,
            "model": m,
            "source": s,
        });
        assert_eq!(typed.to_json().unwrap(), reference.to_string());
        assert_eq!(typed.status_text(), reference["status"]);
        assert!(typed
            .to_json()
            .unwrap()
            .contains("\"ef_from_volumes\":{\"spread\":null,\"unit\":\"%\",\"value\":null}"));
        assert_eq!(typed.value("ef_from_volumes"), None);

        let last_capture = Some(captured_wall);
        let stale = EstimateRecord::stale(
            "no new estimate for 5.0 s",
            last_capture,
            published_wall,
            quality(),
            &m,
            &s,
        );
        let reference = json!({
            "schema": SCHEMA,
            "seq": null,
            "capture_time": last_capture.map(rfc3339_millis),
            "publish_time": rfc3339_millis(published_wall),
            "latency_ms": null,
            "status": Status::Stale,
            "withheld_reason": "no new estimate for 5.0 s",
            "estimates": {},
            "quality": quality(),
            "agreement": null,
            "ood": null,
            "model": m,
            "source": s,
        });
        assert_eq!(stale.to_json().unwrap(), reference.to_string());
        assert_eq!(stale.status_text(), reference["status"]);
        let never = EstimateRecord::stale("waiting", None, published_wall, quality(), &m, &s);
        assert_eq!(never.to_value().unwrap()["capture_time"], Value::Null);
    }

    #[test]
    fn displayed_numbers_prefer_the_volume_curve_then_the_heads() {
        let task = |value: f64| TaskEstimate {
            value,
            unit: "%".into(),
            spread: None,
        };
        let mut r = EstimateRecord::stale("x", None, UNIX_EPOCH, quality(), &model(), &source());
        r.estimates.insert("ef_from_volumes".into(), task(51.0));
        r.estimates.insert("edv".into(), task(100.0));
        assert_eq!(r.displayed_numbers(), (Some(51.0), Some(100.0), None));
        r.estimates.insert("ef".into(), task(50.0));
        assert_eq!(r.displayed_numbers().0, Some(50.0));
        for (t, v) in [("ef", 60.0), ("edv", 120.0), ("esv", 48.0)] {
            r.estimates.insert(format!("{t}_volume_curve"), task(v));
        }
        assert_eq!(r.displayed_numbers(), (Some(60.0), Some(120.0), Some(48.0)));
    }
}
