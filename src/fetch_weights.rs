//! `trainq weights fetch`: downloads a backbone's pretrained weights into the folder `serve` reads,
//! checks every tensor's name, shape and type against torchvision's layout
//! ([`weights_layout::check_file`]), and only then renames the file into place. The weights folder
//! therefore never holds a half-downloaded or foreign file under the name jobs load.

use crate::config::WeightsFetchArgs;
use crate::domain::backbone::Backbone;
use crate::domain::weights_layout::{self, WeightsCheck, WeightsError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Where `fetch` downloads from without `--url`: torchvision's own ImageNet weights
/// (`IMAGENET1K_V1`), converted to safetensors with torchvision's names by timm. `None` where no
/// such copy is published (EfficientNet-B0: timm's `efficientnet_b0` files are timm's own
/// training, under timm's names), which the admin converts from torchvision's file instead.
pub fn default_url(backbone: Backbone) -> Option<&'static str> {
    match backbone {
        Backbone::Vgg16 => Some("https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/model.safetensors"),
        Backbone::InceptionV3 => {
            Some("https://huggingface.co/timm/inception_v3.tv_in1k/resolve/main/model.safetensors")
        }
        // timm's ResNet and DenseNet keep torchvision's module names (`layer1.0.downsample.0`,
        // `features.denseblock1.denselayer1.norm1`), so these files load without renaming.
        Backbone::ResNet50 => Some("https://huggingface.co/timm/resnet50.tv_in1k/resolve/main/model.safetensors"),
        Backbone::DenseNet121 => Some("https://huggingface.co/timm/densenet121.tv_in1k/resolve/main/model.safetensors"),
        Backbone::EfficientNetB0 => None,
    }
}

/// Why nothing was installed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No `--url` was given and no safetensors copy of torchvision's weights is published.
    #[error(
        "no safetensors copy of torchvision's {backbone} ImageNet weights is published; make one from torchvision's own file with `python deploy/convert_torchvision_weights.py {backbone} <weights dir>` (see the README), or pass --url",
        backbone = backbone.name()
    )]
    NoPublishedCopy {
        /// The backbone asked for.
        backbone: Backbone,
    },
    /// The download could not start or broke off.
    #[error("downloading {url} failed")]
    Http {
        /// What was requested.
        url: String,
        /// The cause (DNS, connection, TLS, timeout, …).
        #[source]
        source: reqwest::Error,
    },
    /// The server answered, but not with the file.
    #[error("{url} answered {status}; nothing was installed (check the URL, or pass another with --url)")]
    Status {
        /// What was requested.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
    },
    /// The weights folder or the file in it could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The folder or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file arrived but is not this backbone's weights in torchvision's layout.
    #[error("the file from {url} cannot serve as {backbone} weights; nothing was installed", backbone = backbone.name())]
    Check {
        /// What was downloaded.
        url: String,
        /// The backbone it was checked for.
        backbone: Backbone,
        /// The first problem found.
        #[source]
        source: WeightsError,
    },
}

/// A finished download.
struct Download {
    bytes: u64,
    sha256: String,
}

/// How often a long download reports its progress.
const PROGRESS_EVERY_BYTES: u64 = 64 << 20;

/// Runs `trainq weights fetch`: downloads to `<dir>/<backbone>.safetensors.partial`, checks it,
/// renames it to `<dir>/<backbone>.safetensors` (replacing an older file), and prints what was
/// installed. On any failure the partial file is removed.
pub async fn fetch(args: WeightsFetchArgs) -> Result<(), FetchError> {
    let backbone = args.backbone;
    let dir = args.weights_dir();
    tokio::fs::create_dir_all(&dir).await.map_err(|source| FetchError::Write { path: dir.clone(), source })?;
    let target = dir.join(backbone.weights_file_name());
    let partial = dir.join(format!("{}.partial", backbone.weights_file_name()));
    let url = match (&args.url, default_url(backbone)) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) => url.to_string(),
        (None, None) => return Err(FetchError::NoPublishedCopy { backbone }),
    };

    match install(backbone, &url, &partial, &target).await {
        Ok((download, check)) => {
            println!("{}", summary(backbone, &target, &url, &download, &check));
            Ok(())
        }
        Err(err) => {
            if let Err(remove) = tokio::fs::remove_file(&partial).await {
                if remove.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %partial.display(), error = %remove, "could not remove the partial download");
                }
            }
            Err(err)
        }
    }
}

/// Downloads to `partial`, checks it, renames it to `target`; the caller cleans up on failure.
async fn install(
    backbone: Backbone,
    url: &str,
    partial: &Path,
    target: &Path,
) -> Result<(Download, WeightsCheck), FetchError> {
    let download = download(url, partial).await?;
    // Reading the header is a few kilobytes; not worth a blocking-pool hop in a CLI command.
    let check = weights_layout::check_file(backbone, partial).map_err(|source| FetchError::Check {
        url: url.to_string(),
        backbone,
        source,
    })?;
    tokio::fs::rename(partial, target)
        .await
        .map_err(|source| FetchError::Write { path: target.to_path_buf(), source })?;
    Ok((download, check))
}

/// Streams `url` into `path`, hashing on the way.
async fn download(url: &str, path: &Path) -> Result<Download, FetchError> {
    let http_error = |source| FetchError::Http { url: url.to_string(), source };
    let write_error = |source| FetchError::Write { path: path.to_path_buf(), source };
    // No overall timeout: a 500 MB file on a slow link is fine as long as bytes keep coming.
    let client = reqwest::Client::builder()
        .user_agent(concat!("trainq/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(http_error)?;
    let mut response = client.get(url).send().await.map_err(http_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status { url: url.to_string(), status });
    }
    let total = response.content_length();
    tracing::info!(url, bytes = total, to = %path.display(), "downloading");

    let file = tokio::fs::File::create(path).await.map_err(write_error)?;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut next_report = PROGRESS_EVERY_BYTES;
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(write_error)?;
        bytes += chunk.len() as u64;
        if bytes >= next_report {
            next_report += PROGRESS_EVERY_BYTES;
            tracing::info!(received_mb = bytes >> 20, total_mb = total.map(|total| total >> 20), "downloading");
        }
    }
    writer.flush().await.map_err(write_error)?;
    // On disk before the rename, so a crash cannot leave a short file under the final name.
    writer.get_ref().sync_all().await.map_err(write_error)?;
    let sha256 = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(Download { bytes, sha256 })
}

/// What the admin is told after an install.
fn summary(backbone: Backbone, target: &Path, url: &str, download: &Download, check: &WeightsCheck) -> String {
    const SHOWN: usize = 4;
    let mut text = format!(
        "installed {backbone} weights at {target}\n  {megabytes:.1} MB from {url}\n  sha256 {sha256}\n  {matched} tensors match torchvision's {backbone} layout",
        backbone = backbone.name(),
        target = target.display(),
        megabytes = download.bytes as f64 / 1e6,
        sha256 = download.sha256,
        matched = check.matched,
    );
    if check.optional_missing > 0 {
        text += &format!(" ({} optional batch-norm counters absent)", check.optional_missing);
    }
    if !check.ignored.is_empty() {
        let mut names = check.ignored.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if check.ignored.len() > SHOWN {
            names += ", …";
        }
        text += &format!("; {} other tensors ignored ({names})", check.ignored.len());
    }
    text
}
