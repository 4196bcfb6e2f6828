//! One server per data dir: a second `trainq serve` on a data dir a live server holds refuses to
//! start, at once, and leaves the first one's running job alone.

use crate::helpers::{app_with_worker, small_spec};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_exits_at_once_and_the_running_job_runs_exactly_once() {
    let starts = tempfile::tempdir().unwrap();
    let starts_file = starts.path().join("starts");
    // Each start of a worker leaves a line; the job trains for a few seconds, long enough for a
    // second server to try (and, before the lock, to re-queue it and start another worker).
    let worker = format!(
        "echo $$ >> {}\nsleep 4\necho '@trainq {{\"event\":\"final\",\"train_loss\":0.1,\"train_acc\":1.0,\"test_loss\":0.2,\"test_acc\":0.9}}'",
        starts_file.display()
    );
    let (_scripts, app) = app_with_worker(&worker, 1);
    let id = app.submit(&small_spec("once")).await;
    app.wait_for_state(&id, "running", WAIT).await;

    let data_dir = app.root.join("data");
    let started = Instant::now();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["serve", "--no-gpu", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .arg("--datasets")
        .arg(app.root.join("datasets"))
        .arg("--weights")
        .arg(app.root.join("weights"))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second server must refuse to start: {stderr}");
    assert!(elapsed < Duration::from_secs(10), "it refuses at once, not after {elapsed:?}: {stderr}");
    assert!(stderr.contains(&data_dir.canonicalize().unwrap().display().to_string()), "names the data dir: {stderr}");
    assert!(stderr.contains(&format!("pid {}", app.pid())), "names the holder's pid: {stderr}");
    assert!(second.stdout.is_empty(), "it never listened: {}", String::from_utf8_lossy(&second.stdout));

    // The first server's job was never touched: still running, and it ends having run once.
    let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["state"], "running", "{job:#}");
    app.wait_for_state(&id, "succeeded", WAIT).await;
    assert_eq!(app.run_outcomes(&id).await, ["succeeded"]);
    let starts = std::fs::read_to_string(&starts_file).unwrap();
    assert_eq!(starts.lines().count(), 1, "one worker start: {starts}");
    assert!(!app.server_log().contains("re-queued"), "{}", app.server_log());
}
