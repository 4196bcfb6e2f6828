//! The worker protocol: what the supervisor hands a worker (`job.json` in the job's folder) and the
//! progress events the worker prints back, one per stdout line behind [`EVENT_PREFIX`].

use super::{JobId, JobSpec};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Marks a stdout line as a progress event; every other line is plain log output.
pub const EVENT_PREFIX: &str = "@trainq ";

/// Exit code of a worker that stopped on SIGTERM after saving a resumable checkpoint
/// (`EX_TEMPFAIL`): the job is not finished, the next start resumes it.
pub const EXIT_INTERRUPTED: i32 = 75;

/// Exit code of a worker that ran out of memory; it printed a `failed` event with kind
/// `out_of_memory` first.
pub const EXIT_OUT_OF_MEMORY: i32 = 3;

/// Exit code of a worker whose write failed for the storage's sake (`EX_IOERR`): no space left, a
/// quota, an I/O error or a read-only filesystem. It printed a `failed` event with kind `storage`
/// first; its last resumable checkpoint is intact, so the job can resume once the disk is fixed.
pub const EXIT_STORAGE: i32 = 74;

/// Everything a worker needs to run one job, written by the supervisor before the spawn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    /// The job being run.
    pub job_id: JobId,
    /// The validated spec.
    pub spec: JobSpec,
    /// The dataset's root folder (holding `train/`, `val/`, `test/`).
    pub dataset_dir: PathBuf,
    /// The pretrained backbone file, when `weights` is `imagenet`.
    pub weights_file: Option<PathBuf>,
    /// Where checkpoints and other artifacts go.
    pub output_dir: PathBuf,
    /// `cuda` when the supervisor gave the worker a GPU (via CUDA_VISIBLE_DEVICES), else `cpu`.
    pub device: WorkerDevice,
    /// Intra-op threads for libtorch on CPU; the box's cores are split between CPU slots.
    pub threads: usize,
    /// The shared preprocessing cache (`<data dir>/cache`): decoded, resized splits that every
    /// later job of every user reuses. Absent (older job files) means decode without caching.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the shared cache folder may hold; the least recently used entries go first.
    /// `None`: never evict.
    #[serde(default)]
    pub cache_budget_bytes: Option<u64>,
    /// The job's private state folder (`<job dir>/state`): the resumable checkpoint
    /// (`resume.safetensors`) lives there, outside the downloadable artifacts. A worker that finds
    /// a checkpoint of the same spec there resumes from it. `None`: no resumable checkpoints.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Most bytes of dataset pixels and cached activations the job keeps on its GPU (together);
    /// set when the GPU may be shared, so what the memory estimate allows for is what is used.
    /// `None`: the worker's own limits (the GPU is the job's alone).
    #[serde(default)]
    pub gpu_data_budget_bytes: Option<u64>,
    /// The weights file of the job the spec's `init_from` names (`<its job dir>/artifacts/
    /// final.safetensors` or `phaseN.safetensors`), loaded into the whole network (backbone and
    /// head, strict names and shapes) before training. `None`: start from `weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_checkpoint: Option<PathBuf>,
}

/// The kind of device a worker trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerDevice {
    /// Train on CPU threads.
    Cpu,
    /// Train on the single GPU the worker can see.
    Cuda,
}

/// One epoch's curves, as the assignment's accuracy and loss graphs need them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EpochMetrics {
    /// 1-based phase number.
    pub phase: u32,
    /// 1-based epoch within the phase.
    pub epoch: u32,
    /// Mean training loss over the epoch's batches (training mode, as Keras reports it).
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_acc: f64,
    /// Validation loss in inference mode; absent when the dataset has no `val` split.
    pub val_loss: Option<f64>,
    /// Validation accuracy in inference mode.
    pub val_acc: Option<f64>,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

/// The end-of-job evaluation, in inference mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FinalMetrics {
    /// Loss over the whole train split.
    pub train_loss: f64,
    /// Accuracy over the whole train split.
    pub train_acc: f64,
    /// Loss over the test split.
    pub test_loss: f64,
    /// Accuracy over the test split.
    pub test_acc: f64,
    /// Test-set metrics of a binary (sigmoid) model at threshold 0.5, positive class = the second
    /// class: confusion matrix, precision, recall, specificity, F1, ROC curve and AUC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub binary: Option<crate::domain::scores::BinaryMetrics>,
    /// Test-set metrics of a softmax model: confusion matrix and per-class metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub multiclass: Option<crate::domain::scores::MulticlassMetrics>,
}

/// A worker's report, one per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
// One event per printed line: their size never matters, and a boxed variant would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum ProgressEvent {
    /// The worker is up and knows its device.
    Started {
        /// `cpu` or the CUDA device's name.
        device: String,
        /// What the job computes in and why, e.g. `bf16 autocast (auto: the CPU has AMX-BF16)`;
        /// absent from older workers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        precision: Option<String>,
    },
    /// A split was loaded.
    Data {
        /// `train`, `val` or `test`.
        split: String,
        /// Images decoded.
        images: usize,
        /// Corrupt or unreadable files that were skipped.
        skipped: usize,
        /// The first skipped files by name, with why each was refused; absent from older workers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped_files: Vec<crate::domain::job::SkippedFile>,
        /// Time spent loading.
        seconds: f64,
        /// The preprocessing cache: `hit` (read back, nothing decoded), `built` (decoded and
        /// stored) or `off` (decoded, not stored); absent from older workers.
        #[serde(default)]
        cache: Option<String>,
        /// Images this job decoded for the split: 0 on a cache hit.
        #[serde(default)]
        decoded: usize,
    },
    /// A phase's frozen prefix: computed once and fed from activations instead of pixels.
    Features {
        /// 1-based phase.
        phase: u32,
        /// Where the activations were taken: the last frozen block's name, or `backbone` + `gap`.
        cut: String,
        /// `hit` (read from the shared cache), `built` (computed and stored), `memory` (computed,
        /// not stored: no cache folder), or `off` (the phase runs the whole network; `reason` says why).
        state: String,
        /// Why caching is off, for `off`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Wall time to read or compute the activations of every split.
        seconds: f64,
        /// Bytes of activations (all splits).
        bytes: u64,
    },
    /// A training phase began.
    Phase {
        /// 1-based phase number.
        phase: u32,
        /// Epochs in this phase.
        epochs: u32,
        /// Number of scalar parameters the optimizer updates in this phase.
        trainable_params: i64,
    },
    /// A training step finished (sent at most a few times a second).
    Step {
        /// 1-based phase number.
        phase: u32,
        /// 1-based epoch within the phase.
        epoch: u32,
        /// Steps done in this epoch.
        step: u32,
        /// Steps in this epoch.
        steps: u32,
        /// Training throughput over the epoch so far.
        images_per_sec: f64,
    },
    /// An epoch finished.
    Epoch(EpochMetrics),
    /// An artifact was written to the output folder.
    Artifact {
        /// File name inside the job's folder.
        name: String,
    },
    /// The final evaluation.
    Final(FinalMetrics),
    /// A resumable checkpoint now covers training up to here: `epoch` epochs of `phase` are done,
    /// and `step` batches of the next epoch (0 at an epoch's end; more when stopped mid-epoch).
    Checkpoint {
        /// 1-based phase.
        phase: u32,
        /// Completed epochs of that phase.
        epoch: u32,
        /// Completed batches of the epoch after it.
        step: u32,
    },
    /// The worker found a resumable checkpoint and continues from it (same meaning as
    /// `checkpoint`). Every `epoch` event of the curves so far is sent again right after it.
    Resumed {
        /// 1-based phase.
        phase: u32,
        /// Completed epochs of that phase.
        epoch: u32,
        /// Completed batches of the epoch after it.
        step: u32,
    },
    /// The worker is about to exit unsuccessfully and knows why.
    Failed {
        /// What went wrong.
        kind: FailureKind,
        /// libtorch's or the allocator's own words, with its numbers (requested, free, total); for
        /// `storage`, the path written and the operating system's error.
        message: String,
    },
}

/// Why a worker failed, when it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// An allocation failed: CUDA out of memory on a GPU, the memory limit on the CPU.
    OutOfMemory,
    /// A write failed: no space left, a quota, an I/O error or a read-only filesystem; the job can
    /// resume from its last checkpoint once the disk is fixed.
    Storage,
    /// Any other error.
    Error,
}

impl ProgressEvent {
    /// The line a worker prints for this event.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).expect("progress events always serialize");
        format!("{EVENT_PREFIX}{json}")
    }

    /// Reads a stdout line: `Some` for a progress event, `None` for plain log output.
    pub fn from_line(line: &str) -> Option<Result<ProgressEvent, serde_json::Error>> {
        line.strip_prefix(EVENT_PREFIX).map(serde_json::from_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_line() {
        let event = ProgressEvent::Epoch(EpochMetrics {
            phase: 2,
            epoch: 7,
            train_loss: 0.25,
            train_acc: 0.9,
            val_loss: None,
            val_acc: Some(0.75),
            seconds: 1.5,
        });
        let line = event.to_line();
        assert!(line.starts_with(EVENT_PREFIX));
        assert_eq!(ProgressEvent::from_line(&line).unwrap().unwrap(), event);
    }

    #[test]
    fn a_storage_failure_is_named_storage_on_the_wire() {
        let event = ProgressEvent::Failed {
            kind: FailureKind::Storage,
            message: String::from("writing /x: No space left on device"),
        };
        assert_eq!(
            event.to_line(),
            r#"@trainq {"event":"failed","kind":"storage","message":"writing /x: No space left on device"}"#
        );
        assert_eq!(ProgressEvent::from_line(&event.to_line()).unwrap().unwrap(), event);
    }

    #[test]
    fn plain_output_is_not_an_event() {
        assert!(ProgressEvent::from_line("Epoch 1/100").is_none());
        assert!(ProgressEvent::from_line("@trainq {broken").unwrap().is_err());
    }
}

/// What `trainq-worker verify DIR` prints (one JSON object on stdout): every file of the
/// ImageFolder's class folders under `DIR` decoded in full, and those that did not decode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Files decoded (good and bad).
    pub checked: usize,
    /// The files that did not fully decode, relative to `DIR`, with why.
    pub bad: Vec<crate::domain::job::SkippedFile>,
}
