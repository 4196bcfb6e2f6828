//! Device-hour budgets: how much device time each student may be charged per budget period, and
//! the arithmetic that decides whether one more job fits.
//!
//! **The charge rule.** A run is charged its device time × the share of the device it held. A
//! CPU slot, and a GPU that is handed out whole (`--max-jobs-per-gpu 1`), is held whole: share 1.
//! On a GPU that packs several jobs, the share is the job's granted memory over the GPU's memory
//! (at most 1): that is what the job keeps from others, and it is fixed when the run starts, so a
//! student can predict the charge of a job before it starts whether or not neighbours arrive.
//!
//! **The admission rule.** A job starts only if what its owner was charged in the period
//! (`used`), plus what their running jobs may still be charged (`held`: the rest of each one's
//! time limit × its share), plus its own whole time limit (the most it could be charged, share 1)
//! is within the budget. A job whose limit exceeds `budget - used` could not start even with
//! nothing else running: its submission is refused. Admins have no budget.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Seconds in an hour: budgets are set and shown in device-hours.
pub const SECONDS_PER_HOUR: f64 = 3600.0;

/// Which kind of device a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// GPUs (local or Slurm's GPU slots): `--gpu-hours-per-user`.
    Gpu,
    /// CPU slots: `--cpu-hours-per-user`.
    Cpu,
}

impl DeviceClass {
    /// The unit as students read it: "GPU-h" or "CPU-h".
    pub fn unit(self) -> &'static str {
        match self {
            DeviceClass::Gpu => "GPU-h",
            DeviceClass::Cpu => "CPU-h",
        }
    }
}

/// Where the budget period starts: a rolling window of days, or a fixed date (a term's first day).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetPeriod {
    /// The last `days` days, counted back from now.
    Rolling {
        /// Length of the window.
        days: u32,
    },
    /// Everything since this moment (Unix seconds, midnight UTC of the given date).
    Since {
        /// The start, Unix seconds.
        start_unix_seconds: f64,
    },
}

impl BudgetPeriod {
    /// The Unix second at which the period that contains `now` began.
    pub fn start(self, now: f64) -> f64 {
        match self {
            BudgetPeriod::Rolling { days } => now - f64::from(days) * 86_400.0,
            BudgetPeriod::Since { start_unix_seconds } => start_unix_seconds,
        }
    }
}

impl Default for BudgetPeriod {
    /// Thirty rolling days: a month of course work.
    fn default() -> Self {
        BudgetPeriod::Rolling { days: 30 }
    }
}

impl FromStr for BudgetPeriod {
    type Err = String;

    /// `"30"` (rolling days) or `"2026-09-01"` (a start date, UTC).
    fn from_str(text: &str) -> Result<BudgetPeriod, String> {
        let text = text.trim();
        if let Ok(days) = text.parse::<u32>() {
            if days == 0 {
                return Err(String::from("a budget period of 0 days is empty; give a number of days such as 30, or a start date such as 2026-09-01"));
            }
            return Ok(BudgetPeriod::Rolling { days });
        }
        let format =
            time::format_description::parse_borrowed::<2>("[year]-[month]-[day]").expect("a valid description");
        let date = time::Date::parse(text, &format)
            .map_err(|_| format!("`{text}` is neither a number of days (30) nor a start date (2026-09-01)"))?;
        let start = date.midnight().assume_utc().unix_timestamp() as f64;
        Ok(BudgetPeriod::Since { start_unix_seconds: start })
    }
}

/// Reads an amount of device-hours: `"40h"`, `"40"` or `"2.5h"`; refuses negative, non-finite
/// and unreadable amounts with a message saying what to write.
pub fn parse_hours(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let number = trimmed.strip_suffix('h').unwrap_or(trimmed).trim();
    let hours: f64 =
        number.parse().map_err(|_| format!("`{trimmed}` is not an amount of hours; write one such as \"40h\""))?;
    check_hours(hours).map_err(|message| format!("`{trimmed}` {message}"))?;
    Ok(hours)
}

/// Whether `hours` can be a budget: finite and not negative (0 allows no jobs at all).
pub fn check_hours(hours: f64) -> Result<(), String> {
    if !hours.is_finite() {
        return Err(String::from("is not a finite number of hours; give one such as 40"));
    }
    if hours < 0.0 {
        return Err(String::from("is negative; a budget is 0 or more hours, such as 40"));
    }
    Ok(())
}

/// The share of a device a job holds ([module docs](self)): 1 on a CPU slot or a GPU handed out
/// whole; its memory over the GPU's on a GPU that packs jobs.
pub fn charge_share(gpu_memory_bytes: Option<u64>, packs: bool, job_memory_bytes: u64) -> f64 {
    match gpu_memory_bytes {
        Some(total) if packs && total > 0 => (job_memory_bytes as f64 / total as f64).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// One user's budget in one period, in device-seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Account {
    /// Which devices it counts.
    pub class: DeviceClass,
    /// The budget: the server's `--*-hours-per-user`, or the admin's override for this user.
    pub budget_seconds: f64,
    /// Charged in the period so far (running jobs up to now).
    pub used_seconds: f64,
    /// What running jobs may still be charged: the rest of their time limits × their shares.
    pub held_seconds: f64,
}

impl Account {
    /// What is neither used nor held (never negative).
    pub fn left_seconds(&self) -> f64 {
        (self.budget_seconds - self.used_seconds - self.held_seconds).max(0.0)
    }

    /// Whether a job that may be charged up to `job_seconds` may start now.
    pub fn admits(&self, job_seconds: f64) -> bool {
        self.used_seconds + self.held_seconds + job_seconds <= self.budget_seconds + 1e-6
    }

    /// Whether such a job could start even with nothing else running: if not, it never fits in
    /// this period and is refused at submission.
    pub fn could_ever_admit(&self, job_seconds: f64) -> bool {
        self.used_seconds + job_seconds <= self.budget_seconds + 1e-6
    }

    /// Why a job of `job_seconds` waits, in whole seconds (a [`crate::scheduler::policy`] reason
    /// must be `Copy` and `Eq`).
    pub fn over(&self, job_seconds: f64) -> OverBudget {
        let whole = |seconds: f64| seconds.max(0.0).round() as u64;
        OverBudget {
            class: self.class,
            used_seconds: whole(self.used_seconds),
            held_seconds: whole(self.held_seconds),
            budget_seconds: whole(self.budget_seconds),
            job_seconds: whole(job_seconds),
        }
    }
}

/// A job that does not fit its owner's budget, worded for them ([`fmt::Display`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// Which budget.
    pub class: DeviceClass,
    /// Charged in the period.
    pub used_seconds: u64,
    /// What the owner's running jobs may still be charged.
    pub held_seconds: u64,
    /// The budget.
    pub budget_seconds: u64,
    /// The most this job may be charged (its time limit).
    pub job_seconds: u64,
}

/// Hours with one decimal, without a trailing ".0": "19.6", "20".
pub fn hours(seconds: f64) -> String {
    let text = format!("{:.1}", seconds / SECONDS_PER_HOUR);
    text.strip_suffix(".0").map(str::to_string).unwrap_or(text)
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget: {} of {} {} used",
            hours(self.used_seconds as f64),
            hours(self.budget_seconds as f64),
            self.class.unit()
        )?;
        if self.held_seconds > 0 {
            write!(f, " and {} h held by your running jobs", hours(self.held_seconds as f64))?;
        }
        write!(f, ", this job may take up to {} h", hours(self.job_seconds as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(budget_hours: f64, used_hours: f64, held_hours: f64) -> Account {
        Account {
            class: DeviceClass::Gpu,
            budget_seconds: budget_hours * SECONDS_PER_HOUR,
            used_seconds: used_hours * SECONDS_PER_HOUR,
            held_seconds: held_hours * SECONDS_PER_HOUR,
        }
    }

    #[test]
    fn a_job_starts_only_if_used_plus_held_plus_its_limit_fit() {
        let four_hours = 4.0 * SECONDS_PER_HOUR;
        assert!(account(20.0, 10.0, 6.0).admits(four_hours), "exactly at the budget fits");
        assert!(!account(20.0, 10.0, 6.5).admits(four_hours));
        assert!(account(20.0, 10.0, 6.5).could_ever_admit(four_hours), "it fits once the running job ends");
        assert!(!account(20.0, 19.6, 0.0).could_ever_admit(four_hours));
        assert_eq!(account(20.0, 19.6, 3.0).left_seconds(), 0.0, "never negative");
        assert!((account(20.0, 12.0, 3.0).left_seconds() - 5.0 * SECONDS_PER_HOUR).abs() < 1e-6);
    }

    #[test]
    fn the_waiting_reason_names_the_numbers() {
        let reason = account(20.0, 19.6, 0.0).over(4.0 * SECONDS_PER_HOUR);
        assert_eq!(reason.to_string(), "budget: 19.6 of 20 GPU-h used, this job may take up to 4 h");
        let reason = Account { class: DeviceClass::Cpu, ..account(2.0, 0.5, 1.0) }.over(1800.0);
        assert_eq!(
            reason.to_string(),
            "budget: 0.5 of 2 CPU-h used and 1 h held by your running jobs, this job may take up to 0.5 h"
        );
    }

    #[test]
    fn the_share_is_whole_unless_a_gpu_packs_jobs() {
        assert_eq!(charge_share(None, true, 5), 1.0, "a CPU slot is held whole");
        assert_eq!(charge_share(Some(40), false, 10), 1.0, "a GPU handed out whole is held whole");
        assert_eq!(charge_share(Some(40), true, 10), 0.25, "a packed job pays its memory share");
        assert_eq!(charge_share(Some(40), true, 80), 1.0, "never more than the device");
    }

    #[test]
    fn hours_and_periods_parse_and_bad_ones_say_why() {
        assert_eq!(parse_hours("40h"), Ok(40.0));
        assert_eq!(parse_hours(" 2.5 "), Ok(2.5));
        assert!(parse_hours("-3h").unwrap_err().contains("negative"));
        assert!(parse_hours("lots").unwrap_err().contains("not an amount of hours"));
        assert!(parse_hours("inf").is_err());
        assert_eq!("30".parse::<BudgetPeriod>(), Ok(BudgetPeriod::Rolling { days: 30 }));
        assert_eq!(
            "2026-09-01".parse::<BudgetPeriod>(),
            Ok(BudgetPeriod::Since { start_unix_seconds: 1_788_220_800.0 })
        );
        assert!("0".parse::<BudgetPeriod>().is_err());
        assert!("next term".parse::<BudgetPeriod>().unwrap_err().contains("start date"));
        assert_eq!(BudgetPeriod::Rolling { days: 1 }.start(100_000.0), 13_600.0);
    }
}
