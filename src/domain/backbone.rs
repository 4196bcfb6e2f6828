//! What the server knows about each backbone without loading it: names, trainable blocks, input
//! limits. The worker builds the networks; this table is what specs are validated against.

use serde::{Deserialize, Serialize};

/// A pretrained convolutional base a job can fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// VGG16 (torchvision `features.*` names).
    Vgg16,
    /// InceptionV3 (torchvision names, no auxiliary head).
    InceptionV3,
    /// ResNet50 (torchvision names, `conv1`, `bn1`, `layer1.0.conv1`, …, without `fc`).
    #[serde(rename = "resnet50")]
    ResNet50,
    /// DenseNet121, CheXNet's backbone (torchvision `features.*` names, without `classifier`).
    #[serde(rename = "densenet121")]
    DenseNet121,
    /// EfficientNet-B0 (torchvision `features.0` … `features.8` names; its classifier is unused).
    #[serde(rename = "efficientnet_b0")]
    EfficientNetB0,
}

/// Static facts about a backbone.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackboneInfo {
    /// The spec's name for it.
    pub name: &'static str,
    /// Block names usable in a phase's `train` list, input side first.
    #[schema(value_type = Vec<String>)]
    pub blocks: &'static [&'static str],
    /// The smallest input side the network accepts.
    pub min_image_size: u32,
    /// Channels of the feature map the head consumes.
    pub feature_channels: u32,
    /// Per-channel mean subtracted from pixels scaled to 0..1 (what the pretrained weights expect).
    #[schema(value_type = Vec<f64>)]
    pub input_mean: [f64; 3],
    /// Per-channel standard deviation pixels are divided by after the mean.
    #[schema(value_type = Vec<f64>)]
    pub input_std: [f64; 3],
}

impl Backbone {
    /// Every backbone, in listing order.
    pub const ALL: [Backbone; 5] =
        [Backbone::Vgg16, Backbone::InceptionV3, Backbone::ResNet50, Backbone::DenseNet121, Backbone::EfficientNetB0];

    /// The spec's name, which is also the weights file's stem (`vgg16.safetensors`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Static facts about this backbone.
    pub fn info(self) -> BackboneInfo {
        match self {
            Backbone::Vgg16 => BackboneInfo {
                name: "vgg16",
                blocks: &["block1", "block2", "block3", "block4", "block5"],
                min_image_size: 32,
                feature_channels: 512,
                // torchvision's ImageNet statistics.
                input_mean: [0.485, 0.456, 0.406],
                input_std: [0.229, 0.224, 0.225],
            },
            Backbone::InceptionV3 => BackboneInfo {
                name: "inception_v3",
                // `stem` is every layer before Mixed_5b; the rest are torchvision's module names.
                blocks: &[
                    "stem", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
                ],
                min_image_size: 75,
                feature_channels: 2048,
                // The Google-trained weights expect pixels in -1..1 (torchvision's transform_input).
                input_mean: [0.5, 0.5, 0.5],
                input_std: [0.5, 0.5, 0.5],
            },
            Backbone::ResNet50 => BackboneInfo {
                name: "resnet50",
                // `stem` is conv1, bn1, its ReLU and the max pool; `layerN` are torchvision's stages.
                blocks: &["stem", "layer1", "layer2", "layer3", "layer4"],
                // Every stride-2 step pads and rounds up, so the network runs on any side; at 32 (its
                // total stride, and Keras' limit) layer4's map is 1×1 and every stride-2 step still
                // halves a real extent rather than padding alone.
                min_image_size: 32,
                feature_channels: 2048,
                input_mean: [0.485, 0.456, 0.406],
                input_std: [0.229, 0.224, 0.225],
            },
            Backbone::DenseNet121 => BackboneInfo {
                name: "densenet121",
                // `stem` is conv0, norm0, its ReLU and pool0. `denseblockN` (N = 1…3) includes the
                // `transitionN` after it (batch norm, ReLU, 1×1 convolution, 2×2 average pool), so
                // a block's output is the next block's input; `denseblock4` includes the final
                // batch norm `norm5` and its ReLU, whose output is the feature map.
                blocks: &["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4"],
                // The three transitions' 2×2 pools floor: 29 px reaches them as 8×8 and ends 1×1;
                // 28 px reaches them as 7×7 and the third pool has nothing left.
                min_image_size: 29,
                feature_channels: 1024,
                input_mean: [0.485, 0.456, 0.406],
                input_std: [0.229, 0.224, 0.225],
            },
            Backbone::EfficientNetB0 => BackboneInfo {
                name: "efficientnet_b0",
                // torchvision's `features` children: `stem` = features.0 (the stride-2 3×3
                // convolution), `stage1`…`stage7` = features.1…7 (the MBConv stages, the paper's
                // stages 2–8), `top` = features.8 (the 1×1 convolution to 1280 channels, Keras'
                // `top_conv`; `head` already names the classifier in a `train` list).
                blocks: &["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"],
                // Five stride-2 steps: 32 px ends in a 1×1 feature map.
                min_image_size: 32,
                feature_channels: 1280,
                // torchvision's ImageNet statistics.
                input_mean: [0.485, 0.456, 0.406],
                input_std: [0.229, 0.224, 0.225],
            },
        }
    }

    /// The file name of this backbone's pretrained weights in the weights folder.
    pub fn weights_file_name(self) -> String {
        format!("{}.safetensors", self.name())
    }
}
