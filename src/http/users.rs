//! Accounts over the API: the admin's list (`GET /api/admin/users`), the roster import
//! (`POST /api/admin/users`, one user or a list, all or nothing), disabling, enabling and the admin
//! flag (`PATCH /api/admin/users/{name}`), a new token for anyone (`POST
//! /api/admin/users/{name}/token`) and for oneself (`POST /api/me/token`).
//!
//! A token changed here stops working at once: the auth layer's memory of it is dropped with the
//! change. A disabled account keeps its jobs: the finished ones and their files stay, and the ones
//! already queued or running still run to their end (nothing accepted is lost); its token answers
//! 401 "account disabled" until it is enabled again. An admin who wants its queued jobs gone
//! cancels them (`trainq cancel ID…` with an admin's token).

use super::auth::{admin_only, Authed};
use super::extract::{Json, Path, Query};
use super::{ApiError, AppState};
use crate::domain::roster::{check_rows, place, RosterRow};
use crate::domain::user::new_token;
use crate::store::{Account, NewAccount};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// How an import's new accounts get their tokens.
#[derive(Debug, Clone, Default)]
pub struct WelcomeMail {
    /// Wakes the notifier once an import has queued welcome mails.
    pub wake: crate::notify::Wake,
    /// Whether an SMTP server is set (`--smtp-url`): without one, `send_tokens` answers the tokens
    /// instead.
    pub by_email: bool,
}

/// One account as the admin's list shows it (never its token).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    /// The user's name.
    pub name: String,
    /// The person's full name from the roster; `null`: none.
    pub full_name: Option<String>,
    /// Where their welcome mail and job notifications go; `null`: none.
    pub email: Option<String>,
    /// Admins act on every job and manage accounts.
    pub admin: bool,
    /// `admin` or `student`.
    pub role: String,
    /// `enabled`, or `disabled` (the token answers 401).
    pub state: String,
    /// When the account was disabled (Unix seconds); `null` while enabled.
    pub disabled_at: Option<f64>,
    /// When the account was made (RFC 3339).
    pub created_at: String,
    /// When the account last sent a request (Unix seconds, to the minute); `null`: never.
    pub last_request_at: Option<f64>,
    /// Jobs they submitted, in any state.
    pub jobs: i64,
    /// Device time of all their runs, hours.
    pub device_hours: f64,
    /// Bytes their live jobs' folders hold.
    pub disk_bytes: u64,
    /// Their GPU-hours per budget period when set for them (`trainq admin budget`); `null`: the
    /// server's `--gpu-hours-per-user`.
    pub gpu_hours: Option<f64>,
    /// Their CPU-hours per budget period when set for them; `null`: the server's.
    pub cpu_hours: Option<f64>,
}

impl AccountView {
    fn of(account: Account, disk_bytes: u64, budget: Option<&crate::store::BudgetHolder>) -> AccountView {
        AccountView {
            gpu_hours: budget.and_then(|budget| budget.gpu_hours),
            cpu_hours: budget.and_then(|budget| budget.cpu_hours),
            role: String::from(if account.admin { "admin" } else { "student" }),
            state: String::from(if account.disabled_at.is_some() { "disabled" } else { "enabled" }),
            name: account.name,
            full_name: account.full_name,
            email: account.email,
            admin: account.admin,
            disabled_at: account.disabled_at,
            created_at: account.created_at,
            last_request_at: account.last_request_at,
            jobs: account.jobs,
            device_hours: account.device_seconds / 3600.0,
            disk_bytes,
        }
    }
}

/// `GET /api/admin/users`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountList {
    /// Every account, by name.
    pub users: Vec<AccountView>,
}

/// `GET /api/admin/users`: every account with its role, state, jobs, device time, disk and last
/// request (admins only).
#[utoipa::path(
    get, path = "/api/admin/users", operation_id = "list_users", tag = "admin",
    responses(
        (status = 200, description = "every account, by name", body = AccountList),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<AppState>, Authed(user): Authed) -> Result<axum::Json<AccountList>, ApiError> {
    admin_only(&user, "the list of accounts")?;
    let disk: std::collections::HashMap<String, u64> = state.store.disk_usage().await?.into_iter().collect();
    let budgets = state.store.budget_holders().await?;
    let users = state
        .store
        .accounts()
        .await?
        .into_iter()
        .map(|account| {
            let bytes = disk.get(&account.name).copied().unwrap_or(0);
            let budget = budgets.get(&account.name);
            AccountView::of(account, bytes, budget)
        })
        .collect();
    Ok(axum::Json(AccountList { users }))
}

/// One account to create: a roster's row.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1–32 characters of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit.
    #[schema(max_length = 32)]
    pub name: String,
    /// The person's full name, e.g. `Doe, Jane` (one line, at most 200 characters).
    #[serde(default)]
    #[schema(max_length = 200)]
    pub full_name: Option<String>,
    /// Where the welcome mail and job notifications go.
    #[serde(default)]
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// An admin's account (default: a student's).
    #[serde(default)]
    pub admin: bool,
    /// The roster file's line this row came from, for the errors (the client sends it).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub line: Option<u64>,
}

/// `POST /api/admin/users`'s body: one account, or a list (a roster).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ImportBody {
    /// One account.
    One(NewUser),
    /// A roster: every row is created, or none.
    Many(Vec<NewUser>),
}

/// `POST /api/admin/users`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Mail each new account with an address a welcome with its token (the token is made when the
    /// mail goes out). Without it, or without an SMTP server, the answer holds the tokens.
    #[serde(default)]
    pub send_tokens: bool,
}

/// An account the import created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedAccount {
    /// The user's name.
    pub name: String,
    /// Their address.
    pub email: Option<String>,
    /// Admin or student.
    pub admin: bool,
    /// Their token, shown this once; absent when a welcome mail will carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What an import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// The accounts created, in the roster's order.
    pub created: Vec<CreatedAccount>,
    /// The names that exist already with the same email and role, skipped.
    pub skipped: Vec<String>,
    /// Welcome mails queued (each carries a fresh token when it is delivered).
    pub welcome_mails: usize,
    /// The same in words: what was created, what was skipped, where the tokens are.
    pub message: String,
}

/// A field of an import that failed its check (422).
fn invalid(field: String, message: String) -> ApiError {
    ApiError::Malformed { status: StatusCode::UNPROCESSABLE_ENTITY, field, message }
}

/// The rows of an import's body: a roster file as it is (`Content-Type: text/csv`, the dashboard's
/// upload; read by `domain::roster`, whose errors name the line and column), or JSON (what the
/// client sends). Returns them and whether the body was one account.
async fn rows_of_request(
    state: &AppState,
    request: axum::extract::Request,
) -> Result<(Vec<RosterRow>, bool), ApiError> {
    use axum::extract::FromRequest;
    let csv = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/csv"));
    if !csv {
        let Json(body) = Json::<serde_json::Value>::from_request(request, state).await?;
        return rows_of(body);
    }
    let bytes = axum::body::to_bytes(request.into_body(), usize::MAX).await.map_err(|err| ApiError::Malformed {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        field: String::from("(body)"),
        message: err.to_string(),
    })?;
    let rows = crate::domain::roster::parse(&bytes)
        .map_err(|err| invalid(err.field.clone(), format!("line {}: {}", err.line, err.message)))?;
    if rows.is_empty() {
        return Err(invalid(String::from("(body)"), String::from("the roster has no rows below its header row")));
    }
    check_rows(&rows).map_err(|(_, field, message)| invalid(field.to_string(), message))?;
    Ok((rows, false))
}

/// The body's rows: an object is one account, an array a roster. A row of the wrong shape (an
/// unknown column, a name that is not text) is a 422 naming its index and field.
fn rows_of(body: serde_json::Value) -> Result<(Vec<RosterRow>, bool), ApiError> {
    let (items, single) = match body {
        serde_json::Value::Array(items) => (items, false),
        one => (vec![one], true),
    };
    if items.is_empty() {
        return Err(invalid(String::from("(body)"), String::from("the list is empty; send at least one account")));
    }
    let field_of = |index: usize, field: &str| -> String {
        match (single, field) {
            (true, "") => String::from("(body)"),
            (true, field) => field.to_string(),
            (false, "") => format!("[{index}]"),
            (false, field) => format!("[{index}].{field}"),
        }
    };
    let mut rows = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let line = item.get("line").and_then(serde_json::Value::as_u64);
        let new: NewUser = serde_path_to_error::deserialize(item).map_err(|err| {
            let path = err.path().to_string();
            let mut path = if path == "." { String::new() } else { path };
            // An unknown column is named by its key, which serde reports before any path.
            let message = err.inner().to_string();
            if let Some(unknown) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
                if path.is_empty() {
                    path = unknown.to_string();
                }
            }
            let at = place(&RosterRow { line, name: String::new(), full_name: None, email: None, admin: false }, index);
            invalid(field_of(index, &path), format!("{at}: {message}"))
        })?;
        rows.push(RosterRow {
            line: new.line,
            name: new.name,
            full_name: new.full_name,
            email: new.email,
            admin: new.admin,
        });
    }
    check_rows(&rows).map_err(|(index, field, message)| invalid(field_of(index, field), message))?;
    Ok((rows, single))
}

/// `POST /api/admin/users`: creates one account or a roster's, all or nothing (admins only). A bad
/// row (a name twice, a bad email, an unknown field, an existing name with another email or role)
/// is a 422 naming its line and field, and nothing is created. A row equal to an existing account
/// is skipped, so importing the same roster again creates nothing and says so.
#[utoipa::path(
    post, path = "/api/admin/users", operation_id = "import_users", tag = "admin", params(ImportQuery),
    request_body(
        content((ImportBody = "application/json"), (String = "text/csv")),
        description = "one account (`{\"name\", \"email\", \"admin\"}`) or a list of them; or a roster file as it is (`text/csv`, a header row `name,full_name,email,admin`)"
    ),
    responses(
        (status = 201, description = "accounts were created: their tokens, or the welcome mails queued", body = ImportReport),
        (status = 200, description = "every account exists already: nothing was created", body = ImportReport),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 422, description = "a row is invalid or clashes with an existing account; `detail.field` names it, the message its line; nothing was created", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn import(
    State(state): State<AppState>,
    Authed(user): Authed,
    Query(query): Query<ImportQuery>,
    request: axum::extract::Request,
) -> Result<(StatusCode, axum::Json<ImportReport>), ApiError> {
    admin_only(&user, "creating accounts")?;
    state.disk.writable()?;
    let (rows, single) = rows_of_request(&state, request).await?;
    let mail = query.send_tokens && state.welcome.by_email;
    let accounts: Vec<NewAccount> = rows
        .iter()
        .map(|row| NewAccount {
            name: row.name.clone(),
            full_name: row.full_name.clone(),
            email: row.email.clone(),
            admin: row.admin,
            token: new_token(),
            welcome: mail && row.email.is_some(),
        })
        .collect();
    let created = match state.store.import_accounts(&accounts).await? {
        Ok(created) => created,
        Err(differs) => {
            let row = &rows[differs.index];
            let field =
                if single { differs.field.to_string() } else { format!("[{}].{}", differs.index, differs.field) };
            return Err(invalid(
                field,
                format!(
                    "{}: `{}` exists already with {} {}; fix this row (or the account, with PATCH /api/admin/users/{}) and import again; nothing was created",
                    place(row, differs.index),
                    row.name,
                    differs.field,
                    differs.existing,
                    row.name
                ),
            ));
        }
    };
    let mut report =
        ImportReport { created: Vec::new(), skipped: Vec::new(), welcome_mails: 0, message: String::new() };
    for (account, created) in accounts.into_iter().zip(created) {
        if !created {
            report.skipped.push(account.name);
            continue;
        }
        report.welcome_mails += usize::from(account.welcome);
        let token = (!account.welcome).then_some(account.token);
        report.created.push(CreatedAccount { name: account.name, email: account.email, admin: account.admin, token });
    }
    if report.welcome_mails > 0 {
        state.welcome.wake.now();
    }
    report.message = import_message(&report, query.send_tokens, state.welcome.by_email);
    tracing::info!(by = %user.name, created = report.created.len(), skipped = report.skipped.len(), welcome_mails = report.welcome_mails, "accounts imported");
    let status = if report.created.is_empty() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(report)))
}

/// What an import did, in words.
fn import_message(report: &ImportReport, send_tokens: bool, by_email: bool) -> String {
    if report.created.is_empty() {
        return format!(
            "nothing new: all {} accounts exist already with the same email and role",
            report.skipped.len()
        );
    }
    let mut message = format!("created {} accounts", report.created.len());
    if !report.skipped.is_empty() {
        message.push_str(&format!(", skipped {} that exist already", report.skipped.len()));
    }
    let answered = report.created.len() - report.welcome_mails;
    if report.welcome_mails > 0 {
        message.push_str(&format!("; {} get their token by mail", report.welcome_mails));
    }
    if answered > 0 {
        let why = match (send_tokens, by_email) {
            (false, _) => "",
            (true, false) => " (no SMTP server is set: the admin sets --smtp-url and --smtp-from)",
            (true, true) => " (no email address)",
        };
        message.push_str(&format!("; {answered} tokens are in this answer, shown once{why}"));
    }
    message
}

/// `PATCH /api/admin/users/{name}`'s body: each field present changes that setting.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    /// GPU-hours per budget period, 0 or more; `null`: back to the server's.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub gpu_hours: Option<Option<f64>>,
    /// CPU-hours per budget period, 0 or more; `null`: back to the server's.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub cpu_hours: Option<Option<f64>>,
    /// `true` disables the account (its token answers 401 at once; its jobs stay), `false`
    /// enables it again.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Make the account an admin (`true`) or a student (`false`).
    #[serde(default)]
    pub admin: Option<bool>,
}

/// `PATCH /api/admin/users/{name}`: disables or enables an account, changes its role or its
/// device-hour budgets (admins only). An admin cannot disable themselves or drop their own admin
/// flag (another admin can). The budgets are checked before anything is stored.
#[utoipa::path(
    patch, path = "/api/admin/users/{name}", operation_id = "patch_user", tag = "admin", params(("name" = String, Path, description = "the user's name")),
    request_body(content = AccountChange, description = "`disabled`, `admin`, `gpu_hours` and/or `cpu_hours`"),
    responses(
        (status = 200, description = "the account as it is now", body = AccountView),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
        (status = 404, description = "no such user", body = super::error::ErrorBody),
        (status = 422, description = "a negative budget, or a change of one's own account that would lock one out: `detail.field` names it", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(name): Path<String>,
    Json(change): Json<AccountChange>,
) -> Result<axum::Json<AccountView>, ApiError> {
    admin_only(&user, "changing accounts")?;
    state.disk.writable()?;
    if name == user.name && change.disabled == Some(true) {
        return Err(invalid(
            String::from("disabled"),
            String::from("you cannot disable your own account; another admin can"),
        ));
    }
    if name == user.name && change.admin == Some(false) {
        return Err(invalid(
            String::from("admin"),
            String::from("you cannot drop your own admin flag; another admin can"),
        ));
    }
    let missing = || ApiError::NotFound(format!("no user `{name}`"));
    let budget = super::budgets::BudgetChange { gpu_hours: change.gpu_hours, cpu_hours: change.cpu_hours };
    super::budgets::check_budget(&budget)?;
    if change.gpu_hours.is_some() || change.cpu_hours.is_some() {
        super::budgets::change_budget(&state, &name, budget).await?;
    }
    if let Some(disabled) = change.disabled {
        if !state.store.set_disabled(&name, disabled).await? {
            return Err(missing());
        }
    }
    if let Some(admin) = change.admin {
        if !state.store.set_admin(&name, admin).await? {
            return Err(missing());
        }
    }
    state.tokens.forget_user(&name);
    let account = state.store.account(&name).await?.ok_or_else(missing)?;
    tracing::info!(by = %user.name, user = %name, disabled = ?change.disabled, admin = ?change.admin, "account changed");
    let disk_bytes = state.store.disk_usage_of(&name).await?;
    let budget = state.store.budget_holders().await?.remove(&name);
    Ok(axum::Json(AccountView::of(account, disk_bytes, budget.as_ref())))
}

/// A new token, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// Whose token it is.
    pub name: String,
    /// The token; the one before it no longer works.
    pub token: String,
}

/// Gives `name` a new token; the old one stops working at once.
async fn new_token_for(state: &AppState, name: &str) -> Result<NewToken, ApiError> {
    state.disk.writable()?;
    let token = new_token();
    if !state.store.set_token(name, &token).await? {
        return Err(ApiError::NotFound(format!("no user `{name}`")));
    }
    state.tokens.forget_user(name);
    Ok(NewToken { name: name.to_string(), token })
}

/// `POST /api/admin/users/{name}/token`: a new token for the user (admins only); the old one
/// answers 401 at once.
#[utoipa::path(
    post, path = "/api/admin/users/{name}/token", operation_id = "rotate_user_token", tag = "admin", params(("name" = String, Path, description = "the user's name")),
    responses(
        (status = 200, description = "the new token, shown once", body = NewToken),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rotate(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(name): Path<String>,
) -> Result<axum::Json<NewToken>, ApiError> {
    admin_only(&user, "another user's token")?;
    let token = new_token_for(&state, &name).await?;
    tracing::info!(by = %user.name, user = %name, "token rotated");
    Ok(axum::Json(token))
}

/// `POST /api/me/token`: a new token for the caller (`trainq token rotate` saves it); the one
/// this request carried answers 401 at once.
#[utoipa::path(
    post, path = "/api/me/token", operation_id = "rotate_own_token", tag = "users",
    responses((status = 200, description = "the new token, shown once", body = NewToken)),
    security(("bearer" = []))
)]
pub async fn rotate_own(State(state): State<AppState>, Authed(user): Authed) -> Result<axum::Json<NewToken>, ApiError> {
    Ok(axum::Json(new_token_for(&state, &user.name).await?))
}
