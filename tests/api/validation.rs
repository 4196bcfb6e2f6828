//! Invalid input gets a 4xx JSON error that names the field.

use crate::helpers::{small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn invalid_specs_get_422_naming_the_field() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 2, 1, 1);
    // No weights file yet: an imagenet spec must say how to fix that.
    let (status, body) = app.post("/api/jobs", &small_spec("no-weights")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "weights");
    let message = body["detail"]["message"].as_str().unwrap();
    assert!(message.contains("vgg16.safetensors") && message.contains("trainq weights fetch vgg16"), "{body}");
    // A file with a wrong tensor is refused at submit, naming the tensor.
    let mut wrong = write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    wrong.retain(|(name, _, _)| name != "features.28.weight");
    crate::helpers::write_safetensors(&app.root.join("weights/vgg16.safetensors"), &wrong);
    let (status, body) = app.post("/api/jobs", &small_spec("bad-weights")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"]["message"].as_str().unwrap().contains("features.28.weight"), "{body}");
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));

    type Patch = fn(&mut Value);
    let cases: [(&str, Patch); 8] = [
        ("learning_rate", |s| s["learning_rate"] = json!(0.1)),
        ("dataset", |s| s["dataset"] = json!("chest_xray")),
        ("dataset", |s| s["dataset"] = json!("../../etc")),
        ("image_size", |s| s["image_size"] = json!(8)),
        ("phases[1].train[0]", |s| s["phases"][1]["train"][0] = json!("block6")),
        ("head[5].dense", |s| s["head"][5] = json!({"dense": 3})),
        ("optimizer.name", |s| s["optimizer"]["name"] = json!("adagrad")),
        ("phases[0].epochs", |s| s["phases"][0]["epochs"] = json!(-1)),
    ];
    for (field, patch) in cases {
        let mut spec = small_spec("bad");
        patch(&mut spec);
        let (status, body) = app.post("/api/jobs", &spec).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert_eq!(body["error"], "invalid job spec");
        assert_eq!(body["detail"]["field"], field, "{body}");
        assert!(!body["detail"]["message"].as_str().unwrap().is_empty());
    }

    // Not JSON at all.
    let response = app.client.post(app.url("/api/jobs")).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"]["field"], "(body)");

    // Nothing was queued by any of that.
    assert_eq!(app.all_jobs("").await.len(), 0);
    // And the same spec, fixed, is accepted.
    let (status, body) = app.post("/api/jobs", &small_spec("good")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // One shape whatever the spec makes: no group for one job, and the job in `jobs`.
    assert_eq!(body["group_id"], serde_json::Value::Null, "{body}");
    assert_eq!(body["jobs"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["jobs"][0]["state"], "queued");
    assert_eq!(body["jobs"][0]["position"], 1);
}

#[tokio::test]
async fn bad_queries_and_unknown_ids_are_4xx_json() {
    let app = TestApp::spawn(Options::default());
    let (status, body) = app.get("/api/jobs?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"]["field"], "state");
    let (status, body) = app.get("/api/jobs/not-a-uuid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("not-a-uuid"));
    let (status, _) = app.get(&format!("/api/jobs/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.post(&format!("/api/jobs/{}/cancel", uuid::Uuid::new_v4()), &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get("/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
}

#[tokio::test]
async fn datasets_and_weights_added_while_running_are_seen() {
    let app = TestApp::spawn(Options::default());
    let (_, datasets) = app.get("/api/datasets").await;
    assert_eq!(datasets, json!([]));
    write_dataset(&app.root, 3, 1, 2);
    let (_, datasets) = app.get("/api/datasets").await;
    assert_eq!(datasets[0]["name"], "demo");
    assert_eq!(datasets[0]["classes"], json!(["NORMAL", "PNEUMONIA"]));
    let splits: Vec<(String, u64)> = datasets[0]["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["images"].as_u64().unwrap()))
        .collect();
    assert_eq!(splits, [("train".into(), 6), ("val".into(), 2), ("test".into(), 4)]);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let (_, weights) = app.get("/api/weights").await;
    assert_eq!(weights[0]["backbone"], "vgg16");
    let (_, devices) = app.get("/api/devices").await;
    assert_eq!(devices[0]["id"], "cpu0");
    assert_eq!(devices[0]["kind"], "cpu");
    let (_, backbones) = app.get("/api/backbones").await;
    assert_eq!(backbones[0]["blocks"][4], "block5");
}
