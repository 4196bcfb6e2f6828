//! The one task that claims jobs. It wakes when a job is submitted or a worker exits (and on a
//! 300 ms tick as a safety net), asks [`policy::plan`] which queued job goes to which
//! free device, claims each with a conditional UPDATE, and hands it to the supervisor.

mod eta;
pub mod policy;

use crate::catalog;
use crate::devices::Inventory;
use crate::domain::progress::{WorkerDevice, WorkerJob};
use crate::domain::spec::Weights;
use crate::domain::{Job, JobId, JobState};
use crate::store::{unix_now, Store, StoreError};
use crate::supervisor::{JobPaths, Supervisor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

const TICK: Duration = Duration::from_millis(300);

/// Where a queued job stands, as the last scheduling pass saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueInfo {
    /// 1-based place in line (1 = next).
    pub position: usize,
    /// Why it is not running yet, in a sentence.
    pub pending_reason: String,
    /// When it is expected to start (Unix seconds), from measured epoch times of the running jobs
    /// and of similar finished jobs; absent when nothing similar was ever measured. Absolute, so
    /// it stays right between scheduling passes (which happen only when something changes).
    pub eta_at: Option<f64>,
}

impl QueueInfo {
    /// Expected seconds from `now` until the job starts (0 when overdue).
    pub fn eta_seconds(&self, now: f64) -> Option<f64> {
        self.eta_at.map(|at| (at - now).max(0.0))
    }
}

/// How the rest of the server reaches the scheduler: it wakes it, and reads where queued jobs
/// stand.
#[derive(Debug, Clone, Default)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
    queue: Arc<RwLock<HashMap<JobId, QueueInfo>>>,
}

impl SchedulerHandle {
    /// Asks for a scheduling pass soon (after a submission or a worker exit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The notifier the supervisor rings when a worker exits.
    pub fn notifier(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Position, pending reason and ETA of a queued job (after the first pass that saw it).
    pub fn queue_info(&self, id: JobId) -> Option<QueueInfo> {
        self.queue.read().expect("queue info poisoned").get(&id).cloned()
    }
}

/// Where jobs' inputs live.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The datasets root.
    pub datasets: PathBuf,
    /// The weights folder.
    pub weights: PathBuf,
    /// Root of job folders.
    pub data_dir: PathBuf,
    /// Budget of the shared cache folder, in bytes.
    pub cache_budget_bytes: u64,
    /// The disks the jobs write: no job starts unless what it will write fits above the low-water mark.
    pub disk: crate::disk::Disk,
}

/// The admin's scheduling settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Packing and per-user caps.
    pub limits: policy::Limits,
    /// Half-life of past usage in fair share, seconds.
    pub half_life_secs: f64,
}

/// Runs the scheduling loop until the server shuts down.
pub async fn run(
    handle: SchedulerHandle,
    store: Store,
    inventory: Inventory,
    supervisor: Supervisor,
    inputs: Inputs,
    settings: Settings,
) {
    loop {
        if supervisor.is_shutting_down() {
            return;
        }
        if let Err(err) = schedule_once(&handle, &store, &inventory, &supervisor, &inputs, &settings).await {
            tracing::error!(error = ?err, "scheduling pass failed");
        }
        tokio::select! {
            () = handle.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The fair-share key of a job: its owner ("" for jobs from before users existed).
fn user_of(job: &Job) -> String {
    job.owner.clone().unwrap_or_default()
}

/// Each user's decayed device-seconds over their runs (running ones count up to now).
pub async fn usage_by_user(store: &Store, now: f64, half_life_secs: f64) -> Result<HashMap<String, f64>, StoreError> {
    // Runs that ended more than 20 half-lives ago weigh under a millionth: left out.
    let runs = store.runs_since(now - 20.0 * half_life_secs).await?;
    let mut intervals: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for (owner, start, end) in runs {
        intervals.entry(owner.unwrap_or_default()).or_default().push((start, end.unwrap_or(now).min(now)));
    }
    Ok(intervals.into_iter().map(|(user, runs)| (user, policy::decayed_usage(&runs, now, half_life_secs))).collect())
}

async fn schedule_once(
    handle: &SchedulerHandle,
    store: &Store,
    inventory: &Inventory,
    supervisor: &Supervisor,
    inputs: &Inputs,
    settings: &Settings,
) -> Result<(), StoreError> {
    // The disks first: the reserve back once there is room, the cache evicted below the low-water mark.
    let disk = inputs.disk.clone();
    let mut spaces = tokio::task::spawn_blocking(move || {
        let spaces = disk.measure_all();
        if disk.maintain(&spaces) { disk.measure_all() } else { spaces }
    })
    .await
    .unwrap_or_default();
    let queued = store.jobs(Some(JobState::Queued)).await?;
    if queued.is_empty() {
        handle.queue.write().expect("queue info poisoned").clear();
        return Ok(());
    }
    let running = store.jobs(Some(JobState::Running)).await?;
    let now = unix_now();
    let usage = usage_by_user(store, now, settings.half_life_secs).await?;
    let devices: Vec<_> = inventory
        .slots()
        .iter()
        .map(|slot| {
            let here: Vec<&Job> = running.iter().filter(|job| job.device.as_deref() == Some(slot.id.as_str())).collect();
            // A GPU with compute processes but none of our jobs is someone else's right now.
            // (With our jobs on it, outsiders cannot be told apart by pid across namespaces; their
            // memory still shows in the packing headroom.)
            let foreign_busy = here.is_empty() && inventory.gpu_processes(slot).is_some_and(|processes| !processes.is_empty());
            policy::DeviceState {
                id: slot.id.as_str(),
                capacity: match slot.memory_total {
                    Some(memory_bytes) => policy::Capacity::Gpu { memory_bytes },
                    None => policy::Capacity::Slot,
                },
                running: here.iter().map(|job| policy::Running { user: user_of(job), memory_bytes: job.memory_bytes }).collect(),
                foreign_busy,
            }
        })
        .collect();
    let candidates: Vec<_> = queued
        .iter()
        .map(|job| policy::Candidate {
            job: job.id,
            user: user_of(job),
            priority: job.priority,
            seq: job.seq,
            memory_bytes: job.memory_bytes,
        })
        .collect();
    let plan = policy::plan(&candidates, &devices, &usage, &settings.limits);
    let etas = eta::start_times(store, &running, &queued, &plan, &devices, &settings.limits).await?;
    let mut queue: HashMap<JobId, QueueInfo> = plan
        .waiting
        .iter()
        .map(|waiting| {
            let info = QueueInfo {
                position: waiting.position,
                pending_reason: waiting.reason.to_string(),
                eta_at: etas.get(&waiting.job).map(|seconds| now + seconds),
            };
            (waiting.job, info)
        })
        .collect();
    // What the jobs started in this pass will write, on top of what is already written.
    let mut committed: Vec<(crate::disk::Role, u64)> = Vec::new();
    let mut waiting_for_disk = Vec::new();
    for (id, device) in plan.assignments {
        let job = queued.iter().find(|job| job.id == id).expect("assigned jobs come from the queue");
        let slot = inventory.slot(device).expect("devices come from the inventory");
        let sharing = devices.iter().find(|d| d.id == device).map_or(0, |d| d.running.len());
        // Jobs sharing a GPU share the host cores given to it.
        let threads = (inventory.threads_per_slot() / (sharing + 1)).max(1);
        // A GPU that may take several jobs holds each one's data to the allowance its estimate counts.
        let data_budget = (settings.limits.max_jobs_per_gpu > 1).then_some(crate::domain::memory::GPU_DATA_ALLOWANCE_BYTES);
        // Its checkpoints (known from the spec) must fit before the dataset is even looked at, so
        // a job waiting for disk costs no scan per pass.
        let checkpoints = vec![(crate::disk::Role::Jobs, crate::domain::memory::disk_bytes(&job.spec))];
        if let Some(short) = make_room(&inputs.disk, &mut spaces, &committed, &checkpoints).await {
            waiting_for_disk.push(waits_for_disk(handle, id, short));
            continue;
        }
        let inputs_now = inputs.clone();
        let (job_now, kind) = (job.clone(), slot.kind);
        let resolved = tokio::task::spawn_blocking(move || worker_job(&job_now, kind, threads, data_budget, &inputs_now))
            .await
            .unwrap_or_else(|err| Err(format!("resolving the job's inputs failed: {err}")));
        let (work, phases, needs) = match resolved {
            Ok(resolved) => resolved,
            Err(reason) => {
                if !store.claim_job(id, device).await? {
                    continue; // cancelled between the read and the claim
                }
                tracing::warn!(%id, %reason, "claimed job cannot run");
                supervisor.fail_unstarted(id, &reason).await;
                continue;
            }
        };
        if let Some(short) = make_room(&inputs.disk, &mut spaces, &committed, &needs).await {
            waiting_for_disk.push(waits_for_disk(handle, id, short));
            continue;
        }
        if !store.claim_job(id, device).await? {
            continue; // cancelled between the read and the claim
        }
        committed.extend(needs);
        supervisor.start(work, slot, phases).await;
    }
    // Jobs held back by the disk are next in line; the rest move down behind them.
    if !waiting_for_disk.is_empty() {
        for info in queue.values_mut() {
            info.position += waiting_for_disk.len();
        }
        for (place, (id, reason)) in waiting_for_disk.into_iter().enumerate() {
            queue.insert(id, QueueInfo { position: place + 1, pending_reason: reason, eta_at: None });
        }
    }
    *handle.queue.write().expect("queue info poisoned") = queue;
    Ok(())
}

/// Whether `needs`, on top of what this pass already started (`committed`), fit above the disk's
/// low-water mark; if not, the cache gives way first and the disks are measured again. The
/// shortage that remains, if any.
async fn make_room(
    disk: &crate::disk::Disk,
    spaces: &mut Vec<crate::disk::Space>,
    committed: &[(crate::disk::Role, u64)],
    needs: &[(crate::disk::Role, u64)],
) -> Option<crate::disk::Shortage> {
    let wanted: Vec<_> = committed.iter().chain(needs).copied().collect();
    let short = disk.shortage(spaces, &wanted)?;
    let missing = short.needed_bytes.saturating_sub(short.free_bytes);
    let evicting = disk.clone();
    *spaces = tokio::task::spawn_blocking(move || {
        evicting.evict(missing);
        evicting.measure_all()
    })
    .await
    .unwrap_or_default();
    disk.shortage(spaces, &wanted)
}

/// A planned job that waits for disk space: its queue entry, said in the log once when it
/// starts waiting, not on every pass.
fn waits_for_disk(handle: &SchedulerHandle, id: JobId, short: crate::disk::Shortage) -> (JobId, String) {
    if handle.queue_info(id).is_none_or(|info| !info.pending_reason.starts_with("waiting for disk space")) {
        tracing::warn!(%id, reason = %short, "job waits for disk space");
    }
    (id, short.to_string())
}

/// Resolves a job's inputs again at start: a dataset or weights file may have gone since submit.
/// Also returns what the job will write, per folder: its checkpoints in the job folder, and (at
/// most) its decoded images in the shared cache.
fn worker_job(
    job: &Job,
    device: crate::devices::DeviceKind,
    threads: usize,
    gpu_data_budget_bytes: Option<u64>,
    inputs: &Inputs,
) -> Result<(WorkerJob, u32, Vec<(crate::disk::Role, u64)>), String> {
    let spec = job.spec.clone();
    let dataset = catalog::datasets::open(&inputs.datasets, &spec.dataset).map_err(|err| err.to_string())?;
    let weights_file = match spec.weights {
        Weights::Imagenet => Some(
            catalog::weights::find(&inputs.weights, spec.backbone)
                .ok_or_else(|| format!("weights file {} is missing", spec.backbone.weights_file_name()))?,
        ),
        Weights::Random => None,
    };
    let device = match device {
        crate::devices::DeviceKind::Gpu { .. } => WorkerDevice::Cuda,
        crate::devices::DeviceKind::Slurm { gpus } if gpus > 0 => WorkerDevice::Cuda,
        crate::devices::DeviceKind::Cpu | crate::devices::DeviceKind::Slurm { .. } => WorkerDevice::Cpu,
    };
    let phases = spec.phases.len() as u32;
    // The pixel cache holds a byte per pixel and channel (three at most) of every image; a
    // variable-size spec counts its largest side.
    let side = match spec.resize() {
        crate::domain::spec::Resize::Square(size) => size,
        crate::domain::spec::Resize::Bounded { max_side, .. } => max_side,
    } as u64;
    let images: u64 = dataset.splits.iter().map(|split| split.images as u64).sum();
    let needs = vec![
        (crate::disk::Role::Jobs, crate::domain::memory::disk_bytes(&spec)),
        (crate::disk::Role::Cache, images * side * side * 3),
    ];
    let work = WorkerJob {
        job_id: job.id,
        spec,
        dataset_dir: dataset.path,
        weights_file,
        output_dir: JobPaths::new(&inputs.data_dir, job.id).artifacts(),
        device,
        threads,
        cache_dir: Some(inputs.data_dir.join("cache")),
        cache_budget_bytes: Some(inputs.cache_budget_bytes),
        state_dir: Some(JobPaths::new(&inputs.data_dir, job.id).state()),
        gpu_data_budget_bytes,
    };
    Ok((work, phases, needs))
}
