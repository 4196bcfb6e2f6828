//! Chained jobs, pure: a job that waits for others (`after`, `init_from`), the cycles such waits
//! could form, whether one job's saved weights fit another's network, and the sentences a waiting
//! or failed-by-its-dependency job shows.

use super::spec::{Checkpoint, HeadLayer, JobSpec};
use super::{JobId, JobProgress, JobState, SpecError};
use std::collections::{HashMap, HashSet};

/// The short form of an id in sentences: its first 8 characters and an ellipsis (`5b0c1d2e…`),
/// as the client's tables show ids.
pub fn short_id(id: JobId) -> String {
    format!("{}…", &id.to_string()[..8])
}

/// The cycle that `job` waiting for `new_deps` would close, if any, as the jobs along it from
/// `job` back to `job` (`[a, b, a]`). `deps_of` gives the jobs each job waits for now (only
/// waiting jobs matter: one that runs or ended waits for nothing). Breadth-first, so the cycle
/// named is a shortest one.
pub fn find_cycle(job: JobId, new_deps: &[JobId], deps_of: &HashMap<JobId, Vec<JobId>>) -> Option<Vec<JobId>> {
    // Each job reached, and the job it was reached from (`job` itself for the new edges).
    let mut reached_from: HashMap<JobId, JobId> = HashMap::new();
    let mut frontier: Vec<JobId> = Vec::new();
    for &dep in new_deps {
        if reached_from.insert(dep, job).is_none() {
            frontier.push(dep);
        }
    }
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for current in frontier {
            if current == job {
                let mut path = vec![job];
                let mut at = reached_from[&job];
                while at != job {
                    path.push(at);
                    at = reached_from[&at];
                }
                path.push(job);
                path.reverse();
                return Some(path);
            }
            for &dep in deps_of.get(&current).map(Vec::as_slice).unwrap_or_default() {
                if let std::collections::hash_map::Entry::Vacant(entry) = reached_from.entry(dep) {
                    entry.insert(current);
                    next.push(dep);
                }
            }
        }
        frontier = next;
    }
    None
}

/// A cycle in words: `5b0c1d2e… → 9f26abc0… → 5b0c1d2e…`.
pub fn describe_cycle(cycle: &[JobId]) -> String {
    cycle.iter().map(|id| short_id(*id)).collect::<Vec<_>>().join(" → ")
}

/// The jobs that can be reached from `start` through `deps_of` (`start` excluded): what a cycle
/// check must know the dependencies of.
pub fn reachable(start: &[JobId], deps_of: &HashMap<JobId, Vec<JobId>>) -> HashSet<JobId> {
    let mut seen: HashSet<JobId> = start.iter().copied().collect();
    let mut frontier: Vec<JobId> = start.to_vec();
    while let Some(current) = frontier.pop() {
        for &dep in deps_of.get(&current).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(dep) {
                frontier.push(dep);
            }
        }
    }
    seen
}

/// Whether `checkpoint` is one the job with `source` spec writes: `final`, or `phaseN` for a phase
/// before its last (the last phase's weights are `final`). Else a [`SpecError`] on
/// `init_from.checkpoint` naming the ones it writes.
pub fn check_checkpoint(source: &JobSpec, checkpoint: Checkpoint) -> Result<(), SpecError> {
    let written = written_checkpoints(source);
    if written.contains(&checkpoint) {
        return Ok(());
    }
    Err(SpecError::new(
        "init_from.checkpoint",
        format!("that job saves no `{checkpoint}` weights; it saves {}", list(&written)),
    ))
}

/// The checkpoints a job of this spec saves: `phase1` … for every phase but the last, then `final`.
pub fn written_checkpoints(spec: &JobSpec) -> Vec<Checkpoint> {
    let phases = match spec.checkpoints {
        // Only `final.safetensors`: no phase's weights to start from.
        crate::domain::spec::Checkpoints::Final => 1,
        crate::domain::spec::Checkpoints::Phases | crate::domain::spec::Checkpoints::All => spec.phases.len() as u32,
    };
    (1..phases).map(Checkpoint::Phase).chain([Checkpoint::Final]).collect()
}

/// Checkpoints as `` `phase1`, `final` ``.
pub fn list(checkpoints: &[Checkpoint]) -> String {
    checkpoints.iter().map(|checkpoint| format!("`{checkpoint}`")).collect::<Vec<_>>().join(", ")
}

/// Whether the weights a job of `source` saved load into a network of `target`, tensor by tensor:
/// the same backbone, the same head layers at the same places with the same shapes (dropout rates
/// and batch norm's momentum may differ: they are no weights), and with `flatten` the same image
/// size (the first dense layer's input depends on it). Else a [`SpecError`] naming the field.
pub fn check_compatible(source: &JobSpec, target: &JobSpec) -> Result<(), SpecError> {
    if source.backbone != target.backbone {
        return Err(SpecError::new(
            "backbone",
            format!(
                "the job in init_from trained a {}, so its weights only fit \"backbone\": \"{}\"",
                source.backbone.name(),
                source.backbone.name()
            ),
        ));
    }
    let layout = |spec: &JobSpec| spec.head.iter().map(|layer| head_shape(*layer)).collect::<Vec<_>>();
    if layout(source) != layout(target) {
        let shown = serde_json::to_string(&source.head).unwrap_or_default();
        return Err(SpecError::new(
            "head",
            format!("the job in init_from has the head {shown}; use the same layers (dropout rates and batch norm settings may differ) so its weights fit"),
        ));
    }
    if source.head.first() == Some(&HeadLayer::Flatten) && source.image_size != target.image_size {
        return Err(SpecError::new(
            "image_size",
            format!(
                "with \"flatten\" the first dense layer's size depends on the image size; the job in init_from used {}",
                source.image_size.map_or(String::from("null"), |size| size.to_string())
            ),
        ));
    }
    Ok(())
}

/// What of a head layer decides its weights' names and shapes.
#[derive(Debug, PartialEq, Eq)]
enum HeadShape {
    Gap,
    Flatten,
    Batchnorm,
    Relu,
    Dense(u32),
    Dropout,
}

fn head_shape(layer: HeadLayer) -> HeadShape {
    match layer {
        HeadLayer::Gap => HeadShape::Gap,
        HeadLayer::Flatten => HeadShape::Flatten,
        HeadLayer::Batchnorm(_) => HeadShape::Batchnorm,
        HeadLayer::Relu => HeadShape::Relu,
        HeadLayer::Dense(units) => HeadShape::Dense(units),
        HeadLayer::Dropout(_) => HeadShape::Dropout,
    }
}

/// What a waiting job's pending reason says of the job it waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum DependencyStatus {
    /// It waits in the queue at this place (1 = next), when known.
    Queued(Option<usize>),
    /// It runs; its latest progress, when it reported any.
    Running(Option<JobProgress>),
    /// It ended (the scheduler's view may lag by a moment).
    Ended(JobState),
}

/// The pending reason of a job waiting for `dep`:
/// `waiting for job 5b0c1d2e… (running, epoch 40/150)`, `… (queued, #3 in line)`.
pub fn waiting_reason(dep: JobId, status: &DependencyStatus, planned_epochs: &[u32]) -> String {
    let detail = match status {
        DependencyStatus::Queued(Some(position)) => format!("queued, #{position} in line"),
        DependencyStatus::Queued(None) => String::from("queued"),
        DependencyStatus::Running(Some(progress)) if progress.epochs > 0 => {
            // Epochs over all phases, as the student counts them in the spec.
            let earlier: u32 = planned_epochs.iter().take(progress.phase.max(1) as usize - 1).sum();
            let total: u32 = planned_epochs.iter().sum();
            format!("running, epoch {}/{}", earlier + progress.epoch, total.max(earlier + progress.epochs))
        }
        DependencyStatus::Running(progress) => match progress.as_ref().map(|progress| progress.activity.as_str()) {
            Some(activity) if !activity.is_empty() => format!("running, {activity}"),
            _ => String::from("running"),
        },
        DependencyStatus::Ended(state) => state.to_string(),
    };
    format!("waiting for job {} ({detail})", short_id(dep))
}

/// Why a job fails when a job it waits for ended without succeeding:
/// `job 5b0c1d2e… it waits for failed: <its reason>`.
pub fn dependency_failed(dep: JobId, state: JobState, error: Option<&str>) -> String {
    let ended = match state {
        JobState::Timeout => "timed out",
        other => other.as_str(),
    };
    match error {
        Some(error) if !error.is_empty() => format!("job {} it waits for {ended}: {error}", short_id(dep)),
        _ if state == JobState::Timeout => format!("job {} it waits for timed out", short_id(dep)),
        _ => format!("job {} it waits for was {ended}", short_id(dep)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> Vec<JobId> {
        (0..count).map(|_| JobId::new()).collect()
    }

    #[test]
    fn a_dependency_back_to_the_job_is_a_cycle_named_from_the_job() {
        let [a, b, c] = ids(3)[..] else { unreachable!() };
        // b waits for a, c waits for b; now a would wait for c.
        let deps = HashMap::from([(b, vec![a]), (c, vec![b])]);
        assert_eq!(find_cycle(a, &[c], &deps), Some(vec![a, c, b, a]));
        assert_eq!(find_cycle(a, &[b], &deps), Some(vec![a, b, a]));
        assert_eq!(find_cycle(a, &[a], &deps), Some(vec![a, a]), "a job waiting for itself");
        let text = describe_cycle(&[a, b, a]);
        assert_eq!(text.matches(" → ").count(), 2, "{text}");
        assert!(text.starts_with(&a.to_string()[..8]), "{text}");
    }

    #[test]
    fn chains_and_diamonds_without_a_way_back_are_no_cycle() {
        let [a, b, c, d, e] = ids(5)[..] else { unreachable!() };
        // d waits for b and c, which both wait for a: a diamond.
        let deps = HashMap::from([(b, vec![a]), (c, vec![a]), (d, vec![b, c])]);
        assert_eq!(find_cycle(e, &[d, b], &deps), None);
        assert_eq!(find_cycle(d, &[c], &deps), None);
        assert_eq!(find_cycle(a, &[e], &deps), None, "e waits for nothing");
        assert_eq!(reachable(&[d], &deps), HashSet::from([a, b, c, d]));
    }

    fn spec(patch: serde_json::Value) -> JobSpec {
        let mut value = serde_json::json!({
            "dataset": "d", "backbone": "vgg16", "image_size": 64, "batch_size": 4,
            "head": ["gap", {"dense": 8}, {"dropout": 0.5}, {"dense": 1}],
            "phases": [{"epochs": 2, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
            "optimizer": {"name": "sgd", "lr": 0.1}
        });
        for (key, field) in patch.as_object().unwrap() {
            value[key] = field.clone();
        }
        JobSpec::parse(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn weights_fit_the_same_backbone_and_head_shapes_only() {
        let source = spec(serde_json::json!({}));
        check_compatible(
            &source,
            &spec(serde_json::json!({"image_size": 128, "optimizer": {"name": "adam", "lr": 1e-4}})),
        )
        .unwrap();
        check_compatible(
            &source,
            &spec(serde_json::json!({"head": ["gap", {"dense": 8}, {"dropout": 0.2}, {"dense": 1}]})),
        )
        .unwrap();
        let inception = spec(
            serde_json::json!({"backbone": "inception_v3", "image_size": 96, "phases": [{"epochs": 1, "train": "head"}]}),
        );
        assert_eq!(check_compatible(&source, &inception).unwrap_err().field, "backbone");
        let wider = spec(serde_json::json!({"head": ["gap", {"dense": 16}, {"dropout": 0.5}, {"dense": 1}]}));
        let err = check_compatible(&source, &wider).unwrap_err();
        assert_eq!(err.field, "head");
        assert!(err.message.contains(r#"{"dense":8}"#), "{err:?}");
        let no_dropout = spec(serde_json::json!({"head": ["gap", {"dense": 8}, {"dense": 1}]}));
        assert_eq!(check_compatible(&source, &no_dropout).unwrap_err().field, "head", "the dense layer's index moves");
        let flat = spec(serde_json::json!({"head": ["flatten", {"dense": 1}]}));
        let flat_bigger = spec(serde_json::json!({"head": ["flatten", {"dense": 1}], "image_size": 96}));
        assert_eq!(check_compatible(&flat, &flat_bigger).unwrap_err().field, "image_size");
    }

    #[test]
    fn a_job_saves_each_phase_but_the_last_and_final() {
        let two = spec(serde_json::json!({}));
        assert_eq!(written_checkpoints(&two), [Checkpoint::Phase(1), Checkpoint::Final]);
        let mut only_final = two.clone();
        only_final.checkpoints = crate::domain::spec::Checkpoints::Final;
        assert_eq!(
            written_checkpoints(&only_final),
            [Checkpoint::Final],
            "\"checkpoints\": \"final\" saves no phase's weights"
        );
        check_checkpoint(&two, Checkpoint::Phase(1)).unwrap();
        let err = check_checkpoint(&two, Checkpoint::Phase(2)).unwrap_err();
        assert_eq!(err.field, "init_from.checkpoint");
        assert!(err.message.contains("`phase1`, `final`"), "{err:?}");
    }

    #[test]
    fn a_waiting_job_says_what_its_dependency_is_doing() {
        let dep: JobId = "5b0c1d2e-0000-4000-8000-000000000000".parse().unwrap();
        let running = JobProgress { phase: 2, phases: 2, epoch: 15, epochs: 50, ..JobProgress::default() };
        assert_eq!(
            waiting_reason(dep, &DependencyStatus::Running(Some(running)), &[25, 50]),
            "waiting for job 5b0c1d2e… (running, epoch 40/75)"
        );
        assert_eq!(
            waiting_reason(dep, &DependencyStatus::Queued(Some(3)), &[1]),
            "waiting for job 5b0c1d2e… (queued, #3 in line)"
        );
        assert_eq!(
            dependency_failed(dep, JobState::Failed, Some("out of memory")),
            "job 5b0c1d2e… it waits for failed: out of memory"
        );
        assert_eq!(dependency_failed(dep, JobState::Cancelled, None), "job 5b0c1d2e… it waits for was cancelled");
        assert_eq!(
            dependency_failed(dep, JobState::Timeout, Some("time limit 2h reached at phase 1, epoch 3 of 9")),
            "job 5b0c1d2e… it waits for timed out: time limit 2h reached at phase 1, epoch 3 of 9"
        );
    }

    #[test]
    fn after_names_each_job_once_and_at_most_sixteen() {
        let id = JobId::new();
        let twice = serde_json::json!({"after": [id, id]});
        let mut value = serde_json::to_value(spec(serde_json::json!({}))).unwrap();
        value["after"] = twice["after"].clone();
        assert_eq!(JobSpec::parse(value.to_string().as_bytes()).unwrap_err().field, "after[1]");
        value["after"] = serde_json::to_value(ids(17)).unwrap();
        assert_eq!(JobSpec::parse(value.to_string().as_bytes()).unwrap_err().field, "after");
        value["after"] = serde_json::json!(["5b0c"]);
        assert_eq!(JobSpec::parse(value.to_string().as_bytes()).unwrap_err().field, "after[0]", "full ids only");
        value["after"] = serde_json::json!([]);
        value["init_from"] = serde_json::json!({"job": id, "checkpoint": "phase0"});
        assert_eq!(JobSpec::parse(value.to_string().as_bytes()).unwrap_err().field, "init_from.checkpoint");
        value["init_from"] = serde_json::json!({"job": id});
        let parsed = JobSpec::parse(value.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.init_from.as_ref().unwrap().checkpoint, Checkpoint::Final);
        assert_eq!(parsed.waits_for(), [id]);
        let again = JobSpec::parse(serde_json::to_string(&parsed).unwrap().as_bytes()).unwrap();
        assert_eq!(again, parsed, "round-trips");
    }
}
