//! Lab reservations over the API: create, list and delete (admins only), the 409 of an overlap
//! and of a taken name, each 422 naming its field with nothing stored, the devices panel's view,
//! and the scheduler keeping a reserved CPU slot for the reservation's users with the reason.

use crate::helpers::{
    client_with, fake_worker, send, small_spec, write_dataset, write_vgg16_weights, Options, TestApp, FAKE_WORKER,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use trainq::domain::Timestamp;

const WAIT: Duration = Duration::from_secs(60);

/// RFC 3339 `hours` from now.
fn in_hours(hours: f64) -> String {
    Timestamp::now().plus_seconds(hours * 3600.0).to_rfc3339()
}

fn lab(name: &str, device: &str, start: &str, end: &str, users: &[&str]) -> Value {
    json!({ "name": name, "devices": [device], "start": start, "end": end, "users": users })
}

async fn reserve(app: &TestApp, as_user: &str, body: &Value) -> (StatusCode, Value) {
    send(client_with(&app.tokens[as_user]).post(app.url("/api/admin/reservations")).json(body)).await
}

async fn names(app: &TestApp) -> Vec<String> {
    let (status, all) = send(client_with(&app.tokens["root"]).get(app.url("/api/admin/reservations"))).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    all.as_array().unwrap().iter().map(|reservation| reservation["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn admins_create_list_and_delete_reservations_and_bad_ones_are_refused_whole() {
    let app = TestApp::spawn(Options { cpu_slots: Some(2), ..Options::default() });
    let mut tuesday = lab("lab-b", "cpu0", "2030-01-01T14:00:00Z", "2030-01-01T16:00:00+00:00", &["alice", "bob"]);
    tuesday["weekly"] = json!(true);
    let (status, saved) = reserve(&app, "root", &tuesday).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    assert_eq!(saved["end"], "2030-01-01T16:00:00Z", "times come back in UTC");
    assert_eq!((&saved["weekly"], &saved["users"]), (&json!(true), &json!(["alice", "bob"])));
    assert_eq!(names(&app).await, ["lab-b"]);

    // Students may do none of it.
    assert_eq!(
        reserve(&app, "alice", &lab("mine", "cpu1", &in_hours(1.0), &in_hours(2.0), &["alice"])).await.0,
        StatusCode::FORBIDDEN
    );
    let alice = client_with(&app.tokens["alice"]);
    assert_eq!(send(alice.get(app.url("/api/admin/reservations"))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(alice.delete(app.url("/api/admin/reservations/lab-b"))).await.0, StatusCode::FORBIDDEN);
    // Nor may anyone without a token.
    let nobody = reqwest::Client::new();
    assert_eq!(send(nobody.get(app.url("/api/admin/reservations"))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(nobody.delete(app.url("/api/admin/reservations/lab-b"))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(names(&app).await, ["lab-b"], "the refused delete removed nothing");

    // An overlap on the shared device, weeks later, names the other reservation; a taken name too.
    let exam = lab("exam", "cpu0", "2030-01-22T15:00:00Z", "2030-01-22T15:30:00Z", &["bob"]);
    let (status, body) = reserve(&app, "root", &exam).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["detail"]["reservation"], "lab-b", "{body}");
    assert!(body["error"].as_str().unwrap().contains("`lab-b`"), "{body}");
    let (status, body) = reserve(&app, "root", &lab("lab-b", "cpu1", &in_hours(1.0), &in_hours(2.0), &["bob"])).await;
    assert_eq!((status, &body["detail"]["field"]), (StatusCode::CONFLICT, &json!("name")), "{body}");

    // Each bad field is a 422 naming it.
    let cases = [
        (lab("back", "cpu1", &in_hours(2.0), &in_hours(1.0), &["bob"]), "end"),
        (lab("zero", "cpu1", "2030-01-01T14:00:00Z", "2030-01-01T14:00:00Z", &["bob"]), "end"),
        (lab("past", "cpu1", &in_hours(-3.0), &in_hours(-1.0), &["bob"]), "end"),
        (lab("nodev", "gpu7", &in_hours(1.0), &in_hours(2.0), &["bob"]), "devices"),
        (lab("nouser", "cpu1", &in_hours(1.0), &in_hours(2.0), &["mallory"]), "users"),
        (lab("when", "cpu1", "next tuesday", &in_hours(2.0), &["bob"]), "start"),
        (lab("Bad Name", "cpu1", &in_hours(1.0), &in_hours(2.0), &["bob"]), "name"),
    ];
    for (body, field) in cases {
        let (status, answer) = reserve(&app, "root", &body).await;
        assert_eq!(
            (status, &answer["detail"]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!(field)),
            "{body}: {answer}"
        );
    }
    let mut weekly_too_long = lab("long", "cpu1", "2030-01-01T14:00:00Z", "2030-01-09T14:00:00Z", &["bob"]);
    weekly_too_long["weekly"] = json!(true);
    assert_eq!(reserve(&app, "root", &weekly_too_long).await.1["detail"]["field"], "end");
    assert_eq!(names(&app).await, ["lab-b"], "nothing stored on any error");

    let root = client_with(&app.tokens["root"]);
    assert_eq!(send(root.delete(app.url("/api/admin/reservations/lab-b"))).await.0, StatusCode::NO_CONTENT);
    assert_eq!(send(root.delete(app.url("/api/admin/reservations/lab-b"))).await.0, StatusCode::NOT_FOUND);
    assert!(names(&app).await.is_empty());
    // Once lab-b is gone, the exam fits.
    assert_eq!(reserve(&app, "root", &exam).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn a_reserved_slot_runs_only_its_users_jobs_and_others_are_told_why() {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(2), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));

    // Under way now, on cpu0, for bob.
    let (status, body) = reserve(&app, "root", &lab("lab-b", "cpu0", &in_hours(-0.1), &in_hours(1.0), &["bob"])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, devices) = app.get("/api/devices").await;
    let shown = &devices[0]["reservations"][0];
    assert_eq!(
        (&shown["name"], &shown["under_way"], &shown["users"]),
        (&json!("lab-b"), &json!(true), &json!(["bob"])),
        "{devices}"
    );
    assert!(devices[1]["reservations"].as_array().unwrap().is_empty(), "{devices}");

    // alice's first job takes the free slot; her second waits, saying which reservation holds it.
    let mut spec = small_spec("sleep");
    spec["time_limit"] = json!("2h");
    let first = app.submit(&spec).await;
    let running = app.wait_for_state(&first, "running", WAIT).await;
    assert_eq!(running["device"], "cpu1", "{running}");
    let second = app.submit(&spec).await;
    let waiting = app
        .wait_for(&second, WAIT, |job| job["pending_reason"].as_str().is_some_and(|reason| reason.contains("reserved")))
        .await;
    let reason = waiting["pending_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("CPU slot 0 is reserved for lab-b, ")
            && reason.contains("only its users' jobs start there now"),
        "{reason}"
    );

    // bob's job starts there at once, ahead of alice's.
    let bob = client_with(&app.tokens["bob"]);
    let (status, job) = send(bob.post(app.url("/api/jobs")).json(&spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let bobs = app.wait_for_state(job["jobs"][0]["id"].as_str().unwrap(), "running", WAIT).await;
    assert_eq!(bobs["device"], "cpu0", "{bobs}");
    assert_eq!(app.get(&format!("/api/jobs/{second}")).await.1["state"], "queued");
}
