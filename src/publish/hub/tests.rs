//! The hub: estimate checks, the trend, fan-out and its drops, frames, health.

use super::frames::encode_frame;
use super::*;
use crate::aggregate::{TaskEstimate, WindowQuality};
use crate::publish::record::{ModelInfo, SourceSummary};
use serde_json::{json, Value};

fn task(value: f64, unit: &str) -> TaskEstimate {
    TaskEstimate {
        value,
        unit: unit.into(),
        spread: None,
    }
}

fn estimate(seq: u64, status: &str, ef: f64) -> EstimateRecord {
    let status = match status {
        "ok" => Status::Ok,
        "withheld" => Status::Withheld,
        _ => Status::Stale,
    };
    EstimateRecord {
        seq: Some(seq),
        capture_time: None,
        publish_time: SystemTime::now(),
        latency_ms: Some(40.0),
        status,
        withheld_reason: None,
        estimates: [
            ("ef".to_string(), task(ef, "%")),
            ("esv".to_string(), task(40.0, "mL")),
        ]
        .into_iter()
        .collect(),
        quality: WindowQuality {
            valid_frames: 20,
            window: 20,
            reasons: Default::default(),
        },
        agreement: None,
        model: ModelInfo {
            id: "m".into(),
            intended_use: "test".into(),
            content_hash: "sha256:00".into(),
            precision: "f32".into(),
        },
        source: SourceSummary {
            kind: "phantom".into(),
            name: "seed 1".into(),
        },
    }
}

#[test]
fn non_finite_values_stay_off_the_trend_and_are_served_as_null() {
    let hub = DisplayHub::new(HubConfig::default());
    hub.publish_estimate(&estimate(1, "ok", f64::NAN)).unwrap();
    let h = hub.history();
    assert_eq!((h[0].ef, h[0].esv), (None, Some(40.0)));
    let latest: Value = serde_json::from_str(&hub.latest().unwrap().json).unwrap();
    assert_eq!(latest["schema"], ESTIMATE_SCHEMA_V1);
    assert_eq!(latest["estimates"]["ef"]["value"], Value::Null);
    assert!(hub
        .render_metrics()
        .contains("echonet_display_estimates_rejected_total 0\n"));
}

const ESTIMATE_SCHEMA_V1: &str = "echonet.estimate/1";

#[test]
fn volume_curve_figures_replace_the_means_on_the_trend() {
    let hub = DisplayHub::new(HubConfig::default());
    let mut e = estimate(1, "ok", 55.0);
    e.estimates
        .insert("ef_volume_curve".into(), task(61.0, "%"));
    e.estimates
        .insert("esv_volume_curve".into(), task(39.0, "mL"));
    e.estimates
        .insert("edv_volume_curve".into(), task(100.0, "mL"));
    hub.publish_estimate(&e).unwrap();
    let h = hub.history();
    assert_eq!(
        (h[0].ef, h[0].esv, h[0].edv),
        (Some(61.0), Some(39.0), Some(100.0))
    );
}

/// A model without an EF head: the trend plots EF from the volumes, as the display and the
/// journal show it.
#[test]
fn the_trend_plots_ef_from_volumes_when_there_is_no_ef_head() {
    let hub = DisplayHub::new(HubConfig::default());
    let mut e = estimate(1, "ok", 55.0);
    e.estimates.remove("ef");
    e.estimates
        .insert("ef_from_volumes".into(), task(48.0, "%"));
    e.estimates.insert("edv".into(), task(77.0, "mL"));
    hub.publish_estimate(&e).unwrap();
    let h = hub.history();
    assert_eq!(
        (h[0].ef, h[0].esv, h[0].edv),
        (Some(48.0), Some(40.0), Some(77.0))
    );
    assert_eq!(
        (h[0].ef, h[0].edv, h[0].esv),
        e.displayed_numbers(),
        "the trend and the journal show the same numbers"
    );
}

#[test]
fn only_ok_estimates_put_numbers_on_the_trend() {
    let hub = DisplayHub::new(HubConfig::default());
    hub.publish_estimate(&estimate(1, "ok", 55.0)).unwrap();
    hub.publish_estimate(&estimate(2, "withheld", 20.0))
        .unwrap();
    let h = hub.history();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].ef, h[0].esv, h[0].edv),
        (Some(55.0), Some(40.0), None)
    );
    assert_eq!((h[1].status, h[1].ef), (Status::Withheld, None));
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
        hub.publish_estimate(&estimate(i, "ok", 50.0)).unwrap();
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
        hub.publish_estimate(&estimate(i, "ok", 50.0)).unwrap();
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
    hub.publish_estimate(&estimate(7, "ok", 61.0)).unwrap();
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
    hub.publish_estimate(&estimate(1, "ok", 50.0)).unwrap();
    assert!(matches!(hub.health(), Health::Fed { .. }));
}
