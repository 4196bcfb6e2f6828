//! Sweeps and edits of a spec document, before it is a [`JobSpec`]: a spec's `"sweep"` (JSON
//! pointers to lists of values) expanded into one spec per combination, a JSON pointer set in a
//! document, the client's dotted paths turned into pointers, and a JSON merge patch (RFC 7396)
//! applied to a stored spec for a resubmit. Pure: bytes and values in, specs or errors out.
//!
//! The assignment is a grid (image sizes × backbones × learning rates, "run several times and
//! average"); a sweep submits the grid at once and every combination is validated before any job
//! is queued, so a grid is never half-submitted.

use super::spec::{JobSpec, SpecError, MAX_REPEATS};
use serde_json::{Map, Value};

/// Most combinations one sweep may have: a grid bigger than this is rarely meant, and its jobs
/// would hold the queue for days.
pub const MAX_COMBINATIONS: usize = 64;

/// Most jobs one submission may queue (combinations × repeats), whatever the per-user cap says
/// (admins have none).
pub const MAX_JOBS_PER_SUBMISSION: u32 = 128;

/// One combination of a sweep, validated: the values it set and the spec it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Each swept pointer and its value here; `None` for a spec without a sweep.
    pub params: Option<Map<String, Value>>,
    /// The spec with those values in place (its own `repeats` still to be expanded).
    pub spec: JobSpec,
}

impl Variant {
    /// `err` about this combination: its message names the combination, so a student knows which
    /// of the grid's specs to fix. Errors of a spec without a sweep are left as they are.
    pub fn in_combination(&self, err: SpecError) -> SpecError {
        match &self.params {
            Some(params) => in_combination(params, err),
            None => err,
        }
    }
}

fn in_combination(params: &Map<String, Value>, err: SpecError) -> SpecError {
    SpecError::new(err.field, format!("in sweep combination {}: {}", describe(params), err.message))
}

/// A combination as a student reads it: `{"/image_size": 256, "/optimizer/lr": 0.0001}`.
pub fn describe(params: &Map<String, Value>) -> String {
    let pairs: Vec<String> =
        params.iter().map(|(pointer, value)| format!("{}: {value}", Value::from(pointer.as_str()))).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Parses a submission into the specs it asks for. Without `"sweep"`, exactly what
/// [`JobSpec::parse`] gives, as one variant. With `"sweep": {"/pointer": [values…], …}`, one
/// variant per combination: pointers in sorted order, values in the order given, the last pointer
/// varying fastest; each combination is parsed and validated, and the first that fails is the
/// error (its field, and a message naming the combination). A malformed sweep is an error about
/// `sweep` or `sweep./its/pointer`.
pub fn expand(body: &[u8]) -> Result<Vec<Variant>, SpecError> {
    let mut document = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) if fields.contains_key("sweep") => Value::Object(fields),
        // Not JSON, not an object, or no sweep: the spec's own parse says everything.
        _ => return Ok(vec![Variant { params: None, spec: JobSpec::parse(body)? }]),
    };
    let sweep = document.as_object_mut().and_then(|fields| fields.remove("sweep")).unwrap_or_default();
    let axes = axes(sweep)?;
    let count = axes.iter().map(|(_, values)| values.len()).product::<usize>();
    if count > MAX_COMBINATIONS {
        let sizes: Vec<String> = axes.iter().map(|(_, values)| values.len().to_string()).collect();
        return Err(SpecError::new(
            "sweep",
            format!("{count} combinations ({}); a sweep may have at most {MAX_COMBINATIONS}: sweep fewer values, or submit the grid in parts", sizes.join(" × ")),
        ));
    }
    let mut variants = Vec::with_capacity(count);
    for index in 0..count {
        let params = combination(&axes, index);
        let mut spec = document.clone();
        for (pointer, value) in &params {
            set_pointer(&mut spec, pointer, value.clone())
                .map_err(|message| SpecError::new(format!("sweep.{pointer}"), message))?;
        }
        let bytes = serde_json::to_vec(&spec).expect("a JSON value serializes");
        let spec = JobSpec::parse(&bytes).map_err(|err| in_combination(&params, err))?;
        variants.push(Variant { params: Some(params), spec });
    }
    let jobs: u32 = variants.iter().map(|variant| variant.spec.repeats).sum();
    if jobs > MAX_JOBS_PER_SUBMISSION {
        return Err(SpecError::new(
            "repeats",
            format!(
                "{count} combinations × repeats make {jobs} jobs; one submission may queue at most {MAX_JOBS_PER_SUBMISSION} (and repeats at most {MAX_REPEATS}): lower repeats or sweep fewer values"
            ),
        ));
    }
    Ok(variants)
}

/// The sweep's axes, sorted by pointer, each checked: a pointer (starting with `/`) to a non-empty
/// list of values.
fn axes(sweep: Value) -> Result<Vec<(String, Vec<Value>)>, SpecError> {
    const HOW: &str = r#"write "sweep": {"/optimizer/lr": [1e-4, 1e-5], "/image_size": [128, 256]}: JSON pointers to lists of values"#;
    let Value::Object(axes) = sweep else {
        return Err(SpecError::new("sweep", format!("must be an object; {HOW}")));
    };
    if axes.is_empty() {
        return Err(SpecError::new("sweep", format!("is empty; {HOW}, or leave `sweep` out")));
    }
    // serde_json's map (without `preserve_order`) iterates in sorted key order already.
    axes.into_iter()
        .map(|(pointer, values)| {
            let field = format!("sweep.{pointer}");
            if !pointer.starts_with('/') {
                let hint = match dotted_to_pointer(&pointer) {
                    Ok(converted) => format!("; did you mean `{converted}`?"),
                    Err(_) => String::new(),
                };
                return Err(SpecError::new(
                    field,
                    format!("`{pointer}` is not a JSON pointer: they start with `/`, e.g. `/optimizer/lr`{hint}"),
                ));
            }
            match values {
                Value::Array(values) if !values.is_empty() => Ok((pointer, values)),
                Value::Array(_) => Err(SpecError::new(field, "has no values; list at least one, e.g. [128, 256]")),
                other => Err(SpecError::new(field, format!("must be a list of values, e.g. [128, 256], not {other}"))),
            }
        })
        .collect()
}

/// The `index`-th combination: the last axis varies fastest.
fn combination(axes: &[(String, Vec<Value>)], mut index: usize) -> Map<String, Value> {
    let mut picked = vec![0; axes.len()];
    for (slot, (_, values)) in picked.iter_mut().zip(axes).rev() {
        *slot = index % values.len();
        index /= values.len();
    }
    axes.iter().zip(picked).map(|((pointer, values), at)| (pointer.clone(), values[at].clone())).collect()
}

/// Sets the value at an RFC 6901 JSON `pointer` in `document`. Every parent must exist; the last
/// segment may add a key to an object or replace an existing element of a list (a sweep changes
/// a spec, it does not grow its lists). `~1` and `~0` stand for `/` and `~`.
pub fn set_pointer(document: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("`{pointer}` is not a JSON pointer: they start with `/`, e.g. `/optimizer/lr`"));
    };
    let tokens = rest.split('/').map(unescape).collect::<Result<Vec<String>, String>>()?;
    let (last, parents) = tokens.split_last().expect("split yields at least one token");
    let mut at = document;
    let mut walked = String::new();
    for token in parents {
        let parent = walked.clone();
        walked = format!("{walked}/{}", escape(token));
        at = match at {
            Value::Object(fields) => fields.get_mut(token).ok_or_else(|| {
                format!("`{walked}` is not in the spec; a pointer can only set a field whose parents are there")
            })?,
            Value::Array(items) => {
                let len = items.len();
                index_in(token, len)
                    .and_then(|index| items.get_mut(index))
                    .ok_or_else(|| out_of_list(&walked, &parent, len))?
            }
            other => return Err(format!("`{}` is {}, so `{walked}` cannot be inside it", shown(&parent), kind(other))),
        };
    }
    let target = format!("{walked}/{}", escape(last));
    match at {
        Value::Object(fields) => {
            fields.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let len = items.len();
            let slot = index_in(last, len)
                .and_then(|index| items.get_mut(index))
                .ok_or_else(|| out_of_list(&target, &walked, len))?;
            *slot = value;
            Ok(())
        }
        other => Err(format!("`{}` is {}, so `{target}` cannot be inside it", shown(&walked), kind(other))),
    }
}

fn shown(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the spec"
    } else {
        pointer
    }
}

fn out_of_list(pointer: &str, list: &str, len: usize) -> String {
    format!(
        "`{pointer}` is not an element of `{}`, a list of {len} (indexes 0 to {})",
        shown(list),
        len.saturating_sub(1)
    )
}

fn index_in(token: &str, len: usize) -> Option<usize> {
    // RFC 6901: no sign, no leading zeros.
    let plain =
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    token.parse().ok().filter(|&index| plain && index < len)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn unescape(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(format!("`{token}` has a `~` that is not `~0` (for ~) or `~1` (for /)")),
        }
    }
    Ok(out)
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The client's path syntax as a JSON pointer: `optimizer.lr` → `/optimizer/lr`,
/// `phases[1].epochs` and `phases.1.epochs` → `/phases/1/epochs`; a pointer (`/x/y`) passes
/// through. Students type the former on a command line (`--set`, `--sweep`); the API speaks the
/// latter.
pub fn dotted_to_pointer(path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        return Ok(path.to_string());
    }
    let bad = |why: &str| {
        format!(
            "`{path}` is not a field path ({why}); write e.g. `optimizer.lr`, `phases[1].epochs` or `/optimizer/lr`"
        )
    };
    let mut tokens = Vec::new();
    for part in path.split('.') {
        let (name, mut indexes) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty() {
            return Err(bad("an empty name"));
        }
        tokens.push(escape(name));
        while !indexes.is_empty() {
            let close = indexes.find(']').ok_or_else(|| bad("a `[` without `]`"))?;
            let index = &indexes[1..close];
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("a list index is a number in brackets"));
            }
            tokens.push(index.to_string());
            indexes = &indexes[close + 1..];
            if !indexes.is_empty() && !indexes.starts_with('[') {
                return Err(bad("text after `]`"));
            }
        }
    }
    Ok(tokens.iter().map(|token| format!("/{token}")).collect())
}

/// Applies a JSON merge patch (RFC 7396) to `target`: an object's keys are merged recursively, a
/// `null` removes a key, anything else (lists too) replaces what was there. A resubmit's body is
/// such a patch of the original spec, so "the same with a lower rate" is `{"optimizer": {"lr": 1e-5}}`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else { unreachable!("made an object above") };
    for (key, change) in changes {
        if change.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"name": "grid", "dataset": "d", "backbone": "vgg16", "image_size": 32, "batch_size": 4,
               "head": ["gap", {"dense": 1}],
               "phases": [{"epochs": 1, "train": "head"}, {"epochs": 2, "train": ["block5", "head"]}],
               "optimizer": {"name": "sgd", "lr": 0.1}})
    }

    fn with_sweep(sweep: Value) -> Vec<u8> {
        let mut spec = base();
        spec["sweep"] = sweep;
        serde_json::to_vec(&spec).unwrap()
    }

    #[test]
    fn a_two_by_two_sweep_gives_four_specs_with_the_last_pointer_fastest() {
        let variants = expand(&with_sweep(json!({"/optimizer/lr": [1e-4, 1e-5], "/image_size": [64, 128]}))).unwrap();
        let got: Vec<(u32, f64)> = variants.iter().map(|v| (v.spec.image_size.unwrap(), v.spec.optimizer.lr)).collect();
        // Sorted pointers: /image_size first, then /optimizer/lr (fastest).
        assert_eq!(got, vec![(64, 1e-4), (64, 1e-5), (128, 1e-4), (128, 1e-5)]);
        assert_eq!(
            variants[1].params.as_ref().unwrap(),
            json!({"/image_size": 64, "/optimizer/lr": 1e-5}).as_object().unwrap()
        );
        // Everything else is the base spec.
        let mut expected = base();
        expected["image_size"] = json!(128);
        expected["optimizer"]["lr"] = json!(1e-4);
        assert_eq!(variants[2].spec, JobSpec::parse(expected.to_string().as_bytes()).unwrap());
    }

    #[test]
    fn no_sweep_is_the_plain_parse() {
        let body = serde_json::to_vec(&base()).unwrap();
        assert_eq!(expand(&body).unwrap(), vec![Variant { params: None, spec: JobSpec::parse(&body).unwrap() }]);
        assert_eq!(expand(b"{not json").unwrap_err(), JobSpec::parse(b"{not json").unwrap_err());
        assert_eq!(expand(b"[1]").unwrap_err(), JobSpec::parse(b"[1]").unwrap_err());
    }

    #[test]
    fn pointers_reach_into_lists_and_nested_objects() {
        let variants = expand(&with_sweep(
            json!({"/phases/1/epochs": [3, 5], "/phases/1/optimizer": [{"name": "adam", "lr": 0.01}]}),
        ))
        .unwrap();
        assert_eq!(variants.len(), 2);
        assert_eq!(variants[1].spec.phases[1].epochs, 5);
        assert_eq!(variants[1].spec.phases[1].optimizer.as_ref().unwrap().lr, 0.01);
        let mut doc = json!({"a/b": {"m~n": [1, 2]}});
        set_pointer(&mut doc, "/a~1b/m~0n/1", json!(7)).unwrap();
        assert_eq!(doc, json!({"a/b": {"m~n": [1, 7]}}));
    }

    #[test]
    fn bad_pointers_and_sweeps_name_the_sweep() {
        let mut doc = base();
        let missing = set_pointer(&mut doc, "/phases/1/optimizer/lr", json!(1)).unwrap_err();
        assert!(missing.contains("`/phases/1/optimizer` is not in the spec"), "{missing}");
        let past = set_pointer(&mut doc, "/phases/2/epochs", json!(1)).unwrap_err();
        assert!(past.contains("a list of 2"), "{past}");
        assert!(set_pointer(&mut doc, "/phases/-", json!(1)).is_err(), "lists are not grown");
        assert!(set_pointer(&mut doc, "/batch_size/x", json!(1)).unwrap_err().contains("is a number"));
        assert!(set_pointer(&mut doc, "/a~2", json!(1)).is_err());
        let cases = [
            (json!([1, 2]), "sweep", "must be an object"),
            (json!({}), "sweep", "is empty"),
            (json!({"optimizer.lr": [1]}), "sweep.optimizer.lr", "did you mean `/optimizer/lr`"),
            (json!({"/image_size": []}), "sweep./image_size", "has no values"),
            (json!({"/image_size": 64}), "sweep./image_size", "must be a list"),
            (
                json!({"/phases/0/optimizer/lr": [1e-3]}),
                "sweep./phases/0/optimizer/lr",
                "`/phases/0/optimizer` is not in the spec",
            ),
        ];
        for (sweep, field, message) in cases {
            let err = expand(&with_sweep(sweep.clone())).unwrap_err();
            assert_eq!(err.field, field, "{sweep}: {err:?}");
            assert!(err.message.contains(message), "{sweep}: {err:?}");
        }
    }

    #[test]
    fn a_failing_combination_names_itself_and_the_field() {
        let err = expand(&with_sweep(json!({"/optimizer/lr": [1e-4], "/image_size": [64, 16]}))).unwrap_err();
        assert_eq!(err.field, "image_size");
        assert!(
            err.message.starts_with(r#"in sweep combination {"/image_size": 16, "/optimizer/lr": 0.0001}: "#),
            "{err:?}"
        );
        let err = expand(&with_sweep(json!({"/bogus": [1]}))).unwrap_err();
        assert_eq!(err.field, "bogus", "an unknown field is the spec's own error: {err:?}");
    }

    #[test]
    fn sweeps_are_capped() {
        let values: Vec<u32> = (1..=9).collect();
        let err = expand(&with_sweep(json!({"/seed": values, "/batch_size": values}))).unwrap_err();
        assert_eq!(err.field, "sweep");
        assert!(err.message.contains("81 combinations (9 × 9)") && err.message.contains("at most 64"), "{err:?}");
        let mut spec = base();
        spec["repeats"] = json!(20);
        spec["sweep"] = json!({"/seed": (0..7).collect::<Vec<u32>>()});
        let err = expand(&serde_json::to_vec(&spec).unwrap()).unwrap_err();
        assert_eq!(err.field, "repeats");
        assert!(err.message.contains("140 jobs") && err.message.contains("at most 128"), "{err:?}");
    }

    #[test]
    fn dotted_paths_become_pointers() {
        assert_eq!(dotted_to_pointer("optimizer.lr").unwrap(), "/optimizer/lr");
        assert_eq!(dotted_to_pointer("phases[1].epochs").unwrap(), "/phases/1/epochs");
        assert_eq!(dotted_to_pointer("phases.1.epochs").unwrap(), "/phases/1/epochs");
        assert_eq!(dotted_to_pointer("head[0][1]").unwrap(), "/head/0/1");
        assert_eq!(dotted_to_pointer("/optimizer/lr").unwrap(), "/optimizer/lr");
        for bad in ["", "a..b", "phases[x]", "phases[1", "phases[1]x", ".lr"] {
            assert!(dotted_to_pointer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [3]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3]}));
        merge_patch(&mut doc, &json!({}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3]}), "an empty patch changes nothing");
    }
}
