//! Benchmark (not a test): the assignment's Q1 at full scale on this machine's CPU, end to end —
//! 5,216 train + 16 val + 624 test generated films at 128 px, VGG16, 100 frozen + 50 block5
//! epochs — with the activation cache, against the uncached path (Keras' way: every epoch runs
//! the whole network) measured on one epoch of each phase in the same run; then a second,
//! identical job (another student) that finds every cache entry built. The job runs in the
//! default `precision: "auto"` (bf16 on a CPU with AMX-BF16 or AVX512-BF16); the float32 cached
//! path is measured in the same run (its own activation build and one epoch of each phase) as the
//! baseline for that choice.
//!
//! `cargo bench --bench q1` (env `TRAINQ_BENCH_Q1_EPOCHS=100,50`, `TRAINQ_BENCH_Q1_SCALE=1.0`
//! for a fraction of the images, `TRAINQ_BENCH_THREADS` = all cores by default).

#[path = "support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;
use trainq::domain::ProgressEvent;

/// What one worker run reported.
#[derive(Default)]
struct Run {
    wall: f64,
    data: f64,
    /// Per phase: activation build (or read) seconds and state.
    features: Vec<(f64, String)>,
    /// Per phase: seconds of each epoch.
    epochs: Vec<Vec<f64>>,
    test_acc: f64,
    /// What the worker computed in, and why.
    precision: String,
}

impl Run {
    fn phase_seconds(&self, phase: usize) -> f64 {
        self.epochs.get(phase).map_or(0.0, |epochs| epochs.iter().sum())
    }

    fn epoch_seconds(&self, phase: usize) -> f64 {
        let epochs = &self.epochs[phase];
        epochs.iter().sum::<f64>() / epochs.len() as f64
    }

    fn eval(&self) -> f64 {
        let features: f64 = self.features.iter().map(|(seconds, _)| seconds).sum();
        self.wall - self.data - features - (0..self.epochs.len()).map(|p| self.phase_seconds(p)).sum::<f64>()
    }
}

fn worker_run(root: &Path, name: &str, dataset: &Path, spec: Value, threads: usize) -> Run {
    let mut run = Run::default();
    let wall = support::run_worker(root, name, dataset, &spec, threads, |event| match event {
        ProgressEvent::Started { precision, .. } => run.precision = precision.unwrap_or_default(),
        ProgressEvent::Data { seconds, .. } => run.data += seconds,
        ProgressEvent::Features { seconds, state, .. } => run.features.push((seconds, state)),
        ProgressEvent::Phase { .. } => run.epochs.push(Vec::new()),
        ProgressEvent::Epoch(metrics) => {
            run.epochs.last_mut().unwrap().push(metrics.seconds);
            if metrics.epoch % 10 == 0 {
                eprintln!(
                    "  {name}: phase {} epoch {} ({:.1}s, loss {:.4})",
                    metrics.phase, metrics.epoch, metrics.seconds, metrics.train_loss
                );
            }
        }
        ProgressEvent::Final(metrics) => run.test_acc = metrics.test_acc,
        _ => {}
    });
    run.wall = wall;
    run
}

fn q1(epochs: (u32, u32), cache: bool, precision: &str) -> Value {
    json!({
        "name": "q1", "dataset": "bench", "backbone": "vgg16", "weights": "random", "image_size": 128, "batch_size": 20,
        "cache_features": cache, "precision": precision,
        "head": ["gap", {"dense": 512}, "batchnorm", "relu", {"dense": 128}, {"dense": 1}],
        "phases": [{"epochs": epochs.0, "train": "head"}, {"epochs": epochs.1, "train": ["block5", "head"]}],
        "optimizer": {"name": "rmsprop", "lr": 1e-5}, "seed": 1
    })
}

fn main() {
    println!("q1: CPU {}", support::cpu_line());
    let epochs = support::epochs("TRAINQ_BENCH_Q1_EPOCHS", "100,50");
    let scale: f64 = std::env::var("TRAINQ_BENCH_Q1_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let threads = support::threads();
    let per_class = |n: usize| ((n as f64 * scale).round() as usize).max(2);
    let (train, val, test) = (per_class(2608), per_class(8), per_class(312));

    let root = tempfile::tempdir().unwrap();
    let dataset = root.path().join("bench");
    let started = Instant::now();
    support::demo_data(&dataset, 160, 3, (train, val, test));
    eprintln!("generated {} + {} + {} films in {:.0}s", 2 * train, 2 * val, 2 * test, started.elapsed().as_secs_f64());

    // The uncached baseline first (it also builds the pixel cache, which both paths share).
    eprintln!("uncached: 1 + 1 epochs ...");
    let uncached = worker_run(root.path(), "uncached", &dataset, q1((1, 1), false, "auto"), threads);
    eprintln!("float32 cached: 1 + 1 epochs ...");
    let fp32 = worker_run(root.path(), "fp32", &dataset, q1((1, 1), true, "fp32"), threads);
    eprintln!("cached: {} + {} epochs ...", epochs.0, epochs.1);
    let cached = worker_run(root.path(), "cached", &dataset, q1(epochs, true, "auto"), threads);
    eprintln!("second job (another student, 1 + 1 epochs) ...");
    let second = worker_run(root.path(), "second", &dataset, q1((1, 1), true, "auto"), threads);

    let (u1, u2) = (uncached.epoch_seconds(0), uncached.epoch_seconds(1));
    let (c1, c2) = (cached.epoch_seconds(0), cached.epoch_seconds(1));
    let build: f64 = cached.features.iter().map(|(seconds, _)| seconds).sum();
    let uncached_total = cached.data + epochs.0 as f64 * u1 + epochs.1 as f64 * u2 + uncached.eval();
    println!(
        "Q1 full scale on {threads} CPU threads: {} train + {} val + {} test films at 128 px, VGG16, {} frozen + {} block5 epochs, batch 20",
        2 * train,
        2 * val,
        2 * test,
        epochs.0,
        epochs.1
    );
    println!(
        "  stages: load pixels {:.0}s | activations phase 1 {:.0}s ({}) | phase 1 {:.0}s ({:.2}s/epoch) | activations phase 2 {:.0}s ({}) | phase 2 {:.0}s ({:.1}s/epoch) | final eval {:.0}s",
        cached.data,
        cached.features[0].0,
        cached.features[0].1,
        cached.phase_seconds(0),
        c1,
        cached.features[1].0,
        cached.features[1].1,
        cached.phase_seconds(1),
        c2,
        cached.eval()
    );
    println!(
        "  end to end with the activation cache, precision {}: {:.1} min (test accuracy {:.3}; activation builds {:.0}s)",
        cached.precision,
        cached.wall / 60.0,
        cached.test_acc,
        build
    );
    let fp32_build: f64 = fp32.features.iter().map(|(seconds, _)| seconds).sum();
    let (f1, f2) = (fp32.epoch_seconds(0), fp32.epoch_seconds(1));
    let fp32_total = fp32.data + fp32_build + epochs.0 as f64 * f1 + epochs.1 as f64 * f2 + fp32.eval();
    println!(
        "  float32 cached path, same run: activations {fp32_build:.0}s, phase 1 {f1:.2}s/epoch, phase 2 {f2:.1}s/epoch, final eval {:.0}s → the whole job ≈ {:.1} min (from those epochs); {} is {:.2}x faster (activations {:.2}x, phase 2 {:.2}x)",
        fp32.eval(),
        fp32_total / 60.0,
        cached.precision,
        fp32_total / cached.wall,
        fp32_build / build,
        f2 / c2
    );
    println!(
        "  uncached path, same run: phase 1 {u1:.1}s/epoch (cached {c1:.2}s: {:.0}x), phase 2 {u2:.1}s/epoch (cached {c2:.1}s: {:.1}x); the whole job uncached ≈ {:.1} min (from those epochs) → {:.1}x faster cached",
        u1 / c1,
        u2 / c2,
        uncached_total / 60.0,
        uncached_total / cached.wall
    );
    if epochs != (100, 50) {
        let projected = cached.data + build + 100.0 * c1 + 50.0 * c2 + cached.eval();
        let projected_uncached = cached.data + 100.0 * u1 + 50.0 * u2 + uncached.eval();
        println!(
            "  projected to the assignment's 100 + 50 epochs from these per-epoch times: cached {:.1} min, uncached {:.1} min ({:.1}x)",
            projected / 60.0,
            projected_uncached / 60.0,
            projected_uncached / projected
        );
    }
    let states: Vec<&str> = second.features.iter().map(|(_, state)| state.as_str()).collect();
    println!(
        "  second identical job: activations {:?} in {:.1}s (first job built them in {build:.0}s), pixels loaded in {:.1}s",
        states,
        second.features.iter().map(|(seconds, _)| seconds).sum::<f64>(),
        second.data
    );
}
