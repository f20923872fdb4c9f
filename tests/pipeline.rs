//! The live pipeline end to end on scripted sources: estimates per sampled frame once the window
//! fills, withheld and stale states, drop-oldest under overload, and prompt shutdown. The model is
//! the parity fixture (width 0.125, 75x75), so numbers are meaningless but real.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use echonet_edge::aggregate::WindowConfig;
use echonet_edge::capture::{FrameSource, SourceError, SourceInfo};
use echonet_edge::frame::{Frame, Image, SourceGeometry};
use echonet_edge::metrics::PipelineMetrics;
use echonet_edge::model::{read_bundle, EchoNetModel, InputSpec, RunOptions, StorageDtype};
use echonet_edge::pipeline::{EstimateSink, Pipeline, PipelineConfig, RunLimits};
use echonet_edge::preprocess::{
    FramePreparer, Prepared, PreparedInput, QualityReason, UnfitReason,
};
use echonet_edge::publish::EstimateRecord;

/// What a scripted source does at each step.
#[derive(Clone, Copy)]
enum Step {
    Frame,
    Timeout,
    Lost,
}

struct ScriptedSource {
    steps: Vec<Step>,
    next: usize,
    seq: u64,
    frame_ms: f64,
    /// Real sleep per frame, to make the run take time.
    pace: Duration,
    starts: Arc<Mutex<u32>>,
}

impl ScriptedSource {
    fn frames(n: usize, frame_ms: f64) -> Self {
        Self {
            steps: vec![Step::Frame; n],
            next: 0,
            seq: 0,
            frame_ms,
            pace: Duration::ZERO,
            starts: Arc::default(),
        }
    }
}

impl FrameSource for ScriptedSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "scripted",
            name: "test".into(),
            format: "GRAY 80x80".into(),
            nominal_fps: Some(1000.0 / self.frame_ms),
            frame_count: Some(self.steps.len() as u64),
        }
    }
    fn start(&mut self) -> Result<(), SourceError> {
        *self.starts.lock().unwrap() += 1;
        Ok(())
    }
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let Some(step) = self.steps.get(self.next).copied() else {
            return Ok(None);
        };
        self.next += 1;
        if !self.pace.is_zero() {
            std::thread::sleep(self.pace);
        }
        let seq = self.seq;
        self.seq += 1;
        match step {
            Step::Timeout => Err(SourceError::Timeout {
                source_name: "test".into(),
                timeout: Duration::from_millis(10),
            }),
            Step::Lost => Err(SourceError::Disconnected {
                source_name: "test".into(),
                reason: "unplugged".into(),
            }),
            Step::Frame => {
                let v = (seq % 200) as u8;
                Ok(Some(Frame {
                    seq,
                    media_time: Duration::from_secs_f64(seq as f64 * self.frame_ms / 1000.0),
                    captured_at: Instant::now(),
                    captured_wall: SystemTime::now(),
                    image: Image::gray(80, 80, vec![v; 6400]).unwrap(),
                    geometry: Arc::new(SourceGeometry::default()),
                }))
            }
        }
    }
}

/// Crops the grey frame to the model size; frames whose first pixel is odd are "frozen".
struct TestPreparer {
    delay: Duration,
    mark_invalid: bool,
}

impl FramePreparer for TestPreparer {
    fn prepare(&mut self, frame: &Frame, spec: &InputSpec) -> Prepared {
        std::thread::sleep(self.delay);
        if self.mark_invalid && frame.image.data[0] % 2 == 1 {
            return Prepared {
                input: None,
                reasons: vec![UnfitReason::Quality(QualityReason::Frozen)],
                sector: None,
            };
        }
        let (h, w) = (spec.height, spec.width);
        let data: Vec<f32> = (0..h * w)
            .map(|i| frame.image.data[(i / w) * 80 + i % w] as f32 / 128.0 - 1.0)
            .collect();
        Prepared {
            input: Some(Arc::new(PreparedInput {
                data,
                channels: 1,
                height: h,
                width: w,
            })),
            reasons: vec![],
            sector: None,
        }
    }
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<serde_json::Value>>>);

impl EstimateSink for Collector {
    fn publish(&mut self, record: &EstimateRecord) {
        // As a JSON sink writes it.
        self.0.lock().unwrap().push(record.to_value().unwrap());
    }
}

fn fixture_model_builder(
    dir: &std::path::Path,
) -> impl FnOnce() -> anyhow::Result<EchoNetModel> + Send + 'static {
    let bundle = convert_fixture("irv1_w0125.pth", dir, StorageDtype::F32);
    move || {
        let b = read_bundle(&bundle)?;
        Ok(EchoNetModel::from_bundle(&b, &RunOptions::cpu())?)
    }
}

fn pipeline(config: PipelineConfig, limits: RunLimits) -> Pipeline {
    Pipeline {
        model_id: Some("fixture".into()),
        config,
        window: WindowConfig::default(),
        limits,
        metrics: Arc::new(PipelineMetrics::default()),
        stop: Arc::new(AtomicBool::new(false)),
    }
}

#[test]
fn one_estimate_per_sampled_frame_once_the_window_fills() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Collector::default();
    let p = pipeline(
        PipelineConfig {
            queue_depth: 1000,
            ..Default::default()
        },
        RunLimits::default(),
    );
    // 100 frames at 30 fps = 3.3 s of media: 34 samples at 10 fps, so 34 - 20 + 1 estimates.
    let summary = p
        .run(
            Box::new(ScriptedSource::frames(100, 1000.0 / 30.0)),
            Box::new(TestPreparer {
                delay: Duration::ZERO,
                mark_invalid: false,
            }),
            fixture_model_builder(dir.path()),
            vec![Box::new(sink.clone())],
        )
        .unwrap();
    assert_eq!(summary.frames_captured, 100);
    assert_eq!(summary.frames_sampled, 34);
    assert_eq!(summary.frames_inferred, 34);
    let records: Vec<_> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "ok")
        .cloned()
        .collect();
    assert_eq!(records.len(), 15, "{:?}", summary);
    for r in &records {
        assert_eq!(r["schema"], "echonet.estimate/1");
        assert_eq!(r["model"]["id"], "fixture");
        assert!(r["latency_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(r["quality"]["valid_frames"], 20);
        assert!(r["estimates"]["ef"]["value"].is_number());
        assert_eq!(r["estimates"]["ef"]["unit"], "%");
        assert!(r["model"]["intended_use"]
            .as_str()
            .unwrap()
            .contains("test fixture"));
    }
    // Estimates are for successive sampled frames: every third frame at 30 fps.
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] - w[0] == 3), "{seqs:?}");
    assert!(summary.latency_p99_ms.is_some());
}

#[test]
fn too_many_invalid_frames_are_published_as_withheld() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Collector::default();
    let p = pipeline(
        PipelineConfig {
            queue_depth: 1000,
            ..Default::default()
        },
        RunLimits::default(),
    );
    // Pixel value = seq % 200; sampling every 3rd frame alternates odd/even: half the window invalid.
    p.run(
        Box::new(ScriptedSource::frames(90, 1000.0 / 30.0)),
        Box::new(TestPreparer {
            delay: Duration::ZERO,
            mark_invalid: true,
        }),
        fixture_model_builder(dir.path()),
        vec![Box::new(sink.clone())],
    )
    .unwrap();
    let records = sink.0.lock().unwrap().clone();
    let withheld: Vec<_> = records
        .iter()
        .filter(|r| r["status"] == "withheld")
        .collect();
    assert!(!withheld.is_empty());
    for r in withheld {
        assert_eq!(
            r["estimates"],
            serde_json::json!({}),
            "a withheld record carries no number"
        );
        assert!(r["withheld_reason"].as_str().unwrap().contains("frozen"));
        assert!(r["quality"]["reasons"]["frozen"].as_u64().unwrap() >= 5);
    }
    assert!(records.iter().all(|r| r["status"] != "ok"));
}

#[test]
fn lost_device_publishes_stale_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Collector::default();
    let starts = Arc::new(Mutex::new(0));
    let mut steps = vec![Step::Frame; 90];
    steps.extend([Step::Lost, Step::Timeout]);
    steps.extend(vec![Step::Frame; 90]);
    let source = ScriptedSource {
        steps,
        next: 0,
        seq: 0,
        frame_ms: 1000.0 / 30.0,
        pace: Duration::from_millis(2),
        starts: starts.clone(),
    };
    let p = pipeline(
        PipelineConfig {
            queue_depth: 1000,
            stale_after_ms: 100,
            reconnect_max_ms: 300,
            ..Default::default()
        },
        RunLimits::default(),
    );
    let summary = p
        .run(
            Box::new(source),
            Box::new(TestPreparer {
                delay: Duration::ZERO,
                mark_invalid: false,
            }),
            fixture_model_builder(dir.path()),
            vec![Box::new(sink.clone())],
        )
        .unwrap();
    assert_eq!(*starts.lock().unwrap(), 2, "reopened once after the loss");
    assert_eq!(summary.frames_captured, 180);
    let records = sink.0.lock().unwrap().clone();
    let stale: Vec<_> = records.iter().filter(|r| r["status"] == "stale").collect();
    assert!(
        stale.iter().any(
            |r| r["withheld_reason"].as_str().unwrap().contains("unplugged")
                || r["withheld_reason"].as_str().unwrap().contains("no frame")
        ),
        "{stale:?}"
    );
    assert!(stale
        .iter()
        .all(|r| r["estimates"] == serde_json::json!({})));
    // The window restarted after the gap: no estimate mixes frames from both sides.
    let ok_after: Vec<u64> = records
        .iter()
        .filter(|r| r["status"] == "ok")
        .filter_map(|r| r["seq"].as_u64())
        .filter(|s| *s > 92)
        .collect();
    assert!(ok_after.iter().all(|s| *s >= 92 + 19 * 3), "{ok_after:?}");
}

#[test]
fn overload_drops_oldest_and_counts_every_drop() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        PipelineConfig {
            queue_depth: 2,
            ..Default::default()
        },
        RunLimits::default(),
    );
    // 3000 frames offered instantly at 60 fps media time; preprocessing takes 2 ms per sample.
    let summary = p
        .run(
            Box::new(ScriptedSource::frames(3000, 1000.0 / 60.0)),
            Box::new(TestPreparer {
                delay: Duration::from_millis(2),
                mark_invalid: false,
            }),
            fixture_model_builder(dir.path()),
            vec![Box::new(Collector::default())],
        )
        .unwrap();
    assert_eq!(summary.frames_captured, 3000);
    let dropped: u64 = summary.drops.values().sum();
    assert!(dropped > 0, "{summary:?}");
    assert!(summary
        .drops
        .keys()
        .all(|k| k.starts_with("queue_full") || k == "duplicate_timestamp"));
}

#[test]
fn stop_flag_ends_an_endless_source_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Collector::default();
    let p = pipeline(PipelineConfig::default(), RunLimits::default());
    let stop = p.stop.clone();
    let metrics = p.metrics.clone();
    let mut source = ScriptedSource::frames(1_000_000, 1000.0 / 30.0);
    source.pace = Duration::from_millis(1);
    // Stop once the source is well into its stream (model build and warm-up take a varying
    // time on a loaded machine), then time how long the run takes to end after the stop.
    let stopper = std::thread::spawn(move || {
        let give_up = Instant::now() + Duration::from_secs(120);
        while metrics.frames_captured.load(Ordering::Relaxed) <= 100 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        Instant::now()
    });
    let summary = p
        .run(
            Box::new(source),
            Box::new(TestPreparer {
                delay: Duration::ZERO,
                mark_invalid: false,
            }),
            fixture_model_builder(dir.path()),
            vec![Box::new(sink)],
        )
        .unwrap();
    let stopped_at = stopper.join().unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "the run went on {:?} after the stop flag",
        stopped_at.elapsed()
    );
    assert!(summary.frames_captured > 100);
}

#[test]
fn run_limits_bound_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        PipelineConfig::default(),
        RunLimits {
            duration: None,
            frames: Some(50),
        },
    );
    let summary = p
        .run(
            Box::new(ScriptedSource::frames(1000, 33.3)),
            Box::new(TestPreparer {
                delay: Duration::ZERO,
                mark_invalid: false,
            }),
            fixture_model_builder(dir.path()),
            vec![],
        )
        .unwrap();
    assert_eq!(summary.frames_captured, 50);
}

fn clip_frames(n: usize, frame_ms: f64) -> Vec<Frame> {
    let mut s = ScriptedSource::frames(n, frame_ms);
    (0..n).map(|_| s.next_frame().unwrap().unwrap()).collect()
}

#[test]
fn offline_clip_with_76ms_frames_uses_20_frames_at_10fps_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_model_builder(dir.path())().unwrap();
    let frames = clip_frames(40, 76.0);
    let mut prep = TestPreparer {
        delay: Duration::ZERO,
        mark_invalid: false,
    };
    let r = echonet_edge::offline::predict_clip(
        "clip76.dcm",
        &frames,
        &model,
        &mut prep,
        &WindowConfig::default(),
        echonet_edge::pipeline::DEFAULT_VIEW_THRESHOLD,
    );
    assert_eq!(r.status, "ok", "{r:?}");
    assert_eq!(r.frames_used.len(), 20);
    for (k, t) in r.frame_times_ms.iter().enumerate() {
        assert!((t - 100.0 * k as f64).abs() <= 38.0, "sample {k} at {t} ms");
    }
    // Frame indices, not every other frame: 0, 1, 3, 4, 5, 7, ... (76 ms frames at 100 ms slots).
    assert_eq!(&r.frames_used[..6], &[0, 1, 3, 4, 5, 7]);
    assert!(r.estimates.contains_key("ef"));
}

#[test]
fn offline_short_clip_is_withheld_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_model_builder(dir.path())().unwrap();
    let mut prep = TestPreparer {
        delay: Duration::ZERO,
        mark_invalid: false,
    };
    let r = echonet_edge::offline::predict_clip(
        "one.dcm",
        &clip_frames(2, 33.0),
        &model,
        &mut prep,
        &WindowConfig::default(),
        echonet_edge::pipeline::DEFAULT_VIEW_THRESHOLD,
    );
    assert_eq!(r.status, "withheld");
    assert!(r.estimates.is_empty());
    assert!(r.reason.unwrap().contains("clip too short"));
}

/// Panics on the `at`-th frame it is asked to prepare.
struct PanickingPreparer {
    at: usize,
    seen: usize,
}

impl FramePreparer for PanickingPreparer {
    fn prepare(&mut self, frame: &Frame, spec: &InputSpec) -> Prepared {
        self.seen += 1;
        if self.seen == self.at {
            panic!("preparer bug at frame {}", frame.seq);
        }
        TestPreparer {
            delay: Duration::ZERO,
            mark_invalid: false,
        }
        .prepare(frame, spec)
    }
}

/// Records faults next to the published records.
#[derive(Clone, Default)]
struct FaultCollector {
    records: Collector,
    faults: Arc<Mutex<Vec<String>>>,
    /// Panics on this published record (1-based), to kill the publisher stage.
    panic_on: Option<usize>,
}

impl EstimateSink for FaultCollector {
    fn publish(&mut self, record: &EstimateRecord) {
        self.records.publish(record);
        if self.panic_on == Some(self.records.0.lock().unwrap().len()) {
            panic!("sink bug");
        }
    }
    fn fault(&mut self, reason: &str) {
        self.faults.lock().unwrap().push(reason.to_string());
    }
}

/// Runs `p` on a thread and fails the test if it does not end within `limit` (a dead stage used
/// to leave the run going forever on an endless source).
fn run_bounded(
    p: Pipeline,
    source: ScriptedSource,
    preparer: Box<dyn FramePreparer>,
    dir: &std::path::Path,
    sinks: Vec<Box<dyn EstimateSink>>,
    limit: Duration,
) -> echonet_edge::pipeline::RunSummary {
    let build = fixture_model_builder(dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(p.run(Box::new(source), preparer, build, sinks));
    });
    rx.recv_timeout(limit)
        .expect("the run ends by itself after a stage dies")
        .expect("the run returns its summary")
}

#[test]
fn a_dead_preprocess_stage_publishes_stale_faults_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FaultCollector::default();
    let mut source = ScriptedSource::frames(1_000_000, 1000.0 / 30.0);
    source.pace = Duration::from_millis(1);
    let summary = run_bounded(
        pipeline(PipelineConfig::default(), RunLimits::default()),
        source,
        Box::new(PanickingPreparer { at: 30, seen: 0 }),
        dir.path(),
        vec![Box::new(sink.clone())],
        Duration::from_secs(60),
    );
    assert_eq!(summary.stage_failures.len(), 1, "{summary:?}");
    assert!(
        summary.stage_failures[0].contains("preprocess stage died: preparer bug at frame"),
        "{:?}",
        summary.stage_failures
    );
    let records = sink.records.0.lock().unwrap().clone();
    let last = records.last().expect("a stale notice");
    assert_eq!(last["status"], "stale");
    assert!(
        last["withheld_reason"]
            .as_str()
            .unwrap()
            .contains("preprocess stage died"),
        "{last}"
    );
    assert_eq!(sink.faults.lock().unwrap().len(), 1);
}

#[test]
fn a_dead_publisher_ends_the_run_with_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FaultCollector {
        panic_on: Some(3),
        ..FaultCollector::default()
    };
    let mut source = ScriptedSource::frames(1_000_000, 1000.0 / 30.0);
    source.pace = Duration::from_millis(1);
    let summary = run_bounded(
        pipeline(PipelineConfig::default(), RunLimits::default()),
        source,
        Box::new(TestPreparer {
            delay: Duration::ZERO,
            mark_invalid: false,
        }),
        dir.path(),
        vec![Box::new(sink.clone())],
        Duration::from_secs(60),
    );
    assert!(
        summary
            .stage_failures
            .iter()
            .any(|f| f.contains("publisher stage died: sink bug")),
        "{:?}",
        summary.stage_failures
    );
}

/// `Pipeline::run` says why it could not run as a typed error: the caller's builder failing
/// (its whole cause chain in the message, the source never started) and a source that will not
/// start.
#[test]
fn a_run_that_cannot_start_is_a_typed_error() {
    use echonet_edge::pipeline::PipelineError;
    let p = pipeline(PipelineConfig::default(), RunLimits::default());
    let source = ScriptedSource::frames(10, 100.0);
    let starts = source.starts.clone();
    let e = p
        .run(
            Box::new(source),
            Box::new(TestPreparer {
                delay: Duration::ZERO,
                mark_invalid: false,
            }),
            || -> anyhow::Result<EchoNetModel> {
                Err(anyhow::anyhow!("no CUDA device 3").context("opening cuda:3"))
            },
            vec![],
        )
        .unwrap_err();
    assert!(matches!(e, PipelineError::BuildModel(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "building the model on the inference thread: opening cuda:3: no CUDA device 3"
    );
    assert_eq!(*starts.lock().unwrap(), 0, "the source started anyway");

    struct Unplugged;
    impl FrameSource for Unplugged {
        fn info(&self) -> SourceInfo {
            ScriptedSource::frames(0, 100.0).info()
        }
        fn start(&mut self) -> Result<(), SourceError> {
            Err(SourceError::Disconnected {
                source_name: "cam0".into(),
                reason: "unplugged".into(),
            })
        }
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            Ok(None)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let e = p
        .run(
            Box::new(Unplugged),
            Box::new(TestPreparer {
                delay: Duration::ZERO,
                mark_invalid: false,
            }),
            fixture_model_builder(dir.path()),
            vec![],
        )
        .unwrap_err();
    assert!(matches!(e, PipelineError::StartSource(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "starting the source: cam0: device lost: unplugged"
    );
}
