//! `GET /metrics`: Prometheus text format (version 0.0.4) for the box's admin: jobs by state and
//! by user, running jobs per device, GPU memory and utilisation from NVML, and each user's
//! fair-share usage. Public like the queue itself; it carries no job content.

use super::{ApiError, AppState};
use crate::domain::JobState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Quotes a label value as the exposition format wants (backslash, quote and newline escaped).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `GET /metrics`.
pub async fn prometheus(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    let counts = state.store.job_counts().await?;
    let mut by_state: BTreeMap<&str, i64> = JobState::ALL.iter().map(|state| (state.as_str(), 0)).collect();
    for (_, job_state, count) in &counts {
        *by_state.entry(job_state.as_str()).or_default() += count;
    }
    family(&mut out, "trainq_jobs", "gauge", "Jobs by state (queue length = state=\"queued\").");
    for (job_state, count) in &by_state {
        let _ = writeln!(out, "trainq_jobs{{state=\"{job_state}\"}} {count}");
    }
    family(&mut out, "trainq_user_jobs", "gauge", "Jobs by owner and state.");
    for (owner, job_state, count) in &counts {
        let owner = label(owner.as_deref().unwrap_or(""));
        let _ = writeln!(out, "trainq_user_jobs{{user=\"{owner}\",state=\"{job_state}\"}} {count}");
    }
    let running = state.store.jobs(Some(JobState::Running)).await?;
    family(&mut out, "trainq_device_running_jobs", "gauge", "Running jobs per device.");
    for slot in state.inventory.slots() {
        let here = running.iter().filter(|job| job.device.as_deref() == Some(slot.id.as_str())).count();
        let _ = writeln!(out, "trainq_device_running_jobs{{device=\"{}\"}} {here}", label(&slot.id));
    }
    let readings: Vec<_> =
        state.inventory.slots().iter().filter_map(|slot| Some((slot, state.inventory.reading(slot)?))).collect();
    if !readings.is_empty() {
        family(&mut out, "trainq_gpu_memory_used_bytes", "gauge", "GPU memory in use (by anyone).");
        for (slot, reading) in &readings {
            let _ = writeln!(out, "trainq_gpu_memory_used_bytes{{device=\"{}\"}} {}", label(&slot.id), reading.memory_used);
        }
        family(&mut out, "trainq_gpu_memory_total_bytes", "gauge", "GPU memory in total.");
        for (slot, reading) in &readings {
            let _ = writeln!(out, "trainq_gpu_memory_total_bytes{{device=\"{}\"}} {}", label(&slot.id), reading.memory_total);
        }
        family(&mut out, "trainq_gpu_utilization_ratio", "gauge", "GPU utilisation over NVML's last sample period, 0 to 1.");
        for (slot, reading) in &readings {
            let ratio = f64::from(reading.utilization_percent) / 100.0;
            let _ = writeln!(out, "trainq_gpu_utilization_ratio{{device=\"{}\"}} {ratio}", label(&slot.id));
        }
    }
    let now = crate::store::unix_now();
    let usage = crate::scheduler::usage_by_user(&state.store, now, state.limits.half_life_secs).await?;
    family(
        &mut out,
        "trainq_user_usage_device_seconds",
        "gauge",
        "Fair-share usage: device-seconds of each user's runs, each second weighted by 2^(-age/half-life).",
    );
    let usage: BTreeMap<_, _> = usage.into_iter().collect();
    for (user, seconds) in usage {
        let _ = writeln!(out, "trainq_user_usage_device_seconds{{user=\"{}\"}} {seconds:.3}", label(&user));
    }
    let disk = state.disk.clone();
    let spaces = tokio::task::spawn_blocking(move || disk.measure_all()).await.unwrap_or_default();
    let per_folder: [(&str, &str, fn(&crate::disk::Space) -> u64); 2] = [
        ("trainq_disk_free_bytes", "Free bytes on the filesystem of each folder trainq writes (data, jobs, cache).", |space| space.free_bytes),
        ("trainq_disk_size_bytes", "Size of the filesystem of each folder trainq writes.", |space| space.total_bytes),
    ];
    for (name, help, value) in per_folder {
        family(&mut out, name, "gauge", help);
        for space in &spaces {
            let (role, path) = (space.role.as_str(), label(&space.path.to_string_lossy()));
            let _ = writeln!(out, "{name}{{folder=\"{role}\",path=\"{path}\"}} {}", value(space));
        }
    }
    family(&mut out, "trainq_disk_low_water_bytes", "gauge", "No job starts unless this much would stay free after its writes.");
    let _ = writeln!(out, "trainq_disk_low_water_bytes {}", state.disk.settings().low_water_bytes);
    family(&mut out, "trainq_disk_reserve_held", "gauge", "1 while the disk reserve is in place; 0 while the server lives on it (writes answer 507).");
    let _ = writeln!(out, "trainq_disk_reserve_held {}", u8::from(state.disk.reserve_held()));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
