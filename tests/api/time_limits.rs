//! Time limits (issue 28): a job stopped at its limit ends `timeout` with where it stood, and a
//! resume with more time finishes it without redoing an epoch; bad limits are refused with a 422
//! naming `time_limit`, and nothing is stored.

use crate::helpers::{small_spec, write_dataset, write_vgg16_weights, Options, TestApp, FAKE_WORKER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The spec both runs train: every layer (no activation cache, so each epoch costs the same).
fn spec(name: &str, epochs: u64) -> Value {
    let mut spec = small_spec(name);
    spec["batch_size"] = json!(4);
    spec["phases"] = json!([{"epochs": epochs, "train": "all"}]);
    spec["optimizer"] = json!({"name": "sgd", "lr": 0.01, "momentum": 0.9});
    spec
}

/// Seconds a job's runs held a device, from its `runs`.
fn device_seconds(job: &Value) -> f64 {
    job["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["ended_at"].as_f64().unwrap_or(0.0) - run["started_at"].as_f64().unwrap())
        .sum()
}

/// A job's curves: (phase, epoch, train_loss, the job that trained it if another).
async fn curves(app: &TestApp, id: &str) -> Vec<(u64, u64, f64, Option<String>)> {
    let (status, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    metrics["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|epoch| {
            (
                epoch["phase"].as_u64().unwrap(),
                epoch["epoch"].as_u64().unwrap(),
                epoch["train_loss"].as_f64().unwrap(),
                epoch["ran_in_job"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_job_at_its_limit_times_out_after_an_epoch_and_resuming_with_more_time_finishes_it_once() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 3, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    // How long this machine takes: a start, one epoch and the final evaluation, and one epoch.
    let probe = app.submit(&spec("probe", 1)).await;
    let (probe_job, log) = app.finished(&probe, Duration::from_secs(600)).await;
    assert_eq!(probe_job["state"], "succeeded", "{log}");
    let start_and_epoch = device_seconds(&probe_job);
    let (_, metrics) = app.get(&format!("/api/jobs/{probe}/metrics")).await;
    let epoch_seconds = metrics["epochs"][0]["seconds"].as_f64().unwrap().max(0.05);
    // A limit that leaves room for the start and an epoch twice over, on a job far too long for it.
    let limit = (2.0 * start_and_epoch + 3.0 * epoch_seconds).ceil() as u64;
    let epochs = ((3.0 * limit as f64 / epoch_seconds).ceil() as u64).clamp(6, 1000);
    let mut limited = spec("limited", epochs);
    limited["time_limit"] = json!(limit);
    let parent = app.submit(&limited).await;
    let (job, log) = app.finished(&parent, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "timeout", "{job:#}\n{log}");
    assert_eq!(job["time_limit"], json!(format!("{}", limit_text(limit))));
    let reason = job["error"].as_str().unwrap();
    assert!(reason.starts_with(&format!("time limit {} reached at phase 1, epoch ", limit_text(limit))), "{reason}");
    assert!(reason.ends_with(&format!(" of {epochs}")), "{reason}");
    let outcomes = app.run_outcomes(&parent).await;
    assert_eq!(outcomes, ["timeout"], "one run, stopped at the limit");
    assert!(device_seconds(&job) >= limit as f64, "stopped at, not before, the limit");
    let parents = curves(&app, &parent).await;
    let done = parents.len() as u64;
    assert!(done >= 1, "the limit fired after the first epoch ended: {reason}\n{log}");
    assert!(done < epochs, "{done} of {epochs} epochs");
    assert!(job["resume_point"]["epoch"].as_u64().unwrap() >= done, "{job:#}");

    // Resuming may change only the time limit, the name and the notifications.
    let resume = format!("/api/jobs/{parent}/resubmit?resume=true");
    let (status, body) = app.post(&resume, &json!({"optimizer": {"lr": 0.1}})).await;
    assert_eq!(
        (status, body["detail"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("optimizer")),
        "{body}"
    );
    let (status, body) = app.post(&format!("/api/jobs/{probe}/resubmit?resume=true"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a job that succeeded has nothing to resume: {body}");
    assert_eq!(app.all_jobs("").await.len(), 2, "nothing was stored by the refusals");

    // `trainq redo ID --resume --set time_limit=1h`, as a student types it.
    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainq"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("TRAINQ_URL")
            .env_remove("TRAINQ_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "trainq {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["login", &app.url(""), "--token-stdin"], &format!("{}\n", app.tokens["alice"]));
    let out = cli(&["redo", &parent[..8], "--resume", "--set", "time_limit=1h", "--json"], "");
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|err| panic!("{err}: {out}"));
    let child = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    let (child_job, log) = app.finished(&child, Duration::from_secs(900)).await;
    assert_eq!(child_job["state"], "succeeded", "{child_job:#}\n{log}");
    assert_eq!(child_job["parent_id"], json!(parent));
    assert_eq!(child_job["time_limit"], "1h");

    // Every epoch exactly once across parent and child: the parent's first, marked as its own run's.
    let childs = curves(&app, &child).await;
    let numbered: Vec<(u64, u64)> = childs.iter().map(|(phase, epoch, _, _)| (*phase, *epoch)).collect();
    assert_eq!(numbered, (1..=epochs).map(|epoch| (1, epoch)).collect::<Vec<_>>());
    for (index, (phase, epoch, loss, ran_in)) in childs.iter().enumerate() {
        if (index as u64) < done {
            assert_eq!(ran_in.as_deref(), Some(parent.as_str()), "epoch {phase}.{epoch} is the parent's");
            assert_eq!(*loss, parents[index].2, "the parent's curve, continued unchanged");
        } else {
            assert_eq!(ran_in, &None, "epoch {phase}.{epoch} is the child's own");
        }
    }
    // The child did not train the parent's epochs again: its worker started after them.
    assert!(log.contains(&format!("phase 1 after epoch {done},")), "{log}");
}

/// What the API writes for `seconds` (the largest unit that divides it).
fn limit_text(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[tokio::test]
async fn bad_time_limits_are_refused_naming_the_field_and_the_default_and_cap_apply() {
    let (_scripts, app) = {
        let dir = tempfile::tempdir().unwrap();
        let worker = crate::helpers::fake_worker(dir.path(), "worker.sh", FAKE_WORKER);
        let options = Options {
            worker: Some(worker),
            args: ["--default-time-limit", "6h", "--max-time-limit", "12h"].map(String::from).to_vec(),
            ..Options::default()
        };
        (dir, TestApp::spawn(options))
    };
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    for (value, says) in [
        (json!(0), "zero"),
        (json!("0s"), "zero"),
        (json!(-60), "negative"),
        (json!("-3h"), "negative"),
        (json!("soon"), "not a duration"),
        (json!(1.5), "whole number"),
        (json!("9999d"), "absurdly long"),
        (json!("13h"), "12h"),
        (json!("2d"), "--max-time-limit"),
    ] {
        let mut spec = small_spec("bad");
        spec["time_limit"] = value.clone();
        let (status, body) = app.post("/api/jobs", &spec).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{value}: {body}");
        assert_eq!(body["detail"]["field"], "time_limit", "{value}: {body}");
        assert!(body["detail"]["message"].as_str().unwrap().contains(says), "{value}: {body}");
    }
    assert!(app.all_jobs("").await.is_empty(), "nothing was stored");
    let own = {
        let mut spec = small_spec("own");
        spec["time_limit"] = json!("90m");
        app.submit(&spec).await
    };
    let default = app.submit(&small_spec("default")).await;
    let (_, own) = app.get(&format!("/api/jobs/{own}")).await;
    let (_, default) = app.get(&format!("/api/jobs/{default}")).await;
    assert_eq!((own["time_limit"].as_str(), own["spec"]["time_limit"].as_str()), (Some("90m"), Some("90m")));
    assert_eq!(
        (default["time_limit"].as_str(), default["spec"].get("time_limit")),
        (Some("6h"), None),
        "the server's default is the job's limit, its spec untouched"
    );
    // A job that ends before its limit simply succeeds.
    let (job, log) = app.finished(own["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{log}");
    // Filters know the new state.
    let (status, body) = app.get("/api/jobs?state=timeout").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_default_over_the_cap_stops_the_server_at_start_naming_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["serve", "--no-gpu", "--listen", "127.0.0.1:0", "--default-time-limit", "1d", "--max-time-limit", "12h"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--datasets")
        .arg(dir.path().join("datasets"))
        .arg("--weights")
        .arg(dir.path().join("weights"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--default-time-limit") && stderr.contains("--max-time-limit"), "{stderr}");
}
