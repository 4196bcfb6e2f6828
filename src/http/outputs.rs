//! What a job produces: `/metrics`, `/log` (optionally followed live), `/artifacts`.

use super::jobs::find;
use super::{ApiError, AppState};
use crate::catalog::check_plain_name;
use crate::domain::progress::{EpochMetrics, FinalMetrics};
use crate::domain::JobId;
use crate::supervisor::JobPaths;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// `GET /api/jobs/{id}/metrics`.
#[derive(Debug, Serialize)]
pub struct MetricsView {
    job_id: JobId,
    /// One entry per finished epoch, in phase and epoch order.
    epochs: Vec<EpochMetrics>,
    /// Train and test loss/accuracy at the end; null until the job has finished.
    #[serde(rename = "final")]
    final_metrics: Option<FinalMetrics>,
}

/// `GET /api/jobs/{id}/metrics`.
pub async fn metrics(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<MetricsView>, ApiError> {
    let job = find(&state, &id).await?;
    let epochs = state.store.epoch_metrics(job.id).await?;
    Ok(Json(MetricsView { job_id: job.id, epochs, final_metrics: job.final_metrics }))
}

/// Query of `GET /api/jobs/{id}/log`.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// `GET /api/jobs/{id}/log[?follow=true]`: the log so far; with `follow`, the response stays open
/// and streams new lines until the job has finished.
pub async fn log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let job = find(&state, &id).await?;
    let path = JobPaths::new(&state.paths.data_dir, job.id).log();
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !query.follow {
        let bytes = tokio::fs::read(&path).await.unwrap_or_default();
        return Ok((text, bytes).into_response());
    }
    struct Follow {
        state: AppState,
        id: JobId,
        path: std::path::PathBuf,
        offset: u64,
        finished: bool,
    }
    let start = Follow { state, id: job.id, path, offset: 0, finished: false };
    let stream = futures::stream::unfold(start, |mut follow| async move {
        loop {
            let chunk = read_from(&follow.path, follow.offset).await;
            if !chunk.is_empty() {
                follow.offset += chunk.len() as u64;
                return Some((Ok::<_, std::io::Error>(chunk), follow));
            }
            if follow.finished {
                return None;
            }
            // Read once more after the job ends, so its last lines are never cut off.
            follow.finished = match follow.state.store.job(follow.id).await {
                Ok(Some(job)) => job.state.is_terminal(),
                _ => true,
            };
            if !follow.finished {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    Ok((text, Body::from_stream(stream)).into_response())
}

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    let mut buffer = Vec::new();
    if let Ok(mut file) = tokio::fs::File::open(path).await {
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
            let _ = file.take(64 * 1024).read_to_end(&mut buffer).await;
        }
    }
    buffer
}

/// One downloadable file.
#[derive(Debug, Serialize)]
pub struct ArtifactView {
    name: String,
    bytes: u64,
    url: String,
}

/// `GET /api/jobs/{id}/artifacts`: checkpoints and other outputs, by name (`cam/tp-0.png` for the
/// files of a sub-folder).
pub async fn artifacts(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Vec<ArtifactView>>, ApiError> {
    let job = find(&state, &id).await?;
    let dir = JobPaths::new(&state.paths.data_dir, job.id).artifacts();
    let mut views = Vec::new();
    let mut folders = vec![(dir, String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&folder).await else { continue };
        while let Ok(Some(entry)) = entries.next_entry().await {
            // `symlink_metadata`: a link is never followed out of the job's folder.
            let Ok(metadata) = tokio::fs::symlink_metadata(entry.path()).await else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_plain_name(&name).is_err() {
                continue;
            }
            if metadata.is_dir() && prefix.is_empty() {
                folders.push((entry.path(), format!("{name}/")));
            } else if metadata.is_file() && !name.contains(".tmp") {
                // Half-written files (`*.tmp*`) are not artifacts yet.
                let name = format!("{prefix}{name}");
                let url = format!("/api/jobs/{}/artifacts/{name}", job.id);
                views.push(ArtifactView { name, bytes: metadata.len(), url });
            }
        }
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(views))
}

/// `GET /api/jobs/{id}/artifacts/{name}`: the file's bytes (`name` may be `folder/file`).
pub async fn artifact(State(state): State<AppState>, Path((id, name)): Path<(String, String)>) -> Result<Response, ApiError> {
    serve_artifact(&state, &id, &name).await
}

/// `GET /api/jobs/{id}/predictions.csv`: one row per test image (path, label, probability).
pub async fn predictions(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    serve_artifact(&state, &id, "predictions.csv").await
}

async fn serve_artifact(state: &AppState, id: &str, name: &str) -> Result<Response, ApiError> {
    let job = find(state, id).await?;
    let missing = || ApiError::NotFound(format!("job {} has no artifact `{name}`", job.id));
    // At most one folder level, every segment a plain name: no `..`, no absolute path, no hidden file.
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() > 2 || segments.iter().any(|segment| check_plain_name(segment).is_err()) {
        return Err(missing());
    }
    let mut path = JobPaths::new(&state.paths.data_dir, job.id).artifacts();
    let mut length = 0;
    for (index, segment) in segments.iter().enumerate() {
        path.push(segment);
        // No symlink anywhere on the way, so nothing outside the job's folder is ever served.
        let metadata = tokio::fs::symlink_metadata(&path).await.map_err(|_| missing())?;
        let last = index + 1 == segments.len();
        if (last && !metadata.is_file()) || (!last && !metadata.is_dir()) {
            return Err(missing());
        }
        length = metadata.len();
    }
    let file = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    let content_type = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    };
    let headers = [
        (header::CONTENT_TYPE, content_type.to_string()),
        (header::CONTENT_LENGTH, length.to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
    ];
    Ok((headers, Body::from_stream(tokio_util::io::ReaderStream::new(file))).into_response())
}
