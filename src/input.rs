//! Already-normalised batches for `echonet infer`: a float32 `.npy` tensor (preprocessing
//! bypassed: the parity contract). Image frames do not come through here: they go through the
//! daemon's preprocessing (`offline::prepare_still`), never a plain stretch.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error("{file}: unsupported input type (expected .npy)")]
    UnknownKind { file: PathBuf },
}

fn invalid(file: &Path, reason: impl Into<String>) -> InputError {
    InputError::Invalid {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads `path` (a `.npy`) as a batch `[N, C, H, W]` of f32 on the CPU, ready for the model.
pub fn load_batch(path: &Path) -> Result<Tensor, InputError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("npy") => load_npy(path),
        _ => Err(InputError::UnknownKind {
            file: path.to_path_buf(),
        }),
    }
}

/// A float32 `.npy` of shape `[N, C, H, W]` (or `[C, H, W]`, taken as one frame), values finite.
pub fn load_npy(path: &Path) -> Result<Tensor, InputError> {
    if !path.exists() {
        return Err(invalid(path, "no such file"));
    }
    let t = Tensor::read_npy(path)
        .map_err(|e| invalid(path, format!("not a readable .npy file: {e}")))?;
    if t.dtype() != DType::F32 {
        return Err(invalid(
            path,
            format!(
                "dtype is {:?}, expected float32 (numpy `astype(np.float32)`)",
                t.dtype()
            ),
        ));
    }
    let t = match t.rank() {
        4 => t,
        3 => t.unsqueeze(0).map_err(|e| invalid(path, e.to_string()))?,
        r => {
            return Err(invalid(
                path,
                format!("shape {:?} has rank {r}, expected [N, C, H, W]", t.dims()),
            ))
        }
    };
    let values = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(|e| invalid(path, e.to_string()))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            path,
            format!("value {} at flat index {i} is not finite", values[i]),
        ));
    }
    Ok(t)
}
