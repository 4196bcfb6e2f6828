//! The server killed with SIGKILL at random moments while real workers train: every accepted
//! job still finishes exactly once, its curves have every epoch exactly once, and the database
//! stays intact. `TRAINQ_CRASH_KILLS` (default 10) sets how many kills; `TRAINQ_CRASH_SEED`
//! replays a run (the seed is printed).

use crate::helpers::{small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Phase 1: 4 epochs, phase 2: 3 epochs, a few steps each.
fn spec(name: &str) -> Value {
    let mut spec = small_spec(name);
    spec["batch_size"] = json!(4);
    spec["phases"] = json!([{"epochs": 4, "train": "head"}, {"epochs": 3, "train": ["block5", "head"]}]);
    spec["optimizer"] = json!({"name": "sgd", "lr": 0.01, "momentum": 0.9});
    spec
}

#[tokio::test]
async fn kill_9_the_server_again_and_again_and_every_job_finishes_exactly_once() {
    let kills: usize = std::env::var("TRAINQ_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let seed: u64 = std::env::var("TRAINQ_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("crash test: {kills} kills, TRAINQ_CRASH_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut app = TestApp::spawn(Options::default());
    let temp = app.take_temp();
    let root = app.root.clone();
    write_dataset(&root, 6, 2, 2);
    write_vgg16_weights(&root.join("weights/vgg16.safetensors"));
    let mut accepted = vec![app.submit(&spec("first")).await, app.submit(&spec("second")).await];
    for kill in 0..kills {
        // A submission at some of the restarts too: what was accepted must survive the next kill.
        if kill % 4 == 1 {
            accepted.push(app.submit(&spec(&format!("late{kill}"))).await);
        }
        let delay = Duration::from_millis(rng.gen_range(300..4000));
        tokio::time::sleep(delay).await;
        unsafe { libc::kill(app.pid(), libc::SIGKILL) };
        app.process.wait().unwrap();
        drop(app);
        app = TestApp::spawn_in(&root, Options::default());
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut interrupted = 0;
    for id in &accepted {
        let job = app
            .wait_for(id, deadline.saturating_duration_since(Instant::now()), |job| {
                job["state"] != "queued" && job["state"] != "running"
            })
            .await;
        assert_eq!(job["state"], "succeeded", "{job:#}\n{}", app.text(&format!("/api/jobs/{id}/log")).await.1);
        // Exactly one run succeeded; every other run was cut short by a kill.
        let outcomes: Vec<&str> =
            job["runs"].as_array().unwrap().iter().map(|run| run["outcome"].as_str().unwrap_or("open")).collect();
        assert_eq!(outcomes.iter().filter(|&&o| o == "succeeded").count(), 1, "{outcomes:?}");
        assert!(outcomes.iter().all(|&o| o == "succeeded" || o == "interrupted"), "{outcomes:?}");
        assert_eq!(outcomes.last(), Some(&"succeeded"), "{outcomes:?}");
        interrupted += outcomes.len() - 1;
        // Every epoch once, in order.
        let (_, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
        let epochs = TestApp::epochs_of(&metrics);
        assert_eq!(epochs, [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)], "{id}");
        assert!(metrics["final"]["test_acc"].is_f64(), "{metrics:#}");
    }
    assert!(interrupted > 0, "no kill ever hit a running job");
    drop(app);
    let store = trainq::store::Store::open(&root.join("data")).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    drop(temp);
}
