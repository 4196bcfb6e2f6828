//! `GET /api/report?ids=a,b,c`: the HW report, one self-contained HTML page for the jobs and repeat
//! groups named (the same ids and rules as `/api/compare`). This file reads what the page shows
//! (jobs, curves, class names, the Grad-CAM gallery from each job's `artifacts/cam/`) and
//! `crate::report` turns it into HTML off the async threads.

use super::auth::Authed;
use super::compare::{resolve, CompareQuery, Compared};
use super::extract::Query;
use super::groups::{combinations, summarize};
use super::outputs::artifact_file;
use super::plots::class_names;
use super::{ApiError, AppState};
use crate::domain::{Job, JobState};
use crate::report::{self, CamImage, ConfusionTable, Experiment, Gallery, Report};
use crate::supervisor::JobPaths;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Most heatmaps one experiment embeds: the worker's whole gallery (3 of each of tp, tn, fp, fn).
const MAX_CAMS_PER_EXPERIMENT: usize = 12;
/// Largest heatmap file embedded; the worker's are 256 px wide, a few tens of kB.
const MAX_CAM_BYTES: u64 = 1024 * 1024;
/// Picture bytes one report embeds at most (a third more as base64), so twenty experiments' report
/// still opens in a browser and attaches to a mail.
const MAX_REPORT_CAM_BYTES: u64 = 8 * 1024 * 1024;

/// One entry of `cam/index.json`, as the worker writes it (`worker/cam.rs`'s `GalleryItem`);
/// everything but the file is optional so an older or partial index still shows its pictures.
#[derive(Debug, Deserialize)]
struct CamEntry {
    file: String,
    kind: Option<String>,
    path: Option<String>,
    label: Option<String>,
    predicted: Option<String>,
    probability: Option<f64>,
}

impl CamEntry {
    /// "true positive: PNEUMONIA predicted PNEUMONIA (p = 0.93), test/PNEUMONIA/x.jpeg".
    fn caption(&self) -> String {
        let kind = match self.kind.as_deref() {
            Some("tp") => "true positive",
            Some("tn") => "true negative",
            Some("fp") => "false positive",
            Some("fn") => "false negative",
            Some("correct") => "correct",
            Some("wrong") => "wrong",
            Some(other) => other,
            None => "heatmap",
        };
        let mut caption = String::from(kind);
        if let Some(label) = &self.label {
            caption.push_str(&format!(": true {label}"));
        }
        if let Some(predicted) = &self.predicted {
            caption.push_str(&format!(", predicted {predicted}"));
        }
        if let Some(probability) = self.probability {
            caption.push_str(&format!(" (p = {probability:.2})"));
        }
        caption.push_str(&format!(" — {}", self.path.as_deref().unwrap_or(&self.file)));
        caption
    }
}

/// `GET /api/report?ids=a,b,c`: `text/html`, shown inline and saved as `trainq-report.html`.
/// Bad or missing ids are a 400 naming `ids`, someone else's or an unknown id a 404, as for
/// `/api/compare`. Jobs that have not succeeded appear with their state and what they have so far.
#[utoipa::path(
    get, path = "/api/report", tag = "results",
    params(("ids" = String, Query, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}){0,19}$", description = "comma-separated job or group ids (at most 20)")),
    responses((status = 200, description = "one self-contained HTML page: per experiment the spec, the template's table, curves, test metrics and Grad-CAM heatmaps; a closing ranking", content_type = "text/html", body = String)),
    security(("bearer" = []))
)]
pub async fn page(
    State(state): State<AppState>,
    Authed(user): Authed,
    Query(query): Query<CompareQuery>,
) -> Result<Response, ApiError> {
    let compared = resolve(&state, &user, query.ids.as_deref()).await?;
    let mut budget = MAX_REPORT_CAM_BYTES;
    let mut experiments = Vec::with_capacity(compared.len());
    for Compared { group, jobs } in compared {
        // A sweep group is one experiment per combination, as /api/compare has one row each.
        let parts = match group {
            Some(_) => combinations(&jobs),
            None => vec![(serde_json::Map::new(), jobs)],
        };
        for (params, jobs) in parts {
            experiments.push(experiment(&state, group.clone(), jobs, params, &mut budget).await?);
        }
    }
    let generated_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| now.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let report = Report { user: user.name.clone(), generated_at, experiments };
    let html = tokio::task::spawn_blocking(move || report::render(&report))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_DISPOSITION, "inline; filename=\"trainq-report.html\""),
        // Running jobs change the page with every epoch.
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, report::CONTENT_SECURITY_POLICY),
    ];
    Ok((headers, html).into_response())
}

/// Everything the report shows of one job, repeat group or sweep combination (`params`).
async fn experiment(
    state: &AppState,
    group: Option<String>,
    jobs: Vec<Job>,
    params: serde_json::Map<String, serde_json::Value>,
    budget: &mut u64,
) -> Result<Experiment, ApiError> {
    let (metrics, _) = summarize(&jobs);
    let params = (!params.is_empty()).then(|| crate::domain::sweep::describe(&params));
    let mut curves = Vec::new();
    for job in &jobs {
        let epochs = state.store.epoch_metrics(job.id).await?;
        if !epochs.is_empty() {
            let label = if group.is_some() { format!("{} seed {}", job.name, job.spec.seed) } else { job.name.clone() };
            curves.push((label, epochs));
        }
    }
    let confusion = confusion(state, &jobs).await;
    // A group shows one run's heatmaps: its first succeeded run, else its first run.
    let gallery_job = jobs.iter().find(|job| job.state == JobState::Succeeded).or(jobs.first());
    let gallery = match gallery_job {
        Some(job) => gallery(state, job, budget).await,
        None => Gallery::default(),
    };
    Ok(Experiment { group, params, jobs, metrics, curves, confusion, gallery })
}

/// The test confusion matrix of the succeeded jobs, summed (a group's runs share a test set);
/// `None` when none has one or their shapes differ.
async fn confusion(state: &AppState, jobs: &[Job]) -> Option<ConfusionTable> {
    let mut total: Option<Vec<Vec<u64>>> = None;
    let mut runs = 0;
    let mut first = None;
    for job in jobs.iter().filter(|job| job.state == JobState::Succeeded) {
        let Some(last) = &job.final_metrics else { continue };
        let counts: Vec<Vec<u64>> = match (&last.binary, &last.multiclass) {
            (Some(binary), _) => binary.confusion.iter().map(|row| row.to_vec()).collect(),
            (None, Some(multiclass)) => multiclass.confusion.clone(),
            (None, None) => continue,
        };
        match &mut total {
            None => total = Some(counts),
            Some(sum) if sum.len() == counts.len() && sum.iter().zip(&counts).all(|(a, b)| a.len() == b.len()) => {
                for (row, add) in sum.iter_mut().zip(&counts) {
                    for (count, extra) in row.iter_mut().zip(add) {
                        *count += extra;
                    }
                }
            }
            Some(_) => return None,
        }
        first.get_or_insert(job);
        runs += 1;
    }
    let counts = total?;
    let classes = class_names(state, first?, counts.len()).await;
    Some(ConfusionTable { classes, counts, runs })
}

/// A job's Grad-CAM pictures from `artifacts/cam/index.json`, read through the same checks as
/// the artifact downloads (plain names, no symlinks), within the experiment's and the report's
/// caps; what was left out is said in the gallery's notes.
async fn gallery(state: &AppState, job: &Job, budget: &mut u64) -> Gallery {
    let mut gallery = Gallery { job: Some(job.id.to_string()), ..Gallery::default() };
    let artifacts = JobPaths::new(&state.paths.data_dir, job.id).artifacts();
    let Some((index, size)) = artifact_file(&artifacts, "cam/index.json").await else { return gallery };
    let read = if size <= MAX_CAM_BYTES { tokio::fs::read(&index).await.ok() } else { None };
    let entries: Vec<CamEntry> = match read.map(|bytes| serde_json::from_slice(&bytes)) {
        Some(Ok(entries)) => entries,
        _ => {
            gallery.notes.push(String::from("The gallery's index (cam/index.json) could not be read."));
            return gallery;
        }
    };
    let (mut over_count, mut over_budget) = (0, 0);
    for entry in &entries {
        if gallery.images.len() == MAX_CAMS_PER_EXPERIMENT {
            over_count += 1;
            continue;
        }
        let picture = match artifact_file(&artifacts, &entry.file).await {
            Some((path, bytes)) if bytes <= MAX_CAM_BYTES && entry.file.ends_with(".png") => {
                tokio::fs::read(&path).await.ok()
            }
            _ => None,
        };
        let Some(png) = picture.filter(|png| png.starts_with(b"\x89PNG\r\n\x1a\n")) else {
            gallery
                .notes
                .push(format!("`{}` is listed in cam/index.json but is missing, too large or not a PNG.", entry.file));
            continue;
        };
        if png.len() as u64 > *budget {
            over_budget += 1;
            continue;
        }
        *budget -= png.len() as u64;
        gallery.images.push(CamImage { caption: entry.caption(), png });
    }
    if over_count > 0 {
        gallery.notes.push(format!(
            "{over_count} more heatmaps left out: the report shows at most {MAX_CAMS_PER_EXPERIMENT} per experiment (all are in the job's artifacts, cam/)."
        ));
    }
    if over_budget > 0 {
        gallery.notes.push(format!(
            "{over_budget} heatmaps left out: the report embeds at most {} MiB of pictures; report fewer experiments at once to see them.",
            MAX_REPORT_CAM_BYTES / (1024 * 1024)
        ));
    }
    gallery
}
