//! Counters and latency histograms shared by the pipeline stages, rendered as Prometheus text for
//! `/metrics` and summarised at the end of a run. Counters and latency observations are atomic adds
//! only (no lock on the frame path); the per-reason drop and invalid-frame tallies take a short
//! lock, once per dropped or unfit frame.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0,
];

/// Sub-buckets per power of two in the percentile histogram: values are kept to within
/// 1/`SUB_BUCKETS` (about 3 %) of their size, exactly below `SUB_BUCKETS` microseconds.
const SUB_BUCKETS: u64 = 32;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Powers of two above the exact range: up to 2^40 µs (about 12 days), enough for any latency.
const OCTAVES: usize = 40 - SUB_BITS as usize + 1;
const FINE_BUCKETS: usize = SUB_BUCKETS as usize * (OCTAVES + 1);

/// The log-linear bucket a value (µs) falls in: exact below `SUB_BUCKETS`, then `SUB_BUCKETS`
/// equal steps per power of two. Values beyond the last bucket land in it.
fn fine_index(us: u64) -> usize {
    if us < SUB_BUCKETS {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // >= SUB_BITS
    let shift = octave - SUB_BITS;
    let sub = (us >> shift) - SUB_BUCKETS; // 0..SUB_BUCKETS
    let index = SUB_BUCKETS as usize * (shift as usize + 1) + sub as usize;
    index.min(FINE_BUCKETS - 1)
}

/// The middle of a bucket's range of values (µs): its lower bound where the bucket is exact.
fn fine_value(index: usize) -> f64 {
    let sub_buckets = SUB_BUCKETS as usize;
    if index < sub_buckets {
        return index as f64;
    }
    let shift = (index / sub_buckets - 1) as u32;
    let sub = (index % sub_buckets) as u64;
    let lower = (SUB_BUCKETS + sub) << shift;
    let width = 1u64 << shift;
    lower as f64 + (width as f64 - 1.0) / 2.0
}

/// A histogram of durations, lock-free: every observation is a handful of relaxed atomic adds.
/// It keeps the Prometheus buckets (`LATENCY_BUCKETS_MS`) and a fine log-linear histogram for
/// percentiles, so it records every value of a run however long (nothing is kept per value).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    /// Counts per log-linear bucket (`fine_index`), for percentiles within about 3 %.
    fine: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            fine: (0..FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.fine[fine_index(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The p-th percentile (0..=1) of every observed value, milliseconds: exact below 32 µs,
    /// otherwise within about 3 % (the middle of the value's log-linear bucket).
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .fine
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The same rank as indexing a sorted list of the values: round((n - 1) * p).
        let rank = ((total as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as u64;
        let mut seen = 0u64;
        for (index, n) in counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                return Some(fine_value(index) / 1000.0);
            }
        }
        None
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

    /// Frames dropped so far for one reason (`DropReason::as_str`), without copying the map.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.drops
            .lock()
            .ok()
            .and_then(|d| d.get(reason).copied())
            .unwrap_or(0)
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
    fn histogram_buckets_are_cumulative_and_percentiles_close() {
        let h = Histogram::default();
        for ms in [1u64, 3, 7, 40, 400] {
            h.observe(Duration::from_millis(ms));
        }
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.5\"} 5"), "{s}");
        assert!(s.contains("x_count{} 5"), "{s}");
        let within = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!((got - want).abs() <= want / 32.0, "{got} vs {want}");
        };
        within(h.percentile_ms(0.5), 7.0);
        within(h.percentile_ms(1.0), 400.0);
    }

    #[test]
    fn fine_buckets_are_exact_when_small_and_within_a_thirty_second_above() {
        for us in [0u64, 1, 5, 31] {
            assert_eq!(fine_value(fine_index(us)), us as f64);
        }
        let mut last = 0;
        for us in (32u64..5_000_000).step_by(997) {
            let i = fine_index(us);
            assert!(i >= last, "buckets follow the values' order");
            last = i;
            let v = fine_value(i);
            assert!(
                (v - us as f64).abs() <= us as f64 / 32.0,
                "{us} µs read back as {v}"
            );
        }
        assert_eq!(fine_index(u64::MAX), FINE_BUCKETS - 1);
    }

    #[test]
    fn percentiles_keep_counting_past_any_number_of_values() {
        // Two hundred thousand fast frames, then as many slow ones: the old recorder stopped at
        // 100,000 values and would still say 1 ms.
        let h = Histogram::default();
        for _ in 0..200_000 {
            h.observe(Duration::from_millis(1));
        }
        for _ in 0..200_001 {
            h.observe(Duration::from_millis(300));
        }
        assert_eq!(h.count(), 400_001);
        let median = h.percentile_ms(0.5).unwrap();
        assert!((median - 300.0).abs() <= 300.0 / 32.0, "{median}");
        let low = h.percentile_ms(0.1).unwrap();
        assert!((low - 1.0).abs() <= 1.0 / 32.0, "{low}");
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
