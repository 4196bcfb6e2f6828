//! The activation cache: a phase's frozen prefix is computed once, shared across jobs, and changes
//! nothing about what a job learns.

use crate::helpers::{write_dataset, Options, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

fn spec(backbone: &str, size: u32, first: &str, phase2: Value, cache: bool) -> Value {
    json!({
        "name": format!("{backbone}-{first}-{cache}"), "dataset": "demo", "backbone": backbone, "weights": "random",
        "image_size": size, "batch_size": 4, "cache_features": cache,
        "head": [first, {"dropout": 0.25}, {"dense": 8}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 1}],
        "phases": [{"epochs": 2, "train": "head"}, {"epochs": 2, "train": phase2}],
        // float32: in it the two paths run the same arithmetic (in bf16 a pooled activation is
        // rounded to bf16 when stored, while the uncached path passes it on in float32).
        "precision": "fp32",
        // SGD, not RMSprop: RMSprop's first steps are nearly sign(gradient), which turns the last-bit
        // differences of a machine loaded by parallel tests into visible ones; SGD keeps them small.
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "seed": 7
    })
}

async fn run(app: &TestApp, spec: &Value) -> (Value, Value, String) {
    let id = app.submit(spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    let (_, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
    (job, metrics, log)
}

fn close(a: &Value, b: &Value, what: &str) {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{what}: {x} vs {y}"),
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// Per-epoch curves and final metrics agree between the cached and the uncached run.
fn same_results(cached: &Value, uncached: &Value, label: &str) {
    let (a, b) = (cached["epochs"].as_array().unwrap(), uncached["epochs"].as_array().unwrap());
    assert_eq!(a.len(), 4, "{label}");
    assert_eq!(a.len(), b.len(), "{label}");
    for (x, y) in a.iter().zip(b) {
        for field in ["phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc"] {
            close(&x[field], &y[field], &format!("{label} epoch {} {field}", x["epoch"]));
        }
    }
    for field in ["train_loss", "train_acc", "test_loss", "test_acc"] {
        close(&cached["final"][field], &uncached["final"][field], &format!("{label} final {field}"));
    }
    close(&cached["final"]["binary"]["auc"], &uncached["final"]["binary"]["auc"], &format!("{label} auc"));
    assert_eq!(cached["final"]["binary"]["confusion"], uncached["final"]["binary"]["confusion"], "{label}");
}

#[tokio::test]
async fn cached_and_uncached_runs_learn_the_same_for_vgg16_and_inception_gap_and_flatten() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 6, 2, 4);
    let cases = [
        ("vgg16", 32, "gap", json!(["block5", "head"]), "block5+gap", "block4"),
        ("vgg16", 32, "flatten", json!(["block4", "block5", "head"]), "block5", "block3"),
        // Frozen batch norm runs on running statistics, so its activations are cacheable too.
        ("inception_v3", 75, "gap", json!(["Mixed_7c", "head"]), "Mixed_7c+gap", "Mixed_7b"),
        ("inception_v3", 75, "flatten", json!(["Mixed_7b", "Mixed_7c", "head"]), "Mixed_7c", "Mixed_7a"),
    ];
    for (backbone, size, first, phase2, cut1, cut2) in cases {
        let label = format!("{backbone} {first}");
        let (job, cached, log) = run(&app, &spec(backbone, size, first, phase2.clone(), true)).await;
        let features = &job["progress"]["features"];
        assert_eq!(features["1"]["cut"], cut1, "{label}: {features:#}");
        assert_eq!(features["2"]["cut"], cut2, "{label}: {features:#}");
        // Phase 1 trains no backbone block, so its pass over the frozen blocks also stores phase
        // 2's deeper activations: phase 2 finds them.
        assert_eq!(features["1"]["state"], "built", "{label}: {features:#}\n{log}");
        assert_eq!(features["2"]["state"], "hit", "{label}: {features:#}\n{log}");
        for phase in ["1", "2"] {
            assert!(features[phase]["bytes"].as_u64().unwrap() > 0);
        }
        assert!(log.contains(&format!("phase 1: activation cache at {cut1}")), "{log}");
        assert!(log.contains(&format!("through {cut2}, which the next phase reuses")), "{log}");
        let (job, uncached, log) = run(&app, &spec(backbone, size, first, phase2, false)).await;
        assert_eq!(job["progress"]["features"]["1"]["state"], "off", "{log}");
        assert!(log.contains("cache_features is false"), "{log}");
        same_results(&cached, &uncached, &label);
    }
}

#[tokio::test]
async fn a_second_identical_job_skips_every_activation_build_and_train_all_caches_nothing() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 6, 2, 4);
    let q1 = spec("vgg16", 32, "gap", json!(["block5", "head"]), true);
    let (first, first_metrics, _) = run(&app, &q1).await;
    let (second, second_metrics, log) = run(&app, &q1).await;
    assert_eq!(first["progress"]["features"]["1"]["state"], "built");
    for phase in ["1", "2"] {
        assert_eq!(second["progress"]["features"][phase]["state"], "hit", "{log}");
    }
    assert!(log.contains("hit"), "{log}");
    same_results(&first_metrics, &second_metrics, "second job");

    // Training everything leaves nothing frozen to reuse, and the job says so.
    let mut all = q1.clone();
    all["phases"] = json!([{"epochs": 1, "train": "all"}]);
    let (job, _, log) = run(&app, &all).await;
    let phase = &job["progress"]["features"]["1"];
    assert_eq!(phase["state"], "off", "{job:#}");
    assert!(phase["reason"].as_str().unwrap().contains("first block"), "{phase}");
    assert!(log.contains("no activation cache"), "{log}");
}
