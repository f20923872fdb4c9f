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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub model: ModelConfig,
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
    /// `auto` (the bundle's storage dtype), `f32`, `f16`, or `bf16` (CUDA only). Default `auto`.
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

impl Config {
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: format!("at `{}`: {}", e.path(), e.inner()),
        })
    }

    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, file)
    }
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
    fn defaults_apply() {
        let c = Config::from_toml_str("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.model.device, "cpu");
    }
}
