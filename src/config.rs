//! Deployment configuration (`firmware-config/*.toml`). Each section is the configuration half of
//! a stage: typed, every field documented with its unit and default, unknown keys rejected with
//! the key's path. The runtime stages grow their own sections as they are built.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    /// A value parsed but outside what the runtime can work with.
    #[error("{file}: at `{key}`: {value} is out of range: expected {expected}")]
    Range {
        file: PathBuf,
        key: &'static str,
        value: String,
        expected: String,
    },
}

/// Most CPU inference threads accepted (a thread per core of the largest boards, with room).
pub const MAX_THREADS: usize = 256;
/// Slowest and fastest frame rate a replay or synthetic source may claim (frames per second):
/// slower would make the source sleep for minutes between frames.
pub const FPS_RANGE: (f64, f64) = (0.5, 1000.0);
/// Longest window accepted: a minute at the paper's 10 fps.
pub const MAX_WINDOW_FRAMES: usize = 600;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub pipeline: crate::pipeline::PipelineConfig,
    #[serde(default)]
    pub window: crate::aggregate::WindowConfig,
    #[serde(default)]
    pub preprocess: crate::preprocess::PreprocessConfig,
    #[serde(default)]
    pub publish: PublishConfig,
}

/// Which source feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The V4L2 device when its node exists, else the built-in phantom.
    Auto,
    Phantom,
    Dicom,
    Images,
    V4l2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `auto`, `phantom`, `dicom`, `images` or `v4l2`. Default `auto`.
    #[serde(default = "default_kind")]
    pub kind: SourceKind,
    /// Replay sources: `real_time` or `as_fast_as_possible` (the queues then wait for the model
    /// instead of dropping frames: the whole recording is inferred). Default `real_time`.
    #[serde(default = "default_pacing")]
    pub pacing: crate::capture::Pacing,
    /// Replay sources start over at the end. Default true.
    #[serde(default = "default_true")]
    pub loop_playback: bool,
    #[serde(default)]
    pub v4l2: crate::capture::v4l2::V4l2Config,
    #[serde(default)]
    pub dicom: DicomSourceConfig,
    #[serde(default)]
    pub images: ImagesSourceConfig,
    #[serde(default)]
    pub phantom: PhantomSourceConfig,
}

fn default_kind() -> SourceKind {
    SourceKind::Auto
}
fn default_pacing() -> crate::capture::Pacing {
    crate::capture::Pacing::RealTime
}
fn default_true() -> bool {
    true
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            pacing: default_pacing(),
            loop_playback: true,
            v4l2: Default::default(),
            dicom: Default::default(),
            images: Default::default(),
            phantom: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSourceConfig {
    /// Files or folders (a folder plays its .dcm files in name order). No default.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSourceConfig {
    /// Folder of PNG/JPEG frames, played in name order. No default.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// Frames per second of the folder. Default 30.
    #[serde(default = "default_images_fps")]
    pub fps: f64,
}

fn default_images_fps() -> f64 {
    30.0
}

impl Default for ImagesSourceConfig {
    fn default() -> Self {
        Self {
            folder: None,
            fps: default_images_fps(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhantomSourceConfig {
    /// Seed of the synthetic patient (EDV, ESV, heart rate, image details). Default 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Frames per second. Default 30.
    #[serde(default = "default_images_fps")]
    pub fps: f64,
}

fn default_seed() -> u64 {
    1
}

impl Default for PhantomSourceConfig {
    fn default() -> Self {
        Self {
            seed: default_seed(),
            fps: default_images_fps(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// JSON Lines target: `-` for stdout, `off` for none, or a file appended to (`./off` for a
    /// file named off). Default `-`.
    #[serde(default = "default_jsonl")]
    pub jsonl: String,
    /// Address of the bedside display server (`host:port`), or `off`. Default `127.0.0.1:8470`.
    #[serde(default = "default_http")]
    pub http: String,
    /// The display has no login: serving it on anything but a loopback address needs this set
    /// to true, and logs a warning at every start. Default false.
    #[serde(default)]
    pub allow_remote_display: bool,
    /// What `/api/frame` serves: `sector` (only the scanning sector, so text burned into the
    /// image is never served; nothing until a sector is known), `off`, or `unmasked`. Default
    /// `sector`.
    #[serde(default)]
    pub frame: crate::publish::frame_mask::FramePolicy,
    /// Results journal (SQLite): every published record appended. Default: none.
    #[serde(default)]
    pub journal: Option<PathBuf>,
    /// `full` (every commit synced: a power cut loses nothing committed) or `normal` (synced at
    /// checkpoints). Default `full`.
    #[serde(default)]
    pub journal_durability: crate::publish::journal::Durability,
}

fn default_jsonl() -> String {
    "-".into()
}
fn default_http() -> String {
    "127.0.0.1:8470".into()
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            jsonl: default_jsonl(),
            http: default_http(),
            allow_remote_display: false,
            frame: Default::default(),
            journal: None,
            journal_durability: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Bundle to load. Default: the `default` entry of `models/MANIFEST.toml`.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`. Default `cpu`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `auto` (f16 on CUDA, the bundle's storage dtype on the CPU, int8 for an `echonet quantize`
    /// bundle on the CPU), `f32`, `f16`, `bf16` (CUDA only) or `int8` (CPU only). Default `auto`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// CPU threads for inference; 0 = every core this process may use. Default 0.
    #[serde(default)]
    pub threads: usize,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "auto".into()
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            bundle: None,
            device: default_device(),
            dtype: default_dtype(),
            threads: 0,
        }
    }
}

/// The default profile, compiled in: the daemon runs on it with no files around.
pub const EMBEDDED_DEFAULT: &str = include_str!("../firmware-config/default.toml");

impl Config {
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Self, ConfigError> {
        Self::from_toml_with_overrides(text, file, &[])
    }

    /// Parses `text`, then applies `overrides` (`section.key=value`, value in TOML syntax, or a
    /// bare string) before checking it: every setting can be overridden on the command line.
    pub fn from_toml_with_overrides(
        text: &str,
        file: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            file: file.to_path_buf(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o).map_err(|m| parse_err(format!("override {o:?}: {m}")))?;
        }
        let config: Self =
            serde_path_to_error::deserialize(table).map_err(|e| ConfigError::Parse {
                file: file.to_path_buf(),
                message: format!("at `{}`: {}", e.path(), e.inner()),
            })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks every number against the range the runtime works with; the error names the key,
    /// the value and the range.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let range = |key: &'static str, value: String, expected: String| ConfigError::Range {
            file: file.to_path_buf(),
            key,
            value,
            expected,
        };
        let int = |key: &'static str, v: u64, lo: u64, hi: u64, unit: &str| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(range(key, v.to_string(), format!("{lo} to {hi}{unit}")))
            }
        };
        let real = |key: &'static str, v: f64, lo: f64, hi: f64, unit: &str| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(range(
                    key,
                    v.to_string(),
                    format!("a number from {lo} to {hi}{unit}"),
                ))
            }
        };
        int(
            "model.threads",
            self.model.threads as u64,
            0,
            MAX_THREADS as u64,
            " (0 = every usable core)",
        )?;
        let (fps_lo, fps_hi) = FPS_RANGE;
        real(
            "source.images.fps",
            self.source.images.fps,
            fps_lo,
            fps_hi,
            " frames per second",
        )?;
        real(
            "source.phantom.fps",
            self.source.phantom.fps,
            fps_lo,
            fps_hi,
            " frames per second",
        )?;
        int(
            "source.v4l2.timeout_ms",
            self.source.v4l2.timeout_ms,
            10,
            60_000,
            " ms",
        )?;
        int(
            "source.v4l2.buffers",
            self.source.v4l2.buffers.into(),
            1,
            32,
            "",
        )?;
        let p = &self.pipeline;
        int(
            "pipeline.queue_depth",
            p.queue_depth as u64,
            1,
            1024,
            " frames",
        )?;
        int(
            "pipeline.stale_after_ms",
            p.stale_after_ms,
            100,
            3_600_000,
            " ms",
        )?;
        int(
            "pipeline.display_interval_ms",
            p.display_interval_ms,
            0,
            60_000,
            " ms",
        )?;
        int(
            "pipeline.reconnect_max_ms",
            p.reconnect_max_ms,
            250,
            600_000,
            " ms",
        )?;
        real(
            "pipeline.view_threshold",
            p.view_threshold,
            0.0,
            1.0,
            " (a probability)",
        )?;
        let w = &self.window;
        int(
            "window.frames",
            w.frames as u64,
            2,
            MAX_WINDOW_FRAMES as u64,
            " sampled frames",
        )?;
        int(
            "window.min_valid_frames",
            w.min_valid_frames as u64,
            1,
            w.frames as u64,
            " (at most window.frames)",
        )?;
        // The sampler takes a frame every 100 ms: a shorter span than the window's own would
        // withhold every estimate.
        let min_span = (w.frames as u64 - 1) * crate::sampler::PAPER_INTERVAL.as_millis() as u64;
        int(
            "window.max_span_ms",
            w.max_span_ms,
            min_span,
            600_000,
            " ms (at least (window.frames - 1) x 100 ms)",
        )?;
        real(
            "window.ef_agreement_margin",
            w.ef_agreement_margin,
            0.5,
            50.0,
            " percentage points of EF",
        )?;
        self.preprocess.check().map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(())
    }

    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, file)
    }
}

fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), String> {
    let (path, raw) = spec.split_once('=').ok_or("expected section.key=value")?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err("empty key in the path".into());
    }
    let raw = raw.trim();
    // TOML syntax first (numbers, booleans, arrays, quoted strings); otherwise a bare string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = keys.split_last().ok_or("empty path")?;
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a section"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err =
            Config::from_toml_str("[model]\ndevise = \"cpu\"\n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.toml") && msg.contains("devise"), "{msg}");
    }

    #[test]
    fn overrides_reach_any_setting_and_are_checked() {
        let c = Config::from_toml_with_overrides(
            EMBEDDED_DEFAULT,
            Path::new("embedded"),
            &[
                "source.kind=dicom".into(),
                "window.min_valid_frames=12".into(),
                "source.dicom.paths=[\"a.dcm\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.source.kind, SourceKind::Dicom);
        assert_eq!(c.window.min_valid_frames, 12);
        assert_eq!(c.source.dicom.paths, vec![PathBuf::from("a.dcm")]);
        let e =
            Config::from_toml_with_overrides("", Path::new("x"), &["window.min_valid=3".into()])
                .unwrap_err();
        assert!(e.to_string().contains("window.min_valid"), "{e}");
        let e =
            Config::from_toml_with_overrides("", Path::new("x"), &["source.kind=bluetooth".into()])
                .unwrap_err();
        assert!(e.to_string().contains("source.kind"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml_str("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.model.device, "cpu");
    }

    #[test]
    fn nonsense_values_are_refused_with_their_range() {
        let cases = [
            (
                "window.min_valid_frames=0",
                "window.min_valid_frames",
                "1 to 20",
            ),
            (
                "window.min_valid_frames=21",
                "window.min_valid_frames",
                "1 to 20",
            ),
            ("window.frames=0", "window.frames", "2 to 600"),
            ("window.frames=1", "window.frames", "2 to 600"),
            ("window.frames=100000", "window.frames", "2 to 600"),
            (
                "window.max_span_ms=0",
                "window.max_span_ms",
                "1900 to 600000",
            ),
            (
                "window.ef_agreement_margin=0",
                "window.ef_agreement_margin",
                "0.5 to 50",
            ),
            (
                "window.ef_agreement_margin=nan",
                "window.ef_agreement_margin",
                "0.5 to 50",
            ),
            (
                "pipeline.stale_after_ms=0",
                "pipeline.stale_after_ms",
                "100 to",
            ),
            (
                "pipeline.queue_depth=0",
                "pipeline.queue_depth",
                "1 to 1024",
            ),
            (
                "pipeline.view_threshold=nan",
                "pipeline.view_threshold",
                "0 to 1",
            ),
            (
                "pipeline.view_threshold=1.5",
                "pipeline.view_threshold",
                "0 to 1",
            ),
            ("source.images.fps=1e-9", "source.images.fps", "0.5 to 1000"),
            (
                "source.phantom.fps=inf",
                "source.phantom.fps",
                "0.5 to 1000",
            ),
            ("model.threads=5000", "model.threads", "0 to 256"),
        ];
        for (set, key, expected) in cases {
            let e = Config::from_toml_with_overrides(
                EMBEDDED_DEFAULT,
                Path::new("p.toml"),
                &[set.into()],
            )
            .expect_err(set)
            .to_string();
            assert!(
                e.contains("p.toml") && e.contains(&format!("`{key}`")) && e.contains(expected),
                "{set}: {e}"
            );
        }
        // Both ends of a dependent range are fine.
        for set in [
            "window.min_valid_frames=20",
            "window.min_valid_frames=1",
            "window.frames=2",
        ] {
            let mut o = vec![set.to_string()];
            if set == "window.frames=2" {
                o.push("window.min_valid_frames=2".into());
            }
            Config::from_toml_with_overrides(EMBEDDED_DEFAULT, Path::new("p.toml"), &o)
                .unwrap_or_else(|e| panic!("{set}: {e}"));
        }
    }
}
