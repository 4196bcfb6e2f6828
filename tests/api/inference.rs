//! Grad-CAM and predictions: the gallery every job writes, and uploads answered by the job's warm
//! model in a worker process — bad uploads refused with a 4xx before any model sees them.

use crate::helpers::{write_dataset, Options, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn upload(app: &TestApp, id: &str, route: &str, bytes: Vec<u8>) -> (StatusCode, bytes::Bytes, String) {
    let response = app.client.post(app.url(&format!("/api/jobs/{id}/{route}"))).body(bytes).send().await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, response.bytes().await.unwrap(), content_type)
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let film = image::GrayImage::from_fn(width, height, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&film).unwrap();
    bytes
}

#[tokio::test]
async fn a_finished_job_has_a_cam_gallery_and_answers_predict_and_cam_uploads() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 12, 2, 6);
    let spec = json!({
        "name": "cam", "dataset": "demo", "backbone": "vgg16", "weights": "random", "image_size": 32, "batch_size": 6,
        "head": ["gap", {"dense": 8}, "relu", {"dense": 1}], "phases": [{"epochs": 2, "train": "all"}],
        "optimizer": {"name": "adam", "lr": 1e-4}, "seed": 3
    });
    let (status, queued) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = queued["jobs"][0]["id"].as_str().unwrap().to_string();
    // Nothing to predict with before the job has a model.
    let (status, body, _) = upload(&app, &id, "predict", jpeg(40, 40)).await;
    assert!(status == StatusCode::CONFLICT || status == StatusCode::OK, "{status}: {body:?}");
    let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{log}");
    assert!(log.contains("Grad-CAM: "), "{log}");

    // The gallery: index.json lists PNG heatmaps of test images, each downloadable.
    let index: Value = serde_json::from_slice(&app.download(&id, "cam/index.json").await).unwrap();
    let items = index.as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 12, "{index:#}");
    for item in items {
        assert!(["tp", "tn", "fp", "fn"].contains(&item["kind"].as_str().unwrap()), "{item}");
        assert!(item["path"].as_str().unwrap().starts_with("test/"), "{item}");
        let png = app.download(&id, item["file"].as_str().unwrap()).await;
        let picture = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap().to_rgb8();
        assert_eq!(picture.width().max(picture.height()), 256, "{item}");
        // A heatmap overlay is coloured, unlike the gray film under it.
        assert!(picture.pixels().any(|p| p.0[0] != p.0[2]), "{item}: no colour");
    }
    let (_, artifacts) = app.get(&format!("/api/jobs/{id}/artifacts")).await;
    assert!(artifacts.as_array().unwrap().iter().any(|a| a["name"] == "cam/index.json"), "{artifacts:#}");
    let (status, _) = app.text(&format!("/api/jobs/{id}/artifacts/..%2Fjob.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.text(&format!("/api/jobs/{id}/artifacts/cam/../../job.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Predict: probabilities per class that sum to one.
    let film = std::fs::read(
        app.root.join("datasets/demo/test/PNEUMONIA").read_dir().unwrap().next().unwrap().unwrap().path(),
    )
    .unwrap();
    let (status, body, _) = upload(&app, &id, "predict", film.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let p = &answer["probabilities"];
    let sum = p["NORMAL"].as_f64().unwrap() + p["PNEUMONIA"].as_f64().unwrap();
    assert!((sum - 1.0).abs() < 1e-6, "{answer:#}");
    assert!(["NORMAL", "PNEUMONIA"].contains(&answer["predicted"].as_str().unwrap()), "{answer:#}");
    // The same image twice: the warm model gives the same answer.
    let (_, again, _) = upload(&app, &id, "predict", film.clone()).await;
    assert_eq!(serde_json::from_slice::<Value>(&again).unwrap()["probabilities"], *p);

    // Cam: a PNG overlay.
    let (status, body, content_type) = upload(&app, &id, "cam", film).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(content_type, "image/png");
    let picture = image::load_from_memory(&body).unwrap();
    assert_eq!(picture.width().max(picture.height()), 256);

    // Bad uploads: 4xx naming the body, and the server is unharmed.
    let good = jpeg(64, 64);
    let mut bomb = jpeg(8, 8);
    let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let cases: [(&str, Vec<u8>, StatusCode); 4] = [
        ("text", b"this is not an image".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("truncated", good[..good.len() / 2].to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        ("60000x60000", bomb, StatusCode::PAYLOAD_TOO_LARGE),
        ("empty", Vec::new(), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (label, bytes, expected) in cases {
        for route in ["predict", "cam"] {
            let (status, body, _) = upload(&app, &id, route, bytes.clone()).await;
            assert_eq!(status, expected, "{label} → {route}: {body:?}");
            let error: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(error["detail"]["field"], "body", "{error}");
        }
    }
    // A body over 25 MB is refused from its Content-Length, before it is read.
    let address = app.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head =
        format!("POST /api/jobs/{id}/predict HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n", 26 << 20);
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let read = tokio::io::AsyncReadExt::read(&mut stream, &mut answer).await.unwrap();
    let status_line = String::from_utf8_lossy(&answer[..read]);
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = upload(&app, &id, "predict", good).await;
    assert_eq!(status, StatusCode::OK, "still answering after the bad uploads");
    let (status, _, _) = upload(&app, "00000000-0000-0000-0000-000000000000", "predict", jpeg(8, 8)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
