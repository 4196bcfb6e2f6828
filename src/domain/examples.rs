//! The assignment's experiments as ready specs (`deploy/examples/*.json`), built into the binary so
//! `GET /api/examples` and `trainq submit q1` work on any install, wherever the files are.

/// One shipped example: the file's stem, what question of the assignment it answers, its JSON.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// The file stem, e.g. `q3-512`; what `trainq submit` takes.
    pub name: &'static str,
    /// One line: the assignment question it is and what it changes.
    pub description: &'static str,
    /// The spec as shipped (JSON text).
    pub spec: &'static str,
}

/// An example named by its file under `deploy/examples/`, so the name is the file stem.
macro_rules! example {
    ($name:literal, $description:literal) => {
        Example {
            name: $name,
            description: $description,
            spec: include_str!(concat!("../../deploy/examples/", $name, ".json")),
        }
    };
}

/// Every shipped example, in the assignment's order.
pub const EXAMPLES: [Example; 10] = [
    example!("q1-demo", "Q1 on the generated demo dataset (32 px, random weights, 8 + 4 epochs): tries the queue in minutes"),
    example!("q1", "Q1: VGG16 (ImageNet) at 128×128, GAP → Dense 512 → BN → ReLU → Dense 128 → Dense 1; 100 epochs head, 50 fine-tuning block5"),
    example!("q2", "Q2: Q1's model with Dropout(0.25) after GAP, the BN block and Dense 128; 100 + 100 epochs"),
    example!("q3-256", "Q3: Q2 with images resized to 256×256 (batch 20)"),
    example!("q3-512", "Q3: Q2 with images resized to 512×512 (batch 10, for memory)"),
    example!("qe1-gap", "QE1: Q2 on variable-size images (no resize, longer side ≤ 256) with global average pooling"),
    example!("qe1-flatten", "QE1: Flatten instead of GAP on variable-size images; refused on purpose, the answer to \"does it work?\""),
    example!("qe3-inception-128", "QE3: Q2's head on InceptionV3 (ImageNet) at 128×128, fine-tuning Mixed_7b and Mixed_7c"),
    example!("qe3-inception-256", "QE3: Q2's head on InceptionV3 (ImageNet) at 256×256, fine-tuning Mixed_7b and Mixed_7c"),
    example!("chexnet-densenet121", "Beyond: CheXNet's recipe, DenseNet121 (ImageNet) at 224×224 fine-tuned whole with Adam (lr 0.001, batch 16), GAP → Dense 1 (sigmoid)"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobSpec;

    #[test]
    fn every_example_is_embedded_and_a_valid_spec() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut embedded: Vec<String> = EXAMPLES.iter().map(|example| example.name.to_string()).collect();
        files.sort();
        embedded.sort();
        assert_eq!(embedded, files, "each file in deploy/examples is listed in EXAMPLES");
        for example in EXAMPLES {
            let spec = JobSpec::parse(example.spec.as_bytes());
            // QE1's question "replace gap by flatten: does it work?" has the answer no.
            if example.name == "qe1-flatten" {
                let err = spec.expect_err("flatten with variable size is refused");
                assert_eq!(err.field, "head[0]");
                assert!(err.message.contains("flattened length"), "{err:?}");
            } else {
                assert_eq!(spec.map(|spec| spec.name).map_err(|err| err.to_string()), Ok(example.name.to_string()));
            }
        }
    }
}
