//! Checkpoints load in plain PyTorch: `deploy/load_checkpoint.py` builds torchvision's backbone
//! and the spec's head, loads `final.safetensors` with strict=True, and predicts the test images
//! the worker predicted, to the same probabilities.

use crate::helpers::{write_dataset, Options, TestApp};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

async fn check_in_pytorch(app: &TestApp, spec: Value) {
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
    for (line, row) in lines.iter().zip(&rows) {
        let theirs: Vec<f64> = line.split('\t').skip(1).map(|p| p.parse().unwrap()).collect();
        let ours: Vec<f64> = row[2..].iter().map(|p| p.parse().unwrap()).collect();
        assert_eq!(theirs.len(), ours.len());
        for (a, b) in theirs.iter().zip(&ours) {
            // Different JPEG decoders may differ by a grey level here and there.
            assert!((a - b).abs() < 0.02, "{}: PyTorch {a} vs trainq {b}", row[0]);
        }
    }
}

#[tokio::test]
async fn vgg16_and_inception_v3_checkpoints_load_strictly_in_pytorch_and_predict_the_same() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 3, 1, 2);
    check_in_pytorch(&app, json!({
        "name": "torch-vgg", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 3,
        "head": ["gap", {"dropout": 0.25}, {"dense": 16}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
        "optimizer": {"name": "adam", "lr": 1e-3}, "seed": 5
    }))
    .await;
    check_in_pytorch(&app, json!({
        "name": "torch-inception", "dataset": "demo", "backbone": "inception_v3", "weights": "random",
        "image_size": 75, "batch_size": 3, "head": ["flatten", {"dense": 2}],
        "phases": [{"epochs": 1, "train": ["Mixed_7c", "head"]}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 5
    }))
    .await;
}
