//! The shared preprocessing cache: the second job on the same inputs decodes nothing.

use crate::helpers::{write_dataset, Options, TestApp};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_second_job_reuses_the_decoded_dataset_and_learns_the_same() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 6, 2, 3);
    let spec = json!({
        "name": "cache", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "sgd", "lr": 0.01}, "seed": 4
    });
    let mut finished = Vec::new();
    for _ in 0..2 {
        let id = app.submit(&spec).await;
        let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
        assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
        finished.push((job, log));
    }
    let (first, first_log) = &finished[0];
    let (second, second_log) = &finished[1];
    for split in ["train", "val", "test"] {
        let built = &first["progress"]["data"][split];
        let hit = &second["progress"]["data"][split];
        assert_eq!(built["cache"], "built", "{split}: {first_log}");
        assert_eq!(built["decoded"], built["images"], "{split}: the first job decoded every image");
        assert_eq!(hit["cache"], "hit", "{split}: {second_log}");
        assert_eq!(hit["decoded"], 0, "{split}: a hit decodes nothing");
        assert_eq!(hit["images"], built["images"]);
    }
    assert!(second_log.contains("cache hit"), "{second_log}");
    // The same seeded job on cached pixels learns exactly what it learned on freshly decoded ones.
    assert_eq!(first["final_metrics"]["test_loss"], second["final_metrics"]["test_loss"]);
    assert_eq!(first["final_metrics"]["train_acc"], second["final_metrics"]["train_acc"]);
}
