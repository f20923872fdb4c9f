//! Counters and latency histograms shared by the pipeline stages, rendered as Prometheus text for
//! `/metrics` and summarised at the end of a run. Lock-free: stages on the frame path only do
//! atomic adds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    /// Exact recent values for percentiles in the run summary (bounded).
    recent_us: Mutex<Vec<u64>>,
}

/// How many exact values a histogram keeps for percentiles (a 30 s run at 10 fps is 300).
const RECENT_CAP: usize = 100_000;

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = d.as_micros() as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if let Ok(mut r) = self.recent_us.lock() {
            if r.len() < RECENT_CAP {
                r.push(us);
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The p-th percentile (0..=1) of the observed values, milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let mut v = self.recent_us.lock().ok()?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let idx = ((v.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
        Some(v[idx] as f64 / 1000.0)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {}",
                le / 1000.0,
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let n = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {n}");
    }
}

/// Everything the pipeline counts. Names are the Prometheus metric suffixes.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    pub frames_captured: AtomicU64,
    pub frames_sampled: AtomicU64,
    pub frames_inferred: AtomicU64,
    pub estimates_published: AtomicU64,
    pub estimates_withheld: AtomicU64,
    pub stale_published: AtomicU64,
    /// Records (estimates, withheld, stale) written whole to the JSON Lines target.
    pub records_written: AtomicU64,
    /// Records that could not be written there (disk full, read-only, closed pipe).
    pub record_write_failures: AtomicU64,
    /// Records committed to the results journal, and those it could not take.
    pub records_journaled: AtomicU64,
    pub journal_write_failures: AtomicU64,
    /// Frames dropped, by reason (queue full at a stage, bad frame, ...).
    pub drops: Mutex<BTreeMap<String, u64>>,
    /// Invalid sampled frames, by quality reason.
    pub invalid_frames: Mutex<BTreeMap<String, u64>>,
    pub source_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub latency_capture_to_publish: Histogram,
    pub latency_preprocess: Histogram,
    pub latency_inference: Histogram,
}

impl PipelineMetrics {
    pub fn drop_frame(&self, reason: &str) {
        if let Ok(mut d) = self.drops.lock() {
            *d.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn invalid_frame(&self, reason: &str) {
        if let Ok(mut d) = self.invalid_frames.lock() {
            *d.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn drops(&self) -> BTreeMap<String, u64> {
        self.drops.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub fn invalid_frames(&self) -> BTreeMap<String, u64> {
        self.invalid_frames
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP echonet_{name} {help}");
            let _ = writeln!(out, "# TYPE echonet_{name} counter");
            let _ = writeln!(out, "echonet_{name} {v}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "frames_captured_total",
            "Frames received from the source.",
            load(&self.frames_captured),
        );
        counter(
            &mut out,
            "frames_sampled_total",
            "Frames picked by the 10 fps sampler.",
            load(&self.frames_sampled),
        );
        counter(
            &mut out,
            "frames_inferred_total",
            "Frames run through the model.",
            load(&self.frames_inferred),
        );
        counter(
            &mut out,
            "estimates_published_total",
            "Estimates published with a number.",
            load(&self.estimates_published),
        );
        counter(
            &mut out,
            "estimates_withheld_total",
            "Estimates published as withheld.",
            load(&self.estimates_withheld),
        );
        counter(
            &mut out,
            "stale_published_total",
            "Stale notices published.",
            load(&self.stale_published),
        );
        counter(
            &mut out,
            "records_written_total",
            "Records written whole to the JSON Lines output.",
            load(&self.records_written),
        );
        counter(
            &mut out,
            "record_write_failures_total",
            "Records that could not be written to the JSON Lines output.",
            load(&self.record_write_failures),
        );
        counter(
            &mut out,
            "records_journaled_total",
            "Records committed to the results journal.",
            load(&self.records_journaled),
        );
        counter(
            &mut out,
            "journal_write_failures_total",
            "Records the results journal could not take (disk full, read-only, not open).",
            load(&self.journal_write_failures),
        );
        counter(
            &mut out,
            "source_errors_total",
            "Errors reported by the source.",
            load(&self.source_errors),
        );
        counter(
            &mut out,
            "source_reconnects_total",
            "Times the source was reopened.",
            load(&self.reconnects),
        );
        let _ = writeln!(out, "# HELP echonet_frames_dropped_total Frames dropped, by reason.\n# TYPE echonet_frames_dropped_total counter");
        for (reason, n) in self.drops() {
            let _ = writeln!(
                out,
                "echonet_frames_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP echonet_frames_invalid_total Sampled frames unfit for an estimate, by reason.\n# TYPE echonet_frames_invalid_total counter");
        for (reason, n) in self.invalid_frames() {
            let _ = writeln!(
                out,
                "echonet_frames_invalid_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP echonet_stage_latency_seconds Per-stage latency.\n# TYPE echonet_stage_latency_seconds histogram");
        self.latency_preprocess.render(
            &mut out,
            "echonet_stage_latency_seconds",
            "stage=\"preprocess\"",
        );
        self.latency_inference.render(
            &mut out,
            "echonet_stage_latency_seconds",
            "stage=\"inference\"",
        );
        self.latency_capture_to_publish.render(
            &mut out,
            "echonet_stage_latency_seconds",
            "stage=\"capture_to_publish\"",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_percentiles_exact() {
        let h = Histogram::default();
        for ms in [1u64, 3, 7, 40, 400] {
            h.observe(Duration::from_millis(ms));
        }
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.5\"} 5"), "{s}");
        assert!(s.contains("x_count{} 5"), "{s}");
        assert_eq!(h.percentile_ms(0.5), Some(7.0));
        assert_eq!(h.percentile_ms(1.0), Some(400.0));
    }

    #[test]
    fn prometheus_text_has_one_value_per_sample_line() {
        let m = PipelineMetrics::default();
        m.frames_captured.fetch_add(3, Ordering::Relaxed);
        m.drop_frame("queue_full_inference");
        let text = m.render_prometheus();
        assert!(text.contains("echonet_frames_captured_total 3"));
        assert!(text.contains("echonet_frames_dropped_total{reason=\"queue_full_inference\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
