//! The phantom's clips as DICOM: an Ultrasound Multi-frame Image (uncompressed, explicit VR
//! little endian) with the phantom's frame time, pixel spacing and ultrasound region, and UIDs
//! derived from the seed (the same seed always gives the same file). `echonet phantom` writes
//! these; the DICOM source reads them back.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::Phantom;

/// Why a clip could not be written as DICOM.
#[derive(Debug, thiserror::Error)]
pub enum DicomWriteError {
    #[error("the phantom declares no imaging region")]
    NoRegion,
    #[error(
        "a {width}x{height} image does not fit DICOM's 16-bit rows and columns (65535 at most)"
    )]
    TooLarge { width: usize, height: usize },
    #[error("building the DICOM file meta group: {0}")]
    Meta(String),
    #[error("encoding the DICOM data set: {0}")]
    Encode(String),
}

/// `2.25.<decimal>`: a UID from a 128-bit number (DICOM PS3.5 B.2), here derived from the clip's
/// seed and what the UID names, so the same seed always gives the same UIDs.
fn synthetic_uid(seed: u64, what: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"echonet-edge phantom uid\0")
        .chain_update(what.as_bytes())
        .chain_update(seed.to_le_bytes())
        .finalize();
    let mut n = [0u8; 16];
    n.copy_from_slice(&digest[..16]);
    // The top bit cleared keeps it a positive 127-bit number, as a UUID-derived UID would be.
    format!("2.25.{}", u128::from_be_bytes(n) >> 1)
}

/// A DICOM decimal string (at most 16 characters).
fn ds(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.chars().take(16).collect()
}

/// The clip as an Ultrasound Multi-frame Image (uncompressed, explicit VR little endian).
pub fn clip_dicom(
    phantom: &Phantom,
    frames: u32,
    pixels: Vec<u8>,
) -> Result<Vec<u8>, DicomWriteError> {
    let p = phantom.params();
    let geometry = phantom.geometry();
    let region = geometry.regions.first().ok_or(DicomWriteError::NoRegion)?;
    let sector = phantom.sector();
    let too_large = || DicomWriteError::TooLarge {
        width: p.width,
        height: p.height,
    };
    let rows = u16::try_from(p.height).map_err(|_| too_large())?;
    let cols = u16::try_from(p.width).map_err(|_| too_large())?;
    let cm = phantom.cm_per_pixel();
    let sop_instance = synthetic_uid(p.seed, "sop instance");

    let item = InMemDicomObject::from_element_iter([
        // 2D tissue region, as a B-mode sector is.
        DataElement::new(
            tags::REGION_SPATIAL_FORMAT,
            VR::US,
            PrimitiveValue::from(1u16),
        ),
        DataElement::new(tags::REGION_DATA_TYPE, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::REGION_FLAGS, VR::UL, PrimitiveValue::from(0u32)),
        // Inclusive corners of the sector's bounding box.
        DataElement::new(
            tags::REGION_LOCATION_MIN_X0,
            VR::UL,
            PrimitiveValue::from(region.x0 as u32),
        ),
        DataElement::new(
            tags::REGION_LOCATION_MIN_Y0,
            VR::UL,
            PrimitiveValue::from(region.y0 as u32),
        ),
        DataElement::new(
            tags::REGION_LOCATION_MAX_X1,
            VR::UL,
            PrimitiveValue::from((region.x1 - 1) as u32),
        ),
        DataElement::new(
            tags::REGION_LOCATION_MAX_Y1,
            VR::UL,
            PrimitiveValue::from((region.y1 - 1) as u32),
        ),
        // The probe (the fan's apex) is the physical origin, relative to the region's corner.
        DataElement::new(
            tags::REFERENCE_PIXEL_X0,
            VR::SL,
            PrimitiveValue::from((sector.apex_x - region.x0 as f64).round() as i32),
        ),
        DataElement::new(
            tags::REFERENCE_PIXEL_Y0,
            VR::SL,
            PrimitiveValue::from((sector.apex_y - region.y0 as f64).round() as i32),
        ),
        // Units 3: cm.
        DataElement::new(
            tags::PHYSICAL_UNITS_X_DIRECTION,
            VR::US,
            PrimitiveValue::from(3u16),
        ),
        DataElement::new(
            tags::PHYSICAL_UNITS_Y_DIRECTION,
            VR::US,
            PrimitiveValue::from(3u16),
        ),
        DataElement::new(
            tags::REFERENCE_PIXEL_PHYSICAL_VALUE_X,
            VR::FD,
            PrimitiveValue::from(0.0f64),
        ),
        DataElement::new(
            tags::REFERENCE_PIXEL_PHYSICAL_VALUE_Y,
            VR::FD,
            PrimitiveValue::from(0.0f64),
        ),
        DataElement::new(tags::PHYSICAL_DELTA_X, VR::FD, PrimitiveValue::from(cm)),
        DataElement::new(tags::PHYSICAL_DELTA_Y, VR::FD, PrimitiveValue::from(cm)),
    ]);

    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        DataElement::new(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop_instance.as_str()),
        // Dates and times are left empty (type 2): the file is the same whatever day it is made.
        DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::Empty),
        DataElement::new(tags::STUDY_TIME, VR::TM, PrimitiveValue::Empty),
        DataElement::new(tags::ACCESSION_NUMBER, VR::SH, PrimitiveValue::Empty),
        DataElement::new(tags::MODALITY, VR::CS, "US"),
        DataElement::new(tags::MANUFACTURER, VR::LO, "echonet-edge phantom"),
        DataElement::new(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            PrimitiveValue::Empty,
        ),
        DataElement::new(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "Synthetic apical 4-chamber",
        ),
        // No real patient: the name and ID say so and carry the seed.
        DataElement::new(tags::PATIENT_NAME, VR::PN, "PHANTOM^SYNTHETIC"),
        DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            format!("PHANTOM-{}", p.seed).as_str(),
        ),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, PrimitiveValue::Empty),
        DataElement::new(tags::PATIENT_SEX, VR::CS, PrimitiveValue::Empty),
        DataElement::new(tags::CINE_RATE, VR::IS, p.fps.round().to_string().as_str()),
        DataElement::new(tags::FRAME_TIME, VR::DS, ds(1000.0 / p.fps).as_str()),
        DataElement::new(
            tags::HEART_RATE,
            VR::IS,
            p.heart_rate_bpm.round().to_string().as_str(),
        ),
        DataElement::new(
            tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
            VR::SQ,
            DataSetSequence::from(vec![item]),
        ),
        DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            synthetic_uid(p.seed, "study").as_str(),
        ),
        DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            synthetic_uid(p.seed, "series").as_str(),
        ),
        DataElement::new(tags::STUDY_ID, VR::SH, PrimitiveValue::Empty),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, "1"),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, "1"),
        DataElement::new(
            tags::IMAGE_COMMENTS,
            VR::LT,
            format!(
                "Synthetic phantom seed {}: EDV {:.1} mL, ESV {:.1} mL, EF {:.1} %, HR {:.1} bpm",
                p.seed,
                p.edv_ml,
                p.esv_ml,
                p.ef_percent(),
                p.heart_rate_bpm
            )
            .as_str(),
        ),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string().as_str()),
        // Frames are spaced by Frame Time.
        DataElement::new(
            tags::FRAME_INCREMENT_POINTER,
            VR::AT,
            PrimitiveValue::from(tags::FRAME_TIME),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        // Labels, ECG and grey bar are drawn into the pixels.
        DataElement::new(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"),
        DataElement::new(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)),
    ]);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| DicomWriteError::Meta(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| DicomWriteError::Encode(e.to_string()))?;
    Ok(bytes)
}
