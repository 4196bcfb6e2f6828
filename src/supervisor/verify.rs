//! The dataset import's image check: the server never links a decoder, so it runs
//! `trainq-worker verify DIR` like any worker (cleared environment, own process group, killed
//! with the server) and reads the JSON report it prints.

use super::{worker_command, Supervisor};
use crate::domain::worker_protocol::VerifyReport;
use anyhow::Context;
use std::path::Path;
use std::process::Stdio;

impl Supervisor {
    /// Decodes every image of the ImageFolder at `dir` in full through the worker binary; the
    /// files that do not decode come back by name with their reasons.
    pub async fn verify_images(&self, dir: &Path) -> anyhow::Result<VerifyReport> {
        let output = worker_command(&self.config.worker_program)
            .arg("verify")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("starting {} verify", self.config.worker_program.display()))?;
        if !output.status.success() {
            anyhow::bail!(
                "{} verify failed ({}): {}",
                self.config.worker_program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout).context("reading the worker's verify report")
    }
}
