//! Resuming a job with more time (`POST /api/jobs/{id}/resubmit?resume=true`, `trainq redo ID
//! --resume --set time_limit=4h`): a child of a timed-out, failed or cancelled job that continues
//! from the parent's resumable checkpoint instead of from the start. The checkpoint file is
//! linked (or copied) into the child's folder before the child is inserted, and the store copies
//! the parent's epochs up to it, so the child's curves hold every epoch exactly once and its
//! worker redoes none of them.
//!
//! A checkpoint only fits the training it came from, so the child's spec may differ from the
//! parent's only in what does not change the training (`domain::spec::RESUMABLE_CHANGES`, the
//! same the worker ignores when it matches a checkpoint to its spec): any other change is a 422
//! naming the field.

use super::{Accepted, Lineage, Submissions, SubmitError};
use crate::domain::job::ResumePoint;
use crate::domain::spec::RESUMABLE_CHANGES;
use crate::domain::sweep;
use crate::domain::user::User;
use crate::domain::{Job, JobId, JobSpec, JobState, SpecError};
use crate::events::EventKind;
use crate::store::NewJob;
use std::path::{Path, PathBuf};

/// The worker's resumable checkpoint inside a job's state folder (`worker::resume::FILE_NAME`).
const CHECKPOINT_FILE: &str = "resume.safetensors";

impl Submissions<'_> {
    /// Queues a child of `parent` that continues from its checkpoint, with `patch_body` (a JSON
    /// merge patch that may change only [`RESUMABLE_CHANGES`]) applied to its spec.
    pub async fn resume(&self, user: &User, parent: &Job, patch_body: &[u8]) -> Result<Accepted, SubmitError> {
        if !matches!(parent.state, JobState::Timeout | JobState::Failed | JobState::Cancelled) {
            return Err(SubmitError::NotResumable {
                message: format!(
                    "job {} is {}; only a timed-out, failed or cancelled job can be resumed",
                    parent.id, parent.state
                ),
                state: parent.state,
            });
        }
        let Some(point) = parent.resume_point.filter(|point| point.epoch > 0 || point.phase > 1 || point.step > 0)
        else {
            return Err(SubmitError::NotResumable {
                message: format!(
                    "job {} stopped before it saved a checkpoint, so there is nothing to resume; resubmit it without resume",
                    parent.id
                ),
                state: parent.state,
            });
        };
        let patch = super::merge_patch_of(patch_body)?;
        let mut value = serde_json::to_value(&parent.spec).map_err(anyhow::Error::from)?;
        sweep::merge_patch(&mut value, &patch);
        let spec = JobSpec::parse(&serde_json::to_vec(&value).map_err(anyhow::Error::from)?)?;
        check_resumable(&parent.spec, &spec)?;
        super::check_spec_limits(&self.caps, user, &spec)?;
        let variants = [sweep::Variant { spec: spec.clone(), params: None }];
        self.check_limits(user, &variants).await?;
        self.check_quota(user).await?;
        self.check_inputs(&spec).await?;
        self.disk.writable()?;
        let id = JobId::new();
        let jobs = self.folders.data_dir.join("jobs");
        let (from, to) = (checkpoint_path(&jobs, parent.id), checkpoint_path(&jobs, id));
        tokio::task::spawn_blocking(move || link_or_copy(&from, &to))
            .await
            .map_err(|err| SubmitError::Internal(err.into()))?
            .map_err(|err| SubmitError::NotResumable {
                message: format!(
                    "job {}'s checkpoint could not be taken over ({err}); were its files deleted? resubmit it without resume",
                    parent.id
                ),
                state: parent.state,
            })?;
        let lineage = Lineage { parent: parent.id, note: resumed_note(parent.id, point, &patch) };
        let new = NewJob {
            id,
            name: spec.name.clone(),
            group_id: None,
            parent_id: Some(lineage.parent),
            params: None,
            notes: vec![lineage.note],
            owner: Some(user.name.clone()),
            priority: spec.priority,
            memory_bytes: parent.memory_bytes.max(crate::domain::memory::estimate_bytes(&spec)),
            time_limit: self.caps.time_limits.applied(spec.time_limit),
            spec,
        };
        let job = self.store.insert_resumed(&new, parent.id, point).await?;
        tracing::info!(job_id = %job.id, parent = %parent.id, owner = %user.name, "resumed job queued");
        self.events.publish(job.id, EventKind::Queued { name: job.name.clone() });
        Ok(Accepted { group_id: None, jobs: vec![job] })
    }
}

/// The checkpoint file of job `id` under the jobs folder.
fn checkpoint_path(jobs: &Path, id: JobId) -> PathBuf {
    jobs.join(id.to_string()).join("state").join(CHECKPOINT_FILE)
}

/// Gives `to` the bytes of `from`: a hard link (the worker replaces its checkpoint by renaming a
/// new file over it, so the parent's file is never written through the link), or a copy where
/// the folders are on different filesystems.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(folder) = to.parent() {
        std::fs::create_dir_all(folder)?;
    }
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(drop))
}

/// The child's first note: where it resumes and what changed.
fn resumed_note(parent: JobId, point: ResumePoint, patch: &serde_json::Value) -> String {
    format!("resumed from {parent} after phase {}, epoch {} with {patch}", point.phase, point.epoch)
}

/// Whether `child` can continue `parent`'s checkpoint: the same spec but for
/// [`RESUMABLE_CHANGES`]; otherwise a 422 naming the first field that differs.
pub fn check_resumable(parent: &JobSpec, child: &JobSpec) -> Result<(), SpecError> {
    let (parent, child) = (serde_json::to_value(parent.training()), serde_json::to_value(child.training()));
    let (Ok(serde_json::Value::Object(parent)), Ok(serde_json::Value::Object(child))) = (parent, child) else {
        return Ok(());
    };
    let fields: std::collections::BTreeSet<&String> = parent.keys().chain(child.keys()).collect();
    let differing = fields.into_iter().find(|field| parent.get(*field) != child.get(*field)).cloned();
    match differing {
        None => Ok(()),
        Some(field) => Err(SpecError::new(
            field.as_str(),
            format!(
                "a resumed job continues the same training from its checkpoint, so only {} may change; resubmit without resume to change `{field}`",
                RESUMABLE_CHANGES.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(patch: serde_json::Value) -> JobSpec {
        let mut value = serde_json::json!({
            "name": "q1", "dataset": "d", "backbone": "vgg16", "image_size": 32, "batch_size": 4,
            "head": ["gap", {"dense": 1}], "phases": [{"epochs": 3, "train": "head"}],
            "optimizer": {"name": "sgd", "lr": 0.1}
        });
        sweep::merge_patch(&mut value, &patch);
        JobSpec::parse(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn only_the_time_limit_name_and_notify_may_change_when_resuming() {
        let parent = spec(serde_json::json!({"time_limit": "1h"}));
        let more_time = spec(serde_json::json!({"time_limit": "4h", "name": "q1 again", "notify": ["timeout"]}));
        assert_eq!(check_resumable(&parent, &more_time), Ok(()));
        assert_eq!(check_resumable(&parent, &spec(serde_json::json!({}))), Ok(()), "the limit may go too");
        for (patch, field) in [
            (serde_json::json!({"optimizer": {"lr": 0.01}}), "optimizer"),
            (serde_json::json!({"phases": [{"epochs": 5, "train": "head"}]}), "phases"),
            (serde_json::json!({"seed": 7}), "seed"),
            (serde_json::json!({"checkpoints": "all"}), "checkpoints"),
        ] {
            let err = check_resumable(&parent, &spec(patch.clone())).unwrap_err();
            assert_eq!(err.field, field, "{patch}");
            assert!(err.message.contains("without resume"), "{}", err.message);
        }
    }

    #[test]
    fn a_checkpoint_is_linked_and_the_parents_file_stays_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (parent, child) = (JobId::new(), JobId::new());
        let from = checkpoint_path(dir.path(), parent);
        std::fs::create_dir_all(from.parent().unwrap()).unwrap();
        std::fs::write(&from, b"epoch 3").unwrap();
        let to = checkpoint_path(dir.path(), child);
        link_or_copy(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"epoch 3");
        // The child's worker replaces its checkpoint by a rename, as `files::write_atomic` does.
        let fresh = to.with_extension("tmp");
        std::fs::write(&fresh, b"epoch 4").unwrap();
        std::fs::rename(&fresh, &to).unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), b"epoch 3", "the parent keeps its checkpoint");
        assert!(link_or_copy(&checkpoint_path(dir.path(), JobId::new()), &to).is_err(), "no checkpoint: an error");
    }
}
