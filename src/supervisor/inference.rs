//! Warm models for predictions and Grad-CAM on uploaded images: one `trainq-worker serve` process
//! per finished job, started on first use, kept while it is used, stopped after
//! [`IDLE`] without requests or when [`MAX_WARM`] other jobs' models are warmer. They run on the
//! CPU (`CUDA_VISIBLE_DEVICES` empty): a single image is fast there, and training keeps the GPUs.

use super::worker_command;
use crate::domain::JobId;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Mutex;

/// A warm model with no request for this long is stopped.
pub const IDLE: Duration = Duration::from_secs(300);
/// Most warm models at once.
pub const MAX_WARM: usize = 4;
/// The longest one request may take (the first includes loading the model).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The process could not be started.
    #[error("could not start the model process: {0}")]
    Start(String),
    /// It died or sent something unreadable; it has been stopped.
    #[error("the model process failed: {0}")]
    Failed(String),
    /// No answer within the timeout; it has been stopped.
    #[error("the model process did not answer within {0:?}")]
    Timeout(Duration),
}

struct Warm {
    /// Dropping the child kills it (`kill_on_drop`).
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

#[derive(Clone)]
struct Slot {
    process: Arc<Mutex<Option<Warm>>>,
    last_used: Arc<std::sync::Mutex<Instant>>,
}

/// The warm models. Cheap to clone.
#[derive(Clone, Default)]
pub struct InferencePool {
    slots: Arc<Mutex<HashMap<JobId, Slot>>>,
}

impl InferencePool {
    /// Sends `request` (one JSON object) to job `id`'s model, starting it from `artifacts` if it
    /// is not warm, and returns its answer.
    pub async fn request(
        &self,
        worker: &Path,
        id: JobId,
        artifacts: &Path,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, InferenceError> {
        let slot = self.slot(id).await;
        *slot.last_used.lock().expect("clock poisoned") = Instant::now();
        let mut process = slot.process.lock().await;
        if process.is_none() {
            *process = Some(start(worker, artifacts)?);
        }
        let warm = process.as_mut().expect("just started");
        let exchange = async {
            let line = format!("{request}\n");
            warm.stdin.write_all(line.as_bytes()).await.map_err(|err| InferenceError::Failed(err.to_string()))?;
            warm.stdin.flush().await.map_err(|err| InferenceError::Failed(err.to_string()))?;
            match warm.stdout.next_line().await {
                Ok(Some(line)) => serde_json::from_str(&line)
                    .map_err(|err| InferenceError::Failed(format!("unreadable answer: {err}"))),
                Ok(None) => Err(InferenceError::Failed(String::from("it exited"))),
                Err(err) => Err(InferenceError::Failed(err.to_string())),
            }
        };
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(InferenceError::Timeout(REQUEST_TIMEOUT)),
        };
        if answer.is_err() {
            // A process that failed once is not trusted again: the next request starts a new one.
            *process = None;
        }
        answer
    }

    /// The slot of job `id`, made room for under [`MAX_WARM`].
    async fn slot(&self, id: JobId) -> Slot {
        let mut slots = self.slots.lock().await;
        if let Some(slot) = slots.get(&id) {
            return slot.clone();
        }
        while slots.len() >= MAX_WARM {
            let coldest = slots
                .iter()
                .min_by_key(|(_, slot)| *slot.last_used.lock().expect("clock poisoned"))
                .map(|(id, _)| *id)
                .expect("not empty");
            slots.remove(&coldest);
        }
        let slot = Slot { process: Arc::default(), last_used: Arc::new(std::sync::Mutex::new(Instant::now())) };
        slots.insert(id, slot.clone());
        slot
    }

    /// Stops job `id`'s model, if it is warm (its files are being deleted). A request in flight
    /// keeps its process until it answers; the next one finds no model.
    pub async fn forget(&self, id: JobId) {
        self.slots.lock().await.remove(&id);
    }

    /// Stops models idle for longer than `idle`; returns how many.
    pub async fn reap(&self, idle: Duration) -> usize {
        let mut slots = self.slots.lock().await;
        let before = slots.len();
        slots.retain(|_, slot| slot.last_used.lock().expect("clock poisoned").elapsed() < idle);
        before - slots.len()
    }
}

fn start(worker: &Path, artifacts: &Path) -> Result<Warm, InferenceError> {
    let mut command = worker_command(worker);
    command.arg("serve").arg("--dir").arg(artifacts);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(artifacts.with_file_name("inference.log"))
        .map_err(|err| InferenceError::Start(err.to_string()))?;
    command
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| InferenceError::Start(format!("{}: {err}", worker.display())))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    Ok(Warm { _child: child, stdin, stdout })
}
