//! The scheduling decision as a pure function, so it can be tested without a database: which
//! queued job goes to which device in this pass, and for every other job its place in line and a
//! reason a student understands.
//!
//! The rules, in the order they apply:
//!
//! - **Fair share.** The next job comes from the user with the least recent usage (GPU-seconds
//!   decayed by [`decayed_usage`]), then the one holding fewer devices (running jobs plus those
//!   served earlier in this pass), then the higher priority, then the earlier submission. The
//!   device count breaks ties only: it is what makes two users with equal usage alternate instead
//!   of one taking every free device.
//! - **In order within a user.** A user's jobs start in priority order, then submission order: a
//!   job that waits for room holds back that user's later jobs (which start behind it) but not
//!   other users' jobs. Only a job that cannot run at all now (larger than any GPU, or fitting only
//!   devices used outside trainq) is set aside so that it blocks no one.
//! - **A per-user cap** on running jobs ([`Limits::max_running_per_user`]).
//! - **Packing.** A GPU hosts several jobs while their count and memory (plus a headroom) fit; a
//!   CPU slot hosts one. Devices used by processes outside trainq get no job.
//! - **Device-hour budgets** ([`crate::domain::budget`]): a job starts only if its owner's
//!   account admits its whole time limit on top of what they used and their running jobs (and
//!   those started earlier in this pass) hold. A job that does not fit waits without holding back
//!   the owner's later jobs: a shorter one may fit.
//! - **Lab reservations** ([`Reservations`], [`crate::domain::reservation`]): during an
//!   occurrence only its users' jobs start on its devices; before it, a job starts on one of them
//!   only if its time limit ([`Candidate::limit_seconds`]) ends by the occurrence's start, so a job
//!   without a limit never starts on a device whose next occurrence is known. A job kept off a
//!   device only by a reservation waits without holding back the owner's later jobs.
//! - **No starvation of big jobs.** The first job in line that waits for room reserves the device
//!   that would hold it once its running jobs end, and no later job is placed there in this pass;
//!   as the device's jobs finish, the big job gets it.
//! - **Backfill.** With time limits known, the reservation has a start: the time by which enough
//!   of the device's jobs have reached their limits for the big job to fit (the earliest such
//!   device is the one kept). A later job may still go on the kept device if its own limit ends
//!   by then, so it fills the gap without ever delaying the big job. Without limits nothing is
//!   backfilled and the rule above holds as it is.

use crate::domain::budget::{Account, OverBudget};
use crate::domain::reservation::{Occurrence, When};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;

/// A queued job as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<J, U> {
    /// The job's id.
    pub job: J,
    /// Who submitted it; fair share is counted per user.
    pub user: U,
    /// Higher runs first among one user's jobs, and breaks ties between users of equal usage.
    pub priority: i64,
    /// Submission order (lower = earlier), the last tie-breaker.
    pub seq: i64,
    /// GPU memory the job needs ([`crate::domain::memory::estimate_bytes`]); ignored on CPU slots.
    pub memory_bytes: u64,
    /// The most device time it may still use (its time limit), in seconds; `None`: no limit, so
    /// it is never backfilled.
    pub limit_seconds: Option<f64>,
}

/// What a device can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// A CPU slot (or a GPU handed out whole): exactly one job at a time, whatever its memory.
    Slot,
    /// A GPU shared by jobs whose memory fits in it.
    Gpu {
        /// The GPU's total memory.
        memory_bytes: u64,
    },
}

/// A device and what runs on it now.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState<D, U> {
    /// The device's id (what the assignment names).
    pub id: D,
    /// What it can hold.
    pub capacity: Capacity,
    /// trainq jobs running on it.
    pub running: Vec<Running<U>>,
    /// Processes outside trainq use it: it gets no job until they are gone.
    pub foreign_busy: bool,
}

/// A trainq job running on a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Running<U> {
    /// Its owner (counted against the per-user cap).
    pub user: U,
    /// The memory it was granted.
    pub memory_bytes: u64,
    /// Seconds until it reaches its time limit (at which it is stopped); `None`: no limit, so
    /// nobody knows when it ends.
    pub limit_left_seconds: Option<f64>,
}

/// The box's sharing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most jobs one GPU runs at once (0 is taken as 1).
    pub max_jobs_per_gpu: usize,
    /// GPU memory kept free beyond the jobs' estimates, against estimates that fall short.
    pub headroom_bytes: u64,
    /// Most jobs one user may have running at once (each holds a device or a share of a GPU);
    /// `None` = no cap.
    pub max_running_per_user: Option<usize>,
}

/// Device-hour budgets as one pass sees them: the accounts of users who have a budget (users
/// without one are not bounded) and the most each queued job may be charged (its time limit).
#[derive(Debug, Clone)]
pub struct Budgets<J, U> {
    /// Each bounded user's account now.
    pub accounts: HashMap<U, Account>,
    /// The most each queued job of a bounded user may be charged, in device-seconds.
    pub job_seconds: HashMap<J, f64>,
}

impl<J, U> Default for Budgets<J, U> {
    fn default() -> Self {
        Budgets { accounts: HashMap::new(), job_seconds: HashMap::new() }
    }
}

/// Lab reservations as one pass sees them: the pass's clock and, per device, the current or next
/// occurrence of each reservation that keeps it. Empty: no device is reserved.
#[derive(Debug, Clone)]
pub struct Reservations<U> {
    /// The pass's clock, Unix seconds (injected in tests).
    pub now: f64,
    /// By device index in the pass's `devices` (a missing index keeps nothing): what keeps it.
    pub by_device: Vec<Vec<ReservedSpan<U>>>,
}

impl<U> Default for Reservations<U> {
    fn default() -> Self {
        Reservations { now: 0.0, by_device: Vec::new() }
    }
}

/// One reservation's current or next occurrence on one device.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservedSpan<U> {
    /// The device as students read it (`GPU 0`).
    pub device_label: String,
    /// The reservation's name (`lab-b`).
    pub name: String,
    /// Its occurrence under way at the pass's `now`, else its next one.
    pub occurrence: Occurrence,
    /// The users whose jobs may start during it.
    pub users: Vec<U>,
}

impl<U> Reservations<U> {
    /// When the next occurrence starts or ends after the pass's `now`, if any: the one moment a
    /// job a reservation holds can start where it could not (a reservation's users at its start,
    /// the others at its end). A job held by a reservation needs no look before then.
    pub fn next_change(&self) -> Option<f64> {
        self.by_device
            .iter()
            .flatten()
            .map(|span| if span.occurrence.start > self.now { span.occurrence.start } else { span.occurrence.end })
            .filter(|&at| at > self.now)
            .min_by(f64::total_cmp)
    }
}

impl<U: Eq> Reservations<U> {
    /// The reservation that keeps a job of `user`, with `limit_seconds` left, off `device` now;
    /// `None` when the job may start there.
    pub fn hold(&self, device: usize, user: &U, limit_seconds: Option<f64>) -> Option<ReservationHold> {
        let spans = self.by_device.get(device)?;
        let now = self.now;
        let span = spans.iter().find(|span| {
            if span.occurrence.is_current(now) {
                !span.users.contains(user)
            } else {
                span.occurrence.start > now && limit_seconds.is_none_or(|limit| now + limit > span.occurrence.start)
            }
        })?;
        Some(ReservationHold {
            device: span.device_label.clone(),
            reservation: span.name.clone(),
            start_unix: span.occurrence.start.round() as i64,
            end_unix: span.occurrence.end.round() as i64,
            under_way: span.occurrence.is_current(now),
            limit_seconds: limit_seconds.map(|limit| limit.max(0.0).round() as u64),
        })
    }
}

/// Why a reservation keeps a job off the device it would start on ([`PendingReason::Reserved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationHold {
    /// The device (`GPU 0`).
    pub device: String,
    /// The reservation (`lab-b`).
    pub reservation: String,
    /// Its occurrence's start, Unix seconds.
    pub start_unix: i64,
    /// Its occurrence's end, Unix seconds.
    pub end_unix: i64,
    /// The occurrence is under way (and the job's owner is not among its users).
    pub under_way: bool,
    /// The job's time limit left, seconds; `None`: no limit.
    pub limit_seconds: Option<u64>,
}

impl fmt::Display for ReservationHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = When(Occurrence { start: self.start_unix as f64, end: self.end_unix as f64 });
        write!(f, "{} is reserved for {}, {when}; ", self.device, self.reservation)?;
        match self.limit_seconds {
            _ if self.under_way => {
                f.write_str("only its users' jobs start there now, so yours starts on another device or after it")
            }
            Some(seconds) => {
                write!(f, "your job's {} h limit would overlap", crate::domain::budget::hours(seconds as f64))
            }
            None => f.write_str(
                "your job has no time limit, so it could overlap; a time_limit that ends before it lets it start there",
            ),
        }
    }
}

/// The outcome of one scheduling pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<J, D> {
    /// Jobs to start now and where, in the order they were chosen.
    pub assignments: Vec<(J, D)>,
    /// Every other queued job, in the order it would be served.
    pub waiting: Vec<Waiting<J>>,
    /// The device kept free in this pass for the first job in line that waits for room, if any.
    pub reserved: Option<(J, D)>,
    /// When the kept device will hold that job at the latest, in seconds from now, if every job
    /// on it runs to its time limit; `None` when one of those it waits for has no limit (or
    /// nothing is kept). Later jobs were backfilled there only if their limits end by then.
    pub reserved_start_seconds: Option<f64>,
}

/// A job that does not start in this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting<J> {
    /// The job's id.
    pub job: J,
    /// Its 1-based place in line after this pass.
    pub position: usize,
    /// Why it waits.
    pub reason: PendingReason,
}

/// Why a queued job did not start, worded for the student who submitted it ([`fmt::Display`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingReason {
    /// It would fit now, but jobs ahead of it start first: the same user's earlier job, or a
    /// larger job for which the device it fits on is kept free.
    WaitingBehind {
        /// Jobs ahead of it in line.
        ahead: usize,
    },
    /// Every device it could use runs as many jobs as it may.
    AllDevicesBusy,
    /// A GPU could take another job, but none has enough free memory for this one.
    NeedsMoreMemory {
        /// The job's estimate.
        needed_bytes: u64,
        /// The most any GPU could give a job right now (after the headroom).
        most_free_bytes: u64,
    },
    /// The user runs as many jobs as the cap allows.
    UserLimit {
        /// The user's running jobs, counting those started in this pass.
        running: usize,
        /// The cap.
        limit: usize,
    },
    /// Larger than every GPU's whole memory: it can never run as specified.
    LargerThanAnyGpu {
        /// The job's estimate.
        needed_bytes: u64,
        /// The most the largest GPU can give one job (its memory less the headroom).
        largest_bytes: u64,
    },
    /// Only devices that processes outside trainq are using could hold it.
    OutsideProcesses,
    /// trainq has no device at all.
    NoDevices,
    /// Its owner's device-hour budget does not admit its time limit now.
    OverBudget(OverBudget),
    /// It would start now but for a lab reservation on the device it fits.
    Reserved(Box<ReservationHold>),
}

impl PendingReason {
    /// Whether the job can never start as specified, on this box.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PendingReason::LargerThanAnyGpu { .. } | PendingReason::NoDevices)
    }
}

/// Bytes as decimal gigabytes with one decimal, as GPU vendors label memory (`12.5 GB`).
fn gigabytes(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

fn jobs(count: usize) -> String {
    if count == 1 {
        String::from("1 job")
    } else {
        format!("{count} jobs")
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PendingReason::WaitingBehind { ahead } => {
                write!(f, "waiting behind {} ahead of it in line, which start first", jobs(ahead))
            }
            PendingReason::AllDevicesBusy => f.write_str("all devices are busy; it starts when a running job ends"),
            PendingReason::NeedsMoreMemory { needed_bytes, most_free_bytes } => write!(
                f,
                "needs {} of GPU memory; the most free on a GPU is {}, so it waits for running jobs to end",
                gigabytes(needed_bytes),
                gigabytes(most_free_bytes)
            ),
            PendingReason::UserLimit { running, limit } => {
                write!(f, "you already run {}; the limit is {limit}", jobs(running))
            }
            PendingReason::LargerThanAnyGpu { needed_bytes, largest_bytes } => write!(
                f,
                "needs {} of GPU memory but the largest GPU can give a job {}, so it can never run; \
                 cancel it and resubmit with a smaller batch_size or image size, or with bf16 precision",
                gigabytes(needed_bytes),
                gigabytes(largest_bytes)
            ),
            PendingReason::OutsideProcesses => f.write_str(
                "the devices it fits on are in use by programs outside trainq; it starts when they are free",
            ),
            PendingReason::NoDevices => f.write_str("trainq has no device to run jobs on"),
            PendingReason::OverBudget(over) => over.fmt(f),
            PendingReason::Reserved(ref hold) => fmt::Display::fmt(hold, f),
        }
    }
}

/// Jobs and memory on one device: those running plus those assigned in this pass.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    jobs: usize,
    bytes: u64,
}

/// What a device is to the sharing rules: its capacity, and whether processes outside trainq use it.
#[derive(Debug, Clone, Copy)]
struct Kind {
    capacity: Capacity,
    foreign_busy: bool,
}

/// The sharing rules of one pass, over every device's load as it grows.
#[derive(Debug, Clone)]
struct Room {
    devices: Vec<Kind>,
    loads: Vec<Load>,
    /// Per device, each job's `(seconds to its time limit, memory)`: those running and those
    /// assigned in this pass.
    ends: Vec<Vec<(Option<f64>, u64)>>,
    max_jobs_per_gpu: usize,
    headroom_bytes: u64,
}

impl Room {
    /// Whether `device` at `load` can take one more job of `bytes`.
    fn hosts(&self, device: usize, load: Load, bytes: u64) -> bool {
        match self.devices[device].capacity {
            Capacity::Slot => load.jobs == 0,
            Capacity::Gpu { memory_bytes } => {
                load.jobs < self.max_jobs_per_gpu
                    && (load.bytes as u128 + bytes as u128 + self.headroom_bytes as u128) <= memory_bytes as u128
            }
        }
    }

    /// Whether `device` can take the job now.
    fn fits_now(&self, device: usize, bytes: u64) -> bool {
        self.hosts(device, self.loads[device], bytes)
    }

    /// Whether `device` could take the job once its running jobs end.
    fn fits_empty(&self, device: usize, bytes: u64) -> bool {
        self.hosts(device, Load::default(), bytes)
    }

    /// Memory a new job could get on `device` now (0 for a slot).
    fn free_bytes(&self, device: usize) -> u64 {
        match self.devices[device].capacity {
            Capacity::Slot => 0,
            Capacity::Gpu { memory_bytes } => {
                memory_bytes.saturating_sub(self.loads[device].bytes).saturating_sub(self.headroom_bytes)
            }
        }
    }

    /// Whether some device trainq may use could take one more job of some size: a slot without a
    /// job, a GPU below its job count.
    fn has_a_free_turn(&self) -> bool {
        self.usable().any(|device| match self.devices[device].capacity {
            Capacity::Slot => self.loads[device].jobs == 0,
            Capacity::Gpu { .. } => self.loads[device].jobs < self.max_jobs_per_gpu,
        })
    }

    fn usable(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.devices.len()).filter(|&device| !self.devices[device].foreign_busy)
    }

    /// Why a job of `bytes` can never start on trainq's devices as they are now, if so.
    fn never(&self, bytes: u64) -> Option<PendingReason> {
        if self.devices.is_empty() {
            return Some(PendingReason::NoDevices);
        }
        if !(0..self.devices.len()).any(|device| self.fits_empty(device, bytes)) {
            let largest_bytes = self
                .devices
                .iter()
                .filter_map(|device| match device.capacity {
                    Capacity::Gpu { memory_bytes } => Some(memory_bytes.saturating_sub(self.headroom_bytes)),
                    Capacity::Slot => None,
                })
                .max()
                .unwrap_or(0);
            return Some(PendingReason::LargerThanAnyGpu { needed_bytes: bytes, largest_bytes });
        }
        if !self.usable().any(|device| self.fits_empty(device, bytes)) {
            return Some(PendingReason::OutsideProcesses);
        }
        None
    }

    /// The device a job of `bytes` starts on now, if any.
    ///
    /// The least loaded device that fits (fewest jobs, then most free memory, then inventory
    /// order), rather than the tightest fit: jobs sharing a GPU share its compute, so while a GPU
    /// idles a second job on a busy one runs slower for nothing. Best fit would keep large holes
    /// for large jobs, but the reservation already guarantees those a device, so spreading costs
    /// them nothing in the end.
    /// `allowed` narrows the devices further (lab reservations).
    fn place(&self, bytes: u64, reserved: Option<usize>, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        self.usable()
            .filter(|&device| Some(device) != reserved && self.fits_now(device, bytes) && allowed(device))
            .min_by_key(|&device| (self.loads[device].jobs, Reverse(self.free_bytes(device)), device))
    }

    /// Counts a job of `bytes` that may run `limit_seconds` as placed on `device`.
    fn add(&mut self, device: usize, bytes: u64, limit_seconds: Option<f64>) {
        self.loads[device].jobs += 1;
        self.loads[device].bytes += bytes;
        self.ends[device].push((limit_seconds, bytes));
    }

    /// When `device` can take a job of `bytes` at the latest, in seconds from now, if each of its
    /// jobs runs to its time limit: the limit of the last job that must end for it to fit (jobs
    /// end in the order of their limits). `None` if a job it must wait for has no limit.
    fn start_on(&self, device: usize, bytes: u64) -> Option<f64> {
        let mut ends = self.ends[device].clone();
        ends.sort_by(|a, b| a.0.unwrap_or(f64::INFINITY).total_cmp(&b.0.unwrap_or(f64::INFINITY)));
        let (mut load, mut start) = (self.loads[device], 0.0);
        for (end, job_bytes) in ends {
            if self.hosts(device, load, bytes) {
                return Some(start);
            }
            start = end?;
            load.jobs -= 1;
            load.bytes -= job_bytes;
        }
        self.hosts(device, load, bytes).then_some(start)
    }

    /// The device to keep for a job of `bytes` that fits nowhere now, and when it can start
    /// there at the latest ([`Room::start_on`]): among the devices it would fit once empty, the
    /// earliest known start; where no start is known, the one with the most free memory (the
    /// least to wait for), then the fewest jobs.
    fn reserve(&self, bytes: u64) -> Option<(usize, Option<f64>)> {
        let fitting = || self.usable().filter(|&device| self.fits_empty(device, bytes));
        let drains_first = |device: usize| (Reverse(self.free_bytes(device)), self.loads[device].jobs, device);
        let earliest = fitting()
            .filter_map(|device| Some((device, self.start_on(device, bytes)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| drains_first(a.0).cmp(&drains_first(b.0))));
        match earliest {
            Some((device, start)) => Some((device, Some(start))),
            None => fitting().min_by_key(|&device| drains_first(device)).map(|device| (device, None)),
        }
    }

    /// Why a job that waits for room (not capped, not set aside) is waiting after this pass.
    fn wait_reason(&self, bytes: u64, ahead: usize) -> PendingReason {
        if self.usable().any(|device| self.fits_now(device, bytes)) {
            return PendingReason::WaitingBehind { ahead };
        }
        let gpus_with_a_free_turn = self.usable().filter(|&device| {
            let load = self.loads[device];
            matches!(self.devices[device].capacity, Capacity::Gpu { .. }) && load.jobs < self.max_jobs_per_gpu
        });
        match gpus_with_a_free_turn.map(|device| self.free_bytes(device)).max() {
            Some(most_free_bytes) => PendingReason::NeedsMoreMemory { needed_bytes: bytes, most_free_bytes },
            None => PendingReason::AllDevicesBusy,
        }
    }
}

/// One user's queued jobs in the order they start, and what the user holds.
struct Line<'a, J, U> {
    /// The next job in the line, if any, and the ones after it (read only as far as a pass looks).
    head: Option<Candidate<J, U>>,
    rest: Box<dyn Iterator<Item = Candidate<J, U>> + 'a>,
    /// Jobs not taken from the line yet, the head included.
    left: usize,
    usage: f64,
    /// Running jobs plus those assigned in this pass: what the cap counts.
    holding: usize,
    /// Running jobs plus those served (assigned or put in line) in this pass: the tie-breaker
    /// that makes users of equal usage alternate, in placement and in the line alike.
    served: usize,
    /// A job of this user waits for room: the user's later jobs start behind it.
    blocked: bool,
    /// The user's budget, its `held` growing with each job started in this pass; `None`: unbounded.
    account: Option<Account>,
    /// `(priority, seq)` of the last job taken from the line.
    last: Option<(i64, i64)>,
}

impl<J, U> Line<'_, J, U> {
    fn take(&mut self) -> Option<Candidate<J, U>> {
        let head = self.head.take()?;
        self.head = self.rest.next();
        self.left = self.left.saturating_sub(1);
        self.last = Some((head.priority, head.seq));
        Some(head)
    }
}

/// One user's queued jobs as a pass reads them ([`plan_lines`]): `len` jobs in the order they
/// start (priority, highest first, then `seq`), produced only as far as the pass looks.
pub struct LineInput<'a, J, U> {
    /// Their owner.
    pub user: U,
    /// How many jobs `jobs` holds.
    pub len: usize,
    /// The jobs, in the order they start.
    pub jobs: Box<dyn Iterator<Item = Candidate<J, U>> + 'a>,
}

/// Where a pass left a user's line whose later jobs it did not look at.
#[derive(Debug, Clone, PartialEq)]
pub struct LineEnd<U> {
    /// The line's owner.
    pub user: U,
    usage: f64,
    served: usize,
    holding: usize,
    account: Option<Account>,
    /// `(priority, seq)` of the last job the pass took from the line; `None`: it took none. The
    /// jobs after it in the line's order are the ones not looked at.
    pub last: Option<(i64, i64)>,
    /// How many jobs it did not look at.
    pub left: usize,
}

/// The jobs a depth-bounded pass ([`plan_lines`]) did not look at, and what places each of them
/// in line when someone asks ([`Rest::place`]): nothing per job is computed in the pass.
#[derive(Debug, Clone)]
pub struct Rest<U> {
    lines: Vec<LineEnd<U>>,
    /// Jobs put in line by the pass (positions 1 to `in_line`).
    in_line: usize,
    room: Room,
    max_running_per_user: Option<usize>,
}

impl<U: Ord> Rest<U> {
    /// The lines with jobs the pass did not look at.
    pub fn lines(&self) -> &[LineEnd<U>] {
        &self.lines
    }

    /// Jobs not looked at, over every line.
    pub fn left(&self) -> usize {
        self.lines.iter().map(|line| line.left).sum()
    }

    /// The place and reason of a job the pass did not look at, exactly where the whole pass
    /// ([`plan_within`]) would have put it, except that a job that can never run (larger than any
    /// GPU) is counted in line rather than after it. It is `user`'s `index`-th (0-based) job
    /// after [`LineEnd::last`], with `key = (priority, seq)`, `memory_bytes` and
    /// `charge_seconds` (what its owner's budget counts it at); `key_at(v, t)` is the key of user
    /// `v`'s `t`-th such job. `None` when `user` has no such line or `index` is past its end
    /// (the job came later: the next pass places it).
    ///
    /// The lines merge in one order: usage, then jobs served, then priority, then `seq`, then
    /// user. Each job taken adds one to its user's served count, so the merged line is the
    /// sorted order of `(usage, served + t, key, user)` over every line's `t`-th job, and a job's
    /// place is the count of smaller tuples: at most one key is read per user.
    pub fn place(
        &self,
        user: &U,
        index: usize,
        key: (i64, i64),
        memory_bytes: u64,
        charge_seconds: Option<f64>,
        key_at: impl Fn(&U, usize) -> Option<(i64, i64)>,
    ) -> Option<(usize, PendingReason)> {
        let own = self.lines.iter().find(|line| &line.user == user)?;
        if index >= own.left {
            return None;
        }
        let turn = own.served + index;
        let mine = (turn, Reverse(key.0), key.1, user);
        let mut ahead = self.in_line + index;
        for other in self.lines.iter().filter(|line| &line.user != user) {
            ahead += match other.usage.total_cmp(&own.usage) {
                std::cmp::Ordering::Less => other.left,
                std::cmp::Ordering::Greater => 0,
                std::cmp::Ordering::Equal => {
                    // Their jobs taken at a smaller served count are ahead; the one at the same
                    // count is ahead if its key is smaller.
                    let tie = turn.checked_sub(other.served);
                    let before = tie.unwrap_or(0).min(other.left);
                    let tied_ahead = tie
                        .filter(|&t| t < other.left)
                        .and_then(|t| key_at(&other.user, t))
                        .is_some_and(|(priority, seq)| (turn, Reverse(priority), seq, &other.user) < mine);
                    before + usize::from(tied_ahead)
                }
            };
        }
        let reason = if let Some(reason) = self.room.never(memory_bytes) {
            reason
        } else if let Some(limit) = self.max_running_per_user.filter(|&limit| own.holding >= limit) {
            PendingReason::UserLimit { running: own.holding, limit }
        } else if let Some((account, seconds)) =
            own.account.zip(charge_seconds).filter(|(account, seconds)| !account.admits(*seconds))
        {
            PendingReason::OverBudget(account.over(seconds))
        } else {
            self.room.wait_reason(memory_bytes, ahead)
        };
        Some((ahead + 1, reason))
    }
}

/// Why a job waits, before the final state of the pass decides the wording.
enum Wait {
    Capped,
    ForRoom,
    SetAside(PendingReason),
}

/// Decides one scheduling pass: which queued jobs start on which devices, and the line the rest
/// wait in. `usage` maps users to their [`decayed_usage`] (missing = 0). Each job appears exactly
/// once in the result, in `assignments` or in `waiting`; no device gets more than it can hold.
pub fn plan<J, U, D>(
    queued: &[Candidate<J, U>],
    devices: &[DeviceState<D, U>],
    usage: &HashMap<U, f64>,
    limits: &Limits,
) -> Plan<J, D>
where
    J: Copy + Eq + Hash,
    U: Clone + Eq + Hash + Ord,
    D: Clone,
{
    plan_within(queued, devices, usage, limits, &Budgets::default(), &Reservations::default())
}

/// [`plan`], with device-hour budgets: a bounded user's job starts only if their account admits
/// its time limit (`budgets.job_seconds`; a job missing there is not bounded); and with lab
/// reservations ([`Reservations`]).
pub fn plan_within<J, U, D>(
    queued: &[Candidate<J, U>],
    devices: &[DeviceState<D, U>],
    usage: &HashMap<U, f64>,
    limits: &Limits,
    budgets: &Budgets<J, U>,
    reservations: &Reservations<U>,
) -> Plan<J, D>
where
    J: Copy + Eq + Hash,
    U: Clone + Eq + Hash + Ord,
    D: Clone,
{
    let bounds = Bounds { usage, limits, accounts: &budgets.accounts, reservations, depth: usize::MAX };
    let charge = |candidate: &Candidate<J, U>| budgets.job_seconds.get(&candidate.job).copied();
    plan_lines(lines_of(queued), devices, &bounds, &charge).0
}

/// `queued` as each user's line, in the order [`plan_lines`] takes them.
pub fn lines_of<'a, J: Clone + 'a, U: Clone + Ord + 'a>(queued: &[Candidate<J, U>]) -> Vec<LineInput<'a, J, U>> {
    let mut by_user: BTreeMap<U, Vec<Candidate<J, U>>> = BTreeMap::new();
    for candidate in queued {
        by_user.entry(candidate.user.clone()).or_default().push(candidate.clone());
    }
    by_user
        .into_iter()
        .map(|(user, mut jobs)| {
            // Stable: jobs of equal priority and seq keep their input order.
            jobs.sort_by_key(|candidate| (Reverse(candidate.priority), candidate.seq));
            LineInput { user, len: jobs.len(), jobs: Box::new(jobs.into_iter()) }
        })
        .collect()
}

/// What a pass plans within, besides the queue and the devices.
pub struct Bounds<'a, U> {
    /// Each user's [`decayed_usage`] (missing = 0).
    pub usage: &'a HashMap<U, f64>,
    /// Packing and per-user caps.
    pub limits: &'a Limits,
    /// The accounts of users with a device-hour budget.
    pub accounts: &'a HashMap<U, Account>,
    /// Lab reservations.
    pub reservations: &'a Reservations<U>,
    /// Once this many jobs wait in line and no device has a turn free for another job, the pass
    /// stops looking: nothing after could start, and [`Rest::place`] places the rest when asked.
    pub depth: usize,
}

/// [`plan_within`] over each user's line as the caller keeps it, looking only as far as it must:
/// the placements are the same, `waiting` holds the jobs it looked at (with the places and
/// reasons the whole pass gives them), and the returned [`Rest`] places the others when asked.
/// `charge` is what a bounded user's job is counted at (its time limit). A pass over a queue of
/// any length on a full box looks at `depth` jobs.
pub fn plan_lines<'a, J, U, D>(
    queued: Vec<LineInput<'a, J, U>>,
    devices: &[DeviceState<D, U>],
    bounds: &Bounds<'_, U>,
    charge: &dyn Fn(&Candidate<J, U>) -> Option<f64>,
) -> (Plan<J, D>, Rest<U>)
where
    J: Copy + Eq + Hash,
    U: Clone + Eq + Hash + Ord,
    D: Clone,
{
    let Bounds { usage, limits, accounts, reservations, depth } = *bounds;
    let loads = devices
        .iter()
        .map(|device| Load {
            jobs: device.running.len(),
            bytes: device.running.iter().map(|running| running.memory_bytes).sum(),
        })
        .collect();
    let ends = devices
        .iter()
        .map(|device| device.running.iter().map(|running| (running.limit_left_seconds, running.memory_bytes)).collect())
        .collect();
    let mut room = Room {
        devices: devices
            .iter()
            .map(|device| Kind { capacity: device.capacity, foreign_busy: device.foreign_busy })
            .collect(),
        loads,
        ends,
        max_jobs_per_gpu: limits.max_jobs_per_gpu.max(1),
        headroom_bytes: limits.headroom_bytes,
    };

    // A BTreeMap, so users whose every key ties are still served in one fixed order.
    let mut lines: BTreeMap<U, Line<J, U>> = BTreeMap::new();
    for LineInput { user, len, mut jobs } in queued {
        let head = jobs.next();
        let line = Line {
            head,
            rest: jobs,
            left: len,
            usage: usage.get(&user).copied().unwrap_or(0.0),
            holding: 0,
            served: 0,
            blocked: false,
            account: accounts.get(&user).copied(),
            last: None,
        };
        lines.insert(user, line);
    }
    for running in devices.iter().flat_map(|device| &device.running) {
        if let Some(line) = lines.get_mut(&running.user) {
            line.holding += 1;
            line.served += 1;
        }
    }

    let mut assignments = Vec::new();
    let mut in_line: Vec<(Candidate<J, U>, Wait)> = Vec::new();
    let mut set_aside: Vec<(Candidate<J, U>, PendingReason)> = Vec::new();
    let mut reserved: Option<Kept<J>> = None;
    loop {
        if in_line.len() >= depth && !room.has_a_free_turn() {
            break;
        }
        let next = lines
            .iter()
            .filter_map(|(user, line)| line.head.as_ref().map(|head| (user, line, head)))
            .min_by(|(_, a, a_head), (_, b, b_head)| {
                a.usage
                    .total_cmp(&b.usage)
                    .then(a.served.cmp(&b.served))
                    .then(b_head.priority.cmp(&a_head.priority))
                    .then(a_head.seq.cmp(&b_head.seq))
            })
            .map(|(user, _, _)| user.clone());
        let Some(user) = next else { break };
        let line = lines.get_mut(&user).expect("chosen from the lines");
        let candidate = line.take().expect("chosen for its head");
        let bytes = candidate.memory_bytes;
        if let Some(reason) = room.never(bytes) {
            // Permanently impossible jobs go to the end of the line; the others keep their turn.
            if reason.is_permanent() {
                set_aside.push((candidate, reason));
            } else {
                line.served += 1;
                in_line.push((candidate, Wait::SetAside(reason)));
            }
            continue;
        }
        line.served += 1;
        if limits.max_running_per_user.is_some_and(|limit| line.holding >= limit) {
            in_line.push((candidate, Wait::Capped));
            continue;
        }
        let charge = charge(&candidate);
        if let (Some(account), Some(seconds)) = (&line.account, charge) {
            if !account.admits(seconds) {
                in_line.push((candidate, Wait::SetAside(PendingReason::OverBudget(account.over(seconds)))));
                continue;
            }
        }
        // The kept device is closed to this job unless it would end there before the kept job starts.
        let closed = reserved.as_ref().filter(|kept| !kept.backfills(candidate.limit_seconds)).map(|kept| kept.device);
        let device = if line.blocked {
            None
        } else {
            match placement(&room, reservations, &candidate, closed) {
                Ok(device) => device,
                // Like a budget, a reservation holds this job alone: a shorter one may fit.
                Err(hold) => {
                    in_line.push((candidate, Wait::SetAside(PendingReason::Reserved(Box::new(hold)))));
                    continue;
                }
            }
        };
        match device {
            Some(device) => {
                room.add(device, bytes, candidate.limit_seconds);
                line.holding += 1;
                if let (Some(account), Some(seconds)) = (&mut line.account, charge) {
                    account.held_seconds += seconds;
                }
                assignments.push((candidate.job, devices[device].id.clone()));
            }
            None => {
                if !line.blocked && reserved.is_none() {
                    reserved = room.reserve(bytes).map(|(device, start_seconds)| Kept {
                        job: candidate.job,
                        device,
                        start_seconds,
                    });
                }
                line.blocked = true;
                in_line.push((candidate, Wait::ForRoom));
            }
        }
    }

    let rest = Rest {
        lines: lines
            .iter()
            .filter(|(_, line)| line.left > 0)
            .map(|(user, line)| LineEnd {
                user: user.clone(),
                usage: line.usage,
                served: line.served,
                holding: line.holding,
                account: line.account,
                last: line.last,
                left: line.left,
            })
            .collect(),
        in_line: in_line.len(),
        room: room.clone(),
        max_running_per_user: limits.max_running_per_user,
    };
    // Jobs set aside come after every job in line, the ones not looked at included.
    let not_looked_at = rest.left();
    let waiting = in_line
        .into_iter()
        .enumerate()
        .map(|(ahead, (candidate, wait))| Waiting {
            job: candidate.job,
            position: ahead + 1,
            reason: match wait {
                Wait::SetAside(reason) => reason,
                Wait::Capped => PendingReason::UserLimit {
                    running: lines[&candidate.user].holding,
                    limit: limits.max_running_per_user.unwrap_or(usize::MAX),
                },
                // Worded from the state after every assignment of the pass.
                Wait::ForRoom => room.wait_reason(candidate.memory_bytes, ahead),
            },
        })
        .chain(set_aside.into_iter().enumerate().map(|(index, (candidate, reason))| Waiting {
            job: candidate.job,
            position: rest.in_line + not_looked_at + index + 1,
            reason,
        }))
        .collect();
    let plan = Plan {
        assignments,
        waiting,
        reserved_start_seconds: reserved.as_ref().and_then(|kept| kept.start_seconds),
        reserved: reserved.map(|kept| (kept.job, devices[kept.device].id.clone())),
    };
    (plan, rest)
}

/// The device kept for the first job in line that waits for room.
struct Kept<J> {
    job: J,
    device: usize,
    /// When the job can start there at the latest (seconds from now), if known.
    start_seconds: Option<f64>,
}

impl<J> Kept<J> {
    /// Whether a later job that may run `limit_seconds` can go on the kept device: only if it
    /// ends by the time the kept job could start there, so it never delays it.
    fn backfills(&self, limit_seconds: Option<f64>) -> bool {
        matches!((limit_seconds, self.start_seconds), (Some(limit), Some(start)) if limit <= start)
    }
}

/// Where a job starts now under the lab reservations: the device [`Room::place`] picks among
/// those no reservation keeps it off (`None`: it fits none now), or, when a reservation alone
/// keeps it off the device it would get, that reservation.
fn placement<J, U: Eq>(
    room: &Room,
    reservations: &Reservations<U>,
    candidate: &Candidate<J, U>,
    kept: Option<usize>,
) -> Result<Option<usize>, ReservationHold> {
    let hold = |device: usize| reservations.hold(device, &candidate.user, candidate.limit_seconds);
    match room.place(candidate.memory_bytes, kept, |device| hold(device).is_none()) {
        Some(device) => Ok(Some(device)),
        None => match room.place(candidate.memory_bytes, kept, |_| true).and_then(hold) {
            Some(hold) => Err(hold),
            None => Ok(None),
        },
    }
}

/// Fair share's order of `users` as [`plan`] can tell it: sorted by usage (missing = 0), each
/// with whether its usage ties the one before. `plan` only ever compares two users' usages, so two
/// usage maps that give the same order give the same plan: a scheduler whose queue and devices
/// did not change may skip a pass while time (the decay) changes usage but not this order.
pub fn usage_order<'u, U>(users: impl IntoIterator<Item = &'u U>, usage: &HashMap<U, f64>) -> Vec<(U, bool)>
where
    U: Clone + Eq + Hash + Ord + 'u,
{
    let mut ranked: Vec<(f64, &U)> =
        users.into_iter().map(|user| (usage.get(user).copied().unwrap_or(0.0), user)).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    let mut order = Vec::with_capacity(ranked.len());
    for (index, (usage, user)) in ranked.iter().enumerate() {
        let ties = index > 0 && ranked[index - 1].0.total_cmp(usage).is_eq();
        order.push(((*user).clone(), ties));
    }
    order
}

/// A user's recent usage in decayed device-seconds: each run `(start, end)` (seconds; `end = now`
/// for a running job) counts `∫ 2^(-(now - t) / half_life) dt` over its interval, so a second of
/// use one half-life ago counts half as much as one now. Closed form per interval:
/// `h/ln 2 · 2^(-(now - end)/h) · (1 - 2^(-(end - start)/h))`. Parts of a run after `now` are
/// ignored; an infinite half-life counts plain seconds, a non-positive one forgets everything.
pub fn decayed_usage(runs: &[(f64, f64)], now: f64, half_life_secs: f64) -> f64 {
    if half_life_secs.is_nan() || half_life_secs <= 0.0 {
        return 0.0;
    }
    runs.iter()
        .map(|&(start, end)| {
            let end = end.min(now);
            if end <= start {
                return 0.0;
            }
            if half_life_secs.is_infinite() {
                return end - start;
            }
            let rate = std::f64::consts::LN_2 / half_life_secs;
            // exp_m1 keeps short runs exact where 1 - 2^(-x) would cancel.
            (-rate * (now - end)).exp() * -(-rate * (end - start)).exp_m1() / rate
        })
        .sum()
}

#[cfg(test)]
mod reservation_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    const GB: u64 = 1_000_000_000;

    type Job = Candidate<u32, &'static str>;
    type Device = DeviceState<&'static str, &'static str>;

    fn job(job: u32, user: &'static str, seq: i64, gb: u64) -> Job {
        Candidate { job, user, priority: 0, seq, memory_bytes: gb * GB, limit_seconds: None }
    }

    fn gpu(id: &'static str, gb: u64, running: &[(&'static str, u64)]) -> Device {
        let running = running
            .iter()
            .map(|&(user, gb)| Running { user, memory_bytes: gb * GB, limit_left_seconds: None })
            .collect();
        DeviceState { id, capacity: Capacity::Gpu { memory_bytes: gb * GB }, running, foreign_busy: false }
    }

    fn slot(id: &'static str, running: &[&'static str]) -> Device {
        let running = running.iter().map(|&user| Running { user, memory_bytes: 0, limit_left_seconds: None }).collect();
        DeviceState { id, capacity: Capacity::Slot, running, foreign_busy: false }
    }

    const SHARED: Limits = Limits { max_jobs_per_gpu: 4, headroom_bytes: 0, max_running_per_user: None };

    fn plan_with(queued: &[Job], devices: &[Device], limits: &Limits) -> Plan<u32, &'static str> {
        plan(queued, devices, &HashMap::new(), limits)
    }

    fn waiting_jobs(plan: &Plan<u32, &'static str>) -> Vec<u32> {
        plan.waiting.iter().map(|waiting| waiting.job).collect()
    }

    fn reason_of(plan: &Plan<u32, &'static str>, job: u32) -> PendingReason {
        plan.waiting.iter().find(|waiting| waiting.job == job).expect("the job waits").reason.clone()
    }

    #[test]
    fn one_users_jobs_take_free_slots_oldest_first() {
        let queued = [job(10, "a", 1, 0), job(11, "a", 2, 0), job(12, "a", 3, 0)];
        let plan = plan_with(&queued, &[slot("gpu1", &[]), slot("gpu3", &[])], &SHARED);
        assert_eq!(plan.assignments, [(10, "gpu1"), (11, "gpu3")]);
        assert_eq!(plan.waiting, [Waiting { job: 12, position: 1, reason: PendingReason::AllDevicesBusy }]);
        assert_eq!(plan.reserved, Some((12, "gpu1")), "the first job in line waits for the first slot to free");
    }

    fn account(budget_hours: f64, used_hours: f64, held_hours: f64) -> Account {
        Account {
            class: crate::domain::budget::DeviceClass::Cpu,
            budget_seconds: budget_hours * 3600.0,
            used_seconds: used_hours * 3600.0,
            held_seconds: held_hours * 3600.0,
        }
    }

    #[test]
    fn a_budget_admits_jobs_while_used_held_and_their_limits_fit() {
        // "a" has 10 h with 3 used and 2 held by a running job: a 4 h job fits, a second one not
        // (the first, started in this pass, now holds its 4 h too), but a 1 h one behind it does.
        let queued = [job(1, "a", 1, 0), job(2, "a", 2, 0), job(3, "a", 3, 0), job(4, "b", 4, 0)];
        let slots = [slot("s0", &["a"]), slot("s1", &[]), slot("s2", &[]), slot("s3", &[]), slot("s4", &[])];
        let budgets = Budgets {
            accounts: HashMap::from([("a", account(10.0, 3.0, 2.0))]),
            job_seconds: HashMap::from([(1, 4.0 * 3600.0), (2, 4.0 * 3600.0), (3, 3600.0)]),
        };
        let plan = plan_within(&queued, &slots, &HashMap::new(), &SHARED, &budgets, &Reservations::default());
        let started: Vec<u32> = plan.assignments.iter().map(|(job, _)| *job).collect();
        // b, holding nothing, is served first by fair share; b has no budget; a's 1 h job is not
        // held back by the 4 h one that waits for budget.
        assert_eq!(started, [4, 1, 3]);
        let reason = reason_of(&plan, 2);
        assert_eq!(
            reason.to_string(),
            "budget: 3 of 10 CPU-h used and 6 h held by your running jobs, this job may take up to 4 h"
        );
        assert!(!reason.is_permanent(), "it starts once a running job ends or the budget is raised");
        assert_eq!(plan.reserved, None, "a job held by its budget keeps no device");
        // Without budgets the same queue starts every job.
        assert_eq!(plan_with(&queued, &slots, &SHARED).assignments.len(), 4);
    }

    #[test]
    fn nothing_happens_without_jobs_and_nothing_runs_without_devices() {
        let plan = plan_with(&[], &[slot("cpu0", &[])], &SHARED);
        assert!(plan.assignments.is_empty() && plan.waiting.is_empty() && plan.reserved.is_none());
        let plan = plan_with(&[job(1, "a", 1, 0)], &[], &SHARED);
        assert_eq!(plan.waiting, [Waiting { job: 1, position: 1, reason: PendingReason::NoDevices }]);
    }

    #[test]
    fn users_with_equal_usage_alternate() {
        let queued = [job(1, "a", 1, 0), job(2, "a", 2, 0), job(3, "a", 3, 0), job(4, "b", 4, 0), job(5, "b", 5, 0)];
        let slots = [slot("s0", &[]), slot("s1", &[]), slot("s2", &[])];
        let plan = plan_with(&queued, &slots, &SHARED);
        assert_eq!(plan.assignments, [(1, "s0"), (4, "s1"), (2, "s2")]);
        // The line keeps alternating after the devices run out.
        assert_eq!(waiting_jobs(&plan), [5, 3]);
    }

    #[test]
    fn the_user_with_less_recent_usage_goes_first() {
        let queued = [job(1, "heavy", 1, 0), job(2, "light", 2, 0)];
        let usage = HashMap::from([("heavy", 3600.0), ("light", 60.0)]);
        let plan = plan(&queued, &[slot("s0", &[])], &usage, &SHARED);
        assert_eq!(plan.assignments, [(2, "s0")]);
        // Running jobs break a tie in usage: `a` already holds a device, so `b` goes first.
        let queued = [job(1, "a", 1, 0), job(2, "b", 2, 0)];
        let plan = plan_with(&queued, &[slot("s0", &[]), slot("s1", &["a"])], &SHARED);
        assert_eq!(plan.assignments, [(2, "s0")]);
    }

    #[test]
    fn priority_orders_a_users_jobs_and_breaks_ties_between_users() {
        let mut queued = [job(1, "a", 1, 0), job(2, "a", 2, 0), job(3, "a", 3, 0)];
        queued[1].priority = 5;
        let plan = plan_with(&queued, &[slot("s0", &[]), slot("s1", &[])], &SHARED);
        assert_eq!(plan.assignments, [(2, "s0"), (1, "s1")], "priority first, then submission order");
        let mut queued = [job(1, "a", 1, 0), job(2, "b", 2, 0)];
        queued[1].priority = 1;
        assert_eq!(plan_with(&queued, &[slot("s0", &[])], &SHARED).assignments, [(2, "s0")]);
    }

    #[test]
    fn a_capped_user_waits_while_others_run() {
        let limits = Limits { max_running_per_user: Some(2), ..SHARED };
        let queued = [job(1, "a", 1, 0), job(2, "a", 2, 0), job(3, "a", 3, 0), job(4, "b", 4, 0)];
        let slots = [slot("s0", &["a"]), slot("s1", &[]), slot("s2", &[]), slot("s3", &[])];
        let plan = plan_with(&queued, &slots, &limits);
        assert_eq!(plan.assignments, [(4, "s1"), (1, "s2")]);
        assert_eq!(reason_of(&plan, 2), PendingReason::UserLimit { running: 2, limit: 2 });
        assert_eq!(reason_of(&plan, 2).to_string(), "you already run 2 jobs; the limit is 2");
        assert_eq!(plan.reserved, None, "a capped job waits for its owner, not for room");
    }

    #[test]
    fn a_gpu_takes_jobs_while_count_memory_and_headroom_fit() {
        let limits = Limits { max_jobs_per_gpu: 3, headroom_bytes: GB, max_running_per_user: None };
        let devices = [gpu("gpu0", 24, &[("x", 10)])];
        // 10 + 8 + 5 + 1 of headroom = 24: an exact fit; then the job count is reached.
        let queued = [job(1, "a", 1, 8), job(2, "a", 2, 5), job(3, "a", 3, 1)];
        let plan = plan_with(&queued, &devices, &limits);
        assert_eq!(plan.assignments, [(1, "gpu0"), (2, "gpu0")]);
        assert_eq!(reason_of(&plan, 3), PendingReason::AllDevicesBusy);
        // One byte more does not fit.
        let mut queued = [job(1, "a", 1, 8), job(2, "a", 2, 5)];
        queued[1].memory_bytes += 1;
        let plan = plan_with(&queued, &devices, &limits);
        assert_eq!(plan.assignments, [(1, "gpu0")]);
        assert_eq!(
            reason_of(&plan, 2),
            PendingReason::NeedsMoreMemory { needed_bytes: 5 * GB + 1, most_free_bytes: 5 * GB }
        );
    }

    #[test]
    fn jobs_go_to_the_least_loaded_gpu() {
        let devices = [gpu("gpu0", 40, &[("x", 5)]), gpu("gpu1", 40, &[]), gpu("gpu2", 40, &[("x", 2)])];
        let queued = [job(1, "a", 1, 4), job(2, "b", 2, 4)];
        // gpu1 idles; then gpu2 has as many jobs as gpu0 and more memory free than it.
        assert_eq!(plan_with(&queued, &devices, &SHARED).assignments, [(1, "gpu1"), (2, "gpu2")]);
    }

    #[test]
    fn devices_used_outside_trainq_get_no_job() {
        let mut devices = [gpu("gpu0", 80, &[]), gpu("gpu1", 24, &[])];
        devices[0].foreign_busy = true;
        let queued = [job(1, "a", 1, 40), job(2, "a", 2, 4), job(3, "b", 3, 30)];
        let plan = plan_with(&queued, &devices, &SHARED);
        assert_eq!(plan.assignments, [(2, "gpu1")], "the 40 GB job fits only gpu0, so it blocks no one");
        assert_eq!(reason_of(&plan, 1), PendingReason::OutsideProcesses);
        assert_eq!(reason_of(&plan, 3), PendingReason::OutsideProcesses);
        assert_eq!(plan.reserved, None);
    }

    #[test]
    fn the_first_job_waiting_for_room_keeps_a_device_from_later_jobs() {
        let devices = [gpu("gpu0", 40, &[("x", 10)]), gpu("gpu1", 40, &[("x", 25)])];
        let queued = [job(1, "big", 1, 35), job(2, "small", 2, 8), job(3, "small", 3, 8)];
        let plan = plan_with(&queued, &devices, &SHARED);
        assert_eq!(plan.reserved, Some((1, "gpu0")), "the device with the most free memory drains first");
        // Without the reservation job 2 would take gpu0 (as many jobs, more memory free).
        assert_eq!(plan.assignments, [(2, "gpu1")]);
        assert_eq!(
            reason_of(&plan, 1),
            PendingReason::NeedsMoreMemory { needed_bytes: 35 * GB, most_free_bytes: 30 * GB }
        );
        assert_eq!(
            reason_of(&plan, 1).to_string(),
            "needs 35.0 GB of GPU memory; the most free on a GPU is 30.0 GB, so it waits for running jobs to end"
        );
        // Job 3 fits the kept device only.
        assert_eq!(plan.waiting[1], Waiting { job: 3, position: 2, reason: PendingReason::WaitingBehind { ahead: 1 } });
        // Once gpu0 drains, the big job gets it.
        let devices = [gpu("gpu0", 40, &[]), gpu("gpu1", 40, &[("x", 25), ("small", 8)])];
        assert_eq!(plan_with(&queued[..1], &devices, &SHARED).assignments, [(1, "gpu0")]);
    }

    /// `job` with a time limit of `hours`.
    fn limited(mut job: Job, hours: f64) -> Job {
        job.limit_seconds = Some(hours * 3600.0);
        job
    }

    /// `device` whose running jobs reach their limits in `hours` (in order; `None`: no limit).
    fn ending(mut device: Device, hours: &[Option<f64>]) -> Device {
        for (running, hours) in device.running.iter_mut().zip(hours) {
            running.limit_left_seconds = hours.map(|hours| hours * 3600.0);
        }
        device
    }

    #[test]
    fn a_job_that_ends_before_the_kept_job_can_start_is_backfilled_on_its_device() {
        // gpu0's job reaches its limit in 1 h, gpu1's in 2 h: the 35 GB job can start on gpu0 in
        // 1 h at the latest. A 30-minute job fills that gap; a 90-minute one may not.
        let devices =
            [ending(gpu("gpu0", 40, &[("x", 10)]), &[Some(1.0)]), ending(gpu("gpu1", 40, &[("x", 25)]), &[Some(2.0)])];
        let queued = [
            limited(job(1, "big", 1, 35), 4.0),
            limited(job(2, "small", 2, 8), 0.5),
            limited(job(3, "small", 3, 8), 1.5),
            limited(job(4, "other", 4, 8), 1.5),
        ];
        let plan = plan_with(&queued, &devices, &SHARED);
        assert_eq!((plan.reserved, plan.reserved_start_seconds), (Some((1, "gpu0")), Some(3600.0)));
        assert_eq!(
            plan.assignments,
            [(2, "gpu0"), (4, "gpu1")],
            "job 3 would overlap the kept start, and gpu1 is full"
        );
        // Exactly at the start still fits: the backfilled job has ended by then.
        let plan = plan_with(&[queued[0].clone(), limited(job(2, "small", 2, 8), 1.0)], &devices, &SHARED);
        assert_eq!(plan.assignments, [(2, "gpu0")]);
        // A job without a limit is never backfilled: job 2 goes to gpu1, the other two wait.
        let unknown: Vec<Job> = queued.iter().map(|job| Job { limit_seconds: None, ..job.clone() }).collect();
        let plan = plan_with(&unknown, &devices, &SHARED);
        assert_eq!((plan.assignments, plan.reserved_start_seconds), (vec![(2, "gpu1")], Some(3600.0)));
        // Nor when a job the kept one waits for has no limit: nobody knows when the gap ends.
        let devices = [ending(gpu("gpu0", 40, &[("x", 10)]), &[None]), gpu("gpu1", 40, &[("x", 25)])];
        let plan = plan_with(&queued, &devices, &SHARED);
        assert_eq!((plan.reserved, plan.reserved_start_seconds), (Some((1, "gpu0")), None));
        assert_eq!(plan.assignments, [(2, "gpu1")]);
    }

    #[test]
    fn the_device_kept_is_the_one_that_frees_first_when_limits_say() {
        // gpu0 has more memory free, but its job may run 5 h more; on gpu1 one job ends within
        // 10 minutes and the other in 3 h.
        let devices = [
            ending(gpu("gpu0", 40, &[("x", 20)]), &[Some(5.0)]),
            ending(gpu("gpu1", 40, &[("x", 20), ("y", 10)]), &[Some(1.0 / 6.0), Some(3.0)]),
        ];
        // A 25 GB job fits gpu1 once its first job ends; a 35 GB one once both have.
        let plan = plan_with(&[job(1, "big", 1, 25)], &devices, &SHARED);
        assert_eq!((plan.reserved, plan.reserved_start_seconds), (Some((1, "gpu1")), Some(600.0)));
        let plan = plan_with(&[job(1, "big", 1, 35)], &devices, &SHARED);
        assert_eq!((plan.reserved, plan.reserved_start_seconds), (Some((1, "gpu1")), Some(3.0 * 3600.0)));
        // Without limits, the device with the most memory free is kept, as ever.
        let unknown = [gpu("gpu0", 40, &[("x", 20)]), gpu("gpu1", 40, &[("x", 20), ("y", 10)])];
        assert_eq!(plan_with(&[job(1, "big", 1, 25)], &unknown, &SHARED).reserved, Some((1, "gpu0")));
        // Where one device's start is unknown, the known one is kept.
        let devices =
            [ending(gpu("gpu0", 40, &[("x", 10)]), &[None]), ending(gpu("gpu1", 40, &[("x", 25)]), &[Some(2.0)])];
        let plan = plan_with(&[job(1, "big", 1, 35)], &devices, &SHARED);
        assert_eq!((plan.reserved, plan.reserved_start_seconds), (Some((1, "gpu1")), Some(7200.0)));
    }

    #[test]
    fn a_job_larger_than_every_gpu_blocks_no_one_and_says_so() {
        let limits = Limits { headroom_bytes: GB, ..SHARED };
        let devices = [gpu("gpu0", 24, &[("x", 20)]), gpu("gpu1", 16, &[])];
        let queued = [job(1, "a", 1, 30), job(2, "a", 2, 2), job(3, "b", 3, 22), job(4, "b", 4, 2)];
        let plan = plan_with(&queued, &devices, &limits);
        assert_eq!(plan.assignments, [(2, "gpu1")]);
        // Job 3 fits gpu0 once it is empty: it waits first in line, and keeps gpu0.
        assert_eq!(waiting_jobs(&plan), [3, 4, 1], "the impossible job is last in line");
        assert_eq!(plan.reserved, Some((3, "gpu0")));
        assert_eq!(reason_of(&plan, 4), PendingReason::WaitingBehind { ahead: 1 }, "b's jobs start in order");
        let reason = reason_of(&plan, 1);
        assert_eq!(reason, PendingReason::LargerThanAnyGpu { needed_bytes: 30 * GB, largest_bytes: 23 * GB });
        assert!(
            reason.to_string().starts_with("needs 30.0 GB of GPU memory but the largest GPU can give a job 23.0 GB"),
            "{reason}"
        );
    }

    #[test]
    fn a_user_waiting_for_room_holds_back_only_their_own_later_jobs() {
        let devices = [gpu("gpu0", 24, &[("x", 20)])];
        let queued = [job(1, "a", 1, 10), job(2, "a", 2, 2), job(3, "b", 3, 2)];
        let plan = plan_with(&queued, &devices, &SHARED);
        // Job 3 would fit too, but gpu0 is kept for job 1: nothing starts.
        assert!(plan.assignments.is_empty());
        // b comes between a's jobs in line: they alternate there too.
        assert_eq!(waiting_jobs(&plan), [1, 3, 2]);
        assert_eq!(reason_of(&plan, 2), PendingReason::WaitingBehind { ahead: 2 });
        // With a second GPU, b's job starts there while a's small job still waits its turn.
        let devices = [gpu("gpu0", 24, &[("x", 20)]), gpu("gpu1", 8, &[])];
        let plan = plan_with(&queued, &devices, &SHARED);
        assert_eq!(plan.assignments, [(3, "gpu1")]);
        assert_eq!(waiting_jobs(&plan), [1, 2]);
    }

    #[test]
    fn reasons_read_as_sentences() {
        let cases = [
            (PendingReason::WaitingBehind { ahead: 1 }, "waiting behind 1 job ahead of it in line, which start first"),
            (PendingReason::WaitingBehind { ahead: 3 }, "waiting behind 3 jobs ahead of it in line, which start first"),
            (PendingReason::AllDevicesBusy, "all devices are busy; it starts when a running job ends"),
            (PendingReason::UserLimit { running: 1, limit: 1 }, "you already run 1 job; the limit is 1"),
            (PendingReason::NoDevices, "trainq has no device to run jobs on"),
            (
                PendingReason::NeedsMoreMemory { needed_bytes: 12_345_678_901, most_free_bytes: 950_000_000 },
                "needs 12.3 GB of GPU memory; the most free on a GPU is 0.9 GB, so it waits for running jobs to end",
            ),
        ];
        for (reason, sentence) in cases {
            assert_eq!(reason.to_string(), sentence);
        }
        assert!(PendingReason::OutsideProcesses.to_string().contains("outside trainq"));
    }

    /// Runs passes in which every assigned job runs for one tick and ends, usage accruing from the
    /// runs. `jobs` are `(candidate, arrival pass)`. Returns each job's start pass.
    fn simulate(
        jobs: &[(Candidate<u32, u8>, usize)],
        devices: &[DeviceState<u8, u8>],
        limits: &Limits,
        half_life: f64,
        mut check: impl FnMut(&[Candidate<u32, u8>], &Plan<u32, u8>),
    ) -> HashMap<u32, usize> {
        let mut started: HashMap<u32, usize> = HashMap::new();
        let mut runs: HashMap<u8, Vec<(f64, f64)>> = HashMap::new();
        let last_arrival = jobs.iter().map(|(_, arrival)| *arrival).max().unwrap_or(0);
        for pass in 0.. {
            if started.len() == jobs.len() {
                break;
            }
            assert!(pass <= last_arrival + jobs.len(), "every pass with work starts a job, so this is past due");
            let now = pass as f64;
            let queued: Vec<_> = jobs
                .iter()
                .filter(|(candidate, arrival)| *arrival <= pass && !started.contains_key(&candidate.job))
                .map(|(candidate, _)| candidate.clone())
                .collect();
            let usage = runs.iter().map(|(user, runs)| (*user, decayed_usage(runs, now, half_life))).collect();
            let plan = plan(&queued, devices, &usage, limits);
            check(&queued, &plan);
            for (job, _) in &plan.assignments {
                started.insert(*job, pass);
                let user = queued.iter().find(|candidate| candidate.job == *job).unwrap().user;
                runs.entry(user).or_default().push((now, now + 1.0));
            }
        }
        started
    }

    #[test]
    fn a_late_user_is_not_stuck_behind_a_long_queue() {
        // User 0 queues 20 jobs, then user 1 queues 2; one device.
        let jobs: Vec<_> = (0..22u32)
            .map(|i| {
                (
                    Candidate {
                        job: i,
                        user: u8::from(i >= 20),
                        priority: 0,
                        seq: i64::from(i),
                        memory_bytes: 0,
                        limit_seconds: None,
                    },
                    0,
                )
            })
            .collect();
        let devices = [DeviceState { id: 0u8, capacity: Capacity::Slot, running: vec![], foreign_busy: false }];
        let mut first_line = None;
        let started = simulate(&jobs, &devices, &SHARED, 600.0, |_, plan| {
            first_line.get_or_insert_with(|| plan.waiting.iter().map(|waiting| waiting.job).collect::<Vec<_>>());
        });
        let mut order: Vec<u32> = (0..22).collect();
        order.sort_by_key(|job| started[job]);
        assert_eq!(order[..5], [0, 20, 1, 21, 2], "the users alternate");
        assert!(started[&20] < started[&2], "user 1's first job runs before user 0's third");
        // From the first pass on, the line already shows user 1 next.
        assert_eq!(first_line.unwrap()[..3], [20, 1, 21]);
    }

    /// A random box and queue: GPUs, CPU slots or both, some used outside trainq, some running
    /// jobs, users with usage, priorities, sizes from tiny to larger than any GPU.
    #[derive(Debug, Clone)]
    struct Case {
        queued: Vec<Candidate<u32, u8>>,
        devices: Vec<DeviceState<u8, u8>>,
        usage: HashMap<u8, f64>,
        limits: Limits,
    }

    /// What a box is made of: GPUs whose memory is known, slots (CPUs, or GPUs handed out
    /// whole), or a mix.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Gpus,
        Slots,
        Mixed,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![3 => Just(Kind::Gpus), 1 => Just(Kind::Slots), 1 => Just(Kind::Mixed)]
    }

    /// A device's capacity in a box of `kind`, GPUs of 8 to `max_gb` GB.
    fn capacity(kind: Kind, max_gb: u64) -> BoxedStrategy<Capacity> {
        let gpu = (8..=max_gb).prop_map(|gb| Capacity::Gpu { memory_bytes: gb * GB });
        match kind {
            Kind::Gpus => gpu.boxed(),
            Kind::Slots => Just(Capacity::Slot).boxed(),
            Kind::Mixed => prop_oneof![gpu, Just(Capacity::Slot)].boxed(),
        }
    }

    fn limits(headroom_gb: u64, cap: f64, max_cap: usize) -> impl Strategy<Value = Limits> {
        // proptest's weights must lie strictly between 0 and 1: a cap of 0 is "never capped".
        let cap = if cap > 0.0 { proptest::option::weighted(cap, 1..=max_cap).boxed() } else { Just(None).boxed() };
        (1..=3usize, 0..=headroom_gb, cap).prop_map(|(max_jobs_per_gpu, headroom_gb, max_running_per_user)| Limits {
            max_jobs_per_gpu,
            headroom_bytes: headroom_gb * GB,
            max_running_per_user,
        })
    }

    /// Devices numbered 0, 1, …; `running` are `(user, half-GB)` tries, kept while they fit (the
    /// box starts within capacity).
    fn devices(
        kind: Kind,
        limits: Limits,
        users: u8,
        count: std::ops::RangeInclusive<usize>,
    ) -> impl Strategy<Value = Vec<DeviceState<u8, u8>>> {
        let device = (capacity(kind, 80), vec((0..=users, 1..=40u64), 0..=3), proptest::bool::weighted(0.2));
        vec(device, count).prop_map(move |devices| {
            devices
                .into_iter()
                .zip(0..)
                .map(|((capacity, tries, foreign_busy), id)| {
                    let mut running: Vec<Running<u8>> = Vec::new();
                    for (user, halves) in tries {
                        let memory_bytes = halves * GB / 2;
                        let used: u64 = running.iter().map(|running| running.memory_bytes).sum();
                        let fits = match capacity {
                            Capacity::Slot => running.is_empty(),
                            Capacity::Gpu { memory_bytes: total } => {
                                running.len() < limits.max_jobs_per_gpu
                                    && used + memory_bytes + limits.headroom_bytes <= total
                            }
                        };
                        if fits {
                            running.push(Running { user, memory_bytes, limit_left_seconds: None });
                        }
                    }
                    DeviceState { id, capacity, running, foreign_busy }
                })
                .collect()
        })
    }

    fn case() -> impl Strategy<Value = Case> {
        (limits(2, 0.5, 3), 1..=4u8, kind()).prop_flat_map(|(limits, users, kind)| {
            let priority = prop_oneof![7 => Just(0i64), 3 => -1..=2i64];
            // Quarter gigabytes up to 90 GB, plus a few odd bytes.
            let memory = (1..=90 * 4u64, 0..GB / 4).prop_map(|(quarters, odd)| quarters * GB / 4 + odd);
            let queued = vec((0..users, priority, memory), 0..=20).prop_map(|jobs| {
                (0..)
                    .zip(jobs)
                    .map(|(job, (user, priority, memory_bytes))| Candidate {
                        job,
                        user,
                        priority,
                        seq: i64::from(job),
                        memory_bytes,
                        limit_seconds: None,
                    })
                    .collect()
            });
            let usage = vec(proptest::option::weighted(0.7, 0..100u8), usize::from(users)).prop_map(|usage| {
                (0..).zip(usage).filter_map(|(user, usage)| Some((user, f64::from(usage?)))).collect()
            });
            (devices(kind, limits, users, 0..=4), queued, usage).prop_map(move |(devices, queued, usage)| Case {
                queued,
                devices,
                usage,
                limits,
            })
        })
    }

    /// A box where every job can run on some device, with jobs arriving over passes.
    #[derive(Debug, Clone)]
    struct Simulation {
        /// `(candidate, arrival pass)`, in submission order.
        jobs: Vec<(Candidate<u32, u8>, usize)>,
        devices: Vec<DeviceState<u8, u8>>,
        limits: Limits,
        users: u8,
    }

    fn simulation() -> impl Strategy<Value = Simulation> {
        let boxes = kind()
            .prop_flat_map(|kind| (limits(1, 0.3, 2), vec((capacity(kind, 48), proptest::bool::weighted(0.2)), 1..=3)));
        (boxes, 1..=4u8).prop_flat_map(|((limits, idle), users)| {
            let devices: Vec<DeviceState<u8, u8>> = idle
                .into_iter()
                .zip(0..)
                // Device 0 is trainq's alone, so every job can run somewhere.
                .map(|((capacity, foreign_busy), id)| DeviceState {
                    id,
                    capacity,
                    running: vec![],
                    foreign_busy: foreign_busy && id > 0,
                })
                .collect();
            let largest = devices
                .iter()
                .filter(|device| !device.foreign_busy)
                .map(|device| match device.capacity {
                    Capacity::Gpu { memory_bytes } => memory_bytes - limits.headroom_bytes,
                    Capacity::Slot => 48 * GB,
                })
                .max()
                .expect("device 0 is usable");
            let jobs = vec((0..users, 0..=1i64, GB / 2..=largest, 0..8usize), 1..=25).prop_map(|mut jobs| {
                // Submission order follows arrival.
                jobs.sort_by_key(|&(_, _, _, arrival)| arrival);
                (0..)
                    .zip(jobs)
                    .map(|(job, (user, priority, memory_bytes, arrival))| {
                        (
                            Candidate { job, user, priority, seq: i64::from(job), memory_bytes, limit_seconds: None },
                            arrival,
                        )
                    })
                    .collect()
            });
            (jobs, Just(devices)).prop_map(move |(jobs, devices)| Simulation { jobs, devices, limits, users })
        })
    }

    /// Every property a plan must have, whatever the input.
    fn check_plan(
        queued: &[Candidate<u32, u8>],
        devices: &[DeviceState<u8, u8>],
        limits: &Limits,
        plan: &Plan<u32, u8>,
    ) {
        let max_jobs_per_gpu = limits.max_jobs_per_gpu.max(1);
        let candidate = |job: u32| queued.iter().find(|candidate| candidate.job == job).expect("a queued job");
        // Every job exactly once; the line numbered 1, 2, 3, ….
        let mut seen: Vec<u32> = plan.assignments.iter().map(|(job, _)| *job).chain(waiting_ids(plan)).collect();
        seen.sort_unstable();
        let mut all: Vec<u32> = queued.iter().map(|candidate| candidate.job).collect();
        all.sort_unstable();
        assert_eq!(seen, all, "each job is assigned or waits, once");
        assert!(plan.waiting.iter().enumerate().all(|(index, waiting)| waiting.position == index + 1));

        // Final loads; no device beyond its capacity, none used outside trainq gets a job.
        let mut loads: Vec<(usize, u64)> = devices
            .iter()
            .map(|device| (device.running.len(), device.running.iter().map(|r| r.memory_bytes).sum()))
            .collect();
        for (job, id) in &plan.assignments {
            let index = devices.iter().position(|device| device.id == *id).expect("a known device");
            assert!(!devices[index].foreign_busy, "job {job} on device {id}, used outside trainq");
            loads[index].0 += 1;
            loads[index].1 += candidate(*job).memory_bytes;
        }
        let fits = |index: usize, load: (usize, u64), bytes: u64| match devices[index].capacity {
            Capacity::Slot => load.0 == 0,
            Capacity::Gpu { memory_bytes } => {
                load.0 < max_jobs_per_gpu && load.1 + bytes + limits.headroom_bytes <= memory_bytes
            }
        };
        for (index, device) in devices.iter().enumerate() {
            // (The cases start within capacity, so the final loads must be too.)
            let within = match device.capacity {
                Capacity::Slot => loads[index].0 <= 1,
                Capacity::Gpu { memory_bytes } => {
                    loads[index].0 <= max_jobs_per_gpu && loads[index].1 + limits.headroom_bytes <= memory_bytes
                }
            };
            assert!(within, "device {} over capacity: {:?}", device.id, loads[index]);
        }

        // The cap.
        let holding = |user: u8| {
            devices.iter().flat_map(|device| &device.running).filter(|running| running.user == user).count()
                + plan.assignments.iter().filter(|(job, _)| candidate(*job).user == user).count()
        };
        if let Some(limit) = limits.max_running_per_user {
            for user in queued.iter().map(|candidate| candidate.user) {
                let started = plan.assignments.iter().filter(|(job, _)| candidate(*job).user == user).count();
                assert!(started == 0 || holding(user) <= limit, "user {user} over the cap");
            }
        }

        let reserved = plan.reserved.map(|(_, id)| devices.iter().position(|device| device.id == id).unwrap());
        let usable = |index: &usize| !devices[*index].foreign_busy;
        let set_aside = |reason: &PendingReason| {
            matches!(
                reason,
                PendingReason::LargerThanAnyGpu { .. } | PendingReason::NoDevices | PendingReason::OutsideProcesses
            )
        };
        // Work conservation: the first waiting job of each uncapped user fits no usable device
        // but the kept one.
        let mut users_seen = Vec::new();
        for waiting in &plan.waiting {
            let job = candidate(waiting.job);
            if set_aside(&waiting.reason) || users_seen.contains(&job.user) {
                continue;
            }
            users_seen.push(job.user);
            if limits.max_running_per_user.is_some_and(|limit| holding(job.user) >= limit) {
                continue;
            }
            for index in (0..devices.len()).filter(usable).filter(|index| Some(*index) != reserved) {
                assert!(
                    !fits(index, loads[index], job.memory_bytes),
                    "job {} waits though device {index} could host it",
                    job.job
                );
            }
        }

        // Each reason is true.
        for waiting in &plan.waiting {
            let bytes = candidate(waiting.job).memory_bytes;
            let fits_now = (0..devices.len()).filter(usable).any(|index| fits(index, loads[index], bytes));
            let fits_empty = |index: usize| fits(index, (0, 0), bytes);
            match waiting.reason {
                PendingReason::WaitingBehind { ahead } => assert!(fits_now && ahead + 1 == waiting.position),
                PendingReason::AllDevicesBusy | PendingReason::NeedsMoreMemory { .. } => assert!(!fits_now),
                PendingReason::UserLimit { running, limit } => {
                    assert_eq!(
                        (running, Some(limit)),
                        (holding(candidate(waiting.job).user), limits.max_running_per_user)
                    )
                }
                PendingReason::LargerThanAnyGpu { .. } => assert!(!(0..devices.len()).any(fits_empty)),
                PendingReason::OutsideProcesses => {
                    assert!((0..devices.len()).any(fits_empty) && !(0..devices.len()).filter(usable).any(fits_empty))
                }
                PendingReason::NoDevices => assert!(devices.is_empty()),
                PendingReason::OverBudget(_) => panic!("no budgets were given, so none holds a job"),
                PendingReason::Reserved(_) => panic!("no reservations were given, so none holds a job"),
            }
        }

        // In order within a user: the jobs of a user that started are the first of that user's
        // jobs that can run here at all, by priority then submission.
        for user in queued.iter().map(|candidate| candidate.user) {
            let mut own: Vec<&Candidate<u32, u8>> = queued
                .iter()
                .filter(|candidate| candidate.user == user)
                .filter(|candidate| {
                    plan.waiting.iter().all(|waiting| waiting.job != candidate.job || !set_aside(&waiting.reason))
                })
                .collect();
            own.sort_by_key(|candidate| (Reverse(candidate.priority), candidate.seq));
            let started: Vec<bool> =
                own.iter().map(|candidate| plan.assignments.iter().any(|(job, _)| *job == candidate.job)).collect();
            assert!(
                started.windows(2).all(|pair| pair[0] || !pair[1]),
                "user {user} jobs started out of order: {started:?}"
            );
        }
    }

    fn waiting_ids<D>(plan: &Plan<u32, D>) -> impl Iterator<Item = u32> + '_ {
        plan.waiting.iter().map(|waiting| waiting.job)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Usage that moved (decay, running jobs) without changing [`usage_order`] leaves the
        /// plan exactly as it was: what lets the scheduler sleep through decay steps.
        #[test]
        fn the_same_usage_order_gives_the_same_plan(case in case(), scale in 0.01..100.0f64, shift in 0.0..1000.0f64) {
            let Case { queued, devices, usage, limits } = case;
            // A strictly increasing map of usages keeps their order and their ties.
            let moved: HashMap<u8, f64> = usage.iter().map(|(user, usage)| (*user, usage * scale + shift)).collect();
            let users: Vec<u8> = queued.iter().map(|candidate| candidate.user).collect();
            // Users absent from the map count 0, which the shift moves: give them the shift too.
            let moved: HashMap<u8, f64> = users.iter().map(|user| (*user, moved.get(user).copied().unwrap_or(shift))).collect();
            prop_assert_eq!(usage_order(&users, &usage), usage_order(&users, &moved));
            prop_assert_eq!(plan(&queued, &devices, &usage, &limits), plan(&queued, &devices, &moved, &limits));
        }

        /// A pass that stops looking once `depth` jobs wait in line and no device has a turn free
        /// starts the same jobs as the whole pass, gives the jobs it looked at the whole pass's
        /// places and reasons, and [`Rest::place`] puts every other job where the whole pass did.
        #[test]
        fn a_bounded_pass_places_every_job_where_the_whole_pass_does(case in case(), depth in 0..4usize) {
            let Case { mut queued, devices, usage, limits } = case;
            // `Rest::place` counts a job that can never run in line, where the whole pass puts it
            // last: such jobs are left out (they change no other job's place).
            let never: Vec<u32> = plan(&queued, &devices, &usage, &limits)
                .waiting
                .iter()
                .filter(|waiting| waiting.reason.is_permanent())
                .map(|waiting| waiting.job)
                .collect();
            queued.retain(|candidate| !never.contains(&candidate.job));
            let whole = plan(&queued, &devices, &usage, &limits);
            let (accounts, reservations) = (HashMap::new(), Reservations::default());
            let bounds = Bounds { usage: &usage, limits: &limits, accounts: &accounts, reservations: &reservations, depth };
            let (bounded, rest) = plan_lines(lines_of(&queued), &devices, &bounds, &|_| None);
            prop_assert_eq!(&bounded.assignments, &whole.assignments);
            prop_assert_eq!(bounded.waiting.len() + rest.left(), whole.waiting.len());
            for waiting in &bounded.waiting {
                prop_assert!(whole.waiting.contains(waiting), "{:?} not in {:?}", waiting, whole.waiting);
            }
            // Each user's line in order, and where the pass left it.
            let mut lines: HashMap<u8, Vec<&Candidate<u32, u8>>> = HashMap::new();
            for candidate in &queued {
                lines.entry(candidate.user).or_default().push(candidate);
            }
            for line in lines.values_mut() {
                line.sort_by_key(|candidate| (Reverse(candidate.priority), candidate.seq));
            }
            let start = |user: &u8| {
                let last = rest.lines().iter().find(|end| end.user == *user)?.last;
                Some(lines[user].iter().position(|c| Some((c.priority, c.seq)) == last).map_or(0, |at| at + 1))
            };
            let key_at = |user: &u8, at: usize| lines[user].get(start(user)? + at).map(|c| (c.priority, c.seq));
            let looked: Vec<u32> = bounded.waiting.iter().map(|waiting| waiting.job).collect();
            for waiting in whole.waiting.iter().filter(|waiting| !looked.contains(&waiting.job)) {
                let candidate = queued.iter().find(|candidate| candidate.job == waiting.job).unwrap();
                let user = candidate.user;
                let index = lines[&user].iter().position(|c| c.job == candidate.job).unwrap() - start(&user).unwrap();
                let placed = rest.place(&user, index, (candidate.priority, candidate.seq), candidate.memory_bytes, None, key_at);
                prop_assert_eq!(placed, Some((waiting.position, waiting.reason.clone())), "job {}", waiting.job);
            }
        }

        /// And an order that changed is noticed.
        #[test]
        fn a_changed_usage_order_is_noticed(a in 0.0..100.0f64, b in 0.0..100.0f64) {
            let usage = HashMap::from([(1u8, a), (2u8, b)]);
            let swapped = HashMap::from([(1u8, b), (2u8, a)]);
            let same = usage_order(&[1u8, 2], &usage) == usage_order(&[1u8, 2], &swapped);
            prop_assert_eq!(same, a == b);
        }

        /// Whatever the box and the queue, the plan keeps every rule ([`check_plan`]).
        #[test]
        fn every_plan_keeps_every_rule(case in case()) {
            let Case { queued, devices, usage, limits } = case;
            let plan = plan(&queued, &devices, &usage, &limits);
            check_plan(&queued, &devices, &limits, &plan);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Passes run until the queue is empty, each assigned job running one tick. Every plan
        /// keeps every rule; every job starts within a bound (see [`simulate`]); a user who has
        /// never run comes before everyone who has, so at most one pass per other such user goes
        /// by before one of theirs starts; and one user's jobs of equal priority start in
        /// submission order.
        #[test]
        fn no_user_is_starved(simulation in simulation()) {
            let Simulation { jobs, devices, limits, users } = simulation;
            let started = simulate(&jobs, &devices, &limits, 4.0, |queued, plan| check_plan(queued, &devices, &limits, plan));
            for user in 0..users {
                let own = || jobs.iter().filter(|(candidate, _)| candidate.user == user);
                if let (Some(arrival), Some(start)) =
                    (own().map(|(_, arrival)| *arrival).min(), own().map(|(candidate, _)| started[&candidate.job]).min())
                {
                    prop_assert!(start - arrival < usize::from(users), "user {} arrived at {}, first ran at {}", user, arrival, start);
                }
                for (earlier, later) in own().flat_map(|earlier| own().map(move |later| (&earlier.0, &later.0))) {
                    if earlier.priority == later.priority && earlier.seq < later.seq {
                        prop_assert!(
                            started[&earlier.job] <= started[&later.job],
                            "user {}: job {} started at {}, after job {} (submitted later) at {}",
                            user, earlier.job, started[&earlier.job], later.job, started[&later.job]
                        );
                    }
                }
            }
        }
    }

    /// A box and a queue with time limits, some unknown: running jobs with the rest of their
    /// limits (4 to 20 s), candidates with theirs (1 to 12 s). Each user has usage of their own
    /// number, so fair share's order stays the same pass after pass; no cap.
    fn backfill_case() -> impl Strategy<Value = Case> {
        (limits(2, 0.0, 1), 1..=4u8, kind()).prop_flat_map(|(limits, users, kind)| {
            // Running jobs tend to have longer left than queued jobs ask for, so gaps exist to fill.
            let limit = |shortest: u8, longest: u8| {
                proptest::option::weighted(0.8, shortest..=longest).prop_map(|limit| limit.map(f64::from))
            };
            // Up to half a GPU, so a kept GPU often has room beside its running jobs for another.
            let memory = (1..=40 * 4u64).prop_map(|quarters| quarters * GB / 4);
            let queued = vec((0..users, 0..=1i64, memory, limit(1, 12)), 1..=12).prop_map(|jobs| {
                (0..)
                    .zip(jobs)
                    .map(|(job, (user, priority, memory_bytes, limit_seconds))| Candidate {
                        job,
                        user,
                        priority,
                        seq: i64::from(job),
                        memory_bytes,
                        limit_seconds,
                    })
                    .collect()
            });
            (devices(kind, limits, users, 1..=4), vec(limit(4, 20), 12), queued).prop_map(
                move |(mut devices, running_limits, queued)| {
                    let running = devices.iter_mut().flat_map(|device| device.running.iter_mut());
                    for (running, limit) in running.zip(running_limits) {
                        running.limit_left_seconds = limit;
                    }
                    let usage = (0..users).map(|user| (user, f64::from(user))).collect();
                    Case { queued, devices, usage, limits }
                },
            )
        })
    }

    /// The job the first pass keeps a device for, and when it starts (`None`: never, as no job it
    /// waits for ends), passes running at each job's end with every job running exactly its
    /// limit (the worst case a reservation is made against; a job without one never ends). With
    /// `hide_limits` the policy is not told the limits (the jobs still run them): today's
    /// policy, without backfill. `check` sees each pass's time, queue and plan.
    fn protected_start(
        case: &Case,
        hide_limits: bool,
        mut check: impl FnMut(f64, &[Candidate<u32, u8>], &Plan<u32, u8>),
    ) -> Option<(u32, Option<f64>)> {
        let shown = |limit: Option<f64>| if hide_limits { None } else { limit };
        // Each device's jobs as `(user, memory, end)`, absolute times.
        let mut running: Vec<Vec<(u8, u64, Option<f64>)>> = case
            .devices
            .iter()
            .map(|device| {
                device.running.iter().map(|job| (job.user, job.memory_bytes, job.limit_left_seconds)).collect()
            })
            .collect();
        let mut queued = case.queued.clone();
        let mut protected = None;
        let mut now = 0.0;
        loop {
            for jobs in &mut running {
                jobs.retain(|&(_, _, end)| end.is_none_or(|end| end > now));
            }
            let devices: Vec<DeviceState<u8, u8>> = case
                .devices
                .iter()
                .zip(&running)
                .map(|(device, jobs)| DeviceState {
                    running: jobs
                        .iter()
                        .map(|&(user, memory_bytes, end)| Running {
                            user,
                            memory_bytes,
                            limit_left_seconds: shown(end.map(|end| end - now)),
                        })
                        .collect(),
                    ..device.clone()
                })
                .collect();
            let candidates: Vec<Candidate<u32, u8>> = queued
                .iter()
                .map(|candidate| Candidate { limit_seconds: shown(candidate.limit_seconds), ..candidate.clone() })
                .collect();
            let plan = plan(&candidates, &devices, &case.usage, &case.limits);
            check(now, &queued, &plan);
            let kept = *protected.get_or_insert(plan.reserved.map(|(job, _)| job));
            let kept = kept?;
            for (job, device) in &plan.assignments {
                let index = queued.iter().position(|candidate| candidate.job == *job).expect("a queued job");
                let candidate = queued.remove(index);
                let end = candidate.limit_seconds.map(|limit| now + limit);
                running[usize::from(*device)].push((candidate.user, candidate.memory_bytes, end));
                if *job == kept {
                    return Some((kept, Some(now)));
                }
            }
            let next = running.iter().flatten().filter_map(|&(_, _, end)| end).filter(|&end| end > now);
            match next.min_by(f64::total_cmp) {
                Some(next) => now = next,
                None => return Some((kept, None)),
            }
        }
    }

    /// The jobs `plan` placed on the `device` kept for `kept` that come after it in fair share's
    /// order (users by their usage, which [`backfill_case`] makes their number): backfilled ones.
    fn backfilled_on<'a>(
        queued: &'a [Candidate<u32, u8>],
        plan: &'a Plan<u32, u8>,
        kept: u32,
        device: u8,
    ) -> impl Iterator<Item = &'a Candidate<u32, u8>> + 'a {
        let order = |candidate: &Candidate<u32, u8>| (candidate.user, Reverse(candidate.priority), candidate.seq);
        let find = move |job: u32| queued.iter().find(|candidate| candidate.job == job).expect("a queued job");
        let kept = order(find(kept));
        plan.assignments
            .iter()
            .filter(move |(_, on)| *on == device)
            .map(move |(job, _)| find(*job))
            .filter(move |job| order(job) > kept)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Backfill never delays the job it protects: run forward with every job taking its whole
        /// limit and a pass at every end, the protected job starts no later with backfill than
        /// without (today's policy, told no limits), and no later than the first pass's reserved
        /// start. Every job backfilled on the kept device ends by that pass's reserved start.
        #[test]
        fn backfill_never_delays_the_protected_job(case in backfill_case()) {
            let mut first_start = None;
            let with = protected_start(&case, false, |now, queued, plan| {
                let Some((kept, device)) = plan.reserved else { return };
                first_start.get_or_insert(plan.reserved_start_seconds.map(|start| now + start));
                for job in backfilled_on(queued, plan, kept, device) {
                    let (limit, start) = (job.limit_seconds, plan.reserved_start_seconds);
                    assert!(
                        matches!((limit, start), (Some(limit), Some(start)) if limit <= start),
                        "job {} backfilled at {now} with limit {limit:?} before the kept start {start:?}",
                        job.job
                    );
                }
            });
            let without = protected_start(&case, true, |_, _, _| {});
            match (with, without) {
                (Some((kept, with)), Some((same, without))) => {
                    prop_assert_eq!(kept, same, "the first pass protects the same job either way");
                    let late = |start: Option<f64>| start.unwrap_or(f64::INFINITY);
                    prop_assert!(late(with) <= late(without), "job {} starts at {:?} with backfill, {:?} without", kept, with, without);
                    if let Some(Some(reserved)) = first_start {
                        prop_assert!(late(with) <= reserved, "job {} starts at {:?}, after its reserved start {}", kept, with, reserved);
                    }
                }
                (None, None) => {}
                (with, without) => prop_assert!(false, "a job protected in one world only: {:?} {:?}", with, without),
            }
        }
    }

    /// The backfill cases are worth their runs: over a fixed sample, reserved starts are known,
    /// jobs are backfilled, and backfill sometimes starts the protected job earlier than today.
    #[test]
    fn the_backfill_cases_reach_backfill() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = backfill_case();
        let (mut known_starts, mut backfilled, mut earlier) = (0, 0, 0);
        for _ in 0..500 {
            let case = strategy.new_tree(&mut runner).expect("a case").current();
            let with = protected_start(&case, false, |_, queued, plan| {
                let Some((kept, device)) = plan.reserved else { return };
                known_starts += usize::from(plan.reserved_start_seconds.is_some());
                backfilled += backfilled_on(queued, plan, kept, device).count();
            });
            let without = protected_start(&case, true, |_, _, _| {});
            if let (Some((_, Some(with))), Some((_, without))) = (with, without) {
                earlier += usize::from(without.is_none_or(|without| with < without));
            }
        }
        assert!(
            // Backfill needs a kept GPU with memory and a turn to spare beside its running jobs,
            // and no other device free: a few percent of random cases (13 jobs over the 500 cases
            // of this fixed sample). The bar is that the generator reaches it at all.
            known_starts > 100 && backfilled > 5 && earlier > 0,
            "{known_starts} known starts, {backfilled} backfilled, {earlier} earlier"
        );
    }

    /// The strategy is worth its cases: over a fixed sample they reach every reason, reservations,
    /// many assignments, and many jobs a bounded pass leaves to [`Rest::place`].
    #[test]
    fn the_cases_reach_every_rule() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = case();
        let (mut reasons, mut reservations, mut assignments) = (std::collections::BTreeSet::new(), 0, 0);
        let (accounts, no_reservations) = (HashMap::new(), Reservations::default());
        let mut not_looked_at = 0;
        for _ in 0..1000 {
            let Case { queued, devices, usage, limits } = strategy.new_tree(&mut runner).expect("a case").current();
            // What a pass that stops after two jobs in line leaves to `Rest::place`.
            let bounds = Bounds {
                usage: &usage,
                limits: &limits,
                accounts: &accounts,
                reservations: &no_reservations,
                depth: 2,
            };
            not_looked_at += plan_lines(lines_of(&queued), &devices, &bounds, &|_| None).1.left();
            let plan = plan(&queued, &devices, &usage, &limits);
            reasons.extend(
                plan.waiting.iter().map(|waiting| std::mem::discriminant(&waiting.reason)).map(|d| format!("{d:?}")),
            );
            reservations += usize::from(plan.reserved.is_some());
            assignments += plan.assignments.len();
        }
        assert_eq!(reasons.len(), 7, "every kind of reason occurs");
        assert!(reservations > 100 && assignments > 300, "{reservations} reservations, {assignments} assignments");
        assert!(not_looked_at > 1000, "{not_looked_at} jobs placed when asked, past a bounded pass");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(50))]

        /// The closed form against a midpoint-rule integral of `2^(-(now - t)/h)`.
        #[test]
        fn decayed_usage_is_the_integral_of_the_decay(
            now in 0.0..100_000.0f64,
            half_life in 60.0..20_000.0f64,
            runs in vec((0.0..50_000.0f64, 0.0..30_000.0f64), 1..4),
        ) {
            let numeric = |runs: &[(f64, f64)], now: f64, half_life: f64| -> f64 {
                runs.iter()
                    .map(|&(start, end)| {
                        let end = end.min(now);
                        let steps = 100_000;
                        let width = (end - start).max(0.0) / steps as f64;
                        (0..steps).map(|i| 2f64.powf(-(now - (start + (i as f64 + 0.5) * width)) / half_life) * width).sum::<f64>()
                    })
                    .sum()
            };
            // Runs that started up to 50 000 s ago and lasted up to 30 000 s (some still running).
            let runs: Vec<(f64, f64)> = runs.into_iter().map(|(ago, length)| (now - ago, now - ago + length)).collect();
            let (exact, approximate) = (decayed_usage(&runs, now, half_life), numeric(&runs, now, half_life));
            prop_assert!(
                (exact - approximate).abs() <= 1e-6 * approximate.max(1.0),
                "{:?} now {} h {}: {} vs {}", runs, now, half_life, exact, approximate
            );
        }
    }
    #[test]
    fn decayed_usage_halves_with_each_half_life() {
        let hour = 3600.0;
        let now = 10.0 * hour;
        let recent = decayed_usage(&[(now - 60.0, now)], now, hour);
        let older = decayed_usage(&[(now - hour - 60.0, now - hour)], now, hour);
        assert!((recent / older - 2.0).abs() < 1e-12, "{recent} {older}");
        assert!((recent - 60.0).abs() < 1.0, "a fresh minute counts about a minute: {recent}");
        // A job still running counts up to now only; an infinite half-life counts plain seconds.
        assert_eq!(decayed_usage(&[(now - 60.0, now + 600.0)], now, hour), recent);
        assert_eq!(decayed_usage(&[(0.0, 60.0), (100.0, 130.0)], now, f64::INFINITY), 90.0);
        assert_eq!(decayed_usage(&[(0.0, 60.0)], now, 0.0), 0.0);
        assert_eq!(decayed_usage(&[], now, hour), 0.0);
        // Tiny runs keep their precision.
        let tick = decayed_usage(&[(now - 1e-6, now)], now, hour);
        assert!((tick / 1e-6 - 1.0).abs() < 1e-6, "{tick}");
    }
}
