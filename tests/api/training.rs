//! End to end with the real tch worker on generated data: it learns, its curves and checkpoints
//! are right, and the server process never maps libtorch.

use crate::helpers::{read_safetensors, write_dataset, write_vgg16_weights, Options, TestApp};
use serde_json::json;
use std::time::Duration;

/// torchvision indices of VGG16's convolutions, by block.
const BLOCK_CONVS: [&[usize]; 5] = [&[0, 2], &[5, 7], &[10, 12, 14], &[17, 19, 21], &[24, 26, 28]];

#[tokio::test]
async fn a_job_trains_beats_chance_and_checkpoints_what_it_should() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 60, 8, 25);
    let initial = write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let spec = json!({
        "name": "q1-tiny", "dataset": "demo", "backbone": "vgg16", "weights": "imagenet",
        "image_size": 32, "batch_size": 10,
        // Keras' 0.99 moving average needs hundreds of steps to settle; this run has 12 an epoch.
        "head": ["gap", {"dense": 512}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 128}, {"dense": 1}],
        "phases": [{"epochs": 8, "train": "head"},
                   {"epochs": 2, "train": ["block5", "head"], "optimizer": {"name": "rmsprop", "lr": 1e-5}}],
        "optimizer": {"name": "rmsprop", "lr": 1e-4}, "seed": 3
    });
    let id = app.submit(&spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    assert!(log.contains("phase 1 epoch 1/8"), "{log}");

    // Curves: one row per epoch and phase, in order.
    let (_, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
    let rows = TestApp::epochs_of(&metrics);
    let expected: Vec<(u64, u64)> = (1..=8).map(|e| (1, e)).chain((1..=2).map(|e| (2, e))).collect();
    assert_eq!(rows, expected);
    for row in metrics["epochs"].as_array().unwrap() {
        assert!(row["train_loss"].as_f64().unwrap().is_finite() && row["val_acc"].is_number(), "{row}");
    }
    // It learned: the test set is balanced, so chance is 0.5.
    let test_acc = metrics["final"]["test_acc"].as_f64().unwrap();
    assert!(test_acc >= 0.75, "test accuracy {test_acc} is too close to chance\n{log}");
    assert!(metrics["final"]["train_loss"].as_f64().unwrap().is_finite());
    // The assignment's QE2 metrics on the test set, positive class PNEUMONIA.
    let binary = &metrics["final"]["binary"];
    let confusion: Vec<u64> = binary["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>())
        .collect();
    assert_eq!(confusion.iter().sum::<u64>(), 50, "{binary}");
    assert_eq!(confusion[0] + confusion[1], 25, "row 0 holds the 25 NORMAL images");
    let accuracy = (confusion[0] + confusion[3]) as f64 / 50.0;
    assert!((accuracy - test_acc).abs() < 1e-9, "confusion matrix agrees with test accuracy");
    assert!(binary["auc"].as_f64().unwrap() >= 0.8, "{binary}");
    for field in ["precision", "recall", "specificity", "f1"] {
        assert!(binary[field].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{field}: {binary}");
    }
    assert!(binary["roc"].as_array().unwrap().len() >= 3);
    let (status, csv) = app.text(&format!("/api/jobs/{id}/predictions.csv")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "path,label,probability");
    assert_eq!(rows.len(), 51, "one row per test image");
    assert!(rows[1].starts_with("test/NORMAL/") && rows[1].contains(",NORMAL,"), "{}", rows[1]);
    assert!(rows[50].starts_with("test/PNEUMONIA/") && rows[50].contains(",PNEUMONIA,"), "{}", rows[50]);

    // Artifacts list and download.
    let (_, artifacts) = app.get(&format!("/api/jobs/{id}/artifacts")).await;
    let names: Vec<&str> = artifacts.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    let top: Vec<&str> = names.iter().copied().filter(|name| !name.starts_with("cam/")).collect();
    assert_eq!(top, ["final.safetensors", "metrics.json", "phase1.safetensors", "predictions.csv", "spec.json"]);
    assert!(names.contains(&"cam/index.json") && names.iter().any(|name| name.starts_with("cam/tp-")), "{names:?}");
    let phase1 = read_safetensors(&app.download(&id, "phase1.safetensors").await);
    let last = read_safetensors(&app.download(&id, "final.safetensors").await);
    let saved_spec: serde_json::Value = serde_json::from_slice(&app.download(&id, "spec.json").await).unwrap();
    // The saved spec is the normalised one: defaults filled in.
    assert_eq!(saved_spec["head"][2], json!({"batchnorm": {"momentum": 0.9, "epsilon": 0.001}}));
    assert_eq!(saved_spec["phases"][1]["train"], json!(["block5", "head"]));
    assert_eq!(saved_spec["phases"][1]["optimizer"]["lr"], 1e-5);
    let missing = app.client.get(app.url(&format!("/api/jobs/{id}/artifacts/..%2Ftrainq.db"))).send().await.unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // Phase 1 froze the backbone: its tensors equal the loaded weights exactly.
    for (name, shape, values) in initial.iter().filter(|(name, _, _)| name.starts_with("features.")) {
        let (saved_shape, saved) = &phase1[name];
        assert_eq!(saved_shape, shape, "{name}");
        assert!(saved == values, "{name} changed while frozen");
    }
    // Phase 2 trained block5 only.
    for (block, convs) in BLOCK_CONVS.iter().enumerate() {
        for conv in convs.iter() {
            let name = format!("features.{conv}.weight");
            let changed = phase1[&name].1 != last[&name].1;
            assert_eq!(changed, block == 4, "{name}: changed={changed}");
        }
    }
    // The head trained in both phases; batch norm kept PyTorch's counter (10 epochs × 12 batches).
    assert!(phase1["head.1.weight"].1 != last["head.1.weight"].1);
    assert_eq!(last["head.2.num_batches_tracked"].1, [120.0]);
    assert!(!last.contains_key("classifier.6.bias"), "non-backbone tensors of the weights file are not kept");

    // The server ran a whole job without ever mapping libtorch.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", app.pid())).unwrap();
    assert!(!maps.contains("libtorch") && !maps.contains("libc10"), "the server mapped libtorch");
}

#[tokio::test]
async fn the_log_can_be_followed_until_the_job_ends() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 4, 1, 2);
    // A corrupt file is skipped and counted, a PNG is read like a JPEG.
    let normal = app.root.join("datasets/demo/train/NORMAL");
    std::fs::write(normal.join("broken.jpeg"), b"\xff\xd8 this is not a JPEG").unwrap();
    image::GrayImage::from_pixel(40, 40, image::Luma([90u8])).save(normal.join("flat.png")).unwrap();
    let spec = json!({
        "name": "follow", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 4,
        "head": ["flatten", {"dropout": 0.25}, {"dense": 8}, "batchnorm", "relu", {"dense": 2}],
        "phases": [{"epochs": 2, "train": "all"}], "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}
    });
    let id = app.submit(&spec).await;
    let response = app.client.get(app.url(&format!("/api/jobs/{id}/log?follow=true"))).send().await.unwrap();
    // The body ends only when the job has finished; by then it holds the whole run.
    let text = tokio::time::timeout(Duration::from_secs(300), response.text()).await.unwrap().unwrap();
    assert!(text.contains("phase 1 epoch 2/2"), "{text}");
    assert!(text.contains("job succeeded"), "{text}");
    assert!(text.contains("skipping unreadable image") && text.contains("broken.jpeg"), "{text}");
    assert!(text.contains("train: decoded 9 images (1 skipped)"), "{text}");
    let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["progress"]["phase"], 1);
    // Batch norm kept PyTorch's counter and moved its statistics. 9 images by 4 make batches of
    // 4 and 5 (a lone last image joins the batch before), so 2 epochs × 2 batches.
    let url = app.url(&format!("/api/jobs/{id}/artifacts/final.safetensors"));
    let weights = read_safetensors(&app.client.get(url).send().await.unwrap().bytes().await.unwrap());
    assert_eq!(weights["head.3.num_batches_tracked"].1, [4.0]);
    assert!(weights["head.3.running_mean"].1.iter().any(|v| *v != 0.0));
}

#[tokio::test]
async fn precision_bf16_trains_under_autocast_and_keeps_float32_checkpoints() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 8, 2, 4);
    let spec = json!({
        "name": "bf16", "dataset": "demo", "backbone": "vgg16", "weights": "random", "precision": "bf16",
        "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 8}, "batchnorm", "relu", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}, {"epochs": 1, "train": "all"}],
        "optimizer": {"name": "adam", "lr": 1e-4}, "seed": 5
    });
    let id = app.submit(&spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    // The layout a GPU job uses, here on the CPU: every path (activation cache, checkpoints after
    // each phase, Grad-CAM) runs with channels-last weights.
    assert!(log.contains("precision: bf16 autocast, channels-last (asked for)"), "{log}");
    assert_eq!(job["progress"]["precision"], "bf16 autocast, channels-last (asked for)", "the job's JSON says it too");
    assert!(app.download(&id, "phase1.safetensors").await.len() > 1000);
    assert!(job["final_metrics"]["train_loss"].as_f64().unwrap().is_finite(), "{job:#}");
    // Weights and their checkpoint stay float32 (autocast only lowers the arithmetic).
    let bytes = app.download(&id, "final.safetensors").await;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in tensors.tensors() {
        assert!(
            matches!(view.dtype(), safetensors::Dtype::F32 | safetensors::Dtype::I64),
            "{name}: {:?}",
            view.dtype()
        );
    }
    // The default (`auto`) follows this CPU's flags: bf16 with AMX-BF16 or AVX512-BF16, else fp32.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> =
        cpuinfo.lines().find(|line| line.starts_with("flags")).map_or(vec![], |line| line.split_whitespace().collect());
    let expected = if flags.contains(&"amx_bf16") && flags.contains(&"amx_tile") {
        "bf16 autocast (auto: the CPU has AMX-BF16)"
    } else if flags.contains(&"avx512_bf16") {
        "bf16 autocast (auto: the CPU has AVX512-BF16)"
    } else {
        "fp32 (auto: the CPU has no bf16 instructions)"
    };
    let (_, plain) = app
        .post(
            "/api/jobs",
            &json!({"name": "auto", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}], "phases": [{"epochs": 1, "train": "head"}],
        "optimizer": {"name": "sgd", "lr": 0.01}}),
        )
        .await;
    let id = plain["jobs"][0]["id"].as_str().unwrap();
    let (job, log) = app.finished(id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{log}");
    assert!(log.contains(&format!("precision: {expected}")), "{log}");
    assert_eq!(job["progress"]["precision"], expected);
}
