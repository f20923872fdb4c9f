//! Model bundles: one safetensors file whose metadata entry `echonet.manifest` (JSON) says what
//! the network is, how to preprocess for it, which tasks it answers, what it is for and where it
//! came from, plus a SHA-256 content hash over manifest and tensors that the loader verifies.
//!
//! Tensors keep facenet-pytorch's names (`conv2d_1a.conv.weight`, `repeat_2.3.branch1.1.bn.running_var`,
//! ...) in unfolded form, so a bundle stays a faithful copy of the trained weights; folding happens
//! at load time in f32.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::arch::{Architecture, MIN_INPUT_SIZE};
use super::cpu_plan::qgemm::ActQuant;
use super::cpu_plan::ConvQuant;
use super::error::{ModelError, Result};
use super::heads::TaskSpec;
use super::ood::{OodInfo, OodStats, OOD_KEY};
use super::quantize::{Quantization, QUANT_KEY};
use super::weights::WeightStore;

pub const BUNDLE_FORMAT: &str = "echonet-bundle";
pub const BUNDLE_FORMAT_VERSION: u32 = 1;
/// safetensors metadata key holding the manifest JSON.
pub const MANIFEST_KEY: &str = "echonet.manifest";

/// Storage precision of a bundle's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    F32,
    F16,
    Bf16,
}

impl StorageDtype {
    pub fn candle(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
    fn safetensors(self) -> StDtype {
        match self {
            Self::F32 => StDtype::F32,
            Self::F16 => StDtype::F16,
            Self::Bf16 => StDtype::BF16,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for StorageDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("dtype {other:?}: expected f32, f16 or bf16")),
        }
    }
}

/// How a frame becomes the network's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Pixels; the frame (the cropped scan sector) is resized to height x width.
    pub height: usize,
    pub width: usize,
    /// 3 for an RGB stem (a grey frame is fed exactly, see `InceptionResnetV1`), 1 for a grey stem.
    pub channels: usize,
    /// Per channel: `normalised = (pixel / 255 - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl InputSpec {
    /// facenet-pytorch's `fixed_image_standardization`, (x - 127.5) / 128, in the form above.
    pub fn facenet(size: usize, channels: usize) -> Self {
        Self {
            height: size,
            width: size,
            channels,
            mean: vec![127.5 / 255.0; channels],
            std: vec![128.0 / 255.0; channels],
        }
    }

    fn check(&self) -> std::result::Result<(), (String, String)> {
        if self.channels != 1 && self.channels != 3 {
            return Err((
                "input.channels".into(),
                format!("is {}, expected 1 or 3", self.channels),
            ));
        }
        for (field, v) in [("input.mean", &self.mean), ("input.std", &self.std)] {
            if v.len() != self.channels {
                return Err((
                    field.into(),
                    format!(
                        "has {} values, expected one per channel ({})",
                        v.len(),
                        self.channels
                    ),
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err((field.into(), "contains a non-finite value".into()));
            }
        }
        if self.std.iter().any(|&s| s <= 0.0) {
            return Err(("input.std".into(), "values must be > 0".into()));
        }
        if self.height < MIN_INPUT_SIZE || self.width < MIN_INPUT_SIZE {
            return Err((
                "input.height/width".into(),
                format!(
                    "{}x{} is below the network's minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}",
                    self.height, self.width
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Where the weights came from (a training run, a converted file).
    pub source: String,
    /// What data they were trained on.
    pub data: String,
    /// UTC date the bundle was written (YYYY-MM-DD).
    pub created: String,
    /// The program that wrote the bundle.
    pub tool: String,
    /// Evaluation metrics on held-out data, by name (e.g. `ef_mae`), if any.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub architecture: Architecture,
    pub input: InputSpec,
    pub tasks: Vec<TaskSpec>,
    pub dtype: StorageDtype,
    /// Shown wherever the model's numbers are shown, e.g. "demo, trained on synthetic phantom, not
    /// for clinical use".
    pub intended_use: String,
    pub provenance: Provenance,
    /// `sha256:<hex>` over this manifest (with this field empty) and every tensor.
    #[serde(default)]
    pub content_hash: String,
}

impl Manifest {
    /// Checks every field a reader relies on; the error names the field.
    pub fn check(&self, file: &Path) -> Result<()> {
        let bad = |field: &str, reason: String| ModelError::Metadata {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        if self.format != BUNDLE_FORMAT {
            return Err(bad(
                "format",
                format!("is {:?}, expected {BUNDLE_FORMAT:?}", self.format),
            ));
        }
        if self.format_version != BUNDLE_FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!(
                    "is {}, this build reads version {BUNDLE_FORMAT_VERSION}",
                    self.format_version
                ),
            ));
        }
        self.architecture
            .check()
            .map_err(|r| bad("architecture", r))?;
        self.input.check().map_err(|(f, r)| bad(&f, r))?;
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.tasks {
            t.check().map_err(|r| bad("tasks", r))?;
            if !seen.insert(&t.name) {
                return Err(bad("tasks", format!("task {:?} listed twice", t.name)));
            }
        }
        if self.intended_use.trim().is_empty() {
            return Err(bad(
                "intended_use",
                "is empty: every bundle must say what it may be used for".into(),
            ));
        }
        Ok(())
    }

    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }
}

/// A bundle read from disk and verified: manifest plus its tensors (f32, CPU, unfolded).
pub struct Bundle {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub store: WeightStore,
    /// The int8 section, when the bundle was made by `echonet quantize`.
    pub quantization: Option<QuantizedWeights>,
    /// The out-of-distribution statistics (`echonet train`, `echonet ood-fit`); None: the gate
    /// is off for this bundle.
    pub ood: Option<OodStats>,
}

/// An int8 bundle's section and its tables, by plan index (None where the layer stays f32).
#[derive(Debug, Clone)]
pub struct QuantizedWeights {
    pub info: Quantization,
    pub table: Vec<Option<ConvQuant>>,
}

fn hash_contents<'a>(
    manifest: &Manifest,
    quant: Option<&Quantization>,
    ood: Option<&OodInfo>,
    tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize], &'a [u8])>,
) -> String {
    let mut unhashed = manifest.clone();
    unhashed.content_hash.clear();
    let mut h = Sha256::new();
    h.update(b"echonet-bundle/1\0");
    // serde_json writes struct fields in declaration order and maps sorted (BTreeMap): stable.
    h.update(serde_json::to_vec(&unhashed).unwrap_or_default());
    if let Some(q) = quant {
        // Only int8 bundles hash a section, so every other bundle keeps its hash.
        h.update(b"\0echonet.quantization\0");
        h.update(serde_json::to_vec(q).unwrap_or_default());
    }
    if let Some(o) = ood {
        // Likewise only bundles with OOD statistics hash this section (its tensors are hashed
        // with the others, by name).
        h.update(b"\0echonet.ood\0");
        h.update(serde_json::to_vec(o).unwrap_or_default());
    }
    for (name, dtype, shape, data) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(dtype.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn dtype_name(d: StDtype) -> String {
    format!("{d:?}").to_lowercase()
}

/// Reads, checks and verifies a bundle. Every failure names the file and the field or tensor.
/// Largest bundle file accepted. The full-width network in f32 is about 100 MB; the cap leaves
/// room for wider variants while refusing a wrong path (`/dev/zero`, a disk image) at once.
pub const MAX_BUNDLE_BYTES: u64 = 2 << 30;

pub fn read_bundle(path: &Path) -> Result<Bundle> {
    let bytes = crate::safe_file::read_capped(path, MAX_BUNDLE_BYTES, "a model bundle")?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Format {
        file: path.to_path_buf(),
        reason: format!("{e:?} — the file may be truncated or not a safetensors file"),
    })?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::Format {
        file: path.to_path_buf(),
        reason: format!("{e:?}"),
    })?;
    let missing_manifest = || {
        ModelError::Metadata {
        file: path.to_path_buf(),
        field: MANIFEST_KEY.into(),
        reason: "absent: this is a plain safetensors file, not an echonet bundle (make one with `echonet convert`)".into(),
    }
    };
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(MANIFEST_KEY))
        .ok_or_else(missing_manifest)?;
    let manifest: Manifest = serde_json::from_str(json).map_err(|e| ModelError::Metadata {
        file: path.to_path_buf(),
        field: MANIFEST_KEY.into(),
        reason: format!("invalid manifest JSON: {e}"),
    })?;
    manifest.check(path)?;
    let metadata = meta.metadata();
    let quant: Option<Quantization> = read_section(
        path,
        metadata.as_ref(),
        QUANT_KEY,
        "quantization",
        Quantization::check,
    )?;
    let ood_info: Option<OodInfo> = read_section(
        path,
        metadata.as_ref(),
        OOD_KEY,
        "OOD statistics",
        OodInfo::check,
    )?;

    let expected_dtype = manifest.dtype.safetensors();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    let mut dnames = Vec::with_capacity(names.len());
    for name in &names {
        let view = st.tensor(name).map_err(|e| ModelError::Format {
            file: path.to_path_buf(),
            reason: format!("tensor `{name}`: {e:?}"),
        })?;
        if name.starts_with("ood.") && ood_info.is_none() {
            return Err(ModelError::Metadata {
                file: path.to_path_buf(),
                field: OOD_KEY.into(),
                reason: format!("absent, but the bundle holds OOD tensor `{name}`"),
            });
        }
        let expected = match (name.starts_with("int8."), &quant) {
            _ if name.starts_with("ood.") => StDtype::F32,
            (true, None) => {
                return Err(ModelError::Metadata {
                    file: path.to_path_buf(),
                    field: QUANT_KEY.into(),
                    reason: format!("absent, but the bundle holds int8 tensor `{name}`"),
                })
            }
            (true, Some(_)) if name.ends_with(".weight") => StDtype::I8,
            (true, Some(_)) => StDtype::F32,
            (false, _) => expected_dtype,
        };
        if view.dtype() != expected {
            return Err(ModelError::DtypeMismatch {
                file: path.to_path_buf(),
                name: name.clone(),
                expected: dtype_name(expected),
                found: dtype_name(view.dtype()),
            });
        }
        dnames.push(dtype_name(expected));
        views.push(view);
    }
    let computed = hash_contents(
        &manifest,
        quant.as_ref(),
        ood_info.as_ref(),
        names
            .iter()
            .zip(&views)
            .zip(&dnames)
            .map(|((n, v), d)| (n.as_str(), d.as_str(), v.shape(), v.data())),
    );
    if computed != manifest.content_hash {
        return Err(ModelError::HashMismatch {
            file: path.to_path_buf(),
            expected: manifest.content_hash.clone(),
            computed,
        });
    }
    let mut tensors = BTreeMap::new();
    let mut int8: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut ood_tensors: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, view) in names.into_iter().zip(views) {
        if name.starts_with("ood.") {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            ood_tensors.insert(name, values);
            continue;
        }
        if name.starts_with("int8.") {
            int8.insert(name, (view.shape().to_vec(), view.data().to_vec()));
            continue;
        }
        let t = Tensor::from_raw_buffer(
            view.data(),
            manifest.dtype.candle(),
            view.shape(),
            &Device::Cpu,
        )?;
        tensors.insert(name, t);
    }
    let store = WeightStore::new(path, tensors)?;
    let quantization = match quant {
        Some(info) => Some(int8_table(path, info, int8)?),
        None => None,
    };
    let ood = match ood_info {
        Some(info) => Some(ood_stats(path, &manifest, info, ood_tensors)?),
        None => None,
    };
    Ok(Bundle {
        path: path.to_path_buf(),
        manifest,
        store,
        quantization,
        ood,
    })
}

/// The OOD section from its tensors: exactly the three, in the lengths the info says, over
/// the network's pooled features.
fn ood_stats(
    path: &Path,
    manifest: &Manifest,
    info: OodInfo,
    mut tensors: BTreeMap<String, Vec<f32>>,
) -> Result<OodStats> {
    let bad = |field: String, reason: String| ModelError::Metadata {
        file: path.to_path_buf(),
        field,
        reason,
    };
    let features = manifest.architecture.feature_channels();
    if info.feature_dim != features {
        return Err(bad(
            format!("{OOD_KEY}.feature_dim"),
            format!(
                "is {}, the network's pooled features are {features} wide",
                info.feature_dim
            ),
        ));
    }
    let mut take = |name: &str| {
        tensors.remove(name).ok_or_else(|| {
            bad(
                name.to_string(),
                format!("absent, but {OOD_KEY} is present"),
            )
        })
    };
    let mean = take(super::ood::TENSOR_MEAN)?;
    let directions = take(super::ood::TENSOR_DIRECTIONS)?;
    let variances = take(super::ood::TENSOR_VARIANCES)?;
    if !tensors.is_empty() {
        return Err(ModelError::UnexpectedTensors {
            file: path.to_path_buf(),
            names: tensors.into_keys().collect(),
        });
    }
    OodStats::new(info, mean, directions, variances).map_err(|e| match e {
        super::ood::OodError::Invalid { field, reason } => {
            bad(format!("{OOD_KEY}: {field}"), reason)
        }
        other => bad(OOD_KEY.into(), other.to_string()),
    })
}

/// The int8 tables of a section from its tensors; every int8 layer needs its two tensors in
/// its layer's shape, and no tensor may be left over.
fn int8_table(
    path: &Path,
    info: Quantization,
    mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
) -> Result<QuantizedWeights> {
    let mut table = Vec::with_capacity(info.layers.len());
    for l in &info.layers {
        let (act_scale, act_zp) = match (l.precision.as_str(), l.act_scale, l.act_zero_point) {
            ("int8", Some(s), Some(z)) => (s, z),
            _ => {
                table.push(None);
                continue;
            }
        };
        let (wname, sname) = Quantization::tensor_names(l.index);
        let [cout, cin, kh, kw] = l.shape;
        let mut take = |name: &str, shape: Vec<usize>| -> Result<Vec<u8>> {
            let (found, data) = tensors
                .remove(name)
                .ok_or_else(|| ModelError::MissingTensor {
                    file: path.to_path_buf(),
                    name: name.to_string(),
                    expected: shape.clone(),
                })?;
            if found != shape {
                return Err(ModelError::ShapeMismatch {
                    file: path.to_path_buf(),
                    name: name.to_string(),
                    expected: shape,
                    found,
                });
            }
            Ok(data)
        };
        let weights: Vec<i8> = take(&wname, vec![cout, cin, kh, kw])?
            .into_iter()
            .map(|b| b as i8)
            .collect();
        let scales: Vec<f32> = take(&sname, vec![cout])?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = weights
            .iter()
            .position(|&v| (v as i32).abs() > super::cpu_plan::qgemm::WEIGHT_LEVELS)
        {
            return Err(ModelError::Metadata {
                file: path.to_path_buf(),
                field: wname,
                reason: format!("value {} at {i} is outside -63..=63", weights[i]),
            });
        }
        if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(ModelError::Metadata {
                file: path.to_path_buf(),
                field: sname,
                reason: format!("scale {} at {i} is not positive", scales[i]),
            });
        }
        table.push(Some(ConvQuant {
            weights,
            scales,
            act: ActQuant {
                scale: act_scale,
                zero_point: act_zp,
            },
        }));
    }
    if !tensors.is_empty() {
        return Err(ModelError::UnexpectedTensors {
            file: path.to_path_buf(),
            names: tensors.into_keys().collect(),
        });
    }
    Ok(QuantizedWeights { info, table })
}

fn tensor_bytes(t: &Tensor, dtype: StorageDtype) -> Result<Vec<u8>> {
    let flat = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match dtype {
        StorageDtype::F32 => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        StorageDtype::F16 => flat
            .to_dtype(DType::F16)?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        StorageDtype::Bf16 => flat
            .to_dtype(DType::BF16)?
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

/// Writes `tensors` in `manifest.dtype` with the manifest as metadata; fills in and returns the
/// manifest with its content hash. Writes to a temporary file first so a crash never leaves a
/// half-written bundle under the final name.
pub fn write_bundle(
    path: &Path,
    manifest: &Manifest,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<Manifest> {
    write_bundle_with(path, manifest, tensors, None, None)
}

/// [`write_bundle`] with an int8 section: `quant.info` as metadata [`QUANT_KEY`] and each int8
/// layer's weights and scales as tensors `int8.<index>.weight` / `.scale`.
pub fn write_bundle_int8(
    path: &Path,
    manifest: &Manifest,
    tensors: &BTreeMap<String, Tensor>,
    quant: &QuantizedWeights,
) -> Result<Manifest> {
    quant.info.check().map_err(|(f, r)| ModelError::Metadata {
        file: path.to_path_buf(),
        field: format!("{QUANT_KEY}.{f}"),
        reason: r,
    })?;
    write_bundle_with(path, manifest, tensors, Some(quant), None)
}

/// [`write_bundle`] with whichever optional sections the bundle has: int8 (see
/// [`write_bundle_int8`]) and the OOD statistics (metadata [`OOD_KEY`], f32 tensors `ood.*`).
/// Rewriting a bundle read with [`read_bundle`] keeps what it had when given its sections.
pub fn write_bundle_sections(
    path: &Path,
    manifest: &Manifest,
    tensors: &BTreeMap<String, Tensor>,
    quant: Option<&QuantizedWeights>,
    ood: Option<&OodStats>,
) -> Result<Manifest> {
    if let Some(q) = quant {
        q.info.check().map_err(|(f, r)| ModelError::Metadata {
            file: path.to_path_buf(),
            field: format!("{QUANT_KEY}.{f}"),
            reason: r,
        })?;
    }
    write_bundle_with(path, manifest, tensors, quant, ood)
}

fn write_bundle_with(
    path: &Path,
    manifest: &Manifest,
    tensors: &BTreeMap<String, Tensor>,
    quant: Option<&QuantizedWeights>,
    ood: Option<&OodStats>,
) -> Result<Manifest> {
    manifest.check(path)?;
    let storage = manifest.dtype.safetensors();
    let mut encoded: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> =
        Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        encoded.push((
            name.clone(),
            storage,
            t.dims().to_vec(),
            tensor_bytes(t, manifest.dtype)?,
        ));
    }
    if let Some(q) = quant {
        for (l, conv) in q.info.layers.iter().zip(&q.table) {
            let Some(conv) = conv else { continue };
            let (wname, sname) = Quantization::tensor_names(l.index);
            let [cout, cin, kh, kw] = l.shape;
            encoded.push((
                wname,
                StDtype::I8,
                vec![cout, cin, kh, kw],
                conv.weights.iter().map(|&v| v as u8).collect(),
            ));
            encoded.push((
                sname,
                StDtype::F32,
                vec![cout],
                conv.scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
    }
    if let Some(o) = ood {
        o.info.check().map_err(|(f, r)| ModelError::Metadata {
            file: path.to_path_buf(),
            field: format!("{OOD_KEY}.{f}"),
            reason: r,
        })?;
        let (d, k) = (o.info.feature_dim, o.info.components);
        for (name, shape, values) in [
            (super::ood::TENSOR_MEAN, vec![d], &o.mean),
            (super::ood::TENSOR_DIRECTIONS, vec![k, d], &o.directions),
            (super::ood::TENSOR_VARIANCES, vec![k], &o.variances),
        ] {
            encoded.push((
                name.to_string(),
                StDtype::F32,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
    }
    // The reader hashes in name order.
    encoded.sort_by(|a, b| a.0.cmp(&b.0));
    let mut manifest = manifest.clone();
    let dnames: Vec<String> = encoded.iter().map(|e| dtype_name(e.1)).collect();
    manifest.content_hash = hash_contents(
        &manifest,
        quant.map(|q| &q.info),
        ood.map(|o| &o.info),
        encoded
            .iter()
            .zip(&dnames)
            .map(|((n, _, s, d), dn)| (n.as_str(), dn.as_str(), s.as_slice(), d.as_slice())),
    );
    let mut views = Vec::with_capacity(encoded.len());
    for (name, dtype, shape, data) in &encoded {
        let view =
            TensorView::new(*dtype, shape.clone(), data).map_err(|e| ModelError::Format {
                file: path.to_path_buf(),
                reason: format!("tensor `{name}`: {e:?}"),
            })?;
        views.push((name.clone(), view));
    }
    let json = serde_json::to_string(&manifest).map_err(|e| ModelError::Metadata {
        file: path.to_path_buf(),
        field: MANIFEST_KEY.into(),
        reason: e.to_string(),
    })?;
    let mut metadata: HashMap<String, String> =
        [(MANIFEST_KEY.to_string(), json)].into_iter().collect();
    if let Some(q) = quant {
        let qjson = serde_json::to_string(&q.info).map_err(|e| ModelError::Metadata {
            file: path.to_path_buf(),
            field: QUANT_KEY.into(),
            reason: e.to_string(),
        })?;
        metadata.insert(QUANT_KEY.to_string(), qjson);
    }
    if let Some(o) = ood {
        let ojson = serde_json::to_string(&o.info).map_err(|e| ModelError::Metadata {
            file: path.to_path_buf(),
            field: OOD_KEY.into(),
            reason: e.to_string(),
        })?;
        metadata.insert(OOD_KEY.to_string(), ojson);
    }
    let bytes =
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| ModelError::Format {
            file: path.to_path_buf(),
            reason: format!("{e:?}"),
        })?;
    let tmp = path.with_extension("safetensors.partial");
    let io = |source| ModelError::Io {
        file: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(manifest)
}

/// Today's UTC date as YYYY-MM-DD (for `provenance.created`).
pub fn utc_date_today() -> String {
    crate::timefmt::utc_date(std::time::SystemTime::now())
}

/// A JSON section of the bundle's metadata under `key`, parsed and checked (`check` names the
/// field at fault); absent is `None`. Every error names the file and the field.
fn read_section<T: serde::de::DeserializeOwned>(
    path: &Path,
    metadata: Option<&std::collections::HashMap<String, String>>,
    key: &str,
    what: &str,
    check: impl Fn(&T) -> std::result::Result<(), (String, String)>,
) -> std::result::Result<Option<T>, ModelError> {
    let Some(json) = metadata.and_then(|m| m.get(key)) else {
        return Ok(None);
    };
    let section: T = serde_json::from_str(json).map_err(|e| ModelError::Metadata {
        file: path.to_path_buf(),
        field: key.into(),
        reason: format!("invalid {what} JSON: {e}"),
    })?;
    check(&section).map_err(|(f, r)| ModelError::Metadata {
        file: path.to_path_buf(),
        field: format!("{key}.{f}"),
        reason: r,
    })?;
    Ok(Some(section))
}
