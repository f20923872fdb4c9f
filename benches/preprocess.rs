//! Per-frame cost of preprocessing a 640x480 echo screen (speckle fan, burned-in text, scrolling
//! ECG) into a 299x299 input: the whole `Preprocessor::process` with sector detection (the
//! detection itself amortised over its window), with a fixed sector, and `prepare` alone.
//!
//! `CARGO_BUILD_JOBS=1 cargo bench --bench preprocess`
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use echonet_edge::frame::{Frame, Image, PixelFormat, SourceGeometry};
use echonet_edge::model::InputSpec;
use echonet_edge::preprocess::{
    prepare, DetectorConfig, Fan, PreprocessConfig, Preprocessor, Sector, SectorDetector,
    SectorOverride,
};

const W: usize = 640;
const H: usize = 480;
/// Distinct frames cycled through: two detection windows' worth, so speckle keeps changing.
const FRAMES: usize = 48;

const FAN: Fan = Fan {
    apex_x: 320.0,
    apex_y: 30.0,
    inner_radius: 25.0,
    outer_radius: 420.0,
    start_deg: 50.0,
    end_deg: 130.0,
};

fn mix(mut h: u32) -> u32 {
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^ (h >> 15)
}

fn screen(t: usize, format: PixelFormat) -> Image {
    let mut rgb = Vec::with_capacity(W * H * 3);
    for y in 0..H {
        for x in 0..W {
            let p = if FAN.contains(x as f64 + 0.5, y as f64 + 0.5) {
                let v = 40 + mix((x * 7919 + y * 104_729 + t * 1_299_709) as u32) % 180;
                [v as u8; 3]
            } else if (10..170).contains(&x) && (8..22).contains(&y) && (x / 2 + y / 3) % 3 == 0 {
                [255; 3]
            } else {
                let ecg = 467.0 + 8.0 * ((x as f64 + 7.0 * t as f64) / 15.0).sin();
                if (y as f64 + 0.5 - ecg).abs() < 1.0 {
                    [40, 230, 60]
                } else {
                    [0; 3]
                }
            };
            rgb.extend_from_slice(&p);
        }
    }
    let image = Image::new(W, H, PixelFormat::Rgb8, rgb).expect("well-formed frame");
    match format {
        PixelFormat::Rgb8 => image,
        PixelFormat::Gray8 => Image::gray(W, H, image.to_gray()).expect("well-formed frame"),
    }
}

fn frames(format: PixelFormat) -> Vec<Frame> {
    let geometry = Arc::new(SourceGeometry::default());
    (0..FRAMES)
        .map(|t| Frame {
            seq: t as u64,
            media_time: Duration::from_millis(t as u64 * 16),
            captured_at: Instant::now(),
            captured_wall: SystemTime::now(),
            image: screen(t, format),
            geometry: geometry.clone(),
        })
        .collect()
}

fn preprocess(c: &mut Criterion) {
    let spec = InputSpec::facenet(299, 3);
    let mut group = c.benchmark_group("preprocess_640x480_to_299");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(6));
    for (name, format) in [("rgb", PixelFormat::Rgb8), ("gray", PixelFormat::Gray8)] {
        let frames = frames(format);
        for (mode, config) in [
            ("detect", PreprocessConfig::default()),
            (
                "fixed_sector",
                PreprocessConfig {
                    sector_override: Some(SectorOverride::Fan(FAN)),
                    ..Default::default()
                },
            ),
        ] {
            let mut pre = Preprocessor::new(config).expect("valid config");
            // Past the first window, so every measured frame has a sector and an input.
            for f in &frames {
                pre.process(f, &spec).expect("process");
            }
            let mut i = 0;
            group.bench_function(format!("process_{name}_{mode}"), |b| {
                b.iter(|| {
                    i = (i + 1) % FRAMES;
                    let p = pre.process(&frames[i], &spec).expect("process");
                    assert!(p.input.is_some());
                    p
                })
            });
        }
        let sector = Sector::fan(FAN, W, H).expect("fan");
        group.bench_function(format!("prepare_{name}"), |b| {
            b.iter(|| prepare(&frames[0].image, &sector, &spec).expect("prepare"))
        });
    }
    // The detection step alone: with a two-frame window every second push detects.
    let grey: Vec<Vec<u8>> = frames(PixelFormat::Gray8)
        .into_iter()
        .map(|f| f.image.data)
        .collect();
    let mut det = SectorDetector::new(DetectorConfig {
        window_frames: 2,
        active_fraction: 0.5,
        ..Default::default()
    })
    .expect("valid config");
    let mut i = 0;
    group.bench_function("detector_push_plus_half_a_detection", |b| {
        b.iter(|| {
            i = (i + 1) % FRAMES;
            det.push(&grey[i], W, H).expect("push")
        })
    });
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
