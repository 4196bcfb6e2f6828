//! Writing a job's artifacts — checkpoints, JSON, `predictions.csv` — atomically, each announced
//! to the server with an `artifact` event once it is complete.

use crate::data::Split;
use crate::emit::emit;
use crate::evaluate::Evaluation;
use crate::model::Network;
use crate::resume;
use anyhow::Context;
use std::path::Path;
use trainq::domain::ProgressEvent;
use trainq::files;

/// `predictions.csv`: one row per test image with its path (relative to the dataset), true label
/// and probability (of the positive class, or of each class for a softmax model).
pub fn write_predictions(
    dir: &Path,
    dataset_dir: &Path,
    test: &Split,
    evaluation: &Evaluation,
    classes: &[String],
) -> anyhow::Result<()> {
    let labels = Vec::<i64>::try_from(&test.labels)?;
    let binary = evaluation.probabilities.first().is_some_and(|row| row.len() == 1);
    let mut csv = if binary {
        String::from("path,label,probability\n")
    } else {
        let columns: Vec<String> = classes.iter().map(|class| csv_field(&format!("p_{class}"))).collect();
        format!("path,label,{}\n", columns.join(","))
    };
    for ((path, label), row) in test.paths.iter().zip(labels).zip(&evaluation.probabilities) {
        let relative = path.strip_prefix(dataset_dir).unwrap_or(path).to_string_lossy();
        let values: Vec<String> = row.iter().map(|p| format!("{p:.6}")).collect();
        csv.push_str(&format!(
            "{},{},{}\n",
            csv_field(&relative),
            csv_field(&classes[label as usize]),
            values.join(",")
        ));
    }
    write_artifact(dir, "predictions.csv", csv.as_bytes())
}

/// Quotes a CSV field when it holds a comma, quote or newline.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Writes the VarStore's tensors as safetensors (`files::write_atomic`, through the resumable
/// checkpoint's writer) and announces the artifact.
pub fn save_checkpoint(network: &Network, dir: &Path, name: &str) -> anyhow::Result<()> {
    resume::write_safetensors(&dir.join(name), network.vs.variables(), None)?;
    emit(&ProgressEvent::Artifact { name: name.to_string() });
    Ok(())
}

/// Writes an artifact (`files::write_atomic`) and announces it. `name` is relative to `dir` and
/// may name a sub-folder (`cam/index.json`).
pub fn write_artifact(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    files::write_atomic_bytes(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    emit(&ProgressEvent::Artifact { name: name.to_string() });
    Ok(())
}

/// [`write_artifact`] of a value as pretty JSON.
pub fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> anyhow::Result<()> {
    write_artifact(dir, name, &serde_json::to_vec_pretty(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Tensor};

    /// A GPU job lays its convolution weights out channels-last; its checkpoints must still be
    /// written, in the standard layout, with the same values (the GPU run of the whole matrix
    /// failed here once: "Cannot save non contiguous tensors").
    #[test]
    fn a_channels_last_network_saves_the_same_checkpoint_as_a_plain_one() {
        let spec = trainq::domain::JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "weights": "random", "image_size": 32, "batch_size": 2,
                "head": ["gap", {"dense": 4}, "batchnorm", {"dense": 1}], "phases": [{"epochs": 1, "train": "head"}],
                "optimizer": {"name": "sgd", "lr": 0.1}}"#,
        )
        .unwrap();
        tch::manual_seed(5);
        let network = Network::new(&spec, Device::Cpu);
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(&network, dir.path(), "plain.safetensors").unwrap();
        let mut variables: Vec<Tensor> = network.vs.variables().into_values().collect();
        crate::precision::set_channels_last(&mut variables);
        let weight = &network.vs.variables()["features.0.weight"];
        assert!(
            crate::precision::is_channels_last(weight) && !weight.is_contiguous(),
            "the test needs a channels-last weight"
        );
        save_checkpoint(&network, dir.path(), "channels-last.safetensors").unwrap();
        let plain = Tensor::read_safetensors(dir.path().join("plain.safetensors")).unwrap();
        let other: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.path().join("channels-last.safetensors")).unwrap().into_iter().collect();
        assert_eq!(plain.len(), other.len());
        for (name, tensor) in &plain {
            assert!(tensor.equal(&other[name]), "{name} differs");
        }
    }
}
