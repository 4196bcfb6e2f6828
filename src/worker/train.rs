//! One job from start to end: load the splits, build the network, run each phase with a fresh
//! optimizer over exactly the phase's trainable parameters, checkpoint after each phase, evaluate.
//!
//! Crash safety: at the end of every epoch (and when SIGTERM stops a step) the whole training
//! state goes into the job's resumable checkpoint (`resume.rs`); a restarted worker continues from
//! it. Randomness needs no saved RNG state for that: each epoch's shuffle comes from a generator
//! seeded with (spec seed, phase, epoch), and libtorch's generator (dropout) is reseeded from
//! (spec seed, phase, epoch, step) before every training step, so a resumed run computes exactly
//! what the uninterrupted run would have (on the CPU bit for bit; on a GPU up to cuDNN's own
//! non-determinism).

use crate::data::{load_split, Split};
use crate::cache;
use crate::data::CacheOutcome;
use crate::features::{self, Features, Source};
use crate::interrupt::{self, Interrupted};
use crate::model::{Cut, Network, Trainable};
use crate::optim::Optimizer;
use crate::precision::{self, CpuBf16, Numerics};
use crate::report::emit;
use crate::resume::{self, PartialEpoch, Progress};
use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Reduction, Tensor};
use trainq::catalog::datasets;
use trainq::domain::backbone::Backbone;
use trainq::domain::progress::{EpochMetrics, FinalMetrics, WorkerDevice, WorkerJob};
use trainq::domain::spec::JobSpec;
use trainq::domain::ProgressEvent;
use trainq::metrics::{self, BinaryMetrics, MulticlassMetrics};
use trainq::storage;

/// Most pixel bytes a job keeps on its GPU for the whole job.
const GPU_DATA_BUDGET_BYTES: i64 = 4 << 30;

/// How often a step event is sent.
const STEP_EVENT_INTERVAL: Duration = Duration::from_millis(500);

/// Picks the device the supervisor granted.
pub fn device_for(kind: WorkerDevice) -> anyhow::Result<Device> {
    match kind {
        WorkerDevice::Cpu => Ok(Device::Cpu),
        WorkerDevice::Cuda if tch::Cuda::is_available() => {
            tch::Cuda::cudnn_set_benchmark(true);
            Ok(Device::Cuda(0))
        }
        WorkerDevice::Cuda => anyhow::bail!(
            "the scheduler gave this job a GPU but libtorch sees no CUDA device (is libtorch_cuda.so linked? `ldd trainq-worker`)"
        ),
    }
}

/// Turns uint8 batches into the float input a backbone's pretrained weights expect.
pub struct Normaliser {
    /// `1 / (255 · std)` per channel.
    scale: Tensor,
    /// `−mean / std` per channel.
    shift: Tensor,
    device: Device,
}

impl Normaliser {
    /// The backbone's input statistics, folded into one scale and shift per channel, on `device`.
    pub fn new(backbone: Backbone, device: Device) -> Normaliser {
        let info = backbone.info();
        let on_device = |values: Vec<f64>| Tensor::from_slice(&values).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
        let scale = (0..3).map(|c| 1.0 / (255.0 * info.input_std[c])).collect();
        let shift = (0..3).map(|c| -info.input_mean[c] / info.input_std[c]).collect();
        Normaliser { scale: on_device(scale), shift: on_device(shift), device }
    }

    /// The device batches are normalised onto (the job's).
    pub fn device(&self) -> Device {
        self.device
    }

    /// `(pixels / 255 − mean) / std`, computed as `pixels · scale + shift` in place on the one
    /// float tensor the conversion allocates: this runs on every batch of every epoch, and each
    /// extra temporary is a batch-sized allocation. A one-channel (grayscale) batch is expanded to
    /// three channels by that same conversion (an expanded view costs nothing until converted).
    pub fn apply(&self, batch: &Tensor) -> Tensor {
        let batch = batch.to_device(self.device);
        let size = batch.size();
        let batch = if size[1] == 1 { batch.expand([size[0], 3, size[2], size[3]], false) } else { batch };
        let mut x = batch.to_kind(Kind::Float);
        let _ = x.g_mul_(&self.scale);
        let _ = x.g_add_(&self.shift);
        x
    }
}

/// Loss (mean over the batch) and the number of correct predictions, both as 0-d tensors.
pub fn loss_and_correct(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    if logits.size()[1] == 1 {
        let logits = logits.squeeze_dim(1);
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&labels.to_kind(Kind::Float), None, None, Reduction::Mean);
        let correct = logits.gt(0.0).to_kind(Kind::Int64).eq_tensor(labels).sum(Kind::Int64);
        (loss, correct)
    } else {
        let loss = logits.cross_entropy_for_logits(labels);
        let correct = logits.argmax(1, false).eq_tensor(labels).sum(Kind::Int64);
        (loss, correct)
    }
}

/// A split evaluated in inference mode.
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (threshold 0.5 on the sigmoid, or argmax).
    pub accuracy: f64,
    /// Per image: the positive-class probability (binary models) or one probability per class.
    pub probabilities: Vec<Vec<f64>>,
}

/// What a phase feeds the network: a split's pixels through the whole network, or the cached
/// activations of its frozen prefix through the rest of it (`Network::forward_from`).
pub struct Feed<'a> {
    /// Per shape group: the stored inputs (uint8 pixels or activations) and the labels.
    groups: Vec<(&'a Tensor, &'a Tensor)>,
    /// Where the stored inputs enter the network; `None` for pixels.
    cut: Option<Cut>,
    normaliser: &'a Normaliser,
    numerics: &'a Numerics,
}

impl<'a> Feed<'a> {
    /// A split's pixels.
    pub fn pixels(split: &'a Split, normaliser: &'a Normaliser, numerics: &'a Numerics) -> Feed<'a> {
        let groups = split.groups.iter().map(|group| (&group.images, &group.labels)).collect();
        Feed { groups, cut: None, normaliser, numerics }
    }

    /// A split's activations at `cut` (grouped like its pixels, so the labels are the split's).
    pub fn features(
        split: &'a Split,
        features: &'a Features,
        cut: Cut,
        normaliser: &'a Normaliser,
        numerics: &'a Numerics,
    ) -> Feed<'a> {
        let groups = features.groups.iter().zip(&split.groups).map(|(stored, group)| (stored, &group.labels)).collect();
        Feed { groups, cut: Some(cut), normaliser, numerics }
    }

    /// The split's activations when there are some, else its pixels.
    pub fn of(
        split: &'a Split,
        features: Option<(&'a Features, Cut)>,
        normaliser: &'a Normaliser,
        numerics: &'a Numerics,
    ) -> Feed<'a> {
        match features {
            Some((features, cut)) => Feed::features(split, features, cut, normaliser, numerics),
            None => Feed::pixels(split, normaliser, numerics),
        }
    }

    fn len(&self) -> i64 {
        self.groups.iter().map(|(stored, _)| stored.size()[0]).sum()
    }

    fn device(&self) -> Device {
        self.normaliser.device
    }

    /// A stored batch as the network takes it at the feed's entry point.
    fn input(&self, stored: &Tensor) -> Tensor {
        match self.cut {
            None => self.numerics.input(self.normaliser.apply(stored)),
            Some(_) => {
                let x = stored.to_device(self.device());
                // Under autocast the next layer casts anyway; otherwise compute in float32.
                let x = if self.numerics.bf16 { x } else { x.to_kind(Kind::Float) };
                if x.dim() == 4 {
                    self.numerics.input(x)
                } else {
                    x
                }
            }
        }
    }

    fn forward(&self, network: &Network, x: &Tensor, trainable: &Trainable, train: bool) -> Tensor {
        match self.cut {
            None => network.forward(x, trainable, train),
            Some(cut) => network.forward_from(x, cut, trainable, train),
        }
    }
}

/// Loss, accuracy and probabilities over a whole split in inference mode, in the split's tensor order.
pub fn evaluate(network: &Network, feed: &Feed, batch_size: i64) -> Evaluation {
    let n = feed.len();
    if n == 0 {
        return Evaluation { loss: f64::NAN, accuracy: f64::NAN, probabilities: Vec::new() };
    }
    let device = feed.device();
    let inference = Trainable::none(network.block_count());
    tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut probabilities = Vec::new();
        let batches = feed.groups.iter().flat_map(|&(stored, labels)| {
            let size = stored.size()[0];
            (0..size).step_by(batch_size as usize).map(move |start| (stored, labels, start, batch_size.min(size - start)))
        });
        for (stored, labels, start, len) in batches {
            let images = feed.input(&stored.narrow(0, start, len));
            let labels = labels.narrow(0, start, len).to_device(device);
            let (logits, (loss, hits)) = feed.numerics.forward(|| {
                let logits = feed.forward(network, &images, &inference, false);
                let outcome = loss_and_correct(&logits, &labels);
                (logits, outcome)
            });
            loss_sum += loss * len as f64;
            correct += hits;
            let logits = logits.to_kind(Kind::Float);
            let batch = if logits.size()[1] == 1 { logits.sigmoid() } else { logits.softmax(1, Kind::Float) };
            probabilities.push(batch);
        }
        let probabilities = Tensor::cat(&probabilities, 0).to_kind(Kind::Double).to_device(Device::Cpu);
        let probabilities: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&probabilities).unwrap_or_default();
        Evaluation {
            loss: loss_sum.double_value(&[]) / n as f64,
            accuracy: correct.double_value(&[]) / n as f64,
            probabilities,
        }
    })
}

/// Test-set metrics: binary ones for a sigmoid model, per-class ones for a softmax model.
fn test_metrics(
    test: &Split,
    evaluation: &Evaluation,
    classes: usize,
) -> anyhow::Result<(Option<BinaryMetrics>, Option<MulticlassMetrics>)> {
    let labels: Vec<usize> = Vec::<i64>::try_from(&test.labels)?.into_iter().map(|l| l as usize).collect();
    if evaluation.probabilities.first().is_some_and(|row| row.len() == 1) {
        let positives: Vec<bool> = labels.iter().map(|&label| label == 1).collect();
        let scores: Vec<f64> = evaluation.probabilities.iter().map(|row| row[0]).collect();
        Ok((Some(metrics::evaluate_binary(&positives, &scores, 0.5)?), None))
    } else {
        Ok((None, Some(metrics::evaluate_multiclass(&labels, &evaluation.probabilities, classes)?)))
    }
}

/// `predictions.csv`: one row per test image with its path (relative to the dataset), true label
/// and probability (of the positive class, or of each class for a softmax model).
fn write_predictions(dir: &Path, dataset_dir: &Path, test: &Split, evaluation: &Evaluation, classes: &[String]) -> anyhow::Result<()> {
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
        csv.push_str(&format!("{},{},{}\n", csv_field(&relative), csv_field(&classes[label as usize]), values.join(",")));
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

/// Writes the VarStore's tensors as safetensors (`storage::write_atomic`, through the resumable
/// checkpoint's writer) and announces the artifact.
pub fn save_checkpoint(network: &Network, dir: &Path, name: &str) -> anyhow::Result<()> {
    resume::write_safetensors(&dir.join(name), network.vs.variables(), None)?;
    emit(&ProgressEvent::Artifact { name: name.to_string() });
    Ok(())
}

/// Writes an artifact (`storage::write_atomic`) and announces it. `name` is relative to `dir` and
/// may name a sub-folder (`cam/index.json`).
pub fn write_artifact(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    storage::write_atomic_bytes(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    emit(&ProgressEvent::Artifact { name: name.to_string() });
    Ok(())
}

/// [`write_artifact`] of a value as pretty JSON.
pub fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> anyhow::Result<()> {
    write_artifact(dir, name, &serde_json::to_vec_pretty(value)?)
}

fn load(work: &WorkerJob, split: &str, classes: &[String]) -> anyhow::Result<Split> {
    let spec = &work.spec;
    let loaded =
        load_split(&work.dataset_dir, split, classes, spec.resize(), spec.sampling(), work.threads, work.cache_dir.as_deref())
            .with_context(|| format!("loading the {split} split"))?;
    eprintln!("{split}: {}", loaded.summary());
    emit(&ProgressEvent::Data {
        split: split.to_string(),
        images: loaded.len(),
        skipped: loaded.skipped,
        seconds: loaded.seconds,
        cache: Some(loaded.cache.as_str().to_string()),
        decoded: loaded.decoded,
    });
    Ok(loaded)
}

/// Runs the whole job.
pub fn run(work: &WorkerJob) -> anyhow::Result<()> {
    let spec: &JobSpec = &work.spec;
    tch::set_num_threads(work.threads.max(1) as i32);
    let device = device_for(work.device)?;
    let device_name = match device {
        Device::Cpu => format!("cpu ({} threads)", work.threads),
        _ => String::from("cuda:0"),
    };
    let numerics = Numerics::new(spec.precision, device, CpuBf16::detect());
    eprintln!("job {} on {device_name}", work.job_id);
    eprintln!("precision: {}", numerics.describe());
    emit(&ProgressEvent::Started { device: device_name.clone(), precision: Some(numerics.describe()) });

    let dataset = datasets::describe(&spec.dataset, &work.dataset_dir)?;
    let train = load(work, "train", &dataset.classes)?;
    anyhow::ensure!(train.len() > 0, "the train split has no readable images");
    let val = match dataset.split("val") {
        Some(_) => Some(load(work, "val", &dataset.classes)?),
        None => None,
    };
    let test = load(work, "test", &dataset.classes)?;
    let sizes: Vec<i64> = train.groups.iter().map(|group| group.len()).collect();
    let lone = lone_images(&sizes, spec.batch_size as i64);
    anyhow::ensure!((lone as usize) < train.len(), "the train split's {} images all differ in shape; at least two must share one", train.len());
    if lone > 0 {
        eprintln!(
            "train: {lone} image(s) alone in their shape are not trained on (batch norm can't take the statistics of one sample); \
             they still count in the final train-set evaluation"
        );
    }
    interrupt::check("training")?;
    let (mut train, mut val, mut test) = (train, val, test);
    if device != Device::Cpu {
        // Pixels are uint8 (grayscale: one channel), so even the Kaggle set at 512 px (~1.4 GB)
        // fits; then every batch is gathered and normalised on the GPU, with no copy per step.
        let bytes = train.pixel_bytes() + val.as_ref().map_or(0, Split::pixel_bytes) + test.pixel_bytes();
        let budget = work.gpu_data_budget_bytes.map_or(GPU_DATA_BUDGET_BYTES, |budget| (budget as i64).min(GPU_DATA_BUDGET_BYTES));
        if bytes <= budget {
            for split in [Some(&mut train), val.as_mut(), Some(&mut test)].into_iter().flatten() {
                split.move_to(device);
            }
            eprintln!("data: {:.0} MB of pixels kept on {device_name} for the whole job", bytes as f64 / 1e6);
        } else {
            eprintln!(
                "data: {:.0} MB of pixels stay in host memory (over the {:.0} MB kept on the GPU); batches are copied per step",
                bytes as f64 / 1e6,
                budget as f64 / 1e6
            );
        }
    }

    tch::manual_seed(spec.seed as i64);
    let network = Network::new(spec, device);
    let normaliser = Normaliser::new(spec.backbone, device);
    if let Some(weights) = &work.weights_file {
        let ignored = network.load_backbone(weights).context("loading pretrained weights")?;
        eprintln!("loaded backbone weights from {} ({ignored} non-backbone tensors ignored)", weights.display());
    }
    if numerics.channels_last {
        let mut variables: Vec<Tensor> = network.vs.variables().into_values().collect();
        precision::set_channels_last(&mut variables);
        anyhow::ensure!(
            variables.iter().filter(|tensor| tensor.dim() == 4).all(precision::is_channels_last),
            "convolution weights did not take the channels-last layout"
        );
    }
    std::fs::create_dir_all(&work.output_dir).with_context(|| format!("creating {}", work.output_dir.display()))?;
    write_json(&work.output_dir, "spec.json", spec)?;

    let batch_size = spec.batch_size as i64;
    let (mut progress, mut resumed_optimizer) = resume_point(work, &network);
    trim_cache(work, cache_files(work, [Some(&train), val.as_ref(), Some(&test)].into_iter().flatten()));
    // The activations of the phase that ran last: the final evaluation feeds from them too.
    let mut cached: Option<(Cut, PhaseFeatures)> = None;
    for (index, phase) in spec.phases.iter().enumerate() {
        let phase_number = index as u32 + 1;
        if progress.finished(phase_number, phase.epochs) {
            continue;
        }
        interrupt::check(&format!("phase {phase_number}"))?;
        let (trainable, parameters) = network.set_trainable(&phase.train);
        // The phase a checkpoint stopped in continues with its optimizer's state; later phases
        // start afresh.
        let mut optimizer = match resumed_optimizer.take() {
            Some(optimizer) if progress.phase == phase_number => optimizer,
            _ => Optimizer::new(phase.optimizer(spec), &parameters),
        };
        let (first_epoch, mut partial) =
            if progress.phase == phase_number { (progress.epochs + 1, progress.partial) } else { (1, PartialEpoch::default()) };
        let count = Network::count(&parameters);
        eprintln!("phase {phase_number}: {} epochs, {count} trainable parameters", phase.epochs);
        emit(&ProgressEvent::Phase { phase: phase_number, epochs: phase.epochs, trainable_params: count });
        cached = match (spec.cache_features, network.cut_for(&trainable)) {
            (true, Some(cut)) => {
                let splits = Splits { train: &train, val: val.as_ref(), test: &test };
                // A phase that trains no backbone block leaves the backbone as it is, so the next
                // phase's deeper cut can be computed now, in the same pass over the frozen blocks.
                let next = spec.phases.get(index + 1).and_then(|next| network.cut_for(&network.plan(&next.train)));
                let lower = next.filter(|next| cut.block == network.block_count() && next.block < cut.block);
                Some((cut, phase_features(work, &network, cut, lower, splits, &normaliser, &numerics, phase_number)))
            }
            (enabled, _) => {
                let reason = if enabled {
                    "the phase trains the first block: nothing frozen to reuse"
                } else {
                    "cache_features is false in the spec"
                };
                eprintln!("phase {phase_number}: no activation cache ({reason}); every epoch runs the whole network");
                emit(&ProgressEvent::Features {
                    phase: phase_number,
                    cut: String::from("-"),
                    state: String::from("off"),
                    reason: Some(reason.to_string()),
                    seconds: 0.0,
                    bytes: 0,
                });
                None
            }
        };
        let train_feed = Feed::of(&train, cached.as_ref().map(|(cut, f)| (&f.train, *cut)), &normaliser, &numerics);
        let val_feed = val.as_ref().map(|val| {
            let features = cached.as_ref().and_then(|(cut, f)| f.val.as_ref().map(|features| (features, *cut)));
            Feed::of(val, features, &normaliser, &numerics)
        });
        for epoch in first_epoch..=phase.epochs {
            // After an epoch's checkpoint: that checkpoint is where the next start continues.
            interrupt::check(&format!("phase {phase_number} epoch {epoch}"))?;
            let position = (phase_number, epoch);
            let from = std::mem::take(&mut partial);
            let metrics = match train_epoch(&network, &trainable, &mut optimizer, &train_feed, batch_size, spec.seed, position, from) {
                EpochOutcome::Done(metrics) => metrics,
                EpochOutcome::Interrupted(partial) => {
                    let progress = Progress { phase: phase_number, epochs: epoch - 1, partial, ..progress };
                    checkpoint(work, &progress, &network, &optimizer)?;
                    eprintln!(
                        "SIGTERM: stopped after step {} of phase {phase_number} epoch {epoch}; the next start continues from there",
                        partial.steps
                    );
                    return Err(Interrupted.into());
                }
            };
            let started = Instant::now();
            let (val_loss, val_acc) = match &val_feed {
                Some(val) if val.len() > 0 => {
                    let evaluation = evaluate(&network, val, batch_size * 2);
                    (Some(evaluation.loss), Some(evaluation.accuracy))
                }
                _ => (None, None),
            };
            let metrics = EpochMetrics { val_loss, val_acc, seconds: metrics.seconds + started.elapsed().as_secs_f64(), ..metrics };
            eprintln!(
                "phase {phase_number} epoch {epoch}/{}: loss {:.4} acc {:.4} val_loss {} val_acc {} ({:.1}s)",
                phase.epochs,
                metrics.train_loss,
                metrics.train_acc,
                val_loss.map_or(String::from("-"), |v| format!("{v:.4}")),
                val_acc.map_or(String::from("-"), |v| format!("{v:.4}")),
                metrics.seconds
            );
            // The phase's weights file first, then the checkpoint that counts the phase as done,
            // then the epoch's report: whatever a crash interrupts, the next start redoes.
            if epoch == phase.epochs {
                let name =
                    if index + 1 == spec.phases.len() { String::from("final.safetensors") } else { format!("phase{phase_number}.safetensors") };
                save_checkpoint(&network, &work.output_dir, &name)?;
            }
            progress.curves.push(metrics.clone());
            progress = Progress { phase: phase_number, epochs: epoch, partial: PartialEpoch::default(), ..progress };
            checkpoint(work, &progress, &network, &optimizer)?;
            emit(&ProgressEvent::Epoch(metrics));
        }
    }
    let curves = progress.curves;

    // Everything is frozen now, so the last phase's activations are still exact.
    interrupt::check("the final evaluation")?;
    let started = Instant::now();
    let on_train = Feed::of(&train, cached.as_ref().map(|(cut, f)| (&f.train, *cut)), &normaliser, &numerics);
    let on_train = evaluate(&network, &on_train, batch_size * 2);
    interrupt::check("the test set's evaluation")?;
    let on_test = Feed::of(&test, cached.as_ref().map(|(cut, f)| (&f.test, *cut)), &normaliser, &numerics);
    let on_test = evaluate(&network, &on_test, batch_size * 2);
    eprintln!("evaluated the train and test sets in {:.1}s", started.elapsed().as_secs_f64());
    let (train_loss, train_acc, test_loss, test_acc) = (on_train.loss, on_train.accuracy, on_test.loss, on_test.accuracy);
    let (binary, multiclass) = if test.len() > 0 { test_metrics(&test, &on_test, dataset.classes.len())? } else { (None, None) };
    if let Some(binary) = &binary {
        eprintln!(
            "test: precision {} recall {} specificity {} f1 {} auc {} (confusion {:?})",
            show(binary.precision), show(binary.recall), show(binary.specificity), show(binary.f1), show(binary.auc), binary.confusion
        );
    }
    write_predictions(&work.output_dir, &work.dataset_dir, &test, &on_test, &dataset.classes)?;
    interrupt::check("the Grad-CAM gallery")?;
    if test.len() > 0 {
        let started = Instant::now();
        match crate::cam::write_gallery(&network, &test, &on_test, &dataset.classes, &work.dataset_dir, &normaliser, &work.output_dir) {
            Ok(count) => eprintln!("Grad-CAM: {count} heatmaps in cam/ ({:.1}s)", started.elapsed().as_secs_f64()),
            // A full disk fails the job like any other artifact's write; the gallery's own errors do not.
            Err(err) if storage::storage_error_in(&err).is_some() => return Err(err.context("writing the Grad-CAM gallery")),
            Err(err) => eprintln!("warning: no Grad-CAM gallery: {err:#}"),
        }
    }
    let final_metrics = FinalMetrics { train_loss, train_acc, test_loss, test_acc, binary, multiclass };
    eprintln!("final: train loss {train_loss:.4} acc {train_acc:.4}; test loss {test_loss:.4} acc {test_acc:.4}");
    write_json(&work.output_dir, "metrics.json", &serde_json::json!({"epochs": curves, "final": final_metrics}))?;
    emit(&ProgressEvent::Final(final_metrics));
    Ok(())
}

/// Where this start begins: the job's resumable checkpoint when there is one of this spec (loaded
/// into `network`, announced with `resumed` and every epoch of the curves so far sent again), else
/// the beginning. A checkpoint that cannot be used is logged and ignored.
fn resume_point(work: &WorkerJob, network: &Network) -> (Progress, Option<Optimizer>) {
    let fresh = || (Progress::start(&work.spec), None);
    let Some(dir) = &work.state_dir else { return fresh() };
    match resume::restore(dir, &work.spec, network) {
        Ok(Some(restored)) => {
            let progress = restored.progress;
            eprintln!(
                "resuming from {}: phase {} after epoch {}, step {} of the next",
                dir.join(resume::FILE_NAME).display(),
                progress.phase,
                progress.epochs,
                progress.partial.steps
            );
            emit(&ProgressEvent::Resumed { phase: progress.phase, epoch: progress.epochs, step: progress.partial.steps });
            for metrics in &progress.curves {
                emit(&ProgressEvent::Epoch(metrics.clone()));
            }
            (progress, restored.optimizer)
        }
        Ok(None) => fresh(),
        Err(err) => {
            eprintln!("not resuming: the checkpoint in {} is unusable ({err:#}); starting from scratch", dir.display());
            fresh()
        }
    }
}

/// Writes the resumable checkpoint (when the job has a state folder) and announces it. A storage
/// error (a full disk, a quota, EIO, a read-only filesystem) is returned, and stops the job: every
/// later write would fail too, and the previous checkpoint is intact (`storage::write_atomic`), so
/// the job resumes from it once the disk is fixed. Any other failed write is logged, not fatal:
/// training goes on, and the previous checkpoint stands.
fn checkpoint(work: &WorkerJob, progress: &Progress, network: &Network, optimizer: &Optimizer) -> anyhow::Result<()> {
    let Some(dir) = &work.state_dir else { return Ok(()) };
    let started = Instant::now();
    match resume::save(dir, progress, network, optimizer) {
        Ok(()) => {
            let seconds = started.elapsed().as_secs_f64();
            if seconds >= 1.0 {
                eprintln!("checkpoint written in {seconds:.1}s");
            }
            emit(&ProgressEvent::Checkpoint { phase: progress.phase, epoch: progress.epochs, step: progress.partial.steps });
        }
        Err(err) if storage::storage_error_in(&err).is_some() => return Err(err),
        Err(err) => eprintln!("warning: no resumable checkpoint this time: {err:#}"),
    }
    Ok(())
}

/// A seed derived from the job's seed and a position (phase, epoch[, step]) by SplitMix64's mixing,
/// so neighbouring positions get unrelated streams and no generator state has to be saved.
pub fn derived_seed(seed: u64, position: &[u64]) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    position.iter().fold(mix(seed), |state, &part| mix(state ^ mix(part)))
}

/// A job's splits.
#[derive(Clone, Copy)]
struct Splits<'a> {
    train: &'a Split,
    val: Option<&'a Split>,
    test: &'a Split,
}

/// A phase's activations of every split.
pub struct PhaseFeatures {
    train: Features,
    val: Option<Features>,
    test: Features,
}

/// Most activation bytes a GPU job keeps on its GPU; beyond it they stay in host memory (mapped)
/// and each batch is copied.
const GPU_FEATURE_BUDGET_BYTES: u64 = 8 << 30;

/// Reads or computes the activations at `cut` of every split, reports how (log line and a
/// `features` event), places them on the job's device when they fit, and trims the cache.
#[allow(clippy::too_many_arguments)]
fn phase_features(
    work: &WorkerJob,
    network: &Network,
    cut: Cut,
    lower: Option<Cut>,
    splits: Splits,
    normaliser: &Normaliser,
    numerics: &Numerics,
    phase: u32,
) -> PhaseFeatures {
    let started = Instant::now();
    let cut_name = network.cut_name(cut);
    let kind = features::dtype(numerics);
    let features_dir = work.cache_dir.as_ref().map(|dir| dir.join("features"));
    // Only worth hashing the weights when the result can be shared.
    let state = features_dir.as_ref().map(|_| features::state_hash(network));
    let batch = (work.spec.batch_size as i64 * 2).clamp(1, 64);
    let (mut sources, mut files) = (Vec::new(), Vec::new());
    // A full disk makes room in the cache, but not by evicting this job's own files.
    let pixel_entries = cache_files(work, [Some(splits.train), splits.val, Some(splits.test)].into_iter().flatten());
    let mut obtain = |name: &str, split: &Split| {
        let pixels_key = match &split.cache {
            CacheOutcome::Hit(key) | CacheOutcome::Built(key) => Some(key.as_str()),
            CacheOutcome::Off => None,
        };
        let entry_for = |cut_name: &str| match (&features_dir, &state, pixels_key) {
            (Some(dir), Some(state), Some(pixels_key)) => {
                Some((dir.as_path(), features::key(name, pixels_key, work.spec.backbone.name(), cut_name, kind, state)))
            }
            _ => None,
        };
        let entry = entry_for(&cut_name);
        // Only worth going through the lower cut when its activations can be kept for later.
        let lower = lower.map(|lower| (lower, entry_for(&network.cut_name(lower)))).filter(|(_, entry)| entry.is_some());
        let keep: Vec<std::path::PathBuf> = pixel_entries.iter().chain(&files).cloned().collect();
        let (features, source, used) = features::obtain(network, split, cut, normaliser, numerics, batch, entry, lower, &keep);
        sources.push((name.to_string(), source, features.bytes()));
        files.extend(used);
        features
    };
    let mut phase_features = PhaseFeatures {
        train: obtain("train", splits.train),
        val: splits.val.map(|val| obtain("val", val)),
        test: obtain("test", splits.test),
    };
    let bytes: u64 = sources.iter().map(|(_, _, bytes)| bytes).sum();
    if normaliser.device != Device::Cpu {
        let pixels_on_gpu: u64 = [Some(splits.train), splits.val, Some(splits.test)]
            .into_iter()
            .flatten()
            .filter(|split| split.groups.first().is_some_and(|group| group.images.device() != Device::Cpu))
            .map(|split| split.pixel_bytes().max(0) as u64)
            .sum();
        // On a shared GPU, pixels and activations share the job's data budget.
        let budget = match work.gpu_data_budget_bytes {
            Some(budget) => budget.saturating_sub(pixels_on_gpu).min(GPU_FEATURE_BUDGET_BYTES),
            None => GPU_FEATURE_BUDGET_BYTES,
        };
        let device = if bytes <= budget { normaliser.device } else { Device::Cpu };
        for features in [Some(&mut phase_features.train), phase_features.val.as_mut(), Some(&mut phase_features.test)].into_iter().flatten() {
            if device == Device::Cpu {
                features.groups = features.groups.iter().map(|group| group.to_device(Device::Cpu)).collect();
            } else {
                features.move_to(device);
            }
        }
    }
    let state = if sources.iter().all(|(_, source, _)| *source == Source::Hit) {
        "hit"
    } else if sources.iter().any(|(_, source, _)| *source == Source::Built) {
        "built"
    } else {
        "memory"
    };
    let seconds = started.elapsed().as_secs_f64();
    let detail: Vec<String> = sources.iter().map(|(name, source, bytes)| format!("{name} {source:?} ({:.1} MB)", *bytes as f64 / 1e6)).collect();
    let ahead = match lower {
        Some(lower) if state != "hit" => format!(" (through {}, which the next phase reuses)", network.cut_name(lower)),
        _ => String::new(),
    };
    eprintln!(
        "phase {phase}: activation cache at {cut_name} ({}): {state} in {seconds:.1}s{ahead} — {}",
        features::dtype_name(kind),
        detail.join(", ").to_lowercase()
    );
    emit(&ProgressEvent::Features { phase, cut: cut_name, state: state.to_string(), reason: None, seconds, bytes });
    trim_cache(work, files);
    phase_features
}

/// The pixel cache entries these splits came from.
fn cache_files<'a>(work: &WorkerJob, splits: impl Iterator<Item = &'a Split>) -> Vec<std::path::PathBuf> {
    let Some(dir) = &work.cache_dir else { return Vec::new() };
    splits
        .filter_map(|split| match &split.cache {
            CacheOutcome::Hit(key) | CacheOutcome::Built(key) => Some(cache::entry_path(dir, key)),
            CacheOutcome::Off => None,
        })
        .collect()
}

/// Evicts least recently used cache entries beyond the job's budget, keeping `keep`.
fn trim_cache(work: &WorkerJob, keep: Vec<std::path::PathBuf>) {
    if let (Some(dir), Some(budget)) = (&work.cache_dir, work.cache_budget_bytes) {
        let eviction = storage::evict(dir, budget, &keep);
        cache::log_eviction(&eviction, "over the budget");
        if eviction.removed > 0 {
            eprintln!(
                "cache: evicted {} entries ({:.0} MB) to stay under {:.0} MB",
                eviction.removed,
                eviction.freed as f64 / 1e6,
                budget as f64 / 1e6
            );
        }
    }
}

/// One training batch: `len` images of shape group `group`, from `start` in that group's shuffled
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedBatch {
    /// Index of the shape group.
    pub group: usize,
    /// Offset into the group's shuffled order.
    pub start: i64,
    /// Images in the batch.
    pub len: i64,
}

/// One epoch's batches over shape groups of `sizes` images: each group's images are shuffled and
/// cut into batches ([`batch_bounds`]); with several groups the batches' order is shuffled too, so
/// shapes interleave through the epoch. Returns each group's shuffled order and the batches.
pub fn epoch_plan(sizes: &[i64], batch_size: i64, rng: &mut ChaCha8Rng) -> (Vec<Vec<i64>>, Vec<PlannedBatch>) {
    let mut orders = Vec::with_capacity(sizes.len());
    let mut batches = Vec::new();
    for (group, &n) in sizes.iter().enumerate() {
        let mut order: Vec<i64> = (0..n).collect();
        order.shuffle(rng);
        orders.push(order);
        batches.extend(batch_bounds(n, batch_size).into_iter().map(|(start, len)| PlannedBatch { group, start, len }));
    }
    if sizes.len() > 1 {
        batches.shuffle(rng);
    }
    (orders, batches)
}

/// `(start, len)` of each training batch. A trailing batch of one image is merged into the one
/// before: batch norm cannot take batch statistics of a single sample (its running variance
/// would become NaN). For the same reason a group of one image (a shape only one film of a
/// variable-size split has) gets no batch at all: [`lone_images`] counts them for the log.
pub fn batch_bounds(n: i64, batch_size: i64) -> Vec<(i64, i64)> {
    if n == 1 && batch_size > 1 {
        return Vec::new();
    }
    let mut bounds: Vec<(i64, i64)> = (0..n).step_by(batch_size as usize).map(|s| (s, batch_size.min(n - s))).collect();
    if bounds.len() > 1 && bounds.last().is_some_and(|&(_, len)| len == 1) {
        bounds.pop();
        bounds.last_mut().expect("more than one batch").1 += 1;
    }
    bounds
}

/// Images of `sizes` (shape groups) that no training batch holds: groups of one image.
pub fn lone_images(sizes: &[i64], batch_size: i64) -> i64 {
    sizes.iter().filter(|&&n| batch_bounds(n, batch_size).is_empty()).sum()
}

fn show(value: Option<f64>) -> String {
    value.map_or(String::from("undefined"), |v| format!("{v:.4}"))
}

/// How an epoch's training ended.
enum EpochOutcome {
    /// Every batch trained: the epoch's training metrics (no validation yet).
    Done(EpochMetrics),
    /// SIGTERM arrived: the batches done so far and their sums, for the checkpoint.
    Interrupted(PartialEpoch),
}

/// Trains one epoch, or the rest of one stopped after `from.steps` batches. The batch plan comes
/// from (seed, phase, epoch) and libtorch is reseeded from (seed, phase, epoch, step) before each
/// step, so the batches skipped on a resume are exactly the ones trained before the stop.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    network: &Network,
    trainable: &Trainable,
    optimizer: &mut Optimizer,
    train: &Feed,
    batch_size: i64,
    seed: u64,
    (phase, epoch): (u32, u32),
    from: PartialEpoch,
) -> EpochOutcome {
    let started = Instant::now();
    let device = train.device();
    let sizes: Vec<i64> = train.groups.iter().map(|(stored, _)| stored.size()[0]).collect();
    let n = train.len() - lone_images(&sizes, batch_size);
    let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(seed, &[phase as u64, epoch as u64]));
    let (orders, batches) = epoch_plan(&sizes, batch_size, &mut rng);
    let orders: Vec<Tensor> =
        orders.iter().zip(&train.groups).map(|(order, (stored, _))| Tensor::from_slice(order).to_device(stored.device())).collect();
    let steps = batches.len() as u32;
    let mut done = from.images;
    let seconds = |started: Instant| from.seconds + started.elapsed().as_secs_f64();
    // Sums stay on the device: no host sync per step. A resumed epoch starts from the saved sums
    // (float32 values, carried exactly through f64).
    let mut loss_sum = Tensor::full([], from.loss_sum, (Kind::Float, device));
    let mut correct = Tensor::full([], from.correct, (Kind::Int64, device));
    let mut last_event = Instant::now();
    for (step, &PlannedBatch { group, start, len }) in (0u32..).zip(&batches).skip(from.steps as usize) {
        tch::manual_seed(derived_seed(seed, &[phase as u64, epoch as u64, step as u64]) as i64);
        let index = orders[group].narrow(0, start, len);
        let (stored, labels) = train.groups[group];
        let images = train.input(&stored.index_select(0, &index));
        // The labels may live elsewhere than the stored inputs: a GPU job keeps its pixels (and
        // their labels) on the GPU but may stream activations too large for its share from host
        // memory. (Found by the packed GPU run of the matrix: "index is on cpu".)
        let labels = labels.index_select(0, &index.to_device(labels.device())).to_device(device);
        done += len;
        let (loss, hits) = train.numerics.forward(|| loss_and_correct(&train.forward(network, &images, trainable, true), &labels));
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        tch::no_grad(|| {
            loss_sum += loss.detach() * len as f64;
            correct += hits;
        });
        if last_event.elapsed() >= STEP_EVENT_INTERVAL || step + 1 == steps {
            last_event = Instant::now();
            emit(&ProgressEvent::Step {
                phase,
                epoch,
                step: step + 1,
                steps,
                images_per_sec: (done - from.images) as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
        }
        if interrupt::requested() {
            return EpochOutcome::Interrupted(PartialEpoch {
                steps: step + 1,
                loss_sum: loss_sum.double_value(&[]),
                correct: correct.int64_value(&[]),
                images: done,
                seconds: seconds(started),
            });
        }
    }
    EpochOutcome::Done(EpochMetrics {
        phase,
        epoch,
        train_loss: loss_sum.double_value(&[]) / n as f64,
        train_acc: correct.double_value(&[]) / n as f64,
        val_loss: None,
        val_acc: None,
        seconds: seconds(started),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(crate::precision::is_channels_last(weight) && !weight.is_contiguous(), "the test needs a channels-last weight");
        save_checkpoint(&network, dir.path(), "channels-last.safetensors").unwrap();
        let plain = Tensor::read_safetensors(dir.path().join("plain.safetensors")).unwrap();
        let other: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.path().join("channels-last.safetensors")).unwrap().into_iter().collect();
        assert_eq!(plain.len(), other.len());
        for (name, tensor) in &plain {
            assert!(tensor.equal(&other[name]), "{name} differs");
        }
    }

    #[test]
    fn batches_cover_every_image_once_and_never_hold_one_alone() {
        assert_eq!(batch_bounds(9, 4), [(0, 4), (4, 5)]);
        assert_eq!(batch_bounds(8, 4), [(0, 4), (4, 4)]);
        assert_eq!(batch_bounds(10, 4), [(0, 4), (4, 4), (8, 2)]);
        assert_eq!(batch_bounds(1, 4), [], "one image alone is no batch");
        assert_eq!(batch_bounds(3, 1), [(0, 1), (1, 2)], "batch_size 1 is what the spec asked for");
        assert_eq!(batch_bounds(5216, 20).len(), 261);
        assert_eq!(lone_images(&[7, 1, 3, 1], 4), 2);
        assert_eq!(lone_images(&[7, 3], 4), 0);
    }

    #[test]
    fn an_epoch_plan_covers_every_image_of_every_group_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (orders, batches) = epoch_plan(&[7, 3, 10], 4, &mut rng);
        let mut seen: Vec<Vec<bool>> = [7, 3, 10].iter().map(|&n| vec![false; n]).collect();
        for batch in &batches {
            assert!(batch.len >= 2, "{batch:?}");
            for &image in &orders[batch.group][batch.start as usize..(batch.start + batch.len) as usize] {
                assert!(!seen[batch.group][image as usize], "image seen twice");
                seen[batch.group][image as usize] = true;
            }
        }
        assert!(seen.iter().flatten().all(|&s| s), "every image seen");
        assert_eq!(batches.len(), 2 + 1 + 3);
        // Shapes interleave: the batch order is not simply group after group.
        let groups: Vec<usize> = batches.iter().map(|batch| batch.group).collect();
        let mut sorted = groups.clone();
        sorted.sort();
        let (_, again) = epoch_plan(&[7, 3, 10], 4, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(batches, again, "seeded");
        assert_ne!(groups, sorted, "{groups:?}");
    }

    #[test]
    fn a_gray_batch_normalises_like_its_three_channel_copy() {
        let gray = Tensor::from_slice(&[0u8, 60, 128, 255]).view([1, 1, 2, 2]);
        let rgb = gray.expand([1, 3, 2, 2], false).contiguous();
        let normaliser = Normaliser::new(Backbone::Vgg16, Device::Cpu);
        let ours = normaliser.apply(&gray);
        assert_eq!(ours.size(), [1, 3, 2, 2]);
        assert!(ours.equal(&normaliser.apply(&rgb)));
    }

    #[test]
    fn normalising_matches_the_textbook_formula() {
        let pixels = Tensor::from_slice(&[0u8, 128, 255, 10, 20, 30]).view([1, 3, 1, 2]);
        for backbone in Backbone::ALL {
            let info = backbone.info();
            let ours = Normaliser::new(backbone, Device::Cpu).apply(&pixels);
            let mean = Tensor::from_slice(&info.input_mean).to_kind(Kind::Float).view([1, 3, 1, 1]);
            let std = Tensor::from_slice(&info.input_std).to_kind(Kind::Float).view([1, 3, 1, 1]);
            let expected = (pixels.to_kind(Kind::Float) / 255.0 - mean) / std;
            assert!(ours.allclose(&expected, 1e-5, 1e-5, false), "{}", backbone.name());
        }
    }

    #[test]
    fn binary_loss_and_accuracy_use_logits() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5]).view([3, 1]);
        let labels = Tensor::from_slice(&[1i64, 0, 0]);
        let (loss, correct) = loss_and_correct(&logits, &labels);
        assert_eq!(correct.int64_value(&[]), 2);
        let expected = ((1.0 + (-2.0f64).exp()).ln() + (1.0 + (-1.0f64).exp()).ln() + (1.0 + 0.5f64.exp()).ln()) / 3.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6);
    }
}
