//! The queue's life cycle with fake workers: crash, failure, cancel, restart.

use crate::helpers::{small_spec, Options, TestApp, FAKE_WORKER};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn app_with_fake_worker() -> (tempfile::TempDir, TestApp) {
    crate::helpers::app_with_worker(FAKE_WORKER, 1)
}

#[tokio::test]
async fn a_crashing_worker_fails_the_job_with_a_reason_and_frees_the_device() {
    let (_scripts, app) = app_with_fake_worker();
    let crash = app.submit(&small_spec("crash")).await;
    let after = app.submit(&small_spec("fine")).await;
    let job = app.wait_for(&crash, WAIT, |job| job["state"] == "failed").await;
    let reason = job["error"].as_str().unwrap();
    assert!(reason.contains("SIGSEGV"), "{reason}");
    assert!(reason.contains("about to crash"), "the reason quotes the log: {reason}");
    // The device was freed: the next job ran on it and succeeded.
    let job = app.wait_for_state(&after, "succeeded", WAIT).await;
    assert_eq!(job["device"], "cpu0");
    assert_eq!(job["final_metrics"]["test_acc"], 0.9);
    let (_, metrics) = app.get(&format!("/api/jobs/{after}/metrics")).await;
    assert_eq!(metrics["epochs"].as_array().unwrap().len(), 1);
    assert_eq!(metrics["final"]["train_acc"], 1.0);
    let (_, devices) = app.get("/api/devices").await;
    assert_eq!(devices[0]["job"], serde_json::Value::Null);
}

#[tokio::test]
async fn worker_exits_and_output_map_to_states() {
    let (_scripts, app) = app_with_fake_worker();
    let exit3 = app.submit(&small_spec("exit3")).await;
    let silent = app.submit(&small_spec("silent")).await;
    let binary = app.submit(&small_spec("binary")).await;
    let job = app.wait_for(&exit3, WAIT, |job| job["state"] == "failed").await;
    let reason = job["error"].as_str().unwrap();
    assert!(reason.contains("exited with code 3") && reason.contains("giving up"), "{reason}");
    let job = app.wait_for(&silent, WAIT, |job| job["state"] == "failed").await;
    assert!(job["error"].as_str().unwrap().contains("without reporting final metrics"));
    // Output that is not UTF-8 goes to the log and does not stop the progress events after it.
    app.wait_for_state(&binary, "succeeded", WAIT).await;
    let (_, log) = app.text(&format!("/api/jobs/{binary}/log")).await;
    assert!(log.contains("not utf8"), "{log}");
    let failed = app.all_jobs("state=failed").await;
    assert_eq!(failed.len(), 2);
}

#[tokio::test]
async fn queued_and_running_jobs_can_be_cancelled() {
    let (_scripts, app) = app_with_fake_worker();
    let running = app.submit(&small_spec("sleep")).await;
    let queued = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&running, "running", WAIT).await;
    let (_, job) = app.get(&format!("/api/jobs/{queued}")).await;
    assert_eq!((job["state"].as_str(), job["position"].as_i64()), (Some("queued"), Some(1)));

    let (status, job) = app.post(&format!("/api/jobs/{queued}/cancel"), &json!({})).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("cancelled")));
    let (status, job) = app.post(&format!("/api/jobs/{running}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["cancel_requested"], true);
    app.wait_for_state(&running, "cancelled", WAIT).await;
    let (status, body) = app.post(&format!("/api/jobs/{running}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["detail"]["state"], "cancelled");
    // The cancelled queued job never ran.
    let (_, job) = app.get(&format!("/api/jobs/{queued}")).await;
    assert_eq!(job["attempts"], 0);
}

#[tokio::test]
async fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let (_scripts, app) = app_with_fake_worker();
    let id = app.submit(&small_spec("stubborn")).await;
    app.wait_for_state(&id, "running", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.post(&format!("/api/jobs/{id}/cancel"), &json!({})).await;
    app.wait_for_state(&id, "cancelled", WAIT).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "SIGKILL comes only after the 2 s grace");
    let next = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&next, "succeeded", WAIT).await;
}

#[tokio::test]
async fn jobs_left_running_by_a_killed_server_are_requeued_and_finish() {
    let (scripts, mut app) = app_with_fake_worker();
    let id = app.submit(&small_spec("sleep")).await;
    let job = app.wait_for_state(&id, "running", WAIT).await;
    assert_eq!(job["attempts"], 1);
    // kill -9 the server; its worker dies with it (PR_SET_PDEATHSIG).
    app.process.kill().unwrap();
    app.process.wait().unwrap();
    // Restart on the same folder with a worker that succeeds for every job.
    let root = app.root.clone();
    let always_ok = crate::helpers::fake_worker(
        scripts.path(),
        "ok.sh",
        "echo '@trainq {\"event\":\"final\",\"train_loss\":0.1,\"train_acc\":1.0,\"test_loss\":0.2,\"test_acc\":0.9}'",
    );
    let temp = app.take_temp();
    drop(app);
    let app = TestApp::spawn_in(&root, Options { worker: Some(always_ok), ..Options::default() });
    let job = app.wait_for_state(&id, "succeeded", WAIT).await;
    assert_eq!(job["attempts"], 2);
    drop(temp);
}

#[tokio::test]
async fn repeats_run_as_a_group_reported_as_mean_and_std() {
    let (_scripts, app) = app_with_fake_worker();
    let mut spec = small_spec("repeat");
    spec["repeats"] = json!(3);
    let (status, body) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let group = body["group_id"].as_str().unwrap().to_string();
    let ids: Vec<String> =
        body["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let job = app.wait_for_state(id, "succeeded", WAIT).await;
        assert_eq!(job["group_id"], group.as_str());
    }
    let (status, view) = app.get(&format!("/api/groups/{group}")).await;
    assert_eq!(status, StatusCode::OK);
    let seeds: Vec<u64> = view["jobs"].as_array().unwrap().iter().map(|j| j["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [1, 2, 3], "seeds seed … seed + N − 1");
    assert_eq!((view["finished"].as_bool(), view["succeeded"].as_u64()), (Some(true), Some(3)));
    // The fake worker reports test_acc 0.<seed>: 0.1, 0.2, 0.3 → mean 0.2, sample std 0.1.
    let test_acc = &view["metrics"]["test_acc"];
    assert!((test_acc["mean"].as_f64().unwrap() - 0.2).abs() < 1e-12, "{view}");
    assert!((test_acc["std"].as_f64().unwrap() - 0.1).abs() < 1e-12, "{view}");
    assert_eq!(test_acc["n"], 3);
    assert!(view["metrics"].get("auc").is_none(), "undefined metrics are left out, not averaged");
    let (status, _) = app.get("/api/groups/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
