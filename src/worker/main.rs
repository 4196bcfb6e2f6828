//! `trainq-worker`: the only code that touches tch. The supervisor runs one per job
//! (`trainq-worker run --job job.json`); `bench` measures a training step for the benchmarks.

mod cache;
mod data;
mod jpeg;
mod model;
mod report;
mod train;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use trainq::domain::progress::{WorkerDevice, WorkerJob};

/// trainq's training worker.
#[derive(Debug, Parser)]
#[command(name = "trainq-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train one job described by a job.json the supervisor wrote.
    Run {
        /// Path of job.json.
        #[arg(long)]
        job: PathBuf,
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
        /// `vgg16` or `inception_v3`.
        #[arg(long, default_value = "vgg16")]
        backbone: String,
        /// CPU threads.
        #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))]
        threads: usize,
        /// Use the GPU.
        #[arg(long)]
        cuda: bool,
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
        Command::Run { job } => std::fs::read(&job)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(serde_json::from_slice::<WorkerJob>(&bytes)?))
            .and_then(|work| train::run(&work)),
        Command::Bench { image_size, batch_size, steps, warmup, train, backbone, threads, cuda } => {
            let device = if cuda { WorkerDevice::Cuda } else { WorkerDevice::Cpu };
            bench(BenchConfig { image_size, batch_size, steps, warmup, train, backbone, threads }, device)
        }
        Command::BenchDecode { dataset, split, size, interpolation, threads, cache_dir, batch_size, rounds } => {
            serde_json::from_value(serde_json::Value::String(interpolation)).map_err(anyhow::Error::from).and_then(
                |interpolation| {
                    let resize = trainq::domain::spec::Resize::Square(size);
                    let config =
                        data::DecodeBench { dataset, split, resize, interpolation, threads, cache_dir, batch_size, rounds };
                    data::bench(&config)
                },
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
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
}

fn bench(config: BenchConfig, device: WorkerDevice) -> anyhow::Result<()> {
    use tch::{Kind, Tensor};
    let BenchConfig { image_size, batch_size, steps, warmup, ref train, ref backbone, threads } = config;
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
    let normaliser = train::Normaliser::new(spec.backbone, device);
    let (trainable, parameters) = network.set_trainable(&spec.phases[0].train);
    let optimizer = train::optimizer(&spec.optimizer, &parameters)?;
    let size = image_size as i64;
    let batch = batch_size as i64;
    let images = Tensor::randint(256, [batch, 3, size, size], (Kind::Uint8, tch::Device::Cpu));
    let labels = Tensor::randint(2, [batch], (Kind::Int64, tch::Device::Cpu));
    let step = || -> anyhow::Result<()> {
        let x = normaliser.apply(&images);
        let logits = network.forward(&x, &trainable, true);
        let (loss, _) = train::loss_and_correct(&logits, &labels.to_device(device));
        optimizer.zero_grad()?;
        loss.backward();
        optimizer.step()?;
        let _ = loss.double_value(&[]);
        Ok(())
    };
    for _ in 0..warmup {
        step()?;
    }
    let started = std::time::Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let images_per_sec = (steps as f64 * batch as f64) / seconds;
    println!(
        "{}",
        serde_json::json!({"impl": "trainq (tch)", "backbone": backbone, "image_size": image_size, "batch_size": batch_size, "train": train,
                           "threads": threads, "steps": steps, "seconds": seconds, "images_per_sec": images_per_sec})
    );
    Ok(())
}
