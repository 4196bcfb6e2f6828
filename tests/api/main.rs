//! API integration tests: each starts a real `trainq serve` on port 0 with its own temp data dir.

mod helpers;
mod jobs;
mod training;
mod validation;
