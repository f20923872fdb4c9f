//! Errors of the model layer. Every variant names the file and the tensor or field at fault, so a
//! user can act on the message without reading code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file (FIFO, device), or over the size accepted; the message names both.
    #[error("{0}")]
    File(#[from] crate::safe_file::SafeFileError),
    #[error("{file}: not a valid safetensors file ({reason})")]
    Format { file: PathBuf, reason: String },
    #[error("{file}: cannot read as a PyTorch state dict ({reason})")]
    Pickle { file: PathBuf, reason: String },
    #[error("{file}: bundle field `{field}`: {reason}")]
    Metadata {
        file: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{file}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` is stored as {found}, expected {expected}")]
    DtypeMismatch {
        file: PathBuf,
        name: String,
        expected: String,
        found: String,
    },
    #[error("{file}: unexpected tensor(s) not used by the network: {}", .names.join(", "))]
    UnexpectedTensors { file: PathBuf, names: Vec<String> },
    #[error("{file}: content hash mismatch: manifest says {expected}, contents hash to {computed} (file altered or damaged)")]
    HashMismatch {
        file: PathBuf,
        expected: String,
        computed: String,
    },
    #[error("input: {0}")]
    Input(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
