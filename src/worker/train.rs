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

use crate::artifacts::{save_checkpoint, write_json, write_predictions};
use crate::cache;
use crate::data::{load_split, CacheOutcome, Split};
use crate::emit::emit;
use crate::epochs::{derived_seed, epoch_plan, lone_images, PlannedBatch};
use crate::evaluate::{evaluate, loss_and_correct, test_metrics, Feed};
use crate::features::{self, Features, Source};
use crate::interrupt::{self, Interrupted};
use crate::model::{Cut, Network, Trainable};
use crate::normalise::Normaliser;
use crate::optim::Optimizer;
use crate::precision::{self, CpuBf16, Numerics};
use crate::resume::{self, PartialEpoch, Progress};
use anyhow::Context;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use trainq::catalog::datasets;
use trainq::domain::spec::JobSpec;
use trainq::domain::worker_protocol::{EpochMetrics, FinalMetrics, WorkerDevice, WorkerJob};
use trainq::domain::ProgressEvent;
use trainq::files;

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

fn load(work: &WorkerJob, split: &str, classes: &[String]) -> anyhow::Result<Split> {
    let spec = &work.spec;
    let loaded = load_split(
        &work.dataset_dir,
        split,
        classes,
        spec.resize(),
        spec.sampling(),
        work.threads,
        work.cache_dir.as_deref(),
    )
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
    anyhow::ensure!(
        (lone as usize) < train.len(),
        "the train split's {} images all differ in shape; at least two must share one",
        train.len()
    );
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
        let budget = work
            .gpu_data_budget_bytes
            .map_or(GPU_DATA_BUDGET_BYTES, |budget| (budget as i64).min(GPU_DATA_BUDGET_BYTES));
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
    // `init_from`: another job's weights, backbone and head, over whatever `weights` gave.
    if let Some(checkpoint) = &work.init_checkpoint {
        let count = network.load_checkpoint(checkpoint).context("loading the weights of the job in init_from")?;
        eprintln!("started from {} ({count} tensors)", checkpoint.display());
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
        let (first_epoch, mut partial) = if progress.phase == phase_number {
            (progress.epochs + 1, progress.partial)
        } else {
            (1, PartialEpoch::default())
        };
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
            let metrics = match train_epoch(
                &network,
                &trainable,
                &mut optimizer,
                &train_feed,
                batch_size,
                spec.seed,
                position,
                from,
            ) {
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
            let metrics = EpochMetrics {
                val_loss,
                val_acc,
                seconds: metrics.seconds + started.elapsed().as_secs_f64(),
                ..metrics
            };
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
            // Which ones the spec's `checkpoints` says: the final weights always.
            let planned: Vec<u32> = spec.phases.iter().map(|phase| phase.epochs).collect();
            if let Some(name) = spec.checkpoints.file_after(index, epoch, &planned) {
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
    let (train_loss, train_acc, test_loss, test_acc) =
        (on_train.loss, on_train.accuracy, on_test.loss, on_test.accuracy);
    let (binary, multiclass) =
        if test.len() > 0 { test_metrics(&test, &on_test, dataset.classes.len())? } else { (None, None) };
    if let Some(binary) = &binary {
        eprintln!(
            "test: precision {} recall {} specificity {} f1 {} auc {} (confusion {:?})",
            show(binary.precision),
            show(binary.recall),
            show(binary.specificity),
            show(binary.f1),
            show(binary.auc),
            binary.confusion
        );
    }
    write_predictions(&work.output_dir, &work.dataset_dir, &test, &on_test, &dataset.classes)?;
    interrupt::check("the Grad-CAM gallery")?;
    if test.len() > 0 {
        let started = Instant::now();
        match crate::cam::write_gallery(
            &network,
            &test,
            &on_test,
            &dataset.classes,
            &work.dataset_dir,
            &normaliser,
            &work.output_dir,
        ) {
            Ok(count) => eprintln!("Grad-CAM: {count} heatmaps in cam/ ({:.1}s)", started.elapsed().as_secs_f64()),
            // A full disk fails the job like any other artifact's write; the gallery's own errors do not.
            Err(err) if files::storage_error_in(&err).is_some() => {
                return Err(err.context("writing the Grad-CAM gallery"))
            }
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
            emit(&ProgressEvent::Resumed {
                phase: progress.phase,
                epoch: progress.epochs,
                step: progress.partial.steps,
            });
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
/// later write would fail too, and the previous checkpoint is intact (`files::write_atomic`), so
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
            emit(&ProgressEvent::Checkpoint {
                phase: progress.phase,
                epoch: progress.epochs,
                step: progress.partial.steps,
            });
        }
        Err(err) if files::storage_error_in(&err).is_some() => return Err(err),
        Err(err) => eprintln!("warning: no resumable checkpoint this time: {err:#}"),
    }
    Ok(())
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
        let lower =
            lower.map(|lower| (lower, entry_for(&network.cut_name(lower)))).filter(|(_, entry)| entry.is_some());
        let keep: Vec<std::path::PathBuf> = pixel_entries.iter().chain(&files).cloned().collect();
        let (features, source, used) =
            features::obtain(network, split, cut, normaliser, numerics, batch, entry, lower, &keep);
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
    if normaliser.device() != Device::Cpu {
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
        let device = if bytes <= budget { normaliser.device() } else { Device::Cpu };
        for features in [Some(&mut phase_features.train), phase_features.val.as_mut(), Some(&mut phase_features.test)]
            .into_iter()
            .flatten()
        {
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
    let detail: Vec<String> = sources
        .iter()
        .map(|(name, source, bytes)| format!("{name} {source:?} ({:.1} MB)", *bytes as f64 / 1e6))
        .collect();
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
        let eviction = files::evict(dir, budget, &keep);
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
    let orders: Vec<Tensor> = orders
        .iter()
        .zip(&train.groups)
        .map(|(order, (stored, _))| Tensor::from_slice(order).to_device(stored.device()))
        .collect();
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
        let (loss, hits) =
            train.numerics.forward(|| loss_and_correct(&train.forward(network, &images, trainable, true), &labels));
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
