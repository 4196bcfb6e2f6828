//! When will a queued job start? Each device is a number of lanes (a CPU slot one, a GPU
//! `max_jobs_per_gpu`); a lane frees when its running job's remaining epochs are done at that
//! job's measured pace; queued jobs then take the earliest lane in the plan's order, each lasting
//! its epochs times the mean epoch time of similar finished jobs (same backbone, image size and
//! batch size). Where nothing similar was ever measured, the ETA is unknown rather than invented.
//!
//! Time limits bound both: a job is stopped at its limit, so a running job's lane frees by the
//! rest of its limit at the latest, and a queued job lasts at most its limit. Where a job's pace
//! is unknown but its limit known, the limit stands in for it: the ETA is then the latest start.

use super::policy::{Capacity, DeviceState, Limits, Plan};
use super::queue::{similarity_key, Queue};
use crate::domain::{Job, JobId, JobSpec, JobState};
use crate::store::EpochTiming;
use std::collections::HashMap;

fn total_epochs(spec: &JobSpec) -> u32 {
    spec.total_epochs()
}

/// Seconds from now until each waiting job of `plan` is expected to start.
pub(super) fn start_times<U>(
    timings: &[EpochTiming],
    running: &[Job],
    limit_left: &HashMap<JobId, f64>,
    queued: &Queue,
    plan: &Plan<JobId, &str>,
    devices: &[DeviceState<&str, U>],
    limits: &Limits,
) -> HashMap<JobId, f64> {
    let mut similar: HashMap<String, (f64, u32)> = HashMap::new();
    for timing in timings.iter().filter(|timing| timing.state == JobState::Succeeded) {
        let entry = similar.entry(similarity_key(&timing.spec)).or_default();
        entry.0 += timing.mean_seconds * f64::from(timing.epochs);
        entry.1 += timing.epochs;
    }
    let pace_of = |key: &str| similar.get(key).map(|(seconds, epochs)| seconds / f64::from(*epochs.max(&1)));
    let pace = |spec: &JobSpec| pace_of(&similarity_key(spec));
    let own: HashMap<JobId, (u32, f64)> =
        timings.iter().map(|timing| (timing.id, (timing.epochs, timing.mean_seconds))).collect();
    // Free time (seconds from now) of every lane; `None` = unknown.
    let mut lanes: Vec<Option<f64>> = Vec::new();
    for device in devices {
        let count = match device.capacity {
            Capacity::Slot => 1,
            Capacity::Gpu { .. } => limits.max_jobs_per_gpu.max(1),
        };
        let mut device_lanes = vec![Some(0.0); count];
        let here = running.iter().filter(|job| job.device.as_deref() == Some(device.id));
        for (lane, job) in device_lanes.iter_mut().zip(here) {
            let remaining = match own.get(&job.id) {
                Some((done, seconds)) => Some(f64::from(total_epochs(&job.spec).saturating_sub(*done)) * seconds),
                None => pace(&job.spec).map(|seconds| f64::from(total_epochs(&job.spec)) * seconds),
            };
            *lane = at_most(remaining, limit_left.get(&job.id).copied());
        }
        if !device.foreign_busy {
            lanes.extend(device_lanes);
        }
    }
    let mut starts = HashMap::new();
    let mut waiting: Vec<_> = plan.waiting.iter().collect();
    waiting.sort_by_key(|waiting| waiting.position);
    for waiting in waiting {
        // A job held by its budget starts when a running job of its owner ends (or an admin
        // raises the budget), which no lane's time says.
        if waiting.reason.is_permanent() || matches!(waiting.reason, super::policy::PendingReason::OverBudget(_)) {
            continue;
        }
        // The earliest known lane; an unknown one could be earlier, so it makes the ETA unknown.
        if lanes.is_empty() || lanes.iter().any(Option::is_none) {
            break;
        }
        let (index, start) = lanes
            .iter()
            .enumerate()
            .map(|(index, free)| (index, free.unwrap_or(f64::MAX)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("lanes exist");
        starts.insert(waiting.job, start);
        lanes[index] = queued.get(waiting.job).and_then(|job| {
            let paced = pace_of(&job.pace_key).map(|seconds| f64::from(job.epochs) * seconds);
            Some(start + at_most(paced, job.time_limit.map(|limit| limit.seconds() as f64))?)
        });
    }
    starts
}

/// How long a job lasts: its estimate, but no longer than its time limit (at which it is
/// stopped); the limit alone where there is no estimate; unknown without either.
fn at_most(estimate: Option<f64>, limit: Option<f64>) -> Option<f64> {
    match (estimate, limit) {
        (Some(estimate), Some(limit)) => Some(estimate.min(limit)),
        (estimate, limit) => estimate.or(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::at_most;

    #[test]
    fn a_time_limit_bounds_the_estimate_and_stands_in_for_a_missing_one() {
        assert_eq!(at_most(Some(600.0), Some(3600.0)), Some(600.0), "a job that ends before its limit");
        assert_eq!(at_most(Some(7200.0), Some(3600.0)), Some(3600.0), "stopped at its limit");
        assert_eq!(at_most(None, Some(3600.0)), Some(3600.0), "at the latest");
        assert_eq!(at_most(Some(600.0), None), Some(600.0));
        assert_eq!(at_most(None, None), None);
    }
}
