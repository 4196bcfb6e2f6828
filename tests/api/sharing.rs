//! Sharing the box: fair share between users, where queued jobs stand (position, reason, ETA),
//! and the admin's Prometheus metrics.

use crate::helpers::{client_with, fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
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
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let mut alice = Vec::new();
    for n in 0..20 {
        alice.push(app.submit(&small_spec(&format!("a{n}"))).await);
    }
    let bob_client = client_with(&app.tokens["bob"]);
    let mut bob = Vec::new();
    for n in 0..2 {
        let response = bob_client.post(app.url("/api/jobs")).json(&small_spec(&format!("b{n}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        bob.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
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
    assert!(metrics.contains("trainq_device_running_jobs{device=\"cpu0\"}"), "{metrics}");
    let usage = |user: &str| -> f64 {
        let prefix = format!("trainq_user_usage_device_seconds{{user=\"{user}\"}} ");
        metrics.lines().find_map(|line| line.strip_prefix(&prefix)).unwrap_or_else(|| panic!("{metrics}")).parse().unwrap()
    };
    assert!(usage("alice") >= 0.5 && usage("bob") >= 0.5, "{metrics}");
    let queued: i64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("trainq_jobs{state=\"queued\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(queued > 0 && queued < 20, "{metrics}");
}
