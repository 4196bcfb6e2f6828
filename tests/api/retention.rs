//! Delete and retention, and disk per user (issue 19, items 1 and 2): who may delete which job,
//! what a tombstone keeps and what its files answer (410), gc's dry run against the real one,
//! the quota's 507, `trainq rm` and `trainq admin gc` through the real client, the `/metrics`
//! gauge, and the `checkpoints` choice in a real training run.

use crate::helpers::{
    app_with_worker, client_with, send, small_spec, write_dataset, write_vgg16_weights, Options, TestApp,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A fake worker that writes what a real job leaves behind (sizes in bytes): the final weights
/// (200,000), a phase checkpoint (300,000), a plot (1,000) and the resumable state (500,000),
/// then reports success. A job named `sleep` runs until stopped.
pub(crate) const FILE_WRITING_WORKER: &str = r#"
if grep -q '"name": "sleep"' "$3"; then exec sleep 60; fi
dir=$(dirname "$3")
mkdir -p "$dir/artifacts/plots" "$dir/state"
head -c 200000 /dev/zero > "$dir/artifacts/final.safetensors"
head -c 300000 /dev/zero > "$dir/artifacts/phase1.safetensors"
head -c 1000 /dev/zero > "$dir/artifacts/plots/roc.png"
head -c 500000 /dev/zero > "$dir/state/resume.safetensors"
echo "fake training" >&2
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

/// What the fake worker writes, in bytes (the folder also holds `job.json` and `log.txt`).
const WRITTEN: u64 = 1_001_000;

fn job_dir(app: &TestApp, id: &str) -> PathBuf {
    app.root.join("data/jobs").join(id)
}

async fn delete_as(app: &TestApp, user: &str, id: &str) -> (StatusCode, Value) {
    let client = client_with(&app.tokens[user]);
    send(client.delete(app.url(&format!("/api/jobs/{id}")))).await
}

async fn submit_as(app: &TestApp, user: &str, spec: &Value) -> (StatusCode, Value) {
    let client = client_with(&app.tokens[user]);
    send(client.post(app.url("/api/jobs")).json(spec)).await
}

/// A finished job's size is measured once its worker is done; polls `GET /api/jobs/{id}` for it.
async fn measured(app: &TestApp, id: &str) -> Value {
    app.wait_for(id, WAIT, |job| job["state"] == "succeeded" && job["disk_bytes"].as_u64().unwrap_or(0) > 0).await
}

async fn me(app: &TestApp, user: &str) -> Value {
    let client = client_with(&app.tokens[user]);
    send(client.get(app.url("/api/me"))).await.1
}

fn listed(jobs: &[Value], id: &str) -> bool {
    jobs.iter().any(|job| job["id"] == id)
}

#[tokio::test]
async fn owners_and_admins_delete_finished_jobs_and_a_tombstone_stays() {
    let (_scripts, app) = app_with_worker(FILE_WRITING_WORKER, 2);
    let alices = app.submit(&small_spec("alices")).await;
    let (status, body) = submit_as(&app, "bob", &small_spec("bobs")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bobs = body["jobs"][0]["id"].as_str().unwrap().to_string();
    let job = measured(&app, &alices).await;
    let bytes = job["disk_bytes"].as_u64().unwrap();
    assert!((WRITTEN..WRITTEN + 100_000).contains(&bytes), "the whole folder is measured: {bytes}");
    measured(&app, &bobs).await;
    assert_eq!(me(&app, "alice").await["disk_bytes"], bytes, "GET /api/me sums the user's jobs");

    // Someone else's job answers exactly like a missing one.
    let (status, body) = delete_as(&app, "bob", &alices).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (missing_status, _) = delete_as(&app, "bob", &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(missing_status, StatusCode::NOT_FOUND);
    assert!(job_dir(&app, &alices).join("artifacts/final.safetensors").exists());

    // A running job must be cancelled first.
    let running = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&running, "running", WAIT).await;
    let (status, body) = delete_as(&app, "alice", &running).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["detail"]["state"], "running", "{body}");
    assert!(body["detail"]["message"].as_str().unwrap().contains("cancel it first"), "{body}");
    app.post(&format!("/api/jobs/{running}/cancel"), &Value::Null).await;
    // Its folder (the worker's job file and log) is measured when it ends, like any job's.
    app.wait_for(&running, WAIT, |job| job["state"] == "cancelled" && job["disk_bytes"].as_u64().unwrap_or(0) > 0)
        .await;
    let usage_before = me(&app, "alice").await["disk_bytes"].as_u64().unwrap();

    // The owner deletes: files gone, the row stays with who and when.
    let (status, body) = delete_as(&app, "alice", &alices).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted_by"], "alice", "{body}");
    assert!(body["deleted_at"].as_f64().is_some(), "{body}");
    assert_eq!(body["freed_bytes"], bytes, "{body}");
    assert_eq!(body["disk_bytes"], 0, "{body}");
    assert!(!job_dir(&app, &alices).exists(), "the job's folder is removed");
    let (status, page) = app.get(&format!("/api/jobs/{alices}")).await;
    assert_eq!(
        (status, &page["deleted_by"], &page["state"]),
        (StatusCode::OK, &json!("alice"), &json!("succeeded")),
        "{page}"
    );
    assert_eq!(
        me(&app, "alice").await["disk_bytes"].as_u64(),
        Some(usage_before - bytes),
        "the usage drops with the delete"
    );

    // Its files answer 410 naming the delete; its curves (rows, not files) stay.
    for path in ["artifacts", "artifacts/final.safetensors", "log", "predictions.csv", "plots/roc.svg"] {
        let (status, body) = app.get(&format!("/api/jobs/{alices}/{path}")).await;
        assert_eq!(status, StatusCode::GONE, "{path}: {body}");
        assert_eq!(body["detail"]["deleted_by"], "alice", "{path}: {body}");
        assert!(body["detail"]["message"].as_str().unwrap().contains("was deleted"), "{path}: {body}");
    }
    assert_eq!(app.get(&format!("/api/jobs/{alices}/metrics")).await.0, StatusCode::OK);
    // Deleting again says it is gone; the list hides it unless asked.
    let (status, body) = delete_as(&app, "alice", &alices).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(!listed(&app.all_jobs("owner=me").await, &alices));
    let with_deleted = app.all_jobs("owner=me&deleted=true").await;
    let row = with_deleted.iter().find(|job| job["id"] == alices.as_str()).expect("listed with deleted=true");
    assert!(row["deleted_at"].as_f64().is_some(), "{row}");
    let (status, body) = app.get("/api/jobs?deleted=maybe").await;
    assert_eq!((status, body["detail"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("deleted")), "{body}");
    // A deleted job can still be run again from its spec.
    let (status, body) = app.post(&format!("/api/jobs/{alices}/resubmit"), &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // An admin deletes anyone's finished job; everyone's usage is theirs to see.
    let (status, body) = delete_as(&app, "root", &bobs).await;
    assert_eq!((status, &body["deleted_by"]), (StatusCode::OK, &json!("root")), "{body}");
    let root = client_with(&app.tokens["root"]);
    let (status, usage) = send(root.get(app.url("/api/admin/usage"))).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let bob_usage = usage["users"].as_array().unwrap().iter().find(|user| user["user"] == "bob").cloned();
    assert_eq!(bob_usage.map(|user| user["disk_bytes"].clone()), Some(json!(0)), "{usage}");
    let (status, body) = app.get("/api/admin/usage").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "students see their own usage only: {body}");
}

#[tokio::test]
async fn over_the_quota_a_submit_answers_507_naming_it_and_what_to_delete() {
    let scripts = tempfile::tempdir().unwrap();
    let worker = crate::helpers::fake_worker(scripts.path(), "worker.sh", FILE_WRITING_WORKER);
    // 0.5 MB: one job of the fake worker's 1 MB is over it.
    let args = vec![String::from("--max-disk-per-user-gb"), String::from("0.0005")];
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(1), args });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let first = app.submit(&small_spec("big")).await;
    let usage = measured(&app, &first).await["disk_bytes"].as_u64().unwrap();
    let me = me(&app, "alice").await;
    assert_eq!((me["disk_bytes"].as_u64(), me["disk_quota_bytes"].as_u64()), (Some(usage), Some(500_000)), "{me}");

    let (status, body) = app.post("/api/jobs", &small_spec("more")).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    let detail = &body["detail"];
    assert_eq!(
        (detail["quota_bytes"].as_u64(), detail["usage_bytes"].as_u64()),
        (Some(500_000), Some(usage)),
        "{body}"
    );
    assert_eq!(detail["largest_jobs"][0]["id"], first.as_str(), "{body}");
    let message = detail["message"].as_str().unwrap();
    assert!(message.contains("quota") && message.contains("trainq rm") && message.contains(&first), "{message}");
    // A resubmit is a submit: the same answer.
    let (status, _) = app.post(&format!("/api/jobs/{first}/resubmit"), &json!({})).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    // Another student and admins are not held by alice's usage.
    let (status, body) = submit_as(&app, "bob", &small_spec("bobs")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bobs = body["jobs"][0]["id"].as_str().unwrap().to_string();
    // Deleting makes room at once.
    assert_eq!(delete_as(&app, "alice", &first).await.0, StatusCode::OK);
    assert_eq!(app.post("/api/jobs", &small_spec("more")).await.0, StatusCode::CREATED);

    // `/metrics` has each user's bytes, once a job of theirs was measured.
    measured(&app, &bobs).await;
    let (status, text) = app.text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("# TYPE trainq_user_disk_bytes gauge"), "{text}");
    assert!(
        text.contains("trainq_user_disk_bytes{user=\"alice\"} ")
            && text.contains("trainq_user_disk_bytes{user=\"bob\"} "),
        "{text}"
    );
}

/// `trainq ARGS` as a logged-in user of `app` (through `TRAINQ_URL`/`TRAINQ_TOKEN`).
fn trainq(app: &TestApp, user: &str, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("TRAINQ_URL", app.url(""))
        .env("TRAINQ_TOKEN", &app.tokens[user])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

#[tokio::test]
async fn gc_dry_run_lists_what_a_real_run_then_prunes_or_deletes() {
    let (_scripts, app) = app_with_worker(FILE_WRITING_WORKER, 1);
    let old = app.submit(&small_spec("old")).await;
    let before = measured(&app, &old).await["disk_bytes"].as_u64().unwrap();
    let dir = job_dir(&app, &old);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let root = client_with(&app.tokens["root"]);
    let gc = |body: Value| {
        let request = root.post(app.url("/api/admin/gc")).json(&body);
        send(request)
    };

    // Students may not; a bad age or keep list is a 422 naming it.
    let (status, _) = app.post("/api/admin/gc", &json!({"older_than": "1s"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = gc(json!({"older_than": "30"})).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("older_than")),
        "{body}"
    );
    assert!(body["detail"]["message"].as_str().unwrap().contains("30d"), "{body}");
    let (status, body) = gc(json!({"older_than": "1s", "keep": ["../x"]})).await;
    assert_eq!((status, body["detail"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("keep")), "{body}");
    // A job that ended a moment ago is not old enough for a day.
    let (status, body) = gc(json!({"older_than": "1d", "dry_run": true})).await;
    assert_eq!((status, body["jobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{body}");

    // A dry run says what would go, and nothing goes.
    let keep = json!(["final.safetensors", "plots"]);
    let (status, report) = gc(json!({"older_than": "1s", "keep": keep, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["dry_run"], true);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{report}");
    assert_eq!((&jobs[0]["id"], &jobs[0]["action"]), (&json!(old), &json!("prune")), "{report}");
    let would_free = jobs[0]["freed_bytes"].as_u64().unwrap();
    assert_eq!(jobs[0]["kept_bytes"], 201_000, "{report}");
    assert_eq!(would_free + 201_000, before, "{report}");
    assert_eq!(report["freed_bytes"].as_u64(), Some(would_free));
    for file in ["artifacts/final.safetensors", "artifacts/phase1.safetensors", "state/resume.safetensors", "log.txt"] {
        assert!(exists(&dir, file), "a dry run removed {file}");
    }
    // The client says the same.
    let (ok, stdout, stderr) =
        trainq(&app, "root", &["admin", "gc", "--older-than", "1s", "--keep", "final.safetensors,plots", "--dry-run"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&old) && stdout.contains("would free") && stdout.contains("dry run"), "{stdout}");
    let (ok, _, stderr) = trainq(&app, "root", &["admin", "gc", "--older-than", "soon"]);
    assert!(!ok && stderr.contains("--older-than"), "{stderr}");

    // The real prune keeps the listed files, removes the rest, and re-measures the job.
    let (status, report) = gc(json!({"older_than": "1s", "keep": keep})).await;
    assert_eq!((status, report["freed_bytes"].as_u64()), (StatusCode::OK, Some(would_free)), "{report}");
    assert!(exists(&dir, "artifacts/final.safetensors") && exists(&dir, "artifacts/plots/roc.png"));
    for file in ["artifacts/phase1.safetensors", "state/resume.safetensors", "log.txt", "job.json"] {
        assert!(!exists(&dir, file), "{file} was not pruned");
    }
    let (_, job) = app.get(&format!("/api/jobs/{old}")).await;
    assert_eq!(job["disk_bytes"], 201_000, "{job}");
    assert!(job["deleted_at"].is_null(), "a prune keeps the job live: {job}");
    assert!(
        job["notes"].as_array().unwrap().iter().any(|note| note.as_str().unwrap().contains("pruned by gc")),
        "{job}"
    );
    assert!(listed(&app.all_jobs("owner=me").await, &old));
    assert_eq!(me(&app, "alice").await["disk_bytes"], 201_000);
    // A pruned job is not pruned again.
    let (_, report) = gc(json!({"older_than": "1s", "keep": keep})).await;
    assert_eq!(report["jobs"].as_array().map(Vec::len), Some(0), "{report}");

    // Without a keep list, gc deletes: a tombstone by `gc`, through the client.
    let (ok, stdout, stderr) = trainq(&app, "root", &["admin", "gc", "--older-than", "1s"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&old) && stdout.contains("delete"), "{stdout}");
    assert!(!dir.exists());
    let (_, job) = app.get(&format!("/api/jobs/{old}")).await;
    assert_eq!(job["deleted_by"], "gc", "{job}");
    assert_eq!(me(&app, "alice").await["disk_bytes"], 0);
}

#[tokio::test]
async fn trainq_rm_deletes_finished_jobs_and_refuses_running_ones() {
    let (_scripts, app) = app_with_worker(FILE_WRITING_WORKER, 2);
    let done = app.submit(&small_spec("done")).await;
    measured(&app, &done).await;
    let running = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&running, "running", WAIT).await;

    // By a unique prefix, as the other commands take ids.
    let (ok, stdout, stderr) = trainq(&app, "alice", &["rm", &done[..8]]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&done) && stdout.contains("deleted") && stdout.contains("MB freed"), "{stdout}");
    assert!(!job_dir(&app, &done).exists());
    let (ok, _, stderr) = trainq(&app, "alice", &["rm", &running]);
    assert!(!ok, "a running job is not deleted");
    assert!(stderr.contains("409") && stderr.contains("cancel"), "{stderr}");
    // Bob cannot delete alice's job, even by its whole id.
    let (ok, _, stderr) = trainq(&app, "bob", &["rm", &running]);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    app.post(&format!("/api/jobs/{running}/cancel"), &Value::Null).await;
}

/// A real (tiny) training run per `checkpoints` choice: which weights files its artifacts hold.
#[tokio::test]
async fn checkpoints_choose_which_weights_files_a_real_job_keeps() {
    let app = TestApp::spawn(Options { cpu_slots: Some(2), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let with = |name: &str, checkpoints: &str| {
        let mut spec = small_spec(name);
        spec["phases"][0]["epochs"] = json!(2);
        spec["checkpoints"] = json!(checkpoints);
        spec
    };
    let only_final = app.submit(&with("final", "final")).await;
    let every_epoch = app.submit(&with("all", "all")).await;
    let (status, body) = app.post("/api/jobs", &with("bad", "some")).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("checkpoints")),
        "{body}"
    );
    let weights = |artifacts: &Value| -> Vec<String> {
        let mut names: Vec<String> = artifacts
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|artifact| artifact["name"].as_str())
            .filter(|name| name.ends_with(".safetensors"))
            .map(str::to_string)
            .collect();
        names.sort();
        names
    };
    for (id, expected) in [
        (&only_final, vec!["final.safetensors"]),
        (&every_epoch, vec!["final.safetensors", "phase1-epoch01.safetensors", "phase1.safetensors"]),
    ] {
        app.wait_for_state(id, "succeeded", Duration::from_secs(600)).await;
        let (_, artifacts) = app.get(&format!("/api/jobs/{id}/artifacts")).await;
        assert_eq!(weights(&artifacts), expected, "{artifacts}");
    }
}

/// Jobs that ended before their sizes were kept (or whose size a dead server never recorded) are
/// measured once at the next start, so the usage counts them.
#[tokio::test]
async fn a_start_measures_the_jobs_that_ended_unmeasured() {
    let temp = tempfile::tempdir().unwrap();
    // Cancelled jobs of alice and bob, written straight into the database: never measured.
    let ids = crate::helpers::seed_jobs(&temp.path().join("data"), 2, 0).await;
    let artifacts = temp.path().join("data/jobs").join(&ids[0]).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("final.safetensors"), vec![0u8; 12_345]).unwrap();
    let app = TestApp::spawn_in(temp.path(), Options::default());
    let job = app.wait_for(&ids[0], WAIT, |job| job["disk_bytes"] == 12_345).await;
    assert_eq!(job["owner"], "alice", "{job}");
    assert_eq!(me(&app, "alice").await["disk_bytes"], 12_345);
    assert_eq!(me(&app, "bob").await["disk_bytes"], 0, "a job without a folder holds nothing");
}
