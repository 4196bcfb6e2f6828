//! Thin wrappers over axum's `Query`, `Path` and `Json` extractors whose rejection is the API's
//! JSON error, naming the parameter or body field at fault. axum's own rejections answer plain
//! text, which a client that parses every error as `{"error", "detail"}` cannot read; handlers use
//! these instead (the axum "customize extractor error" pattern).

use super::ApiError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// The query string deserialized into `T`; a malformed value is a 400 naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Query<T>, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// The path parameters deserialized into `T`; a segment that does not decode is a 400 naming it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Path<T>, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// A JSON request body deserialized into `T`: no `Content-Type: application/json` is a 415, JSON
/// that does not parse a 400, JSON of the wrong shape a 422, each naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(request: Request, state: &S) -> Result<Json<T>, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
        Ok(Json(value))
    }
}

/// The `serde_path_to_error` error axum wraps in a rejection (two sources down), as the field it
/// names (`(body)`/`(query)` for the whole) and serde's message without the path axum prefixes.
fn field_and_message<E: std::error::Error + 'static>(
    rejection: &dyn std::error::Error,
    whole: &str,
) -> Option<(String, String)> {
    let mut source = rejection.source();
    while let Some(err) = source {
        if let Some(err) = err.downcast_ref::<serde_path_to_error::Error<E>>() {
            let field = err.path().to_string();
            let field = if field == "." || field.is_empty() { whole.to_string() } else { field };
            return Some((field, err.inner().to_string()));
        }
        source = err.source();
    }
    None
}

fn bad(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::Malformed { status, field: field.into(), message: message.into() }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        // serde_urlencoded's error type is serde's plain `value::Error`.
        match field_and_message::<serde::de::value::Error>(&rejection, "(query)") {
            Some((field, message)) => {
                bad(StatusCode::BAD_REQUEST, field, format!("{message}; fix this query parameter"))
            }
            None => bad(StatusCode::BAD_REQUEST, "(query)", rejection.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        use axum::extract::path::ErrorKind;
        let PathRejection::FailedToDeserializePathParams(failed) = &rejection else {
            // The route and its handler disagree: a bug, not the caller's fault.
            return ApiError::Internal(anyhow::anyhow!("path parameters missing: {}", rejection.body_text()));
        };
        let field = match failed.kind() {
            ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::DeserializeError { key, .. } => key.clone(),
            _ => String::from("(path)"),
        };
        bad(StatusCode::BAD_REQUEST, field, format!("{}; fix this part of the URL path", failed.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match &rejection {
            JsonRejection::MissingJsonContentType(_) => bad(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type",
                "this route takes a JSON body: send `Content-Type: application/json`",
            ),
            JsonRejection::JsonDataError(_) => {
                let (field, message) = field_and_message::<serde_json::Error>(&rejection, "(body)")
                    .unwrap_or_else(|| (String::from("(body)"), rejection.body_text()));
                bad(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            }
            JsonRejection::JsonSyntaxError(_) => {
                let message = field_and_message::<serde_json::Error>(&rejection, "(body)")
                    .map_or_else(|| rejection.body_text(), |found| found.1);
                bad(StatusCode::BAD_REQUEST, "(body)", format!("not valid JSON: {message}"))
            }
            // The body could not be read (over the size limit: 413; the client went away).
            _ => bad(rejection.status(), "(body)", rejection.body_text()),
        }
    }
}

/// A field that is present, even as `null`, becomes `Some(…)`; an absent one stays `None`: how a
/// merge-patch body tells "set to null" from "leave alone".
pub(super) fn present<'de, T: serde::Deserialize<'de>, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}
