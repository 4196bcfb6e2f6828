//! `/api/datasets`, `/api/weights`, `/api/backbones`, `/api/examples`, `/api/devices`: what jobs can use.

use super::{ApiError, AppState};
use crate::catalog;
use crate::devices::{DeviceSlot, GpuReading};
use crate::domain::backbone::{Backbone, BackboneInfo};
use crate::domain::JobState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;

/// `GET /api/datasets`: every usable dataset with its splits, classes and image counts.
#[utoipa::path(
    get, path = "/api/datasets", tag = "catalog",
    responses((status = 200, description = "the datasets jobs can train on: name, classes, images per split", body = Vec<Object>)),
    security((), ("bearer" = []))
)]
pub async fn datasets(State(state): State<AppState>) -> Json<Vec<catalog::DatasetInfo>> {
    let root = state.paths.datasets.clone();
    Json(tokio::task::spawn_blocking(move || catalog::datasets::list(&root)).await.unwrap_or_default())
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
}

/// `GET /api/devices`.
#[utoipa::path(
    get, path = "/api/devices", tag = "catalog",
    responses((status = 200, description = "each device, its live numbers and its running job", body = Vec<Object>)),
    security((), ("bearer" = []))
)]
pub async fn devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let running = state.store.jobs(Some(JobState::Running)).await?;
    let views = state
        .inventory
        .slots()
        .iter()
        .map(|slot| DeviceView {
            slot: slot.clone(),
            reading: state.inventory.reading(slot),
            job: running.iter().find(|job| job.device.as_deref() == Some(&slot.id)).map(|job| job.id.to_string()),
        })
        .collect();
    Ok(Json(views))
}
