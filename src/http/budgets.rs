//! Device-hour budgets over HTTP: an admin's change of one user's budget (the `gpu_hours` /
//! `cpu_hours` fields of `PATCH /api/admin/users/{name}`, whose handler is `users.rs`'), and the
//! caller's account as `GET /api/me` shows it. The accounting is `crate::budgets`'; the rules `domain::budget`'s.

use super::{ApiError, AppState};
use crate::domain::budget::{check_hours, DeviceClass, SECONDS_PER_HOUR};
use crate::domain::user::User;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// The budget fields of `PATCH /api/admin/users/{name}`: each present one sets that budget for
/// this user (`null` returns it to the server's `--*-hours-per-user`); an absent one stays.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct BudgetChange {
    /// GPU-hours per budget period, 0 or more; `null`: the server's.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub gpu_hours: Option<Option<f64>>,
    /// CPU-hours per budget period, 0 or more; `null`: the server's.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub cpu_hours: Option<Option<f64>>,
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

/// Checks an admin's budget change whole, before anything is stored: a negative or absurd
/// amount is a 422 naming its field.
pub(super) fn check_budget(change: &BudgetChange) -> Result<(), ApiError> {
    for (field, hours) in [("gpu_hours", change.gpu_hours), ("cpu_hours", change.cpu_hours)] {
        if let Some(Some(hours)) = hours {
            check_hours(hours).map_err(|message| invalid(field, format!("{hours} {message}")))?;
        }
    }
    Ok(())
}

/// Applies an admin's budget change to user `name` (checked with [`check_budget`]): what
/// `PATCH /api/admin/users/{name}` does with its budget fields. The next scheduling pass reads it
/// (no restart).
pub(super) async fn change_budget(state: &AppState, name: &str, change: BudgetChange) -> Result<(), ApiError> {
    check_budget(&change)?;
    state.disk.writable()?;
    if !state.store.set_user_budget(name, change.gpu_hours, change.cpu_hours).await? {
        return Err(ApiError::NotFound(format!("no user `{name}`")));
    }
    // Jobs held by the old budget may fit the new one.
    state.scheduler.notifier().notify_one();
    Ok(())
}
