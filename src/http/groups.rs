//! `/api/groups/{id}`: the jobs of one submission that made several (`repeats: N`, a `sweep`),
//! every metric as mean ± std, over the whole group and per sweep combination.

use super::extract::Path;
use super::{ApiError, AppState};
use crate::domain::scores::{mean_std, MeanStd};
use crate::domain::{Job, JobState};
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A repeat group.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupView {
    id: String,
    /// Every sibling with its state and seed.
    jobs: Vec<GroupMember>,
    /// Jobs that succeeded (the ones the statistics cover).
    succeeded: usize,
    /// True once no sibling is queued or running.
    finished: bool,
    /// Each final metric over the succeeded siblings: mean, sample std (ddof 1) and n.
    #[schema(value_type = BTreeMap<String, Object>)]
    metrics: BTreeMap<&'static str, MeanStd>,
    /// The swept JSON pointers, sorted (empty for a plain repeat group).
    varying: Vec<String>,
    /// One row per sweep combination (a plain repeat group has one, with empty `params`).
    combinations: Vec<CombinationView>,
}

/// One combination of a sweep and its repeats.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CombinationView {
    /// Each swept pointer and its value here.
    #[schema(value_type = Object)]
    params: Map<String, Value>,
    /// Its jobs (one per repeat).
    jobs: Vec<String>,
    /// How many of them succeeded.
    succeeded: usize,
    /// Each final metric over those: mean, sample std and n.
    #[schema(value_type = BTreeMap<String, Object>)]
    metrics: BTreeMap<&'static str, MeanStd>,
}

/// A group's jobs by sweep combination (their `params`), in submission order; a job without
/// params (a plain repeat) is in the combination `{}`.
pub(super) fn combinations(jobs: &[Job]) -> Vec<(Map<String, Value>, Vec<Job>)> {
    let mut combinations: Vec<(Map<String, Value>, Vec<Job>)> = Vec::new();
    for job in jobs {
        let params = job.params.clone().unwrap_or_default();
        match combinations.iter_mut().find(|(known, _)| *known == params) {
            Some((_, members)) => members.push(job.clone()),
            None => combinations.push((params, vec![job.clone()])),
        }
    }
    combinations
}

/// The pointers a group's sweep varies, sorted.
pub(super) fn varying(jobs: &[Job]) -> Vec<String> {
    let pointers: std::collections::BTreeSet<&String> =
        jobs.iter().flat_map(|job| job.params.iter().flat_map(Map::keys)).collect();
    pointers.into_iter().cloned().collect()
}

/// One sibling of a group.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupMember {
    id: String,
    state: JobState,
    seed: Option<u64>,
}

/// Every metric a group aggregates and a comparison tabulates: the report's metrics
/// ([`crate::report::METRICS`]), their names in its order, so the two never drift apart.
pub(super) const METRICS: [&str; 9] = {
    let mut names = [""; 9];
    let mut index = 0;
    while index < names.len() {
        names[index] = crate::report::METRICS[index].0;
        index += 1;
    }
    names
};

/// The metrics of [`METRICS`], in that order, read from a job's final metrics (nothing before it
/// has them; `None` for a metric the job's head does not give, or that is undefined).
pub(super) fn metric_values(job: &Job) -> Vec<(&'static str, Option<f64>)> {
    let Some(last) = &job.final_metrics else { return Vec::new() };
    let binary = last.binary.as_ref();
    let values = [
        Some(last.test_acc),
        Some(last.test_loss),
        binary.and_then(|b| b.precision),
        binary.and_then(|b| b.recall),
        binary.and_then(|b| b.specificity),
        binary.and_then(|b| b.f1),
        binary.and_then(|b| b.auc),
        Some(last.train_acc),
        Some(last.train_loss),
    ];
    METRICS.into_iter().zip(values).collect()
}

/// Each metric's mean ± std over the succeeded `jobs`, and how many succeeded. An undefined metric
/// (e.g. AUC of a one-class test set) is left out, never averaged as 0.
pub(super) fn summarize(jobs: &[Job]) -> (BTreeMap<&'static str, MeanStd>, usize) {
    let succeeded: Vec<&Job> = jobs.iter().filter(|job| job.state == JobState::Succeeded).collect();
    let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for job in &succeeded {
        for (name, value) in metric_values(job) {
            if let Some(value) = value {
                values.entry(name).or_default().push(value);
            }
        }
    }
    let metrics = values.into_iter().filter_map(|(name, values)| Some((name, mean_std(&values)?))).collect();
    (metrics, succeeded.len())
}

/// `GET /api/groups/{id}`.
#[utoipa::path(
    get, path = "/api/groups/{id}", operation_id = "show_group", tag = "results", params(("id" = String, Path, description = "the group's id")),
    responses((status = 200, description = "the group's jobs and metrics", body = GroupView)),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    super::auth::Authed(user): super::auth::Authed,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let jobs = state.store.jobs_in_group(&id).await?;
    if jobs.is_empty() || !jobs.iter().all(|job| user.may_act_on(job.owner.as_deref())) {
        return Err(ApiError::NotFound(format!("no group with id `{id}`")));
    }
    let (metrics, succeeded) = summarize(&jobs);
    let members = jobs
        .iter()
        .map(|job| GroupMember { id: job.id.to_string(), state: job.state, seed: Some(job.spec.seed) })
        .collect();
    let combinations = combinations(&jobs)
        .into_iter()
        .map(|(params, members)| {
            let (metrics, succeeded) = summarize(&members);
            CombinationView { params, jobs: members.iter().map(|job| job.id.to_string()).collect(), succeeded, metrics }
        })
        .collect();
    Ok(Json(GroupView {
        id,
        succeeded,
        finished: jobs.iter().all(|job| job.state.is_terminal()),
        varying: varying(&jobs),
        jobs: members,
        metrics,
        combinations,
    }))
}
