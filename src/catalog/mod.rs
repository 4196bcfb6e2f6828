//! What is on disk for jobs to use: datasets in ImageFolder layout and pretrained weights files.
//! Looked up on every request, so files an admin adds while the server runs are seen at once; a
//! dataset's image counts come from an index that is read again only when one of its folders'
//! modification times changed (`datasets::describe`).

pub mod datasets;
pub mod weights;

pub use datasets::{DatasetInfo, SplitInfo};
pub use weights::WeightsInfo;

/// Why a catalog lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The name is not a plain folder name.
    #[error("`{0}` is not a valid name: use letters, digits, '.', '_' and '-', not starting with '.'")]
    BadName(String),
    /// No such dataset.
    #[error("no dataset `{name}`; available: {available}")]
    UnknownDataset {
        /// The requested name.
        name: String,
        /// Comma-separated names that exist.
        available: String,
    },
    /// The folder exists but is not an ImageFolder dataset.
    #[error("dataset `{name}` is not usable: {reason}")]
    BadLayout {
        /// The dataset's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the folder failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path being read.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Accepts plain folder or file names only, so a name can never leave its folder.
pub fn check_plain_name(name: &str) -> Result<(), CatalogError> {
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(())
    } else {
        Err(CatalogError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_their_folder() {
        for bad in ["", "..", ".hidden", "a/b", "../etc", "a\\b", "x%2e%2e", "with space"] {
            assert!(check_plain_name(bad).is_err(), "{bad:?}");
        }
        for good in ["chest_xray", "demo-1", "vgg16.safetensors"] {
            check_plain_name(good).unwrap();
        }
    }
}
