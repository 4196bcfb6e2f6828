//! Device-hour budgets over HTTP: an admin's change of one user's budget
//! (`PATCH /api/admin/users/{name}` with `gpu_hours` / `cpu_hours`), and the caller's account as
//! `GET /api/me` shows it. The accounting is `crate::budgets`'; the rules `domain::budget`'s.

use super::auth::{admin_only, Authed};
use super::extract::{Json, Path};
use super::{ApiError, AppState};
use crate::domain::budget::{check_hours, DeviceClass, SECONDS_PER_HOUR};
use crate::domain::user::User;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// The budget fields of `PATCH /api/admin/users/{name}`: each present one sets that budget for
/// this user (`null` returns it to the server's `--*-hours-per-user`); an absent one stays.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct BudgetChange {
    /// GPU-hours per budget period, 0 or more; `null`: the server's.
    #[serde(default, deserialize_with = "super::me::present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub gpu_hours: Option<Option<f64>>,
    /// CPU-hours per budget period, 0 or more; `null`: the server's.
    #[serde(default, deserialize_with = "super::me::present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub cpu_hours: Option<Option<f64>>,
}

/// A user's budget overrides after a change.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UserBudgetView {
    /// The user.
    pub name: String,
    /// Their GPU-hours per period when set for them; `null`: the server's.
    pub gpu_hours: Option<f64>,
    /// Their CPU-hours per period when set for them; `null`: the server's.
    pub cpu_hours: Option<f64>,
}

/// A user's account as `GET /api/me` shows it, in hours.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BudgetView {
    /// Which devices it counts: `gpu` or `cpu`.
    pub class: DeviceClass,
    /// Device-hours per budget period.
    pub budget_hours: f64,
    /// Charged so far in this period (running jobs up to now).
    pub used_hours: f64,
    /// What running jobs may still be charged: the rest of their time limits.
    pub held_hours: f64,
    /// Neither used nor held: the most a new job's time limit may be to start now.
    pub left_hours: f64,
}

/// `user`'s account now; `None` without budgets, for admins, or with none set for them.
pub(super) async fn budget_of(state: &AppState, user: &User) -> Result<Option<BudgetView>, ApiError> {
    let Some(policy) = &state.limits.budgets else { return Ok(None) };
    if user.admin {
        return Ok(None);
    }
    let hours = |seconds: f64| (seconds / SECONDS_PER_HOUR * 1000.0).round() / 1000.0;
    Ok(policy.account_of(&state.store, &user.name).await?.map(|account| BudgetView {
        class: account.class,
        budget_hours: hours(account.budget_seconds),
        used_hours: hours(account.used_seconds),
        held_hours: hours(account.held_seconds),
        left_hours: hours(account.left_seconds()),
    }))
}

/// A budget field that failed its check (422).
fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Malformed { status: StatusCode::UNPROCESSABLE_ENTITY, field: field.to_string(), message }
}

/// Applies an admin's budget change to user `name`, checked whole before anything is stored:
/// what `PATCH /api/admin/users/{name}` does with its budget fields. The next scheduling pass
/// reads it (no restart).
pub(super) async fn change_budget(
    state: &AppState,
    name: &str,
    change: BudgetChange,
) -> Result<UserBudgetView, ApiError> {
    for (field, hours) in [("gpu_hours", change.gpu_hours), ("cpu_hours", change.cpu_hours)] {
        if let Some(Some(hours)) = hours {
            check_hours(hours).map_err(|message| invalid(field, format!("{hours} {message}")))?;
        }
    }
    state.disk.writable()?;
    if !state.store.set_user_budget(name, change.gpu_hours, change.cpu_hours).await? {
        return Err(ApiError::NotFound(format!("no user `{name}`")));
    }
    // Jobs held by the old budget may fit the new one.
    state.scheduler.notifier().notify_one();
    let holder = state.store.budget_holders().await?.remove(name).unwrap_or_default();
    Ok(UserBudgetView { name: name.to_string(), gpu_hours: holder.gpu_hours, cpu_hours: holder.cpu_hours })
}

/// `PATCH /api/admin/users/{name}`: sets one user's device-hour budgets (admins only).
#[utoipa::path(
    patch, path = "/api/admin/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "the user's name")),
    request_body = BudgetChange,
    responses(
        (status = 200, description = "saved; applies from the next scheduling pass", body = UserBudgetView),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 422, description = "a negative or non-numeric budget: `detail.field` names it", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch_user(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(name): Path<String>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<axum::Json<UserBudgetView>, ApiError> {
    admin_only(&user, "changing a user's budget")?;
    let change: BudgetChange = serde_path_to_error::deserialize(serde_json::Value::Object(body)).map_err(|err| {
        let field = err.path().to_string();
        let field = if field == "." || field.is_empty() { String::from("(body)") } else { field };
        invalid(&field, err.into_inner().to_string())
    })?;
    Ok(axum::Json(change_budget(&state, &name, change).await?))
}
