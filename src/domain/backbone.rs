//! What the server knows about each backbone without loading it: names, trainable blocks, input
//! limits. The worker builds the networks; this table is what specs are validated against.

use serde::{Deserialize, Serialize};

/// A pretrained convolutional base a job can fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// VGG16 (torchvision `features.*` names).
    Vgg16,
    /// InceptionV3 (torchvision names); not trainable in this version.
    InceptionV3,
}

/// Static facts about a backbone.
#[derive(Debug, Clone, Serialize)]
pub struct BackboneInfo {
    /// The spec's name for it.
    pub name: &'static str,
    /// Block names usable in a phase's `train` list, input side first.
    pub blocks: &'static [&'static str],
    /// The smallest input side the network accepts.
    pub min_image_size: u32,
    /// Channels of the feature map the head consumes.
    pub feature_channels: u32,
    /// Total downsampling factor from input to feature map.
    pub stride: u32,
    /// Whether this version of trainq can train it.
    pub available: bool,
}

impl Backbone {
    /// Every backbone, in listing order.
    pub const ALL: [Backbone; 2] = [Backbone::Vgg16, Backbone::InceptionV3];

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
                stride: 32,
                available: true,
            },
            Backbone::InceptionV3 => BackboneInfo {
                name: "inception_v3",
                blocks: &[],
                min_image_size: 75,
                feature_channels: 2048,
                stride: 32,
                available: false,
            },
        }
    }

    /// The file name of this backbone's pretrained weights in the weights folder.
    pub fn weights_file_name(self) -> String {
        format!("{}.safetensors", self.name())
    }
}
