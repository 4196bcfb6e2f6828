//! The tensors each backbone's pretrained weights file must hold, in torchvision's `state_dict()`
//! naming, and a check of a safetensors file against them that reads only the file's header.
//!
//! The server never loads libtorch, yet it must refuse a wrong weights file before a job fails on
//! it hours later; so the layout is written down here from torchvision's module definitions
//! (`torchvision/models/vgg.py`, `inception.py` and `efficientnet.py`) rather than read from a live model. Only the
//! feature extractor is listed: classifiers (`classifier.*`, `fc.*`, `AuxLogits.*`, timm's
//! `pre_logits.*` and `head.*`) are replaced by the job's head, so a file may carry them and they
//! are ignored.
//!
//! [`check_file`] is the one function here that touches the disk: it reads the 8-byte length and
//! the JSON header (a few kilobytes of a 100–500 MB file), never the tensor data.

use super::backbone::Backbone;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One entry of a backbone's torchvision `state_dict()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// The torchvision name, such as `features.0.weight` or `Mixed_5b.branch1x1.bn.running_var`.
    pub name: String,
    /// The exact shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Whether a file without it is refused. Only batch norm's `num_batches_tracked` counters are
    /// optional: inference never reads them and many published files omit them.
    pub required: bool,
}

/// The feature extractor's tensors of `backbone`, in torchvision's `state_dict()` order.
pub fn expected_tensors(backbone: Backbone) -> Vec<ExpectedTensor> {
    match backbone {
        Backbone::Vgg16 => vgg16_features(),
        Backbone::InceptionV3 => inception_v3_features(),
        Backbone::ResNet50 => resnet50_features(),
        Backbone::DenseNet121 => densenet121_features(),
        Backbone::EfficientNetB0 => efficientnet_b0_features(),
    }
}

/// A convolution's weight without bias, `[out, in, k, k]`.
fn conv_weight(name: String, in_channels: usize, out_channels: usize, kernel: usize) -> ExpectedTensor {
    required(name, vec![out_channels, in_channels, kernel, kernel])
}

/// A `BatchNorm2d`'s parameters and running statistics under `name`, in `state_dict()` order,
/// with the optional `num_batches_tracked` counter last.
fn batch_norm(name: &str, channels: usize) -> Vec<ExpectedTensor> {
    let mut tensors: Vec<ExpectedTensor> = ["weight", "bias", "running_mean", "running_var"]
        .into_iter()
        .map(|statistic| required(format!("{name}.{statistic}"), vec![channels]))
        .collect();
    tensors.push(ExpectedTensor { name: format!("{name}.num_batches_tracked"), shape: vec![], required: false });
    tensors
}

/// ResNet50's stages: (bottlenecks, bottleneck width, output channels). torchvision's
/// `ResNet(Bottleneck, [3, 4, 6, 3])` with expansion 4; the first bottleneck of each stage has a
/// `downsample` projection (a 1×1 convolution and batch norm), stride 2 from `layer2` on.
pub const RESNET50_STAGES: [(usize, usize, usize); 4] = [(3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)];

/// torchvision's `resnet50()` without `fc`: `conv1`, `bn1`, then `layerN.M.{conv1,bn1,conv2,bn2,
/// conv3,bn3,downsample.0,downsample.1}` (`torchvision/models/resnet.py`; timm's ResNet uses the
/// same names).
fn resnet50_features() -> Vec<ExpectedTensor> {
    let mut tensors = vec![conv_weight(String::from("conv1.weight"), 3, 64, 7)];
    tensors.extend(batch_norm("bn1", 64));
    let mut in_channels = 64;
    for (stage, (count, width, out_channels)) in RESNET50_STAGES.into_iter().enumerate() {
        for index in 0..count {
            let block = format!("layer{}.{index}", stage + 1);
            tensors.push(conv_weight(format!("{block}.conv1.weight"), in_channels, width, 1));
            tensors.extend(batch_norm(&format!("{block}.bn1"), width));
            tensors.push(conv_weight(format!("{block}.conv2.weight"), width, width, 3));
            tensors.extend(batch_norm(&format!("{block}.bn2"), width));
            tensors.push(conv_weight(format!("{block}.conv3.weight"), width, out_channels, 1));
            tensors.extend(batch_norm(&format!("{block}.bn3"), out_channels));
            if index == 0 {
                tensors.push(conv_weight(format!("{block}.downsample.0.weight"), in_channels, out_channels, 1));
                tensors.extend(batch_norm(&format!("{block}.downsample.1"), out_channels));
            }
            in_channels = out_channels;
        }
    }
    tensors
}

/// DenseNet121's dense layers per block (`block_config`), growth rate, and bottleneck width
/// (`bn_size` × growth rate); torchvision's `densenet121()`: 64 initial features, halved by each
/// transition.
pub const DENSENET121_LAYERS: [usize; 4] = [6, 12, 24, 16];
/// Channels each dense layer adds.
pub const DENSENET121_GROWTH: usize = 32;
/// The width of each dense layer's 1×1 bottleneck convolution.
pub const DENSENET121_BOTTLENECK: usize = 128;

/// torchvision's `densenet121().features`: `conv0`, `norm0`, `denseblockN.denselayerM.{norm1,
/// conv1,norm2,conv2}`, `transitionN.{norm,conv}` after blocks 1–3, and `norm5`
/// (`torchvision/models/densenet.py`; timm's DenseNet uses the same names).
fn densenet121_features() -> Vec<ExpectedTensor> {
    let mut tensors = vec![conv_weight(String::from("features.conv0.weight"), 3, 64, 7)];
    tensors.extend(batch_norm("features.norm0", 64));
    let mut channels = 64;
    for (block, layers) in DENSENET121_LAYERS.into_iter().enumerate() {
        for layer in 1..=layers {
            let name = format!("features.denseblock{}.denselayer{layer}", block + 1);
            tensors.extend(batch_norm(&format!("{name}.norm1"), channels));
            tensors.push(conv_weight(format!("{name}.conv1.weight"), channels, DENSENET121_BOTTLENECK, 1));
            tensors.extend(batch_norm(&format!("{name}.norm2"), DENSENET121_BOTTLENECK));
            tensors.push(conv_weight(format!("{name}.conv2.weight"), DENSENET121_BOTTLENECK, DENSENET121_GROWTH, 3));
            channels += DENSENET121_GROWTH;
        }
        if block + 1 < DENSENET121_LAYERS.len() {
            let name = format!("features.transition{}", block + 1);
            tensors.extend(batch_norm(&format!("{name}.norm"), channels));
            tensors.push(conv_weight(format!("{name}.conv.weight"), channels, channels / 2, 1));
            channels /= 2;
        }
    }
    tensors.extend(batch_norm("features.norm5", channels));
    tensors
}

/// One entry of a torchvision VGG configuration list.
enum VggLayer {
    /// A 3×3 convolution with this many output channels, followed by a ReLU.
    Conv(usize),
    /// A 2×2 max pool.
    MaxPool,
}

/// torchvision's configuration "D" (VGG16), one row per block.
#[rustfmt::skip]
const VGG16_CONFIG: [VggLayer; 18] = {
    use VggLayer::{Conv, MaxPool};
    [
        Conv(64), Conv(64), MaxPool,
        Conv(128), Conv(128), MaxPool,
        Conv(256), Conv(256), Conv(256), MaxPool,
        Conv(512), Conv(512), Conv(512), MaxPool,
        Conv(512), Conv(512), Conv(512), MaxPool,
    ]
};

/// `features.N.{weight,bias}`: `features` is an `nn.Sequential` in which each convolution is
/// followed by a ReLU (one index each) and each pool takes one index.
fn vgg16_features() -> Vec<ExpectedTensor> {
    let mut tensors = Vec::new();
    let mut index = 0;
    let mut in_channels = 3;
    for layer in &VGG16_CONFIG {
        match *layer {
            VggLayer::Conv(out_channels) => {
                tensors.push(required(format!("features.{index}.weight"), vec![out_channels, in_channels, 3, 3]));
                tensors.push(required(format!("features.{index}.bias"), vec![out_channels]));
                in_channels = out_channels;
                index += 2;
            }
            VggLayer::MaxPool => index += 1,
        }
    }
    tensors
}

fn required(name: String, shape: Vec<usize>) -> ExpectedTensor {
    ExpectedTensor { name, shape, required: true }
}

/// torchvision's `Inception3` without `AuxLogits` and `fc`, module by module.
fn inception_v3_features() -> Vec<ExpectedTensor> {
    let mut layout = InceptionLayout::default();
    layout.basic_conv("Conv2d_1a_3x3", 3, 32, (3, 3));
    layout.basic_conv("Conv2d_2a_3x3", 32, 32, (3, 3));
    layout.basic_conv("Conv2d_2b_3x3", 32, 64, (3, 3));
    layout.basic_conv("Conv2d_3b_1x1", 64, 80, (1, 1));
    layout.basic_conv("Conv2d_4a_3x3", 80, 192, (3, 3));
    layout.inception_a("Mixed_5b", 192, 32);
    layout.inception_a("Mixed_5c", 256, 64);
    layout.inception_a("Mixed_5d", 288, 64);
    layout.inception_b("Mixed_6a", 288);
    layout.inception_c("Mixed_6b", 768, 128);
    layout.inception_c("Mixed_6c", 768, 160);
    layout.inception_c("Mixed_6d", 768, 160);
    layout.inception_c("Mixed_6e", 768, 192);
    // torchvision registers AuxLogits here; it is a training-only classifier, not a feature.
    layout.inception_d("Mixed_7a", 768);
    layout.inception_e("Mixed_7b", 1280);
    layout.inception_e("Mixed_7c", 2048);
    layout.tensors
}

/// Collects tensors while mirroring the constructors of `torchvision/models/inception.py`; each
/// method lists its convolutions in the order the Python `__init__` registers them.
#[derive(Default)]
struct InceptionLayout {
    tensors: Vec<ExpectedTensor>,
}

impl InceptionLayout {
    /// `BasicConv2d`: a convolution without bias, then batch norm.
    fn basic_conv(&mut self, name: &str, in_channels: usize, out_channels: usize, (kh, kw): (usize, usize)) {
        self.tensors.push(required(format!("{name}.conv.weight"), vec![out_channels, in_channels, kh, kw]));
        for statistic in ["weight", "bias", "running_mean", "running_var"] {
            self.tensors.push(required(format!("{name}.bn.{statistic}"), vec![out_channels]));
        }
        self.tensors.push(ExpectedTensor {
            name: format!("{name}.bn.num_batches_tracked"),
            shape: vec![],
            required: false,
        });
    }

    /// A `BasicConv2d` inside the mixed module `module`.
    fn branch(&mut self, module: &str, branch: &str, in_channels: usize, out_channels: usize, kernel: (usize, usize)) {
        self.basic_conv(&format!("{module}.{branch}"), in_channels, out_channels, kernel);
    }

    /// `InceptionA(in_channels, pool_features)`: Mixed_5b, 5c, 5d.
    fn inception_a(&mut self, module: &str, in_channels: usize, pool_features: usize) {
        self.branch(module, "branch1x1", in_channels, 64, (1, 1));
        self.branch(module, "branch5x5_1", in_channels, 48, (1, 1));
        self.branch(module, "branch5x5_2", 48, 64, (5, 5));
        self.branch(module, "branch3x3dbl_1", in_channels, 64, (1, 1));
        self.branch(module, "branch3x3dbl_2", 64, 96, (3, 3));
        self.branch(module, "branch3x3dbl_3", 96, 96, (3, 3));
        self.branch(module, "branch_pool", in_channels, pool_features, (1, 1));
    }

    /// `InceptionB(in_channels)`: Mixed_6a (its pooling branch has no weights).
    fn inception_b(&mut self, module: &str, in_channels: usize) {
        self.branch(module, "branch3x3", in_channels, 384, (3, 3));
        self.branch(module, "branch3x3dbl_1", in_channels, 64, (1, 1));
        self.branch(module, "branch3x3dbl_2", 64, 96, (3, 3));
        self.branch(module, "branch3x3dbl_3", 96, 96, (3, 3));
    }

    /// `InceptionC(in_channels, channels_7x7)`: Mixed_6b … 6e, with factorised 7×7 kernels.
    fn inception_c(&mut self, module: &str, in_channels: usize, c7: usize) {
        self.branch(module, "branch1x1", in_channels, 192, (1, 1));
        self.branch(module, "branch7x7_1", in_channels, c7, (1, 1));
        self.branch(module, "branch7x7_2", c7, c7, (1, 7));
        self.branch(module, "branch7x7_3", c7, 192, (7, 1));
        self.branch(module, "branch7x7dbl_1", in_channels, c7, (1, 1));
        self.branch(module, "branch7x7dbl_2", c7, c7, (7, 1));
        self.branch(module, "branch7x7dbl_3", c7, c7, (1, 7));
        self.branch(module, "branch7x7dbl_4", c7, c7, (7, 1));
        self.branch(module, "branch7x7dbl_5", c7, 192, (1, 7));
        self.branch(module, "branch_pool", in_channels, 192, (1, 1));
    }

    /// `InceptionD(in_channels)`: Mixed_7a (its pooling branch has no weights).
    fn inception_d(&mut self, module: &str, in_channels: usize) {
        self.branch(module, "branch3x3_1", in_channels, 192, (1, 1));
        self.branch(module, "branch3x3_2", 192, 320, (3, 3));
        self.branch(module, "branch7x7x3_1", in_channels, 192, (1, 1));
        self.branch(module, "branch7x7x3_2", 192, 192, (1, 7));
        self.branch(module, "branch7x7x3_3", 192, 192, (7, 1));
        self.branch(module, "branch7x7x3_4", 192, 192, (3, 3));
    }

    /// `InceptionE(in_channels)`: Mixed_7b, 7c, with 1×3 / 3×1 pairs side by side.
    fn inception_e(&mut self, module: &str, in_channels: usize) {
        self.branch(module, "branch1x1", in_channels, 320, (1, 1));
        self.branch(module, "branch3x3_1", in_channels, 384, (1, 1));
        self.branch(module, "branch3x3_2a", 384, 384, (1, 3));
        self.branch(module, "branch3x3_2b", 384, 384, (3, 1));
        self.branch(module, "branch3x3dbl_1", in_channels, 448, (1, 1));
        self.branch(module, "branch3x3dbl_2", 448, 384, (3, 3));
        self.branch(module, "branch3x3dbl_3a", 384, 384, (1, 3));
        self.branch(module, "branch3x3dbl_3b", 384, 384, (3, 1));
        self.branch(module, "branch_pool", in_channels, 192, (1, 1));
    }
}

/// One stage of EfficientNet-B0's MBConv blocks: a row of torchvision's `_MBConvConfig` list at
/// width and depth multiplier 1.0. The worker builds its network from these rows and the memory
/// estimate counts its activations from them, so the layout is written down once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbConvStage {
    /// The expanded width over the block's input width (1 = no expansion convolution).
    pub expand_ratio: usize,
    /// The depthwise convolution's kernel side.
    pub kernel: usize,
    /// The first block's stride (the stage's others have stride 1).
    pub stride: usize,
    /// Input channels of the stage's first block.
    pub in_channels: usize,
    /// Output channels of every block of the stage.
    pub out_channels: usize,
    /// Number of MBConv blocks.
    pub layers: usize,
}

impl MbConvStage {
    /// The input channels of the stage's block `index` (the first takes the previous stage's).
    pub fn block_in_channels(&self, index: usize) -> usize {
        if index == 0 {
            self.in_channels
        } else {
            self.out_channels
        }
    }

    /// The squeeze-excitation's bottleneck width for block `index`: torchvision's
    /// `max(1, input_channels // 4)`, a quarter of the block's input, not of its expanded width.
    pub fn squeeze_channels(&self, index: usize) -> usize {
        (self.block_in_channels(index) / 4).max(1)
    }
}

/// EfficientNet-B0's stages `features.1` … `features.7` (torchvision's `_efficientnet_conf`).
pub const EFFICIENTNET_B0_STAGES: [MbConvStage; 7] = {
    const fn stage(
        expand_ratio: usize,
        kernel: usize,
        stride: usize,
        in_channels: usize,
        out_channels: usize,
        layers: usize,
    ) -> MbConvStage {
        MbConvStage { expand_ratio, kernel, stride, in_channels, out_channels, layers }
    }
    [
        stage(1, 3, 1, 32, 16, 1),
        stage(6, 3, 2, 16, 24, 2),
        stage(6, 5, 2, 24, 40, 2),
        stage(6, 3, 2, 40, 80, 3),
        stage(6, 5, 1, 80, 112, 3),
        stage(6, 5, 2, 112, 192, 4),
        stage(6, 3, 1, 192, 320, 1),
    ]
};

/// Output channels of EfficientNet-B0's stem (`features.0`, a stride-2 3×3 convolution).
pub const EFFICIENTNET_B0_STEM_CHANNELS: usize = 32;
/// Output channels of EfficientNet-B0's last 1×1 convolution (`features.8`), what the head takes.
pub const EFFICIENTNET_B0_TOP_CHANNELS: usize = 1280;

/// torchvision's `efficientnet_b0().features`: `Conv2dNormActivation`s (`N.0` the convolution
/// without bias, `N.1` its batch norm) around seven stages of MBConv blocks, each
/// `features.S.I.block.*`: an expansion convolution (when the ratio is not 1), the depthwise
/// convolution, the squeeze-excitation (`fc1`, `fc2`, 1×1 convolutions with biases) and the
/// projection.
fn efficientnet_b0_features() -> Vec<ExpectedTensor> {
    let mut tensors = Vec::new();
    efficientnet_conv_norm(&mut tensors, "features.0", 3, EFFICIENTNET_B0_STEM_CHANNELS, 3, 1);
    for (stage_index, stage) in EFFICIENTNET_B0_STAGES.iter().enumerate() {
        for block in 0..stage.layers {
            let prefix = format!("features.{}.{block}.block", stage_index + 1);
            let in_channels = stage.block_in_channels(block);
            let expanded = in_channels * stage.expand_ratio;
            let mut layer = 0;
            if stage.expand_ratio != 1 {
                efficientnet_conv_norm(&mut tensors, &format!("{prefix}.{layer}"), in_channels, expanded, 1, 1);
                layer += 1;
            }
            let depthwise = format!("{prefix}.{layer}");
            efficientnet_conv_norm(&mut tensors, &depthwise, expanded, expanded, stage.kernel, expanded);
            layer += 1;
            let squeeze = stage.squeeze_channels(block);
            tensors.push(required(format!("{prefix}.{layer}.fc1.weight"), vec![squeeze, expanded, 1, 1]));
            tensors.push(required(format!("{prefix}.{layer}.fc1.bias"), vec![squeeze]));
            tensors.push(required(format!("{prefix}.{layer}.fc2.weight"), vec![expanded, squeeze, 1, 1]));
            tensors.push(required(format!("{prefix}.{layer}.fc2.bias"), vec![expanded]));
            layer += 1;
            let projection = format!("{prefix}.{layer}");
            efficientnet_conv_norm(&mut tensors, &projection, expanded, stage.out_channels, 1, 1);
        }
    }
    let last = EFFICIENTNET_B0_STAGES[EFFICIENTNET_B0_STAGES.len() - 1].out_channels;
    efficientnet_conv_norm(&mut tensors, "features.8", last, EFFICIENTNET_B0_TOP_CHANNELS, 1, 1);
    tensors
}

/// A `Conv2dNormActivation` under `prefix`: `prefix.0.weight` (no bias; `groups` channels groups,
/// as many as channels for a depthwise convolution) and batch norm `prefix.1.*`.
fn efficientnet_conv_norm(
    tensors: &mut Vec<ExpectedTensor>,
    prefix: &str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    groups: usize,
) {
    tensors.push(required(format!("{prefix}.0.weight"), vec![out_channels, in_channels / groups, kernel, kernel]));
    for statistic in ["weight", "bias", "running_mean", "running_var"] {
        tensors.push(required(format!("{prefix}.1.{statistic}"), vec![out_channels]));
    }
    tensors.push(ExpectedTensor { name: format!("{prefix}.1.num_batches_tracked"), shape: vec![], required: false });
}

/// What [`check_file`] found in a file that holds every required tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsCheck {
    /// Expected tensors present with the right shape.
    pub matched: usize,
    /// Optional tensors (`num_batches_tracked`) the file does not have.
    pub optional_missing: usize,
    /// Tensors the backbone does not use (classifiers), sorted by name.
    pub ignored: Vec<String>,
}

/// Why a file cannot serve as a backbone's pretrained weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a complete safetensors file.
    #[error("{} is not a complete safetensors file: {reason}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A required tensor is absent.
    #[error(
        "{} has no tensor `{name}` (expected shape {expected:?}); {backbone} weights need torchvision's names",
        path.display(),
        backbone = backbone.name()
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// The backbone it was checked for.
        backbone: Backbone,
        /// The first required tensor not found.
        name: String,
        /// Its torchvision shape.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than torchvision's.
    #[error("tensor `{name}` in {} has shape {found:?}, expected {expected:?} for {backbone}", path.display(), backbone = backbone.name())]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The backbone it was checked for.
        backbone: Backbone,
        /// The first tensor with a wrong shape.
        name: String,
        /// Its torchvision shape.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A weight is stored as integers or booleans.
    #[error("tensor `{name}` in {} is {found:?}, expected a float type (F32, F16, BF16 or F64)", path.display())]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The first tensor with a non-float type.
        name: String,
        /// Its type in the file.
        found: Dtype,
    },
}

/// safetensors' own bound on the header, so a corrupt length cannot make us allocate gigabytes.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Checks that the safetensors file at `path` holds every required tensor of `backbone` with
/// torchvision's name, exact shape and a float type, and that its data section is complete (a
/// truncated download is refused). Reads only the header. The first problem, in `state_dict()`
/// order, is the error.
pub fn check_file(backbone: Backbone, path: &Path) -> Result<WeightsCheck, WeightsError> {
    let metadata = read_header(path)?;
    let tensors = metadata.tensors();
    let mut matched = 0;
    let mut optional_missing = 0;
    for expected in expected_tensors(backbone) {
        let Some(info) = tensors.get(&expected.name) else {
            if expected.required {
                return Err(WeightsError::Missing {
                    path: path.to_path_buf(),
                    backbone,
                    name: expected.name,
                    expected: expected.shape,
                });
            }
            optional_missing += 1;
            continue;
        };
        if info.shape != expected.shape {
            return Err(WeightsError::WrongShape {
                path: path.to_path_buf(),
                backbone,
                name: expected.name,
                expected: expected.shape,
                found: info.shape.clone(),
            });
        }
        // Optional tensors are batch counters, stored as integers by PyTorch.
        if expected.required && !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(WeightsError::WrongDtype { path: path.to_path_buf(), name: expected.name, found: info.dtype });
        }
        matched += 1;
    }
    let known: HashSet<String> = expected_tensors(backbone).into_iter().map(|tensor| tensor.name).collect();
    let mut ignored: Vec<String> = tensors.into_keys().filter(|name| !known.contains(name)).collect();
    ignored.sort();
    Ok(WeightsCheck { matched, optional_missing, ignored })
}

/// Reads and parses the header (8-byte little-endian length, then JSON), and checks that the
/// tensors' byte ranges tile the rest of the file exactly.
fn read_header(path: &Path) -> Result<Metadata, WeightsError> {
    let io_error = |source| WeightsError::Io { path: path.to_path_buf(), source };
    let invalid = |reason: String| WeightsError::NotSafetensors { path: path.to_path_buf(), reason };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    if file_len < 8 {
        return Err(invalid(format!("it is only {file_len} bytes long")));
    }
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(io_error)?;
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(invalid(format!("its header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io_error)?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|err| invalid(format!("its header is not valid JSON: {err}")))?;
    let data_len = file_len - 8 - header_len;
    let described = described_data_len(&metadata).map_err(invalid)?;
    if described != data_len {
        return Err(invalid(format!(
            "its header describes {described} bytes of tensor data but {data_len} follow it (an interrupted download?)"
        )));
    }
    Ok(metadata)
}

/// The data length the header describes, if every tensor's range follows the previous one and
/// matches its shape and type.
fn described_data_len(metadata: &Metadata) -> Result<u64, String> {
    let tensors = metadata.tensors();
    let mut by_offset: Vec<(&String, &&TensorInfo)> = tensors.iter().collect();
    by_offset.sort_by_key(|(_, info)| info.data_offsets);
    let mut end = 0usize;
    for (name, info) in by_offset {
        let (start, stop) = info.data_offsets;
        let bytes = info
            .shape
            .iter()
            .try_fold(info.dtype.size(), |product, &dim| product.checked_mul(dim))
            .ok_or_else(|| format!("tensor `{name}` is too large"))?;
        if start != end || stop.checked_sub(start) != Some(bytes) {
            return Err(format!(
                "tensor `{name}` has byte range {start}..{stop}, which does not match its shape and type"
            ));
        }
        end = stop;
    }
    Ok(end as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// Learned parameters (weights and biases, not batch norm's running statistics or counters).
    fn parameter_count(tensors: &[ExpectedTensor]) -> usize {
        tensors
            .iter()
            .filter(|tensor| tensor.name.ends_with(".weight") || tensor.name.ends_with(".bias"))
            .map(|tensor| tensor.shape.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn vgg16_lists_thirteen_convolutions_and_torchvisions_parameter_count() {
        let tensors = expected_tensors(Backbone::Vgg16);
        assert_eq!(tensors.len(), 26);
        assert!(tensors.iter().all(|tensor| tensor.required));
        assert_eq!(tensors[0], required("features.0.weight".into(), vec![64, 3, 3, 3]));
        assert_eq!(tensors[25], required("features.28.bias".into(), vec![512]));
        let indices: Vec<&str> =
            tensors.iter().step_by(2).map(|tensor| tensor.name.split('.').nth(1).unwrap()).collect();
        assert_eq!(indices, ["0", "2", "5", "7", "10", "12", "14", "17", "19", "21", "24", "26", "28"]);
        // torchvision's vgg16 has 138,357,544 parameters, of which the classifier holds
        // 25088·4096+4096 + 4096·4096+4096 + 4096·1000+1000 = 123,642,856.
        assert_eq!(parameter_count(&tensors), 14_714_688);
        assert_eq!(parameter_count(&tensors), 138_357_544 - 123_642_856);
    }

    #[test]
    fn resnet50_lists_torchvisions_tensors_without_fc() {
        let tensors = expected_tensors(Backbone::ResNet50);
        // 53 convolutions (1 + 16 bottlenecks × 3 + 4 projections), each with a batch norm of 5.
        assert_eq!(tensors.len(), 53 * 6);
        assert_eq!(tensors[0], required("conv1.weight".into(), vec![64, 3, 7, 7]));
        let find = |name: &str| tensors.iter().find(|tensor| tensor.name == name).unwrap().shape.clone();
        assert_eq!(find("layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
        assert_eq!(find("layer2.0.conv2.weight"), [128, 128, 3, 3]);
        assert_eq!(find("layer3.5.conv1.weight"), [256, 1024, 1, 1]);
        assert_eq!(find("layer4.2.bn3.running_var"), [2048]);
        assert!(!tensors.iter().any(|tensor| tensor.name == "layer1.1.downsample.0.weight"));
        assert_eq!(tensors.last().unwrap().name, "layer4.2.bn3.num_batches_tracked");
        // torchvision's resnet50 has 25,557,032 parameters; fc holds 2048·1000+1000.
        assert_eq!(parameter_count(&tensors), 25_557_032 - 2_049_000);
    }

    #[test]
    fn densenet121_lists_torchvisions_features_with_transitions_after_blocks_one_to_three() {
        let tensors = expected_tensors(Backbone::DenseNet121);
        // 58 dense layers of 2 convolutions and 2 batch norms, 3 transitions of 1 and 1, and
        // conv0, norm0, norm5.
        assert_eq!(tensors.len(), 58 * (2 + 2 * 5) + 3 * (1 + 5) + 1 + 2 * 5);
        let find = |name: &str| tensors.iter().find(|tensor| tensor.name == name).unwrap().shape.clone();
        assert_eq!(find("features.conv0.weight"), [64, 3, 7, 7]);
        assert_eq!(find("features.denseblock1.denselayer6.norm1.weight"), [64 + 5 * 32]);
        assert_eq!(find("features.transition1.conv.weight"), [128, 256, 1, 1]);
        assert_eq!(find("features.denseblock3.denselayer1.conv1.weight"), [128, 256, 1, 1]);
        assert_eq!(find("features.denseblock4.denselayer16.conv2.weight"), [32, 128, 3, 3]);
        assert!(!tensors.iter().any(|tensor| tensor.name.starts_with("features.transition4")));
        assert_eq!(find("features.norm5.running_mean"), [1024]);
        // torchvision's densenet121 has 7,978,856 parameters; classifier holds 1024·1000+1000.
        assert_eq!(parameter_count(&tensors), 7_978_856 - 1_025_000);
    }

    #[test]
    fn inception_v3_lists_every_basic_conv_without_the_auxiliary_head_or_fc() {
        let tensors = expected_tensors(Backbone::InceptionV3);
        // 94 BasicConv2d modules, six tensors each.
        assert_eq!(tensors.len(), 94 * 6);
        assert_eq!(tensors[0], required("Conv2d_1a_3x3.conv.weight".into(), vec![32, 3, 3, 3]));
        let last_required = tensors.iter().rev().find(|tensor| tensor.required).unwrap();
        assert_eq!(*last_required, required("Mixed_7c.branch_pool.bn.running_var".into(), vec![192]));
        assert_eq!(tensors.last().unwrap().name, "Mixed_7c.branch_pool.bn.num_batches_tracked");
        let find = |name: &str| tensors.iter().find(|tensor| tensor.name == name).unwrap().shape.clone();
        assert_eq!(find("Mixed_6b.branch7x7_2.conv.weight"), [128, 128, 1, 7]);
        assert_eq!(find("Mixed_6e.branch7x7dbl_2.conv.weight"), [192, 192, 7, 1]);
        assert_eq!(find("Mixed_7a.branch3x3_2.conv.weight"), [320, 192, 3, 3]);
        assert_eq!(find("Mixed_7b.branch3x3dbl_3b.conv.weight"), [384, 384, 3, 1]);
        assert_eq!(find("Mixed_5d.branch_pool.conv.weight"), [64, 288, 1, 1]);
        assert!(tensors.iter().all(|tensor| !tensor.name.starts_with("AuxLogits") && !tensor.name.starts_with("fc.")));
        assert!(tensors.iter().all(|tensor| tensor.required != tensor.name.ends_with("num_batches_tracked")));

        // torchvision's inception_v3 has 27,161,264 parameters. Its fc holds 2048·1000+1000 =
        // 2,049,000 and AuxLogits holds conv0 (768·128 = 98,304, bn 2·128 = 256), conv1
        // (128·768·5·5 = 2,457,600, bn 2·768 = 1,536) and fc (768·1000+1000 = 769,000): 3,326,696.
        let aux_logits = 98_304 + 256 + 2_457_600 + 1_536 + 769_000;
        assert_eq!(aux_logits, 3_326_696);
        assert_eq!(parameter_count(&tensors), 27_161_264 - 2_049_000 - aux_logits);
        assert_eq!(parameter_count(&tensors), 21_785_568);
    }

    #[test]
    fn efficientnet_b0_lists_torchvisions_features_without_the_classifier() {
        let tensors = expected_tensors(Backbone::EfficientNetB0);
        // The stem, 16 MBConv blocks (the first without an expansion) and the top: 49 convolutions
        // with batch norm (6 tensors each, the counter included) and 16 squeeze-excitations (4).
        assert_eq!(tensors.len(), 49 * 6 + 16 * 4);
        assert_eq!(tensors[0], required("features.0.0.weight".into(), vec![32, 3, 3, 3]));
        let find = |name: &str| tensors.iter().find(|tensor| tensor.name == name).unwrap().shape.clone();
        assert_eq!(find("features.1.0.block.0.0.weight"), [32, 1, 3, 3], "stage1 starts depthwise");
        assert_eq!(find("features.1.0.block.1.fc1.weight"), [8, 32, 1, 1]);
        assert_eq!(find("features.2.1.block.0.0.weight"), [144, 24, 1, 1]);
        assert_eq!(find("features.3.0.block.1.0.weight"), [144, 1, 5, 5]);
        assert_eq!(find("features.6.3.block.2.fc2.weight"), [1152, 48, 1, 1]);
        assert_eq!(find("features.7.0.block.3.1.running_var"), [320]);
        assert_eq!(find("features.8.0.weight"), [1280, 320, 1, 1]);
        assert_eq!(tensors.last().unwrap().name, "features.8.1.num_batches_tracked");
        assert!(tensors.iter().all(|tensor| tensor.required != tensor.name.ends_with("num_batches_tracked")));
        // torchvision's efficientnet_b0 has 5,288,548 parameters; its classifier holds
        // 1280·1000+1000 = 1,281,000.
        assert_eq!(parameter_count(&tensors), 5_288_548 - 1_281_000);
    }

    #[test]
    fn a_complete_efficientnet_b0_file_passes_and_a_missing_squeeze_excitation_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("efficientnet_b0.safetensors");
        let mut tensors = torchvision_tensors(Backbone::EfficientNetB0, Dtype::F32);
        tensors.push(("classifier.1.weight".into(), vec![1000, 1280], Dtype::F32));
        write_file(&path, &tensors);
        let check = check_file(Backbone::EfficientNetB0, &path).unwrap();
        assert_eq!(check.matched, 49 * 6 + 16 * 4);
        assert_eq!(check.ignored, ["classifier.1.weight"]);
        tensors.retain(|(name, _, _)| name != "features.4.2.block.2.fc1.bias");
        write_file(&path, &tensors);
        let err = check_file(Backbone::EfficientNetB0, &path).unwrap_err().to_string();
        assert!(err.contains("features.4.2.block.2.fc1.bias") && err.contains("[20]"), "{err}");
    }

    /// Writes `tensors` as F16 zeros (BF16 where the name says so) into a safetensors file.
    fn write_file(path: &Path, tensors: &[(String, Vec<usize>, Dtype)]) {
        let largest =
            tensors.iter().map(|(_, shape, dtype)| shape.iter().product::<usize>() * dtype.size()).max().unwrap_or(0);
        let zeros = vec![0u8; largest];
        let views = tensors.iter().map(|(name, shape, dtype)| {
            let bytes = shape.iter().product::<usize>() * dtype.size();
            (name.clone(), TensorView::new(*dtype, shape.clone(), &zeros[..bytes]).unwrap())
        });
        safetensors::serialize_to_file(views, &None, path).unwrap();
    }

    /// `backbone`'s tensors as torchvision saves them: floats, and int64 batch counters.
    fn torchvision_tensors(backbone: Backbone, float: Dtype) -> Vec<(String, Vec<usize>, Dtype)> {
        expected_tensors(backbone)
            .into_iter()
            .map(|tensor| {
                let dtype = if tensor.required { float } else { Dtype::I64 };
                (tensor.name, tensor.shape, dtype)
            })
            .collect()
    }

    #[test]
    fn a_complete_vgg16_file_passes_and_its_classifier_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg16.safetensors");
        let mut tensors = torchvision_tensors(Backbone::Vgg16, Dtype::BF16);
        tensors.push(("classifier.6.bias".into(), vec![1000], Dtype::F32));
        tensors.push(("classifier.6.weight".into(), vec![1000, 4096], Dtype::F32));
        write_file(&path, &tensors);
        let check = check_file(Backbone::Vgg16, &path).unwrap();
        assert_eq!(
            check,
            WeightsCheck {
                matched: 26,
                optional_missing: 0,
                ignored: vec!["classifier.6.bias".into(), "classifier.6.weight".into()]
            }
        );
    }

    #[test]
    fn a_complete_inception_v3_file_passes_with_or_without_batch_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inception_v3.safetensors");
        let mut tensors = torchvision_tensors(Backbone::InceptionV3, Dtype::F16);
        tensors.push(("fc.bias".into(), vec![1000], Dtype::F16));
        tensors.push(("AuxLogits.fc.bias".into(), vec![1000], Dtype::F16));
        write_file(&path, &tensors);
        let check = check_file(Backbone::InceptionV3, &path).unwrap();
        assert_eq!(check.matched, 94 * 6);
        assert_eq!(check.optional_missing, 0);
        assert_eq!(check.ignored, ["AuxLogits.fc.bias", "fc.bias"]);

        // The same file without `num_batches_tracked` passes too (written again: ~44 MB of zeros).
        tensors.retain(|(name, _, _)| !name.ends_with("num_batches_tracked"));
        write_file(&path, &tensors);
        let check = check_file(Backbone::InceptionV3, &path).unwrap();
        assert_eq!((check.matched, check.optional_missing), (94 * 5, 94));
    }

    #[test]
    fn the_first_missing_or_misshaped_tensor_is_named_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg16.safetensors");
        let complete = torchvision_tensors(Backbone::Vgg16, Dtype::F16);

        let mut missing = complete.clone();
        missing.retain(|(name, _, _)| name != "features.10.weight" && name != "features.26.bias");
        write_file(&path, &missing);
        let err = check_file(Backbone::Vgg16, &path).unwrap_err();
        assert!(
            matches!(&err, WeightsError::Missing { name, expected, .. } if name == "features.10.weight" && *expected == [256, 128, 3, 3])
        );
        assert!(err.to_string().contains("no tensor `features.10.weight` (expected shape [256, 128, 3, 3])"), "{err}");

        let mut misshaped = complete.clone();
        misshaped[7].1 = vec![128, 128, 1, 3];
        write_file(&path, &misshaped);
        let err = check_file(Backbone::Vgg16, &path).unwrap_err().to_string();
        assert!(
            err.contains("`features.7.bias` in") && err.contains("shape [128, 128, 1, 3], expected [128] for vgg16"),
            "{err}"
        );

        let mut integers = complete;
        integers[0].2 = Dtype::I32;
        write_file(&path, &integers);
        let err = check_file(Backbone::Vgg16, &path).unwrap_err().to_string();
        assert!(err.contains("`features.0.weight`") && err.contains("I32, expected a float type"), "{err}");
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_without_reading_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg16.safetensors");
        write_file(&path, &torchvision_tensors(Backbone::Vgg16, Dtype::F16));
        let full = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(full - 1).unwrap();
        let err = check_file(Backbone::Vgg16, &path).unwrap_err().to_string();
        assert!(err.contains("an interrupted download?"), "{err}");

        std::fs::write(&path, b"<!DOCTYPE html><html>Not Found</html>").unwrap();
        let err = check_file(Backbone::Vgg16, &path).unwrap_err();
        assert!(matches!(err, WeightsError::NotSafetensors { .. }), "{err}");

        let err = check_file(Backbone::Vgg16, &dir.path().join("absent.safetensors")).unwrap_err();
        assert!(matches!(err, WeightsError::Io { .. }), "{err}");
    }
}
