//! `echonet phantom --out DIR --clips N --seed S`: writes synthetic apical-4-chamber clips as
//! multi-frame ultrasound DICOM files, with their ground truth in `labels.csv` (one row per clip:
//! volumes, EF, the findings `pacemaker`, `la_dilation`, `lv_wall_normal` and the view
//! `view_a4c`, each 0/1) and `frame_volumes.csv` (one row per frame). The training set of the bundled model and the
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
use echonet_edge::capture::v4l2::emu_frames;
use echonet_edge::phantom::dicom::clip_dicom;
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

    // The patient's truth in every row; `view_a4c` = 0 tells a reader that the volumes and
    // findings are not what the clip shows (the dataset reader drops them for such clips).
    let mut csv = String::from(
        "file,seed,edv_ml,esv_ml,ef_percent,heart_rate_bpm,fps,frames,\
         pacemaker,la_dilation,lv_wall_normal,view_a4c\n",
    );
    for l in &labels {
        let p = &l.params;
        let bit = |b: bool| u8::from(b);
        csv.push_str(&format!(
            "{},{},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{},{}\n",
            l.file,
            p.seed,
            p.edv_ml,
            p.esv_ml,
            p.ef_percent(),
            p.heart_rate_bpm,
            p.fps,
            l.frames,
            bit(p.pacemaker),
            bit(p.la_dilation()),
            bit(p.lv_wall_normal()),
            bit(p.view.is_a4c()),
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
