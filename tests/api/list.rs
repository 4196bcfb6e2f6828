//! `GET /api/jobs` in pages: every job once, pages that stay put while jobs are added, filters by
//! owner and states, bad queries named, compact rows that still hide what only owners may see,
//! `ETag`s with `304`, a queue of 10,000 jobs answered a small page at a time, and a queue longer
//! than a scheduling pass looks at, every job in its own place.

use crate::helpers::{
    client_with, fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp, FAKE_WORKER,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Options for a server with the fake worker (`sleep` jobs run for a minute, others succeed).
fn fake_worker_options() -> (tempfile::TempDir, Options) {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    (scripts, Options { worker: Some(worker), ..Options::default() })
}

fn ids(jobs: &[Value]) -> Vec<String> {
    jobs.iter().map(|job| job["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn pages_list_every_job_once_and_stay_put_while_jobs_are_added() {
    let (_scripts, options) = fake_worker_options();
    let (app, seeded) = TestApp::spawn_seeded(options, 23, 0).await;
    // Newest first, five a page, and a job submitted before each next page is asked for.
    let (mut walked, mut added) = (Vec::new(), Vec::new());
    let mut path = String::from("/api/jobs?limit=5");
    loop {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let link = response.headers().get("link").map(|value| value.to_str().unwrap().to_string());
        let page: Value = response.json().await.unwrap();
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 5, "{page}");
        walked.extend(ids(jobs));
        let Some(cursor) = page["next_cursor"].as_str() else {
            assert_eq!(link, None, "the last page links nowhere");
            break;
        };
        assert_eq!(link, Some(format!("</api/jobs?limit=5&cursor={cursor}>; rel=\"next\"")));
        path = format!("/api/jobs?limit=5&cursor={cursor}");
        added.push(app.submit(&small_spec("sleep")).await);
    }
    let newest_first: Vec<String> = seeded.iter().rev().cloned().collect();
    assert_eq!(walked, newest_first, "every job once and in order, none of the {} added meanwhile", added.len());
    assert_eq!(added.len(), 4);
    // A new walk starts with them; oldest first it ends with them.
    let fresh = app.all_jobs("limit=3").await;
    assert_eq!(ids(&fresh[..4]), added.iter().rev().cloned().collect::<Vec<_>>());
    let oldest_first = app.all_jobs("order=asc&limit=7").await;
    assert_eq!(ids(&oldest_first), seeded.iter().chain(&added).cloned().collect::<Vec<_>>());
    let seqs: Vec<u64> = oldest_first.iter().map(|job| job["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
}

#[tokio::test]
async fn bad_list_queries_are_400_naming_the_field() {
    let app = TestApp::spawn(Options::default());
    let cases = [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=many", "limit"),
        ("cursor=12", "cursor"),
        ("cursor=s0", "cursor"),
        ("cursor=s12x", "cursor"),
        ("state=done", "state"),
        ("state=queued,done", "state"),
        ("owner=No%20One", "owner"),
        ("owner=", "owner"),
        ("order=random", "order"),
        ("state=queued&state=running", "state"),
    ];
    for (query, field) in cases {
        let (status, body) = app.get(&format!("/api/jobs?{query}")).await;
        assert_eq!(
            (status, body["detail"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{query}: {body}"
        );
        assert!(body["detail"]["message"].as_str().is_some_and(|message| message.len() > 20), "{query}: {body}");
    }
    let (_, body) = app.get("/api/jobs?limit=501").await;
    assert!(body["detail"]["message"].as_str().unwrap().contains("at most 500"), "{body}");
    let (status, body) = app.get("/api/jobs?limit=500&state=queued,running&owner=bob&order=asc").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"jobs": [], "next_cursor": null})));
    // `owner=me` is the caller's, so it needs a token.
    let response = reqwest::get(app.url("/api/jobs?owner=me")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"]["message"].as_str().unwrap().contains("owner=me"), "{body}");
    // The event stream's snapshot takes the same query, and is always a first page.
    for (query, field) in [("limit=0", "limit"), ("state=done", "state"), ("cursor=s1", "cursor")] {
        let (status, body) = app.get(&format!("/api/events?{query}")).await;
        assert_eq!(
            (status, body["detail"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn lists_filter_by_owner_and_states_and_rows_hide_what_only_owners_see() {
    let (_scripts, options) = fake_worker_options();
    let app = TestApp::spawn(options);
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let succeeded = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&succeeded, "succeeded", WAIT).await;
    let failed = app.submit(&small_spec("exit3")).await;
    app.wait_for_state(&failed, "failed", WAIT).await;
    let running = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&running, "running", WAIT).await;
    let queued = app.submit(&small_spec("sleep")).await;
    let cancelled = app.submit(&small_spec("sleep")).await;
    assert_eq!(app.post(&format!("/api/jobs/{cancelled}/cancel"), &json!({})).await.0, StatusCode::OK);
    let bob = client_with(&app.tokens["bob"]);
    let answer: Value =
        bob.post(app.url("/api/jobs")).json(&small_spec("sleep")).send().await.unwrap().json().await.unwrap();
    let bobs = answer["jobs"][0]["id"].as_str().unwrap().to_string();

    assert_eq!(
        ids(&app.all_jobs("state=queued,running&limit=2").await),
        [bobs.as_str(), queued.as_str(), running.as_str()]
    );
    assert_eq!(
        ids(&app.all_jobs("state=running,queued&order=asc").await),
        [running.as_str(), queued.as_str(), bobs.as_str()]
    );
    assert_eq!(ids(&app.all_jobs("state=failed").await), [failed.as_str()]);
    let alices = [cancelled.as_str(), queued.as_str(), running.as_str(), failed.as_str(), succeeded.as_str()];
    assert_eq!(ids(&app.all_jobs("owner=me").await), alices);
    assert_eq!(
        ids(&app.all_jobs("owner=me&state=cancelled,queued&limit=1").await),
        [cancelled.as_str(), queued.as_str()]
    );
    assert_eq!(ids(&app.all_jobs("owner=bob").await), [bobs.as_str()]);
    let bobs_own: Value = bob.get(app.url("/api/jobs?owner=me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(bobs_own["jobs"].as_array().unwrap()), [bobs.as_str()]);

    // Compact rows: what the queue table shows, never the spec.
    let (_, page) = app.get("/api/jobs?state=queued,running").await;
    let row = |id: &str| page["jobs"].as_array().unwrap().iter().find(|job| job["id"] == id).unwrap().clone();
    for job in page["jobs"].as_array().unwrap() {
        assert!(job.get("spec").is_none(), "{job}");
    }
    let running_row = row(&running);
    assert_eq!((running_row["state"].as_str(), running_row["device"].as_str()), (Some("running"), Some("cpu0")));
    assert_eq!(
        (running_row["epochs_per_phase"].clone(), running_row["batch_size"].clone()),
        (json!([1, 1]), json!(20))
    );
    assert_eq!(running_row["progress"]["activity"], "starting", "{running_row}");
    let queued_row = row(&queued);
    // Fair share puts bob (no usage yet) first; either way the two queued jobs are 1 and 2.
    let mut positions = [row(&queued)["position"].as_u64(), row(&bobs)["position"].as_u64()];
    positions.sort();
    assert_eq!(positions, [Some(1), Some(2)], "{page}");
    assert!(queued_row["pending_reason"].is_string(), "{queued_row}");
    assert!(queued_row.get("eta_seconds").is_none(), "a row's ETA is absolute (eta_at), so it does not tick");

    // A job's error and test results are its owner's (and admins'); others see that there is one.
    let finished = "/api/jobs?owner=alice&state=succeeded,failed";
    let seen_by = |client: reqwest::Client| {
        let url = app.url(finished);
        async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let (owner, other, admin) = (
        seen_by(app.client.clone()).await,
        seen_by(bob.clone()).await,
        seen_by(client_with(&app.tokens["root"])).await,
    );
    let anonymous = seen_by(reqwest::Client::new()).await;
    for (who, page, sees) in
        [("alice", &owner, true), ("root", &admin, true), ("bob", &other, false), ("anonymous", &anonymous, false)]
    {
        let jobs = page["jobs"].as_array().unwrap();
        assert_eq!(ids(jobs), [failed.as_str(), succeeded.as_str()], "{who}");
        let (error, metrics) = (&jobs[0]["error"], &jobs[1]["test_metrics"]);
        if sees {
            assert!(error.as_str().unwrap().contains("giving up"), "{who}: {error}");
            assert_eq!(*metrics, json!({"test_acc": 0.9, "test_loss": 0.2}), "{who}");
        } else {
            assert_eq!(*error, "(visible to the job's owner)", "{who}");
            assert_eq!(*metrics, Value::Null, "{who}");
        }
    }
}

/// A GET with `If-None-Match: tag`: (status, its ETag, body bytes).
async fn conditional(app: &TestApp, path: &str, tag: Option<&str>) -> (StatusCode, String, bytes::Bytes) {
    let mut request = app.client.get(app.url(path));
    if let Some(tag) = tag {
        request = request.header("if-none-match", tag);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert_eq!(response.headers()["cache-control"], "no-cache", "{path}");
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    (status, etag, response.bytes().await.unwrap())
}

#[tokio::test]
async fn the_list_and_a_job_answer_304_until_they_change() {
    let (_scripts, options) = fake_worker_options();
    let app = TestApp::spawn(options);
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let done = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&done, "succeeded", WAIT).await;
    let running = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&running, "running", WAIT).await;

    for path in [String::from("/api/jobs"), format!("/api/jobs/{running}")] {
        let (status, tag, body) = conditional(&app, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
        let (status, again, body) = conditional(&app, &path, Some(&tag)).await;
        assert_eq!((status, again.as_str(), body.len()), (StatusCode::NOT_MODIFIED, tag.as_str(), 0), "{path}");
        for matching in [format!("W/{tag}"), String::from("*"), format!("\"other\", {tag}")] {
            assert_eq!(
                conditional(&app, &path, Some(&matching)).await.0,
                StatusCode::NOT_MODIFIED,
                "{path} {matching}"
            );
        }
        let (status, other_tag, _) = conditional(&app, &path, Some("\"other\"")).await;
        assert_eq!((status, other_tag), (StatusCode::OK, tag), "{path}");
    }

    // The running job is cancelled: both answers change, and a client holding the old tag gets them.
    let (_, list_tag, _) = conditional(&app, "/api/jobs", None).await;
    let (_, job_tag, _) = conditional(&app, &format!("/api/jobs/{running}"), None).await;
    assert_eq!(app.post(&format!("/api/jobs/{running}/cancel"), &json!({})).await.0, StatusCode::ACCEPTED);
    app.wait_for_state(&running, "cancelled", WAIT).await;
    let (status, new_tag, body) = conditional(&app, &format!("/api/jobs/{running}"), Some(&job_tag)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(new_tag, job_tag);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["state"], "cancelled");
    let (status, new_tag, body) = conditional(&app, "/api/jobs", Some(&list_tag)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(new_tag, list_tag);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["jobs"][0]["state"], "cancelled");
}

/// The p-th percentile of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::test]
async fn a_queue_of_10000_jobs_is_listed_a_small_page_at_a_time() {
    let (_scripts, options) = fake_worker_options();
    let started = Instant::now();
    let (app, seeded) = TestApp::spawn_seeded(options, 10_000, 10).await;
    eprintln!("10000 jobs written and the server up in {:.1} s", started.elapsed().as_secs_f64());
    for query in ["", "state=queued,running", "owner=me", "owner=me&state=cancelled", "order=asc"] {
        let url = app.url(&format!("/api/jobs?{query}"));
        let (mut times, mut size) = (Vec::new(), 0);
        for _ in 0..200 {
            let sent = Instant::now();
            let response = app.client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.bytes().await.unwrap();
            times.push(sent.elapsed());
            size = body.len();
            let page: Value = serde_json::from_slice(&body).unwrap();
            assert!(page["jobs"].as_array().unwrap().len() <= 50);
        }
        times.sort();
        println!(
            "GET /api/jobs?{query} with 10000 jobs: p50 {:.1} ms, p99 {:.1} ms, {size} bytes",
            percentile_ms(&times, 50),
            percentile_ms(&times, 99)
        );
        assert!(size < 100_000, "a page is about 50 rows, not the queue: {size} bytes");
    }
    // The event stream starts with what the dashboard shows, not the 10,000 jobs.
    let mut stream = app.client.get(app.url("/api/events")).send().await.unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        text.push_str(core::str::from_utf8(&stream.chunk().await.unwrap().unwrap()).unwrap());
    }
    let data: String = text.lines().filter_map(|line| line.strip_prefix("data:")).map(str::trim_start).collect();
    assert!(text.lines().any(|line| line == "event: snapshot"), "{text}");
    let snapshot: Value = serde_json::from_str(&data).unwrap();
    let rows = |page: &str| snapshot["pages"][page]["jobs"].as_array().unwrap().len();
    assert_eq!((rows("active"), rows("mine")), (10, 50), "the ten active jobs and a page of alice's 250");
    println!("the /api/events snapshot with 10000 jobs: {} bytes", data.len());
    assert!(data.len() < 100_000);

    let started = Instant::now();
    let every = app.all_jobs("limit=500").await;
    println!("all 10000 jobs in 20 pages of 500: {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(ids(&every), seeded.iter().rev().cloned().collect::<Vec<_>>());
}

/// A job the scheduler has not placed yet (its answer to the submission) is behind the queued
/// jobs only, however long the history: on a server started over 300 finished jobs, the first
/// new job is first in line.
#[tokio::test]
async fn a_new_job_on_a_server_with_a_history_is_first_in_line() {
    let (_scripts, options) = fake_worker_options();
    let (app, _) = TestApp::spawn_seeded(options, 300, 0).await;
    let (status, body) = app.post("/api/jobs", &small_spec("fresh")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["jobs"][0]["position"], 1, "{body}");
}

/// A queue longer than a scheduling pass looks at (1,000 jobs, `scheduler::DEPTH`): the jobs
/// past it are placed when they are listed, from their rank in their owner's line, and every
/// queued job still has its own place, 1 to N, each user's jobs in their order, the forty users
/// (of equal usage) taking turns.
#[tokio::test]
async fn every_job_of_a_queue_longer_than_a_pass_looks_at_has_its_own_place() {
    let (_scripts, options) = fake_worker_options();
    let (app, seeded) = TestApp::spawn_seeded(options, 2_500, 2_500).await;
    let placed = |job: &Value| {
        job["position"].is_u64()
            && job["pending_reason"] != "just submitted; the scheduler places it in line in a moment"
    };
    let started = Instant::now();
    let queued = loop {
        let jobs = app.all_jobs("state=queued&limit=500").await;
        // One CPU slot: one job runs, the rest wait.
        if jobs.len() == 2_499 && jobs.iter().all(placed) {
            break jobs;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never placed: {}", jobs.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let position = |job: &Value| job["position"].as_u64().unwrap() as usize;
    let mut positions: Vec<usize> = queued.iter().map(position).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=2_499).collect::<Vec<_>>(), "each place once");
    let submitted: HashMap<&str, usize> = seeded.iter().enumerate().map(|(at, id)| (id.as_str(), at)).collect();
    let mut by_owner: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for job in &queued {
        by_owner
            .entry(job["owner"].as_str().unwrap())
            .or_default()
            .push((submitted[job["id"].as_str().unwrap()], position(job)));
    }
    for (owner, mut jobs) in by_owner {
        jobs.sort_unstable();
        assert!(jobs.windows(2).all(|pair| pair[0].1 < pair[1].1), "{owner}'s jobs in their order: {jobs:?}");
    }
    let mut in_line: Vec<&Value> = queued.iter().collect();
    in_line.sort_by_key(|job| position(job));
    // Far past the first thousand, the forty users still take turns.
    let owners: std::collections::HashSet<&str> =
        in_line[2_000..2_040].iter().map(|job| job["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 40, "forty users, one job each, in forty places");
    let (near, far) = (in_line[10], in_line[2_000]);
    assert_eq!(near["pending_reason"], far["pending_reason"], "the same reason, placed in the pass or when asked");
    assert!(far["eta_at"].is_null(), "no ETA past the first thousand: {far}");
}
