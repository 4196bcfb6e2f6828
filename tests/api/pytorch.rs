//! Checkpoints load in plain PyTorch: `deploy/load_checkpoint.py` builds torchvision's backbone
//! and the spec's head, loads `final.safetensors` with strict=True, and predicts the test images
//! the worker predicted, to the same probabilities.

use crate::helpers::{write_dataset, Options, TestApp};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Trains `spec`, predicts its test images with the loader, and returns the largest difference
/// from trainq's own probabilities (`predictions.csv`).
async fn check_in_pytorch(app: &TestApp, spec: Value) -> f64 {
    let id = app.submit(&spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    let folder = tempfile::tempdir().unwrap();
    for name in ["spec.json", "final.safetensors"] {
        std::fs::write(folder.path().join(name), app.download(&id, name).await).unwrap();
    }
    let (_, csv) = app.text(&format!("/api/jobs/{id}/predictions.csv")).await;
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|line| line.split(',').collect()).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".torch-venv/bin/python");
    assert!(python.exists(), "run deploy/setup-libtorch.sh first");
    let images: Vec<String> = rows.iter().map(|row| app.root.join("datasets/demo").join(row[0]).display().to_string()).collect();
    let output = Command::new(python)
        .arg(root.join("deploy/load_checkpoint.py"))
        .arg(folder.path().join("spec.json"))
        .arg(folder.path().join("final.safetensors"))
        .args(&images)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("loaded") && stderr.contains("strictly"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), rows.len());
    let mut worst: f64 = 0.0;
    for (line, row) in lines.iter().zip(&rows) {
        let theirs: Vec<f64> = line.split('\t').skip(1).map(|p| p.parse().unwrap()).collect();
        let ours: Vec<f64> = row[2..].iter().map(|p| p.parse().unwrap()).collect();
        assert_eq!(theirs.len(), ours.len());
        for (a, b) in theirs.iter().zip(&ours) {
            worst = worst.max((a - b).abs());
        }
    }
    let said = |field: &str| spec[field].as_str().unwrap_or("nearest").to_string();
    eprintln!("{} ({}, {}): max |PyTorch − trainq| = {worst:.2e} over {} images", said("name"), said("backbone"), said("interpolation"), rows.len());
    worst
}

#[tokio::test]
async fn vgg16_and_inception_v3_checkpoints_load_strictly_in_pytorch_and_predict_the_same() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 3, 1, 2);
    let mut worst: f64 = 0.0;
    for (interpolation, image_size) in [("nearest", json!(32)), ("bilinear", json!(48)), ("area", json!(32)), ("bilinear", json!(null))] {
        worst = worst.max(check_in_pytorch(&app, json!({
            "name": format!("torch-vgg-{interpolation}"), "dataset": "demo", "backbone": "vgg16", "weights": "random",
            "image_size": image_size, "max_image_side": if image_size.is_null() { json!(64) } else { json!(null) },
            "interpolation": interpolation, "batch_size": 3,
            "head": ["gap", {"dropout": 0.25}, {"dense": 16}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 1}],
            "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
            "optimizer": {"name": "adam", "lr": 1e-3}, "seed": 5
        }))
        .await);
    }
    worst = worst.max(check_in_pytorch(&app, json!({
        "name": "torch-inception", "dataset": "demo", "backbone": "inception_v3", "weights": "random",
        "image_size": 75, "batch_size": 3, "head": ["flatten", {"dense": 2}],
        "phases": [{"epochs": 1, "train": ["Mixed_7c", "head"]}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 5
    }))
    .await);
    // The same pixels (Pillow's resize reproduced, the same decode of these files) and the same
    // network: what is left is float summation order.
    assert!(worst < 1e-3, "max |PyTorch − trainq| = {worst}");
}
