//! The networks: VGG16 with torchvision parameter names (`features.N.weight`) and the spec's
//! classifier head (`head.N.*`), written functionally over tensors held in one VarStore so a
//! checkpoint is simply the store's named tensors.

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::{HeadLayer, JobSpec, TrainSet};

/// VGG16's convolutional configuration: channel counts, `0` = 2×2 max pool. Block boundaries are
/// the pools.
const VGG16: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];

enum VggLayer {
    Conv { weight: Tensor, bias: Tensor },
    Pool,
}

/// VGG16's `features`: 13 convolutions with ReLU and 5 pools, in 5 blocks.
pub struct Vgg16 {
    /// (block index 0..5, layer)
    layers: Vec<(usize, VggLayer)>,
}

impl Vgg16 {
    /// Block names as specs use them.
    pub const BLOCKS: [&'static str; 5] = ["block1", "block2", "block3", "block4", "block5"];

    fn new(path: &nn::Path) -> Vgg16 {
        let features = path / "features";
        let mut layers = Vec::new();
        let (mut index, mut block, mut channels) = (0usize, 0usize, 3i64);
        // torchvision: kaiming_normal(fan_out, relu) weights, zero biases.
        let init = Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        for out in VGG16 {
            if out == 0 {
                layers.push((block, VggLayer::Pool));
                index += 1;
                block += 1;
            } else {
                let conv = &features / index;
                let weight = conv.var("weight", &[out, channels, 3, 3], init);
                let bias = conv.var("bias", &[out], Init::Const(0.0));
                layers.push((block, VggLayer::Conv { weight, bias }));
                channels = out;
                index += 2; // the ReLU takes an index in torchvision's Sequential
            }
        }
        Vgg16 { layers }
    }

    /// Runs blocks `from..to` (0-based, end exclusive).
    pub fn forward_blocks(&self, x: &Tensor, from: usize, to: usize) -> Tensor {
        let mut x = x.shallow_clone();
        for (block, layer) in &self.layers {
            if *block < from || *block >= to {
                continue;
            }
            x = match layer {
                VggLayer::Conv { weight, bias } => x.conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1).relu(),
                VggLayer::Pool => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
        }
        x
    }

    /// Parameters of one block.
    fn block_parameters(&self, block: usize) -> Vec<&Tensor> {
        self.layers
            .iter()
            .filter(|(b, _)| *b == block)
            .flat_map(|(_, layer)| match layer {
                VggLayer::Conv { weight, bias } => vec![weight, bias],
                VggLayer::Pool => vec![],
            })
            .collect()
    }
}

enum HeadOp {
    Gap,
    Flatten,
    BatchNorm {
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
        batches: Tensor,
        /// PyTorch's convention: the weight of the new batch (1 − Keras' momentum).
        momentum: f64,
        epsilon: f64,
    },
    Relu,
    Dense { weight: Tensor, bias: Tensor },
    Dropout(f64),
}

/// The classifier head, `head.<index in the spec>.*`.
pub struct Head {
    ops: Vec<HeadOp>,
}

impl Head {
    fn new(path: &nn::Path, layers: &[HeadLayer], feature_channels: i64, feature_side: i64) -> Head {
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
                        width = feature_channels * feature_side * feature_side;
                        HeadOp::Flatten
                    }
                    HeadLayer::Relu => HeadOp::Relu,
                    HeadLayer::Dropout(rate) => HeadOp::Dropout(rate),
                    HeadLayer::Batchnorm(options) => HeadOp::BatchNorm {
                        momentum: 1.0 - options.momentum,
                        epsilon: options.epsilon,
                        weight: p.var("weight", &[width], Init::Const(1.0)),
                        bias: p.var("bias", &[width], Init::Const(0.0)),
                        running_mean: p.zeros_no_train("running_mean", &[width]),
                        running_var: p.ones_no_train("running_var", &[width]),
                        // PyTorch's BatchNorm1d state has this counter; keeping it lets
                        // checkpoints load there with strict=True.
                        batches: p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false),
                    },
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
        let mut x = features.shallow_clone();
        for op in &self.ops {
            x = match op {
                HeadOp::Gap => x.mean_dim(&[2i64, 3][..], false, Kind::Float),
                HeadOp::Flatten => x.flatten(1, -1),
                HeadOp::Relu => x.relu(),
                HeadOp::Dropout(rate) => x.dropout(*rate, train),
                HeadOp::Dense { weight, bias } => x.linear(weight, Some(bias)),
                HeadOp::BatchNorm { weight, bias, running_mean, running_var, batches, momentum, epsilon } => {
                    if train {
                        let mut counter = batches.shallow_clone();
                        let _ = tch::no_grad(|| counter.g_add_scalar_(1));
                    }
                    x.batch_norm(
                        Some(weight),
                        Some(bias),
                        Some(running_mean),
                        Some(running_var),
                        train,
                        *momentum,
                        *epsilon,
                        true,
                    )
                }
            };
        }
        x
    }

    fn parameters(&self) -> Vec<&Tensor> {
        self.ops
            .iter()
            .flat_map(|op| match op {
                HeadOp::Dense { weight, bias } | HeadOp::BatchNorm { weight, bias, .. } => vec![weight, bias],
                _ => vec![],
            })
            .collect()
    }
}

/// Backbone + head in one VarStore.
pub struct Network {
    /// Holds every tensor under its checkpoint name.
    pub vs: nn::VarStore,
    /// The convolutional base.
    pub backbone: Vgg16,
    /// The classifier.
    pub head: Head,
}

/// Which parts a phase trains, resolved against the network.
pub struct Trainable {
    /// Leading blocks that are frozen: they run under `no_grad`, once per batch.
    pub frozen_prefix: usize,
    /// Whether the head trains (and its batch norm uses batch statistics).
    pub head: bool,
}

impl Network {
    /// Builds the network for `spec` (seed torch first for reproducible initialisation).
    pub fn new(spec: &JobSpec, device: Device) -> Network {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let backbone = Vgg16::new(&root);
        let side = spec.image_size.expect("validated specs have a size") as i64 / 32;
        let head = Head::new(&root, &spec.head, 512, side);
        Network { vs, backbone, head }
    }

    /// Full forward pass; blocks below `trainable.frozen_prefix` build no autograd graph.
    pub fn forward(&self, images: &Tensor, trainable: &Trainable, train: bool) -> Tensor {
        let frozen = tch::no_grad(|| self.backbone.forward_blocks(images, 0, trainable.frozen_prefix));
        let features = self.backbone.forward_blocks(&frozen, trainable.frozen_prefix, Vgg16::BLOCKS.len());
        self.head.forward(&features, train && trainable.head)
    }

    /// Marks exactly the phase's parameters as requiring gradients and returns them (the only
    /// tensors the phase's optimizer will hold).
    pub fn set_trainable(&self, train: &TrainSet) -> (Trainable, Vec<Tensor>) {
        let mut trainable = Vec::new();
        let mut frozen_prefix = Vgg16::BLOCKS.len();
        for (block, name) in Vgg16::BLOCKS.iter().enumerate() {
            let on = train.trains_block(name);
            if on {
                frozen_prefix = frozen_prefix.min(block);
            }
            for parameter in self.backbone.block_parameters(block) {
                let _ = parameter.set_requires_grad(on);
                if on {
                    trainable.push(parameter.shallow_clone());
                }
            }
        }
        let head = train.trains_head();
        for parameter in self.head.parameters() {
            let _ = parameter.set_requires_grad(head);
            if head {
                trainable.push(parameter.shallow_clone());
            }
        }
        (Trainable { frozen_prefix, head }, trainable)
    }

    /// Copies torchvision-named backbone weights from a safetensors file. Strict: every backbone
    /// tensor must be present with its exact shape; keys outside `features.` (a classifier) are
    /// ignored and counted.
    pub fn load_backbone(&self, path: &std::path::Path) -> anyhow::Result<usize> {
        let file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        let variables = self.vs.variables();
        let mut missing = Vec::new();
        for (name, target) in variables.iter().filter(|(name, _)| name.starts_with("features.")) {
            match file.get(name) {
                None => missing.push(name.clone()),
                Some(source) if source.size() != target.size() => anyhow::bail!(
                    "{}: {name} has shape {:?}, expected {:?}",
                    path.display(),
                    source.size(),
                    target.size()
                ),
                Some(source) => {
                    let mut target = target.shallow_clone();
                    tch::no_grad(|| target.copy_(&source.to_kind(Kind::Float)));
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            anyhow::bail!("{} lacks {} backbone tensors, e.g. {}", path.display(), missing.len(), missing[0]);
        }
        Ok(file.keys().filter(|name| !name.starts_with("features.")).count())
    }

    /// Number of scalars in these tensors.
    pub fn count(tensors: &[Tensor]) -> i64 {
        tensors.iter().map(|t| t.numel() as i64).sum()
    }
}
