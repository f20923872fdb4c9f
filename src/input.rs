//! Files to normalised batches for `echonet infer`: a float32 `.npy` tensor already normalised
//! (preprocessing bypassed), or a PNG/JPEG frame resized and normalised as the bundle says.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::InputSpec;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error("{file}: unsupported input type (expected .npy, .png, .jpg or .jpeg)")]
    UnknownKind { file: PathBuf },
}

fn invalid(file: &Path, reason: impl Into<String>) -> InputError {
    InputError::Invalid {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads `path` as a batch `[N, C, H, W]` of f32 on the CPU, ready for the model.
pub fn load_batch(path: &Path, spec: &InputSpec) -> Result<Tensor, InputError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("npy") => load_npy(path),
        Some("png" | "jpg" | "jpeg") => load_image(path, spec),
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

/// Whether a grey frame can go in as one channel: the RGB stem then sees it replicated exactly,
/// which needs the same normalisation on every channel.
fn uniform_normalisation(spec: &InputSpec) -> bool {
    spec.mean.windows(2).all(|w| w[0] == w[1]) && spec.std.windows(2).all(|w| w[0] == w[1])
}

/// A PNG/JPEG frame, resized (bilinear) to the bundle's input size and normalised.
pub fn load_image(path: &Path, spec: &InputSpec) -> Result<Tensor, InputError> {
    let img = image::open(path).map_err(|e| invalid(path, format!("cannot decode image: {e}")))?;
    let grey_source = !img.color().has_color();
    let resized = img.resize_exact(
        spec.width as u32,
        spec.height as u32,
        image::imageops::FilterType::Triangle,
    );
    let (channels, pixels): (usize, Vec<u8>) =
        if spec.channels == 1 || (grey_source && uniform_normalisation(spec)) {
            (1, resized.to_luma8().into_raw())
        } else {
            (3, resized.to_rgb8().into_raw())
        };
    let plane = spec.height * spec.width;
    let mut data = vec![0f32; channels * plane];
    for (i, px) in pixels.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            // With one channel fed to an RGB stem, channel 0's constants equal every channel's.
            data[c * plane + i] = (v as f32 / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    Tensor::from_vec(data, (1, channels, spec.height, spec.width), &Device::Cpu)
        .map_err(|e| invalid(path, e.to_string()))
}
