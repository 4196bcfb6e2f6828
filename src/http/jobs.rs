//! `/api/jobs`: submit, show, cancel (the list of jobs is `job_list.rs`).

use super::auth::{Authed, Caller};
use super::extract::Path;
use super::{ApiError, AppState};
use crate::catalog;
use crate::domain::spec::Weights;
use crate::domain::sweep::{self, Variant};
use crate::domain::user::User;
use crate::domain::{Job, JobId, JobSpec, JobState, SpecError};
use crate::events::EventKind;
use crate::store::{CancelOutcome, NewJob};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// A job plus its place in the queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    job: Job,
    #[serde(flatten)]
    standing: Standing,
    /// Expected seconds until a queued job starts (absent when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_seconds: Option<f64>,
    /// Every worker start with its device, times and outcome (`GET /api/jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<Vec<crate::store::JobRun>>,
}

/// What a submission answers (`POST /api/jobs`, `POST /api/jobs/{id}/resubmit`): always the
/// group and every job it made, so a client reads one shape whatever `repeats` or `sweep` said.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The jobs' group when the submission made several; `null` for one job.
    group_id: Option<String>,
    /// Every new job, in submission order (the first is the one `Location` names).
    jobs: Vec<JobView>,
}

/// Where a job stands in line, as its page and the list show it.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub(super) struct Standing {
    /// 1-based position among queued jobs (1 = next); absent unless queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// Why a queued job is not running yet (or why Slurm still holds a running one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// When a queued job is expected to start, Unix seconds (absent when unknown). Absolute, so
    /// the answer (and its ETag) stays the same from one second to the next.
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::domain::timestamp::unix_seconds::option")]
    #[schema(value_type = Option<f64>)]
    pub eta_at: Option<crate::domain::Timestamp>,
}

/// Hides from `caller` what only a job's owner and admins may see: its error (which quotes its
/// log) and its results. The queue's facts stay.
pub(super) fn redact_for(caller: &Caller, job: &mut Job) {
    if !caller.may_see(job.owner.as_deref()) {
        job.error = job.error.as_ref().map(|_| String::from("(visible to the job's owner)"));
        job.final_metrics = None;
    }
}

/// A job as `caller` may see it: the queue's facts for everyone; its error and results only for
/// its owner and admins.
pub(super) async fn view_for(state: &AppState, caller: &Caller, mut job: Job) -> Result<JobView, ApiError> {
    redact_for(caller, &mut job);
    view(state, job).await
}

/// Where `job` stands: a queued job's place, reason and ETA from the scheduler's last pass (a job
/// submitted since then is behind every job the scheduler knows), a running job's Slurm reason
/// while Slurm holds it pending.
pub(super) async fn standing(state: &AppState, job: &Job) -> Result<Standing, ApiError> {
    if job.state != JobState::Queued {
        let pending_reason = job
            .progress
            .as_ref()
            .filter(|progress| job.state == JobState::Running && progress.activity.starts_with("pending in Slurm"))
            .map(|progress| progress.activity.clone());
        return Ok(Standing { pending_reason, ..Standing::default() });
    }
    // The scheduler's last pass says where it stands; a job submitted since then is last in line.
    let mut info = match state.scheduler.queue_info(job.id) {
        Some(info) => info,
        // Counted over the jobs submitted since the last pass only, not the whole queue.
        None => state
            .scheduler
            .provisional_info(state.store.queued_between(state.scheduler.planned_up_to(), job.seq).await?),
    };
    if let Some(dep) = info.waiting_for {
        info.pending_reason = super::chains::waiting_reason(state, dep).await?;
    }
    Ok(Standing {
        position: Some(info.position as i64),
        pending_reason: Some(info.pending_reason),
        eta_at: info.eta_at,
    })
}

/// A job as the API shows it, with its queue position when queued.
pub(super) async fn view(state: &AppState, job: Job) -> Result<JobView, ApiError> {
    let standing = standing(state, &job).await?;
    // Counted down from the absolute time the scheduler gave, 0 when overdue.
    let eta_seconds = standing.eta_at.map(|at| at.seconds_since(crate::domain::Timestamp::now()).max(0.0));
    Ok(JobView { job, standing, eta_seconds, runs: None })
}

/// Parses a job id from the path; anything that is not a UUID cannot name a job.
pub(super) fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("no job with id `{raw}`")))
}

/// Loads a job or answers 404.
pub(super) async fn find(state: &AppState, raw_id: &str) -> Result<Job, ApiError> {
    let id = parse_id(raw_id)?;
    state.store.job(id).await?.ok_or_else(|| ApiError::NotFound(format!("no job with id `{id}`")))
}

/// Loads a job `user` may act on: their own, or any for an admin. Someone else's job answers
/// 404 exactly like a missing one, so ids cannot be probed.
pub(super) async fn find_own(state: &AppState, user: &User, raw_id: &str) -> Result<Job, ApiError> {
    let job = find(state, raw_id).await?;
    if user.may_act_on(job.owner.as_deref()) {
        Ok(job)
    } else {
        Err(ApiError::NotFound(format!("no job with id `{}`", job.id)))
    }
}

/// A spec error of one sweep combination, worded to name the combination (other errors as they are).
fn in_combination(variant: &Variant, err: ApiError) -> ApiError {
    match err {
        ApiError::InvalidSpec(err) => ApiError::InvalidSpec(variant.in_combination(err)),
        other => other,
    }
}

/// The admin's caps and the admin-only fields, checked for each spec of a submission before
/// anything is queued; the per-user cap counts every job the submission would add.
async fn check_limits(state: &AppState, user: &User, variants: &[Variant]) -> Result<(), ApiError> {
    for variant in variants {
        check_spec_limits(&state.limits, user, &variant.spec).map_err(|err| in_combination(variant, err))?;
    }
    let limits = &state.limits;
    let active = state.store.active_jobs_of(&user.name).await?;
    let adding: i64 = variants.iter().map(|variant| i64::from(variant.spec.repeats)).sum();
    if !user.admin && active + adding > i64::from(limits.max_active_jobs_per_user) {
        return Err(ApiError::TooManyRequests {
            message: format!(
                "you have {active} jobs queued or running and this would add {adding}; the limit is {} per user: wait for some to finish or cancel some",
                limits.max_active_jobs_per_user
            ),
            retry_after_secs: 0,
        });
    }
    Ok(())
}

/// The caps one spec must keep: priority for admins only, epochs and image side under the box's
/// limits.
fn check_spec_limits(limits: &super::Limits, user: &User, spec: &JobSpec) -> Result<(), ApiError> {
    if spec.priority != 0 && !user.admin {
        return Err(ApiError::Forbidden {
            field: "priority",
            message: String::from(
                "only admins may set a priority; remove the field (fair share orders students' jobs)",
            ),
        });
    }
    if spec.total_epochs() > limits.max_epochs {
        return Err(SpecError::new(
            "phases",
            format!("{} epochs in all; this box allows at most {} per job", spec.total_epochs(), limits.max_epochs),
        )
        .into());
    }
    let (field, side) = match spec.image_size {
        Some(size) => ("image_size", size),
        None => match spec.resize() {
            crate::domain::spec::Resize::Bounded { max_side, .. } | crate::domain::spec::Resize::Square(max_side) => {
                ("max_image_side", max_side)
            }
        },
    };
    if side > limits.max_image_side {
        return Err(SpecError::new(
            field,
            format!("{side} px is over this box's limit of {} px", limits.max_image_side),
        )
        .into());
    }
    Ok(())
}

/// Checks a parsed spec against what is on disk now: the dataset (from the catalog's index), its
/// classes, the weights file's header. Filesystem work, so off the async runtime.
async fn check_inputs(state: &AppState, spec: &JobSpec) -> Result<(), ApiError> {
    let (paths, spec) = (state.paths.clone(), spec.clone());
    tokio::task::spawn_blocking(move || check_inputs_on_disk(&paths, &spec))
        .await
        .map_err(|err| ApiError::Internal(err.into()))?
        .map_err(ApiError::from)
}

fn check_inputs_on_disk(paths: &super::Paths, spec: &JobSpec) -> Result<(), SpecError> {
    let dataset = catalog::datasets::open(&paths.datasets, &spec.dataset)
        .map_err(|err| SpecError::new("dataset", format!("{err}; GET /api/datasets lists the datasets")))?;
    if dataset.split("train").is_none_or(|split| split.images == 0) {
        return Err(SpecError::new("dataset", format!("dataset `{}` has no training images", dataset.name)));
    }
    spec.check_classes(dataset.classes.len())?;
    if spec.weights != Weights::Imagenet {
        return Ok(());
    }
    if let Some(file) = catalog::weights::find(&paths.weights, spec.backbone) {
        // The header alone (kilobytes) tells a wrong file now, not hours later in the worker.
        return crate::domain::weights_layout::check_file(spec.backbone, &file).map(drop).map_err(|err| {
            SpecError::new(
                "weights",
                format!("the installed weights file is unusable ({err}); the admin can replace it with `trainq weights fetch {}`", spec.backbone.name()),
            )
        });
    }
    Err(SpecError::new(
        "weights",
        format!(
            "no ImageNet weights installed for {backbone}: the admin can run `trainq weights fetch {backbone} --weights {dir}`, or place a safetensors file with torchvision names at {path}; or submit with \"weights\": \"random\"",
            backbone = spec.backbone.name(),
            dir = paths.weights.display(),
            path = paths.weights.join(spec.backbone.weights_file_name()).display(),
        ),
    ))
}

/// Where a submission comes from when it is not a fresh spec: a resubmit of `parent`, with the
/// note each new job starts with.
struct Lineage {
    parent: JobId,
    note: String,
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
    enqueue(&state, &user, &body, None).await
}

/// `POST /api/jobs/{id}/resubmit`: the job's spec changed by a JSON merge patch (RFC 7396; an
/// empty body or `{}` runs it again as it was), submitted exactly like `POST /api/jobs` (so the
/// patch may add a `sweep` or `repeats`). Each new job links back with `parent_id` and notes what
/// changed.
#[utoipa::path(
    post, path = "/api/jobs/{id}/resubmit", tag = "jobs", params(("id" = String, Path, description = "the job's id (a UUID)")),
    request_body(content = Option<Object>, description = "a JSON merge patch (RFC 7396) of the job's spec; no body or `{}` runs it again"),
    responses(
        (status = 201, description = "queued, as `POST /api/jobs`", body = Submitted,
            headers(("Location" = String, description = "the first new job, `/api/jobs/{id}`"))),
        (status = 422, description = "the patch is not an object, or makes the spec invalid", body = super::error::ErrorBody),
        (status = 507, description = "the disk is full, or the caller's jobs hold their disk quota (`detail.quota_bytes`, `usage_bytes`, `largest_jobs`); nothing was queued", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn resubmit(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    const HOW: &str = r#"send a JSON merge patch (RFC 7396) of the changes, e.g. {"optimizer": {"lr": 1e-4}} ("null" removes a field), or {} to run the same spec again"#;
    let parent = find_own(&state, &user, &id).await?;
    let patch: serde_json::Value = if body.trim_ascii().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|err| SpecError::new("(body)", format!("not valid JSON: {err}; {HOW}")))?
    };
    if !patch.is_object() {
        return Err(SpecError::new("(body)", format!("a patch is a JSON object, not {patch}; {HOW}")).into());
    }
    let mut spec = serde_json::to_value(&parent.spec).map_err(anyhow::Error::from)?;
    crate::domain::sweep::merge_patch(&mut spec, &patch);
    let note = format!("resubmitted from {} with {patch}", parent.id);
    let body = serde_json::to_vec(&spec).map_err(anyhow::Error::from)?;
    enqueue(&state, &user, &body, Some(Lineage { parent: parent.id, note })).await
}

/// The one way into the queue: expands a sweep, validates every combination and the limits for
/// all the jobs together, checks each distinct input on disk once, then inserts every job (all or
/// none, one group when there are several) and announces them.
async fn enqueue(state: &AppState, user: &User, body: &[u8], lineage: Option<Lineage>) -> Result<Response, ApiError> {
    let variants = sweep::expand(body)?;
    check_limits(state, user, &variants).await?;
    super::retention::check_quota(state, user).await?;
    let mut checked = Vec::new();
    for variant in &variants {
        let spec = &variant.spec;
        // What the disk check reads: a sweep of rates or sizes checks its dataset and weights once.
        let inputs = (spec.dataset.clone(), spec.backbone, spec.weights, spec.output_units());
        if !checked.contains(&inputs) {
            check_inputs(state, spec).await.map_err(|err| in_combination(variant, err))?;
            checked.push(inputs);
        }
        // What it waits for (`after`, `init_from`): one query, and none for a spec without.
        super::chains::check_waits(state, user, spec, None).await.map_err(|err| in_combination(variant, err))?;
    }
    let total: u32 = variants.iter().map(|variant| variant.spec.repeats).sum();
    let group_id = (total > 1).then(|| uuid::Uuid::new_v4().to_string());
    let mut new = Vec::new();
    for variant in &variants {
        for sibling in variant.spec.repetitions() {
            new.push(NewJob {
                id: JobId::new(),
                name: sibling.name.clone(),
                group_id: group_id.clone(),
                parent_id: lineage.as_ref().map(|lineage| lineage.parent),
                params: variant.params.clone(),
                notes: lineage.iter().map(|lineage| lineage.note.clone()).collect(),
                owner: Some(user.name.clone()),
                priority: sibling.priority,
                memory_bytes: crate::domain::memory::estimate_bytes(&sibling),
                spec: sibling,
            });
        }
    }
    // Accepted jobs must never be lost, so none is accepted onto a full disk.
    state.disk.writable()?;
    // The `queued` events below tell the scheduler (which plans a burst of them in one pass).
    let jobs = state.store.insert_jobs(&new).await?;
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        tracing::info!(job_id = %job.id, name = %job.name, owner = %user.name, "job queued");
        state.events.publish(job.id, EventKind::Queued { name: job.name.clone() });
        views.push(view(state, job).await?);
    }
    // `insert_jobs` inserts at least one job: a spec makes one or more.
    let location = format!("/api/jobs/{}", views[0].job.id);
    let answer = Submitted { group_id, jobs: views };
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], Json(answer)).into_response())
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
    let job = find(&state, &id).await?;
    let runs = state.store.runs_of(job.id).await?;
    let mut view = view_for(&state, &caller, job).await?;
    view.runs = Some(runs);
    super::etag::json(&headers, &view)
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
) -> Result<(StatusCode, Json<JobView>), ApiError> {
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
    let job = find(&state, &id.to_string()).await?;
    Ok((status, Json(view(&state, job).await?)))
}
