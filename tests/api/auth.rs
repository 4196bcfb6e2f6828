//! Users and tokens: every endpoint × {owner, other student, no token, admin}, the limits, and
//! that the database never holds a token.

use crate::helpers::{client_with, fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Writes a few artifacts and a secret log line, then reports an epoch and final metrics.
const WORKER: &str = r#"
mkdir -p artifacts
echo '{"ok": true}' > artifacts/metrics.json
printf 'path,label,probability\na.jpeg,NORMAL,0.1\n' > artifacts/predictions.csv
echo "secret-log-line-of-$(basename "$PWD")" >&2
if grep -q '"name": "sleep"' "$3"; then exec sleep 60; fi
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":0.6,"val_acc":0.7,"seconds":0.1}'
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

fn app(args: &[&str]) -> (tempfile::TempDir, TestApp) {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", WORKER);
    let args = args.iter().map(|arg| arg.to_string()).collect();
    let app = TestApp::spawn(Options { worker: Some(worker), args, ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    (scripts, app)
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Owner,
    Other,
    Nobody,
    Admin,
}

impl TestApp {
    fn client_for(&self, who: Who) -> reqwest::Client {
        match who {
            Who::Owner => client_with(&self.tokens["alice"]),
            Who::Other => client_with(&self.tokens["bob"]),
            Who::Nobody => reqwest::Client::new(),
            Who::Admin => client_with(&self.tokens["root"]),
        }
    }

    async fn status_of(&self, who: Who, method: Method, path: &str, body: Option<Vec<u8>>) -> StatusCode {
        let mut request = self.client_for(who).request(method, self.url(path));
        if let Some(body) = body {
            request = request.body(body).header("content-type", "application/json");
        }
        // Streams (events, log follow) answer their status at once; the body is not read.
        request.send().await.unwrap().status()
    }
}

/// One endpoint: method, path, body, and the status for owner, other student, nobody, admin.
type Row = (Method, String, Option<Vec<u8>>, [StatusCode; 4]);

/// 200-class for owner and admin, 404 for another student (as if the job did not exist), 401
/// without a token.
const PRIVATE: [StatusCode; 4] = [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED, StatusCode::OK];
/// Open to everyone, like `squeue`.
const PUBLIC: [StatusCode; 4] = [StatusCode::OK; 4];

#[tokio::test]
async fn every_endpoint_answers_owner_other_anonymous_and_admin_as_it_should() {
    let (_scripts, app) = app(&[]);
    let job = app.submit(&small_spec("mine")).await;
    app.wait_for_state(&job, "succeeded", WAIT).await;
    let mut repeated = small_spec("repeated");
    repeated["repeats"] = json!(2);
    let (status, body) = app.post("/api/jobs", &repeated).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let group = body["group_id"].as_str().unwrap().to_string();
    for member in body["jobs"].as_array().unwrap() {
        app.wait_for_state(member["id"].as_str().unwrap(), "succeeded", WAIT).await;
    }
    let spec = serde_json::to_vec(&small_spec("submitted")).unwrap();
    let not_an_image = b"hello".to_vec();
    let conflict = StatusCode::CONFLICT;
    let created = StatusCode::CREATED;
    let (not_found, unauthorized) = (StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED);
    let matrix: Vec<Row> = vec![
        (Method::GET, String::from("/api/jobs"), None, PUBLIC),
        (Method::GET, format!("/api/jobs/{job}"), None, PUBLIC),
        (Method::GET, String::from("/api/events"), None, PUBLIC),
        (Method::GET, String::from("/api/datasets"), None, PUBLIC),
        (Method::GET, String::from("/api/weights"), None, PUBLIC),
        (Method::GET, String::from("/api/backbones"), None, PUBLIC),
        (Method::GET, String::from("/api/devices"), None, PUBLIC),
        (Method::GET, String::from("/healthz"), None, PUBLIC),
        (Method::GET, String::from("/api/me"), None, [StatusCode::OK, StatusCode::OK, unauthorized, StatusCode::OK]),
        (Method::POST, String::from("/api/jobs"), Some(spec), [created, created, unauthorized, created]),
        // The job has finished: its owner and an admin hear why nothing can be cancelled.
        (Method::POST, format!("/api/jobs/{job}/cancel"), None, [conflict, not_found, unauthorized, conflict]),
        (Method::GET, format!("/api/jobs/{job}/events"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/metrics"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/metrics?format=csv"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/log"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/artifacts"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/artifacts/metrics.json"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/predictions.csv"), None, PRIVATE),
        (Method::GET, format!("/api/jobs/{job}/plots/accuracy.svg"), None, PRIVATE),
        // No model was trained (fake worker): 409 for those who may ask, 404 for others.
        (
            Method::POST,
            format!("/api/jobs/{job}/predict"),
            Some(not_an_image.clone()),
            [conflict, not_found, unauthorized, conflict],
        ),
        (
            Method::POST,
            format!("/api/jobs/{job}/cam"),
            Some(not_an_image),
            [conflict, not_found, unauthorized, conflict],
        ),
        (Method::GET, format!("/api/groups/{group}"), None, PRIVATE),
        (Method::GET, format!("/api/compare?ids={job},{group}"), None, PRIVATE),
        (Method::GET, format!("/api/compare/plots/accuracy.svg?ids={job}"), None, PRIVATE),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &matrix {
        for (who, expected) in [Who::Owner, Who::Other, Who::Nobody, Who::Admin].into_iter().zip(expected) {
            let status = app.status_of(who, method.clone(), path, body.clone()).await;
            if status != *expected {
                wrong.push(format!("{method} {path} as {who:?}: {status}, expected {expected}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The queue is public, but a job's results and failure log are its owner's.
    let shown = |who| {
        let client = app.client_for(who);
        let url = app.url(&format!("/api/jobs/{job}"));
        async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(shown(Who::Owner).await["final_metrics"]["test_acc"], 0.9);
    assert_eq!(shown(Who::Admin).await["final_metrics"]["test_acc"], 0.9);
    let other = shown(Who::Other).await;
    assert_eq!((other["owner"].as_str(), other["state"].as_str()), (Some("alice"), Some("succeeded")));
    assert_eq!(other["final_metrics"], Value::Null);

    // A token that is malformed or unknown is refused even where none is needed.
    for header in ["Bearer tq_0000", "Basic YWxpY2U6eA==", "Bearer "] {
        let response =
            reqwest::Client::new().get(app.url("/api/jobs")).header("authorization", header).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"]["field"], "Authorization", "{body}");
    }

    // Only hashes are stored: no token appears in any file of the database.
    for entry in std::fs::read_dir(app.root.join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap().to_string_lossy().starts_with("trainq.db") {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            for token in app.tokens.values() {
                assert!(!text.contains(&token[3..]), "{} holds a token in clear", path.display());
            }
        }
    }
}

#[tokio::test]
async fn students_cannot_cancel_each_others_jobs_and_see_only_their_own_log_lines() {
    let (_scripts, app) = app(&[]);
    // Bob listens to everything from the start.
    let bob = app.client_for(Who::Other);
    let mut bob_events = bob.get(app.url("/api/events")).send().await.unwrap().bytes_stream();
    let admin = app.client_for(Who::Admin);
    let mut admin_events = admin.get(app.url("/api/events")).send().await.unwrap().bytes_stream();
    let job = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&job, "running", WAIT).await;
    let started = std::time::Instant::now();
    while !app.text(&format!("/api/jobs/{job}/log")).await.1.contains("secret-log-line") {
        assert!(started.elapsed() < WAIT, "the worker never wrote its line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancel = bob.post(app.url(&format!("/api/jobs/{job}/cancel"))).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("/api/jobs/{job}")).await.1["state"], "running", "bob's cancel did nothing");
    let cancel = admin.post(app.url(&format!("/api/jobs/{job}/cancel"))).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    app.wait_for_state(&job, "cancelled", WAIT).await;
    let seen_by_admin = read_until_finished(&mut admin_events, &job).await;
    let seen_by_bob = read_until_finished(&mut bob_events, &job).await;
    assert!(seen_by_admin.contains("secret-log-line-of-"), "{seen_by_admin}");
    assert!(seen_by_bob.contains("event: started"), "bob sees the queue move: {seen_by_bob}");
    assert!(!seen_by_bob.contains("secret-log-line-of-"), "bob must not see alice's log: {seen_by_bob}");
}

/// Reads a server-sent event stream until it has announced the end of `job`.
async fn read_until_finished(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    job: &str,
) -> String {
    let mut text = String::new();
    while !(text.contains("event: finished") && text.contains(job)) {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => panic!("event stream ended early: {text}"),
        }
    }
    text
}

#[tokio::test]
async fn limits_answer_with_the_field_and_the_fix() {
    let (_scripts, app) = app(&[
        "--rate-limit-per-minute",
        "60",
        "--max-jobs-per-user",
        "2",
        "--max-epochs",
        "5",
        "--max-image-side",
        "64",
    ]);
    // Admin-only fields.
    let mut urgent = small_spec("urgent");
    urgent["priority"] = json!(5);
    let (status, body) = app.post("/api/jobs", &urgent).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["detail"]["field"], "priority");
    // Caps from the config.
    let mut long = small_spec("long");
    long["phases"][0]["epochs"] = json!(10);
    let (status, body) = app.post("/api/jobs", &long).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("phases")),
        "{body}"
    );
    let mut big = small_spec("big");
    big["image_size"] = json!(128);
    let (status, body) = app.post("/api/jobs", &big).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("image_size")),
        "{body}"
    );
    // Queued jobs per user: two sleepers fill alice's quota; bob still has his.
    app.submit(&small_spec("sleep")).await;
    app.submit(&small_spec("sleep")).await;
    let (status, body) = app.post("/api/jobs", &small_spec("third")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["detail"]["message"].as_str().unwrap().contains("limit is 2"), "{body}");
    let bob = app.client_for(Who::Other);
    let response = bob.post(app.url("/api/jobs")).json(&small_spec("bobs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // An admin's priority is accepted and stored.
    let admin = app.client_for(Who::Admin);
    let response = admin.post(app.url("/api/jobs")).json(&urgent).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap()["jobs"][0]["priority"], 5);
    // The request rate: 60 a minute with bursts of 15, per user.
    let response = first_limited(&bob, &app.url("/api/jobs")).await.expect("bob was never limited");
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Anonymous reads of the queue are not bob's budget, but their address has one of its own.
    assert_eq!(reqwest::get(app.url("/api/jobs")).await.unwrap().status(), StatusCode::OK);
    let anonymous = reqwest::Client::new();
    let response =
        first_limited(&anonymous, &app.url("/api/jobs")).await.expect("an anonymous address was never limited");
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"]["message"].as_str().unwrap().contains("127.0.0.1"), "{body}");
    // The signed-in admin, from the same address, is not held back by it.
    assert_eq!(admin.get(app.url("/api/jobs")).send().await.unwrap().status(), StatusCode::OK);
}

/// The first 429 among 40 quick requests of `client` to `url`.
async fn first_limited(client: &reqwest::Client, url: &str) -> Option<reqwest::Response> {
    for _ in 0..40 {
        let response = client.get(url).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return Some(response);
        }
    }
    None
}
