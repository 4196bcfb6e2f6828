//! trainq: a shared GPU box's training queue. The server side lives in this library; the tch
//! worker is a separate binary (`src/worker/`) so the server process never loads libtorch.

/// Backups: consistent snapshots of the database, on request and on a schedule.
pub mod backup;
/// Device-hour budgets: each user's account for the period, for the scheduler and the API.
pub mod budgets;
/// Datasets and weights on disk.
pub mod catalog;
/// The students' terminal client: login, ls, show, cancel, wait.
pub mod client;
/// Command-line and environment configuration.
pub mod config;
/// One server per data dir: the exclusive lock `trainq serve` holds on its folders.
pub mod data_dir_lock;
/// Importing a dataset archive: safe unpacking, the ImageFolder found, every image verified.
pub mod dataset_import;
/// The synthetic demo dataset.
pub mod demo_data;
/// GPU inventory (NVML) and CPU slots.
pub mod devices;
/// Disk space as a scheduled resource: free bytes per folder, the low-water mark, the reserve.
pub mod disk_space;
/// Job ids, states, specs and the worker protocol.
pub mod domain;
/// Live events (job queued/started/progress/epoch/finished, log lines) with catch-up for late subscribers.
pub mod events;
/// `trainq weights fetch`: download, check and install a backbone's pretrained weights.
pub mod fetch_weights;
/// Files on a disk that can fill up: one atomic write for every artifact, cache eviction, storage-error tests.
pub mod files;
/// The REST API and dashboard (the only axum code).
pub mod http;
/// Notifications of jobs' ends: the outbox's delivery by email (SMTP) and signed webhooks.
pub mod notify;
/// Report-ready plots (SVG and PNG): accuracy and loss curves, ROC, confusion matrix.
pub mod plots;
/// `trainq relay`: runs a worker the server cannot watch (a Slurm node) and forwards its output.
pub mod relay;
/// The HW report: one self-contained HTML page of experiments' specs, tables, curves and heatmaps.
pub mod report;
/// Retention of finished jobs: delete (tombstones), gc and daily retention, per-user disk usage.
pub mod retention;
/// The scheduling loop (the only code that claims jobs).
pub mod scheduler;
/// Wiring: starts every part of `trainq serve`.
pub mod server;
/// SQLite storage (the only SQL).
pub mod store;
/// Submitting jobs: expand, validate, check limits, inputs and waits, insert, announce (no axum).
pub mod submit;
/// Worker processes (the only code that spawns).
pub mod supervisor;
/// Counters and histograms since the server started (jobs finished, retries, requests, waits), for `/metrics`.
pub mod telemetry;
/// TLS on the wire: the server's reloading certificate and handshakes, and the CA clients trust.
pub mod tls;
/// The build's version, git commit and schema version.
pub mod version;
