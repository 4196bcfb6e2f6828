//! Benchmark (not a test): what one augmented epoch costs next to one trained from cached
//! activations. An augmenting phase runs the frozen layers on every step's new images; a cached
//! phase runs the head alone. VGG16 + the Q1 head, head trainable, random pixels.
//!
//! `cargo bench --bench augment` (env `TRAINQ_BENCH_AUGMENT="128:20:200"` = SIZE:BATCH:IMAGES,
//! `TRAINQ_BENCH_CUDA=1` for the GPU).

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

fn main() {
    println!("augment: CPU {}", support::cpu_line());
    let config = std::env::var("TRAINQ_BENCH_AUGMENT").unwrap_or_else(|_| String::from("128:20:200"));
    let parts: Vec<&str> = config.split(':').collect();
    let [size, batch, images] = parts[..] else { panic!("`{config}` is not SIZE:BATCH:IMAGES") };
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainq-worker"));
    command.args(["bench-augment", "--image-size", size, "--batch-size", batch, "--images", images]);
    if std::env::var_os("TRAINQ_BENCH_CUDA").is_some() {
        command.arg("--cuda");
    }
    let output = command.output().expect("benchmark process");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line");
    let rows = result["rows"].as_array().expect("rows");
    let cached =
        rows.iter().find(|row| row["what"] == "cached epoch").expect("a cached row")["seconds"].as_f64().unwrap();
    for row in rows {
        let seconds = row["seconds"].as_f64().unwrap();
        println!(
            "{:<16} VGG16+Q1 head  {size} px  batch {batch}  {images} images  {} ({} threads): {seconds:.2} s, {:.1} img/s, {:.1}x the cached epoch",
            row["what"].as_str().unwrap_or("?"),
            result["device"].as_str().unwrap_or("?"),
            result["threads"],
            row["images_per_sec"].as_f64().unwrap(),
            seconds / cached
        );
    }
}
