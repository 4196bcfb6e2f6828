//! The one task that claims jobs. A pass asks [`policy::plan`] which queued job goes to which
//! free device, claims each with a conditional UPDATE, hands it to the supervisor, and publishes
//! every other job's place, reason and ETA.
//!
//! Passes run only when something changed ([`queue`]): a submission or re-queue (coalesced, at
//! most one pass per [`queue::COALESCE`]), an end or a cancel (at once), a finished epoch (ETAs,
//! at most every [`queue::ETA_REFRESH`]). Time alone changes little: while jobs wait for disk
//! space or for a GPU used outside trainq they are looked at again every [`RECHECK`], and jobs a
//! lab reservation holds when its occurrence next starts or ends; while jobs
//! run, fair share's decay is checked every [`DECAY_CHECK`] and a pass follows only if it changed
//! the users' order ([`policy::usage_order`]); the disks' reserve and cache are kept every
//! [`DISK_CHECK`]; the queue in memory is audited against the database every [`AUDIT`]. An idle
//! server with any number of queued jobs does a few cheap queries a minute.

mod eta;
pub mod policy;
mod queue;

use crate::catalog;
use crate::devices::Inventory;
use crate::domain::spec::Weights;
use crate::domain::worker_protocol::{WorkerDevice, WorkerJob};
use crate::domain::{Job, JobId, JobState, Timestamp};
use crate::events::EventBus;
use crate::store::{unix_now, Store, StoreError};
use crate::supervisor::{JobPaths, Supervisor};
use queue::{Pending, Queue};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often jobs held back by what no event announces (disk space, a GPU used outside trainq)
/// are looked at again.
const RECHECK: Duration = Duration::from_secs(5);

/// How often, while jobs run, fair share's decay is checked for a changed order of users.
const DECAY_CHECK: Duration = Duration::from_secs(30);

/// How often the disks are looked at when nothing else happens (the reserve given up when the
/// disk fills and restored when it has room, the cache trimmed below the low-water mark): a few
/// `statvfs` calls, microseconds.
const DISK_CHECK: Duration = Duration::from_secs(2);

/// How often the queue in memory is compared with the database's (a count and a checksum).
const AUDIT: Duration = Duration::from_secs(60);

/// After a failed pass (the database busy or full), the next try.
const RETRY: Duration = Duration::from_secs(1);

/// Where a queued job stands, as the last scheduling pass saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueInfo {
    /// 1-based place in line (1 = next).
    pub position: usize,
    /// Why it is not running yet, in a sentence.
    pub pending_reason: String,
    /// When it is expected to start (sent as Unix seconds), from measured epoch times of the
    /// running jobs and of similar finished jobs, each bounded by its time limit (where only the
    /// limit is known, it stands in: the ETA is then the latest start); absent when neither is known.
    /// Absolute, so it stays right between scheduling passes (which happen only when something
    /// changes).
    #[serde(with = "crate::domain::timestamp::unix_seconds::option")]
    pub eta_at: Option<Timestamp>,
    /// The job it waits for (`after`, `init_from`) when that is why it waits: the API words the
    /// reason with that job's state and progress (`domain::chain::waiting_reason`).
    pub waiting_for: Option<JobId>,
}

/// How the rest of the server reaches the scheduler: it wakes it, and reads where queued jobs
/// stand.
#[derive(Debug, Clone, Default)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
    queue: Arc<RwLock<Standings>>,
    /// Each user's ready jobs in order, kept by the scheduler's queue: where a job the last pass
    /// did not look at finds its place.
    lines: Arc<RwLock<queue::Lines>>,
    /// The highest `seq` placed: jobs after it are not placed yet. Only rises: it starts at the
    /// store's highest when the server starts, and each pass raises it to the highest it read.
    planned_up_to: Arc<std::sync::atomic::AtomicI64>,
}

/// Jobs a pass looks at before it stops (once that many wait in line and no device has a turn
/// free): they get their place, reason and ETA in the pass; the others get theirs from the lines
/// when someone asks ([`policy::Rest::place`]), and no ETA. A pass over 100,000 queued jobs on a
/// full box costs what one over this many does.
pub(crate) const DEPTH: usize = 1000;

/// What the last pass left for the API to read: the places it gave, and what places the jobs it
/// did not look at.
#[derive(Debug, Default)]
struct Standings {
    places: HashMap<JobId, Place>,
    /// The jobs the pass did not look at.
    rest: Option<policy::Rest<String>>,
    /// Jobs held back for disk space, ahead of every job the pass did not look at.
    disk_ahead: usize,
    /// What a budget counts a job without a time limit at, when budgets are on.
    default_charge_seconds: Option<f64>,
}

impl Standings {
    /// Jobs with a place, given or to be worked out.
    fn len(&self) -> usize {
        self.places.len() + self.rest.as_ref().map_or(0, policy::Rest::left)
    }
}

/// A queued job's place as a pass leaves it: worded only when asked ([`SchedulerHandle::queue_info`]),
/// so a pass over 100,000 jobs formats no sentences.
#[derive(Debug, Clone)]
struct Place {
    position: usize,
    reason: Reason,
    eta_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
enum Reason {
    Plan(policy::PendingReason),
    Disk(Arc<str>),
    /// It waits for this job to succeed.
    Dependency(JobId),
}

impl Place {
    fn info(&self) -> QueueInfo {
        let (pending_reason, waiting_for) = match &self.reason {
            Reason::Plan(reason) => (reason.to_string(), None),
            Reason::Disk(reason) => (reason.to_string(), None),
            Reason::Dependency(dep) => {
                (format!("waiting for job {}", crate::domain::chain::short_id(*dep)), Some(*dep))
            }
        };
        QueueInfo { position: self.position, pending_reason, eta_at: self.eta_at, waiting_for }
    }
}

impl SchedulerHandle {
    /// The notifier the supervisor rings when a worker exits.
    pub fn notifier(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Position, pending reason and ETA of a queued job (after the first pass that saw it). A job
    /// the pass did not look at is placed now, from its rank in its line (no ETA).
    pub fn queue_info(&self, job: &Job) -> Option<QueueInfo> {
        let standings = self.queue.read().expect("queue info poisoned");
        if let Some(place) = standings.places.get(&job.id) {
            return Some(place.info());
        }
        let rest = standings.rest.as_ref()?;
        let lines = self.lines.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let user = user_of(job);
        let start = |user: &String| {
            let end = rest.lines().iter().find(|line| &line.user == user)?;
            Some(lines.after(user, end.last))
        };
        let index =
            lines.rank(&user, queue::LineKey::new(job.priority, job.seq, job.id))?.checked_sub(start(&user)?)?;
        let charge = job.time_limit.map(|limit| limit.seconds() as f64).or(standings.default_charge_seconds);
        let key_at = |other: &String, at: usize| lines.get(other, start(other)? + at).map(queue::LineKey::order);
        let (position, reason) = rest.place(&user, index, (job.priority, job.seq), job.memory_bytes, charge, key_at)?;
        Some(QueueInfo {
            position: position + standings.disk_ahead,
            pending_reason: reason.to_string(),
            eta_at: None,
            waiting_for: None,
        })
    }

    /// Where the job a pass is about to hold back for disk space stood in the last pass.
    fn place_of(&self, id: JobId) -> Option<QueueInfo> {
        self.queue.read().expect("queue info poisoned").places.get(&id).map(Place::info)
    }

    /// Where a job the scheduler has not planned yet stands for now: behind every job it placed,
    /// and behind the `unplanned_ahead` queued jobs submitted since its last pass and before it
    /// (its next pass, within moments, may move it up by fair share).
    pub fn provisional_info(&self, unplanned_ahead: usize) -> QueueInfo {
        QueueInfo {
            position: self.queue.read().expect("queue info poisoned").len() + unplanned_ahead + 1,
            pending_reason: String::from("just submitted; the scheduler places it in line in a moment"),
            eta_at: None,
            waiting_for: None,
        }
    }

    /// Raises the highest `seq` placed to `seq`, never lowers it: each pass, to the highest it
    /// read; at start, to the store's highest ([`Store::highest_seq`]), so a job submitted before
    /// the first pass is behind the queued jobs, not behind the history.
    pub fn planned_at_least_up_to(&self, seq: i64) {
        self.planned_up_to.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }

    /// The highest `seq` placed: later jobs have no place yet.
    pub fn planned_up_to(&self) -> i64 {
        self.planned_up_to.load(std::sync::atomic::Ordering::Relaxed)
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
    pub disk: crate::disk_space::Disk,
}

/// The admin's scheduling settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Packing and per-user caps.
    pub limits: policy::Limits,
    /// Half-life of past usage in fair share, seconds.
    pub half_life_secs: f64,
    /// Device-hour budgets (`--gpu-hours-per-user`, `--cpu-hours-per-user`); `None`: none.
    pub budgets: Option<Arc<crate::budgets::BudgetPolicy>>,
}

/// What a pass saw that decides when the next one is due without an event.
#[derive(Debug, Default)]
struct Facts {
    /// Jobs wait for disk space, devices are used outside trainq, or jobs wait for a rolling budget:
    /// look again every [`RECHECK`].
    held_back: bool,
    /// Jobs wait on a lab reservation: look again when its occurrence next starts or ends, the
    /// only moment that lets them start (a device freeing wakes the scheduler anyway).
    reservation_change_at: Option<Instant>,
    /// Jobs run while others wait: fair share's order may change with time.
    running_with_queue: bool,
    /// The users' order the pass planned with.
    order: Vec<(String, bool)>,
}

/// Runs the scheduling loop until the server shuts down.
pub async fn run(
    handle: SchedulerHandle,
    store: Store,
    inventory: Inventory,
    supervisor: Supervisor,
    inputs: Inputs,
    settings: Settings,
    events: EventBus,
) {
    // Subscribed before the queue is first read, so no change falls between the two.
    let mut live = events.subscribe(None).live;
    let mut queue = Queue::with_lines(handle.lines.clone());
    let mut pending = Pending::everything();
    let mut facts = Facts::default();
    let mut last_pass = Instant::now();
    let mut gap = queue::COALESCE;
    let mut retry_at: Option<Instant> = None;
    let mut disk_at = Instant::now() + DISK_CHECK;
    let mut audit_at = Instant::now() + AUDIT;
    let mut decay_at: Option<Instant> = None;
    loop {
        if supervisor.is_shutting_down() {
            return;
        }
        let now = Instant::now();
        if pending.due(last_pass, gap).is_some_and(|due| due <= now) && retry_at.is_none_or(|at| at <= now) {
            let started = Instant::now();
            let passed = match pending.catch_up(&store, &mut queue).await {
                Ok(()) => {
                    fail_doomed(&supervisor, &mut queue).await;
                    schedule_once(&handle, &store, &inventory, &supervisor, &inputs, &settings, &mut queue).await
                }
                Err(err) => Err(err),
            };
            last_pass = Instant::now();
            // Submissions wait for the next pass at least twice as long as a pass takes: a
            // burst into a huge queue leaves the scheduler a third of a core at most.
            gap = queue::COALESCE.max(2 * (last_pass - started));
            match passed {
                Ok(seen) => {
                    facts = seen;
                    pending.passed();
                    retry_at = None;
                    decay_at = facts.running_with_queue.then(|| last_pass + DECAY_CHECK);
                }
                Err(err) => {
                    tracing::error!(error = ?err, "scheduling pass failed; trying again");
                    retry_at = Some(last_pass + RETRY);
                }
            }
        }
        let recheck_at = facts.held_back.then(|| last_pass + RECHECK);
        let next = [
            pending.due(last_pass, gap).map(|due| due.max(retry_at.unwrap_or(due))),
            recheck_at,
            facts.reservation_change_at,
            decay_at,
            Some(disk_at),
        ];
        let mut wake_at = disk_at;
        for at in next.into_iter().flatten() {
            wake_at = wake_at.min(at);
        }
        if !queue.is_empty() {
            wake_at = wake_at.min(audit_at);
        }
        tokio::select! {
            () = handle.wake.notified() => pending.urgent = true,
            received = live.recv() => match received {
                Ok(event) => {
                    pending.note(&mut queue, &event);
                    // Take in whatever else is waiting before deciding anything.
                    while let Ok(event) = live.try_recv() {
                        pending.note(&mut queue, &event);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the scheduler fell behind the events; reading the queue again");
                    pending = Pending::everything();
                }
                Err(RecvError::Closed) => return,
            },
            () = tokio::time::sleep_until(wake_at) => {}
        }
        let now = Instant::now();
        if recheck_at.is_some_and(|at| at <= now) || facts.reservation_change_at.is_some_and(|at| at <= now) {
            pending.urgent = true;
        }
        if disk_at <= now {
            disk_at = now + DISK_CHECK;
            let disk = inputs.disk.clone();
            let changed =
                tokio::task::spawn_blocking(move || disk.maintain(&disk.measure_all())).await.unwrap_or(false);
            // Room made by the cache giving way is worth a look at jobs waiting for it.
            pending.urgent |= changed && facts.held_back;
        }
        if decay_at.is_some_and(|at| at <= now) {
            decay_at = Some(now + DECAY_CHECK);
            match usage_by_user(&store, unix_now(), settings.half_life_secs).await {
                Ok(usage) if policy::usage_order(queue.users(), &usage) != facts.order => pending.urgent = true,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = ?err, "reading fair-share usage failed"),
            }
        }
        if !queue.is_empty() && audit_at <= now {
            audit_at = now + AUDIT;
            if let Err(err) = audit(&store, &mut queue, &mut pending, &mut live).await {
                tracing::warn!(error = ?err, "auditing the queue failed");
            }
        }
    }
}

/// Fails at once every queued job a job it waits for failed or was cancelled (its reason names
/// that job). Their own `finished` events fail the jobs waiting for them in turn, so a chain
/// fails through to its end, each link with the reason of the one before.
async fn fail_doomed(supervisor: &Supervisor, queue: &mut Queue) {
    if !queue.has_doomed() {
        return;
    }
    for (id, reason) in queue.take_doomed() {
        tracing::info!(%id, %reason, "a job it waits for did not succeed; failing the waiting job");
        supervisor.fail_waiting(id, &reason).await;
    }
}

/// Compares the queue in memory with the database's; if they differ once every event already
/// published is taken in, the queue is read again whole (and the miss is logged: it is a bug).
async fn audit(
    store: &Store,
    queue: &mut Queue,
    pending: &mut Pending,
    live: &mut tokio::sync::broadcast::Receiver<Arc<crate::events::JobEvent>>,
) -> Result<(), StoreError> {
    if store.queued_fingerprint().await? == queue.fingerprint() {
        return Ok(());
    }
    // A change committed but not yet announced, or announced but not yet read back.
    while let Ok(event) = live.try_recv() {
        pending.note(queue, &event);
    }
    pending.catch_up(store, queue).await?;
    let fingerprint = store.queued_fingerprint().await?;
    if fingerprint != queue.fingerprint() {
        tracing::warn!(?fingerprint, kept = ?queue.fingerprint(), "the scheduler's queue differs from the database; reading it again");
        pending.reload = true;
        pending.urgent = true;
    }
    Ok(())
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
    queue: &mut Queue,
) -> Result<Facts, StoreError> {
    // The disks first: the reserve back once there is room, the cache evicted below the low-water mark.
    let disk = inputs.disk.clone();
    let mut spaces = tokio::task::spawn_blocking(move || {
        let spaces = disk.measure_all();
        if disk.maintain(&spaces) {
            disk.measure_all()
        } else {
            spaces
        }
    })
    .await
    .unwrap_or_default();
    if queue.is_empty() {
        *handle.queue.write().expect("queue info poisoned") = Standings::default();
        handle.planned_at_least_up_to(queue.max_seq());
        return Ok(Facts::default());
    }
    let running = store.jobs(Some(JobState::Running)).await?;
    let now = Timestamp::now();
    let usage = usage_by_user(store, now.unix_seconds(), settings.half_life_secs).await?;
    let limit_left = limits_left(store, &running).await?;
    let devices: Vec<_> = inventory
        .slots()
        .iter()
        .map(|slot| {
            let here: Vec<&Job> =
                running.iter().filter(|job| job.device.as_deref() == Some(slot.id.as_str())).collect();
            // A GPU with compute processes but none of our jobs is someone else's right now.
            // (With our jobs on it, outsiders cannot be told apart by pid across namespaces; their
            // memory still shows in the packing headroom.)
            let foreign_busy =
                here.is_empty() && inventory.gpu_processes(slot).is_some_and(|processes| !processes.is_empty());
            policy::DeviceState {
                id: slot.id.as_str(),
                capacity: match slot.memory_total {
                    Some(memory_bytes) => policy::Capacity::Gpu { memory_bytes },
                    None => policy::Capacity::Slot,
                },
                running: here
                    .iter()
                    .map(|job| policy::Running {
                        user: user_of(job),
                        memory_bytes: job.memory_bytes,
                        limit_left_seconds: limit_left.get(&job.id).copied(),
                    })
                    .collect(),
                foreign_busy,
            }
        })
        .collect();
    let timings = store.epoch_timings().await?;
    let accounts = match &settings.budgets {
        Some(policy) => policy.accounts(store, &running, None, now.unix_seconds()).await?,
        None => HashMap::new(),
    };
    let default_charge_seconds = settings.budgets.as_ref().map(|policy| policy.job_seconds(None));
    let reservations = reservation_spans(store, inventory.slots(), now.unix_seconds()).await?;
    // The heads of the lines, as far as the pass must look ([`DEPTH`]). Not under
    // `block_in_place`: the thread it leaves behind can end up in the blocking pool and exit when
    // idle, and a worker the supervisor spawned from it would die with it (`PR_SET_PDEATHSIG`
    // follows the thread).
    let (order, plan, rest, mut places) = {
        let slurm = inventory.slots().iter().any(|slot| matches!(slot.kind, crate::devices::DeviceKind::Slurm { .. }));
        let order = policy::usage_order(queue.users(), &usage);
        // Jobs waiting for others to succeed are not in the lines; they wait behind the rest.
        // With Slurm, one whose waits all run there is handed over now (Slurm holds it), in its
        // user's line.
        let chained = queue.chained();
        let mut handed: HashMap<&str, Vec<queue::LineKey>> = HashMap::new();
        for job in chained.iter().filter(|job| job.ready(queue, slurm)) {
            handed.entry(job.user.as_str()).or_default().push(job.line_key());
        }
        for keys in handed.values_mut() {
            keys.sort_unstable();
        }
        let lines = queue.lines();
        let candidate = |key: queue::LineKey| queue.get(key.id()).map(queue::Queued::candidate);
        let mut inputs = Vec::new();
        for (user, line) in lines.iter() {
            let extra = handed.remove(user.as_str()).unwrap_or_default();
            let len = line.len() + extra.len();
            let jobs = Box::new(merged(line.iter().copied(), extra).filter_map(candidate));
            inputs.push(policy::LineInput { user: user.clone(), len, jobs });
        }
        for (user, extra) in handed {
            let len = extra.len();
            let jobs = Box::new(extra.into_iter().filter_map(candidate));
            inputs.push(policy::LineInput { user: user.to_string(), len, jobs });
        }
        let bounds = policy::Bounds {
            usage: &usage,
            limits: &settings.limits,
            accounts: &accounts,
            reservations: &reservations,
            depth: DEPTH,
        };
        // What a bounded user's job is counted at: its whole limit (its own, else the default).
        let charge = |candidate: &policy::Candidate<JobId, String>| {
            accounts.get(&candidate.user).and(candidate.limit_seconds.or(default_charge_seconds))
        };
        let (plan, rest) = policy::plan_lines(inputs, &devices, &bounds, &charge);
        drop(lines);
        let etas = eta::start_times(&timings, &running, &limit_left, queue, &plan, &devices, &settings.limits);
        let mut places: HashMap<JobId, Place> = plan
            .waiting
            .iter()
            .map(|waiting| {
                let place = Place {
                    position: waiting.position,
                    reason: Reason::Plan(waiting.reason.clone()),
                    eta_at: etas.get(&waiting.job).map(|&seconds| now.plus_seconds(seconds)),
                };
                (waiting.job, place)
            })
            .collect();
        let ready = plan.waiting.len() + rest.left();
        for (index, job) in chained.into_iter().filter(|job| !job.ready(queue, slurm)).enumerate() {
            let place = Place { position: ready + index + 1, reason: Reason::Dependency(job.unmet[0]), eta_at: None };
            places.insert(job.id, place);
        }
        (order, plan, rest, places)
    };
    // Jobs held by a rolling budget period may fit as old runs leave the window, which no event
    // announces: looked at again like jobs waiting for disk. (A fixed period only frees budget
    // when a job ends or an admin raises it, and both wake the scheduler.)
    let rolling_budget = settings
        .budgets
        .as_ref()
        .is_some_and(|budgets| matches!(budgets.period, crate::domain::budget::BudgetPeriod::Rolling { .. }));
    let budget_held = rolling_budget
        && plan.waiting.iter().any(|waiting| matches!(waiting.reason, policy::PendingReason::OverBudget(_)));
    // Jobs kept off a device by a reservation may start when it starts (its users) or ends, which
    // no event announces: the pass after that moment is due then, a little past it.
    let reservation_held =
        plan.waiting.iter().any(|waiting| matches!(waiting.reason, policy::PendingReason::Reserved(_)));
    let reservation_change_at = reservation_held.then(|| reservations.next_change()).flatten().map(|at| {
        Instant::now() + Duration::from_secs_f64((at - reservations.now).max(0.0)) + Duration::from_millis(50)
    });
    // What the jobs started in this pass will write, on top of what is already written.
    let mut committed: Vec<(crate::disk_space::Role, u64)> = Vec::new();
    let mut waiting_for_disk = Vec::new();
    for (id, device) in plan.assignments {
        // The spec, for the first time since the job was queued.
        let Some(job) = store.job(id).await?.filter(|job| job.state == JobState::Queued) else {
            queue.remove(id); // cancelled since
            continue;
        };
        let slot = inventory.slot(device).expect("devices come from the inventory");
        let sharing = devices.iter().find(|d| d.id == device).map_or(0, |d| d.running.len());
        // Jobs sharing a GPU share the host cores given to it.
        let threads = (inventory.threads_per_slot() / (sharing + 1)).max(1);
        // A GPU that may take several jobs holds each one's data to the allowance its estimate counts.
        let data_budget =
            (settings.limits.max_jobs_per_gpu > 1).then_some(crate::domain::memory::GPU_DATA_ALLOWANCE_BYTES);
        // Its checkpoints (known from the spec) must fit before the dataset is even looked at, so
        // a job waiting for disk costs no scan per pass.
        let checkpoints = vec![(crate::disk_space::Role::Jobs, crate::domain::memory::disk_bytes(&job.spec))];
        if let Some(short) = make_room(&inputs.disk, &mut spaces, &committed, &checkpoints).await {
            waiting_for_disk.push(waits_for_disk(handle, id, short));
            continue;
        }
        let inputs_now = inputs.clone();
        let (job_now, kind) = (job.clone(), slot.kind);
        let resolved =
            tokio::task::spawn_blocking(move || worker_job(&job_now, kind, threads, data_budget, &inputs_now))
                .await
                .unwrap_or_else(|err| Err(format!("resolving the job's inputs failed: {err}")));
        let (work, phases, needs) = match resolved {
            Ok(resolved) => resolved,
            Err(reason) => {
                queue.remove(id);
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
        // Claimed or cancelled meanwhile, it has left the queue either way.
        queue.remove(id);
        if !store.claim_job(id, device).await? {
            continue; // cancelled between the read and the claim
        }
        committed.extend(needs);
        // Waiting is counted once per job, from its submission to its first start: a re-queued
        // job's later waits are retries, not the wait students see at submit.
        if job.attempts == 0 {
            supervisor.telemetry().job_waited(Timestamp::now().seconds_since(job.submitted_at));
        }
        supervisor.start(work, slot, phases).await;
    }
    let facts = Facts {
        held_back: !waiting_for_disk.is_empty() || devices.iter().any(|device| device.foreign_busy) || budget_held,
        reservation_change_at,
        running_with_queue: !queue.is_empty() && (!running.is_empty() || !committed.is_empty()),
        order,
    };
    // Jobs held back by the disk are next in line; the rest move down behind them.
    let disk_ahead = waiting_for_disk.len();
    if !waiting_for_disk.is_empty() {
        for info in places.values_mut() {
            info.position += waiting_for_disk.len();
        }
        for (place, (id, reason)) in waiting_for_disk.into_iter().enumerate() {
            places.insert(id, Place { position: place + 1, reason: Reason::Disk(reason.into()), eta_at: None });
        }
    }
    let standings = Standings { places, rest: Some(rest), disk_ahead, default_charge_seconds };
    // The old places are freed after the lock is let go.
    let old = std::mem::replace(&mut *handle.queue.write().expect("queue info poisoned"), standings);
    handle.planned_at_least_up_to(queue.max_seq());
    drop(old);
    Ok(facts)
}

/// Seconds until each running job that has a time limit reaches it: the limit less the device
/// time its runs used (a query per running job, as many as the devices hold). What backfill and
/// the ETAs count on: the job is stopped then at the latest.
async fn limits_left(store: &Store, running: &[Job]) -> Result<HashMap<JobId, f64>, StoreError> {
    let mut left = HashMap::new();
    for job in running {
        if let Some(limit) = job.time_limit {
            let used = store.device_seconds_used(job.id).await?;
            left.insert(job.id, (limit.seconds() as f64 - used).max(0.0));
        }
    }
    Ok(left)
}

/// `line` and `extra` (both in line order) as one line.
fn merged(
    line: impl Iterator<Item = queue::LineKey>,
    extra: Vec<queue::LineKey>,
) -> impl Iterator<Item = queue::LineKey> {
    let (mut line, mut extra) = (line.peekable(), extra.into_iter().peekable());
    std::iter::from_fn(move || match (line.peek(), extra.peek()) {
        (Some(a), Some(b)) if b < a => extra.next(),
        (Some(_), _) => line.next(),
        (None, _) => extra.next(),
    })
}

/// The lab reservations a pass plans within: each device's current or next occurrence of every
/// reservation that keeps it. Read again each pass that has jobs (a handful of rows), so a new or
/// deleted reservation applies at once.
async fn reservation_spans(
    store: &Store,
    slots: &[crate::devices::DeviceSlot],
    now: f64,
) -> Result<policy::Reservations<String>, StoreError> {
    let reservations = store.reservations().await?;
    let by_device = if reservations.is_empty() {
        Vec::new()
    } else {
        slots
            .iter()
            .map(|slot| {
                let keeping = reservations.iter().filter(|reservation| reservation.keeps(&slot.id));
                keeping
                    .filter_map(|reservation| {
                        Some(policy::ReservedSpan {
                            device_label: crate::domain::reservation::device_label(&slot.id),
                            name: reservation.name.clone(),
                            occurrence: reservation.occurrence_at(now)?,
                            users: reservation.users.clone(),
                        })
                    })
                    .collect()
            })
            .collect()
    };
    Ok(policy::Reservations { now, by_device })
}

/// Whether `needs`, on top of what this pass already started (`committed`), fit above the disk's
/// low-water mark; if not, the cache gives way first and the disks are measured again. The
/// shortage that remains, if any.
async fn make_room(
    disk: &crate::disk_space::Disk,
    spaces: &mut Vec<crate::disk_space::Space>,
    committed: &[(crate::disk_space::Role, u64)],
    needs: &[(crate::disk_space::Role, u64)],
) -> Option<crate::disk_space::Shortage> {
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
fn waits_for_disk(handle: &SchedulerHandle, id: JobId, short: crate::disk_space::Shortage) -> (JobId, String) {
    if handle.place_of(id).is_none_or(|info| !info.pending_reason.starts_with("waiting for disk space")) {
        tracing::warn!(%id, reason = %short, "job waits for disk space");
    }
    (id, short.to_string())
}

/// What a job will write before it ends, in bytes per folder.
type PlannedWrites = Vec<(crate::disk_space::Role, u64)>;

/// Resolves a job's inputs again at start: a dataset or weights file may have gone since submit.
/// Also returns what the job will write, per folder: its checkpoints in the job folder, and (at
/// most) its decoded images in the shared cache.
fn worker_job(
    job: &Job,
    device: crate::devices::DeviceKind,
    threads: usize,
    gpu_data_budget_bytes: Option<u64>,
    inputs: &Inputs,
) -> Result<(WorkerJob, u32, PlannedWrites), String> {
    let spec = job.spec.clone();
    let dataset = catalog::datasets::open(&inputs.datasets, &spec.dataset).map_err(|err| err.to_string())?;
    // `init_from`'s weights replace the backbone's, so the ImageNet file is not needed then. The
    // file may have been deleted since submit: the job fails now, saying so.
    let init_checkpoint = match &spec.init_from {
        Some(init) => {
            let path = JobPaths::new(&inputs.data_dir, init.job).artifacts().join(init.checkpoint.file_name());
            if !path.is_file() {
                return Err(format!(
                    "the `{}` weights of job {} it starts from (init_from) are gone: {} was deleted or not kept",
                    init.checkpoint,
                    init.job,
                    path.display()
                ));
            }
            Some(path)
        }
        None => None,
    };
    let weights_file = match spec.weights {
        Weights::Imagenet if init_checkpoint.is_some() => None,
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
        (crate::disk_space::Role::Jobs, crate::domain::memory::disk_bytes(&spec)),
        (crate::disk_space::Role::Cache, images * side * side * 3),
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
        init_checkpoint,
    };
    Ok((work, phases, needs))
}
