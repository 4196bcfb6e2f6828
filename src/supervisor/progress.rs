//! Turns a worker's stdout into database rows: epochs and final metrics at once, step progress at
//! most twice a second; each stored change is then published as a live event. Plain output lines
//! go to the job's log.

use super::JobLog;
use crate::domain::job::ResumePoint;
use crate::domain::job::{FeatureUse, SplitLoad};
use crate::domain::worker_protocol::{EpochMetrics, FailureKind, FinalMetrics, ProgressEvent};
use crate::domain::{JobId, JobProgress};
use crate::events::{EventBus, EventKind};
use crate::store::Store;
use std::time::{Duration, Instant};

const STEP_WRITE_INTERVAL: Duration = Duration::from_millis(500);

pub(super) struct ProgressTracker {
    store: Store,
    id: JobId,
    log: JobLog,
    progress: JobProgress,
    last_write: Option<Instant>,
    saw_final: bool,
    events: EventBus,
    failure: Option<(FailureKind, String)>,
    epochs_seen: u32,
    /// Results the store refused (a full disk, say), in order, kept until a write lands: the
    /// supervisor retries them before it records the job's end.
    unsaved_epochs: Vec<EpochMetrics>,
    unsaved_final: Option<FinalMetrics>,
    /// Epoch times go to `/metrics` as they arrive.
    telemetry: crate::telemetry::Telemetry,
    /// The last epoch (phase, epoch) a resumed worker had done before: the curves it sends again
    /// up to there were timed by an earlier run, and are not timed twice.
    replayed_until: Option<(u32, u32)>,
}

impl ProgressTracker {
    pub(super) fn new(
        store: Store,
        id: JobId,
        log: JobLog,
        phases: u32,
        events: EventBus,
        telemetry: crate::telemetry::Telemetry,
    ) -> ProgressTracker {
        let progress = JobProgress { phases, activity: String::from("starting"), ..JobProgress::default() };
        ProgressTracker {
            store,
            id,
            log,
            progress,
            last_write: None,
            saw_final: false,
            events,
            failure: None,
            epochs_seen: 0,
            unsaved_epochs: Vec::new(),
            unsaved_final: None,
            telemetry,
            replayed_until: None,
        }
    }

    /// Stores the epochs and final metrics the store refused so far, oldest first; each epoch
    /// goes out as a live event once stored.
    pub(super) async fn save_pending(&mut self) -> Result<(), crate::store::StoreError> {
        while let Some(metrics) = self.unsaved_epochs.first() {
            self.store.record_epoch(self.id, metrics).await?;
            let metrics = self.unsaved_epochs.remove(0);
            self.events.publish(self.id, EventKind::Epoch { metrics });
        }
        if let Some(metrics) = &self.unsaved_final {
            self.store.set_final_metrics(self.id, metrics).await?;
            self.unsaved_final = None;
        }
        Ok(())
    }

    /// What the worker said went wrong before it exited, if it said.
    pub(super) fn failure(&self) -> Option<&(FailureKind, String)> {
        self.failure.as_ref()
    }

    /// Replaces the activity the job shows (e.g. "pending in Slurm: Resources") and stores it.
    pub(super) async fn set_activity(&mut self, activity: &str) {
        if self.progress.activity == activity {
            return;
        }
        self.progress.activity = activity.to_string();
        if self.store.set_progress(self.id, &self.progress).await.is_ok() {
            self.events.publish(self.id, EventKind::Progress { progress: self.progress.clone() });
        }
    }

    /// Where the worker stands as last reported (phase, epoch, step).
    pub(super) fn progress(&self) -> &JobProgress {
        &self.progress
    }

    /// Epoch events received from this worker.
    pub(super) fn epochs_seen(&self) -> u32 {
        self.epochs_seen
    }

    pub(super) fn saw_final(&self) -> bool {
        self.saw_final
    }

    pub(super) async fn handle_line(&mut self, line: &str) {
        match ProgressEvent::from_line(line) {
            None => self.log_line(line).await,
            Some(Err(err)) => self.log_line(&format!("trainq: unreadable progress event ({err}): {line}")).await,
            Some(Ok(event)) => {
                if let Err(err) = self.apply(event).await {
                    tracing::error!(error = ?err, "storing worker progress failed");
                }
            }
        }
    }

    async fn log_line(&self, line: &str) {
        self.log.append_line(line).await;
    }

    async fn apply(&mut self, event: ProgressEvent) -> Result<(), crate::store::StoreError> {
        let progress = &mut self.progress;
        let urgent = match event {
            ProgressEvent::Started { precision, .. } => {
                progress.activity = String::from("loading data");
                progress.precision = precision;
                true
            }
            ProgressEvent::Data { split, images, skipped, skipped_files, seconds, cache, decoded } => {
                progress.data.insert(split, SplitLoad { images, skipped, skipped_files, decoded, cache, seconds });
                true
            }
            ProgressEvent::Features { phase, cut, state, reason, seconds, bytes } => {
                progress.features.insert(phase.to_string(), FeatureUse { cut, state, reason, seconds, bytes });
                true
            }
            ProgressEvent::Artifact { .. } => false,
            ProgressEvent::Phase { phase, epochs, .. } => {
                // Steps restart too: the last phase's `step == steps` would count an epoch as done.
                *progress = JobProgress {
                    phase,
                    epochs,
                    epoch: 1,
                    step: 0,
                    activity: String::from("training"),
                    ..progress.clone()
                };
                true
            }
            ProgressEvent::Step { phase, epoch, step, steps, images_per_sec } => {
                progress.phase = phase;
                progress.epoch = epoch;
                progress.step = step;
                progress.steps = steps;
                progress.images_per_sec = Some(images_per_sec);
                false
            }
            ProgressEvent::Epoch(metrics) => {
                self.epochs_seen += 1;
                if self.replayed_until.is_none_or(|done| (metrics.phase, metrics.epoch) > done) {
                    self.telemetry.epoch_took(metrics.seconds);
                }
                progress.step = progress.steps;
                self.unsaved_epochs.push(metrics);
                self.save_pending().await?;
                true
            }
            ProgressEvent::Checkpoint { phase, epoch, step } => {
                self.store.set_resume_point(self.id, ResumePoint { phase, epoch, step }).await?;
                false
            }
            ProgressEvent::Resumed { phase, epoch, step } => {
                self.replayed_until = Some((phase, epoch));
                self.log
                    .append(&format!(
                        "trainq: resumed from the checkpoint after phase {phase} epoch {epoch} (+{step} steps)\n"
                    ))
                    .await;
                progress.activity = String::from("resuming");
                true
            }
            ProgressEvent::Failed { kind, message } => {
                self.failure = Some((kind, message));
                false
            }
            ProgressEvent::Final(metrics) => {
                self.saw_final = true;
                progress.activity = String::from("finishing");
                self.unsaved_final = Some(metrics);
                self.save_pending().await?;
                true
            }
        };
        let due = self.last_write.is_none_or(|at| at.elapsed() >= STEP_WRITE_INTERVAL);
        if urgent || due {
            self.store.set_progress(self.id, &self.progress).await?;
            self.events.publish(self.id, EventKind::Progress { progress: self.progress.clone() });
            self.last_write = Some(Instant::now());
        }
        Ok(())
    }
}
