//! The API's errors: each variant maps to a status and a JSON body `{"error": ..., "detail": ...}`.
//! Internal failures become an opaque 500 whose cause chain is logged, never sent.

use crate::domain::SpecError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A submitted spec is invalid (422), naming the field.
    #[error("invalid job spec")]
    InvalidSpec(#[from] SpecError),
    /// A query parameter or path segment is malformed (400).
    #[error("bad request")]
    BadRequest {
        /// The parameter at fault.
        field: &'static str,
        /// What to send instead.
        message: String,
    },
    /// A query parameter, path segment, header or body field that axum's extractors or the auth
    /// layer could not read (400; 415 for a missing JSON content type; 422 for JSON of the wrong
    /// shape), naming it: `(body)`/`(query)` for the whole, a dotted path for a nested field.
    #[error("{}", status.canonical_reason().unwrap_or("bad request").to_lowercase())]
    Malformed {
        /// 400, 413, 415 or 422.
        status: StatusCode,
        /// The parameter, header or body field at fault.
        field: String,
        /// What is wrong and what to send instead.
        message: String,
    },
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request body is over the limit (413); answered before the body is read.
    #[error("request body too large")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request conflicts with the resource's state (409).
    #[error("{message}")]
    Conflict {
        /// What happened.
        message: String,
        /// Extra facts, e.g. the job's state.
        detail: serde_json::Value,
    },
    /// An uploaded image that cannot be used: not an image (415), too large (413), corrupt (422).
    #[error("{message}")]
    BadUpload {
        /// 413, 415 or 422.
        status: StatusCode,
        /// What is wrong and what to send instead.
        message: String,
    },
    /// No token, or a malformed or unknown one (401).
    #[error("unauthorized")]
    Unauthorized(String),
    /// The caller may not do this (403), naming the field at fault when there is one.
    #[error("forbidden")]
    Forbidden {
        /// The spec field or parameter at fault.
        field: &'static str,
        /// Why, and what to do instead.
        message: String,
    },
    /// Over a limit (429): the request rate (with `Retry-After`) or the queued jobs per user.
    #[error("too many requests")]
    TooManyRequests {
        /// Which limit and what to do.
        message: String,
        /// Seconds until a retry can succeed (0: it depends on other jobs finishing).
        retry_after_secs: u64,
    },
    /// The request must write, but the disk is full (507); reads keep working.
    #[error("insufficient storage")]
    InsufficientStorage(crate::disk_space::Full),
    /// A helper process could not answer (503); nothing is lost, the request may be repeated.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an I/O failure (500); the cause is logged.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
    /// The job's files were deleted (410); its row stays, so the job itself still answers.
    #[error("gone")]
    Gone {
        /// Who deleted what, and when.
        message: String,
        /// The job's `deleted_at` and `deleted_by`.
        detail: serde_json::Value,
    },
    /// The caller's job folders hold their disk quota or more (507); nothing was queued.
    #[error("insufficient storage")]
    DiskQuota {
        /// The quota (`--max-disk-per-user-gb`), bytes.
        quota_bytes: u64,
        /// What their live jobs' folders hold, bytes.
        usage_bytes: u64,
        /// Their largest live jobs: what to delete.
        largest: Vec<crate::store::JobSize>,
    },
}

/// The body of every error answer, for the OpenAPI document (the answers themselves are built in
/// `into_response` below, one place for every variant).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// A short summary: `bad request`, `invalid job spec`, `unauthorized`, `not found`, …
    error: String,
    /// What exactly is wrong: mostly `field` and `message`; the limit of a 413, the state of a
    /// 409, the disk of a 507; `null` for a 404, 500 or 503.
    detail: Option<ErrorDetail>,
}

/// The usual `detail` of an error; some carry more facts beside these (a 409's `state`, a 413's
/// `limit_bytes`, a 429's `retry_after_secs`, a 507's `path` and `free_bytes`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// The parameter, header or body field at fault: `format`, `Authorization`, `(body)`,
    /// `phases[0].epochs`, …
    field: Option<String>,
    /// What is wrong and what to send instead.
    message: Option<String>,
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> ApiError {
        if err.is_disk_full() {
            tracing::warn!(error = ?err, "a request's database write found the disk full");
            return ApiError::InsufficientStorage(crate::disk_space::Full::of_data_dir());
        }
        ApiError::Internal(err.into())
    }
}

impl From<crate::disk_space::Full> for ApiError {
    fn from(full: crate::disk_space::Full) -> ApiError {
        ApiError::InsufficientStorage(full)
    }
}

impl From<crate::retention::RetentionError> for ApiError {
    fn from(err: crate::retention::RetentionError) -> ApiError {
        match err {
            crate::retention::RetentionError::Store(err) => err.into(),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// A refused submission answers as it did when the checks lived in the handlers: 422 naming the
/// field, 403 for an admin-only field, 429 over the active jobs' cap, 507 over the disk quota or
/// on a full disk.
impl From<crate::submit::SubmitError> for ApiError {
    fn from(err: crate::submit::SubmitError) -> ApiError {
        use crate::submit::SubmitError;
        match err {
            SubmitError::InvalidSpec(err) => ApiError::InvalidSpec(err),
            SubmitError::AdminOnly { field, message } => ApiError::Forbidden { field, message },
            SubmitError::TooManyActiveJobs { message } => ApiError::TooManyRequests { message, retry_after_secs: 0 },
            SubmitError::DiskQuota { quota_bytes, usage_bytes, largest } => {
                ApiError::DiskQuota { quota_bytes, usage_bytes, largest }
            }
            SubmitError::NotResumable { message, state } => {
                ApiError::Conflict { message, detail: serde_json::json!({"state": state}) }
            }
            SubmitError::DiskFull(full) => full.into(),
            SubmitError::Store(err) => err.into(),
            SubmitError::Internal(err) => ApiError::Internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail) = match &self {
            ApiError::InvalidSpec(err) => {
                (StatusCode::UNPROCESSABLE_ENTITY, json!({"field": err.field, "message": err.message}))
            }
            ApiError::BadRequest { field, message } => {
                (StatusCode::BAD_REQUEST, json!({"field": field, "message": message}))
            }
            ApiError::Malformed { status, field, message } => (*status, json!({"field": field, "message": message})),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, serde_json::Value::Null),
            ApiError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"limit_bytes": limit, "message": format!("send at most {limit} bytes")}),
            ),
            ApiError::Conflict { detail, .. } => (StatusCode::CONFLICT, detail.clone()),
            ApiError::BadUpload { status, message } => (*status, json!({"field": "body", "message": message})),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::Value::Null),
            ApiError::InsufficientStorage(full) => (
                StatusCode::INSUFFICIENT_STORAGE,
                json!({
                    "path": full.path,
                    "free_bytes": full.free_bytes,
                    "message": format!("the disk under {} is full ({} free); queued jobs are kept and start once the admin frees space", full.path.display(), crate::disk_space::gigabytes(full.free_bytes)),
                }),
            ),
            ApiError::Unauthorized(message) => {
                let body = json!({"error": self.to_string(), "detail": {"field": "Authorization", "message": message}});
                let headers = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
                return (StatusCode::UNAUTHORIZED, headers, Json(body)).into_response();
            }
            ApiError::Forbidden { field, message } => {
                (StatusCode::FORBIDDEN, json!({"field": field, "message": message}))
            }
            ApiError::TooManyRequests { message, retry_after_secs } => {
                let body = json!({"error": self.to_string(), "detail": {"message": message, "retry_after_secs": retry_after_secs}});
                if *retry_after_secs == 0 {
                    return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                }
                let headers = [(axum::http::header::RETRY_AFTER, retry_after_secs.to_string())];
                return (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response();
            }
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, serde_json::Value::Null)
            }
            ApiError::Gone { message, detail } => {
                let mut detail = detail.clone();
                detail["message"] = json!(message);
                (StatusCode::GONE, detail)
            }
            ApiError::DiskQuota { quota_bytes, usage_bytes, largest } => {
                use crate::domain::retention::human_bytes;
                let names: Vec<String> = largest
                    .iter()
                    .map(|job| format!("{} `{}` ({})", job.id, job.name, human_bytes(job.disk_bytes)))
                    .collect();
                let hint = match names.as_slice() {
                    [] => String::from("ask the admin to raise the quota"),
                    _ => format!(
                        "delete finished jobs you no longer need (`trainq rm ID`, or DELETE /api/jobs/ID); your largest: {}",
                        names.join(", ")
                    ),
                };
                (
                    StatusCode::INSUFFICIENT_STORAGE,
                    json!({
                        "field": "max_disk_per_user_gb",
                        "quota_bytes": quota_bytes,
                        "usage_bytes": usage_bytes,
                        "largest_jobs": largest,
                        "message": format!(
                            "your jobs hold {} of disk, at or over your quota of {}: {hint}",
                            human_bytes(*usage_bytes),
                            human_bytes(*quota_bytes)
                        ),
                    }),
                )
            }
        };
        (status, Json(json!({"error": self.to_string(), "detail": detail}))).into_response()
    }
}
