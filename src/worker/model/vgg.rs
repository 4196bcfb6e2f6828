//! VGG16's `features` with torchvision names: 13 convolutions with ReLU and 5 max pools, in five
//! blocks split at the pools (Keras' block1…block5).

use super::{is_frozen, per_block_layout, BackboneNet};
use tch::nn::{self, Init};
use tch::Tensor;

/// Channel counts; `0` = 2×2 max pool, which closes a block.
const CONFIG: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];

enum Layer {
    Conv { weight: Tensor, bias: Tensor },
    Pool,
}

impl Layer {
    /// A 3×3 convolution with ReLU, or the 2×2 max pool.
    fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Layer::Conv { weight, bias } => x.conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1).relu(),
            Layer::Pool => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
        }
    }
}

/// VGG16's convolutional base.
pub struct Vgg16 {
    /// (block index, layer)
    layers: Vec<(usize, Layer)>,
}

impl Vgg16 {
    /// Creates the variables under `features.N.*` with torchvision's initialisation.
    pub fn new(root: &nn::Path) -> Vgg16 {
        let features = root / "features";
        let mut layers = Vec::new();
        let (mut index, mut block, mut channels) = (0usize, 0usize, 3i64);
        // torchvision: kaiming_normal(fan_out, relu) weights, zero biases.
        let init = Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        for out in CONFIG {
            if out == 0 {
                layers.push((block, Layer::Pool));
                index += 1;
                block += 1;
            } else {
                let conv = &features / index;
                let weight = conv.var("weight", &[out, channels, 3, 3], init);
                let bias = conv.var("bias", &[out], Init::Const(0.0));
                layers.push((block, Layer::Conv { weight, bias }));
                channels = out;
                index += 2; // the ReLU takes an index in torchvision's Sequential
            }
        }
        Vgg16 { layers }
    }
}

impl BackboneNet for Vgg16 {
    fn block_count(&self) -> usize {
        5
    }

    /// Frozen blocks run channels-last on the CPU (`per_block_layout`).
    fn forward_blocks(&self, x: &Tensor, from: usize, to: usize, _bn_train: &[bool]) -> Tensor {
        let frozen = |block| is_frozen(&self.block_parameters(block));
        per_block_layout(x, from..to, frozen, |block, x| {
            self.layers.iter().filter(|(b, _)| *b == block).fold(x, |x, (_, layer)| layer.apply(&x))
        })
    }

    fn forward_to_cam_layer(&self, x: &Tensor) -> Tensor {
        let last = self.layers.len() - 1;
        self.layers[..last].iter().fold(x.shallow_clone(), |x, (_, layer)| layer.apply(&x))
    }

    fn cam_layer_to_output(&self, a: &Tensor) -> Tensor {
        a.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
    }

    fn block_parameters(&self, block: usize) -> Vec<Tensor> {
        self.layers
            .iter()
            .filter(|(b, _)| *b == block)
            .flat_map(|(_, layer)| match layer {
                Layer::Conv { weight, bias } => vec![weight.shallow_clone(), bias.shallow_clone()],
                Layer::Pool => vec![],
            })
            .collect()
    }
}
