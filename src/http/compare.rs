//! `/api/compare?ids=a,b,c`: one table of test metrics for several jobs, JSON or CSV. An id may
//! name a job or a group; a repeat group is one row with each metric as mean ± std over its
//! succeeded runs, a sweep group one such row per combination, with the swept values as columns.

use super::csv::{self, TableFormat};
use super::extract::Query;
use super::groups::{combinations, summarize, METRICS};
use super::{ApiError, AppState};
use crate::domain::Job;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most ids one comparison takes; more would not fit a report's table or a plot's legend.
pub const MAX_COMPARED: usize = 20;

/// Query of the compare endpoints.
#[derive(Debug, Deserialize)]
pub struct CompareQuery {
    /// Comma-separated job or group ids.
    pub(super) ids: Option<String>,
    /// `json` (default) or `csv`; the table only.
    format: Option<String>,
}

/// What one id of a comparison names: a job, or a repeat group and its jobs.
#[derive(Debug)]
pub struct Compared {
    /// The group id when the id named a repeat group.
    pub group: Option<String>,
    /// The job, or the group's jobs in submission order.
    pub jobs: Vec<Job>,
}

fn bad_ids(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: "ids", message: message.into() }
}

/// Reads `ids` (comma-separated job or group ids, 1 to [`MAX_COMPARED`], no repeats) and loads
/// each: a malformed list is a 400 saying how to write it, an unknown id a 404 naming it.
pub async fn resolve(
    state: &AppState,
    user: &crate::domain::user::User,
    ids: Option<&str>,
) -> Result<Vec<Compared>, ApiError> {
    const HOW: &str = "give job or repeat-group ids separated by commas, e.g. ?ids=<id>,<id>; GET /api/jobs lists them";
    let raw = ids.map(str::trim).filter(|raw| !raw.is_empty()).ok_or_else(|| bad_ids(format!("no ids: {HOW}")))?;
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(bad_ids(format!("an empty id in `{raw}`: {HOW}")));
    }
    if parts.len() > MAX_COMPARED {
        return Err(bad_ids(format!("{} ids; compare at most {MAX_COMPARED} at once", parts.len())));
    }
    let mut seen = std::collections::HashSet::new();
    let mut compared = Vec::with_capacity(parts.len());
    for part in parts {
        let id: uuid::Uuid =
            part.parse().map_err(|_| bad_ids(format!("`{part}` is not a job or group id (ids are UUIDs): {HOW}")))?;
        if !seen.insert(id) {
            return Err(bad_ids(format!("`{part}` is listed twice; list each job or group once")));
        }
        // Someone else's job or group is "not found", exactly like a missing one.
        if let Some(job) =
            state.store.job(crate::domain::JobId(id)).await?.filter(|job| user.may_act_on(job.owner.as_deref()))
        {
            compared.push(Compared { group: None, jobs: vec![job] });
            continue;
        }
        let jobs = state.store.jobs_in_group(&id.to_string()).await?;
        if jobs.is_empty() || !jobs.iter().all(|job| user.may_act_on(job.owner.as_deref())) {
            return Err(ApiError::NotFound(format!("no job or group with id `{part}`")));
        }
        compared.push(Compared { group: Some(id.to_string()), jobs });
    }
    Ok(compared)
}

/// One metric of a row: a job's value (`std` null, `n` 1), or a group's mean, sample std and
/// count over its succeeded runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cell {
    mean: f64,
    std: Option<f64>,
    n: usize,
}

/// One row of the comparison.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Row {
    /// The job or group id, as given.
    id: String,
    /// `job` or `group`.
    #[schema(value_type = String)]
    kind: &'static str,
    /// The spec's name.
    name: String,
    /// A job's state; for a group, `finished` once no run is queued or running, else `running`.
    state: String,
    /// The jobs the row covers.
    jobs: Vec<String>,
    /// How many of them succeeded (only those have test metrics).
    succeeded: usize,
    /// Test metrics by name; a metric no succeeded job has is absent.
    #[schema(value_type = BTreeMap<String, Cell>)]
    metrics: BTreeMap<&'static str, Cell>,
    /// A sweep combination's row: each swept JSON pointer and its value (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    params: Option<serde_json::Map<String, serde_json::Value>>,
    /// How the training images are augmented, in words (absent when they are not).
    #[serde(skip_serializing_if = "Option::is_none")]
    augment: Option<String>,
    /// The class weights of the training loss, in words (absent when there are none).
    #[serde(skip_serializing_if = "Option::is_none")]
    class_weight: Option<String>,
}

/// `GET /api/compare`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    /// The metric names, in column order.
    #[schema(value_type = Vec<String>)]
    metrics: [&'static str; 9],
    /// One row per id, in the order given.
    rows: Vec<Row>,
}

/// The rows of one id: a job's or a repeat group's one row, or a sweep group's one per combination.
fn rows(compared: &Compared) -> Vec<Row> {
    let Some(group) = &compared.group else { return vec![row(compared.group.clone(), &compared.jobs, None)] };
    let combinations = combinations(&compared.jobs);
    if combinations.iter().all(|(params, _)| params.is_empty()) {
        return vec![row(Some(group.clone()), &compared.jobs, None)];
    }
    combinations.into_iter().map(|(params, jobs)| row(Some(group.clone()), &jobs, Some(params))).collect()
}

fn row(group: Option<String>, jobs: &[Job], params: Option<serde_json::Map<String, serde_json::Value>>) -> Row {
    let (summaries, succeeded) = summarize(jobs);
    let is_group = group.is_some();
    let metrics = summaries
        .into_iter()
        .map(|(name, summary)| (name, Cell { mean: summary.mean, std: is_group.then_some(summary.std), n: summary.n }))
        .collect();
    let (id, kind, state) = match (group, jobs) {
        (None, [job]) => (job.id.to_string(), "job", job.state.to_string()),
        (group, _) => {
            let finished = jobs.iter().all(|job| job.state.is_terminal());
            (group.unwrap_or_default(), "group", String::from(if finished { "finished" } else { "running" }))
        }
    };
    Row {
        id,
        kind,
        name: jobs.first().map(|job| job.name.clone()).unwrap_or_default(),
        state,
        jobs: jobs.iter().map(|job| job.id.to_string()).collect(),
        succeeded,
        metrics,
        params,
        augment: jobs
            .first()
            .and_then(|job| job.spec.augment.filter(|_| job.spec.augments()))
            .map(|augment| augment.describe()),
        class_weight: jobs.first().and_then(|job| job.spec.class_weight.as_ref()).map(|weights| weights.describe()),
    }
}

/// `GET /api/compare?ids=a,b,c[&format=csv]`: one row per id (a sweep group: per combination).
/// CSV has one column per swept pointer (when a sweep is compared) and, per metric, a column with
/// the value (a group's mean) and a `_std` column (a group's sample std; empty for a job).
#[utoipa::path(
    get, path = "/api/compare", tag = "results",
    params(("ids" = String, Query, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}){0,19}$", description = "comma-separated job or group ids (at most 20)"),
        ("format" = Option<String>, Query, pattern = r"^(json|csv)$", description = "`json` (default) or `csv`")),
    responses((status = 200, description = "one row per job, group or sweep combination", content(
        (Comparison = "application/json"), (String = "text/csv")))),
    security(("bearer" = []))
)]
pub async fn table(
    State(state): State<AppState>,
    super::auth::Authed(user): super::auth::Authed,
    Query(query): Query<CompareQuery>,
) -> Result<Response, ApiError> {
    let format = csv::table_format(query.format.as_deref())?;
    let compared = resolve(&state, &user, query.ids.as_deref()).await?;
    let rows: Vec<Row> = compared.iter().flat_map(rows).collect();
    if format == TableFormat::Json {
        return Ok(Json(Comparison { metrics: METRICS, rows }).into_response());
    }
    // The swept pointers of every sweep compared, each a column after the name.
    let pointers: std::collections::BTreeSet<String> =
        rows.iter().flat_map(|row| row.params.iter().flat_map(|params| params.keys().cloned())).collect();
    let mut header = vec![String::from("id"), String::from("kind"), String::from("name")];
    header.extend(pointers.iter().cloned());
    header.extend([String::from("state"), String::from("jobs"), String::from("succeeded")]);
    for metric in METRICS {
        header.extend([metric.to_string(), format!("{metric}_std")]);
    }
    let mut body = csv::line(header);
    for row in &rows {
        let mut fields = vec![row.id.clone(), row.kind.to_string(), row.name.clone()];
        let value = |pointer: &String| {
            row.params.as_ref().and_then(|params| params.get(pointer)).map(param_text).unwrap_or_default()
        };
        fields.extend(pointers.iter().map(value));
        fields.extend([row.state.clone(), row.jobs.len().to_string(), row.succeeded.to_string()]);
        for metric in METRICS {
            let cell = row.metrics.get(metric);
            fields.extend([csv::number(cell.map(|c| c.mean)), csv::number(cell.and_then(|c| c.std))]);
        }
        body.push_str(&csv::line(fields));
    }
    Ok(csv::response("compare.csv", body))
}

/// A swept value in a CSV cell: a string as itself, anything else as JSON (`0.0001`, `true`,
/// `{"name":"adam","lr":0.01}`).
fn param_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
