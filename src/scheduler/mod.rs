//! The one task that claims jobs. It wakes when a job is submitted or a worker exits (and on a
//! 300 ms tick as a safety net), asks [`policy::plan`] which queued job goes to which
//! free device, claims each with a conditional UPDATE, and hands it to the supervisor.

mod eta;
pub mod policy;

use crate::catalog;
use crate::devices::Inventory;
use crate::domain::progress::{WorkerDevice, WorkerJob};
use crate::domain::spec::Weights;
use crate::domain::{Job, JobId, JobSpec, JobState};
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
    /// Expected seconds until it starts, from measured epoch times of the running jobs and of
    /// similar finished jobs; absent when nothing similar was ever measured.
    pub eta_seconds: Option<f64>,
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
    *handle.queue.write().expect("queue info poisoned") = plan
        .waiting
        .iter()
        .map(|waiting| {
            let info = QueueInfo {
                position: waiting.position,
                pending_reason: waiting.reason.to_string(),
                eta_seconds: etas.get(&waiting.job).copied(),
            };
            (waiting.job, info)
        })
        .collect();
    for (id, device) in plan.assignments {
        if !store.claim_job(id, device).await? {
            continue; // cancelled between the read and the claim
        }
        let job = queued.iter().find(|job| job.id == id).expect("assigned jobs come from the queue");
        let slot = inventory.slot(device).expect("devices come from the inventory");
        let sharing = devices.iter().find(|d| d.id == device).map_or(0, |d| d.running.len());
        // Jobs sharing a GPU share the host cores given to it.
        let threads = (inventory.threads_per_slot() / (sharing + 1)).max(1);
        // A GPU that may take several jobs holds each one's data to the allowance its estimate counts.
        let data_budget = (settings.limits.max_jobs_per_gpu > 1).then_some(crate::domain::memory::GPU_DATA_ALLOWANCE_BYTES);
        match worker_job(job, slot.kind, threads, data_budget, inputs) {
            Ok((work, phases)) => supervisor.start(work, slot, phases).await,
            Err(reason) => {
                tracing::warn!(%id, %reason, "claimed job cannot run");
                store.finish_job(id, JobState::Failed, Some(&reason)).await?;
            }
        }
    }
    Ok(())
}

/// Resolves a job's inputs again at start: a dataset or weights file may have gone since submit.
fn worker_job(
    job: &Job,
    device: crate::devices::DeviceKind,
    threads: usize,
    gpu_data_budget_bytes: Option<u64>,
    inputs: &Inputs,
) -> Result<(WorkerJob, u32), String> {
    let spec: JobSpec = serde_json::from_value(job.spec.clone()).map_err(|err| format!("stored spec unreadable: {err}"))?;
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
    Ok((work, phases))
}
