//! How a run of a job ended, decided in one place. Both executors (a local worker process and a
//! Slurm job followed through its relay) gather the same [`RunFacts`] — the worker's exit, the
//! events it sent, whether trainq asked it to stop, Slurm's final state — and [`decide`] turns them
//! into a [`RunOutcome`] (what `job_runs.outcome` stores) and what happens to the job next. Pure:
//! no I/O, so every combination is a line of a table test.

use super::job::JobState;
use super::relay::WorkerExit;
use super::worker_protocol::{FailureKind, EXIT_INTERRUPTED, EXIT_STORAGE};
use std::fmt;

/// How one run (one worker start) of a job ended. Stored in `job_runs.outcome`, whose CHECK
/// constraint lists exactly these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// The worker exited 0 after reporting final metrics.
    Succeeded,
    /// The job failed; the decision's reason says why.
    Failed,
    /// A user (or an admin) cancelled it.
    Cancelled,
    /// Stopped with a checkpoint (server shutdown, a signal, a Slurm time limit or preemption):
    /// back to the queue, to resume.
    Interrupted,
    /// Out of memory with `retry_on_oom`: back to the queue once with half the batch.
    Requeued,
    /// A write failed for lack of disk space or an I/O error: back to the queue, to resume from
    /// its last checkpoint once the disk has room.
    Storage,
    /// It reached its time limit and stopped with a checkpoint: the job ends `timeout`.
    Timeout,
}

impl RunOutcome {
    /// Every outcome, as the migration's CHECK constraint lists them.
    pub const ALL: [RunOutcome; 7] = [
        RunOutcome::Succeeded,
        RunOutcome::Failed,
        RunOutcome::Cancelled,
        RunOutcome::Interrupted,
        RunOutcome::Requeued,
        RunOutcome::Storage,
        RunOutcome::Timeout,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Requeued => "requeued",
            RunOutcome::Storage => "storage",
            RunOutcome::Timeout => "timeout",
        }
    }

    /// The state the job moves to from `running` after a run that ended so.
    pub fn job_state(self) -> JobState {
        match self {
            RunOutcome::Succeeded => JobState::Succeeded,
            RunOutcome::Failed => JobState::Failed,
            RunOutcome::Cancelled => JobState::Cancelled,
            RunOutcome::Timeout => JobState::Timeout,
            RunOutcome::Interrupted | RunOutcome::Requeued | RunOutcome::Storage => JobState::Queued,
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunOutcome {
    type Err = String;
    fn from_str(text: &str) -> Result<RunOutcome, String> {
        RunOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
            .ok_or_else(|| format!("unknown run outcome `{text}`"))
    }
}

/// A Slurm job state, as `scontrol show job` prints it (`JobState=`); parsed once, never compared
/// as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmState {
    /// Waiting for resources (the job's `Reason` says which).
    Pending,
    /// Running on a node.
    Running,
    /// Nodes are booting for it.
    Configuring,
    /// Finishing: some processes still end.
    Completing,
    /// Suspended by an admin or preemption.
    Suspended,
    /// Requeued by Slurm (trainq submits with `--no-requeue`, but an admin may).
    Requeued,
    /// Changing size.
    Resizing,
    /// Being signalled.
    Signaling,
    /// Staging out files.
    StageOut,
    /// Ended with exit code 0.
    Completed,
    /// Cancelled (by trainq, with its mark, or by someone else).
    Cancelled,
    /// Ended with a non-zero exit code or another failure.
    Failed,
    /// Hit its time limit.
    Timeout,
    /// Its node failed.
    NodeFail,
    /// Preempted by a job of higher priority.
    Preempted,
    /// Killed for using more memory than it asked for.
    OutOfMemory,
    /// Its node failed to boot.
    BootFail,
    /// Passed its deadline.
    Deadline,
    /// A state this version of trainq does not know; taken as ended.
    Other(String),
}

impl SlurmState {
    /// Reads `JobState`'s value.
    pub fn parse(text: &str) -> SlurmState {
        match text {
            "PENDING" => SlurmState::Pending,
            "RUNNING" => SlurmState::Running,
            "CONFIGURING" => SlurmState::Configuring,
            "COMPLETING" => SlurmState::Completing,
            "SUSPENDED" => SlurmState::Suspended,
            "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" => SlurmState::Requeued,
            "RESIZING" => SlurmState::Resizing,
            "SIGNALING" => SlurmState::Signaling,
            "STAGE_OUT" => SlurmState::StageOut,
            "COMPLETED" => SlurmState::Completed,
            "CANCELLED" => SlurmState::Cancelled,
            "FAILED" => SlurmState::Failed,
            "TIMEOUT" => SlurmState::Timeout,
            "NODE_FAIL" => SlurmState::NodeFail,
            "PREEMPTED" => SlurmState::Preempted,
            "OUT_OF_MEMORY" => SlurmState::OutOfMemory,
            "BOOT_FAIL" => SlurmState::BootFail,
            "DEADLINE" => SlurmState::Deadline,
            other => SlurmState::Other(other.to_string()),
        }
    }

    /// Whether Slurm is done with the job.
    pub fn is_finished(&self) -> bool {
        !matches!(
            self,
            SlurmState::Pending
                | SlurmState::Running
                | SlurmState::Configuring
                | SlurmState::Completing
                | SlurmState::Suspended
                | SlurmState::Requeued
                | SlurmState::Resizing
                | SlurmState::Signaling
                | SlurmState::StageOut
        )
    }

    /// Slurm's own name for the state.
    pub fn name(&self) -> &str {
        match self {
            SlurmState::Pending => "PENDING",
            SlurmState::Running => "RUNNING",
            SlurmState::Configuring => "CONFIGURING",
            SlurmState::Completing => "COMPLETING",
            SlurmState::Suspended => "SUSPENDED",
            SlurmState::Requeued => "REQUEUED",
            SlurmState::Resizing => "RESIZING",
            SlurmState::Signaling => "SIGNALING",
            SlurmState::StageOut => "STAGE_OUT",
            SlurmState::Completed => "COMPLETED",
            SlurmState::Cancelled => "CANCELLED",
            SlurmState::Failed => "FAILED",
            SlurmState::Timeout => "TIMEOUT",
            SlurmState::NodeFail => "NODE_FAIL",
            SlurmState::Preempted => "PREEMPTED",
            SlurmState::OutOfMemory => "OUT_OF_MEMORY",
            SlurmState::BootFail => "BOOT_FAIL",
            SlurmState::Deadline => "DEADLINE",
            SlurmState::Other(name) => name,
        }
    }
}

/// How Slurm saw a job end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmEnd {
    /// Slurm's job id.
    pub id: String,
    /// Its final state; `None` once Slurm no longer knows the job (`MinJobAge` passed).
    pub state: Option<SlurmState>,
    /// Slurm's `Reason`.
    pub reason: String,
    /// Slurm's `ExitCode=code:signal`.
    pub exit: Option<(i32, i32)>,
    /// Whether the job carries trainq's cancel mark (trainq cancelled it, not someone else).
    pub marked_by_trainq: bool,
}

/// Everything known about a run once its worker is gone.
#[derive(Debug, Clone, Default)]
pub struct RunFacts<'a> {
    /// The worker's exit; `None` when it could not be read (a local wait failed, or a Slurm
    /// relay never reported it).
    pub exit: Option<WorkerExit>,
    /// A cancel was asked for (the API's cancel, recorded in the database).
    pub cancel_requested: bool,
    /// The server's shutdown stopped the worker (local workers only: Slurm jobs outlive it).
    pub server_stopping: bool,
    /// The worker reported final metrics.
    pub saw_final: bool,
    /// The `failed` event the worker sent, if any: its kind and message.
    pub failure: Option<(FailureKind, &'a str)>,
    /// How Slurm saw the end; `None` for a local worker.
    pub slurm: Option<&'a SlurmEnd>,
    /// The run was on a GPU.
    pub gpu: bool,
    /// The private-memory limit of CPU workers, bytes.
    pub cpu_memory_limit: Option<u64>,
    /// Half the batch, when an out-of-memory run may be retried with it (`retry_on_oom`, not yet
    /// retried, batch above 1).
    pub oom_retry_batch: Option<u32>,
    /// Whether a storage fault may send the job back to the queue again (attempts are left).
    pub storage_attempts_left: bool,
    /// The disk as it stands now, for storage messages ("0.2 GB free on /var/lib/trainq").
    pub disk: Option<&'a str>,
    /// Why the run was stopped at the job's time limit ("time limit 2h reached at phase 2, epoch
    /// 37 of 50"), when it was: trainq sent the stop itself, or Slurm ended the job `TIMEOUT`
    /// under a `--time` that was the job's limit. `None` for a job without a limit.
    pub time_limit_reached: Option<&'a str>,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Why the job failed (without the log's tail, which the supervisor adds).
    pub reason: Option<String>,
    /// Why the job went back to the queue, for its notes and log.
    pub note: Option<String>,
    /// The batch size a re-queued job runs with from now on (out-of-memory retry).
    pub batch_size: Option<u32>,
}

impl Decision {
    fn new(outcome: RunOutcome) -> Decision {
        Decision { outcome, reason: None, note: None, batch_size: None }
    }

    fn failed(reason: String) -> Decision {
        Decision { reason: Some(reason), ..Decision::new(RunOutcome::Failed) }
    }

    fn timed_out(reason: &str) -> Decision {
        Decision { reason: Some(reason.to_string()), ..Decision::new(RunOutcome::Timeout) }
    }

    fn requeued(outcome: RunOutcome, note: Option<String>) -> Decision {
        Decision { note, ..Decision::new(outcome) }
    }
}

/// "exited with code 3" or "killed by signal 11 (SIGSEGV)".
pub fn describe_exit(exit: WorkerExit) -> String {
    match exit {
        WorkerExit::Code(code) => format!("worker exited with code {code}"),
        WorkerExit::Signal(signal) => format!("worker killed by signal {signal} ({})", signal_name(signal)),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        _ => "other signal",
    }
}

/// The one decision of how a run ended. The order is the precedence: a cancel beats everything,
/// then a success, the time limit, a stop that resumes, a full disk, out of memory, and the plain
/// failures.
pub fn decide(facts: &RunFacts) -> Decision {
    if facts.cancel_requested {
        return Decision::new(RunOutcome::Cancelled);
    }
    let slurm_state = facts.slurm.and_then(|slurm| slurm.state.as_ref());
    let succeeded = facts.saw_final
        && match facts.slurm {
            None => facts.exit == Some(WorkerExit::Code(0)),
            // The relay's report of the exit may be lost; Slurm's state and the final metrics
            // then speak for it, unless the relay did report a failing code.
            Some(_) => {
                matches!(slurm_state, None | Some(SlurmState::Completed))
                    && !matches!(facts.exit, Some(WorkerExit::Code(code)) if code != 0)
            }
        };
    if succeeded {
        return Decision::new(RunOutcome::Succeeded);
    }
    let foreign_cancel =
        facts.slurm.is_some_and(|slurm| slurm.state == Some(SlurmState::Cancelled) && !slurm.marked_by_trainq);
    // Stopped at its time limit, as a SIGTERM stops it (a checkpoint, or killed after the grace:
    // the checkpoint of its last epoch stands either way). A worker that failed on its own
    // before the stop took effect still failed.
    if let Some(reason) = facts.time_limit_reached.filter(|_| !foreign_cancel) {
        let stopped = match facts.exit {
            Some(WorkerExit::Code(code)) => code == EXIT_INTERRUPTED,
            Some(WorkerExit::Signal(_)) | None => true,
        };
        if stopped && facts.failure.is_none_or(|(kind, _)| kind != FailureKind::Error) {
            return Decision::timed_out(reason);
        }
    }
    // Stopped by a signal after a checkpoint (the server's shutdown, a Slurm time limit, a
    // preemption): it resumes. A cancel from outside trainq also sends SIGTERM but means "stop".
    if (facts.server_stopping || facts.exit == Some(WorkerExit::Code(EXIT_INTERRUPTED))) && !foreign_cancel {
        let note = facts.slurm.filter(|slurm| slurm.state == Some(SlurmState::Timeout)).map(|slurm| {
            format!("Slurm job {} hit its time limit (--slurm-time); re-queued to resume from its checkpoint", slurm.id)
        });
        return Decision::requeued(RunOutcome::Interrupted, note);
    }
    let storage_message = match facts.failure {
        Some((FailureKind::Storage, message)) => Some(message),
        _ if facts.exit == Some(WorkerExit::Code(EXIT_STORAGE)) => Some("the worker could not write its files"),
        _ => None,
    };
    if let Some(message) = storage_message {
        let disk = facts.disk.map(|disk| format!("; {disk}")).unwrap_or_default();
        if facts.storage_attempts_left {
            let note = format!("the disk refused a write ({message}{disk}); re-queued to resume from its last checkpoint once there is space");
            return Decision::requeued(RunOutcome::Storage, Some(note));
        }
        return Decision::failed(format!(
            "the disk kept refusing writes, so the job stopped retrying: {message}{disk}"
        ));
    }
    if let Some((FailureKind::OutOfMemory, message)) = facts.failure {
        let what = if facts.gpu { "out of GPU memory" } else { "out of memory" };
        let limit = match (facts.gpu, facts.cpu_memory_limit) {
            (false, Some(limit)) => {
                format!(" (CPU workers may use {:.1} GB: --worker-max-memory-gb)", limit as f64 / 1e9)
            }
            _ => String::new(),
        };
        if let Some(batch) = facts.oom_retry_batch {
            let note = format!("{what} with batch_size {}{limit}; re-queued once with batch_size {batch}", batch * 2);
            return Decision { batch_size: Some(batch), ..Decision::requeued(RunOutcome::Requeued, Some(note)) };
        }
        return Decision::failed(format!("{what}{limit}: {message}"));
    }
    if let Some(slurm) = facts.slurm {
        let reason = match &slurm.state {
            _ if foreign_cancel => format!("cancelled in Slurm from outside trainq (scancel of job {})", slurm.id),
            Some(SlurmState::Timeout) => {
                format!("Slurm job {} hit its time limit (--slurm-time); it resumes only if resubmitted", slurm.id)
            }
            Some(state) => {
                let exit =
                    slurm.exit.map_or(String::new(), |(code, signal)| format!(", exit code {code}, signal {signal}"));
                format!("Slurm job {} ended {} ({}{exit})", slurm.id, state.name(), slurm.reason)
            }
            None => format!("Slurm no longer knows job {} and its worker never reported the end", slurm.id),
        };
        return Decision::failed(reason);
    }
    let reason = match facts.exit {
        Some(WorkerExit::Code(0)) => String::from("the worker exited 0 without reporting final metrics"),
        // A Rust-side allocation that fails under the memory limit aborts without a word.
        Some(exit @ WorkerExit::Signal(libc::SIGABRT)) if !facts.gpu && facts.cpu_memory_limit.is_some() => {
            let limit = facts.cpu_memory_limit.unwrap_or_default() as f64 / 1e9;
            format!("{}: probably out of memory under the {limit:.1} GB limit of CPU workers", describe_exit(exit))
        }
        Some(exit) => describe_exit(exit),
        None => String::from("the worker's exit status could not be read"),
    };
    Decision::failed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunOutcome::*;
    use WorkerExit::{Code, Signal};

    fn slurm(state: Option<SlurmState>, marked: bool) -> SlurmEnd {
        SlurmEnd {
            id: String::from("42"),
            state,
            reason: String::from("NonZeroExitCode"),
            exit: Some((1, 0)),
            marked_by_trainq: marked,
        }
    }

    /// One row of the table: the facts, and the outcome with a word its reason or note must hold.
    fn check(facts: RunFacts, outcome: RunOutcome, says: &str) {
        let decision = decide(&facts);
        let text = decision.reason.clone().or(decision.note.clone()).unwrap_or_default();
        assert_eq!(decision.outcome, outcome, "{facts:?} → {decision:?}");
        assert!(text.contains(says), "{facts:?} → `{text}` should say `{says}`");
        assert_eq!(
            decision.reason.is_some(),
            matches!(outcome, Failed | Timeout),
            "only ends that need a word have reasons: {decision:?}"
        );
        assert!(
            decision.note.is_none() || decision.outcome.job_state() == JobState::Queued,
            "notes are for re-queues: {decision:?}"
        );
    }

    #[test]
    fn every_local_exit_has_one_outcome() {
        let base = RunFacts::default;
        let oom = Some((FailureKind::OutOfMemory, "CUDA out of memory. Tried to allocate 2 GiB"));
        let disk =
            Some((FailureKind::Storage, "writing /d/state/resume.safetensors: No space left on device (os error 28)"));
        let error = Some((FailureKind::Error, "shape mismatch"));
        let table: Vec<(RunFacts, RunOutcome, &str)> = vec![
            (RunFacts { exit: Some(Code(0)), saw_final: true, ..base() }, Succeeded, ""),
            (RunFacts { exit: Some(Code(0)), ..base() }, Failed, "without reporting final metrics"),
            (RunFacts { exit: Some(Code(1)), saw_final: true, ..base() }, Failed, "exited with code 1"),
            (RunFacts { exit: Some(Code(1)), failure: error, ..base() }, Failed, "exited with code 1"),
            (RunFacts { exit: Some(Signal(libc::SIGSEGV)), ..base() }, Failed, "signal 11 (SIGSEGV)"),
            (RunFacts { exit: Some(Signal(libc::SIGKILL)), ..base() }, Failed, "SIGKILL"),
            (RunFacts { exit: None, ..base() }, Failed, "could not be read"),
            // A cancel wins over any exit, a success included.
            (RunFacts { exit: Some(Code(0)), saw_final: true, cancel_requested: true, ..base() }, Cancelled, ""),
            (RunFacts { exit: Some(Signal(libc::SIGKILL)), cancel_requested: true, ..base() }, Cancelled, ""),
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), cancel_requested: true, ..base() }, Cancelled, ""),
            (
                RunFacts { exit: Some(Code(EXIT_STORAGE)), failure: disk, cancel_requested: true, ..base() },
                Cancelled,
                "",
            ),
            // Stopped with a checkpoint: resumes, whatever else it said.
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), ..base() }, Interrupted, ""),
            (RunFacts { exit: Some(Signal(libc::SIGKILL)), server_stopping: true, ..base() }, Interrupted, ""),
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), failure: oom, ..base() }, Interrupted, ""),
            // A full disk: back to the queue while attempts are left, then a failure naming the disk.
            (
                RunFacts {
                    exit: Some(Code(EXIT_STORAGE)),
                    failure: disk,
                    storage_attempts_left: true,
                    disk: Some("0.0 GB free on /d"),
                    ..base()
                },
                Storage,
                "0.0 GB free on /d",
            ),
            (
                RunFacts { exit: Some(Code(EXIT_STORAGE)), storage_attempts_left: true, ..base() },
                Storage,
                "could not write",
            ),
            (
                RunFacts { exit: Some(Code(EXIT_STORAGE)), failure: disk, disk: Some("0.0 GB free on /d"), ..base() },
                Failed,
                "No space left on device (os error 28); 0.0 GB free on /d",
            ),
            (
                RunFacts { exit: Some(Code(1)), failure: disk, storage_attempts_left: true, ..base() },
                Storage,
                "No space left",
            ),
            // Out of memory: once more with half the batch when allowed, else a failure with the numbers.
            (
                RunFacts { exit: Some(Code(3)), failure: oom, gpu: true, oom_retry_batch: Some(8), ..base() },
                Requeued,
                "out of GPU memory with batch_size 16; re-queued once with batch_size 8",
            ),
            (
                RunFacts { exit: Some(Code(3)), failure: oom, gpu: true, ..base() },
                Failed,
                "out of GPU memory: CUDA out of memory",
            ),
            (
                RunFacts { exit: Some(Code(3)), failure: oom, cpu_memory_limit: Some(4_000_000_000), ..base() },
                Failed,
                "CPU workers may use 4.0 GB",
            ),
            (
                RunFacts { exit: Some(Signal(libc::SIGABRT)), cpu_memory_limit: Some(2_000_000_000), ..base() },
                Failed,
                "probably out of memory under the 2.0 GB limit",
            ),
            (RunFacts { exit: Some(Signal(libc::SIGABRT)), ..base() }, Failed, "SIGABRT"),
            (
                RunFacts {
                    exit: Some(Signal(libc::SIGABRT)),
                    gpu: true,
                    cpu_memory_limit: Some(2_000_000_000),
                    ..base()
                },
                Failed,
                "(SIGABRT)",
            ),
        ];
        for (facts, outcome, says) in table {
            check(facts, outcome, says);
        }
    }

    #[test]
    fn every_slurm_end_has_one_outcome() {
        let completed = slurm(Some(SlurmState::Completed), false);
        let gone = slurm(None, false);
        let failed = slurm(Some(SlurmState::Failed), false);
        let ours = slurm(Some(SlurmState::Cancelled), true);
        let foreign = slurm(Some(SlurmState::Cancelled), false);
        let timeout = slurm(Some(SlurmState::Timeout), false);
        let node_fail = slurm(Some(SlurmState::NodeFail), false);
        fn base(end: &SlurmEnd) -> RunFacts<'_> {
            RunFacts { slurm: Some(end), ..RunFacts::default() }
        }
        let disk = Some((
            FailureKind::Storage,
            "writing /shared/jobs/x/phase1.safetensors: No space left on device (os error 28)",
        ));
        let oom = Some((FailureKind::OutOfMemory, "CUDA out of memory"));
        let table: Vec<(RunFacts, RunOutcome, &str)> = vec![
            (RunFacts { exit: Some(Code(0)), saw_final: true, ..base(&completed) }, Succeeded, ""),
            // The relay's exit report lost, Slurm forgot the job: the final metrics speak.
            (RunFacts { exit: None, saw_final: true, ..base(&gone) }, Succeeded, ""),
            (RunFacts { exit: Some(Signal(libc::SIGTERM)), saw_final: true, ..base(&completed) }, Succeeded, ""),
            (
                RunFacts { exit: Some(Code(2)), saw_final: true, ..base(&completed) },
                Failed,
                "Slurm job 42 ended COMPLETED",
            ),
            (
                RunFacts { exit: Some(Code(0)), saw_final: true, ..base(&failed) },
                Failed,
                "ended FAILED (NonZeroExitCode, exit code 1, signal 0)",
            ),
            (RunFacts { exit: None, ..base(&gone) }, Failed, "no longer knows job 42"),
            (RunFacts { exit: Some(Code(0)), ..base(&completed) }, Failed, "ended COMPLETED"),
            (RunFacts { cancel_requested: true, ..base(&ours) }, Cancelled, ""),
            (RunFacts { cancel_requested: true, saw_final: true, ..base(&completed) }, Cancelled, ""),
            // Cancelled outside trainq: it checkpointed on SIGTERM, but it must stop, not resume.
            (
                RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), ..base(&foreign) },
                Failed,
                "cancelled in Slurm from outside trainq",
            ),
            (RunFacts { exit: None, ..base(&foreign) }, Failed, "scancel of job 42"),
            (
                RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), ..base(&timeout) },
                Interrupted,
                "hit its time limit (--slurm-time); re-queued",
            ),
            (RunFacts { exit: Some(Signal(libc::SIGKILL)), ..base(&timeout) }, Failed, "resumes only if resubmitted"),
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), ..base(&node_fail) }, Interrupted, ""),
            (RunFacts { exit: None, ..base(&node_fail) }, Failed, "ended NODE_FAIL"),
            (
                RunFacts {
                    exit: Some(Code(EXIT_STORAGE)),
                    failure: disk,
                    storage_attempts_left: true,
                    ..base(&failed)
                },
                Storage,
                "phase1.safetensors",
            ),
            (
                RunFacts { exit: Some(Code(EXIT_STORAGE)), failure: disk, ..base(&failed) },
                Failed,
                "kept refusing writes",
            ),
            (
                RunFacts { exit: Some(Code(3)), failure: oom, gpu: true, oom_retry_batch: Some(4), ..base(&failed) },
                Requeued,
                "batch_size 4",
            ),
            (RunFacts { exit: Some(Code(3)), failure: oom, gpu: true, ..base(&failed) }, Failed, "out of GPU memory"),
        ];
        for (facts, outcome, says) in table {
            check(facts, outcome, says);
        }
    }

    #[test]
    fn a_run_stopped_at_its_time_limit_times_out_unless_something_stronger_happened() {
        let limit = Some("time limit 2h reached at phase 2, epoch 37 of 50");
        let base = || RunFacts { time_limit_reached: limit, ..RunFacts::default() };
        let error = Some((FailureKind::Error, "shape mismatch"));
        let timeout = slurm(Some(SlurmState::Timeout), false);
        let foreign = slurm(Some(SlurmState::Cancelled), false);
        let table: Vec<(RunFacts, RunOutcome, &str)> = vec![
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), ..base() }, Timeout, "epoch 37 of 50"),
            (RunFacts { exit: Some(Signal(libc::SIGKILL)), ..base() }, Timeout, "time limit 2h"),
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), server_stopping: true, ..base() }, Timeout, "2h"),
            // It finished its last step as the limit came, or was cancelled: that is what it did.
            (RunFacts { exit: Some(Code(0)), saw_final: true, ..base() }, Succeeded, ""),
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), cancel_requested: true, ..base() }, Cancelled, ""),
            // A failure of its own is not hidden behind the limit.
            (RunFacts { exit: Some(Code(1)), failure: error, ..base() }, Failed, "exited with code 1"),
            // Slurm ended it TIMEOUT under a --time that was the job's limit.
            (RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), slurm: Some(&timeout), ..base() }, Timeout, "2h"),
            (RunFacts { exit: None, slurm: Some(&timeout), ..base() }, Timeout, "2h"),
            (RunFacts { exit: None, slurm: Some(&foreign), ..base() }, Failed, "scancel"),
            // Without a limit, today's behaviour: a Slurm TIMEOUT under --slurm-time is re-queued.
            (
                RunFacts { exit: Some(Code(EXIT_INTERRUPTED)), slurm: Some(&timeout), ..RunFacts::default() },
                Interrupted,
                "--slurm-time",
            ),
        ];
        for (facts, outcome, says) in table {
            check(facts, outcome, says);
        }
    }

    #[test]
    fn slurm_states_parse_into_the_enum_and_know_when_they_are_over() {
        for name in [
            "PENDING",
            "RUNNING",
            "CONFIGURING",
            "COMPLETING",
            "SUSPENDED",
            "REQUEUED",
            "RESIZING",
            "SIGNALING",
            "STAGE_OUT",
        ] {
            let state = SlurmState::parse(name);
            assert!(!state.is_finished(), "{name}");
            assert_eq!(state.name(), name);
        }
        for name in [
            "COMPLETED",
            "CANCELLED",
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "PREEMPTED",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
        ] {
            let state = SlurmState::parse(name);
            assert!(state.is_finished(), "{name}");
            assert!(!matches!(state, SlurmState::Other(_)), "{name} is known");
            assert_eq!(state.name(), name);
        }
        assert_eq!(SlurmState::parse("SPECIAL_EXIT"), SlurmState::Other(String::from("SPECIAL_EXIT")));
        assert!(SlurmState::parse("SPECIAL_EXIT").is_finished());
    }

    #[test]
    fn outcomes_round_trip_and_send_the_job_on() {
        for outcome in RunOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<RunOutcome>().unwrap(), outcome);
            assert!(JobState::Running.can_become(outcome.job_state()), "{outcome}");
        }
        assert!("done".parse::<RunOutcome>().is_err());
    }
}
