//! The job spec a student POSTs, and its validation. Parse, don't validate: [`JobSpec::parse`] is
//! the only way to build one, so the rest of trainq never sees an invalid spec.

use super::backbone::Backbone;
use serde::{Deserialize, Serialize};

/// Upper bounds that keep one student from parking the box. Generous: the assignment needs 200
/// epochs and 512 px at most.
pub const MAX_EPOCHS: u32 = 10_000;
/// Largest accepted `image_size` and `max_image_side`.
pub const MAX_IMAGE_SIZE: u32 = 2048;
/// Sides of variable-size images are multiples of this, so images of similar shape share a batch
/// (and VGG's five 2× poolings divide them exactly).
pub const SHAPE_QUANTUM: u32 = 32;
/// `max_image_side` when a variable-size spec leaves it out: Keras' `flow_from_directory` without a
/// `target_size` resizes to 256×256, so 256 keeps the assignment's cost while keeping the aspect.
pub const DEFAULT_MAX_IMAGE_SIDE: u32 = 256;
/// Largest accepted `batch_size`.
pub const MAX_BATCH_SIZE: u32 = 4096;

/// Why a spec was refused: the field (as a JSON path) and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// JSON path of the offending field, e.g. `phases[1].train`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError { field: field.into(), message: message.into() }
    }
}

/// Where the backbone's initial weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// `<weights dir>/<backbone>.safetensors`, torchvision parameter names.
    Imagenet,
    /// Fresh random initialisation (seeded).
    Random,
}

/// How images are resized to `image_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Keras' `flow_from_directory` default.
    #[default]
    Nearest,
    /// Bilinear (triangle filter).
    Bilinear,
    /// Box filter averaging the covered source pixels.
    Area,
}

/// The arithmetic a job trains in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 autocast + channels-last + cuDNN autotuning on a GPU; bf16 autocast on a CPU with
    /// AMX-BF16 or AVX512-BF16 (1.8–3.3× float32 there); float32 on other CPUs (where bf16 is
    /// slower). The job's `progress.precision` says which and why.
    #[default]
    Auto,
    /// float32 everywhere.
    Fp32,
    /// bf16 autocast + channels-last on any device, as a GPU job runs (weights, optimizer state
    /// and the loss stay float32).
    Bf16,
}

/// How an image's pixels are sampled to its size: the interpolation, and whether a JPEG may be
/// decoded at a reduced scale first (`fast_decode`). Part of the pixel cache's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    /// The resize filter.
    pub interpolation: Interpolation,
    /// Whether large JPEGs may be decoded at 1/2, 1/4 or 1/8 scale before resizing.
    pub fast_decode: bool,
}

impl From<Interpolation> for Sampling {
    /// The interpolation on fully decoded images, as Keras would compute it.
    fn from(interpolation: Interpolation) -> Sampling {
        Sampling { interpolation, fast_decode: false }
    }
}

impl Sampling {
    /// A short name for cache keys and logs: `nearest`, or `nearest-fast` with `fast_decode`.
    pub fn label(self) -> &'static str {
        match (self.interpolation, self.fast_decode) {
            (Interpolation::Nearest, false) => "nearest",
            (Interpolation::Bilinear, false) => "bilinear",
            (Interpolation::Area, false) => "area",
            (Interpolation::Nearest, true) => "nearest-fast",
            (Interpolation::Bilinear, true) => "bilinear-fast",
            (Interpolation::Area, true) => "area-fast",
        }
    }
}

/// How images are sized for the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Every image becomes `size`×`size`, whatever its aspect (Keras' `target_size`).
    Square(u32),
    /// Variable size: each image keeps its aspect ratio, is shrunk (never enlarged) so that its
    /// longer side is at most `max_side`, and then has both sides rounded to the nearest multiple of
    /// [`SHAPE_QUANTUM`], at least `min_side` rounded up. The rounding distorts the aspect by at
    /// most half a quantum per side and leaves few distinct shapes, so a batch holds images of one
    /// shape and no padding changes what global pooling sees.
    Bounded {
        /// Bound on the longer side (a multiple of the quantum).
        max_side: u32,
        /// The backbone's minimum input side.
        min_side: u32,
    },
}

impl Resize {
    /// The `(width, height)` an image of `width`×`height` pixels is resized to.
    pub fn target(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Resize::Square(size) => (size, size),
            Resize::Bounded { max_side, min_side } => {
                let quantum = SHAPE_QUANTUM as f64;
                let scale = (max_side as f64 / width.max(height).max(1) as f64).min(1.0);
                let (lowest, highest) =
                    (min_side.next_multiple_of(SHAPE_QUANTUM), max_side.max(min_side.next_multiple_of(SHAPE_QUANTUM)));
                let side = |extent: u32| {
                    (((extent as f64 * scale) / quantum).round() as u32 * SHAPE_QUANTUM).clamp(lowest, highest)
                };
                (side(width), side(height))
            }
        }
    }

    /// A short name for cache keys and logs: `128`, or `max256-min32` for variable size (the
    /// minimum decides the shape of tiny images, so it is part of the name).
    pub fn label(self) -> String {
        match self {
            Resize::Square(size) => size.to_string(),
            Resize::Bounded { max_side, min_side } => format!("max{max_side}-min{min_side}"),
        }
    }
}

/// One layer of the classifier head, in the spec's spelling: `"gap"`, `{"dense": 512}`, or
/// `{"batchnorm": {"momentum": 0.9}}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "HeadLayerRepr", into = "HeadLayerRepr")]
pub enum HeadLayer {
    /// Global average pooling over the feature map.
    Gap,
    /// Flatten the feature map (its length depends on the input size).
    Flatten,
    /// Batch normalisation with Keras' conventions.
    Batchnorm(BatchnormOptions),
    /// ReLU activation.
    Relu,
    /// A fully connected layer with this many units (Glorot-uniform init, as in Keras).
    Dense(u32),
    /// Dropout with this drop probability, active only while training.
    Dropout(f64),
}

/// Batch normalisation settings, in Keras' convention.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchnormOptions {
    /// Fraction of the moving statistics kept at each step (Keras default 0.99; PyTorch's
    /// `momentum` is one minus this). Lower it for tiny datasets with few steps per epoch.
    #[serde(default = "default_bn_momentum")]
    pub momentum: f64,
    /// Added to the variance (Keras default 1e-3).
    #[serde(default = "default_bn_epsilon")]
    pub epsilon: f64,
}

impl Default for BatchnormOptions {
    fn default() -> Self {
        BatchnormOptions { momentum: default_bn_momentum(), epsilon: default_bn_epsilon() }
    }
}

fn default_bn_momentum() -> f64 {
    0.99
}

fn default_bn_epsilon() -> f64 {
    1e-3
}

/// The two spellings of a head layer: a bare name, or a one-key object with settings. Also the
/// layer's schema in the OpenAPI document, so the document says exactly what serde reads.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = HeadLayer)]
enum HeadLayerRepr {
    Named(NamedLayer),
    Configured(ConfiguredLayer),
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum NamedLayer {
    Gap,
    Flatten,
    Batchnorm,
    Relu,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum ConfiguredLayer {
    Dense(u32),
    Dropout(f64),
    Batchnorm(BatchnormOptions),
}

impl From<HeadLayerRepr> for HeadLayer {
    fn from(repr: HeadLayerRepr) -> HeadLayer {
        match repr {
            HeadLayerRepr::Named(NamedLayer::Gap) => HeadLayer::Gap,
            HeadLayerRepr::Named(NamedLayer::Flatten) => HeadLayer::Flatten,
            HeadLayerRepr::Named(NamedLayer::Batchnorm) => HeadLayer::Batchnorm(BatchnormOptions::default()),
            HeadLayerRepr::Named(NamedLayer::Relu) => HeadLayer::Relu,
            HeadLayerRepr::Configured(ConfiguredLayer::Dense(units)) => HeadLayer::Dense(units),
            HeadLayerRepr::Configured(ConfiguredLayer::Dropout(rate)) => HeadLayer::Dropout(rate),
            HeadLayerRepr::Configured(ConfiguredLayer::Batchnorm(options)) => HeadLayer::Batchnorm(options),
        }
    }
}

impl From<HeadLayer> for HeadLayerRepr {
    fn from(layer: HeadLayer) -> HeadLayerRepr {
        match layer {
            HeadLayer::Gap => HeadLayerRepr::Named(NamedLayer::Gap),
            HeadLayer::Flatten => HeadLayerRepr::Named(NamedLayer::Flatten),
            HeadLayer::Batchnorm(options) if options == BatchnormOptions::default() => {
                HeadLayerRepr::Named(NamedLayer::Batchnorm)
            }
            HeadLayer::Batchnorm(options) => HeadLayerRepr::Configured(ConfiguredLayer::Batchnorm(options)),
            HeadLayer::Relu => HeadLayerRepr::Named(NamedLayer::Relu),
            HeadLayer::Dense(units) => HeadLayerRepr::Configured(ConfiguredLayer::Dense(units)),
            HeadLayer::Dropout(rate) => HeadLayerRepr::Configured(ConfiguredLayer::Dropout(rate)),
        }
    }
}

/// What a phase trains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TrainSet {
    /// `"head"` or `"all"`.
    Named(String),
    /// Backbone block names and/or `"head"`.
    Blocks(Vec<String>),
}

impl TrainSet {
    /// Whether the head's parameters are trained.
    pub fn trains_head(&self) -> bool {
        match self {
            TrainSet::Named(name) => name == "head" || name == "all",
            TrainSet::Blocks(items) => items.iter().any(|item| item == "head"),
        }
    }

    /// Whether the named backbone block is trained.
    pub fn trains_block(&self, block: &str) -> bool {
        match self {
            TrainSet::Named(name) => name == "all",
            TrainSet::Blocks(items) => items.iter().any(|item| item == block),
        }
    }
}

/// One fine-tuning phase: a fresh optimizer, these epochs, these trainable parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Epochs to run.
    #[schema(minimum = 1)]
    pub epochs: u32,
    /// What is trainable; everything else is frozen (not updated, not in the optimizer).
    pub train: TrainSet,
    /// This phase's optimizer, when it differs from the spec's (e.g. a lower rate to fine-tune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerSpec>,
}

impl Phase {
    /// The optimizer settings this phase uses.
    pub fn optimizer<'a>(&'a self, spec: &'a JobSpec) -> &'a OptimizerSpec {
        self.optimizer.as_ref().unwrap_or(&spec.optimizer)
    }
}

/// The optimizer kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// Keras RMSprop (rho 0.9, epsilon 1e-7).
    Rmsprop,
    /// Adam (beta 0.9/0.999, epsilon 1e-7 as in Keras).
    Adam,
    /// SGD with optional momentum.
    Sgd,
}

/// The optimizer each phase creates afresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Which optimizer.
    pub name: OptimizerName,
    /// Learning rate.
    #[schema(exclusive_minimum = 0.0)]
    pub lr: f64,
    /// Momentum (SGD and RMSprop); 0 by default.
    #[serde(default)]
    pub momentum: f64,
    /// L2 weight decay; 0 by default.
    #[serde(default)]
    pub weight_decay: f64,
}

/// A validated experiment. Serializes back to the shape students POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A label for people; not unique.
    #[serde(default)]
    pub name: String,
    /// A dataset folder name under `--datasets`.
    #[schema(min_length = 1)]
    pub dataset: String,
    /// The convolutional base.
    pub backbone: Backbone,
    /// Initial backbone weights.
    #[serde(default = "default_weights")]
    pub weights: Weights,
    /// Square side images are resized to; `null` asks for variable size (see [`Resize`]).
    #[serde(default)]
    pub image_size: Option<u32>,
    /// With variable size: the longest an image's longer side may be (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_side: Option<u32>,
    /// How images are resized.
    #[serde(default)]
    pub interpolation: Interpolation,
    /// Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain before resizing: a first
    /// pass several times faster, but a reduced pixel is a block's mean, so `nearest` and
    /// `bilinear` no longer equal Pillow's (Keras') resize of the full image. Off by default;
    /// `area` uses the reduced decode anyway where it changes nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fast_decode: bool,
    /// `auto` (bf16 on a GPU, fp32 on the CPU), `fp32` or `bf16`.
    #[serde(default)]
    pub precision: Precision,
    /// Compute each phase's frozen layers once and train on their cached activations (the
    /// results are the same; `false` recomputes them every epoch, as Keras does).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub cache_features: bool,
    /// Images per training step.
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: u32,
    /// The classifier on top of the backbone: `"gap"`, `"flatten"`, `"relu"`, `"batchnorm"`,
    /// `{"dense": units}`, `{"dropout": rate}` or `{"batchnorm": {"momentum", "epsilon"}}`.
    #[schema(value_type = Vec<HeadLayerRepr>, min_items = 1)]
    pub head: Vec<HeadLayer>,
    /// Fine-tuning phases, run in order.
    #[schema(min_items = 1)]
    pub phases: Vec<Phase>,
    /// Optimizer settings, used afresh in each phase.
    pub optimizer: OptimizerSpec,
    /// Seeds initialisation, shuffling and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Run this many seeds (`seed`, `seed + 1`, …) as sibling jobs of one group.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    #[schema(minimum = 1, maximum = 20)]
    pub repeats: u32,
    /// Scheduling priority, higher first; only admins may set it (students' submissions with it
    /// are refused with a 403 naming the field).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// When the job runs out of GPU memory, queue it once more with half the batch size (noted
    /// in the job) instead of failing it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retry_on_oom: bool,
    /// Which of the job's ends send its owner a message (email and/or webhook, whichever they
    /// set with `PUT /api/me`): `["succeeded", "failed", "timeout"]` when absent, `[]` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<NotifyEvent>>,
    // Chained jobs (`domain::chain`): where the weights start, and what must succeed first.
    /// Start from another job's saved weights (backbone and head) instead of `weights`: its
    /// `final` checkpoint or a phase's (`phase1`, …). The new job waits for that job to succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
    /// Jobs (full ids) that must succeed before this one starts; if one fails or is cancelled,
    /// this one fails at once. At most [`MAX_AFTER`], each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub after: Vec<crate::domain::JobId>,
    /// Which weights files the job keeps: `final` (only `final.safetensors`), `phases` (also
    /// `phaseN.safetensors` after each phase but the last; the default) or `all` (also
    /// `phaseN-epochEE.safetensors` after every epoch).
    #[serde(default, skip_serializing_if = "Checkpoints::is_default")]
    pub checkpoints: Checkpoints,
    /// The device time the job may use over all its runs (`"90m"`, `"4h"`, `"2d"`, `"45s"` or
    /// whole seconds): reaching it stops the job with a checkpoint and it ends `timeout`; a
    /// resubmit with `resume=true` and a longer limit continues it. Absent: the server's
    /// `--default-time-limit` (if any) applies. At most `--max-time-limit` (30 days without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<crate::domain::time_limit::TimeLimit>,
    /// Random changes to each training image, as Keras' `ImageDataGenerator` makes them
    /// (`domain::augment`). A phase that augments computes its frozen layers every step: its
    /// activations change with every image, so none are cached (the pixel cache still serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<crate::domain::augment::Augment>,
    /// Each training image's loss multiplied by its class's weight, as Keras' `class_weight`:
    /// `"balanced"` or `{"NORMAL": 1.9, "PNEUMONIA": 0.66}` (`domain::class_weight`). The training
    /// loss curve is then weighted; validation and test metrics are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weight: Option<crate::domain::class_weight::ClassWeight>,
}

/// The spec fields a job resumed from another's checkpoint may change: none changes what is
/// trained, so the checkpoint still fits (`JobSpec::training`).
pub const RESUMABLE_CHANGES: [&str; 3] = ["time_limit", "name", "notify"];

/// Most jobs one spec's `after` may name.
pub const MAX_AFTER: usize = 16;

/// `"init_from": {"job": ID, "checkpoint": "final"}`: the job whose weights a new job starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitFrom {
    /// The job (full id) whose checkpoint is loaded.
    pub job: crate::domain::JobId,
    /// `final` (the default: the weights after the last phase) or `phaseN`, the weights after
    /// phase N of a job with more than N phases.
    #[serde(default)]
    #[schema(value_type = String, pattern = "^(final|phase[1-9][0-9]*)$", example = "final")]
    pub checkpoint: Checkpoint,
}

/// One of a job's saved weights files: `final.safetensors`, or `phaseN.safetensors` after phase N
/// (the last phase's weights are `final`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Checkpoint {
    /// The weights after the last phase.
    #[default]
    Final,
    /// The weights after this (1-based) phase.
    Phase(u32),
}

impl Checkpoint {
    /// The file's name in the job's artifacts folder.
    pub fn file_name(self) -> String {
        format!("{self}.safetensors")
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checkpoint::Final => f.write_str("final"),
            Checkpoint::Phase(number) => write!(f, "phase{number}"),
        }
    }
}

impl TryFrom<String> for Checkpoint {
    type Error = String;
    fn try_from(text: String) -> Result<Checkpoint, String> {
        if text == "final" {
            return Ok(Checkpoint::Final);
        }
        match text.strip_prefix("phase").and_then(|number| number.parse::<u32>().ok()) {
            Some(number) if number >= 1 && text == format!("phase{number}") => Ok(Checkpoint::Phase(number)),
            _ => Err(format!("unknown checkpoint `{text}`; use \"final\" or \"phaseN\" (e.g. \"phase1\")")),
        }
    }
}

impl From<Checkpoint> for String {
    fn from(checkpoint: Checkpoint) -> String {
        checkpoint.to_string()
    }
}

/// Which weights files a job writes into its artifacts (the resumable state in `state/` is
/// written after every epoch whatever this says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoints {
    /// Only `final.safetensors`.
    Final,
    /// `phaseN.safetensors` after each phase but the last, and `final.safetensors`.
    #[default]
    Phases,
    /// As `phases`, and `phaseN-epochEE.safetensors` after every other epoch too.
    All,
}

impl Checkpoints {
    fn is_default(&self) -> bool {
        *self == Checkpoints::Phases
    }

    /// The weights file written after `epoch` (1-based) of phase `phase` (0-based) of a job
    /// with `epochs` per phase, if any.
    pub fn file_after(self, phase: usize, epoch: u32, epochs: &[u32]) -> Option<String> {
        let last_phase = phase + 1 == epochs.len();
        let last_epoch = epochs.get(phase).is_some_and(|&count| epoch >= count);
        match (self, last_phase, last_epoch) {
            (_, true, true) => Some(String::from("final.safetensors")),
            (Checkpoints::Phases | Checkpoints::All, false, true) => Some(format!("phase{}.safetensors", phase + 1)),
            (Checkpoints::All, _, false) => Some(format!("phase{}-epoch{epoch:02}.safetensors", phase + 1)),
            _ => None,
        }
    }

    /// How many weights files a job with `epochs` per phase ends with.
    pub fn files(self, epochs: &[u32]) -> u64 {
        match self {
            Checkpoints::Final => 1,
            Checkpoints::Phases => epochs.len() as u64,
            Checkpoints::All => epochs.iter().map(|&count| u64::from(count.max(1))).sum(),
        }
    }
}

/// A job end its owner may be told about (the spec's `notify` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    /// The job succeeded.
    Succeeded,
    /// The job failed.
    Failed,
    /// The job was cancelled.
    Cancelled,
    /// The job reached its time limit.
    Timeout,
}

impl NotifyEvent {
    /// The ends a spec without a `notify` list is told about: success, failure and a time limit
    /// reached (each asks the student to act); a cancel is their own doing.
    pub const DEFAULT: [NotifyEvent; 3] = [NotifyEvent::Succeeded, NotifyEvent::Failed, NotifyEvent::Timeout];
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Most repeats one submission may ask for.
pub const MAX_REPEATS: u32 = 20;

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn one() -> u32 {
    1
}

fn is_one(value: &u32) -> bool {
    *value == 1
}

fn default_weights() -> Weights {
    Weights::Imagenet
}

impl JobSpec {
    /// Parses and validates a spec from JSON. Unknown fields, wrong types and bad values all come
    /// back as a [`SpecError`] naming the field.
    pub fn parse(json: &[u8]) -> Result<JobSpec, SpecError> {
        let deserializer = &mut serde_json::Deserializer::from_slice(json);
        let spec: JobSpec = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            // Syntax errors have no field; serde_json's line and column say where instead.
            if !err.inner().is_data() {
                return SpecError::new("(body)", format!("not valid JSON: {}", err.inner()));
            }
            let field = err.path().to_string();
            let field = if field == "." { String::from("(body)") } else { field };
            SpecError::new(field, describe_serde_error(err.inner()))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The number of outputs the head ends in (1 = binary with sigmoid).
    pub fn output_units(&self) -> u32 {
        match self.head.last() {
            Some(HeadLayer::Dense(units)) => *units,
            _ => unreachable!("validated specs end in a dense layer"),
        }
    }

    /// The sibling specs a submission with `repeats: N` becomes: seeds `seed … seed + N − 1`, each
    /// with `repeats: 1`.
    pub fn repetitions(&self) -> Vec<JobSpec> {
        (0..self.repeats as u64)
            .map(|offset| JobSpec { seed: self.seed.wrapping_add(offset), repeats: 1, ..self.clone() })
            .collect()
    }

    /// How this job's pixels are sampled to that size.
    pub fn sampling(&self) -> Sampling {
        Sampling { interpolation: self.interpolation, fast_decode: self.fast_decode }
    }

    /// How this job's images are sized.
    pub fn resize(&self) -> Resize {
        match self.image_size {
            Some(size) => Resize::Square(size),
            None => Resize::Bounded {
                max_side: self.max_image_side.unwrap_or(DEFAULT_MAX_IMAGE_SIDE),
                min_side: self.backbone.info().min_image_size,
            },
        }
    }

    /// The jobs that must succeed before this one starts: `after`, and the job `init_from` names
    /// (once each, in that order).
    pub fn waits_for(&self) -> Vec<crate::domain::JobId> {
        let mut ids = self.after.clone();
        if let Some(init) = &self.init_from {
            if !ids.contains(&init.job) {
                ids.push(init.job);
            }
        }
        ids
    }

    /// The spec without [`RESUMABLE_CHANGES`]: what a resumable checkpoint belongs to, so a
    /// job resumed with more time, another name or other notifications continues it.
    pub fn training(&self) -> JobSpec {
        JobSpec { name: String::new(), notify: None, time_limit: None, ..self.clone() }
    }

    /// Total epochs over all phases.
    pub fn total_epochs(&self) -> u32 {
        self.phases.iter().map(|phase| phase.epochs).sum()
    }

    /// The spec an out-of-memory retry runs: the same with half the batch, when `retry_on_oom`
    /// asks for one and the halved spec is still valid (a batch of one cannot train batch norm).
    pub fn halved_batch(&self) -> Option<JobSpec> {
        if !self.retry_on_oom || self.batch_size < 2 {
            return None;
        }
        let halved = JobSpec { batch_size: self.batch_size / 2, ..self.clone() };
        halved.validate().ok().map(|()| halved)
    }

    /// Checks that the output layer fits a dataset with `classes` classes.
    pub fn check_classes(&self, classes: usize) -> Result<(), SpecError> {
        let units = self.output_units() as usize;
        let field = format!("head[{}].dense", self.head.len() - 1);
        if units == 1 && classes != 2 {
            return Err(SpecError::new(
                field,
                format!(
                    "a final dense of 1 unit means binary classification, but dataset `{}` has {classes} classes; use {{\"dense\": {classes}}}",
                    self.dataset
                ),
            ));
        }
        if units != 1 && units != classes {
            return Err(SpecError::new(
                field,
                format!(
                    "the final dense layer must have 1 unit (binary) or one per class; dataset `{}` has {classes} classes",
                    self.dataset
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.name.len() > 200 {
            return Err(SpecError::new("name", "at most 200 characters"));
        }
        if self.dataset.is_empty() {
            return Err(SpecError::new("dataset", "must name a dataset; GET /api/datasets lists them"));
        }
        let info = self.backbone.info();
        match self.image_size {
            None if self.head.first() == Some(&HeadLayer::Flatten) => {
                return Err(SpecError::new(
                    "head[0]",
                    "\"flatten\" cannot take variable-size images: the flattened length (channels × height × width of the feature map) changes with each image, so the dense layer after it has no fixed input size; use \"gap\" (global average pooling, one value per channel whatever the size) or give image_size",
                ))
            }
            None => {
                let smallest = info.min_image_size.next_multiple_of(SHAPE_QUANTUM);
                match self.max_image_side {
                    Some(side) if side % SHAPE_QUANTUM != 0 || side < smallest || side > MAX_IMAGE_SIZE => {
                        return Err(SpecError::new(
                            "max_image_side",
                            format!(
                                "{side} is not usable: give a multiple of {SHAPE_QUANTUM} between {smallest} ({} needs at least {} px) and {MAX_IMAGE_SIZE}",
                                info.name, info.min_image_size
                            ),
                        ))
                    }
                    _ => {}
                }
            }
            Some(_) if self.max_image_side.is_some() => {
                return Err(SpecError::new(
                    "max_image_side",
                    "only applies to variable-size images (image_size null); remove it or set image_size to null",
                ))
            }
            Some(size) if size < info.min_image_size || size > MAX_IMAGE_SIZE => {
                return Err(SpecError::new(
                    "image_size",
                    format!(
                        "{size} is out of range: {} needs at least {} px, and at most {MAX_IMAGE_SIZE} px is accepted",
                        info.name, info.min_image_size
                    ),
                ))
            }
            Some(_) => {}
        }
        if self.repeats == 0 || self.repeats > MAX_REPEATS {
            return Err(SpecError::new("repeats", format!("must be between 1 and {MAX_REPEATS}")));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(SpecError::new("batch_size", format!("must be between 1 and {MAX_BATCH_SIZE}")));
        }
        self.validate_head()?;
        if self.batch_size == 1 {
            if let Some(index) = self.head.iter().position(|layer| matches!(layer, HeadLayer::Batchnorm(_))) {
                return Err(SpecError::new(
                    "batch_size",
                    format!(
                        "must be at least 2 with a \"batchnorm\" head layer (head[{index}]): batch norm can't take the \
                         statistics of one sample; raise batch_size or drop the layer"
                    ),
                ));
            }
        }
        self.validate_phases(info.blocks)?;
        validate_optimizer("optimizer", &self.optimizer)?;
        if self.after.len() > MAX_AFTER {
            return Err(SpecError::new(
                "after",
                format!("{} jobs; at most {MAX_AFTER} may be named", self.after.len()),
            ));
        }
        for (index, id) in self.after.iter().enumerate() {
            if self.after[..index].contains(id) {
                return Err(SpecError::new(
                    format!("after[{index}]"),
                    format!("job {id} is named twice; name each job once"),
                ));
            }
        }
        for (index, phase) in self.phases.iter().enumerate() {
            if let Some(optimizer) = &phase.optimizer {
                validate_optimizer(&format!("phases[{index}].optimizer"), optimizer)?;
            }
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
        }
        if let Some(class_weight) = &self.class_weight {
            class_weight.validate()?;
        }
        Ok(())
    }

    /// Whether training images are augmented (an `augment` that changes something).
    pub fn augments(&self) -> bool {
        self.augment.is_some_and(|augment| !augment.is_identity())
    }

    fn validate_head(&self) -> Result<(), SpecError> {
        let first_fix = "start the head with \"gap\" (global average pooling) or \"flatten\"";
        match self.head.first() {
            None => return Err(SpecError::new("head", format!("must not be empty; {first_fix}"))),
            Some(HeadLayer::Gap | HeadLayer::Flatten) => {}
            Some(_) => return Err(SpecError::new("head[0]", first_fix)),
        }
        for (index, layer) in self.head.iter().enumerate().skip(1) {
            let field = format!("head[{index}]");
            match *layer {
                HeadLayer::Gap | HeadLayer::Flatten => {
                    return Err(SpecError::new(field, "\"gap\" or \"flatten\" may only be the first head layer"))
                }
                HeadLayer::Dense(0) | HeadLayer::Dense(65_537..) => {
                    return Err(SpecError::new(format!("{field}.dense"), "units must be between 1 and 65536"))
                }
                HeadLayer::Dropout(p) if !(0.0..1.0).contains(&p) => {
                    return Err(SpecError::new(
                        format!("{field}.dropout"),
                        "the drop probability must be at least 0 and below 1, e.g. 0.25",
                    ))
                }
                HeadLayer::Batchnorm(options) if !(0.0..1.0).contains(&options.momentum) => {
                    return Err(SpecError::new(
                        format!("{field}.batchnorm.momentum"),
                        "must be at least 0 and below 1 (Keras' default is 0.99)",
                    ))
                }
                HeadLayer::Batchnorm(options) if !(options.epsilon > 0.0 && options.epsilon < 1.0) => {
                    return Err(SpecError::new(format!("{field}.batchnorm.epsilon"), "must be above 0 and below 1"))
                }
                _ => {}
            }
        }
        if !matches!(self.head.last(), Some(HeadLayer::Dense(_))) {
            return Err(SpecError::new(
                format!("head[{}]", self.head.len() - 1),
                "the head must end in a dense layer: {\"dense\": 1} for binary, or one unit per class",
            ));
        }
        Ok(())
    }

    fn validate_phases(&self, blocks: &[&str]) -> Result<(), SpecError> {
        if self.phases.is_empty() {
            return Err(SpecError::new(
                "phases",
                "give at least one phase, e.g. [{\"epochs\": 10, \"train\": \"head\"}]",
            ));
        }
        for (index, phase) in self.phases.iter().enumerate() {
            if phase.epochs == 0 || phase.epochs > MAX_EPOCHS {
                return Err(SpecError::new(
                    format!("phases[{index}].epochs"),
                    format!("must be between 1 and {MAX_EPOCHS}"),
                ));
            }
            let field = format!("phases[{index}].train");
            let allowed = || format!("\"head\", \"all\", or a list of {} and \"head\"", blocks.join(", "));
            match &phase.train {
                TrainSet::Named(name) if name == "head" || name == "all" => {}
                TrainSet::Named(name) => {
                    return Err(SpecError::new(field, format!("unknown value `{name}`; use {}", allowed())))
                }
                TrainSet::Blocks(items) if items.is_empty() => {
                    return Err(SpecError::new(field, format!("must not be empty; use {}", allowed())))
                }
                TrainSet::Blocks(items) => {
                    for (item_index, item) in items.iter().enumerate() {
                        if item != "head" && !blocks.contains(&item.as_str()) {
                            return Err(SpecError::new(
                                format!("{field}[{item_index}]"),
                                format!("unknown block `{item}` for {}; use {}", self.backbone.name(), allowed()),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn validate_optimizer(field: &str, optimizer: &OptimizerSpec) -> Result<(), SpecError> {
    if !(optimizer.lr.is_finite() && optimizer.lr > 0.0 && optimizer.lr <= 10.0) {
        return Err(SpecError::new(format!("{field}.lr"), "must be a positive number no larger than 10, e.g. 1e-5"));
    }
    if !(0.0..1.0).contains(&optimizer.momentum) {
        return Err(SpecError::new(format!("{field}.momentum"), "must be at least 0 and below 1"));
    }
    if optimizer.momentum > 0.0 && optimizer.name == OptimizerName::Adam {
        return Err(SpecError::new(format!("{field}.momentum"), "Adam takes no momentum; remove the field"));
    }
    if !(0.0..1.0).contains(&optimizer.weight_decay) {
        return Err(SpecError::new(format!("{field}.weight_decay"), "must be at least 0 and below 1"));
    }
    Ok(())
}

/// Turns serde's message into one a student can act on (serde already names expected variants).
fn describe_serde_error(err: &serde_json::Error) -> String {
    let message = err.to_string();
    // serde_json appends " at line L column C"; the field path already says where.
    let message = match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message,
    };
    if message.contains("did not match any variant of untagged enum TrainSet") {
        return String::from("must be \"head\", \"all\", or a list of block names such as [\"block5\", \"head\"]");
    }
    if message.contains("did not match any variant of untagged enum ZoomRange") {
        return String::from(
            "must be a number z (factors from [1 − z, 1 + z]), e.g. 0.2, or the bounds [lower, upper]",
        );
    }
    if message.contains("did not match any variant of untagged enum ClassWeight") {
        return String::from(
            "must be \"balanced\" or one weight per class, e.g. {\"NORMAL\": 1.9, \"PNEUMONIA\": 0.66}",
        );
    }
    if message.contains("did not match any variant of untagged enum HeadLayerRepr") {
        return String::from(
            "a head layer is \"gap\", \"flatten\", \"batchnorm\", \"relu\", {\"dense\": units}, {\"dropout\": rate} or {\"batchnorm\": {\"momentum\": 0.99, \"epsilon\": 0.001}}",
        );
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q1: &str = r#"{ "name": "q1", "dataset": "chest_xray", "backbone": "vgg16", "weights": "imagenet",
      "image_size": 128, "batch_size": 20,
      "head": ["gap", {"dense": 512}, "batchnorm", "relu", {"dense": 128}, {"dense": 1}],
      "phases": [ {"epochs": 100, "train": "head"},
                  {"epochs": 50,  "train": ["block5", "head"]} ],
      "optimizer": {"name": "rmsprop", "lr": 1e-5}, "seed": 1 }"#;

    fn with(patch: impl FnOnce(&mut serde_json::Value)) -> Result<JobSpec, SpecError> {
        let mut value: serde_json::Value = serde_json::from_str(Q1).unwrap();
        patch(&mut value);
        JobSpec::parse(value.to_string().as_bytes())
    }

    #[test]
    fn checkpoints_choose_the_weights_files_kept() {
        assert_eq!(with(|_| {}).unwrap().checkpoints, Checkpoints::Phases, "today's behaviour by default");
        assert_eq!(with(|value| value["checkpoints"] = "all".into()).unwrap().checkpoints, Checkpoints::All);
        let err = with(|value| value["checkpoints"] = "some".into()).unwrap_err();
        assert_eq!(err.field, "checkpoints");
        for choice in ["final", "phases", "all"] {
            assert!(err.message.contains(choice), "{}", err.message);
        }
        let files = |choice: Checkpoints| {
            let epochs = [2, 3];
            let mut names = Vec::new();
            for (phase, &count) in epochs.iter().enumerate() {
                names.extend((1..=count).filter_map(|epoch| choice.file_after(phase, epoch, &epochs)));
            }
            assert_eq!(names.len() as u64, choice.files(&epochs), "{names:?}");
            names
        };
        assert_eq!(files(Checkpoints::Final), ["final.safetensors"]);
        assert_eq!(files(Checkpoints::Phases), ["phase1.safetensors", "final.safetensors"]);
        assert_eq!(
            files(Checkpoints::All),
            [
                "phase1-epoch01.safetensors",
                "phase1.safetensors",
                "phase2-epoch01.safetensors",
                "phase2-epoch02.safetensors",
                "final.safetensors"
            ]
        );
    }

    #[test]
    fn the_assignment_q1_spec_parses() {
        let spec = JobSpec::parse(Q1.as_bytes()).unwrap();
        assert_eq!(spec.head[1], HeadLayer::Dense(512));
        assert_eq!(spec.output_units(), 1);
        assert_eq!(spec.total_epochs(), 150);
        assert!(spec.phases[1].train.trains_block("block5"));
        assert!(!spec.phases[1].train.trains_block("block4"));
        assert!(spec.phases[0].train.trains_head());
        assert_eq!(spec.interpolation, Interpolation::Nearest);
        spec.check_classes(2).unwrap();
    }

    #[test]
    fn an_out_of_memory_retry_halves_the_batch_only_when_asked_and_possible() {
        let asked = with(|value| value["retry_on_oom"] = true.into()).unwrap();
        let halved = asked.halved_batch().unwrap();
        assert_eq!(halved.batch_size, 10);
        assert_eq!(JobSpec { batch_size: 20, ..halved }, asked, "only the batch changes");
        assert_eq!(with(|_| {}).unwrap().halved_batch(), None, "not asked");
        let two = with(|value| {
            value["retry_on_oom"] = true.into();
            value["batch_size"] = 2.into();
        });
        assert_eq!(two.unwrap().halved_batch(), None, "batch norm cannot train on a batch of one");
        let two_without_batchnorm = with(|value| {
            value["retry_on_oom"] = true.into();
            value["batch_size"] = 2.into();
            value["head"] = serde_json::json!(["gap", {"dense": 1}]);
        });
        assert_eq!(two_without_batchnorm.unwrap().halved_batch().map(|spec| spec.batch_size), Some(1));
    }

    #[test]
    fn a_spec_round_trips_through_json() {
        let spec = JobSpec::parse(Q1.as_bytes()).unwrap();
        let again = JobSpec::parse(serde_json::to_string(&spec).unwrap().as_bytes()).unwrap();
        assert_eq!(spec, again);
    }

    /// Each bad spec names the field a student has to fix.
    #[test]
    fn bad_specs_name_their_field() {
        use serde_json::json;
        type Patch = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(&str, Patch)> = vec![
            ("colour", Box::new(|v| v["colour"] = json!("red"))),
            ("backbone", Box::new(|v| v["backbone"] = json!("resnet101"))),
            ("image_size", Box::new(|v| v["image_size"] = json!(8))),
            ("max_image_side", Box::new(|v| v["max_image_side"] = json!(256))),
            (
                "max_image_side",
                Box::new(|v| {
                    v["image_size"] = json!(null);
                    v["max_image_side"] = json!(250);
                }),
            ),
            (
                "max_image_side",
                Box::new(|v| {
                    v["image_size"] = json!(null);
                    v["backbone"] = json!("inception_v3");
                    v["max_image_side"] = json!(64);
                }),
            ),
            (
                "head[0]",
                Box::new(|v| {
                    v["image_size"] = json!(null);
                    v["head"][0] = json!("flatten");
                }),
            ),
            ("image_size", Box::new(|v| v["image_size"] = json!("big"))),
            ("batch_size", Box::new(|v| v["batch_size"] = json!(0))),
            ("batch_size", Box::new(|v| v["batch_size"] = json!(1))),
            ("head[0]", Box::new(|v| v["head"] = json!([{"dense": 1}]))),
            ("head", Box::new(|v| v["head"] = json!([]))),
            ("head[2]", Box::new(|v| v["head"] = json!(["gap", {"dense": 4}, "relu"]))),
            ("head[1].dropout", Box::new(|v| v["head"] = json!(["gap", {"dropout": 1.5}, {"dense": 1}]))),
            ("head[1]", Box::new(|v| v["head"] = json!(["gap", "softmax", {"dense": 1}]))),
            (
                "head[1].batchnorm.momentum",
                Box::new(|v| v["head"] = json!(["gap", {"batchnorm": {"momentum": 1.5}}, {"dense": 1}])),
            ),
            ("phases", Box::new(|v| v["phases"] = json!([]))),
            ("phases[0].epochs", Box::new(|v| v["phases"][0]["epochs"] = json!(0))),
            ("phases[1].train[0]", Box::new(|v| v["phases"][1]["train"] = json!(["block9", "head"]))),
            ("phases[1].train", Box::new(|v| v["phases"][1]["train"] = json!("everything"))),
            ("phases[1].train", Box::new(|v| v["phases"][1]["train"] = json!(5))),
            ("optimizer.lr", Box::new(|v| v["optimizer"]["lr"] = json!(-1.0))),
            ("optimizer.name", Box::new(|v| v["optimizer"]["name"] = json!("lbfgs"))),
            ("phases[1].optimizer.lr", Box::new(|v| v["phases"][1]["optimizer"] = json!({"name": "sgd", "lr": 0}))),
            ("dataset", Box::new(|v| v.as_object_mut().unwrap().remove("dataset").map(drop).unwrap())),
            ("augment.rotation_range", Box::new(|v| v["augment"] = json!({"rotation_range": 720}))),
            ("augment.zoom_range", Box::new(|v| v["augment"] = json!({"zoom_range": -0.2}))),
            ("augment.zoom_range", Box::new(|v| v["augment"] = json!({"zoom_range": "big"}))),
            ("augment.shear_range", Box::new(|v| v["augment"] = json!({"shear_range": 0.2}))),
            ("class_weight", Box::new(|v| v["class_weight"] = json!("equal"))),
            ("class_weight.NORMAL", Box::new(|v| v["class_weight"] = json!({"NORMAL": -1, "PNEUMONIA": 1}))),
        ];
        for (field, patch) in cases {
            let err = with(patch).expect_err(field);
            assert!(err.field == field || (field == "dataset" && err.field == "(body)"), "{field}: got {err:?}");
            assert!(!err.message.is_empty());
            if field == "dataset" {
                assert!(err.message.contains("dataset"), "{err:?}");
            }
        }
    }

    #[test]
    fn augmentation_with_cached_features_is_allowed_and_all_zero_augments_nothing() {
        let spec = with(|v| v["augment"] = serde_json::json!({"horizontal_flip": true})).unwrap();
        assert!(spec.cache_features && spec.augments(), "allowed: the worker explains what it means");
        let zero = with(|v| v["augment"] = serde_json::json!({"rotation_range": 0, "zoom_range": [1, 1]})).unwrap();
        assert!(!zero.augments());
        assert!(!with(|_| {}).unwrap().augments());
        let weighted = with(|v| v["class_weight"] = serde_json::json!("balanced")).unwrap();
        let again = JobSpec::parse(serde_json::to_string(&weighted).unwrap().as_bytes()).unwrap();
        assert_eq!(again, weighted);
        assert!(serde_json::to_value(with(|_| {}).unwrap()).unwrap().get("augment").is_none(), "absent stays absent");
    }

    #[test]
    fn variable_size_keeps_the_aspect_and_bounds_the_longer_side() {
        let spec = with(|v| v["image_size"] = serde_json::json!(null)).unwrap();
        let resize = spec.resize();
        assert_eq!(resize, Resize::Bounded { max_side: DEFAULT_MAX_IMAGE_SIDE, min_side: 32 });
        assert_eq!(resize.label(), "max256-min32");
        // A 1.4:1 chest film: 256 × 183 → rounded to 256 × 192.
        assert_eq!(resize.target(1400, 1000), (256, 192));
        assert_eq!(resize.target(1000, 1400), (192, 256), "portrait stays portrait");
        // Small images are not enlarged, only rounded; tiny ones meet the backbone's minimum.
        assert_eq!(resize.target(100, 70), (96, 64));
        assert_eq!(resize.target(20, 10), (32, 32));
        let inception = Resize::Bounded { max_side: 128, min_side: 75 };
        assert_eq!(inception.target(2000, 500), (128, 96), "75 rounds up to 96");
        assert_eq!(Resize::Square(128).target(1400, 1000), (128, 128));
        assert_eq!(Resize::Square(128).label(), "128");
        let bounded = with(|v| {
            v["image_size"] = serde_json::json!(null);
            v["max_image_side"] = serde_json::json!(512);
        })
        .unwrap();
        assert_eq!(bounded.resize(), Resize::Bounded { max_side: 512, min_side: 32 });
        let again = JobSpec::parse(serde_json::to_string(&bounded).unwrap().as_bytes()).unwrap();
        assert_eq!(again, bounded);
    }

    #[test]
    fn batchnorm_takes_keras_defaults_or_settings() {
        let spec = with(|v| v["head"][2] = serde_json::json!({"batchnorm": {"momentum": 0.9}})).unwrap();
        assert_eq!(spec.head[2], HeadLayer::Batchnorm(BatchnormOptions { momentum: 0.9, epsilon: 1e-3 }));
        let plain = JobSpec::parse(Q1.as_bytes()).unwrap();
        assert_eq!(plain.head[2], HeadLayer::Batchnorm(BatchnormOptions::default()));
        // Defaults serialize back to the bare name, so stored specs look like what was sent.
        assert_eq!(serde_json::to_value(plain.head[2]).unwrap(), "batchnorm");
        let err = with(|v| v["head"][2] = serde_json::json!("softmax")).unwrap_err();
        assert!(err.message.contains("{\"dense\": units}"), "{err:?}");
    }

    #[test]
    fn repeats_become_seeded_siblings() {
        let spec = with(|v| v["repeats"] = serde_json::json!(3)).unwrap();
        let seeds: Vec<(u64, u32)> = spec.repetitions().iter().map(|s| (s.seed, s.repeats)).collect();
        assert_eq!(seeds, [(1, 1), (2, 1), (3, 1)]);
        assert_eq!(with(|v| v["repeats"] = serde_json::json!(0)).unwrap_err().field, "repeats");
        let plain = JobSpec::parse(Q1.as_bytes()).unwrap();
        assert!(serde_json::to_value(&plain).unwrap().get("repeats").is_none(), "1 is not written out");
    }

    #[test]
    fn the_output_layer_must_fit_the_classes() {
        let spec = JobSpec::parse(Q1.as_bytes()).unwrap();
        assert_eq!(spec.check_classes(3).unwrap_err().field, "head[5].dense");
        let three = with(|v| v["head"][5] = serde_json::json!({"dense": 3})).unwrap();
        three.check_classes(3).unwrap();
        assert!(three.check_classes(2).is_err());
    }

    #[test]
    fn notify_lists_ends_and_names_the_choices_otherwise() {
        assert_eq!(with(|_| {}).unwrap().notify, None, "absent: the default (succeeded and failed)");
        let spec = with(|value| value["notify"] = serde_json::json!(["failed", "cancelled"])).unwrap();
        assert_eq!(spec.notify, Some(vec![NotifyEvent::Failed, NotifyEvent::Cancelled]));
        assert_eq!(with(|value| value["notify"] = serde_json::json!([])).unwrap().notify, Some(Vec::new()));
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            stored["notify"],
            serde_json::json!(["failed", "cancelled"]),
            "the store reads the list back as sent"
        );
        let err = with(|value| value["notify"] = serde_json::json!(["done"])).unwrap_err();
        assert_eq!(err.field, "notify[0]");
        assert!(err.message.contains("succeeded") && err.message.contains("cancelled"), "{}", err.message);
        assert_eq!(with(|value| value["notify"] = serde_json::json!("failed")).unwrap_err().field, "notify");
    }

    #[test]
    fn time_limits_read_every_spelling_and_name_the_field_when_bad() {
        assert_eq!(with(|_| {}).unwrap().time_limit, None, "absent: the server's default applies");
        for (value, seconds) in
            [(serde_json::json!("90m"), 5_400), (serde_json::json!("4h"), 14_400), (serde_json::json!(7_200), 7_200)]
        {
            let spec = with(|spec| spec["time_limit"] = value.clone()).unwrap();
            assert_eq!(spec.time_limit.map(|limit| limit.seconds()), Some(seconds), "{value}");
        }
        let spec = with(|spec| spec["time_limit"] = serde_json::json!(7_200)).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap()["time_limit"], "2h", "stored in its compact text");
        for (value, says) in [
            (serde_json::json!(0), "zero"),
            (serde_json::json!("0m"), "zero"),
            (serde_json::json!(-60), "negative"),
            (serde_json::json!("-3h"), "negative"),
            (serde_json::json!("soon"), "not a duration"),
            (serde_json::json!(true), "duration"),
            (serde_json::json!("9999d"), "absurdly long"),
        ] {
            let err = with(|spec| spec["time_limit"] = value.clone()).unwrap_err();
            assert_eq!(err.field, "time_limit", "{value}");
            assert!(err.message.contains(says), "{value}: {}", err.message);
        }
    }
}
