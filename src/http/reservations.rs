//! Lab reservations over HTTP, admins only: `POST /api/admin/reservations` (checked whole by
//! `domain::reservation`, overlaps refused by the store in the insert's transaction),
//! `GET /api/admin/reservations`, `DELETE /api/admin/reservations/{name}`. The scheduler reads
//! them at its next pass, woken here.

use super::auth::{admin_only, Authed};
use super::extract::{Json, Path};
use super::{ApiError, AppState};
use crate::domain::reservation::{Reservation, ReservationRequest};
use crate::domain::Timestamp;
use crate::store::ReservationRefused;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

/// `POST /api/admin/reservations`: keeps devices for a list of users, once or weekly.
#[utoipa::path(
    post, path = "/api/admin/reservations", operation_id = "create_reservation", tag = "admin",
    request_body = ReservationRequest,
    responses(
        (status = 201, description = "stored; the scheduler plans with it from its next pass", body = Reservation),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 409, description = "the name is taken, or it overlaps another reservation on a shared device (named)", body = super::error::ErrorBody),
        (status = 422, description = "a field is wrong (end not after start, in the past, unknown device or user); nothing stored", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Authed(user): Authed,
    Json(request): Json<ReservationRequest>,
) -> Result<(StatusCode, axum::Json<Reservation>), ApiError> {
    admin_only(&user, "reserving devices")?;
    let users = state.store.users().await?;
    let inventory = &state.inventory;
    let reservation = Reservation::parse(
        request,
        Timestamp::now(),
        |device| inventory.slot(device).is_some(),
        |name| users.iter().any(|record| record.user.name == name),
    )
    .map_err(|err| ApiError::Malformed {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        field: err.field.to_string(),
        message: err.message,
    })?;
    state.disk.writable()?;
    match state.store.create_reservation(&reservation, &user.name).await? {
        Ok(()) => {}
        Err(ReservationRefused::NameTaken) => {
            return Err(ApiError::Conflict {
                message: format!(
                    "a reservation named `{}` exists; delete it first (trainq admin unreserve {}) or pick another name",
                    reservation.name, reservation.name
                ),
                detail: json!({ "field": "name", "reservation": reservation.name }),
            });
        }
        Err(ReservationRefused::Overlaps(other)) => {
            return Err(ApiError::Conflict {
                message: format!(
                    "it overlaps reservation `{}` on {}; pick other devices or times, or delete `{}` first",
                    other.name,
                    other
                        .devices
                        .iter()
                        .filter(|device| reservation.keeps(device))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    other.name
                ),
                detail: json!({ "field": "start", "reservation": other.name }),
            });
        }
    }
    tracing::info!(name = %reservation.name, by = %user.name, "reservation created");
    state.scheduler.notifier().notify_one();
    Ok((StatusCode::CREATED, axum::Json(reservation)))
}

/// `GET /api/admin/reservations`: every reservation, by name.
#[utoipa::path(
    get, path = "/api/admin/reservations", operation_id = "list_reservations", tag = "admin",
    responses(
        (status = 200, description = "every reservation, by name", body = Vec<Reservation>),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Authed(user): Authed,
) -> Result<axum::Json<Vec<Reservation>>, ApiError> {
    admin_only(&user, "the reservations list")?;
    Ok(axum::Json(state.store.reservations().await?))
}

/// `DELETE /api/admin/reservations/{name}`: the devices are free for everyone from the
/// scheduler's next pass.
#[utoipa::path(
    delete, path = "/api/admin/reservations/{name}", operation_id = "delete_reservation", tag = "admin",
    params(("name" = String, Path, description = "the reservation's name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 404, description = "no such reservation", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&user, "deleting a reservation")?;
    state.disk.writable()?;
    if !state.store.delete_reservation(&name).await? {
        return Err(ApiError::NotFound(format!("no reservation `{name}`")));
    }
    tracing::info!(%name, by = %user.name, "reservation deleted");
    state.scheduler.notifier().notify_one();
    Ok(StatusCode::NO_CONTENT)
}
