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
