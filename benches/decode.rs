//! Benchmark (not a test): the worker's first pass over a split — decode + resize — against Pillow
//! doing Keras' `load_img` path, and an epoch fed from the preprocessing cache against the first
//! pass, all measured in the same run on the same generated films. Every figure is the median of
//! [`REPETITIONS`] runs, the sides alternating, so a busy neighbour on a shared machine penalises
//! no side alone.
//!
//! `cargo bench --bench decode` (env `TRAINQ_BENCH_IMAGES=24`, `TRAINQ_BENCH_ROUNDS=3`,
//! `TRAINQ_BENCH_EPOCH_IMAGES=5216`: the all-cores split, as many films as Kaggle's chest X-ray
//! train split, made of hard links to the generated films).
//!
//! The films are chest-X-ray-sized grayscale JPEGs (1.0–2.5 MP, quality 90) drawn by the demo
//! generator at half size and upscaled, so their grain spans a few pixels and they compress like
//! scanned films; a second, smaller line uses the generator's per-pixel white grain, which roughly
//! doubles the compressed size and is the worst case for any JPEG decoder.

#[path = "support/mod.rs"]
mod support;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::process::Command;

/// Runs per figure; the figure is their median.
const REPETITIONS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn run_json(command: &mut Command) -> serde_json::Value {
    let output = command.output().expect("benchmark process");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line")
}

/// What was generated, for the printed lines.
struct Films {
    min_megapixels: f64,
    max_megapixels: f64,
    bits_per_pixel: f64,
}

/// Writes `count` films into `dir/train/{NORMAL,PNEUMONIA}`.
fn generate(dir: &Path, count: usize, correlated_grain: bool) -> Films {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let (mut min, mut max, mut pixels, mut bytes) = (f64::MAX, 0f64, 0f64, 0f64);
    for index in 0..count {
        let pneumonia = index % 2 == 1;
        let side = rng.gen_range(1000..=1260);
        let film = if correlated_grain {
            let small = trainq::demo_data::chest_xray(&mut rng, side / 2, pneumonia);
            image::imageops::resize(&small, small.width() * 2, small.height() * 2, FilterType::Triangle)
        } else {
            trainq::demo_data::chest_xray(&mut rng, side, pneumonia)
        };
        let class_dir = dir.join("train").join(if pneumonia { "PNEUMONIA" } else { "NORMAL" });
        std::fs::create_dir_all(&class_dir).unwrap();
        let mut encoded = Vec::new();
        JpegEncoder::new_with_quality(&mut encoded, 90).encode_image(&film).unwrap();
        std::fs::write(class_dir.join(format!("film-{index:03}.jpeg")), &encoded).unwrap();
        let megapixels = (film.width() * film.height()) as f64 / 1e6;
        (min, max) = (min.min(megapixels), max.max(megapixels));
        pixels += megapixels * 1e6;
        bytes += encoded.len() as f64;
    }
    Films { min_megapixels: min, max_megapixels: max, bits_per_pixel: 8.0 * bytes / pixels }
}

fn worker(
    dataset: &Path,
    threads: usize,
    rounds: &str,
    cache_dir: Option<&Path>,
    fast_decode: bool,
) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainq-worker"));
    command.args([
        "bench-decode",
        "--size",
        "128",
        "--interpolation",
        "nearest",
        "--batch-size",
        "20",
        "--rounds",
        rounds,
    ]);
    if fast_decode {
        command.arg("--fast-decode");
    }
    command.arg("--dataset").arg(dataset).arg("--threads").arg(threads.to_string());
    if let Some(cache_dir) = cache_dir {
        command.arg("--cache-dir").arg(cache_dir);
    }
    run_json(&mut command)
}

fn rate(result: &serde_json::Value, field: &str) -> f64 {
    result[field].as_f64().unwrap_or_else(|| panic!("no {field} in {result}"))
}

/// One run of Pillow doing Keras' path over `dataset` (deploy/bench/decode_pillow.py), in one process.
fn pillow(python: &Path, root: &Path, dataset: &Path, rounds: &str) -> serde_json::Value {
    run_json(
        Command::new(python)
            .arg(root.join("deploy/bench/decode_pillow.py"))
            .arg("--dataset")
            .arg(dataset)
            .args(["--size", "128", "--rounds", rounds]),
    )
}

/// Per-core rates of Pillow, trainq (Keras' pixels: full decode) and trainq with `fast_decode`
/// on `dataset`, in images per second of process CPU time (all single-threaded), each the median
/// of [`REPETITIONS`] alternating runs.
fn per_core(python: &Path, root: &Path, dataset: &Path, rounds: &str) -> (f64, f64, f64, String) {
    let (mut pillow_rates, mut trainq_rates, mut fast_rates, mut version) = (vec![], vec![], vec![], String::from("?"));
    for _ in 0..REPETITIONS {
        let pillow = pillow(python, root, dataset, rounds);
        pillow_rates.push(rate(&pillow, "images_per_cpu_sec"));
        version = pillow["pillow"].as_str().unwrap_or("?").to_string();
        let trainq = worker(dataset, 1, rounds, None, false);
        assert_eq!(trainq["skipped"], 0, "{trainq}");
        trainq_rates.push(rate(&trainq, "load_images_per_cpu_sec"));
        let fast = worker(dataset, 1, rounds, None, true);
        fast_rates.push(rate(&fast, "load_images_per_cpu_sec"));
    }
    (median(trainq_rates), median(fast_rates), median(pillow_rates), version)
}

/// A bigger split for the all-cores and epoch comparisons: `copies` hard links of each film (no
/// extra disk), so per-epoch fixed costs weigh as they do in a real split of thousands of images.
fn replicate(films: &Path, target: &Path, copies: usize) -> usize {
    let mut count = 0;
    for class in ["NORMAL", "PNEUMONIA"] {
        let class_dir = target.join("train").join(class);
        std::fs::create_dir_all(&class_dir).unwrap();
        for entry in std::fs::read_dir(films.join("train").join(class)).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            for copy in 0..copies {
                std::fs::hard_link(&path, class_dir.join(format!("{stem}-{copy:03}.jpeg"))).unwrap();
                count += 1;
            }
        }
    }
    count
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".torch-venv/bin/python");
    assert!(python.exists(), "run deploy/setup-libtorch.sh first (its venv has Pillow for the baseline)");
    let count: usize = std::env::var("TRAINQ_BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let epoch_images: usize =
        std::env::var("TRAINQ_BENCH_EPOCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(5216);
    let copies = epoch_images.div_ceil(count);
    let rounds = std::env::var("TRAINQ_BENCH_ROUNDS").unwrap_or_else(|_| String::from("3"));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let scratch = tempfile::tempdir().unwrap();
    println!("decode: CPU {}", support::cpu_line());

    for correlated_grain in [true, false] {
        let dataset = scratch.path().join(if correlated_grain { "films" } else { "white-grain" });
        let films = generate(&dataset, count, correlated_grain);
        let (trainq_rate, fast_rate, pillow_rate, pillow_version) = per_core(&python, root, &dataset, &rounds);
        let grain = if correlated_grain { "" } else { ", white grain" };
        println!(
            "decode+resize {:.1}–{:.1} MP grayscale JPEG ({:.2} bits/px{grain}) → 128 px, per core (CPU time): \
             trainq {trainq_rate:.1} img/s (median of {REPETITIONS}) | Pillow {pillow_version} (Keras path) {pillow_rate:.1} img/s | ratio {:.2}x",
            films.min_megapixels,
            films.max_megapixels,
            films.bits_per_pixel,
            trainq_rate / pillow_rate
        );
        println!(
            "  the same with fast_decode (libjpeg-turbo's 1/8 scale; not Keras' pixels): trainq {fast_rate:.1} img/s | ratio {:.2}x Pillow, {:.2}x full decode",
            fast_rate / pillow_rate,
            fast_rate / trainq_rate
        );
        if !correlated_grain {
            continue;
        }

        let epoch = scratch.path().join("epoch");
        let images = replicate(&dataset, &epoch, copies);
        // The first pass on all cores against one Pillow process, in wall time: what a student
        // waits for. Medians of alternating runs, one pass each.
        let (mut first_pass_rates, mut pillow_rates) = (vec![], vec![]);
        for _ in 0..REPETITIONS {
            pillow_rates.push(rate(&pillow(&python, root, &epoch, "1"), "images_per_sec"));
            first_pass_rates.push(rate(&worker(&epoch, cores, "1", None, false), "load_images_per_sec"));
        }
        let (first_pass_rate, pillow_rate) = (median(first_pass_rates), median(pillow_rates));
        let cache_dir = scratch.path().join("cache");
        let built = worker(&epoch, cores, "1", Some(&cache_dir), false);
        assert_eq!(built["cache"], "built", "{built}");
        let cached = worker(&epoch, cores, "10", Some(&cache_dir), false);
        assert_eq!((&cached["cache"], &cached["decoded"]), (&"hit".into(), &0.into()), "{cached}");
        let cached_rate = rate(&cached, "best_epoch_images_per_sec");
        let gathered_rate = rate(&cached, "best_gather_epoch_images_per_sec");
        let read_rate = rate(&cached, "best_load_images_per_sec");
        println!(
            "decode+resize, {images} images, all {cores} cores (wall time): trainq first pass {first_pass_rate:.1} img/s \
             | one Pillow process {pillow_rate:.1} img/s | ratio {:.2}x",
            first_pass_rate / pillow_rate
        );
        println!(
            "cached epoch feed ({images} images: read entry {read_rate:.0} img/s, then batches of 20: gather, float, \
             normalise), {cores} cores: {cached_rate:.0} img/s vs first pass {first_pass_rate:.1} img/s | ratio {:.0}x",
            cached_rate / first_pass_rate
        );
        println!(
            "cached epoch feed, uint8 batches (read entry + gather: a GPU job's host side), {cores} cores: \
             {gathered_rate:.0} img/s vs first pass {first_pass_rate:.1} img/s | ratio {:.0}x",
            gathered_rate / first_pass_rate
        );
    }
}
