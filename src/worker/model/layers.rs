//! Building blocks shared by the backbones and the head.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Batch normalisation over dimension 1, with PyTorch's state names (`weight`, `bias`,
/// `running_mean`, `running_var`, `num_batches_tracked`) so checkpoints load there strictly.
pub struct BatchNorm {
    /// Scale (trainable).
    pub weight: Tensor,
    /// Shift (trainable).
    pub bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    batches: Tensor,
    /// PyTorch's convention: the weight of the new batch (1 − Keras' momentum).
    momentum: f64,
    epsilon: f64,
}

impl BatchNorm {
    /// A fresh batch norm of `width` channels under `path`.
    pub fn new(path: &nn::Path, width: i64, momentum: f64, epsilon: f64) -> BatchNorm {
        BatchNorm {
            weight: path.var("weight", &[width], Init::Const(1.0)),
            bias: path.var("bias", &[width], Init::Const(0.0)),
            running_mean: path.zeros_no_train("running_mean", &[width]),
            running_var: path.ones_no_train("running_var", &[width]),
            batches: path.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, path.device())), false),
            momentum,
            epsilon,
        }
    }

    /// `train`: batch statistics, and the running statistics move. Otherwise (inference, or a
    /// frozen layer, as Keras TF2 does) the running statistics are used and left untouched.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            let mut counter = self.batches.shallow_clone();
            let _ = tch::no_grad(|| counter.g_add_scalar_(1));
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.epsilon,
            true,
        )
    }

    /// The tensors an optimizer may update.
    pub fn parameters(&self) -> Vec<Tensor> {
        vec![self.weight.shallow_clone(), self.bias.shallow_clone()]
    }
}

/// Batch norm momentum in the torchvision-layout ResNet and DenseNet: Keras' 0.99 in PyTorch's
/// convention (the weight of the new batch), as InceptionV3 uses.
pub const BACKBONE_BN_MOMENTUM: f64 = 0.01;
/// torchvision's `BatchNorm2d` epsilon, which the published statistics and the PyTorch loader
/// (`deploy/load_checkpoint.py`) assume.
pub const BACKBONE_BN_EPSILON: f64 = 1e-5;

/// A square convolution without bias followed by batch norm (no activation: ResNet adds the
/// shortcut before its ReLU), under two sibling paths such as `conv1`/`bn1` or `downsample.0`/`.1`.
pub struct ConvBatchNorm {
    weight: Tensor,
    norm: BatchNorm,
    stride: i64,
    padding: i64,
}

impl ConvBatchNorm {
    /// A `[cout, cin, kernel, kernel]` weight at `conv` and a batch norm of `cout` at `norm`.
    pub fn new(
        conv: &nn::Path,
        norm: &nn::Path,
        cin: i64,
        cout: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> ConvBatchNorm {
        ConvBatchNorm {
            weight: ConvBatchNorm::weight(conv, cin, cout, kernel),
            norm: BatchNorm::new(norm, cout, BACKBONE_BN_MOMENTUM, BACKBONE_BN_EPSILON),
            stride,
            padding,
        }
    }

    /// A bias-free convolution weight `path.weight` with torchvision's ResNet/DenseNet
    /// initialisation (kaiming normal, fan out, ReLU gain).
    pub fn weight(path: &nn::Path, cin: i64, cout: i64, kernel: i64) -> Tensor {
        let init = Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        path.var("weight", &[cout, cin, kernel, kernel], init)
    }

    /// Convolution, then batch norm (batch statistics when `train`).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (stride, padding) = (self.stride, self.padding);
        let x = x.conv2d::<Tensor>(&self.weight, None, [stride, stride], [padding, padding], [1, 1], 1);
        self.norm.forward(&x, train)
    }

    /// The weight and the batch norm's scale and shift.
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut parameters = self.norm.parameters();
        parameters.push(self.weight.shallow_clone());
        parameters
    }
}
