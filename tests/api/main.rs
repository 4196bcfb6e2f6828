//! API integration tests: each starts a real `trainq serve` on port 0 with its own temp data dir.

mod auth;
mod browser;
mod cache;
mod crash;
mod events;
mod features;
mod helpers;
mod inception;
mod inference;
mod jobs;
mod pytorch;
mod results;
mod recovery;
mod sharing;
mod slurm;
mod training;
mod validation;
mod variable;
