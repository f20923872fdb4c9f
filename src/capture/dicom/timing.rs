//! Frame timing of a DICOM clip: per-frame media times from Frame Time, Frame Time Vector, Cine
//! Rate or Recommended Display Frame Rate, in that order of precedence, with a flagged default.

use std::path::Path;
use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{get_f64, get_f64s, TimingSource, DEFAULT_FPS, MAX_FRAME_PERIOD_MS};

/// Per-frame media times, nominal rate and where they came from: Frame Time, then Frame Time
/// Vector, then Cine Rate, then Recommended Display Frame Rate; unusable values are warned about
/// and skipped.
pub(super) fn clip_timing(
    obj: &InMemDicomObject,
    frames: usize,
    path: &Path,
) -> (Vec<Duration>, Option<f64>, TimingSource) {
    let file = path.display();
    let frame_time = get_f64(obj, tags::FRAME_TIME);
    let cine_rate = get_f64(obj, tags::CINE_RATE);
    let display_rate = get_f64(obj, tags::RECOMMENDED_DISPLAY_FRAME_RATE);
    // A period (ms) is usable when positive and at most MAX_FRAME_PERIOD_MS.
    let usable = |v: Option<f64>, period_ms: fn(f64) -> f64, name: &str| match v {
        Some(v) if v > 0.0 && period_ms(v) <= MAX_FRAME_PERIOD_MS => Some(v),
        Some(v) => {
            tracing::warn!(file = %file, "ignoring {name} {v}: not a plausible frame timing");
            None
        }
        None => None,
    };
    let frame_time = usable(frame_time, |ms| ms, "Frame Time (0018,1063)");
    let cine_rate = usable(cine_rate, |fps| 1000.0 / fps, "Cine Rate (0018,0040)");
    let display_rate = usable(
        display_rate,
        |fps| 1000.0 / fps,
        "Recommended Display Frame Rate (0008,2144)",
    );

    if frames <= 1 {
        let fps = frame_time
            .map(|ms| 1000.0 / ms)
            .or(cine_rate)
            .or(display_rate);
        return (vec![Duration::ZERO], fps, TimingSource::SingleFrame);
    }
    if let Some(times) = frame_time.and_then(|ms| times_from_period(frames, ms)) {
        return (
            times,
            frame_time.map(|ms| 1000.0 / ms),
            TimingSource::FrameTime,
        );
    }
    if let Some(vector) = get_f64s(obj, tags::FRAME_TIME_VECTOR) {
        match times_from_vector(frames, &vector) {
            Some(times) => {
                let total = times.last().copied().unwrap_or_default().as_secs_f64();
                let fps = (total > 0.0).then(|| (frames - 1) as f64 / total);
                return (times, fps, TimingSource::FrameTimeVector);
            }
            None => tracing::warn!(
                file = %file,
                "ignoring Frame Time Vector (0018,1065): {} values for {frames} frames, or implausible increments",
                vector.len()
            ),
        }
    }
    if let Some(times) = cine_rate.and_then(|fps| times_from_period(frames, 1000.0 / fps)) {
        return (times, cine_rate, TimingSource::CineRate);
    }
    if let Some(times) = display_rate.and_then(|fps| times_from_period(frames, 1000.0 / fps)) {
        return (
            times,
            display_rate,
            TimingSource::RecommendedDisplayFrameRate,
        );
    }
    tracing::warn!(
        file = %file,
        "no Frame Time, Frame Time Vector, Cine Rate or Recommended Display Frame Rate: assuming {DEFAULT_FPS} fps"
    );
    let times = times_from_period(frames, 1000.0 / DEFAULT_FPS)
        .unwrap_or_else(|| vec![Duration::ZERO; frames]);
    (times, None, TimingSource::Default)
}

fn ms_to_duration(ms: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

fn times_from_period(frames: usize, period_ms: f64) -> Option<Vec<Duration>> {
    (0..frames)
        .map(|i| ms_to_duration(i as f64 * period_ms))
        .collect()
}

/// Frame Time Vector holds the increment before each frame, the first being 0; some writers leave
/// that first 0 out.
fn times_from_vector(frames: usize, vector: &[f64]) -> Option<Vec<Duration>> {
    let increments = if vector.len() == frames {
        &vector[1..]
    } else if vector.len() + 1 == frames {
        vector
    } else {
        return None;
    };
    if increments
        .iter()
        .any(|v| !v.is_finite() || *v <= 0.0 || *v > MAX_FRAME_PERIOD_MS)
    {
        return None;
    }
    let mut times = Vec::with_capacity(frames);
    times.push(Duration::ZERO);
    let mut total_ms = 0.0;
    for increment in increments {
        total_ms += increment;
        times.push(ms_to_duration(total_ms)?);
    }
    Some(times)
}
