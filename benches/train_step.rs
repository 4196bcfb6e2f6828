//! Benchmark (not a test): the worker's training step against PyTorch eager on the same torch 2.11,
//! same VGG16 + Q1 head, batch, image size and thread count, measured in the same run.
//!
//! `cargo bench --bench train_step` (env `TRAINQ_BENCH_CONFIGS="128:20:all,128:20:head"` to choose).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

fn run_json(command: &mut Command) -> serde_json::Value {
    let output = command.output().expect("benchmark process");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line")
}

fn main() {
    println!("train_step: CPU {}", support::cpu_line());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".torch-venv/bin/python");
    assert!(python.exists(), "run deploy/setup-libtorch.sh first (it provides the PyTorch baseline)");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string();
    let configs = std::env::var("TRAINQ_BENCH_CONFIGS").unwrap_or_else(|_| String::from("128:20:all,128:20:head"));
    let steps = std::env::var("TRAINQ_BENCH_STEPS").unwrap_or_else(|_| String::from("5"));
    for config in configs.split(',') {
        let parts: Vec<&str> = config.split(':').collect();
        let [size, batch, train] = parts[..] else { panic!("config `{config}` is not SIZE:BATCH:TRAIN") };
        let args = [
            "--image-size",
            size,
            "--batch-size",
            batch,
            "--train",
            train,
            "--threads",
            &threads,
            "--steps",
            &steps,
            "--warmup",
            "2",
        ];
        let ours = run_json(Command::new(env!("CARGO_BIN_EXE_trainq-worker")).arg("bench").args(args));
        let theirs = run_json(Command::new(&python).arg(root.join("deploy/bench/train_step_torch.py")).args(args));
        let ours_rate = ours["images_per_sec"].as_f64().unwrap();
        let theirs_rate = theirs["images_per_sec"].as_f64().unwrap();
        println!(
            "train step  VGG16+Q1 head  {size} px  batch {batch}  train={train}  {threads} threads: \
             trainq {ours_rate:.2} img/s | PyTorch eager {theirs_rate:.2} img/s (torch {}) | ratio {:.2}x",
            theirs["torch"].as_str().unwrap_or("?"),
            ours_rate / theirs_rate
        );
    }
}
