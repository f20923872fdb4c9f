//! Unit tests of DICOM decoding, timing, geometry and replay, on synthetic files written with
//! dicom-object into temporary folders.

use super::pixels::expand_segmented_lut;
use super::*;
use crate::capture::{FrameSource, Pacing, SourceError};
use crate::frame::Frame;
use dicom_core::value::{DataSetSequence, PixelFragmentSequence};
use dicom_core::{DataElement, VR};
use dicom_object::mem::InMemElement;
use dicom_object::FileMetaTableBuilder;

fn us(tag: Tag, value: u16) -> InMemElement {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

fn text(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn ds(tag: Tag, values: &[&str]) -> InMemElement {
    DataElement::new(
        tag,
        VR::DS,
        PrimitiveValue::Strs(values.iter().map(|s| s.to_string()).collect()),
    )
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// The image pixel module of a synthetic ultrasound file.
fn image(
    rows: u16,
    cols: u16,
    photometric: &str,
    (allocated, stored): (u16, u16),
    frames: u32,
) -> Vec<InMemElement> {
    let samples = if matches!(photometric, "RGB" | "YBR_FULL" | "YBR_FULL_422") {
        3
    } else {
        1
    };
    let mut elements = vec![
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234567"),
        text(tags::MODALITY, VR::CS, "US"),
        us(tags::SAMPLES_PER_PIXEL, samples),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric),
        us(tags::ROWS, rows),
        us(tags::COLUMNS, cols),
        us(tags::BITS_ALLOCATED, allocated),
        us(tags::BITS_STORED, stored),
        us(tags::HIGH_BIT, stored - 1),
        us(tags::PIXEL_REPRESENTATION, 0),
    ];
    if samples == 3 {
        elements.push(us(tags::PLANAR_CONFIGURATION, 0));
    }
    if frames > 1 {
        elements.push(text(tags::NUMBER_OF_FRAMES, VR::IS, &frames.to_string()));
    }
    elements
}

fn pixels8(data: Vec<u8>) -> InMemElement {
    DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(data))
}

fn pixels16(data: Vec<u16>) -> InMemElement {
    DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(data.into()))
}

fn write_with(
    dir: &Path,
    name: &str,
    elements: Vec<InMemElement>,
    transfer_syntax: &str,
) -> PathBuf {
    let path = dir.join(name);
    InMemDicomObject::from_element_iter(elements)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(transfer_syntax))
        .unwrap()
        .write_to_file(&path)
        .unwrap();
    path
}

fn write(dir: &Path, name: &str, elements: Vec<InMemElement>) -> PathBuf {
    write_with(dir, name, elements, uids::EXPLICIT_VR_LITTLE_ENDIAN)
}

/// A 2x2 8-bit grey clip whose frame `f` is filled with `f * 10`.
fn grey_clip(dir: &Path, name: &str, frames: u32, timing: Vec<InMemElement>) -> PathBuf {
    let mut elements = image(2, 2, "MONOCHROME2", (8, 8), frames);
    elements.extend(timing);
    elements.push(pixels8(
        (0..frames).flat_map(|f| [f as u8 * 10; 4]).collect(),
    ));
    write(dir, name, elements)
}

fn ms(values: &[u64]) -> Vec<Duration> {
    values.iter().map(|&v| Duration::from_millis(v)).collect()
}

fn assert_times_close(actual: &[Duration], expected_ms: &[f64]) {
    assert_eq!(actual.len(), expected_ms.len(), "{actual:?}");
    for (a, e) in actual.iter().zip(expected_ms) {
        assert!(
            (a.as_secs_f64() * 1000.0 - e).abs() < 1e-6,
            "{actual:?} vs {expected_ms:?}"
        );
    }
}

#[test]
fn monochrome1_is_inverted_and_monochrome2_is_not() {
    let dir = tempfile::tempdir().unwrap();
    for (photometric, expected) in [
        ("MONOCHROME1", [255, 155, 55, 0]),
        ("MONOCHROME2", [0, 100, 200, 255]),
    ] {
        let mut elements = image(1, 4, photometric, (8, 8), 1);
        elements.push(pixels8(vec![0, 100, 200, 255]));
        let clip =
            DicomClip::open(write(dir.path(), &format!("{photometric}.dcm"), elements)).unwrap();
        let frame = clip.frame(0).unwrap();
        assert_eq!(frame.format, PixelFormat::Gray8);
        assert_eq!(frame.data, expected, "{photometric}");
        assert_eq!(clip.facts().photometric_interpretation, photometric);
    }
}

#[test]
fn sixteen_bit_samples_use_the_full_stored_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 5, "MONOCHROME2", (16, 12), 1);
    // 0xF000 bits above Bits Stored are not part of the value.
    elements.push(pixels16(vec![0, 2048, 4095, 1000, 0xF000 | 4095]));
    let clip = DicomClip::open(write(dir.path(), "sixteen.dcm", elements)).unwrap();
    // v * 255 / 4095, rounded.
    assert_eq!(clip.frame(0).unwrap().data, [0, 128, 255, 62, 255]);
    assert_eq!(
        (clip.facts().bits_allocated, clip.facts().bits_stored),
        (16, 12)
    );
}

#[test]
fn sixteen_bit_samples_use_the_window_when_present() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 4, "MONOCHROME2", (16, 16), 1);
    elements.push(ds(tags::WINDOW_CENTER, &["1000", "40"]));
    elements.push(ds(tags::WINDOW_WIDTH, &["500", "400"]));
    elements.push(pixels16(vec![700, 1000, 1300, 875]));
    let clip = DicomClip::open(write(dir.path(), "window.dcm", elements)).unwrap();
    // The first window, DICOM linear: ((x - 999.5) / 499 + 0.5) * 255 inside 750..1249.
    assert_eq!(clip.frame(0).unwrap().data, [0, 128, 255, 64]);
}

#[test]
fn rescale_and_signed_values_are_applied_before_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 3, "MONOCHROME2", (16, 16), 1);
    elements.retain(|e| e.header().tag != tags::PIXEL_REPRESENTATION);
    elements.push(us(tags::PIXEL_REPRESENTATION, 1));
    // Signed 16-bit: -32768, 0, 32767 span the whole stored range.
    elements.push(pixels16(vec![0x8000, 0, 0x7FFF]));
    let clip = DicomClip::open(write(dir.path(), "signed.dcm", elements)).unwrap();
    assert_eq!(clip.frame(0).unwrap().data, [0, 128, 255]);

    // The window is in rescaled units: x = 2 v + 100, window 100 / 201.
    let mut elements = image(1, 4, "MONOCHROME2", (16, 16), 1);
    elements.retain(|e| e.header().tag != tags::PIXEL_REPRESENTATION);
    elements.push(us(tags::PIXEL_REPRESENTATION, 1));
    elements.push(ds(tags::RESCALE_SLOPE, &["2"]));
    elements.push(ds(tags::RESCALE_INTERCEPT, &["100"]));
    elements.push(ds(tags::WINDOW_CENTER, &["100"]));
    elements.push(ds(tags::WINDOW_WIDTH, &["201"]));
    elements.push(pixels16([0i16, -60, 60, 25].map(|v| v as u16).to_vec()));
    let clip = DicomClip::open(write(dir.path(), "rescaled.dcm", elements)).unwrap();
    assert_eq!(clip.frame(0).unwrap().data, [128, 0, 255, 192]);
}

#[test]
fn frame_time_gives_evenly_spaced_media_times() {
    let dir = tempfile::tempdir().unwrap();
    // Frame Time wins over Cine Rate.
    let timing = vec![
        ds(tags::FRAME_TIME, &["76"]),
        text(tags::CINE_RATE, VR::IS, "25"),
    ];
    let clip = DicomClip::open(grey_clip(dir.path(), "ft.dcm", 4, timing)).unwrap();
    assert_eq!(clip.frame_times(), ms(&[0, 76, 152, 228]));
    assert!((clip.nominal_fps().unwrap() - 1000.0 / 76.0).abs() < 1e-9);
    assert_eq!(clip.timing_source(), TimingSource::FrameTime);
    assert_eq!(clip.duration(), Duration::from_millis(304));
    assert_eq!(clip.frame(3).unwrap().data, [30; 4]);
}

#[test]
fn frame_time_vector_gives_cumulative_media_times() {
    let dir = tempfile::tempdir().unwrap();
    let timing = vec![
        ds(tags::FRAME_TIME_VECTOR, &["0", "40", "50", "60"]),
        text(tags::CINE_RATE, VR::IS, "25"),
    ];
    let clip = DicomClip::open(grey_clip(dir.path(), "ftv.dcm", 4, timing)).unwrap();
    assert_times_close(clip.frame_times(), &[0.0, 40.0, 90.0, 150.0]);
    assert!((clip.nominal_fps().unwrap() - 20.0).abs() < 1e-9);
    assert_eq!(clip.timing_source(), TimingSource::FrameTimeVector);

    // Without the leading 0 the increments still line up.
    let timing = vec![ds(tags::FRAME_TIME_VECTOR, &["40", "50", "60"])];
    let clip = DicomClip::open(grey_clip(dir.path(), "ftv_short.dcm", 4, timing)).unwrap();
    assert_times_close(clip.frame_times(), &[0.0, 40.0, 90.0, 150.0]);

    // A vector of the wrong length is skipped for the next source of timing.
    let timing = vec![
        ds(tags::FRAME_TIME_VECTOR, &["0", "40"]),
        text(tags::CINE_RATE, VR::IS, "25"),
    ];
    let clip = DicomClip::open(grey_clip(dir.path(), "ftv_bad.dcm", 4, timing)).unwrap();
    assert_eq!(clip.timing_source(), TimingSource::CineRate);
}

#[test]
fn cine_rate_gives_media_times() {
    let dir = tempfile::tempdir().unwrap();
    // A zero Frame Time is unusable: Cine Rate takes over.
    let timing = vec![
        ds(tags::FRAME_TIME, &["0"]),
        text(tags::CINE_RATE, VR::IS, "25"),
    ];
    let clip = DicomClip::open(grey_clip(dir.path(), "cine.dcm", 3, timing)).unwrap();
    assert_eq!(clip.frame_times(), ms(&[0, 40, 80]));
    assert_eq!(clip.nominal_fps(), Some(25.0));
    assert_eq!(clip.timing_source(), TimingSource::CineRate);
}

#[test]
fn recommended_display_frame_rate_is_the_last_resort() {
    let dir = tempfile::tempdir().unwrap();
    let timing = vec![text(tags::RECOMMENDED_DISPLAY_FRAME_RATE, VR::IS, "50")];
    let clip = DicomClip::open(grey_clip(dir.path(), "rdfr.dcm", 3, timing)).unwrap();
    assert_eq!(clip.frame_times(), ms(&[0, 20, 40]));
    assert_eq!(clip.nominal_fps(), Some(50.0));
    assert_eq!(
        clip.timing_source(),
        TimingSource::RecommendedDisplayFrameRate
    );
}

#[test]
fn missing_timing_assumes_the_default_rate_without_claiming_it() {
    let dir = tempfile::tempdir().unwrap();
    let clip = DicomClip::open(grey_clip(dir.path(), "none.dcm", 3, vec![])).unwrap();
    assert_eq!(clip.nominal_fps(), None);
    assert_eq!(clip.timing_source(), TimingSource::Default);
    assert_times_close(
        clip.frame_times(),
        &[0.0, 1000.0 / DEFAULT_FPS, 2000.0 / DEFAULT_FPS],
    );
}

#[test]
fn a_single_frame_is_at_time_zero() {
    let dir = tempfile::tempdir().unwrap();
    let clip = DicomClip::open(grey_clip(
        dir.path(),
        "one.dcm",
        1,
        vec![ds(tags::FRAME_TIME, &["40"])],
    ))
    .unwrap();
    assert_eq!(clip.frame_times(), [Duration::ZERO]);
    assert_eq!(clip.timing_source(), TimingSource::SingleFrame);
    assert_eq!(clip.nominal_fps(), Some(25.0));
    assert_eq!(clip.duration(), Duration::from_millis(40));
}

#[test]
fn ybr_full_is_converted_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 5, "YBR_FULL", (8, 8), 1);
    let ybr = [
        [128, 128, 128],
        [76, 85, 255],
        [150, 44, 21],
        [29, 255, 107],
        [255, 128, 128],
    ];
    elements.push(pixels8(ybr.concat()));
    let clip = DicomClip::open(write(dir.path(), "ybr.dcm", elements)).unwrap();
    let frame = clip.frame(0).unwrap();
    assert_eq!(frame.format, PixelFormat::Rgb8);
    // pydicom 3.0.2: convert_color_space(ybr, "YBR_FULL", "RGB") on the same samples.
    let pydicom = [
        [128, 128, 128],
        [254, 0, 0],
        [0, 255, 1],
        [0, 0, 254],
        [255, 255, 255],
    ];
    assert_eq!(frame.data, pydicom.concat());
}

#[test]
fn ybr_full_422_shares_chroma_between_pixel_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 4, "YBR_FULL_422", (8, 8), 1);
    // Y1 Y2 Cb Cr for pixels (0,1), then (2,3).
    elements.push(pixels8(vec![76, 128, 85, 255, 150, 29, 128, 128]));
    let clip = DicomClip::open(write(dir.path(), "ybr422.dcm", elements)).unwrap();
    let frame = clip.frame(0).unwrap();
    let expected = [
        ybr_to_rgb(76, 85, 255),
        ybr_to_rgb(128, 85, 255),
        [150, 150, 150],
        [29, 29, 29],
    ];
    assert_eq!(frame.data, expected.concat());
    assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
}

#[test]
fn planar_rgb_is_interleaved() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 2, "RGB", (8, 8), 1);
    elements.retain(|e| e.header().tag != tags::PLANAR_CONFIGURATION);
    elements.push(us(tags::PLANAR_CONFIGURATION, 1));
    elements.push(pixels8(vec![1, 2, 3, 4, 5, 6]));
    let clip = DicomClip::open(write(dir.path(), "planar.dcm", elements)).unwrap();
    assert_eq!(clip.frame(0).unwrap().data, [1, 3, 5, 2, 4, 6]);
}

fn palette_descriptors(descriptor: [u16; 3]) -> Vec<InMemElement> {
    [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
    ]
    .map(|tag| DataElement::new(tag, VR::US, PrimitiveValue::U16(descriptor.to_vec().into())))
    .into()
}

#[test]
fn eight_bit_palette_maps_values_and_clamps_outside_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 4, "PALETTE COLOR", (8, 8), 1);
    // 4 entries for values 10..=13, packed two 8-bit entries per word.
    elements.extend(palette_descriptors([4, 10, 8]));
    let data = [
        (
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            [10u8, 20, 30, 40],
        ),
        (tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA, [1, 2, 3, 4]),
        (
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            [200, 201, 202, 203],
        ),
    ];
    for (tag, entries) in data {
        let words: Vec<u16> = entries
            .chunks(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        elements.push(DataElement::new(
            tag,
            VR::OW,
            PrimitiveValue::U16(words.into()),
        ));
    }
    elements.push(pixels8(vec![5, 11, 13, 200]));
    let clip = DicomClip::open(write(dir.path(), "palette8.dcm", elements)).unwrap();
    let frame = clip.frame(0).unwrap();
    assert_eq!(frame.format, PixelFormat::Rgb8);
    assert_eq!(
        frame.data,
        [[10, 1, 200], [20, 2, 201], [40, 4, 203], [40, 4, 203]].concat()
    );
}

#[test]
fn sixteen_bit_palette_entries_are_scaled_to_eight_bits() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 3, "PALETTE COLOR", (16, 16), 1);
    elements.extend(palette_descriptors([3, 0, 16]));
    for tag in [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ] {
        elements.push(DataElement::new(
            tag,
            VR::OW,
            PrimitiveValue::U16(vec![0, 0x8080, 0xFFFF].into()),
        ));
    }
    elements.push(pixels16(vec![0, 1, 2]));
    let clip = DicomClip::open(write(dir.path(), "palette16.dcm", elements)).unwrap();
    assert_eq!(
        clip.frame(0).unwrap().data,
        [[0; 3], [128; 3], [255; 3]].concat()
    );
}

#[test]
fn segmented_palette_expands_discrete_linear_and_indirect_segments() {
    let words = [
        0, 2, 10, 20, // discrete: 10, 20
        1, 4, 60, // linear from 20 to 60 in 4 steps: 30, 40, 50, 60
        2, 2, 0, 0, // indirect: replay the 2 segments at byte offset 0
    ];
    let lut = expand_segmented_lut(&words, 12).unwrap();
    assert_eq!(lut, [10, 20, 30, 40, 50, 60, 10, 20, 30, 40, 50, 60]);
    assert!(expand_segmented_lut(&words, 13)
        .unwrap_err()
        .contains("13 declared"));
    assert!(expand_segmented_lut(&words, 5)
        .unwrap_err()
        .contains("past"));
    assert!(expand_segmented_lut(&[1, 3, 9], 3)
        .unwrap_err()
        .contains("no previous"));
    assert!(expand_segmented_lut(&[0, 9, 1], 9)
        .unwrap_err()
        .contains("past the data"));
    assert!(expand_segmented_lut(&[0, 1, 5, 2, 1, 7, 0], 2)
        .unwrap_err()
        .contains("word boundary"));
    assert!(expand_segmented_lut(&[7, 1], 1)
        .unwrap_err()
        .contains("opcode 7"));
}

#[test]
fn ultrasound_regions_become_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let region = |bounds: [u32; 4], format: u16, data_type: u16, units: u16, delta: f64| {
        let mut elements: Vec<InMemElement> = [
            tags::REGION_LOCATION_MIN_X0,
            tags::REGION_LOCATION_MIN_Y0,
            tags::REGION_LOCATION_MAX_X1,
            tags::REGION_LOCATION_MAX_Y1,
        ]
        .iter()
        .zip(bounds)
        .map(|(&tag, v)| DataElement::new(tag, VR::UL, PrimitiveValue::from(v)))
        .collect();
        elements.push(us(tags::REGION_SPATIAL_FORMAT, format));
        elements.push(us(tags::REGION_DATA_TYPE, data_type));
        elements.push(us(tags::PHYSICAL_UNITS_X_DIRECTION, units));
        elements.push(us(tags::PHYSICAL_UNITS_Y_DIRECTION, units));
        elements.push(DataElement::new(
            tags::PHYSICAL_DELTA_X,
            VR::FD,
            PrimitiveValue::from(delta),
        ));
        elements.push(DataElement::new(
            tags::PHYSICAL_DELTA_Y,
            VR::FD,
            PrimitiveValue::from(delta * 2.0),
        ));
        InMemDicomObject::from_element_iter(elements)
    };
    let mut elements = image(40, 60, "MONOCHROME2", (8, 8), 1);
    elements.push(sequence(
        tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
        vec![
            // Spectral Doppler in cm/s by s: no cm per pixel.
            region([0, 30, 59, 39], 3, 3, 7, 0.5),
            // 2D tissue, max X beyond the image: clipped.
            region([5, 2, 80, 29], 1, 1, UNITS_CM, 0.02),
            // Empty once clipped: ignored.
            region([70, 0, 75, 10], 1, 2, UNITS_CM, 0.03),
        ],
    ));
    elements.push(pixels8(vec![0; 40 * 60]));
    let clip = DicomClip::open(write(dir.path(), "regions.dcm", elements)).unwrap();
    let regions = clip.ultrasound_regions();
    assert_eq!(regions.len(), 2);
    assert_eq!(
        regions[0].rect,
        PixelRect {
            x0: 0,
            y0: 30,
            x1: 60,
            y1: 40
        }
    );
    assert_eq!(regions[0].spatial_format, RegionSpatialFormat::Spectral);
    assert_eq!(regions[0].data_type, RegionDataType::PwSpectralDoppler);
    assert_eq!(regions[0].cm_per_pixel(), None);
    assert_eq!(
        regions[1].rect,
        PixelRect {
            x0: 5,
            y0: 2,
            x1: 60,
            y1: 30
        }
    );
    assert!(regions[1].is_2d_tissue());
    assert_eq!(regions[1].physical_units, (3, 3));
    let geometry = clip.geometry();
    assert_eq!(geometry.regions, [regions[0].rect, regions[1].rect]);
    assert_eq!(geometry.cm_per_pixel, Some((0.02, 0.04)));
}

#[test]
fn view_hints_and_facts_are_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let code = |value: &str, meaning: &str| {
        vec![
            text(tags::CODE_VALUE, VR::SH, value),
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SCT"),
            text(tags::CODE_MEANING, VR::LO, meaning),
        ]
    };
    let mut view = code("399214001", "Apical four chamber");
    view.push(sequence(
        tags::VIEW_MODIFIER_CODE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter(code(
            "255563005",
            "Zoomed",
        ))],
    ));
    let mut elements = image(2, 2, "MONOCHROME2", (8, 8), 1);
    elements.push(sequence(
        tags::VIEW_CODE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter(view)],
    ));
    elements.push(text(tags::LATERALITY, VR::CS, "L "));
    elements.push(text(tags::SERIES_DESCRIPTION, VR::LO, "Echo A4C"));
    elements.push(pixels8(vec![0; 4]));
    let clip = DicomClip::open(write_with(
        dir.path(),
        "view.dcm",
        elements,
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
    ))
    .unwrap();
    let facts = clip.facts();
    assert_eq!(facts.view.view_codes.len(), 1);
    assert_eq!(
        facts.view.view_codes[0].meaning.as_deref(),
        Some("Apical four chamber")
    );
    assert_eq!(
        facts.view.view_codes[0].code_value.as_deref(),
        Some("399214001")
    );
    assert_eq!(
        facts.view.view_modifiers[0].meaning.as_deref(),
        Some("Zoomed")
    );
    assert_eq!(facts.view.laterality.as_deref(), Some("L"));
    assert_eq!(facts.view.series_description.as_deref(), Some("Echo A4C"));
    assert_eq!(facts.modality.as_deref(), Some("US"));
    assert!(facts.is_ultrasound_sop_class);
    assert_eq!(facts.transfer_syntax_uid, uids::IMPLICIT_VR_LITTLE_ENDIAN);
    assert_eq!(facts.transfer_syntax_name, "Implicit VR Little Endian");
    assert_eq!((facts.rows, facts.cols, facts.number_of_frames), (2, 2, 1));
}

#[test]
fn truncated_native_pixel_data_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(2, 2, "MONOCHROME2", (8, 8), 3);
    elements.push(pixels8(vec![0; 8]));
    let path = write(dir.path(), "short.dcm", elements);
    let error = DicomClip::open(&path).unwrap_err();
    assert!(
        matches!(
            error,
            DicomError::TruncatedPixelData {
                expected: 12,
                found: 8,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("short.dcm"), "{error}");
    assert_eq!(error.path(), path);
}

#[test]
fn unsupported_layouts_are_refused_with_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 1, "MONOCHROME2", (32, 32), 1);
    elements.push(pixels8(vec![0; 4]));
    let error = DicomClip::open(write(dir.path(), "deep.dcm", elements)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("Bits Allocated 32 is not supported; expected 8 or 16"),
        "{error}"
    );

    let mut elements = image(1, 1, "YBR_PARTIAL_420", (8, 8), 1);
    elements.push(pixels8(vec![0; 2]));
    let error = DicomClip::open(write(dir.path(), "partial.dcm", elements)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("photometric interpretation YBR_PARTIAL_420"),
        "{error}"
    );

    // JPEG-LS needs a C codec: refused by its transfer syntax, before the pixel data is read.
    let mut elements = image(1, 1, "MONOCHROME2", (8, 8), 1);
    elements.push(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new_fragments(vec![vec![0xFF, 0xD8]]),
    ));
    let path = write_with(dir.path(), "ls.dcm", elements, "1.2.840.10008.1.2.4.80");
    let error = DicomClip::open(&path).unwrap_err();
    assert!(
        matches!(error, DicomError::UnsupportedTransferSyntax { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("1.2.840.10008.1.2.4.80")
            && text.contains("JPEG-LS")
            && text.contains("ls.dcm"),
        "{text}"
    );

    let path = dir.path().join("garbage.dcm");
    std::fs::write(&path, b"not a dicom file at all").unwrap();
    let error = DicomClip::open(&path).unwrap_err();
    assert!(matches!(error, DicomError::Read { .. }), "{error}");
    assert!(error.to_string().contains("garbage.dcm"), "{error}");
}

/// Wraps a JPEG made by the `image` crate as JPEG Baseline pixel data.
fn jpeg_clip(dir: &Path, name: &str, photometric: &str, img: image::DynamicImage) -> PathBuf {
    let jpeg = jpeg_bytes(&img);
    jpeg_frames(dir, name, photometric, &img, vec![jpeg], vec![])
}

fn jpeg_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    if jpeg.len() % 2 == 1 {
        jpeg.push(0);
    }
    jpeg
}

/// A JPEG Baseline clip of the given fragments, one per frame.
fn jpeg_frames(
    dir: &Path,
    name: &str,
    photometric: &str,
    img: &image::DynamicImage,
    fragments: Vec<Vec<u8>>,
    extra: Vec<InMemElement>,
) -> PathBuf {
    let mut elements = image(
        img.height() as u16,
        img.width() as u16,
        photometric,
        (8, 8),
        fragments.len() as u32,
    );
    elements.extend(extra);
    elements.push(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new_fragments(fragments),
    ));
    write_with(dir, name, elements, uids::JPEG_BASELINE8_BIT)
}

#[test]
fn jpeg_baseline_decodes_grey_and_colour() {
    let dir = tempfile::tempdir().unwrap();
    let grey = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
    let clip = jpeg_clip(dir.path(), "grey.dcm", "MONOCHROME2", grey.clone().into());
    let clip = DicomClip::open(clip).unwrap();
    let frame = clip.frame(0).unwrap();
    assert_eq!(
        (frame.width, frame.height, frame.format),
        (16, 8, PixelFormat::Gray8)
    );
    let worst = frame
        .data
        .iter()
        .zip(grey.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 8, "lossy, but close: worst difference {worst}");

    let colour = image::RgbImage::from_pixel(16, 16, image::Rgb([200, 40, 90]));
    let clip = DicomClip::open(jpeg_clip(
        dir.path(),
        "colour.dcm",
        "YBR_FULL_422",
        colour.into(),
    ))
    .unwrap();
    let frame = clip.frame(0).unwrap();
    assert_eq!(frame.format, PixelFormat::Rgb8);
    assert_eq!(clip.facts().transfer_syntax_uid, uids::JPEG_BASELINE8_BIT);
    for px in frame.data.chunks_exact(3) {
        for (got, want) in px.iter().zip([200u8, 40, 90]) {
            assert!(got.abs_diff(want) <= 4, "{px:?}");
        }
    }
}

fn drain(source: &mut DicomSource) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = source.next_frame().unwrap() {
        frames.push(frame);
    }
    frames
}

#[test]
fn source_skips_and_counts_a_bad_file_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    grey_clip(dir.path(), "a.dcm", 3, vec![ds(tags::FRAME_TIME, &["76"])]);
    std::fs::write(dir.path().join("b.dcm"), b"damaged").unwrap();
    grey_clip(dir.path(), "c.dcm", 2, vec![ds(tags::FRAME_TIME, &["76"])]);
    std::fs::write(dir.path().join("notes.txt"), b"not a clip").unwrap();

    let mut source = DicomSource::new(dir.path(), Pacing::AsFastAsPossible, false).unwrap();
    assert_eq!(source.files().len(), 3);
    source.start().unwrap();
    assert_eq!(source.info().kind, "dicom");
    assert_eq!(source.info().frame_count, None);
    let frames = drain(&mut source);
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        frames.iter().map(|f| f.media_time).collect::<Vec<_>>(),
        ms(&[0, 76, 152, 228, 304])
    );
    assert_eq!(
        frames.iter().map(|f| f.image.data[0]).collect::<Vec<_>>(),
        [0, 10, 20, 0, 10]
    );
    assert!(frames
        .windows(2)
        .all(|w| w[0].captured_at <= w[1].captured_at));
    assert_eq!(source.skipped_files(), 1);
    assert!(source.next_frame().unwrap().is_none());
}

#[test]
fn a_lone_bad_file_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("only.dcm");
    std::fs::write(&path, b"damaged").unwrap();
    let mut source = DicomSource::new(&path, Pacing::AsFastAsPossible, true).unwrap();
    let error = source.start().unwrap_err();
    assert!(matches!(error, SourceError::Fatal { .. }), "{error}");
    assert!(error.to_string().contains("only.dcm"), "{error}");
    // Named once: the source's name is the file's path, which the error already carries.
    assert_eq!(error.to_string().matches("only.dcm").count(), 1, "{error}");

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        DicomSource::new(empty.path(), Pacing::AsFastAsPossible, false),
        Err(DicomError::NoFiles { .. })
    ));
}

#[test]
fn looping_continues_media_times_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = grey_clip(
        dir.path(),
        "loop.dcm",
        2,
        vec![ds(tags::FRAME_TIME, &["100"])],
    );
    let mut source = DicomSource::new(&path, Pacing::AsFastAsPossible, true).unwrap();
    source.start().unwrap();
    let frames: Vec<Frame> = (0..5)
        .map(|_| source.next_frame().unwrap().unwrap())
        .collect();
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        frames.iter().map(|f| f.media_time).collect::<Vec<_>>(),
        ms(&[0, 100, 200, 300, 400])
    );
    assert_eq!(
        frames.iter().map(|f| f.image.data[0]).collect::<Vec<_>>(),
        [0, 10, 0, 10, 0]
    );
    assert_eq!(source.info().nominal_fps, Some(10.0));
}

#[test]
fn looping_over_several_files_counts_a_bad_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let good = grey_clip(dir.path(), "good.dcm", 1, vec![]);
    let bad = dir.path().join("bad.dcm");
    std::fs::write(&bad, b"damaged").unwrap();
    let mut source =
        DicomSource::from_paths([&good, &bad], Pacing::AsFastAsPossible, true).unwrap();
    let frames: Vec<Frame> = (0..4)
        .map(|_| source.next_frame().unwrap().unwrap())
        .collect();
    // One single-frame clip at the default period, again and again.
    let period = Duration::from_secs_f64(1.0 / DEFAULT_FPS);
    assert_eq!(
        frames.iter().map(|f| f.media_time).collect::<Vec<_>>(),
        [Duration::ZERO, period, period * 2, period * 3]
    );
    assert_eq!(source.skipped_files(), 1);
}

#[test]
fn real_time_pacing_waits_for_media_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = grey_clip(
        dir.path(),
        "paced.dcm",
        3,
        vec![ds(tags::FRAME_TIME, &["20"])],
    );
    let mut source = DicomSource::new(&path, Pacing::RealTime, false).unwrap();
    source.start().unwrap();
    assert_eq!(source.info().frame_count, Some(3));
    let first = source.next_frame().unwrap().unwrap();
    let last = drain(&mut source).pop().unwrap();
    assert!(last.captured_at - first.captured_at >= Duration::from_millis(39));
}

#[test]
fn eight_bit_samples_read_as_words_keep_their_byte_order() {
    // Implicit VR leaves Pixel Data's VR to the dictionary: dicom-rs may read 8-bit data as OW
    // words. Frames of 3 bytes start mid-word.
    let dir = tempfile::tempdir().unwrap();
    let mut elements = image(1, 3, "MONOCHROME2", (8, 8), 2);
    elements.push(pixels8(vec![1, 2, 3, 4, 5, 6]));
    let path = write_with(
        dir.path(),
        "implicit.dcm",
        elements,
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
    );
    let clip = DicomClip::open(path).unwrap();
    assert_eq!(clip.frame(0).unwrap().data, [1, 2, 3]);
    assert_eq!(clip.frame(1).unwrap().data, [4, 5, 6]);
}

#[test]
fn a_damaged_frame_is_a_bad_frame_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let grey: image::DynamicImage = image::GrayImage::from_pixel(8, 8, image::Luma([90])).into();
    let good = jpeg_bytes(&grey);
    let damaged = vec![0xFF, 0xD8, 0x12, 0x34];
    let timing = vec![ds(tags::FRAME_TIME, &["50"])];
    let path = jpeg_frames(
        dir.path(),
        "damaged.dcm",
        "MONOCHROME2",
        &grey,
        vec![good.clone(), damaged, good],
        timing,
    );
    let mut source = DicomSource::new(&path, Pacing::AsFastAsPossible, false).unwrap();
    source.start().unwrap();
    assert_eq!(source.next_frame().unwrap().unwrap().seq, 0);
    match source.next_frame() {
        Err(SourceError::BadFrame { seq, reason, .. }) => {
            assert_eq!(seq, 1);
            assert!(
                reason.contains("damaged.dcm") && reason.contains("frame 1"),
                "{reason}"
            );
        }
        other => panic!("expected a bad frame, got {other:?}"),
    }
    let last = source.next_frame().unwrap().unwrap();
    assert_eq!((last.seq, last.media_time), (2, Duration::from_millis(100)));
    assert!(last.image.data.iter().all(|&v| v.abs_diff(90) <= 2));
    assert!(source.next_frame().unwrap().is_none());
}

/// Seeds of the DICOM fuzz target (fuzz/corpus/dicom/): small synthetic files reaching the
/// JPEG, 16-bit, timing and region paths (run by hand; the outputs are committed).
#[test]
#[ignore = "writes fuzz/corpus/dicom seeds (run by hand)"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dicom");
    std::fs::create_dir_all(&dir).unwrap();
    let grey = image::GrayImage::from_fn(16, 8, |x, y| image::Luma([(x * 16 + y) as u8]));
    jpeg_clip(&dir, "jpeg_grey.dcm", "MONOCHROME2", grey.into());
    let rgb = image::RgbImage::from_fn(16, 8, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 30) as u8, 90])
    });
    jpeg_clip(&dir, "jpeg_ybr422.dcm", "YBR_FULL_422", rgb.into());
    let mut elements = image(4, 6, "MONOCHROME1", (16, 12), 2);
    elements.push(ds(tags::WINDOW_CENTER, &["2000"]));
    elements.push(ds(tags::WINDOW_WIDTH, &["1000"]));
    elements.push(ds(tags::FRAME_TIME_VECTOR, &["0", "33.3"]));
    elements.push(pixels16((0..48).map(|i| i * 80).collect()));
    write(&dir, "mono1_16bit_timing.dcm", elements);
    let region: Vec<InMemElement> = vec![
        DataElement::new(
            tags::REGION_LOCATION_MIN_X0,
            VR::UL,
            PrimitiveValue::from(1u32),
        ),
        DataElement::new(
            tags::REGION_LOCATION_MIN_Y0,
            VR::UL,
            PrimitiveValue::from(1u32),
        ),
        DataElement::new(
            tags::REGION_LOCATION_MAX_X1,
            VR::UL,
            PrimitiveValue::from(5u32),
        ),
        DataElement::new(
            tags::REGION_LOCATION_MAX_Y1,
            VR::UL,
            PrimitiveValue::from(3u32),
        ),
        us(tags::REGION_SPATIAL_FORMAT, 1),
        us(tags::REGION_DATA_TYPE, 1),
        us(tags::PHYSICAL_UNITS_X_DIRECTION, 3),
        us(tags::PHYSICAL_UNITS_Y_DIRECTION, 3),
        DataElement::new(tags::PHYSICAL_DELTA_X, VR::FD, PrimitiveValue::from(0.05)),
        DataElement::new(tags::PHYSICAL_DELTA_Y, VR::FD, PrimitiveValue::from(0.05)),
    ];
    let mut elements = image(4, 6, "RGB", (8, 8), 1);
    elements.push(sequence(
        tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
        vec![InMemDicomObject::from_element_iter(region)],
    ));
    elements.push(text(tags::CINE_RATE, VR::IS, "25"));
    elements.push(pixels8((0..72).map(|i| i as u8 * 3).collect()));
    write(&dir, "rgb_regions.dcm", elements);
}
