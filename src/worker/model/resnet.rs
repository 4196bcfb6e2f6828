//! ResNet50 with torchvision names (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, …),
//! without `fc`. Blocks for `train` lists: `stem` (conv1, bn1, ReLU, max pool), then torchvision's
//! four stages `layer1`…`layer4`. Bottlenecks stride in their 3×3 convolution (torchvision's
//! "ResNet v1.5", the layout of the `tv_in1k` weights).

use super::layers::{BatchNorm, ConvBatchNorm, BACKBONE_BN_EPSILON, BACKBONE_BN_MOMENTUM};
use super::{is_frozen, per_block_layout, BackboneNet};
use tch::nn;
use tch::Tensor;
use trainq::domain::weights_layout::RESNET50_STAGES;

/// torchvision's `Bottleneck`: 1×1 → 3×3 (stride) → 1×1 ×4, each with batch norm, plus the input
/// (projected by `downsample` in a stage's first bottleneck), then ReLU.
struct Bottleneck {
    reduce: ConvBatchNorm,
    spatial: ConvBatchNorm,
    expand: ConvBatchNorm,
    downsample: Option<ConvBatchNorm>,
}

impl Bottleneck {
    fn new(path: &nn::Path, in_channels: i64, width: i64, out_channels: i64, stride: i64, project: bool) -> Bottleneck {
        let conv = |index: usize, cin, cout, kernel, stride, padding| {
            ConvBatchNorm::new(
                &(path / format!("conv{index}")),
                &(path / format!("bn{index}")),
                cin,
                cout,
                kernel,
                stride,
                padding,
            )
        };
        Bottleneck {
            reduce: conv(1, in_channels, width, 1, 1, 0),
            spatial: conv(2, width, width, 3, stride, 1),
            expand: conv(3, width, out_channels, 1, 1, 0),
            downsample: project.then(|| {
                let projection = path / "downsample";
                ConvBatchNorm::new(&(&projection / 0), &(&projection / 1), in_channels, out_channels, 1, stride, 0)
            }),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.reduce.forward(x, train).relu();
        let y = self.spatial.forward(&y, train).relu();
        let y = self.expand.forward(&y, train);
        let shortcut = match &self.downsample {
            Some(projection) => projection.forward(x, train),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu()
    }

    fn parameters(&self) -> Vec<Tensor> {
        [&self.reduce, &self.spatial, &self.expand]
            .into_iter()
            .chain(&self.downsample)
            .flat_map(ConvBatchNorm::parameters)
            .collect()
    }
}

/// ResNet50's convolutional base: the stem and four stages, 2048 output channels at 1/32 of the
/// input side (rounded up).
pub struct ResNet50 {
    stem_conv: Tensor,
    stem_norm: BatchNorm,
    stages: Vec<Vec<Bottleneck>>,
}

impl ResNet50 {
    /// Creates the variables with torchvision's names and initialisation (kaiming-normal fan-out
    /// convolutions, batch norm at scale 1 and shift 0).
    pub fn new(root: &nn::Path) -> ResNet50 {
        let stem_conv = ConvBatchNorm::weight(&(root / "conv1"), 3, 64, 7);
        let stem_norm = BatchNorm::new(&(root / "bn1"), 64, BACKBONE_BN_MOMENTUM, BACKBONE_BN_EPSILON);
        let mut in_channels = 64;
        let stages = RESNET50_STAGES
            .into_iter()
            .enumerate()
            .map(|(stage, (count, width, out_channels))| {
                let path = root / format!("layer{}", stage + 1);
                let stride = if stage == 0 { 1 } else { 2 };
                (0..count)
                    .map(|index| {
                        let (width, out_channels) = (width as i64, out_channels as i64);
                        let first = index == 0;
                        let block = Bottleneck::new(
                            &(&path / index),
                            in_channels,
                            width,
                            out_channels,
                            if first { stride } else { 1 },
                            first,
                        );
                        in_channels = out_channels;
                        block
                    })
                    .collect()
            })
            .collect();
        ResNet50 { stem_conv, stem_norm, stages }
    }

    fn run_block(&self, block: usize, x: &Tensor, train: bool) -> Tensor {
        if block == 0 {
            let x = x.conv2d::<Tensor>(&self.stem_conv, None, [2, 2], [3, 3], [1, 1], 1);
            self.stem_norm.forward(&x, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        } else {
            self.stages[block - 1].iter().fold(x.shallow_clone(), |x, bottleneck| bottleneck.forward(&x, train))
        }
    }
}

impl BackboneNet for ResNet50 {
    fn block_count(&self) -> usize {
        1 + self.stages.len()
    }

    /// Frozen blocks run channels-last on the CPU (`per_block_layout`).
    fn forward_blocks(&self, x: &Tensor, from: usize, to: usize, bn_train: &[bool]) -> Tensor {
        let frozen = |block| is_frozen(&self.block_parameters(block));
        per_block_layout(x, from..to.min(self.block_count()), frozen, |block, x| {
            self.run_block(block, &x, bn_train.get(block).copied().unwrap_or(false))
        })
    }

    /// `layer4`'s output, the last convolutional block (Keras' `conv5_block3_out`).
    fn forward_to_cam_layer(&self, x: &Tensor) -> Tensor {
        let count = self.block_count();
        self.forward_blocks(x, 0, count, &vec![false; count])
    }

    fn cam_layer_to_output(&self, a: &Tensor) -> Tensor {
        a.shallow_clone()
    }

    fn block_parameters(&self, block: usize) -> Vec<Tensor> {
        if block == 0 {
            let mut parameters = self.stem_norm.parameters();
            parameters.push(self.stem_conv.shallow_clone());
            parameters
        } else {
            self.stages[block - 1].iter().flat_map(Bottleneck::parameters).collect()
        }
    }
}
