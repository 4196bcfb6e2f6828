//! The resumable checkpoint: `<state dir>/resume.safetensors`, rewritten atomically at the end of
//! every epoch and when SIGTERM stops training mid-epoch. One file holds every tensor of the
//! network's VarStore (under its own name, batch-norm statistics included), the current phase's
//! optimizer state (`optimizer.<index>.<buffer>`, `optimizer.steps`) and, as the safetensors
//! `__metadata__` entry `trainq`, a JSON [`Progress`]: where training stands and the curves so far.
//!
//! No RNG state is saved: shuffling and dropout are seeded from (seed, phase, epoch[, step]) (see
//! `train.rs`), so the position alone reproduces them.

use crate::cache::tensor_bytes;
use crate::model::Network;
use crate::optim::Optimizer;
use anyhow::Context;
use safetensors::tensor::{Dtype, View};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::JobSpec;
use trainq::domain::worker_protocol::EpochMetrics;
use trainq::files;

/// The checkpoint's file name inside the job's state folder.
pub const FILE_NAME: &str = "resume.safetensors";

/// Bumped when the file's meaning changes; a checkpoint of another version is not resumed.
const FORMAT_VERSION: u32 = 1;

/// The `__metadata__` key holding the JSON [`Progress`].
const METADATA_KEY: &str = "trainq";

/// Optimizer tensors are stored under this prefix (no VarStore name starts with it).
const OPTIMIZER_PREFIX: &str = "optimizer.";

/// Where training stands, and what it reported so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// SHA-256 (hex) of the spec's training (`JobSpec::training`: all but its time limit, name
    /// and notifications): a checkpoint only resumes the very same training.
    pub spec_sha256: String,
    /// 1-based phase the tensors belong to (the optimizer state is this phase's).
    pub phase: u32,
    /// Completed epochs of that phase.
    pub epochs: u32,
    /// The epoch after them, when it was stopped part-way.
    pub partial: PartialEpoch,
    /// Every epoch's metrics so far, all phases.
    pub curves: Vec<EpochMetrics>,
}

/// A part-way epoch: the batches done (of the epoch's reproducible plan) and the running sums its
/// metrics are averaged from. All zero at an epoch's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Completed training steps (batches) of the epoch.
    pub steps: u32,
    /// Sum over those batches of the batch's mean loss × its images (the float32 value, exactly).
    pub loss_sum: f64,
    /// Correct predictions over those batches.
    pub correct: i64,
    /// Images trained on.
    pub images: i64,
    /// Wall time spent on them.
    pub seconds: f64,
}

impl Progress {
    /// Nothing done yet, for `spec`.
    pub fn start(spec: &JobSpec) -> Progress {
        Progress {
            format: FORMAT_VERSION,
            spec_sha256: spec_sha256(spec),
            phase: 1,
            epochs: 0,
            partial: PartialEpoch::default(),
            curves: Vec::new(),
        }
    }

    /// Whether every epoch of phase `phase` (1-based, `epochs` long) is done.
    pub fn finished(&self, phase: u32, epochs: u32) -> bool {
        phase < self.phase || (phase == self.phase && self.epochs == epochs && self.partial.steps == 0)
    }
}

/// SHA-256 (hex) of the JSON of the spec's training (serialized from the validated spec, so
/// field order is fixed): a job resumed with more time, or renamed, matches its parent's.
pub fn spec_sha256(spec: &JobSpec) -> String {
    sha256_of_json(&spec.training())
}

/// Whether a checkpoint's hash is of `spec`'s training, or (written before resumes could change
/// a spec) of the whole spec.
fn belongs_to(hash: &str, spec: &JobSpec) -> bool {
    hash == spec_sha256(spec) || hash == sha256_of_json(spec)
}

fn sha256_of_json(spec: &JobSpec) -> String {
    let json = serde_json::to_vec(spec).expect("a spec always serializes");
    Sha256::digest(&json).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A CPU tensor as safetensors writes it, its bytes borrowed.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    tensor: Tensor,
}

impl Stored {
    fn new(tensor: &Tensor) -> anyhow::Result<Stored> {
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            Kind::Int64 => Dtype::I64,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Uint8 => Dtype::U8,
            other => anyhow::bail!("a {other:?} tensor cannot go into a checkpoint"),
        };
        // `contiguous` also turns a channels-last weight into the standard layout.
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        Ok(Stored { dtype, shape: tensor.size().iter().map(|&d| d as usize).collect(), tensor })
    }
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(tensor_bytes(&self.tensor))
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

fn kind_of(dtype: Dtype) -> anyhow::Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::U8 => Kind::Uint8,
        other => anyhow::bail!("unexpected dtype {other:?}"),
    })
}

/// Writes the checkpoint (`files::write_atomic`: a temp file in the same folder, fsynced, renamed
/// over the old one, the folder fsynced), so after a crash or a full disk the file is the old or
/// the new checkpoint, whole.
pub fn save(dir: &Path, progress: &Progress, network: &Network, optimizer: &Optimizer) -> anyhow::Result<()> {
    let optimizer_state =
        optimizer.export().into_iter().map(|(name, tensor)| (format!("{OPTIMIZER_PREFIX}{name}"), tensor));
    let metadata = HashMap::from([(String::from(METADATA_KEY), serde_json::to_string(progress)?)]);
    write_safetensors(&dir.join(FILE_NAME), network.vs.variables().into_iter().chain(optimizer_state), Some(metadata))
}

/// Writes `tensors` (in the standard layout, on the CPU) and `metadata` as a safetensors file at
/// `path` through `files::write_atomic`, streamed from the tensors without a copy of the file in
/// memory. Both the resumable checkpoint and the phases' weights files are written here. I/O
/// errors keep their errno under the context "writing <path>" (tch's own writer turns them into text).
pub fn write_safetensors(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    let stored: Vec<(String, Stored)> =
        tensors.into_iter().map(|(name, tensor)| Ok((name, Stored::new(&tensor)?))).collect::<anyhow::Result<_>>()?;
    files::write_atomic_through_path(path, |temporary| {
        let views = stored.iter().map(|(name, stored)| (name.as_str(), stored));
        safetensors::tensor::serialize_to_file(views, &metadata, temporary).map_err(|err| match err {
            safetensors::SafeTensorError::IoError(err) => err,
            other => std::io::Error::other(other.to_string()),
        })
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// A checkpoint found and applied.
pub struct Restored {
    /// Where training continues.
    pub progress: Progress,
    /// The optimizer of the phase under way, its state restored; `None` when the checkpoint is at
    /// a phase's end (the next phase starts a fresh one).
    pub optimizer: Option<Optimizer>,
}

/// Reads `<dir>/resume.safetensors` and, when it is a checkpoint of this spec, loads its tensors
/// into `network` and into a new optimizer for the phase under way. `Ok(None)`: no checkpoint.
/// An error (unreadable, another spec or format, tensors that do not fit) leaves `network` as it
/// was: everything is checked before anything is copied.
pub fn restore(dir: &Path, spec: &JobSpec, network: &Network) -> anyhow::Result<Option<Restored>> {
    let path = dir.join(FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
    };
    // SAFETY: checkpoints are replaced by rename, never modified in place, so the mapped file
    // does not change under us.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let file =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    let json =
        header.metadata().as_ref().and_then(|metadata| metadata.get(METADATA_KEY)).context("no trainq metadata")?;
    let progress: Progress = serde_json::from_str(json).context("reading the trainq metadata")?;
    anyhow::ensure!(
        progress.format == FORMAT_VERSION,
        "format {} (this worker writes {FORMAT_VERSION})",
        progress.format
    );
    anyhow::ensure!(belongs_to(&progress.spec_sha256, spec), "it belongs to another spec");
    let phase = spec.phases.get((progress.phase as usize).wrapping_sub(1)).context("its phase is not in the spec")?;
    anyhow::ensure!(
        progress.epochs < phase.epochs || (progress.epochs == phase.epochs && progress.partial.steps == 0),
        "its position (phase {}, epoch {}, step {}) is past the phase's end",
        progress.phase,
        progress.epochs,
        progress.partial.steps
    );
    let load = |name: &str| -> anyhow::Result<Tensor> {
        let view = file.tensor(name).map_err(|_| anyhow::anyhow!("it lacks {name}"))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(view.data(), &shape, kind_of(view.dtype())?)?)
    };

    let optimizer = if progress.finished(progress.phase, phase.epochs) {
        None
    } else {
        let (_, parameters) = network.set_trainable(&phase.train);
        let mut optimizer = Optimizer::new(phase.optimizer(spec), &parameters);
        let named: HashMap<String, Tensor> = file
            .names()
            .into_iter()
            .filter_map(|name| name.strip_prefix(OPTIMIZER_PREFIX).map(|short| (short.to_string(), name)))
            .map(|(short, name)| Ok((short, load(name)?)))
            .collect::<anyhow::Result<_>>()?;
        optimizer.import(&named).context("restoring the optimizer")?;
        Some(optimizer)
    };

    let mut copies = Vec::new();
    for (name, target) in network.vs.variables() {
        let source = load(&name)?;
        anyhow::ensure!(
            source.size() == target.size() && source.kind() == target.kind(),
            "{name} is {:?} {:?}, the network's {:?} {:?}",
            source.kind(),
            source.size(),
            target.kind(),
            target.size()
        );
        copies.push((target, source));
    }
    tch::no_grad(|| {
        for (mut target, source) in copies {
            target.copy_(&source);
        }
    });
    Ok(Some(Restored { progress, optimizer }))
}
