//! Issue 28 in a real headless Chromium (the driver is `browser.rs`'s): the devices panel shows a
//! device's lab reservation (name, when, for whom), and a timed-out job's page resumes it with
//! more time through its "Resume with more time" button. (The budget in the header is checked
//! where the header's budget is added.)

use crate::browser::{browser_programs, spec, Browser, VISIBLE};
use crate::helpers::{client_with, fake_worker, write_dataset, Options, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

/// A worker that, on its first run, saves a resumable checkpoint after one epoch and then waits to
/// be stopped (as the real one does on SIGTERM: exit 75 with the checkpoint kept); run again from
/// that checkpoint, it finishes at once.
const CHECKPOINTING_WORKER: &str = r#"
dir=$(dirname "$3")
if [ -f "$dir/state/resume.safetensors" ]; then
  echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
  exit 0
fi
mkdir -p "$dir/state"
head -c 1000 /dev/zero > "$dir/state/resume.safetensors"
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.1}'
echo '@trainq {"event":"checkpoint","phase":1,"epoch":1,"step":0}'
trap 'exit 75' TERM
sleep 120 &
wait
exit 75
"#;

#[tokio::test]
async fn the_devices_panel_shows_reservations_and_a_timed_out_job_resumes_with_more_time() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", CHECKPOINTING_WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(2), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);

    // A weekly lab on cpu1 for alice and bob, next year.
    let lab = json!({"name": "lab-b", "devices": ["cpu1"], "start": "2030-01-01T14:00:00Z",
        "end": "2030-01-01T16:00:00Z", "weekly": true, "users": ["alice", "bob"]});
    let created =
        client_with(&app.tokens["root"]).post(app.url("/api/admin/reservations")).json(&lab).send().await.unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);

    // A job with a 3 s limit times out after its first epoch, its checkpoint kept.
    let mut timed = spec("timed", [1, 1]);
    timed["time_limit"] = json!(3);
    let (status, body) = app.post("/api/jobs", &timed).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    let parent = app.wait_for_state(&id, "timeout", Duration::from_secs(60)).await;
    assert!(parent["resume_point"]["epoch"].as_u64().is_some(), "{parent}");

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    browser.goto(&app.url(&format!("/?signed-in#job={id}"))).await;
    browser.eval("window.__trainqErrors = []; addEventListener('error', (e) => window.__trainqErrors.push(String(e.message)));", json!([])).await;

    // The devices panel: cpu1's card names the lab, when, and for whom; cpu0's has none.
    let shown = browser
        .wait_for(
            "the reservation on the devices panel",
            "const e = document.querySelector(\"[data-device-id='cpu1'] [data-reservation='lab-b']\"); return e && e.textContent;",
            json!([]),
        )
        .await;
    let shown = shown.as_str().unwrap();
    assert!(shown.starts_with("Reserved next for lab-b, ") && shown.contains("14:00–16:00 UTC, weekly"), "{shown}");
    assert!(shown.contains("alice, bob"), "{shown}");
    assert_eq!(browser.eval(VISIBLE, json!(["[data-device-id='cpu0'] .device-reservations"])).await, false);

    // The timed-out job's page resumes it with the time the student types.
    browser.wait_for("the resume button", VISIBLE, json!(["#resume-button"])).await;
    browser.eval("window.prompt = () => '4h';", json!([])).await;
    browser.click("#resume-button").await;
    let child = browser
        .wait_for(
            "the child's page",
            "const id = decodeURIComponent(location.hash.replace('#job=', '')); return id && id !== arguments[0] && id;",
            json!([id]),
        )
        .await;
    let child = child.as_str().unwrap();
    let (_, job) = app.get(&format!("/api/jobs/{child}")).await;
    assert_eq!((&job["parent_id"], &job["time_limit"]), (&json!(id), &json!("4h")), "{job}");
    let done = app.wait_for_state(child, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // The fake worker draws no heatmaps: the job page asks for their index, gets the 404 it shows
    // as "No heatmaps yet", and Chromium logs that answer as an error. Anything else is one.
    let errors: Vec<Value> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|entry| !entry["message"].as_str().is_some_and(|message| message.contains("/artifacts/cam/index.json")))
        .collect();
    assert_eq!(errors, Vec::<Value>::new(), "console errors");
    assert_eq!(browser.eval("return window.__trainqErrors", json!([])).await, json!([]), "script errors on the page");
    browser.quit().await;
}
