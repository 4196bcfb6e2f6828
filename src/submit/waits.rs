//! The checks of what a spec waits for (`after`, `init_from`) that read the store and the disk:
//! at submit, at resubmit, for each sweep combination, and when `PATCH /api/jobs/{id}` changes a
//! queued job's waits. The checks that need only specs are `domain::chain`'s.
//!
//! A job id in `after` or `init_from` that does not exist and one that belongs to someone else
//! are refused alike (the same 422 naming the field), so ids cannot be probed.

use super::{Submissions, SubmitError};
use crate::domain::chain;
use crate::domain::user::User;
use crate::domain::{Job, JobId, JobSpec, JobState, SpecError};
use crate::supervisor::JobPaths;
use std::collections::HashMap;

impl Submissions<'_> {
    /// Checks what `spec` waits for, for `user`: every job it names exists and is theirs (or the
    /// caller is an admin); none in `after` already failed or was cancelled (it would never
    /// start); `init_from`'s job has not failed, saves the named checkpoint, still has it on disk
    /// if it ended, and trained a network of the same shapes. `job` is the queued job being
    /// changed (`PATCH`), whose new waits must not close a cycle.
    pub async fn check_waits(&self, user: &User, spec: &JobSpec, job: Option<JobId>) -> Result<(), SubmitError> {
        let waits = spec.waits_for();
        if waits.is_empty() {
            return Ok(());
        }
        let found: HashMap<JobId, Job> =
            self.store.jobs_with_ids(&waits).await?.into_iter().map(|job| (job.id, job)).collect();
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
            if dep.state.is_unsuccessful_end() {
                return Err(SpecError::new(
                    field,
                    format!("job {} already {}, so this job would never start; resubmit that job and wait for the new one, or leave it out", dep.id, dep.state),
                )
                .into());
            }
        }
        if let Some(init) = &spec.init_from {
            let source = visible(&init.job).ok_or_else(|| unknown(String::from("init_from.job"), init.job))?;
            if source.state.is_unsuccessful_end() {
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
                self.check_checkpoint_on_disk(source, init.checkpoint).await?;
            }
        }
        if let Some(job) = job {
            if let Some(cycle) = self.find_cycle(job, &waits).await? {
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
        &self,
        source: &Job,
        checkpoint: crate::domain::spec::Checkpoint,
    ) -> Result<(), SubmitError> {
        let artifacts = JobPaths::new(self.folders.data_dir, source.id).artifacts();
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

    /// The cycle `job` waiting for `waits` would close, walking what queued jobs wait for from
    /// the store, one query per step of the walk.
    async fn find_cycle(&self, job: JobId, waits: &[JobId]) -> Result<Option<Vec<JobId>>, SubmitError> {
        let mut deps_of: HashMap<JobId, Vec<JobId>> = HashMap::new();
        let mut seen: std::collections::HashSet<JobId> = waits.iter().copied().collect();
        let mut frontier: Vec<JobId> = waits.to_vec();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for (from, to) in self.store.waits_of_queued(&frontier).await? {
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
}
