//! `echonet probe-capture`: what a technician setting up a cart needs to know about a capture
//! device. Lists its formats, sizes and frame intervals (like `v4l2-ctl --list-formats-ext`),
//! then captures for a few seconds through the daemon's own [`V4l2Source`] and measures the real
//! frame rate from the driver's timestamps, the timestamp jitter, the sequence numbers the driver
//! dropped and the format the daemon would use.

use std::time::{Duration, Instant};

use serde::Serialize;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{offered_formats, SizeRange, V4l2Config, V4l2Source, SUPPORTED};
use crate::capture::{FrameSource, SourceError};

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub device: String,
    pub driver: String,
    pub card: String,
    pub bus: String,
    pub formats: Vec<FormatListing>,
    /// What negotiation chose ("NV12 640x480"), whether it is native at that size, and the
    /// device's nominal rate.
    pub would_use: Option<String>,
    pub native_at_size: bool,
    pub nominal_fps: Option<f64>,
    pub capture: Option<CaptureStats>,
    /// Why capturing failed, when it did.
    pub capture_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FormatListing {
    pub fourcc: String,
    pub description: String,
    /// Whether this build decodes it.
    pub decodable: bool,
    pub sizes: Vec<SizeListing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeListing {
    /// "640x480", or "320x240 - 1920x1080 step 16x8".
    pub size: String,
    /// Frame intervals offered at this size, as "1/30 s (30.000 fps)".
    pub intervals: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptureStats {
    pub seconds: f64,
    /// Frames decoded, and buffers refused (corrupt, short, undecodable).
    pub frames: u64,
    pub bad_buffers: u64,
    pub timeouts: u64,
    /// The device's rate: sequence numbers advanced per second of driver timestamps.
    pub measured_fps: Option<f64>,
    /// Frames that reached this process per second of wall time.
    pub delivered_fps: f64,
    /// Between consecutive frames (no sequence number between them): mean interval and its
    /// standard deviation and largest deviation from the mean, ms.
    pub interval_mean_ms: Option<f64>,
    pub jitter_std_ms: Option<f64>,
    pub jitter_max_ms: Option<f64>,
    /// Sequence numbers missing: frames the driver dropped.
    pub dropped_sequence_numbers: u64,
    /// Whether the driver's timestamps were MONOTONIC (usable as capture times).
    pub monotonic_timestamps: bool,
}

fn fourcc_name(f: &[u8; 4]) -> String {
    String::from_utf8_lossy(f).into_owned()
}

fn interval_text(numerator: u32, denominator: u32) -> String {
    if numerator == 0 {
        return format!("{numerator}/{denominator} s");
    }
    format!(
        "{numerator}/{denominator} s ({:.3} fps)",
        denominator as f64 / numerator as f64
    )
}

fn intervals(dev: &Device, fourcc: [u8; 4], width: u32, height: u32) -> Vec<String> {
    dev.enum_frameintervals(FourCC::new(&fourcc), width, height)
        .unwrap_or_default()
        .into_iter()
        .map(|i| match i.interval {
            FrameIntervalEnum::Discrete(f) => interval_text(f.numerator, f.denominator),
            FrameIntervalEnum::Stepwise(s) => format!(
                "{} to {} step {}/{} s",
                interval_text(s.min.numerator, s.min.denominator),
                interval_text(s.max.numerator, s.max.denominator),
                s.step.numerator,
                s.step.denominator
            ),
        })
        .collect()
}

/// Lists the device, then captures for `seconds` with `config` (device path included).
pub fn probe(config: &V4l2Config, seconds: f64) -> Result<ProbeReport, SourceError> {
    let name = config.device.display().to_string();
    let lost = |reason: String| SourceError::Disconnected {
        source_name: name.clone(),
        reason,
    };
    let mut report = {
        let dev =
            Device::with_path(&config.device).map_err(|e| lost(format!("cannot open: {e}")))?;
        let caps = dev
            .query_caps()
            .map_err(|e| lost(format!("cannot query capabilities: {e}")))?;
        let offered =
            offered_formats(&dev).map_err(|e| lost(format!("cannot list formats: {e}")))?;
        let formats = offered
            .iter()
            .map(|f| FormatListing {
                fourcc: fourcc_name(&f.fourcc),
                description: f.description.clone(),
                decodable: SUPPORTED.iter().any(|s| **s == f.fourcc),
                sizes: f
                    .sizes
                    .iter()
                    .map(|s| match *s {
                        SizeRange::Discrete { width, height } => SizeListing {
                            size: format!("{width}x{height}"),
                            intervals: intervals(&dev, f.fourcc, width, height),
                        },
                        SizeRange::Stepwise { min, max, step } => SizeListing {
                            size: format!(
                                "{}x{} - {}x{} step {}x{}",
                                min.0, min.1, max.0, max.1, step.0, step.1
                            ),
                            intervals: intervals(&dev, f.fourcc, max.0, max.1),
                        },
                    })
                    .collect(),
            })
            .collect();
        ProbeReport {
            device: name.clone(),
            driver: caps.driver,
            card: caps.card,
            bus: caps.bus,
            formats,
            would_use: None,
            native_at_size: false,
            nominal_fps: None,
            capture: None,
            capture_error: None,
        }
        // The listing's descriptor closes here, before the capture opens its own.
    };
    let mut source = V4l2Source::new(config.clone());
    if let Err(e) = source.start() {
        report.capture_error = Some(e.to_string());
        return Ok(report);
    }
    report.would_use = Some(source.info().format);
    report.native_at_size = source.native_at_size();
    report.nominal_fps = source.info().nominal_fps;
    let (stats, error) = capture(&mut source, Duration::from_secs_f64(seconds.max(0.1)));
    report.capture = Some(stats);
    report.capture_error = error;
    Ok(report)
}

/// Captures for `span`; returns the statistics and the error that ended it early, if any.
fn capture(source: &mut V4l2Source, span: Duration) -> (CaptureStats, Option<String>) {
    let started = Instant::now();
    let mut frames = 0u64;
    let mut timeouts = 0u64;
    let mut error = None;
    // (frame number, media time) of every decoded frame.
    let mut times: Vec<(u64, Duration)> = Vec::new();
    while started.elapsed() < span {
        match source.next_frame() {
            Ok(Some(f)) => {
                frames += 1;
                times.push((f.seq, f.media_time));
            }
            Ok(None) => break,
            Err(SourceError::BadFrame { .. }) => {}
            Err(SourceError::Timeout { .. }) => timeouts += 1,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let counts = source.counts();
    let measured_fps = match (times.first(), times.last()) {
        (Some(a), Some(b)) if b.1 > a.1 => Some((b.0 - a.0) as f64 / (b.1 - a.1).as_secs_f64()),
        _ => None,
    };
    let gaps: Vec<f64> = times
        .windows(2)
        .filter(|w| w[1].0 == w[0].0 + 1)
        .map(|w| (w[1].1.saturating_sub(w[0].1)).as_secs_f64() * 1000.0)
        .collect();
    let mean = (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64);
    let std = mean
        .map(|m| (gaps.iter().map(|g| (g - m) * (g - m)).sum::<f64>() / gaps.len() as f64).sqrt());
    let max_dev = mean.map(|m| gaps.iter().map(|g| (g - m).abs()).fold(0.0, f64::max));
    (
        CaptureStats {
            seconds: wall,
            frames,
            bad_buffers: counts.bad_buffers,
            timeouts,
            measured_fps,
            delivered_fps: if wall > 0.0 {
                frames as f64 / wall
            } else {
                0.0
            },
            interval_mean_ms: mean,
            jitter_std_ms: std,
            jitter_max_ms: max_dev,
            dropped_sequence_numbers: counts.sequence_gaps,
            monotonic_timestamps: counts.monotonic_timestamps > 0 && counts.other_timestamps == 0,
        },
        error,
    )
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Device {}: {} (driver {}, bus {})",
            self.device, self.card, self.driver, self.bus
        )?;
        writeln!(f, "Formats:")?;
        for (i, fmt) in self.formats.iter().enumerate() {
            let note = if fmt.decodable {
                ""
            } else {
                "  [not decoded by this build]"
            };
            writeln!(f, "  [{i}] '{}' ({}){note}", fmt.fourcc, fmt.description)?;
            for s in &fmt.sizes {
                writeln!(f, "      Size: {}", s.size)?;
                for iv in &s.intervals {
                    writeln!(f, "          Interval: {iv}")?;
                }
            }
        }
        match &self.would_use {
            Some(u) => writeln!(
                f,
                "Would use: {u}{}, nominal {}",
                if self.native_at_size {
                    " (offered natively at this size)"
                } else {
                    " (not listed at this size: the driver scales or crops)"
                },
                self.nominal_fps
                    .map_or("rate unknown".into(), |r| format!("{r:.3} fps"))
            )?,
            None => writeln!(f, "Would use: nothing")?,
        }
        if let Some(c) = &self.capture {
            let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3} ms"));
            writeln!(
                f,
                "Captured {:.1} s: {} frames, {} bad buffers, {} timeouts",
                c.seconds, c.frames, c.bad_buffers, c.timeouts
            )?;
            writeln!(
                f,
                "  frame rate: {} measured from driver timestamps, {:.2} fps delivered",
                c.measured_fps
                    .map_or("n/a".into(), |r| format!("{r:.3} fps")),
                c.delivered_fps
            )?;
            writeln!(
                f,
                "  frame interval: mean {}, jitter {} (std), {} (largest deviation)",
                ms(c.interval_mean_ms),
                ms(c.jitter_std_ms),
                ms(c.jitter_max_ms)
            )?;
            writeln!(
                f,
                "  dropped sequence numbers: {}",
                c.dropped_sequence_numbers
            )?;
            writeln!(
                f,
                "  timestamps: {}",
                if c.monotonic_timestamps {
                    "monotonic (used as capture times)"
                } else {
                    "not monotonic (dequeue time used instead)"
                }
            )?;
        }
        if let Some(e) = &self.capture_error {
            writeln!(f, "Capture failed: {e}")?;
        }
        Ok(())
    }
}
