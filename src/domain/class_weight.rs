//! The spec's `class_weight`: each training image's loss multiplied by its class's weight, as
//! Keras' `fit(class_weight=…)` does, against an imbalanced training split (the Kaggle set has
//! 1,341 NORMAL to 3,875 PNEUMONIA films). `"balanced"` computes the weights as scikit-learn's
//! `compute_class_weight("balanced")` does; an object gives them by class name. The server checks
//! the names against the dataset's classes at submission; the worker resolves the weights from the
//! training split it loaded (`resolve`) and fails the job with the reason if they no longer fit.

use super::spec::SpecError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest accepted weight: a class weighted more than this against another drowns it.
pub const MAX_CLASS_WEIGHT: f64 = 1000.0;

/// The keyword for weights computed from the class counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeightRule {
    /// `n_samples / (n_classes × count)`, as scikit-learn computes `"balanced"`.
    Balanced,
}

/// `"balanced"`, or one weight per class by name: `{"NORMAL": 1.9, "PNEUMONIA": 0.66}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ClassWeight {
    /// Computed from the training split's class counts.
    Rule(ClassWeightRule),
    /// Given per class name; every class of the dataset needs one (as in Keras).
    PerClass(BTreeMap<String, f64>),
}

impl ClassWeight {
    /// Checks what can be checked without the dataset: weights finite, at least 0 and at most
    /// [`MAX_CLASS_WEIGHT`], not all 0.
    pub fn validate(&self) -> Result<(), SpecError> {
        let ClassWeight::PerClass(weights) = self else { return Ok(()) };
        if weights.is_empty() {
            return Err(SpecError::new(
                "class_weight",
                "must not be empty: give a weight per class, e.g. {\"NORMAL\": 1.9, \"PNEUMONIA\": 0.66}, or \"balanced\"",
            ));
        }
        for (class, &weight) in weights {
            if !(weight.is_finite() && (0.0..=MAX_CLASS_WEIGHT).contains(&weight)) {
                return Err(SpecError::new(
                    format!("class_weight.{class}"),
                    format!("{weight} is out of range: give a weight from 0 to {MAX_CLASS_WEIGHT}, e.g. 1.9"),
                ));
            }
        }
        if weights.values().all(|&weight| weight == 0.0) {
            return Err(SpecError::new("class_weight", "every weight is 0: nothing would be learned"));
        }
        Ok(())
    }

    /// Checks the weights' class names against the dataset's `classes`: each name must be a
    /// class, and each class needs a weight (Keras refuses a `class_weight` that misses one).
    pub fn check_classes(&self, dataset: &str, classes: &[String]) -> Result<(), SpecError> {
        let ClassWeight::PerClass(weights) = self else { return Ok(()) };
        if let Some(unknown) = weights.keys().find(|name| !classes.contains(name)) {
            return Err(SpecError::new(
                format!("class_weight.{unknown}"),
                format!("dataset `{dataset}` has no class `{unknown}`; its classes are {}", classes.join(", ")),
            ));
        }
        if let Some(missing) = classes.iter().find(|class| !weights.contains_key(*class)) {
            return Err(SpecError::new(
                "class_weight",
                format!(
                    "no weight for class `{missing}` of dataset `{dataset}`: give every class ({}) a weight, or use \"balanced\"",
                    classes.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The weight of each class, in the order of `classes` (label order), given how many
    /// training images each has (`counts`, same order). `"balanced"` gives
    /// `n_samples / (n_classes × count)`; a class with no image cannot be balanced.
    pub fn resolve(&self, dataset: &str, classes: &[String], counts: &[u64]) -> Result<Vec<f64>, SpecError> {
        match self {
            ClassWeight::Rule(ClassWeightRule::Balanced) => {
                let samples: u64 = counts.iter().sum();
                if let Some(empty) = counts.iter().position(|&count| count == 0) {
                    return Err(SpecError::new(
                        "class_weight",
                        format!(
                            "\"balanced\" needs training images of every class, and class `{}` has none",
                            classes[empty]
                        ),
                    ));
                }
                Ok(counts.iter().map(|&count| samples as f64 / (classes.len() as f64 * count as f64)).collect())
            }
            ClassWeight::PerClass(weights) => {
                self.check_classes(dataset, classes)?;
                Ok(classes.iter().map(|class| weights[class]).collect())
            }
        }
    }

    /// The weights in words for the report and the log: `balanced` or `NORMAL 1.9, PNEUMONIA 0.66`.
    pub fn describe(&self) -> String {
        match self {
            ClassWeight::Rule(ClassWeightRule::Balanced) => String::from("balanced (n / (classes × count))"),
            ClassWeight::PerClass(weights) => {
                weights.iter().map(|(class, weight)| format!("{class} {weight}")).collect::<Vec<_>>().join(", ")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec![String::from("NORMAL"), String::from("PNEUMONIA")]
    }

    #[test]
    fn balanced_weights_are_scikit_learns() {
        let balanced: ClassWeight = serde_json::from_value(serde_json::json!("balanced")).unwrap();
        // The Kaggle training split: compute_class_weight("balanced", classes=[0, 1], y=…) gives
        // 5216 / (2 × 1341) and 5216 / (2 × 3875).
        let weights = balanced.resolve("chest_xray", &classes(), &[1341, 3875]).unwrap();
        assert!((weights[0] - 1.944_817_300_521_998).abs() < 1e-12, "{weights:?}");
        assert!((weights[1] - 0.673_032_258_064_516).abs() < 1e-12, "{weights:?}");
        let empty = balanced.resolve("chest_xray", &classes(), &[0, 10]).unwrap_err();
        assert!(empty.message.contains("NORMAL"), "{empty:?}");
        assert_eq!(serde_json::to_value(&balanced).unwrap(), "balanced");
    }

    #[test]
    fn given_weights_follow_the_label_order_and_name_a_bad_class() {
        let given: ClassWeight = serde_json::from_value(serde_json::json!({"PNEUMONIA": 0.66, "NORMAL": 1.9})).unwrap();
        given.validate().unwrap();
        assert_eq!(given.resolve("d", &classes(), &[1, 1]).unwrap(), [1.9, 0.66]);
        let unknown: ClassWeight = serde_json::from_value(serde_json::json!({"NORMAL": 1.9, "COVID": 2})).unwrap();
        let err = unknown.check_classes("d", &classes()).unwrap_err();
        assert_eq!(err.field, "class_weight.COVID");
        assert!(err.message.contains("NORMAL, PNEUMONIA"), "{}", err.message);
        let missing: ClassWeight = serde_json::from_value(serde_json::json!({"NORMAL": 1.9})).unwrap();
        let err = missing.check_classes("d", &classes()).unwrap_err();
        assert_eq!(err.field, "class_weight");
        assert!(err.message.contains("PNEUMONIA"), "{}", err.message);
        let negative: ClassWeight = serde_json::from_value(serde_json::json!({"NORMAL": -1})).unwrap();
        assert_eq!(negative.validate().unwrap_err().field, "class_weight.NORMAL");
        let zeros: ClassWeight = serde_json::from_value(serde_json::json!({"NORMAL": 0, "PNEUMONIA": 0})).unwrap();
        assert_eq!(zeros.validate().unwrap_err().field, "class_weight");
    }
}
