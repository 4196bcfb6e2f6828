//! The relay protocol: how a worker that runs where the server cannot watch it (a Slurm compute
//! node) reports. `trainq relay` runs the worker as its child and forwards every line the worker
//! prints, in order, as batches POSTed to `POST /api/worker/jobs/{id}/lines` with
//! `Authorization: Bearer <the job's secret>` (from the `TRAINQ_JOB_SECRET` variable). A batch is
//! retried until the server accepts it, so the server may go away and come back; batch numbers
//! make a retried batch that was already stored harmless.

use serde::{Deserialize, Serialize};

/// The variable that carries a job's secret to its relay (never a command-line argument).
pub const SECRET_VARIABLE: &str = "TRAINQ_JOB_SECRET";

/// Which stream of the worker a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Progress events (`@trainq {...}`) and plain output.
    Stdout,
    /// The log.
    Stderr,
}

/// One line the worker printed, without its newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLine {
    /// Its stream.
    pub stream: Stream,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// One POST: lines in the order printed (stdout and stderr interleaved as read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayBatch {
    /// 1, 2, 3 … per relay run; the server ignores a batch it has already stored.
    pub seq: u64,
    /// A new relay run (a restarted Slurm job) starts its numbers again: this tells them apart.
    pub run: String,
    /// The lines.
    pub lines: Vec<RelayLine>,
    /// Set on the last batch: how the worker ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<WorkerExit>,
}

/// How the worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}
