//! What a job produces: `/metrics` (JSON or CSV), `/log` (optionally followed live), `/artifacts`
//! (nested names such as `cam/tp-0.png` included, never leaving the job's folder).

use super::auth::Authed;
use super::csv::{self, FormatQuery, TableFormat};
use super::extract::{Path, Query};
use super::job_view::{find_own, find_own_files};
use super::{ApiError, AppState};
use crate::catalog::check_plain_name;
use crate::domain::user::User;
use crate::domain::worker_protocol::{EpochMetrics, FinalMetrics};
use crate::domain::JobId;
use crate::supervisor::JobPaths;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// `GET /api/jobs/{id}/metrics`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricsView {
    job_id: JobId,
    /// One entry per finished epoch, in phase and epoch order.
    epochs: Vec<EpochView>,
    /// Train and test loss/accuracy at the end; null until the job has finished.
    #[serde(rename = "final")]
    final_metrics: Option<FinalMetrics>,
}

/// One epoch of a job's curves, and whose run trained it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EpochView {
    /// The epoch's metrics.
    #[serde(flatten)]
    metrics: EpochMetrics,
    /// The job whose run trained this epoch, when it is not this job: a job resumed from
    /// another's checkpoint (`resubmit?resume=true`) starts with that job's epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    ran_in_job: Option<JobId>,
}

/// `GET /api/jobs/{id}/metrics[?format=csv]`: JSON with the final metrics, or the curves as CSV
/// (one line per epoch; an absent validation value is an empty field).
#[utoipa::path(
    get, path = "/api/jobs/{id}/metrics", tag = "results",
    params(("id" = String, Path, description = "the job's id (a UUID)"), ("format" = Option<String>, Query, pattern = r"^(json|csv)$", description = "`json` (default) or `csv`")),
    responses((status = 200, description = "the curves and final metrics", content(
        (MetricsView = "application/json"), (String = "text/csv")))),
    security(("bearer" = []))
)]
pub async fn metrics(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    Query(query): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let format = query.table_format()?;
    // The curves are rows, not files: a deleted job keeps them, as compare and groups do.
    let job = find_own(&state, &user, &id).await?;
    let epochs = state.store.epoch_metrics_with_origin(job.id).await?;
    if format == TableFormat::Json {
        let epochs = epochs.into_iter().map(|(metrics, ran_in_job)| EpochView { metrics, ran_in_job }).collect();
        return Ok(Json(MetricsView { job_id: job.id, epochs, final_metrics: job.final_metrics }).into_response());
    }
    let mut body = csv::line(["phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]);
    for (e, _) in &epochs {
        body.push_str(&csv::line([
            e.phase.to_string(),
            e.epoch.to_string(),
            csv::number(Some(e.train_loss)),
            csv::number(Some(e.train_acc)),
            csv::number(e.val_loss),
            csv::number(e.val_acc),
            csv::number(Some(e.seconds)),
        ]));
    }
    Ok(csv::response(&csv::download_name(&job.name, "-metrics.csv"), body))
}

/// Query of `GET /api/jobs/{id}/log`.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// `GET /api/jobs/{id}/log[?follow=true]`: the log so far; with `follow`, the response stays open
/// and streams new lines until the job has finished.
#[utoipa::path(
    get, path = "/api/jobs/{id}/log", tag = "results",
    params(("id" = String, Path, description = "the job's id (a UUID)"), ("follow" = Option<bool>, Query, description = "keep the answer open and stream new lines until the job ends")),
    responses((status = 200, description = "the job's log", content_type = "text/plain", body = String)),
    security(("bearer" = []))
)]
pub async fn log(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let job = find_own_files(&state, &user, &id).await?;
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactView {
    name: String,
    bytes: u64,
    url: String,
}

/// How deep artifact folders may nest (`cam/tp-0.png` is depth 2).
const MAX_ARTIFACT_DEPTH: usize = 3;

/// `GET /api/jobs/{id}/artifacts`: checkpoints and other outputs, by name; files in subfolders
/// are named by their path (`cam/index.json`).
#[utoipa::path(
    get, path = "/api/jobs/{id}/artifacts", tag = "results", params(("id" = String, Path, description = "the job's id (a UUID)")),
    responses((status = 200, description = "the job's files", body = Vec<ArtifactView>)),
    security(("bearer" = []))
)]
pub async fn artifacts(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> Result<Json<Vec<ArtifactView>>, ApiError> {
    let job = find_own_files(&state, &user, &id).await?;
    let dir = JobPaths::new(&state.paths.data_dir, job.id).artifacts();
    let mut views = Vec::new();
    // Real folders only: a symlink is neither listed nor followed.
    let mut folders = vec![(dir, String::new(), 1)];
    while let Some((folder, prefix, depth)) = folders.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&folder).await else { continue };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Ok(file_type) = entry.file_type().await else { continue };
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if check_plain_name(&file_name).is_err() {
                continue;
            }
            let name = format!("{prefix}{file_name}");
            if file_type.is_dir() && depth < MAX_ARTIFACT_DEPTH {
                folders.push((entry.path(), format!("{name}/"), depth + 1));
            } else if file_type.is_file() && !name.ends_with(".tmp") && !name.contains(".tmp.") {
                // Half-written files (`*.tmp`, and files::write_atomic's `*.tmp.<pid>.<n>.<nonce>`) are not artifacts yet.
                let Ok(metadata) = entry.metadata().await else { continue };
                let url = format!("/api/jobs/{}/artifacts/{name}", job.id);
                views.push(ArtifactView { name, bytes: metadata.len(), url });
            }
        }
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(views))
}

/// `GET /api/jobs/{id}/artifacts/{*name}`: the file's bytes; `name` may name a file in a
/// subfolder (`cam/tp-0.png`).
/// A `Range: bytes=START-[END]` continues a broken download (`trainq pull`): 206 with that part.
#[utoipa::path(
    get, path = "/api/jobs/{id}/artifacts/{name}", tag = "results",
    params(("id" = String, Path, description = "the job's id (a UUID)"), ("name" = String, Path, description = "the file's name; may hold folders (`cam/tp-0.png`)"),
        ("Range" = Option<String>, Header, description = "`bytes=START-[END]` to continue a download"),
        ("If-Range" = Option<String>, Header, description = "an ETag or date: the range only if the file is unchanged")),
    responses(
        (status = 200, description = "the file", content_type = "application/octet-stream", body = String,
            headers(("ETag" = String), ("Last-Modified" = String), ("Accept-Ranges" = String))),
        (status = 206, description = "the part asked for", content_type = "application/octet-stream", body = String),
        (status = 304, description = "unchanged"),
        (status = 416, description = "the range is outside the file", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn artifact(
    State(state): State<AppState>,
    Authed(user): Authed,
    headers: axum::http::HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    serve_artifact(&state, &user, &id, &name, &headers).await
}

/// `GET /api/jobs/{id}/predictions.csv`: one row per test image (path, label, probability).
#[utoipa::path(
    get, path = "/api/jobs/{id}/predictions.csv", tag = "results", params(("id" = String, Path, description = "the job's id (a UUID)")),
    responses((status = 200, description = "one row per test image", content_type = "text/csv", body = String),
        (status = 206, description = "the part asked for", content_type = "text/csv", body = String),
        (status = 304, description = "unchanged")),
    security(("bearer" = []))
)]
pub async fn predictions(
    State(state): State<AppState>,
    Authed(user): Authed,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    serve_artifact(&state, &user, &id, "predictions.csv", &headers).await
}

/// The artifact `name` of a job, if it is a regular file reached through real folders only: each
/// part of the name is a plain name (no `..`, no leading `.`, no separators) and no part is a
/// symlink, so nothing outside the job's `artifacts/` can be served.
pub(super) async fn artifact_file(artifacts: &std::path::Path, name: &str) -> Option<(std::path::PathBuf, u64)> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > MAX_ARTIFACT_DEPTH || parts.iter().any(|part| check_plain_name(part).is_err()) {
        return None;
    }
    let mut path = artifacts.to_path_buf();
    for (index, part) in parts.iter().enumerate() {
        path.push(part);
        let metadata = tokio::fs::symlink_metadata(&path).await.ok()?;
        let last = index + 1 == parts.len();
        if (last && !metadata.is_file()) || (!last && !metadata.is_dir()) {
            return None;
        }
        if last {
            return Some((path, metadata.len()));
        }
    }
    None
}

/// The bytes `START-END` (inclusive) that a single-range `Range` header asks of a file of `length`
/// bytes: `Some(Ok)` to serve them, `Some(Err)` when the range is past the end (416), `None` when
/// there is no usable range (serve the whole file, as RFC 9110 allows).
fn byte_range(range: Option<&str>, length: u64) -> Option<Result<(u64, u64), ()>> {
    let (start, end) = range?.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => length.saturating_sub(1),
        end => end.parse::<u64>().ok()?.min(length.saturating_sub(1)),
    };
    if start >= length {
        return Some(Err(()));
    }
    (start <= end).then_some(Ok((start, end)))
}

/// Whether a conditional header (`If-None-Match`, `If-Range`) names this version of the file.
/// `If-Range` may also name it by its `Last-Modified` date (`modified`).
fn names_version(value: Option<&axum::http::HeaderValue>, etag: &str, modified: Option<&str>) -> bool {
    value
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag) || Some(value.trim()) == modified)
}

/// An artifact with the validators HTTP tools expect: `ETag` and `Last-Modified` (so a browser
/// revalidates with a 304 and `curl -C -` resumes only the same file: `If-Range`), `Range`, and
/// `Cache-Control: immutable` once the job has ended (its files no longer change).
async fn serve_artifact(
    state: &AppState,
    user: &User,
    id: &str,
    name: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let job = find_own_files(state, user, id).await?;
    let missing = || ApiError::NotFound(format!("job {} has no artifact `{name}`", job.id));
    let artifacts = JobPaths::new(&state.paths.data_dir, job.id).artifacts();
    let (path, _) = artifact_file(&artifacts, name).await.ok_or_else(missing)?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    // The open file's size and time, so the validators describe exactly the bytes sent.
    let metadata = file.metadata().await.map_err(|_| missing())?;
    let bytes = metadata.len();
    let modified_at = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
    let nanos = modified_at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let etag = format!("\"{bytes:x}-{nanos:x}\"");
    let modified = httpdate::fmt_http_date(modified_at);
    let cache = if job.state.is_terminal() { "private, max-age=31536000, immutable" } else { "private, no-cache" };
    if names_version(headers.get(header::IF_NONE_MATCH), &etag, None) {
        let validators =
            [(header::ETAG, etag), (header::LAST_MODIFIED, modified), (header::CACHE_CONTROL, cache.to_string())];
        return Ok((axum::http::StatusCode::NOT_MODIFIED, validators).into_response());
    }
    // A range of another version of the file would splice two files: send the whole new one.
    let range = match headers.get(header::IF_RANGE) {
        Some(value) if !names_version(Some(value), &etag, Some(&modified)) => None,
        _ => headers.get(header::RANGE).and_then(|value| value.to_str().ok()),
    };
    let (content_type, disposition) = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => ("application/json", "inline"),
        Some("png") => ("image/png", "inline"),
        Some("jpg" | "jpeg") => ("image/jpeg", "inline"),
        Some("csv") => ("text/csv; charset=utf-8", "attachment"),
        _ => ("application/octet-stream", "attachment"),
    };
    let file_name = name.rsplit('/').next().unwrap_or(name);
    let (status, start, end) = match byte_range(range, bytes) {
        None => (axum::http::StatusCode::OK, 0, bytes.saturating_sub(1)),
        Some(Ok((start, end))) => (axum::http::StatusCode::PARTIAL_CONTENT, start, end),
        Some(Err(())) => {
            let headers = [(header::CONTENT_RANGE, format!("bytes */{bytes}"))];
            return Ok((axum::http::StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response());
        }
    };
    let length = if bytes == 0 { 0 } else { end - start + 1 };
    file.seek(std::io::SeekFrom::Start(start)).await.map_err(|_| missing())?;
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
            (header::CONTENT_DISPOSITION, format!("{disposition}; filename=\"{file_name}\"")),
            (header::ACCEPT_RANGES, String::from("bytes")),
            (header::ETAG, etag),
            (header::LAST_MODIFIED, modified),
            (header::CACHE_CONTROL, cache.to_string()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file.take(length))),
    )
        .into_response();
    if status == axum::http::StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{end}/{bytes}").parse().expect("a valid header value");
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn a_range_continues_a_download_and_a_bad_one_serves_the_whole_file() {
        assert_eq!(byte_range(Some("bytes=100-"), 1000), Some(Ok((100, 999))));
        assert_eq!(byte_range(Some("bytes=0-9"), 1000), Some(Ok((0, 9))));
        assert_eq!(byte_range(Some("bytes=990-5000"), 1000), Some(Ok((990, 999))));
        assert_eq!(byte_range(Some("bytes=1000-"), 1000), Some(Err(())));
        for unusable in [None, Some("bytes=-500"), Some("items=1-2"), Some("bytes=9-3"), Some("bytes=1-2,5-6")] {
            assert_eq!(byte_range(unusable, 1000), None, "{unusable:?}");
        }
    }
}
