//! The worker binary on its own, without a server: `trainq-worker run --job job.json` on a
//! generated dataset, as the supervisor runs it. Crash safety: stopping with SIGTERM and resuming
//! gives the uninterrupted run's results; running out of memory is reported as such, and so is a
//! full disk.

mod memory;
mod resume;
#[path = "../common/small_disk.rs"]
mod small_disk;
mod storage;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// A generated dataset and the folders of the runs on it.
pub struct Workspace {
    pub root: PathBuf,
    _temp: tempfile::TempDir,
}

impl Workspace {
    /// A demo dataset (`train_per_class` images of each of two classes) of small images.
    pub fn new(train_per_class: usize) -> Workspace {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        let status = Command::new(env!("CARGO_BIN_EXE_trainq"))
            .args(["demo-data", root.join("demo").to_str().unwrap(), "--size", "32", "--seed", "3"])
            .args(["--train-per-class", &train_per_class.to_string(), "--val-per-class", "2", "--test-per-class", "2"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        Workspace { root, _temp: temp }
    }

    /// Writes `<name>/job.json` for `spec`, with `<name>/artifacts` and `<name>/state` (`state` may
    /// be shared between runs by giving the same `state` name).
    pub fn job(&self, name: &str, state: &str, spec: &Value) -> PathBuf {
        self.job_writing_to(name, &self.root.join(name).join("artifacts"), &self.root.join(state), spec)
    }

    /// Writes `<name>/job.json` for `spec`, its artifacts going to `output_dir` and its resumable
    /// checkpoint to `state_dir` (wherever they are: another filesystem, say).
    pub fn job_writing_to(&self, name: &str, output_dir: &Path, state_dir: &Path, spec: &Value) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = json!({
            "job_id": "00000000-0000-4000-8000-000000000001",
            "spec": spec,
            "dataset_dir": self.root.join("demo"),
            "weights_file": null,
            "output_dir": output_dir,
            "device": "cpu",
            // One thread: the same speed on any machine's cores, so epochs stay long enough to be
            // stopped in the middle.
            "threads": 1,
            "state_dir": state_dir,
        });
        let path = dir.join("job.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&job).unwrap()).unwrap();
        path
    }
}

/// `trainq-worker run --job <job>` with stdout piped (events) and stderr to `<job dir>/log.txt`.
pub fn worker(job: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainq-worker"));
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(job.parent().unwrap().join("log.txt")).unwrap();
    command.args(["run", "--job"]).arg(job).stdout(Stdio::piped()).stderr(log);
    command
}

/// Reads a running worker's events until it exits; `on_event` sees each as it comes.
pub fn follow(mut child: Child, mut on_event: impl FnMut(&Value, &Child)) -> (ExitStatus, Vec<Value>) {
    let stdout = child.stdout.take().unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(event) = line.strip_prefix("@trainq ") {
            let event: Value = serde_json::from_str(event).unwrap();
            on_event(&event, &child);
            events.push(event);
        }
    }
    (child.wait().unwrap(), events)
}

/// Runs a worker to its end.
pub fn run(job: &Path) -> (ExitStatus, Vec<Value>) {
    follow(worker(job).spawn().unwrap(), |_, _| {})
}

/// The events of one kind.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|event| event["event"] == kind).collect()
}

/// A job's log, for assertion messages.
pub fn log(job: &Path) -> String {
    std::fs::read_to_string(job.parent().unwrap().join("log.txt")).unwrap_or_default()
}
