//! What happened since the server started, for Prometheus: jobs finished by outcome, out-of-memory
//! retries, HTTP requests by route and status, and histograms of queue wait, run time, epoch
//! time and request latency. Counted where each thing happens (the supervisor, the scheduler,
//! the HTTP layer) and read by `GET /metrics`, so a scrape costs the same however many jobs the
//! queue has ever held. Counters start at zero with each server, as Prometheus expects (its
//! `rate()` and `increase()` handle the reset).
//!
//! Built on the `prometheus-client` crate, which writes the exposition formats; this module only
//! names the instruments (Prometheus's naming guide: base units, `_total` on counters, no label
//! names inside metric names) and knows nothing of axum or SQL.

use crate::domain::JobState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// Waiting in the queue: seconds (a free device) to a day (a full class before a deadline).
const QUEUE_WAIT_BUCKETS: [f64; 14] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0];
/// A job's device time: seconds (a failure at start) to a day.
const RUN_BUCKETS: [f64; 14] =
    [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0];
/// One epoch: under a second (a small head on cached features) to an hour (a big model on a CPU).
const EPOCH_BUCKETS: [f64; 12] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0];
/// An API answer: a millisecond (a cached page) to seconds (a plot, an upload's prediction).
const HTTP_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `route` label of a request no route matched (a missing API path, the dashboard's files):
/// raw paths would give every probe and typo its own series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The server's counters and histograms, one set per process. Cheap to clone: every clone counts
/// into the same instruments.
#[derive(Clone)]
pub struct Telemetry {
    registry: Arc<Registry>,
    jobs_finished: Family<OutcomeLabels, Counter>,
    oom_retries: Counter,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    queue_wait: Histogram,
    job_run: Histogram,
    epoch: Histogram,
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry::new()
    }
}

/// The exposition format a scrape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what `curl` and `promtool check metrics` read, and the default.
    PrometheusText,
    /// OpenMetrics 1.0 text (`# UNIT` lines, `# EOF`), when the scraper's `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

impl Telemetry {
    /// Fresh instruments, all at zero, and `trainq_build_info`.
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "trainq_jobs_finished",
            "Jobs that reached a final state since the server started, by outcome (succeeded, failed, cancelled); a re-queue is not an end",
            jobs_finished.clone(),
        );
        let oom_retries = Counter::default();
        registry.register(
            "trainq_oom_retries",
            "Runs that ran out of memory and were re-queued with half the batch (retry_on_oom)",
            oom_retries.clone(),
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "trainq_http_requests",
            "HTTP requests answered, by route template (\"unmatched\" when no route matched), method and status",
            http_requests.clone(),
        );
        let http_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(HTTP_BUCKETS));
        registry.register_with_unit(
            "trainq_http_request_duration",
            "Time to an HTTP response's head (a stream's body not counted) by route template and method; submit: POST /api/jobs",
            Unit::Seconds,
            http_duration.clone(),
        );
        let queue_wait = Histogram::new(QUEUE_WAIT_BUCKETS);
        registry.register_with_unit(
            "trainq_queue_wait",
            "Time from a job's submission to its first start on a device",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let job_run = Histogram::new(RUN_BUCKETS);
        registry.register_with_unit(
            "trainq_job_run",
            "Device time of a job that ended: its runs from start to end, summed over retries and resumes",
            Unit::Seconds,
            job_run.clone(),
        );
        let epoch = Histogram::new(EPOCH_BUCKETS);
        registry.register_with_unit(
            "trainq_epoch",
            "Wall time of one training epoch with its validation, as the worker timed it (a resumed worker's replayed curves skipped)",
            Unit::Seconds,
            epoch.clone(),
        );
        registry.register(
            "trainq_build",
            "The running trainq's version; the value is always 1",
            Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION") }),
        );
        Telemetry {
            registry: Arc::new(registry),
            jobs_finished,
            oom_retries,
            http_requests,
            http_duration,
            queue_wait,
            job_run,
            epoch,
        }
    }

    /// A job reached `state`; only the final states count (queued and running are no end).
    pub fn job_finished(&self, state: JobState) {
        let outcome = match state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Timeout => "timeout",
            JobState::Queued | JobState::Running => return,
        };
        self.jobs_finished.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A run out of memory went back to the queue with half the batch.
    pub fn oom_retried(&self) {
        self.oom_retries.inc();
    }

    /// A job started for the first time, `seconds` after it was submitted.
    pub fn job_waited(&self, seconds: f64) {
        self.queue_wait.observe(seconds.max(0.0));
    }

    /// A job ended after `seconds` on devices.
    pub fn job_ran(&self, seconds: f64) {
        self.job_run.observe(seconds.max(0.0));
    }

    /// A worker finished an epoch in `seconds`.
    pub fn epoch_took(&self, seconds: f64) {
        if seconds.is_finite() {
            self.epoch.observe(seconds.max(0.0));
        }
    }

    /// An HTTP request to `route` (a template such as `/api/jobs/{id}`, or [`UNMATCHED_ROUTE`])
    /// was answered with `status` after `seconds`. Methods outside HTTP's usual ones count as
    /// `other`, so a client cannot invent label values.
    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        let route = route.to_string();
        self.http_requests.get_or_create(&RequestLabels { route: route.clone(), method, status }).inc();
        self.http_duration.get_or_create(&RouteLabels { route, method }).observe(seconds.max(0.0));
    }

    /// The exposition of these instruments followed by `gauges` (what a scrape measured just
    /// now: queue, devices, disks), in `format`.
    pub fn encode(&self, gauges: &Registry, format: Format) -> String {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut out = String::new();
        let written = match format {
            Format::PrometheusText => prometheus_text::encode(&mut out, gauges)
                .and_then(|()| prometheus_text::encode(&mut out, &self.registry)),
            Format::OpenMetrics => text::encode_registry(&mut out, gauges)
                .and_then(|()| text::encode_registry(&mut out, &self.registry))
                .and_then(|()| text::encode_eof(&mut out)),
        };
        written.expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_naming_guide() {
        let telemetry = Telemetry::new();
        telemetry.job_finished(JobState::Failed);
        telemetry.job_finished(JobState::Queued);
        telemetry.oom_retried();
        telemetry.http_request("/api/jobs/{id}", "BREW", 404, 0.002);
        telemetry.job_waited(90.0);
        let text = telemetry.encode(&Registry::default(), Format::PrometheusText);
        assert!(text.contains("# TYPE trainq_jobs_finished_total counter\n"), "{text}");
        assert!(text.contains("trainq_jobs_finished_total{outcome=\"failed\"} 1\n"), "{text}");
        assert!(!text.contains("outcome=\"queued\""), "{text}");
        assert!(text.contains("trainq_oom_retries_total 1\n"), "{text}");
        assert!(
            text.contains("trainq_http_requests_total{route=\"/api/jobs/{id}\",method=\"other\",status=\"404\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("trainq_queue_wait_seconds_bucket{le=\"60\"} 0\n"), "{text}");
        assert!(text.contains("trainq_queue_wait_seconds_bucket{le=\"120\"} 1\n"), "{text}");
        assert!(text.contains("trainq_queue_wait_seconds_count 1\n"), "{text}");
        assert!(
            text.contains(&format!("trainq_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(!text.contains("..\n"), "the crate ends each HELP with a period: {text}");
        for line in text.lines().filter(|line| line.starts_with("# TYPE")) {
            let help = line.replacen("# TYPE", "# HELP", 1);
            let name = help.rsplit_once(' ').unwrap().0;
            assert!(text.contains(&format!("{name} ")), "every family has HELP: {line}");
        }
    }

    #[test]
    fn openmetrics_ends_with_eof_once() {
        let text = Telemetry::new().encode(&Registry::default(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.contains("# UNIT trainq_epoch_seconds seconds\n"), "{text}");
    }
}
