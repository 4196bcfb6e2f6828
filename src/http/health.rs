//! `GET /readyz`: whether this server can do its work now, check by check, for a load balancer or
//! the admin's monitoring (`/healthz` only says the process answers). 200 when every check passes,
//! 503 with the failing ones otherwise; `backup` is a warning that keeps the answer 200.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// `GET /healthz`: the process answers (`/readyz` says whether it can do its work).
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, description = "every check passes", body = Object),
        (status = 503, description = "a check fails: `checks` names it", body = Object))
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = match state.store.write_probe().await {
        Ok(()) => json!({"ok": true}),
        Err(err) => {
            tracing::warn!(error = ?err, "readiness: the database refused a write");
            json!({"ok": false, "message": "the database refused a write (see the server log)"})
        }
    };
    let disk = state.disk.clone();
    let spaces = tokio::task::spawn_blocking(move || disk.measure_all()).await.unwrap_or_default();
    let low_water = state.disk.settings().low_water_bytes;
    let above_low_water = |space: &crate::disk_space::Space| space.free_bytes >= low_water;
    let folders: Vec<Value> = spaces
        .iter()
        .map(|space| {
            json!({
                "role": space.role,
                "path": space.path,
                "free_bytes": space.free_bytes,
                "total_bytes": space.total_bytes,
                "ok": above_low_water(space),
            })
        })
        .collect();
    let reserve = state.disk.reserve_held() || state.disk.settings().reserve_bytes == 0;
    // A folder that could not be measured is left out of `spaces`: that fails the check too.
    let every_folder_measured = spaces.len() == crate::disk_space::Role::ALL.len();
    let disk_ok = reserve && every_folder_measured && spaces.iter().all(above_low_water);
    let worker = &state.paths.worker_program;
    let worker_ok = is_executable(worker);
    let slots = state.inventory.slots();
    let gpus = slots.iter().filter(|slot| slot.memory_total.is_some()).count();
    let checks = json!({
        "database": database,
        "disk": {"ok": disk_ok, "low_water_bytes": low_water, "reserve_held": state.disk.reserve_held(), "folders": folders},
        "worker": {"ok": worker_ok, "path": worker},
        "devices": {"ok": !slots.is_empty(), "slots": slots.len(), "gpus": gpus},
        "backup": backup_check(&state.backups),
        "tls": tls_check(state.transport),
    });
    let ready = ["database", "disk", "worker", "devices"].iter().all(|name| checks[name]["ok"] == true);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready, "checks": checks})))
}

/// The backups' check: a warning (`ok: false`) once two scheduled periods passed without a good
/// snapshot. It is not among the checks that make the server unready: a late backup is the
/// admin's to fix, and the queue works meanwhile.
fn backup_check(backups: &crate::backup::BackupStatus) -> Value {
    let age = backups.last_good_age().map(|age| age.as_secs());
    match backups.overdue_warning() {
        Some(warning) => json!({"ok": false, "warning": warning, "last_good_age_secs": age}),
        None => json!({"ok": true, "last_good_age_secs": age}),
    }
}

/// `tls`: a warning, never a failure (a server in clear on a trusted network still works).
fn tls_check(transport: crate::tls::Transport) -> Value {
    match transport.clear_text_warning() {
        Some(warning) => json!({"ok": true, "tls": false, "warning": warning}),
        None => json!({"ok": true, "tls": transport.tls}),
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}
