//! What is checked in a clip's pixel data before a decoder sees it: that it holds every frame the
//! header claims (at open), and each RLE Lossless frame's header (before dicom-rs decodes it).
//!
//! dicom-rs's RLE decoder trusts the frame header's segment count: it allocates four bytes per
//! claimed segment (a damaged count of 0x55000003 asked for 5.7 GB in
//! `tests/dicom_mutations.rs`, an allocation failure that aborts the process where memory is
//! short) and then slices the fragment with offsets it never checks.

use std::path::Path;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::{bad_attribute, DicomError, Encoding, SampleBits};

/// The RLE header: a segment count and 15 segment offsets, 64 bytes (PS3.5 G.5).
const RLE_HEADER_BYTES: usize = 64;
/// The most segments an RLE frame may have (PS3.5 G.2).
const RLE_MAX_SEGMENTS: usize = 15;

/// Checks that the pixel data holds every frame it claims, before anything trusts the frame count.
pub(super) fn check_pixel_data(
    obj: &InMemDicomObject,
    encoding: Encoding,
    frames: usize,
    frame_samples: usize,
    bits: SampleBits,
    path: &Path,
) -> Result<(), DicomError> {
    let missing = || bad_attribute(path, "Pixel Data (7FE0,0010)", "pixel data");
    let value = obj.get(tags::PIXEL_DATA).ok_or_else(missing)?.value();
    match (encoding, value) {
        (Encoding::Native, Value::Primitive(p)) => {
            let found = match p {
                PrimitiveValue::U8(bytes) => bytes.len() as u64,
                PrimitiveValue::U16(words) => words.len() as u64 * 2,
                PrimitiveValue::Empty => 0,
                _ => {
                    return Err(bad_attribute(
                        path,
                        "Pixel Data (7FE0,0010)",
                        "OB or OW values",
                    ))
                }
            };
            let expected = (frames as u64)
                .checked_mul(frame_samples as u64)
                .and_then(|n| n.checked_mul(u64::from(bits.allocated / 8)))
                .unwrap_or(u64::MAX);
            if found < expected {
                return Err(DicomError::TruncatedPixelData {
                    path: path.to_path_buf(),
                    frames,
                    expected,
                    found,
                });
            }
            Ok(())
        }
        (Encoding::Rle | Encoding::JpegBaseline, Value::PixelSequence(sequence)) => {
            // Every frame starts a fragment, so a damaged frame count cannot exceed them.
            let fragments = sequence.fragments().len();
            if fragments < frames {
                return Err(DicomError::TruncatedPixelData {
                    path: path.to_path_buf(),
                    frames,
                    expected: frames as u64,
                    found: fragments as u64,
                });
            }
            Ok(())
        }
        _ => Err(bad_attribute(
            path,
            "Pixel Data (7FE0,0010)",
            "native data for an uncompressed transfer syntax, fragments for a compressed one",
        )),
    }
}

/// Checks RLE frame `index`'s header: `segments` segments (samples per pixel times bytes per
/// sample), each starting after the header, in order, inside the fragment. The reason in words
/// otherwise.
pub(super) fn check_rle_frame(
    object: &DefaultDicomObject,
    index: usize,
    segments: usize,
) -> Result<(), String> {
    let fragment = match object.get(tags::PIXEL_DATA).map(|e| e.value()) {
        Some(Value::PixelSequence(sequence)) => sequence
            .fragments()
            .get(index)
            .ok_or_else(|| format!("no RLE fragment for frame {index}"))?,
        _ => return Err("the RLE pixel data has no fragments".into()),
    };
    check_rle_header(fragment, segments)
}

fn check_rle_header(fragment: &[u8], segments: usize) -> Result<(), String> {
    if fragment.len() < RLE_HEADER_BYTES {
        return Err(format!(
            "RLE fragment of {} bytes is shorter than its {RLE_HEADER_BYTES}-byte header",
            fragment.len()
        ));
    }
    let word = |i: usize| {
        let b = &fragment[4 * i..4 * i + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    };
    let declared = word(0);
    if declared != segments || declared == 0 || declared > RLE_MAX_SEGMENTS {
        return Err(format!(
            "RLE header declares {declared} segments; this frame has {segments} \
             (samples per pixel x bytes per sample, at most {RLE_MAX_SEGMENTS})"
        ));
    }
    let mut previous = RLE_HEADER_BYTES;
    for k in 1..=declared {
        let offset = word(k);
        if offset < previous || offset > fragment.len() {
            return Err(format!(
                "RLE segment {k} starts at byte {offset}: expected {previous}..={} \
                 (after the header and the segment before it, inside the {}-byte fragment)",
                fragment.len(),
                fragment.len()
            ));
        }
        previous = offset;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(counts: &[u32]) -> Vec<u8> {
        let mut bytes: Vec<u8> = counts.iter().flat_map(|c| c.to_le_bytes()).collect();
        bytes.resize(RLE_HEADER_BYTES, 0);
        bytes
    }

    #[test]
    fn a_sound_rle_header_passes() {
        let mut frame = header(&[3, 64, 70, 80]);
        frame.resize(90, 0);
        assert_eq!(check_rle_header(&frame, 3), Ok(()));
    }

    /// The damaged counts and offsets `tests/dicom_mutations.rs` found (a count of 0x55000003
    /// asked dicom-rs for 5.7 GB) are refused before dicom-rs reads them.
    #[test]
    fn damaged_rle_headers_are_refused_in_words() {
        let mut frame = header(&[0x5500_0003, 64, 70, 80]);
        frame.resize(90, 0);
        let e = check_rle_header(&frame, 3).unwrap_err();
        assert!(e.contains("declares 1426063363 segments"), "{e}");
        assert!(check_rle_header(&header(&[16]), 16)
            .unwrap_err()
            .contains("at most 15"));
        assert!(
            check_rle_header(&header(&[1, 64]), 3).is_err(),
            "wrong count"
        );
        let mut past = header(&[2, 64, 9999]);
        past.resize(100, 0);
        let e = check_rle_header(&past, 2).unwrap_err();
        assert!(e.contains("segment 2 starts at byte 9999"), "{e}");
        let mut backwards = header(&[2, 80, 70]);
        backwards.resize(100, 0);
        assert!(check_rle_header(&backwards, 2).is_err());
        assert!(check_rle_header(&[1, 0, 0, 0], 1)
            .unwrap_err()
            .contains("shorter"));
    }
}
