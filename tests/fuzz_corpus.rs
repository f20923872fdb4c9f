//! Every committed fuzz seed (fuzz/corpus/<target>/) and every crash, OOM or timeout reproducer
//! (fuzz/regressions/<target>/) goes through the fuzz targets' own functions
//! (`echonet_edge::fuzzing`) on stable Rust: none may panic, and none may allocate more than
//! [`PEAK_LIMIT`] at once (a peak-tracking global allocator, this test binary only), so an
//! out-of-memory finding stays fixed too. libFuzzer itself runs by hand: `scripts/fuzz.sh`.
//!
//! `cargo test --release --test fuzz_corpus -- --ignored write_seeds` rewrites the generated
//! seeds (AVI, bundle, configuration, V4L2 buffers; the DICOM seeds come from
//! `echonet phantom` and tests/fixtures/dicom, see fuzz/README.md).
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use echonet_edge::fuzzing::{self, Outcome, TARGETS};

#[path = "support/peak_alloc.rs"]
mod peak_alloc;
use peak_alloc::{PeakTracking, CURRENT, PEAK};

#[global_allocator]
static GLOBAL: PeakTracking = PeakTracking;

/// Most memory one input may hold at once beyond what was live before it: libFuzzer's
/// `-rss_limit_mb` in scripts/fuzz.sh is 1024 MB; a fixed input stays far below.
const PEAK_LIMIT: usize = 256 << 20;

/// One input at a time in this binary, so the peak belongs to it.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `target` on every seed and reproducer; returns (accepted, refused) over the seeds.
fn replay(target: &str) -> (usize, usize) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seeds = files_in(&root().join("corpus").join(target));
    let regressions = files_in(&root().join("regressions").join(target));
    assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{target}/");
    let (mut accepted, mut refused) = (0, 0);
    for (i, path) in seeds.iter().chain(&regressions).enumerate() {
        let data = std::fs::read(path).unwrap();
        let before = CURRENT.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let outcome = fuzzing::run_target(target, &data).unwrap();
        let peak = PEAK.load(Ordering::SeqCst).saturating_sub(before);
        assert!(
            peak <= PEAK_LIMIT,
            "{}: {peak} bytes live at once (limit {PEAK_LIMIT})",
            path.display()
        );
        if i < seeds.len() {
            match outcome {
                Outcome::Accepted => accepted += 1,
                Outcome::Refused(_) => refused += 1,
            }
        }
    }
    (accepted, refused)
}

/// Each target's seeds reach past the first checks: some are accepted whole.
fn replay_with_accepted(target: &str) {
    let (accepted, refused) = replay(target);
    assert!(
        accepted > 0,
        "{target}: none of the seeds is accepted ({refused} refused): they exercise only errors"
    );
}

#[test]
fn dicom_seeds_and_regressions() {
    replay_with_accepted("dicom");
}

#[test]
fn bundle_seeds_and_regressions() {
    replay_with_accepted("bundle");
}

#[test]
fn config_seeds_and_regressions() {
    replay_with_accepted("config");
}

#[test]
fn avi_seeds_and_regressions() {
    replay_with_accepted("avi");
}

#[test]
fn v4l2_convert_seeds_and_regressions() {
    replay_with_accepted("v4l2_convert");
}

#[test]
fn every_target_has_a_test_and_a_fuzz_target() {
    for t in TARGETS {
        assert!(
            root()
                .join("fuzz_targets")
                .join(format!("{t}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{t}.rs missing"
        );
        let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(
            cargo.contains(&format!("name = \"{t}\"")),
            "{t} not in fuzz/Cargo.toml"
        );
    }
}

#[test]
fn seed_corpora_stay_small() {
    let mut total = 0u64;
    for t in TARGETS {
        for f in files_in(&root().join("corpus").join(t)) {
            total += std::fs::metadata(f).unwrap().len();
        }
    }
    assert!(total <= 400 << 10, "fuzz/corpus holds {total} bytes");
}

// ---- seed generation (by hand; the outputs are committed) ----

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn avi_seeds() {
    use echonet_edge::dataset::avi::{encode_jpeg, write_avi, AviSpec};
    let (w, h) = (16u32, 12u32);
    let grey: Vec<u8> = (0..w * h).map(|i| (i * 7 % 251) as u8).collect();
    let rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, 255 - g, g / 2]).collect();
    let jpeg_grey = encode_jpeg(w, h, 1, &grey, 80).unwrap();
    let jpeg_rgb = encode_jpeg(w, h, 3, &rgb, 80).unwrap();
    let mjpeg = AviSpec::mjpeg(w, h, 30);
    write_seed(
        "avi",
        "mjpeg_grey_index.avi",
        &write_avi(&mjpeg, &[jpeg_grey.clone(), Vec::new(), jpeg_grey.clone()]),
    );
    let no_index = AviSpec {
        index: false,
        ..mjpeg.clone()
    };
    write_seed(
        "avi",
        "mjpeg_rgb_no_index.avi",
        &write_avi(&no_index, &[jpeg_rgb.clone(), jpeg_rgb]),
    );
    let dib24 = AviSpec {
        handler: [0; 4],
        compression: [0; 4],
        bit_count: 24,
        ..mjpeg.clone()
    };
    let stride = ((w * 3 + 3) & !3) as usize;
    let dib_frame: Vec<u8> = (0..stride * h as usize).map(|i| (i % 256) as u8).collect();
    write_seed("avi", "dib24.avi", &write_avi(&dib24, &[dib_frame]));
    let dib8 = AviSpec {
        bit_count: 8,
        palette: (0..=255u8).map(|i| [i, i / 2, 255 - i]).collect(),
        ..dib24.clone()
    };
    let stride8 = ((w + 3) & !3) as usize;
    let pal_frame: Vec<u8> = (0..stride8 * h as usize).map(|i| (i % 256) as u8).collect();
    write_seed("avi", "dib8_palette.avi", &write_avi(&dib8, &[pal_frame]));
    let y800 = AviSpec {
        handler: *b"Y800",
        compression: *b"Y800",
        bit_count: 8,
        ..mjpeg
    };
    write_seed("avi", "y800.avi", &write_avi(&y800, &[grey.clone(), grey]));
}

fn bundle_seeds() {
    use echonet_edge::model::{read_bundle, write_bundle};
    let demo =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/echonet-phantom-demo.safetensors");
    let manifest = read_bundle(&demo).unwrap().manifest;
    let tmp = tempfile::tempdir().unwrap();
    let dev = candle_core::Device::Cpu;
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "conv2d_1a.conv.weight".to_string(),
        candle_core::Tensor::arange(0f32, 12f32, &dev)
            .unwrap()
            .reshape((2, 2, 3))
            .unwrap(),
    );
    tensors.insert(
        "last_bn.running_var".to_string(),
        candle_core::Tensor::ones(4, candle_core::DType::F32, &dev).unwrap(),
    );
    let path = tmp.path().join("tiny.safetensors");
    write_bundle(&path, &manifest, &tensors).unwrap();
    write_seed("bundle", "tiny.safetensors", &std::fs::read(&path).unwrap());
}

fn config_seeds() {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
    for f in files_in(&profiles) {
        if f.extension().and_then(|e| e.to_str()) == Some("toml") {
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            write_seed("config", &name, &std::fs::read(&f).unwrap());
        }
    }
    // A profile, a NUL, then `--set` overrides one per line.
    write_seed(
        "config",
        "overrides",
        b"[window]\nframes = 20\n\0window.min_valid_frames=14\nsource.kind=phantom\npublish.http=off\n",
    );
}

fn v4l2_seeds() {
    use echonet_edge::dataset::avi::encode_jpeg;
    use echonet_edge::fuzzing::v4l2_header;
    let (w, h) = (8u16, 6u16);
    let bytes = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 37 % 256) as u8).collect() };
    let (wu, hu) = (w as usize, h as usize);
    let cases: [(&[u8; 4], u16, usize); 7] = [
        (b"YUYV", 0, wu * 2 * hu),
        (b"UYVY", 20, 20 * hu),
        (b"NV12", 0, wu * hu * 3 / 2),
        (b"YU12", 0, wu * hu * 3 / 2),
        (b"GREY", 10, 10 * hu),
        (b"RGB3", 0, wu * 3 * hu),
        (b"BGR3", 0, wu * 3 * hu),
    ];
    for (fourcc, stride, n) in cases {
        let mut input = v4l2_header(fourcc, w, h, stride);
        input.extend(bytes(n));
        let name = String::from_utf8_lossy(fourcc).to_lowercase();
        write_seed("v4l2_convert", &name, &input);
    }
    let grey: Vec<u8> = bytes(wu * hu);
    let mut input = v4l2_header(b"MJPG", w, h, 0);
    input.extend(encode_jpeg(w as u32, h as u32, 1, &grey, 80).unwrap());
    write_seed("v4l2_convert", "mjpg", &input);
}

#[test]
#[ignore = "writes the generated seed corpora into fuzz/corpus (run by hand)"]
fn write_seeds() {
    avi_seeds();
    bundle_seeds();
    config_seeds();
    v4l2_seeds();
    for t in ["avi", "bundle", "config", "v4l2_convert"] {
        let (accepted, refused) = replay(t);
        eprintln!("{t}: {accepted} accepted, {refused} refused");
    }
}

#[test]
fn a_refused_input_says_why() {
    match fuzzing::config(b"[window]\nframes = 0\n") {
        Outcome::Refused(e) => assert!(e.contains("window.frames"), "{e}"),
        Outcome::Accepted => panic!("window.frames = 0 accepted"),
    }
}
