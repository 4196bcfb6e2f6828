//! Keras-style augmentation and class weights through the real server and worker: bad settings
//! are a 422 naming the field; a job with both trains on the demo data, says in its log and its
//! progress that its phases compute the frozen layers every step, and the report and `compare`
//! show what it trained with.

use crate::helpers::{write_dataset, Options, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn spec(name: &str) -> Value {
    json!({
        "name": name, "dataset": "demo", "backbone": "vgg16", "weights": "random", "image_size": 32,
        "batch_size": 4, "precision": "fp32",
        "head": ["gap", {"dense": 8}, "relu", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "seed": 3,
        "augment": {"horizontal_flip": true, "rotation_range": 10, "width_shift_range": 0.1,
                    "height_shift_range": 0.1, "zoom_range": 0.1, "brightness_range": [0.9, 1.1], "fill_mode": "reflect"},
        "class_weight": {"NORMAL": 2.0, "PNEUMONIA": 0.5}
    })
}

#[tokio::test]
async fn bad_augmentation_and_class_weights_get_422_naming_the_field() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 2, 1, 1);
    type Patch = fn(&mut Value);
    let cases: [(&str, Patch); 5] = [
        ("augment.rotation_range", |s| s["augment"]["rotation_range"] = json!(720)),
        ("augment.zoom_range", |s| s["augment"]["zoom_range"] = json!(-0.2)),
        ("augment.fill_mode", |s| s["augment"]["fill_mode"] = json!("wrap")),
        // The demo dataset has NORMAL and PNEUMONIA: the server knows them at submission.
        ("class_weight.COVID", |s| s["class_weight"]["COVID"] = json!(3.0)),
        ("class_weight", |s| s["class_weight"] = json!("equal")),
    ];
    for (field, patch) in cases {
        let mut spec = spec("bad");
        patch(&mut spec);
        let (status, body) = app.post("/api/jobs", &spec).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert_eq!(body["detail"]["field"], field, "{body}");
        assert!(!body["detail"]["message"].as_str().unwrap().is_empty(), "{body}");
    }
    let mut missing = spec("missing");
    missing["class_weight"] = json!({"NORMAL": 2.0});
    let (status, body) = app.post("/api/jobs", &missing).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"]["message"].as_str().unwrap().contains("PNEUMONIA"), "{body}");
    assert_eq!(app.all_jobs("").await.len(), 0, "nothing was queued");
}

#[tokio::test]
async fn an_augmented_class_weighted_job_trains_through_the_worker_and_says_how() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 6, 2, 4);
    let augmented = app.submit(&spec("augmented")).await;
    // The same job without class weights: its first epoch's training loss differs.
    let mut unweighted = spec("unweighted");
    unweighted.as_object_mut().unwrap().remove("class_weight");
    let unweighted = app.submit(&unweighted).await;
    let (job, log) = app.finished(&augmented, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    let (other, other_log) = app.finished(&unweighted, Duration::from_secs(600)).await;
    assert_eq!(other["state"], "succeeded", "{other:#}\n{other_log}");

    assert!(log.contains("augment: {\"horizontal_flip\":true"), "{log}");
    assert!(log.contains("class weights (NORMAL 2, PNEUMONIA 0.5): NORMAL 2.0000, PNEUMONIA 0.5000"), "{log}");
    assert!(!other_log.contains("class weights"), "{other_log}");
    // `cache_features` is true (the default), and is explained rather than refused.
    let features = &job["progress"]["features"];
    for phase in ["1", "2"] {
        assert_eq!(features[phase]["state"], "off", "{features:#}");
        assert!(
            features[phase]["reason"].as_str().unwrap().contains("augment changes every training image"),
            "{features:#}"
        );
    }
    assert!(log.contains("phase 1: no activation cache (augment changes every training image"), "{log}");

    let (_, metrics) = app.get(&format!("/api/jobs/{augmented}/metrics")).await;
    let (_, other_metrics) = app.get(&format!("/api/jobs/{unweighted}/metrics")).await;
    let loss = |metrics: &Value| metrics["epochs"][0]["train_loss"].as_f64().unwrap();
    assert!(loss(&metrics).is_finite() && (loss(&metrics) - loss(&other_metrics)).abs() > 1e-6, "{metrics:#}");

    let (status, html) = app.text(&format!("/api/report?ids={augmented}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Augmentation of the training images: horizontal flips, rotations up to ±10°"), "{html}");
    assert!(html.contains("Class weights: NORMAL 2, PNEUMONIA 0.5 (the training loss is weighted)."), "{html}");
    let (status, comparison) = app.get(&format!("/api/compare?ids={augmented},{unweighted}")).await;
    assert_eq!(status, StatusCode::OK, "{comparison}");
    assert!(comparison["rows"][0]["augment"].as_str().unwrap().contains("horizontal flips"), "{comparison}");
    assert_eq!(comparison["rows"][0]["class_weight"], "NORMAL 2, PNEUMONIA 0.5");
    assert_eq!(comparison["rows"][1].get("class_weight"), None, "{comparison}");
}
