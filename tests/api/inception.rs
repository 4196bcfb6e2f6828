//! InceptionV3 end to end: torchvision-named weights load strictly, and batch norm in frozen
//! blocks runs in inference mode (running statistics untouched), as Keras TF2 does.

use crate::helpers::{read_safetensors, write_dataset, write_inception_weights, Options, TestApp};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn inception_v3_fine_tunes_one_block_and_leaves_frozen_batch_norm_alone() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 4, 1, 2);
    let initial = write_inception_weights(&app.root.join("weights/inception_v3.safetensors"));
    let spec = json!({
        "name": "qe3-tiny", "dataset": "demo", "backbone": "inception_v3", "weights": "imagenet",
        "image_size": 75, "batch_size": 4, "head": ["gap", {"dense": 8}, "relu", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["Mixed_7c", "head"]}],
        "optimizer": {"name": "rmsprop", "lr": 1e-3}, "seed": 2
    });
    let id = app.submit(&spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");

    let phase1 = read_safetensors(&app.download(&id, "phase1.safetensors").await);
    let last = read_safetensors(&app.download(&id, "final.safetensors").await);
    // Phase 1 trained the head only: every backbone tensor, running statistics included, is as loaded.
    for (name, shape, values) in &initial {
        assert_eq!(&phase1[name].0, shape, "{name}");
        assert!(&phase1[name].1 == values, "{name} changed in a frozen phase");
    }
    // Phase 2 trained Mixed_7c: its weights and batch-norm statistics moved, nothing else did.
    for (name, _, values) in &initial {
        let changed = &last[name].1 != values;
        let trained = name.starts_with("Mixed_7c.");
        if trained && (name.ends_with("conv.weight") || name.ends_with("running_mean")) {
            assert!(changed, "{name} should have been trained");
        }
        if !trained {
            assert!(!changed, "{name} changed although frozen");
        }
    }
    // 8 training images in batches of 4, one epoch: Mixed_7c counted 2 batches, Mixed_7b none.
    assert_eq!(last["Mixed_7c.branch1x1.bn.num_batches_tracked"].1, [2.0]);
    assert_eq!(last["Mixed_7b.branch1x1.bn.num_batches_tracked"].1, [0.0]);
    assert!(!last.keys().any(|k| k.starts_with("AuxLogits")), "no auxiliary head is trained");
}
