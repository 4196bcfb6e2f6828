//! Variable-size input (the assignment's QE1): images keep their aspect, batches hold one shape,
//! and a `gap` head trains on them; `flatten` is refused at submit.

use crate::helpers::{write_dataset, Options, TestApp};
use serde_json::json;
use std::time::Duration;

/// Stretches every third image of each split to twice its width and every third (offset by one)
/// to twice its height, so the set holds square, landscape and portrait films.
pub fn vary_aspects(dataset: &std::path::Path) {
    for split in ["train", "val", "test"] {
        for class in ["NORMAL", "PNEUMONIA"] {
            let mut files: Vec<_> =
                std::fs::read_dir(dataset.join(split).join(class)).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for (index, path) in files.iter().enumerate() {
                let image = image::open(path).unwrap().to_luma8();
                let (width, height) = image.dimensions();
                let (width, height) = match index % 3 {
                    0 => (width * 2, height),
                    1 => (width, height * 2),
                    _ => continue,
                };
                image::imageops::resize(&image, width, height, image::imageops::FilterType::Triangle)
                    .save(path)
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_variable_size_job_trains_on_batches_of_one_shape() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 12, 3, 6);
    vary_aspects(&app.root.join("datasets/demo"));
    // One train film twice as large both ways: the only 64×64 image, alone in its shape. A batch
    // of one would give batch norm a NaN running variance (and the job NaN outputs).
    let lone = app.root.join("datasets/demo/train/NORMAL");
    let mut files: Vec<_> = std::fs::read_dir(&lone).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let image = image::open(&files[2]).unwrap().to_luma8();
    let (width, height) = image.dimensions();
    image::imageops::resize(&image, width * 2, height * 2, image::imageops::FilterType::Triangle)
        .save(&files[2])
        .unwrap();
    let spec = json!({
        "name": "qe1-tiny", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": null, "max_image_side": 64, "batch_size": 4,
        "head": ["gap", {"dense": 16}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 1}],
        "phases": [{"epochs": 2, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
        "optimizer": {"name": "rmsprop", "lr": 1e-4}, "seed": 2
    });
    let id = app.submit(&spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    // Three shapes: 36–45 px squares round to 32×32, the stretched ones to 64×32 and 32×64.
    assert!(log.contains("train: decoded 24 images (0 skipped)"), "{log}");
    for shape in ["32x32 (7)", "64x32 (8)", "32x64 (8)", "64x64 (1)"] {
        assert!(log.contains(shape), "{shape} missing from the log:\n{log}");
    }
    assert!(log.contains("train: 1 image(s) alone in their shape are not trained on"), "{log}");
    let (_, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
    let epochs = metrics["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3, "{metrics:#}");
    for epoch in epochs {
        assert!(epoch["val_loss"].as_f64().is_some_and(f64::is_finite), "finite validation loss: {metrics:#}");
    }
    let binary = &metrics["final"]["binary"];
    let confusion: i64 = binary["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(confusion, 12, "every test image evaluated once: {binary:#}");
    let predictions = String::from_utf8(app.download(&id, "predictions.csv").await.to_vec()).unwrap();
    assert_eq!(predictions.lines().count(), 1 + 12, "{predictions}");

    // A second job with the same sizing reuses the cached shapes.
    let again = app.submit(&spec).await;
    let (job, log) = app.finished(&again, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{log}");
    assert_eq!(job["progress"]["data"]["train"]["cache"], "hit", "{log}");
}

#[tokio::test]
async fn flatten_with_variable_size_is_refused_with_the_reason() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 2, 1, 1);
    let spec = json!({
        "dataset": "demo", "backbone": "vgg16", "weights": "random", "image_size": null, "batch_size": 4,
        "head": ["flatten", {"dense": 1}], "phases": [{"epochs": 1, "train": "head"}],
        "optimizer": {"name": "sgd", "lr": 0.01}
    });
    let (status, body) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["detail"]["field"], "head[0]", "{body:#}");
    assert!(body["detail"]["message"].as_str().unwrap().contains("flattened length"), "{body:#}");
}
