//! Device-hour budgets at work: each user's [`Account`] for the current period, read from the
//! store's runs and overrides with the server's settings, for the scheduler (which starts a job
//! only if it fits) and the API (`GET /api/me`, and the 422 of a job that could never fit).
//! The rules and their arithmetic are [`crate::domain::budget`]'s; this module only gathers the
//! numbers.

use crate::devices::{DeviceKind, Inventory};
use crate::domain::budget::{charge_share, Account, BudgetPeriod, DeviceClass, SECONDS_PER_HOUR};
use crate::domain::{Job, TimeLimit};
use crate::store::{BudgetHolder, ChargedRun, Store, StoreError};
use std::collections::HashMap;

/// The server's budget settings (`--gpu-hours-per-user`, `--cpu-hours-per-user`,
/// `--budget-period`), with what the charge rule needs of the box.
#[derive(Debug, Clone)]
pub struct BudgetPolicy {
    /// Each user's GPU-hours per period, unless an admin set theirs; `None`: no GPU budget.
    pub gpu_hours: Option<f64>,
    /// Each user's CPU-hours per period, unless an admin set theirs; `None`: no CPU budget.
    pub cpu_hours: Option<f64>,
    /// Where the period starts.
    pub period: BudgetPeriod,
    /// The limit of jobs that have none of their own (required with a budget): what such a job
    /// may be charged at most.
    pub default_time_limit: TimeLimit,
    /// Whether GPUs pack several jobs (`--max-jobs-per-gpu` over 1): then a job pays its memory
    /// share of the GPU.
    pub gpus_pack: bool,
    /// Which devices this box's jobs run on, so which budget counts.
    pub class: DeviceClass,
    /// Each GPU's memory by device id (the share of a packed job).
    pub gpu_memory: HashMap<String, u64>,
}

impl BudgetPolicy {
    /// The settings for `inventory`'s devices: GPUs (local or Slurm's) count GPU-hours, CPU
    /// slots CPU-hours. `None` when no budget applies to this box's devices.
    pub fn new(
        gpu_hours: Option<f64>,
        cpu_hours: Option<f64>,
        period: BudgetPeriod,
        default_time_limit: TimeLimit,
        max_jobs_per_gpu: usize,
        inventory: &Inventory,
    ) -> BudgetPolicy {
        let gpus = inventory.slots().iter().any(|slot| match slot.kind {
            DeviceKind::Gpu { .. } => true,
            DeviceKind::Slurm { gpus } => gpus > 0,
            DeviceKind::Cpu => false,
        });
        BudgetPolicy {
            gpu_hours,
            cpu_hours,
            period,
            default_time_limit,
            gpus_pack: max_jobs_per_gpu > 1,
            class: if gpus { DeviceClass::Gpu } else { DeviceClass::Cpu },
            gpu_memory: inventory
                .slots()
                .iter()
                .filter_map(|slot| slot.memory_total.map(|bytes| (slot.id.clone(), bytes)))
                .collect(),
        }
    }

    /// `holder`'s budget in seconds for this box's devices; `None` for admins and where no
    /// budget is set.
    pub fn budget_seconds(&self, holder: &BudgetHolder) -> Option<f64> {
        if holder.admin {
            return None;
        }
        let hours = match self.class {
            DeviceClass::Gpu => holder.gpu_hours.or(self.gpu_hours),
            DeviceClass::Cpu => holder.cpu_hours.or(self.cpu_hours),
        }?;
        Some(hours * SECONDS_PER_HOUR)
    }

    /// The share of `device` a job of `memory_bytes` holds.
    fn share(&self, device: &str, memory_bytes: u64) -> f64 {
        charge_share(self.gpu_memory.get(device).copied(), self.gpus_pack, memory_bytes)
    }

    /// The most a job may be charged: its whole limit (its own, else the default).
    pub fn job_seconds(&self, limit: Option<TimeLimit>) -> f64 {
        limit.unwrap_or(self.default_time_limit).seconds() as f64
    }

    /// What `runs` charged each owner in the period that contains `now`.
    fn used(&self, runs: &[ChargedRun], now: f64) -> HashMap<String, f64> {
        let start = self.period.start(now);
        let mut used: HashMap<String, f64> = HashMap::new();
        for run in runs {
            let seconds = (run.ended_at.unwrap_or(now).min(now) - run.started_at.max(start)).max(0.0);
            *used.entry(run.owner.clone()).or_default() += seconds * self.share(&run.device, run.memory_bytes);
        }
        used
    }

    /// Every user's account who has a budget: charged runs, overrides and the running jobs'
    /// remaining limits, in three reads (the running jobs are as many as the devices hold).
    /// `owner` narrows it to one user.
    pub async fn accounts(
        &self,
        store: &Store,
        running: &[Job],
        owner: Option<&str>,
        now: f64,
    ) -> Result<HashMap<String, Account>, StoreError> {
        let holders = store.budget_holders().await?;
        let runs = store.charged_runs_since(self.period.start(now), owner).await?;
        let used = self.used(&runs, now);
        let mut accounts: HashMap<String, Account> = holders
            .iter()
            .filter(|(name, _)| owner.is_none_or(|owner| owner == name.as_str()))
            .filter_map(|(name, holder)| {
                let budget_seconds = self.budget_seconds(holder)?;
                let used_seconds = used.get(name).copied().unwrap_or(0.0);
                Some((name.clone(), Account { class: self.class, budget_seconds, used_seconds, held_seconds: 0.0 }))
            })
            .collect();
        for job in running {
            let Some(account) = job.owner.as_ref().and_then(|owner| accounts.get_mut(owner)) else { continue };
            let device = job.device.as_deref().unwrap_or_default();
            let rest = (self.job_seconds(job.time_limit) - store.device_seconds_used(job.id).await?).max(0.0);
            account.held_seconds += rest * self.share(device, job.memory_bytes);
        }
        Ok(accounts)
    }

    /// One user's account now, `None` without a budget (admins, or none set).
    pub async fn account_of(&self, store: &Store, user: &str) -> Result<Option<Account>, StoreError> {
        let running: Vec<Job> = store
            .jobs(Some(crate::domain::JobState::Running))
            .await?
            .into_iter()
            .filter(|job| job.owner.as_deref() == Some(user))
            .collect();
        Ok(self.accounts(store, &running, Some(user), crate::store::unix_now()).await?.remove(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(class: DeviceClass, gpus_pack: bool) -> BudgetPolicy {
        BudgetPolicy {
            gpu_hours: Some(20.0),
            cpu_hours: Some(2.0),
            period: BudgetPeriod::Rolling { days: 1 },
            default_time_limit: TimeLimit::parse("1h").unwrap(),
            gpus_pack,
            class,
            gpu_memory: HashMap::from([(String::from("gpu0"), 40)]),
        }
    }

    fn run(owner: &str, device: &str, memory_bytes: u64, started_at: f64, ended_at: Option<f64>) -> ChargedRun {
        ChargedRun { owner: owner.into(), device: device.into(), memory_bytes, started_at, ended_at }
    }

    #[test]
    fn runs_are_charged_their_time_in_the_period_times_their_share() {
        let now = 200_000.0;
        let start = now - 86_400.0;
        let runs = [
            run("a", "gpu0", 10, start - 100.0, Some(start + 100.0)), // only its part in the period
            run("a", "gpu0", 20, now - 50.0, None),                   // running: up to now
            run("b", "gpu0", 40, now - 10.0, Some(now)),
        ];
        let packed = policy(DeviceClass::Gpu, true).used(&runs, now);
        assert!((packed["a"] - (100.0 * 0.25 + 50.0 * 0.5)).abs() < 1e-9, "{packed:?}");
        assert!((packed["b"] - 10.0).abs() < 1e-9);
        let whole = policy(DeviceClass::Gpu, false).used(&runs, now);
        assert!((whole["a"] - 150.0).abs() < 1e-9, "a GPU handed out whole is charged whole");
    }

    #[test]
    fn admins_are_exempt_and_overrides_win() {
        let policy = policy(DeviceClass::Cpu, false);
        let student = BudgetHolder::default();
        assert_eq!(policy.budget_seconds(&student), Some(2.0 * 3600.0));
        let raised = BudgetHolder { cpu_hours: Some(5.0), gpu_hours: Some(1.0), admin: false };
        assert_eq!(policy.budget_seconds(&raised), Some(5.0 * 3600.0), "the CPU box counts the CPU override");
        assert_eq!(policy.budget_seconds(&BudgetHolder { admin: true, ..raised }), None);
        let no_cpu_budget = BudgetPolicy { cpu_hours: None, ..policy };
        assert_eq!(no_cpu_budget.budget_seconds(&student), None);
    }
}
