//! InceptionV3 with torchvision names (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.…`),
//! without the auxiliary classifier (Keras' include_top=False has none either). Blocks for
//! `train` lists: `stem` (everything before Mixed_5b), then each `Mixed_*` module.

use super::layers::BatchNorm;
use super::{is_frozen, per_block_layout, BackboneNet};
use tch::nn::{self, Init};
use tch::Tensor;

/// Keras' BatchNormalization momentum (0.99) in PyTorch's convention, and torchvision's epsilon.
const BN_MOMENTUM: f64 = 0.01;
const BN_EPSILON: f64 = 1e-3;

/// torchvision's BasicConv2d: convolution without bias, batch norm, ReLU.
struct BasicConv {
    weight: Tensor,
    bn: BatchNorm,
    stride: i64,
    padding: [i64; 2],
}

impl BasicConv {
    fn new(
        parent: &nn::Path,
        name: &str,
        cin: i64,
        cout: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> BasicConv {
        let path = parent / name;
        // torchvision initialises with a (truncated) normal of std 0.1.
        let weight =
            (&path / "conv").var("weight", &[cout, cin, kernel[0], kernel[1]], Init::Randn { mean: 0.0, stdev: 0.1 });
        let bn = BatchNorm::new(&(&path / "bn"), cout, BN_MOMENTUM, BN_EPSILON);
        BasicConv { weight, bn, stride, padding }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = x.conv2d::<Tensor>(&self.weight, None, [self.stride, self.stride], self.padding, [1, 1], 1);
        self.bn.forward(&x, train).relu()
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut parameters = self.bn.parameters();
        parameters.push(self.weight.shallow_clone());
        parameters
    }
}

/// One step of a branch.
enum Step {
    Conv(BasicConv),
    /// 3×3 average pool, stride 1, padding 1 (before a pool projection).
    AvgPool,
    /// 3×3 max pool, stride 2.
    MaxPool,
    /// Two convolutions applied to the same input, concatenated (InceptionE's split).
    Split(BasicConv, BasicConv),
}

impl Step {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Step::Conv(conv) => conv.forward(x, train),
            Step::AvgPool => x.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>),
            Step::MaxPool => x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false),
            Step::Split(a, b) => Tensor::cat(&[a.forward(x, train), b.forward(x, train)], 1),
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        match self {
            Step::Conv(conv) => conv.parameters(),
            Step::Split(a, b) => a.parameters().into_iter().chain(b.parameters()).collect(),
            Step::AvgPool | Step::MaxPool => vec![],
        }
    }
}

/// A block: its branches' outputs concatenated (the stem is a single branch).
struct Block {
    branches: Vec<Vec<Step>>,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let outputs: Vec<Tensor> = self
            .branches
            .iter()
            .map(|branch| branch.iter().fold(x.shallow_clone(), |x, step| step.forward(&x, train)))
            .collect();
        if outputs.len() == 1 {
            outputs.into_iter().next().expect("one output")
        } else {
            Tensor::cat(&outputs, 1)
        }
    }
}

/// Builds the convolutions of one module, `(name, cin, cout, kernel, stride, padding)`.
struct Module<'a> {
    path: nn::Path<'a>,
}

impl Module<'_> {
    fn conv(&self, name: &str, cin: i64, cout: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2]) -> BasicConv {
        BasicConv::new(&self.path, name, cin, cout, kernel, stride, padding)
    }
    fn c1(&self, name: &str, cin: i64, cout: i64) -> Step {
        Step::Conv(self.conv(name, cin, cout, [1, 1], 1, [0, 0]))
    }
    fn c(&self, name: &str, cin: i64, cout: i64, kernel: [i64; 2], padding: [i64; 2]) -> Step {
        Step::Conv(self.conv(name, cin, cout, kernel, 1, padding))
    }
    fn strided(&self, name: &str, cin: i64, cout: i64) -> Step {
        Step::Conv(self.conv(name, cin, cout, [3, 3], 2, [0, 0]))
    }
}

fn inception_a(m: &Module, cin: i64, pool_features: i64) -> Block {
    Block {
        branches: vec![
            vec![m.c1("branch1x1", cin, 64)],
            vec![m.c1("branch5x5_1", cin, 48), m.c("branch5x5_2", 48, 64, [5, 5], [2, 2])],
            vec![
                m.c1("branch3x3dbl_1", cin, 64),
                m.c("branch3x3dbl_2", 64, 96, [3, 3], [1, 1]),
                m.c("branch3x3dbl_3", 96, 96, [3, 3], [1, 1]),
            ],
            vec![Step::AvgPool, m.c1("branch_pool", cin, pool_features)],
        ],
    }
}

fn inception_b(m: &Module, cin: i64) -> Block {
    Block {
        branches: vec![
            vec![m.strided("branch3x3", cin, 384)],
            vec![
                m.c1("branch3x3dbl_1", cin, 64),
                m.c("branch3x3dbl_2", 64, 96, [3, 3], [1, 1]),
                m.strided("branch3x3dbl_3", 96, 96),
            ],
            vec![Step::MaxPool],
        ],
    }
}

fn inception_c(m: &Module, cin: i64, c7: i64) -> Block {
    let (row, col) = ([1, 7], [7, 1]);
    let (pad_row, pad_col) = ([0, 3], [3, 0]);
    Block {
        branches: vec![
            vec![m.c1("branch1x1", cin, 192)],
            vec![
                m.c1("branch7x7_1", cin, c7),
                m.c("branch7x7_2", c7, c7, row, pad_row),
                m.c("branch7x7_3", c7, 192, col, pad_col),
            ],
            vec![
                m.c1("branch7x7dbl_1", cin, c7),
                m.c("branch7x7dbl_2", c7, c7, col, pad_col),
                m.c("branch7x7dbl_3", c7, c7, row, pad_row),
                m.c("branch7x7dbl_4", c7, c7, col, pad_col),
                m.c("branch7x7dbl_5", c7, 192, row, pad_row),
            ],
            vec![Step::AvgPool, m.c1("branch_pool", cin, 192)],
        ],
    }
}

fn inception_d(m: &Module, cin: i64) -> Block {
    Block {
        branches: vec![
            vec![m.c1("branch3x3_1", cin, 192), m.strided("branch3x3_2", 192, 320)],
            vec![
                m.c1("branch7x7x3_1", cin, 192),
                m.c("branch7x7x3_2", 192, 192, [1, 7], [0, 3]),
                m.c("branch7x7x3_3", 192, 192, [7, 1], [3, 0]),
                m.strided("branch7x7x3_4", 192, 192),
            ],
            vec![Step::MaxPool],
        ],
    }
}

fn inception_e(m: &Module, cin: i64) -> Block {
    let split =
        |a: &str, b: &str| Step::Split(m.conv(a, 384, 384, [1, 3], 1, [0, 1]), m.conv(b, 384, 384, [3, 1], 1, [1, 0]));
    Block {
        branches: vec![
            vec![m.c1("branch1x1", cin, 320)],
            vec![m.c1("branch3x3_1", cin, 384), split("branch3x3_2a", "branch3x3_2b")],
            vec![
                m.c1("branch3x3dbl_1", cin, 448),
                m.c("branch3x3dbl_2", 448, 384, [3, 3], [1, 1]),
                split("branch3x3dbl_3a", "branch3x3dbl_3b"),
            ],
            vec![Step::AvgPool, m.c1("branch_pool", cin, 192)],
        ],
    }
}

/// InceptionV3's convolutional base: 12 blocks, 2048 output channels.
pub struct InceptionV3 {
    blocks: Vec<Block>,
}

impl InceptionV3 {
    /// Creates the variables with torchvision's names and initialisation.
    pub fn new(root: &nn::Path) -> InceptionV3 {
        let top = Module { path: root.clone() };
        let stem = Block {
            branches: vec![vec![
                Step::Conv(top.conv("Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0])),
                Step::Conv(top.conv("Conv2d_2a_3x3", 32, 32, [3, 3], 1, [0, 0])),
                Step::Conv(top.conv("Conv2d_2b_3x3", 32, 64, [3, 3], 1, [1, 1])),
                Step::MaxPool,
                Step::Conv(top.conv("Conv2d_3b_1x1", 64, 80, [1, 1], 1, [0, 0])),
                Step::Conv(top.conv("Conv2d_4a_3x3", 80, 192, [3, 3], 1, [0, 0])),
                Step::MaxPool,
            ]],
        };
        let module = |name: &str| Module { path: root / name };
        let blocks = vec![
            stem,
            inception_a(&module("Mixed_5b"), 192, 32),
            inception_a(&module("Mixed_5c"), 256, 64),
            inception_a(&module("Mixed_5d"), 288, 64),
            inception_b(&module("Mixed_6a"), 288),
            inception_c(&module("Mixed_6b"), 768, 128),
            inception_c(&module("Mixed_6c"), 768, 160),
            inception_c(&module("Mixed_6d"), 768, 160),
            inception_c(&module("Mixed_6e"), 768, 192),
            inception_d(&module("Mixed_7a"), 768),
            inception_e(&module("Mixed_7b"), 1280),
            inception_e(&module("Mixed_7c"), 2048),
        ];
        InceptionV3 { blocks }
    }
}

impl BackboneNet for InceptionV3 {
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

    fn forward_to_cam_layer(&self, x: &Tensor) -> Tensor {
        let count = self.blocks.len();
        self.forward_blocks(x, 0, count, &vec![false; count])
    }

    fn cam_layer_to_output(&self, a: &Tensor) -> Tensor {
        a.shallow_clone()
    }

    fn block_parameters(&self, block: usize) -> Vec<Tensor> {
        self.blocks[block].branches.iter().flatten().flat_map(Step::parameters).collect()
    }
}
