//! `trainq submit` and `trainq redo`: a spec from a file or one of the server's examples, edited
//! with `--set PATH=VALUE` and `--sweep PATH=V1,V2`, checked here with the server's own parser
//! (so a bad path or value is refused before any request), then queued.

use super::{Api, Profile};
use crate::domain::sweep;
use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};
use std::path::Path;

/// The edits `submit` and `redo` make to a spec before sending it.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// `PATH=VALUE`: set one field (`optimizer.lr=1e-4`, `phases[1].epochs=5`, `/image_size=256`).
    pub sets: Vec<String>,
    /// `PATH=V1,V2,…`: run every value (with every value of the other sweeps).
    pub sweeps: Vec<String>,
    /// Run each combination this many times (seeds `seed`, `seed + 1`, …).
    pub repeats: Option<u32>,
    /// The jobs' name.
    pub name: Option<String>,
    /// Watch the new jobs until they end (exit code as `trainq wait`).
    pub follow: bool,
    /// Print the server's answer as JSON.
    pub json: bool,
    /// `--after`: jobs (ids or unique prefixes) that must succeed first.
    pub after: Vec<String>,
    /// `--init-from ID[:CHECKPOINT]`: the job whose weights the new jobs start from.
    pub init_from: Option<String>,
}

/// Writes `--after` and `--init-from` into the spec, each id resolved from its prefix.
async fn chain(api: &Api, spec: &mut Value, options: &SubmitOptions) -> anyhow::Result<()> {
    if !options.after.is_empty() {
        let mut ids = Vec::with_capacity(options.after.len());
        for given in options.after.iter().map(|given| given.trim()).filter(|given| !given.is_empty()) {
            ids.push(Value::String(api.resolve(given).await.with_context(|| format!("--after {given}"))?));
        }
        spec["after"] = Value::Array(ids);
    }
    if let Some(raw) = &options.init_from {
        let (given, checkpoint) = raw.split_once(':').unwrap_or((raw, "final"));
        let id = api.resolve(given.trim()).await.with_context(|| format!("--init-from {raw}"))?;
        spec["init_from"] = serde_json::json!({"job": id, "checkpoint": checkpoint.trim()});
    }
    Ok(())
}

/// A value as typed: JSON when it reads as JSON (`1e-4`, `true`, `null`, `[1,2]`, `"x"`), else
/// the text itself as a string (`adam`).
fn typed_value(raw: &str) -> Value {
    serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// `PATH=VALUE` as a JSON pointer and the value's text.
fn assignment<'a>(flag: &str, raw: &'a str) -> anyhow::Result<(String, &'a str)> {
    let (path, value) =
        raw.split_once('=').ok_or_else(|| anyhow!("{flag} {raw}: write PATH=VALUE, e.g. {flag} optimizer.lr=1e-4"))?;
    let pointer = sweep::dotted_to_pointer(path.trim()).map_err(|err| anyhow!("{flag} {raw}: {err}"))?;
    Ok((pointer, value))
}

impl SubmitOptions {
    /// Applies the edits to `spec` and checks every job it becomes, as the server will.
    fn apply(&self, spec: &mut Value) -> anyhow::Result<()> {
        if !spec.is_object() {
            bail!("a spec is a JSON object");
        }
        for raw in &self.sets {
            let (pointer, value) = assignment("--set", raw)?;
            sweep::set_pointer(spec, &pointer, typed_value(value)).map_err(|err| anyhow!("--set {raw}: {err}"))?;
        }
        for raw in &self.sweeps {
            let (pointer, values) = assignment("--sweep", raw)?;
            let values: Vec<Value> = values.split(',').map(typed_value).collect();
            let sweeps = spec
                .as_object_mut()
                .expect("checked above")
                .entry("sweep")
                .or_insert_with(|| Value::Object(Map::new()));
            sweeps
                .as_object_mut()
                .ok_or_else(|| anyhow!("the spec's `sweep` is not an object"))?
                .insert(pointer, Value::Array(values));
        }
        if let Some(repeats) = self.repeats {
            spec["repeats"] = repeats.into();
        }
        if let Some(name) = &self.name {
            spec["name"] = name.clone().into();
        }
        check(spec)
    }
}

/// Refuses here what the server would refuse for the spec itself (fields, types, ranges, every
/// sweep combination); the server still checks the dataset, weights and limits.
fn check(spec: &Value) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(spec)?;
    sweep::expand(&bytes)
        .map(drop)
        .map_err(|err| anyhow!("the spec is refused (nothing was sent): `{}`: {}", err.field, err.message))
}

/// The spec `source` names: a JSON file, or else one of the server's examples by name.
async fn load(api: &Api, source: &str) -> anyhow::Result<Value> {
    let path = Path::new(source);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {source}"))?;
        return serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"));
    }
    if source.ends_with(".json") || source.contains('/') {
        bail!("no file {source}");
    }
    let examples = api.get("/api/examples").await?;
    let examples = examples.as_array().cloned().unwrap_or_default();
    match examples.iter().find(|example| example["name"] == source) {
        Some(example) => Ok(example["spec"].clone()),
        None => {
            let names: Vec<&str> = examples.iter().filter_map(|example| example["name"].as_str()).collect();
            bail!("`{source}` is neither a file nor an example; the examples are: {}", names.join(", "))
        }
    }
}

/// Prints what was queued: ids on stdout (one per line, for scripts), words on stderr.
fn report_queued(answer: &Value, json: bool) -> anyhow::Result<Vec<String>> {
    // The server always answers `{"group_id", "jobs": [...]}`, one job or several.
    let jobs: Vec<Value> = answer["jobs"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(!jobs.is_empty(), "the server's answer lists no jobs: {answer}");
    let ids: Vec<String> = jobs.iter().filter_map(|job| job["id"].as_str().map(str::to_string)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(ids);
    }
    match answer["group_id"].as_str() {
        Some(group) => {
            eprintln!("queued {} jobs as group {group} (`trainq compare {group}` once they end)", jobs.len())
        }
        None => eprintln!(
            "queued {}{}",
            jobs[0]["name"].as_str().unwrap_or_default(),
            jobs[0]["position"].as_u64().map(|p| format!(", #{p} in line")).unwrap_or_default()
        ),
    }
    for id in &ids {
        println!("{id}");
    }
    Ok(ids)
}

/// `trainq submit SPEC|EXAMPLE …`: returns the exit code (0, or `wait`'s with `--follow`).
pub async fn submit(source: &str, options: &SubmitOptions) -> anyhow::Result<i32> {
    let api = Api::new(Profile::load()?)?;
    // The edits' own syntax first: a typo costs no request.
    for raw in &options.sets {
        assignment("--set", raw)?;
    }
    for raw in &options.sweeps {
        assignment("--sweep", raw)?;
    }
    let mut spec = load(&api, source).await?;
    chain(&api, &mut spec, options).await?;
    options.apply(&mut spec)?;
    let answer = api.post("/api/jobs", &spec).await?;
    let ids = report_queued(&answer, options.json)?;
    if options.follow {
        return super::watch::watch_ids(&api, &ids).await;
    }
    Ok(0)
}

/// The RFC 7396 merge patch that turns `from` into `to`: changed keys, `null` for removed ones,
/// objects patched key by key, anything else (arrays included) replaced whole.
pub fn merge_diff(from: &Value, to: &Value) -> Value {
    let (Value::Object(from), Value::Object(to)) = (from, to) else { return to.clone() };
    let mut patch = Map::new();
    for (key, new) in to {
        match from.get(key) {
            Some(old) if old == new => {}
            Some(old) if old.is_object() && new.is_object() => {
                patch.insert(key.clone(), merge_diff(old, new));
            }
            _ => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    for key in from.keys().filter(|key| !to.contains_key(*key)) {
        patch.insert(key.clone(), Value::Null);
    }
    Value::Object(patch)
}

/// `trainq redo ID [--resume] [--set …]`: the job again, with these changes, as a child of it
/// (`POST /api/jobs/{id}/resubmit` with the changes as a merge patch); with `--resume`, from
/// where its last checkpoint stands (`?resume=true`).
pub async fn redo(given: &str, resume: bool, options: &SubmitOptions) -> anyhow::Result<i32> {
    let api = Api::new(Profile::load()?)?;
    let id = api.resolve(given).await?;
    let job = api.get(&format!("/api/jobs/{id}")).await?;
    let original = job["spec"].clone();
    let mut spec = original.clone();
    options.apply(&mut spec)?;
    let query = if resume { "?resume=true" } else { "" };
    let answer = api.post(&format!("/api/jobs/{id}/resubmit{query}"), &merge_diff(&original, &spec)).await?;
    let ids = report_queued(&answer, options.json)?;
    if options.follow {
        return super::watch::watch_ids(&api, &ids).await;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_read_as_json() {
        assert_eq!(typed_value("1e-4"), json!(1e-4));
        assert_eq!(typed_value("null"), Value::Null);
        assert_eq!(typed_value("adam"), json!("adam"));
        assert_eq!(typed_value("[1, 2]"), json!([1, 2]));
    }

    #[test]
    fn a_merge_diff_patches_what_changed_and_nulls_what_went() {
        let from = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "f": "x"});
        let to = json!({"a": 1, "b": {"c": 2, "d": 4}, "e": [1, 3]});
        assert_eq!(merge_diff(&from, &to), json!({"b": {"d": 4}, "e": [1, 3], "f": null}));
        assert_eq!(merge_diff(&from, &from), json!({}));
        // The server's merge turns the original into the edited spec with it.
        let mut patched = from.clone();
        sweep::merge_patch(&mut patched, &merge_diff(&from, &to));
        assert_eq!(patched, to);
    }
}
