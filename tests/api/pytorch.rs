//! Checkpoints load in plain PyTorch: `deploy/load_checkpoint.py` builds torchvision's backbone
//! and the spec's head, loads `final.safetensors` with strict=True, and predicts the test images
//! the worker predicted, to the same probabilities — on the small demo films and on 1–2 MP
//! grayscale and colour JPEGs, for float32 and bf16 jobs alike (the loader runs in the precision
//! the job recorded). Its `--onnx` export, run in onnxruntime (`deploy/onnx_predict.py`),
//! predicts them to PyTorch's probabilities.

use crate::helpers::{write_dataset, write_inception_weights, Options, TestApp};
use image::{GrayImage, Rgb, RgbImage};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The virtual environment's interpreter (`deploy/setup-libtorch.sh`).
fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".torch-venv/bin/python");
    assert!(python.exists(), "run deploy/setup-libtorch.sh first");
    python
}

/// Runs a `deploy/` script and returns its stdout and stderr; fails the test with its stderr
/// (a missing package says which and how to install it) when it fails.
fn run_script(script: &str, args: &[&Path]) -> (String, String) {
    let output = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(script))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{script} failed:\n{stderr}");
    (String::from_utf8_lossy(&output.stdout).to_string(), stderr)
}

/// The probabilities of each `<path>\t<p>\t…` line.
fn probabilities(stdout: &str) -> Vec<Vec<f64>> {
    stdout.lines().map(|line| line.split('\t').skip(1).map(|p| p.parse().unwrap()).collect()).collect()
}

/// The largest difference between two sets of probabilities for the same images.
fn largest_difference(ours: &[Vec<f64>], theirs: &[Vec<f64>]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let mut worst: f64 = 0.0;
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

/// Trains `spec`, predicts its test images with the loader, and returns the largest difference
/// from trainq's own probabilities (`predictions.csv`). With `onnx`, the loader also exports the
/// model, and onnxruntime must predict the same images to PyTorch's probabilities within 1e-5.
pub(crate) async fn check_in_pytorch(app: &TestApp, mut spec: Value, onnx: bool) -> f64 {
    // The ONNX graph computes in float32, so a job checked against it does too; the others run in
    // their spec's precision (`auto` is bf16 on a CPU with bf16 units, whose rounding moves these
    // probabilities by up to 1.3e-3 from float32), and the loader runs in what the job recorded.
    if onnx {
        spec["precision"] = json!("fp32");
    }
    let id = app.submit(&spec).await;
    let (job, log) = app.finished(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    let precision = job["progress"]["precision"].as_str().expect("the job records its precision").to_string();
    let folder = tempfile::tempdir().unwrap();
    for name in ["spec.json", "final.safetensors"] {
        std::fs::write(folder.path().join(name), app.download(&id, name).await).unwrap();
    }
    let (_, csv) = app.text(&format!("/api/jobs/{id}/predictions.csv")).await;
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|line| line.split(',').collect()).collect();
    let dataset = app.root.join("datasets").join(spec["dataset"].as_str().unwrap());
    let images: Vec<PathBuf> = rows.iter().map(|row| dataset.join(row[0])).collect();
    let [spec_file, weights, model] =
        ["spec.json", "final.safetensors", "model.onnx"].map(|name| folder.path().join(name));
    let mut args = vec![spec_file.as_path(), weights.as_path(), Path::new("--precision"), Path::new(&precision)];
    if onnx {
        args.extend([Path::new("--onnx"), model.as_path()]);
    }
    args.extend(images.iter().map(PathBuf::as_path));
    let (stdout, stderr) = run_script("load_checkpoint.py", &args);
    assert!(stderr.contains("loaded") && stderr.contains("strictly"), "{stderr}");
    let bf16 = precision.starts_with("bf16");
    assert_eq!(stderr.contains("predicting in bf16 autocast"), bf16, "{precision}: {stderr}");
    let pytorch = probabilities(&stdout);
    let trainq: Vec<Vec<f64>> = rows.iter().map(|row| row[2..].iter().map(|p| p.parse().unwrap()).collect()).collect();
    let worst = largest_difference(&pytorch, &trainq);
    let said = |field: &str| spec[field].as_str().unwrap_or("nearest").to_string();
    let case = format!(
        "{} ({}, {}, {}, {precision})",
        said("name"),
        said("backbone"),
        said("interpolation"),
        spec["image_size"]
    );
    let first = pytorch.iter().map(|row| row[0]);
    let (low, high) = first.fold((f64::MAX, f64::MIN), |(low, high), p| (low.min(p), high.max(p)));
    let count = rows.len();
    eprintln!(
        "{case}: max |PyTorch − trainq| = {worst:.2e} over {count} images (first probability {low:.4}–{high:.4})"
    );
    // Saturated probabilities (0 and 1, as an untrained Inception gives) agree whatever the pixels;
    // the comparison needs some that the inputs move.
    let moved = pytorch.iter().flatten().filter(|&&p| (1e-3..1.0 - 1e-3).contains(&p)).count();
    let saturated = pytorch.iter().flatten().count() - moved;
    assert!(moved >= saturated, "{case}: probabilities too saturated to compare: {pytorch:?}");
    if onnx {
        let mut args = vec![model.as_path()];
        args.extend(images.iter().map(PathBuf::as_path));
        let (stdout, _) = run_script("onnx_predict.py", &args);
        let onnxruntime = largest_difference(&probabilities(&stdout), &pytorch);
        eprintln!("{case}: max |onnxruntime − PyTorch| = {onnxruntime:.2e}");
        // The same graph and weights; only the kernels' summation order differs.
        assert!(onnxruntime <= 1e-5, "{case}: max |onnxruntime − PyTorch| = {onnxruntime}");
    }
    worst
}

#[tokio::test]
async fn vgg16_and_inception_v3_checkpoints_load_strictly_in_pytorch_and_onnxruntime_and_predict_the_same() {
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 3, 1, 2);
    let mut worst: f64 = 0.0;
    for (interpolation, image_size) in
        [("nearest", json!(32)), ("bilinear", json!(48)), ("area", json!(32)), ("bilinear", json!(null))]
    {
        let mut spec = json!({
            "name": format!("torch-vgg-{interpolation}"), "dataset": "demo", "backbone": "vgg16", "weights": "random",
            "image_size": image_size, "max_image_side": if image_size.is_null() { json!(64) } else { json!(null) },
            "interpolation": interpolation, "batch_size": 3,
            "head": ["gap", {"dropout": 0.25}, {"dense": 16}, {"batchnorm": {"momentum": 0.9}}, "relu", {"dense": 1}],
            "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
            "optimizer": {"name": "adam", "lr": 1e-3}, "seed": 5
        });
        // One job asks for bf16 (channels-last throughout, what a GPU job runs), so the loader's
        // bf16 path is covered on a CPU without bf16 units too, where `auto` is float32.
        if interpolation == "area" {
            spec["precision"] = json!("bf16");
        }
        worst = worst.max(check_in_pytorch(&app, spec, interpolation == "nearest").await);
    }
    // Generated "imagenet" weights: an untrained Inception's probabilities are all 0 or 1 here.
    write_inception_weights(&app.root.join("weights/inception_v3.safetensors"));
    let spec = json!({
        "name": "torch-inception", "dataset": "demo", "backbone": "inception_v3", "weights": "imagenet",
        "image_size": 75, "batch_size": 3, "head": ["flatten", {"batchnorm": {"momentum": 0.0}}, {"dense": 2}],
        "phases": [{"epochs": 1, "train": ["Mixed_7c", "head"]}],
        "optimizer": {"name": "sgd", "lr": 1e-2}, "seed": 5
    });
    worst = worst.max(check_in_pytorch(&app, spec, true).await);
    // The same pixels (Pillow's resize reproduced, the same decode of these files) and the same
    // network: what is left is float summation order.
    assert!(worst < 1e-3, "max |PyTorch − trainq| = {worst}");
}

/// A scene with what makes decoders round differently: gradients, a sharp-edged disc, fine
/// stripes, saturated colour edges and grain.
fn scene(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        let disc = if (u - 0.4).powi(2) + (v - 0.5).powi(2) < 0.05 { 60.0 } else { 0.0 };
        let stripes = 25.0 * (x as f32 / 7.0).sin() * (y as f32 / 11.0).cos();
        let grain = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ seed.wrapping_mul(31)) % 17) as f32 - 8.0;
        let base = 40.0 + 120.0 * u + 50.0 * v + disc + stripes + grain + 10.0 * seed as f32;
        let red = base + 50.0 * (9.0 * u).sin();
        let green = if v > 0.6 { 0.8 * base + 40.0 } else { 0.8 * base };
        let blue = 255.0 - base + 30.0 * (x as f32 / 5.0).cos();
        Rgb([red, green, blue].map(|c| c.clamp(0.0, 255.0) as u8))
    })
}

/// Writes a dataset `large`: small train and val images, and a test split of 1–2 MP JPEGs per
/// class as scanners and cameras write them: grayscale (portrait), colour without chroma
/// subsampling (the `image` crate's encoder), colour 4:2:0 (Pillow's default, as most cameras) and
/// the same progressive (as web images often are).
fn write_large_dataset(root: &Path) {
    let dataset = root.join("datasets/large");
    for (label, class) in ["NORMAL", "PNEUMONIA"].into_iter().enumerate() {
        let seed = label as u32 * 3;
        for (split, count) in [("train", 2), ("val", 1)] {
            let folder = dataset.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for index in 0..count {
                let image = scene(64, 56, seed + index);
                let path = folder.join(format!("{index}.jpeg"));
                if index % 2 == 0 {
                    image.save(path).unwrap();
                } else {
                    image::DynamicImage::ImageRgb8(image).to_luma8().save(path).unwrap();
                }
            }
        }
        let folder = dataset.join("test").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        let gray: GrayImage = image::DynamicImage::ImageRgb8(scene(1001, 1203, seed)).to_luma8();
        gray.save(folder.join("gray.jpeg")).unwrap();
        scene(1400, 1100, seed + 1).save(folder.join("colour-444.jpeg")).unwrap();
        for (name, seed, progressive) in [("colour-420", seed + 2, "0"), ("colour-420-progressive", seed + 4, "1")] {
            let colour = scene(1597, 1203, seed);
            let script = "import sys; from PIL import Image; \
                Image.frombytes('RGB', (int(sys.argv[1]), int(sys.argv[2])), sys.stdin.buffer.read()) \
                .save(sys.argv[3], quality=90, subsampling='4:2:0', progressive=sys.argv[4] == '1')";
            let mut pillow = Command::new(python())
                .args(["-c", script])
                .args([colour.width().to_string(), colour.height().to_string()])
                .arg(folder.join(format!("{name}.jpeg")))
                .arg(progressive)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            pillow.stdin.take().unwrap().write_all(colour.as_raw()).unwrap();
            assert!(pillow.wait().unwrap().success(), "Pillow could not write {name}.jpeg");
        }
    }
}

#[tokio::test]
async fn large_grayscale_and_colour_jpegs_predict_the_same_in_pytorch_for_every_interpolation_and_backbone() {
    let app = TestApp::spawn(Options::default());
    write_large_dataset(&app.root);
    write_inception_weights(&app.root.join("weights/inception_v3.safetensors"));
    let mut worst: f64 = 0.0;
    for backbone in ["vgg16", "inception_v3"] {
        for interpolation in ["nearest", "bilinear", "area"] {
            let vgg = backbone == "vgg16";
            // One variable-size job: its test images come out landscape and portrait, so the
            // ONNX export's dynamic height and width are exercised with two shapes in one run.
            let variable = vgg && interpolation == "bilinear";
            let (weights, image_size, head, train) = if vgg {
                let head = json!(["gap", {"dense": 8}, {"batchnorm": {}}, "relu", {"dense": 1}]);
                ("random", if variable { json!(null) } else { json!(40) }, head, json!("head"))
            } else {
                // Batch norm with the last batch's statistics: a head that the pixels move.
                let head = json!(["gap", {"batchnorm": {"momentum": 0.0}}, {"dense": 2}]);
                ("imagenet", json!(75), head, json!(["Mixed_7c", "head"]))
            };
            let spec = json!({
                "name": format!("large-{backbone}-{interpolation}"), "dataset": "large", "backbone": backbone,
                "weights": weights, "image_size": image_size, "max_image_side": if variable { json!(96) } else { json!(null) },
                "interpolation": interpolation, "batch_size": 4, "head": head, "phases": [{"epochs": 1, "train": train}],
                "optimizer": {"name": "adam", "lr": 1e-3}, "seed": 3
            });
            worst = worst.max(check_in_pytorch(&app, spec, variable).await);
        }
    }
    // trainq decodes with libjpeg-turbo, as Pillow does: the same pixels (zune-jpeg's rounding moved
    // Inception's by up to 1.2e-3 here), and `preprocess.py` normalises them with the worker's own
    // float32 operations (the textbook order moved InceptionV3's bf16 jobs by 1.3–1.9e-3), so what
    // is left is float summation order: 5e-7 for both backbones in bf16 on an AMX-BF16 CPU.
    assert!(worst <= 1e-3, "max |PyTorch − trainq| = {worst}");
}
