//! The live V4L2 capture path (src/capture/v4l2.rs through the v4l crate: ioctls, mmap
//! streaming, poll timeouts, device loss) against the emulated device of tools/v4l2-emu, since no
//! machine here has a video device. The emulator is compiled with cc into this test's temp dir
//! and preloaded into child processes: either this test binary again (running one test's body in
//! process, against `V4l2Source` itself) or the `echonet` binary (the daemon and probe-capture as
//! a user runs them). A child that does not run its body fails the test; nothing is skipped.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::echonet;
use echonet_edge::capture::v4l2::emu_frames::{phantom_frames, write_emu_frames};
use echonet_edge::capture::v4l2::{V4l2Config, V4l2Source};
use echonet_edge::capture::{FrameSource, SourceError};
use echonet_edge::frame::{Frame, Image, PixelFormat};
use echonet_edge::phantom::PhantomParams;

const DEVICE: &str = "/dev/video-emu";
/// Size of the phantom frames served (small: the CI machine has two cores).
const WIDTH: usize = 320;
const HEIGHT: usize = 240;
const FRAME_COUNT: usize = 60;
const ALL_FORMATS: [&str; 8] = [
    "YUYV", "UYVY", "NV12", "YU12", "GREY", "RGB3", "BGR3", "MJPG",
];

/// The emulator library and the phantom frame file, built once per test binary.
fn emulator() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("v4l2-emu-test");
        std::fs::create_dir_all(&dir).unwrap();
        // Each process builds its own copy, so parallel test processes never see a half-written one.
        let so = dir.join(format!("libv4l2emu-{}.so", std::process::id()));
        let emu = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/v4l2-emu");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&so)
            .arg(emu.join("v4l2_emu.c"))
            .arg(emu.join("v4l2_emu_frames.c"))
            .args(["-ldl", "-lpthread"])
            .output()
            .expect("cc must be installed (scripts/install-deps.sh installs gcc)");
        assert!(
            out.status.success(),
            "building the emulator failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let frames = dir.join(format!("phantom-{}.frames", std::process::id()));
        let params = PhantomParams {
            width: WIDTH,
            height: HEIGHT,
            fps: 30.0,
            ..PhantomParams::random(7)
        };
        write_emu_frames(&frames, &phantom_frames(params, FRAME_COUNT).unwrap(), true).unwrap();
        (so, frames)
    })
}

/// The frames the emulator serves, as written.
fn served_frames() -> Vec<Image> {
    let params = PhantomParams {
        width: WIDTH,
        height: HEIGHT,
        fps: 30.0,
        ..PhantomParams::random(7)
    };
    phantom_frames(params, FRAME_COUNT).unwrap()
}

/// Name of the environment variable that tells a child which test body to run.
const INNER: &str = "V4L2_EMU_TEST_INNER";

/// Runs `body` in a child copy of this test binary with the emulator preloaded and `env` set.
/// In the child (which runs only this test, by exact name), runs `body` itself.
fn in_emulator(test: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    if std::env::var(INNER).as_deref() == Ok(test) {
        body();
        return;
    }
    let (so, frames) = emulator();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, test)
        .env("LD_PRELOAD", so)
        .env("V4L2_EMU_FRAMES", frames)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} under the emulator failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run under the emulator:\n{text}"
    );
}

fn config(fourcc: Option<&str>) -> V4l2Config {
    V4l2Config {
        device: DEVICE.into(),
        fourcc: fourcc.map(str::to_string),
        timeout_ms: 1000,
        ..Default::default()
    }
}

/// The next decoded frame, failing on anything else.
fn next(source: &mut V4l2Source) -> Frame {
    match source.next_frame() {
        Ok(Some(f)) => f,
        Ok(None) => panic!("a live device does not end"),
        Err(e) => panic!("{e}"),
    }
}

/// Mean absolute difference of the decoded frame's grey levels from the served frame's.
fn mean_abs_diff(decoded: &Image, served: &Image) -> f64 {
    assert_eq!(
        (decoded.width, decoded.height),
        (served.width, served.height)
    );
    let grey = |img: &Image, i: usize| match img.format {
        PixelFormat::Gray8 => img.data[i] as f64,
        PixelFormat::Rgb8 => {
            let p = &img.data[i * 3..i * 3 + 3];
            0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
        }
    };
    let n = decoded.width * decoded.height;
    (0..n)
        .map(|i| (grey(decoded, i) - grey(served, i)).abs())
        .sum::<f64>()
        / n as f64
}

#[test]
fn every_format_streams_the_served_pixels_with_driver_timestamps() {
    let offered = ALL_FORMATS.join(",");
    in_emulator(
        "every_format_streams_the_served_pixels_with_driver_timestamps",
        &[
            ("V4L2_EMU_FORMAT", &offered),
            ("V4L2_EMU_FPS", "50"),
            ("V4L2_EMU_STRIDE_PAD", "6"),
        ],
        || {
            let served = served_frames();
            for fourcc in ALL_FORMATS {
                let mut source = V4l2Source::new(config(Some(fourcc)));
                source.start().unwrap();
                let n = source.negotiated().unwrap();
                assert_eq!(
                    (&n.fourcc, n.width, n.height),
                    (&fourcc.as_bytes().try_into().unwrap(), WIDTH, HEIGHT)
                );
                assert!(source.native_at_size(), "{fourcc}");
                assert_eq!(source.info().nominal_fps, Some(50.0), "{fourcc}");
                let frames: Vec<Frame> = (0..8).map(|_| next(&mut source)).collect();
                for f in &frames {
                    // The driver numbers frames from 0 at STREAMON; the emulator serves frame
                    // `sequence % FRAME_COUNT` of the file.
                    let diff = mean_abs_diff(&f.image, &served[f.seq as usize % FRAME_COUNT]);
                    // YCbCr round trips and JPEG lose a little; a wrong layout loses a lot.
                    assert!(
                        diff < 3.0,
                        "{fourcc} frame {}: mean difference {diff:.2}",
                        f.seq
                    );
                    assert!(f.captured_at <= Instant::now());
                }
                // The driver's timestamps, not the dequeue times: exactly one 20 ms interval
                // per sequence number (to the microsecond the driver reports).
                for w in frames.windows(2) {
                    let steps = (w[1].seq - w[0].seq) as f64;
                    let dt = (w[1].media_time - w[0].media_time).as_secs_f64();
                    assert!(
                        (dt - steps * 0.020).abs() < 2e-6,
                        "{fourcc}: {dt} s for {steps} frames"
                    );
                    let capture_dt = w[1].captured_at.duration_since(w[0].captured_at);
                    assert!(
                        (capture_dt.as_secs_f64() - dt).abs() < 1e-3,
                        "{fourcc}: capture times {capture_dt:?} apart, timestamps {dt} s"
                    );
                }
                let counts = source.counts();
                assert_eq!(counts.monotonic_timestamps, 8, "{fourcc}");
                assert_eq!(counts.other_timestamps, 0, "{fourcc}");
            }
        },
    );
}

#[test]
fn negotiation_prefers_a_format_offered_natively_at_the_size() {
    // A USB2-style device: MJPG at 320x240 only, YUYV at 160x120 only.
    in_emulator(
        "negotiation_prefers_a_format_offered_natively_at_the_size",
        &[("V4L2_EMU_FORMAT", "MJPG,YUYV@160x120")],
        || {
            let at = |w: Option<u32>, h: Option<u32>| {
                let mut source = V4l2Source::new(V4l2Config {
                    width: w,
                    height: h,
                    ..config(None)
                });
                source.start().unwrap();
                let frame = next(&mut source);
                let n = source.negotiated().unwrap();
                assert_eq!((frame.image.width, frame.image.height), (n.width, n.height));
                (
                    String::from_utf8_lossy(&n.fourcc).into_owned(),
                    n.width,
                    n.height,
                    source.native_at_size(),
                )
            };
            assert_eq!(at(Some(320), Some(240)), ("MJPG".into(), 320, 240, true));
            assert_eq!(at(Some(160), Some(120)), ("YUYV".into(), 160, 120, true));
            // The device's current size (its first format's) when none is configured.
            assert_eq!(at(None, None), ("MJPG".into(), 320, 240, true));
            // Offered nowhere at this size: the preferred raw format, at the size the driver picks.
            assert_eq!(at(Some(640), Some(480)), ("YUYV".into(), 160, 120, false));
            // Insisting on a format the device lacks is fatal and says what it offers.
            let mut source = V4l2Source::new(config(Some("NV12")));
            let e = source.start().unwrap_err();
            assert!(matches!(e, SourceError::Fatal { .. }), "{e}");
            assert!(e.to_string().contains("MJPG"), "{e}");
        },
    );
}

#[test]
fn timestamps_not_flagged_monotonic_fall_back_to_the_dequeue_time() {
    in_emulator(
        "timestamps_not_flagged_monotonic_fall_back_to_the_dequeue_time",
        &[("V4L2_EMU_NO_MONOTONIC", "1"), ("V4L2_EMU_FPS", "50")],
        || {
            let mut source = V4l2Source::new(config(None));
            source.start().unwrap();
            let frames: Vec<Frame> = (0..5).map(|_| next(&mut source)).collect();
            let counts = source.counts();
            assert_eq!(
                (counts.monotonic_timestamps, counts.other_timestamps),
                (0, 5)
            );
            assert_eq!(frames[0].media_time, Duration::ZERO);
            for w in frames.windows(2) {
                assert!(w[1].media_time > w[0].media_time);
                assert!(w[1].captured_at > w[0].captured_at);
            }
        },
    );
}

#[test]
fn a_stalled_device_times_out_then_streams_again() {
    in_emulator(
        "a_stalled_device_times_out_then_streams_again",
        &[
            ("V4L2_EMU_FORMAT", "NV12"),
            ("V4L2_EMU_STALL_AFTER_MS", "300"),
            ("V4L2_EMU_STALL_MS", "1200"),
            ("V4L2_EMU_FPS", "25"),
        ],
        || {
            let mut source = V4l2Source::new(V4l2Config {
                timeout_ms: 400,
                ..config(Some("NV12"))
            });
            source.start().unwrap();
            let started = Instant::now();
            let (mut frames_before, mut timeouts, mut frames_after) = (0u64, 0u32, 0u64);
            let mut last_seq = None;
            while started.elapsed() < Duration::from_secs(3) {
                match source.next_frame() {
                    Ok(Some(f)) => {
                        assert!(last_seq < Some(f.seq), "{:?} then {}", last_seq, f.seq);
                        last_seq = Some(f.seq);
                        if timeouts == 0 {
                            frames_before += 1
                        } else {
                            frames_after += 1
                        }
                    }
                    Err(SourceError::Timeout { timeout, .. }) => {
                        assert_eq!(timeout, Duration::from_millis(400));
                        timeouts += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(
                frames_before >= 5,
                "{frames_before} frames before the stall"
            );
            assert!(
                (2..=4).contains(&timeouts),
                "{timeouts} timeouts in a 1.2 s stall"
            );
            assert!(frames_after >= 10, "{frames_after} frames after the stall");
            // After a timeout the stream is restarted (v4l 0.14 cannot resume one): the first
            // frame after the stall comes from the new stream, on the same clock.
            assert_eq!(
                source.counts().monotonic_timestamps,
                frames_before + frames_after
            );
        },
    );
}

/// Streams until the device vanishes, fails to reopen while it is gone, reopens when it returns.
fn lose_and_reopen() {
    let mut source = V4l2Source::new(config(Some("YUYV")));
    source.start().unwrap();
    let mut last_seq = 0;
    let lost = loop {
        match source.next_frame() {
            Ok(Some(f)) => last_seq = f.seq,
            Err(e) => break e,
            Ok(None) => panic!("a live device does not end"),
        }
    };
    assert!(matches!(lost, SourceError::Disconnected { .. }), "{lost}");
    assert!(lost.to_string().contains("the device went away"), "{lost}");
    assert!(last_seq >= 5, "{last_seq}");
    // Gone from /dev for a while: reopening fails as a lost device, naming the path, and the
    // next read says why.
    let e = source.start().unwrap_err();
    assert!(
        matches!(e, SourceError::Disconnected { .. }) && e.to_string().contains(DEVICE),
        "{e}"
    );
    let e = source.next_frame().unwrap_err();
    assert!(
        e.to_string().contains("not reopened yet (cannot open"),
        "{e}"
    );
    let started = Instant::now();
    while source.start().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = next(&mut source);
    assert!(
        f.seq > last_seq,
        "frame numbers go on: {} after {last_seq}",
        f.seq
    );
    next(&mut source);
}

#[test]
fn an_unplugged_device_is_lost_then_reopens_when_it_returns() {
    in_emulator(
        "an_unplugged_device_is_lost_then_reopens_when_it_returns",
        &[
            ("V4L2_EMU_UNPLUG_AFTER_MS", "400"),
            ("V4L2_EMU_REPLUG_AFTER_MS", "700"),
            ("V4L2_EMU_FPS", "25"),
        ],
        lose_and_reopen,
    );
}

#[test]
fn a_device_failing_with_eio_is_closed_without_a_panic_and_reopens() {
    // EIO (not ENODEV) from STREAMOFF and REQBUFS makes the v4l crate's destructors panic; the
    // source must stop the stream itself and keep going.
    in_emulator(
        "a_device_failing_with_eio_is_closed_without_a_panic_and_reopens",
        &[
            ("V4L2_EMU_UNPLUG_AFTER_MS", "400"),
            ("V4L2_EMU_REPLUG_AFTER_MS", "700"),
            ("V4L2_EMU_UNPLUG_ERRNO", "5"),
            ("V4L2_EMU_FPS", "25"),
        ],
        || {
            let panicked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = panicked.clone();
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                report(info);
            }));
            lose_and_reopen();
            let _ = std::panic::take_hook();
            assert!(
                !panicked.load(std::sync::atomic::Ordering::SeqCst),
                "something panicked"
            );
        },
    );
}

#[test]
fn garbage_and_short_buffers_are_bad_frames_never_a_crash() {
    in_emulator(
        "garbage_and_short_buffers_are_bad_frames_never_a_crash",
        &[
            ("V4L2_EMU_FORMAT", "YUYV,MJPG,NV12"),
            ("V4L2_EMU_GARBAGE_EVERY", "4"),
            ("V4L2_EMU_SHORT_EVERY", "5"),
            ("V4L2_EMU_FPS", "60"),
        ],
        || {
            for fourcc in ["YUYV", "MJPG", "NV12"] {
                let mut source = V4l2Source::new(config(Some(fourcc)));
                source.start().unwrap();
                let (mut good, mut bad) = (0u64, 0u64);
                for _ in 0..30 {
                    match source.next_frame() {
                        Ok(Some(f)) => {
                            assert_eq!((f.image.width, f.image.height), (WIDTH, HEIGHT));
                            good += 1;
                        }
                        Err(SourceError::BadFrame { reason, .. }) => {
                            assert!(!reason.is_empty());
                            bad += 1;
                        }
                        other => panic!("{fourcc}: unexpected {other:?}"),
                    }
                }
                // Sequences 3, 7, 11, ... are garbage and 4, 9, 14, ... short (19 is both):
                // 13 or 14 of 30 depending on where the reads start.
                assert!((10..=16).contains(&bad), "{fourcc}: {bad} bad of 30");
                assert_eq!(source.counts().bad_buffers, bad, "{fourcc}");
                assert_eq!(good + bad, 30);
            }
        },
    );
}

// ---- the echonet binary under the emulator ----

fn echonet_under_emulator(env: &[(&str, &str)], args: &[&str]) -> Output {
    let (so, frames) = emulator();
    echonet()
        .env("LD_PRELOAD", so)
        .env("V4L2_EMU_FRAMES", frames)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn records(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is a JSON record"))
        .collect()
}

fn run_daemon(
    env: &[(&str, &str)],
    extra: &[&str],
    seconds: &str,
    summary: &Path,
) -> Vec<serde_json::Value> {
    let summary = summary.to_str().unwrap();
    let mut args = vec![
        "run",
        "--source",
        "v4l2",
        "--input",
        DEVICE,
        "--duration",
        seconds,
        "--http",
        "off",
        "--jsonl",
        "-",
        "--threads",
        "1",
        "--summary",
        summary,
    ];
    args.extend_from_slice(extra);
    let out = echonet_under_emulator(env, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    records(&out)
}

#[test]
fn the_daemon_publishes_estimates_from_nv12_yuyv_and_mjpg_devices() {
    let dir = tempfile::tempdir().unwrap();
    for fourcc in ["NV12", "YUYV", "MJPG"] {
        let summary = dir.path().join(format!("{fourcc}.json"));
        // Every 25th buffer is garbage: counted as a bad frame, estimates go on.
        let lines = run_daemon(
            &[
                ("V4L2_EMU_FORMAT", fourcc),
                ("V4L2_EMU_FPS", "30"),
                ("V4L2_EMU_GARBAGE_EVERY", "25"),
            ],
            &[],
            "8",
            &summary,
        );
        let ok: Vec<_> = lines.iter().filter(|r| r["status"] == "ok").collect();
        assert!(
            ok.len() >= 15,
            "{fourcc}: {} estimates in {lines:?}",
            ok.len()
        );
        for r in &ok {
            assert_eq!(r["source"]["kind"], "v4l2");
            assert!(r["estimates"]["ef"]["value"].is_number(), "{r}");
            assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
        }
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert!(
            s["source"]["format"].as_str().unwrap().starts_with(fourcc),
            "{fourcc}: {}",
            s["source"]
        );
        assert!(
            (s["source"]["nominal_fps"].as_f64().unwrap() - 30.0).abs() < 1e-9,
            "{}",
            s["source"]
        );
        let bad = s["drops"]["bad_frame"].as_u64().unwrap_or(0);
        assert!(bad >= 3, "{fourcc}: {bad} bad frames counted in {s}");
    }
}

#[test]
fn the_daemon_goes_stale_when_the_device_is_unplugged_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let lines = run_daemon(
        &[
            ("V4L2_EMU_FORMAT", "NV12"),
            ("V4L2_EMU_UNPLUG_AFTER_MS", "6000"),
            ("V4L2_EMU_REPLUG_AFTER_MS", "2500"),
        ],
        // Reopen attempts every 0.5 s at most, so estimates resume well within the run.
        &["--set", "pipeline.reconnect_max_ms=500"],
        "14",
        &summary,
    );
    let status: Vec<&str> = lines
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    // Start-up publishes `stale` while the first window fills; the unplug's comes after an ok.
    let first_ok = status
        .iter()
        .position(|s| *s == "ok")
        .unwrap_or_else(|| panic!("no estimate before the unplug: {status:?}"));
    let first_stale = first_ok
        + status[first_ok..]
            .iter()
            .position(|s| *s == "stale")
            .unwrap_or_else(|| panic!("no stale notice after the unplug: {status:?}"));
    let reasons: Vec<&str> = lines[first_stale..]
        .iter()
        .filter(|r| r["status"] == "stale")
        .map(|r| r["withheld_reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("device lost")),
        "the stale notice says why: {reasons:?}"
    );
    assert!(
        status[first_stale..].contains(&"ok"),
        "estimates again after the re-plug: {status:?}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(s["stale_published"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn probe_capture_lists_the_device_and_measures_its_rate() {
    let out = echonet_under_emulator(
        &[
            ("V4L2_EMU_FORMAT", "NV12,YUYV@160x120/320x240,H264"),
            ("V4L2_EMU_FPS", "25"),
        ],
        &["probe-capture", DEVICE, "--seconds", "2", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["driver"], "v4l2-emu");
    let formats: Vec<&str> = r["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fourcc"].as_str().unwrap())
        .collect();
    // H264 is not a format the emulator knows: it leaves it out (and says so on stderr).
    assert_eq!(formats, ["NV12", "YUYV"]);
    assert_eq!(r["formats"][1]["sizes"][0]["size"], "160x120");
    assert_eq!(
        r["formats"][1]["sizes"][1]["intervals"][0],
        "1/25 s (25.000 fps)"
    );
    assert_eq!(r["would_use"], "YUYV 320x240");
    assert_eq!(r["native_at_size"], true);
    let c = &r["capture"];
    let fps = c["measured_fps"].as_f64().unwrap();
    assert!((fps - 25.0).abs() < 0.01, "measured {fps} fps");
    assert!(c["frames"].as_u64().unwrap() >= 40, "{c}");
    assert!(c["jitter_std_ms"].as_f64().unwrap() < 0.01, "{c}");
    assert!((c["interval_mean_ms"].as_f64().unwrap() - 40.0).abs() < 0.01);
    // The reader keeps up unless the machine is very busy (the emulator renders in its thread).
    assert!(c["dropped_sequence_numbers"].as_u64().unwrap() < 10, "{c}");
    assert_eq!(c["monotonic_timestamps"], true);

    // The text form, for a technician at the cart.
    let out = echonet_under_emulator(
        &[("V4L2_EMU_FORMAT", "MJPG"), ("V4L2_EMU_FPS", "15")],
        &["probe-capture", DEVICE, "--seconds", "1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "[0] 'MJPG'",
        "Size: 320x240",
        "Interval: 1/15 s (15.000 fps)",
        "Interval: 2/15 s (7.500 fps)",
        "Would use: MJPG 320x240 (offered natively at this size)",
        "dropped sequence numbers: ",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn probe_capture_of_a_missing_device_fails_naming_it() {
    let out = echonet_under_emulator(&[], &["probe-capture", "/dev/video-missing-77"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/video-missing-77"), "{err}");
}
