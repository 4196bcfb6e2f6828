//! `GET /api/version`: which build serves, and the schema version of the database it opened.

use super::{ApiError, AppState};
use axum::extract::State;
use axum::Json;
use serde::Serialize;

/// What `GET /api/version` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// The package version, e.g. `0.1.0`.
    version: &'static str,
    /// The git commit the server was built from, or `unknown` when it was built outside a git
    /// checkout.
    git_commit: &'static str,
    /// The newest migration applied to the database (after the server's own, applied at start).
    schema_version: i64,
}

/// `GET /api/version`: the server's version, git commit and the database's schema version.
#[utoipa::path(
    get, path = "/api/version", tag = "health",
    responses((status = 200, description = "the version, the git commit and the schema version", body = VersionInfo)),
    security((), ("bearer" = []))
)]
pub async fn version(State(state): State<AppState>) -> Result<Json<VersionInfo>, ApiError> {
    Ok(Json(VersionInfo {
        version: crate::version::VERSION,
        git_commit: crate::version::GIT_COMMIT,
        schema_version: state.store.schema_version().await?,
    }))
}
