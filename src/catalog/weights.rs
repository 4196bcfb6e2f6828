//! Pretrained backbone files: `<weights dir>/<backbone>.safetensors` with torchvision names.

use crate::domain::backbone::Backbone;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// An installed weights file.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsInfo {
    /// The backbone it initialises.
    pub backbone: String,
    /// File name inside the weights folder.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// The weights file for `backbone`, if installed.
pub fn find(weights_dir: &Path, backbone: Backbone) -> Option<PathBuf> {
    let path = weights_dir.join(backbone.weights_file_name());
    path.is_file().then_some(path)
}

/// Every installed weights file for a known backbone.
pub fn list(weights_dir: &Path) -> Vec<WeightsInfo> {
    Backbone::ALL
        .into_iter()
        .filter_map(|backbone| {
            let path = find(weights_dir, backbone)?;
            let bytes = std::fs::metadata(&path).ok()?.len();
            Some(WeightsInfo { backbone: backbone.name().to_string(), file: backbone.weights_file_name(), bytes })
        })
        .collect()
}
