//! A job spec in words, the way the assignment states an experiment ("VGG16 with ImageNet weights,
//! 128×128 images, GAP → Dense(512) → …, 100 epochs frozen then 50 fine-tuning block5"), so a
//! reader of the report can check what ran without reading JSON.

use crate::domain::backbone::Backbone;
use crate::domain::spec::{
    HeadLayer, Interpolation, OptimizerName, OptimizerSpec, Precision, Resize, TrainSet, Weights,
};
use crate::domain::JobSpec;

/// The spec as sentences: backbone and weights, image size, head, each phase (epochs, what
/// trains, optimizer and learning rate), batch size, dataset, precision and seed. `ran_in` is what
/// the workers recorded they computed in (`JobProgress::precision`, one entry per distinct
/// answer): the report says what ran, and falls back on what was asked only for a job that never
/// started. Plain text; the caller escapes it for HTML.
pub fn describe(spec: &JobSpec, ran_in: &[&str]) -> String {
    let backbone = match spec.backbone {
        Backbone::Vgg16 => "VGG16",
        Backbone::InceptionV3 => "InceptionV3",
        Backbone::ResNet50 => "ResNet50",
        Backbone::DenseNet121 => "DenseNet121",
        Backbone::EfficientNetB0 => "EfficientNet-B0",
    };
    let weights = match spec.weights {
        Weights::Imagenet => "ImageNet weights",
        Weights::Random => "random initial weights",
    };
    let size = match spec.resize() {
        Resize::Square(side) => {
            let interpolation = match spec.interpolation {
                Interpolation::Nearest => "nearest",
                Interpolation::Bilinear => "bilinear",
                Interpolation::Area => "area",
            };
            format!("images resized to {side}×{side} ({interpolation})")
        }
        Resize::Bounded { max_side, .. } => {
            format!("variable image size (input shape [None, None, 3]; aspect kept, longer side at most {max_side} px)")
        }
    };
    let mut sentences = vec![
        format!("{backbone} with {weights} on dataset `{}`, {size}.", spec.dataset),
        format!("Head: {}.", head(&spec.head)),
    ];
    for (index, phase) in spec.phases.iter().enumerate() {
        let epochs = if phase.epochs == 1 { String::from("1 epoch") } else { format!("{} epochs", phase.epochs) };
        sentences.push(format!(
            "Phase {}: {epochs} training {}, {}.",
            index + 1,
            trains(&phase.train),
            optimizer(phase.optimizer(spec))
        ));
    }
    let asked = match spec.precision {
        Precision::Auto => "auto precision (bf16 on a GPU, fp32 on the CPU)",
        Precision::Fp32 => "fp32",
        Precision::Bf16 => "bf16 autocast",
    };
    let precision = if ran_in.is_empty() { asked.to_string() } else { format!("ran in {}", ran_in.join(" / ")) };
    let seeds = match spec.repeats {
        0 | 1 => format!("seed {}", spec.seed),
        repeats => {
            format!("seeds {}–{} ({repeats} repeats)", spec.seed, spec.seed.wrapping_add(u64::from(repeats) - 1))
        }
    };
    if let Some(augment) = spec.augment.filter(|_| spec.augments()) {
        sentences.push(format!("Augmentation of the training images: {}.", augment.describe()));
    }
    if let Some(class_weight) = &spec.class_weight {
        sentences.push(format!("Class weights: {} (the training loss is weighted).", class_weight.describe()));
    }
    sentences.push(format!("Batch size {}, {precision}, {seeds}.", spec.batch_size));
    sentences.join(" ")
}

/// The head as the assignment draws it: `GlobalAveragePooling2D → Dense(512) → … → Dense(1)`, and
/// what the last layer means for the loss.
fn head(layers: &[HeadLayer]) -> String {
    let names: Vec<String> = layers
        .iter()
        .map(|layer| match layer {
            HeadLayer::Gap => String::from("GlobalAveragePooling2D"),
            HeadLayer::Flatten => String::from("Flatten"),
            HeadLayer::Batchnorm(options) if options.momentum != 0.99 => {
                format!("BatchNormalization(momentum {})", options.momentum)
            }
            HeadLayer::Batchnorm(_) => String::from("BatchNormalization"),
            HeadLayer::Relu => String::from("ReLU"),
            HeadLayer::Dense(units) => format!("Dense({units})"),
            HeadLayer::Dropout(rate) => format!("Dropout({rate})"),
        })
        .collect();
    let output = match layers.last() {
        Some(HeadLayer::Dense(1)) => " (sigmoid, binary cross-entropy)",
        Some(HeadLayer::Dense(_)) => " (softmax, cross-entropy)",
        _ => "",
    };
    format!("{}{output}", names.join(" → "))
}

/// What a phase trains, in words.
fn trains(train: &TrainSet) -> String {
    match train {
        TrainSet::Named(name) if name == "head" => String::from("the head only (backbone frozen)"),
        TrainSet::Named(name) if name == "all" => String::from("every layer (backbone and head)"),
        TrainSet::Named(name) => name.clone(),
        TrainSet::Blocks(items) => {
            let blocks: Vec<&str> = items.iter().map(String::as_str).filter(|item| *item != "head").collect();
            let head = if train.trains_head() { " and the head" } else { "" };
            format!("{}{head} (the rest frozen)", blocks.join(", "))
        }
    }
}

/// `RMSprop, learning rate 1e-5`, with momentum and weight decay when set.
fn optimizer(optimizer: &OptimizerSpec) -> String {
    let name = match optimizer.name {
        OptimizerName::Rmsprop => "RMSprop",
        OptimizerName::Adam => "Adam",
        OptimizerName::Sgd => "SGD",
    };
    let mut words = format!("{name}, learning rate {:e}", optimizer.lr);
    if optimizer.momentum != 0.0 {
        words.push_str(&format!(", momentum {}", optimizer.momentum));
    }
    if optimizer.weight_decay != 0.0 {
        words.push_str(&format!(", weight decay {:e}", optimizer.weight_decay));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assignments_q1_reads_as_the_assignment_states_it() {
        let spec = JobSpec::parse(
            br#"{"name": "q1", "dataset": "chest_xray", "backbone": "vgg16", "weights": "imagenet", "image_size": 128,
                 "batch_size": 20, "head": ["gap", {"dense": 512}, "batchnorm", "relu", {"dense": 128}, {"dense": 1}],
                 "phases": [{"epochs": 100, "train": "head"}, {"epochs": 50, "train": ["block5", "head"]}],
                 "optimizer": {"name": "rmsprop", "lr": 1e-5}, "seed": 3, "repeats": 2}"#,
        )
        .unwrap();
        let words = describe(&spec, &[]);
        for part in [
            "VGG16 with ImageNet weights on dataset `chest_xray`, images resized to 128×128 (nearest).",
            "Head: GlobalAveragePooling2D → Dense(512) → BatchNormalization → ReLU → Dense(128) → Dense(1) (sigmoid, binary cross-entropy).",
            "Phase 1: 100 epochs training the head only (backbone frozen), RMSprop, learning rate 1e-5.",
            "Phase 2: 50 epochs training block5 and the head (the rest frozen), RMSprop, learning rate 1e-5.",
            "Batch size 20,",
            "seeds 3–4 (2 repeats).",
        ] {
            assert!(words.contains(part), "{part:?} missing from {words:?}");
        }
    }

    #[test]
    fn variable_size_says_so() {
        let spec = JobSpec::parse(
            br#"{"dataset": "d", "backbone": "inception_v3", "image_size": null, "max_image_side": 512, "batch_size": 10,
                 "head": ["gap", {"dropout": 0.25}, {"dense": 2}], "phases": [{"epochs": 1, "train": "all"}],
                 "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}}"#,
        )
        .unwrap();
        let words = describe(&spec, &[]);
        assert!(words.contains("InceptionV3 with ImageNet weights"), "{words}");
        assert!(words.contains("variable image size"), "{words}");
        assert!(words.contains("longer side at most 512 px"), "{words}");
        assert!(words.contains("Dropout(0.25) → Dense(2) (softmax"), "{words}");
        assert!(words.contains("Phase 1: 1 epoch training every layer"), "{words}");
        assert!(words.contains("SGD, learning rate 1e-2, momentum 0.9"), "{words}");
        assert!(words.contains("seed 0."), "{words}");
    }

    #[test]
    fn augmentation_and_class_weights_are_told() {
        let spec = JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "image_size": 64, "batch_size": 4, "head": ["gap", {"dense": 1}],
                 "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "adam", "lr": 0.001},
                 "augment": {"horizontal_flip": true, "zoom_range": 0.1},
                 "class_weight": {"NORMAL": 1.9, "PNEUMONIA": 0.66}}"#,
        )
        .unwrap();
        let words = describe(&spec, &[]);
        assert!(
            words.contains("Augmentation of the training images: horizontal flips, zoom 0.9–1.1, fill nearest."),
            "{words}"
        );
        assert!(
            words.contains("Class weights: NORMAL 1.9, PNEUMONIA 0.66 (the training loss is weighted)."),
            "{words}"
        );
        let plain = describe(&JobSpec { augment: None, class_weight: None, ..spec }, &[]);
        assert!(!plain.contains("Augmentation") && !plain.contains("Class weights"), "{plain}");
    }

    #[test]
    fn efficientnet_b0_is_named_as_the_paper_does_with_its_stages() {
        let spec = JobSpec::parse(
            br#"{"dataset": "d", "backbone": "efficientnet_b0", "image_size": 224, "batch_size": 16,
                 "head": ["gap", {"dense": 1}], "phases": [{"epochs": 3, "train": ["stage7", "top", "head"]}],
                 "optimizer": {"name": "adam", "lr": 1e-4}}"#,
        )
        .unwrap();
        let words = describe(&spec, &[]);
        assert!(words.contains("EfficientNet-B0 with ImageNet weights"), "{words}");
        assert!(words.contains("Phase 1: 3 epochs training stage7, top and the head (the rest frozen)"), "{words}");
    }

    #[test]
    fn the_precision_is_what_the_job_ran_in_once_it_ran() {
        let spec = JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "image_size": 64, "batch_size": 4, "head": ["gap", {"dense": 1}],
                 "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "adam", "lr": 0.001}}"#,
        )
        .unwrap();
        assert!(describe(&spec, &[]).contains("auto precision (bf16 on a GPU, fp32 on the CPU)"));
        let words = describe(&spec, &["bf16 autocast (auto: the CPU has AMX-BF16)"]);
        assert!(words.contains("ran in bf16 autocast (auto: the CPU has AMX-BF16)"), "{words}");
        assert!(!words.contains("fp32 on the CPU"), "{words}");
    }
}
