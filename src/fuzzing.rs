//! The bodies of the cargo-fuzz targets (fuzz/fuzz_targets/*.rs): each takes arbitrary bytes and
//! drives one parser that reads data from outside the process, from the bytes to the decoded
//! pixels or the checked settings. They return what happened instead of panicking, so the same
//! functions serve libFuzzer (nightly, `scripts/fuzz.sh`) and the stable test that replays every
//! committed seed and crash reproducer (`tests/fuzz_corpus.rs`). A panic that escapes, an
//! allocation beyond libFuzzer's limit or an input that takes seconds is the finding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::capture::dicom::DicomClip;
use crate::capture::v4l2::{decode_buffer, Negotiated, SUPPORTED};
use crate::config::Config;
use crate::dataset::avi::AviFile;
use crate::model::read_bundle;

/// The fuzz targets by name: fuzz/fuzz_targets/<name>.rs, fuzz/corpus/<name>/,
/// fuzz/regressions/<name>/.
pub const TARGETS: [&str; 5] = ["dicom", "bundle", "config", "avi", "v4l2_convert"];

/// What one input did: accepted (decoded or parsed) or refused with an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused(String),
}

/// Runs target `name` on `data`; None for an unknown name.
pub fn run_target(name: &str, data: &[u8]) -> Option<Outcome> {
    Some(match name {
        "dicom" => dicom(data),
        "bundle" => bundle(data),
        "config" => config(data),
        "avi" => avi(data),
        "v4l2_convert" => v4l2_convert(data),
        _ => return None,
    })
}

/// Frames decoded per accepted DICOM or AVI input: enough to reach every code path of the
/// decoders (first, second, last frame) without making a long clip a slow input.
const FRAMES_PER_INPUT: usize = 3;

/// A DICOM file: the length precheck, dicom-rs's parser, the attribute checks, timing, regions
/// and the decoding of the first, second and last frames.
pub fn dicom(data: &[u8]) -> Outcome {
    with_temp_file("dcm", data, |path| match DicomClip::open(path) {
        Err(e) => Outcome::Refused(e.to_string()),
        Ok(clip) => {
            let _ = (clip.facts(), clip.frame_times(), clip.geometry());
            let _ = (
                clip.nominal_fps(),
                clip.duration(),
                clip.format_description(),
            );
            for i in frames_to_decode(clip.frame_count()) {
                if let Err(e) = clip.frame(i) {
                    return Outcome::Refused(e.to_string());
                }
            }
            Outcome::Accepted
        }
    })
}

/// A model bundle (safetensors with the echonet manifest): size cap, header, manifest, dtypes,
/// content hash, tensors.
pub fn bundle(data: &[u8]) -> Outcome {
    with_temp_file("safetensors", data, |path| match read_bundle(path) {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Refused(e.to_string()),
    })
}

/// A deployment profile: the bytes as TOML text, then `--set` overrides. A NUL byte splits
/// the input: the profile before it, one override per line after it.
pub fn config(data: &[u8]) -> Outcome {
    let (text, overrides) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let overrides: Vec<String> = String::from_utf8_lossy(overrides)
        .lines()
        .map(str::to_string)
        .collect();
    match Config::from_toml_with_overrides(&text, Path::new("fuzz.toml"), &overrides) {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

/// Decoded bytes an AVI input may ask for before the harness skips decoding it. The reader's
/// own cap ([`crate::dataset::avi::MAX_DECODED_BYTES`], 2 GiB for a whole clip held in memory)
/// is the dataset loader's policy; a few kilobytes of MJPEG can legitimately reach it, which
/// would read as an out-of-memory finding under libFuzzer's limit.
pub const AVI_DECODE_BUDGET: usize = 256 << 20;

/// An AVI clip: RIFF structure, headers, index or movi scan, codec choice and every frame
/// decoded as the dataset loader does (`decode_all`), when that fits [`AVI_DECODE_BUDGET`].
pub fn avi(data: &[u8]) -> Outcome {
    let path = Path::new("fuzz.avi");
    let file = match AviFile::parse(path, data.to_vec()) {
        Ok(f) => f,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    if let Err(e) = file.codec() {
        return Outcome::Refused(e.to_string());
    }
    let decoded = (file.info.width as usize)
        .saturating_mul(file.info.height as usize)
        .saturating_mul(3)
        .saturating_mul(file.frame_count());
    if decoded > AVI_DECODE_BUDGET {
        return Outcome::Refused(format!(
            "{decoded} decoded bytes: beyond the harness budget"
        ));
    }
    match file.decode_all(None) {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

/// Header of a v4l2_convert input: fourcc index (1 byte), width, height, stride (u16 LE each).
pub const V4L2_HEADER_BYTES: usize = 7;
/// Largest width and height a v4l2_convert input declares: what capture devices negotiate;
/// larger values are taken modulo this.
pub const V4L2_MAX_SIDE: usize = 4096;

/// One captured buffer through the V4L2 pixel converters. The first [`V4L2_HEADER_BYTES`]
/// bytes choose the negotiated format (what the driver would have said); the rest is the buffer.
pub fn v4l2_convert(data: &[u8]) -> Outcome {
    if data.len() < V4L2_HEADER_BYTES {
        return Outcome::Refused("shorter than the header".into());
    }
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([data[i], data[i + 1]]));
    let negotiated = Negotiated {
        fourcc: *SUPPORTED[usize::from(data[0]) % SUPPORTED.len()],
        width: u16_at(1) % (V4L2_MAX_SIDE + 1),
        height: u16_at(3) % (V4L2_MAX_SIDE + 1),
        stride: u16_at(5),
    };
    match decode_buffer(&negotiated, &data[V4L2_HEADER_BYTES..]) {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Refused(e),
    }
}

/// The header of a v4l2_convert input, for seeds and tests.
pub fn v4l2_header(fourcc: &[u8; 4], width: u16, height: u16, stride: u16) -> Vec<u8> {
    let index = SUPPORTED.iter().position(|f| *f == fourcc).unwrap_or(0);
    let mut h = vec![index as u8];
    for v in [width, height, stride] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

fn frames_to_decode(count: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..count.min(FRAMES_PER_INPUT - 1)).collect();
    if count > 0 && !v.contains(&(count - 1)) {
        v.push(count - 1);
    }
    v
}

/// Readers that take a path get the bytes as a file of their own (pid + counter: parallel
/// libFuzzer jobs and test threads never share one), removed afterwards.
fn with_temp_file(ext: &str, data: &[u8], read: impl FnOnce(&Path) -> Outcome) -> Outcome {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path: PathBuf =
        std::env::temp_dir().join(format!("echonet-fuzz-{}-{n}.{ext}", std::process::id()));
    if let Err(e) = std::fs::write(&path, data) {
        return Outcome::Refused(format!("{}: cannot write the input: {e}", path.display()));
    }
    let outcome = read(&path);
    let _ = std::fs::remove_file(&path);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_to_decode_covers_first_second_and_last() {
        assert_eq!(frames_to_decode(0), Vec::<usize>::new());
        assert_eq!(frames_to_decode(1), vec![0]);
        assert_eq!(frames_to_decode(2), vec![0, 1]);
        assert_eq!(frames_to_decode(50), vec![0, 1, 49]);
    }

    #[test]
    fn v4l2_header_round_trips() {
        let mut input = v4l2_header(b"GREY", 2, 2, 0);
        input.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(v4l2_convert(&input), Outcome::Accepted);
        assert!(matches!(v4l2_convert(&input[..9]), Outcome::Refused(_)));
    }

    #[test]
    fn unknown_target_is_none() {
        assert!(run_target("nope", b"").is_none());
        for t in TARGETS {
            assert!(run_target(t, b"").is_some());
        }
    }
}
