//! What a student takes into a report: curves as JSON and CSV, plots as SVG and PNG, comparisons
//! of jobs and repeat groups, and artifacts in subfolders (the CAM gallery's `cam/`), with a fake
//! worker that reports a fixed, known run over the real protocol.

use crate::helpers::{small_spec, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Two phases (2 + 1 epochs, the second epoch without validation), then binary test metrics whose
/// test accuracy is 0.6 + seed / 10, so a repeat group has a known mean and spread. A job named
/// `softmax` reports multiclass metrics instead; `wait` sleeps; `with-cams` writes a CAM gallery
/// plus two symlinks that point out of the job's folder.
const RESULTS_WORKER: &str = r#"
if grep -q '"name": "wait"' "$3"; then exec sleep 60; fi
seed=$(grep -o '"seed": [0-9]*' "$3" | grep -o '[0-9]*$')
echo "worker says hello" >&2
echo '@trainq {"event":"started","device":"cpu"}'
echo '@trainq {"event":"phase","phase":1,"epochs":2,"trainable_params":10}'
echo '@trainq {"event":"step","phase":1,"epoch":1,"step":1,"steps":2,"images_per_sec":50.0}'
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.69,"train_acc":0.55,"val_loss":0.68,"val_acc":0.5,"seconds":0.25}'
echo '@trainq {"event":"epoch","phase":1,"epoch":2,"train_loss":0.6,"train_acc":0.65,"val_loss":null,"val_acc":null,"seconds":0.5}'
echo '@trainq {"event":"phase","phase":2,"epochs":1,"trainable_params":20}'
echo '@trainq {"event":"epoch","phase":2,"epoch":1,"train_loss":0.5,"train_acc":0.8,"val_loss":0.55,"val_acc":0.7,"seconds":0.75}'
if grep -q '"name": "with-cams"' "$3"; then
  mkdir -p artifacts/cam
  cp "$(dirname "$0")/tiny.png" artifacts/cam/tp-0.png
  echo '[{"file": "cam/tp-0.png", "kind": "tp", "path": "test/PNEUMONIA/x.jpeg", "label": "PNEUMONIA", "probability": 0.93}]' > artifacts/cam/index.json
  ln -s ../../../../trainq.db artifacts/cam/escape.png
  ln -s / artifacts/root
fi
if grep -q '"name": "softmax"' "$3"; then
  echo '@trainq {"event":"final","train_loss":0.4,"train_acc":0.8,"test_loss":0.5,"test_acc":0.75,"multiclass":{"confusion":[[3,1],[1,3]],"accuracy":0.75,"per_class":[]}}'
  exit 0
fi
echo "@trainq {\"event\":\"final\",\"train_loss\":0.4,\"train_acc\":0.8,\"test_loss\":0.5,\"test_acc\":0.$((6 + seed)),\"binary\":{\"threshold\":0.5,\"confusion\":[[4,1],[2,3]],\"true_positives\":3,\"false_positives\":1,\"true_negatives\":4,\"false_negatives\":2,\"accuracy\":0.7,\"precision\":0.75,\"recall\":0.6,\"specificity\":0.8,\"f1\":0.6667,\"auc\":0.76,\"roc\":[{\"fpr\":0,\"tpr\":0,\"threshold\":null},{\"fpr\":0,\"tpr\":0.4,\"threshold\":0.9},{\"fpr\":0.2,\"tpr\":0.6,\"threshold\":0.6},{\"fpr\":0.6,\"tpr\":1,\"threshold\":0.3},{\"fpr\":1,\"tpr\":1,\"threshold\":0.1}],\"undefined\":{}}}"
"#;

pub struct ResultsApp {
    pub app: TestApp,
    pub _scripts: tempfile::TempDir,
}

/// A server with the results worker, the `demo` dataset (NORMAL, PNEUMONIA) and weights.
pub fn results_app(cpu_slots: usize) -> ResultsApp {
    let (scripts, app) = crate::helpers::app_with_worker(RESULTS_WORKER, cpu_slots);
    ResultsApp { app, _scripts: scripts }
}

/// Submits a job with this name and waits for it to succeed.
async fn succeeded(app: &TestApp, name: &str) -> String {
    let id = app.submit(&small_spec(name)).await;
    app.wait_for_state(&id, "succeeded", WAIT).await;
    id
}

async fn fetch(app: &TestApp, path: &str) -> (StatusCode, String, bytes::Bytes) {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, content_type, response.bytes().await.unwrap())
}

/// A rendered plot: SVG text with its labels, or a PNG of the promised size with drawn text.
fn check_plot(format: &str, content_type: &str, body: &[u8], labels: &[&str]) {
    match format {
        "svg" => {
            assert_eq!(content_type, "image/svg+xml");
            let svg = std::str::from_utf8(body).unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..svg.len().min(200)]);
            for label in labels {
                assert!(svg.contains(label), "the SVG lacks {label:?}");
            }
        }
        "png" => {
            assert_eq!(content_type, "image/png");
            let image = image::load_from_memory_with_format(body, image::ImageFormat::Png).unwrap().to_rgb8();
            assert!(image.width() >= 1000 && image.height() >= 700, "{:?}", image.dimensions());
            // Anti-aliased text and lines give many colours; a blank or failed drawing gives one.
            let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
            assert!(colours.len() > 50, "only {} colours: is the plot empty?", colours.len());
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn curves_come_as_json_and_as_csv_with_the_same_numbers() {
    let ResultsApp { app, _scripts } = results_app(1);
    let id = succeeded(&app, "curves").await;
    let (_, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
    let epochs = metrics["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);

    let (status, content_type, body) = fetch(&app, &format!("/api/jobs/{id}/metrics?format=csv")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "text/csv; charset=utf-8"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "phase,epoch,train_loss,train_acc,val_loss,val_acc,seconds");
    assert_eq!(lines.len(), 4, "{text}");
    let columns = ["phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"];
    for (line, epoch) in lines[1..].iter().zip(epochs) {
        for (field, column) in line.split(',').zip(columns) {
            match epoch[column].as_f64() {
                Some(value) => assert_eq!(field.parse::<f64>().unwrap(), value, "{column} in {line}"),
                None => assert_eq!(field, "", "a missing {column} is an empty field: {line}"),
            }
        }
    }
    assert_eq!(lines[2], "1,2,0.6,0.65,,,0.5");

    let (status, body) = app.get(&format!("/api/jobs/{id}/metrics?format=xml")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["field"], "format");
    assert!(body["detail"]["message"].as_str().unwrap().contains("csv"), "{body}");
    let unknown = uuid::Uuid::new_v4();
    for path in [format!("/api/jobs/{unknown}/metrics"), format!("/api/jobs/{unknown}/metrics?format=csv")] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(&unknown.to_string()));
    }
}

#[tokio::test]
async fn every_plot_renders_as_svg_and_png_with_readable_labels() {
    let ResultsApp { app, _scripts } = results_app(1);
    let id = succeeded(&app, "plots").await;
    let cases: [(&str, &[&str]); 4] = [
        (
            "accuracy",
            &["plots: accuracy per epoch", "epoch (all phases)", "train", "val", "phase 2", "next phase starts"],
        ),
        ("loss", &["plots: loss per epoch", "loss", "phase 2"]),
        ("roc", &["ROC on the test set", "AUC = 0.760", "chance (AUC = 0.5)", "false positive rate"]),
        // The demo dataset's classes name the rows; 4 of 5 NORMAL images were right.
        (
            "confusion",
            &["NORMAL", "PNEUMONIA", "true class", "predicted class", "\n4\n</text>", "\n3\n</text>", "80.0%", "60.0%"],
        ),
    ];
    for (kind, labels) in cases {
        for format in ["svg", "png"] {
            let (status, content_type, body) = fetch(&app, &format!("/api/jobs/{id}/plots/{kind}.{format}")).await;
            assert_eq!(status, StatusCode::OK, "{kind}.{format}: {}", String::from_utf8_lossy(&body));
            check_plot(format, &content_type, &body, labels);
        }
    }
    // A softmax job has a confusion matrix but no ROC curve, and says why.
    let softmax = succeeded(&app, "softmax").await;
    let (status, content_type, body) = fetch(&app, &format!("/api/jobs/{softmax}/plots/confusion.svg")).await;
    assert_eq!(status, StatusCode::OK);
    check_plot("svg", &content_type, &body, &["NORMAL", "75.0%"]);
    let (status, body) = app.get(&format!("/api/jobs/{softmax}/plots/roc.png")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("binary (sigmoid"), "{body}");

    // Unknown plots and jobs are 404s that say what exists.
    for bad in ["precision.png", "accuracy.gif", "accuracy"] {
        let (status, body) = app.get(&format!("/api/jobs/{id}/plots/{bad}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("accuracy, loss, roc or confusion"), "{body}");
    }
    let (status, _) = app.get(&format!("/api/jobs/{}/plots/loss.svg", uuid::Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_job_without_data_yet_gets_409_saying_when_its_plots_come() {
    let ResultsApp { app, _scripts } = results_app(1);
    let waiting = app.submit(&small_spec("wait")).await;
    app.wait_for_state(&waiting, "running", WAIT).await;
    let queued = app.submit(&small_spec("plots")).await;
    for (id, state) in [(&waiting, "running"), (&queued, "queued")] {
        for (kind, says) in [
            ("accuracy", "no finished epoch yet"),
            ("roc", "no test metrics yet"),
            ("confusion", "no test metrics yet"),
        ] {
            let (status, body) = app.get(&format!("/api/jobs/{id}/plots/{kind}.png")).await;
            assert_eq!(status, StatusCode::CONFLICT, "{kind}: {body}");
            assert!(body["error"].as_str().unwrap().contains(says), "{kind}: {body}");
            assert_eq!(body["detail"]["state"], state);
        }
    }
    app.post(&format!("/api/jobs/{waiting}/cancel"), &json!({})).await;
    app.wait_for_state(&queued, "succeeded", WAIT).await;
}

#[tokio::test]
async fn compare_tabulates_jobs_and_groups_as_mean_and_std() {
    let ResultsApp { app, _scripts } = results_app(2);
    let first = succeeded(&app, "first").await;
    let second = succeeded(&app, "second").await;
    let mut spec = small_spec("repeat");
    spec["repeats"] = json!(3);
    let (status, body) = app.post("/api/jobs", &spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let group = body["group_id"].as_str().unwrap().to_string();
    for job in body["jobs"].as_array().unwrap() {
        app.wait_for_state(job["id"].as_str().unwrap(), "succeeded", WAIT).await;
    }

    let (status, table) = app.get(&format!("/api/compare?ids={first},{second},{group}")).await;
    assert_eq!(status, StatusCode::OK, "{table}");
    let rows = table["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|row| row["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), second.as_str(), group.as_str()], "rows keep the order asked for");
    // small_spec has seed 1: test accuracy 0.7, reported as-is for a job.
    assert_eq!(rows[0]["kind"], "job");
    assert_eq!(rows[0]["metrics"]["test_acc"], json!({"mean": 0.7, "std": null, "n": 1}));
    assert_eq!(rows[0]["metrics"]["auc"]["mean"], 0.76);
    // The group's seeds 1, 2, 3 give 0.7, 0.8, 0.9: mean 0.8, sample std 0.1.
    let group_row = &rows[2];
    assert_eq!((group_row["kind"].as_str(), group_row["succeeded"].as_u64()), (Some("group"), Some(3)));
    assert_eq!(group_row["state"], "finished");
    let test_acc = &group_row["metrics"]["test_acc"];
    assert!((test_acc["mean"].as_f64().unwrap() - 0.8).abs() < 1e-12, "{test_acc}");
    assert!((test_acc["std"].as_f64().unwrap() - 0.1).abs() < 1e-12, "{test_acc}");
    assert_eq!(test_acc["n"], 3);
    assert_eq!(group_row["metrics"]["precision"]["std"], 0.0, "identical values have no spread");

    let (status, content_type, body) = fetch(&app, &format!("/api/compare?ids={first},{group}&format=csv")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "text/csv; charset=utf-8"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|line| line.split(',').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    let column =
        |name: &str| lines[0].iter().position(|c| *c == name).unwrap_or_else(|| panic!("no column {name}: {text}"));
    assert_eq!(&lines[0][..6], ["id", "kind", "name", "state", "jobs", "succeeded"]);
    assert_eq!(
        (lines[1][0], lines[1][column("test_acc")], lines[1][column("test_acc_std")]),
        (first.as_str(), "0.7", "")
    );
    assert_eq!(lines[2][column("jobs")], "3");
    let std: f64 = lines[2][column("test_acc_std")].parse().unwrap();
    assert!((std - 0.1).abs() < 1e-12, "{text}");

    // Overlaid plots of the two jobs and the group's three runs.
    let ids = format!("{first},{second},{group}");
    for (file, labels) in [
        ("accuracy.svg", &["first val", "second train", "repeat seed 3 val"][..]),
        ("loss.png", &[][..]),
        ("roc.svg", &["first (AUC = 0.760)", "repeat seed 2 (AUC = 0.760)"][..]),
    ] {
        let (status, content_type, body) = fetch(&app, &format!("/api/compare/plots/{file}?ids={ids}")).await;
        assert_eq!(status, StatusCode::OK, "{file}: {}", String::from_utf8_lossy(&body));
        check_plot(&file[file.len() - 3..], &content_type, &body, labels);
    }
    let (status, body) = app.get(&format!("/api/compare/plots/confusion.png?ids={ids}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["field"], "plot");
}

#[tokio::test]
async fn bad_compare_ids_get_400_naming_the_field_and_unknown_ones_404() {
    let ResultsApp { app, _scripts } = results_app(1);
    let id = succeeded(&app, "only").await;
    let many: Vec<String> = (0..21).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let cases = [
        String::from("/api/compare"),
        String::from("/api/compare?ids="),
        format!("/api/compare?ids={id},,{id}"),
        String::from("/api/compare?ids=not-a-uuid"),
        format!("/api/compare?ids={id},{id}"),
        format!("/api/compare?ids={}", many.join(",")),
        format!("/api/compare/plots/roc.png?ids={id},nope"),
    ];
    for path in cases {
        let started = Instant::now();
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["detail"]["field"], "ids", "{path}: {body}");
        assert!(!body["detail"]["message"].as_str().unwrap().is_empty());
        assert!(started.elapsed() < Duration::from_secs(5), "{path} took {:?}", started.elapsed());
    }
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = app.get(&format!("/api/compare?ids={id},{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&unknown.to_string()), "{body}");
    let (status, body) = app.get(&format!("/api/compare?ids={id}&format=pdf")).await;
    assert_eq!((status, body["detail"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("format")));
    // A comparison whose jobs have no epochs yet has no curves to overlay.
    let waiting = app.submit(&small_spec("wait")).await;
    let (status, body) = app.get(&format!("/api/compare/plots/loss.svg?ids={waiting}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    app.post(&format!("/api/jobs/{waiting}/cancel"), &json!({})).await;
    // None of that hurt the server.
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn artifacts_in_subfolders_are_served_and_nothing_escapes_the_job_folder() {
    let ResultsApp { app, _scripts } = results_app(1);
    let id = succeeded(&app, "with-cams").await;
    let (_, artifacts) = app.get(&format!("/api/jobs/{id}/artifacts")).await;
    let names: Vec<&str> = artifacts.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cam/index.json", "cam/tp-0.png"], "symlinks are neither listed nor followed");
    assert_eq!(artifacts[1]["url"], format!("/api/jobs/{id}/artifacts/cam/tp-0.png"));

    let (status, content_type, body) = fetch(&app, &format!("/api/jobs/{id}/artifacts/cam/index.json")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "application/json"));
    let index: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index[0]["file"], "cam/tp-0.png");
    let (status, content_type, body) = fetch(&app, &format!("/api/jobs/{id}/artifacts/cam/tp-0.png")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "image/png"));
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 8);

    for escape in [
        "cam%2F..%2F..%2F..%2Ftrainq.db",
        "..%2F..%2F..%2Ftrainq.db",
        "%2Fetc%2Fpasswd",
        "cam%2F.%2Findex.json",
        "cam//index.json",
        "cam/escape.png",
        "root/etc/passwd",
        "cam",
        "cam%5Cindex.json",
        "a/b/c/d/e.png",
    ] {
        let (status, body) = app.get(&format!("/api/jobs/{id}/artifacts/{escape}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{escape}: {body}");
        assert!(body["error"].as_str().unwrap().contains("has no artifact"), "{escape}: {body}");
    }
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_upload_is_refused_at_once_with_a_json_error() {
    let ResultsApp { app, _scripts } = results_app(1);
    // Over the 64 KiB limit: the server answers from the Content-Length alone, before any of the
    // body is sent (a client streaming the body could race the answer and see a broken pipe).
    let address = app.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        256 * 1024
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer))
        .await
        .expect("the server answers without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).expect(&answer);
    assert!(body["error"].as_str().unwrap().contains("too large"), "{body}");
    // The server is unharmed and still accepts a good spec.
    succeeded(&app, "after").await;
}
