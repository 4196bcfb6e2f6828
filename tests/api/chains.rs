//! Chained jobs: `after` (wait for jobs to succeed, fail at once when one does not), `init_from`
//! (start from another job's weights), both checked at submit, and `PATCH /api/jobs/{id}` refusing
//! a cycle. Fake workers; the real one in `init_from_starts_from_the_source_jobs_weights`.

use crate::helpers::{small_spec, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A fake worker that writes `final.safetensors` (only; no `phase1`) into the job's artifacts and
/// succeeds, unless the job is named `fail` (fails after a second), `slow` (succeeds after two)
/// or `sleep` (runs until stopped).
const CHAIN_WORKER: &str = r#"
out=$(sed -n 's/.*"output_dir": "\([^"]*\)".*/\1/p' "$3")
if grep -q '"name": "fail"' "$3"; then sleep 1; echo "the loss went to NaN" >&2; exit 1; fi
if grep -q '"name": "sleep"' "$3"; then exec sleep 60; fi
if grep -q '"name": "slow"' "$3"; then sleep 2; fi
mkdir -p "$out" && echo weights > "$out/final.safetensors"
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

fn spec_after(name: &str, after: &[&str]) -> Value {
    let mut spec = small_spec(name);
    spec["after"] = json!(after);
    spec
}

fn short(id: &str) -> &str {
    &id[..8]
}

async fn patch(app: &TestApp, id: &str, body: &Value) -> (StatusCode, Value) {
    let response = app.client.patch(app.url(&format!("/api/jobs/{id}"))).json(body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_chain_whose_first_job_fails_fails_at_once_without_starting() {
    // Two slots: nothing but the chain keeps the waiting jobs from starting.
    let (_scripts, app) = crate::helpers::app_with_worker(CHAIN_WORKER, 2);
    let a = app.submit(&small_spec("fail")).await;
    let b = app.submit(&spec_after("b", &[&a])).await;
    let c = app.submit(&spec_after("c", &[&b])).await;
    // While A runs, B says so and C says it waits for B, queued.
    let job = app
        .wait_for(&b, WAIT, |job| job["pending_reason"].as_str().is_some_and(|reason| reason.contains("(running")))
        .await;
    assert_eq!(job["pending_reason"], format!("waiting for job {}… (running, starting)", short(&a)).as_str(), "{job}");
    let job = app
        .wait_for(&c, WAIT, |job| job["pending_reason"].as_str().is_some_and(|reason| reason.contains(short(&b))))
        .await;
    assert!(job["pending_reason"].as_str().unwrap().contains("(queued, #"), "{job}");
    assert_eq!(job["spec"]["after"], json!([b]));

    let (a_job, _) = app.finished(&a, WAIT).await;
    assert_eq!(a_job["state"], "failed");
    for (id, waits_for) in [(&b, &a), (&c, &b)] {
        let (job, _) = app.finished(id, Duration::from_secs(5)).await;
        assert_eq!(job["state"], "failed", "{job}");
        let reason = job["error"].as_str().unwrap();
        assert!(reason.starts_with(&format!("job {}… it waits for failed: ", short(waits_for))), "{reason}");
        assert_eq!(
            (job["attempts"].as_i64(), job["runs"].as_array().map(Vec::len)),
            (Some(0), Some(0)),
            "never started: {job}"
        );
    }
    let (_, c_job) = app.get(&format!("/api/jobs/{c}")).await;
    assert!(
        c_job["error"].as_str().unwrap().contains("the loss went to NaN"),
        "the chain's reason goes through: {c_job}"
    );
    // A job waiting for a job that already failed would never start: refused.
    let (status, body) = app.post("/api/jobs", &spec_after("late", &[&a])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "after[0]");
}

#[tokio::test]
async fn a_job_after_a_successful_job_starts_once_it_ended() {
    let (_scripts, app) = crate::helpers::app_with_worker(CHAIN_WORKER, 2);
    let a = app.submit(&small_spec("slow")).await;
    let b = app.submit(&spec_after("b", &[&a])).await;
    let (b_job, _) = app.finished(&b, WAIT).await;
    assert_eq!(b_job["state"], "succeeded", "{b_job}");
    let (_, a_job) = app.get(&format!("/api/jobs/{a}")).await;
    let ended = a_job["runs"][0]["ended_at"].as_f64().unwrap();
    let started = b_job["runs"][0]["started_at"].as_f64().unwrap();
    assert!(started >= ended, "B started at {started}, before A ended at {ended}");
}

#[tokio::test]
async fn what_a_job_waits_for_is_checked_at_submit_for_its_owner() {
    let (_scripts, app) = crate::helpers::app_with_worker(CHAIN_WORKER, 1);
    let bob = crate::helpers::client_with(&app.tokens["bob"]);
    let root = crate::helpers::client_with(&app.tokens["root"]);
    let alices = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&alices, "succeeded", WAIT).await;
    let post = |client: &reqwest::Client, spec: Value| {
        let request = client.post(app.url("/api/jobs")).json(&spec);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let init = |job: &str, checkpoint: &str| {
        let mut spec = small_spec("init");
        spec["init_from"] = json!({"job": job, "checkpoint": checkpoint});
        spec
    };

    // Bob cannot chain on Alice's job: answered exactly like a job that does not exist.
    let (status, theirs) = post(&bob, init(&alices, "final")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{theirs}");
    assert_eq!(theirs["detail"]["field"], "init_from.job");
    let missing = uuid::Uuid::new_v4().to_string();
    let (_, nobody) = post(&bob, init(&missing, "final")).await;
    assert_eq!(
        nobody["detail"]["message"].as_str().unwrap().replace(&missing, "ID"),
        theirs["detail"]["message"].as_str().unwrap().replace(&alices, "ID")
    );
    let (status, body) = post(&bob, spec_after("b", &[&alices])).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("after[0]")),
        "{body}"
    );
    // The admin can, and so can Alice herself.
    let (status, body) = post(&root, init(&alices, "final")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["jobs"][0]["spec"]["init_from"], json!({"job": alices, "checkpoint": "final"}));
    let (status, body) = post(&app.client, init(&alices, "final")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A checkpoint the job saved by its spec but that is not on disk (this worker keeps `final` only).
    let (status, body) = post(&app.client, init(&alices, "phase1")).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("init_from.checkpoint")),
        "{body}"
    );
    assert!(body["detail"]["message"].as_str().unwrap().contains("it still has `final`"), "{body}");
    // One it never saves: two phases save `phase1` and `final`.
    let (status, body) = post(&app.client, init(&alices, "phase2")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"]["message"].as_str().unwrap().contains("`phase1`, `final`"), "{body}");
    // A network its weights do not fit.
    let mut wider = init(&alices, "final");
    wider["head"][1] = json!({"dense": 128});
    let (status, body) = post(&app.client, wider).await;
    assert_eq!((status, body["detail"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("head")), "{body}");
    let (status, body) = post(&app.client, init(&alices, "best")).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("init_from.checkpoint")),
        "{body}"
    );
}

#[tokio::test]
async fn a_queued_jobs_waits_change_with_patch_and_never_form_a_cycle() {
    let (_scripts, app) = crate::helpers::app_with_worker(CHAIN_WORKER, 1);
    let busy = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&busy, "running", WAIT).await;
    let x = app.submit(&small_spec("x")).await;
    let y = app.submit(&spec_after("y", &[&x])).await;
    let z = app.submit(&spec_after("z", &[&y])).await;

    // x → z → y → x would wait forever.
    let (status, body) = patch(&app, &x, &json!({"after": [z]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "after");
    let cycle = format!("{}… → {}… → {}… → {}…", short(&x), short(&z), short(&y), short(&x));
    assert!(body["detail"]["message"].as_str().unwrap().contains(&cycle), "{body}");
    let (status, body) = patch(&app, &x, &json!({"after": [x]})).await;
    assert_eq!((status, body["detail"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("after")), "{body}");
    let (_, job) = app.get(&format!("/api/jobs/{x}")).await;
    assert!(job["spec"].get("after").is_none(), "nothing changed: {job}");

    // z stops waiting; then waits for x directly.
    let (status, job) = patch(&app, &z, &json!({"after": []})).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert!(job["spec"].get("after").is_none(), "{job}");
    let (status, job) = patch(&app, &z, &json!({"after": [x]})).await;
    assert_eq!((status, &job["spec"]["after"]), (StatusCode::OK, &json!([x])), "{job}");
    // Not someone else's, not a running job's, not a field it does not know.
    let bob = crate::helpers::client_with(&app.tokens["bob"]);
    let status =
        bob.patch(app.url(&format!("/api/jobs/{z}"))).json(&json!({"after": []})).send().await.unwrap().status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = patch(&app, &busy, &json!({"after": []})).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (StatusCode::CONFLICT, Some("running")), "{body}");
    let (status, _) = patch(&app, &z, &json!({"after": [], "priority": 3})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Cancelling x fails what waits for it, at once.
    let (status, _) = app.post(&format!("/api/jobs/{x}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for id in [&y, &z] {
        let (job, _) = app.finished(id, Duration::from_secs(5)).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert_eq!(job["error"], format!("job {}… it waits for was cancelled", short(&x)).as_str());
    }
}

#[tokio::test]
async fn a_job_waiting_for_a_job_that_failed_while_the_server_was_down_fails_at_start() {
    let (scripts, mut app) = crate::helpers::app_with_worker(CHAIN_WORKER, 1);
    let busy = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&busy, "running", WAIT).await;
    let x = app.submit(&small_spec("x")).await;
    let y = app.submit(&spec_after("y", &[&x])).await;
    let temp = app.take_temp();
    let root = app.root.clone();
    drop(app);
    // While no server runs, x is cancelled behind its back (as an admin's sqlite3 would).
    let db = root.join("data/trainq.db");
    let status = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!("UPDATE jobs SET state = 'cancelled', cancel_requested = 1 WHERE id = '{x}'"))
        .status();
    if !status.is_ok_and(|status| status.success()) {
        eprintln!("no sqlite3; skipping the restart half");
        return;
    }
    let worker = scripts.path().join("worker.sh");
    let app = TestApp::spawn_in(
        &root,
        crate::helpers::Options { worker: Some(worker), cpu_slots: Some(1), ..Default::default() },
    );
    let (job, _) = app.finished(&y, WAIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"], format!("job {}… it waits for was cancelled", short(&x)).as_str());
    drop(temp);
}

/// `trainq submit --after PREFIX --init-from PREFIX:final`, as a student types it.
#[tokio::test]
async fn the_client_chains_jobs_by_id_prefixes() {
    let (_scripts, app) = crate::helpers::app_with_worker(CHAIN_WORKER, 1);
    let first = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&first, "succeeded", WAIT).await;
    let home = tempfile::tempdir().unwrap();
    let spec = home.path().join("spec.json");
    std::fs::write(&spec, small_spec("second").to_string()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args([
            "submit",
            spec.to_str().unwrap(),
            "--after",
            &first[..6],
            "--init-from",
            &format!("{}:final", &first[..6]),
        ])
        .env("HOME", home.path())
        .env("TRAINQ_URL", app.url(""))
        .env("TRAINQ_TOKEN", &app.tokens["alice"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["spec"]["after"], json!([first]));
    assert_eq!(job["spec"]["init_from"], json!({"job": first, "checkpoint": "final"}));
    app.wait_for_state(&id, "succeeded", WAIT).await;
    // The worker was told where the weights it starts from are.
    let work: Value =
        serde_json::from_slice(&std::fs::read(app.root.join(format!("data/jobs/{id}/job.json"))).unwrap()).unwrap();
    let checkpoint = work["init_checkpoint"].as_str().unwrap();
    assert!(checkpoint.ends_with(&format!("{first}/artifacts/final.safetensors")), "{checkpoint}");
}

/// The real worker: a job started from another's `final` weights starts with them. It trains
/// only its head, so its saved backbone is the source's exactly, which the source's own training
/// (block5 in its second phase) had moved away from the ImageNet file; and its frozen backbone's
/// activations are computed afresh, not served from the cache entry of the ImageNet weights.
#[tokio::test]
async fn init_from_starts_from_the_source_jobs_weights() {
    let app = TestApp::spawn(crate::helpers::Options::default());
    crate::helpers::write_dataset(&app.root, 6, 2, 2);
    let initial = crate::helpers::write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let source = app.submit(&small_spec("source")).await;
    let mut spec = small_spec("started");
    spec["init_from"] = json!({"job": source, "checkpoint": "final"});
    spec["phases"] = json!([{"epochs": 1, "train": "head"}]);
    let started = app.submit(&spec).await;
    let (job, log) = app.finished(&started, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    assert!(log.contains("started from ") && log.contains(&format!("{source}/artifacts/final.safetensors")), "{log}");
    assert_ne!(job["progress"]["features"]["1"]["state"], "hit", "{job:#}");

    let theirs = crate::helpers::read_safetensors(&app.download(&source, "final.safetensors").await);
    let ours = crate::helpers::read_safetensors(&app.download(&started, "final.safetensors").await);
    let imagenet: std::collections::HashMap<&str, &Vec<f32>> =
        initial.iter().map(|(name, _, values)| (name.as_str(), values)).collect();
    assert_ne!(&theirs["features.28.weight"].1, imagenet["features.28.weight"], "the source trained block5");
    for (name, (shape, values)) in theirs.iter().filter(|(name, _)| name.starts_with("features.")) {
        assert_eq!((&ours[name].0, &ours[name].1), (shape, values), "{name} is the source's");
    }
}

#[tokio::test]
async fn a_job_another_starts_from_is_kept_until_that_one_started() {
    // A succeeded; B starts from A's weights but also waits for S, which runs until stopped: while
    // B waits, A's checkpoint may not go (delete answers 409 naming B; gc leaves A alone).
    let (_scripts, app) = crate::helpers::app_with_worker(CHAIN_WORKER, 2);
    let a = app.submit(&small_spec("a")).await;
    let (a_job, _) = app.finished(&a, WAIT).await;
    assert_eq!(a_job["state"], "succeeded", "{a_job}");
    let s = app.submit(&small_spec("sleep")).await;
    let mut spec = spec_after("b", &[&s]);
    spec["init_from"] = json!({"job": a, "checkpoint": "final"});
    let b = app.submit(&spec).await;

    let response = app.client.delete(app.url(&format!("/api/jobs/{a}"))).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["detail"]["needed_by"], b.as_str(), "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let root = crate::helpers::client_with(&app.tokens["root"]);
    let response = root.post(app.url("/api/admin/gc")).json(&json!({"older_than": "1s"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert!(report["failed"].as_array().unwrap().iter().any(|id| id == a.as_str()), "gc leaves A alone: {report}");
    let (_, a_job) = app.get(&format!("/api/jobs/{a}")).await;
    assert!(a_job["deleted_at"].is_null(), "{a_job}");

    // Once B no longer waits (cancelled), A's files may go.
    let (status, _) = app.post(&format!("/api/jobs/{b}/cancel"), &json!({})).await;
    assert!(status.is_success(), "{status}");
    let response = app.client.delete(app.url(&format!("/api/jobs/{a}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = app.post(&format!("/api/jobs/{s}/cancel"), &json!({})).await;
    assert!(status.is_success(), "{status}");
}
