//! How the API finds a job and shows it, shared by every handler of a job's resources (`jobs.rs`,
//! `job_list.rs`, `events.rs`, `outputs.rs`, `plots.rs`, `inference.rs`, `worker.rs`).
//!
//! Lookups: a path's id is parsed once (`parse_id`; anything not a UUID names no job), then found
//! by its typed [`JobId`] (`find_by_id`). Someone else's job answers 404 exactly like a missing
//! one (`find_own`), so ids cannot be probed; a deleted job's files answer 410 (`find_own_files`).
//!
//! Views: a job plus its standing in the queue (position, pending reason, ETA from the
//! scheduler's last pass), with its error and results hidden from everyone but its owner and
//! admins (`view_for`). A waiting job's reason names what the job it waits for is doing now.
//!
//! Architecture invariant: this module imports no handler module; the handlers import it.

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::chain::{self, DependencyStatus};
use crate::domain::user::User;
use crate::domain::{Job, JobId, JobState};
use serde::Serialize;

/// A job plus its place in the queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub(super) job: Job,
    #[serde(flatten)]
    standing: Standing,
    /// Expected seconds until a queued job starts (absent when unknown); see `eta_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_seconds: Option<f64>,
    /// Every worker start with its device, times and outcome (`GET /api/jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) runs: Option<Vec<crate::store::JobRun>>,
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
    /// When a queued job is expected to start, Unix seconds (absent when unknown). Jobs are
    /// counted to last their measured pace but no longer than their time limits; where only the
    /// limits are known, it is the latest start (each job ahead running to its limit). Absolute,
    /// so the answer (and its ETag) stays the same from one second to the next.
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
    standing_counted(state, job, Unplaced::Counted).await
}

/// How the place of a job the scheduler has not placed yet counts the jobs submitted before it
/// since the scheduler's last pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unplaced {
    /// Those still queued, in the store (one indexed count).
    Counted,
    /// All of them, from the `seq`s alone: what the answer to a submission says, a moment after
    /// the insert, without a trip to the database. `seq`s are handed out in order without gaps
    /// (a rolled-back insert gives its numbers back) and a job starts only once a pass has
    /// placed it, so every one of them is still queued unless it was cancelled since, which
    /// the next pass, within moments, accounts for.
    JustSubmitted,
}

/// [`standing`], a job not placed yet counted as `unplaced` says.
async fn standing_counted(state: &AppState, job: &Job, unplaced: Unplaced) -> Result<Standing, ApiError> {
    if job.state != JobState::Queued {
        let pending_reason = job
            .progress
            .as_ref()
            .filter(|progress| job.state == JobState::Running && progress.activity.starts_with("pending in Slurm"))
            .map(|progress| progress.activity.clone());
        return Ok(Standing { pending_reason, ..Standing::default() });
    }
    // The scheduler's last pass says where it stands; a job submitted since then is last in line.
    let mut info = match state.scheduler.queue_info(job) {
        Some(info) => info,
        None => {
            let planned_up_to = state.scheduler.planned_up_to();
            let ahead = match unplaced {
                Unplaced::Counted => state.store.queued_between(planned_up_to, job.seq).await?,
                Unplaced::JustSubmitted => {
                    usize::try_from(job.seq.saturating_sub(planned_up_to).saturating_sub(1)).unwrap_or(0)
                }
            };
            state.scheduler.provisional_info(ahead)
        }
    };
    if let Some(dep) = info.waiting_for {
        info.pending_reason = waiting_reason(state, dep).await?;
    }
    Ok(Standing {
        position: Some(info.position as i64),
        pending_reason: Some(info.pending_reason),
        eta_at: info.eta_at,
    })
}

/// The pending reason of a job waiting for `dep`, with what that job is doing now.
async fn waiting_reason(state: &AppState, dep: JobId) -> Result<String, ApiError> {
    let Some(job) = state.store.job(dep).await? else {
        return Ok(format!("waiting for job {}", chain::short_id(dep)));
    };
    let status = match job.state {
        JobState::Queued => DependencyStatus::Queued(state.scheduler.queue_info(&job).map(|info| info.position)),
        JobState::Running => DependencyStatus::Running(job.progress.clone()),
        ended => DependencyStatus::Ended(ended),
    };
    let planned: Vec<u32> = job.spec.phases.iter().map(|phase| phase.epochs).collect();
    Ok(chain::waiting_reason(dep, &status, &planned))
}

/// A job as the API shows it, with its queue position when queued.
pub(super) async fn view(state: &AppState, job: Job) -> Result<JobView, ApiError> {
    view_counted(state, job, Unplaced::Counted).await
}

/// A job as the API shows it, a job not placed yet counted as `unplaced` says.
pub(super) async fn view_counted(state: &AppState, job: Job, unplaced: Unplaced) -> Result<JobView, ApiError> {
    let standing = standing_counted(state, &job, unplaced).await?;
    // Counted down from the absolute time the scheduler gave, 0 when overdue.
    let eta_seconds = standing.eta_at.map(|at| at.seconds_since(crate::domain::Timestamp::now()).max(0.0));
    Ok(JobView { job, standing, eta_seconds, runs: None })
}

/// Parses a job id from the path; anything that is not a UUID cannot name a job.
pub(super) fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("no job with id `{raw}`")))
}

/// Loads a job or answers 404.
pub(super) async fn find_by_id(state: &AppState, id: JobId) -> Result<Job, ApiError> {
    state.store.job(id).await?.ok_or_else(|| ApiError::NotFound(format!("no job with id `{id}`")))
}

/// Loads the job a path names (`parse_id`, then `find_by_id`) or answers 404.
pub(super) async fn find(state: &AppState, raw_id: &str) -> Result<Job, ApiError> {
    find_by_id(state, parse_id(raw_id)?).await
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

/// The 410 of a deleted job's files.
pub(super) fn gone(job: &Job) -> ApiError {
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
