//! Device-hour budgets on CPU slots (`--cpu-hours-per-user`): the waiting reason, the 422 of a
//! job that could never fit, an admin's change taking effect without a restart, admins exempt,
//! and the start error of a budget without a default time limit.

use crate::helpers::{
    client_with, fake_worker, send, small_spec, write_dataset, write_vgg16_weights, Options, TestApp, FAKE_WORKER,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

async fn patch_as(app: &TestApp, user: &str, name: &str, body: &Value) -> (StatusCode, Value) {
    let client = client_with(&app.tokens[user]);
    send(client.patch(app.url(&format!("/api/admin/users/{name}"))).json(body)).await
}

fn spec_with_limit(name: &str, limit: &str) -> Value {
    let mut spec = small_spec(name);
    spec["time_limit"] = json!(limit);
    spec
}

#[tokio::test]
async fn a_cpu_budget_holds_jobs_with_the_numbers_refuses_the_impossible_and_an_admin_raises_it() {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let args = ["--cpu-hours-per-user", "1", "--default-time-limit", "40m"].map(String::from).to_vec();
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(2), args });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));

    let (_, me) = app.get("/api/me").await;
    assert_eq!(me["budget"]["class"], "cpu", "{me}");
    assert_eq!((me["budget"]["budget_hours"].as_f64(), me["budget"]["left_hours"].as_f64()), (Some(1.0), Some(1.0)));

    // A 2 h limit could never fit 1 h: refused, naming the field and the numbers; nothing stored.
    let (status, body) = app.post("/api/jobs", &spec_with_limit("long", "2h")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "time_limit", "{body}");
    let message = body["detail"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("up to 2 h") && message.contains("of 1 CPU-h left"), "{message}");
    assert!(app.all_jobs("owner=me").await.is_empty(), "nothing was stored");

    // One 40 m job runs; a second would bring used + held + its limit over 1 h, so it waits.
    let first = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&first, "running", WAIT).await;
    let second = app.submit(&small_spec("sleep")).await;
    let waiting = app
        .wait_for(&second, WAIT, |job| {
            job["pending_reason"].as_str().is_some_and(|reason| reason.starts_with("budget:"))
        })
        .await;
    let reason = waiting["pending_reason"].as_str().unwrap();
    assert!(
        reason.contains("of 1 CPU-h used")
            && reason.contains("held by your running jobs")
            && reason.ends_with("up to 0.7 h"),
        "{reason}"
    );
    assert_eq!(waiting["state"], "queued");
    let (_, me) = app.get("/api/me").await;
    let held = me["budget"]["held_hours"].as_f64().unwrap();
    assert!((0.6..=0.67).contains(&held), "the running job's rest of 40 m is held: {me}");

    // Students cannot change budgets; bad amounts and unknown users are refused, nothing stored.
    assert_eq!(patch_as(&app, "alice", "alice", &json!({"cpu_hours": 100})).await.0, StatusCode::FORBIDDEN);
    let (status, body) = patch_as(&app, "root", "alice", &json!({"cpu_hours": -3})).await;
    assert_eq!((status, &body["detail"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("cpu_hours")), "{body}");
    let (status, body) = patch_as(&app, "root", "nobody", &json!({"cpu_hours": 3})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(app.get("/api/me").await.1["budget"]["budget_hours"], 1.0, "the refused changes stored nothing");

    // The admin's raise takes effect without a restart: the second job starts.
    let (status, body) = patch_as(&app, "root", "alice", &json!({"cpu_hours": 2})).await;
    assert_eq!((status, &body["cpu_hours"]), (StatusCode::OK, &json!(2.0)), "{body}");
    app.wait_for_state(&second, "running", WAIT).await;
    assert_eq!(app.get("/api/me").await.1["budget"]["budget_hours"], 2.0);

    // `/metrics` has each bounded user's charge and budget.
    let (_, text) = app.text("/metrics").await;
    assert!(text.contains("trainq_user_budget_seconds{user=\"alice\"} 7200"), "{text}");
    assert!(text.contains("trainq_user_budget_charged_seconds{user=\"alice\"} "), "{text}");
    assert!(!text.contains("trainq_user_budget_seconds{user=\"root\"}"), "admins have no budget: {text}");

    // Admins are exempt: no budget shown, and a long limit is accepted.
    let root = client_with(&app.tokens["root"]);
    let (_, me) = send(root.get(app.url("/api/me"))).await;
    assert!(me.get("budget").is_none(), "{me}");
    let (status, body) = send(root.post(app.url("/api/jobs")).json(&spec_with_limit("long", "5h"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[test]
fn a_budget_without_a_default_time_limit_is_a_start_error_naming_both_flags() {
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["serve", "--no-gpu", "--listen", "127.0.0.1:0", "--cpu-hours-per-user", "5", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cpu-hours-per-user") && stderr.contains("--default-time-limit"), "{stderr}");
}
