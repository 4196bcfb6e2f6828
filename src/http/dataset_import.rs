//! `PUT /api/admin/datasets/{name}`: an admin uploads a dataset archive (a zip), admins only. The
//! work is `crate::dataset_import`'s; here the name's checks (409s), the upload spooled to disk
//! with its size counted, and the answer: the manifest (201), or with `Accept:
//! application/x-ndjson` one JSON line per stage (`unpack`, `verify`) and the outcome last, so
//! the client shows progress on a 1.2 GB archive. The route has no body limit but
//! `--max-dataset-gb`, so it sits outside the API's body limits (see `routes`).

use super::auth::{admin_only, Authed};
use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::catalog::check_plain_name;
use crate::dataset_import::{self, ArchiveLimits, Finish, ImportError, Manifest, TempFolder, MAX_FILES, MAX_RATIO};
use crate::domain::JobState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// The route, with its own auth layer and no body limit (the archive's size is counted against
/// `--max-dataset-gb` as it arrives).
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/api/admin/datasets/{name}", put(import))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), super::auth::authenticate))
}

/// The query of `PUT /api/admin/datasets/{name}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportOptions {
    /// Put it in place of the dataset of that name (refused while a queued or running job uses it).
    #[serde(default)]
    replace: bool,
    /// Leave files that do not fully decode out (listed in the manifest) instead of refusing.
    #[serde(default)]
    skip_bad: bool,
}

/// The media type of the streamed answer.
const NDJSON: &str = "application/x-ndjson";

/// `PUT /api/admin/datasets/{name}`: imports a zip of an ImageFolder as dataset `name`.
#[utoipa::path(
    put, path = "/api/admin/datasets/{name}", tag = "admin", operation_id = "import_dataset",
    params(("name" = String, Path, description = "the dataset's name, as specs give it"), ImportOptions),
    request_body(content = Vec<u8>, content_type = "application/zip", description = "the archive: an ImageFolder (train/ and test/ of class folders, optionally val/) anywhere inside"),
    responses(
        (status = 201, description = "imported: its manifest (counts per split and class, bytes, what was left out and why); with `Accept: application/x-ndjson`, 200 and one line per stage, the manifest or the error last", body = Manifest),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 409, description = "the name is taken (without `replace`), or a queued or running job uses it", body = super::error::ErrorBody),
        (status = 422, description = "a hostile or unusable archive, or files that do not decode (named)", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn import(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(name): Path<String>,
    Query(options): Query<ImportOptions>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin_only(&user, "importing a dataset")?;
    check_plain_name(&name).map_err(|err| ApiError::BadRequest {
        field: "name",
        message: format!("{err}; letters, digits, `.`, `_`, `-`"),
    })?;
    check_name_free(&state, &name, options.replace).await?;
    let root = state.paths.datasets.clone();
    let temp = tokio::task::spawn_blocking({
        let name = name.clone();
        move || TempFolder::create(&root, &name)
    })
    .await
    .map_err(|err| ApiError::Internal(err.into()))?
    .map_err(into_api_error)?;
    let limit = state.limits.max_dataset_bytes;
    spool(body, &temp.upload(), limit + limit / 100 + (1 << 20)).await?;
    let finish = Finish {
        name,
        datasets_root: state.paths.datasets.clone(),
        skip_bad: options.skip_bad,
        replace: options.replace,
    };
    let streamed =
        headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).is_some_and(|value| value.contains(NDJSON));
    if !streamed {
        let manifest = run(&state, temp, finish, |_| {}).await?;
        return Ok((StatusCode::CREATED, axum::Json(manifest)).into_response());
    }
    let (lines, receiver) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let progress = lines.clone();
        let last = match run(&state, temp, finish, move |line| drop(progress.send(line))).await {
            Ok(manifest) => json!({"stage": "done", "manifest": manifest}),
            Err(err) => error_line(err).await,
        };
        let _ = lines.send(last);
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(format!("{line}\n")), receiver))
    });
    Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response())
}

/// A name already taken is a 409 unless `replace`, and a 409 naming the jobs that use it while
/// any queued or running job does.
async fn check_name_free(state: &AppState, name: &str, replace: bool) -> Result<(), ApiError> {
    let taken = tokio::fs::metadata(state.paths.datasets.join(name)).await.is_ok();
    if !taken {
        return Ok(());
    }
    if !replace {
        return Err(ApiError::Conflict {
            message: format!(
                "a dataset named `{name}` exists; import with --replace (`?replace=true`) to put this one in its place"
            ),
            detail: json!({"field": "name"}),
        });
    }
    let mut users = Vec::new();
    for state_of_job in [JobState::Queued, JobState::Running] {
        users.extend(
            state
                .store
                .jobs(Some(state_of_job))
                .await?
                .into_iter()
                .filter(|job| job.spec.dataset == name)
                .map(|job| job.id.to_string()),
        );
    }
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict {
        message: format!(
            "dataset `{name}` is used by {} queued or running jobs ({}); replace it once they end, or cancel them",
            users.len(),
            users.join(", ")
        ),
        detail: json!({"field": "replace", "jobs": users}),
    })
}

/// Writes the upload to `path`, refusing it (413) past `limit` bytes.
async fn spool(body: Body, path: &std::path::Path, limit: u64) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path).await.map_err(|err| ApiError::Internal(err.into()))?;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| ApiError::Malformed {
            status: StatusCode::BAD_REQUEST,
            field: String::from("(body)"),
            message: format!("the upload broke off: {err}"),
        })?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(ApiError::TooLarge { limit: limit as usize });
        }
        file.write_all(&chunk).await.map_err(|err| ApiError::Internal(err.into()))?;
    }
    file.flush().await.map_err(|err| ApiError::Internal(err.into()))?;
    Ok(())
}

/// Unpacks, verifies and moves the dataset into place, telling `progress` each stage.
async fn run(
    state: &AppState,
    temp: TempFolder,
    finish: Finish,
    progress: impl Fn(Value) + Send + Sync + 'static,
) -> Result<Manifest, ApiError> {
    let limits =
        ArchiveLimits { max_bytes: state.limits.max_dataset_bytes, max_files: MAX_FILES, max_ratio: MAX_RATIO };
    let progress = std::sync::Arc::new(progress);
    let (temp, found) = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let mut tell = |unpacked: &dataset_import::Unpacked| {
                progress(json!({"stage": "unpack", "files": unpacked.files, "bytes": unpacked.bytes}))
            };
            let outcome = dataset_import::unpack_and_find(&temp, limits, &mut tell);
            (temp, outcome)
        })
        .await
        .map_err(|err| ApiError::Internal(err.into()))?
    };
    let (_, found) = found.map_err(into_api_error)?;
    progress(json!({"stage": "verify", "images": found.images.len()}));
    let report = state
        .supervisor
        .verify_images(&temp.unpacked().join(&found.root))
        .await
        .map_err(|err| ApiError::Unavailable(format!("the images could not be checked: {err:#}")))?;
    progress(json!({"stage": "verify", "images": found.images.len(), "bad": report.bad.len()}));
    tokio::task::spawn_blocking(move || dataset_import::finish(&temp, found, report.bad, &finish))
        .await
        .map_err(|err| ApiError::Internal(err.into()))?
        .map_err(into_api_error)
}

/// An import's refusal as the API answers it: the archive's faults are 422s naming it.
fn into_api_error(err: ImportError) -> ApiError {
    match err {
        ImportError::Io { .. } => ApiError::Internal(err.into()),
        refused => ApiError::Malformed {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: String::from("(body)"),
            message: refused.to_string(),
        },
    }
}

/// The last line of a streamed import that failed: the error body a plain request would get,
/// with its status.
async fn error_line(err: ApiError) -> Value {
    let response = err.into_response();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
    let mut line: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"error": "internal error"}));
    line["status"] = json!(status);
    line
}
