//! API integration tests: each starts a real `trainq serve` on port 0 with its own temp data dir.

mod browser;
mod cache;
mod events;
mod helpers;
mod inception;
mod jobs;
mod pytorch;
mod results;
mod training;
mod validation;
mod variable;
