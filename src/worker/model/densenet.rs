//! DenseNet121 (CheXNet's backbone) with torchvision names (`features.conv0`,
//! `features.denseblock1.denselayer1.norm1`, `features.transition1.conv`, `features.norm5`),
//! without `classifier`. Blocks for `train` lists: `stem` (conv0, norm0, ReLU, pool0), then
//! `denseblock1`…`denseblock4`, each holding the transition that follows it (`transitionN` after
//! blocks 1–3) and the last holding `norm5` and its ReLU, so that a block's output is exactly the
//! next block's input and the last block's is the feature map torchvision's classifier reads.

use super::layers::{BatchNorm, ConvBatchNorm, BACKBONE_BN_EPSILON, BACKBONE_BN_MOMENTUM};
use super::{is_frozen, per_block_layout, BackboneNet};
use tch::nn;
use tch::Tensor;
use trainq::domain::weights_layout::{DENSENET121_BOTTLENECK, DENSENET121_GROWTH, DENSENET121_LAYERS};

/// A pre-activation convolution: batch norm, ReLU, then a bias-free convolution (DenseNet's order).
struct NormReluConv {
    norm: BatchNorm,
    weight: Tensor,
    padding: i64,
}

impl NormReluConv {
    fn new(norm: &nn::Path, conv: &nn::Path, cin: i64, cout: i64, kernel: i64) -> NormReluConv {
        NormReluConv {
            norm: BatchNorm::new(norm, cin, BACKBONE_BN_MOMENTUM, BACKBONE_BN_EPSILON),
            weight: ConvBatchNorm::weight(conv, cin, cout, kernel),
            padding: kernel / 2,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.norm.forward(x, train).relu();
        x.conv2d::<Tensor>(&self.weight, None, [1, 1], [self.padding, self.padding], [1, 1], 1)
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut parameters = self.norm.parameters();
        parameters.push(self.weight.shallow_clone());
        parameters
    }
}

/// One `denseblockN` with what follows it.
struct DenseBlock {
    /// Per dense layer: the 1×1 bottleneck (`norm1`, `conv1`) and the 3×3 growth (`norm2`, `conv2`).
    layers: Vec<(NormReluConv, NormReluConv)>,
    /// `transitionN` (its 2×2 average pool follows), or `None` for the last block.
    transition: Option<NormReluConv>,
    /// `norm5`, in the last block only: its output, ReLU'd, is the feature map.
    final_norm: Option<BatchNorm>,
}

impl DenseBlock {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut features = vec![x.shallow_clone()];
        for (bottleneck, growth) in &self.layers {
            let input = Tensor::cat(&features, 1);
            features.push(growth.forward(&bottleneck.forward(&input, train), train));
        }
        let x = Tensor::cat(&features, 1);
        match (&self.transition, &self.final_norm) {
            (Some(transition), _) => {
                transition.forward(&x, train).avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
            }
            (None, Some(norm)) => norm.forward(&x, train).relu(),
            (None, None) => x,
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut parameters: Vec<Tensor> =
            self.layers.iter().flat_map(|(a, b)| a.parameters().into_iter().chain(b.parameters())).collect();
        parameters.extend(self.transition.iter().flat_map(NormReluConv::parameters));
        parameters.extend(self.final_norm.iter().flat_map(BatchNorm::parameters));
        parameters
    }
}

/// DenseNet121's convolutional base: 1024 output channels at 1/32 of the input side.
pub struct DenseNet121 {
    stem_conv: Tensor,
    stem_norm: BatchNorm,
    blocks: Vec<DenseBlock>,
}

impl DenseNet121 {
    /// Creates the variables under `features.*` with torchvision's names and initialisation.
    pub fn new(root: &nn::Path) -> DenseNet121 {
        let features = root / "features";
        let stem_conv = ConvBatchNorm::weight(&(&features / "conv0"), 3, 64, 7);
        let stem_norm = BatchNorm::new(&(&features / "norm0"), 64, BACKBONE_BN_MOMENTUM, BACKBONE_BN_EPSILON);
        let (growth, bottleneck) = (DENSENET121_GROWTH as i64, DENSENET121_BOTTLENECK as i64);
        let mut channels = 64i64;
        let last = DENSENET121_LAYERS.len() - 1;
        let blocks = DENSENET121_LAYERS
            .into_iter()
            .enumerate()
            .map(|(block, count)| {
                let path = &features / format!("denseblock{}", block + 1);
                let layers = (1..=count)
                    .map(|layer| {
                        let layer_path = &path / format!("denselayer{layer}");
                        let pair = (
                            NormReluConv::new(
                                &(&layer_path / "norm1"),
                                &(&layer_path / "conv1"),
                                channels,
                                bottleneck,
                                1,
                            ),
                            NormReluConv::new(
                                &(&layer_path / "norm2"),
                                &(&layer_path / "conv2"),
                                bottleneck,
                                growth,
                                3,
                            ),
                        );
                        channels += growth;
                        pair
                    })
                    .collect();
                let transition = (block < last).then(|| {
                    let path = &features / format!("transition{}", block + 1);
                    let transition = NormReluConv::new(&(&path / "norm"), &(&path / "conv"), channels, channels / 2, 1);
                    channels /= 2;
                    transition
                });
                let final_norm = (block == last).then(|| {
                    BatchNorm::new(&(&features / "norm5"), channels, BACKBONE_BN_MOMENTUM, BACKBONE_BN_EPSILON)
                });
                DenseBlock { layers, transition, final_norm }
            })
            .collect();
        DenseNet121 { stem_conv, stem_norm, blocks }
    }

    fn run_block(&self, block: usize, x: &Tensor, train: bool) -> Tensor {
        if block == 0 {
            let x = x.conv2d::<Tensor>(&self.stem_conv, None, [2, 2], [3, 3], [1, 1], 1);
            self.stem_norm.forward(&x, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        } else {
            self.blocks[block - 1].forward(x, train)
        }
    }
}

impl BackboneNet for DenseNet121 {
    fn block_count(&self) -> usize {
        1 + self.blocks.len()
    }

    /// Frozen blocks run channels-last on the CPU (`per_block_layout`).
    fn forward_blocks(&self, x: &Tensor, from: usize, to: usize, bn_train: &[bool]) -> Tensor {
        let frozen = |block| is_frozen(&self.block_parameters(block));
        per_block_layout(x, from..to.min(self.block_count()), frozen, |block, x| {
            self.run_block(block, &x, bn_train.get(block).copied().unwrap_or(false))
        })
    }

    /// The feature map after `norm5` and its ReLU, which CheXNet's heatmaps weight (Keras'
    /// `relu` after `bn`).
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
            self.blocks[block - 1].parameters()
        }
    }
}
