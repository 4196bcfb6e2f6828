//! The one task that claims jobs. It wakes when a job is submitted or a worker exits (and on a
//! 300 ms tick as a safety net), asks [`policy::plan`] which queued job goes to which
//! free device, claims each with a conditional UPDATE, and hands it to the supervisor.

pub mod policy;

use crate::catalog;
use crate::devices::Inventory;
use crate::domain::progress::{WorkerDevice, WorkerJob};
use crate::domain::spec::Weights;
use crate::domain::{Job, JobSpec};
use crate::store::Store;
use crate::supervisor::{JobPaths, Supervisor};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const TICK: Duration = Duration::from_millis(300);

/// How the rest of the server reaches the scheduler: it only ever wakes it.
#[derive(Debug, Clone, Default)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
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

/// Runs the scheduling loop forever.
pub async fn run(handle: SchedulerHandle, store: Store, inventory: Inventory, supervisor: Supervisor, inputs: Inputs) {
    loop {
        if supervisor.is_shutting_down() {
            return;
        }
        if let Err(err) = schedule_once(&store, &inventory, &supervisor, &inputs).await {
            tracing::error!(error = ?err, "scheduling pass failed");
        }
        tokio::select! {
            () = handle.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn schedule_once(
    store: &Store,
    inventory: &Inventory,
    supervisor: &Supervisor,
    inputs: &Inputs,
) -> Result<(), crate::store::StoreError> {
    let queued = store.jobs(Some(crate::domain::JobState::Queued)).await?;
    if queued.is_empty() {
        return Ok(());
    }
    let running = store.jobs(Some(crate::domain::JobState::Running)).await?;
    let busy: HashSet<&str> = running.iter().filter_map(|job| job.device.as_deref()).collect();
    let free: Vec<&str> = inventory.slots().iter().map(|s| s.id.as_str()).filter(|id| !busy.contains(id)).collect();
    // Until the store records users, priorities and memory estimates, every job is one user's, in
    // queue order, on whole devices: the plan is then the old oldest-first pairing.
    let candidates: Vec<_> = queued
        .iter()
        .zip(0..)
        .map(|(job, seq)| policy::Candidate { job: job.id, user: (), priority: 0, seq, memory_bytes: 0 })
        .collect();
    let devices: Vec<_> = free
        .iter()
        .map(|&id| policy::DeviceState { id, capacity: policy::Capacity::Slot, running: Vec::new(), foreign_busy: false })
        .collect();
    let limits = policy::Limits { max_jobs_per_gpu: 1, headroom_bytes: 0, max_jobs_per_user: None };
    for (id, device) in policy::plan(&candidates, &devices, &HashMap::new(), &limits).assignments {
        if !store.claim_job(id, device).await? {
            continue; // cancelled between the read and the claim
        }
        let job = queued.iter().find(|job| job.id == id).expect("assigned jobs come from the queue");
        let slot = inventory.slot(device).expect("free devices come from the inventory");
        match worker_job(job, slot.kind, inventory.threads_per_slot(), inputs) {
            Ok((work, phases)) => supervisor.start(work, slot, phases).await,
            Err(reason) => {
                tracing::warn!(%id, %reason, "claimed job cannot run");
                store.finish_job(id, crate::domain::JobState::Failed, Some(&reason)).await?;
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
        crate::devices::DeviceKind::Cpu => WorkerDevice::Cpu,
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
    };
    Ok((work, phases))
}
