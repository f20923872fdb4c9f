//! `echonet phantom --out DIR --clips N --seed S`: writes synthetic apical-4-chamber clips as
//! multi-frame ultrasound DICOM files, with their ground truth in `labels.csv` (one row per clip)
//! and `frame_volumes.csv` (one row per frame). The training set of the bundled model and the
//! test input of the DICOM source are made with this command.
//!
//! Clip `i` is the patient `PhantomParams::random(S * 1000 + i)` (see `clip_seed`), rendered at
//! the requested size and frame rate; frame `k` is `render(k / fps)`. Files appear atomically
//! (written to a temporary name, then renamed), so a reader never sees half a clip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use echonet_edge::capture::v4l2::emu_frames;
use echonet_edge::phantom::{clip_seed, Phantom, PhantomParams};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to write the clips and CSV files into (created if missing).
    #[arg(long, required_unless_present = "emu_frames")]
    pub out: Option<PathBuf>,
    /// Instead of DICOM clips: write clip 0's frames to this file as the frame file of the
    /// emulated V4L2 device (tools/v4l2-emu, scripts/v4l2-emulated.sh), with a JPEG of each for
    /// its MJPG stream. The emulator loops the frames, so a whole number of beats loops smoothly.
    #[arg(long, conflicts_with = "out")]
    pub emu_frames: Option<PathBuf>,
    /// Number of clips, 1 to 1000.
    #[arg(long)]
    pub clips: u32,
    /// Base seed: clip i uses seed S * 1000 + i.
    #[arg(long)]
    pub seed: u64,
    /// Frames per clip.
    #[arg(long, default_value_t = 64)]
    pub frames: u32,
    /// Frame rate of the clips.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 640)]
    pub width: usize,
    /// Image height in pixels.
    #[arg(long, default_value_t = 480)]
    pub height: usize,
}

/// `--emu-frames`: clip 0's frames as the emulated V4L2 device's frame file.
fn write_emu_frames(args: &Args, path: &Path) -> anyhow::Result<ExitCode> {
    let seed = clip_seed(args.seed, 0)
        .with_context(|| format!("--seed {} is too large for clip seeds", args.seed))?;
    let params = PhantomParams {
        width: args.width,
        height: args.height,
        fps: args.fps,
        ..PhantomParams::random(seed)
    };
    let frames = emu_frames::phantom_frames(params.clone(), args.frames as usize)
        .with_context(|| format!("phantom clip 0 (seed {seed})"))?;
    emu_frames::write_emu_frames(path, &frames, true)?;
    tracing::info!(
        file = %path.display(), frames = args.frames, width = args.width, height = args.height,
        ef_percent = format!("{:.1}", params.ef_percent()),
        "wrote the emulated V4L2 device's frames"
    );
    Ok(ExitCode::SUCCESS)
}

/// One clip's ground truth, as written to `labels.csv`.
struct ClipLabel {
    file: String,
    params: PhantomParams,
    frames: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(1..=1000).contains(&args.clips) {
        bail!(
            "--clips {}: expected 1 to 1000 (clip seeds are S * 1000 + i)",
            args.clips
        );
    }
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    if let Some(path) = &args.emu_frames {
        return write_emu_frames(&args, path);
    }
    let out = args
        .out
        .clone()
        .context("--out is required (unless --emu-frames is given)")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut labels = Vec::new();
    let mut volumes = String::from("file,frame,time_s,lv_volume_ml\n");
    let mut render_s = 0.0;
    for i in 0..args.clips {
        let seed = clip_seed(args.seed, i).with_context(|| {
            format!(
                "--seed {} is too large for clip seeds S * 1000 + i",
                args.seed
            )
        })?;
        let params = PhantomParams {
            width: args.width,
            height: args.height,
            fps: args.fps,
            ..PhantomParams::random(seed)
        };
        let phantom =
            Phantom::new(params.clone()).with_context(|| format!("clip {i} (seed {seed})"))?;
        let file = format!("clip_{i:04}.dcm");

        let mut pixels = Vec::with_capacity(args.width * args.height * args.frames as usize);
        for k in 0..u64::from(args.frames) {
            let t = phantom.frame_time(k);
            let started = Instant::now();
            let image = phantom.render(t);
            render_s += started.elapsed().as_secs_f64();
            pixels.extend_from_slice(&image.data);
            volumes.push_str(&format!(
                "{file},{k},{:.6},{:.4}\n",
                t.as_secs_f64(),
                phantom.lv_volume_ml(t)
            ));
        }
        let bytes = clip_dicom(&phantom, args.frames, pixels)
            .with_context(|| format!("encoding {file}"))?;
        write_atomically(&out.join(&file), &bytes)?;
        labels.push(ClipLabel {
            file,
            params,
            frames: args.frames,
        });
    }

    let mut csv = String::from("file,seed,edv_ml,esv_ml,ef_percent,heart_rate_bpm,fps,frames\n");
    for l in &labels {
        let p = &l.params;
        csv.push_str(&format!(
            "{},{},{:.4},{:.4},{:.4},{:.4},{},{}\n",
            l.file,
            p.seed,
            p.edv_ml,
            p.esv_ml,
            p.ef_percent(),
            p.heart_rate_bpm,
            p.fps,
            l.frames
        ));
    }
    write_atomically(&out.join("labels.csv"), csv.as_bytes())?;
    write_atomically(&out.join("frame_volumes.csv"), volumes.as_bytes())?;

    let total_frames = u64::from(args.clips) * u64::from(args.frames);
    tracing::info!(
        clips = args.clips,
        frames = total_frames,
        render_ms_per_frame = format!("{:.2}", 1000.0 * render_s / total_frames as f64),
        out = %out.display(),
        "phantom clips written"
    );
    Ok(ExitCode::SUCCESS)
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
fn clip_dicom(phantom: &Phantom, frames: u32, pixels: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let p = phantom.params();
    let geometry = phantom.geometry();
    let region = geometry
        .regions
        .first()
        .context("the phantom declares no imaging region")?;
    let sector = phantom.sector();
    let rows = u16::try_from(p.height).context("height above 65535")?;
    let cols = u16::try_from(p.width).context("width above 65535")?;
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
        .context("building the file meta group")?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .context("encoding the data set")?;
    Ok(bytes)
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over
/// `path`, so `path` holds either the old content or all of the new.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // The temporary file is ours; a failure to remove it changes nothing for the caller.
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
