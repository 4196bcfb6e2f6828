//! Report-ready plots as SVG or PNG: `/api/jobs/{id}/plots/{kind}.{svg|png}` for one job and
//! `/api/compare/plots/{kind}.{svg|png}?ids=…` overlaid for several. Kinds: `accuracy`, `loss`,
//! `roc`, `confusion` (per job only). Data a job does not have yet is a 409 that says when it
//! will; the drawing itself is `crate::plots`, run off the async threads.

use super::auth::Authed;
use super::compare::{resolve, CompareQuery};
use super::csv::download_name;
use super::extract::{Path, Query};
use super::job_view::find_own_files;
use super::{ApiError, AppState};
use crate::domain::Job;
use crate::plots::{self, Confusion, CurveMetric, CurveRun, Curves, Format, Plot, Roc, RocRun};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// What a plot shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Accuracy,
    Loss,
    Roc,
    Confusion,
}

const KINDS: &str = "accuracy, loss, roc or confusion, as .svg or .png (e.g. accuracy.png)";

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Accuracy => "accuracy",
            Kind::Loss => "loss",
            Kind::Roc => "roc",
            Kind::Confusion => "confusion",
        }
    }
}

/// Reads `accuracy.png` and the like; anything else is a 404 listing the plots there are.
fn parse_file(file: &str) -> Result<(Kind, Format), ApiError> {
    let unknown = || ApiError::NotFound(format!("no plot `{file}`: plots are {KINDS}"));
    let (kind, extension) = file.rsplit_once('.').ok_or_else(unknown)?;
    let kind = match kind {
        "accuracy" => Kind::Accuracy,
        "loss" => Kind::Loss,
        "roc" => Kind::Roc,
        "confusion" => Kind::Confusion,
        _ => return Err(unknown()),
    };
    Ok((kind, Format::from_extension(extension).ok_or_else(unknown)?))
}

fn not_yet(job: &Job, message: String) -> ApiError {
    ApiError::Conflict { message, detail: serde_json::json!({"state": job.state}) }
}

/// Renders off the async threads and answers with the image, named for saving.
async fn send(plot: Plot, format: Format, stem: &str, kind: Kind) -> Result<Response, ApiError> {
    let bytes = tokio::task::spawn_blocking(move || plots::render(&plot, format))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    let file_name = download_name(stem, &format!("-{}.{}", kind.name(), format.extension()));
    let headers = [
        (header::CONTENT_TYPE, format.content_type().to_string()),
        // A running job's curves change with every epoch.
        (header::CACHE_CONTROL, String::from("no-store")),
        (header::CONTENT_DISPOSITION, format!("inline; filename=\"{file_name}\"")),
    ];
    Ok((headers, bytes).into_response())
}

/// Class names for a job's confusion matrix: the dataset's sorted class folders when they still
/// match the matrix, else `class 0`, `class 1`, … (a dataset changed since the job ran).
pub(super) async fn class_names(state: &AppState, job: &Job, count: usize) -> Vec<String> {
    let root = state.paths.datasets.clone();
    let dataset = job.spec.dataset.clone();
    let classes =
        tokio::task::spawn_blocking(move || crate::catalog::datasets::open(&root, &dataset).map(|d| d.classes))
            .await
            .ok()
            .and_then(Result::ok)
            .filter(|classes| classes.len() == count);
    classes.unwrap_or_else(|| (0..count).map(|index| format!("class {index}")).collect())
}

/// The ROC curve of a finished binary job, or why there is none.
fn roc_run(job: &Job, label: String) -> Result<RocRun, String> {
    let Some(last) = &job.final_metrics else {
        return Err(format!(
            "job `{}` has no test metrics yet (it is {}); its ROC curve is drawn once it has succeeded",
            job.name, job.state
        ));
    };
    let Some(binary) = &last.binary else {
        return Err(format!(
            "job `{}` has a softmax head: a ROC curve is drawn for binary (sigmoid, {{\"dense\": 1}}) models; its per-class AUCs are in GET /api/jobs/{}/metrics",
            job.name, job.id
        ));
    };
    if binary.roc.is_empty() {
        let reason = binary.undefined.get("roc").cloned().unwrap_or_else(|| String::from("the test set has one class"));
        return Err(format!("job `{}` has no ROC curve: {reason}", job.name));
    }
    Ok(RocRun { label, points: binary.roc.iter().map(|point| (point.fpr, point.tpr)).collect(), auc: binary.auc })
}

fn curve_metric(kind: Kind) -> Option<CurveMetric> {
    match kind {
        Kind::Accuracy => Some(CurveMetric::Accuracy),
        Kind::Loss => Some(CurveMetric::Loss),
        Kind::Roc | Kind::Confusion => None,
    }
}

/// `GET /api/jobs/{id}/plots/{kind}.{svg|png}`.
#[utoipa::path(
    get, path = "/api/jobs/{id}/plots/{file}", tag = "results",
    params(("id" = String, Path, description = "the job's id (a UUID)"), ("file" = String, Path, pattern = r"^(accuracy|loss|roc|confusion)\.(svg|png)$", description = "`accuracy`, `loss`, `roc` or `confusion`, then `.svg` or `.png`")),
    responses((status = 200, description = "the plot", content((String = "image/svg+xml"), (String = "image/png"))),
        (status = 409, description = "the job lacks the data yet", body = super::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_plot(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = find_own_files(&state, &user, &id).await?;
    let (kind, format) = parse_file(&file)?;
    let plot = match kind {
        Kind::Accuracy | Kind::Loss => {
            let metric = curve_metric(kind).expect("a curve kind");
            let epochs = state.store.epoch_metrics(job.id).await?;
            if epochs.is_empty() {
                return Err(not_yet(
                    &job,
                    format!("job `{}` has no finished epoch yet; its curves are drawn from the first one on", job.name),
                ));
            }
            let title = format!("{}: {} per epoch", job.name, metric.name());
            Plot::Curves(Curves { metric, title, runs: vec![CurveRun { label: job.name.clone(), epochs }] })
        }
        Kind::Roc => {
            let run = roc_run(&job, job.name.clone()).map_err(|message| not_yet(&job, message))?;
            Plot::Roc(Roc { title: format!("{}: ROC on the test set", job.name), runs: vec![run] })
        }
        Kind::Confusion => {
            let Some(last) = &job.final_metrics else {
                return Err(not_yet(&job, format!("job `{}` has no test metrics yet (it is {}); its confusion matrix is drawn once it has succeeded", job.name, job.state)));
            };
            let counts: Vec<Vec<u64>> = match (&last.binary, &last.multiclass) {
                (Some(binary), _) => binary.confusion.iter().map(|row| row.to_vec()).collect(),
                (None, Some(multiclass)) => multiclass.confusion.clone(),
                (None, None) => return Err(not_yet(&job, format!("job `{}` reported no confusion matrix", job.name))),
            };
            let classes = class_names(&state, &job, counts.len()).await;
            Plot::Confusion(Confusion { title: format!("{}: confusion matrix (test set)", job.name), classes, counts })
        }
    };
    send(plot, format, &job.name, kind).await
}

/// Legend labels for overlaid runs: the job's name, with the seed for a group's runs and the short
/// id where two runs would otherwise read the same.
fn labels(jobs: &[(&Job, bool)]) -> Vec<String> {
    let base: Vec<String> = jobs
        .iter()
        .map(|(job, grouped)| match (grouped, Some(job.spec.seed)) {
            (true, Some(seed)) => format!("{} seed {seed}", job.name),
            _ => job.name.clone(),
        })
        .collect();
    base.iter()
        .zip(jobs)
        .map(|(label, (job, _))| {
            if base.iter().filter(|other| *other == label).count() > 1 {
                format!("{label} #{}", &job.id.to_string()[..6])
            } else {
                label.clone()
            }
        })
        .collect()
}

/// `GET /api/compare/plots/{kind}.{svg|png}?ids=a,b,c`: the runs overlaid, one colour each (a
/// group contributes each of its runs). Runs without the data (no epoch yet, no ROC) are left out
/// and the title says how many are shown; none at all is a 409.
#[utoipa::path(
    get, path = "/api/compare/plots/{file}", tag = "results",
    params(("file" = String, Path, pattern = r"^(accuracy|loss|roc)\.(svg|png)$", description = "`accuracy`, `loss` or `roc`, then `.svg` or `.png`"),
        ("ids" = String, Query, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}){0,19}$", description = "comma-separated job or group ids (at most 20)")),
    responses((status = 200, description = "the runs overlaid", content((String = "image/svg+xml"), (String = "image/png"))),
        (status = 409, description = "none of the runs has the data", body = super::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn compare_plot(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(file): Path<String>,
    Query(query): Query<CompareQuery>,
) -> Result<Response, ApiError> {
    let (kind, format) = parse_file(&file)?;
    if kind == Kind::Confusion {
        return Err(ApiError::BadRequest {
            field: "plot",
            message: String::from(
                "confusion matrices do not overlay: ask each job for its own, GET /api/jobs/{id}/plots/confusion.png",
            ),
        });
    }
    let compared = resolve(&state, &user, query.ids.as_deref()).await?;
    let jobs: Vec<(&Job, bool)> =
        compared.iter().flat_map(|entry| entry.jobs.iter().map(|job| (job, entry.group.is_some()))).collect();
    let labels = labels(&jobs);
    let total = jobs.len();
    let conflict = |message: String| ApiError::Conflict { message, detail: serde_json::json!({"jobs": total}) };
    let shown =
        |count: usize| if count == total { String::new() } else { format!(" ({count} of {total} runs have it)") };
    let plot = match curve_metric(kind) {
        Some(metric) => {
            let mut runs = Vec::new();
            for ((job, _), label) in jobs.iter().zip(&labels) {
                let epochs = state.store.epoch_metrics(job.id).await?;
                if !epochs.is_empty() {
                    runs.push(CurveRun { label: label.clone(), epochs });
                }
            }
            if runs.is_empty() {
                return Err(conflict(String::from("none of these jobs has a finished epoch yet")));
            }
            let title = format!("{} per epoch{}", capitalised(metric.name()), shown(runs.len()));
            Plot::Curves(Curves { metric, title, runs })
        }
        None => {
            let mut runs = Vec::new();
            let mut reasons = Vec::new();
            for ((job, _), label) in jobs.iter().zip(&labels) {
                match roc_run(job, label.clone()) {
                    Ok(run) => runs.push(run),
                    Err(reason) => reasons.push(reason),
                }
            }
            if runs.is_empty() {
                return Err(conflict(format!("none of these jobs has a ROC curve: {}", reasons.join("; "))));
            }
            Plot::Roc(Roc { title: format!("ROC on the test set{}", shown(runs.len())), runs })
        }
    };
    send(plot, format, "compare", kind).await
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_files_name_a_kind_and_a_format() {
        assert_eq!(parse_file("accuracy.png").unwrap(), (Kind::Accuracy, Format::Png));
        assert_eq!(parse_file("confusion.svg").unwrap(), (Kind::Confusion, Format::Svg));
        for bad in ["accuracy", "accuracy.gif", "precision.png", ".png", "roc.svg.png"] {
            assert!(matches!(parse_file(bad), Err(ApiError::NotFound(_))), "{bad}");
        }
        assert_eq!(capitalised("loss"), "Loss");
    }
}
