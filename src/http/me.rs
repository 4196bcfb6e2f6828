//! `GET /api/me` and `PUT /api/me` (who the token is, and where their notifications go), and the
//! admin's view of the notifications outbox (`GET /api/admin/notifications`).

use super::auth::Authed;
use super::extract::{Json, Query};
use super::{ApiError, AppState};
use crate::domain::notify_target::{check_email, check_webhook_secret, check_webhook_url};
use crate::domain::user::User;
use crate::store::{Notification, NotifyTargetsChange};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// `GET /api/me`: the caller and their notification targets (never the webhook's secret).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MeView {
    /// The unique name.
    pub name: String,
    /// Admins act on every job and may set admin-only spec fields.
    pub admin: bool,
    /// Where job notifications are emailed; `null`: no email.
    pub email: Option<String>,
    /// Where job notifications are POSTed; `null`: no webhook.
    pub webhook: Option<WebhookView>,
    /// The bytes the caller's jobs hold, and the quota if any.
    #[serde(flatten)]
    pub disk: DiskUsage,
    /// The caller's device-hour budget this period: used, held, left. Absent without budgets
    /// and for admins (exempt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<super::budgets::BudgetView>,
}

/// A user's disk: the bytes of their live jobs' folders and the quota, if any.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DiskUsage {
    /// Bytes of their live jobs' folders, each measured when the job ended.
    pub disk_bytes: u64,
    /// `--max-disk-per-user-gb` in bytes; absent without a quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_quota_bytes: Option<u64>,
}

/// `user`'s disk usage: one row of the running totals.
pub(super) async fn usage_of(state: &AppState, user: &User) -> Result<DiskUsage, ApiError> {
    let disk_bytes = state.store.disk_usage_of(&user.name).await?;
    Ok(DiskUsage { disk_bytes, disk_quota_bytes: state.limits.max_disk_bytes_per_user })
}

/// A webhook as `GET /api/me` shows it: its URL (the secret is write-only).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    /// Where the signed JSON POSTs go.
    pub url: String,
}

/// `PUT /api/me`'s body: each field present replaces that target (`null` removes it); a field
/// left out stays as it is.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeChange {
    /// An email address for job notifications, or `null` for none.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<String>, max_length = 254)]
    pub email: Option<Option<String>>,
    /// A webhook for job notifications, or `null` for none.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<WebhookChange>)]
    pub webhook: Option<Option<WebhookChange>>,
}

/// A webhook to set: the URL and the secret its POSTs are signed with
/// (`X-Trainq-Signature: sha256=<hex HMAC-SHA256 of the body>`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChange {
    /// An http:// or https:// URL.
    #[schema(max_length = 2000)]
    pub url: String,
    /// 16 to 256 printable characters, e.g. from `openssl rand -hex 32`.
    #[schema(min_length = 16, max_length = 256)]
    pub secret: String,
}

/// A field of `PUT /api/me` that failed its check (422).
fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Malformed { status: StatusCode::UNPROCESSABLE_ENTITY, field: field.to_string(), message }
}

impl MeChange {
    /// The body as a change. Read from a JSON object only: serde would also take a struct from an
    /// array of its fields in order, which no client means.
    fn parse(body: serde_json::Map<String, serde_json::Value>) -> Result<MeChange, ApiError> {
        serde_path_to_error::deserialize(serde_json::Value::Object(body)).map_err(|err| {
            let field = err.path().to_string();
            let field = if field == "." || field.is_empty() { String::from("(body)") } else { field };
            invalid(&field, err.into_inner().to_string())
        })
    }

    /// Checks every present field; the first bad one is a 422 naming it.
    fn check(self) -> Result<NotifyTargetsChange, ApiError> {
        if let Some(Some(email)) = &self.email {
            check_email(email).map_err(|message| invalid("email", message))?;
        }
        if let Some(Some(webhook)) = &self.webhook {
            check_webhook_url(&webhook.url).map_err(|message| invalid("webhook.url", message))?;
            check_webhook_secret(&webhook.secret).map_err(|message| invalid("webhook.secret", message))?;
        }
        Ok(NotifyTargetsChange {
            email: self.email,
            webhook: self.webhook.map(|webhook| webhook.map(|webhook| (webhook.url, webhook.secret))),
        })
    }
}

/// The caller as `GET /api/me` shows them.
async fn view(state: &AppState, user: User) -> Result<MeView, ApiError> {
    let targets = state.store.notify_targets(&user.name).await?.unwrap_or_default();
    let disk = usage_of(state, &user).await?;
    let webhook = targets.webhook_url.map(|url| WebhookView { url });
    let budget = super::budgets::budget_of(state, &user).await?;
    Ok(MeView { name: user.name, admin: user.admin, email: targets.email, webhook, disk, budget })
}

/// `GET /api/me`: who the token belongs to, where their notifications go, and their disk usage.
#[utoipa::path(
    get, path = "/api/me", tag = "users",
    responses((status = 200, description = "the token's user, with `disk_bytes` (and `disk_quota_bytes` under a quota)", body = MeView)),
    security(("bearer" = []))
)]
pub async fn me(State(state): State<AppState>, Authed(user): Authed) -> Result<axum::Json<MeView>, ApiError> {
    Ok(axum::Json(view(&state, user).await?))
}

/// `PUT /api/me`: sets or removes where the caller's job notifications go (an email address, a
/// signed webhook). Fields left out stay as they are.
#[utoipa::path(
    put, path = "/api/me", tag = "users",
    request_body = MeChange,
    responses(
        (status = 200, description = "saved; the caller as `GET /api/me` shows them", body = MeView),
        (status = 422, description = "a field is not usable: `detail.field` names it (`email`, `webhook.url`, `webhook.secret`)", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update_me(
    State(state): State<AppState>,
    Authed(user): Authed,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<axum::Json<MeView>, ApiError> {
    state.disk.writable()?;
    let change = MeChange::parse(body)?.check()?;
    if !state.store.set_notify_targets(&user.name, &change).await? {
        return Err(ApiError::NotFound(format!("no user `{}`", user.name)));
    }
    Ok(axum::Json(view(&state, user).await?))
}

/// One outbox row as the admin sees it (never a webhook's secret).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    /// The delivery's id (`X-Trainq-Delivery`, the email's Message-ID).
    pub id: i64,
    /// The job whose end it reports; empty for a new account's welcome mail.
    pub job_id: String,
    /// Whose target it is.
    pub owner: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// The address or URL.
    pub target: String,
    /// The job's final state.
    pub event: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When a pending one is tried next (Unix seconds).
    pub next_attempt_at: Option<f64>,
    /// When the job's end enqueued it (Unix seconds).
    pub created_at: f64,
    /// When it was delivered (Unix seconds).
    pub delivered_at: Option<f64>,
}

impl From<Notification> for NotificationView {
    fn from(row: Notification) -> NotificationView {
        let pending = row.state == "pending";
        NotificationView {
            id: row.id,
            job_id: row.job_id,
            owner: row.owner,
            channel: row.channel,
            target: row.target,
            event: row.event,
            state: row.state,
            attempts: row.attempts,
            last_error: row.last_error,
            next_attempt_at: pending.then_some(row.next_attempt_at),
            created_at: row.created_at,
            delivered_at: row.delivered_at,
        }
    }
}

/// `GET /api/admin/notifications`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NotificationList {
    /// Newest first.
    pub notifications: Vec<NotificationView>,
}

/// `GET /api/admin/notifications`'s query.
#[derive(Debug, Default, Deserialize)]
pub struct NotificationQuery {
    state: Option<String>,
    limit: Option<String>,
}

/// `GET /api/admin/notifications`: the outbox's messages in one state (default `failed`: the
/// deliveries given up, with the last error), newest first. Admins only.
#[utoipa::path(
    get, path = "/api/admin/notifications", tag = "users",
    params(
        ("state" = Option<String>, Query, pattern = r"^(pending|delivered|failed)$", description = "`failed` (default), `pending` or `delivered`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "at most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "the messages, newest first", body = NotificationList),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn admin_notifications(
    State(state): State<AppState>,
    Authed(user): Authed,
    Query(query): Query<NotificationQuery>,
) -> Result<axum::Json<NotificationList>, ApiError> {
    super::auth::admin_only(&user, "the notifications outbox (your own settings are at GET /api/me)")?;
    let wanted = query.state.as_deref().unwrap_or("failed");
    if !matches!(wanted, "pending" | "delivered" | "failed") {
        return Err(ApiError::BadRequest {
            field: "state",
            message: format!("`{wanted}` is not a state; send `failed`, `pending` or `delivered`"),
        });
    }
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(raw) => match raw.parse::<u32>() {
            Ok(limit @ 1..=500) => limit,
            _ => {
                return Err(ApiError::BadRequest {
                    field: "limit",
                    message: format!("`{raw}` is not a limit; send a number from 1 to 500"),
                })
            }
        },
    };
    let rows = state.store.notifications_in(wanted, limit).await?;
    Ok(axum::Json(NotificationList { notifications: rows.into_iter().map(NotificationView::from).collect() }))
}
