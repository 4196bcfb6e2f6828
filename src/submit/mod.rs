//! Submitting jobs, the one way into the queue (`POST /api/jobs`, `POST /api/jobs/{id}/resubmit`):
//! expand a sweep → validate every combination (the spec's own parse) → the admin's caps for all
//! the jobs together → the caller's disk quota → each distinct input on disk once → what each spec
//! waits for (`after`, `init_from`) → insert every job (all or none, one group when there are
//! several) → announce them on the event bus (which also wakes the scheduler). No axum, no SQL:
//! the http layer turns requests into calls here and [`SubmitError`]s into its answers.
//!
//! Every check runs before anything is inserted, so a refused submission leaves nothing behind.
//! A spec error of one sweep combination names the combination. The chain checks that need only
//! specs are `domain::chain`'s; the ones that read the store or the disk are in `waits.rs`.

mod budget;
mod inputs;
mod resume;
mod waits;

pub use inputs::RecentInputs;
pub use resume::check_resumable;

use crate::disk_space::{Disk, Full};
use crate::domain::spec::Resize;
use crate::domain::sweep::{self, Variant};
use crate::domain::user::User;
use crate::domain::{Job, JobId, JobSpec, SpecError};
use crate::events::{EventBus, EventKind};
use crate::store::{JobSize, NewJob, Store, StoreError};
use std::path::Path;

/// What the admin allows each submission (config flags; `http::Limits` carries them).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most jobs one user may have queued or running at once.
    pub max_jobs_per_user: u32,
    /// Most epochs (all phases together) one job may ask for.
    pub max_epochs: u32,
    /// Largest image side (fixed size, or a variable-size job's `max_image_side`).
    pub max_image_side: u32,
    /// Most bytes one student's job folders may hold before their submits are refused.
    pub max_disk_bytes_per_user: Option<u64>,
    /// The default time limit and the cap: each job's effective limit, and what is refused.
    pub time_limits: crate::domain::time_limit::TimeLimitPolicy,
}

/// Where a submission's inputs and outputs are on disk.
#[derive(Debug, Clone, Copy)]
pub struct Folders<'a> {
    /// Job folders live under `<data_dir>/jobs` (a chained job's checkpoint is looked for there).
    pub data_dir: &'a Path,
    /// Datasets root.
    pub datasets: &'a Path,
    /// Weights folder.
    pub weights: &'a Path,
}

/// What a submission needs: the store, the event bus (to announce new jobs), the disk (no job is
/// accepted onto a full one), the folders and the caps. Borrowed from the server's state for the
/// length of one request.
#[derive(Clone, Copy)]
pub struct Submissions<'a> {
    /// The database.
    pub store: &'a Store,
    /// Where new jobs are announced; the scheduler listens.
    pub events: &'a EventBus,
    /// Free space and the reserve.
    pub disk: &'a Disk,
    /// Datasets, weights and job folders.
    pub folders: Folders<'a>,
    /// The admin's limits.
    pub caps: Caps,
    /// Device-hour budgets: a job that could never fit its owner's is refused.
    pub budgets: Option<&'a crate::budgets::BudgetPolicy>,
    /// Inputs found on disk in the last second.
    pub recent_inputs: &'a RecentInputs,
}

/// Why a submission (or a change of what a job waits for) was refused; nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The spec is invalid, or names inputs or jobs it cannot use, naming the field.
    #[error("invalid job spec")]
    InvalidSpec(#[from] SpecError),
    /// A field only admins may set.
    #[error("{message}")]
    AdminOnly {
        /// The spec field at fault.
        field: &'static str,
        /// Why, and what to do instead.
        message: String,
    },
    /// The submission would put the user over their number of queued or running jobs.
    #[error("{message}")]
    TooManyActiveJobs {
        /// Which limit and what to do.
        message: String,
    },
    /// The caller's job folders hold their disk quota or more.
    #[error("over the disk quota")]
    DiskQuota {
        /// The quota (`--max-disk-per-user-gb`), bytes.
        quota_bytes: u64,
        /// What their live jobs' folders hold, bytes.
        usage_bytes: u64,
        /// Their largest live jobs: what to delete.
        largest: Vec<JobSize>,
    },
    /// A resume of a job that cannot be resumed: it is not timed out, failed or cancelled, or it
    /// has no checkpoint.
    #[error("{message}")]
    NotResumable {
        /// Why, and what to do instead.
        message: String,
        /// The job's state.
        state: crate::domain::JobState,
    },
    /// The disk is full: accepted jobs must never be lost, so none is accepted onto it.
    #[error("the disk is full")]
    DiskFull(Full),
    /// The database refused.
    #[error("database error")]
    Store(#[from] StoreError),
    /// A bug (a check's task panicked).
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<Full> for SubmitError {
    fn from(full: Full) -> SubmitError {
        SubmitError::DiskFull(full)
    }
}

/// What a submission made: the group (when it made several jobs) and every new job, in
/// submission order.
#[derive(Debug)]
pub struct Accepted {
    /// The jobs' group when the submission made several; `None` for one job.
    pub group_id: Option<String>,
    /// Every new job, at least one.
    pub jobs: Vec<Job>,
}

/// Where a submission comes from when it is not a fresh spec: a resubmit of `parent`, with the
/// note each new job starts with.
struct Lineage {
    parent: JobId,
    note: String,
}

impl Submissions<'_> {
    /// Queues the jobs `body` (a spec, perhaps with `repeats` or a `sweep`) asks for, for `user`.
    pub async fn submit(&self, user: &User, body: &[u8]) -> Result<Accepted, SubmitError> {
        self.enqueue(user, body, None).await
    }

    /// Queues `parent`'s spec changed by `patch_body`, a JSON merge patch (RFC 7396; empty or
    /// `{}` runs it again as it was), exactly like a fresh submission (so the patch may add a
    /// `sweep` or `repeats`). Each new job links back to `parent` and notes what changed.
    pub async fn resubmit(&self, user: &User, parent: &Job, patch_body: &[u8]) -> Result<Accepted, SubmitError> {
        let patch = merge_patch_of(patch_body)?;
        let mut spec = serde_json::to_value(&parent.spec).map_err(anyhow::Error::from)?;
        sweep::merge_patch(&mut spec, &patch);
        let note = format!("resubmitted from {} with {patch}", parent.id);
        let body = serde_json::to_vec(&spec).map_err(anyhow::Error::from)?;
        self.enqueue(user, &body, Some(Lineage { parent: parent.id, note })).await
    }

    /// The one way into the queue: expands a sweep, validates every combination and the limits
    /// for all the jobs together, checks each input (each distinct one read on disk once), then inserts every job
    /// (all or none, one group when there are several) and announces them.
    async fn enqueue(&self, user: &User, body: &[u8], lineage: Option<Lineage>) -> Result<Accepted, SubmitError> {
        let variants = sweep::expand(body)?;
        self.check_limits(user, &variants).await?;
        self.check_quota(user).await?;
        self.check_budget(user, &variants).await?;
        for variant in &variants {
            let spec = &variant.spec;
            // A sweep reads its dataset and weights on disk once: the first variant's find is
            // remembered (`inputs.rs`) for the others.
            self.check_inputs(spec).await.map_err(|err| in_combination(variant, err))?;
            // What it waits for (`after`, `init_from`): one query, and none for a spec without.
            self.check_waits(user, spec, None).await.map_err(|err| in_combination(variant, err))?;
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
                    time_limit: self.caps.time_limits.applied(sibling.time_limit),
                    spec: sibling,
                });
            }
        }
        // Accepted jobs must never be lost, so none is accepted onto a full disk.
        self.disk.writable()?;
        // The `queued` events below tell the scheduler (which plans a burst of them in one pass).
        let jobs = self.store.insert_jobs(&new).await?;
        for job in &jobs {
            tracing::info!(job_id = %job.id, name = %job.name, owner = %user.name, "job queued");
            self.events.publish(job.id, EventKind::Queued { name: job.name.clone() });
        }
        Ok(Accepted { group_id, jobs })
    }

    /// The admin's caps and the admin-only fields, checked for each spec of a submission before
    /// anything is queued; the per-user cap counts every job the submission would add.
    async fn check_limits(&self, user: &User, variants: &[Variant]) -> Result<(), SubmitError> {
        for variant in variants {
            check_spec_limits(&self.caps, user, &variant.spec).map_err(|err| in_combination(variant, err))?;
        }
        let caps = &self.caps;
        let active = self.store.active_jobs_of(&user.name).await?;
        let adding: i64 = variants.iter().map(|variant| i64::from(variant.spec.repeats)).sum();
        if !user.admin && active + adding > i64::from(caps.max_jobs_per_user) {
            return Err(SubmitError::TooManyActiveJobs {
                message: format!(
                    "you have {active} jobs queued or running and this would add {adding}; the limit is {} per user: wait for some to finish or cancel some",
                    caps.max_jobs_per_user
                ),
            });
        }
        Ok(())
    }

    /// The quota check: a student whose jobs hold the quota or more is refused, naming it, their
    /// usage and their largest jobs. Reads one usage row (and, when over, three jobs through an
    /// index), whatever the number of jobs.
    async fn check_quota(&self, user: &User) -> Result<(), SubmitError> {
        let Some(quota_bytes) = self.caps.max_disk_bytes_per_user else { return Ok(()) };
        if user.admin {
            return Ok(());
        }
        let usage_bytes = self.store.disk_usage_of(&user.name).await?;
        if usage_bytes < quota_bytes {
            return Ok(());
        }
        let largest = self.store.largest_jobs_of(&user.name, 3).await?;
        Err(SubmitError::DiskQuota { quota_bytes, usage_bytes, largest })
    }
}

/// A resubmit's body as a JSON merge patch (RFC 7396): an object, `{}` when empty.
fn merge_patch_of(patch_body: &[u8]) -> Result<serde_json::Value, SpecError> {
    const HOW: &str = r#"send a JSON merge patch (RFC 7396) of the changes, e.g. {"optimizer": {"lr": 1e-4}} ("null" removes a field), or {} to run the same spec again"#;
    let patch: serde_json::Value = if patch_body.trim_ascii().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(patch_body)
            .map_err(|err| SpecError::new("(body)", format!("not valid JSON: {err}; {HOW}")))?
    };
    if !patch.is_object() {
        return Err(SpecError::new("(body)", format!("a patch is a JSON object, not {patch}; {HOW}")));
    }
    Ok(patch)
}

/// A spec error of one sweep combination, worded to name the combination (other errors as they are).
fn in_combination(variant: &Variant, err: SubmitError) -> SubmitError {
    match err {
        SubmitError::InvalidSpec(err) => SubmitError::InvalidSpec(variant.in_combination(err)),
        other => other,
    }
}

/// The caps one spec must keep: priority for admins only, epochs, image side and time limit
/// under the box's limits.
fn check_spec_limits(caps: &Caps, user: &User, spec: &JobSpec) -> Result<(), SubmitError> {
    if spec.priority != 0 && !user.admin {
        return Err(SubmitError::AdminOnly {
            field: "priority",
            message: String::from(
                "only admins may set a priority; remove the field (fair share orders students' jobs)",
            ),
        });
    }
    if spec.total_epochs() > caps.max_epochs {
        return Err(SpecError::new(
            "phases",
            format!("{} epochs in all; this box allows at most {} per job", spec.total_epochs(), caps.max_epochs),
        )
        .into());
    }
    if let Err(message) = caps.time_limits.check(spec.time_limit) {
        return Err(SpecError::new("time_limit", message).into());
    }
    let (field, side) = match spec.image_size {
        Some(size) => ("image_size", size),
        None => match spec.resize() {
            Resize::Bounded { max_side, .. } | Resize::Square(max_side) => ("max_image_side", max_side),
        },
    };
    if side > caps.max_image_side {
        return Err(
            SpecError::new(field, format!("{side} px is over this box's limit of {} px", caps.max_image_side)).into()
        );
    }
    Ok(())
}
