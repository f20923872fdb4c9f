//! The built-in synthetic apical-4-chamber echo ("phantom"): the product's demo source, the test
//! source of the whole pipeline, and the training data of the bundled model. Beside the LV it
//! renders the findings of the paper's other tasks from the patient's parameters: a pacemaker
//! lead with its acoustic shadow, a dilated left atrium, thickened LV walls, and an apical
//! two-chamber view in place of the A4C for some clips (the view gate's negatives).
//!
//! Everything is a pure function of [`PhantomParams`] and the time: the same seed gives the same
//! bytes on every machine, and the ground truth (LV volume, the LV cavity's pixels, the exact fan)
//! is available beside every frame.
//!
//! The LV cavity is drawn as an ellipse whose long axis `L` (apex to mitral plane) and area `A`
//! satisfy the single-plane area-length relation `V = 8 A² / (3 π L)`; for an ellipse
//! (`A = π L D / 4`) this is the prolate-ellipsoid volume `V = π L D² / 6`. Pixels are square,
//! `cm_per_pixel = depth_cm / sector radius in pixels`, so `A = (pixels inside the LV ellipse) ×
//! cm_per_pixel²` recovers the volume from the image.

pub mod dicom;
pub(crate) mod font;
mod geometry;
mod heart;
mod params;
mod random;
mod render;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::frame::{PixelRect, SourceGeometry};

pub use geometry::{sector_truth, SectorTruth};
pub use heart::{ChamberCentres, LvShape};
pub use params::{
    clip_seed, PhantomParams, PhantomView, LA_SEVERE_SCALE, RANDOM_EDV_ML, RANDOM_EF_PERCENT,
    RANDOM_GAIN, RANDOM_HEART_RATE_BPM, RANDOM_LA_DILATED_SHARE, RANDOM_NOT_A4C_SHARE,
    RANDOM_OFFSET, RANDOM_PACEMAKER_SHARE, RANDOM_SHIFT_CM, RANDOM_TILT_DEG,
    RANDOM_WALL_THICK_SHARE, WALL_NORMAL_MAX_SCALE,
};

use geometry::Layout;
use heart::*;
use render::*;

/// A uniform draw in [0, 1) from `seed` and `salt` (the phantom's own mixer): for choices made
/// per patient outside [`PhantomParams::random`], such as which training patients get lead
/// mimics.
pub fn unit_draw(seed: u64, salt: u64) -> f64 {
    (random::mix(seed ^ salt) >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a phantom could not be built from its parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhantomError {
    #[error("phantom parameter {name} = {value}: {reason}")]
    InvalidParam {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "the LV cavity (EDV {edv_ml:.1} mL) leaves the {depth_cm} cm scan sector of a \
         {width}x{height} image; use a larger depth or a smaller EDV"
    )]
    DoesNotFit {
        edv_ml: f64,
        depth_cm: f64,
        width: usize,
        height: usize,
    },
}

/// The phantom: a patient, a probe and a screen layout. Cheap to render from any thread
/// (`&self` only).
pub struct Phantom {
    params: PhantomParams,
    layout: Layout,
    cm_per_px: f64,
    tilt_rad: f64,
    myo_ml: f64,
    tables: Tables,
    speckle_lut: Vec<f32>,
}

impl std::fmt::Debug for Phantom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phantom")
            .field("params", &self.params)
            .field("sector", &self.layout.sector)
            .field("cm_per_px", &self.cm_per_px)
            .finish_non_exhaustive()
    }
}

impl Phantom {
    pub fn new(params: PhantomParams) -> Result<Self, PhantomError> {
        params.validate()?;
        let layout = Layout::new(params.width, params.height);
        let cm_per_px = params.depth_cm / layout.sector.radius_px;
        let speckle_lut = speckle_lut();
        let myo_ml = MYO_ML_PER_EDV_ML_AT_REF
            * LV_REF_VOLUME_ML.powf(1.0 - MYO_EDV_EXPONENT)
            * params.edv_ml.powf(MYO_EDV_EXPONENT)
            * params.wall_scale;
        // The tables are built only once the patient is known to fit: they cost a few ms.
        let mut phantom = Self {
            tilt_rad: (AXIS_TILT_DEG + params.tilt_deg).to_radians(),
            tables: Tables::default(),
            params,
            layout,
            cm_per_px,
            myo_ml,
            speckle_lut,
        };
        phantom.check_fit()?;
        phantom.tables = phantom.build_tables();
        Ok(phantom)
    }

    pub fn params(&self) -> &PhantomParams {
        &self.params
    }

    /// The exact scan sector.
    pub fn sector(&self) -> SectorTruth {
        self.layout.sector
    }

    /// Physical size of a (square) pixel.
    pub fn cm_per_pixel(&self) -> f64 {
        self.cm_per_px
    }

    /// The sector's bounding box as the one imaging region, and the pixel size.
    pub fn geometry(&self) -> SourceGeometry {
        SourceGeometry {
            regions: vec![self
                .layout
                .sector
                .bounding_box(self.params.width, self.params.height)],
            cm_per_pixel: Some((self.cm_per_px, self.cm_per_px)),
        }
    }

    /// Rectangles holding every burned-in annotation outside the fan: the text blocks, the ECG
    /// strip and the grey-scale bar. Everything else outside the fan is black.
    pub fn annotation_regions(&self) -> Vec<PixelRect> {
        let mut r = self.tables.text_regions.clone();
        r.push(self.layout.ecg);
        r.push(self.layout.bar);
        r
    }

    /// Media time of frame `index`: index / fps.
    pub fn frame_time(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.params.fps)
    }
}
