//! The networks: a torchvision-named backbone (VGG16, InceptionV3, ResNet50, DenseNet121 or EfficientNet-B0) and the spec's classifier head
//! (`head.N.*`), written functionally over tensors held in one VarStore so a checkpoint is simply
//! the store's named tensors.

mod densenet;
mod efficientnet;
mod inception;
mod layers;
mod resnet;
mod vgg;

use layers::BatchNorm;
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};
use trainq::domain::backbone::Backbone;
use trainq::domain::spec::{HeadLayer, JobSpec, TrainSet};

/// A convolutional base split into named blocks (`BackboneInfo::blocks`, input side first).
pub trait BackboneNet {
    /// Number of blocks.
    fn block_count(&self) -> usize;
    /// Runs blocks `from..to`; `bn_train[i]` says whether block i's batch norms use batch
    /// statistics (only blocks being trained, in training mode).
    fn forward_blocks(&self, x: &Tensor, from: usize, to: usize, bn_train: &[bool]) -> Tensor;
    /// The tensors of a block an optimizer may update (never running statistics).
    fn block_parameters(&self, block: usize) -> Vec<Tensor>;
    /// Inference up to the last convolution's output, the layer Grad-CAM explains (VGG16's
    /// `block5_conv3` before its pool, as in the textbook; InceptionV3's `Mixed_7c`).
    fn forward_to_cam_layer(&self, x: &Tensor) -> Tensor;
    /// From that layer's output to the backbone's output (VGG16: the last pool).
    fn cam_layer_to_output(&self, a: &Tensor) -> Tensor;
}

/// Runs blocks `blocks` one by one with `run`, laying a CPU network's activations out per block:
/// channels-last through frozen blocks, the caller's layout through trained ones, and the caller's
/// layout on the way out. Measured on this project's 2-core CPUs (torch 2.11, batch 20, 128 px,
/// one thread, `deploy/bench/cpu_layout.py`): frozen blocks in inference ran channels-last 1.5–1.9×
/// faster than NCHW in float32 and bf16 alike (VGG16 blocks 1–4: fp32 15.4 → 23.0, bf16 29.2 →
/// 43.3 img/s; InceptionV3 up to Mixed_7a: fp32 84.8 → 138, bf16 119 → 280 img/s), while trained
/// blocks on cached activations ran within 6 % either way (NCHW vs channels-last, VGG16 block5 on
/// 8×8: fp32 87.6 vs 93.1, bf16 157 vs 151; InceptionV3 Mixed_7b–7c on 2×2: 220 vs 215, 238 vs
/// 243; on an earlier box NCHW was clearly ahead for block5: 198 vs 252 ms per step). The layout
/// depends only on the block, so the cached and uncached paths run the same kernels. A GPU network
/// is channels-last throughout (`Numerics::channels_last`) and passes through untouched.
fn per_block_layout(
    x: &Tensor,
    blocks: std::ops::Range<usize>,
    frozen: impl Fn(usize) -> bool,
    mut run: impl FnMut(usize, Tensor) -> Tensor,
) -> Tensor {
    let floating = matches!(x.kind(), Kind::Float | Kind::BFloat16);
    let relayout = x.device() == Device::Cpu && floating && x.dim() == 4 && !crate::precision::is_channels_last(x);
    let mut x = x.shallow_clone();
    let mut switched = false;
    for block in blocks {
        let frozen = frozen(block);
        if relayout && frozen != switched {
            x = if frozen { crate::precision::channels_last(&x) } else { x.contiguous() };
            switched = frozen;
        }
        x = run(block, x);
    }
    if switched {
        x.contiguous()
    } else {
        x
    }
}

/// Whether none of a block's parameters trains.
fn is_frozen(parameters: &[Tensor]) -> bool {
    parameters.iter().all(|parameter| !parameter.requires_grad())
}

enum HeadOp {
    Gap,
    Flatten,
    BatchNorm(BatchNorm),
    Relu,
    Dense { weight: Tensor, bias: Tensor },
    Dropout(f64),
}

/// The classifier head, `head.<index in the spec>.*`.
pub struct Head {
    ops: Vec<HeadOp>,
}

impl Head {
    fn new(path: &nn::Path, layers: &[HeadLayer], feature_channels: i64, feature_area: i64) -> Head {
        let head = path / "head";
        let mut width = feature_channels;
        let ops = layers
            .iter()
            .enumerate()
            .map(|(index, layer)| {
                let p = &head / index;
                match *layer {
                    HeadLayer::Gap => HeadOp::Gap,
                    HeadLayer::Flatten => {
                        width = feature_channels * feature_area;
                        HeadOp::Flatten
                    }
                    HeadLayer::Relu => HeadOp::Relu,
                    HeadLayer::Dropout(rate) => HeadOp::Dropout(rate),
                    HeadLayer::Batchnorm(options) => {
                        HeadOp::BatchNorm(BatchNorm::new(&p, width, 1.0 - options.momentum, options.epsilon))
                    }
                    HeadLayer::Dense(units) => {
                        let units = units as i64;
                        // Keras' glorot_uniform kernel and zero bias.
                        let limit = (6.0 / (width + units) as f64).sqrt();
                        let weight = p.var("weight", &[units, width], Init::Uniform { lo: -limit, up: limit });
                        let bias = p.var("bias", &[units], Init::Const(0.0));
                        width = units;
                        HeadOp::Dense { weight, bias }
                    }
                }
            })
            .collect();
        Head { ops }
    }

    /// Runs the head. `train` enables dropout and batch statistics.
    pub fn forward(&self, features: &Tensor, train: bool) -> Tensor {
        self.forward_from(features, 0, train)
    }

    /// Runs the head from its op `first` on (1 skips a leading `gap` whose output was cached).
    pub fn forward_from(&self, features: &Tensor, first: usize, train: bool) -> Tensor {
        self.ops.iter().skip(first).fold(features.shallow_clone(), |x, op| match op {
            HeadOp::Gap => x.mean_dim(&[2i64, 3][..], false, Kind::Float),
            HeadOp::Flatten => x.flatten(1, -1),
            HeadOp::Relu => x.relu(),
            HeadOp::Dropout(rate) => x.dropout(*rate, train),
            HeadOp::Dense { weight, bias } => x.linear(weight, Some(bias)),
            HeadOp::BatchNorm(norm) => norm.forward(&x, train),
        })
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.ops
            .iter()
            .flat_map(|op| match op {
                HeadOp::Dense { weight, bias } => vec![weight.shallow_clone(), bias.shallow_clone()],
                HeadOp::BatchNorm(norm) => norm.parameters(),
                _ => vec![],
            })
            .collect()
    }
}

/// Backbone + head in one VarStore.
pub struct Network {
    /// Holds every tensor under its checkpoint name.
    pub vs: nn::VarStore,
    backbone: Box<dyn BackboneNet>,
    head: Head,
    blocks: &'static [&'static str],
}

/// Where a phase enters the network from cached activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The first block that runs live (all blocks below are frozen and cached).
    pub block: usize,
    /// The cache holds the backbone's output already pooled by the head's leading `gap`.
    pub pooled: bool,
}

/// Which parts a phase trains, resolved against the network.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// Leading blocks that are frozen: they run under `no_grad` and build no graph.
    pub frozen_prefix: usize,
    /// Per block: trained in this phase (its batch norms use batch statistics while training).
    pub blocks: Vec<bool>,
    /// Whether the head trains.
    pub head: bool,
}

impl Trainable {
    /// Nothing trains: inference everywhere.
    pub fn none(blocks: usize) -> Trainable {
        Trainable { frozen_prefix: blocks, blocks: vec![false; blocks], head: false }
    }
}

/// FLOPs (2 per multiply-add) of one image's forward pass through the backbone's convolutions, for
/// reporting a benchmark as a fraction of a GPU's peak: VGG16 only (the others are not counted).
pub fn forward_flops(spec: &JobSpec) -> Option<f64> {
    let side = spec.image_size? as f64;
    match spec.backbone {
        Backbone::Vgg16 => {
            let (mut flops, mut channels, mut area) = (0.0, 3.0, side * side);
            for (width, convs) in [(64.0, 2), (128.0, 2), (256.0, 3), (512.0, 3), (512.0, 3)] {
                for _ in 0..convs {
                    flops += 2.0 * channels * width * 9.0 * area;
                    channels = width;
                }
                area /= 4.0;
            }
            Some(flops)
        }
        Backbone::InceptionV3 | Backbone::ResNet50 | Backbone::DenseNet121 | Backbone::EfficientNetB0 => None,
    }
}

impl Network {
    /// Builds the network for `spec` (seed torch first for reproducible initialisation). A
    /// `flatten` head needs the feature map's area, found by running the backbone once.
    pub fn new(spec: &JobSpec, device: Device) -> Network {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let info = spec.backbone.info();
        let backbone: Box<dyn BackboneNet> = match spec.backbone {
            Backbone::Vgg16 => Box::new(vgg::Vgg16::new(&root)),
            Backbone::InceptionV3 => Box::new(inception::InceptionV3::new(&root)),
            Backbone::ResNet50 => Box::new(resnet::ResNet50::new(&root)),
            Backbone::DenseNet121 => Box::new(densenet::DenseNet121::new(&root)),
            Backbone::EfficientNetB0 => Box::new(efficientnet::EfficientNetB0::new(&root)),
        };
        let feature_area = match (spec.head.first(), spec.image_size) {
            (Some(HeadLayer::Flatten), Some(size)) => tch::no_grad(|| {
                let probe = Tensor::zeros([1, 3, size as i64, size as i64], (Kind::Float, device));
                let count = backbone.block_count();
                let features = backbone.forward_blocks(&probe, 0, count, &vec![false; count]);
                features.size()[2] * features.size()[3]
            }),
            _ => 1,
        };
        let head = Head::new(&root, &spec.head, info.feature_channels as i64, feature_area);
        Network { vs, backbone, head, blocks: info.blocks }
    }

    /// Number of backbone blocks.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Full forward pass. Blocks below `trainable.frozen_prefix` build no autograd graph; batch
    /// norms run in training mode only where `train` and their part is trained.
    pub fn forward(&self, images: &Tensor, trainable: &Trainable, train: bool) -> Tensor {
        let bn_train: Vec<bool> = trainable.blocks.iter().map(|on| *on && train).collect();
        let count = self.block_count();
        let frozen = tch::no_grad(|| self.backbone.forward_blocks(images, 0, trainable.frozen_prefix, &bn_train));
        let features = self.backbone.forward_blocks(&frozen, trainable.frozen_prefix, count, &bn_train);
        self.head.forward(&features, train && trainable.head)
    }

    /// Where a phase with `trainable` parts may start from cached activations: below its first
    /// trained block (after the backbone and, for a `gap` head, its pooling, when only the head
    /// trains). `None` when the first block trains: nothing frozen comes first.
    pub fn cut_for(&self, trainable: &Trainable) -> Option<Cut> {
        let block = trainable.frozen_prefix;
        (block > 0).then(|| Cut {
            block,
            pooled: block == self.block_count() && matches!(self.head.ops.first(), Some(HeadOp::Gap)),
        })
    }

    /// The name of what a cut caches, for logs: the last frozen block, plus `+gap` when pooled.
    pub fn cut_name(&self, cut: Cut) -> String {
        let name = self.blocks[cut.block - 1];
        if cut.pooled {
            format!("{name}+gap")
        } else {
            name.to_string()
        }
    }

    /// What a cut caches for a batch of images: the frozen blocks' output in inference mode (and
    /// pooled, when the cut says so). Builds no autograd graph.
    pub fn features(&self, images: &Tensor, cut: Cut) -> Tensor {
        tch::no_grad(|| {
            let bn_train = vec![false; self.block_count()];
            let x = self.backbone.forward_blocks(images, 0, cut.block, &bn_train);
            if cut.pooled {
                x.mean_dim(&[2i64, 3][..], false, Kind::Float)
            } else {
                x
            }
        })
    }

    /// The activations at cut `to` from those at the lower cut `from` (inference, no graph):
    /// `features(images, to) == features_between(features(images, from), from, to)`.
    pub fn features_between(&self, x: &Tensor, from: Cut, to: Cut) -> Tensor {
        tch::no_grad(|| {
            let bn_train = vec![false; self.block_count()];
            let x = self.backbone.forward_blocks(x, from.block, to.block, &bn_train);
            if to.pooled {
                x.mean_dim(&[2i64, 3][..], false, Kind::Float)
            } else {
                x
            }
        })
    }

    /// The forward pass from cached activations at `cut`: the same result as [`Network::forward`]
    /// on the images they came from.
    pub fn forward_from(&self, features: &Tensor, cut: Cut, trainable: &Trainable, train: bool) -> Tensor {
        let bn_train: Vec<bool> = trainable.blocks.iter().map(|on| *on && train).collect();
        let count = self.block_count();
        let live = trainable.frozen_prefix.max(cut.block);
        let frozen = tch::no_grad(|| self.backbone.forward_blocks(features, cut.block, live, &bn_train));
        let x = self.backbone.forward_blocks(&frozen, live, count, &bn_train);
        self.head.forward_from(&x, usize::from(cut.pooled), train && trainable.head)
    }

    /// Grad-CAM for one normalised image `[1, 3, H, W]` in inference mode: the class activation map
    /// of `class` (or of the predicted class) at the last convolution — its channels weighted by
    /// the spatially averaged gradient of the class score, summed, ReLU'd and scaled to [0, 1] —
    /// and the image's class probabilities (one for a sigmoid model). A sigmoid model's score is
    /// its logit for the positive class and minus it for the negative one.
    pub fn grad_cam(&self, image: &Tensor, class: Option<i64>) -> (Tensor, Vec<f64>) {
        let a = tch::no_grad(|| self.backbone.forward_to_cam_layer(image)).detach().set_requires_grad(true);
        let logits = self.head.forward(&self.backbone.cam_layer_to_output(&a), false);
        let binary = logits.size()[1] == 1;
        let probabilities: Vec<f64> = tch::no_grad(|| {
            let p = if binary { logits.sigmoid() } else { logits.softmax(1, Kind::Float) };
            Vec::<f64>::try_from(p.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default()
        });
        let class = class.unwrap_or_else(|| {
            if binary {
                i64::from(probabilities[0] >= 0.5)
            } else {
                logits.argmax(1, false).int64_value(&[0])
            }
        });
        let score = match (binary, class) {
            (true, 1) => logits.sum(Kind::Float),
            (true, _) => -logits.sum(Kind::Float),
            (false, class) => logits.get(0).get(class),
        };
        let gradient = Tensor::run_backward(&[score], &[&a], false, false).remove(0);
        let map = tch::no_grad(|| {
            let weights = gradient.mean_dim(&[2i64, 3][..], true, Kind::Float);
            let cam = (weights * &a).sum_dim_intlist(&[1i64][..], false, Kind::Float).relu().squeeze_dim(0);
            let peak = cam.max().double_value(&[]);
            if peak > 0.0 {
                cam / peak
            } else {
                cam
            }
        });
        (map.to_device(Device::Cpu), probabilities)
    }

    /// Every backbone tensor (parameters and batch-norm statistics) by name, sorted: what decides
    /// a frozen prefix's activations besides the input.
    pub fn backbone_state(&self) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(name, _)| !name.starts_with("head.")).collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// What a phase training `train` would train, without changing anything.
    pub fn plan(&self, train: &TrainSet) -> Trainable {
        let blocks: Vec<bool> = self.blocks.iter().map(|name| train.trains_block(name)).collect();
        let frozen_prefix = blocks.iter().position(|on| *on).unwrap_or(blocks.len());
        Trainable { frozen_prefix, blocks, head: train.trains_head() }
    }

    /// Marks exactly the phase's parameters as requiring gradients and returns them (the only
    /// tensors the phase's optimizer will hold).
    pub fn set_trainable(&self, train: &TrainSet) -> (Trainable, Vec<Tensor>) {
        let plan = self.plan(train);
        let mut parameters = Vec::new();
        for (block, on) in plan.blocks.iter().enumerate() {
            for parameter in self.backbone.block_parameters(block) {
                let _ = parameter.set_requires_grad(*on);
                if *on {
                    parameters.push(parameter);
                }
            }
        }
        for parameter in self.head.parameters() {
            let _ = parameter.set_requires_grad(plan.head);
            if plan.head {
                parameters.push(parameter);
            }
        }
        (plan, parameters)
    }

    /// Copies torchvision-named backbone tensors from a safetensors file. Strict: every backbone
    /// tensor must be present with its exact shape (a missing `num_batches_tracked` is tolerated:
    /// many published files drop it); keys the backbone does not have (a classifier, InceptionV3's
    /// AuxLogits) are ignored and counted.
    pub fn load_backbone(&self, path: &std::path::Path) -> anyhow::Result<usize> {
        let file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        let variables = self.vs.variables();
        let backbone: Vec<(&String, &Tensor)> =
            variables.iter().filter(|(name, _)| !name.starts_with("head.")).collect();
        let mut missing = Vec::new();
        for (name, target) in &backbone {
            match file.get(*name) {
                None if name.ends_with("num_batches_tracked") => {}
                None => missing.push((*name).clone()),
                Some(source) if source.size() != target.size() => anyhow::bail!(
                    "{}: {name} has shape {:?}, expected {:?}",
                    path.display(),
                    source.size(),
                    target.size()
                ),
                Some(source) => {
                    let mut target = target.shallow_clone();
                    let source = source.to_kind(target.kind());
                    tch::no_grad(|| target.copy_(&source));
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            anyhow::bail!("{} lacks {} backbone tensors, e.g. {}", path.display(), missing.len(), missing[0]);
        }
        Ok(file.keys().filter(|name| !variables.contains_key(*name)).count())
    }

    /// Loads every tensor (backbone and head) from a checkpoint this worker wrote
    /// (`final.safetensors`, `phaseN.safetensors`: the names `save_checkpoint` writes), for a
    /// model served for predictions or a job started from another's weights (`init_from`). Strict:
    /// each tensor must be there with its exact shape, and the file may hold nothing else, so a
    /// network of another shape is refused with the first difference named. Returns the count.
    pub fn load_checkpoint(&self, path: &std::path::Path) -> anyhow::Result<usize> {
        let file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|err| anyhow::anyhow!("reading {}: {err}", path.display()))?
            .into_iter()
            .collect();
        let variables = self.vs.variables();
        let mut missing: Vec<&String> = variables.keys().filter(|name| !file.contains_key(*name)).collect();
        missing.sort();
        if let Some(first) = missing.first() {
            anyhow::bail!(
                "{} lacks {} of this network's tensors, e.g. {first}: it was saved by a network of another shape",
                path.display(),
                missing.len()
            );
        }
        let mut extra: Vec<&String> = file.keys().filter(|name| !variables.contains_key(*name)).collect();
        extra.sort();
        if let Some(first) = extra.first() {
            anyhow::bail!("{} holds {} tensors this network does not have, e.g. {first}: it was saved by a network of another shape", path.display(), extra.len());
        }
        // In name order, so the difference named is always the same one.
        let mut names: Vec<&String> = variables.keys().collect();
        names.sort();
        for name in names {
            let (source, target) = (&file[name], &variables[name]);
            anyhow::ensure!(
                source.size() == target.size(),
                "{}: {name} has shape {:?}, this network's is {:?}",
                path.display(),
                source.size(),
                target.size()
            );
            let mut target = target.shallow_clone();
            let source = source.to_kind(target.kind());
            tch::no_grad(|| target.copy_(&source));
        }
        Ok(variables.len())
    }

    /// Number of scalars in these tensors.
    pub fn count(tensors: &[Tensor]) -> i64 {
        tensors.iter().map(|t| t.numel() as i64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_forward_flops_match_the_published_count() {
        // VGG16's convolutions at 224 px: 15.35 G multiply-adds (the classifier adds 0.12 G).
        let spec = JobSpec::parse(br#"{"dataset": "d", "backbone": "vgg16", "image_size": 224, "batch_size": 2,
            "head": ["gap", {"dense": 1}], "phases": [{"epochs": 1, "train": "all"}], "optimizer": {"name": "sgd", "lr": 0.1}}"#).unwrap();
        let flops = forward_flops(&spec).unwrap();
        assert!((flops / 2.0 / 15.35e9 - 1.0).abs() < 0.01, "{flops}");
    }
    use trainq::domain::weights_layout::expected_tensors;

    fn spec(backbone: Backbone, size: u32, first: &str) -> JobSpec {
        let json = format!(
            r#"{{"dataset": "d", "backbone": "{}", "weights": "random", "image_size": {size}, "batch_size": 2,
                "head": ["{first}", {{"dense": 4}}, "batchnorm", {{"dense": 1}}], "phases": [{{"epochs": 1, "train": "head"}}],
                "optimizer": {{"name": "sgd", "lr": 0.1}}}}"#,
            backbone.name()
        );
        JobSpec::parse(json.as_bytes()).unwrap()
    }

    /// A job started from another's weights (`init_from`) gets every tensor, backbone and head,
    /// and a network of another shape is refused naming the tensor.
    #[test]
    fn a_checkpoint_loads_whole_into_a_network_of_its_shape_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("final.safetensors");
        tch::manual_seed(1);
        let source = Network::new(&spec(Backbone::Vgg16, 32, "gap"), Device::Cpu);
        // tch's own writer: `resume` depends on `model`, so the model's tests don't use its writer.
        let tensors: Vec<(String, tch::Tensor)> = source.vs.variables().into_iter().collect();
        tch::Tensor::write_safetensors(&tensors, &file).unwrap();
        tch::manual_seed(2);
        let started = Network::new(&spec(Backbone::Vgg16, 32, "gap"), Device::Cpu);
        assert_ne!(started.vs.variables()["head.1.weight"], source.vs.variables()["head.1.weight"], "another seed");
        assert_eq!(started.load_checkpoint(&file).unwrap(), source.vs.variables().len());
        for (name, tensor) in source.vs.variables() {
            assert_eq!(started.vs.variables()[&name], tensor, "{name}");
        }
        let wider = JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "weights": "random", "image_size": 32, "batch_size": 2,
                "head": ["gap", {"dense": 8}, "batchnorm", {"dense": 1}], "phases": [{"epochs": 1, "train": "head"}],
                "optimizer": {"name": "sgd", "lr": 0.1}}"#,
        )
        .unwrap();
        let err = Network::new(&wider, Device::Cpu).load_checkpoint(&file).unwrap_err().to_string();
        assert!(err.contains("head.1.bias has shape [4], this network's is [8]"), "{err}");
        let err = started.load_checkpoint(&dir.path().join("gone.safetensors")).unwrap_err().to_string();
        assert!(err.contains("gone.safetensors"), "{err}");
    }

    /// The worker's backbone tensors are exactly torchvision's, as the server's table lists them.
    #[test]
    fn backbone_tensors_match_the_torchvision_layout() {
        for backbone in Backbone::ALL {
            let network = Network::new(&spec(backbone, 80, "gap"), Device::Cpu);
            let variables = network.vs.variables();
            let expected = expected_tensors(backbone);
            for tensor in &expected {
                let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
                assert_eq!(variables.get(&tensor.name).map(|t| t.size()), Some(shape), "{}", tensor.name);
            }
            let backbone_count = variables.keys().filter(|name| !name.starts_with("head.")).count();
            assert_eq!(backbone_count, expected.len(), "{} has tensors the layout does not list", backbone.name());
        }
    }

    #[test]
    fn flatten_heads_size_their_first_dense_from_the_feature_map() {
        // VGG16 at 64 px: 512 channels × 2 × 2. InceptionV3 at 80 px: 2048 × 1 × 1.
        let vgg = Network::new(&spec(Backbone::Vgg16, 64, "flatten"), Device::Cpu);
        assert_eq!(vgg.vs.variables()["head.1.weight"].size(), [4, 2048]);
        let inception = Network::new(&spec(Backbone::InceptionV3, 80, "flatten"), Device::Cpu);
        assert_eq!(inception.vs.variables()["head.1.weight"].size(), [4, 2048]);
    }

    #[test]
    fn vgg16_frozen_blocks_compute_what_trained_ones_do_and_hand_on_the_callers_layout() {
        // Frozen float32 blocks on the CPU run channels-last (vgg.rs); trained ones run as given.
        let network = Network::new(&spec(Backbone::Vgg16, 32, "gap"), Device::Cpu);
        let images = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (block4, block5) = (Cut { block: 4, pooled: false }, Cut { block: 5, pooled: false });
        let named = |name: &str| TrainSet::Named(String::from(name));
        let close = |ours: &Tensor, theirs: &Tensor, what: &str| {
            assert!(ours.is_contiguous(), "{what}: NCHW out, as the caller gave");
            let scale = theirs.abs().max().double_value(&[]).max(1e-6);
            let difference = (ours - theirs).abs().max().double_value(&[]);
            assert!(difference <= 1e-4 * scale, "{what}: {difference} of {scale}");
        };

        let (all, _) = network.set_trainable(&named("all"));
        let logits = tch::no_grad(|| network.forward(&images, &all, false));
        let (at4, at5) = (network.features(&images, block4), network.features(&images, block5));

        let (phase2, _) = network.set_trainable(&TrainSet::Blocks(vec![String::from("block5"), String::from("head")]));
        close(&tch::no_grad(|| network.forward(&images, &phase2, false)), &logits, "phase 2 logits");
        let cached4 = network.features(&images, block4);
        close(&cached4, &at4, "block4 activations");

        network.set_trainable(&named("head"));
        close(&network.features(&images, block5), &at5, "block5 from the pixels");
        close(&network.features_between(&cached4, block4, block5), &at5, "block5 from block4's cache");
    }

    /// ResNet50 and DenseNet121: the forward pass from cached activations of the frozen prefix is
    /// the full pass, and training the last block moves its batch-norm statistics while the frozen
    /// blocks' stay as loaded (Keras' inference-mode batch norm in frozen layers).
    #[test]
    fn resnet50_and_densenet121_cache_their_frozen_prefix_and_train_batch_norm_only_where_trained() {
        let cases = [
            (Backbone::ResNet50, "layer4", "layer3.5.bn3.running_mean", "layer4.2.bn3.running_mean"),
            (
                Backbone::DenseNet121,
                "denseblock4",
                "features.transition3.norm.running_mean",
                "features.norm5.running_mean",
            ),
        ];
        for (backbone, block, frozen_statistic, trained_statistic) in cases {
            tch::manual_seed(3);
            let network = Network::new(&spec(backbone, 64, "gap"), Device::Cpu);
            let images = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            let train = TrainSet::Blocks(vec![String::from(block), String::from("head")]);
            let (trainable, _) = network.set_trainable(&train);
            assert_eq!(trainable.frozen_prefix, 4, "{block}");
            let full = tch::no_grad(|| network.forward(&images, &trainable, false));
            let cut = network.cut_for(&trainable).unwrap();
            let cached = network.features(&images, cut);
            let from_cache = tch::no_grad(|| network.forward_from(&cached, cut, &trainable, false));
            let difference = (&from_cache - &full).abs().max().double_value(&[]);
            assert!(difference <= 1e-4 * full.abs().max().double_value(&[]).max(1e-6), "{block}: {difference}");

            let variables = network.vs.variables();
            let (frozen_before, trained_before) =
                (variables[frozen_statistic].copy(), variables[trained_statistic].copy());
            let _ = network.forward(&images, &trainable, true);
            assert!(variables[frozen_statistic].equal(&frozen_before), "{frozen_statistic} moved although frozen");
            assert!(!variables[trained_statistic].equal(&trained_before), "{trained_statistic} did not move");
        }
    }

    /// Each backbone's `min_image_size` is what the network takes: ResNet50 ends 1×1 at 32 px and
    /// DenseNet121 at 29 px, below which its last transition's 2×2 pool has nothing to pool.
    #[test]
    fn resnet50_and_densenet121_accept_their_minimum_image_side() {
        for backbone in [Backbone::ResNet50, Backbone::DenseNet121] {
            let side = backbone.info().min_image_size as i64;
            let network = Network::new(&spec(backbone, side as u32, "gap"), Device::Cpu);
            let all = Cut { block: network.block_count(), pooled: false };
            let images = Tensor::rand([2, 3, side, side], (Kind::Float, Device::Cpu));
            let features = network.features(&images, all);
            assert_eq!(features.size(), [2, backbone.info().feature_channels as i64, 1, 1], "{backbone:?}");
        }
        let network = Network::new(&spec(Backbone::DenseNet121, 29, "gap"), Device::Cpu);
        let all = Cut { block: network.block_count(), pooled: false };
        let smaller = Tensor::rand([2, 3, 28, 28], (Kind::Float, Device::Cpu));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| network.features(&smaller, all)));
        assert!(outcome.is_err(), "DenseNet121 at 28 px should have no feature map left");
    }

    #[test]
    fn frozen_blocks_are_not_trainable_and_their_batch_norm_stays_in_inference_mode() {
        let network = Network::new(&spec(Backbone::InceptionV3, 80, "gap"), Device::Cpu);
        let train = TrainSet::Blocks(vec![String::from("Mixed_7c"), String::from("head")]);
        let (trainable, parameters) = network.set_trainable(&train);
        assert_eq!(trainable.frozen_prefix, 11);
        assert_eq!(trainable.blocks.iter().filter(|on| **on).count(), 1);
        let variables = network.vs.variables();
        let frozen_before = variables["Mixed_7b.branch1x1.bn.running_mean"].copy();
        let trained_before = variables["Mixed_7c.branch1x1.bn.running_mean"].copy();
        let images = Tensor::rand([2, 3, 80, 80], (Kind::Float, Device::Cpu));
        let _ = network.forward(&images, &trainable, true);
        assert!(variables["Mixed_7b.branch1x1.bn.running_mean"].equal(&frozen_before), "frozen BN statistics moved");
        assert!(
            !variables["Mixed_7c.branch1x1.bn.running_mean"].equal(&trained_before),
            "trained BN statistics did not move"
        );
        assert!(!variables["Mixed_7b.branch1x1.conv.weight"].requires_grad());
        assert!(variables["Mixed_7c.branch1x1.conv.weight"].requires_grad());
        assert!(parameters.iter().all(|p| p.requires_grad()));
    }
}
