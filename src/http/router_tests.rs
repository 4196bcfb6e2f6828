//! The real router answered in process with `tower::ServiceExt::oneshot`: what axum's extractors
//! and the auth layer reject must come back as the API's JSON error naming the field.

use super::{router, AppState, Limits, Paths, RateLimiter};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use std::sync::Arc;
use tower::ServiceExt;

/// A test server's state over a temp folder: a fresh database, one CPU slot, no scheduler loop.
pub(super) struct TestRouter {
    pub router: Router,
    pub token: String,
    _dir: tempfile::TempDir,
}

pub(super) async fn test_router() -> TestRouter {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let jobs_dir = data_dir.join("jobs");
    let store = crate::store::Store::open(&data_dir).await.unwrap();
    let token = crate::domain::user::new_token();
    assert!(store.add_user("alice", false, &token).await.unwrap());
    let disk = crate::disk_space::Disk::new(
        &data_dir,
        &jobs_dir,
        &data_dir.join("cache"),
        crate::disk_space::DiskSettings { low_water_bytes: 0, reserve_bytes: 0, max_storage_attempts: 1 },
    );
    let inventory = crate::devices::Inventory::cpu_only(1, 1);
    let scheduler = crate::scheduler::SchedulerHandle::default();
    let events = crate::events::EventBus::new();
    let telemetry = crate::telemetry::Telemetry::new();
    let supervisor = crate::supervisor::Supervisor::new(
        store.clone(),
        crate::supervisor::SupervisorConfig {
            data_dir: data_dir.clone(),
            worker_program: data_dir.join("no-worker"),
            kill_grace: std::time::Duration::from_secs(1),
            shutdown_grace: std::time::Duration::from_secs(1),
            executor: crate::supervisor::Executor::Local,
            cpu_memory_limit: None,
        },
        scheduler.notifier(),
        events.clone(),
        inventory.clone(),
        disk.clone(),
        telemetry.clone(),
    );
    let state = AppState::from(super::AppParts {
        telemetry,
        store,
        scheduler,
        supervisor,
        inventory,
        events,
        disk,
        paths: Arc::new(Paths {
            data_dir: data_dir.clone(),
            datasets: data_dir.join("datasets"),
            weights: data_dir.join("weights"),
            static_dir: None,
            worker_program: data_dir.join("no-worker"),
        }),
        limits: Arc::new(Limits {
            rate: RateLimiter::new(10_000),
            max_jobs_per_user: 10,
            max_epochs: 100,
            max_image_side: 1024,
            half_life_secs: 3600.0,
            max_disk_bytes_per_user: None,
            max_dataset_bytes: 1 << 30,
            token_ttl_secs: None,
            time_limits: crate::domain::time_limit::TimeLimitPolicy::default(),
            budgets: None,
        }),
        tokens: Arc::default(),
        backups: crate::backup::BackupStatus::new(None),
        transport: crate::tls::Transport { tls: false, loopback_only: true },
        welcome: super::WelcomeMail::default(),
        recent_inputs: crate::submit::RecentInputs::default(),
    });
    TestRouter { router: router(state), token, _dir: dir }
}

/// Sends `request` through the router; the status, content type and body parsed as JSON.
pub(super) async fn send(router: &Router, request: Request<Body>) -> (StatusCode, String, serde_json::Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, content_type, body)
}

fn get(uri: &str, token: &str) -> Request<Body> {
    Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap()
}

fn relay_post(content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::post(format!("/api/worker/jobs/{}/lines", crate::domain::JobId::new()));
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

/// Asserts the answer is the API's JSON error with `status` naming `field`.
#[track_caller]
fn assert_json_error(answer: (StatusCode, String, serde_json::Value), status: StatusCode, field: &str) {
    let (got_status, content_type, body) = answer;
    assert_eq!(got_status, status, "{body}");
    assert!(content_type.starts_with("application/json"), "{content_type}: {body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body["detail"]["field"], field, "{body}");
    assert!(body["detail"]["message"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
}

#[tokio::test]
async fn every_rejection_is_the_json_error_naming_the_field() {
    let app = test_router().await;
    let (router, token) = (&app.router, app.token.as_str());
    let job = crate::domain::JobId::new();

    // A query value of the wrong type (a bool), on a route with a typed query.
    let answer = send(router, get(&format!("/api/jobs/{job}/log?follow=maybe"), token)).await;
    assert_json_error(answer, StatusCode::BAD_REQUEST, "follow");
    // A query string that is not form-encoded text.
    let answer = send(router, get("/api/compare?ids=%FF", token)).await;
    assert_json_error(answer, StatusCode::BAD_REQUEST, "ids");
    // A path segment that does not decode to text.
    let answer = send(router, get("/api/jobs/%FF%FE/metrics", token)).await;
    assert_json_error(answer, StatusCode::BAD_REQUEST, "id");

    // JSON bodies: malformed, of the wrong type, and sent without the JSON content type.
    let answer = send(router, relay_post(Some("application/json"), "{\"seq\": 1,")).await;
    assert_json_error(answer, StatusCode::BAD_REQUEST, "(body)");
    let answer = send(router, relay_post(Some("application/json"), r#"{"seq": "one", "run": "r", "lines": []}"#)).await;
    assert_json_error(answer, StatusCode::UNPROCESSABLE_ENTITY, "seq");
    let answer = send(router, relay_post(Some("application/json"), r#""a string""#)).await;
    assert_json_error(answer, StatusCode::UNPROCESSABLE_ENTITY, "(body)");
    let answer = send(router, relay_post(None, r#"{"seq": 1, "run": "r", "lines": []}"#)).await;
    assert_json_error(answer, StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type");

    // Two tokens are ambiguous, even when both are the same valid one.
    let request = Request::get("/api/me")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_json_error(send(router, request).await, StatusCode::BAD_REQUEST, "Authorization");
    // One is fine.
    let (status, _, body) = send(router, get("/api/me", token)).await;
    assert_eq!((status, body["name"].as_str()), (StatusCode::OK, Some("alice")));
}

/// Every route `router` serves, as OpenAPI spells them (axum cannot list a router's routes). The
/// test below checks that each is described and answered, and that nothing else is described: a
/// new route belongs here and in `openapi::ApiDoc`. The relays' internal route is left out.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/jobs"),
    ("get", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("post", "/api/jobs/{id}/cancel"),
    ("post", "/api/jobs/{id}/resubmit"),
    ("get", "/api/jobs/{id}/events"),
    ("get", "/api/jobs/{id}/metrics"),
    ("get", "/api/jobs/{id}/plots/{file}"),
    ("get", "/api/jobs/{id}/log"),
    ("get", "/api/jobs/{id}/artifacts"),
    ("get", "/api/jobs/{id}/artifacts/{name}"),
    ("get", "/api/jobs/{id}/predictions.csv"),
    ("post", "/api/jobs/{id}/predict"),
    ("post", "/api/jobs/{id}/cam"),
    ("get", "/api/groups/{id}"),
    ("get", "/api/compare"),
    ("get", "/api/report"),
    ("get", "/api/compare/plots/{file}"),
    ("get", "/api/events"),
    ("get", "/api/datasets"),
    ("get", "/api/weights"),
    ("get", "/api/backbones"),
    ("get", "/api/examples"),
    ("get", "/api/devices"),
    ("get", "/api/me"),
    ("put", "/api/me"),
    ("get", "/api/admin/notifications"),
    ("get", "/api/openapi.json"),
    ("get", "/api/docs"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("patch", "/api/jobs/{id}"),
    ("delete", "/api/jobs/{id}"),
    ("get", "/api/admin/usage"),
    ("post", "/api/admin/gc"),
    ("get", "/api/version"),
    ("get", "/api/admin/backup"),
    ("put", "/api/admin/datasets/{name}"),
    ("get", "/api/admin/users"),
    ("post", "/api/admin/users"),
    ("patch", "/api/admin/users/{name}"),
    ("post", "/api/admin/users/{name}/token"),
    ("post", "/api/me/token"),
    ("post", "/api/admin/reservations"),
    ("get", "/api/admin/reservations"),
    ("delete", "/api/admin/reservations/{name}"),
];

#[tokio::test]
async fn the_openapi_document_is_3_1_and_describes_every_route() {
    let app = test_router().await;
    let (status, content_type, document) =
        send(&app.router, Request::get("/api/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/json"), "{content_type}");
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1.")), "{}", document["openapi"]);
    let paths = document["paths"].as_object().expect("paths");
    for (method, path) in ROUTES {
        let operation = &paths.get(*path).unwrap_or_else(|| panic!("{path} is not described"))[*method];
        assert!(operation.is_object(), "{method} {path} is not described");
        assert!(
            operation["responses"].as_object().is_some_and(|answers| answers.contains_key("400")),
            "{method} {path}: no error answers"
        );
        // Every route the router has is reachable: not the API's 404 for an unknown route.
        let uri = path
            .replace("{id}", &crate::domain::JobId::new().to_string())
            .replace("{file}", "loss.svg")
            .replace("{name}", "x");
        let request = Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap();
        if !uri.ends_with("/events") && *path != "/api/events" {
            let (status, _, body) = send(&app.router, request).await;
            assert!(
                body.get("detail").is_none_or(|_| body["error"] != "no such API route"),
                "{method} {uri}: {status} {body}"
            );
        }
    }
    let operations: Vec<&serde_json::Value> =
        paths.values().filter_map(|item| item.as_object()).flat_map(|item| item.values()).collect();
    assert_eq!(
        operations.len(),
        ROUTES.len(),
        "every described operation is in ROUTES (the list of the router's routes)"
    );
    let ids: std::collections::BTreeSet<&str> =
        operations.iter().filter_map(|operation| operation["operationId"].as_str()).collect();
    assert_eq!(ids.len(), ROUTES.len(), "operation ids are unique: {ids:?}");
    // The bearer scheme, and the answers of one shape.
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let created = &paths["/api/jobs"]["post"]["responses"]["201"];
    assert_eq!(created["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Submitted", "{created}");
    assert!(created["headers"]["Location"].is_object(), "{created}");
    for schema in ["JobSpec", "JobView", "Job", "ErrorBody", "Page"] {
        assert!(document["components"]["schemas"][schema].is_object(), "no schema {schema}");
    }

    // The page people read: every operation, no script or stylesheet from elsewhere.
    let (status, content_type, page) = send(&app.router, Request::get("/api/docs").body(Body::empty()).unwrap()).await;
    let page = page.as_str().expect("HTML");
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    for (_, path) in ROUTES {
        assert!(page.contains(&format!("<code>{path}</code>")), "{path} is not on the page");
    }
    assert!(
        !page.contains("<script") && !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
}
