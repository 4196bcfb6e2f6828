//! The inputs a spec names, checked on disk at submission: the dataset (from the catalog's index)
//! has training images and the spec's classes, and the ImageNet weights it starts from are
//! installed and readable.
//!
//! What was found is remembered for [`TRUSTED_FOR`]: a burst of a class's submissions (a sweep,
//! a hundred students before a deadline) reads the dataset's folders and the weights file's
//! header once a second, not once a submission, and needs no blocking thread in between. Only
//! what was found is remembered, never a refusal: an input the admin has just fixed is seen by the
//! very next submission. An input removed or broken meanwhile is seen within a second; a job
//! accepted in that second fails in its worker, naming the input.

use super::{Folders, Submissions, SubmitError};
use crate::catalog::{self, datasets::DatasetInfo};
use crate::domain::backbone::Backbone;
use crate::domain::spec::Weights;
use crate::domain::{JobSpec, SpecError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long inputs found on disk are trusted without looking again.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// Most inputs remembered at once; past it the memory starts over. Only inputs that exist are
/// remembered, so a box has a handful (datasets × backbones × weights kinds).
const MOST_REMEMBERED: usize = 1_000;

/// What a spec's disk check reads: the dataset, and the weights file when ImageNet's.
type Inputs = (String, Backbone, Weights);

/// Inputs recently found on disk: the dataset as the catalog described it, and when it was found.
/// One per server, shared by every request.
#[derive(Debug)]
pub struct RecentInputs {
    found: Mutex<HashMap<Inputs, (Instant, Arc<DatasetInfo>)>>,
    trusted_for: Duration,
}

impl Default for RecentInputs {
    fn default() -> RecentInputs {
        RecentInputs::trusting_for(TRUSTED_FOR)
    }
}

impl RecentInputs {
    /// Remembers what it finds for `trusted_for` (zero: looks every time).
    fn trusting_for(trusted_for: Duration) -> RecentInputs {
        RecentInputs { found: Mutex::default(), trusted_for }
    }

    /// The dataset of `inputs`, if they were found on disk less than `trusted_for` ago.
    fn recent(&self, inputs: &Inputs) -> Option<Arc<DatasetInfo>> {
        let found = self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, dataset) = found.get(inputs)?;
        (at.elapsed() < self.trusted_for).then(|| Arc::clone(dataset))
    }

    /// Notes that `inputs` were found on disk just now, with their dataset.
    fn found(&self, inputs: Inputs, dataset: Arc<DatasetInfo>) {
        let mut found = self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if found.len() >= MOST_REMEMBERED {
            found.clear();
        }
        found.insert(inputs, (Instant::now(), dataset));
    }

    /// The dataset of `spec`'s inputs: from memory if they were found on disk less than
    /// `trusted_for` ago, else looked for on disk (filesystem work, so off the async runtime).
    async fn dataset_for(&self, folders: &Folders<'_>, spec: &JobSpec) -> Result<Arc<DatasetInfo>, SubmitError> {
        let inputs = (spec.dataset.clone(), spec.backbone, spec.weights);
        if let Some(dataset) = self.recent(&inputs) {
            return Ok(dataset);
        }
        let (datasets, weights, spec) = (folders.datasets.to_path_buf(), folders.weights.to_path_buf(), spec.clone());
        let dataset = tokio::task::spawn_blocking(move || find_inputs_on_disk(&datasets, &weights, &spec))
            .await
            .map_err(|err| SubmitError::Internal(err.into()))??;
        let dataset = Arc::new(dataset);
        self.found(inputs, Arc::clone(&dataset));
        Ok(dataset)
    }
}

impl Submissions<'_> {
    /// Checks a parsed spec against its inputs: the dataset and weights (remembered for a
    /// second once found), then the spec's classes against the dataset's.
    pub(super) async fn check_inputs(&self, spec: &JobSpec) -> Result<(), SubmitError> {
        let dataset = self.recent_inputs.dataset_for(&self.folders, spec).await?;
        Ok(check_against(spec, &dataset)?)
    }
}

/// The dataset named by `spec` has training images, and the ImageNet weights it starts from are
/// installed and readable: what does not depend on the rest of the spec.
fn find_inputs_on_disk(datasets: &Path, weights: &Path, spec: &JobSpec) -> Result<DatasetInfo, SpecError> {
    let dataset = catalog::datasets::open(datasets, &spec.dataset)
        .map_err(|err| SpecError::new("dataset", format!("{err}; GET /api/datasets lists the datasets")))?;
    if dataset.split("train").is_none_or(|split| split.images == 0) {
        return Err(SpecError::new("dataset", format!("dataset `{}` has no training images", dataset.name)));
    }
    if spec.weights != Weights::Imagenet {
        return Ok(dataset);
    }
    if let Some(file) = catalog::weights::find(weights, spec.backbone) {
        // The header alone (kilobytes) tells a wrong file now, not hours later in the worker.
        return crate::domain::weights_layout::check_file(spec.backbone, &file).map(|_| dataset).map_err(|err| {
            SpecError::new(
                "weights",
                format!("the installed weights file is unusable ({err}); the admin can replace it with `trainq weights fetch {}`", spec.backbone.name()),
            )
        });
    }
    Err(SpecError::new(
        "weights",
        format!(
            "no ImageNet weights installed for {backbone}: the admin can run `trainq weights fetch {backbone} --weights {dir}`, or place a safetensors file with torchvision names at {path}; or submit with \"weights\": \"random\"",
            backbone = spec.backbone.name(),
            dir = weights.display(),
            path = weights.join(spec.backbone.weights_file_name()).display(),
        ),
    ))
}

/// The spec's classes (its output units, its class weights) against the dataset's.
fn check_against(spec: &JobSpec, dataset: &DatasetInfo) -> Result<(), SpecError> {
    spec.check_classes(dataset.classes.len())?;
    if let Some(class_weight) = &spec.class_weight {
        class_weight.check_classes(&dataset.name, &dataset.classes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset `name` of two classes under `root`, with `train_per_class` training films.
    fn dataset(root: &Path, name: &str, train_per_class: usize) {
        let options =
            crate::demo_data::DemoOptions { train_per_class, val_per_class: 0, test_per_class: 1, size: 16, seed: 1 };
        crate::demo_data::write(&root.join(name), &options).unwrap();
    }

    fn spec(dataset: &str, weights: &str, units: u32) -> JobSpec {
        let json = serde_json::json!({"dataset": dataset, "backbone": "vgg16", "weights": weights, "image_size": 32,
            "batch_size": 4, "head": ["gap", {"dense": units}], "phases": [{"epochs": 1, "train": "head"}],
            "optimizer": {"name": "sgd", "lr": 0.1}});
        JobSpec::parse(json.to_string().as_bytes()).unwrap()
    }

    fn field(err: SubmitError) -> String {
        match err {
            SubmitError::InvalidSpec(err) => err.field.clone(),
            other => panic!("not a spec error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn found_inputs_are_trusted_for_a_while_and_refusals_never() {
        let root = tempfile::tempdir().unwrap();
        let (datasets, weights) = (root.path().join("datasets"), root.path().join("weights"));
        std::fs::create_dir_all(&weights).unwrap();
        let folders = Folders { data_dir: root.path(), datasets: &datasets, weights: &weights };
        let (trusting, looking) =
            (RecentInputs::trusting_for(Duration::from_secs(3600)), RecentInputs::trusting_for(Duration::ZERO));

        // Not there yet: refused, and the refusal is not remembered.
        for recent in [&trusting, &looking] {
            assert_eq!(field(recent.dataset_for(&folders, &spec("course", "random", 1)).await.unwrap_err()), "dataset");
        }
        dataset(&datasets, "course", 2);
        for recent in [&trusting, &looking] {
            let found = recent.dataset_for(&folders, &spec("course", "random", 1)).await.unwrap();
            assert_eq!(found.classes, ["NORMAL", "PNEUMONIA"]);
        }

        // Gone from disk: the memory still has it within its time, looking again does not.
        std::fs::remove_dir_all(datasets.join("course")).unwrap();
        assert!(trusting.dataset_for(&folders, &spec("course", "random", 1)).await.is_ok());
        assert_eq!(field(looking.dataset_for(&folders, &spec("course", "random", 1)).await.unwrap_err()), "dataset");
        // Other inputs (ImageNet weights, which are not installed) are looked for on their own.
        assert_eq!(field(trusting.dataset_for(&folders, &spec("course", "imagenet", 1)).await.unwrap_err()), "dataset");
    }

    #[tokio::test]
    async fn the_spec_is_checked_against_a_remembered_dataset_each_time() {
        let root = tempfile::tempdir().unwrap();
        let (datasets, weights) = (root.path().join("datasets"), root.path().join("weights"));
        dataset(&datasets, "course", 1);
        let folders = Folders { data_dir: root.path(), datasets: &datasets, weights: &weights };
        let recent = RecentInputs::trusting_for(Duration::from_secs(3600));
        let found = recent.dataset_for(&folders, &spec("course", "random", 1)).await.unwrap();
        check_against(&spec("course", "random", 1), &found).unwrap();
        // Three output units for two classes: refused from memory as on disk.
        let found = recent.dataset_for(&folders, &spec("course", "random", 3)).await.unwrap();
        let err = check_against(&spec("course", "random", 3), &found).unwrap_err();
        assert!(err.field.starts_with("head"), "{err:?}");
    }
}
