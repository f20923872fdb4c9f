//! `models/MANIFEST.toml`: the bundles shipped with the product, which one is the default, and
//! the content hash each must carry (so a swapped or damaged file is caught before use).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ModelError, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// `id` of the bundle the daemon loads when none is configured; absent when none is shipped.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default, rename = "model")]
    pub models: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub id: String,
    /// Bundle file, relative to the catalog's folder.
    pub file: PathBuf,
    /// Must equal the bundle's own `content_hash`.
    pub content_hash: String,
    pub intended_use: String,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let catalog: Catalog = toml::from_str(&text).map_err(|e| ModelError::Metadata {
            file: path.to_path_buf(),
            field: "MANIFEST.toml".into(),
            reason: e.to_string(),
        })?;
        if let Some(d) = &catalog.default {
            if !catalog.models.iter().any(|m| &m.id == d) {
                return Err(ModelError::Metadata {
                    file: path.to_path_buf(),
                    field: "default".into(),
                    reason: format!("names {d:?}, which no [[model]] entry has as its id"),
                });
            }
        }
        Ok(catalog)
    }

    /// The folder that holds the shipped bundles: `$ECHONET_MODELS_DIR`, else `./models`, else the
    /// `models/` folder of the source tree this binary was built from.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("ECHONET_MODELS_DIR") {
            return PathBuf::from(dir);
        }
        let local = PathBuf::from("models");
        if local.join("MANIFEST.toml").exists() {
            return local;
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
    }

    pub fn entry_path(dir: &Path, entry: &CatalogEntry) -> PathBuf {
        dir.join(&entry.file)
    }
}
