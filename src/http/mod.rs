//! The only place that knows axum: the router, shared state, and one file per resource.
//!
//! Layers, top down: the resource handlers (`jobs.rs` holds every verb of `/api/jobs` and
//! `/api/jobs/{id}`; `job_list.rs`, `outputs.rs`, `plots.rs`, `compare.rs`, `groups.rs`,
//! `report.rs`, `events.rs`, `inference.rs`, `me.rs`, `admin.rs`, `users.rs`, `catalog.rs`, `health.rs`,
//! `prometheus.rs`, `worker.rs` for relays) use `job_view.rs` (how a job is found and shown) and
//! the plumbing (`auth.rs`, `error.rs`, `extract.rs`, `etag.rs`, `csv.rs`, `assets.rs`,
//! `openapi.rs`, `security_headers.rs`, `tls_listener.rs`). Handlers only turn requests into calls of the services below (`crate::submit`,
//! `crate::retention`, the store) and their answers into HTTP. Imports point one way only (the
//! report reads the comparison, the comparison a group's summary, never back), so the modules
//! form no cycle (`tests/architecture.rs`).

mod admin;
mod assets;
mod auth;
mod backup;
mod budgets;
mod catalog;
mod compare;
mod csv;
mod dataset_import;
mod error;
mod etag;
mod events;
mod extract;
mod groups;
mod health;
mod inference;
mod job_list;
mod job_view;
mod jobs;
mod me;
mod openapi;
mod outputs;
mod plots;
mod prometheus;
mod report;
mod reservations;
#[cfg(test)]
mod router_tests;
mod security_headers;
mod tls_listener;
mod users;
mod version;
mod worker;

pub use auth::RateLimiter;
pub use error::ApiError;
pub use users::WelcomeMail;

use crate::devices::Inventory;
use crate::events::EventBus;
use crate::scheduler::SchedulerHandle;
use crate::store::Store;
use crate::supervisor::Supervisor;
use axum::routing::{get, post};
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

/// Largest accepted request body; a job spec is a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest relay batch (a few hundred log lines).
const MAX_RELAY_BYTES: usize = 8 * 1024 * 1024;
/// Largest accepted image upload (a chest film is 0.5–3 MB).
const MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;

/// Folders the API reads from.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Job folders live under `<data_dir>/jobs`.
    pub data_dir: PathBuf,
    /// Datasets root.
    pub datasets: PathBuf,
    /// Weights folder.
    pub weights: PathBuf,
    /// A folder to serve the dashboard's files from instead of the ones compiled in.
    pub static_dir: Option<PathBuf>,
    /// The worker executable (`/readyz` checks that it is there).
    pub worker_program: PathBuf,
}

/// What the admin allows each user (config flags).
#[derive(Debug)]
pub struct Limits {
    /// Per-user request budget.
    pub rate: RateLimiter,
    /// Most jobs one user may have queued or running at once.
    pub max_jobs_per_user: u32,
    /// Most epochs (all phases together) one job may ask for.
    pub max_epochs: u32,
    /// Largest image side (fixed size, or a variable-size job's `max_image_side`).
    pub max_image_side: u32,
    /// Fair share's half-life, for the usage `/metrics` reports.
    pub half_life_secs: f64,
    /// Most bytes one student's job folders may hold before their submits answer 507.
    pub max_disk_bytes_per_user: Option<u64>,
    /// Most bytes a dataset archive may unpack to (`--max-dataset-gb`).
    pub max_dataset_bytes: u64,
    /// How long a token works after it was made (`--token-ttl-days`), seconds; `None`: forever.
    pub token_ttl_secs: Option<f64>,
    /// The default time limit and the cap (`--default-time-limit`, `--max-time-limit`).
    pub time_limits: crate::domain::time_limit::TimeLimitPolicy,
    /// Device-hour budgets; `None`: none set.
    pub budgets: Option<Arc<crate::budgets::BudgetPolicy>>,
}

/// What every handler gets: the server's [`AppParts`] behind one `Arc`. axum clones the state
/// for every extractor and middleware of every request, and a clone of the parts themselves
/// counted up (and later down) some forty reference counts; profiled under a burst of
/// submissions, that was about 5 % of the server's CPU.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl From<AppParts> for AppState {
    fn from(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The server's services and settings, shared by every request through [`AppState`].
pub struct AppParts {
    /// The database.
    pub store: Store,
    /// Wakes the scheduler after a submission.
    pub scheduler: SchedulerHandle,
    /// Stops running workers on cancel.
    pub supervisor: Supervisor,
    /// The devices.
    pub inventory: Inventory,
    /// Live events, published by handlers and the supervisor, streamed by `/api/events`.
    pub events: EventBus,
    /// Folders.
    pub paths: Arc<Paths>,
    /// Per-user limits.
    pub limits: Arc<Limits>,
    /// Free space and the reserve: requests that write answer 507 while the disk is full.
    pub disk: crate::disk_space::Disk,
    /// Tokens' users, remembered for a few seconds.
    pub tokens: Arc<auth::TokenCache>,
    /// Counters and histograms `/metrics` serves; requests are counted by a layer here.
    pub telemetry: crate::telemetry::Telemetry,
    /// When the last good backup was taken, for `/metrics` and `/readyz`.
    pub backups: crate::backup::BackupStatus,
    /// TLS or plain HTTP, for the answers' headers and `/readyz`.
    pub transport: crate::tls::Transport,
    /// How new accounts get their tokens: by a welcome mail (when SMTP is set), through the
    /// notifier this wakes.
    pub welcome: users::WelcomeMail,
    /// The datasets and weights submissions found on disk in the last second.
    pub recent_inputs: crate::submit::RecentInputs,
}

impl AppParts {
    /// Submissions through `crate::submit`, with this server's store, events, disk, folders and caps.
    fn submissions(&self) -> crate::submit::Submissions<'_> {
        crate::submit::Submissions {
            store: &self.store,
            events: &self.events,
            disk: &self.disk,
            folders: crate::submit::Folders {
                data_dir: &self.paths.data_dir,
                datasets: &self.paths.datasets,
                weights: &self.paths.weights,
            },
            caps: crate::submit::Caps {
                max_jobs_per_user: self.limits.max_jobs_per_user,
                max_epochs: self.limits.max_epochs,
                max_image_side: self.limits.max_image_side,
                max_disk_bytes_per_user: self.limits.max_disk_bytes_per_user,
                time_limits: self.limits.time_limits,
            },
            budgets: self.limits.budgets.as_deref(),
            recent_inputs: &self.recent_inputs,
        }
    }

    /// Delete, gc and retention of this server's jobs, through `crate::retention`.
    fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention::new(self.store.clone(), self.supervisor.clone(), self.events.clone())
    }
}

/// The whole HTTP surface: `/api/*`, `/healthz`, and the dashboard at `/`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        // A job itself: every verb of `/api/jobs` and `/api/jobs/{id}` is `jobs.rs` (the list, `job_list.rs`).
        .route("/jobs", post(jobs::submit).get(job_list::list))
        .route("/jobs/{id}", get(jobs::show).patch(jobs::patch).delete(jobs::delete))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/resubmit", post(jobs::resubmit))
        // A job's outputs and live events.
        .route("/jobs/{id}/events", get(events::job_stream))
        .route("/jobs/{id}/metrics", get(outputs::metrics))
        .route("/jobs/{id}/plots/{file}", get(plots::job_plot))
        .route("/jobs/{id}/log", get(outputs::log))
        .route("/jobs/{id}/artifacts", get(outputs::artifacts))
        .route("/jobs/{id}/artifacts/{*name}", get(outputs::artifact))
        .route("/jobs/{id}/predictions.csv", get(outputs::predictions))
        // Several jobs at once.
        .route("/groups/{id}", get(groups::show))
        .route("/compare", get(compare::table))
        .route("/compare/plots/{file}", get(plots::compare_plot))
        .route("/report", get(report::page))
        .route("/events", get(events::stream))
        // What a spec may name.
        .route("/datasets", get(catalog::datasets))
        .route("/weights", get(catalog::weights))
        .route("/backbones", get(catalog::backbones))
        .route("/examples", get(catalog::examples))
        .route("/devices", get(catalog::devices))
        // The caller, and the admin's views.
        .route("/me", get(me::me).put(me::update_me))
        .route("/admin/notifications", get(me::admin_notifications))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/gc", post(admin::gc))
        .route("/version", get(version::version))
        .route("/admin/backup", get(backup::backup))
        // Accounts: the admin's roster and each user's own token (`users.rs`).
        .route("/admin/users", get(users::list).post(users::import))
        .route("/admin/users/{name}", axum::routing::patch(users::patch))
        .route("/admin/users/{name}/token", post(users::rotate))
        .route("/admin/reservations", get(reservations::list).post(reservations::create))
        .route("/admin/reservations/{name}", axum::routing::delete(reservations::delete))
        .route("/me/token", post(users::rotate_own))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .layer(axum::middleware::map_response(|response| too_large_as_json(response, MAX_BODY_BYTES)))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY_BYTES));
    let uploads = Router::new()
        .route("/jobs/{id}/predict", post(inference::predict))
        .route("/jobs/{id}/cam", post(inference::cam))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(|response| too_large_as_json(response, MAX_UPLOAD_BYTES)))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_UPLOAD_BYTES));
    let api = api
        .merge(uploads)
        .fallback(|| async { ApiError::NotFound(String::from("no such API route")) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate));
    // Relays of Slurm jobs authenticate with their job's secret, not a user token.
    let relays = Router::new()
        .route("/api/worker/jobs/{id}/lines", post(worker::lines))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_RELAY_BYTES));
    Router::new()
        .merge(relays)
        .nest("/api", api)
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(prometheus::prometheus))
        .fallback_service(match &state.paths.static_dir {
            Some(folder) => axum::routing::any_service(ServeDir::new(folder)),
            None => axum::routing::any(assets::serve),
        })
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_UPLOAD_BYTES))
        .layer(axum::middleware::map_response(|response| too_large_as_json(response, MAX_UPLOAD_BYTES)))
        .merge(dataset_import::routes(&state))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn_with_state(state.telemetry.clone(), prometheus::count_requests))
        .layer(axum::middleware::map_response_with_state(state.transport, security_headers::add))
        .with_state(state)
}

/// The body limit answers 413 in plain text; clients get the API's JSON error instead, naming the
/// limit of the route they called (uploads have their own).
async fn too_large_as_json(response: axum::response::Response, limit: usize) -> axum::response::Response {
    use axum::response::IntoResponse;
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ApiError::TooLarge { limit }.into_response();
    }
    response
}

/// Serves the router on `listener` until `shutdown` completes: over TLS with `certificate`,
/// else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    certificate: Option<Arc<crate::tls::ReloadingCertificate>>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // The peer's address rides along so anonymous callers can be rate-limited per address.
    let service = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    match certificate {
        None => axum::serve(listener, service).with_graceful_shutdown(shutdown).await,
        // `tap_io` only for its connect-info: axum gives the peer's address of a listener of
        // its own, or of one wrapped so.
        Some(certificate) => {
            let listener = tls_listener::TlsListener::new(listener, &certificate)?.tap_io(|_| {});
            axum::serve(listener, service).with_graceful_shutdown(shutdown).await
        }
    }
}
