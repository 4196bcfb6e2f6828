//! The Slurm executor: a claimed job is written out as a batch script and handed to `sbatch`;
//! `trainq relay` runs its worker on a compute node and POSTs the worker's lines back
//! (`remote_lines`), which go through the same [`ProgressTracker`] and [`JobLog`] as a local
//! worker's. A task per job follows its Slurm state: pending reasons become the job's activity,
//! and the end becomes the job's state. The Slurm job outlives this server: a restart re-attaches
//! to it (`reattach`) instead of re-queueing.

use super::slurm::{self, SlurmConfig};
use super::{write_file, JobLog, JobPaths, ProgressTracker, Supervisor};
use crate::devices::DeviceSlot;
use crate::domain::outcome::{decide, Decision, RunFacts, RunOutcome, SlurmEnd, SlurmState};
use crate::domain::relay::{RelayBatch, Stream, WorkerExit};
use crate::domain::worker_protocol::WorkerJob;
use crate::domain::{Job, JobId, JobSpec};
use crate::events::EventKind;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A job running in Slurm, as the server follows it.
pub(super) struct RemoteJob {
    tracker: ProgressTracker,
    log: JobLog,
    /// The relay run and the last batch stored from it.
    last: Option<(String, u64)>,
    exit: Option<WorkerExit>,
    /// The job's spec (for an out-of-memory retry).
    spec: JobSpec,
}

/// Why relayed lines were not taken.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The job is not running in Slurm (finished, cancelled, or never was).
    #[error("job is not running here; stop reporting")]
    NotRunning,
}

impl Supervisor {
    fn slurm(&self) -> &SlurmConfig {
        match &self.config.executor {
            super::Executor::Slurm(config) => config,
            super::Executor::Local => unreachable!("Slurm jobs exist only with the Slurm executor"),
        }
    }

    /// Hands a claimed job to Slurm. A job `sbatch` refuses fails at once with Slurm's words.
    pub(super) async fn start_slurm(&self, work: WorkerJob, slot: &DeviceSlot, phases: u32) {
        let id = work.job_id;
        let paths = JobPaths::new(&self.config.data_dir, id);
        let log = self.job_log(&paths, id);
        let token = CancellationToken::new();
        self.running.lock().expect("running map poisoned").insert(id, token.clone());
        let submitted = async {
            use anyhow::Context;
            tokio::fs::create_dir_all(paths.artifacts()).await.context("creating the job folder")?;
            write_file(paths.worker_job(), serde_json::to_vec_pretty(&work).expect("worker jobs serialize"))
                .await
                .context("writing job.json")?;
            let script = paths.dir.join("job.sbatch");
            let text =
                slurm::batch_script(self.slurm(), &id.to_string(), &self.config.worker_program, &paths.worker_job());
            write_file(script.clone(), text).await.context("writing the batch script")?;
            let secret = crate::domain::user::new_token();
            let after = self.slurm_dependencies(&work.spec).await?;
            // A job with a time limit runs for what is left of it, and the grace to checkpoint.
            let time = self.time_limit_left(id).await.map(|(_, left)| left + self.config.shutdown_grace);
            let slurm_id =
                slurm::submit(self.slurm(), &id.to_string(), &paths.dir, &script, &secret, &after, time).await?;
            self.store.set_executor_ref(id, &slurm_id, &secret).await?;
            anyhow::Ok(slurm_id)
        }
        .await;
        match submitted {
            Ok(slurm_id) => {
                log.append(&format!("trainq: handed to Slurm as job {slurm_id} ({})\n", slot.name)).await;
                tracing::info!(%id, %slurm_id, "job handed to Slurm");
                self.events.publish(id, EventKind::Started { device: slot.id.clone() });
                self.follow(id, slurm_id, log, phases, work.spec.clone(), token);
            }
            Err(err) => {
                let reason = format!("Slurm did not take the job: {err:#}");
                log.append(&format!("trainq: {reason}\n")).await;
                self.start_failed(id, &log, &err, &work, phases, &reason).await;
            }
        }
    }

    /// The Slurm ids of the jobs `spec` waits for that run in Slurm now (the scheduler claims a
    /// waiting job in Slurm mode once each of them either succeeded or was handed to Slurm): what
    /// `sbatch --dependency=afterok:` holds it behind.
    async fn slurm_dependencies(&self, spec: &JobSpec) -> anyhow::Result<Vec<String>> {
        let mut after = Vec::new();
        for dep in spec.waits_for() {
            let Some(job) = self.store.job(dep).await? else { continue };
            match job.state {
                crate::domain::JobState::Succeeded => {}
                crate::domain::JobState::Running => match self.store.executor_ref(dep).await? {
                    Some(slurm_id) => after.push(slurm_id),
                    None => anyhow::bail!("job {dep} it waits for runs but has no Slurm job to wait for"),
                },
                other => anyhow::bail!("job {dep} it waits for is {other}, not in Slurm"),
            }
        }
        Ok(after)
    }

    /// What becomes of a job Slurm holds with `DependencyNeverSatisfied`: it fails naming the
    /// job it waits for that failed or was cancelled; it goes back to the queue when none did but
    /// one went back there (trainq re-queued it, so its old Slurm job ended without succeeding);
    /// `None` while one still runs in trainq (its end is being recorded): ask again later.
    async fn dependency_ended(&self, spec: &JobSpec) -> Option<Decision> {
        use crate::domain::JobState;
        let mut still_running = false;
        for dep in spec.waits_for() {
            match self.store.job(dep).await {
                Ok(Some(job)) if matches!(job.state, JobState::Failed | JobState::Cancelled) => {
                    let error = job.error.as_deref().map(|error| error.lines().next().unwrap_or_default());
                    let reason = crate::domain::chain::dependency_failed(dep, job.state, error);
                    return Some(Decision {
                        outcome: RunOutcome::Failed,
                        reason: Some(reason),
                        note: None,
                        batch_size: None,
                    });
                }
                Ok(Some(job)) if job.state == JobState::Running => still_running = true,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = ?err, "reading a job it waits for failed");
                    still_running = true;
                }
            }
        }
        (!still_running).then(|| Decision {
            outcome: RunOutcome::Interrupted,
            reason: None,
            note: Some(String::from("a job it waits for went back to the queue; it waits for it again")),
            batch_size: None,
        })
    }

    /// After a restart: follow a job that Slurm kept running while this server was away.
    pub async fn reattach(&self, job: &Job, slurm_id: String) {
        let paths = JobPaths::new(&self.config.data_dir, job.id);
        let log = self.job_log(&paths, job.id);
        let token = CancellationToken::new();
        self.running.lock().expect("running map poisoned").insert(job.id, token.clone());
        if job.cancel_requested {
            token.cancel();
        }
        log.append(&format!("trainq: server restarted; following Slurm job {slurm_id} again\n")).await;
        tracing::info!(job_id = %job.id, %slurm_id, "re-attached to a Slurm job");
        let phases = job.spec.phases.len() as u32;
        self.follow(job.id, slurm_id, log, phases, job.spec.clone(), token);
    }

    fn follow(&self, id: JobId, slurm_id: String, log: JobLog, phases: u32, spec: JobSpec, token: CancellationToken) {
        let tracker = ProgressTracker::new(
            self.store.clone(),
            id,
            log.clone(),
            phases,
            self.events.clone(),
            self.telemetry.clone(),
        );
        let remote = Arc::new(tokio::sync::Mutex::new(RemoteJob { tracker, log, last: None, exit: None, spec }));
        self.remote.lock().expect("remote map poisoned").insert(id, remote.clone());
        let supervisor = self.clone();
        let span = tracing::info_span!("slurm", job_id = %id, %slurm_id);
        tokio::spawn(async move { supervisor.track(id, slurm_id, remote, token).await }.instrument(span));
    }

    /// Lines a relay sent for job `id`, in order; a batch already stored is ignored.
    pub async fn remote_lines(&self, id: JobId, batch: RelayBatch) -> Result<(), RemoteError> {
        let remote =
            self.remote.lock().expect("remote map poisoned").get(&id).cloned().ok_or(RemoteError::NotRunning)?;
        let mut remote = remote.lock().await;
        if let Some((run, seq)) = &remote.last {
            if *run == batch.run && batch.seq <= *seq {
                return Ok(());
            }
        }
        for line in &batch.lines {
            match line.stream {
                Stream::Stdout => remote.tracker.handle_line(&line.text).await,
                Stream::Stderr => remote.log.append_line(&line.text).await,
            }
        }
        if let Some(exit) = batch.exit {
            remote.exit = Some(exit);
        }
        remote.last = Some((batch.run, batch.seq));
        Ok(())
    }

    async fn track(
        &self,
        id: JobId,
        slurm_id: String,
        remote: Arc<tokio::sync::Mutex<RemoteJob>>,
        token: CancellationToken,
    ) {
        let poll = self.slurm().poll;
        let mut cancel_sent = false;
        // Slurm holds it behind a job that ended without succeeding: what becomes of it instead.
        let mut dependency_ended: Option<Decision> = None;
        let mut failures = 0u32;
        let last = loop {
            if token.is_cancelled() && !cancel_sent {
                cancel_sent = true;
                if let Err(err) = slurm::cancel(&slurm_id).await {
                    tracing::warn!(%err, "scancel failed");
                }
            }
            match slurm::job(&slurm_id).await {
                Ok(Some(job)) if job.is_finished() => break Some(job),
                Ok(Some(job))
                    if job.state == SlurmState::Pending && job.reason == slurm::DEPENDENCY_NEVER_SATISFIED =>
                {
                    if dependency_ended.is_none() {
                        let spec = remote.lock().await.spec.clone();
                        dependency_ended = self.dependency_ended(&spec).await;
                        if dependency_ended.is_some() {
                            if let Err(err) = slurm::cancel(&slurm_id).await {
                                tracing::warn!(%err, "scancel failed");
                            }
                        }
                    }
                }
                Ok(Some(job)) => {
                    failures = 0;
                    let activity = match job.state {
                        SlurmState::Pending => format!("pending in Slurm: {}", job.reason),
                        _ => String::new(),
                    };
                    if !activity.is_empty() {
                        remote.lock().await.tracker.set_activity(&activity).await;
                    }
                }
                Ok(None) => break None,
                Err(err) => {
                    // slurmctld restarting, say: keep following; the job is not lost.
                    failures += 1;
                    if failures % 10 == 1 {
                        tracing::warn!(%err, "reading the Slurm job failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = token.cancelled(), if !cancel_sent => {}
                // The job keeps running in Slurm; the next server start re-attaches to it.
                () = self.shutdown.cancelled() => {
                    self.remote.lock().expect("remote map poisoned").remove(&id);
                    self.running.lock().expect("running map poisoned").remove(&id);
                    return;
                }
            }
        };
        // The relay sends its last batch before it exits, so it is normally here already.
        for _ in 0..20 {
            if remote.lock().await.exit.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.remote.lock().expect("remote map poisoned").remove(&id);
        let mut remote = remote.lock().await;
        let stored = self.store.job(id).await.ok().flatten();
        let spec = remote.spec.clone();
        let end = match &last {
            Some(job) => job.end(&slurm_id),
            None => SlurmEnd {
                id: slurm_id.clone(),
                state: None,
                reason: String::new(),
                exit: None,
                marked_by_trainq: false,
            },
        };
        let failure = remote.tracker.failure().cloned();
        let retries = self.retries(id, &spec).await;
        // Its `--time` was its limit: Slurm's TIMEOUT is the limit reached.
        let time_limit_reached = match (stored.as_ref().and_then(|job| job.time_limit), &end.state) {
            (Some(limit), Some(SlurmState::Timeout)) => {
                Some(crate::domain::time_limit::reached_reason(limit, Some(remote.tracker.progress())))
            }
            _ => None,
        };
        let facts = RunFacts {
            exit: remote.exit,
            cancel_requested: cancel_sent || stored.as_ref().is_some_and(|job| job.cancel_requested),
            server_stopping: false,
            saw_final: remote.tracker.saw_final() || stored.as_ref().is_some_and(|job| job.final_metrics.is_some()),
            failure: failure.as_ref().map(|(kind, message)| (*kind, message.as_str())),
            slurm: Some(&end),
            gpu: self.slurm().gpus > 0,
            cpu_memory_limit: None,
            oom_retry_batch: retries.oom_retry_batch,
            storage_attempts_left: retries.storage_attempts_left,
            disk: retries.disk.as_deref(),
            time_limit_reached: time_limit_reached.as_deref(),
        };
        let decision = dependency_ended.unwrap_or_else(|| decide(&facts));
        let log = remote.log.clone();
        self.conclude(id, &log, &mut remote.tracker, decision, &spec, &format!("Slurm job {slurm_id} ended")).await;
    }
}
