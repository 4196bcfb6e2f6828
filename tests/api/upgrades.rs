//! Upgrades: today's server on a database the first release made, with a job in every state; and
//! a migration that fails leaves the database as it was and stops the start, naming it.
//!
//! How the old database is made: a fresh SQLite file gets only `migrations/0001_jobs.sql`,
//! applied by sqlx's migrator as the first release's server applied it (so `_sqlx_migrations`
//! holds its row and checksum), then rows written with that schema's columns only: one job per
//! state, the curves of those that trained, and artifact files in their job folders. The specs
//! are stored as the validated spec's JSON, as that release stored them.

use crate::helpers::{
    client_with, fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp, USERS,
};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::path::Path;
use std::time::Duration;

/// One job of the old database: its id, state, stored curve rows and artifact names.
struct OldJob {
    id: String,
    state: &'static str,
    epochs: usize,
    artifacts: Vec<&'static str>,
}

async fn open(database: &Path) -> SqlitePool {
    SqlitePool::connect_with(SqliteConnectOptions::new().filename(database).create_if_missing(true)).await.unwrap()
}

/// Writes `data/trainq.db` at schema 0001 with a job in each state, and their job folders.
async fn earliest_database(data: &Path) -> Vec<OldJob> {
    std::fs::create_dir_all(data).unwrap();
    let first_migration = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_jobs.sql");
    std::fs::copy(&source, first_migration.path().join("0001_jobs.sql")).unwrap();
    let pool = open(&data.join("trainq.db")).await;
    sqlx::migrate::Migrator::new(first_migration.path()).await.unwrap().run(&pool).await.unwrap();
    let spec = trainq::domain::JobSpec::parse(&serde_json::to_vec(&small_spec("old")).unwrap()).unwrap();
    let spec = serde_json::to_string(&spec).unwrap();
    let final_metrics = r#"{"train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}"#;
    let states: [(&str, usize, Vec<&str>); 5] = [
        ("queued", 0, vec![]),
        ("running", 1, vec!["checkpoints/epoch1.safetensors"]),
        ("succeeded", 2, vec!["final.safetensors", "metrics.json", "plots/accuracy.svg"]),
        ("failed", 1, vec!["metrics.json"]),
        ("cancelled", 0, vec![]),
    ];
    let mut jobs = Vec::new();
    for (state, epochs, artifacts) in states {
        let id = trainq::domain::JobId::new().to_string();
        let ended = matches!(state, "succeeded" | "failed" | "cancelled");
        sqlx::query(
            "INSERT INTO jobs (id, name, state, spec, device, submitted_at, started_at, finished_at, error, final_metrics, attempts) \
             VALUES (?, ?, ?, ?, ?, '2025-09-01T10:00:00Z', ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(format!("old-{state}"))
        .bind(state)
        .bind(&spec)
        .bind((state != "queued" && state != "cancelled").then_some("cpu0"))
        .bind((epochs > 0).then_some("2025-09-01T10:01:00Z"))
        .bind(ended.then_some("2025-09-01T10:05:00Z"))
        .bind((state == "failed").then_some("worker exited with code 3"))
        .bind((state == "succeeded").then_some(final_metrics))
        .bind(i64::from(epochs > 0))
        .execute(&pool)
        .await
        .unwrap();
        for epoch in 1..=epochs {
            sqlx::query(
                "INSERT INTO epoch_metrics (job_id, phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds) \
                 VALUES (?, 1, ?, 0.5, 0.75, NULL, NULL, 1.5)",
            )
            .bind(&id)
            .bind(epoch as i64)
            .execute(&pool)
            .await
            .unwrap();
        }
        let folder = data.join("jobs").join(&id).join("artifacts");
        for name in &artifacts {
            let file = folder.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, format!("{name} of {id}")).unwrap();
        }
        jobs.push(OldJob { id, state, epochs, artifacts });
    }
    pool.close().await;
    jobs
}

/// The schema and the applied migrations of a database, as text, to compare before and after.
async fn schema_of(database: &Path) -> String {
    let pool = open(database).await;
    let objects: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetch_all(&pool).await.unwrap();
    let migrations: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let jobs: Vec<(String, String)> =
        sqlx::query_as("SELECT id, state FROM jobs ORDER BY seq").fetch_all(&pool).await.unwrap();
    pool.close().await;
    format!("{objects:?}\n{migrations:?}\n{jobs:?}")
}

/// Token files for the test users, so `TestApp::spawn_in` does not create them (with the CLI,
/// which would migrate the database before the server does): the test makes its own admin.
fn skip_test_users(root: &Path) {
    std::fs::create_dir_all(root.join("tokens")).unwrap();
    for (name, _) in USERS {
        std::fs::write(root.join("tokens").join(name), "not-a-token").unwrap();
    }
}

/// The highest migration number in `migrations/`: the schema this build brings.
fn newest_migration() -> i64 {
    std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.split('_').next()?.parse().ok())
        .max()
        .unwrap()
}

#[tokio::test]
async fn todays_server_serves_every_job_of_a_database_the_first_schema_made() {
    let root = tempfile::tempdir().unwrap();
    let old_jobs = earliest_database(&root.path().join("data")).await;
    skip_test_users(root.path());
    write_dataset(root.path(), 2, 1, 1);
    write_vgg16_weights(&root.path().join("weights/vgg16.safetensors"));
    // Started jobs would train; this worker keeps them running, so every job stays readable.
    let worker = fake_worker(root.path(), "worker.sh", "exec sleep 60");
    let app = TestApp::spawn_in(root.path(), Options { worker: Some(worker), ..Options::default() });
    // The CLI's local command beside the running server, on the migrated database.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["user", "add", "upgrader", "--admin", "--data-dir"])
        .arg(root.path().join("data"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let admin = client_with(String::from_utf8(output.stdout).unwrap().trim());
    let get = |path: String| {
        let request = admin.get(app.url(&path));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, version) = get(String::from("/api/version")).await;
    assert_eq!(status, StatusCode::OK, "{version}");
    assert_eq!(version["schema_version"], newest_migration(), "{version}");
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let commit = version["git_commit"].as_str().unwrap();
    assert!(commit == "unknown" || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_trainq")).arg("--version").output().unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    let expected = format!("trainq {} (commit {commit}, schema {})", env!("CARGO_PKG_VERSION"), newest_migration());
    assert_eq!(line.trim(), expected);

    let (status, list) = get(String::from("/api/jobs?limit=100")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed: Vec<&str> = list["jobs"].as_array().unwrap().iter().filter_map(|job| job["id"].as_str()).collect();
    for old in &old_jobs {
        assert!(listed.contains(&old.id.as_str()), "{} ({}) is listed: {list:#}", old.id, old.state);
        let (status, job) = get(format!("/api/jobs/{}", old.id)).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(job["name"], format!("old-{}", old.state));
        match old.state {
            // A job the old server left running goes back to the queue (and may start again).
            "queued" | "running" => assert!(job["state"] == "queued" || job["state"] == "running", "{job:#}"),
            ended => assert_eq!(job["state"], ended, "{job:#}"),
        }
        if old.state == "succeeded" {
            assert_eq!(job["final_metrics"]["test_acc"], 0.9, "{job:#}");
        }
        let (status, metrics) = get(format!("/api/jobs/{}/metrics", old.id)).await;
        assert_eq!(status, StatusCode::OK, "{metrics}");
        assert_eq!(TestApp::epochs_of(&metrics).len(), old.epochs, "{}: {metrics:#}", old.state);
        let (status, artifacts) = get(format!("/api/jobs/{}/artifacts", old.id)).await;
        assert_eq!(status, StatusCode::OK, "{artifacts}");
        let names: Vec<&str> = artifacts.as_array().unwrap().iter().filter_map(|file| file["name"].as_str()).collect();
        let mut expected = old.artifacts.clone();
        expected.sort_unstable();
        assert_eq!(names, expected, "{}: {artifacts:#}", old.state);
        for name in &old.artifacts {
            let response = admin.get(app.url(&format!("/api/jobs/{}/artifacts/{name}", old.id))).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.text().await.unwrap(), format!("{name} of {}", old.id));
        }
    }
}

#[tokio::test]
async fn a_migration_that_fails_leaves_the_database_as_it_was_and_the_server_exits_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    earliest_database(&data).await;
    // A table in the way of the newest migration's: every migration before it would succeed.
    let pool = open(&data.join("trainq.db")).await;
    sqlx::query("CREATE TABLE job_deps (in_the_way INTEGER)").execute(&pool).await.unwrap();
    pool.close().await;
    let before = schema_of(&data.join("trainq.db")).await;

    let started = std::time::Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["serve", "--no-gpu", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the start must fail: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr.contains("migration 0010 (job deps) failed"), "names the migration: {stderr}");
    assert!(stderr.contains("job_deps already exists"), "and SQLite's reason: {stderr}");
    assert!(output.stdout.is_empty(), "it never listened");
    assert_eq!(schema_of(&data.join("trainq.db")).await, before, "every pending migration was rolled back");
}
