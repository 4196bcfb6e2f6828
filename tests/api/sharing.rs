//! Sharing the box: fair share between users, where queued jobs stand (position, reason, ETA),
//! and the admin's Prometheus metrics.

use crate::helpers::{client_with, small_spec};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Trains "one epoch" in half a second.
const WORKER: &str = r#"
sleep 0.5
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.5}'
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

fn first_start(job: &Value) -> f64 {
    job["runs"][0]["started_at"].as_f64().unwrap_or_else(|| panic!("never started: {job:#}"))
}

#[tokio::test]
async fn a_user_with_two_jobs_is_not_stuck_behind_one_with_twenty() {
    let (_scripts, app) = crate::helpers::app_with_worker(WORKER, 1);
    let mut alice = Vec::new();
    for n in 0..20 {
        alice.push(app.submit(&small_spec(&format!("a{n}"))).await);
    }
    let bob_client = client_with(&app.tokens["bob"]);
    let mut bob = Vec::new();
    for n in 0..2 {
        let response = bob_client.post(app.url("/api/jobs")).json(&small_spec(&format!("b{n}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        bob.push(response.json::<Value>().await.unwrap()["jobs"][0]["id"].as_str().unwrap().to_string());
    }
    // While they wait, queued jobs say where they stand.
    let (_, waiting) = app.get(&format!("/api/jobs/{}", alice[19])).await;
    assert_eq!(waiting["state"], "queued", "{waiting:#}");
    assert!(waiting["position"].as_i64().unwrap() > 1, "{waiting:#}");
    assert!(!waiting["pending_reason"].as_str().unwrap().is_empty(), "{waiting:#}");
    let b1 = app.wait_for_state(&bob[0], "succeeded", WAIT).await;
    let a3 = app.wait_for(&alice[2], WAIT, |job| job["runs"][0]["started_at"].is_f64()).await;
    assert!(
        first_start(&b1) < first_start(&a3),
        "bob's first job must start before alice's third: {} vs {}",
        first_start(&b1),
        first_start(&a3)
    );
    // Once similar jobs have finished, the ETA of a waiting one is known, and later in line is later.
    let (_, late) = app.get(&format!("/api/jobs/{}", alice[19])).await;
    let (_, later_than) = app.get(&format!("/api/jobs/{}", alice[18])).await;
    if late["state"] == "queued" && later_than["state"] == "queued" {
        let (eta, earlier) = (late["eta_seconds"].as_f64().unwrap(), later_than["eta_seconds"].as_f64().unwrap());
        assert!(eta > earlier && earlier > 0.0, "{late:#} {later_than:#}");
    }
    // The admin's view: queue by state, per-user usage.
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("# TYPE trainq_jobs gauge"), "{metrics}");
    assert!(metrics.contains("trainq_running_jobs{device=\"cpu0\"}"), "{metrics}");
    let usage = |user: &str| {
        sample(&metrics, &format!("trainq_fair_share_usage_seconds{{user=\"{user}\"}}"))
            .unwrap_or_else(|| panic!("{metrics}"))
    };
    assert!(usage("alice") >= 0.5 && usage("bob") >= 0.5, "{metrics}");
    let queued =
        sample(&metrics, "trainq_jobs{user=\"alice\",state=\"queued\"}").unwrap_or_else(|| panic!("{metrics}"));
    assert!(queued > 0.0 && queued < 20.0, "{metrics}");
}

/// One 0.5 s epoch and success; `fails` exits 3; `oom` runs out of memory at batch 20 (then
/// succeeds with the halved batch its retry gets).
const TELEMETRY_WORKER: &str = r#"
if grep -q '"name": "fails"' "$3"; then echo "giving up" >&2; exit 3; fi
if grep -q '"name": "oom"' "$3" && grep -q '"batch_size": 20' "$3"; then
  echo '@trainq {"event":"failed","kind":"out_of_memory","message":"CUDA out of memory. Tried to allocate 2 GiB"}'
  exit 3
fi
sleep 0.5
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.5}'
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

/// The value of one series (`name{labels}` exactly as written) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_job_ends_retries_and_requests_and_pass_promtool() {
    let (_scripts, app) = crate::helpers::app_with_worker(TELEMETRY_WORKER, 1);
    let ok = app.submit(&small_spec("ok")).await;
    let fails = app.submit(&small_spec("fails")).await;
    let mut oom = small_spec("oom");
    oom["retry_on_oom"] = Value::Bool(true);
    let oom = app.submit(&oom).await;
    app.wait_for_state(&ok, "succeeded", WAIT).await;
    app.wait_for_state(&fails, "failed", WAIT).await;
    let retried = app.wait_for_state(&oom, "succeeded", WAIT).await;
    assert_eq!(app.run_outcomes(&oom).await, ["requeued", "succeeded"], "{retried:#}");
    assert_eq!(app.text("/api/no-such-route").await.0, StatusCode::NOT_FOUND);
    // A job's end is counted just after it is stored: poll a moment for the last one.
    let started = std::time::Instant::now();
    let metrics = loop {
        let (status, metrics) = app.text("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        if sample(&metrics, "trainq_jobs_finished_total{outcome=\"succeeded\"}") == Some(2.0)
            || started.elapsed() > Duration::from_secs(10)
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (series, value) in [
        ("trainq_jobs_finished_total{outcome=\"succeeded\"}", 2.0),
        ("trainq_jobs_finished_total{outcome=\"failed\"}", 1.0),
        ("trainq_oom_retries_total", 1.0),
        // Three first starts; the retry's second wait is not a new one.
        ("trainq_queue_wait_seconds_count", 3.0),
        ("trainq_job_run_seconds_count", 3.0),
        // The two runs that trained: `ok`, and `oom` after its retry.
        ("trainq_epoch_seconds_count", 2.0),
        ("trainq_epoch_seconds_sum", 1.0),
        ("trainq_epoch_seconds_bucket{le=\"0.5\"}", 2.0),
        ("trainq_http_requests_total{route=\"/api/jobs\",method=\"POST\",status=\"201\"}", 3.0),
        ("trainq_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}", 1.0),
        ("trainq_jobs{user=\"alice\",state=\"succeeded\"}", 2.0),
        ("trainq_jobs{user=\"alice\",state=\"queued\"}", 0.0),
        ("trainq_running_jobs{device=\"cpu0\"}", 0.0),
    ] {
        assert_eq!(sample(&metrics, series), Some(value), "{series}\n{metrics}");
    }
    assert!(
        sample(&metrics, "trainq_fair_share_usage_seconds{user=\"alice\"}").is_some_and(|seconds| seconds >= 1.0),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("trainq_http_request_duration_seconds_bucket{route=\"/api/jobs\",method=\"POST\",le=\"10\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/api/jobs/{id}\""), "routes are templates: {metrics}");
    assert!(!metrics.contains(&ok), "no job id in a label: {metrics}");
    assert!(
        metrics.contains(&format!("trainq_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
        "{metrics}"
    );
    // Prometheus itself asks for OpenMetrics.
    let open_metrics = app
        .client
        .get(app.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(open_metrics.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let open_metrics = open_metrics.text().await.unwrap();
    assert!(
        open_metrics.ends_with("# EOF\n") && open_metrics.contains("# UNIT trainq_queue_wait_seconds seconds"),
        "{open_metrics}"
    );
    promtool_check(&metrics);
}

/// `promtool check metrics` (Debian's prometheus package, which `deploy/test.sh` installs) must
/// accept the scrape without a single lint. Without promtool: a failure in CI, else a loud SKIPPED.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n!!! SKIPPED: promtool not installed (apt-get install prometheus); /metrics was NOT linted !!!\n"
            );
            return;
        }
        Err(err) => {
            panic!("promtool check metrics could not run ({err}); deploy/test.sh installs Debian's prometheus package")
        }
    };
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{metrics}",
        output.status
    );
}
