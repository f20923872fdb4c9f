//! Turning weights trained elsewhere into a bundle: read a PyTorch `.pt`/`.pth` state dict or a
//! plain safetensors file with facenet-pytorch names (plus `heads.<task>.*`), work out the
//! architecture from the tensor shapes, attach tasks, preprocessing and intended use, prove the
//! network loads, and write the bundle (optionally in reduced precision, with the deviation that
//! costs measured on a probe batch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::arch::{trunk, Architecture, StageSpec};
use super::bundle::{
    utc_date_today, InputSpec, Manifest, Provenance, StorageDtype, BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
};
use super::error::{ModelError, Result};
use super::heads::{TaskKind, TaskSpec};
use super::weights::WeightStore;
use super::{EchoNetModel, RunOptions};

/// Keys under which training scripts commonly nest the state dict in a checkpoint.
const NESTED_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// A state dict as read: names (with any `module.` prefix removed) and tensors, plus what was
/// dropped on the way in and why.
pub struct StateDict {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    pub dropped: Vec<String>,
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("safetensors")
}

/// Reads `.pt`/`.pth` (PyTorch zip or legacy pickle) or `.safetensors`.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let raw: Vec<(String, Tensor)> = if is_safetensors(path) {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| ModelError::Format {
                file: path.to_path_buf(),
                reason: e.to_string(),
            })?
            .into_iter()
            .collect()
    } else {
        if !path.exists() {
            return Err(ModelError::Io {
                file: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let pickle_err = |e: candle_core::Error| ModelError::Pickle {
            file: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut found = candle_core::pickle::read_all(path).map_err(pickle_err)?;
        for key in NESTED_KEYS {
            if !found.is_empty() {
                break;
            }
            found = candle_core::pickle::read_all_with_key(path, Some(key)).unwrap_or_default();
        }
        found
    };
    if raw.is_empty() {
        return Err(ModelError::Pickle {
            file: path.to_path_buf(),
            reason: format!("no tensors found (looked at the top level and under {NESTED_KEYS:?})"),
        });
    }
    let mut tensors = BTreeMap::new();
    let mut dropped = Vec::new();
    for (name, t) in raw {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        // facenet's identity classifier: meaningless for echocardiography, accepted and left out.
        if name.starts_with("logits.") {
            dropped.push(name);
            continue;
        }
        tensors.insert(name, t);
    }
    Ok(StateDict {
        path: path.to_path_buf(),
        tensors,
        dropped,
    })
}

/// Architecture implied by the tensor shapes: width from `conv2d_1a`, bottleneck from `last_linear`.
pub fn infer_architecture(sd: &StateDict) -> Result<(Architecture, usize)> {
    let stem =
        sd.tensors
            .get("conv2d_1a.conv.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                file: sd.path.clone(),
                name: "conv2d_1a.conv.weight".into(),
                expected: vec![32, 3, 3, 3],
            })?;
    let dims = stem.dims();
    if dims.len() != 4 {
        return Err(ModelError::ShapeMismatch {
            file: sd.path.clone(),
            name: "conv2d_1a.conv.weight".into(),
            expected: vec![32, 3, 3, 3],
            found: dims.to_vec(),
        });
    }
    let width = dims[0] as f64 / 32.0;
    let stem_out = match trunk(width, dims[1]).first() {
        Some(StageSpec::Conv(c)) => c.cout,
        _ => 0,
    };
    if stem_out != dims[0] {
        return Err(ModelError::Unsupported(format!(
            "{}: cannot infer a width multiplier from conv2d_1a with {} channels",
            sd.path.display(),
            dims[0]
        )));
    }
    let embedding = sd.tensors.get("last_linear.weight").map(|t| t.dims()[0]);
    Ok((Architecture::new(width, embedding), dims[1]))
}

/// Tasks, preprocessing and intended use for `echonet convert`, from a TOML file and/or options.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertSpec {
    pub intended_use: Option<String>,
    pub input: Option<InputSpec>,
    #[serde(default)]
    pub provenance: ProvenanceSpec,
    #[serde(default, rename = "task")]
    pub tasks: Vec<TaskOverride>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceSpec {
    pub source: Option<String>,
    pub data: Option<String>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub notes: Option<String>,
}

/// One task in the TOML: EchoNet task names need only `name`; the other fields override defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOverride {
    pub name: String,
    pub kind: Option<TaskKind>,
    pub unit: Option<String>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub description: Option<String>,
}

impl TaskOverride {
    fn resolve(&self, spec_file: &str) -> Result<TaskSpec> {
        let base = TaskSpec::echonet_default(&self.name);
        let missing = |field: &str| {
            ModelError::Input(format!(
                "{spec_file}: task {:?} is not an EchoNet task, so `{field}` must be given",
                self.name
            ))
        };
        let spec = TaskSpec {
            name: self.name.clone(),
            kind: match (self.kind, &base) {
                (Some(k), _) => k,
                (None, Some(b)) => b.kind,
                (None, None) => return Err(missing("kind")),
            },
            unit: match (&self.unit, &base) {
                (Some(u), _) => u.clone(),
                (None, Some(b)) => b.unit.clone(),
                (None, None) => return Err(missing("unit")),
            },
            scale: self.scale.unwrap_or(1.0),
            offset: self.offset.unwrap_or(0.0),
            description: self
                .description
                .clone()
                .or_else(|| base.map(|b| b.description))
                .unwrap_or_default(),
        };
        spec.check()
            .map_err(|r| ModelError::Input(format!("{spec_file}: {r}")))?;
        Ok(spec)
    }
}

impl ConvertSpec {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ModelError::Input(format!("{}: {e}", path.display())))
    }
}

/// Everything `convert` decided, for the report.
pub struct Converted {
    pub manifest: Manifest,
    pub dropped: Vec<String>,
    pub deviation: Option<Deviation>,
}

/// How far a reduced-precision model's outputs are from the f32 model's on the probe batch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deviation {
    pub dtype: String,
    pub probe_frames: usize,
    pub features_max_abs: f64,
    pub features_rel_l2: f64,
    /// Task -> largest absolute difference of the reported value.
    pub outputs_max_abs: BTreeMap<String, f64>,
}

/// A deterministic, roughly unit-variance probe batch (no RNG dependency: a fixed LCG).
pub fn probe_batch(n: usize, input: &InputSpec) -> Result<Tensor> {
    let len = n * input.channels * input.height * input.width;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<f32> = (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Uniform on [-sqrt(3), sqrt(3)]: variance 1.
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * 1.732_050_8
        })
        .collect();
    Ok(Tensor::from_vec(
        data,
        (n, input.channels, input.height, input.width),
        &Device::Cpu,
    )?)
}

pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Measures `reduced` against `reference` on a probe batch.
pub fn measure_deviation(
    reference: &EchoNetModel,
    reduced: &EchoNetModel,
    frames: usize,
) -> Result<Deviation> {
    let probe = probe_batch(frames, &reference.manifest().input)?;
    let a = reference.infer(&probe, true)?;
    let b = reduced.infer(&probe, true)?;
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    let mut outputs_max_abs: BTreeMap<String, f64> = BTreeMap::new();
    for (x, y) in a.iter().zip(&b) {
        fa.extend(x.features.clone().unwrap_or_default());
        fb.extend(y.features.clone().unwrap_or_default());
        for (task, vx) in &x.outputs {
            let vy = y.outputs.get(task).copied().unwrap_or(f64::NAN);
            let e = outputs_max_abs.entry(task.clone()).or_insert(0.0);
            *e = e.max((vx - vy).abs());
        }
    }
    Ok(Deviation {
        dtype: format!("{:?}", reduced.dtype()).to_lowercase(),
        probe_frames: frames,
        features_max_abs: fa
            .iter()
            .zip(&fb)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0.0, f64::max),
        features_rel_l2: relative_l2(&fb, &fa),
        outputs_max_abs,
    })
}

/// Options of `echonet convert` that are not in the TOML.
pub struct ConvertOptions {
    pub dtype: StorageDtype,
    pub input_size: Option<usize>,
    pub extra_tasks: Vec<String>,
    pub intended_use: Option<String>,
    pub probe_frames: usize,
}

/// Converts `input` to a bundle at `output`.
pub fn convert(
    input: &Path,
    output: &Path,
    spec: &ConvertSpec,
    opts: &ConvertOptions,
) -> Result<Converted> {
    let sd = read_state_dict(input)?;
    let (architecture, stem_channels) = infer_architecture(&sd)?;
    let spec_name = "convert options";

    let mut tasks: Vec<TaskSpec> = Vec::new();
    for t in &spec.tasks {
        tasks.push(t.resolve(spec_name)?);
    }
    for name in &opts.extra_tasks {
        if !tasks.iter().any(|t| &t.name == name) {
            tasks.push(
                TaskOverride {
                    name: name.clone(),
                    ..Default::default()
                }
                .resolve(spec_name)?,
            );
        }
    }
    if tasks.is_empty() {
        // No tasks declared: take every head present whose name EchoNet defines; others must be declared.
        for name in sd.tensors.keys() {
            if let Some(task) = name
                .strip_prefix("heads.")
                .and_then(|r| r.strip_suffix(".weight"))
            {
                let t = TaskSpec::echonet_default(task).ok_or_else(|| {
                    ModelError::Input(format!(
                        "{}: head `heads.{task}` is not an EchoNet task; declare it in the --config TOML ([[task]] with kind and unit)",
                        input.display()
                    ))
                })?;
                tasks.push(t);
            }
        }
    }

    let mut input_spec = spec
        .input
        .clone()
        .unwrap_or_else(|| InputSpec::facenet(299, stem_channels));
    if let Some(size) = opts.input_size {
        input_spec.height = size;
        input_spec.width = size;
    }
    if input_spec.channels != stem_channels {
        return Err(ModelError::Input(format!(
            "input.channels is {} but conv2d_1a.conv.weight in {} takes {stem_channels}",
            input_spec.channels,
            input.display()
        )));
    }
    let intended_use = opts
        .intended_use
        .clone()
        .or_else(|| spec.intended_use.clone())
        .unwrap_or_else(|| {
            "unvalidated converted weights: research use only, not for clinical use".into()
        });
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture,
        input: input_spec,
        tasks,
        dtype: opts.dtype,
        intended_use,
        provenance: Provenance {
            source: spec
                .provenance
                .source
                .clone()
                .unwrap_or_else(|| format!("converted from {}", input.display())),
            data: spec
                .provenance
                .data
                .clone()
                .unwrap_or_else(|| "not stated".into()),
            created: utc_date_today(),
            tool: format!("echonet-edge {} convert", env!("CARGO_PKG_VERSION")),
            metrics: spec.provenance.metrics.clone(),
            notes: spec.provenance.notes.clone().unwrap_or_default(),
        },
        content_hash: String::new(),
    };

    // Loading the f32 model proves every tensor is present, shaped right and used.
    let store = WeightStore::new(input, sd.tensors)?;
    let reference = EchoNetModel::from_store(
        manifest.clone(),
        &store,
        &RunOptions {
            dtype: Some(DType::F32),
            ..RunOptions::cpu()
        },
    )?;
    let deviation = if opts.dtype == StorageDtype::F32 {
        None
    } else {
        // The reduced model as a reader of the bundle will see it: weights rounded to the storage
        // dtype, computed in that dtype.
        let mut rounded = BTreeMap::new();
        for (name, t) in store.snapshot() {
            rounded.insert(name, t.to_dtype(opts.dtype.candle())?);
        }
        let rounded = WeightStore::new(input, rounded)?;
        let reduced = EchoNetModel::from_store(
            manifest.clone(),
            &rounded,
            &RunOptions {
                dtype: Some(opts.dtype.candle()),
                ..RunOptions::cpu()
            },
        )?;
        Some(measure_deviation(&reference, &reduced, opts.probe_frames)?)
    };
    let manifest = super::bundle::write_bundle(output, &manifest, &store.snapshot())?;
    Ok(Converted {
        manifest,
        dropped: sd.dropped,
        deviation,
    })
}
