//! The saliency commands and endpoint: `echonet saliency` / `echonet occlusion` write PNG and
//! .npy maps of the bundled model, and the display's `/api/saliency` refuses clearly until a
//! frame has reached the model, then returns a map (also from the running daemon).
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod display_support;
mod explain_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::echonet;
use echonet_edge::model::read_bundle;
use echonet_edge::phantom::{Phantom, PhantomParams};
use echonet_edge::preprocess::ModelInput;
use explain_support::{bundled, phantom_frames};

/// `echonet ARGS`, which must succeed.
fn run_echonet_ok(args: &[&str]) -> std::process::Output {
    let out = echonet().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "echonet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An .npy file of shape [h, w] f32: header fields and size.
fn check_npy(path: &Path, h: usize, w: usize) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    assert!(header.contains(&format!("'shape': ({h}, {w})")), "{header}");
    assert_eq!((10 + hl) % 64, 0);
    assert_eq!(b.len(), 10 + hl + 4 * h * w);
    b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn saliency_and_occlusion_commands_write_png_and_npy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundled();
    let model = model.to_str().unwrap();
    let spec = read_bundle(&bundled()).unwrap().manifest.input;
    run_echonet_ok(&[
        "phantom",
        "--out",
        d.join("ph").to_str().unwrap(),
        "--clips",
        "1",
        "--seed",
        "5",
        "--frames",
        "12",
    ]);
    let clip = d.join("ph/clip_0000.dcm");
    // A single PNG frame too.
    let phantom = Phantom::new(PhantomParams::random(5)).unwrap();
    let img = phantom.render(Duration::ZERO);
    let png_in = d.join("frame.png");
    image::GrayImage::from_raw(img.width as u32, img.height as u32, img.data)
        .unwrap()
        .save(&png_in)
        .unwrap();
    for (cmd, extra) in [
        ("saliency", vec!["--samples", "4", "--seed", "3"]),
        ("occlusion", vec!["--patch", "16", "--stride", "8"]),
    ] {
        for (input, frames, expected) in [
            (&clip, "3", vec!["frame_0000", "frame_0003", "frame_0006"]),
            (&png_in, "20", vec!["frame"]),
        ] {
            let out_dir = d.join(format!("{cmd}-{}", expected.len()));
            let mut args = vec![
                cmd,
                "--model",
                model,
                "--input",
                input.to_str().unwrap(),
                "--task",
                "lv_volume",
                "--out",
                out_dir.to_str().unwrap(),
                "--frames",
                frames,
            ];
            args.extend(extra.iter().copied());
            let out = run_echonet_ok(&args);
            let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), expected.len(), "{cmd} on {}", input.display());
            for name in &expected {
                let png = image::open(out_dir.join(format!("{name}.png"))).unwrap();
                assert!(png.width() >= spec.width as u32 && png.height() >= spec.height as u32);
                let map = check_npy(
                    &out_dir.join(format!("{name}.npy")),
                    spec.height,
                    spec.width,
                );
                assert!(map.iter().all(|v| v.is_finite()));
                assert!(
                    map.iter().any(|&v| v != 0.0),
                    "{cmd}: {name} map is all zero"
                );
                if cmd == "saliency" {
                    assert!(map.iter().all(|&v| v >= 0.0));
                    // The top corners of the sector's box lie outside the fan, where the
                    // preprocessing blacks every frame out: no mass there.
                    assert_eq!(
                        (map[0], map[spec.width - 1]),
                        (0.0, 0.0),
                        "{cmd}: {name} puts mass outside the sector"
                    );
                }
            }
        }
    }
    // Deterministic: the same seed writes the same map.
    let again = d.join("again");
    run_echonet_ok(&[
        "saliency",
        "--model",
        model,
        "--input",
        png_in.to_str().unwrap(),
        "--task",
        "lv_volume",
        "--out",
        again.to_str().unwrap(),
        "--samples",
        "4",
        "--seed",
        "3",
    ]);
    assert_eq!(
        std::fs::read(again.join("frame.npy")).unwrap(),
        std::fs::read(d.join("saliency-1/frame.npy")).unwrap()
    );
    // An unknown task is an error that names the model's tasks.
    let bad = echonet()
        .args([
            "saliency",
            "--model",
            model,
            "--input",
            png_in.to_str().unwrap(),
            "--task",
            "nope",
            "--out",
            d.join("bad").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lv_volume"));
}

#[test]
fn saliency_endpoint_refuses_clearly_then_returns_a_png() {
    use display_support::{get, get_within, start};
    use echonet_edge::explain::worker::SaliencyWorker;
    use echonet_edge::publish::{HubConfig, ServerConfig};

    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    // No worker attached: unavailable, said so.
    let r = get(&server, "/api/saliency");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "saliency unavailable");

    let bundle = read_bundle(&bundled()).unwrap();
    let spec = bundle.manifest.input.clone();
    hub.set_saliency_worker(
        SaliencyWorker::spawn(bundle.manifest.clone(), bundle.store.snapshot()).unwrap(),
    );
    // No frame has reached the model yet.
    let r = get(&server, "/api/saliency?task=lv_volume");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no frame yet");

    let frame = phantom_frames(&[31], 1, &spec).remove(0);
    hub.set_model_input(ModelInput {
        seq: 42,
        input: Arc::new(frame.input),
        sector: Some(frame.sector),
    });
    let r = get(&server, "/api/saliency?task=nope");
    assert_eq!(r.status, 400);
    assert!(r.json()["reason"].as_str().unwrap().contains("lv_volume"));

    // One map at a time: a request while one is computed is refused with 503 "busy". 8 samples
    // take about a second on a quiet machine (long enough to be caught busy by the 30 ms polls)
    // and stay well inside the worker's 60 s answer time when the nice-19 worker is starved by a
    // loaded machine (20 samples were not).
    let slow = std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            get_within(
                &server,
                "/api/saliency?task=lv_volume&samples=8",
                Duration::from_secs(300),
            )
        });
        let mut busy = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        while busy.is_none() && Instant::now() < deadline && !first.is_finished() {
            std::thread::sleep(Duration::from_millis(30));
            let r = get(&server, "/api/saliency?task=edv&samples=1");
            if r.status == 503 {
                busy = Some(r);
            }
        }
        (first.join().unwrap(), busy)
    });
    let (first, busy) = slow;
    let busy = busy.expect("a second request while the first was computed was not refused");
    assert_eq!(busy.json()["error"], "busy");
    assert!(busy.headers.contains_key("retry-after"));
    assert_eq!(first.status, 200);
    assert_eq!(first.content_type, "image/png");
    assert_eq!(first.headers["x-frame-seq"], "42");
    assert_eq!(first.headers["x-saliency-task"], "lv_volume");
    let png = image::load_from_memory(&first.body).unwrap();
    assert!(png.width() >= spec.width as u32);
    let metrics = String::from_utf8(get(&server, "/metrics").body).unwrap();
    assert!(
        metrics.contains("echonet_saliency_done_total 1"),
        "{metrics}"
    );
    let busy_count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("echonet_saliency_busy_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(busy_count >= 1);
}

/// `echonet run` on the phantom with the display on: the endpoint answers 404 or a PNG, never
/// anything else, and a PNG once frames flow.
#[test]
fn saliency_endpoint_of_the_running_daemon() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = echonet()
        .args([
            "run",
            "--model",
            bundled().to_str().unwrap(),
            "--source",
            "phantom",
            // Killed as soon as a map arrives; long enough for a nice-19 worker on a loaded
            // machine (the test binaries run in parallel).
            "--duration",
            "150",
            "--threads",
            "1",
            "--jsonl",
            "/dev/null",
            "--http",
            &format!("127.0.0.1:{port}"),
        ])
        .env("ECHONET_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(140);
    let mut got = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut r) = agent
            .get(&format!(
                "http://127.0.0.1:{port}/api/saliency?task=lv_volume&samples=10"
            ))
            .call()
        else {
            continue; // not listening yet
        };
        let status = r.status().as_u16();
        assert!(status == 200 || status == 404, "status {status}");
        if status == 200 {
            got = Some(r.body_mut().read_to_vec().unwrap());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let png = got.expect("no saliency map from the running daemon");
    image::load_from_memory(&png).unwrap();
}
