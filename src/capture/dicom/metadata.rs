//! What a DICOM clip says beside its pixels: view and laterality hints, and the Sequence of
//! Ultrasound Regions turned into frame geometry.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{
    get_f64, get_str, get_u16, get_u32, CodedConcept, RegionDataType, RegionSpatialFormat,
    UltrasoundRegion, ViewHints,
};
use crate::frame::{PixelRect, SourceGeometry};

fn coded_concept(item: &InMemDicomObject) -> CodedConcept {
    CodedConcept {
        code_value: get_str(item, tags::CODE_VALUE),
        coding_scheme: get_str(item, tags::CODING_SCHEME_DESIGNATOR),
        meaning: get_str(item, tags::CODE_MEANING),
    }
}

pub(super) fn view_hints(obj: &InMemDicomObject) -> ViewHints {
    let items = obj
        .get(tags::VIEW_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or_default();
    let view_modifiers = items
        .iter()
        .filter_map(|item| {
            item.get(tags::VIEW_MODIFIER_CODE_SEQUENCE)
                .and_then(|e| e.items())
        })
        .flatten()
        .map(coded_concept)
        .collect();
    ViewHints {
        view_codes: items.iter().map(coded_concept).collect(),
        view_modifiers,
        view_position: get_str(obj, tags::VIEW_POSITION),
        laterality: get_str(obj, tags::LATERALITY),
        image_laterality: get_str(obj, tags::IMAGE_LATERALITY),
        series_description: get_str(obj, tags::SERIES_DESCRIPTION),
    }
}

pub(super) fn ultrasound_regions(
    obj: &InMemDicomObject,
    rows: usize,
    cols: usize,
    path: &Path,
) -> Vec<UltrasoundRegion> {
    let Some(items) = obj
        .get(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    let mut regions = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let bounds = [
            tags::REGION_LOCATION_MIN_X0,
            tags::REGION_LOCATION_MIN_Y0,
            tags::REGION_LOCATION_MAX_X1,
            tags::REGION_LOCATION_MAX_Y1,
        ]
        .map(|tag| get_u32(item, tag));
        let [Some(x0), Some(y0), Some(x1), Some(y1)] = bounds else {
            tracing::warn!(file = %path.display(), "ultrasound region {index} has no complete Region Location: ignored");
            continue;
        };
        // Max values are inclusive in DICOM; PixelRect ends are exclusive. Clip to the image.
        let clip = |v: u32, limit: usize| (v as usize).min(limit);
        let rect = PixelRect {
            x0: clip(x0, cols),
            y0: clip(y0, rows),
            x1: clip(x1.saturating_add(1), cols),
            y1: clip(y1.saturating_add(1), rows),
        };
        if rect.width() == 0 || rect.height() == 0 {
            tracing::warn!(
                file = %path.display(),
                "ultrasound region {index} ({x0},{y0})-({x1},{y1}) is empty within the {cols}x{rows} image: ignored"
            );
            continue;
        }
        regions.push(UltrasoundRegion {
            rect,
            spatial_format: RegionSpatialFormat::from_code(
                get_u16(item, tags::REGION_SPATIAL_FORMAT).unwrap_or(0),
            ),
            data_type: RegionDataType::from_code(
                get_u16(item, tags::REGION_DATA_TYPE).unwrap_or(0),
            ),
            physical_units: (
                get_u16(item, tags::PHYSICAL_UNITS_X_DIRECTION).unwrap_or(0),
                get_u16(item, tags::PHYSICAL_UNITS_Y_DIRECTION).unwrap_or(0),
            ),
            physical_delta: (
                get_f64(item, tags::PHYSICAL_DELTA_X).unwrap_or(0.0),
                get_f64(item, tags::PHYSICAL_DELTA_Y).unwrap_or(0.0),
            ),
        });
    }
    regions
}

pub(super) fn geometry_of(regions: &[UltrasoundRegion]) -> SourceGeometry {
    let cm_per_pixel = regions
        .iter()
        .filter(|r| r.is_2d_tissue())
        .find_map(UltrasoundRegion::cm_per_pixel)
        .or_else(|| regions.iter().find_map(UltrasoundRegion::cm_per_pixel));
    SourceGeometry {
        regions: regions.iter().map(|r| r.rect).collect(),
        cm_per_pixel,
    }
}
