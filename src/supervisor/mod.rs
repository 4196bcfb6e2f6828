//! The only place that spawns processes: one worker per job, in its own process group, with a
//! cleared environment, `CUDA_VISIBLE_DEVICES` set, stderr to the job's log and progress events on
//! stdout. A watcher task per worker turns progress into database rows and the exit into a state,
//! writes the worker's stderr to the job's log, and publishes each change as a live event.
//!
//! How a run ended is decided by the pure `domain::outcome::decide` from the facts gathered here,
//! for both executors; `conclude` records the decision, and its writes (results the store refused,
//! the job's end or re-queue) are retried with backoff until they land (`StateWrite`), so a job's
//! end is never dropped while the disk is full. `JobLog` is the one writer of a job's log.
//! `progress.rs` turns worker events into rows; `remote.rs` + `slurm.rs` are the Slurm executor
//! (`sbatch` with a per-job secret, `scontrol` to follow, a marked `scancel`, `reattach` after a
//! restart, `--dependency=afterok` for chained jobs); `inference.rs` keeps finished jobs' models
//! warm for predictions. A job's folder is measured once when it ends (its owner's disk total).

pub mod inference;
mod progress;
mod remote;
pub mod slurm;
mod verify;

pub use remote::RemoteError;

use crate::devices::{DeviceKind, DeviceSlot, Inventory};
use crate::domain::outcome::{decide, describe_exit, Decision, RunFacts, RunOutcome};
use crate::domain::relay::WorkerExit;
use crate::domain::worker_protocol::{FailureKind, WorkerJob};
use crate::domain::{JobId, JobSpec, JobState, TimeLimit};
use crate::events::{EventBus, EventKind};
use crate::store::Store;
use crate::telemetry::Telemetry;
use progress::ProgressTracker;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Environment variables a worker inherits; everything else is cleared.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "RUST_BACKTRACE"];

/// A worker process as every spawn here starts one: a cleared environment but for
/// [`INHERITED_ENV`], its own process group (so it can be signalled as a whole), and
/// `PR_SET_PDEATHSIG = SIGKILL` — a worker must never outlive a dead server while holding a GPU
/// or a model: the kernel kills it when the server dies. The signal follows the spawning *thread*,
/// so spawn only from the async runtime's worker threads, never inside `spawn_blocking` or
/// `block_in_place` (blocking-pool threads exit after 10 s idle, killing the worker with them).
fn worker_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Starts the worker as `trainq relay` runs it on a node the server cannot watch (a Slurm job).
/// Unlike [`worker_command`] it stays in the relay's process group, because Slurm signals and
/// cleans up a job's processes as a whole, and it keeps the job's environment (Slurm's
/// `CUDA_VISIBLE_DEVICES`, the cluster's library paths) except the job's secret, which only the
/// relay may hold. stdin is null; stdout and stderr are piped to the relay.
pub fn spawn_relayed_worker(argv: &[std::ffi::OsString]) -> std::io::Result<Child> {
    let (program, args) =
        argv.split_first().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command to run"))?;
    Command::new(program)
        .args(args)
        .env_remove(crate::domain::relay::SECRET_VARIABLE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// How many log lines a failure reason quotes.
const REASON_LOG_LINES: usize = 20;

/// The files of one job under the data dir.
#[derive(Debug, Clone)]
pub struct JobPaths {
    /// `<data dir>/jobs/<id>`.
    pub dir: PathBuf,
}

impl JobPaths {
    /// The folder of job `id` under `data_dir`.
    pub fn new(data_dir: &Path, id: JobId) -> JobPaths {
        JobPaths { dir: data_dir.join("jobs").join(id.to_string()) }
    }
    /// What the worker reads.
    pub fn worker_job(&self) -> PathBuf {
        self.dir.join("job.json")
    }
    /// stdout/stderr of every attempt, appended.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }
    /// Checkpoints and other downloadable outputs.
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }
    /// Private worker state (the resumable checkpoint); never served.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// Settings the supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Root of job folders.
    pub data_dir: PathBuf,
    /// The worker executable; called as `<program> run --job <job.json>`.
    pub worker_program: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping a worker.
    pub kill_grace: Duration,
    /// At server shutdown: how long running workers get to save a checkpoint and exit.
    pub shutdown_grace: Duration,
    /// Where workers run.
    pub executor: Executor,
    /// Private-memory limit of a CPU worker (`RLIMIT_DATA`), so one job cannot take the box's
    /// memory: its allocation fails and it reports "out of memory". `None`: no limit.
    pub cpu_memory_limit: Option<u64>,
}

/// Where jobs run, picked in the config (`--executor`). Both run the same worker and turn its
/// lines into the same rows through one `ProgressTracker`; they differ in how the worker is
/// started, followed and stopped.
#[derive(Debug, Clone)]
pub enum Executor {
    /// A worker process per job on this box (a GPU or a CPU slot), its stdout piped here.
    Local,
    /// `sbatch` per job; `trainq relay` on the node reports over HTTP (`remote.rs`, `slurm.rs`).
    Slurm(Arc<slurm::SlurmConfig>),
}

/// What a run's decision needs besides the run: see [`Supervisor::retries`].
struct Retries {
    oom_retry_batch: Option<u32>,
    storage_attempts_left: bool,
    disk: Option<String>,
}

/// Extra GPU memory kept above a job's measured peak when it is packed next to others.
const MEASURED_MARGIN: f64 = 1.15;
/// How often a GPU worker's memory is sampled.
const MEMORY_SAMPLE: Duration = Duration::from_secs(2);

/// Starts and stops workers. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    store: Store,
    config: Arc<SupervisorConfig>,
    running: Arc<Mutex<HashMap<JobId, CancellationToken>>>,
    wake_scheduler: Arc<Notify>,
    inference: inference::InferencePool,
    events: EventBus,
    inventory: Inventory,
    /// Cancelled when the server begins to shut down.
    shutdown: CancellationToken,
    /// Jobs running in Slurm, fed by their relays.
    remote: Arc<Mutex<HashMap<JobId, Arc<tokio::sync::Mutex<remote::RemoteJob>>>>>,
    /// The disks: the reserve a full disk releases, the free space failure messages name.
    disk: crate::disk_space::Disk,
    /// Jobs finished, out-of-memory retries, run and epoch times, for `/metrics`.
    telemetry: Telemetry,
}

impl Supervisor {
    /// A supervisor that wakes `wake_scheduler` whenever a worker ends or a GPU job's memory is
    /// measured (the scheduler listens), publishes what its workers do on `events`, and counts
    /// how jobs end into `telemetry`.
    pub fn new(
        store: Store,
        config: SupervisorConfig,
        wake_scheduler: Arc<Notify>,
        events: EventBus,
        inventory: Inventory,
        disk: crate::disk_space::Disk,
        telemetry: Telemetry,
    ) -> Supervisor {
        let supervisor = Supervisor {
            disk,
            telemetry,
            store,
            config: Arc::new(config),
            running: Arc::default(),
            wake_scheduler,
            inference: Default::default(),
            events,
            inventory,
            shutdown: CancellationToken::new(),
            remote: Arc::default(),
        };
        let pool = supervisor.inference.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(inference::IDLE / 10).await;
                let stopped = pool.reap(inference::IDLE).await;
                if stopped > 0 {
                    tracing::info!(stopped, "stopped idle models");
                }
            }
        });
        supervisor
    }

    /// Asks the warm model of finished job `id` (started on first use) for a prediction or a
    /// heatmap; see `inference.rs` and the worker's `serve.rs` for the request and answer.
    pub async fn infer(
        &self,
        id: JobId,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, inference::InferenceError> {
        let artifacts = JobPaths::new(&self.config.data_dir, id).artifacts();
        self.inference.request(&self.config.worker_program, id, &artifacts, request).await
    }

    /// Stops finished job `id`'s warm model before its files go (delete, gc, retention).
    pub async fn forget_model(&self, id: JobId) {
        self.inference.forget(id).await;
    }

    /// The folder of job `id`.
    pub fn job_paths(&self, id: JobId) -> JobPaths {
        JobPaths::new(&self.config.data_dir, id)
    }

    fn job_log(&self, paths: &JobPaths, id: JobId) -> JobLog {
        JobLog { path: paths.log(), job_id: id, events: self.events.clone() }
    }

    /// Spawns the worker for a job the scheduler has just claimed on `slot`, and watches it. A
    /// worker that cannot start fails the job at once, so the slot is never left held.
    #[tracing::instrument(skip_all, fields(job_id = %work.job_id, device = %slot.id))]
    pub async fn start(&self, work: WorkerJob, slot: &DeviceSlot, phases: u32) {
        if let Executor::Slurm(_) = self.config.executor {
            return self.start_slurm(work, slot, phases).await;
        }
        let id = work.job_id;
        let paths = JobPaths::new(&self.config.data_dir, id);
        let token = CancellationToken::new();
        self.running.lock().expect("running map poisoned").insert(id, token.clone());
        let log = self.job_log(&paths, id);
        let time_limit = self.time_limit_left(id).await;
        match self.spawn(&paths, &log, &work, slot).await {
            Ok(child) => {
                self.events.publish(id, EventKind::Started { device: slot.id.clone() });
                // A cancel that arrived between the claim and the token's registration finds no
                // token; the flag in the database still says so.
                if matches!(self.store.job(id).await, Ok(Some(job)) if job.cancel_requested) {
                    token.cancel();
                }
                let watcher = self.clone();
                let span = tracing::info_span!("watch", job_id = %id);
                let slot = slot.clone();
                let spec = work.spec.clone();
                tokio::spawn(
                    async move { watcher.watch(id, log, child, token, phases, slot, spec, time_limit).await }
                        .instrument(span),
                );
            }
            Err(err) => {
                tracing::error!(error = %err, "could not start worker");
                let reason = format!("could not start the worker: {err:#}");
                log.append(&format!("trainq: {reason}\n")).await;
                self.start_failed(id, &log, &err, &work, phases, &reason).await;
            }
        }
    }

    /// A worker (or a Slurm job) that could not be started: the job fails with the reason, unless
    /// the disk refused a write, which sends it back to the queue like a worker's full disk.
    async fn start_failed(
        &self,
        id: JobId,
        log: &JobLog,
        err: &anyhow::Error,
        work: &WorkerJob,
        phases: u32,
        reason: &str,
    ) {
        let Some(storage) = crate::files::storage_error_in(err) else {
            return self.finish(id, JobState::Failed, Some(reason)).await;
        };
        let spec = &work.spec;
        let retries = self.retries(id, spec).await;
        let message = format!("{reason} ({storage})");
        let facts = RunFacts {
            failure: Some((FailureKind::Storage, &message)),
            storage_attempts_left: retries.storage_attempts_left,
            disk: retries.disk.as_deref(),
            ..RunFacts::default()
        };
        let mut tracker = ProgressTracker::new(
            self.store.clone(),
            id,
            log.clone(),
            phases,
            self.events.clone(),
            self.telemetry.clone(),
        );
        self.conclude(id, log, &mut tracker, decide(&facts), spec, "the worker did not start").await;
    }

    /// The server's counters and histograms: the scheduler observes queue waits when it starts
    /// a job through this supervisor.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Whether the server is shutting down (the scheduler then starts nothing).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Graceful shutdown: every running worker gets SIGTERM (it saves a resumable checkpoint and
    /// exits), SIGKILL after the shutdown grace; each job goes back to the queue and resumes at
    /// the next start. Returns when no worker is left.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        // Slurm jobs keep running without us; their followers stop at once (see remote.rs).
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace + Duration::from_secs(5);
        while !self.running.lock().expect("running map poisoned").is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the worker of a running job to stop (SIGTERM, then SIGKILL after the grace period).
    /// Returns false if this supervisor runs no worker for that job.
    pub fn cancel(&self, id: JobId) -> bool {
        match self.running.lock().expect("running map poisoned").get(&id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    async fn spawn(
        &self,
        paths: &JobPaths,
        log: &JobLog,
        work: &WorkerJob,
        slot: &DeviceSlot,
    ) -> anyhow::Result<Child> {
        use anyhow::Context;
        tokio::fs::create_dir_all(paths.artifacts()).await.context("creating the job folder")?;
        let job_json = serde_json::to_vec_pretty(work).expect("worker jobs serialize");
        write_file(paths.worker_job(), job_json).await.context("writing job.json")?;
        let mut command = worker_command(&self.config.worker_program);
        command.arg("run").arg("--job").arg(paths.worker_job());
        let visible = match slot.kind {
            DeviceKind::Gpu { index } => index.to_string(),
            DeviceKind::Cpu | DeviceKind::Slurm { .. } => String::new(),
        };
        if let (DeviceKind::Cpu, Some(limit)) = (slot.kind, self.config.cpu_memory_limit) {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
            .env("CUDA_VISIBLE_DEVICES", visible)
            .env("OMP_NUM_THREADS", work.threads.to_string())
            .current_dir(&paths.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Piped, not a file: each line goes to the log through `JobLog` and out as a live event.
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let child = command.spawn().with_context(|| format!("spawning {}", self.config.worker_program.display()))?;
        let pid = child.id().unwrap_or(0);
        log.append(&format!("trainq: worker pid {pid} started on {} ({})\n", slot.id, slot.name)).await;
        tracing::info!(pid, "worker started");
        Ok(child)
    }

    /// Job `id`'s time limit and the device time left of it (its earlier runs counted), when it
    /// has one. An unreadable database gives no limit for this run rather than no run.
    async fn time_limit_left(&self, id: JobId) -> Option<(TimeLimit, Duration)> {
        let limit = match self.store.job(id).await {
            Ok(Some(job)) => job.time_limit?,
            Ok(None) => return None,
            Err(err) => {
                tracing::error!(error = ?err, "reading the job's time limit failed; this run has none");
                return None;
            }
        };
        let used = self.store.device_seconds_used(id).await.unwrap_or_else(|err| {
            tracing::error!(error = ?err, "reading the job's device time failed; counting from zero");
            0.0
        });
        Some((limit, Duration::from_secs_f64((limit.seconds() as f64 - used).max(0.0))))
    }

    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &self,
        id: JobId,
        log: JobLog,
        mut child: Child,
        token: CancellationToken,
        phases: u32,
        slot: DeviceSlot,
        spec: JobSpec,
        time_limit: Option<(TimeLimit, Duration)>,
    ) {
        let pid = child.id().map(|pid| pid as i32);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut reader = BufReader::new(stdout);
        let mut errors = BufReader::new(stderr);
        // Bytes, not `lines()`: one line of invalid UTF-8 must not stop us reading, or the
        // worker would block on a full pipe.
        let mut line = Vec::new();
        let mut error_line = Vec::new();
        let mut tracker = ProgressTracker::new(
            self.store.clone(),
            id,
            log.clone(),
            phases,
            self.events.clone(),
            self.telemetry.clone(),
        );
        let mut stdout_open = true;
        let mut stderr_open = true;
        let mut cancelled = false;
        let mut stopping = false;
        // The moment the job's device time reaches its limit, and why it stopped once it did.
        let limit_at = time_limit.map(|(_, left)| tokio::time::Instant::now() + left);
        let mut time_limit_reached: Option<String> = None;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut peak_memory: u64 = 0;
        let mut memory_recorded = false;
        let gpu = matches!(slot.kind, DeviceKind::Gpu { .. });
        let mut sample = tokio::time::interval(MEMORY_SAMPLE);
        let never = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let status = loop {
            tokio::select! {
                read = reader.read_until(b'\n', &mut line), if stdout_open => match read {
                    Ok(0) | Err(_) => stdout_open = false,
                    Ok(_) => {
                        tracker.handle_line(String::from_utf8_lossy(&line).trim_end()).await;
                        line.clear();
                    }
                },
                read = errors.read_until(b'\n', &mut error_line), if stderr_open => match read {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(_) => {
                        log.append_line(&String::from_utf8_lossy(&error_line)).await;
                        error_line.clear();
                    }
                },
                status = child.wait() => break status,
                () = token.cancelled(), if !cancelled => {
                    cancelled = true;
                    if let Some(pid) = pid {
                        tracing::info!("stopping worker: SIGTERM to its process group");
                        signal_group(pid, libc::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + self.config.kill_grace);
                    }
                }
                () = tokio::time::sleep_until(limit_at.unwrap_or(never)), if limit_at.is_some() && time_limit_reached.is_none() && !stopping && !cancelled => {
                    let limit = time_limit.map(|(limit, _)| limit).expect("a deadline comes from a limit");
                    let reason = crate::domain::time_limit::reached_reason(limit, Some(tracker.progress()));
                    log.append(&format!("trainq: {reason}: stopping the worker with a checkpoint (SIGTERM)\n")).await;
                    tracing::info!(%reason, "time limit reached: SIGTERM to the worker, which checkpoints and exits");
                    time_limit_reached = Some(reason);
                    if let Some(pid) = pid {
                        signal_group(pid, libc::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + self.config.shutdown_grace);
                    }
                }
                () = self.shutdown.cancelled(), if !stopping && !cancelled && time_limit_reached.is_none() => {
                    stopping = true;
                    if let Some(pid) = pid {
                        tracing::info!("server shutting down: SIGTERM to the worker, which checkpoints and exits");
                        signal_group(pid, libc::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + self.config.shutdown_grace);
                    }
                }
                _ = sample.tick(), if gpu && !memory_recorded => {
                    // The measured peak replaces the estimate once a whole epoch has run, so
                    // packing decisions use what the job really needs.
                    let used = self.inventory.gpu_processes(&slot).and_then(|processes| {
                        processes.into_iter().find(|process| Some(process.pid as i32) == pid).and_then(|process| process.used_bytes)
                    });
                    peak_memory = peak_memory.max(used.unwrap_or(0));
                    if tracker.epochs_seen() > 0 && peak_memory > 0 {
                        memory_recorded = true;
                        let bytes = (peak_memory as f64 * MEASURED_MARGIN) as u64;
                        match self.store.set_measured_memory(id, bytes).await {
                            // The GPU may now have room for a waiting job: the scheduler looks.
                            Ok(()) => self.wake_scheduler.notify_one(),
                            Err(err) => tracing::error!(error = ?err, "recording measured memory failed"),
                        }
                        log.append(&format!("trainq: measured GPU memory peak {:.1} GB\n", peak_memory as f64 / 1e9)).await;
                    }
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or(never)), if kill_at.is_some() => {
                    kill_at = None;
                    if let Some(pid) = pid {
                        tracing::warn!("worker ignored SIGTERM: SIGKILL to its process group");
                        signal_group(pid, libc::SIGKILL);
                    }
                }
            }
        };
        // Drain what the worker printed before it exited, without waiting on stray descendants.
        let drain_stdout = async {
            while let Ok(read) = reader.read_until(b'\n', &mut line).await {
                if read == 0 {
                    break;
                }
                tracker.handle_line(String::from_utf8_lossy(&line).trim_end()).await;
                line.clear();
            }
        };
        let drain_stderr = async {
            while let Ok(read) = errors.read_until(b'\n', &mut error_line).await {
                if read == 0 {
                    break;
                }
                log.append_line(&String::from_utf8_lossy(&error_line)).await;
                error_line.clear();
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), futures::future::join(drain_stdout, drain_stderr)).await;
        // Nothing of the job may keep running (or hold the GPU) once its worker is gone.
        if let Some(pid) = pid {
            signal_group(pid, libc::SIGKILL);
        }
        let cancel_requested = cancelled || matches!(self.store.job(id).await, Ok(Some(job)) if job.cancel_requested);
        let exit = status.as_ref().ok().and_then(|status| match (status.code(), status.signal()) {
            (Some(code), _) => Some(WorkerExit::Code(code)),
            (None, Some(signal)) => Some(WorkerExit::Signal(signal)),
            (None, None) => None,
        });
        let failure = tracker.failure().cloned();
        let retries = self.retries(id, &spec).await;
        let facts = RunFacts {
            exit,
            cancel_requested,
            server_stopping: stopping,
            saw_final: tracker.saw_final(),
            failure: failure.as_ref().map(|(kind, message)| (*kind, message.as_str())),
            slurm: None,
            gpu,
            cpu_memory_limit: self.config.cpu_memory_limit,
            oom_retry_batch: retries.oom_retry_batch,
            storage_attempts_left: retries.storage_attempts_left,
            disk: retries.disk.as_deref(),
            time_limit_reached: time_limit_reached.as_deref(),
        };
        let decision = decide(&facts);
        let summary = match &status {
            Ok(status) => exit.map_or_else(|| status.to_string(), describe_exit),
            Err(err) => format!("waiting for the worker failed: {err}"),
        };
        self.conclude(id, &log, &mut tracker, decision, &spec, &summary).await;
    }

    /// What the decision needs beyond the run itself: whether an out-of-memory run may be retried
    /// with half the batch, whether a storage fault may re-queue the job once more, and the disk.
    async fn retries(&self, id: JobId, spec: &JobSpec) -> Retries {
        let oom_retry_batch = match spec.halved_batch() {
            Some(halved) if !self.store.oom_retried(id).await.unwrap_or(true) => Some(halved.batch_size),
            _ => None,
        };
        let faults = self.store.storage_faults(id).await.unwrap_or(0);
        let disk = self.disk.clone();
        let described = tokio::task::spawn_blocking(move || disk.describe()).await.ok().flatten();
        Retries {
            oom_retry_batch,
            storage_attempts_left: faults < self.disk.settings().max_storage_attempts,
            disk: described,
        }
    }

    /// Records how a job's run ended: the results the tracker could not store yet, then the
    /// job's next state — a final one (a failure's reason quoting the log's tail) or back to the
    /// queue. Every write is retried until it lands (see [`StateWrite`]): the job stays `running`
    /// meanwhile, so its device is not handed out twice, and other devices go on.
    async fn conclude(
        &self,
        id: JobId,
        log: &JobLog,
        tracker: &mut ProgressTracker,
        decision: Decision,
        spec: &JobSpec,
        summary: &str,
    ) {
        let mut retry = StateWrite::new("storing the run's last results", &self.disk);
        while let Err(err) = tracker.save_pending().await {
            if !retry.again(&err).await {
                break;
            }
        }
        let next = decision.outcome.job_state();
        if next != JobState::Queued {
            let reason = match decision.reason {
                // Where it stopped says it all; the log's tail is of a healthy run.
                Some(reason) if next == JobState::Timeout => Some(reason),
                Some(reason) => {
                    let tail = log_tail(&log.path, REASON_LOG_LINES).await;
                    Some(format!("{reason}\n--- last lines of the log ---\n{tail}"))
                }
                None => None,
            };
            log.append(&format!("trainq: {summary}; job {next}\n")).await;
            tracing::info!(state = %next, %summary, "worker ended");
            self.finish(id, next, reason.as_deref()).await;
            return;
        }
        let new_spec = decision.batch_size.map(|batch_size| JobSpec { batch_size, ..spec.clone() });
        let mut retry = StateWrite::new("re-queueing a job", &self.disk);
        let done = loop {
            match self.store.requeue_job(id, decision.outcome, new_spec.as_ref(), decision.note.as_deref()).await {
                Ok(done) => break done,
                Err(err) if retry.again(&err).await => {}
                Err(_) => break false,
            }
        };
        if done {
            if decision.outcome == RunOutcome::Requeued {
                self.telemetry.oom_retried();
            }
            let why = decision.note.unwrap_or_else(|| String::from("interrupted; it resumes from its last checkpoint"));
            log.append(&format!("trainq: {summary}; job re-queued: {why}\n")).await;
            tracing::info!(%summary, %why, "job re-queued");
            if new_spec.is_some() {
                // The checkpoint belongs to the old spec.
                let _ = tokio::fs::remove_dir_all(JobPaths::new(&self.config.data_dir, id).state()).await;
            }
            let name = self.store.job(id).await.ok().flatten().map(|job| job.name).unwrap_or_default();
            self.events.publish(id, EventKind::Queued { name });
        } else if matches!(self.store.job(id).await, Ok(Some(job)) if job.state == JobState::Running && job.cancel_requested)
        {
            // A cancel that arrived after the decision: the re-queue refuses it, the cancel wins.
            log.append(&format!("trainq: {summary}; job cancelled\n")).await;
            return self.finish(id, JobState::Cancelled, None).await;
        }
        self.running.lock().expect("running map poisoned").remove(&id);
        self.wake_scheduler.notify_one();
    }

    /// Ends a running job in a final state, retrying the write until it lands.
    async fn finish(&self, id: JobId, state: JobState, reason: Option<&str>) {
        let mut retry = StateWrite::new("recording the end of a job", &self.disk);
        let ended = loop {
            match self.store.finish_job(id, state, reason).await {
                Ok(true) => {
                    self.events.publish(id, EventKind::Finished { state, error: reason.map(str::to_string) });
                    break true;
                }
                Ok(false) => break false,
                Err(err) if retry.again(&err).await => {}
                Err(_) => break false,
            }
        };
        self.running.lock().expect("running map poisoned").remove(&id);
        self.wake_scheduler.notify_one();
        // After the wake-up, so counting (one read of the job's runs) never delays the next job.
        if ended {
            self.count_end(id, state).await;
            self.measure_folder(id).await;
        }
    }

    /// Measures a finished job's folder once (one walk of that folder) for its owner's disk
    /// usage. A failed write is logged, not retried: the usage is a report, not the job's state.
    async fn measure_folder(&self, id: JobId) {
        let dir = self.job_paths(id).dir;
        let bytes = tokio::task::spawn_blocking(move || crate::files::prune::folder_bytes(&dir)).await.unwrap_or(0);
        if let Err(err) = self.store.set_disk_bytes(id, bytes, None).await {
            tracing::warn!(job_id = %id, error = ?err, "recording the size of the job's folder failed");
        }
    }

    /// Counts a job's end once, where its final state was written: its outcome, and its device
    /// time over every run (retries and resumes included) from the runs the store keeps.
    async fn count_end(&self, id: JobId, state: JobState) {
        self.telemetry.job_finished(state);
        match self.store.runs_of(id).await {
            Ok(runs) if !runs.is_empty() => {
                let seconds =
                    runs.iter().map(|run| run.ended_at.unwrap_or(run.started_at).seconds_since(run.started_at)).sum();
                self.telemetry.job_ran(seconds);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = ?err, "reading the job's runs for its run time failed"),
        }
    }

    /// Fails a job the scheduler claimed but could not hand to a worker (its inputs vanished).
    pub async fn fail_unstarted(&self, id: JobId, reason: &str) {
        self.finish(id, JobState::Failed, Some(reason)).await;
    }

    /// Fails a queued job that a job it waits for (`after`, `init_from`) failed or was
    /// cancelled: the same durable end as any other, so everything that follows job ends sees it.
    pub async fn fail_waiting(&self, id: JobId, reason: &str) {
        self.finish(id, JobState::Failed, Some(reason)).await;
    }
}

/// Writes a file the worker or Slurm reads, atomically (`files::write_atomic`), off the runtime.
async fn write_file(path: PathBuf, bytes: impl AsRef<[u8]> + Send + 'static) -> std::io::Result<()> {
    let written = tokio::task::spawn_blocking(move || crate::files::write_atomic_bytes(&path, bytes.as_ref())).await;
    written.unwrap_or_else(|err| Err(std::io::Error::other(err)))
}

fn signal_group(pid: i32, signal: i32) {
    // SAFETY: killpg only sends a signal; ESRCH (group already gone) is fine.
    unsafe {
        libc::killpg(pid, signal);
    }
}

/// Retries a write of a job's state until it lands. Transient store errors (a full disk, an I/O
/// error, a lock held past the busy timeout) are waited out with backoff — releasing the disk
/// reserve when the disk is full, so the write can land — and logged now and then; anything else
/// (a corrupt row) is logged and given up.
struct StateWrite<'a> {
    what: &'static str,
    disk: &'a crate::disk_space::Disk,
    delay: Duration,
    attempts: u32,
}

impl<'a> StateWrite<'a> {
    const FIRST_DELAY: Duration = Duration::from_millis(100);
    const MAX_DELAY: Duration = Duration::from_secs(5);

    fn new(what: &'static str, disk: &'a crate::disk_space::Disk) -> StateWrite<'a> {
        StateWrite { what, disk, delay: Self::FIRST_DELAY, attempts: 0 }
    }

    /// After a failed attempt: waits and returns true to try again, or false to give up.
    async fn again(&mut self, err: &crate::store::StoreError) -> bool {
        if !err.is_transient() {
            tracing::error!(error = ?err, what = self.what, "a state write failed and cannot be retried");
            return false;
        }
        self.attempts += 1;
        if err.is_disk_full() {
            self.disk.release_reserve();
        }
        if self.attempts == 1 || self.attempts.is_multiple_of(20) {
            tracing::warn!(error = ?err, what = self.what, attempts = self.attempts, "a state write failed; retrying until it lands");
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX_DELAY);
        true
    }
}

/// A job's log file (`log.txt`, every attempt appended) and the one way anything is written to
/// it: each line also goes out as a live `log` event with its byte offset in the file.
#[derive(Clone)]
pub(super) struct JobLog {
    path: PathBuf,
    job_id: JobId,
    events: EventBus,
}

impl JobLog {
    /// Appends `text` (whole lines); a log that cannot be written never stops the job.
    pub(super) async fn append(&self, text: &str) {
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await;
        let Ok(mut file) = file else { return };
        // Only this job's watcher writes its log, so the length before the write is where the
        // text lands (the file is opened for appending).
        let start = file.metadata().await.map(|metadata| metadata.len()).unwrap_or(0);
        if file.write_all(text.as_bytes()).await.is_err() {
            return;
        }
        let mut offset = start;
        for line in text.split_inclusive('\n') {
            let kind = EventKind::Log { line: line.trim_end_matches(['\n', '\r']).to_string(), offset };
            self.events.publish(self.job_id, kind);
            offset += line.len() as u64;
        }
    }

    /// Appends one line, adding the newline unless it has one.
    pub(super) async fn append_line(&self, line: &str) {
        if line.ends_with('\n') {
            self.append(line).await;
        } else {
            self.append(&format!("{line}\n")).await;
        }
    }
}

async fn log_tail(path: &Path, lines: usize) -> String {
    let text = tokio::fs::read(path).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(describe_exit(WorkerExit::Code(3)), "worker exited with code 3");
        assert_eq!(describe_exit(WorkerExit::Signal(libc::SIGSEGV)), "worker killed by signal 11 (SIGSEGV)");
    }
}
