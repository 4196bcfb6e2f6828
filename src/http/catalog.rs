//! `/api/datasets`, `/api/weights`, `/api/backbones`, `/api/examples`, `/api/devices`: what jobs can use.

use super::{ApiError, AppState};
use crate::catalog;
use crate::devices::{DeviceSlot, GpuReading};
use crate::domain::backbone::{Backbone, BackboneInfo};
use crate::domain::JobState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;

/// A dataset as `GET /api/datasets` lists it: the catalog's counts, the class imbalance, and what
/// its import left out (from the import's manifest; absent for a folder laid out by hand).
#[derive(Debug, Serialize)]
pub struct DatasetView {
    #[serde(flatten)]
    info: catalog::DatasetInfo,
    /// The train split's largest class over its smallest (1.0: balanced; the Kaggle set: 2.9).
    class_imbalance: Option<f64>,
    /// Files the import left out, by why (`macosx`, `apple_double`, `ds_store`, `thumbs_db`,
    /// `nested_duplicate`, `outside_layout`, `bad`).
    #[serde(skip_serializing_if = "Option::is_none")]
    left_out: Option<std::collections::BTreeMap<crate::dataset_import::layout::LeftOut, usize>>,
}

impl DatasetView {
    /// The view of `info`, its manifest read from its folder.
    fn of(info: catalog::DatasetInfo) -> DatasetView {
        let train = info.split("train").map(|split| split.per_class.values().copied().collect::<Vec<usize>>());
        let class_imbalance = train.and_then(|counts| {
            let (largest, smallest) = (counts.iter().max()?, counts.iter().min()?);
            (*smallest > 0).then(|| *largest as f64 / *smallest as f64)
        });
        let left_out = crate::dataset_import::Manifest::read(&info.path).map(|manifest| manifest.left_out);
        DatasetView { info, class_imbalance, left_out }
    }
}

/// `GET /api/datasets`: every usable dataset with its splits, classes and image counts, its class
/// imbalance and what its import left out.
#[utoipa::path(
    get, path = "/api/datasets", tag = "catalog",
    responses((status = 200, description = "the datasets jobs can train on: name, classes, images per split, class imbalance, what the import left out", body = Vec<Object>)),
    security((), ("bearer" = []))
)]
pub async fn datasets(State(state): State<AppState>) -> Json<Vec<DatasetView>> {
    let root = state.paths.datasets.clone();
    let list = move || catalog::datasets::list(&root).into_iter().map(DatasetView::of).collect();
    Json(tokio::task::spawn_blocking(list).await.unwrap_or_default())
}

/// `GET /api/weights`: installed pretrained weights files.
#[utoipa::path(
    get, path = "/api/weights", tag = "catalog",
    responses((status = 200, description = "the installed weights files", body = Vec<Object>)),
    security((), ("bearer" = []))
)]
pub async fn weights(State(state): State<AppState>) -> Json<Vec<catalog::WeightsInfo>> {
    Json(catalog::weights::list(&state.paths.weights))
}

/// `GET /api/backbones`: the backbones, their blocks and input limits.
#[utoipa::path(
    get, path = "/api/backbones", tag = "catalog",
    responses((status = 200, description = "the backbones and their blocks", body = Vec<BackboneInfo>)),
    security((), ("bearer" = []))
)]
pub async fn backbones() -> Json<Vec<BackboneInfo>> {
    Json(Backbone::ALL.into_iter().map(Backbone::info).collect())
}

/// One shipped example spec, as `GET /api/examples` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExampleView {
    /// What `trainq submit` takes (the file's stem).
    #[schema(value_type = String)]
    name: &'static str,
    /// The assignment question it answers.
    #[schema(value_type = String)]
    description: &'static str,
    /// The spec, ready to POST or to edit.
    spec: serde_json::Value,
}

/// `GET /api/examples`: the assignment's experiments as specs, so a student starts from one
/// instead of a blank page (the dashboard's form and `trainq submit q1`).
#[utoipa::path(
    get, path = "/api/examples", tag = "catalog",
    responses((status = 200, description = "the assignment's example specs", body = Vec<ExampleView>)),
    security((), ("bearer" = []))
)]
pub async fn examples() -> Json<Vec<ExampleView>> {
    let views = crate::domain::examples::EXAMPLES
        .iter()
        .map(|example| ExampleView {
            name: example.name,
            description: example.description,
            spec: serde_json::from_str(example.spec).expect("the shipped examples are JSON (tested)"),
        })
        .collect();
    Json(views)
}

/// A device and who holds it.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    slot: DeviceSlot,
    /// Live NVML numbers (GPUs only).
    #[serde(flatten)]
    reading: Option<GpuReading>,
    /// The running job on it.
    job: Option<String>,
    /// The lab reservations that keep it: each one's occurrence under way, else its next one,
    /// soonest first.
    reservations: Vec<crate::domain::reservation::Upcoming>,
}

/// `GET /api/devices`.
#[utoipa::path(
    get, path = "/api/devices", tag = "catalog",
    responses((status = 200, description = "each device, its live numbers and its running job", body = Vec<Object>)),
    security((), ("bearer" = []))
)]
pub async fn devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let running = state.store.jobs(Some(JobState::Running)).await?;
    let reservations = state.store.reservations().await?;
    let now = crate::domain::Timestamp::now().unix_seconds();
    let views = state
        .inventory
        .slots()
        .iter()
        .map(|slot| DeviceView {
            slot: slot.clone(),
            reading: state.inventory.reading(slot),
            job: running.iter().find(|job| job.device.as_deref() == Some(&slot.id)).map(|job| job.id.to_string()),
            reservations: crate::domain::reservation::upcoming(&reservations, &slot.id, now),
        })
        .collect();
    Ok(Json(views))
}
