//! `trainq-worker bench-augment`: what one augmented epoch costs next to one trained from cached
//! activations, for `benches/augment.rs`. An augmenting phase cannot reuse its frozen prefix's
//! activations (each step's images are new), so each of its steps augments the pixels and runs
//! the whole network; a cached phase runs the head alone on stored activations. Both train the
//! head of VGG16 + the assignment's Q1 head on random pixels, on the device asked for.

use crate::augment::Augmenter;
use crate::evaluate::loss_and_correct;
use crate::model::Network;
use crate::normalise::Normaliser;
use crate::optim::Optimizer;
use crate::precision::{CpuBf16, Numerics};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::{JobSpec, Precision};

/// What `bench-augment` measures.
pub struct AugmentBench {
    /// Square input side.
    pub image_size: u32,
    /// Images per step.
    pub batch_size: u32,
    /// Images in the epoch.
    pub images: u32,
    /// The device to run on.
    pub device: Device,
}

/// Runs `step` over every batch (start, length, step number) and returns the name, the seconds
/// and the images per second, with one sync at the end so the time covers every queued step.
fn timed(
    name: &str,
    batches: &[(i64, i64)],
    device: Device,
    mut step: impl FnMut(i64, i64, u32) -> Tensor,
) -> (String, f64, f64) {
    let started = Instant::now();
    let mut last = Tensor::zeros([], (Kind::Float, device));
    for (index, &(start, len)) in batches.iter().enumerate() {
        last = step(start, len, index as u32);
    }
    let _ = last.double_value(&[]);
    let seconds = started.elapsed().as_secs_f64();
    let images: i64 = batches.iter().map(|&(_, len)| len).sum();
    (name.to_string(), seconds, images as f64 / seconds)
}

/// Times one epoch three ways (augmentation alone, an augmented epoch, a cached epoch) and prints
/// one JSON line with the seconds and images per second of each.
pub fn bench_augmented_epoch(config: AugmentBench) -> anyhow::Result<()> {
    let AugmentBench { image_size, batch_size, images, device } = config;
    let spec = format!(
        r#"{{"dataset": "bench", "backbone": "vgg16", "weights": "random", "image_size": {image_size}, "batch_size": {batch_size},
            "head": ["gap", {{"dense": 512}}, "batchnorm", "relu", {{"dense": 128}}, {{"dense": 1}}],
            "phases": [{{"epochs": 1, "train": "head"}}], "optimizer": {{"name": "rmsprop", "lr": 1e-5}},
            "augment": {{"horizontal_flip": true, "rotation_range": 15, "width_shift_range": 0.1,
                        "height_shift_range": 0.1, "zoom_range": 0.1, "brightness_range": [0.9, 1.1]}}}}"#
    );
    let spec = JobSpec::parse(spec.as_bytes()).map_err(|err| anyhow::anyhow!("{err}"))?;
    tch::manual_seed(0);
    let network = Network::new(&spec, device);
    let normaliser = Normaliser::new(spec.backbone, device);
    let numerics = Numerics::new(Precision::Fp32, device, CpuBf16::detect());
    let augmenter = Augmenter::for_spec(&spec).expect("the bench's spec augments");
    let (trainable, parameters) = network.set_trainable(&spec.phases[0].train);
    let cut = network.cut_for(&trainable).expect("a head phase leaves the backbone frozen");
    let size = image_size as i64;
    let pixels = Tensor::randint(256, [images as i64, 1, size, size], (Kind::Uint8, device));
    let labels = Tensor::randint(2, [images as i64], (Kind::Int64, device));
    let batches: Vec<(i64, i64)> = (0..images as i64)
        .step_by(batch_size as usize)
        .map(|start| (start, (batch_size as i64).min(images as i64 - start)))
        .collect();
    // The cached phase's activations, computed once (as the cache would hold them).
    let activations = tch::no_grad(|| {
        let parts: Vec<Tensor> = batches
            .iter()
            .map(|&(start, len)| {
                network.features(&numerics.input(normaliser.apply(&pixels.narrow(0, start, len))), cut)
            })
            .collect();
        Tensor::cat(&parts, 0)
    });
    let augment_only = timed("augment only", &batches, device, |start, len, step| {
        augmenter.apply(&pixels.narrow(0, start, len), (1, 1, step)).sum(Kind::Float)
    });
    let mut optimizer = Optimizer::new(&spec.optimizer, &parameters);
    let augmented = timed("augmented epoch", &batches, device, |start, len, step| {
        let x = numerics.input(normaliser.apply(&augmenter.apply(&pixels.narrow(0, start, len), (1, 1, step))));
        let (loss, _) = loss_and_correct(&network.forward(&x, &trainable, true), &labels.narrow(0, start, len));
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        loss
    });
    let mut optimizer = Optimizer::new(&spec.optimizer, &parameters);
    let cached = timed("cached epoch", &batches, device, |start, len, _| {
        let x = activations.narrow(0, start, len);
        let (loss, _) =
            loss_and_correct(&network.forward_from(&x, cut, &trainable, true), &labels.narrow(0, start, len));
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        loss
    });
    let rows: Vec<serde_json::Value> = [augment_only, augmented, cached]
        .into_iter()
        .map(|(name, seconds, images_per_sec)| serde_json::json!({"what": name, "seconds": seconds, "images_per_sec": images_per_sec}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"backbone": "vgg16", "image_size": image_size, "batch_size": batch_size, "images": images,
                           "device": format!("{device:?}"), "threads": tch::get_num_threads(), "cut": network.cut_name(cut),
                           "rows": rows})
    );
    Ok(())
}
