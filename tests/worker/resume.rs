//! SIGTERM mid-epoch, then a restart: the worker saves where it stopped, continues from there,
//! and ends with exactly the weights and curves of a run that was never stopped.

use crate::{follow, log, of_kind, run, worker, Workspace};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Two phases, dropout and batch norm in the head (randomness and running statistics must both
/// resume exactly), an optimizer with state in each phase, and a second phase that trains the
/// whole network, so its epochs last long enough to be stopped in the middle.
fn spec() -> Value {
    json!({
        "name": "resume", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 2,
        "head": ["gap", {"dropout": 0.3}, {"dense": 8}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 2}],
        "phases": [
            {"epochs": 1, "train": "head", "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}},
            {"epochs": 2, "train": "all"}
        ],
        "optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 1e-4}, "seed": 9
    })
}

/// Every tensor of a safetensors file as f64 values.
fn tensors(path: &Path) -> HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                safetensors::Dtype::F32 => {
                    view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::I64 => {
                    view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                other => panic!("{name}: unexpected {other:?}"),
            };
            (name, values)
        })
        .collect()
}

/// An epoch event without its wall time, which differs from run to run.
fn curve_point(event: &Value) -> Value {
    let mut point = event.clone();
    point.as_object_mut().unwrap().remove("seconds");
    point
}

fn assert_close(what: &str, ours: &Value, theirs: &Value) {
    for key in ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"] {
        if let (Some(a), Some(b)) = (ours[key].as_f64(), theirs[key].as_f64()) {
            assert!((a - b).abs() <= 1e-5, "{what}: {key} {a} after the resume, {b} straight");
        }
    }
}

#[test]
fn a_job_stopped_by_sigterm_resumes_where_it_stopped_and_ends_as_if_never_stopped() {
    let workspace = Workspace::new(8);

    let straight = workspace.job("straight", "straight-state", &spec());
    let (status, straight_events) = run(&straight);
    assert!(status.success(), "{}", log(&straight));

    // Stop in the middle of an epoch of the second phase: step events come at most twice a
    // second, so one before the epoch's last step means the epoch is under way.
    let job = workspace.job("stopped", "stopped-state", &spec());
    let mut sent = false;
    let (status, first_events) = follow(worker(&job).spawn().unwrap(), |event, child| {
        let mid_epoch =
            event["event"] == "step" && event["phase"] == 2 && event["step"].as_u64() < event["steps"].as_u64();
        if mid_epoch && !sent {
            sent = true;
            // SAFETY: a plain kill(2) of our own child.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        }
    });
    assert!(
        sent,
        "the job ended before a mid-epoch step event; its epochs are too short for this test:\n{}",
        log(&job)
    );
    assert_eq!(status.code(), Some(75), "{}", log(&job));
    assert!(of_kind(&first_events, "final").is_empty());
    let stop = *of_kind(&first_events, "checkpoint").last().expect("a checkpoint when stopped");
    assert_eq!(stop["phase"], 2, "{stop}");
    assert!(stop["step"].as_u64().unwrap() > 0, "stopped mid-epoch: {stop}");
    assert!(log(&job).contains("SIGTERM: stopped after step"), "{}", log(&job));
    // Every epoch reported before the stop is covered by a checkpoint (the checkpoint comes first).
    let first_epochs = of_kind(&first_events, "epoch");
    assert!(
        first_events.iter().position(|e| e["event"] == "checkpoint").unwrap()
            < first_events.iter().position(|e| e["event"] == "epoch").unwrap()
    );

    let (status, second_events) = run(&job);
    assert!(status.success(), "{}", log(&job));
    let resumed = of_kind(&second_events, "resumed");
    assert_eq!(resumed.len(), 1, "{second_events:?}");
    for key in ["phase", "epoch", "step"] {
        assert_eq!(resumed[0][key], stop[key], "resumed at the stop: {} vs {stop}", resumed[0]);
    }
    // Right after `resumed`, the curves so far are sent again, exactly as first reported.
    let at = second_events.iter().position(|event| event["event"] == "resumed").unwrap();
    let resent: Vec<&Value> = second_events[at + 1..].iter().take(first_epochs.len()).collect();
    assert_eq!(resent, first_epochs, "re-sent curves");
    let new_epochs: Vec<&Value> = of_kind(&second_events[at + 1 + first_epochs.len()..], "epoch");
    let mut covered: Vec<(u64, u64)> = first_epochs
        .iter()
        .chain(&new_epochs)
        .map(|e| (e["phase"].as_u64().unwrap(), e["epoch"].as_u64().unwrap()))
        .collect();
    covered.sort();
    assert_eq!(covered, [(1, 1), (2, 1), (2, 2)], "each epoch once");

    // The same computation as the straight run: curves, final metrics and every weight.
    let straight_epochs = of_kind(&straight_events, "epoch");
    for (ours, theirs) in first_epochs.iter().chain(&new_epochs).zip(&straight_epochs) {
        assert_eq!(ours["phase"], theirs["phase"]);
        assert_eq!(ours["epoch"], theirs["epoch"]);
        assert_close(&format!("epoch {}", curve_point(ours)), ours, theirs);
    }
    assert_close("final", of_kind(&second_events, "final")[0], of_kind(&straight_events, "final")[0]);
    let ours = tensors(&workspace.root.join("stopped/artifacts/final.safetensors"));
    let theirs = tensors(&workspace.root.join("straight/artifacts/final.safetensors"));
    assert_eq!(ours.len(), theirs.len());
    for (name, values) in &theirs {
        let difference = ours[name].iter().zip(values).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(difference <= 1e-5, "{name} differs by {difference}");
    }
    assert!(workspace.root.join("stopped/artifacts/phase1.safetensors").exists());
    assert!(workspace.root.join("stopped-state/resume.safetensors").exists());
}

#[test]
fn a_checkpoint_of_another_spec_is_ignored() {
    let workspace = Workspace::new(2);
    let quick = |epochs: u32| {
        json!({
            "dataset": "demo", "backbone": "vgg16", "weights": "random", "image_size": 32, "batch_size": 2,
            "head": ["gap", {"dense": 1}], "phases": [{"epochs": epochs, "train": "head"}],
            "optimizer": {"name": "rmsprop", "lr": 1e-3, "momentum": 0.5}
        })
    };
    let job = workspace.job("first", "state", &quick(1));
    let (status, events) = run(&job);
    assert!(status.success(), "{}", log(&job));
    assert_eq!(of_kind(&events, "checkpoint").len(), 1);
    // A finished job's checkpoint resumes straight into the final evaluation.
    let (status, events) = run(&job);
    assert!(status.success(), "{}", log(&job));
    assert_eq!(of_kind(&events, "resumed")[0]["epoch"], 1);
    assert!(of_kind(&events, "phase").is_empty() && of_kind(&events, "step").is_empty(), "{events:?}");
    assert_eq!(of_kind(&events, "final").len(), 1);
    // Another spec over the same state folder starts from scratch, and says why.
    let other = workspace.job("second", "state", &quick(2));
    let (status, events) = run(&other);
    assert!(status.success(), "{}", log(&other));
    assert!(of_kind(&events, "resumed").is_empty());
    assert!(log(&other).contains("belongs to another spec"), "{}", log(&other));
    assert_eq!(of_kind(&events, "epoch").len(), 2);
    // So does a damaged checkpoint.
    std::fs::write(workspace.root.join("state/resume.safetensors"), b"not a checkpoint").unwrap();
    let (status, events) = run(&other);
    assert!(status.success(), "{}", log(&other));
    assert!(of_kind(&events, "resumed").is_empty());
    assert!(log(&other).contains("unusable"), "{}", log(&other));
}
