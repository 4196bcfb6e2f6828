//! `POST /api/worker/jobs/{id}/lines`: where relays of jobs running in Slurm report (see
//! `domain/relay.rs`). Authenticated by the job's own secret, not a user token: it can only
//! append to that one running job.

use super::extract::{Json, Path};
use super::{ApiError, AppState};
use crate::domain::relay::RelayBatch;
use crate::supervisor::RemoteError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// Stores a relay's batch: 204, also for a batch already stored; 401 for a wrong secret; 404 for
/// an unknown job; 409 once the job no longer runs (the relay stops sending).
pub async fn lines(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(batch): Json<RelayBatch>,
) -> Result<StatusCode, ApiError> {
    let id = super::job_view::parse_id(&id)?;
    let secret = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let job = state.store.job(id).await?.ok_or_else(|| ApiError::NotFound(format!("no job with id `{id}`")))?;
    if secret.is_empty() || !state.store.worker_secret_matches(id, secret).await? {
        return Err(ApiError::Unauthorized(String::from("not this job's reporting secret")));
    }
    match state.supervisor.remote_lines(job.id, batch).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(RemoteError::NotRunning) => Err(ApiError::Conflict {
            message: format!("job {id} is not running here (it is {}); stop reporting", job.state),
            detail: serde_json::json!({"state": job.state}),
        }),
    }
}
