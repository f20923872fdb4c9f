//! Damaged DICOM must never crash the runtime: every fixture with bytes flipped, cut short or
//! spliced (deterministic pseudo-random mutations) is either decoded or refused with an error
//! naming the file. Each case runs in the test thread, so a panic anywhere in decoding fails it.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::Ordering;

use echonet_edge::capture::dicom::DicomClip;

mod common;

#[path = "support/peak_alloc.rs"]
mod peak_alloc;
use peak_alloc::{PeakTracking, CURRENT, PEAK};

#[global_allocator]
static GLOBAL: PeakTracking = PeakTracking;

/// Most memory one damaged file may take at once while it is opened and three frames decoded,
/// beyond what was live before: a few times the largest fixture (0.9 MB) and its decoded frames.
const PEAK_LIMIT: usize = 32 << 20;

/// Mutated variants tried per fixture. Every element length is checked against the file size
/// before dicom-rs allocates it (src/capture/dicom/precheck.rs): 24 variants per file took
/// 301.7 s and 4.2 GB RSS before that check and 3.1 s and 44 MB after it. 96 variants then took
/// 75 s and 862 MB: seven of them still made dicom-rs allocate 739-835 MB, an unknown VR read
/// as UN (4-byte length) where the check read 2 bytes, and a damaged meta group read by
/// dicom-rs's meta reader before the check ran. With both fixed, 96 variants stay under
/// `PEAK_LIMIT` each (`ECHONET_DICOM_MUTATIONS=N` tries N). 3,000 variants per file then found
/// two RLE frames whose damaged segment count made dicom-rs's decoder ask for 2.5 and 5.7 GB
/// (seeds 2345 and 2073 of SC_rgb_rle_2frame.dcm); RLE headers are now checked first
/// (src/capture/dicom/pixel_checks.rs), and those two seeds are always tried.
const MUTATIONS_PER_FILE: u64 = 96;
/// Seeds that once found a defect, tried on every fixture whatever the variant count.
const REGRESSION_SEEDS: [u64; 2] = [2073, 2345];

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn mutate(original: &[u8], seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = original.to_vec();
    match seed % 4 {
        // Cut short anywhere.
        0 => bytes.truncate((xorshift(&mut s) as usize) % bytes.len().max(1)),
        // Flip a handful of bytes, biased toward the header where the structure lives.
        1 => {
            for _ in 0..8 {
                let limit = if xorshift(&mut s).is_multiple_of(2) {
                    2048.min(bytes.len())
                } else {
                    bytes.len()
                };
                let i = (xorshift(&mut s) as usize) % limit.max(1);
                bytes[i] ^= (xorshift(&mut s) & 0xFF) as u8 | 1;
            }
        }
        // Overwrite a 4-byte field with extreme lengths (0xFFFFFFFF, huge, zero).
        2 => {
            let i = 132 + (xorshift(&mut s) as usize) % (bytes.len().saturating_sub(136)).max(1);
            let v: [u8; 4] = match xorshift(&mut s) % 3 {
                0 => [0xFF; 4],
                1 => [0x00, 0x00, 0x00, 0x7F],
                _ => [0; 4],
            };
            if i + 4 <= bytes.len() {
                bytes[i..i + 4].copy_from_slice(&v);
            }
        }
        // Duplicate a chunk in the middle (misaligned elements).
        _ => {
            let a = (xorshift(&mut s) as usize) % bytes.len().max(1);
            let n = ((xorshift(&mut s) as usize) % 64).min(bytes.len() - a);
            let chunk = bytes[a..a + n].to_vec();
            bytes.splice(a..a, chunk);
        }
    }
    bytes
}

#[test]
fn mutated_fixtures_are_decoded_or_refused_never_a_panic() {
    // Panics inside dicom-rs are caught (and refused); the default hook would symbolise a
    // backtrace for each when RUST_BACKTRACE is set (30 MB of DWARF, charged to the variant).
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom");
    let tmp = tempfile::tempdir().unwrap();
    let mut refused = 0;
    let mut decoded = 0;
    let mut largest = (0usize, String::new());
    let mut over = Vec::new();
    let variants = std::env::var("ECHONET_DICOM_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS_PER_FILE);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("dcm") {
            continue;
        }
        let original = std::fs::read(&path).unwrap();
        for seed in (0..variants).chain(REGRESSION_SEEDS) {
            let target = tmp.path().join(format!("m{seed}.dcm"));
            std::fs::write(&target, mutate(&original, seed)).unwrap();
            let before = CURRENT.load(Ordering::SeqCst);
            PEAK.store(before, Ordering::SeqCst);
            match DicomClip::open(&target) {
                Err(e) => {
                    assert!(
                        e.to_string().contains(&format!("m{seed}.dcm")),
                        "error does not name the file: {e}"
                    );
                    refused += 1;
                }
                Ok(clip) => {
                    for i in 0..clip.frame_count().min(3) {
                        match clip.frame(i) {
                            Ok(img) => assert_eq!(
                                img.data.len(),
                                img.width * img.height * img.format.channels()
                            ),
                            Err(e) => {
                                assert!(e.to_string().contains(&format!("m{seed}.dcm")), "{e}")
                            }
                        }
                    }
                    decoded += 1;
                }
            }
            let peak = PEAK.load(Ordering::SeqCst).saturating_sub(before);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if peak > largest.0 {
                largest = (peak, format!("{name} seed {seed}"));
            }
            if peak > PEAK_LIMIT {
                over.push(format!("{name} seed {seed}: {} MiB", peak >> 20));
            }
        }
    }
    eprintln!(
        "{refused} refused, {decoded} decoded; largest peak {} KiB ({})",
        largest.0 >> 10,
        largest.1
    );
    assert!(
        over.is_empty(),
        "over {} MiB at once: {over:?}",
        PEAK_LIMIT >> 20
    );
    // Both outcomes must occur, or the mutations are not exercising anything.
    assert!(
        refused > 10 && decoded > 10,
        "refused {refused}, decoded {decoded}"
    );
}

/// A damaged file on which dicom-rs itself panics is refused in words, without Rust's panic
/// message or a backtrace on stderr before the refusal (src/contained_panic.rs).
#[test]
fn a_panic_inside_dicom_rs_prints_no_panic_message() {
    let original = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/SC_rgb_rle_2frame.dcm"),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // About one RLE variant in six makes dicom-rs's RLE interleave panic (a segment that
    // decodes short); take the first such seed.
    let panicking = (0..400u64)
        .find_map(|seed| {
            let target = tmp.path().join(format!("p{seed}.dcm"));
            std::fs::write(&target, mutate(&original, seed)).unwrap();
            let clip = DicomClip::open(&target).ok()?;
            let failed = (0..clip.frame_count()).any(|i| {
                clip.frame(i)
                    .is_err_and(|e| e.to_string().contains("the decoder failed on damaged data"))
            });
            failed.then_some(target)
        })
        .expect("no variant among 400 made dicom-rs panic");
    let out = common::echonet()
        .env("RUST_BACKTRACE", "1")
        .args([
            "predict",
            "--model",
            "models/echonet-phantom-demo.safetensors",
        ])
        .arg(&panicking)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let name = panicking
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains(&name) || stdout.contains(&name),
        "the refusal names the file: {stdout} {stderr}"
    );
    assert!(
        format!("{stdout}{stderr}").contains("failed on damaged data"),
        "{stdout} {stderr}"
    );
}
