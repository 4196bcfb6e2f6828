//! Test-set metrics computed the way scikit-learn computes them, so numbers a student gets from
//! trainq match the ones their notebook would print: the confusion matrix (rows = true class,
//! columns = predicted class), precision, recall, specificity, F1, the ROC curve and its area.
//!
//! Pure arithmetic on labels and model outputs: no tch, no I/O, so the worker can call it and the
//! server can deserialize what it reports. Two promises hold everywhere:
//!
//! - **No NaN ever comes out.** A metric that is 0/0 (precision when nothing was predicted
//!   positive, AUC on a test set with one class) is `None`, and the `undefined` map of the result
//!   says why, in words a student can act on. scikit-learn would print 0.0 or `nan` with a warning
//!   that scrolls away; a `None` with a reason cannot be mistaken for a score.
//! - **Bad inputs are errors, not panics or garbage.** A NaN model output (a diverged run), or
//!   labels and scores of different lengths, give a [`MetricsError`](crate::domain::scores::MetricsError).
//!
//! Two threshold conventions meet here, both copied from the tools students already use:
//!
//! - the fixed operating point of [`evaluate_binary`](crate::domain::scores::evaluate_binary) predicts
//!   positive iff `score > threshold` (strictly greater, as in the course's `y_pred > 0.5`), so a
//!   score of exactly 0.5 is negative;
//! - each point of the ROC curve is sklearn's `roc_curve`: positive iff `score >= threshold`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a metric could not be computed from the inputs at all. Undefined *values* (0/0) are not
/// errors: they are `None` fields with a reason in `undefined`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// There is nothing to evaluate, so even accuracy is 0/0.
    #[error("the test set is empty, so no metric is defined")]
    EmptyTestSet,
    /// Every image needs exactly one label and one model output.
    #[error("{labels} labels but {outputs} {what}: each image needs exactly one of each")]
    LengthMismatch {
        /// How many labels were given.
        labels: usize,
        /// How many scores, predictions or probability rows were given.
        outputs: usize,
        /// What the outputs are, for the message ("scores", "predictions", ...).
        what: &'static str,
    },
    /// A model output that is NaN or infinite, which usually means training diverged. It cannot
    /// be ranked, so ROC and AUC would be meaningless.
    #[error("the model output for image {index} is {value}, not a finite number (did training diverge?)")]
    NonFiniteOutput {
        /// Which image (position in the inputs).
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The decision threshold must be a finite number so that it can be reported in JSON.
    #[error("the decision threshold {0} is not a finite number")]
    NonFiniteThreshold(f64),
    /// A label or prediction names a class that does not exist.
    #[error("{what} {index} is class {class}, but there are only {classes} classes")]
    ClassOutOfRange {
        /// "label" or "prediction".
        what: &'static str,
        /// Which image (position in the inputs).
        index: usize,
        /// The class it names.
        class: usize,
        /// How many classes there are.
        classes: usize,
    },
    /// A softmax output row with the wrong number of probabilities.
    #[error("image {index} has {found} probabilities, but there are {classes} classes")]
    WrongProbabilityCount {
        /// Which image (position in the inputs).
        index: usize,
        /// How many probabilities its row holds.
        found: usize,
        /// How many it should hold.
        classes: usize,
    },
    /// A classifier needs at least one class.
    #[error("there must be at least one class")]
    NoClasses,
}

/// One point of the ROC curve: the false and true positive rates when every image whose score is
/// `>= threshold` is called positive (sklearn's `roc_curve` convention).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// False positive rate, fp / (fp + tn), in [0, 1].
    pub fpr: f64,
    /// True positive rate (recall), tp / (tp + fn), in [0, 1].
    pub tpr: f64,
    /// The score threshold of this point. The first point is `f64::INFINITY` (nothing predicted
    /// positive), like sklearn's `np.inf`. JSON cannot hold infinity, so it is written as `null`
    /// and read back from `null` as `f64::INFINITY`; every other threshold is a finite score.
    #[serde(with = "infinity_as_null")]
    pub threshold: f64,
}

/// Metrics of a binary classifier on a test set, at one decision threshold plus the
/// threshold-free ROC curve and AUC. The positive class is the one whose score the model outputs
/// (for a sigmoid head, the second sorted class, index 1, e.g. PNEUMONIA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// The decision threshold: an image is predicted positive iff its score is strictly greater.
    pub threshold: f64,
    /// The confusion matrix as sklearn lays it out for labels [negative, positive]:
    /// `[[tn, fp], [fn, tp]]` (rows = true class, columns = predicted class).
    pub confusion: [[u64; 2]; 2],
    /// Positive images predicted positive.
    pub true_positives: u64,
    /// Negative images predicted positive.
    pub false_positives: u64,
    /// Negative images predicted negative.
    pub true_negatives: u64,
    /// Positive images predicted negative.
    pub false_negatives: u64,
    /// (tp + tn) / all images. Always defined, because an empty test set is an error.
    pub accuracy: f64,
    /// tp / (tp + fp); `None` when nothing was predicted positive.
    pub precision: Option<f64>,
    /// tp / (tp + fn), also called sensitivity; `None` when the test set has no positive image.
    pub recall: Option<f64>,
    /// tn / (tn + fp); `None` when the test set has no negative image.
    pub specificity: Option<f64>,
    /// 2tp / (2tp + fp + fn), the harmonic mean of precision and recall as sklearn computes it;
    /// `None` only when tp + fp + fn = 0. It is 0.0, not `None`, when precision alone is undefined,
    /// since the harmonic mean with a recall of 0 tends to 0.
    pub f1: Option<f64>,
    /// Area under the ROC curve (sklearn's `roc_auc_score`, ties counted as half);
    /// `None` when the test set holds only one class.
    pub auc: Option<f64>,
    /// The ROC curve over every distinct score (sklearn's `roc_curve(drop_intermediate=False)`),
    /// starting at (0, 0) with threshold infinity. Empty when the test set holds only one class,
    /// because one of the two rates is then 0/0.
    pub roc: Vec<RocPoint>,
    /// For each `None` field (and an empty `roc`), its name and the reason in words.
    pub undefined: BTreeMap<String, String>,
}

/// One class's metrics in a multiclass evaluation, that class against all the others
/// (sklearn's `classification_report` rows, plus specificity and one-vs-rest AUC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class index (position in the sorted class names).
    pub class_index: usize,
    /// How many test images truly belong to this class.
    pub support: u64,
    /// Images of this class predicted as this class.
    pub true_positives: u64,
    /// Images of other classes predicted as this class.
    pub false_positives: u64,
    /// Images of other classes predicted as another class.
    pub true_negatives: u64,
    /// Images of this class predicted as another class.
    pub false_negatives: u64,
    /// tp / (tp + fp); `None` when no image was predicted as this class.
    pub precision: Option<f64>,
    /// tp / (tp + fn); `None` when the test set has no image of this class.
    pub recall: Option<f64>,
    /// tn / (tn + fp); `None` when every test image belongs to this class.
    pub specificity: Option<f64>,
    /// 2tp / (2tp + fp + fn); `None` only when tp + fp + fn = 0.
    pub f1: Option<f64>,
    /// One-vs-rest ROC AUC of this class's probability; `None` when the test set holds only this
    /// class or none of it.
    pub auc: Option<f64>,
    /// For each `None` field, its name and the reason in words.
    pub undefined: BTreeMap<String, String>,
}

/// Metrics of a softmax classifier on a test set, predicting the class of highest probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassMetrics {
    /// `confusion[true_class][predicted_class]` counts images, as sklearn's `confusion_matrix`.
    pub confusion: Vec<Vec<u64>>,
    /// Correct predictions / all images. Always defined, because an empty test set is an error.
    pub accuracy: f64,
    /// One entry per class, in class-index order.
    pub per_class: Vec<ClassMetrics>,
}

/// The mean and spread of one metric over repeated runs of the same experiment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// The arithmetic mean.
    pub mean: f64,
    /// The sample standard deviation (ddof = 1, numpy's `np.std(x, ddof=1)`, pandas' default),
    /// because repeated runs are a sample of what the experiment can give. With a single run it is
    /// reported as 0.0 rather than 0/0, so a one-run summary still serializes to numbers.
    pub std: f64,
    /// How many values were aggregated, so a reader can tell a 0.0 std of one run from agreement.
    pub n: usize,
}

/// Evaluates a binary classifier. `labels[i]` is true when image `i` belongs to the positive
/// class, `scores[i]` is the model's score for the positive class (a sigmoid output, or the
/// softmax probability of class 1), and an image is predicted positive iff
/// `scores[i] > threshold` (strictly, as `y_pred > 0.5`).
///
/// Scores need not be probabilities (logits work too with a suitable threshold), but they must be
/// finite: a NaN cannot be ranked, so the ROC curve would be meaningless.
pub fn evaluate_binary(labels: &[bool], scores: &[f64], threshold: f64) -> Result<BinaryMetrics, MetricsError> {
    check_lengths(labels.len(), scores.len(), "scores")?;
    if labels.is_empty() {
        return Err(MetricsError::EmptyTestSet);
    }
    check_finite_outputs(scores)?;
    if !threshold.is_finite() {
        return Err(MetricsError::NonFiniteThreshold(threshold));
    }

    let mut counts = OneVersusRestCounts::default();
    for (&is_positive, &score) in labels.iter().zip(scores) {
        counts.add(is_positive, score > threshold);
    }

    let mut undefined = BTreeMap::new();
    let rates = counts.rates(&mut undefined);
    let cumulative = cumulative_counts_by_threshold(labels, scores);
    let auc = area_under_roc(&cumulative, counts.positives(), counts.negatives());
    let roc = match single_class_reason(counts.positives(), counts.negatives()) {
        None => roc_points(&cumulative, counts.positives(), counts.negatives()),
        Some(reason) => {
            undefined.insert("auc".to_owned(), format!("{reason}, so ROC AUC is undefined"));
            undefined.insert("roc".to_owned(), format!("{reason}, so one of the ROC rates is 0/0"));
            Vec::new()
        }
    };

    Ok(BinaryMetrics {
        threshold,
        confusion: [[counts.true_negatives, counts.false_positives], [counts.false_negatives, counts.true_positives]],
        true_positives: counts.true_positives,
        false_positives: counts.false_positives,
        true_negatives: counts.true_negatives,
        false_negatives: counts.false_negatives,
        accuracy: (counts.true_positives + counts.true_negatives) as f64 / labels.len() as f64,
        precision: rates.precision,
        recall: rates.recall,
        specificity: rates.specificity,
        f1: rates.f1,
        auc,
        roc,
        undefined,
    })
}

/// Evaluates a softmax classifier: `labels[i]` is the true class of image `i` and
/// `probabilities[i]` holds one probability per class. The prediction is the class of highest
/// probability (the first one on a tie, like `argmax`), so with two classes it agrees with
/// [`evaluate_binary`] on `probabilities[i][1]` at threshold 0.5 whenever the two add up to one.
pub fn evaluate_multiclass(
    labels: &[usize],
    probabilities: &[Vec<f64>],
    classes: usize,
) -> Result<MulticlassMetrics, MetricsError> {
    check_lengths(labels.len(), probabilities.len(), "probability rows")?;
    if classes == 0 {
        return Err(MetricsError::NoClasses);
    }
    if labels.is_empty() {
        return Err(MetricsError::EmptyTestSet);
    }
    check_classes_in_range(labels, classes, "label")?;
    let mut predictions = Vec::with_capacity(probabilities.len());
    for (index, row) in probabilities.iter().enumerate() {
        if row.len() != classes {
            return Err(MetricsError::WrongProbabilityCount { index, found: row.len(), classes });
        }
        if let Some(&value) = row.iter().find(|value| !value.is_finite()) {
            return Err(MetricsError::NonFiniteOutput { index, value });
        }
        // A non-empty row of finite numbers always has a maximum; the error only stands in for an
        // unwrap on a case the checks above rule out.
        predictions.push(predicted_class(row).ok_or(MetricsError::NoClasses)?);
    }

    let confusion = confusion_matrix(labels, &predictions, classes)?;
    let correct: u64 = (0..classes).map(|class| confusion[class][class]).sum();
    let per_class = (0..classes)
        .map(|class| {
            let mut counts = OneVersusRestCounts::default();
            for (&label, &prediction) in labels.iter().zip(&predictions) {
                counts.add(label == class, prediction == class);
            }
            let mut undefined = BTreeMap::new();
            let rates = counts.rates(&mut undefined);
            let is_this_class: Vec<bool> = labels.iter().map(|&label| label == class).collect();
            let class_scores: Vec<f64> = probabilities.iter().map(|row| row[class]).collect();
            let cumulative = cumulative_counts_by_threshold(&is_this_class, &class_scores);
            let auc = area_under_roc(&cumulative, counts.positives(), counts.negatives());
            if let Some(reason) = single_class_reason(counts.positives(), counts.negatives()) {
                undefined.insert("auc".to_owned(), format!("{reason}, so one-vs-rest ROC AUC is undefined"));
            }
            ClassMetrics {
                class_index: class,
                support: counts.positives(),
                true_positives: counts.true_positives,
                false_positives: counts.false_positives,
                true_negatives: counts.true_negatives,
                false_negatives: counts.false_negatives,
                precision: rates.precision,
                recall: rates.recall,
                specificity: rates.specificity,
                f1: rates.f1,
                auc,
                undefined,
            }
        })
        .collect();

    Ok(MulticlassMetrics { confusion, accuracy: correct as f64 / labels.len() as f64, per_class })
}

/// Counts `confusion[true_class][predicted_class]`, the orientation of sklearn's
/// `confusion_matrix(y_true, y_pred)`: row sums are the class supports. An empty input gives a
/// matrix of zeros; a label or prediction outside `0..classes` is an error, not a silent drop.
pub fn confusion_matrix(
    labels: &[usize],
    predictions: &[usize],
    classes: usize,
) -> Result<Vec<Vec<u64>>, MetricsError> {
    check_lengths(labels.len(), predictions.len(), "predictions")?;
    check_classes_in_range(labels, classes, "label")?;
    check_classes_in_range(predictions, classes, "prediction")?;
    let mut matrix = vec![vec![0u64; classes]; classes];
    for (&label, &prediction) in labels.iter().zip(predictions) {
        matrix[label][prediction] += 1;
    }
    Ok(matrix)
}

/// The index of the highest probability, the first one on a tie (numpy's and Keras' `argmax`).
/// `None` for an empty row or one holding a NaN, which has no meaningful maximum.
pub fn predicted_class(probabilities: &[f64]) -> Option<usize> {
    if probabilities.iter().any(|value| value.is_nan()) {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for (index, &value) in probabilities.iter().enumerate() {
        // Strictly greater keeps the first of equal maxima.
        if best.is_none_or(|(_, best_value)| value > best_value) {
            best = Some((index, value));
        }
    }
    best.map(|(index, _)| index)
}

/// Aggregates one metric over repeated runs: mean, sample standard deviation (ddof = 1) and count.
/// A single value gives a std of 0.0 (see [`MeanStd::std`]). `None` when there is nothing to
/// aggregate or a value is not finite, so a NaN never reaches a report; undefined per-run metrics
/// (`None`s) should be left out by the caller, who knows whether that is acceptable.
pub fn mean_std(values: &[f64]) -> Option<MeanStd> {
    if values.is_empty() || values.iter().any(|value| !value.is_finite()) {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    // Two passes (mean first, then squared deviations) rather than sum-of-squares, which loses
    // precision when the spread is small next to the mean, as it is for accuracies near 0.9.
    let std = if n == 1 {
        0.0
    } else {
        let squared_deviations: f64 = values.iter().map(|value| (value - mean).powi(2)).sum();
        (squared_deviations / (n - 1) as f64).sqrt()
    };
    Some(MeanStd { mean, std, n })
}

/// The four counts of one class against the rest, from which every thresholded metric follows.
#[derive(Debug, Default, Clone, Copy)]
struct OneVersusRestCounts {
    true_positives: u64,
    false_positives: u64,
    true_negatives: u64,
    false_negatives: u64,
}

/// The thresholded rates, each `None` when it is 0/0.
struct Rates {
    precision: Option<f64>,
    recall: Option<f64>,
    specificity: Option<f64>,
    f1: Option<f64>,
}

impl OneVersusRestCounts {
    fn add(&mut self, is_positive: bool, predicted_positive: bool) {
        match (is_positive, predicted_positive) {
            (true, true) => self.true_positives += 1,
            (false, true) => self.false_positives += 1,
            (false, false) => self.true_negatives += 1,
            (true, false) => self.false_negatives += 1,
        }
    }

    fn positives(&self) -> u64 {
        self.true_positives + self.false_negatives
    }

    fn negatives(&self) -> u64 {
        self.true_negatives + self.false_positives
    }

    /// Computes the rates and records in `undefined` why each missing one is missing.
    fn rates(&self, undefined: &mut BTreeMap<String, String>) -> Rates {
        let (tp, fp, tn, fn_) = (self.true_positives, self.false_positives, self.true_negatives, self.false_negatives);
        let mut rate = |name: &str, numerator: u64, denominator: u64, reason: &str| {
            if denominator == 0 {
                undefined.insert(name.to_owned(), reason.to_owned());
                None
            } else {
                Some(numerator as f64 / denominator as f64)
            }
        };
        Rates {
            precision: rate(
                "precision",
                tp,
                tp + fp,
                "no test image was predicted positive (tp + fp = 0), so precision tp / (tp + fp) is 0/0",
            ),
            recall: rate(
                "recall",
                tp,
                tp + fn_,
                "the test set holds no positive image (tp + fn = 0), so recall tp / (tp + fn) is 0/0",
            ),
            specificity: rate(
                "specificity",
                tn,
                tn + fp,
                "the test set holds no negative image (tn + fp = 0), so specificity tn / (tn + fp) is 0/0",
            ),
            f1: rate(
                "f1",
                2 * tp,
                2 * tp + fp + fn_,
                "the test set holds no positive image and none was predicted positive (tp + fp + fn = 0), \
                 so F1 is 0/0",
            ),
        }
    }
}

/// The ROC curve in counts: after admitting every image with score >= `threshold`, how many
/// negatives (`false_positives`) and positives (`true_positives`) were admitted. Integer counts
/// make the AUC exact up to one final division, so tie handling cannot drift with rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CumulativeCounts {
    false_positives: u64,
    true_positives: u64,
    threshold: f64,
}

/// Walks the scores from highest to lowest and emits one point per distinct score, after all the
/// images tied at that score, preceded by the (0, 0) point at threshold infinity. This is sklearn's
/// `_binary_clf_curve` plus `roc_curve`'s prepended point: tied scores move both counts at once,
/// which is what makes a tie a diagonal step worth half a pair in the area.
fn cumulative_counts_by_threshold(labels: &[bool], scores: &[f64]) -> Vec<CumulativeCounts> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Scores are finite here; total_cmp only separates 0.0 from -0.0, which stay adjacent and are
    // grouped below with `==`, as numpy groups them.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![CumulativeCounts { false_positives: 0, true_positives: 0, threshold: f64::INFINITY }];
    let (mut false_positives, mut true_positives) = (0u64, 0u64);
    for (position, &image) in order.iter().enumerate() {
        if labels[image] {
            true_positives += 1;
        } else {
            false_positives += 1;
        }
        let last_of_its_score = order.get(position + 1).is_none_or(|&next| scores[next] != scores[image]);
        if last_of_its_score {
            points.push(CumulativeCounts { false_positives, true_positives, threshold: scores[image] });
        }
    }
    points
}

/// Trapezoidal area under the curve in counts, `None` when one class is missing. Twice the area in
/// pair units is an integer (each step adds Δfp × (tp_before + tp_after)), so the result is
/// exactly the Mann-Whitney U / (positives × negatives) with ties counted as one half.
fn area_under_roc(points: &[CumulativeCounts], positives: u64, negatives: u64) -> Option<f64> {
    if positives == 0 || negatives == 0 {
        return None;
    }
    let twice_area: u128 = points
        .windows(2)
        .map(|step| {
            let width = u128::from(step[1].false_positives - step[0].false_positives);
            width * u128::from(step[0].true_positives + step[1].true_positives)
        })
        .sum();
    Some(twice_area as f64 / (2 * u128::from(positives) * u128::from(negatives)) as f64)
}

/// Turns counts into rates; only called when both classes are present.
fn roc_points(points: &[CumulativeCounts], positives: u64, negatives: u64) -> Vec<RocPoint> {
    points
        .iter()
        .map(|point| RocPoint {
            fpr: point.false_positives as f64 / negatives as f64,
            tpr: point.true_positives as f64 / positives as f64,
            threshold: point.threshold,
        })
        .collect()
}

/// Words for a test set that lacks one of the two classes, or `None` when both are present.
fn single_class_reason(positives: u64, negatives: u64) -> Option<&'static str> {
    match (positives, negatives) {
        (0, 0) => Some("the test set is empty"),
        (0, _) => Some("the test set holds only negative images (one class)"),
        (_, 0) => Some("the test set holds only positive images (one class)"),
        _ => None,
    }
}

fn check_lengths(labels: usize, outputs: usize, what: &'static str) -> Result<(), MetricsError> {
    if labels == outputs {
        Ok(())
    } else {
        Err(MetricsError::LengthMismatch { labels, outputs, what })
    }
}

fn check_finite_outputs(outputs: &[f64]) -> Result<(), MetricsError> {
    match outputs.iter().position(|value| !value.is_finite()) {
        None => Ok(()),
        Some(index) => Err(MetricsError::NonFiniteOutput { index, value: outputs[index] }),
    }
}

fn check_classes_in_range(classes_of_images: &[usize], classes: usize, what: &'static str) -> Result<(), MetricsError> {
    match classes_of_images.iter().position(|&class| class >= classes) {
        None => Ok(()),
        Some(index) => Err(MetricsError::ClassOutOfRange { what, index, class: classes_of_images[index], classes }),
    }
}

/// JSON has no infinity, and serde_json would write `f64::INFINITY` as `null` and then refuse to
/// read it back, so the one infinite ROC threshold goes out as `null` and comes back as infinity.
mod infinity_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_some(value)
        } else {
            serializer.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::INFINITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Floats computed from small counts are exact or within an ulp of the hand-worked value.
    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-12, "{actual} != {expected}");
    }

    fn assert_close_some(actual: Option<f64>, expected: f64) {
        match actual {
            Some(value) => assert_close(value, expected),
            None => panic!("expected {expected}, got None"),
        }
    }

    fn booleans(labels: &[u8]) -> Vec<bool> {
        labels.iter().map(|&label| label == 1).collect()
    }

    fn roc_triples(metrics: &BinaryMetrics) -> Vec<(f64, f64, f64)> {
        metrics.roc.iter().map(|point| (point.fpr, point.tpr, point.threshold)).collect()
    }

    /// The reference formulation: over every (positive, negative) pair, count 1 when the positive
    /// scores higher and 1/2 on a tie. Kept in doubled integer units, like `area_under_roc`.
    fn mann_whitney_auc(labels: &[bool], scores: &[f64]) -> Option<f64> {
        let positives: Vec<f64> = scores.iter().zip(labels).filter(|(_, &label)| label).map(|(&s, _)| s).collect();
        let negatives: Vec<f64> = scores.iter().zip(labels).filter(|(_, &label)| !label).map(|(&s, _)| s).collect();
        if positives.is_empty() || negatives.is_empty() {
            return None;
        }
        let mut twice_u: u128 = 0;
        for &positive in &positives {
            for &negative in &negatives {
                twice_u += match positive.partial_cmp(&negative) {
                    Some(std::cmp::Ordering::Greater) => 2,
                    Some(std::cmp::Ordering::Equal) => 1,
                    _ => 0,
                };
            }
        }
        Some(twice_u as f64 / (2 * positives.len() as u128 * negatives.len() as u128) as f64)
    }

    #[test]
    fn sklearn_documentation_example_roc_and_auc() {
        // sklearn's roc_curve / roc_auc_score docs: y = [0, 0, 1, 1], scores = [0.1, 0.4, 0.35, 0.8].
        // Descending: 0.8 (pos) | 0.4 (neg) | 0.35 (pos) | 0.1 (neg); cumulative (fp, tp) after each:
        // (0,1) (1,1) (1,2) (2,2), so fpr = [0, 0, .5, .5, 1], tpr = [0, .5, .5, 1, 1] with the
        // leading (0, 0) at infinity. Area: 0 + .5*.5 + 0 + .5*1 = 0.75.
        let metrics = evaluate_binary(&booleans(&[0, 0, 1, 1]), &[0.1, 0.4, 0.35, 0.8], 0.5).unwrap();
        assert_eq!(
            roc_triples(&metrics),
            [(0.0, 0.0, f64::INFINITY), (0.0, 0.5, 0.8), (0.5, 0.5, 0.4), (0.5, 1.0, 0.35), (1.0, 1.0, 0.1)]
        );
        assert_eq!(metrics.auc, Some(0.75));
        // At 0.5 only 0.8 is positive: tp 1, fn 1 (0.35), tn 2, fp 0.
        assert_eq!(metrics.confusion, [[2, 0], [1, 1]]);
        assert_close(metrics.accuracy, 0.75);
        assert_close_some(metrics.precision, 1.0);
        assert_close_some(metrics.recall, 0.5);
        assert_close_some(metrics.specificity, 1.0);
        // 2tp / (2tp + fp + fn) = 2 / 3.
        assert_close_some(metrics.f1, 2.0 / 3.0);
        assert!(metrics.undefined.is_empty(), "{:?}", metrics.undefined);
    }

    #[test]
    fn perfect_classifier_scores_one_everywhere() {
        // Negatives 0.1, 0.2 below positives 0.8, 0.9: every metric is 1. The ROC goes straight up
        // (0,0) → (0,.5) → (0,1) and then along the top (.5,1) → (1,1).
        let metrics = evaluate_binary(&booleans(&[0, 0, 1, 1]), &[0.1, 0.2, 0.8, 0.9], 0.5).unwrap();
        assert_eq!(metrics.confusion, [[2, 0], [0, 2]]);
        assert_eq!((metrics.true_negatives, metrics.false_positives), (2, 0));
        assert_eq!((metrics.false_negatives, metrics.true_positives), (0, 2));
        assert_eq!(metrics.accuracy, 1.0);
        assert_eq!(metrics.precision, Some(1.0));
        assert_eq!(metrics.recall, Some(1.0));
        assert_eq!(metrics.specificity, Some(1.0));
        assert_eq!(metrics.f1, Some(1.0));
        assert_eq!(metrics.auc, Some(1.0));
        assert_eq!(
            roc_triples(&metrics),
            [(0.0, 0.0, f64::INFINITY), (0.0, 0.5, 0.9), (0.0, 1.0, 0.8), (0.5, 1.0, 0.2), (1.0, 1.0, 0.1)]
        );
    }

    #[test]
    fn all_wrong_classifier_scores_zero_but_every_metric_is_defined() {
        // Negatives score high, positives low: tp 0, fp 2, tn 0, fn 2. Precision is 0/2 (defined),
        // recall 0/2, specificity 0/2, F1 0/4, and every positive ranks below every negative: AUC 0.
        let metrics = evaluate_binary(&booleans(&[0, 0, 1, 1]), &[0.9, 0.8, 0.2, 0.1], 0.5).unwrap();
        assert_eq!(metrics.confusion, [[0, 2], [2, 0]]);
        assert_eq!(metrics.accuracy, 0.0);
        assert_eq!(metrics.precision, Some(0.0));
        assert_eq!(metrics.recall, Some(0.0));
        assert_eq!(metrics.specificity, Some(0.0));
        assert_eq!(metrics.f1, Some(0.0));
        assert_eq!(metrics.auc, Some(0.0));
        assert!(metrics.undefined.is_empty());
    }

    #[test]
    fn all_scores_tied_give_a_diagonal_roc_and_auc_one_half() {
        // One distinct score, so the curve jumps from (0,0) straight to (1,1): area 0.5, as each
        // of the 4 (positive, negative) pairs is a tie worth 1/2.
        let labels = booleans(&[0, 1, 0, 1]);
        let metrics = evaluate_binary(&labels, &[0.5; 4], 0.5).unwrap();
        assert_eq!(roc_triples(&metrics), [(0.0, 0.0, f64::INFINITY), (1.0, 1.0, 0.5)]);
        assert_eq!(metrics.auc, Some(0.5));
        // 0.5 is not > 0.5: nothing is predicted positive, so precision is 0/0 while recall is 0/2
        // and F1 = 0 / (0 + 0 + 2) = 0.
        assert_eq!(metrics.confusion, [[2, 0], [2, 0]]);
        assert_eq!(metrics.precision, None);
        assert_eq!(metrics.recall, Some(0.0));
        assert_eq!(metrics.f1, Some(0.0));
        assert_close(metrics.accuracy, 0.5);
    }

    #[test]
    fn a_tie_between_classes_is_a_diagonal_step_worth_half_a_pair() {
        // y = [0, 0, 1, 1], scores = [0.2, 0.6, 0.6, 0.9]. Descending groups: 0.9 {pos} → (fp 0, tp 1);
        // 0.6 {neg, pos} → (1, 2) in one diagonal step; 0.2 {neg} → (2, 2).
        // ROC: (0,0) (0,.5) (.5,1) (1,1). Area: 0 + .5 * (.5 + 1) / 2 + .5 * 1 = .375 + .5 = 0.875.
        // Pairs: 0.9 beats both negatives (2), 0.6 beats 0.2 (1) and ties 0.6 (1/2): 3.5 / 4 = 0.875.
        let labels = booleans(&[0, 0, 1, 1]);
        let scores = [0.2, 0.6, 0.6, 0.9];
        let metrics = evaluate_binary(&labels, &scores, 0.5).unwrap();
        assert_eq!(
            roc_triples(&metrics),
            [(0.0, 0.0, f64::INFINITY), (0.0, 0.5, 0.9), (0.5, 1.0, 0.6), (1.0, 1.0, 0.2)]
        );
        assert_eq!(metrics.auc, Some(0.875));
        assert_eq!(mann_whitney_auc(&labels, &scores), Some(0.875));
    }

    #[test]
    fn trapezoid_and_mann_whitney_agree_exactly_on_random_tied_scores() {
        let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut cases_with_both_classes = 0;
        for case in 0..200 {
            let images = random.gen_range(2..60);
            // Scores on a coarse grid of 0.1 make ties between and within classes common.
            let labels: Vec<bool> = (0..images).map(|_| random.gen_bool(0.4)).collect();
            let scores: Vec<f64> = (0..images).map(|_| f64::from(random.gen_range(0..=10u8)) / 10.0).collect();
            let metrics = evaluate_binary(&labels, &scores, 0.5).unwrap();
            assert_eq!(metrics.auc, mann_whitney_auc(&labels, &scores), "case {case}: {labels:?} {scores:?}");
            if let Some(last) = metrics.roc.last() {
                cases_with_both_classes += 1;
                // The curve always ends at (1, 1) at the lowest score, with strictly decreasing
                // thresholds (one point per distinct score).
                assert_eq!((last.fpr, last.tpr), (1.0, 1.0));
                assert!(metrics.roc.windows(2).all(|pair| pair[0].threshold > pair[1].threshold));
                assert!(metrics.roc.windows(2).all(|pair| pair[0].fpr <= pair[1].fpr && pair[0].tpr <= pair[1].tpr));
            }
        }
        // Guards against a generator that only ever draws one class and so compares None with None.
        assert!(cases_with_both_classes > 150, "{cases_with_both_classes}");
    }

    #[test]
    fn single_class_test_set_has_no_auc_and_says_why() {
        // Three positives, no negative: tp 2 (0.7, 0.9), fn 1 (0.2). Recall 2/3, precision 2/2,
        // F1 = 4 / (4 + 0 + 1) = 0.8; specificity and AUC are 0/0.
        let metrics = evaluate_binary(&[true, true, true], &[0.2, 0.7, 0.9], 0.5).unwrap();
        assert_eq!(metrics.auc, None);
        assert_eq!(metrics.specificity, None);
        assert!(metrics.roc.is_empty());
        assert_close_some(metrics.recall, 2.0 / 3.0);
        assert_close_some(metrics.precision, 1.0);
        assert_close_some(metrics.f1, 0.8);
        let reason = &metrics.undefined["auc"];
        assert!(reason.contains("only positive images") && reason.contains("AUC is undefined"), "{reason}");
        assert!(metrics.undefined["specificity"].contains("no negative image"));
        assert!(metrics.undefined.contains_key("roc"));
        assert_eq!(metrics.undefined.len(), 3, "{:?}", metrics.undefined);
    }

    #[test]
    fn no_positive_prediction_leaves_precision_undefined_with_a_reason() {
        // Both scores at or under 0.5: tp 0, fp 0, fn 1, tn 1. Precision 0/0, recall 0/1, F1 0/1;
        // the ranking is still perfect, so AUC is 1.
        let metrics = evaluate_binary(&[false, true], &[0.1, 0.2], 0.5).unwrap();
        assert_eq!(metrics.precision, None);
        assert!(metrics.undefined["precision"].contains("no test image was predicted positive"));
        assert_eq!(metrics.recall, Some(0.0));
        assert_eq!(metrics.f1, Some(0.0));
        assert_eq!(metrics.specificity, Some(1.0));
        assert_eq!(metrics.auc, Some(1.0));
        assert_eq!(metrics.undefined.keys().collect::<Vec<_>>(), ["precision"]);
    }

    #[test]
    fn only_negatives_all_predicted_negative_leaves_f1_undefined() {
        // tp = fp = fn = 0: precision, recall and F1 are all 0/0; specificity is 2/2.
        let metrics = evaluate_binary(&[false, false], &[0.1, 0.3], 0.5).unwrap();
        assert_eq!((metrics.precision, metrics.recall, metrics.f1), (None, None, None));
        assert_eq!(metrics.specificity, Some(1.0));
        assert_eq!(metrics.auc, None);
        assert!(metrics.undefined["auc"].contains("only negative images"));
        assert!(metrics.undefined["f1"].contains("tp + fp + fn = 0"));
        assert_eq!(metrics.undefined.len(), 5, "{:?}", metrics.undefined);
    }

    #[test]
    fn a_score_equal_to_the_threshold_is_negative() {
        // `y_pred > 0.5`: exactly 0.5 is a negative prediction, the next float above is positive.
        let just_above = f64::from_bits(0.5f64.to_bits() + 1);
        let metrics = evaluate_binary(&[true, true], &[0.5, just_above], 0.5).unwrap();
        assert_eq!((metrics.false_negatives, metrics.true_positives), (1, 1));
        let metrics = evaluate_binary(&[false, true], &[0.5, 0.75], 0.5).unwrap();
        assert_eq!(metrics.confusion, [[1, 0], [0, 1]]);
        assert_eq!(metrics.accuracy, 1.0);
    }

    #[test]
    fn binary_confusion_matrix_is_laid_out_like_sklearn() {
        // Ten images chosen so the four cells differ: tn 4, fp 1, fn 2, tp 3.
        // sklearn's confusion_matrix(y, y_pred) = [[tn, fp], [fn, tp]] = [[4, 1], [2, 3]].
        let labels = booleans(&[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
        let scores = [0.1, 0.2, 0.3, 0.4, 0.9, 0.2, 0.3, 0.6, 0.7, 0.8];
        let metrics = evaluate_binary(&labels, &scores, 0.5).unwrap();
        assert_eq!(metrics.confusion, [[4, 1], [2, 3]]);
        assert_eq!(
            (metrics.true_negatives, metrics.false_positives, metrics.false_negatives, metrics.true_positives),
            (4, 1, 2, 3)
        );
        // The generic confusion matrix on 0/1 labels and predictions gives the same layout.
        let label_indices: Vec<usize> = labels.iter().map(|&label| usize::from(label)).collect();
        let predictions: Vec<usize> = scores.iter().map(|&score| usize::from(score > 0.5)).collect();
        let generic = confusion_matrix(&label_indices, &predictions, 2).unwrap();
        assert_eq!(generic, [[4, 1], [2, 3]]);
        // Precision 3/4, recall 3/5, specificity 4/5, F1 6 / (6 + 1 + 2) = 2/3, accuracy 7/10.
        assert_close_some(metrics.precision, 0.75);
        assert_close_some(metrics.recall, 0.6);
        assert_close_some(metrics.specificity, 0.8);
        assert_close_some(metrics.f1, 2.0 / 3.0);
        assert_close(metrics.accuracy, 0.7);
    }

    #[test]
    fn confusion_matrix_rows_are_true_classes_and_columns_predictions() {
        // sklearn: confusion_matrix([0, 0, 0, 1, 2], [0, 1, 1, 2, 2]) == [[1, 2, 0], [0, 0, 1], [0, 0, 1]].
        let matrix = confusion_matrix(&[0, 0, 0, 1, 2], &[0, 1, 1, 2, 2], 3).unwrap();
        assert_eq!(matrix, [[1, 2, 0], [0, 0, 1], [0, 0, 1]]);
        assert_eq!(confusion_matrix(&[], &[], 2).unwrap(), [[0, 0], [0, 0]]);
    }

    #[test]
    fn confusion_matrix_rejects_unknown_classes_and_mismatched_lengths() {
        assert_eq!(
            confusion_matrix(&[0, 3], &[0, 1], 3),
            Err(MetricsError::ClassOutOfRange { what: "label", index: 1, class: 3, classes: 3 })
        );
        assert_eq!(
            confusion_matrix(&[0, 1], &[5, 1], 3),
            Err(MetricsError::ClassOutOfRange { what: "prediction", index: 0, class: 5, classes: 3 })
        );
        assert_eq!(
            confusion_matrix(&[0, 1], &[1], 2),
            Err(MetricsError::LengthMismatch { labels: 2, outputs: 1, what: "predictions" })
        );
    }

    #[test]
    fn bad_binary_inputs_are_errors_not_nan() {
        assert_eq!(evaluate_binary(&[], &[], 0.5), Err(MetricsError::EmptyTestSet));
        assert_eq!(
            evaluate_binary(&[true], &[0.1, 0.2], 0.5),
            Err(MetricsError::LengthMismatch { labels: 1, outputs: 2, what: "scores" })
        );
        match evaluate_binary(&[true, false], &[0.3, f64::NAN], 0.5) {
            Err(MetricsError::NonFiniteOutput { index: 1, value }) => assert!(value.is_nan()),
            other => panic!("expected a NaN error, got {other:?}"),
        }
        assert_eq!(
            evaluate_binary(&[true, false], &[0.3, f64::INFINITY], 0.5),
            Err(MetricsError::NonFiniteOutput { index: 1, value: f64::INFINITY })
        );
        assert!(matches!(evaluate_binary(&[true], &[0.3], f64::NAN), Err(MetricsError::NonFiniteThreshold(_))));
    }

    #[test]
    fn positive_and_negative_zero_are_one_threshold() {
        // numpy groups -0.0 with 0.0 (they compare equal), so the curve has one point for both.
        let metrics = evaluate_binary(&[false, true], &[-0.0, 0.0], 0.5).unwrap();
        assert_eq!(metrics.roc.len(), 2);
        assert_eq!(metrics.auc, Some(0.5));
    }

    #[test]
    fn json_holds_nulls_for_undefined_metrics_and_the_infinite_threshold() {
        let metrics = evaluate_binary(&booleans(&[0, 0, 1, 1]), &[0.1, 0.4, 0.35, 0.8], 0.5).unwrap();
        let json = serde_json::to_value(&metrics).unwrap();
        assert_eq!(json["roc"][0], serde_json::json!({ "fpr": 0.0, "tpr": 0.0, "threshold": null }));
        assert_eq!(json["roc"][1]["threshold"], 0.8);
        assert_eq!(json["confusion"], serde_json::json!([[2, 0], [1, 1]]));
        let round_trip: BinaryMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(round_trip, metrics);
        assert_eq!(round_trip.roc[0].threshold, f64::INFINITY);

        let single_class = evaluate_binary(&[true], &[0.9], 0.5).unwrap();
        let json = serde_json::to_value(&single_class).unwrap();
        assert_eq!(json["auc"], serde_json::Value::Null);
        assert!(json["undefined"]["auc"].as_str().unwrap().contains("ROC AUC is undefined"));
    }

    #[test]
    fn multiclass_metrics_follow_the_argmax_one_class_against_the_rest() {
        // Rows → argmax: [.7 .2 .1] → 0 (true 0), [.3 .4 .3] → 1 (true 1), [.2 .5 .3] → 1 (true 2),
        // [.1 .1 .8] → 2 (true 2). Confusion [[1,0,0],[0,1,0],[0,1,1]], accuracy 3/4.
        let labels = [0, 1, 2, 2];
        let probabilities = vec![vec![0.7, 0.2, 0.1], vec![0.3, 0.4, 0.3], vec![0.2, 0.5, 0.3], vec![0.1, 0.1, 0.8]];
        let metrics = evaluate_multiclass(&labels, &probabilities, 3).unwrap();
        assert_eq!(metrics.confusion, [[1, 0, 0], [0, 1, 0], [0, 1, 1]]);
        assert_close(metrics.accuracy, 0.75);
        let [class_0, class_1, class_2] = &metrics.per_class[..] else { panic!("three classes expected") };
        // Class 0: perfect; its probabilities [.7 .3 .2 .1] rank its one image first: AUC 1.
        assert_eq!(
            (class_0.precision, class_0.recall, class_0.f1, class_0.auc),
            (Some(1.0), Some(1.0), Some(1.0), Some(1.0))
        );
        // Class 1: tp 1, fp 1, fn 0, tn 2 → precision 1/2, recall 1, specificity 2/3, F1 2/3.
        // AUC: its image scores 0.4 against negatives 0.2 (win), 0.5 (loss), 0.1 (win) → 2/3.
        assert_eq!(class_1.support, 1);
        assert_close_some(class_1.precision, 0.5);
        assert_close_some(class_1.recall, 1.0);
        assert_close_some(class_1.specificity, 2.0 / 3.0);
        assert_close_some(class_1.f1, 2.0 / 3.0);
        assert_close_some(class_1.auc, 2.0 / 3.0);
        // Class 2: tp 1, fp 0, fn 1, tn 2 → precision 1, recall 1/2, F1 2/3. AUC: positives 0.3 and
        // 0.8 against negatives 0.1 and 0.3: 0.3 wins once and ties once (1.5), 0.8 wins twice → 3.5/4.
        assert_eq!(class_2.support, 2);
        assert_close_some(class_2.precision, 1.0);
        assert_close_some(class_2.recall, 0.5);
        assert_close_some(class_2.f1, 2.0 / 3.0);
        assert_eq!(class_2.auc, Some(0.875));
        assert!(metrics.per_class.iter().all(|class| class.undefined.is_empty()));
    }

    #[test]
    fn multiclass_reports_an_absent_class_as_undefined() {
        // Class 2 has no image and is never predicted: recall, precision, F1 and AUC are 0/0.
        let metrics = evaluate_multiclass(&[0, 1], &[vec![0.8, 0.1, 0.1], vec![0.1, 0.8, 0.1]], 3).unwrap();
        let absent = &metrics.per_class[2];
        assert_eq!(
            (absent.support, absent.precision, absent.recall, absent.f1, absent.auc),
            (0, None, None, None, None)
        );
        assert_eq!(absent.specificity, Some(1.0));
        assert!(absent.undefined["auc"].contains("only negative images"));
    }

    #[test]
    fn two_class_softmax_agrees_with_binary_on_the_second_probability() {
        // With p0 = 1 - p1, argmax picks class 1 iff p1 > 0.5 (a 0.5/0.5 tie goes to class 0), the
        // same decision as `p1 > 0.5`; the one-vs-rest AUC of class 1 is the binary AUC.
        let labels = [0, 1, 0, 1, 1, 0];
        let positive_probability = [0.2, 0.5, 0.5, 0.9, 0.4, 0.7];
        let rows: Vec<Vec<f64>> = positive_probability.iter().map(|&p| vec![1.0 - p, p]).collect();
        let multiclass = evaluate_multiclass(&labels, &rows, 2).unwrap();
        let labels_as_booleans: Vec<bool> = labels.iter().map(|&label| label == 1).collect();
        let binary = evaluate_binary(&labels_as_booleans, &positive_probability, 0.5).unwrap();
        let binary_confusion: Vec<Vec<u64>> = binary.confusion.iter().map(|row| row.to_vec()).collect();
        assert_eq!(multiclass.confusion, binary_confusion);
        assert_eq!(multiclass.accuracy, binary.accuracy);
        let positive_class = &multiclass.per_class[1];
        assert_eq!(
            (positive_class.precision, positive_class.recall, positive_class.f1, positive_class.auc),
            (binary.precision, binary.recall, binary.f1, binary.auc)
        );
    }

    #[test]
    fn bad_multiclass_inputs_are_errors() {
        assert_eq!(evaluate_multiclass(&[], &[], 2), Err(MetricsError::EmptyTestSet));
        assert_eq!(evaluate_multiclass(&[0], &[vec![]], 0), Err(MetricsError::NoClasses));
        assert_eq!(
            evaluate_multiclass(&[0, 1], &[vec![0.5, 0.5], vec![1.0]], 2),
            Err(MetricsError::WrongProbabilityCount { index: 1, found: 1, classes: 2 })
        );
        assert_eq!(
            evaluate_multiclass(&[0, 2], &[vec![0.5, 0.5], vec![0.5, 0.5]], 2),
            Err(MetricsError::ClassOutOfRange { what: "label", index: 1, class: 2, classes: 2 })
        );
        match evaluate_multiclass(&[0, 1], &[vec![0.5, 0.5], vec![0.5, f64::NAN]], 2) {
            Err(MetricsError::NonFiniteOutput { index: 1, value }) => assert!(value.is_nan()),
            other => panic!("expected a NaN error, got {other:?}"),
        }
    }

    #[test]
    fn predicted_class_is_the_first_maximum() {
        assert_eq!(predicted_class(&[0.1, 0.7, 0.2]), Some(1));
        assert_eq!(predicted_class(&[0.4, 0.4, 0.2]), Some(0));
        assert_eq!(predicted_class(&[-3.0, -1.0]), Some(1));
        assert_eq!(predicted_class(&[]), None);
        assert_eq!(predicted_class(&[0.2, f64::NAN]), None);
    }

    #[test]
    fn mean_std_uses_the_sample_standard_deviation() {
        // [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + .25 + .25 + 2.25 = 5, / (n - 1) = 5/3.
        let summary = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_close(summary.mean, 2.5);
        assert_close(summary.std, (5.0f64 / 3.0).sqrt());
        assert_eq!(summary.n, 4);
        // [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, squared deviations 9+1+1+1+0+0+4+16 = 32, / 7.
        let summary = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_close(summary.mean, 5.0);
        assert_close(summary.std, (32.0f64 / 7.0).sqrt());
    }

    #[test]
    fn mean_std_of_one_run_has_zero_spread_and_of_none_is_none() {
        assert_eq!(mean_std(&[0.87]), Some(MeanStd { mean: 0.87, std: 0.0, n: 1 }));
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[0.5, f64::NAN]), None);
        assert_eq!(mean_std(&[0.5, f64::INFINITY]), None);
    }

    #[test]
    fn mean_std_keeps_precision_for_small_spreads_around_a_large_mean() {
        // Sum-of-squares would cancel catastrophically here (squares near 1e18 have an ulp of 128);
        // two passes give the exact spread of 1.
        let summary = mean_std(&[1e9 + 1.0, 1e9 + 2.0, 1e9 + 3.0]).unwrap();
        assert_close(summary.std, 1.0);
    }
}
