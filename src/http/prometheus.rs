//! `GET /metrics` for the box's admin, and the layer that counts HTTP requests for it.
//!
//! A scrape measures what is true now (jobs by user and state, running jobs per device, GPU
//! memory and utilisation from NVML, each user's fair-share usage and disk bytes, free bytes per
//! folder) and appends the counters and histograms of what happened since the server started
//! ([`crate::telemetry`]). `prometheus-client` writes the text: Prometheus 0.0.4 by default (what
//! `promtool check metrics` reads), OpenMetrics when the scraper's `Accept` asks for it. Names
//! follow Prometheus's naming guide (base units, `_total` on counters, no label names inside
//! metric names). Public like the queue itself; it carries no job content.
//!
//! A scrape's cost does not grow with the jobs ever submitted nor with the queue: jobs by user
//! and state are the store's running totals (no table count), then the running jobs (at most a
//! few per device), fair share's recent runs, and one `statvfs` per folder.

use super::{ApiError, AppState};
use crate::domain::JobState;
use crate::telemetry::{Format, Telemetry, UNMATCHED_ROUTE};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::registry::{Metric, Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64};

/// Reads one number of a folder's filesystem (free or total bytes).
type SpaceReading = fn(&crate::disk_space::Space) -> u64;

/// A sample's labels, in the order they are written.
type Labels = Vec<(&'static str, String)>;

/// Registers one gauge family measured by this scrape: `rows` are its label sets and values.
fn gauges<N, A>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: impl IntoIterator<Item = (Labels, N)>,
) where
    A: Atomic<N> + Default,
    Family<Labels, Gauge<N, A>>: Metric,
{
    let family = Family::<Labels, Gauge<N, A>>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).set(value);
    }
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
}

/// OpenMetrics when the scraper lists it in `Accept` (Prometheus does), else the classic text.
fn negotiate(headers: &HeaderMap) -> Format {
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|value| value.to_str().ok());
    let open_metrics =
        accept.flat_map(|value| value.split(',')).any(|item| item.trim().starts_with("application/openmetrics-text"));
    if open_metrics {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    }
}

/// `GET /metrics`.
pub async fn prometheus(State(state): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    let mut registry = Registry::default();
    // Every user with jobs has a row for every state, so a series drops to 0 instead of vanishing.
    // The store's running totals: no table count per scrape.
    let counts = state.store.job_counts().await?;
    let mut by_user: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
    for (owner, job_state, count) in &counts {
        let states = by_user
            .entry(owner.clone().unwrap_or_default())
            .or_insert_with(|| JobState::ALL.iter().map(|state| (state.as_str(), 0)).collect());
        *states.entry(job_state.as_str()).or_default() += count;
    }
    let rows = by_user.iter().flat_map(|(user, states)| {
        states
            .iter()
            .map(move |(job_state, count)| (vec![("user", user.clone()), ("state", job_state.to_string())], *count))
    });
    gauges::<i64, AtomicI64>(
        &mut registry,
        "trainq_jobs",
        "Jobs by owner and state; queue length: sum(trainq_jobs{state=\"queued\"})",
        None,
        rows,
    );
    let running = state.store.jobs(Some(JobState::Running)).await?;
    let rows = state.inventory.slots().iter().map(|slot| {
        let here = running.iter().filter(|job| job.device.as_deref() == Some(slot.id.as_str())).count();
        (vec![("device", slot.id.clone())], here as i64)
    });
    gauges::<i64, AtomicI64>(
        &mut registry,
        "trainq_running_jobs",
        "Jobs running on each device",
        None,
        rows.collect::<Vec<_>>(),
    );
    let readings: Vec<_> =
        state.inventory.slots().iter().filter_map(|slot| Some((slot, state.inventory.reading(slot)?))).collect();
    if !readings.is_empty() {
        let device = |slot: &crate::devices::DeviceSlot| vec![("device", slot.id.clone())];
        let used = readings.iter().map(|(slot, reading)| (device(slot), reading.memory_used as i64));
        gauges::<i64, AtomicI64>(
            &mut registry,
            "trainq_gpu_memory_used",
            "GPU memory in use (by anyone)",
            Some(Unit::Bytes),
            used,
        );
        let size = readings.iter().map(|(slot, reading)| (device(slot), reading.memory_total as i64));
        gauges::<i64, AtomicI64>(&mut registry, "trainq_gpu_memory_size", "GPU memory in all", Some(Unit::Bytes), size);
        let busy =
            readings.iter().map(|(slot, reading)| (device(slot), f64::from(reading.utilization_percent) / 100.0));
        gauges::<f64, AtomicU64>(
            &mut registry,
            "trainq_gpu_utilization",
            "GPU utilisation over NVML's last sample period, 0 to 1",
            Some(Unit::Other(String::from("ratio"))),
            busy,
        );
    }
    let now = crate::store::unix_now();
    let usage = crate::scheduler::usage_by_user(&state.store, now, state.limits.half_life_secs).await?;
    gauges::<f64, AtomicU64>(
        &mut registry,
        "trainq_fair_share_usage",
        "Fair-share usage: device-seconds of each user's runs, each second weighted by 2^(-age/half-life)",
        Some(Unit::Seconds),
        usage.into_iter().map(|(user, seconds)| (vec![("user", user)], seconds)),
    );
    if let Some(budgets) = &state.limits.budgets {
        // The period's runs: bounded by the period, not by every job ever run.
        let accounts = budgets.accounts(&state.store, &running, None, now).await?;
        let charged = accounts.iter().map(|(user, account)| (vec![("user", user.clone())], account.used_seconds));
        gauges::<f64, AtomicU64>(
            &mut registry,
            "trainq_user_budget_charged",
            "Device-seconds charged to each user with a budget in the current budget period (device time x share held)",
            Some(Unit::Seconds),
            charged.collect::<Vec<_>>(),
        );
        let budget = accounts.iter().map(|(user, account)| (vec![("user", user.clone())], account.budget_seconds));
        gauges::<f64, AtomicU64>(
            &mut registry,
            "trainq_user_budget",
            "Each user's device-hour budget per period, in device-seconds (admins have none)",
            Some(Unit::Seconds),
            budget.collect::<Vec<_>>(),
        );
    }
    // One row per user from the running totals, never a walk of job folders.
    let disk_usage = state.store.disk_usage().await?;
    gauges::<i64, AtomicI64>(
        &mut registry,
        "trainq_user_disk",
        "Bytes of each user's live job folders, each measured when the job ended (deleted jobs hold none)",
        Some(Unit::Bytes),
        disk_usage.into_iter().map(|(user, bytes)| (vec![("user", user)], i64::try_from(bytes).unwrap_or(i64::MAX))),
    );
    let disk = state.disk.clone();
    let spaces = tokio::task::spawn_blocking(move || disk.measure_all()).await.unwrap_or_default();
    let per_folder: [(&str, &str, SpaceReading); 2] = [
        (
            "trainq_disk_free",
            "Free bytes on the filesystem of each folder trainq writes (data, jobs, cache)",
            |space| space.free_bytes,
        ),
        ("trainq_disk_size", "Size of the filesystem of each folder trainq writes", |space| space.total_bytes),
    ];
    for (name, help, value) in per_folder {
        let rows = spaces.iter().map(|space| {
            let labels =
                vec![("folder", space.role.as_str().to_string()), ("path", space.path.to_string_lossy().into_owned())];
            (labels, value(space) as i64)
        });
        gauges::<i64, AtomicI64>(&mut registry, name, help, Some(Unit::Bytes), rows);
    }
    let settings = state.disk.settings();
    gauges::<i64, AtomicI64>(
        &mut registry,
        "trainq_disk_low_water",
        "No job starts unless this much would stay free after its writes",
        Some(Unit::Bytes),
        [(Labels::new(), settings.low_water_bytes as i64)],
    );
    gauges::<i64, AtomicI64>(
        &mut registry,
        "trainq_disk_reserve_held",
        "1 while the disk reserve is in place; 0 while the server lives on it (writes answer 507)",
        None,
        [(Labels::new(), i64::from(state.disk.reserve_held()))],
    );
    // Notifications owed and given up: two counts over the outbox index's small ranges.
    let (pending, failed) = state.store.notification_backlog().await?;
    gauges::<i64, AtomicI64>(
        &mut registry,
        "trainq_notifications",
        "Job notifications (email, webhook) still to deliver (pending) and given up after every retry (failed; GET /api/admin/notifications?state=failed)",
        None,
        [(vec![("state", String::from("pending"))], pending), (vec![("state", String::from("failed"))], failed)],
    );
    if let Some(age) = state.backups.last_good_age() {
        gauges::<f64, AtomicU64>(
            &mut registry,
            "trainq_backup_last_good_age",
            "Age of the newest good (integrity-checked) database snapshot, scheduled or through GET /api/admin/backup",
            Some(Unit::Seconds),
            [(Labels::new(), age.as_secs_f64())],
        );
    }
    let format = negotiate(&headers);
    Ok(([(header::CONTENT_TYPE, format.content_type())], state.telemetry.encode(&registry, format)))
}

/// Counts every answered request by route template (`/api/jobs/{id}`, never the raw path, so job
/// ids do not become series), method and status, with its latency. Runs after routing (a
/// `Router::layer`), where axum has put the matched route in the request's extensions.
pub async fn count_requests(State(telemetry): State<Telemetry>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = match request.extensions().get::<MatchedPath>() {
        // A nested router's fallback matches a catch-all axum names itself: no route of ours.
        Some(path) if !path.as_str().contains("__private__") => path.as_str().to_string(),
        _ => String::from(UNMATCHED_ROUTE),
    };
    let method = request.method().clone();
    let response = next.run(request).await;
    telemetry.http_request(&route, method.as_str(), response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_chosen_only_when_asked_for() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers), Format::PrometheusText);
        let prometheus =
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        headers.insert(header::ACCEPT, prometheus.parse().unwrap());
        assert_eq!(negotiate(&headers), Format::OpenMetrics);
        headers.insert(header::ACCEPT, "text/plain".parse().unwrap());
        assert_eq!(negotiate(&headers), Format::PrometheusText);
    }

    #[test]
    fn label_values_are_escaped_and_unlabelled_gauges_have_no_braces() {
        let mut registry = Registry::default();
        let awkward = vec![("path", String::from("a\"b\\c\nd"))];
        gauges::<i64, AtomicI64>(&mut registry, "trainq_disk_free", "Free", Some(Unit::Bytes), [(awkward, 7)]);
        gauges::<i64, AtomicI64>(&mut registry, "trainq_disk_reserve_held", "Held", None, [(Labels::new(), 1)]);
        let text = Telemetry::new().encode(&registry, Format::PrometheusText);
        assert!(text.contains("trainq_disk_free_bytes{path=\"a\\\"b\\\\c\\nd\"} 7\n"), "{text}");
        assert!(text.contains("\ntrainq_disk_reserve_held 1\n"), "{text}");
    }
}
