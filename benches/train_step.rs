//! Benchmark (not a test): the worker's training step against PyTorch eager on the same torch 2.11,
//! same VGG16 + Q1 head, batch, image size and thread count, measured in the same run.
//!
//! `cargo bench --bench train_step` (env `TRAINQ_BENCH_CONFIGS="128:20:all,128:20:head"` to choose,
//! empty for none).
//!
//! Then Q1's levers at the step level (`trainq-worker bench-levers`, `src/worker/levers.rs`): the
//! phase 1 step (head over cached pooled activations) under autocast and with a float32 head, and
//! the phase 2 step (block5 + head over cached block4 activations) under autocast and with bf16
//! weights kept between steps, each pair timed in the same process, rounds alternating
//! (`TRAINQ_BENCH_LEVER_ROUNDS=5`, `TRAINQ_BENCH_LEVER_STEPS=20`).

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
    for config in configs.split(',').filter(|config| !config.is_empty()) {
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
    levers(&threads);
}

/// Prints Q1's levers, off and on, from one `bench-levers` run.
fn levers(threads: &str) {
    let rounds = std::env::var("TRAINQ_BENCH_LEVER_ROUNDS").unwrap_or_else(|_| String::from("5"));
    let steps = std::env::var("TRAINQ_BENCH_LEVER_STEPS").unwrap_or_else(|_| String::from("20"));
    let result = run_json(Command::new(env!("CARGO_BIN_EXE_trainq-worker")).args([
        "bench-levers",
        "--threads",
        threads,
        "--rounds",
        &rounds,
        "--steps",
        &steps,
    ]));
    let seconds = |phase: &str, side: &str| result[phase][side].as_f64().unwrap_or_else(|| panic!("{result}"));
    let precision = result["precision"].as_str().unwrap_or("?");
    for (phase, lever, off, on) in [
        (
            "phase 1 (head over cached gap)",
            "float32 head",
            ("phase1_step_seconds", "autocast"),
            ("phase1_step_seconds", "float32_head"),
        ),
        (
            "phase 2 (block5 + head)",
            "bf16 weights between steps",
            ("phase2_step_seconds", "autocast"),
            ("phase2_step_seconds", "bf16_weights"),
        ),
    ] {
        let (off, on) = (seconds(off.0, off.1), seconds(on.0, on.1));
        println!(
            "Q1 lever  {phase} step, batch 20, {threads} threads, {precision}: off (autocast) {:.2} ms | on ({lever}) {:.2} ms | ratio {:.2}x (median of {rounds} alternating rounds of {steps} steps)",
            off * 1e3,
            on * 1e3,
            off / on
        );
    }
    println!(
        "Q1 lever  final losses: phase 1 {} vs {}, phase 2 {} vs {}; block5 weights bit-identical with bf16 weights: {}",
        result["phase1_final_loss"]["autocast"],
        result["phase1_final_loss"]["float32_head"],
        result["phase2_final_loss"]["autocast"],
        result["phase2_final_loss"]["bf16_weights"],
        result["phase2_block5_weights_identical"]
    );
}
