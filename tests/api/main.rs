//! API integration tests: each starts a real `trainq serve` on port 0 with its own temp data dir.

mod auth;
mod browser;
mod cache;
mod chains;
mod client;
#[path = "../common/mod.rs"]
mod common;
mod conventions;
mod crash;
mod disk;
mod events;
mod features;
mod helpers;
mod inception;
mod inference;
mod jobs;
mod retention;
mod list;
mod notify;
mod pytorch;
mod results;
mod recovery;
mod report;
mod schemathesis;
mod sharing;
#[path = "../common/small_disk.rs"]
mod small_disk;
mod slurm;
mod sweeps;
mod training;
mod validation;
mod variable;
