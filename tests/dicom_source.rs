//! The DICOM replay source against real files (pydicom's test data, see
//! tests/fixtures/dicom/README.md): what decodes must match pydicom's pixels, what cannot be
//! decoded must fail with an error naming the file — never a panic.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use echonet_edge::capture::dicom::{
    DicomClip, DicomError, DicomSource, RegionDataType, RegionSpatialFormat, TimingSource,
};
use echonet_edge::capture::{FrameSource, Pacing};
use echonet_edge::frame::{Image, PixelFormat, PixelRect};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dicom")
        .join(name)
}

fn rgb_at(image: &Image, x: usize, y: usize) -> [u8; 3] {
    assert_eq!(image.format, PixelFormat::Rgb8);
    let i = (y * image.width + x) * 3;
    [image.data[i], image.data[i + 1], image.data[i + 2]]
}

#[test]
fn us1_uncompressed_rgb_decodes_like_pydicom() {
    let clip = DicomClip::open(fixture("US1_UNCR.dcm")).unwrap();
    let facts = clip.facts();
    assert_eq!(facts.photometric_interpretation, "RGB");
    assert_eq!(facts.modality.as_deref(), Some("US"));
    assert_eq!(
        facts.sop_class_uid.as_deref(),
        Some("1.2.840.10008.5.1.4.1.1.6.1")
    );
    assert!(facts.is_ultrasound_sop_class);
    assert_eq!(facts.transfer_syntax_uid, "1.2.840.10008.1.2.1");
    assert_eq!(
        (facts.cols, facts.rows, facts.number_of_frames),
        (640, 480, 1)
    );
    assert_eq!(clip.frame_times(), [Duration::ZERO]);
    assert_eq!(clip.timing_source(), TimingSource::SingleFrame);

    let image = clip.frame(0).unwrap();
    assert_eq!(
        (image.width, image.height, image.format),
        (640, 480, PixelFormat::Rgb8)
    );
    // pydicom 3.0.2, Dataset.pixel_array[y, x] on the same file.
    for ((x, y), expected) in [
        ((18, 153), [255, 255, 0]),
        ((110, 197), [160, 8, 0]),
        ((413, 206), [226, 67, 0]),
        ((305, 290), [177, 18, 0]),
        ((300, 300), [65, 65, 65]),
        ((250, 200), [255, 217, 0]),
    ] {
        assert_eq!(rgb_at(&image, x, y), expected, "pixel ({x}, {y})");
    }
    let sum: u64 = image.data.iter().map(|&v| u64::from(v)).sum();
    assert_eq!(sum, 31_821_736, "pydicom: pixel_array.sum()");
}

#[test]
fn aloka_segmented_16_bit_palette_decodes_with_its_regions() {
    let clip = DicomClip::open(fixture("gdcm-US-ALOKA-16.dcm")).unwrap();
    let facts = clip.facts();
    assert_eq!(facts.photometric_interpretation, "PALETTE COLOR");
    assert_eq!((facts.bits_allocated, facts.bits_stored), (16, 16));
    assert_eq!(facts.view.laterality.as_deref(), Some("R"));

    let image = clip.frame(0).unwrap();
    assert_eq!(
        (image.width, image.height, image.format),
        (640, 480, PixelFormat::Rgb8)
    );
    let mut distinct = image.data.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 20,
        "only {} distinct values",
        distinct.len()
    );
    // pydicom 3.0.2: apply_color_lut(pixel_array, ds)[y, x] (16-bit) / 257, rounded (the whole
    // frame matched pydicom exactly when this test was written).
    for ((x, y), expected) in [
        ((200, 200), [1, 1, 1]),
        ((100, 100), [9, 9, 9]),
        ((180, 240), [91, 91, 91]),
        ((500, 300), [29, 29, 29]),
        ((0, 0), [40, 45, 65]),
    ] {
        assert_eq!(rgb_at(&image, x, y), expected, "pixel ({x}, {y})");
    }

    // Two B-mode panes and a grey bar, as pydicom lists them.
    let regions = clip.ultrasound_regions();
    assert_eq!(regions.len(), 3);
    assert_eq!(
        regions[0].rect,
        PixelRect {
            x0: 32,
            y0: 24,
            x1: 336,
            y1: 416
        }
    );
    assert_eq!(
        regions[1].rect,
        PixelRect {
            x0: 336,
            y0: 24,
            x1: 640,
            y1: 416
        }
    );
    assert_eq!(
        regions[2].rect,
        PixelRect {
            x0: 32,
            y0: 40,
            x1: 64,
            y1: 104
        }
    );
    assert!(regions[0].is_2d_tissue() && regions[1].is_2d_tissue());
    assert_eq!(regions[2].spatial_format, RegionSpatialFormat::None);
    assert_eq!(regions[2].data_type, RegionDataType::Other(13));
    let delta = 0.038_265_306_502_580_64;
    assert_eq!(regions[0].cm_per_pixel(), Some((delta, delta)));
    assert_eq!(regions[2].cm_per_pixel(), None);
    let geometry = clip.geometry();
    assert_eq!(geometry.regions.len(), 3);
    assert_eq!(geometry.cm_per_pixel, Some((delta, delta)));
}

#[test]
fn rle_two_frame_rgb_decodes_like_pydicom() {
    let clip = DicomClip::open(fixture("SC_rgb_rle_2frame.dcm")).unwrap();
    assert_eq!(clip.facts().transfer_syntax_uid, "1.2.840.10008.1.2.5");
    assert!(!clip.facts().is_ultrasound_sop_class);
    assert_eq!(clip.frame_count(), 2);
    // No timing in the file: the default rate, not claimed as the file's.
    assert_eq!(clip.nominal_fps(), None);
    assert_eq!(clip.timing_source(), TimingSource::Default);

    // pydicom 3.0.2, Dataset.pixel_array[frame, y, x].
    let expected = [
        [
            ((0, 0), [255, 0, 0]),
            ((50, 50), [128, 128, 255]),
            ((99, 99), [255, 255, 255]),
            ((75, 25), [0, 255, 0]),
        ],
        [
            ((0, 0), [0, 255, 255]),
            ((50, 50), [127, 127, 0]),
            ((99, 99), [0, 0, 0]),
            ((75, 25), [255, 0, 255]),
        ],
    ];
    for (index, pixels) in expected.iter().enumerate() {
        let image = clip.frame(index).unwrap();
        assert_eq!(
            (image.width, image.height, image.format),
            (100, 100, PixelFormat::Rgb8)
        );
        for &((x, y), rgb) in pixels {
            assert_eq!(rgb_at(&image, x, y), rgb, "frame {index} pixel ({x}, {y})");
        }
    }
    assert!(matches!(
        clip.frame(2),
        Err(DicomError::FrameOutOfRange { count: 2, .. })
    ));
}

#[test]
fn jpeg_2000_is_refused_naming_the_transfer_syntax() {
    let error = DicomClip::open(fixture("US1_J2KR.dcm")).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, DicomError::UnsupportedTransferSyntax { .. }),
        "{text}"
    );
    assert!(text.contains("1.2.840.10008.1.2.4.90"), "{text}");
    assert!(text.contains("JPEG 2000"), "{text}");
    assert!(text.contains("US1_J2KR.dcm"), "{text}");
}

#[test]
fn truncated_pixel_data_is_an_error_naming_the_file() {
    let error = DicomClip::open(fixture("MR_truncated.dcm")).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("MR_truncated.dcm"), "{text}");
    // The element claims 8192 bytes; the file ends 62 bytes short of them.
    assert!(
        matches!(error, DicomError::DamagedPixelData { .. }),
        "{text}"
    );
    assert!(
        text.contains("truncated") && text.contains("8192"),
        "{text}"
    );
}

#[test]
fn the_fixture_folder_replays_the_good_files_and_skips_the_bad() {
    let mut source = DicomSource::new(fixture(""), Pacing::AsFastAsPossible, false).unwrap();
    assert_eq!(source.files().len(), 5);
    source.start().unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = source.next_frame().unwrap() {
        frames.push(frame);
    }
    // Sorted by name: MR_truncated (bad), SC_rgb_rle_2frame (2), US1_J2KR (refused), US1_UNCR (1),
    // gdcm-US-ALOKA-16 (1).
    assert_eq!(source.skipped_files(), 2);
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert!(frames.windows(2).all(|w| w[0].media_time < w[1].media_time));
    assert_eq!(
        frames
            .iter()
            .map(|f| (f.image.width, f.image.height))
            .collect::<Vec<_>>(),
        [(100, 100), (100, 100), (640, 480), (640, 480)]
    );
    assert!(frames[3].geometry.cm_per_pixel.is_some());
    assert!(frames[0].geometry.regions.is_empty());
}
