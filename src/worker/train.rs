//! One job from start to end: load the splits, build the network, run each phase with a fresh
//! optimizer over exactly the phase's trainable parameters, checkpoint after each phase, evaluate.
//!
//! `run` reads as the job's phases, each a method of one of two small structs: [`Job`] holds what
//! every phase shares (the job, its splits, the network, normaliser and numerics) and prepares
//! them, trains each spec phase, evaluates and writes the results; [`PhaseRun`] holds one phase
//! under way (what it trains, its feeds, its optimizer) and runs its epochs and their steps. The
//! order of the statements is the order of the job's log lines, events and files, and of its
//! seeds and tensor operations: moving one moves what a user (or a resumed run) sees.
//!
//! Crash safety: at the end of every epoch (and when SIGTERM stops a step) the whole training
//! state goes into the job's resumable checkpoint (`resume.rs`); a restarted worker continues from
//! it. Randomness needs no saved RNG state for that: each epoch's shuffle comes from a generator
//! seeded with (spec seed, phase, epoch), and libtorch's generator (dropout) is reseeded from
//! (spec seed, phase, epoch, step) before every training step, so a resumed run computes exactly
//! what the uninterrupted run would have (on the CPU bit for bit; on a GPU up to cuDNN's own
//! non-determinism).

use crate::artifacts::{save_checkpoint, write_json, write_predictions};
use crate::augment::Augmenter;
use crate::cache;
use crate::data::{load_split, CacheOutcome, Split};
use crate::emit::emit;
use crate::epochs::{derived_seed, epoch_plan, lone_images, PlannedBatch};
use crate::evaluate::{evaluate, test_metrics, weighted_loss_and_correct, Evaluation, Feed};
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
use trainq::catalog::datasets::{self, DatasetInfo};
use trainq::domain::job::SKIPPED_FILES_SHOWN;
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

/// Runs the whole job, one phase of its life after the other: prepare (device, data, network,
/// output folder), find where this start begins, train each phase of the spec (its activations,
/// then its epochs), evaluate the train and test sets, and write what the job leaves behind.
pub fn run(work: &WorkerJob) -> anyhow::Result<()> {
    let job = Job::prepare(work)?;
    let (mut progress, mut resumed_optimizer) = resume_point(work, &job.network);
    trim_cache(work, cache_files(work, job.splits.borrowed().all()));
    // The activations of the phase that ran last: the final evaluation feeds from them too.
    let mut cached: Option<(Cut, PhaseFeatures)> = None;
    for index in 0..work.spec.phases.len() {
        job.train_phase(index, &mut progress, &mut resumed_optimizer, &mut cached)?;
    }
    // Everything is frozen now, so the last phase's activations are still exact.
    let (on_train, on_test) = job.evaluate_train_and_test(cached.as_ref())?;
    let final_metrics = job.final_metrics(&on_train, &on_test)?;
    job.write_predictions_and_gallery(&on_test)?;
    job.report_final(progress.curves, final_metrics)
}

/// Everything the phases of a job share, prepared once at its start: the job, its dataset's
/// classes, its splits, the network with its input normaliser and numerics.
struct Job<'a> {
    work: &'a WorkerJob,
    /// The dataset's class names; index = label.
    classes: Vec<String>,
    splits: LoadedSplits,
    network: Network,
    normaliser: Normaliser,
    numerics: Numerics,
    /// The spec's `augment`, when it changes anything: every training batch goes through it.
    augmenter: Option<Augmenter>,
    /// The spec's `class_weight`, one weight per class on the job's device: the training loss
    /// is weighted by it.
    class_weights: Option<Tensor>,
}

impl<'a> Job<'a> {
    /// Announces the device and precision (`started`), loads the splits (keeping them on the GPU
    /// when they fit), builds the network and writes `spec.json`, in the order the log tells it.
    fn prepare(work: &'a WorkerJob) -> anyhow::Result<Job<'a>> {
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
        let mut splits = LoadedSplits::load(work, &dataset)?;
        interrupt::check("training")?;
        if device != Device::Cpu {
            splits.keep_on_gpu_when_they_fit(work, device, &device_name);
        }
        let (network, normaliser) = build_network(work, device, &numerics)?;
        std::fs::create_dir_all(&work.output_dir).with_context(|| format!("creating {}", work.output_dir.display()))?;
        write_json(&work.output_dir, "spec.json", spec)?;
        let augmenter = Augmenter::for_spec(spec);
        if let Some(augmenter) = &augmenter {
            eprintln!(
                "augment: {} on the training images only, drawn anew for every image of every step from the seed",
                augmenter.describe()
            );
        }
        let class_weights = class_weights_for(spec, &dataset.classes, &splits.train, device)?;
        Ok(Job { work, classes: dataset.classes, splits, network, normaliser, numerics, augmenter, class_weights })
    }

    /// The spec's batch size, as libtorch counts sizes (`i64`).
    fn batch_size(&self) -> i64 {
        self.work.spec.batch_size as i64
    }

    /// What `split` feeds the network: its activations in `cached` (the ones `pick` chooses) when
    /// there are some, else its pixels.
    fn feed<'s>(
        &'s self,
        split: &'s Split,
        cached: Option<&'s (Cut, PhaseFeatures)>,
        pick: fn(&PhaseFeatures) -> Option<&Features>,
    ) -> Feed<'s> {
        let features = cached.and_then(|(cut, features)| pick(features).map(|picked| (picked, *cut)));
        Feed::of(split, features, &self.normaliser, &self.numerics)
    }

    /// Trains phase `index` (0-based) from where `progress` stands, with a fresh optimizer over
    /// exactly the phase's trainable parameters (or the resumed one, in the phase a checkpoint
    /// stopped in). A phase that is already done is skipped. `cached` becomes the phase's
    /// activations, replacing the previous phase's once the new ones are ready.
    fn train_phase(
        &self,
        index: usize,
        progress: &mut Progress,
        resumed_optimizer: &mut Option<Optimizer>,
        cached: &mut Option<(Cut, PhaseFeatures)>,
    ) -> anyhow::Result<()> {
        let spec = &self.work.spec;
        let phase = &spec.phases[index];
        let number = index as u32 + 1;
        if progress.finished(number, phase.epochs) {
            return Ok(());
        }
        interrupt::check(&format!("phase {number}"))?;
        let (trainable, parameters) = self.network.set_trainable(&phase.train);
        // The phase a checkpoint stopped in continues with its optimizer's state; later phases
        // start afresh.
        let mut optimizer = match resumed_optimizer.take() {
            Some(optimizer) if progress.phase == number => optimizer,
            _ => Optimizer::new(phase.optimizer(spec), &parameters),
        };
        let (first_epoch, partial) = if progress.phase == number {
            (progress.epochs + 1, progress.partial)
        } else {
            (1, PartialEpoch::default())
        };
        let count = Network::count(&parameters);
        eprintln!("phase {number}: {} epochs, {count} trainable parameters", phase.epochs);
        emit(&ProgressEvent::Phase { phase: number, epochs: phase.epochs, trainable_params: count });
        *cached = self.phase_activations(index, &trainable);
        let cached = cached.as_ref();
        // On a bf16 CPU: a head trained alone on cached activations steps in float32 (a few
        // hundred thousand multiply-adds, where autocast's casts cost more than bf16 saves: Q1's
        // phase-1 step measured 1.29× faster); anything else trains on bf16 working copies of its
        // weights (`Optimizer::keep_bf16_weights`: 1.18× on Q1's phase 2, the same weights).
        let float32_head =
            self.numerics.bf16_weights() && cached.is_some_and(|(cut, _)| cut.block >= self.network.block_count());
        if float32_head {
            eprintln!("phase {number}: the head trains in float32 on the cached activations (bf16 buys nothing there)");
        } else if self.numerics.bf16_weights() {
            optimizer.keep_bf16_weights();
        }
        let train_feed = self.feed(&self.splits.train, cached, |features| Some(&features.train));
        let val_feed = self.splits.val.as_ref().map(|val| self.feed(val, cached, |features| features.val.as_ref()));
        let mut phase_run = PhaseRun {
            job: self,
            index,
            number,
            epochs: phase.epochs,
            trainable,
            optimizer,
            float32_head,
            train_feed,
            val_feed,
        };
        phase_run.train_epochs(first_epoch, partial, progress)
    }

    /// The activations phase `index` (0-based) trains from, when the spec caches them and the
    /// phase leaves a frozen prefix of the network; otherwise none, reported as such (log line and
    /// an `off` features event).
    fn phase_activations(&self, index: usize, trainable: &Trainable) -> Option<(Cut, PhaseFeatures)> {
        let spec = &self.work.spec;
        let network = &self.network;
        let number = index as u32 + 1;
        let augmented = self.augmenter.is_some();
        match (spec.cache_features && !augmented, network.cut_for(trainable)) {
            (true, Some(cut)) => {
                // A phase that trains no backbone block leaves the backbone as it is, so the next
                // phase's deeper cut can be computed now, in the same pass over the frozen blocks.
                let next = spec.phases.get(index + 1).and_then(|next| network.cut_for(&network.plan(&next.train)));
                let lower = next.filter(|next| cut.block == network.block_count() && next.block < cut.block);
                Some((cut, self.phase_features(cut, lower, number)))
            }
            (_, cut) => {
                let reason = if !spec.cache_features {
                    "cache_features is false in the spec"
                } else if cut.is_none() {
                    "the phase trains the first block: nothing frozen to reuse"
                } else {
                    // `cache_features: true` with `augment` is allowed: this says what it means.
                    "augment changes every training image at every step, so the frozen layers run on each augmented batch (the pixel cache still serves the pixels)"
                };
                eprintln!("phase {number}: no activation cache ({reason}); every epoch runs the whole network");
                emit(&ProgressEvent::Features {
                    phase: number,
                    cut: String::from("-"),
                    state: String::from("off"),
                    reason: Some(reason.to_string()),
                    seconds: 0.0,
                    bytes: 0,
                });
                None
            }
        }
    }

    /// Reads or computes the activations at `cut` of every split, places them on the job's device
    /// when they fit, reports how (log line and a `features` event), and trims the cache.
    fn phase_features(&self, cut: Cut, lower: Option<Cut>, phase: u32) -> PhaseFeatures {
        let started = Instant::now();
        let ObtainedFeatures { mut features, sources, files } = self.obtain_features(cut, lower);
        let bytes: u64 = sources.iter().map(|(_, _, bytes)| bytes).sum();
        if self.normaliser.device() != Device::Cpu {
            self.place_features(&mut features, bytes);
        }
        self.report_features(phase, cut, lower, &sources, started.elapsed().as_secs_f64(), bytes);
        trim_cache(self.work, files);
        features
    }

    /// Reads each split's activations at `cut` from the cache, or computes them (through `lower`
    /// when the next phase can reuse those), keeping the cache entries this job uses.
    fn obtain_features(&self, cut: Cut, lower: Option<Cut>) -> ObtainedFeatures {
        let (work, network) = (self.work, &self.network);
        let cut_name = network.cut_name(cut);
        let kind = features::dtype(&self.numerics);
        let features_dir = work.cache_dir.as_ref().map(|dir| dir.join("features"));
        // Only worth hashing the weights when the result can be shared.
        let state = features_dir.as_ref().map(|_| features::state_hash(network));
        let batch = (work.spec.batch_size as i64 * 2).clamp(1, 64);
        let (mut sources, mut files) = (Vec::new(), Vec::new());
        // A full disk makes room in the cache, but not by evicting this job's own files.
        let pixel_entries = cache_files(work, self.splits.borrowed().all());
        let mut obtain = |name: &str, split: &Split| {
            let pixels_key = match &split.cache {
                CacheOutcome::Hit(key) | CacheOutcome::Built(key) => Some(key.as_str()),
                CacheOutcome::Off => None,
            };
            let entry_for = |cut_name: &str| match (&features_dir, &state, pixels_key) {
                (Some(dir), Some(state), Some(pixels_key)) => Some((
                    dir.as_path(),
                    features::key(name, pixels_key, work.spec.backbone.name(), cut_name, kind, state),
                )),
                _ => None,
            };
            let entry = entry_for(&cut_name);
            // Only worth going through the lower cut when its activations can be kept for later.
            let lower =
                lower.map(|lower| (lower, entry_for(&network.cut_name(lower)))).filter(|(_, entry)| entry.is_some());
            let keep: Vec<std::path::PathBuf> = pixel_entries.iter().chain(&files).cloned().collect();
            let (features, source, used) =
                features::obtain(network, split, cut, &self.normaliser, &self.numerics, batch, entry, lower, &keep);
            sources.push((name.to_string(), source, features.bytes()));
            files.extend(used);
            features
        };
        let features = PhaseFeatures {
            train: obtain("train", &self.splits.train),
            val: self.splits.val.as_ref().map(|val| obtain("val", val)),
            test: obtain("test", &self.splits.test),
        };
        ObtainedFeatures { features, sources, files }
    }

    /// Moves a GPU job's activations (`bytes` of them) onto its GPU when they fit its share, or
    /// into host memory, from where each batch is copied.
    fn place_features(&self, phase_features: &mut PhaseFeatures, bytes: u64) {
        let pixels_on_gpu: u64 = self
            .splits
            .borrowed()
            .all()
            .filter(|split| split.groups.first().is_some_and(|group| group.images.device() != Device::Cpu))
            .map(|split| split.pixel_bytes().max(0) as u64)
            .sum();
        // On a shared GPU, pixels and activations share the job's data budget.
        let budget = match self.work.gpu_data_budget_bytes {
            Some(budget) => budget.saturating_sub(pixels_on_gpu).min(GPU_FEATURE_BUDGET_BYTES),
            None => GPU_FEATURE_BUDGET_BYTES,
        };
        let device = if bytes <= budget { self.normaliser.device() } else { Device::Cpu };
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

    /// Reports how a phase got its activations: a log line and a `features` event whose state is
    /// `hit` (all read from the cache), `built` (some computed and stored) or `memory`.
    fn report_features(
        &self,
        phase: u32,
        cut: Cut,
        lower: Option<Cut>,
        sources: &[(String, Source, u64)],
        seconds: f64,
        bytes: u64,
    ) {
        let cut_name = self.network.cut_name(cut);
        let state = if sources.iter().all(|(_, source, _)| *source == Source::Hit) {
            "hit"
        } else if sources.iter().any(|(_, source, _)| *source == Source::Built) {
            "built"
        } else {
            "memory"
        };
        let detail: Vec<String> = sources
            .iter()
            .map(|(name, source, bytes)| format!("{name} {source:?} ({:.1} MB)", *bytes as f64 / 1e6))
            .collect();
        let ahead = match lower {
            Some(lower) if state != "hit" => {
                format!(" (through {}, which the next phase reuses)", self.network.cut_name(lower))
            }
            _ => String::new(),
        };
        eprintln!(
            "phase {phase}: activation cache at {cut_name} ({}): {state} in {seconds:.1}s{ahead} — {}",
            features::dtype_name(features::dtype(&self.numerics)),
            detail.join(", ").to_lowercase()
        );
        emit(&ProgressEvent::Features { phase, cut: cut_name, state: state.to_string(), reason: None, seconds, bytes });
    }

    /// Evaluates the train and test sets after the last phase, from its activations when there
    /// are some; returns (train, test).
    fn evaluate_train_and_test(
        &self,
        cached: Option<&(Cut, PhaseFeatures)>,
    ) -> anyhow::Result<(Evaluation, Evaluation)> {
        interrupt::check("the final evaluation")?;
        let started = Instant::now();
        let on_train = self.feed(&self.splits.train, cached, |features| Some(&features.train));
        let on_train = evaluate(&self.network, &on_train, self.batch_size() * 2);
        interrupt::check("the test set's evaluation")?;
        let on_test = self.feed(&self.splits.test, cached, |features| Some(&features.test));
        let on_test = evaluate(&self.network, &on_test, self.batch_size() * 2);
        eprintln!("evaluated the train and test sets in {:.1}s", started.elapsed().as_secs_f64());
        Ok((on_train, on_test))
    }

    /// The job's final metrics from the two evaluations, with the test set's binary or multiclass
    /// scores (the binary ones logged).
    fn final_metrics(&self, on_train: &Evaluation, on_test: &Evaluation) -> anyhow::Result<FinalMetrics> {
        let (train_loss, train_acc, test_loss, test_acc) =
            (on_train.loss, on_train.accuracy, on_test.loss, on_test.accuracy);
        let test = &self.splits.test;
        let (binary, multiclass) =
            if test.len() > 0 { test_metrics(test, on_test, self.classes.len())? } else { (None, None) };
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
        Ok(FinalMetrics { train_loss, train_acc, test_loss, test_acc, binary, multiclass })
    }

    /// Writes `predictions.csv`, then the Grad-CAM gallery of the test set. A full disk fails the
    /// job like any other artifact's write; the gallery's own errors are logged, not fatal.
    fn write_predictions_and_gallery(&self, on_test: &Evaluation) -> anyhow::Result<()> {
        let work = self.work;
        let test = &self.splits.test;
        write_predictions(&work.output_dir, &work.dataset_dir, test, on_test, &self.classes)?;
        interrupt::check("the Grad-CAM gallery")?;
        if test.len() > 0 {
            let started = Instant::now();
            let gallery = crate::cam::write_gallery(
                &self.network,
                test,
                on_test,
                &self.classes,
                &work.dataset_dir,
                &self.normaliser,
                &work.output_dir,
            );
            match gallery {
                Ok(count) => eprintln!("Grad-CAM: {count} heatmaps in cam/ ({:.1}s)", started.elapsed().as_secs_f64()),
                Err(err) if files::storage_error_in(&err).is_some() => {
                    return Err(err.context("writing the Grad-CAM gallery"))
                }
                Err(err) => eprintln!("warning: no Grad-CAM gallery: {err:#}"),
            }
        }
        Ok(())
    }

    /// Logs the final metrics, writes `metrics.json` (every epoch's curves and the final metrics)
    /// and sends the `final` event, the job's last.
    fn report_final(&self, curves: Vec<EpochMetrics>, final_metrics: FinalMetrics) -> anyhow::Result<()> {
        let FinalMetrics { train_loss, train_acc, test_loss, test_acc, .. } = final_metrics;
        eprintln!("final: train loss {train_loss:.4} acc {train_acc:.4}; test loss {test_loss:.4} acc {test_acc:.4}");
        write_json(
            &self.work.output_dir,
            "metrics.json",
            &serde_json::json!({"epochs": curves, "final": final_metrics}),
        )?;
        emit(&ProgressEvent::Final(final_metrics));
        Ok(())
    }
}

/// A job's splits as loaded; the job owns them from its start to its end.
struct LoadedSplits {
    train: Split,
    val: Option<Split>,
    test: Split,
}

impl LoadedSplits {
    /// Loads the train, val (when the dataset has one) and test splits, each reported with a
    /// `data` event. Fails when the train split has no image, or no two of the same shape.
    fn load(work: &WorkerJob, dataset: &DatasetInfo) -> anyhow::Result<LoadedSplits> {
        let train = load_split_and_report(work, "train", &dataset.classes)?;
        anyhow::ensure!(train.len() > 0, "the train split has no readable images");
        let val = match dataset.split("val") {
            Some(_) => Some(load_split_and_report(work, "val", &dataset.classes)?),
            None => None,
        };
        let test = load_split_and_report(work, "test", &dataset.classes)?;
        let sizes: Vec<i64> = train.groups.iter().map(|group| group.len()).collect();
        let lone = lone_images(&sizes, work.spec.batch_size as i64);
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
        Ok(LoadedSplits { train, val, test })
    }

    /// Moves the pixels of every split onto the job's GPU when they fit its data budget, so that
    /// every batch is gathered and normalised there; otherwise they stay in host memory.
    fn keep_on_gpu_when_they_fit(&mut self, work: &WorkerJob, device: Device, device_name: &str) {
        // Pixels are uint8 (grayscale: one channel), so even the Kaggle set at 512 px (~1.4 GB)
        // fits; then every batch is gathered and normalised on the GPU, with no copy per step.
        let bytes = self.borrowed().all().map(Split::pixel_bytes).sum::<i64>();
        let budget = work
            .gpu_data_budget_bytes
            .map_or(GPU_DATA_BUDGET_BYTES, |budget| (budget as i64).min(GPU_DATA_BUDGET_BYTES));
        if bytes <= budget {
            for split in [Some(&mut self.train), self.val.as_mut(), Some(&mut self.test)].into_iter().flatten() {
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

    /// The splits, borrowed.
    fn borrowed(&self) -> Splits<'_> {
        Splits { train: &self.train, val: self.val.as_ref(), test: &self.test }
    }
}

/// Loads one split of the job's dataset, logs its summary and reports it with a `data` event.
fn load_split_and_report(work: &WorkerJob, split: &str, classes: &[String]) -> anyhow::Result<Split> {
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
        skipped_files: loaded.skipped_files.iter().take(SKIPPED_FILES_SHOWN).cloned().collect(),
        seconds: loaded.seconds,
        cache: Some(loaded.cache.as_str().to_string()),
        decoded: loaded.decoded,
    });
    if let Some(empty) = loaded.left_empty(split, classes) {
        anyhow::bail!("{empty}");
    }
    Ok(loaded)
}

/// The spec's class weights resolved against the dataset's `classes` and the training split's
/// class counts (`"balanced"`), logged, on `device`. Fails the job with the reason when they no
/// longer fit the dataset (the server checked them against its classes at submission).
fn class_weights_for(
    spec: &JobSpec,
    classes: &[String],
    train: &Split,
    device: Device,
) -> anyhow::Result<Option<Tensor>> {
    let Some(class_weight) = &spec.class_weight else { return Ok(None) };
    let counts = train.labels.to_device(Device::Cpu).bincount::<Tensor>(None, classes.len() as i64);
    let counts: Vec<i64> = Vec::try_from(&counts)?;
    let counts: Vec<u64> = counts.into_iter().map(|count| count.max(0) as u64).collect();
    let weights = class_weight
        .resolve(&spec.dataset, classes, &counts)
        .map_err(|err| anyhow::anyhow!("class_weight does not fit the dataset: {err}"))?;
    let shown: Vec<String> =
        classes.iter().zip(&weights).map(|(class, weight)| format!("{class} {weight:.4}")).collect();
    eprintln!(
        "class weights ({}): {}; the training loss is weighted, validation and test metrics are not",
        class_weight.describe(),
        shown.join(", ")
    );
    Ok(Some(Tensor::from_slice(&weights).to_kind(Kind::Float).to_device(device)))
}

/// Builds the network on `device` from the spec's seed, loads the pretrained backbone and the
/// `init_from` job's weights when the job names them, and lays the weights out as `numerics`
/// wants. Returns it with the input normaliser of its backbone.
fn build_network(work: &WorkerJob, device: Device, numerics: &Numerics) -> anyhow::Result<(Network, Normaliser)> {
    let spec = &work.spec;
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
    Ok((network, normaliser))
}

/// One phase under way: what it trains, what its epochs are fed, and the optimizer they share.
struct PhaseRun<'p> {
    job: &'p Job<'p>,
    /// 0-based, for the spec's lists.
    index: usize,
    /// 1-based, for the log, the events and the checkpoint.
    number: u32,
    /// The phase's epochs in all (a resumed phase starts part-way).
    epochs: u32,
    trainable: Trainable,
    optimizer: Optimizer,
    /// The head trains alone on cached activations, in float32 outside autocast.
    float32_head: bool,
    train_feed: Feed<'p>,
    val_feed: Option<Feed<'p>>,
}

impl PhaseRun<'_> {
    /// Trains the epochs from `first_epoch` on (the first of them from `partial`, where a stop
    /// left it), each validated, checkpointed and reported. SIGTERM part-way through an epoch
    /// saves the partial epoch and returns `Interrupted`.
    fn train_epochs(
        &mut self,
        first_epoch: u32,
        mut partial: PartialEpoch,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        for epoch in first_epoch..=self.epochs {
            // After an epoch's checkpoint: that checkpoint is where the next start continues.
            interrupt::check(&format!("phase {} epoch {epoch}", self.number))?;
            let from = std::mem::take(&mut partial);
            let metrics = match self.train_epoch(epoch, from) {
                EpochOutcome::Done(metrics) => metrics,
                EpochOutcome::Interrupted(partial) => return self.stop_part_way(epoch, partial, progress),
            };
            let metrics = self.validate(metrics);
            eprintln!(
                "phase {} epoch {epoch}/{}: loss {:.4} acc {:.4} val_loss {} val_acc {} ({:.1}s)",
                self.number,
                self.epochs,
                metrics.train_loss,
                metrics.train_acc,
                metrics.val_loss.map_or(String::from("-"), |v| format!("{v:.4}")),
                metrics.val_acc.map_or(String::from("-"), |v| format!("{v:.4}")),
                metrics.seconds
            );
            self.finish_epoch(epoch, metrics, progress)?;
        }
        Ok(())
    }

    /// Saves where SIGTERM stopped `epoch` (after `partial.steps` steps) as the resumable
    /// checkpoint, and returns `Interrupted`.
    fn stop_part_way(&self, epoch: u32, partial: PartialEpoch, progress: &mut Progress) -> anyhow::Result<()> {
        progress.phase = self.number;
        progress.epochs = epoch - 1;
        progress.partial = partial;
        checkpoint(self.job.work, progress, &self.job.network, &self.optimizer)?;
        eprintln!(
            "SIGTERM: stopped after step {} of phase {} epoch {epoch}; the next start continues from there",
            partial.steps, self.number
        );
        Err(Interrupted.into())
    }

    /// Adds the validation loss and accuracy (when there is a val split with images) to an
    /// epoch's training metrics, and the time they took to its seconds.
    fn validate(&self, metrics: EpochMetrics) -> EpochMetrics {
        let started = Instant::now();
        let (val_loss, val_acc) = match &self.val_feed {
            Some(val) if val.len() > 0 => {
                let evaluation = evaluate(&self.job.network, val, self.job.batch_size() * 2);
                (Some(evaluation.loss), Some(evaluation.accuracy))
            }
            _ => (None, None),
        };
        EpochMetrics { val_loss, val_acc, seconds: metrics.seconds + started.elapsed().as_secs_f64(), ..metrics }
    }

    /// Records a finished epoch. The phase's weights file first, then the checkpoint that counts
    /// the epoch as done, then the epoch's report: whatever a crash interrupts, the next start
    /// redoes. Which weights files the spec's `checkpoints` says: the final weights always.
    fn finish_epoch(&self, epoch: u32, metrics: EpochMetrics, progress: &mut Progress) -> anyhow::Result<()> {
        let (work, spec) = (self.job.work, &self.job.work.spec);
        let planned: Vec<u32> = spec.phases.iter().map(|phase| phase.epochs).collect();
        if let Some(name) = spec.checkpoints.file_after(self.index, epoch, &planned) {
            save_checkpoint(&self.job.network, &work.output_dir, &name)?;
        }
        progress.curves.push(metrics.clone());
        progress.phase = self.number;
        progress.epochs = epoch;
        progress.partial = PartialEpoch::default();
        checkpoint(work, progress, &self.job.network, &self.optimizer)?;
        emit(&ProgressEvent::Epoch(metrics));
        Ok(())
    }

    /// Trains one epoch, or the rest of one stopped after `from.steps` batches. The batch plan
    /// comes from (seed, phase, epoch) and libtorch is reseeded from (seed, phase, epoch, step)
    /// before each step, so the batches skipped on a resume are exactly the ones trained before
    /// the stop.
    fn train_epoch(&mut self, epoch: u32, from: PartialEpoch) -> EpochOutcome {
        let (phase, seed) = (self.number, self.job.work.spec.seed);
        let started = Instant::now();
        let device = self.train_feed.device();
        let sizes: Vec<i64> = self.train_feed.groups.iter().map(|(stored, _)| stored.size()[0]).collect();
        let n = self.train_feed.len() - lone_images(&sizes, self.job.batch_size());
        let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(seed, &[phase as u64, epoch as u64]));
        let (orders, batches) = epoch_plan(&sizes, self.job.batch_size(), &mut rng);
        let orders: Vec<Tensor> = orders
            .iter()
            .zip(&self.train_feed.groups)
            .map(|(order, (stored, _))| Tensor::from_slice(order).to_device(stored.device()))
            .collect();
        let steps = batches.len() as u32;
        let mut done = from.images;
        let seconds = |started: Instant| from.seconds + started.elapsed().as_secs_f64();
        // Sums stay on the device: no host sync per step. A resumed epoch starts from the saved
        // sums (float32 values, carried exactly through f64).
        let mut loss_sum = Tensor::full([], from.loss_sum, (Kind::Float, device));
        let mut correct = Tensor::full([], from.correct, (Kind::Int64, device));
        let mut last_event = Instant::now();
        for (step, &batch) in (0u32..).zip(&batches).skip(from.steps as usize) {
            done += batch.len;
            let (loss, hits) = self.train_step(&orders, batch, (epoch, step));
            tch::no_grad(|| {
                loss_sum += loss.detach() * batch.len as f64;
                correct += hits;
            });
            if last_event.elapsed() >= STEP_EVENT_INTERVAL || step + 1 == steps {
                last_event = Instant::now();
                let images_per_sec = (done - from.images) as f64 / started.elapsed().as_secs_f64().max(1e-9);
                emit(&ProgressEvent::Step { phase, epoch, step: step + 1, steps, images_per_sec });
            }
            if interrupt::requested() {
                let (loss_sum, correct) = (loss_sum.double_value(&[]), correct.int64_value(&[]));
                let partial =
                    PartialEpoch { steps: step + 1, loss_sum, correct, images: done, seconds: seconds(started) };
                return EpochOutcome::Interrupted(partial);
            }
        }
        let (train_loss, train_acc) = (loss_sum.double_value(&[]) / n as f64, correct.double_value(&[]) / n as f64);
        let seconds = seconds(started);
        EpochOutcome::Done(EpochMetrics { phase, epoch, train_loss, train_acc, val_loss: None, val_acc: None, seconds })
    }

    /// One optimizer step on `batch` (of the epoch's shuffled `orders`) at step `step` of `epoch`,
    /// with libtorch reseeded for it; returns the batch's mean loss and correct predictions.
    fn train_step(&mut self, orders: &[Tensor], batch: PlannedBatch, (epoch, step): (u32, u32)) -> (Tensor, Tensor) {
        let seed = self.job.work.spec.seed;
        tch::manual_seed(derived_seed(seed, &[self.number as u64, epoch as u64, step as u64]) as i64);
        let PlannedBatch { group, start, len } = batch;
        let train = &self.train_feed;
        let index = orders[group].narrow(0, start, len);
        let (stored, labels) = train.groups[group];
        let pixels = stored.index_select(0, &index);
        let images = match &self.job.augmenter {
            // Augmenting phases train from pixels (`phase_activations`), never activations.
            Some(augmenter) => train.input(&augmenter.apply(&pixels, (self.number, epoch, step))),
            None => train.input(&pixels),
        };
        // The labels may live elsewhere than the stored inputs: a GPU job keeps its pixels (and
        // their labels) on the GPU but may stream activations too large for its share from host
        // memory. (Found by the packed GPU run of the matrix: "index is on cpu".)
        let labels = labels.index_select(0, &index.to_device(labels.device())).to_device(train.device());
        let class_weights = self.job.class_weights.as_ref();
        let (loss, hits) = if self.float32_head {
            let logits = train.forward(&self.job.network, &images.to_kind(Kind::Float), &self.trainable, true);
            weighted_loss_and_correct(&logits, &labels, class_weights)
        } else {
            // The bf16 working copies in, when the optimizer keeps them; its step puts the masters back.
            self.optimizer.lower();
            train.numerics.forward(|| {
                let logits = train.forward(&self.job.network, &images, &self.trainable, true);
                weighted_loss_and_correct(&logits, &labels, class_weights)
            })
        };
        self.optimizer.zero_grad();
        loss.backward();
        self.optimizer.step();
        (loss, hits)
    }
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

/// A job's splits, borrowed.
#[derive(Clone, Copy)]
struct Splits<'a> {
    train: &'a Split,
    val: Option<&'a Split>,
    test: &'a Split,
}

impl<'a> Splits<'a> {
    /// Every split the job has: train, val (when there is one), test.
    fn all(self) -> impl Iterator<Item = &'a Split> {
        [Some(self.train), self.val, Some(self.test)].into_iter().flatten()
    }
}

/// A phase's activations of every split.
pub struct PhaseFeatures {
    train: Features,
    val: Option<Features>,
    test: Features,
}

/// A phase's activations as obtained, with where each split's came from (split name, source,
/// bytes) and the cache files they used, which the cache's trim keeps.
struct ObtainedFeatures {
    features: PhaseFeatures,
    sources: Vec<(String, Source, u64)>,
    files: Vec<std::path::PathBuf>,
}

/// Most activation bytes a GPU job keeps on its GPU; beyond it they stay in host memory (mapped)
/// and each batch is copied.
const GPU_FEATURE_BUDGET_BYTES: u64 = 8 << 30;

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

/// A metric for the log: four decimals, or `undefined` when the metric is.
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
