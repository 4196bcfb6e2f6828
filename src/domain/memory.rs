//! How much GPU memory a training job needs, estimated from its spec alone, so the scheduler can
//! share a GPU between jobs without running them first. Pure arithmetic over the backbone's
//! layer shapes: no I/O, no libtorch.
//!
//! The estimate is the peak of one phase, the largest over the spec's phases (each phase frees the
//! previous optimizer and builds its own, as Keras' recompile does):
//!
//! ```text
//! CUDA allowance                                    (CUDA_ALLOWANCE_BYTES, once)
//! + every weight, 4 bytes                           (backbone tensors and head, float32 always)
//! + with bf16, 2 bytes per backbone parameter       (autocast's cached bf16 copies of the weights)
//! + max over phases of
//!     trainable parameters × 4 bytes × (1 gradient + optimizer slots)
//!                                                   (adam 2; rmsprop 1, +1 with momentum; sgd 0, +1 with momentum)
//!   + max(training activations, inference activations)
//! ```
//!
//! **Training activations** = batch × bytes per value (4 for float32, 2 for bf16) × the sum of the
//! layer outputs for one image over the part of the network that backpropagates (from the phase's
//! first trained block to the end of the head: frozen blocks after a trained one still pass
//! gradients back, frozen leading blocks run under `no_grad` and keep nothing) × a backward factor.
//! A "layer output" counts once per convolution (with its batch norm and ReLU), pooling or
//! concatenation, and once for the input image when the first block trains. The backward factor is
//! 2 for VGG16, the usual rule of thumb (as in Stanford's CS231n notes: forward activations "×2 for
//! backward"): besides each ReLU output autograd keeps max pooling's int64 indices, and the peak
//! adds gradient buffers, cuDNN workspaces and the caching allocator's rounding. Counting VGG16's
//! saved tensors one by one gives about 1.2× the outputs, so 2 errs on the safe side, which is the
//! side a scheduler wants: an estimate that falls short can make a GPU's other jobs run out of
//! memory. InceptionV3 gets 3: each of its convolutions is followed by a batch norm, which keeps
//! the convolution's output as well as the ReLU's.
//!
//! **Inference activations** (evaluation, at twice the batch size, and the frozen prefix, at most
//! that) keep nothing: their peak is the largest single layer's input plus output.
//!
//! **Image size.** A square `image_size` is used as is; variable size counts the worst case, a
//! square image of `max_image_side`. VGG16's outputs are computed exactly (3×3 "same" convolutions,
//! 2×2 pools that floor). InceptionV3's use constants per input pixel, one per block, from summing
//! torchvision's layer output shapes at 299 px (its native size; 14.4 M values per image); other
//! sizes scale them by the pixel count. Its valid convolutions and stride-2 reductions shrink small
//! images more than in proportion (at 96 px the true sum is 106 values per pixel, not 161), so
//! scaling overestimates below 299 px and is within 4 % up to 512 px. ResNet50's and DenseNet121's
//! are computed exactly, stage by stage (backward factor 3, like InceptionV3: a batch norm beside
//! every convolution).
//!
//! **Not included:** the dataset the worker may keep resident on the GPU (its pixels, up to 4 GiB,
//! and a phase's cached activations, up to 8 GiB; see `src/worker/train.rs`). Those depend on the
//! dataset, not the spec.

use super::backbone::Backbone;
use super::spec::{HeadLayer, JobSpec, OptimizerName, OptimizerSpec, Precision, Resize};
use super::weights_layout::{
    expected_tensors, DENSENET121_BOTTLENECK, DENSENET121_GROWTH, DENSENET121_LAYERS, EFFICIENTNET_B0_STAGES,
    EFFICIENTNET_B0_STEM_CHANNELS, EFFICIENTNET_B0_TOP_CHANNELS, RESNET50_STAGES,
};

/// What a job holds on its GPU before and besides its tensors: the CUDA context (a few hundred MB
/// with libtorch's kernels), cuBLAS and cuDNN handles and workspaces, and allocator slack.
pub const CUDA_ALLOWANCE_BYTES: u64 = 1 << 30;

/// What a job on a shared GPU may keep there of its dataset (pixels and cached activations);
/// the scheduler passes it to the worker as `gpu_data_budget_bytes`, and the estimate counts it.
pub const GPU_DATA_ALLOWANCE_BYTES: u64 = 2 << 30;

/// Weights, gradients and optimizer state are float32 in every precision.
const FLOAT32_BYTES: f64 = 4.0;
/// What autocast keeps per weight it casts, and per activation value in bf16.
const BFLOAT16_BYTES: f64 = 2.0;

/// InceptionV3's layer outputs per input pixel at 299 px, per block (`stem`, `Mixed_5b` …
/// `Mixed_7c`): torchvision's output shapes summed, a convolution with its batch norm and ReLU
/// counted once, each pool and each block's concatenation once, and the image in the stem.
const INCEPTION_VALUES_PER_PIXEL: [f64; 12] =
    [56.19, 12.50, 14.25, 14.69, 7.16, 9.93, 10.55, 10.55, 11.17, 4.32, 4.72, 5.27];
/// InceptionV3's largest layer input plus output per input pixel (`Conv2d_2b_3x3`: 23.2 at 299 px,
/// 23.4 at 512 px).
const INCEPTION_LARGEST_LAYER_PER_PIXEL: f64 = 23.5;

/// The GPU memory, in bytes, that training `spec` needs at its peak (see the module comment for
/// the formula and what it leaves out). The precision is the GPU's: `auto` counts as bf16.
pub fn estimate_bytes(spec: &JobSpec) -> u64 {
    let side = match spec.resize() {
        Resize::Square(size) => size,
        Resize::Bounded { max_side, .. } => max_side,
    };
    let network = NetworkShape::new(spec.backbone, side);
    let head = HeadShape::new(&spec.head, spec.backbone.info().feature_channels as f64, network.feature_area);
    let parameters = block_parameters(spec.backbone);
    let backbone_parameters: f64 = parameters.trainable.iter().sum();
    let bf16 = matches!(spec.precision, Precision::Auto | Precision::Bf16);
    let value_bytes = if bf16 { BFLOAT16_BYTES } else { FLOAT32_BYTES };
    let batch = spec.batch_size as f64;

    let mut fixed = (CUDA_ALLOWANCE_BYTES + GPU_DATA_ALLOWANCE_BYTES) as f64
        + FLOAT32_BYTES * (backbone_parameters + parameters.buffers + head.parameters + head.buffers);
    if bf16 {
        fixed += BFLOAT16_BYTES * backbone_parameters;
    }
    let inference = 2.0 * batch * value_bytes * network.largest_layer;
    let blocks = spec.backbone.info().blocks;
    let phase_peak = spec
        .phases
        .iter()
        .map(|phase| {
            let trained: Vec<bool> = blocks.iter().map(|block| phase.train.trains_block(block)).collect();
            let trainable: f64 =
                parameters.trainable.iter().zip(&trained).filter(|(_, on)| **on).map(|(count, _)| count).sum::<f64>()
                    + if phase.train.trains_head() { head.parameters } else { 0.0 };
            let state = FLOAT32_BYTES * trainable * (1.0 + optimizer_slots(phase.optimizer(spec)));
            let first_live = trained.iter().position(|on| *on).unwrap_or(blocks.len());
            let live_values: f64 = network.block_outputs[first_live..].iter().sum::<f64>() + head.outputs;
            let training = batch * value_bytes * live_values * network.backward_factor;
            state + training.max(inference)
        })
        .fold(0.0, f64::max);
    (fixed + phase_peak).ceil() as u64
}

/// The disk, in bytes, that a job's own files take at their peak, from its spec alone, for the
/// scheduler's disk check: the weights files its `checkpoints` choice keeps (one per phase by
/// default, `phase1.safetensors` … `final.safetensors`, float32), and the resumable checkpoint (every weight and the largest phase's optimizer state)
/// twice, as the old one stands until the new one is renamed over it. Cache entries depend on the
/// dataset; the scheduler adds them.
pub fn disk_bytes(spec: &JobSpec) -> u64 {
    let parameters = block_parameters(spec.backbone);
    let backbone_parameters: f64 = parameters.trainable.iter().sum();
    let side = match spec.resize() {
        Resize::Square(size) => size,
        Resize::Bounded { max_side, .. } => max_side,
    };
    let feature_area = NetworkShape::new(spec.backbone, side).feature_area;
    let head = HeadShape::new(&spec.head, spec.backbone.info().feature_channels as f64, feature_area);
    let weights = FLOAT32_BYTES * (backbone_parameters + parameters.buffers + head.parameters + head.buffers);
    let blocks = spec.backbone.info().blocks;
    let optimizer_state = spec
        .phases
        .iter()
        .map(|phase| {
            let trainable: f64 = parameters
                .trainable
                .iter()
                .zip(blocks)
                .filter(|(_, block)| phase.train.trains_block(block))
                .map(|(count, _)| count)
                .sum::<f64>()
                + if phase.train.trains_head() { head.parameters } else { 0.0 };
            FLOAT32_BYTES * trainable * optimizer_slots(phase.optimizer(spec))
        })
        .fold(0.0, f64::max);
    let epochs: Vec<u32> = spec.phases.iter().map(|phase| phase.epochs).collect();
    let files = spec.checkpoints.files(&epochs) as f64;
    (files * weights + 2.0 * (weights + optimizer_state)).ceil() as u64
}

/// Float32 tensors an optimizer keeps per trainable parameter, besides its gradient.
fn optimizer_slots(optimizer: &OptimizerSpec) -> f64 {
    let momentum = if optimizer.momentum > 0.0 { 1.0 } else { 0.0 };
    match optimizer.name {
        // First and second moments.
        OptimizerName::Adam => 2.0,
        // The squared-gradient average, and a momentum buffer when momentum is on.
        OptimizerName::Rmsprop => 1.0 + momentum,
        OptimizerName::Sgd => momentum,
    }
}

/// A backbone's parameter counts per block, from the torchvision layout the weights file is
/// checked against (one source of truth for the shapes).
struct BlockParameters {
    /// Trainable parameters (weights and biases, batch norm's scale and shift) per block.
    trainable: Vec<f64>,
    /// Batch norm running statistics: held, never trained.
    buffers: f64,
}

fn block_parameters(backbone: Backbone) -> BlockParameters {
    let blocks = backbone.info().blocks;
    let mut counts = BlockParameters { trainable: vec![0.0; blocks.len()], buffers: 0.0 };
    for tensor in expected_tensors(backbone) {
        let values = tensor.shape.iter().product::<usize>() as f64;
        if tensor.name.ends_with("running_mean")
            || tensor.name.ends_with("running_var")
            || tensor.name.ends_with("num_batches_tracked")
        {
            counts.buffers += values;
            continue;
        }
        let block = match backbone {
            // `features.N.*`: torchvision's Sequential has its max pools at 4, 9, 16, 23 and 30.
            Backbone::Vgg16 => {
                let index: usize = tensor.name.split('.').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                [4, 9, 16, 23, 30].iter().filter(|&&pool| pool < index).count()
            }
            // `Mixed_6b.*` is its block; the `Conv2d_*` layers are the stem (block 0).
            Backbone::InceptionV3 => {
                let module = tensor.name.split('.').next().unwrap_or_default();
                blocks.iter().position(|block| *block == module).unwrap_or(0)
            }
            // `layerN.*` is block N; `conv1` and `bn1` are the stem.
            Backbone::ResNet50 => {
                let module = tensor.name.split('.').next().unwrap_or_default();
                blocks.iter().position(|block| *block == module).unwrap_or(0)
            }
            // `features.denseblockN.*` and `features.transitionN.*` are block N, `features.norm5`
            // closes block 4; `conv0` and `norm0` are the stem.
            Backbone::DenseNet121 => {
                let module = tensor.name.split('.').nth(1).unwrap_or_default();
                let module = module.replace("transition", "denseblock");
                if module == "norm5" {
                    blocks.len() - 1
                } else {
                    blocks.iter().position(|block| *block == module).unwrap_or(0)
                }
            }
            // `features.N.*` is block N: the stem, the seven stages, then the top convolution.
            Backbone::EfficientNetB0 => tensor.name.split('.').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0),
        };
        counts.trainable[block] += values;
    }
    counts
}

/// A backbone's activation sizes for one square image, in values.
struct NetworkShape {
    /// Layer outputs per block (the image counted in the first).
    block_outputs: Vec<f64>,
    /// The largest layer's input plus output.
    largest_layer: f64,
    /// Height × width of the feature map the head receives.
    feature_area: f64,
    /// Tensors autograd and the allocator hold per layer output at the peak (module comment).
    backward_factor: f64,
}

impl NetworkShape {
    fn new(backbone: Backbone, side: u32) -> NetworkShape {
        match backbone {
            Backbone::Vgg16 => NetworkShape::vgg16(side as f64),
            Backbone::InceptionV3 => NetworkShape::inception_v3(side as f64),
            Backbone::ResNet50 => NetworkShape::resnet50(side as f64),
            Backbone::DenseNet121 => NetworkShape::densenet121(side as f64),
            Backbone::EfficientNetB0 => NetworkShape::efficientnet_b0(side as f64),
        }
    }

    /// A convolution (with its batch norm and ReLU) from `in_channels` at `in_area` to
    /// `out_channels` at `out_area`: its output counts, its input plus output bounds the largest.
    fn layer(&mut self, outputs: &mut f64, in_values: f64, out_values: f64) {
        self.largest_layer = f64::max(self.largest_layer, in_values + out_values);
        *outputs += out_values;
    }

    /// torchvision's ResNet50, exactly: every stride-2 step (7×7 pad 3, 3×3 pool pad 1, 3×3 pad 1)
    /// rounds up. Per bottleneck three convolutions, the projection in a stage's first, and the
    /// residual sum; backward factor 3 as for InceptionV3 (batch norm after every convolution).
    fn resnet50(side: f64) -> NetworkShape {
        let mut shape =
            NetworkShape { block_outputs: Vec::new(), largest_layer: 0.0, feature_area: 0.0, backward_factor: 3.0 };
        let halve = |side: f64| (side / 2.0).ceil();
        let mut outputs = 3.0 * side * side;
        let conv1 = halve(side);
        shape.layer(&mut outputs, 3.0 * side * side, 64.0 * conv1 * conv1);
        let mut side = halve(conv1);
        outputs += 64.0 * side * side; // the max pool
        shape.block_outputs.push(std::mem::take(&mut outputs));
        let mut channels = 64.0;
        for (stage, (count, width, out_channels)) in RESNET50_STAGES.into_iter().enumerate() {
            let (width, out_channels) = (width as f64, out_channels as f64);
            for index in 0..count {
                let in_area = side * side;
                if index == 0 && stage > 0 {
                    side = halve(side);
                }
                let area = side * side;
                shape.layer(&mut outputs, channels * in_area, width * in_area);
                shape.layer(&mut outputs, width * in_area, width * area);
                shape.layer(&mut outputs, width * area, out_channels * area);
                if index == 0 {
                    shape.layer(&mut outputs, channels * in_area, out_channels * area);
                }
                outputs += out_channels * area; // the residual sum and its ReLU
                channels = out_channels;
            }
            shape.block_outputs.push(std::mem::take(&mut outputs));
        }
        shape.feature_area = side * side;
        shape
    }

    /// torchvision's DenseNet121, exactly: per dense layer the concatenation of its inputs, the
    /// 1×1 bottleneck and the 3×3 growth; per transition its convolution and 2×2 average pool
    /// (which floors); backward factor 3 (a batch norm before every convolution).
    fn densenet121(side: f64) -> NetworkShape {
        let mut shape =
            NetworkShape { block_outputs: Vec::new(), largest_layer: 0.0, feature_area: 0.0, backward_factor: 3.0 };
        let mut outputs = 3.0 * side * side;
        let conv0 = (side / 2.0).ceil();
        shape.layer(&mut outputs, 3.0 * side * side, 64.0 * conv0 * conv0);
        let mut side = (conv0 / 2.0).ceil();
        outputs += 64.0 * side * side; // pool0
        shape.block_outputs.push(std::mem::take(&mut outputs));
        let (growth, bottleneck) = (DENSENET121_GROWTH as f64, DENSENET121_BOTTLENECK as f64);
        let mut channels = 64.0;
        for (block, layers) in DENSENET121_LAYERS.into_iter().enumerate() {
            let area = side * side;
            for _ in 0..layers {
                outputs += channels * area; // the concatenated input
                shape.layer(&mut outputs, channels * area, bottleneck * area);
                shape.layer(&mut outputs, bottleneck * area, growth * area);
                channels += growth;
            }
            outputs += channels * area; // the block's concatenated output
            if block + 1 < DENSENET121_LAYERS.len() {
                shape.layer(&mut outputs, channels * area, channels / 2.0 * area);
                channels /= 2.0;
                side = (side / 2.0).floor();
                outputs += channels * side * side;
            } else {
                outputs += channels * area; // norm5 and its ReLU
            }
            shape.block_outputs.push(std::mem::take(&mut outputs));
        }
        shape.feature_area = side * side;
        shape
    }

    fn vgg16(side: f64) -> NetworkShape {
        let mut shape =
            NetworkShape { block_outputs: Vec::new(), largest_layer: 0.0, feature_area: 0.0, backward_factor: 2.0 };
        let (mut channels, mut side) = (3.0, side);
        let mut outputs = 3.0 * side * side; // the image, which the first convolution keeps
        for (width, convolutions) in [(64.0, 2), (128.0, 2), (256.0, 3), (512.0, 3), (512.0, 3)] {
            let area = side * side;
            for _ in 0..convolutions {
                shape.largest_layer = f64::max(shape.largest_layer, (channels + width) * area);
                outputs += width * area;
                channels = width;
            }
            side = (side / 2.0).floor();
            outputs += width * side * side;
            shape.block_outputs.push(outputs);
            outputs = 0.0;
        }
        shape.feature_area = side * side;
        shape
    }

    fn inception_v3(side: f64) -> NetworkShape {
        let pixels = side * side;
        // torchvision's stride-2 valid 3×3 steps: 299 → 149 → (147) → 73 → (71) → 35 → 17 → 8.
        let halve = |x: f64| ((x - 3.0) / 2.0).floor() + 1.0;
        let feature_side = halve(halve(halve(halve(halve(side) - 2.0) - 2.0)));
        NetworkShape {
            block_outputs: INCEPTION_VALUES_PER_PIXEL.iter().map(|per_pixel| per_pixel * pixels).collect(),
            largest_layer: INCEPTION_LARGEST_LAYER_PER_PIXEL * pixels,
            feature_area: feature_side.max(1.0).powi(2),
            backward_factor: 3.0,
        }
    }
}

impl NetworkShape {
    /// EfficientNet-B0's outputs, exactly, from the stage table the weights are checked against:
    /// per MBConv block the expansion, the depthwise convolution, the squeeze-excitation's
    /// rescaled map and the projection (each convolution with its batch norm and SiLU once), plus
    /// the residual sum where there is one; the squeeze-excitation's pooled vectors are too small
    /// to count. Every stride-2 step rounds up ("same" padding on an odd side). Backward factor 3,
    /// as for InceptionV3: each convolution's output is kept by its batch norm, whose output is
    /// kept by the SiLU.
    fn efficientnet_b0(side: f64) -> NetworkShape {
        let mut shape =
            NetworkShape { block_outputs: Vec::new(), largest_layer: 0.0, feature_area: 0.0, backward_factor: 3.0 };
        let layer = |shape: &mut NetworkShape, inputs: f64, outputs: f64| {
            shape.largest_layer = f64::max(shape.largest_layer, inputs + outputs);
            outputs
        };
        let image = 3.0 * side * side;
        let mut side = (side / 2.0).ceil();
        let stem_channels = EFFICIENTNET_B0_STEM_CHANNELS as f64;
        let stem = layer(&mut shape, image, stem_channels * side * side);
        shape.block_outputs.push(image + stem);
        for stage in &EFFICIENTNET_B0_STAGES {
            let mut outputs = 0.0;
            for block in 0..stage.layers {
                let in_channels = stage.block_in_channels(block) as f64;
                let expanded = in_channels * stage.expand_ratio as f64;
                let stride = if block == 0 { stage.stride } else { 1 };
                let area_in = side * side;
                if stride == 2 {
                    side = (side / 2.0).ceil();
                }
                let area = side * side;
                if stage.expand_ratio != 1 {
                    outputs += layer(&mut shape, in_channels * area_in, expanded * area_in);
                }
                outputs += layer(&mut shape, expanded * area_in, expanded * area);
                outputs += expanded * area; // the squeeze-excitation's rescaled map
                let out_channels = stage.out_channels as f64;
                outputs += layer(&mut shape, expanded * area, out_channels * area);
                if stride == 1 && stage.block_in_channels(block) == stage.out_channels {
                    outputs += out_channels * area; // the residual sum
                }
            }
            shape.block_outputs.push(outputs);
        }
        let last = EFFICIENTNET_B0_STAGES[EFFICIENTNET_B0_STAGES.len() - 1].out_channels as f64;
        let area = side * side;
        let top = layer(&mut shape, last * area, EFFICIENTNET_B0_TOP_CHANNELS as f64 * area);
        shape.block_outputs.push(top);
        shape.feature_area = area;
        shape
    }
}

/// The head's parameters and activations.
struct HeadShape {
    /// Dense weights and biases, batch norm's scale and shift.
    parameters: f64,
    /// Batch norm running statistics.
    buffers: f64,
    /// Layer outputs for one image (dropout's mask counted with its output).
    outputs: f64,
}

impl HeadShape {
    fn new(layers: &[HeadLayer], feature_channels: f64, feature_area: f64) -> HeadShape {
        let mut shape = HeadShape { parameters: 0.0, buffers: 0.0, outputs: 0.0 };
        let mut width = feature_channels;
        for layer in layers {
            match *layer {
                HeadLayer::Gap => width = feature_channels,
                HeadLayer::Flatten => width = feature_channels * feature_area,
                HeadLayer::Batchnorm(_) => {
                    shape.parameters += 2.0 * width;
                    shape.buffers += 2.0 * width;
                }
                HeadLayer::Relu => {}
                HeadLayer::Dropout(_) => shape.outputs += width,
                HeadLayer::Dense(units) => {
                    shape.parameters += width * units as f64 + units as f64;
                    width = units as f64;
                }
            }
            shape.outputs += width;
        }
        shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: f64 = 1e9;

    /// A spec patched from a VGG16 full fine-tune at 224 px, batch 32, float32, RMSprop.
    fn spec(patch: impl FnOnce(&mut serde_json::Value)) -> JobSpec {
        let mut value = serde_json::json!({
            "dataset": "d", "backbone": "vgg16", "image_size": 224, "batch_size": 32, "precision": "fp32",
            "head": ["gap", {"dense": 256}, "relu", {"dense": 1}],
            "phases": [{"epochs": 1, "train": "all"}],
            "optimizer": {"name": "rmsprop", "lr": 1e-4}
        });
        patch(&mut value);
        JobSpec::parse(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn parameter_counts_match_the_published_ones() {
        // VGG16's convolutional base: 14,714,688 (138 M with the classifier it does not use).
        let vgg: f64 = block_parameters(Backbone::Vgg16).trainable.iter().sum();
        assert_eq!(vgg, 14_714_688.0);
        assert_eq!(block_parameters(Backbone::Vgg16).trainable[4], 3.0 * (512.0 * 512.0 * 9.0 + 512.0));
        // InceptionV3 without its fc and auxiliary head: 27,161,264 − 2,049,000 − 3,326,696.
        let inception = block_parameters(Backbone::InceptionV3);
        assert_eq!(inception.trainable.iter().sum::<f64>(), 21_785_568.0);
        assert!(inception.trainable.iter().all(|count| *count > 0.0), "every block has parameters");
    }

    #[test]
    fn vgg16_at_224_px_batch_32_float32_needs_about_five_gb() {
        // The layer outputs of one 224 px image: 13.5 M after the convolutions, 1.5 M after the
        // pools, 0.15 M for the image: 15.2 M values, 61 MB in float32 (CS231n's count). Times 32
        // images and the backward factor 2: 3.9 GB. Weights (59 MB), gradients and RMSprop's
        // average (118 MB) and the 1.07 GB CUDA allowance bring it to about 5.2 GB, at or above
        // what PyTorch measures for this model (4-5 GB reserved); the 2.15 GB the job may keep of
        // its dataset on a shared GPU makes 7.3 GB: inside 5-20 GB.
        let bytes = estimate_bytes(&spec(|_| {})) as f64;
        assert!((5.0 * GB..20.0 * GB).contains(&bytes), "{:.2} GB", bytes / GB);
        let data = GPU_DATA_ALLOWANCE_BYTES as f64 / GB;
        assert!((bytes / GB - data - 5.15).abs() < 0.05, "{:.3} GB", bytes / GB);
    }

    #[test]
    fn a_vgg16_job_writes_a_weights_file_per_phase_and_the_resume_checkpoint_twice() {
        // Weights: 14,714,688 backbone + 512·256 + 256 + 256 + 1 head parameters, float32: 59.4 MB.
        let weights = 4.0 * (14_714_688.0 + 512.0 * 256.0 + 256.0 + 256.0 + 1.0);
        // One phase training everything with RMSprop (one slot): phase file + 2 × (weights + slot).
        let one = disk_bytes(&spec(|_| {})) as f64;
        assert!((one - (weights + 2.0 * (2.0 * weights))).abs() < 16.0, "{one}");
        // Q1's two phases (head, then block5 + head): two files; the larger optimizer state is block5's.
        let q1 = disk_bytes(&spec(|value| {
            value["phases"] =
                serde_json::json!([{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}]);
        })) as f64;
        let block5_and_head = 3.0 * (512.0 * 512.0 * 9.0 + 512.0) + (512.0 * 256.0 + 256.0 + 256.0 + 1.0);
        assert!((q1 - (2.0 * weights + 2.0 * (weights + 4.0 * block5_and_head))).abs() < 16.0, "{q1}");
        // Flatten makes a larger head at larger images, so larger files.
        let flatten = |side: u32| {
            disk_bytes(&spec(|value| {
                value["image_size"] = serde_json::json!(side);
                value["head"] = serde_json::json!(["flatten", {"dense": 256}, "relu", {"dense": 1}]);
            }))
        };
        assert!(flatten(256) > flatten(128));
        // `checkpoints`: Q1 keeping only the final file needs one weights file less; keeping
        // every epoch's (3 + 2 epochs), three more.
        let q1_with = |checkpoints: &str, epochs: [u32; 2]| {
            disk_bytes(&spec(|value| {
                value["phases"] = serde_json::json!([{"epochs": epochs[0], "train": "head"}, {"epochs": epochs[1], "train": ["block5", "head"]}]);
                value["checkpoints"] = serde_json::json!(checkpoints);
            })) as f64
        };
        assert!((q1_with("phases", [1, 1]) - q1).abs() < 1.0);
        assert!((q1 - q1_with("final", [1, 1]) - weights).abs() < 16.0);
        assert!((q1_with("all", [3, 2]) - q1_with("phases", [3, 2]) - 3.0 * weights).abs() < 64.0);
    }

    #[test]
    fn more_images_or_larger_ones_need_more() {
        for backbone in ["vgg16", "inception_v3"] {
            let at = |batch: u32, size: u32| {
                estimate_bytes(&spec(|v| {
                    v["backbone"] = serde_json::json!(backbone);
                    v["batch_size"] = serde_json::json!(batch);
                    v["image_size"] = serde_json::json!(size);
                }))
            };
            let by_batch: Vec<u64> = [1, 2, 8, 32, 128].map(|batch| at(batch, 256)).to_vec();
            assert!(by_batch.windows(2).all(|pair| pair[0] < pair[1]), "{backbone}: {by_batch:?}");
            let by_size: Vec<u64> = [96, 128, 224, 299, 512].map(|size| at(16, size)).to_vec();
            assert!(by_size.windows(2).all(|pair| pair[0] < pair[1]), "{backbone}: {by_size:?}");
        }
    }

    #[test]
    fn bf16_needs_less_than_float32_and_auto_means_bf16() {
        for backbone in ["vgg16", "inception_v3"] {
            let with = |precision: &str| {
                estimate_bytes(&spec(|v| {
                    v["backbone"] = serde_json::json!(backbone);
                    v["precision"] = serde_json::json!(precision);
                }))
            };
            assert!(with("bf16") < with("fp32"), "{backbone}");
            assert_eq!(with("auto"), with("bf16"));
        }
    }

    #[test]
    fn variable_size_counts_a_square_image_of_the_longest_side() {
        let bounded = spec(|v| {
            v["image_size"] = serde_json::json!(null);
            v["max_image_side"] = serde_json::json!(320);
        });
        assert_eq!(estimate_bytes(&bounded), estimate_bytes(&spec(|v| v["image_size"] = serde_json::json!(320))));
        let default_side = spec(|v| v["image_size"] = serde_json::json!(null));
        assert_eq!(estimate_bytes(&default_side), estimate_bytes(&spec(|v| v["image_size"] = serde_json::json!(256))));
    }

    #[test]
    fn the_largest_phase_decides() {
        let head_only = estimate_bytes(&spec(|v| v["phases"] = serde_json::json!([{"epochs": 1, "train": "head"}])));
        let block5 =
            estimate_bytes(&spec(|v| v["phases"] = serde_json::json!([{"epochs": 1, "train": ["block5", "head"]}])));
        let full = estimate_bytes(&spec(|_| {}));
        assert!(head_only < block5 && block5 < full, "{head_only} {block5} {full}");
        let both = estimate_bytes(&spec(|v| {
            v["phases"] =
                serde_json::json!([{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}])
        }));
        assert_eq!(both, block5);
        // Training block 2 alone still backpropagates through blocks 3 to 5 and the head: it needs
        // the activations of training them all, and only their gradients and RMSprop state less.
        let train = |blocks: serde_json::Value| {
            estimate_bytes(&spec(|v| v["phases"] = serde_json::json!([{"epochs": 1, "train": blocks}])))
        };
        let block2 = train(serde_json::json!(["block2"]));
        let block2_to_5 = train(serde_json::json!(["block2", "block3", "block4", "block5"]));
        let blocks_3_to_5: f64 = block_parameters(Backbone::Vgg16).trainable[2..].iter().sum();
        assert!(((block2_to_5 - block2) as f64 - 8.0 * blocks_3_to_5).abs() <= 1.0, "{block2} {block2_to_5}");
    }

    #[test]
    fn optimizer_state_follows_the_optimizer() {
        let with = |optimizer: serde_json::Value| estimate_bytes(&spec(|v| v["optimizer"] = optimizer)) as f64;
        let sgd = with(serde_json::json!({"name": "sgd", "lr": 0.01}));
        let momentum = with(serde_json::json!({"name": "sgd", "lr": 0.01, "momentum": 0.9}));
        let rmsprop = with(serde_json::json!({"name": "rmsprop", "lr": 0.01}));
        let adam = with(serde_json::json!({"name": "adam", "lr": 0.01}));
        // One float32 slot per trainable parameter: the backbone plus the head (512·256 + 256 + 256 + 1).
        let slot = 4.0 * (14_714_688.0 + 512.0 * 256.0 + 256.0 + 257.0);
        assert!(
            (momentum - sgd - slot).abs() <= 1.0 && (rmsprop - sgd - slot).abs() <= 1.0,
            "{sgd} {momentum} {rmsprop}"
        );
        assert!((adam - sgd - 2.0 * slot).abs() <= 1.0, "{sgd} {adam}");
    }

    #[test]
    fn a_flatten_head_counts_its_wide_dense_layer() {
        // VGG16 at 224 px ends in 512 × 7 × 7 = 25,088 values; a dense of 4096 on them holds 103 M
        // parameters, as in VGG16's own classifier.
        let gap = estimate_bytes(&spec(|v| v["head"] = serde_json::json!(["gap", {"dense": 4096}, {"dense": 1}])));
        let flatten =
            estimate_bytes(&spec(|v| v["head"] = serde_json::json!(["flatten", {"dense": 4096}, {"dense": 1}])));
        let extra_parameters = (25_088.0 - 512.0) * 4096.0;
        // Weights, gradient and RMSprop's average: 12 bytes each.
        assert!(((flatten - gap) as f64 / (12.0 * extra_parameters) - 1.0).abs() < 0.01, "{gap} {flatten}");
        // InceptionV3 at 299 px ends in 8 × 8.
        assert_eq!(NetworkShape::new(Backbone::InceptionV3, 299).feature_area, 64.0);
        assert_eq!(NetworkShape::new(Backbone::InceptionV3, 75).feature_area, 1.0);
        assert_eq!(NetworkShape::new(Backbone::Vgg16, 224).feature_area, 49.0);
    }

    #[test]
    fn efficientnet_b0_counts_its_stages_and_ends_in_a_seven_by_seven_map_at_224_px() {
        let parameters = block_parameters(Backbone::EfficientNetB0);
        // torchvision's 5,288,548 less the classifier's 1,281,000; the top is 320·1280 + 2·1280.
        assert_eq!(parameters.trainable.iter().sum::<f64>(), 4_007_548.0);
        assert_eq!(parameters.trainable[8], 320.0 * 1280.0 + 2.0 * 1280.0);
        assert!(parameters.trainable.iter().all(|count| *count > 0.0), "every block has parameters");
        let shape = NetworkShape::new(Backbone::EfficientNetB0, 224);
        assert_eq!(shape.feature_area, 49.0);
        assert_eq!(NetworkShape::new(Backbone::EfficientNetB0, 32).feature_area, 1.0);
        // The stem at 224 px: the image (150,528 values) and 32 × 112 × 112 (401,408).
        assert_eq!(shape.block_outputs[0], 150_528.0 + 401_408.0);
        // stage1 (one block, 32 → 16 at 112 px, no expansion, no residual): the depthwise output
        // and the rescaled map (32 × 112² each), the projection (16 × 112²).
        assert_eq!(shape.block_outputs[1], (32.0 + 32.0 + 16.0) * 12_544.0);
        // The largest layer is stage2's first depthwise convolution, 96 channels from 112 px to 56.
        assert_eq!(shape.largest_layer, 96.0 * (12_544.0 + 3_136.0));
        // 9.4 M values per image at 224 px, summed by hand from torchvision's output shapes.
        let values: f64 = shape.block_outputs.iter().sum();
        assert_eq!(values, 9_404_864.0);
    }

    #[test]
    fn inception_at_299_px_counts_torchvision_layer_outputs() {
        // 14.4 M values per image, as summed from torchvision's shapes.
        let values: f64 = NetworkShape::new(Backbone::InceptionV3, 299).block_outputs.iter().sum();
        assert!((values / 14.42e6 - 1.0).abs() < 0.005, "{values}");
        let vgg: f64 = NetworkShape::new(Backbone::Vgg16, 224).block_outputs.iter().sum();
        assert!((vgg / 15.24e6 - 1.0).abs() < 0.005, "{vgg}");
    }

    #[test]
    fn resnet50_and_densenet121_count_torchvision_layer_outputs_and_feature_maps() {
        // torchvision's shapes at 224 px, counted by hand the way the functions above count them.
        let resnet = NetworkShape::new(Backbone::ResNet50, 224);
        assert_eq!(resnet.feature_area, 49.0);
        assert_eq!(resnet.block_outputs.len(), 5);
        assert_eq!(resnet.block_outputs[0], 3.0 * 224.0 * 224.0 + 64.0 * 112.0 * 112.0 + 64.0 * 56.0 * 56.0);
        // layer4 at 7×7: 3 bottlenecks of 512 + 512 + 2048 + the sum, the first's 1×1 runs at
        // 14×14, and the projection.
        let layer4 = 512.0 * 196.0
            + 512.0 * 49.0
            + 2.0 * 2048.0 * 49.0
            + 2048.0 * 49.0
            + 2.0 * (512.0 * 49.0 * 2.0 + 2.0 * 2048.0 * 49.0);
        assert_eq!(resnet.block_outputs[4], layer4);
        assert_eq!(NetworkShape::new(Backbone::ResNet50, 32).feature_area, 1.0);
        assert_eq!(NetworkShape::new(Backbone::ResNet50, 65).feature_area, 9.0);
        let densenet = NetworkShape::new(Backbone::DenseNet121, 224);
        assert_eq!(densenet.feature_area, 49.0);
        assert_eq!(densenet.block_outputs.len(), 5);
        assert_eq!(NetworkShape::new(Backbone::DenseNet121, 29).feature_area, 1.0);
        // Dense block 4 at 7×7: inputs of 512 + 32k channels for k = 0…15, 128 and 32 per layer,
        // the 1024-channel output, and norm5.
        let block4: f64 =
            (0..16).map(|k| (512.0 + 32.0 * k as f64 + 128.0 + 32.0) * 49.0).sum::<f64>() + 2.0 * 1024.0 * 49.0;
        assert_eq!(densenet.block_outputs[4], block4);
        // Each backbone's parameters land in its blocks and none in a block that has none.
        for backbone in [Backbone::ResNet50, Backbone::DenseNet121] {
            let parameters = block_parameters(backbone);
            assert!(parameters.trainable.iter().all(|count| *count > 0.0), "{backbone:?}");
        }
        assert_eq!(block_parameters(Backbone::ResNet50).trainable[0], 64.0 * 3.0 * 49.0 + 2.0 * 64.0);
        assert_eq!(block_parameters(Backbone::DenseNet121).trainable[0], 64.0 * 3.0 * 49.0 + 2.0 * 64.0);
    }
}
