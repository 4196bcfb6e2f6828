//! The only place that spawns processes: one worker per job, in its own process group, with a
//! cleared environment, `CUDA_VISIBLE_DEVICES` set, stderr to the job's log and progress events on
//! stdout. A watcher task per worker turns progress into database rows and the exit into a state,
//! writes the worker's stderr to the job's log, and publishes each change as a live event.

pub mod inference;
mod progress;
mod remote;
pub mod slurm;

pub use remote::RemoteError;

use crate::devices::{DeviceKind, DeviceSlot, Inventory};
use crate::domain::progress::{FailureKind, WorkerJob, EXIT_INTERRUPTED};
use crate::domain::{JobId, JobState};
use crate::events::{EventBus, EventKind};
use crate::store::Store;
use progress::ProgressTracker;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
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
/// or a model: the kernel kills it when the server dies.
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

/// How a worker's end is recorded.
enum Outcome {
    /// A terminal state, with the reason for a failure.
    Finish(JobState, Option<String>),
    /// Back to the queue: `interrupted` (resumes from its checkpoint) or `requeued` (out of
    /// memory, retried once with a changed spec).
    Requeue { outcome: &'static str, spec: Option<serde_json::Value>, note: Option<String> },
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
    worker_exited: Arc<Notify>,
    inference: inference::InferencePool,
    events: EventBus,
    inventory: Inventory,
    /// Cancelled when the server begins to shut down.
    shutdown: CancellationToken,
    /// Jobs running in Slurm, fed by their relays.
    remote: Arc<Mutex<HashMap<JobId, Arc<tokio::sync::Mutex<remote::RemoteJob>>>>>,
}

impl Supervisor {
    /// A supervisor that wakes `worker_exited` whenever a worker ends (the scheduler listens) and
    /// publishes what its workers do on `events`.
    pub fn new(
        store: Store,
        config: SupervisorConfig,
        worker_exited: Arc<Notify>,
        events: EventBus,
        inventory: Inventory,
    ) -> Supervisor {
        let supervisor = Supervisor {
            store,
            config: Arc::new(config),
            running: Arc::default(),
            worker_exited,
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
    pub async fn infer(&self, id: JobId, request: &serde_json::Value) -> Result<serde_json::Value, inference::InferenceError> {
        let artifacts = JobPaths::new(&self.config.data_dir, id).artifacts();
        self.inference.request(&self.config.worker_program, id, &artifacts, request).await
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
                let spec = serde_json::to_value(&work.spec).expect("specs serialize");
                tokio::spawn(async move { watcher.watch(id, log, child, token, phases, slot, spec).await }.instrument(span));
            }
            Err(err) => {
                tracing::error!(error = %err, "could not start worker");
                let reason = format!("could not start the worker: {err:#}");
                log.append(&format!("trainq: {reason}\n")).await;
                self.finish(id, JobState::Failed, Some(&reason)).await;
            }
        }
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

    async fn spawn(&self, paths: &JobPaths, log: &JobLog, work: &WorkerJob, slot: &DeviceSlot) -> anyhow::Result<Child> {
        use anyhow::Context;
        tokio::fs::create_dir_all(paths.artifacts()).await.context("creating the job folder")?;
        let job_json = serde_json::to_vec_pretty(work).expect("worker jobs serialize");
        tokio::fs::write(paths.worker_job(), job_json).await.context("writing job.json")?;
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

    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &self,
        id: JobId,
        log: JobLog,
        mut child: Child,
        token: CancellationToken,
        phases: u32,
        slot: DeviceSlot,
        spec: serde_json::Value,
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
        let mut tracker = ProgressTracker::new(self.store.clone(), id, log.clone(), phases, self.events.clone());
        let mut stdout_open = true;
        let mut stderr_open = true;
        let mut cancelled = false;
        let mut stopping = false;
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
                () = self.shutdown.cancelled(), if !stopping && !cancelled => {
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
                        if let Err(err) = self.store.set_measured_memory(id, bytes).await {
                            tracing::error!(error = ?err, "recording measured memory failed");
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
        let cancel_requested = cancelled
            || matches!(self.store.job(id).await, Ok(Some(job)) if job.cancel_requested);
        let interrupted = matches!(&status, Ok(status) if status.code() == Some(EXIT_INTERRUPTED));
        let out_of_memory = match tracker.failure() {
            Some((FailureKind::OutOfMemory, message)) => Some(message.clone()),
            _ => None,
        };
        let outcome = match status {
            _ if cancel_requested => Outcome::Finish(JobState::Cancelled, None),
            Ok(status) if status.success() && tracker.saw_final() => Outcome::Finish(JobState::Succeeded, None),
            // Stopped by the server's shutdown (or a SIGTERM from outside): it resumes later.
            _ if stopping || interrupted => Outcome::Requeue { outcome: "interrupted", spec: None, note: None },
            _ if out_of_memory.is_some() => {
                self.out_of_memory(id, gpu, &spec, out_of_memory.as_deref().unwrap_or_default()).await
            }
            Ok(status) if status.success() => Outcome::Finish(
                JobState::Failed,
                Some(String::from("the worker exited 0 without reporting final metrics")),
            ),
            // A Rust-side allocation that fails under the memory limit aborts without a word.
            Ok(status) if status.signal() == Some(libc::SIGABRT) && !gpu && self.config.cpu_memory_limit.is_some() => {
                let limit = self.config.cpu_memory_limit.unwrap_or_default() as f64 / 1e9;
                let reason = format!("{}: probably out of memory under the {limit:.1} GB limit of CPU workers", describe_exit(status));
                Outcome::Finish(JobState::Failed, Some(reason))
            }
            Ok(status) => Outcome::Finish(JobState::Failed, Some(describe_exit(status))),
            Err(ref err) => Outcome::Finish(JobState::Failed, Some(format!("waiting for the worker failed: {err}"))),
        };
        let summary = match &status {
            Ok(status) => describe_exit(*status),
            Err(err) => err.to_string(),
        };
        self.conclude(id, &log, outcome, &summary).await;
    }

    /// Records how a job's worker ended: a final state (a failure's reason quoting the log's
    /// tail), or back to the queue.
    async fn conclude(&self, id: JobId, log: &JobLog, outcome: Outcome, summary: &str) {
        let (state, reason) = match outcome {
            Outcome::Finish(state, reason) => (state, reason),
            Outcome::Requeue { outcome, spec, note } => {
                let done = self.store.requeue_job(id, outcome, spec.as_ref(), note.as_deref()).await;
                match done {
                    Ok(true) => {
                        let why = note.unwrap_or_else(|| String::from("interrupted; it resumes from its last checkpoint"));
                        log.append(&format!("trainq: {summary}; job re-queued: {why}\n")).await;
                        tracing::info!(%summary, %why, "job re-queued");
                        if spec.is_some() {
                            // The checkpoint belongs to the old spec.
                            let _ = tokio::fs::remove_dir_all(JobPaths::new(&self.config.data_dir, id).state()).await;
                        }
                        let name = self.store.job(id).await.ok().flatten().map(|job| job.name).unwrap_or_default();
                        self.events.publish(id, EventKind::Queued { name });
                    }
                    Ok(false) => {}
                    Err(err) => tracing::error!(error = ?err, %id, "re-queueing a job failed"),
                }
                self.running.lock().expect("running map poisoned").remove(&id);
                self.worker_exited.notify_one();
                return;
            }
        };
        let reason = match reason {
            Some(reason) => {
                let tail = log_tail(&log.path, REASON_LOG_LINES).await;
                Some(format!("{reason}\n--- last lines of the log ---\n{tail}"))
            }
            None => None,
        };
        log.append(&format!("trainq: {summary}; job {state}\n")).await;
        tracing::info!(%state, %summary, "worker ended");
        self.finish(id, state, reason.as_deref()).await;
    }

    /// A worker ran out of memory: the job fails with the numbers, or with `retry_on_oom` (once)
    /// goes back to the queue with half the batch size, which the job's notes record.
    async fn out_of_memory(&self, id: JobId, gpu: bool, spec: &serde_json::Value, message: &str) -> Outcome {
        let what = if gpu { "out of GPU memory" } else { "out of memory" };
        let limit = match (gpu, self.config.cpu_memory_limit) {
            (false, Some(limit)) => format!(" (CPU workers may use {:.1} GB: --worker-max-memory-gb)", limit as f64 / 1e9),
            _ => String::new(),
        };
        let batch = spec["batch_size"].as_u64().unwrap_or(1);
        let retry = spec["retry_on_oom"].as_bool().unwrap_or(false) && batch > 1;
        if retry && !self.store.oom_retried(id).await.unwrap_or(true) {
            let mut halved = spec.clone();
            halved["batch_size"] = serde_json::json!(batch / 2);
            let note = format!("{what} with batch_size {batch}{limit}; re-queued once with batch_size {}", batch / 2);
            return Outcome::Requeue { outcome: "requeued", spec: Some(halved), note: Some(note) };
        }
        Outcome::Finish(JobState::Failed, Some(format!("{what}{limit}: {message}")))
    }

    async fn finish(&self, id: JobId, state: JobState, reason: Option<&str>) {
        match self.store.finish_job(id, state, reason).await {
            Ok(true) => self.events.publish(id, EventKind::Finished { state, error: reason.map(str::to_string) }),
            Ok(false) => {}
            Err(err) => tracing::error!(error = ?err, %id, "recording the end of a job failed"),
        }
        self.running.lock().expect("running map poisoned").remove(&id);
        self.worker_exited.notify_one();
    }
}

fn signal_group(pid: i32, signal: i32) {
    // SAFETY: killpg only sends a signal; ESRCH (group already gone) is fine.
    unsafe {
        libc::killpg(pid, signal);
    }
}

/// "exited with code 3" or "killed by signal 11 (SIGSEGV)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("worker exited with code {code}");
    }
    match status.signal() {
        Some(signal) => format!("worker killed by signal {signal} ({})", signal_name(signal)),
        None => String::from("worker ended for an unknown reason"),
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
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "worker exited with code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(libc::SIGSEGV)), "worker killed by signal 11 (SIGSEGV)");
    }
}
