//! `/api/admin/*` of the disk: everyone's usage (`GET /api/admin/usage`) and gc
//! (`POST /api/admin/gc`), admins only. The work itself is `crate::retention`'s; a job's own
//! delete is `DELETE /api/jobs/{id}` in `jobs.rs`, and a user's own usage is `GET /api/me`.

use super::auth::{admin_only, Authed};
use super::extract::Json;
use super::{ApiError, AppState};
use crate::domain::retention::{parse_age, KeepList};
use crate::retention::{GcPlan, GcReport, BY_GC};
use axum::extract::State;
use serde::{Deserialize, Serialize};

/// One user's line of `GET /api/admin/usage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserUsage {
    /// The user's name (empty for jobs from before users existed).
    user: String,
    /// Bytes of their live jobs' folders.
    disk_bytes: u64,
}

/// `GET /api/admin/usage`: everyone's usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Every user with measured jobs, by name.
    users: Vec<UserUsage>,
    /// `--max-disk-per-user-gb` in bytes; absent without a quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_bytes: Option<u64>,
}

/// `GET /api/admin/usage`: every user's disk usage (admins only).
#[utoipa::path(
    get, path = "/api/admin/usage", tag = "admin",
    responses(
        (status = 200, description = "each user's bytes and the quota", body = Usage),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn usage(State(state): State<AppState>, Authed(user): Authed) -> Result<axum::Json<Usage>, ApiError> {
    admin_only(&user, "everyone's disk usage")?;
    let users =
        state.store.disk_usage().await?.into_iter().map(|(user, disk_bytes)| UserUsage { user, disk_bytes }).collect();
    Ok(axum::Json(Usage { users, quota_bytes: state.limits.max_disk_bytes_per_user }))
}

/// The body of `POST /api/admin/gc`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Finished jobs that ended longer ago than this: `30d`, `12h`, `90m`.
    #[schema(example = "30d")]
    older_than: String,
    /// Keep these files of each job and remove the rest (names, folders, `*` patterns, e.g.
    /// `["final.safetensors", "metrics.json", "plots"]`); absent: delete the jobs (tombstones).
    #[serde(default)]
    keep: Option<Vec<String>>,
    /// Only report what would go.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/admin/gc`: deletes (or with `keep`, prunes) the finished jobs that ended longer ago
/// than `older_than` (admins only); the report lists each job and the bytes freed.
#[utoipa::path(
    post, path = "/api/admin/gc", tag = "admin",
    request_body(content = GcRequest, description = "`older_than`, and optionally `keep` and `dry_run`"),
    responses(
        (status = 200, description = "what was (on a dry run: would be) removed", body = GcReport),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 422, description = "`older_than` or `keep` is invalid", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn gc(
    State(state): State<AppState>,
    Authed(user): Authed,
    Json(request): Json<GcRequest>,
) -> Result<axum::Json<GcReport>, ApiError> {
    admin_only(&user, "gc")?;
    let invalid = |field: &str, message: String| ApiError::Malformed {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        field: field.to_string(),
        message,
    };
    let older_than = parse_age(&request.older_than).map_err(|message| invalid("older_than", message))?;
    if request.keep.as_ref().is_some_and(Vec::is_empty) {
        let message = String::from("an empty list would keep nothing; name the files to keep (e.g. [\"final.safetensors\", \"plots\"]), or leave `keep` out to delete the jobs");
        return Err(invalid("keep", message));
    }
    let keep = request.keep.as_deref().map(KeepList::parse).transpose().map_err(|message| invalid("keep", message))?;
    let plan = GcPlan { older_than, keep, dry_run: request.dry_run, by: BY_GC };
    let report = state.retention().gc(&plan).await?;
    tracing::info!(by = %user.name, jobs = report.jobs.len(), freed = report.freed_bytes, dry_run = report.dry_run, "gc");
    Ok(axum::Json(report))
}
