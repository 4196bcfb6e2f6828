//! `GET /api/admin/backup`: a consistent snapshot of the database, taken now (while the server
//! keeps accepting writes) and streamed to the admin (`trainq admin backup --to FILE`). The work
//! is `crate::backup`'s; the snapshot file is unlinked as soon as it is open, so nothing is left
//! behind however the download ends.

use super::auth::{admin_only, Authed};
use super::{ApiError, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `GET /api/admin/backup`: the snapshot, streamed (admins only).
#[utoipa::path(
    get, path = "/api/admin/backup", tag = "admin",
    responses(
        (status = 200, description = "a consistent SQLite snapshot of the database (integrity-checked); \
            restore it as `trainq.db` beside a copy of `jobs/` (README, Backup and restore)",
            content_type = "application/vnd.sqlite3", body = String),
        (status = 403, description = "not an admin", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn backup(State(state): State<AppState>, Authed(user): Authed) -> Result<Response, ApiError> {
    admin_only(&user, "a backup of the database")?;
    let folder = state.paths.data_dir.join("backup-downloads");
    let taken = std::time::SystemTime::now();
    let name = format!("{}.{}.{}", crate::backup::snapshot_name(taken), std::process::id(), uuid::Uuid::new_v4());
    let path = folder.join(&name);
    let bytes = crate::backup::take_snapshot(&state.store, &path).await.map_err(anyhow::Error::from)?;
    let file = tokio::fs::File::open(&path).await.map_err(anyhow::Error::from);
    // Open (or not), the file has done its work on disk: the stream reads the open descriptor.
    let _ = tokio::fs::remove_file(&path).await;
    let file = file?;
    state.backups.record_good(taken);
    let download = crate::backup::snapshot_name(taken);
    Ok((
        [
            (header::CONTENT_TYPE, String::from("application/vnd.sqlite3")),
            (header::CONTENT_LENGTH, bytes.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{download}\"")),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}
