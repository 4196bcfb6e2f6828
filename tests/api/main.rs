//! API integration tests: each starts a real `trainq serve` on port 0 with its own temp data dir.

mod augment;
mod auth;
mod backbones;
mod backups;
mod browser;
mod browser_reservations;
mod budgets;
mod cache;
mod chains;
mod client;
#[path = "../common/mod.rs"]
mod common;
mod conventions;
mod crash;
mod data_dir;
mod dataset_import;
mod disk;
mod efficientnet;
mod events;
mod features;
mod helpers;
mod inception;
mod inference;
mod jobs;
mod list;
mod notify;
mod pytorch;
mod recovery;
mod report;
mod reservations;
mod results;
mod retention;
mod schemathesis;
mod sharing;
mod slurm;
#[path = "../common/small_disk.rs"]
mod small_disk;
mod sweeps;
mod time_limits;
mod tls;
mod training;
mod upgrades;
mod users;
mod validation;
mod variable;
