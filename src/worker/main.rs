//! `trainq-worker`: the only code that touches tch. The supervisor runs one per job
//! (`trainq-worker run --job job.json`); `bench` measures a training step for the benchmarks.

mod artifacts;
mod augment;
mod augment_bench;
mod cache;
mod cam;
mod data;
mod emit;
mod epochs;
mod evaluate;
mod failure;
mod features;
mod interrupt;
mod jpeg;
mod levers;
mod model;
mod normalise;
mod optim;
mod precision;
mod resample;
mod resume;
mod serve;
mod train;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use trainq::domain::worker_protocol::{
    FailureKind, WorkerDevice, WorkerJob, EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY, EXIT_STORAGE,
};
use trainq::domain::ProgressEvent;
use trainq::files;

/// trainq's training worker.
#[derive(Debug, Parser)]
#[command(name = "trainq-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode every file of DIR's class folders (`<split>/<class>/<file>`) in full and print a JSON
    /// report of those that do not (the server's dataset import runs it; it never links a decoder).
    Verify {
        /// The ImageFolder root.
        dir: PathBuf,
        /// Decoder threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Train one job described by a job.json the supervisor wrote.
    Run {
        /// Path of job.json.
        #[arg(long)]
        job: PathBuf,
    },
    /// Keep a finished job's model warm and answer prediction / Grad-CAM requests on stdin.
    Serve {
        /// The job's artifacts folder (spec.json, final.safetensors).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Time training steps of VGG16 + the assignment's Q1 head on random data; prints JSON.
    Bench {
        /// Square input side.
        #[arg(long, default_value_t = 128)]
        image_size: u32,
        /// Images per step.
        #[arg(long, default_value_t = 20)]
        batch_size: u32,
        /// Timed steps (after warm-up steps).
        #[arg(long, default_value_t = 5)]
        steps: u32,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: u32,
        /// What trains: `all` (full fine-tune), `head`, or one block name (e.g. `block5`).
        #[arg(long, default_value = "all")]
        train: String,
        /// A backbone's spec name (`vgg16`, `inception_v3`, `resnet50`, `densenet121`, …).
        #[arg(long, default_value = "vgg16")]
        backbone: String,
        /// CPU threads.
        #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))]
        threads: usize,
        /// Use the GPU.
        #[arg(long)]
        cuda: bool,
        /// `auto`, `fp32` or `bf16`, as in a job spec.
        #[arg(long, default_value = "auto")]
        precision: String,
    },
    /// Time one augmented epoch next to one trained from cached activations; prints JSON (for
    /// `benches/augment.rs`).
    #[command(hide = true)]
    BenchAugment {
        /// Square input side.
        #[arg(long, default_value_t = 128)]
        image_size: u32,
        /// Images per step.
        #[arg(long, default_value_t = 20)]
        batch_size: u32,
        /// Images in the epoch.
        #[arg(long, default_value_t = 200)]
        images: u32,
        /// CPU threads.
        #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))]
        threads: usize,
        /// Use the GPU.
        #[arg(long)]
        cuda: bool,
    },
    /// Time Q1's phase 1 and phase 2 steps with each lever off and on (`levers.rs`); prints JSON
    /// (for `benches/train_step.rs`).
    #[command(hide = true)]
    BenchLevers {
        /// Images per step.
        #[arg(long, default_value_t = 20)]
        batch_size: i64,
        /// Timed steps per round.
        #[arg(long, default_value_t = 20)]
        steps: u32,
        /// Alternating rounds per side.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// CPU threads.
        #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))]
        threads: usize,
    },
    /// Time a split's first pass (decode + resize), cache build or cache hit, each followed by one
    /// epoch's batch feed; prints JSON (for `benches/decode.rs`).
    #[command(hide = true)]
    BenchDecode {
        /// Dataset folder (ImageFolder layout).
        #[arg(long)]
        dataset: PathBuf,
        /// Split to load.
        #[arg(long, default_value = "train")]
        split: String,
        /// Square side.
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// `nearest`, `bilinear` or `area`.
        #[arg(long, default_value = "nearest")]
        interpolation: String,
        /// Decode large JPEGs at a reduced scale first (the spec's `fast_decode`).
        #[arg(long)]
        fast_decode: bool,
        /// Decoder threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Cache folder; without one the bare first pass is timed.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Images per fed batch.
        #[arg(long, default_value_t = 20)]
        batch_size: i64,
        /// Timed loads.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run { job } => return run(&job),
        Command::Serve { dir } => serve::serve(&dir),
        Command::Verify { dir, threads } => verify::verify(&dir, threads),
        Command::Bench { image_size, batch_size, steps, warmup, train, backbone, threads, cuda, precision } => {
            let device = if cuda { WorkerDevice::Cuda } else { WorkerDevice::Cpu };
            serde_json::from_value(serde_json::Value::String(precision)).map_err(anyhow::Error::from).and_then(
                |precision| {
                    bench(
                        BenchConfig { image_size, batch_size, steps, warmup, train, backbone, threads, precision },
                        device,
                    )
                },
            )
        }
        Command::BenchAugment { image_size, batch_size, images, threads, cuda } => {
            tch::set_num_threads(threads as i32);
            let device = if cuda { WorkerDevice::Cuda } else { WorkerDevice::Cpu };
            train::device_for(device).and_then(|device| {
                augment_bench::bench_augmented_epoch(augment_bench::AugmentBench {
                    image_size,
                    batch_size,
                    images,
                    device,
                })
            })
        }
        Command::BenchLevers { batch_size, steps, rounds, threads } => {
            levers::run(levers::LeverBench { batch_size, steps, rounds, threads })
        }
        Command::BenchDecode {
            dataset,
            split,
            size,
            interpolation,
            fast_decode,
            threads,
            cache_dir,
            batch_size,
            rounds,
        } => serde_json::from_value(serde_json::Value::String(interpolation)).map_err(anyhow::Error::from).and_then(
            |interpolation| {
                let resize = trainq::domain::spec::Resize::Square(size);
                let sampling = trainq::domain::spec::Sampling { interpolation, fast_decode };
                let config =
                    data::DecodeBench { dataset, split, resize, sampling, threads, cache_dir, batch_size, rounds };
                data::bench(&config)
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one job. Exit codes: 0 done, `EXIT_INTERRUPTED` stopped by SIGTERM (resumable),
/// `EXIT_OUT_OF_MEMORY` an allocation failed, `EXIT_STORAGE` a write failed for the storage's sake
/// (a full disk: the error's chain holds an ENOSPC, EDQUOT, EIO or EROFS `std::io::Error`), 1 any
/// other failure. The last three print a `failed` event first: tch panics on libtorch errors (its
/// non-`f_` methods), so panics are caught here and reported like errors (the panic hook has
/// already printed them to the log).
fn run(job: &std::path::Path) -> ExitCode {
    if let Err(err) = interrupt::install() {
        eprintln!("warning: no SIGTERM handler ({err}); a stop will lose the epoch under way");
    }
    failure::install_panic_hook();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> anyhow::Result<()> {
        let work: WorkerJob = serde_json::from_slice(&std::fs::read(job)?)?;
        train::run(&work)
    }));
    let (kind, text) = match outcome {
        Ok(Ok(())) => return ExitCode::SUCCESS,
        Ok(Err(err)) if err.is::<interrupt::Interrupted>() => return ExitCode::from(EXIT_INTERRUPTED as u8),
        Ok(Err(err)) => {
            eprintln!("error: {err:#}");
            // The whole chain, which names the path written: "writing <path>: No space left on
            // device (os error 28)".
            let text = format!("{err:#}");
            let kind =
                if files::storage_error_in(&err).is_some() { FailureKind::Storage } else { failure::kind(&text) };
            (kind, text)
        }
        Err(payload) => {
            let text = failure::panic_text(payload.as_ref());
            (failure::kind(&text), text)
        }
    };
    emit::emit(&ProgressEvent::Failed { kind, message: failure::message(&text) });
    match kind {
        FailureKind::OutOfMemory => ExitCode::from(EXIT_OUT_OF_MEMORY as u8),
        FailureKind::Storage => ExitCode::from(EXIT_STORAGE as u8),
        FailureKind::Error => ExitCode::FAILURE,
    }
}

/// What `bench` measures.
struct BenchConfig {
    image_size: u32,
    batch_size: u32,
    steps: u32,
    warmup: u32,
    train: String,
    backbone: String,
    threads: usize,
    precision: trainq::domain::spec::Precision,
}

fn bench(config: BenchConfig, device: WorkerDevice) -> anyhow::Result<()> {
    use tch::{Kind, Tensor};
    let BenchConfig { image_size, batch_size, steps, warmup, ref train, ref backbone, threads, precision } = config;
    tch::set_num_threads(threads as i32);
    let device = train::device_for(device)?;
    let train_set = match train.as_str() {
        "all" | "head" => format!("\"{train}\""),
        block => format!("[\"{block}\", \"head\"]"),
    };
    let spec = format!(
        r#"{{"dataset": "bench", "backbone": "{backbone}", "weights": "random", "image_size": {image_size}, "batch_size": {batch_size},
            "head": ["gap", {{"dense": 512}}, "batchnorm", "relu", {{"dense": 128}}, {{"dense": 1}}],
            "phases": [{{"epochs": 1, "train": {train_set}}}], "optimizer": {{"name": "rmsprop", "lr": 1e-5}}}}"#
    );
    let spec = trainq::domain::JobSpec::parse(spec.as_bytes()).map_err(|err| anyhow::anyhow!("{err}"))?;
    tch::manual_seed(0);
    let network = model::Network::new(&spec, device);
    let normaliser = normalise::Normaliser::new(spec.backbone, device);
    let numerics = precision::Numerics::new(precision, device, precision::CpuBf16::detect());
    if numerics.channels_last {
        precision::set_channels_last(&mut network.vs.variables().into_values().collect::<Vec<_>>());
    }
    let (trainable, parameters) = network.set_trainable(&spec.phases[0].train);
    let mut optimizer = optim::Optimizer::new(&spec.optimizer, &parameters);
    let size = image_size as i64;
    let batch = batch_size as i64;
    // The batch lives where a job's cached split lives: on the GPU for a GPU job.
    let images = Tensor::randint(256, [batch, 3, size, size], (Kind::Uint8, device));
    let labels = Tensor::randint(2, [batch], (Kind::Int64, device));
    // No host sync inside the loop (as in a job): the one `double_value` after it waits for the
    // queued work, so the wall time covers every step.
    let mut step = || -> Tensor {
        let x = numerics.input(normaliser.apply(&images));
        let (loss, _) =
            numerics.forward(|| evaluate::loss_and_correct(&network.forward(&x, &trainable, true), &labels));
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        loss
    };
    for _ in 0..warmup {
        step().double_value(&[]);
    }
    let started = std::time::Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(step());
    }
    let loss = last.map_or(0.0, |loss| loss.double_value(&[]));
    let seconds = started.elapsed().as_secs_f64();
    let images_per_sec = (steps as f64 * batch as f64) / seconds;
    // Convolution and dense FLOPs of a full fine-tuning step: forward, plus backward at about twice
    // the forward (gradients of inputs and of weights) — the usual 3× convention.
    let forward_gflop = model::forward_flops(&spec).map(|flops| flops / 1e9);
    let train_gflop = forward_gflop.filter(|_| train == "all").map(|gflop| 3.0 * gflop);
    println!(
        "{}",
        serde_json::json!({"impl": "trainq (tch)", "backbone": backbone, "image_size": image_size, "batch_size": batch_size, "train": train,
                           "threads": threads, "steps": steps, "seconds": seconds, "images_per_sec": images_per_sec,
                           "precision": numerics.describe(), "device": format!("{device:?}"), "final_loss": loss,
                           "forward_gflop_per_image": forward_gflop,
                           "achieved_tflops": train_gflop.map(|gflop| gflop * images_per_sec / 1e3)})
    );
    Ok(())
}
