//! Surviving what happens to a shared box: SIGTERM (graceful), a worker killed with SIGKILL, a
//! worker out of memory, and the server killed with SIGKILL again and again mid-training.

use crate::helpers::{fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A worker that "trains" until SIGTERM, then reports a checkpoint and exits 75 (resumable); a
/// second start (the resume) finishes at once, as does a job named `waiting`.
const RESUMABLE: &str = r#"
if grep -q '"name": "waiting"' "$3" || [ -f state/checkpoint ]; then
  echo '@trainq {"event":"resumed","phase":1,"epoch":1,"step":3}'
  echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
  exit 0
fi
mkdir -p state
trap 'touch state/checkpoint; echo "@trainq {\"event\":\"checkpoint\",\"phase\":1,\"epoch\":1,\"step\":3}"; exit 75' TERM
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.1}'
while true; do sleep 0.1; done
"#;

/// The pid the job's log says its worker has.
async fn worker_pid(app: &TestApp, id: &str) -> i32 {
    let started = std::time::Instant::now();
    loop {
        let (_, log) = app.text(&format!("/api/jobs/{id}/log")).await;
        if let Some(pid) = log.lines().rev().find_map(|line| line.strip_prefix("trainq: worker pid ")) {
            return pid.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(started.elapsed() < WAIT, "no worker pid in the log: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_workers_checkpoint_and_the_next_start_resumes_them() {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", RESUMABLE);
    let options = Options { worker: Some(worker), ..Options::default() };
    let mut app = TestApp::spawn(options.clone());
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let id = app.submit(&small_spec("long")).await;
    let waiting = app.submit(&small_spec("waiting")).await;
    app.wait_for_state(&id, "running", WAIT).await;
    // Wait for the first epoch to be stored, so the checkpoint trap is armed.
    let started = std::time::Instant::now();
    while app.get(&format!("/api/jobs/{id}/metrics")).await.1["epochs"].as_array().is_none_or(Vec::is_empty) {
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let worker = worker_pid(&app, &id).await;
    unsafe { libc::kill(app.pid(), libc::SIGTERM) };
    let status = app.process.wait().unwrap();
    assert!(status.success(), "the server exits 0 after a graceful shutdown: {status:?}\n{}", app.server_log());
    assert_ne!(unsafe { libc::kill(worker, 0) }, 0, "the worker is gone");
    let temp = app.take_temp();
    let root = app.root.clone();
    drop(app);
    let app = TestApp::spawn_in(&root, options);
    let job = app.wait_for_state(&id, "succeeded", WAIT).await;
    assert_eq!(app.run_outcomes(&id).await, ["interrupted", "succeeded"], "{job:#}");
    assert_eq!(job["resume_point"]["step"], 3, "the checkpoint was recorded: {job:#}");
    let (_, log) = app.text(&format!("/api/jobs/{id}/log")).await;
    assert!(log.contains("resumed from the checkpoint"), "{log}");
    // The job that was waiting never started during the shutdown and runs now.
    app.wait_for_state(&waiting, "succeeded", WAIT).await;
    drop(temp);
}

#[tokio::test]
async fn a_worker_killed_with_sigkill_fails_its_job_and_frees_the_device() {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", crate::helpers::FAKE_WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let victim = app.submit(&small_spec("sleep")).await;
    let next = app.submit(&small_spec("next")).await;
    app.wait_for_state(&victim, "running", WAIT).await;
    let pid = worker_pid(&app, &victim).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let job: Value = app.wait_for_state(&victim, "failed", WAIT).await;
    assert!(job["error"].as_str().unwrap().contains("SIGKILL"), "{job:#}");
    app.wait_for_state(&next, "succeeded", WAIT).await;
}

#[tokio::test]
async fn a_worker_out_of_memory_is_retried_once_with_half_the_batch_then_fails_with_the_numbers() {
    let options =
        Options { args: vec![String::from("--worker-max-memory-gb"), String::from("1.5")], ..Options::default() };
    let app = TestApp::spawn(options);
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let huge = serde_json::json!({
        "name": "huge", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 512, "batch_size": 64, "head": ["gap", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "all"}], "optimizer": {"name": "sgd", "lr": 0.01},
        "retry_on_oom": true
    });
    let id = app.submit(&huge).await;
    let next = app.submit(&small_spec("next")).await;
    let job = app.wait_for_state(&id, "failed", WAIT).await;
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("out of memory (CPU workers may use 1.5 GB"), "{error}");
    assert!(error.contains("allocate"), "libtorch's numbers are quoted: {error}");
    assert_eq!(job["spec"]["batch_size"], 32, "{job:#}");
    let notes = job["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{job:#}");
    assert!(notes[0].as_str().unwrap().contains("re-queued once with batch_size 32"), "{job:#}");
    assert_eq!(app.run_outcomes(job["id"].as_str().unwrap()).await, ["requeued", "failed"]);
    // The device was freed for the next job.
    app.wait_for_state(&next, "succeeded", Duration::from_secs(300)).await;
}
