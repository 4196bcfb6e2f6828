//! EfficientNet-B0 end to end, on generated torchvision-named weights: the head, then one stage,
//! trained from cached activations; the checkpoint loads strictly in PyTorch and exports to ONNX
//! with the same predictions; Grad-CAM explains its `top` block; and a variable-size job trains
//! with a `gap` head.

use crate::helpers::{read_safetensors, write_dataset, write_generated_weights, Options, TestApp};
use crate::pytorch::check_in_pytorch;
use crate::variable::vary_aspects;
use reqwest::StatusCode;
use serde_json::{json, Value};
use trainq::domain::backbone::Backbone;

/// The finished job named `name`.
async fn job_named(app: &TestApp, name: &str) -> Value {
    let jobs = app.all_jobs("").await;
    jobs.into_iter().find(|job| job["name"] == name).unwrap_or_else(|| panic!("no job named {name}"))
}

#[tokio::test]
async fn efficientnet_b0_trains_head_then_a_stage_and_predicts_the_same_in_pytorch_onnx_and_grad_cam() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 3, 1, 2);
    let initial =
        write_generated_weights(Backbone::EfficientNetB0, &app.root.join("weights/efficientnet_b0.safetensors"));
    let spec = json!({
        "name": "efficientnet-tiny", "dataset": "demo", "backbone": "efficientnet_b0", "weights": "imagenet",
        "image_size": 32, "batch_size": 3,
        // Batch norm with the last batch's statistics: a head that the pixels move.
        "head": ["gap", {"batchnorm": {"momentum": 0.0}}, {"dense": 2}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["stage7", "head"]}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 5
    });
    let worst = check_in_pytorch(&app, spec, true).await;
    assert!(worst < 1e-3, "max |PyTorch − trainq| = {worst}");
    let job = job_named(&app, "efficientnet-tiny").await;
    let id = job["id"].as_str().unwrap();
    let (job, log) = app.finished(id, std::time::Duration::from_secs(10)).await;

    // Phase 1 trained the head on pooled `top` activations, which also stored stage6's for phase 2.
    let features = &job["progress"]["features"];
    assert_eq!(features["1"]["cut"], "top+gap", "{features:#}");
    assert_eq!(features["1"]["state"], "built", "{features:#}\n{log}");
    assert_eq!(features["2"]["cut"], "stage6", "{features:#}");
    assert_eq!(features["2"]["state"], "hit", "{features:#}\n{log}");

    // Phase 1 left every backbone tensor as loaded; phase 2 moved stage7 (features.7) only, its
    // batch-norm statistics included, and no frozen block's statistics.
    let phase1 = read_safetensors(&app.download(id, "phase1.safetensors").await);
    let last = read_safetensors(&app.download(id, "final.safetensors").await);
    for (name, shape, values) in &initial {
        assert_eq!(&phase1[name].0, shape, "{name}");
        assert!(&phase1[name].1 == values, "{name} changed in a frozen phase");
        let changed = &last[name].1 != values;
        let trained = name.starts_with("features.7.");
        if trained && (name.ends_with(".0.weight") || name.ends_with("running_mean")) {
            assert!(changed, "{name} should have been trained");
        }
        if !trained {
            assert!(!changed, "{name} changed although frozen");
        }
    }
    // 6 training images in batches of 3: stage7's batch norms counted 2 batches, stage6's none.
    assert_eq!(last["features.7.0.block.3.1.num_batches_tracked"].1, [2.0]);
    assert_eq!(last["features.6.0.block.3.1.num_batches_tracked"].1, [0.0]);

    // Grad-CAM on the last convolutional block: the gallery, and an uploaded film.
    assert!(log.contains("Grad-CAM: "), "{log}");
    let index: Value = serde_json::from_slice(&app.download(id, "cam/index.json").await).unwrap();
    assert!(!index.as_array().unwrap().is_empty(), "{index:#}");
    let film = std::fs::read(
        app.root.join("datasets/demo/test/PNEUMONIA").read_dir().unwrap().next().unwrap().unwrap().path(),
    )
    .unwrap();
    let response = app.client.post(app.url(&format!("/api/jobs/{id}/cam"))).body(film).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let picture = image::load_from_memory_with_format(&response.bytes().await.unwrap(), image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(picture.width().max(picture.height()), 256);
    assert!(picture.pixels().any(|p| p.0[0] != p.0[2]), "a heatmap overlay is coloured");

    // `GET /api/backbones` lists it with its blocks and sizes.
    let (_, backbones) = app.get("/api/backbones").await;
    let listed = backbones.as_array().unwrap().iter().find(|b| b["name"] == "efficientnet_b0").cloned();
    let listed = listed.unwrap_or_else(|| panic!("{backbones:#}"));
    assert_eq!(listed["min_image_size"], 32, "{listed:#}");
    assert_eq!(listed["feature_channels"], 1280, "{listed:#}");
    assert_eq!(listed["blocks"][0], "stem");
    assert_eq!(listed["blocks"][8], "top");
}

/// Variable size: square, landscape and portrait films in batches of one shape each, a `gap`
/// head, and the loader and ONNX export (dynamic height and width) predicting what trainq did.
#[tokio::test]
async fn efficientnet_b0_trains_on_variable_sizes_with_a_gap_head() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 6, 1, 3);
    vary_aspects(&app.root.join("datasets/demo"));
    write_generated_weights(Backbone::EfficientNetB0, &app.root.join("weights/efficientnet_b0.safetensors"));
    let spec = json!({
        "name": "efficientnet-variable", "dataset": "demo", "backbone": "efficientnet_b0", "weights": "imagenet",
        "image_size": null, "max_image_side": 64, "batch_size": 2,
        "head": ["gap", {"batchnorm": {"momentum": 0.0}}, {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["top", "head"]}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 3
    });
    let worst = check_in_pytorch(&app, spec, true).await;
    assert!(worst < 1e-3, "max |PyTorch − trainq| = {worst}");
    let job = job_named(&app, "efficientnet-variable").await;
    let (_, log) = app.finished(job["id"].as_str().unwrap(), std::time::Duration::from_secs(10)).await;
    for shape in ["32x32", "64x32", "32x64"] {
        assert!(log.contains(shape), "{shape} missing from the log:\n{log}");
    }
}
