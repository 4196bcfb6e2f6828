//! What a phase feeds the network (pixels or cached activations), the loss, and a split's
//! evaluation in inference mode.

use crate::data::Split;
use crate::features::Features;
use crate::model::{Cut, Network, Trainable};
use crate::normalise::Normaliser;
use crate::precision::Numerics;
use tch::{Device, Kind, Reduction, Tensor};
use trainq::domain::scores::{self, BinaryMetrics, MulticlassMetrics};

/// Loss (mean over the batch) and the number of correct predictions, both as 0-d tensors.
pub fn loss_and_correct(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    weighted_loss_and_correct(logits, labels, None)
}

/// As [`loss_and_correct`], with each sample's loss multiplied by its class's weight
/// (`class_weights`, one per class, on the logits' device) when there are weights, as Keras
/// applies `class_weight`: the weighted sum divided by the batch size, not by the sum of the
/// weights. The correct predictions do not depend on the weights.
pub fn weighted_loss_and_correct(logits: &Tensor, labels: &Tensor, class_weights: Option<&Tensor>) -> (Tensor, Tensor) {
    let weighted_mean = |per_sample: Tensor, weights: &Tensor| {
        (per_sample * weights.index_select(0, labels)).sum(Kind::Float) / labels.size()[0] as f64
    };
    if logits.size()[1] == 1 {
        let logits = logits.squeeze_dim(1);
        // Unweighted, libtorch's own mean (as before weights existed); weighted, per sample.
        let reduction = if class_weights.is_some() { Reduction::None } else { Reduction::Mean };
        let loss =
            logits.binary_cross_entropy_with_logits::<Tensor>(&labels.to_kind(Kind::Float), None, None, reduction);
        let loss = match class_weights {
            Some(weights) => weighted_mean(loss, weights),
            None => loss,
        };
        let correct = logits.gt(0.0).to_kind(Kind::Int64).eq_tensor(labels).sum(Kind::Int64);
        (loss, correct)
    } else {
        let loss = match class_weights {
            Some(weights) => {
                weighted_mean(logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::None, -100, 0.0), weights)
            }
            None => logits.cross_entropy_for_logits(labels),
        };
        let correct = logits.argmax(1, false).eq_tensor(labels).sum(Kind::Int64);
        (loss, correct)
    }
}

/// A split evaluated in inference mode.
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (threshold 0.5 on the sigmoid, or argmax).
    pub accuracy: f64,
    /// Per image: the positive-class probability (binary models) or one probability per class.
    pub probabilities: Vec<Vec<f64>>,
}

/// What a phase feeds the network: a split's pixels through the whole network, or the cached
/// activations of its frozen prefix through the rest of it (`Network::forward_from`).
pub struct Feed<'a> {
    /// Per shape group: the stored inputs (uint8 pixels or activations) and the labels.
    pub groups: Vec<(&'a Tensor, &'a Tensor)>,
    /// Where the stored inputs enter the network; `None` for pixels.
    cut: Option<Cut>,
    normaliser: &'a Normaliser,
    pub numerics: &'a Numerics,
}

impl<'a> Feed<'a> {
    /// A split's pixels.
    pub fn pixels(split: &'a Split, normaliser: &'a Normaliser, numerics: &'a Numerics) -> Feed<'a> {
        let groups = split.groups.iter().map(|group| (&group.images, &group.labels)).collect();
        Feed { groups, cut: None, normaliser, numerics }
    }

    /// A split's activations at `cut` (grouped like its pixels, so the labels are the split's).
    pub fn features(
        split: &'a Split,
        features: &'a Features,
        cut: Cut,
        normaliser: &'a Normaliser,
        numerics: &'a Numerics,
    ) -> Feed<'a> {
        let groups = features.groups.iter().zip(&split.groups).map(|(stored, group)| (stored, &group.labels)).collect();
        Feed { groups, cut: Some(cut), normaliser, numerics }
    }

    /// The split's activations when there are some, else its pixels.
    pub fn of(
        split: &'a Split,
        features: Option<(&'a Features, Cut)>,
        normaliser: &'a Normaliser,
        numerics: &'a Numerics,
    ) -> Feed<'a> {
        match features {
            Some((features, cut)) => Feed::features(split, features, cut, normaliser, numerics),
            None => Feed::pixels(split, normaliser, numerics),
        }
    }

    pub fn len(&self) -> i64 {
        self.groups.iter().map(|(stored, _)| stored.size()[0]).sum()
    }

    pub fn device(&self) -> Device {
        self.normaliser.device()
    }

    /// A stored batch as the network takes it at the feed's entry point.
    pub fn input(&self, stored: &Tensor) -> Tensor {
        match self.cut {
            None => self.numerics.input(self.normaliser.apply(stored)),
            Some(_) => {
                let x = stored.to_device(self.device());
                // Under autocast the next layer casts anyway; otherwise compute in float32.
                let x = if self.numerics.bf16 { x } else { x.to_kind(Kind::Float) };
                if x.dim() == 4 {
                    self.numerics.input(x)
                } else {
                    x
                }
            }
        }
    }

    pub fn forward(&self, network: &Network, x: &Tensor, trainable: &Trainable, train: bool) -> Tensor {
        match self.cut {
            None => network.forward(x, trainable, train),
            Some(cut) => network.forward_from(x, cut, trainable, train),
        }
    }
}

/// Loss, accuracy and probabilities over a whole split in inference mode, in the split's tensor order.
pub fn evaluate(network: &Network, feed: &Feed, batch_size: i64) -> Evaluation {
    let n = feed.len();
    if n == 0 {
        return Evaluation { loss: f64::NAN, accuracy: f64::NAN, probabilities: Vec::new() };
    }
    let device = feed.device();
    let inference = Trainable::none(network.block_count());
    tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut probabilities = Vec::new();
        let batches = feed.groups.iter().flat_map(|&(stored, labels)| {
            let size = stored.size()[0];
            (0..size)
                .step_by(batch_size as usize)
                .map(move |start| (stored, labels, start, batch_size.min(size - start)))
        });
        for (stored, labels, start, len) in batches {
            let images = feed.input(&stored.narrow(0, start, len));
            let labels = labels.narrow(0, start, len).to_device(device);
            let (logits, (loss, hits)) = feed.numerics.forward(|| {
                let logits = feed.forward(network, &images, &inference, false);
                let outcome = loss_and_correct(&logits, &labels);
                (logits, outcome)
            });
            loss_sum += loss * len as f64;
            correct += hits;
            let logits = logits.to_kind(Kind::Float);
            let batch = if logits.size()[1] == 1 { logits.sigmoid() } else { logits.softmax(1, Kind::Float) };
            probabilities.push(batch);
        }
        let probabilities = Tensor::cat(&probabilities, 0).to_kind(Kind::Double).to_device(Device::Cpu);
        let probabilities: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&probabilities).unwrap_or_default();
        Evaluation {
            loss: loss_sum.double_value(&[]) / n as f64,
            accuracy: correct.double_value(&[]) / n as f64,
            probabilities,
        }
    })
}

/// Test-set metrics: binary ones for a sigmoid model, per-class ones for a softmax model.
pub fn test_metrics(
    test: &Split,
    evaluation: &Evaluation,
    classes: usize,
) -> anyhow::Result<(Option<BinaryMetrics>, Option<MulticlassMetrics>)> {
    let labels: Vec<usize> = Vec::<i64>::try_from(&test.labels)?.into_iter().map(|l| l as usize).collect();
    if evaluation.probabilities.first().is_some_and(|row| row.len() == 1) {
        let positives: Vec<bool> = labels.iter().map(|&label| label == 1).collect();
        let scores: Vec<f64> = evaluation.probabilities.iter().map(|row| row[0]).collect();
        Ok((Some(scores::evaluate_binary(&positives, &scores, 0.5)?), None))
    } else {
        Ok((None, Some(scores::evaluate_multiclass(&labels, &evaluation.probabilities, classes)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_loss_and_accuracy_use_logits() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5]).view([3, 1]);
        let labels = Tensor::from_slice(&[1i64, 0, 0]);
        let (loss, correct) = loss_and_correct(&logits, &labels);
        assert_eq!(correct.int64_value(&[]), 2);
        let expected = ((1.0 + (-2.0f64).exp()).ln() + (1.0 + (-1.0f64).exp()).ln() + (1.0 + 0.5f64.exp()).ln()) / 3.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6);
    }

    /// Keras' `class_weight` by hand: each sample's loss times its class's weight, summed, over
    /// the batch size (not over the sum of the weights); the hits are unweighted.
    #[test]
    fn class_weights_scale_each_samples_loss_as_keras_does() {
        let weights = Tensor::from_slice(&[1.9f32, 0.66]);
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5]).view([3, 1]);
        let labels = Tensor::from_slice(&[1i64, 0, 0]);
        let (loss, correct) = weighted_loss_and_correct(&logits, &labels, Some(&weights));
        assert_eq!(correct.int64_value(&[]), 2);
        let softplus = |x: f64| (1.0 + x.exp()).ln();
        let expected = (0.66 * softplus(-2.0) + 1.9 * softplus(-1.0) + 1.9 * softplus(0.5)) / 3.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6, "{} vs {expected}", loss.double_value(&[]));
        // Softmax with three classes: −log p(label) per sample, weighted, over the batch size.
        let weights = Tensor::from_slice(&[1.0f32, 2.0, 0.5]);
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 2.0, 0.0]).view([2, 3]);
        let labels = Tensor::from_slice(&[0i64, 2]);
        let (loss, correct) = weighted_loss_and_correct(&logits, &labels, Some(&weights));
        assert_eq!(correct.int64_value(&[]), 1);
        let nll = |logits: [f64; 3], label: usize| logits.iter().map(|l| l.exp()).sum::<f64>().ln() - logits[label];
        let expected = (1.0 * nll([1.0, 0.0, 0.0], 0) + 0.5 * nll([0.0, 2.0, 0.0], 2)) / 2.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6, "{} vs {expected}", loss.double_value(&[]));
        // Weights of 1 are the unweighted loss.
        let ones = Tensor::from_slice(&[1.0f32, 1.0, 1.0]);
        let (plain, _) = loss_and_correct(&logits, &labels);
        let (weighted, _) = weighted_loss_and_correct(&logits, &labels, Some(&ones));
        assert!((plain.double_value(&[]) - weighted.double_value(&[])).abs() < 1e-6);
    }
}
