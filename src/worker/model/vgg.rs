//! VGG16's `features` with torchvision names: 13 convolutions with ReLU and 5 max pools, in five
//! blocks split at the pools (Keras' block1…block5).

use super::BackboneNet;
use crate::precision;
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

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

    /// A frozen block of a float32 network on the CPU runs channels-last, whatever its caller:
    /// oneDNN's channels-last kernels ran blocks 1–4 at 128 px, batch 20, on this project's 2-core
    /// CPU 1.6–1.9× faster than NCHW in inference (12.4 → 19.6–24 img/s, torch 2.11). Trained
    /// blocks keep the caller's layout (block5 on 8×8 activations trains faster in NCHW: 198 vs
    /// 252 ms per step), and so does the output. The layout depends only on the block, so the
    /// cached and uncached paths run the same kernels and learn the same to float tolerance.
    fn forward_blocks(&self, x: &Tensor, from: usize, to: usize, _bn_train: &[bool]) -> Tensor {
        let relayout = x.device() == Device::Cpu && x.kind() == Kind::Float && x.dim() == 4 && !precision::is_channels_last(x);
        let mut x = x.shallow_clone();
        let mut switched = false;
        for block in from..to {
            let frozen = self.block_parameters(block).iter().all(|parameter| !parameter.requires_grad());
            if relayout && frozen != switched {
                x = if frozen { precision::channels_last(&x) } else { x.contiguous() };
                switched = frozen;
            }
            x = self.layers.iter().filter(|(b, _)| *b == block).fold(x, |x, (_, layer)| layer.apply(&x));
        }
        if switched {
            x.contiguous()
        } else {
            x
        }
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
