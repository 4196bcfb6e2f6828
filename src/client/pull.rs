//! `trainq pull ID… [--to DIR]`: a job's results into `DIR/<job id>/`: its artifacts
//! (checkpoints, `predictions.csv`, the Grad-CAM gallery under `cam/`), its plots as PNG and
//! SVG, its curves as `metrics.csv` and its `spec.json`. Resumable: an artifact already there
//! whole is skipped, a half-downloaded one (`NAME.part`) continues with a `Range` request, and a
//! file appears under its name only once complete.

use super::{Api, Profile};
use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// The plots a job may have (`roc` and `confusion` only once a binary job has test results).
const PLOTS: [&str; 4] = ["accuracy", "loss", "roc", "confusion"];

/// What one pull did.
#[derive(Debug, Default)]
struct Tally {
    fetched: usize,
    skipped: usize,
    bytes: u64,
}

/// `trainq pull ID… [--to DIR]`.
pub async fn pull(ids: &[String], to: &Path) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    let mut resolved = Vec::with_capacity(ids.len());
    for given in ids {
        resolved.push(api.resolve(given).await?);
    }
    for id in resolved {
        let dir = to.join(&id);
        let tally = pull_job(&api, &id, &dir).await?;
        println!(
            "{id}: {} files fetched ({}), {} already there, in {}",
            tally.fetched,
            megabytes(tally.bytes),
            tally.skipped,
            dir.display()
        );
    }
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

async fn pull_job(api: &Api, id: &str, dir: &Path) -> anyhow::Result<Tally> {
    let job = api.get(&format!("/api/jobs/{id}")).await?;
    let artifacts = api.get(&format!("/api/jobs/{id}/artifacts")).await?;
    let artifacts: Vec<(String, u64)> = artifacts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|artifact| Some((artifact["name"].as_str()?.to_string(), artifact["bytes"].as_u64()?)))
        .collect();
    let mut tally = Tally::default();
    let mut small: Vec<(PathBuf, Vec<u8>)> = vec![(dir.join("spec.json"), serde_json::to_vec_pretty(&job["spec"])?)];
    small.push((
        dir.join("metrics.csv"),
        api.open(&format!("/api/jobs/{id}/metrics?format=csv"), &[]).await?.bytes().await?.to_vec(),
    ));
    for plot in PLOTS {
        for format in ["png", "svg"] {
            // A plot the job has no data for yet is a 404: not pulled, not an error.
            if let Ok(response) = api.open(&format!("/api/jobs/{id}/plots/{plot}.{format}"), &[]).await {
                small.push((dir.join("plots").join(format!("{plot}.{format}")), response.bytes().await?.to_vec()));
            }
        }
    }
    for (path, bytes) in small {
        if std::fs::read(&path).is_ok_and(|there| there == bytes) {
            tally.skipped += 1;
            continue;
        }
        write_whole(&path, &bytes)?;
        tally.fetched += 1;
        tally.bytes += bytes.len() as u64;
    }
    let missing: Vec<&(String, u64)> =
        artifacts.iter().filter(|(name, bytes)| !whole(&dir.join(name), *bytes)).collect();
    tally.skipped += artifacts.len() - missing.len();
    let total: u64 = missing.iter().map(|(_, bytes)| bytes).sum();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("█▌░"),
    );
    bar.set_prefix(id[..8].to_string());
    for (name, bytes) in missing {
        bar.set_message(name.clone());
        tally.bytes += download(api, &format!("/api/jobs/{id}/artifacts/{name}"), &dir.join(name), *bytes, &bar)
            .await
            .with_context(|| format!("pulling {name} of job {id}"))?;
        tally.fetched += 1;
    }
    bar.finish_and_clear();
    Ok(tally)
}

/// Whether `path` is there with all its `bytes`.
fn whole(path: &Path, bytes: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.len() == bytes)
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("artifact paths end in a name").to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Writes `bytes` as `path`, through a `.part` file so a half-written file never has the name.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    let part = part_path(path);
    std::fs::write(&part, bytes)?;
    std::fs::rename(&part, path)?;
    Ok(())
}

/// Downloads `url_path` (`bytes` long) to `path`, continuing a `.part` file left by an earlier
/// pull; returns the bytes it transferred. The version being downloaded (its `ETag`) is kept in
/// `NAME.part.etag` and sent back as `If-Range`, so a file that changed on the server since is
/// fetched whole instead of spliced onto the old one's start.
async fn download(api: &Api, url_path: &str, path: &Path, bytes: u64, bar: &ProgressBar) -> anyhow::Result<u64> {
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    let part = part_path(path);
    let version = part.with_extension("part.etag");
    let mut have = std::fs::metadata(&part).map(|metadata| metadata.len()).unwrap_or(0);
    let etag = std::fs::read_to_string(&version).ok();
    if have > bytes || etag.is_none() {
        have = 0;
    }
    let headers: Vec<(&str, String)> = match (have, etag) {
        (1.., Some(etag)) => vec![("Range", format!("bytes={have}-")), ("If-Range", etag)],
        _ => Vec::new(),
    };
    let response = api.open(url_path, &headers).await?;
    // A server that ignores the range, or has another version now, sends the whole file.
    let resumed = have > 0 && response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    if let Some(etag) = response.headers().get(reqwest::header::ETAG).and_then(|value| value.to_str().ok()) {
        std::fs::write(&version, etag)?;
    }
    let mut file =
        std::fs::OpenOptions::new().create(true).write(true).append(resumed).truncate(!resumed).open(&part)?;
    let from = if resumed { have } else { 0 };
    let mut written = from;
    bar.inc(from);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    file.sync_all()?;
    if written != bytes {
        bail!("got {written} of {bytes} bytes; run `trainq pull` again to continue");
    }
    std::fs::rename(&part, path)?;
    let _ = std::fs::remove_file(&version);
    Ok(written - from)
}
