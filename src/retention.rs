//! Retention of finished jobs over a semester: delete one (`DELETE /api/jobs/{id}`, `trainq rm`),
//! gc the old ones (`POST /api/admin/gc`, `trainq admin gc`), and retention, the same gc run daily
//! by the server (`--retention-days`). A deleted job keeps its row as a tombstone; a pruned one
//! keeps the files its keep list names. Every change of a job's bytes goes through the store's
//! running totals, so each user's usage stays one row to read. No axum, no SQL.

use crate::domain::retention::KeepList;
use crate::domain::{Job, JobId, Timestamp};
use crate::events::{EventBus, EventKind};
use crate::store::{Store, StoreError, Tombstone};
use crate::supervisor::Supervisor;
use std::time::Duration;

/// Who a delete is by when the server does it: an admin's gc, or the daily retention.
pub const BY_GC: &str = "gc";
/// See [`BY_GC`].
pub const BY_RETENTION: &str = "retention";

/// What delete, gc and retention need: the store, the supervisor (warm models and job folders),
/// the event bus (so dashboards update). Cheap to clone.
#[derive(Clone)]
pub struct Retention {
    store: Store,
    supervisor: Supervisor,
    events: EventBus,
}

/// Why a delete, gc or prune failed: the database, or a file that would not go.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The database refused.
    #[error("database error")]
    Store(#[from] StoreError),
    /// A queued or running job starts from this job's weights (`init_from`).
    #[error("job {id} is left alone: queued job {waiting} starts from its weights")]
    NeededBy {
        /// The job gc would clean.
        id: JobId,
        /// The job that starts from it.
        waiting: JobId,
    },
    /// Removing a job's files failed; the job is marked deleted (or not pruned) and its folder
    /// is left for the admin.
    #[error("removing the files of job {id}: {source}")]
    Files {
        /// The job.
        id: JobId,
        /// The system's error.
        source: std::io::Error,
    },
}

/// What a gc is asked to do.
#[derive(Debug, Clone)]
pub struct GcPlan {
    /// Finished jobs that ended longer ago than this.
    pub older_than: Duration,
    /// `None`: delete them (tombstones); `Some`: remove only the files the list does not keep.
    pub keep: Option<KeepList>,
    /// Only report what would go.
    pub dry_run: bool,
    /// [`BY_GC`] or [`BY_RETENTION`].
    pub by: &'static str,
}

/// One job a gc went through.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct GcJob {
    /// The job.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(with = "crate::domain::timestamp::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
    /// `delete` (files and all, a tombstone stays) or `prune` (only files the keep list does not
    /// name).
    pub action: String,
    /// Bytes removed (on a dry run: that would be removed).
    pub freed_bytes: u64,
    /// Bytes that stay (a prune's kept files).
    pub kept_bytes: u64,
}

/// What a gc did, or on a dry run would do.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct GcReport {
    /// Whether this was a dry run (nothing was removed).
    pub dry_run: bool,
    /// Jobs that ended before this (RFC 3339, UTC) were selected.
    #[serde(with = "crate::domain::timestamp::rfc3339")]
    #[schema(value_type = String)]
    pub cutoff: Timestamp,
    /// The keep list of a prune; absent for a delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<Vec<String>>,
    /// Every job selected, oldest end first.
    pub jobs: Vec<GcJob>,
    /// Bytes freed (would be freed) in all.
    pub freed_bytes: u64,
    /// Jobs whose files could not be removed (their errors are in the server's log).
    pub failed: Vec<JobId>,
}

impl Retention {
    /// Delete, gc and retention of the jobs in `store`, whose folders `supervisor` knows.
    pub fn new(store: Store, supervisor: Supervisor, events: EventBus) -> Retention {
        Retention { store, supervisor, events }
    }

    /// Deletes a finished job: marks it deleted by `by` (the row stays), stops its warm model,
    /// removes its folder, and announces it. The tombstone comes first, so a delete interrupted
    /// by a crash never leaves a live job with missing files (only a deleted one whose folder
    /// the next delete or gc of it finishes removing).
    /// Returns what the store found and the bytes the folder's files held.
    pub async fn delete(&self, id: JobId, by: &str) -> Result<(Tombstone, u64), RetentionError> {
        let outcome = self.store.tombstone(id, by).await?;
        let mut freed = 0;
        if let Tombstone::Deleted(_) = &outcome {
            // Announced before the files go: the tombstone is the fact, and a dashboard that
            // reloads the job must see it deleted rather than missing its files.
            self.events.publish(id, EventKind::Deleted { by: by.to_string() });
            freed = self.remove_files(id).await?;
            tracing::info!(job_id = %id, by, freed, "job deleted");
        }
        Ok((outcome, freed))
    }

    async fn remove_files(&self, id: JobId) -> Result<u64, RetentionError> {
        self.supervisor.forget_model(id).await;
        let dir = self.supervisor.job_paths(id).dir;
        let removed = tokio::task::spawn_blocking(move || crate::files::prune::remove_folder(&dir)).await;
        removed
            .unwrap_or_else(|err| Err(std::io::Error::other(err)))
            .map_err(|source| RetentionError::Files { id, source })
    }

    /// Runs `plan` over the live jobs that ended before its age: each is deleted, or pruned to
    /// its keep list (its bytes measured again, a note added, and marked so retention does not
    /// select it again). A job whose files would not go is named in `failed`; the others go on.
    pub async fn gc(&self, plan: &GcPlan) -> Result<GcReport, StoreError> {
        let cutoff = Timestamp::now().minus(plan.older_than);
        let candidates = self.store.ended_before(cutoff, plan.keep.is_some()).await?;
        let mut report = GcReport {
            dry_run: plan.dry_run,
            cutoff,
            keep: plan.keep.as_ref().map(|keep| keep.patterns().to_vec()),
            jobs: Vec::with_capacity(candidates.len()),
            freed_bytes: 0,
            failed: Vec::new(),
        };
        for job in candidates {
            match self.gc_one(&job, plan).await {
                Ok(entry) => {
                    report.freed_bytes += entry.freed_bytes;
                    report.jobs.push(entry);
                }
                Err(err) => {
                    tracing::warn!(job_id = %job.id, error = %err, "gc could not clean a job");
                    report.failed.push(job.id);
                }
            }
        }
        Ok(report)
    }

    async fn gc_one(&self, job: &Job, plan: &GcPlan) -> Result<GcJob, RetentionError> {
        // A queued job that starts from its weights keeps them until it has started.
        if let Some(waiting) = self.store.starting_from(job.id).await? {
            return Err(RetentionError::NeededBy { id: job.id, waiting });
        }
        let dir = self.supervisor.job_paths(job.id).dir;
        let keep = plan.keep.clone();
        let dry_run = plan.dry_run;
        let measured = tokio::task::spawn_blocking(move || match &keep {
            None => Ok(crate::files::prune::Pruned {
                removed_bytes: crate::files::prune::folder_bytes(&dir),
                ..Default::default()
            }),
            // The model reads only what stays if it is kept; a prune that takes its weights
            // stops it below, before the next request.
            Some(keep) => crate::files::prune::prune(&dir, |path| keep.keeps(path), dry_run),
        })
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)))
        .map_err(|source| RetentionError::Files { id: job.id, source })?;
        let action = if plan.keep.is_some() { "prune" } else { "delete" };
        let entry = GcJob {
            id: job.id,
            name: job.name.clone(),
            owner: job.owner.clone(),
            finished_at: job.finished_at,
            action: action.to_string(),
            freed_bytes: measured.removed_bytes,
            kept_bytes: measured.kept_bytes,
        };
        if plan.dry_run {
            return Ok(entry);
        }
        match &plan.keep {
            None => {
                self.delete(job.id, plan.by).await?;
            }
            Some(keep) => {
                self.supervisor.forget_model(job.id).await;
                let note = format!(
                    "pruned by {} (ended before {}): kept {}, removed {} files ({})",
                    plan.by,
                    job.finished_at.map_or_else(|| String::from("?"), Timestamp::to_rfc3339),
                    keep.patterns().join(","),
                    measured.removed_files,
                    crate::disk_space::gigabytes(measured.removed_bytes),
                );
                self.store.set_disk_bytes(job.id, measured.kept_bytes, Some(&note)).await?;
            }
        }
        Ok(entry)
    }

    /// Measures, once, the folders of ended jobs whose size is not known (they ended before
    /// sizes were kept, or the server died between a job's end and its measurement), 500 at a
    /// time, so every user's usage counts them. Run in the background at start: each such job's
    /// folder is walked once, and the next start finds none of them again.
    pub async fn measure_unmeasured(self) {
        let mut measured = 0u64;
        loop {
            let ids = match self.store.unmeasured_jobs(500).await {
                Ok(ids) if ids.is_empty() => break,
                Ok(ids) => ids,
                Err(err) => {
                    tracing::warn!(error = ?err, "reading the jobs to measure failed; the next start tries again");
                    return;
                }
            };
            for id in ids {
                let dir = self.supervisor.job_paths(id).dir;
                let bytes =
                    tokio::task::spawn_blocking(move || crate::files::prune::folder_bytes(&dir)).await.unwrap_or(0);
                if let Err(err) = self.store.set_disk_bytes(id, bytes, None).await {
                    tracing::warn!(job_id = %id, error = ?err, "recording a job's size failed; the next start tries again");
                    return;
                }
                measured += 1;
            }
        }
        if measured > 0 {
            tracing::info!(jobs = measured, "measured the folders of jobs that ended before their sizes were kept");
        }
    }

    /// Retention: once a day (the first pass a minute after start), the jobs that ended more
    /// than `days` ago are pruned to `keep` (deleted when `None`). Each pass reads only jobs not
    /// deleted or pruned before (a partial index), so it does not walk the semester's jobs again
    /// every day.
    pub async fn retain(self, days: u32, keep: Option<KeepList>) {
        let plan = GcPlan {
            older_than: Duration::from_secs(u64::from(days) * 86_400),
            keep,
            dry_run: false,
            by: BY_RETENTION,
        };
        let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep_until(next).await;
            next += Duration::from_secs(86_400);
            match self.gc(&plan).await {
                Ok(report) if !report.jobs.is_empty() || !report.failed.is_empty() => tracing::info!(
                    jobs = report.jobs.len(),
                    freed = %crate::disk_space::gigabytes(report.freed_bytes),
                    failed = report.failed.len(),
                    "retention pruned old jobs"
                ),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = ?err, "retention could not read old jobs; it tries again tomorrow"),
            }
        }
    }
}
