//! Sweeps (one spec, a grid of combinations × repeats), resubmits with a merge patch, and the
//! shipped examples, against a real server with a fake worker.

use crate::helpers::{client_with, small_spec, Options, TestApp, FAKE_WORKER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn app_with_fake_worker() -> (tempfile::TempDir, TestApp) {
    crate::helpers::app_with_worker(FAKE_WORKER, 2)
}

#[tokio::test]
async fn a_two_by_two_sweep_with_two_repeats_is_one_group_of_eight_jobs_and_four_combinations() {
    let (_scripts, app) = app_with_fake_worker();
    // `repeat`: the fake worker reports test_acc 0.<seed>, so each combination averages 0.1 and 0.2.
    let mut spec = small_spec("repeat");
    spec["repeats"] = json!(2);
    spec["sweep"] = json!({"/optimizer/lr": [1e-3, 1e-4], "/image_size": [32, 64]});
    let (status, body) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let group = body["group_id"].as_str().unwrap().to_string();
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 8, "{body}");
    // Pointers sorted (/image_size, then /optimizer/lr varying fastest), each combination's repeats together.
    let expected = [(32, 1e-3), (32, 1e-4), (64, 1e-3), (64, 1e-4)];
    // The same spec with the combination's values and the repeat's seed, nothing else changed.
    let without_swept = |spec: &Value| {
        let mut spec = spec.clone();
        spec["image_size"] = Value::Null;
        spec["optimizer"]["lr"] = Value::Null;
        spec["seed"] = Value::Null;
        spec
    };
    for (index, job) in jobs.iter().enumerate() {
        let (size, lr) = expected[index / 2];
        let got = (&job["spec"]["image_size"], &job["spec"]["optimizer"]["lr"], &job["spec"]["seed"]);
        assert_eq!(got, (&json!(size), &json!(lr), &json!(1 + index % 2)), "job {index}: {job}");
        assert_eq!(without_swept(&job["spec"]), without_swept(&jobs[0]["spec"]), "job {index}");
        assert!(job["spec"].get("sweep").is_none() && job["spec"].get("repeats").is_none(), "{job}");
        assert_eq!(job["params"], json!({"/image_size": size, "/optimizer/lr": lr}));
        assert_eq!(job["group_id"], group);
    }
    assert_eq!(jobs[0]["spec"]["head"], small_spec("repeat")["head"]);
    for job in jobs {
        app.wait_for_state(job["id"].as_str().unwrap(), "succeeded", WAIT).await;
    }

    let (status, view) = app.get(&format!("/api/groups/{group}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["varying"], json!(["/image_size", "/optimizer/lr"]));
    let combinations = view["combinations"].as_array().unwrap();
    assert_eq!(combinations.len(), 4, "{view}");
    for (combination, (size, lr)) in combinations.iter().zip(expected) {
        assert_eq!(combination["params"], json!({"/image_size": size, "/optimizer/lr": lr}));
        assert_eq!((combination["jobs"].as_array().unwrap().len(), combination["succeeded"].as_u64()), (2, Some(2)));
        let acc = &combination["metrics"]["test_acc"];
        assert!((acc["mean"].as_f64().unwrap() - 0.15).abs() < 1e-9 && acc["n"] == 2, "{combination}");
    }

    // compare: one row per combination, the swept values as columns.
    let (_, table) = app.get(&format!("/api/compare?ids={group}")).await;
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{table}");
    assert_eq!(rows[3]["params"], json!({"/image_size": 64, "/optimizer/lr": 1e-4}));
    assert_eq!(rows[3]["jobs"].as_array().unwrap().len(), 2);
    let (_, csv) = app.text(&format!("/api/compare?ids={group}&format=csv")).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,kind,name,/image_size,/optimizer/lr,state,jobs,succeeded,test_acc,"), "{csv}");
    assert!(lines[4].starts_with(&format!("{group},group,repeat,64,0.0001,finished,2,2,0.15")), "{csv}");

    // A plain repeat group is one combination with empty params.
    let mut plain = small_spec("repeat");
    plain["repeats"] = json!(2);
    let (_, body) = app.post("/api/jobs", &plain).await;
    let (_, view) = app.get(&format!("/api/groups/{}", body["group_id"].as_str().unwrap())).await;
    assert_eq!(view["varying"], json!([]));
    assert_eq!(view["combinations"].as_array().unwrap().len(), 1);
    assert_eq!(view["combinations"][0]["params"], json!({}));
    assert!(body["jobs"][0].get("params").is_none(), "{body}");
}

#[tokio::test]
async fn a_sweep_with_one_bad_combination_is_one_422_and_queues_nothing() {
    let (_scripts, app) = app_with_fake_worker();
    let mut spec = small_spec("fine");
    spec["sweep"] = json!({"/optimizer/lr": [1e-3], "/image_size": [32, 8]});
    let (status, body) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "image_size");
    let message = body["detail"]["message"].as_str().unwrap();
    assert!(message.starts_with(r#"in sweep combination {"/image_size": 8, "/optimizer/lr": 0.001}: "#), "{body}");
    // A malformed sweep names the sweep.
    spec["sweep"] = json!({"/phases/0/optimizer/lr": [1e-3, 1e-4]});
    let (status, body) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"]["field"], "sweep./phases/0/optimizer/lr");
    assert!(app.all_jobs("").await.is_empty(), "nothing was queued");
}

#[tokio::test]
async fn a_resubmit_applies_a_merge_patch_and_links_the_child_to_its_parent() {
    let (_scripts, app) = app_with_fake_worker();
    let parent = app.submit(&small_spec("fine")).await;
    let (_, original) = app.get(&format!("/api/jobs/{parent}")).await;

    let patch = json!({"optimizer": {"lr": 1e-4}, "seed": 7});
    let (status, answer) = app.post(&format!("/api/jobs/{parent}/resubmit"), &patch).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let child = &answer["jobs"][0];
    assert_eq!(child["parent_id"], parent.as_str());
    assert_eq!(
        child["notes"],
        json!([format!(r#"resubmitted from {parent} with {{"optimizer":{{"lr":0.0001}},"seed":7}}"#)])
    );
    let mut expected = original["spec"].clone();
    expected["optimizer"]["lr"] = json!(1e-4);
    expected["seed"] = json!(7);
    assert_eq!(child["spec"], expected);
    let (_, shown) = app.get(&format!("/api/jobs/{}", child["id"].as_str().unwrap())).await;
    assert_eq!(shown["parent_id"], parent.as_str(), "stored, not only answered");

    // An empty body runs the same spec again.
    let response = app.client.post(app.url(&format!("/api/jobs/{parent}/resubmit"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers().get("location").and_then(|value| value.to_str().ok()).map(str::to_string);
    let again: Value = response.json().await.unwrap();
    let again = &again["jobs"][0];
    assert_eq!(location, Some(format!("/api/jobs/{}", again["id"].as_str().unwrap())), "a 201 names the new job");
    assert_eq!((&again["spec"], &again["parent_id"]), (&original["spec"], &json!(parent)));

    // A patch may add a sweep: every job of the group links to the parent.
    let (status, body) = app.post(&format!("/api/jobs/{parent}/resubmit"), &json!({"sweep": {"/seed": [3, 4]}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let seeds: Vec<(&Value, &Value)> =
        body["jobs"].as_array().unwrap().iter().map(|job| (&job["spec"]["seed"], &job["parent_id"])).collect();
    assert_eq!(seeds, vec![(&json!(3), &json!(parent)), (&json!(4), &json!(parent))]);

    // Bad patches name what to fix; nothing is queued for them.
    let (status, body) = app.post(&format!("/api/jobs/{parent}/resubmit"), &json!({"image_size": 8})).await;
    assert_eq!((status, &body["detail"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("image_size")), "{body}");
    let (status, body) = app.post(&format!("/api/jobs/{parent}/resubmit"), &json!([1])).await;
    assert_eq!((status, &body["detail"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("(body)")), "{body}");
    assert!(body["detail"]["message"].as_str().unwrap().contains("merge patch"), "{body}");
    assert_eq!(app.all_jobs("").await.len(), 5, "parent, patched, same again, two of the sweep");

    // Someone else's job cannot be resubmitted, and does not show it exists.
    let bob = client_with(&app.tokens["bob"]);
    let response = bob.post(app.url(&format!("/api/jobs/{parent}/resubmit"))).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_examples_are_listed_without_a_token() {
    let app = TestApp::spawn(Options::default());
    let response = reqwest::get(app.url("/api/examples")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let examples: Vec<Value> = response.json().await.unwrap();
    let names: Vec<&str> = examples.iter().map(|example| example["name"].as_str().unwrap()).collect();
    for name in ["q1", "q2", "q3-256", "q3-512", "qe1-gap", "qe3-inception-128"] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    let q1 = examples.iter().find(|example| example["name"] == "q1").unwrap();
    assert!(q1["description"].as_str().unwrap().starts_with("Q1"), "{q1}");
    assert_eq!((&q1["spec"]["image_size"], &q1["spec"]["backbone"]), (&json!(128), &json!("vgg16")));
}
