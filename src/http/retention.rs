//! Finished jobs' lifecycle over HTTP: `DELETE /api/jobs/{id}` (a tombstone stays), the 410 a
//! deleted job's outputs answer, each user's disk usage (`GET /api/me`, admins'
//! `GET /api/admin/usage`), the quota a submit checks (507), and an admin's
//! `POST /api/admin/gc`. The work itself is `crate::retention`'s.

use super::auth::Authed;
use super::extract::{Json, Path};
use super::jobs::find_own;
use super::{ApiError, AppState};
use crate::domain::retention::{parse_age, KeepList};
use crate::domain::user::User;
use crate::domain::Job;
use crate::retention::{GcPlan, GcReport, Retention, RetentionError, BY_GC};
use crate::store::Tombstone;
use axum::extract::State;
use serde::{Deserialize, Serialize};

/// Delete, gc and retention of `state`'s jobs.
fn retention(state: &AppState) -> Retention {
    Retention::new(state.store.clone(), state.supervisor.clone(), state.events.clone())
}

impl From<RetentionError> for ApiError {
    fn from(err: RetentionError) -> ApiError {
        match err {
            RetentionError::Store(err) => err.into(),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// The 410 of a deleted job's files.
fn gone(job: &Job) -> ApiError {
    let by = job.deleted_by.as_deref().unwrap_or("?");
    let at = job.deleted_at.map_or(0.0, crate::domain::Timestamp::unix_seconds);
    ApiError::Gone {
        message: format!(
            "job {} (`{}`) was deleted by {by}: its files are gone; its spec and results stay in GET /api/jobs/{}, and POST /api/jobs/{}/resubmit runs it again",
            job.id, job.name, job.id, job.id
        ),
        detail: serde_json::json!({"deleted_at": at, "deleted_by": by}),
    }
}

/// Loads a job whose files `user` may read (as `find_own`), or answers 410 once they were deleted.
pub(super) async fn find_own_files(state: &AppState, user: &User, raw_id: &str) -> Result<Job, ApiError> {
    let job = find_own(state, user, raw_id).await?;
    if job.is_deleted() {
        return Err(gone(&job));
    }
    Ok(job)
}

/// What a delete answers: the job as it now stands (with `deleted_at` and `deleted_by`) and
/// the bytes its folder held.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    #[serde(flatten)]
    job: Job,
    /// Bytes of the files removed.
    freed_bytes: u64,
}

/// `DELETE /api/jobs/{id}`: the owner (or an admin) deletes a finished job's files; the row stays
/// as a tombstone, so history, fair share and groups stay whole.
#[utoipa::path(
    delete, path = "/api/jobs/{id}", operation_id = "delete_job", tag = "jobs", params(("id" = String, Path, description = "the job's id (a UUID)")),
    responses(
        (status = 200, description = "deleted: the job with `deleted_at` and `deleted_by`, and the bytes freed", body = Deleted),
        (status = 404, description = "no such job, or someone else's", body = super::error::ErrorBody),
        (status = 409, description = "queued or running: cancel it first; or a queued job starts from its weights (`detail.needed_by`)", body = super::error::ErrorBody),
        (status = 410, description = "deleted before", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> Result<axum::Json<Deleted>, ApiError> {
    let job = find_own(&state, &user, &id).await?;
    let (outcome, freed_bytes) = retention(&state).delete(job.id, &user.name).await?;
    match outcome {
        Tombstone::Deleted(job) => Ok(axum::Json(Deleted { job, freed_bytes })),
        Tombstone::AlreadyDeleted(job) => Err(gone(&job)),
        Tombstone::NotFinished(job_state) => Err(ApiError::Conflict {
            message: format!("job is {job_state}; cancel it first (trainq cancel {}), then delete it", job.id),
            detail: serde_json::json!({"state": job_state, "message": format!("the job is {job_state}: cancel it first (`trainq cancel {}` or POST /api/jobs/{}/cancel), then delete it", job.id, job.id)}),
        }),
        Tombstone::NotFound => Err(ApiError::NotFound(format!("no job with id `{}`", job.id))),
        Tombstone::NeededBy(waiting) => Err(ApiError::Conflict {
            message: format!("job {waiting} starts from this job's weights (init_from); cancel it first, or delete this one once it has started"),
            detail: serde_json::json!({"needed_by": waiting, "message": format!("queued job {waiting} starts from this job's checkpoint (`init_from`): cancel it (`trainq cancel {waiting}`) or wait until it has started, then delete this one")}),
        }),
    }
}

/// A user's disk: the bytes of their live jobs' folders and the quota, if any.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DiskUsage {
    /// Bytes of their live jobs' folders, each measured when the job ended.
    pub disk_bytes: u64,
    /// `--max-disk-per-user-gb` in bytes; absent without a quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_quota_bytes: Option<u64>,
}

/// `user`'s disk usage: one row of the running totals.
pub(super) async fn usage_of(state: &AppState, user: &User) -> Result<DiskUsage, ApiError> {
    let disk_bytes = state.store.disk_usage_of(&user.name).await?;
    Ok(DiskUsage { disk_bytes, disk_quota_bytes: state.limits.max_disk_bytes_per_user })
}

/// A submit's quota check: a student whose jobs hold the quota or more gets a 507 naming it,
/// their usage and their largest jobs. Reads one usage row (and, when over, three jobs through
/// an index), whatever the number of jobs.
pub(super) async fn check_quota(state: &AppState, user: &User) -> Result<(), ApiError> {
    let Some(quota_bytes) = state.limits.max_disk_bytes_per_user else { return Ok(()) };
    if user.admin {
        return Ok(());
    }
    let usage_bytes = state.store.disk_usage_of(&user.name).await?;
    if usage_bytes < quota_bytes {
        return Ok(());
    }
    let largest = state.store.largest_jobs_of(&user.name, 3).await?;
    Err(ApiError::DiskQuota { quota_bytes, usage_bytes, largest })
}

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
    super::auth::admin_only(&user, "everyone's disk usage")?;
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
    super::auth::admin_only(&user, "gc")?;
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
    let report = retention(&state).gc(&plan).await?;
    tracing::info!(by = %user.name, jobs = report.jobs.len(), freed = report.freed_bytes, dry_run = report.dry_run, "gc");
    Ok(axum::Json(report))
}
