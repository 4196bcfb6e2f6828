//! The queued jobs as the scheduler holds them between passes, and what it has been told since
//! the last one.
//!
//! The queue is read from the store once, then kept in step by the events that change it: a
//! submission or re-queue (`queued`) adds a job, read back from the store; a start or an end
//! (`started`, `finished`: a cancel of a queued job is an end) removes one. A pass therefore reads
//! no queue from the database, and a scheduler with nothing to do reads nothing at all. Whatever
//! the events miss is caught: a subscriber that lagged behind the bus reloads the queue whole, and
//! a periodic audit compares its count and `seq` checksum with the database's.

use crate::domain::{Job, JobId, JobSpec, JobState};
use crate::events::{EventKind, JobEvent};
use crate::store::{Store, StoreError};
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest gap between two passes that only submissions ask for: a burst of submissions is
/// planned in a few passes rather than one each. Ends and cancels are planned at once.
pub(super) const COALESCE: Duration = Duration::from_millis(100);

/// Shortest gap between two passes that only refresh ETAs (a running job finished an epoch).
pub(super) const ETA_REFRESH: Duration = Duration::from_secs(10);

/// What makes two jobs' epochs comparable: the key under which finished jobs' epoch times predict
/// a queued job's (read here when a job joins the queue, and by `eta.rs` for the finished ones).
pub(super) fn similarity_key(spec: &JobSpec) -> String {
    format!("{}|{:?}|{:?}|{}", spec.backbone.name(), spec.image_size, spec.max_image_side, spec.batch_size)
}

/// What the scheduler keeps of a queued job: what [`super::policy::plan`] and the ETAs need, a
/// hundred bytes or so. The spec itself is read from the store when the job starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Queued {
    pub(super) id: JobId,
    /// Its owner ("" for jobs from before users existed): fair share's key.
    pub(super) user: String,
    pub(super) priority: i64,
    pub(super) seq: i64,
    pub(super) memory_bytes: u64,
    /// Which finished jobs' epoch times predict its own ([`similarity_key`]).
    pub(super) pace_key: String,
    /// Its epochs in all phases.
    pub(super) epochs: u32,
    /// The jobs it waits for (`after`, `init_from`) not known to have succeeded, in its spec's
    /// order: it may start once this is empty.
    pub(super) unmet: Vec<JobId>,
    /// The job whose weights it starts from (`init_from`): that one must have succeeded before
    /// it starts, with any executor (its weights file must be there).
    pub(super) starts_from: Option<JobId>,
    /// Its effective time limit: what a device-hour budget counts it at.
    pub(super) time_limit: Option<crate::domain::TimeLimit>,
}

impl Queued {
    /// Whether it may be planned: it waits for nothing; or, `slurm` being the executor, each job
    /// it waits for runs in Slurm (which holds it with `--dependency=afterok`) except the one it
    /// starts from, which must have succeeded.
    pub(super) fn ready(&self, queue: &Queue, slurm: bool) -> bool {
        self.unmet.is_empty()
            || (slurm
                && self
                    .unmet
                    .iter()
                    .all(|dep| Some(*dep) != self.starts_from && queue.dep_state(*dep) == Some(JobState::Running)))
    }
}

impl Queued {
    /// Its place in its user's line.
    pub(super) fn line_key(&self) -> LineKey {
        LineKey::new(self.priority, self.seq, self.id)
    }

    /// The job as [`super::policy::plan`] sees it.
    pub(super) fn candidate(&self) -> super::policy::Candidate<JobId, String> {
        super::policy::Candidate {
            job: self.id,
            user: self.user.clone(),
            priority: self.priority,
            seq: self.seq,
            memory_bytes: self.memory_bytes,
            // Its whole limit, though a re-queued job has used part of it: an upper bound, so
            // backfill stays safe, and a pass reads nothing per queued job.
            limit_seconds: self.time_limit.map(|limit| limit.seconds() as f64),
        }
    }
}

impl From<&Job> for Queued {
    fn from(job: &Job) -> Queued {
        Queued {
            id: job.id,
            user: job.owner.clone().unwrap_or_default(),
            priority: job.priority,
            seq: job.seq,
            memory_bytes: job.memory_bytes,
            pace_key: similarity_key(&job.spec),
            epochs: job.spec.total_epochs(),
            unmet: job.spec.waits_for(),
            starts_from: job.spec.init_from.as_ref().map(|init| init.job),
            time_limit: job.time_limit,
        }
    }
}

/// A job's place in its user's line: the order a user's jobs start in (priority, highest first,
/// then submission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct LineKey {
    rank: Reverse<i64>,
    seq: i64,
    id: JobId,
}

impl LineKey {
    pub(super) fn new(priority: i64, seq: i64, id: JobId) -> LineKey {
        LineKey { rank: Reverse(priority), seq, id }
    }

    /// `(priority, seq)`, as the policy orders lines by.
    pub(super) fn order(&self) -> (i64, i64) {
        (self.rank.0, self.seq)
    }

    pub(super) fn id(&self) -> JobId {
        self.id
    }
}

/// Each user's ready jobs (waiting for no other job) in the order they start, kept in step with
/// the queue: a pass reads the heads of the lines, and [`super::SchedulerHandle`] finds the place
/// of a job the pass did not look at from its rank in its line, when someone asks.
#[derive(Debug, Default)]
pub(super) struct Lines {
    by_user: HashMap<String, VecDeque<LineKey>>,
}

impl Lines {
    fn insert(&mut self, user: &str, key: LineKey) {
        let line = self.by_user.entry(user.to_string()).or_default();
        // Mostly at the end: a new job is the user's last of its priority.
        let at = line.partition_point(|other| *other < key);
        if line.get(at) != Some(&key) {
            line.insert(at, key);
        }
    }

    fn remove(&mut self, user: &str, key: LineKey) {
        if let Some(line) = self.by_user.get_mut(user) {
            if let Ok(at) = line.binary_search(&key) {
                line.remove(at);
            }
            if line.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// Every user's line.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &VecDeque<LineKey>)> {
        self.by_user.iter()
    }

    /// Where the jobs after `last` (`(priority, seq)` of a job a pass took) begin in `user`'s line.
    pub(super) fn after(&self, user: &str, last: Option<(i64, i64)>) -> usize {
        match (self.by_user.get(user), last) {
            (Some(line), Some((priority, seq))) => {
                line.partition_point(|key| (key.rank, key.seq) <= (Reverse(priority), seq))
            }
            _ => 0,
        }
    }

    /// The `index`-th job of `user`'s line.
    pub(super) fn get(&self, user: &str, index: usize) -> Option<&LineKey> {
        self.by_user.get(user)?.get(index)
    }

    /// Where `key` is in `user`'s line, if it is there.
    pub(super) fn rank(&self, user: &str, key: LineKey) -> Option<usize> {
        self.by_user.get(user)?.binary_search(&key).ok()
    }
}

/// The queued jobs, by id.
#[derive(Debug, Default)]
pub(super) struct Queue {
    jobs: HashMap<JobId, Queued>,
    /// The ready jobs as each user's line, shared with the handle.
    lines: Arc<RwLock<Lines>>,
    seq_sum: i64,
    /// The highest `seq` ever held: jobs submitted later are read by `seq`, in one query.
    max_seq: i64,
    /// Queued jobs per user: fair share's users without a walk over the queue.
    users: HashMap<String, usize>,
    /// The jobs queued jobs wait for: each one's state once known, and who waits for it. Only
    /// unmet waits are kept, so this is as large as the waiting, not every job ever chained.
    deps: HashMap<JobId, Dependency>,
    /// Queued jobs to fail because a job they wait for failed, was cancelled or is gone, with
    /// the reason: the scheduler fails them before its next plan.
    doomed: HashMap<JobId, String>,
}

/// A job that queued jobs wait for.
#[derive(Debug, Default)]
struct Dependency {
    /// Its state, once read from the store or told by an event.
    state: Option<JobState>,
    /// The queued jobs waiting for it.
    waiting: HashSet<JobId>,
}

impl Queue {
    /// An empty queue whose lines are `lines` (shared with the scheduler's handle).
    pub(super) fn with_lines(lines: Arc<RwLock<Lines>>) -> Queue {
        Queue { lines, ..Queue::default() }
    }

    /// The lines, for reading (never held across an await).
    pub(super) fn lines(&self) -> std::sync::RwLockReadGuard<'_, Lines> {
        self.lines.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lines_mut(&self) -> std::sync::RwLockWriteGuard<'_, Lines> {
        self.lines.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the whole queue (at start, after a lag, after a failed audit).
    pub(super) fn replace(&mut self, jobs: Vec<Job>) {
        self.jobs.clear();
        self.lines_mut().by_user.clear();
        self.users.clear();
        self.deps.clear();
        self.doomed.clear();
        self.seq_sum = 0;
        for job in jobs {
            self.insert(job);
        }
    }

    /// Takes a job as just read from the store: kept if it is queued, dropped otherwise.
    pub(super) fn refresh(&mut self, id: JobId, job: Option<Job>) {
        match job {
            Some(job) if job.state == JobState::Queued => self.insert(job),
            _ => {
                self.remove(id);
            }
        }
    }

    fn insert(&mut self, job: Job) {
        let mut queued = Queued::from(&job);
        if let Some(old) = self.jobs.remove(&job.id) {
            self.forget(&old);
        }
        self.seq_sum += queued.seq;
        self.max_seq = self.max_seq.max(queued.seq);
        *self.users.entry(queued.user.clone()).or_default() += 1;
        // Waits already met are dropped; the rest are known by the job they wait for.
        let mut unmet = Vec::with_capacity(queued.unmet.len());
        for dep in std::mem::take(&mut queued.unmet) {
            let dependency = self.deps.entry(dep).or_default();
            if dependency.state == Some(JobState::Succeeded) {
                continue;
            }
            dependency.waiting.insert(job.id);
            if let Some(state) = dependency.state.filter(|state| state.is_unsuccessful_end()) {
                self.doomed.entry(job.id).or_insert_with(|| crate::domain::chain::dependency_failed(dep, state, None));
            }
            unmet.push(dep);
        }
        queued.unmet = unmet;
        if queued.unmet.is_empty() {
            self.lines_mut().insert(&queued.user, queued.line_key());
        }
        self.jobs.insert(job.id, queued);
    }

    fn forget(&mut self, old: &Queued) {
        if old.unmet.is_empty() {
            self.lines_mut().remove(&old.user, old.line_key());
        }
        for dep in &old.unmet {
            if let Some(dependency) = self.deps.get_mut(dep) {
                dependency.waiting.remove(&old.id);
                if dependency.waiting.is_empty() {
                    self.deps.remove(dep);
                }
            }
        }
        self.doomed.remove(&old.id);
        self.seq_sum -= old.seq;
        if let Some(count) = self.users.get_mut(&old.user) {
            *count -= 1;
            if *count == 0 {
                self.users.remove(&old.user);
            }
        }
    }

    /// Drops a job that left the queue; whether it was in it.
    pub(super) fn remove(&mut self, id: JobId) -> bool {
        match self.jobs.remove(&id) {
            Some(job) => {
                self.forget(&job);
                true
            }
            None => false,
        }
    }

    /// What became of a job queued jobs wait for: `None` when it does not exist. Its waiters may
    /// start once it succeeded, and are doomed (see [`Queue::take_doomed`]) when it failed or was
    /// cancelled. Jobs nobody waits for are ignored.
    pub(super) fn settle(&mut self, dep: JobId, state: Option<JobState>, error: Option<&str>) {
        let Some(dependency) = self.deps.get_mut(&dep) else { return };
        match state {
            Some(JobState::Succeeded) => {
                let waiting = self.deps.remove(&dep).map(|dependency| dependency.waiting).unwrap_or_default();
                for id in waiting {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.unmet.retain(|unmet| *unmet != dep);
                        if job.unmet.is_empty() {
                            let mut lines = self.lines.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                            lines.insert(&job.user, job.line_key());
                        }
                    }
                }
            }
            Some(state) if state.is_unsuccessful_end() => {
                dependency.state = Some(state);
                let reason = crate::domain::chain::dependency_failed(dep, state, error);
                for id in &dependency.waiting {
                    self.doomed.entry(*id).or_insert_with(|| reason.clone());
                }
            }
            Some(state) => dependency.state = Some(state),
            None => {
                let reason =
                    format!("job {dep} it waits for does not exist", dep = crate::domain::chain::short_id(dep));
                for id in &dependency.waiting {
                    self.doomed.entry(*id).or_insert_with(|| reason.clone());
                }
            }
        }
    }

    /// The state a job queued jobs wait for was last seen in (`None`: not known yet, or nobody
    /// waits for it).
    pub(super) fn dep_state(&self, dep: JobId) -> Option<JobState> {
        self.deps.get(&dep).and_then(|dependency| dependency.state)
    }

    /// The jobs queued jobs wait for whose state is not known yet: read from the store once.
    pub(super) fn unknown_deps(&self) -> Vec<JobId> {
        self.deps.iter().filter(|(_, dependency)| dependency.state.is_none()).map(|(id, _)| *id).collect()
    }

    /// Whether some queued job must fail because of a job it waits for.
    pub(super) fn has_doomed(&self) -> bool {
        !self.doomed.is_empty()
    }

    /// The queued jobs to fail and why, taken out of the queue.
    pub(super) fn take_doomed(&mut self) -> Vec<(JobId, String)> {
        let doomed: Vec<(JobId, String)> = self.doomed.drain().collect();
        for (id, _) in &doomed {
            self.remove(*id);
        }
        doomed
    }

    /// The queued jobs, in no particular order.
    #[cfg(test)]
    pub(super) fn jobs(&self) -> impl Iterator<Item = &Queued> {
        self.jobs.values()
    }

    /// The queued jobs that wait for another job, by `seq`: as many as wait, not the queue.
    pub(super) fn chained(&self) -> Vec<&Queued> {
        let ids: HashSet<JobId> =
            self.deps.values().flat_map(|dependency| dependency.waiting.iter().copied()).collect();
        let mut chained: Vec<&Queued> =
            ids.into_iter().filter_map(|id| self.jobs.get(&id)).filter(|job| !job.unmet.is_empty()).collect();
        chained.sort_unstable_by_key(|job| job.seq);
        chained
    }

    /// One queued job.
    pub(super) fn get(&self, id: JobId) -> Option<&Queued> {
        self.jobs.get(&id)
    }

    /// The highest `seq` the queue has held.
    pub(super) fn max_seq(&self) -> i64 {
        self.max_seq
    }

    /// Every user with a queued job, once each.
    pub(super) fn users(&self) -> impl Iterator<Item = &String> {
        self.users.keys()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The count and `seq` sum, as [`Store::queued_fingerprint`] gives them for the database.
    pub(super) fn fingerprint(&self) -> (usize, i64) {
        (self.jobs.len(), self.seq_sum)
    }
}

/// What the scheduler was told since its last pass.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// The queue must be read whole (first pass, lagged events, failed audit).
    pub(super) reload: bool,
    /// Jobs submitted or re-queued: read back from the store before the pass.
    pub(super) changed: HashSet<JobId>,
    /// A device may have freed, a job left the queue, or a timer asked for a fresh look: plan now.
    pub(super) urgent: bool,
    /// A running job's pace changed: ETAs are worth refreshing (not often).
    pub(super) etas: bool,
}

impl Pending {
    /// Everything to do at start.
    pub(super) fn everything() -> Pending {
        Pending { reload: true, urgent: true, ..Pending::default() }
    }

    /// Takes in one event from the bus. Jobs that leave the queue are dropped from it at once.
    pub(super) fn note(&mut self, queue: &mut Queue, event: &JobEvent) {
        match &event.kind {
            EventKind::Queued { .. } => {
                self.changed.insert(event.job_id);
                queue.settle(event.job_id, Some(JobState::Queued), None);
            }
            // Claimed by this scheduler (already gone from the queue) or by no one else.
            EventKind::Started { .. } => {
                self.changed.remove(&event.job_id);
                queue.remove(event.job_id);
                queue.settle(event.job_id, Some(JobState::Running), None);
            }
            // A cancelled queued job leaves the line; a running job's end frees its device, and
            // lets the jobs waiting for it go (or fail).
            EventKind::Finished { state, error } => {
                self.changed.remove(&event.job_id);
                queue.remove(event.job_id);
                queue.settle(event.job_id, Some(*state), error.as_deref());
                self.urgent = true;
            }
            EventKind::Epoch { .. } => self.etas = true,
            EventKind::Progress { .. }
            | EventKind::Log { .. }
            | EventKind::CancelRequested
            | EventKind::Deleted { .. } => {}
        }
    }

    /// When the next pass is due, if anything asks for one; submissions wait `gap` after the
    /// last pass (at least [`COALESCE`]).
    pub(super) fn due(&self, last_pass: Instant, gap: Duration) -> Option<Instant> {
        if self.reload || self.urgent {
            Some(last_pass.min(Instant::now()))
        } else if !self.changed.is_empty() {
            Some(last_pass + gap.max(COALESCE))
        } else if self.etas {
            Some(last_pass + ETA_REFRESH)
        } else {
            None
        }
    }

    /// Brings `queue` up to date with the store: whole after a reload, else the changed jobs.
    /// What fails to be read stays pending for the next try.
    pub(super) async fn catch_up(&mut self, store: &Store, queue: &mut Queue) -> Result<(), StoreError> {
        self.catch_up_jobs(store, queue).await?;
        // The jobs new waiters wait for, in one query; later changes come as events.
        let unknown = queue.unknown_deps();
        if !unknown.is_empty() {
            let found: HashMap<JobId, Job> =
                store.jobs_with_ids(&unknown).await?.into_iter().map(|job| (job.id, job)).collect();
            for id in unknown {
                let job = found.get(&id);
                queue.settle(id, job.map(|job| job.state), job.and_then(|job| job.error.as_deref()));
            }
        }
        Ok(())
    }

    async fn catch_up_jobs(&mut self, store: &Store, queue: &mut Queue) -> Result<(), StoreError> {
        if self.reload {
            queue.replace(store.jobs(Some(JobState::Queued)).await?);
            self.reload = false;
            self.changed.clear();
            return Ok(());
        }
        if self.changed.is_empty() {
            return Ok(());
        }
        // New submissions, however many, in one query by `seq`.
        for job in store.queued_after(queue.max_seq).await? {
            self.changed.remove(&job.id);
            queue.refresh(job.id, Some(job));
        }
        // The rest (re-queued jobs, and new ones claimed or cancelled since) by id.
        if !self.changed.is_empty() {
            let ids: Vec<JobId> = self.changed.iter().copied().collect();
            let mut found: HashMap<JobId, Job> =
                store.jobs_with_ids(&ids).await?.into_iter().map(|job| (job.id, job)).collect();
            for id in ids {
                queue.refresh(id, found.remove(&id));
            }
            self.changed.clear();
        }
        Ok(())
    }

    /// A pass ran: what it covered is done.
    pub(super) fn passed(&mut self) {
        self.urgent = false;
        self.etas = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobSpec;
    use crate::events::EventBus;
    use crate::scheduler::policy;
    use crate::store::NewJob;
    use rand::{Rng, SeedableRng};

    fn spec() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "dataset": "demo", "backbone": "vgg16", "weights": "random", "image_size": 32, "batch_size": 4,
            "head": ["gap", {"dense": 1}], "phases": [{"epochs": 1, "train": "head"}],
            "optimizer": {"name": "rmsprop", "lr": 1e-3}
        }))
        .expect("a valid spec")
    }

    /// The plan for `queued` on two CPU slots, one of which runs a job of user 0.
    fn plan_of<'a>(queued: impl Iterator<Item = &'a Queued>) -> policy::Plan<JobId, &'static str> {
        let mut candidates: Vec<_> = queued.map(Queued::candidate).collect();
        candidates.sort_by_key(|candidate| candidate.seq);
        let devices = [
            policy::DeviceState {
                id: "cpu0",
                capacity: policy::Capacity::Slot,
                running: vec![policy::Running {
                    user: String::from("user0"),
                    memory_bytes: 0,
                    limit_left_seconds: None,
                }],
                foreign_busy: false,
            },
            policy::DeviceState { id: "cpu1", capacity: policy::Capacity::Slot, running: vec![], foreign_busy: true },
        ];
        let usage = HashMap::from([(String::from("user1"), 50.0), (String::from("user2"), 10.0)]);
        let limits = policy::Limits { max_jobs_per_gpu: 1, headroom_bytes: 0, max_running_per_user: None };
        policy::plan(&candidates, &devices, &usage, &limits)
    }

    /// Random submissions, cancels, claims, re-queues and ends, published on the bus the way the
    /// server publishes them, some while the scheduler is between catch-ups: after each catch-up,
    /// the plan from the queue kept by events equals the plan from the whole queue read again.
    #[tokio::test]
    async fn the_queue_kept_by_events_plans_like_the_database() {
        for seed in 0..4u64 {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).await.unwrap();
            let bus = EventBus::new();
            let mut live = bus.subscribe(None).live;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (mut queue, mut pending) = (Queue::default(), Pending::everything());
            pending.catch_up(&store, &mut queue).await.unwrap();
            let mut running: Vec<JobId> = Vec::new();
            for step in 0..150 {
                let queued: Vec<Job> = store.jobs(Some(JobState::Queued)).await.unwrap();
                match rng.gen_range(0..10) {
                    // Submissions, sometimes several at once.
                    0..=3 => {
                        let new: Vec<NewJob> = (0..rng.gen_range(1..4))
                            .map(|_| NewJob {
                                id: JobId::new(),
                                name: format!("job{step}"),
                                spec: spec(),
                                group_id: None,
                                parent_id: None,
                                params: None,
                                notes: Vec::new(),
                                owner: Some(format!("user{}", rng.gen_range(0..3))),
                                priority: rng.gen_range(0..2),
                                memory_bytes: 0,
                                time_limit: None,
                            })
                            .collect();
                        for job in store.insert_jobs(&new).await.unwrap() {
                            bus.publish(job.id, EventKind::Queued { name: job.name });
                        }
                    }
                    // A queued job cancelled.
                    4 if !queued.is_empty() => {
                        let job = &queued[rng.gen_range(0..queued.len())];
                        store.request_cancel(job.id).await.unwrap();
                        bus.publish(job.id, EventKind::Finished { state: JobState::Cancelled, error: None });
                    }
                    // The scheduler claims one (it drops it from its queue itself).
                    5 | 6 if !queued.is_empty() => {
                        let job = &queued[rng.gen_range(0..queued.len())];
                        assert!(store.claim_job(job.id, "cpu0").await.unwrap());
                        queue.remove(job.id);
                        running.push(job.id);
                        bus.publish(job.id, EventKind::Started { device: String::from("cpu0") });
                    }
                    // A running job re-queued (interrupted), or ended.
                    7 | 8 if !running.is_empty() => {
                        let id = running.swap_remove(rng.gen_range(0..running.len()));
                        if rng.gen_bool(0.5) {
                            assert!(store
                                .requeue_job(id, crate::domain::outcome::RunOutcome::Interrupted, None, None)
                                .await
                                .unwrap());
                            bus.publish(id, EventKind::Queued { name: String::new() });
                        } else {
                            assert!(store.finish_job(id, JobState::Succeeded, None).await.unwrap());
                            bus.publish(id, EventKind::Finished { state: JobState::Succeeded, error: None });
                        }
                    }
                    _ => {}
                }
                // Noise the scheduler must ignore.
                bus.publish(JobId::new(), EventKind::Log { line: String::from("x"), offset: 0 });
                // The scheduler catches up only now and then, as passes are coalesced.
                if rng.gen_bool(0.4) {
                    while let Ok(event) = live.try_recv() {
                        pending.note(&mut queue, &event);
                    }
                    pending.catch_up(&store, &mut queue).await.unwrap();
                    let truth: Vec<Queued> =
                        store.jobs(Some(JobState::Queued)).await.unwrap().iter().map(Queued::from).collect();
                    assert_eq!(plan_of(queue.jobs()), plan_of(truth.iter()), "seed {seed}, step {step}");
                    // Each user's line: their jobs in start order (none waits for another here).
                    let mut expected_lines: HashMap<String, Vec<JobId>> = HashMap::new();
                    let mut in_order: Vec<&Queued> = truth.iter().collect();
                    in_order.sort_by_key(|job| (std::cmp::Reverse(job.priority), job.seq));
                    for job in in_order {
                        expected_lines.entry(job.user.clone()).or_default().push(job.id);
                    }
                    let lines: HashMap<String, Vec<JobId>> = queue
                        .lines()
                        .iter()
                        .map(|(user, line)| (user.clone(), line.iter().map(LineKey::id).collect()))
                        .collect();
                    assert_eq!(lines, expected_lines, "seed {seed}, step {step}");
                    assert_eq!(
                        queue.fingerprint(),
                        store.queued_fingerprint().await.unwrap(),
                        "seed {seed}, step {step}"
                    );
                    let mut users: Vec<&String> = queue.users().collect();
                    users.sort();
                    let mut expected: Vec<String> = truth.iter().map(|job| job.user.clone()).collect();
                    expected.sort();
                    expected.dedup();
                    assert_eq!(users, expected.iter().collect::<Vec<_>>(), "seed {seed}, step {step}");
                }
            }
        }
    }

    /// Jobs waiting for others are kept out of the plan until those succeed, and doomed when one
    /// fails, whether the queue learns it from the store (a reload) or from an event.
    #[tokio::test]
    async fn waiting_jobs_go_when_what_they_wait_for_succeeds_and_are_doomed_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let new = |after: Vec<JobId>| {
            let spec = JobSpec { after, ..spec() };
            NewJob {
                id: JobId::new(),
                name: String::from("j"),
                spec,
                group_id: None,
                parent_id: None,
                params: None,
                notes: Vec::new(),
                owner: None,
                priority: 0,
                memory_bytes: 0,
                time_limit: None,
            }
        };
        let (a, b) = (new(Vec::new()), new(Vec::new()));
        let (waits_a, waits_both) = (new(vec![a.id]), new(vec![a.id, b.id]));
        store.insert_jobs(&[a.clone(), b.clone(), waits_a.clone(), waits_both.clone()]).await.unwrap();
        assert!(store.claim_job(a.id, "cpu0").await.unwrap());
        let (mut queue, mut pending) = (Queue::default(), Pending::everything());
        pending.catch_up(&store, &mut queue).await.unwrap();
        assert_eq!(queue.get(waits_a.id).unwrap().unmet, [a.id]);
        assert_eq!(queue.get(waits_both.id).unwrap().unmet, [a.id, b.id]);
        // a succeeds: the job waiting for it alone may go; the other still waits for b.
        assert!(store.finish_job(a.id, JobState::Succeeded, None).await.unwrap());
        let event = |id, kind| crate::events::JobEvent { seq: 0, job_id: id, kind };
        pending.note(&mut queue, &event(a.id, EventKind::Finished { state: JobState::Succeeded, error: None }));
        assert!(queue.get(waits_a.id).unwrap().unmet.is_empty());
        assert_eq!(queue.get(waits_both.id).unwrap().unmet, [b.id]);
        assert!(!queue.has_doomed());
        // b is cancelled: the job waiting for it is doomed with b named.
        pending.note(&mut queue, &event(b.id, EventKind::Finished { state: JobState::Cancelled, error: None }));
        let doomed = queue.take_doomed();
        assert_eq!(doomed.len(), 1);
        assert_eq!(doomed[0].0, waits_both.id);
        assert!(doomed[0].1.contains(&b.id.to_string()[..8]) && doomed[0].1.contains("cancelled"), "{doomed:?}");
        assert!(queue.get(waits_both.id).is_none(), "taken out of the queue");
        // A queue read afresh learns the same from the store.
        store.request_cancel(b.id).await.unwrap();
        let (mut fresh, mut pending) = (Queue::default(), Pending::everything());
        pending.catch_up(&store, &mut fresh).await.unwrap();
        assert!(fresh.get(waits_a.id).unwrap().unmet.is_empty(), "a's success read from the store");
        assert_eq!(fresh.take_doomed().into_iter().map(|(id, _)| id).collect::<Vec<_>>(), [waits_both.id]);
    }

    /// A change the events never told of is caught by the audit and repaired by a reload.
    #[tokio::test]
    async fn the_audit_notices_an_unannounced_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (mut queue, mut pending) = (Queue::default(), Pending::everything());
        pending.catch_up(&store, &mut queue).await.unwrap();
        let new = NewJob {
            id: JobId::new(),
            name: String::from("silent"),
            spec: spec(),
            group_id: None,
            parent_id: None,
            params: None,
            notes: Vec::new(),
            owner: None,
            priority: 0,
            memory_bytes: 0,
            time_limit: None,
        };
        store.insert_jobs(&[new]).await.unwrap();
        assert_ne!(queue.fingerprint(), store.queued_fingerprint().await.unwrap());
        pending.reload = true;
        pending.catch_up(&store, &mut queue).await.unwrap();
        assert_eq!(queue.fingerprint(), store.queued_fingerprint().await.unwrap());
    }
}
