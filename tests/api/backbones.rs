//! ResNet50 and DenseNet121 end to end, on generated torchvision-named weights and the demo data:
//! the head, then one block, at a small size; the checkpoint loads strictly in PyTorch and ONNX
//! predicts what trainq predicted (`pytorch::check_in_pytorch`), the Grad-CAM gallery and `/cam`
//! answer; and a variable-size run with a `gap` head does the same on landscape and portrait films.

use crate::helpers::{write_dataset, write_generated_weights, write_safetensors, Options, TestApp};
use crate::pytorch::check_in_pytorch;
use crate::variable::vary_aspects;
use reqwest::StatusCode;
use serde_json::{json, Value};
use trainq::domain::backbone::Backbone;

/// The Grad-CAM gallery of the job named `name` lists heatmaps, and `/cam` answers a test film
/// with a PNG overlay.
async fn check_cam(app: &TestApp, name: &str) {
    let jobs = app.all_jobs("").await;
    let job = jobs.iter().find(|job| job["name"] == name).unwrap_or_else(|| panic!("no job {name}: {jobs:#?}"));
    let id = job["id"].as_str().unwrap();
    let index: Value = serde_json::from_slice(&app.download(id, "cam/index.json").await).unwrap();
    let items = index.as_array().unwrap();
    assert!(!items.is_empty(), "{name}: an empty gallery");
    let png = app.download(id, items[0]["file"].as_str().unwrap()).await;
    image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    let film = std::fs::read(
        app.root.join("datasets/demo/test/PNEUMONIA").read_dir().unwrap().next().unwrap().unwrap().path(),
    )
    .unwrap();
    let response = app.client.post(app.url(&format!("/api/jobs/{id}/cam"))).body(film).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{name}: /cam");
    let overlay = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(overlay.width().max(overlay.height()), 256, "{name}: /cam's overlay");
}

/// One backbone's two jobs: head then `block` at 64 px (loader, ONNX and CAM), and a variable-size
/// run training the head (loader and ONNX, with its dynamic height and width).
async fn backbone_end_to_end(backbone: Backbone, block: &str) {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 4, 1, 3);
    vary_aspects(&app.root.join("datasets/demo"));
    let name = backbone.name();
    // Generated weights keep a film's scale through each layer, but fifty of them with residual
    // sums (ResNet) or concatenations (DenseNet) still saturate the head; batch norm scales of a
    // quarter keep the features, and so the probabilities, where the comparison sees them move.
    let path = app.root.join("weights").join(backbone.weights_file_name());
    let mut tensors = write_generated_weights(backbone, &path);
    for (name, shape, values) in &mut tensors {
        if shape.len() == 1 && name.ends_with(".weight") {
            values.iter_mut().for_each(|value| *value *= 0.25);
        }
    }
    write_safetensors(&path, &tensors);
    // Batch norm with the last batch's statistics: a head that the pixels move, as an untrained
    // network's features are far from any running statistics.
    let head = json!(["gap", {"batchnorm": {"momentum": 0.0}}, {"dense": 2}]);
    let fixed = format!("{name}-fixed");
    let spec = json!({
        "name": fixed, "dataset": "demo", "backbone": name, "weights": "imagenet",
        "image_size": 64, "batch_size": 4, "head": head,
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": [block, "head"]}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 4
    });
    let mut worst = check_in_pytorch(&app, spec, true).await;
    check_cam(&app, &fixed).await;
    let spec = json!({
        "name": format!("{name}-variable"), "dataset": "demo", "backbone": name, "weights": "imagenet",
        "image_size": null, "max_image_side": 96, "batch_size": 4, "head": head,
        "phases": [{"epochs": 1, "train": "head"}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 4
    });
    worst = worst.max(check_in_pytorch(&app, spec, true).await);
    assert!(worst <= 1e-3, "{name}: max |PyTorch − trainq| = {worst}");
}

#[tokio::test]
async fn resnet50_fine_tunes_layer4_and_loads_in_pytorch_and_onnxruntime_with_its_cams() {
    backbone_end_to_end(Backbone::ResNet50, "layer4").await;
}

#[tokio::test]
async fn densenet121_fine_tunes_denseblock4_and_loads_in_pytorch_and_onnxruntime_with_its_cams() {
    backbone_end_to_end(Backbone::DenseNet121, "denseblock4").await;
}

/// An unknown backbone, or a block another backbone has, is a 422 naming the field.
#[tokio::test]
async fn unknown_backbones_and_blocks_are_refused_naming_the_field() {
    let app = TestApp::spawn(Options::default());
    let spec = |backbone: &str, train: Value| {
        json!({
            "dataset": "demo", "backbone": backbone, "weights": "random", "image_size": 64, "batch_size": 4,
            "head": ["gap", {"dense": 1}], "phases": [{"epochs": 1, "train": train}],
            "optimizer": {"name": "adam", "lr": 1e-3}
        })
    };
    let (status, body) = app.post("/api/jobs", &spec("resnet101", json!("head"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "backbone", "{body}");
    for (backbone, block) in [("resnet50", "denseblock4"), ("densenet121", "layer4"), ("resnet50", "block5")] {
        let (status, body) = app.post("/api/jobs", &spec(backbone, json!([block, "head"]))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backbone} {block}: {body}");
        assert_eq!(body["detail"]["field"], "phases[0].train[0]", "{backbone} {block}: {body}");
        let message = body["detail"]["message"].as_str().unwrap();
        assert!(message.contains(block) && message.contains(backbone), "{backbone} {block}: {body}");
    }
    let (_, backbones) = app.get("/api/backbones").await;
    let listed: Vec<&str> = backbones.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(listed.contains(&"resnet50") && listed.contains(&"densenet121"), "{backbones:#}");
    let densenet = backbones.as_array().unwrap().iter().find(|b| b["name"] == "densenet121").unwrap();
    assert_eq!(densenet["blocks"], json!(["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4"]));
    assert_eq!(densenet["min_image_size"], 29);
}
