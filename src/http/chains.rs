//! Chained jobs over HTTP: the checks of a spec's `after` and `init_from` at submit (and resubmit,
//! and each sweep combination), `PATCH /api/jobs/{id}` to change what a queued job waits for, and
//! a waiting job's reason worded with the state of the job it waits for.
//!
//! A job id in `after` or `init_from` that does not exist and one that belongs to someone else
//! answer the same 422 naming the field, so ids cannot be probed (as a 404 does elsewhere).

use super::auth::Authed;
use super::extract::{Json, Path};
use super::jobs::{find_own, view, JobView};
use super::{ApiError, AppState};
use crate::domain::chain::{self, DependencyStatus};
use crate::domain::user::User;
use crate::domain::{Job, JobId, JobSpec, JobState, SpecError};
use crate::supervisor::JobPaths;
use axum::extract::State;
use std::collections::HashMap;

/// Checks what `spec` waits for, for `user`: every job it names exists and is theirs (or the
/// caller is an admin); none in `after` already failed or was cancelled (it would never start);
/// `init_from`'s job has not failed, saves the named checkpoint, still has it on disk if it ended,
/// and trained a network of the same shapes. `job` is the queued job being changed
/// (`PATCH`), whose new waits must not close a cycle.
pub(super) async fn check_waits(
    state: &AppState,
    user: &User,
    spec: &JobSpec,
    job: Option<JobId>,
) -> Result<(), ApiError> {
    let waits = spec.waits_for();
    if waits.is_empty() {
        return Ok(());
    }
    let found: HashMap<JobId, Job> =
        state.store.jobs_with_ids(&waits).await?.into_iter().map(|job| (job.id, job)).collect();
    // Someone else's job reads as a missing one.
    let visible = |id: &JobId| found.get(id).filter(|job| user.may_act_on(job.owner.as_deref()));
    let unknown = |field: String, id: JobId| {
        SpecError::new(
            field,
            format!("no job `{id}` of yours; give the full id of one of your jobs (`trainq ls` lists them)"),
        )
    };
    for (index, id) in spec.after.iter().enumerate() {
        let field = format!("after[{index}]");
        let dep = visible(id).ok_or_else(|| unknown(field.clone(), *id))?;
        if matches!(dep.state, JobState::Failed | JobState::Cancelled) {
            return Err(SpecError::new(
                field,
                format!("job {} already {}, so this job would never start; resubmit that job and wait for the new one, or leave it out", dep.id, dep.state),
            )
            .into());
        }
    }
    if let Some(init) = &spec.init_from {
        let source = visible(&init.job).ok_or_else(|| unknown(String::from("init_from.job"), init.job))?;
        if matches!(source.state, JobState::Failed | JobState::Cancelled) {
            return Err(SpecError::new(
                "init_from.job",
                format!(
                    "job {} {}, so it saved no weights to start from; pick a job that succeeded",
                    source.id, source.state
                ),
            )
            .into());
        }
        chain::check_checkpoint(&source.spec, init.checkpoint)?;
        chain::check_compatible(&source.spec, spec)?;
        if source.state == JobState::Succeeded {
            check_checkpoint_on_disk(state, source, init.checkpoint).await?;
        }
    }
    if let Some(job) = job {
        if let Some(cycle) = find_cycle(state, job, &waits).await? {
            return Err(SpecError::new(
                "after",
                format!(
                    "these jobs would wait for each other forever: {}; leave out the job that closes the circle",
                    chain::describe_cycle(&cycle)
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// A succeeded job's checkpoint file must still be there (it may have been deleted, or not kept).
async fn check_checkpoint_on_disk(
    state: &AppState,
    source: &Job,
    checkpoint: crate::domain::spec::Checkpoint,
) -> Result<(), ApiError> {
    let artifacts = JobPaths::new(&state.paths.data_dir, source.id).artifacts();
    if tokio::fs::try_exists(artifacts.join(checkpoint.file_name())).await.unwrap_or(false) {
        return Ok(());
    }
    let mut kept = Vec::new();
    for written in chain::written_checkpoints(&source.spec) {
        if tokio::fs::try_exists(artifacts.join(written.file_name())).await.unwrap_or(false) {
            kept.push(written);
        }
    }
    let have = if kept.is_empty() {
        String::from("none of its weights are kept any more")
    } else {
        format!("it still has {}", chain::list(&kept))
    };
    Err(SpecError::new(
        "init_from.checkpoint",
        format!("job {}'s `{checkpoint}` weights are gone (deleted or not kept); {have}", source.id),
    )
    .into())
}

/// The cycle `job` waiting for `waits` would close, walking what queued jobs wait for from the
/// store, one query per step of the walk.
async fn find_cycle(state: &AppState, job: JobId, waits: &[JobId]) -> Result<Option<Vec<JobId>>, ApiError> {
    let mut deps_of: HashMap<JobId, Vec<JobId>> = HashMap::new();
    let mut seen: std::collections::HashSet<JobId> = waits.iter().copied().collect();
    let mut frontier: Vec<JobId> = waits.to_vec();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for (from, to) in state.store.waits_of_queued(&frontier).await? {
            // The job's own waits are the new ones, not those stored.
            if from == job {
                continue;
            }
            deps_of.entry(from).or_default().push(to);
            if seen.insert(to) {
                next.push(to);
            }
        }
        frontier = next;
    }
    Ok(chain::find_cycle(job, waits, &deps_of))
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
    check_waits(&state, &user, &spec, Some(job.id)).await?;
    state.disk.writable()?;
    if !state.store.set_waits(job.id, &spec).await? {
        let now = state.store.job(job.id).await?.map_or(JobState::Cancelled, |job| job.state);
        return Err(not_queued(now));
    }
    tracing::info!(job_id = %job.id, after = ?patch.after, "waits changed");
    // The scheduler reads the job again, as after a submission.
    state.events.publish(job.id, crate::events::EventKind::Queued { name: job.name.clone() });
    let job = super::jobs::find(&state, &job.id.to_string()).await?;
    Ok(axum::Json(view(&state, job).await?))
}

/// The pending reason of a job waiting for `dep`, with what that job is doing now.
pub(super) async fn waiting_reason(state: &AppState, dep: JobId) -> Result<String, ApiError> {
    let Some(job) = state.store.job(dep).await? else {
        return Ok(format!("waiting for job {}", chain::short_id(dep)));
    };
    let status = match job.state {
        JobState::Queued => DependencyStatus::Queued(state.scheduler.queue_info(dep).map(|info| info.position)),
        JobState::Running => DependencyStatus::Running(job.progress.clone()),
        ended => DependencyStatus::Ended(ended),
    };
    let planned: Vec<u32> = job.spec.phases.iter().map(|phase| phase.epochs).collect();
    Ok(chain::waiting_reason(dep, &status, &planned))
}
