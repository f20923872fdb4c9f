//! DICOM replay: reads recorded ultrasound clips (single- or multi-frame DICOM files, through
//! dicom-rs), decodes their frames to 8-bit grey or RGB images, and replays one file, a list of
//! files or a folder as a [`FrameSource`] on the clip's own frame timing, with the geometry the
//! scanner declared (Sequence of Ultrasound Regions).
//!
//! Decoded: Implicit and Explicit VR Little Endian, RLE Lossless and JPEG Baseline (8-bit);
//! MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422 and PALETTE COLOR (plain or segmented, 8- or
//! 16-bit entries); 8- and 16-bit samples. Every other transfer syntax (JPEG 2000, JPEG-LS,
//! lossless JPEG, deflate, big endian, video) is refused with an error that names it: decoding
//! those would need C libraries that a bedside build must not depend on.
//!
//! Frames are decoded lazily: a clip keeps its file's bytes (compressed, if the file is) and
//! decodes a frame when asked, so a clip of a few hundred frames costs its file size, not its
//! decoded size. The first frame is decoded when the clip opens, so a file that cannot be decoded
//! is refused at once rather than mid-replay.

use crate::contained_panic::contain;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::frame::{Image, PixelFormat, PixelRect, SourceGeometry};

mod metadata;
mod pixel_checks;
mod pixels;
mod precheck;
mod source;
#[cfg(test)]
mod tests;
mod timing;

use metadata::{geometry_of, ultrasound_regions, view_hints};
use pixel_checks::{check_pixel_data, check_rle_frame};
use pixels::{colour_lut, grey_lut, palette_lut, ybr_to_rgb, SampleBits, SampleMap};
pub use source::DicomSource;
use timing::clip_timing;

/// Frame rate assumed for a multi-frame file that carries no timing at all. 30 fps is the usual
/// acquisition rate of echo clips; the clip then reports `nominal_fps() == None` so nobody mistakes
/// the assumption for a measurement.
pub const DEFAULT_FPS: f64 = 30.0;

/// Longest frame period (or Frame Time Vector increment) taken as timing rather than damage: even
/// a slow stress-echo loop shows a frame a second, and bounding it keeps replay clocks finite.
const MAX_FRAME_PERIOD_MS: f64 = 60_000.0;

/// DICOM Physical Units code for centimetres (PS3.3 C.8.5.5.1.15).
const UNITS_CM: u16 = 3;

/// Why a DICOM file could not be read or decoded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{}: not a readable DICOM file: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error(
        "{}: transfer syntax {name} ({uid}) is not supported; expected Implicit or Explicit VR \
         Little Endian, RLE Lossless or JPEG Baseline",
        path.display()
    )]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },
    #[error("{}: {attribute} is missing or invalid; expected {expected}", path.display())]
    BadAttribute {
        path: PathBuf,
        attribute: &'static str,
        expected: String,
    },
    #[error("{}: {what} is not supported; expected {expected}", path.display())]
    Unsupported {
        path: PathBuf,
        what: String,
        expected: &'static str,
    },
    #[error(
        "{}: pixel data is truncated: {found} bytes, {expected} expected for {frames} frame(s)",
        path.display()
    )]
    TruncatedPixelData {
        path: PathBuf,
        frames: usize,
        expected: u64,
        found: u64,
    },
    #[error("{}: pixel data is truncated or damaged: {reason}", path.display())]
    DamagedPixelData { path: PathBuf, reason: String },
    #[error("{}: palette colour lookup table is invalid: {reason}", path.display())]
    Palette { path: PathBuf, reason: String },
    #[error("{}: frame {frame} could not be decoded: {reason}", path.display())]
    Decode {
        path: PathBuf,
        frame: usize,
        reason: String,
    },
    #[error("{}: frame {frame} does not exist; the clip has {count} frame(s)", path.display())]
    FrameOutOfRange {
        path: PathBuf,
        frame: usize,
        count: usize,
    },
    #[error("{}: cannot list the folder: {source}", path.display())]
    ListFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no .dcm files to replay", path.display())]
    NoFiles { path: PathBuf },
}

impl DicomError {
    /// The file (or folder) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::UnsupportedTransferSyntax { path, .. }
            | Self::BadAttribute { path, .. }
            | Self::Unsupported { path, .. }
            | Self::TruncatedPixelData { path, .. }
            | Self::DamagedPixelData { path, .. }
            | Self::Palette { path, .. }
            | Self::Decode { path, .. }
            | Self::FrameOutOfRange { path, .. }
            | Self::ListFolder { path, .. }
            | Self::NoFiles { path } => path,
        }
    }
}

/// A coded concept (code value, scheme, meaning) as found in code sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CodedConcept {
    pub code_value: Option<String>,
    pub coding_scheme: Option<String>,
    pub meaning: Option<String>,
}

/// View and laterality hints, exactly as present in the file: none of them is trusted to decide
/// the view, they only inform the quality gate.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ViewHints {
    /// View Code Sequence (0054,0220), e.g. meaning "Apical four chamber".
    pub view_codes: Vec<CodedConcept>,
    /// View Modifier Code Sequence (0054,0222) inside the view code items.
    pub view_modifiers: Vec<CodedConcept>,
    /// View Position (0018,5101).
    pub view_position: Option<String>,
    /// Laterality (0020,0060).
    pub laterality: Option<String>,
    /// Image Laterality (0020,0062).
    pub image_laterality: Option<String>,
    /// Series Description (0008,103E): where many scanners write the view name in free text.
    pub series_description: Option<String>,
}

/// What the file says about itself, for the quality gate. Nothing here is interpreted beyond
/// parsing; deciding whether a clip is usable is the gate's job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DicomFacts {
    /// Modality (0008,0060), e.g. "US".
    pub modality: Option<String>,
    /// SOP Class UID (0008,0016), falling back to the file meta's Media Storage SOP Class UID.
    pub sop_class_uid: Option<String>,
    /// Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6.1) or Ultrasound Multi-frame Image
    /// Storage (1.2.840.10008.5.1.4.1.1.3.1).
    pub is_ultrasound_sop_class: bool,
    /// Photometric Interpretation (0028,0004) as stored (before any codec conversion).
    pub photometric_interpretation: String,
    pub number_of_frames: usize,
    pub rows: usize,
    pub cols: usize,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub transfer_syntax_uid: String,
    pub transfer_syntax_name: String,
    pub view: ViewHints,
}

/// Region Spatial Format (0018,6012).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionSpatialFormat {
    None,
    /// A 2D image (B-mode, colour flow).
    TwoD,
    MMode,
    /// Spectral Doppler.
    Spectral,
    Waveform,
    Graphics,
    Other(u16),
}

impl RegionSpatialFormat {
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::None,
            1 => Self::TwoD,
            2 => Self::MMode,
            3 => Self::Spectral,
            4 => Self::Waveform,
            5 => Self::Graphics,
            other => Self::Other(other),
        }
    }
}

/// Region Data Type (0018,6014).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionDataType {
    /// Tissue (B-mode).
    Tissue,
    ColorFlow,
    PwSpectralDoppler,
    CwSpectralDoppler,
    /// Any other code (traces, colour or grey bars, ...), kept as stored.
    Other(u16),
}

impl RegionDataType {
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => Self::Tissue,
            2 => Self::ColorFlow,
            3 => Self::PwSpectralDoppler,
            4 => Self::CwSpectralDoppler,
            other => Self::Other(other),
        }
    }
}

/// One item of the Sequence of Ultrasound Regions (0018,6011).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UltrasoundRegion {
    /// Region Location Min/Max X0,Y0,X1,Y1 with exclusive ends (max + 1), clipped to the image.
    pub rect: PixelRect,
    pub spatial_format: RegionSpatialFormat,
    pub data_type: RegionDataType,
    /// Physical Units X/Y Direction (0018,6024/6026); 3 = cm.
    pub physical_units: (u16, u16),
    /// Physical Delta X/Y (0018,602C/602E): physical size of one pixel in `physical_units`.
    pub physical_delta: (f64, f64),
}

impl UltrasoundRegion {
    /// Pixel size in cm when both axes are in cm with positive deltas.
    pub fn cm_per_pixel(&self) -> Option<(f64, f64)> {
        let (dx, dy) = self.physical_delta;
        (self.physical_units == (UNITS_CM, UNITS_CM)
            && dx.is_finite()
            && dy.is_finite()
            && dx > 0.0
            && dy > 0.0)
            .then_some((dx, dy))
    }

    /// A 2D tissue (B-mode) region: the only kind an echo view model should look at.
    pub fn is_2d_tissue(&self) -> bool {
        self.spatial_format == RegionSpatialFormat::TwoD && self.data_type == RegionDataType::Tissue
    }
}

/// Where a clip's frame times came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingSource {
    /// One frame: time 0.
    SingleFrame,
    /// Frame Time (0018,1063).
    FrameTime,
    /// Frame Time Vector (0018,1065).
    FrameTimeVector,
    /// Cine Rate (0018,0040).
    CineRate,
    /// Recommended Display Frame Rate (0008,2144).
    RecommendedDisplayFrameRate,
    /// Nothing usable: [`DEFAULT_FPS`] assumed.
    Default,
}

/// How the pixel data is encoded, among the transfer syntaxes this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Native,
    Rle,
    JpegBaseline,
}

impl Encoding {
    fn of(uid: &str) -> Option<Self> {
        match uid {
            uids::IMPLICIT_VR_LITTLE_ENDIAN | uids::EXPLICIT_VR_LITTLE_ENDIAN => Some(Self::Native),
            uids::RLE_LOSSLESS => Some(Self::Rle),
            uids::JPEG_BASELINE8_BIT => Some(Self::JpegBaseline),
            _ => None,
        }
    }
}

/// The photometric interpretations this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Photometric {
    Monochrome1,
    Monochrome2,
    PaletteColor,
    Rgb,
    YbrFull,
    YbrFull422,
}

impl Photometric {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "MONOCHROME1" => Some(Self::Monochrome1),
            "MONOCHROME2" => Some(Self::Monochrome2),
            "PALETTE COLOR" => Some(Self::PaletteColor),
            "RGB" => Some(Self::Rgb),
            "YBR_FULL" => Some(Self::YbrFull),
            "YBR_FULL_422" => Some(Self::YbrFull422),
            _ => None,
        }
    }

    fn samples_per_pixel(self) -> u16 {
        match self {
            Self::Monochrome1 | Self::Monochrome2 | Self::PaletteColor => 1,
            Self::Rgb | Self::YbrFull | Self::YbrFull422 => 3,
        }
    }
}

/// The frame's samples as handed over by dicom-rs.
enum RawFrame<'a> {
    Bytes(Cow<'a, [u8]>),
    Words(Cow<'a, [u16]>),
}

/// One DICOM file, opened and checked; frames are decoded on demand by [`DicomClip::frame`].
pub struct DicomClip {
    path: PathBuf,
    object: DefaultDicomObject,
    encoding: Encoding,
    rows: usize,
    cols: usize,
    bits_allocated: u16,
    /// Photometric interpretation of the samples as this module receives them: JPEG colour
    /// arrives as RGB from the codec whatever the file says.
    decoded_photometric: Photometric,
    planar: bool,
    /// Samples in one frame as received (YBR_FULL_422 native: two per pixel).
    frame_samples: usize,
    frame_count: usize,
    map: SampleMap,
    facts: DicomFacts,
    frame_times: Vec<Duration>,
    nominal_fps: Option<f64>,
    timing: TimingSource,
    regions: Vec<UltrasoundRegion>,
    geometry: Arc<SourceGeometry>,
}

impl std::fmt::Debug for DicomClip {
    // The DICOM object itself holds the whole pixel data: leave it out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomClip")
            .field("path", &self.path)
            .field("facts", &self.facts)
            .field("nominal_fps", &self.nominal_fps)
            .field("timing", &self.timing)
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}

impl DicomClip {
    /// Reads and checks a DICOM file, and decodes its first frame to prove it can be replayed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DicomError> {
        let path = path.as_ref().to_path_buf();
        // A FIFO or device would block or never end: refused before any read.
        let (file, size) = crate::safe_file::open_regular(&path).map_err(|e| DicomError::Read {
            path: path.clone(),
            reason: e.reason(),
        })?;
        // The meta group's lengths first: reading the transfer syntax from it allocates them.
        precheck::check_meta_lengths(&file, size)
            .map_err(|fault| precheck::fault_error(&path, &fault))?;
        // Refuse an unsupported transfer syntax from the file meta alone, before reading pixel
        // data (possibly hundreds of megabytes) that could not be decoded anyway, and before
        // dicom-rs refuses to parse a data set it cannot read (deflate) in its own words.
        let uid = precheck::peek_transfer_syntax(&path);
        if let Some(uid) = &uid {
            supported_transfer_syntax(&path, uid)?;
        }
        // dicom-rs allocates each declared length before reading: every length must fit in
        // what is left of the file first.
        precheck::check_lengths(file, size, uid.as_deref().unwrap_or(""))
            .map_err(|fault| precheck::fault_error(&path, &fault))?;
        // dicom-rs's parser and codecs index into file-controlled data; a damaged file must come
        // back as an error, never take the process down.
        let object = match contain(|| dicom_object::open_file(&path)) {
            Ok(Ok(object)) => object,
            Ok(Err(e)) => {
                // The error names the file itself: once is enough ("Could not read from file").
                let reason = describe(&e).replace(&format!(" '{}'", path.display()), "");
                // Tell a file cut short in its pixel data (the usual damage: an interrupted copy)
                // from one that is not DICOM at all: its header alone still reads.
                let header_reads = contain(|| {
                    OpenFileOptions::new()
                        .read_until(tags::PIXEL_DATA)
                        .open_file(&path)
                        .is_ok()
                })
                .unwrap_or(false);
                return Err(if header_reads {
                    DicomError::DamagedPixelData { path, reason }
                } else {
                    DicomError::Read { path, reason }
                });
            }
            Err(_) => {
                return Err(DicomError::Read {
                    path,
                    reason: "the DICOM parser failed on damaged data".into(),
                })
            }
        };

        let (ts_uid, ts_name, encoding) =
            supported_transfer_syntax(&path, object.meta().transfer_syntax())?;

        let rows = required_u16(&object, tags::ROWS, "Rows (0028,0010)", &path)?;
        let cols = required_u16(&object, tags::COLUMNS, "Columns (0028,0011)", &path)?;
        if rows == 0 || cols == 0 {
            return Err(bad_attribute(
                &path,
                "Rows/Columns (0028,0010/0011)",
                "non-zero image size",
            ));
        }
        let (rows, cols) = (usize::from(rows), usize::from(cols));
        let pi_text = get_str(&object, tags::PHOTOMETRIC_INTERPRETATION).ok_or_else(|| {
            bad_attribute(
                &path,
                "Photometric Interpretation (0028,0004)",
                "a defined term",
            )
        })?;
        let photometric = Photometric::parse(&pi_text).ok_or_else(|| DicomError::Unsupported {
            path: path.clone(),
            what: format!("photometric interpretation {pi_text}"),
            expected: "MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422 or PALETTE COLOR",
        })?;
        let samples_per_pixel = required_u16(
            &object,
            tags::SAMPLES_PER_PIXEL,
            "Samples per Pixel (0028,0002)",
            &path,
        )?;
        if samples_per_pixel != photometric.samples_per_pixel() {
            return Err(bad_attribute(
                &path,
                "Samples per Pixel (0028,0002)",
                format!("{} for {pi_text}", photometric.samples_per_pixel()),
            ));
        }
        let bits = sample_bits(&object, &path)?;
        let planar = get_u32(&object, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1;
        let frame_count = match get_str(&object, tags::NUMBER_OF_FRAMES) {
            None => 1,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    bad_attribute(&path, "Number of Frames (0028,0008)", "a positive integer")
                })?,
        };

        // The codec converts JPEG colour to RGB and expands YBR_FULL_422; RLE and native data
        // arrive as stored.
        let decoded_photometric = match (encoding, photometric) {
            (Encoding::JpegBaseline, p) if p.samples_per_pixel() == 3 => Photometric::Rgb,
            (Encoding::Rle, Photometric::YbrFull422) => Photometric::YbrFull,
            (_, p) => p,
        };
        if decoded_photometric == Photometric::YbrFull422 && (cols % 2 != 0 || bits.allocated != 8)
        {
            return Err(DicomError::Unsupported {
                path,
                what: format!(
                    "YBR_FULL_422 with {cols} columns and {}-bit samples",
                    bits.allocated
                ),
                expected: "an even number of columns and 8-bit samples",
            });
        }
        let pixels = rows * cols;
        let frame_samples = if decoded_photometric == Photometric::YbrFull422 {
            pixels * 2
        } else {
            pixels * usize::from(samples_per_pixel)
        };
        let planar = planar
            && encoding == Encoding::Native
            && decoded_photometric != Photometric::YbrFull422;
        check_pixel_data(&object, encoding, frame_count, frame_samples, bits, &path)?;

        let map = match photometric {
            Photometric::PaletteColor => SampleMap::Palette(palette_lut(&object, bits, &path)?),
            Photometric::Monochrome1 | Photometric::Monochrome2 => SampleMap::Grey(grey_lut(
                &object,
                bits,
                photometric == Photometric::Monochrome1,
                &path,
            )),
            Photometric::Rgb | Photometric::YbrFull | Photometric::YbrFull422 => {
                SampleMap::Colour(colour_lut(bits))
            }
        };

        let sop_class_uid = get_str(&object, tags::SOP_CLASS_UID)
            .or_else(|| Some(trim_uid(object.meta().media_storage_sop_class_uid()).to_string()))
            .filter(|s| !s.is_empty());
        let is_ultrasound_sop_class = matches!(
            sop_class_uid.as_deref(),
            Some(uids::ULTRASOUND_IMAGE_STORAGE | uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE)
        );
        let facts = DicomFacts {
            modality: get_str(&object, tags::MODALITY),
            sop_class_uid,
            is_ultrasound_sop_class,
            photometric_interpretation: pi_text,
            number_of_frames: frame_count,
            rows,
            cols,
            samples_per_pixel,
            bits_allocated: bits.allocated,
            bits_stored: bits.stored,
            transfer_syntax_uid: ts_uid,
            transfer_syntax_name: ts_name,
            view: view_hints(&object),
        };
        let (frame_times, nominal_fps, timing) = clip_timing(&object, frame_count, &path);
        let regions = ultrasound_regions(&object, rows, cols, &path);
        let geometry = Arc::new(geometry_of(&regions));

        let clip = Self {
            path,
            object,
            encoding,
            rows,
            cols,
            bits_allocated: bits.allocated,
            decoded_photometric,
            planar,
            frame_samples,
            frame_count,
            map,
            facts,
            frame_times,
            nominal_fps,
            timing,
            regions,
            geometry,
        };
        clip.frame(0)?;
        Ok(clip)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn facts(&self) -> &DicomFacts {
        &self.facts
    }

    pub fn frame_count(&self) -> usize {
        self.frame_count
    }

    pub fn width(&self) -> usize {
        self.cols
    }

    pub fn height(&self) -> usize {
        self.rows
    }

    /// The layout frames are delivered in: grey for MONOCHROME1/2, RGB for everything else.
    pub fn pixel_format(&self) -> PixelFormat {
        match self.map {
            SampleMap::Grey(_) => PixelFormat::Gray8,
            SampleMap::Palette(_) | SampleMap::Colour(_) => PixelFormat::Rgb8,
        }
    }

    /// Media time of every frame from the clip's start (frame 0 at zero).
    pub fn frame_times(&self) -> &[Duration] {
        &self.frame_times
    }

    /// Frame rate the file declares; `None` when it declares none (frame times then assume
    /// [`DEFAULT_FPS`]).
    pub fn nominal_fps(&self) -> Option<f64> {
        self.nominal_fps
    }

    pub fn timing_source(&self) -> TimingSource {
        self.timing
    }

    /// Length of the clip on its own timeline: the last frame's time plus its display time (the
    /// last frame interval, or one nominal period). The next clip of a replay starts here.
    pub fn duration(&self) -> Duration {
        let n = self.frame_times.len();
        let last = self.frame_times.last().copied().unwrap_or_default();
        let period = if n >= 2 {
            last.saturating_sub(self.frame_times[n - 2])
        } else {
            Duration::try_from_secs_f64(1.0 / self.nominal_fps.unwrap_or(DEFAULT_FPS))
                .unwrap_or_else(|_| Duration::from_secs_f64(1.0 / DEFAULT_FPS))
        };
        last.saturating_add(period)
    }

    /// The Sequence of Ultrasound Regions, in file order (regions with unusable bounds left out).
    pub fn ultrasound_regions(&self) -> &[UltrasoundRegion] {
        &self.regions
    }

    /// `regions` lists every ultrasound region's rectangle in the order of
    /// [`ultrasound_regions`](Self::ultrasound_regions); `cm_per_pixel` comes from the first 2D
    /// tissue region in cm, else the first region in cm.
    pub fn geometry(&self) -> Arc<SourceGeometry> {
        Arc::clone(&self.geometry)
    }

    /// The pixel format in words, e.g. "RGB 8-bit RLE Lossless 100x100".
    pub fn format_description(&self) -> String {
        format!(
            "{} {}-bit {} {}x{}",
            self.facts.photometric_interpretation,
            self.facts.bits_stored,
            self.facts.transfer_syntax_name,
            self.cols,
            self.rows
        )
    }

    /// Decodes one frame.
    pub fn frame(&self, index: usize) -> Result<Image, DicomError> {
        if index >= self.frame_count {
            return Err(DicomError::FrameOutOfRange {
                path: self.path.clone(),
                frame: index,
                count: self.frame_count,
            });
        }
        let raw = match self.encoding {
            Encoding::Native => self.native_frame(index)?,
            Encoding::Rle | Encoding::JpegBaseline => self.encapsulated_frame(index)?,
        };
        let data = match &raw {
            RawFrame::Bytes(bytes) => self.map_samples(bytes),
            RawFrame::Words(words) => self.map_samples(words),
        };
        Image::new(self.cols, self.rows, self.pixel_format(), data).ok_or_else(|| {
            DicomError::Decode {
                path: self.path.clone(),
                frame: index,
                reason: "decoded size does not match Rows x Columns".into(),
            }
        })
    }

    fn decode_error(&self, frame: usize, reason: impl Into<String>) -> DicomError {
        DicomError::Decode {
            path: self.path.clone(),
            frame,
            reason: reason.into(),
        }
    }

    /// Slices one frame out of uncompressed pixel data (already checked to be long enough).
    fn native_frame(&self, index: usize) -> Result<RawFrame<'_>, DicomError> {
        let n = self.frame_samples;
        let truncated = || self.decode_error(index, "pixel data ends before this frame");
        let value = match self.object.get(tags::PIXEL_DATA).map(|e| e.value()) {
            Some(Value::Primitive(value)) => value,
            _ => return Err(self.decode_error(index, "native pixel data is missing")),
        };
        match (self.bits_allocated, value) {
            (16, PrimitiveValue::U16(words)) => words
                .get(index * n..(index + 1) * n)
                .map(|w| RawFrame::Words(Cow::Borrowed(w)))
                .ok_or_else(truncated),
            (16, PrimitiveValue::U8(bytes)) => bytes
                .get(index * n * 2..(index + 1) * n * 2)
                .map(|b| {
                    RawFrame::Words(Cow::Owned(
                        b.chunks_exact(2)
                            .map(|p| u16::from_le_bytes([p[0], p[1]]))
                            .collect(),
                    ))
                })
                .ok_or_else(truncated),
            (_, PrimitiveValue::U8(bytes)) => bytes
                .get(index * n..(index + 1) * n)
                .map(|b| RawFrame::Bytes(Cow::Borrowed(b)))
                .ok_or_else(truncated),
            (_, PrimitiveValue::U16(words)) => {
                // 8-bit samples in an OW element: the words hold the file's little-endian bytes.
                let start = index * n;
                let first_word = start / 2;
                let last_word = (start + n).div_ceil(2);
                let bytes: Vec<u8> = words
                    .get(first_word..last_word)
                    .ok_or_else(truncated)?
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .skip(start % 2)
                    .take(n)
                    .collect();
                Ok(RawFrame::Bytes(Cow::Owned(bytes)))
            }
            _ => Err(self.decode_error(index, "pixel data is neither OB nor OW")),
        }
    }

    /// Decodes one frame of RLE or JPEG data through dicom-pixeldata.
    fn encapsulated_frame(&self, index: usize) -> Result<RawFrame<'static>, DicomError> {
        let frame =
            u32::try_from(index).map_err(|_| self.decode_error(index, "frame index too large"))?;
        if self.encoding == Encoding::Rle {
            let segments = self.frame_samples / (self.rows * self.cols).max(1)
                * usize::from(self.bits_allocated / 8);
            check_rle_frame(&self.object, index, segments)
                .map_err(|r| self.decode_error(index, r))?;
        }
        // The codecs index into file-controlled data (and some unwrap): catch their panics.
        let decoded = contain(|| {
            self.object
                .decode_pixel_data_frame(frame)
                .map(|d| d.into_data())
        });
        let mut bytes = match decoded {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(self.decode_error(index, describe(&e))),
            Err(_) => return Err(self.decode_error(index, "the decoder failed on damaged data")),
        };
        let bytes_per_sample = usize::from(self.bits_allocated / 8);
        let expected = self.frame_samples * bytes_per_sample;
        if bytes.len() < expected {
            return Err(self.decode_error(
                index,
                format!("decoded to {} bytes, {expected} expected", bytes.len()),
            ));
        }
        bytes.truncate(expected);
        Ok(if bytes_per_sample == 2 {
            // dicom-pixeldata hands decoded 16-bit samples over little-endian.
            RawFrame::Words(Cow::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|p| u16::from_le_bytes([p[0], p[1]]))
                    .collect(),
            ))
        } else {
            RawFrame::Bytes(Cow::Owned(bytes))
        })
    }

    /// Raw samples → output bytes. `T` matches Bits Allocated (u8 for 8, u16 for 16), so every
    /// sample is a valid index into the `1 << bits_allocated`-entry maps.
    fn map_samples<T: Copy + Into<usize>>(&self, samples: &[T]) -> Vec<u8> {
        match &self.map {
            SampleMap::Grey(lut) => samples.iter().map(|&s| lut[s.into()]).collect(),
            SampleMap::Palette(lut) => samples.iter().flat_map(|&s| lut[s.into()]).collect(),
            SampleMap::Colour(lut) => {
                let pixels = self.rows * self.cols;
                let mut rgb = Vec::with_capacity(pixels * 3);
                if self.decoded_photometric == Photometric::YbrFull422 {
                    // Two pixels per group: Y1 Y2 Cb Cr, chroma shared (PS3.3 C.7.6.3.1.2).
                    for group in samples.chunks_exact(4) {
                        let [y1, y2, cb, cr] = [0, 1, 2, 3].map(|k| lut[group[k].into()]);
                        rgb.extend(ybr_to_rgb(y1, cb, cr));
                        rgb.extend(ybr_to_rgb(y2, cb, cr));
                    }
                    return rgb;
                }
                if self.planar {
                    // Planar Configuration 1: all red, then all green, then all blue.
                    for p in 0..pixels {
                        for c in 0..3 {
                            rgb.push(lut[samples[c * pixels + p].into()]);
                        }
                    }
                } else {
                    rgb.extend(samples.iter().map(|&s| lut[s.into()]));
                }
                if self.decoded_photometric == Photometric::YbrFull {
                    for px in rgb.chunks_exact_mut(3) {
                        let converted = ybr_to_rgb(px[0], px[1], px[2]);
                        px.copy_from_slice(&converted);
                    }
                }
                rgb
            }
        }
    }
}

/// Error text with its causes: dicom-rs's errors put the useful detail in the chain.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The transfer syntax's UID, name and encoding when this module decodes it.
fn supported_transfer_syntax(
    path: &Path,
    uid: &str,
) -> Result<(String, String, Encoding), DicomError> {
    let uid = trim_uid(uid).to_string();
    let name = TransferSyntaxRegistry
        .get(&uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "(unknown transfer syntax)".to_string());
    match Encoding::of(&uid) {
        Some(encoding) => Ok((uid, name, encoding)),
        None => Err(DicomError::UnsupportedTransferSyntax {
            path: path.to_path_buf(),
            uid,
            name,
        }),
    }
}

/// UIDs are padded to even length with NUL (and sometimes spaces).
fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

fn bad_attribute(path: &Path, attribute: &'static str, expected: impl Into<String>) -> DicomError {
    DicomError::BadAttribute {
        path: path.to_path_buf(),
        attribute,
        expected: expected.into(),
    }
}

/// A string attribute, trimmed; `None` when absent or empty.
fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let text = obj.get(tag)?.to_str().ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!text.is_empty()).then(|| text.to_string())
}

fn get_u32(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag)?.to_int::<u32>().ok()
}

fn get_u16(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag)?.to_int::<u16>().ok()
}

fn get_f64(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.get(tag)?.to_float64().ok().filter(|v| v.is_finite())
}

fn get_f64s(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)?.to_multi_float64().ok()
}

fn required_u16(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
    path: &Path,
) -> Result<u16, DicomError> {
    get_u16(obj, tag).ok_or_else(|| bad_attribute(path, name, "an unsigned 16-bit integer"))
}

fn sample_bits(obj: &InMemDicomObject, path: &Path) -> Result<SampleBits, DicomError> {
    let allocated = required_u16(
        obj,
        tags::BITS_ALLOCATED,
        "Bits Allocated (0028,0100)",
        path,
    )?;
    if allocated != 8 && allocated != 16 {
        return Err(DicomError::Unsupported {
            path: path.to_path_buf(),
            what: format!("Bits Allocated {allocated}"),
            expected: "8 or 16",
        });
    }
    let stored = get_u16(obj, tags::BITS_STORED).unwrap_or(allocated);
    if stored == 0 || stored > allocated {
        return Err(bad_attribute(
            path,
            "Bits Stored (0028,0101)",
            format!("1 to {allocated} (Bits Allocated)"),
        ));
    }
    let high_bit = get_u16(obj, tags::HIGH_BIT).unwrap_or(stored - 1);
    if high_bit >= allocated || high_bit + 1 < stored {
        return Err(bad_attribute(
            path,
            "High Bit (0028,0102)",
            format!(
                "between Bits Stored - 1 ({}) and Bits Allocated - 1 ({})",
                stored - 1,
                allocated - 1
            ),
        ));
    }
    let signed = get_u16(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    Ok(SampleBits {
        allocated,
        stored,
        high_bit,
        signed,
    })
}
