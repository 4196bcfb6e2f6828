//! `/api/jobs` and `/api/jobs/{id}`: every verb of a job itself, in one file. `POST /api/jobs`
//! submits and `POST /api/jobs/{id}/resubmit` submits again (both through `crate::submit`);
//! `GET` shows a job, `PATCH` changes what a queued job waits for, `DELETE` removes a finished
//! job's files (through `crate::retention`), `POST /api/jobs/{id}/cancel` stops it. The list
//! (`GET /api/jobs`) is `job_list.rs`; a job's outputs are `outputs.rs`, `plots.rs` and
//! `inference.rs`; how a job is found and shown is `job_view.rs`.

use super::auth::{Authed, Caller};
use super::extract::{Json, Path, Query};
use super::job_view::{find_by_id, find_own, gone, view, view_counted, view_for, JobView, Unplaced};
use super::{ApiError, AppState};
use crate::domain::{Job, JobId, JobSpec, JobState};
use crate::events::EventKind;
use crate::store::{CancelOutcome, Tombstone};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What a submission answers (`POST /api/jobs`, `POST /api/jobs/{id}/resubmit`): always the
/// group and every job it made, so a client reads one shape whatever `repeats` or `sweep` said.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The jobs' group when the submission made several; `null` for one job.
    group_id: Option<String>,
    /// Every new job, in submission order (the first is the one `Location` names).
    jobs: Vec<JobView>,
}

/// `POST /api/jobs`: validates the spec completely, then queues it: 201 with
/// `{"group_id", "jobs": [every job it made]}` and `Location` naming the first job.
#[utoipa::path(
    post, path = "/api/jobs", tag = "jobs",
    request_body(content = JobSpec, description = "a job spec; `repeats` and a `sweep` (`{\"/json/pointer\": [values]}`) make several jobs of one group"),
    responses(
        (status = 201, description = "queued: the group (null for one job) and every new job", body = Submitted,
            headers(("Location" = String, description = "the first new job, `/api/jobs/{id}`"))),
        (status = 403, description = "a field only admins may set (`priority`)", body = super::error::ErrorBody),
        (status = 422, description = "the spec is invalid: `detail.field` names the field", body = super::error::ErrorBody),
        (status = 507, description = "the disk is full, or the caller's jobs hold their disk quota (`detail.quota_bytes`, `usage_bytes`, `largest_jobs`); nothing was queued", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn submit(State(state): State<AppState>, Authed(user): Authed, body: Bytes) -> Result<Response, ApiError> {
    let accepted = state.submissions().submit(&user, &body).await?;
    created(&state, accepted).await
}

/// Query of `POST /api/jobs/{id}/resubmit`.
#[derive(Debug, serde::Deserialize)]
pub struct ResubmitQuery {
    /// Continue the job from its checkpoint instead of from the start.
    #[serde(default)]
    resume: bool,
}

/// `POST /api/jobs/{id}/resubmit`: the job's spec changed by a JSON merge patch (RFC 7396; an
/// empty body or `{}` runs it again as it was), submitted exactly like `POST /api/jobs` (so the
/// patch may add a `sweep` or `repeats`). Each new job links back with `parent_id` and notes what
/// changed. With `?resume=true`, one child continues a timed-out, failed or cancelled job from
/// its checkpoint (epochs done are not done again, and its curves start with the parent's); the
/// patch may then change only `time_limit`, `name` and `notify`.
#[utoipa::path(
    post, path = "/api/jobs/{id}/resubmit", tag = "jobs", params(("id" = String, Path, description = "the job's id (a UUID)"),
        ("resume" = Option<bool>, Query, description = "continue the job from its checkpoint (a timed-out, failed or cancelled job); the patch may change only `time_limit`, `name` and `notify`")),
    request_body(content = Option<Object>, description = "a JSON merge patch (RFC 7396) of the job's spec; no body or `{}` runs it again"),
    responses(
        (status = 201, description = "queued, as `POST /api/jobs`", body = Submitted,
            headers(("Location" = String, description = "the first new job, `/api/jobs/{id}`"))),
        (status = 409, description = "`resume=true` for a job that is not timed out, failed or cancelled, or has no checkpoint (`detail.state`)", body = super::error::ErrorBody),
        (status = 422, description = "the patch is not an object, makes the spec invalid, or (resuming) changes another field than `time_limit`, `name` or `notify`", body = super::error::ErrorBody),
        (status = 507, description = "the disk is full, or the caller's jobs hold their disk quota (`detail.quota_bytes`, `usage_bytes`, `largest_jobs`); nothing was queued", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn resubmit(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    Query(query): Query<ResubmitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parent = find_own(&state, &user, &id).await?;
    let submissions = state.submissions();
    let accepted = if query.resume {
        submissions.resume(&user, &parent, &body).await?
    } else {
        submissions.resubmit(&user, &parent, &body).await?
    };
    created(&state, accepted).await
}

/// A submission's answer: 201, every new job as the API shows it, `Location` naming the first.
async fn created(state: &AppState, accepted: crate::submit::Accepted) -> Result<Response, ApiError> {
    let mut views = Vec::with_capacity(accepted.jobs.len());
    for job in accepted.jobs {
        views.push(view_counted(state, job, Unplaced::JustSubmitted).await?);
    }
    // `insert_jobs` inserts at least one job: a spec makes one or more.
    let location = format!("/api/jobs/{}", views[0].job.id);
    let answer = Submitted { group_id: accepted.group_id, jobs: views };
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], axum::Json(answer)).into_response())
}

/// `GET /api/jobs/{id}`: the job with its spec, standing and runs; an `ETag`, and `304` when the
/// client has this answer already.
#[utoipa::path(
    get, path = "/api/jobs/{id}", operation_id = "show_job", tag = "jobs", params(("id" = String, Path, description = "the job's id (a UUID)"), ("If-None-Match" = Option<String>, Header, description = "an earlier answer's ETag")),
    responses(
        (status = 200, description = "the job (results and error only for its owner and admins)", body = JobView,
            headers(("ETag" = String, description = "hash of the answer"))),
        (status = 304, description = "unchanged since the ETag sent"),
    ),
    security((), ("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = super::job_view::find(&state, &id).await?;
    let runs = state.store.runs_of(job.id).await?;
    let mut view = view_for(&state, &caller, job).await?;
    view.runs = Some(runs);
    super::etag::json(&headers, &view)
}

/// What `PATCH /api/jobs/{id}` changes: the jobs a queued job waits for.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitsPatch {
    /// The jobs (full ids) that must succeed first, replacing the old list; `[]` waits for none
    /// (a job named in `init_from` is still waited for).
    #[schema(max_items = 16)]
    pub after: Vec<JobId>,
}

/// `PATCH /api/jobs/{id}`: changes what a queued job waits for (`{"after": [ID, …]}`). The new
/// list is checked as at submit, and refused with a 422 naming the circle when jobs would wait
/// for each other.
#[utoipa::path(
    patch, path = "/api/jobs/{id}", operation_id = "patch_job", tag = "jobs", params(("id" = String, Path, description = "the job's id (a UUID)")),
    request_body(content = WaitsPatch, description = "the jobs it waits for, replacing the old list"),
    responses(
        (status = 200, description = "changed: the job", body = JobView),
        (status = 409, description = "the job is no longer queued", body = super::error::ErrorBody),
        (status = 422, description = "an unknown or failed job, or a cycle: `detail.field` names the field", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    Json(patch): Json<WaitsPatch>,
) -> Result<axum::Json<JobView>, ApiError> {
    let job = find_own(&state, &user, &id).await?;
    let not_queued = |job_state: JobState| ApiError::Conflict {
        message: format!("job is {job_state}; only a queued job's waits can change"),
        detail: serde_json::json!({"state": job_state}),
    };
    if job.state != JobState::Queued {
        return Err(not_queued(job.state));
    }
    let mut document = serde_json::to_value(&job.spec).map_err(anyhow::Error::from)?;
    document["after"] = serde_json::to_value(&patch.after).map_err(anyhow::Error::from)?;
    let spec = JobSpec::parse(document.to_string().as_bytes())?;
    state.submissions().check_waits(&user, &spec, Some(job.id)).await?;
    state.disk.writable()?;
    if !state.store.set_waits(job.id, &spec).await? {
        let now = state.store.job(job.id).await?.map_or(JobState::Cancelled, |job| job.state);
        return Err(not_queued(now));
    }
    tracing::info!(job_id = %job.id, after = ?patch.after, "waits changed");
    // The scheduler reads the job again, as after a submission.
    state.events.publish(job.id, EventKind::Queued { name: job.name.clone() });
    let job = find_by_id(&state, job.id).await?;
    Ok(axum::Json(view(&state, job).await?))
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
    let (outcome, freed_bytes) = state.retention().delete(job.id, &user.name).await?;
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

/// `POST /api/jobs/{id}/cancel`: a queued job is cancelled at once (200); a running one is asked
/// to stop and turns `cancelled` when its worker has exited (202).
#[utoipa::path(
    post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "the job's id (a UUID)")),
    responses(
        (status = 200, description = "cancelled (it was queued)", body = JobView),
        (status = 202, description = "stopping (it was running)", body = JobView),
        (status = 409, description = "already finished", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    let id = find_own(&state, &user, &id).await?.id;
    let status = match state.store.request_cancel(id).await? {
        CancelOutcome::CancelledWhileQueued => {
            state.events.publish(id, EventKind::Finished { state: JobState::Cancelled, error: None });
            state.telemetry.job_finished(JobState::Cancelled);
            StatusCode::OK
        }
        CancelOutcome::StopRunning => {
            // Announced before the stop, so `finished` can never come first.
            state.events.publish(id, EventKind::CancelRequested);
            state.supervisor.cancel(id);
            StatusCode::ACCEPTED
        }
        CancelOutcome::AlreadyFinished(job_state) => {
            return Err(ApiError::Conflict {
                message: format!("job already {job_state}; nothing to cancel"),
                detail: serde_json::json!({"state": job_state}),
            })
        }
        CancelOutcome::NotFound => return Err(ApiError::NotFound(format!("no job with id `{id}`"))),
    };
    let job = find_by_id(&state, id).await?;
    Ok((status, axum::Json(view(&state, job).await?)))
}
