//! `PUT /api/admin/datasets/{name}`'s work, without axum or SQL: an uploaded zip becomes a dataset
//! folder only when everything holds. It is unpacked into a temporary folder inside the datasets
//! root (hidden, so never listed; on the same filesystem, so the last step is one rename), checked
//! against hostile entries (`archive.rs`), searched for its ImageFolder root with the junk of
//! macOS and Windows left out and counted (`layout.rs`), its every image decoded by the worker
//! binary (the supervisor spawns `trainq-worker verify`; the server never links a decoder), and
//! described by a manifest ([`MANIFEST_FILE`]) that `GET /api/datasets` shows. Any refusal removes
//! the temporary folder ([`TempFolder`]), so nothing is left behind.

pub mod archive;
pub mod layout;

use crate::domain::job::SkippedFile;
use layout::{Found, LeftOut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use archive::{ArchiveLimits, Unpacked, MAX_FILES, MAX_RATIO};

/// The manifest's file name in an imported dataset's folder (beside `train/`, where the catalog
/// reads no images).
pub const MANIFEST_FILE: &str = "trainq-import.json";

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An entry that could write outside the dataset or is not a plain file (422).
    #[error("the archive's entry `{entry}` is refused: {why}; nothing was imported")]
    Hostile {
        /// The entry's name as the archive gives it.
        entry: String,
        /// What it is.
        why: String,
    },
    /// The archive as a whole is refused: unreadable, too large, too many files (422).
    #[error("the archive is refused: {0}; nothing was imported")]
    BadArchive(String),
    /// No ImageFolder layout found in it (422).
    #[error("the archive is not a dataset: {0}")]
    Layout(String),
    /// Files that did not fully decode, without `--skip-bad` (422).
    #[error("{} files did not fully decode: {}; fix or remove them, or import with --skip-bad to leave them out", .0.len(), listed(.0))]
    BadFiles(Vec<SkippedFile>),
    /// The server could not read or write its own folders (500).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The failure.
        source: std::io::Error,
    },
}

impl ImportError {
    /// An I/O failure while `context`.
    pub fn io(context: &'static str, source: std::io::Error) -> ImportError {
        ImportError::Io { context, source }
    }

    /// A hostile entry.
    pub fn hostile(entry: &str, why: String) -> ImportError {
        ImportError::Hostile { entry: entry.to_string(), why }
    }

    /// A refused archive.
    pub fn bad_archive(why: String) -> ImportError {
        ImportError::BadArchive(why)
    }

    /// A tree without the layout.
    pub fn layout(why: String) -> ImportError {
        ImportError::Layout(why)
    }
}

/// The first files of a list, by name with their reasons, for an error message.
fn listed(files: &[SkippedFile]) -> String {
    let shown: Vec<String> = files.iter().take(20).map(|file| format!("`{}` ({})", file.path, file.reason)).collect();
    let more =
        if files.len() > shown.len() { format!(" and {} more", files.len() - shown.len()) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// What an import wrote, kept in the dataset's folder as [`MANIFEST_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    /// The dataset's name.
    pub name: String,
    /// When it was imported, Unix seconds.
    pub imported_at: i64,
    /// The folder of the archive that was the ImageFolder root (`chest_xray`; empty: the top).
    pub source_root: String,
    /// Images kept.
    pub images: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Images per split and class.
    pub splits: BTreeMap<String, BTreeMap<String, usize>>,
    /// Files of the archive left out, by why (`macosx`, `apple_double`, `ds_store`, `thumbs_db`,
    /// `nested_duplicate`, `outside_layout`, `bad`).
    #[schema(value_type = BTreeMap<String, usize>)]
    pub left_out: BTreeMap<LeftOut, usize>,
    /// The files that did not fully decode and were left out (`--skip-bad`), with why.
    pub bad_files: Vec<SkippedFile>,
}

impl Manifest {
    /// The manifest of the dataset folder `dir`, when an import wrote one.
    pub fn read(dir: &Path) -> Option<Manifest> {
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).ok()?).ok()
    }
}

/// A temporary folder that is removed when dropped, whatever went wrong.
#[derive(Debug)]
pub struct TempFolder(PathBuf);

impl TempFolder {
    /// Creates `.import-<name>-<random>` inside the datasets root: hidden from the catalog, and on
    /// the datasets' filesystem so the dataset moves into place with one rename.
    pub fn create(datasets_root: &Path, name: &str) -> Result<TempFolder, ImportError> {
        let path = datasets_root.join(format!(".import-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path).map_err(|err| ImportError::io("creating the import's temporary folder", err))?;
        Ok(TempFolder(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Where the upload is spooled.
    pub fn upload(&self) -> PathBuf {
        self.0.join("upload.zip")
    }

    /// Where the archive is unpacked.
    pub fn unpacked(&self) -> PathBuf {
        self.0.join("unpacked")
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), %err, "could not remove an import's temporary folder");
            }
        }
    }
}

/// Unpacks the spooled upload and finds the dataset in it (blocking: run it off the runtime).
pub fn unpack_and_find(
    temp: &TempFolder,
    limits: ArchiveLimits,
    progress: &mut dyn FnMut(&Unpacked),
) -> Result<(Unpacked, Found), ImportError> {
    let unpacked = temp.unpacked();
    std::fs::create_dir(&unpacked).map_err(|err| ImportError::io("creating the unpack folder", err))?;
    let written = archive::unpack_zip(&temp.upload(), &unpacked, limits, progress)?;
    // The upload is no longer needed: give its bytes back before the checks.
    let _ = std::fs::remove_file(temp.upload());
    Ok((written, layout::find(&unpacked)?))
}

/// What an import is asked to do besides unpacking.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The dataset's name.
    pub name: String,
    /// The datasets root.
    pub datasets_root: PathBuf,
    /// Leave files that do not decode out instead of refusing the archive.
    pub skip_bad: bool,
    /// Put it in place of a dataset of the same name.
    pub replace: bool,
}

/// Lays the checked dataset out, writes its manifest and renames it into place (blocking).
/// `bad` are the files the worker could not fully decode, relative to the found root.
pub fn finish(
    temp: &TempFolder,
    found: Found,
    mut bad: Vec<SkippedFile>,
    options: &Finish,
) -> Result<Manifest, ImportError> {
    // The worker checks every file of the class folders; junk there is already counted as such.
    bad.retain(|file| found.images.iter().any(|image| Path::new(&file.path) == image));
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    if !bad.is_empty() && !options.skip_bad {
        return Err(ImportError::BadFiles(bad));
    }
    let root = temp.unpacked().join(&found.root);
    let dataset = temp.path().join("dataset");
    std::fs::create_dir(&dataset).map_err(|err| ImportError::io("creating the dataset folder", err))?;
    let is_bad = |path: &Path| bad.iter().any(|file| Path::new(&file.path) == path);
    let (mut splits, mut images, mut bytes): (BTreeMap<String, BTreeMap<String, usize>>, usize, u64) =
        (BTreeMap::new(), 0, 0);
    for image in &found.images {
        if is_bad(image) {
            continue;
        }
        let target = dataset.join(image);
        std::fs::create_dir_all(target.parent().expect("a class folder"))
            .map_err(|err| ImportError::io("creating a class folder", err))?;
        std::fs::rename(root.join(image), &target).map_err(|err| ImportError::io("moving an image", err))?;
        bytes += std::fs::metadata(&target).map(|metadata| metadata.len()).unwrap_or(0);
        images += 1;
        let mut parts = image.iter().map(|part| part.to_string_lossy().into_owned());
        let (split, class) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        *splits.entry(split).or_default().entry(class).or_default() += 1;
    }
    let mut left_out = found.left_out;
    if !bad.is_empty() {
        left_out.insert(LeftOut::Bad, bad.len());
    }
    let manifest = Manifest {
        name: options.name.clone(),
        imported_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|age| age.as_secs() as i64)
            .unwrap_or(0),
        source_root: found.root.to_string_lossy().into_owned(),
        images,
        bytes,
        splits,
        left_out,
        bad_files: bad,
    };
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|err| ImportError::io("writing the manifest", err.into()))?;
    crate::files::write_atomic_bytes(&dataset.join(MANIFEST_FILE), &text)
        .map_err(|err| ImportError::io("writing the manifest", err))?;
    // The catalog must accept what is about to be served.
    crate::catalog::datasets::describe(&options.name, &dataset).map_err(|err| ImportError::layout(err.to_string()))?;
    let target = options.datasets_root.join(&options.name);
    let replaced = temp.path().join("replaced");
    let replacing = options.replace && target.exists();
    if replacing {
        // The old folder moves into the temporary one first, which is removed on drop: the name
        // is absent only between two renames.
        std::fs::rename(&target, &replaced).map_err(|err| ImportError::io("moving the replaced dataset aside", err))?;
    }
    if let Err(err) = std::fs::rename(&dataset, &target) {
        if replacing {
            // Nothing accepted is lost: the old dataset goes back where it was.
            let _ = std::fs::rename(&replaced, &target);
        }
        return Err(ImportError::io("moving the dataset into place", err));
    }
    Ok(manifest)
}
