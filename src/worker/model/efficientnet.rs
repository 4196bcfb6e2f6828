//! EfficientNet-B0's `features` with torchvision names (`features.0.0.weight`,
//! `features.3.1.block.2.fc1.bias`, …); its classifier is the job's head. Blocks for `train`
//! lists are torchvision's `features` children: `stem` (features.0), `stage1` … `stage7` (the
//! MBConv stages, features.1 … 7) and `top` (features.8, the 1×1 convolution to 1280 channels).
//! The stage table is the one the weights file is checked against
//! (`weights_layout::EFFICIENTNET_B0_STAGES`).
//!
//! Batch norm follows the other backbones: batch statistics only in a block being trained, in
//! training mode; running statistics (inference mode, as Keras does) in frozen blocks and in
//! evaluation. Stochastic depth follows torchvision: a residual block being trained drops its
//! branch for a random sample with probability 0.2 × (its index among the 16 blocks) / 16 and
//! scales the kept ones by 1 / (1 − p), drawn from the job's seeded generator; a frozen block and
//! every block in evaluation keeps the whole branch, as torchvision's eval mode does.

use super::layers::BatchNorm;
use super::{is_frozen, per_block_layout, BackboneNet};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use trainq::domain::weights_layout::{
    MbConvStage, EFFICIENTNET_B0_STAGES, EFFICIENTNET_B0_STEM_CHANNELS, EFFICIENTNET_B0_TOP_CHANNELS,
};

/// torchvision's `nn.BatchNorm2d` defaults for EfficientNet-B0 (eps 1e-5, the value its weights
/// were trained with); the momentum is Keras' 0.99 in PyTorch's convention, as for InceptionV3.
const BN_MOMENTUM: f64 = 0.01;
const BN_EPSILON: f64 = 1e-5;

/// torchvision's `stochastic_depth_prob` for EfficientNet-B0, reached by the last of its blocks.
const STOCHASTIC_DEPTH: f64 = 0.2;

/// torchvision's initialisation of every convolution: `kaiming_normal_(mode="fan_out")`.
const CONV_INIT: Init = Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// torchvision's `Conv2dNormActivation`: a convolution without bias (`N.0`), batch norm (`N.1`)
/// and, unless it is a projection, SiLU.
struct ConvNorm {
    weight: Tensor,
    bn: BatchNorm,
    stride: i64,
    groups: i64,
    activation: bool,
}

impl ConvNorm {
    fn new(path: &nn::Path, cin: i64, cout: i64, kernel: i64, stride: i64, groups: i64, activation: bool) -> ConvNorm {
        let weight = (path / "0").var("weight", &[cout, cin / groups, kernel, kernel], CONV_INIT);
        let bn = BatchNorm::new(&(path / "1"), cout, BN_MOMENTUM, BN_EPSILON);
        ConvNorm { weight, bn, stride, groups, activation }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        // torchvision pads (kernel − 1) / 2 on every side.
        let padding = (self.weight.size()[2] - 1) / 2;
        let x = x.conv2d::<Tensor>(&self.weight, None, [self.stride; 2], [padding; 2], [1, 1], self.groups);
        let x = self.bn.forward(&x, train);
        if self.activation {
            x.silu()
        } else {
            x
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut parameters = self.bn.parameters();
        parameters.push(self.weight.shallow_clone());
        parameters
    }
}

/// torchvision's `SqueezeExcitation` with SiLU: the map's channel means, two 1×1 convolutions
/// with biases (`fc1`, `fc2`), a sigmoid, and the map rescaled per channel.
struct SqueezeExcitation {
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
}

impl SqueezeExcitation {
    fn new(path: &nn::Path, channels: i64, squeeze: i64) -> SqueezeExcitation {
        let (fc1, fc2) = (path / "fc1", path / "fc2");
        SqueezeExcitation {
            fc1_weight: fc1.var("weight", &[squeeze, channels, 1, 1], CONV_INIT),
            fc1_bias: fc1.var("bias", &[squeeze], Init::Const(0.0)),
            fc2_weight: fc2.var("weight", &[channels, squeeze, 1, 1], CONV_INIT),
            fc2_bias: fc2.var("bias", &[channels], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let scale = x.mean_dim(&[2i64, 3][..], true, x.kind());
        let scale = scale.conv2d(&self.fc1_weight, Some(&self.fc1_bias), [1, 1], [0, 0], [1, 1], 1).silu();
        let scale = scale.conv2d(&self.fc2_weight, Some(&self.fc2_bias), [1, 1], [0, 0], [1, 1], 1).sigmoid();
        x * scale
    }

    fn parameters(&self) -> Vec<Tensor> {
        [&self.fc1_weight, &self.fc1_bias, &self.fc2_weight, &self.fc2_bias]
            .into_iter()
            .map(Tensor::shallow_clone)
            .collect()
    }
}

/// torchvision's `MBConv`: expansion (when the ratio is not 1), depthwise convolution,
/// squeeze-excitation, projection, and the input added back when the shape allows.
struct MbConv {
    expand: Option<ConvNorm>,
    depthwise: ConvNorm,
    squeeze_excitation: SqueezeExcitation,
    project: ConvNorm,
    residual: bool,
    stochastic_depth: f64,
}

impl MbConv {
    fn new(path: &nn::Path, stage: &MbConvStage, index: usize, stochastic_depth: f64) -> MbConv {
        let block = path / "block";
        let cin = stage.block_in_channels(index) as i64;
        let expanded = cin * stage.expand_ratio as i64;
        let stride = if index == 0 { stage.stride as i64 } else { 1 };
        let mut layer = 0;
        let mut next = || {
            layer += 1;
            &block / (layer - 1)
        };
        let expand = (stage.expand_ratio != 1).then(|| ConvNorm::new(&next(), cin, expanded, 1, 1, 1, true));
        let depthwise = ConvNorm::new(&next(), expanded, expanded, stage.kernel as i64, stride, expanded, true);
        let squeeze_excitation = SqueezeExcitation::new(&next(), expanded, stage.squeeze_channels(index) as i64);
        let project = ConvNorm::new(&next(), expanded, stage.out_channels as i64, 1, 1, 1, false);
        let residual = stride == 1 && cin == stage.out_channels as i64;
        MbConv { expand, depthwise, squeeze_excitation, project, residual, stochastic_depth }
    }

    fn forward(&self, input: &Tensor, train: bool) -> Tensor {
        let x = match &self.expand {
            Some(expand) => expand.forward(input, train),
            None => input.shallow_clone(),
        };
        let x = self.depthwise.forward(&x, train);
        let x = self.squeeze_excitation.forward(&x);
        let x = self.project.forward(&x, train);
        if !self.residual {
            return x;
        }
        if train && self.stochastic_depth > 0.0 {
            // torchvision's StochasticDepth, mode "row": one draw per sample.
            let survival = 1.0 - self.stochastic_depth;
            let keep = Tensor::rand([x.size()[0], 1, 1, 1], (Kind::Float, x.device())).lt(survival).to_kind(x.kind());
            x * (keep / survival) + input
        } else {
            x + input
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut parameters: Vec<Tensor> = self.expand.iter().flat_map(ConvNorm::parameters).collect();
        parameters.extend(self.depthwise.parameters());
        parameters.extend(self.squeeze_excitation.parameters());
        parameters.extend(self.project.parameters());
        parameters
    }
}

/// One of the nine blocks a `train` list names.
enum Block {
    /// `stem` and `top`: one convolution with batch norm and SiLU.
    Conv(ConvNorm),
    /// `stage1` … `stage7`.
    Stage(Vec<MbConv>),
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Block::Conv(conv) => conv.forward(x, train),
            Block::Stage(blocks) => blocks.iter().fold(x.shallow_clone(), |x, block| block.forward(&x, train)),
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        match self {
            Block::Conv(conv) => conv.parameters(),
            Block::Stage(blocks) => blocks.iter().flat_map(MbConv::parameters).collect(),
        }
    }
}

/// EfficientNet-B0's convolutional base: 9 blocks, 1280 output channels.
pub struct EfficientNetB0 {
    blocks: Vec<Block>,
}

impl EfficientNetB0 {
    /// Creates the variables under `features.*` with torchvision's names and initialisation.
    pub fn new(root: &nn::Path) -> EfficientNetB0 {
        let features = root / "features";
        let stem_channels = EFFICIENTNET_B0_STEM_CHANNELS as i64;
        let mut blocks = vec![Block::Conv(ConvNorm::new(&(&features / 0), 3, stem_channels, 3, 2, 1, true))];
        let total: usize = EFFICIENTNET_B0_STAGES.iter().map(|stage| stage.layers).sum();
        let mut seen = 0;
        for (stage_index, stage) in EFFICIENTNET_B0_STAGES.iter().enumerate() {
            let path = &features / (stage_index + 1);
            let stage_blocks = (0..stage.layers)
                .map(|index| {
                    let probability = STOCHASTIC_DEPTH * seen as f64 / total as f64;
                    seen += 1;
                    MbConv::new(&(&path / index), stage, index, probability)
                })
                .collect();
            blocks.push(Block::Stage(stage_blocks));
        }
        let last = EFFICIENTNET_B0_STAGES[EFFICIENTNET_B0_STAGES.len() - 1].out_channels as i64;
        let top = ConvNorm::new(&(&features / 8), last, EFFICIENTNET_B0_TOP_CHANNELS as i64, 1, 1, 1, true);
        blocks.push(Block::Conv(top));
        EfficientNetB0 { blocks }
    }
}

impl BackboneNet for EfficientNetB0 {
    fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Frozen blocks run channels-last on the CPU (`per_block_layout`).
    fn forward_blocks(&self, x: &Tensor, from: usize, to: usize, bn_train: &[bool]) -> Tensor {
        let frozen = |block| is_frozen(&self.block_parameters(block));
        per_block_layout(x, from..to.min(self.blocks.len()), frozen, |index, x| {
            self.blocks[index].forward(&x, bn_train.get(index).copied().unwrap_or(false))
        })
    }

    /// The last convolutional block is `top`, the backbone's output (as Keras' `top_activation`).
    fn forward_to_cam_layer(&self, x: &Tensor) -> Tensor {
        let count = self.blocks.len();
        self.forward_blocks(x, 0, count, &vec![false; count])
    }

    fn cam_layer_to_output(&self, a: &Tensor) -> Tensor {
        a.shallow_clone()
    }

    fn block_parameters(&self, block: usize) -> Vec<Tensor> {
        self.blocks[block].parameters()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Network, Trainable};
    use tch::{Device, Kind, Tensor};
    use trainq::domain::spec::{JobSpec, TrainSet};

    fn spec(size: u32) -> Result<JobSpec, trainq::domain::spec::SpecError> {
        let json = format!(
            r#"{{"dataset": "d", "backbone": "efficientnet_b0", "weights": "random", "image_size": {size},
                "batch_size": 2, "head": ["gap", {{"dense": 1}}], "phases": [{{"epochs": 1, "train": "head"}}],
                "optimizer": {{"name": "sgd", "lr": 0.1}}}}"#
        );
        JobSpec::parse(json.as_bytes())
    }

    /// 32 px is the least side: five stride-2 steps leave a 1×1 map; 31 px is refused at submit.
    #[test]
    fn efficientnet_b0_takes_32_px_down_to_one_position_and_refuses_less() {
        let network = Network::new(&spec(32).unwrap(), Device::Cpu);
        let images = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let features = network.features(&images, super::super::Cut { block: 9, pooled: false });
        assert_eq!(features.size(), [2, 1280, 1, 1]);
        let err = spec(31).unwrap_err();
        assert_eq!(err.field, "image_size", "{err:?}");
        assert!(err.message.contains("32"), "{err:?}");
    }

    /// A frozen stage keeps its running statistics and builds no gradient; a trained one moves
    /// them. In evaluation stochastic depth is off: the same images give the same outputs.
    #[test]
    fn frozen_stages_stay_in_inference_mode_and_evaluation_is_deterministic() {
        let network = Network::new(&spec(64).unwrap(), Device::Cpu);
        let (trainable, parameters) =
            network.set_trainable(&TrainSet::Blocks(vec![String::from("stage6"), String::from("head")]));
        assert_eq!(trainable.frozen_prefix, 6);
        assert!(parameters.iter().all(Tensor::requires_grad));
        let variables = network.vs.variables();
        let frozen = "features.5.0.block.1.1.running_mean";
        let trained = "features.6.1.block.0.1.running_mean";
        let (frozen_before, trained_before) = (variables[frozen].copy(), variables[trained].copy());
        let images = Tensor::rand([3, 3, 64, 64], (Kind::Float, Device::Cpu));
        let _ = network.forward(&images, &trainable, true);
        assert!(variables[frozen].equal(&frozen_before), "frozen BN statistics moved");
        assert!(!variables[trained].equal(&trained_before), "trained BN statistics did not move");
        assert!(!variables["features.5.0.block.1.0.weight"].requires_grad());
        assert!(variables["features.6.1.block.2.fc1.weight"].requires_grad());

        let inference = Trainable::none(network.block_count());
        let first = tch::no_grad(|| network.forward(&images, &inference, false));
        let second = tch::no_grad(|| network.forward(&images, &trainable, false));
        assert!(first.allclose(&second, 1e-5, 1e-6, false), "evaluation must not drop residual branches");
    }
}
