//! Job identity and the job state machine.

use crate::domain::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A job's public identifier: a random UUID, so ids leak nothing about other users' jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh random id.
    pub fn new() -> JobId {
        JobId(uuid::Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<JobId, uuid::Error> {
        uuid::Uuid::parse_str(s).map(JobId)
    }
}

/// Where a job is in its life. Stored as the lowercase name in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted and waiting for a device.
    Queued,
    /// Claimed by the scheduler; a worker process runs it.
    Running,
    /// The worker exited 0 after writing its results.
    Succeeded,
    /// The worker crashed, exited non-zero, or could not start.
    Failed,
    /// A user cancelled it, queued or running.
    Cancelled,
    /// It used all the device time its `time_limit` allowed and was stopped with a checkpoint;
    /// a resubmit with `resume=true` continues it with more time.
    Timeout,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Timeout,
    ];

    /// The name used in the API and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Timeout => "timeout",
        }
    }

    /// True once nothing more will happen to the job.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Timeout)
    }

    /// True for the ends that are not a success (failed, cancelled, timed out): a job that
    /// waits for one (`after`, `init_from`) can never start, and fails.
    pub fn is_unsuccessful_end(self) -> bool {
        matches!(self, JobState::Failed | JobState::Cancelled | JobState::Timeout)
    }

    /// The legal transitions. `Running → Queued` is the re-queue of a job whose server died;
    /// `Queued → Failed` is a job whose dependency (`after`, `init_from`) failed or was cancelled;
    /// `Running → Timeout` is a job stopped at its time limit.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Queued, Failed)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, Timeout)
                | (Running, Queued)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<JobState, String> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown state `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// Where a running job is, as the queue listing and the dashboard show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobProgress {
    /// 1-based phase number (0 before training starts).
    pub phase: u32,
    /// Phases in the spec.
    pub phases: u32,
    /// 1-based epoch within the phase.
    pub epoch: u32,
    /// Epochs in the current phase.
    pub epochs: u32,
    /// Steps done in the current epoch.
    pub step: u32,
    /// Steps per epoch.
    pub steps: u32,
    /// Training throughput of the current epoch.
    pub images_per_sec: Option<f64>,
    /// What the worker is doing when not training (`starting`, `loading data`, `evaluating`).
    pub activity: String,
    /// What the worker computes in and why: `fp32 (auto: the CPU has no bf16 instructions)`,
    /// `bf16 autocast (auto: the CPU has AMX-BF16)`, `bf16 autocast, channels-last (auto: a GPU)`,
    /// `… (asked for)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// How each split was loaded, by split name: images, skipped files, and whether the shared
    /// preprocessing cache was hit (0 images decoded) or built.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, SplitLoad>,
    /// Per phase (`"1"`, `"2"`, …): whether its frozen prefix ran from cached activations.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub features: std::collections::BTreeMap<String, FeatureUse>,
}

/// How a phase used the activation cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeatureUse {
    /// The last frozen block whose output was cached (`backbone+gap` for the pooled features).
    pub cut: String,
    /// `hit`, `built`, `memory` or `off`.
    pub state: String,
    /// Why caching was off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds to read or compute the activations.
    pub seconds: f64,
    /// Bytes of activations.
    pub bytes: u64,
}

/// How a worker loaded one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitLoad {
    /// Images ready for training.
    pub images: usize,
    /// Unreadable files skipped.
    pub skipped: usize,
    /// The skipped files by name with the reason each did not decode (the first
    /// [`SKIPPED_FILES_SHOWN`]; `skipped` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<SkippedFile>,
    /// Images this job decoded (0 on a cache hit).
    pub decoded: usize,
    /// `hit`, `built` or `off`; absent from workers without a cache.
    pub cache: Option<String>,
    /// Wall time of the load.
    pub seconds: f64,
}

/// How many skipped files a split's load names; the rest are only counted, so a folder of junk
/// cannot make every progress event large.
pub const SKIPPED_FILES_SHOWN: usize = 20;

/// A file of a split that did not fully decode, and so was left out of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedFile {
    /// Its path relative to the dataset's folder (`train/NORMAL/x.jpeg`).
    pub path: String,
    /// Why it was refused: the decoder's error (`truncated`, `not a JPEG or PNG`, …).
    pub reason: String,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// Public id.
    pub id: JobId,
    /// Submission order.
    #[serde(skip)]
    pub seq: i64,
    /// The spec's name.
    pub name: String,
    /// Current state.
    pub state: JobState,
    /// The validated spec, decoded once when the row is read.
    pub spec: crate::domain::JobSpec,
    /// The device it runs (or ran) on.
    pub device: Option<String>,
    // The doc line below is the OpenAPI description of all three times; each is sent as RFC 3339
    // text, as the `jobs` table stores it.
    /// RFC 3339 timestamps.
    #[serde(with = "crate::domain::timestamp::rfc3339")]
    #[schema(value_type = String)]
    pub submitted_at: Timestamp,
    /// When its (latest) worker started.
    #[serde(with = "crate::domain::timestamp::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    #[serde(with = "crate::domain::timestamp::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
    /// Latest progress.
    pub progress: Option<JobProgress>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether a cancel is under way.
    pub cancel_requested: bool,
    /// Final evaluation, once it succeeded.
    pub final_metrics: Option<crate::domain::worker_protocol::FinalMetrics>,
    /// Workers started for it.
    pub attempts: i64,
    /// The group of its submission (`repeats: N`, a `sweep`, or both) it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The job it was resubmitted from (`POST /api/jobs/{id}/resubmit`), so a redo links back to
    /// what it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<JobId>,
    /// A sweep job's combination: each swept JSON pointer and the value this job got, so its
    /// group's rows need no diff of specs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// The user who submitted it (absent for jobs from before users existed).
    pub owner: Option<String>,
    /// Admin-set priority; 0 unless an admin chose otherwise.
    pub priority: i64,
    /// GPU memory the scheduler reserves for it: the estimate from its spec, or once measured,
    /// its peak plus a margin.
    pub memory_bytes: u64,
    /// Whether `memory_bytes` was measured (true) or estimated.
    pub memory_measured: bool,
    /// What happened to it that its spec does not say (e.g. a re-queue after running out of
    /// memory, with the batch size it was retried with).
    pub notes: Vec<String>,
    /// How far its resumable checkpoint reaches; a restarted job continues from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_point: Option<ResumePoint>,
    /// When its files were deleted (Unix seconds); the row stays as a tombstone. Absent while
    /// the job is live.
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::domain::timestamp::unix_seconds::option")]
    #[schema(value_type = Option<f64>)]
    pub deleted_at: Option<Timestamp>,
    /// Who deleted it: a user name, or `gc` / `retention` for the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<String>,
    /// Bytes of its folder as last measured (when it ended, and after a prune); 0 before that
    /// and once deleted.
    pub disk_bytes: u64,
    /// When gc or retention removed some of its files and kept the rest (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::domain::timestamp::unix_seconds::option")]
    #[schema(value_type = Option<f64>)]
    pub pruned_at: Option<Timestamp>,
    /// The device time it may use over all its runs: its spec's `time_limit`, else the server's
    /// `--default-time-limit` when it was submitted. Absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<crate::domain::time_limit::TimeLimit>,
}

impl Job {
    /// Whether its files were deleted (the row is a tombstone).
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

impl Job {
    /// How much of its training the job has done, from 0 to 1: the epochs of the phases before
    /// the current one, the current phase's finished epochs, and the current epoch's steps, over
    /// the spec's epochs in all. 1 once it succeeded; `None` before its first progress report.
    /// The dashboard computes the same from live progress events (`jobFraction` in `static/js/progress.js`).
    pub fn fraction_done(&self) -> Option<f64> {
        if self.state == JobState::Succeeded {
            return Some(1.0);
        }
        let planned: Vec<u32> = self.spec.phases.iter().map(|phase| phase.epochs).collect();
        self.progress.as_ref()?.fraction(&planned)
    }
}

impl JobProgress {
    /// How much of a job with `planned` epochs per phase this progress has done, from 0 to 1
    /// (see [`Job::fraction_done`]; the terminal client's `watch` draws its bars with it).
    pub fn fraction(&self, planned: &[u32]) -> Option<f64> {
        // A phase the spec does not know (an older spec) counts the epochs the worker reports.
        let epochs_of = |phase: usize| planned.get(phase).copied().filter(|&epochs| epochs > 0).unwrap_or(self.epochs);
        let total: u32 = (0..planned.len().max(self.phases as usize)).map(epochs_of).sum();
        if total == 0 {
            return None;
        }
        let earlier: u32 = (0..(self.phase.max(1) - 1) as usize).map(epochs_of).sum();
        let step = if self.steps > 0 { f64::from(self.step) / f64::from(self.steps) } else { 0.0 };
        let done = f64::from(earlier) + f64::from(self.epoch.max(1) - 1) + step;
        Some((done / f64::from(total)).clamp(0.0, 1.0))
    }
}

/// A resumable checkpoint's position: `epoch` epochs of `phase` done, and `step` batches of the
/// next epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResumePoint {
    /// 1-based phase.
    pub phase: u32,
    /// Completed epochs of that phase.
    pub epoch: u32,
    /// Completed batches of the next epoch.
    pub step: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running job of `spec` with every other field at its first value.
    fn job_of(spec: crate::domain::JobSpec) -> Job {
        Job {
            id: JobId::new(),
            seq: 1,
            name: String::from("t"),
            state: JobState::Running,
            spec,
            device: None,
            submitted_at: Timestamp::now(),
            started_at: None,
            finished_at: None,
            progress: None,
            error: None,
            cancel_requested: false,
            final_metrics: None,
            attempts: 1,
            group_id: None,
            parent_id: None,
            params: None,
            owner: None,
            priority: 0,
            memory_bytes: 0,
            memory_measured: false,
            notes: Vec::new(),
            resume_point: None,
            deleted_at: None,
            deleted_by: None,
            disk_bytes: 0,
            pruned_at: None,
            time_limit: None,
        }
    }

    #[test]
    fn the_fraction_done_counts_earlier_phases_epochs_and_steps() {
        let spec = crate::domain::JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}],
                 "phases": [{"epochs": 8, "train": "head"}, {"epochs": 2, "train": ["block5", "head"]}],
                 "optimizer": {"name": "sgd", "lr": 0.1}}"#,
        )
        .unwrap();
        let mut job = job_of(spec);
        assert_eq!(job.fraction_done(), None, "no report yet");
        let at = |phase, epoch, step| JobProgress {
            phase,
            phases: 2,
            epoch,
            epochs: 2,
            step,
            steps: 10,
            ..JobProgress::default()
        };
        job.progress = Some(at(1, 1, 0));
        assert_eq!(job.fraction_done(), Some(0.0));
        job.progress = Some(at(1, 5, 5));
        assert_eq!(job.fraction_done(), Some(0.45), "4.5 of 10 epochs");
        job.progress = Some(at(2, 2, 5));
        assert_eq!(job.fraction_done(), Some(0.95), "8 + 1.5 of 10 epochs");
        job.state = JobState::Succeeded;
        assert_eq!(job.fraction_done(), Some(1.0));
    }

    #[test]
    fn a_jobs_times_keep_their_json_encodings() {
        let spec = crate::domain::JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}],
                 "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "sgd", "lr": 0.1}}"#,
        )
        .unwrap();
        let text = |text: &str| Timestamp::parse_rfc3339(text).unwrap();
        let seconds = |seconds: f64| Timestamp::from_unix_seconds(seconds).unwrap();
        let mut job = Job {
            state: JobState::Succeeded,
            submitted_at: text("2026-12-07T02:21:57.123456789Z"),
            started_at: Some(text("2026-12-07T02:22:00Z")),
            ..job_of(spec)
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["submitted_at"], "2026-12-07T02:21:57.123456789Z");
        assert_eq!(json["started_at"], "2026-12-07T02:22:00Z");
        assert!(json["finished_at"].is_null() && json.as_object().unwrap().contains_key("finished_at"));
        assert!(!json.as_object().unwrap().contains_key("deleted_at"), "absent while live");
        assert!(!json.as_object().unwrap().contains_key("pruned_at"));
        job.deleted_at = Some(seconds(1_796_133_600.123_456_7));
        job.pruned_at = Some(seconds(1_796_133_600.5));
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains(r#""deleted_at":1796133600.1234567"#), "{text}");
        assert!(text.contains(r#""pruned_at":1796133600.5"#), "{text}");
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be illegal");
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
        assert!("done".parse::<JobState>().unwrap_err().contains("queued"));
    }

    #[test]
    fn a_queued_job_cannot_succeed_without_running() {
        assert!(!JobState::Queued.can_become(JobState::Succeeded));
        // It fails without running when a job it waits for fails.
        assert!(JobState::Queued.can_become(JobState::Failed));
    }
}
