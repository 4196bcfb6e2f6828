//! Backups: snapshots taken (`trainq admin backup`, through `GET /api/admin/backup`) while
//! clients keep submitting are each whole, and each holds every job the one before held; a
//! server started on the last one plus a copy of `jobs/` serves its jobs and resumes the one
//! that was running. Scheduled snapshots are kept, pruned and reported; a folder that cannot take
//! them is named.

use crate::helpers::{fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use reqwest::StatusCode;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Jobs named `long` write a checkpoint and train until stopped, or, started again with the
/// checkpoint there, resume and finish; every other job writes an artifact and finishes at once.
const WORKER: &str = r#"
if grep -q '"name": "long"' "$3"; then
  if [ -f state/checkpoint ]; then
    echo '@trainq {"event":"resumed","phase":1,"epoch":1,"step":3}'
    echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
    exit 0
  fi
  echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.1}'
  mkdir -p state && touch state/checkpoint
  echo '@trainq {"event":"checkpoint","phase":1,"epoch":1,"step":3}'
  exec sleep 120
fi
mkdir -p artifacts && echo "model of $(basename "$PWD")" > artifacts/model.txt
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.1}'
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

/// A server with [`WORKER`], three slots, no cap on queued jobs, and `args`.
fn spawn(scripts: &Path, args: &[&str]) -> TestApp {
    let worker = fake_worker(scripts, "worker.sh", WORKER);
    let mut all_args = vec![String::from("--max-jobs-per-user"), String::from("100000")];
    all_args.extend(args.iter().map(|arg| arg.to_string()));
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(3), args: all_args });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    app
}

/// `PRAGMA integrity_check` of a snapshot, and the ids and states of its jobs.
async fn read_snapshot(path: &Path) -> (String, Vec<(String, String)>) {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let (integrity,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
    let jobs = sqlx::query_as("SELECT id, state FROM jobs ORDER BY seq").fetch_all(&pool).await.unwrap();
    pool.close().await;
    (integrity, jobs)
}

/// `trainq admin backup --to target` as `root`, against `app`.
fn admin_backup(app: &TestApp, target: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["admin", "backup", "--to"])
        .arg(target)
        .env("HOME", &app.root)
        .env("TRAINQ_URL", &app.address)
        .env("TRAINQ_TOKEN", &app.tokens["root"])
        .output()
        .unwrap()
}

/// Copies the folder `from` into `to`, as an admin's `cp -a` would.
fn copy_folder(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_taken_while_eight_clients_submit_are_whole_growing_and_restore_with_the_jobs_folder() {
    let scripts = tempfile::tempdir().unwrap();
    let app = spawn(scripts.path(), &[]);
    let long = app.submit(&small_spec("long")).await;
    app.wait_for(&long, WAIT, |job| job["state"] == "running" && !job["resume_point"].is_null()).await;

    // Eight clients (four as alice, four as bob) submit until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client_number in 0..8 {
        let token = app.tokens[if client_number % 2 == 0 { "alice" } else { "bob" }].clone();
        let (url, stop) = (app.url("/api/jobs"), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = crate::helpers::client_with(&token);
            let mut submitted = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let spec = small_spec(&format!("c{client_number}-{submitted}"));
                let response = client.post(&url).json(&spec).send().await.unwrap();
                let status = response.status();
                assert_eq!(status, StatusCode::CREATED, "{}", response.text().await.unwrap());
                submitted += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            submitted
        }));
    }

    // A snapshot every second for 20 s, through the client and the API.
    let snapshots = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let started = Instant::now();
    for number in 0..20 {
        let next = started + Duration::from_secs(number);
        tokio::time::sleep_until(next.into()).await;
        let path = snapshots.path().join(format!("snapshot-{number:02}.db"));
        let output = tokio::task::block_in_place(|| admin_backup(&app, &path));
        assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stderr), app.server_log());
        paths.push(path);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut submitted = 0;
    for client in clients {
        submitted += client.await.unwrap();
    }
    assert!(submitted >= 100, "the clients kept submitting: {submitted}");

    let mut previous: BTreeSet<String> = BTreeSet::new();
    let mut last_jobs = Vec::new();
    for path in &paths {
        let (integrity, jobs) = read_snapshot(path).await;
        assert_eq!(integrity, "ok", "{}", path.display());
        let ids: BTreeSet<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
        assert!(previous.is_subset(&ids), "{} lost jobs of the snapshot before it", path.display());
        previous = ids;
        last_jobs = jobs;
    }
    let (_, first_jobs) = read_snapshot(&paths[0]).await;
    assert!(last_jobs.len() > first_jobs.len(), "the snapshots saw the submissions go on");
    assert!(last_jobs.iter().any(|(id, state)| *id == long && state == "running"), "{last_jobs:?}");

    // Restore: the last snapshot as the database, beside a copy of the job folders.
    let restored_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(restored_root.path().join("data")).unwrap();
    std::fs::copy(paths.last().unwrap(), restored_root.path().join("data/trainq.db")).unwrap();
    copy_folder(&app.root.join("data/jobs"), &restored_root.path().join("data/jobs"));
    copy_folder(&app.root.join("tokens"), &restored_root.path().join("tokens"));
    write_dataset(restored_root.path(), 2, 1, 1);
    write_vgg16_weights(&restored_root.path().join("weights/vgg16.safetensors"));
    // A script of its own: the first server may be starting `worker.sh` right now, and writing
    // a file that is being executed fails with "Text file busy" (CI saw it once).
    let worker = fake_worker(scripts.path(), "restored-worker.sh", WORKER);
    let restored = TestApp::spawn_in(restored_root.path(), Options { worker: Some(worker), ..Options::default() });
    let admin = crate::helpers::client_with(&restored.tokens["root"]);
    let mut listed = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page: serde_json::Value = admin
            .get(restored.url(&format!("/api/jobs?limit=500{cursor}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.extend(page["jobs"].as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let in_snapshot: BTreeSet<String> = last_jobs.iter().map(|(id, _)| id.clone()).collect();
    assert!(in_snapshot.is_subset(&listed), "every job of the snapshot is listed");
    let succeeded: Vec<&String> =
        last_jobs.iter().filter(|(id, state)| state == "succeeded" && *id != long).map(|(id, _)| id).take(5).collect();
    assert!(!succeeded.is_empty(), "{last_jobs:?}");
    for id in succeeded {
        let url = restored.url(&format!("/api/jobs/{id}/artifacts/model.txt"));
        let response = admin.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap().trim(), format!("model of {id}"));
    }
    // The job that was running goes back to the queue and resumes from its folder's checkpoint.
    let job = restored.wait_for_state(&long, "succeeded", WAIT).await;
    assert_eq!(restored.run_outcomes(&long).await, ["interrupted", "succeeded"], "{job:#}");
    let (_, log) = restored.text(&format!("/api/jobs/{long}/log")).await;
    assert!(log.contains("resumed from the checkpoint"), "{log}");
}

#[tokio::test]
async fn scheduled_snapshots_are_checked_pruned_and_reported_and_a_late_one_is_a_warning() {
    let scripts = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().join("snapshots");
    let dir_text = dir.to_str().unwrap();
    let app = spawn(scripts.path(), &["--backup-dir", dir_text, "--backup-every", "1s", "--backup-keep", "3"]);
    app.submit(&small_spec("one")).await;
    let started = Instant::now();
    let snapshots = || -> Vec<std::path::PathBuf> {
        // Finished snapshots only: one being written has a temporary name after the `.db`.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "db"))
            .collect();
        names.sort();
        names
    };
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // --backup-keep, and for a moment the newest before the oldest is removed.
        assert!(snapshots().len() <= 4, "at most --backup-keep: {:?}", snapshots());
    }
    let mut kept = snapshots();
    while kept.len() != 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "{kept:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        kept = snapshots();
    }
    for path in &kept {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("trainq-") && name.ends_with("Z.db"), "{name}");
    }
    // The newest: the older ones may be pruned while they are read.
    assert_eq!(read_snapshot(kept.last().unwrap()).await.0, "ok");
    let (_, metrics) = app.text("/metrics").await;
    let age_line = metrics
        .lines()
        .find(|line| line.starts_with("trainq_backup_last_good_age_seconds "))
        .unwrap_or_else(|| panic!("{metrics}"));
    let age: f64 = age_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(age < 3.0, "{age_line}");
    let (status, ready) = app.get("/readyz").await;
    assert_eq!((status, &ready["checks"]["backup"]["ok"]), (StatusCode::OK, &serde_json::json!(true)), "{ready:#}");

    // The folder becomes a file: snapshots fail; after two periods /readyz warns and stays 200.
    // Moved away in one step (a snapshot may be under way in it), then a file in its place.
    std::fs::rename(&dir, backups.path().join("moved-away")).unwrap();
    std::fs::write(&dir, b"not a folder").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready:#}");
    assert_eq!(ready["checks"]["backup"]["ok"], false, "{ready:#}");
    assert!(ready["checks"]["backup"]["warning"].as_str().unwrap().contains("two periods"), "{ready:#}");
    assert!(app.server_log().contains("the scheduled backup failed"), "the cause is logged");
}

#[tokio::test]
async fn a_backup_path_that_cannot_be_written_is_a_clear_error() {
    let scripts = tempfile::tempdir().unwrap();
    let app = spawn(scripts.path(), &[]);
    let missing = app.root.join("no-such-folder/copy.db");
    let output = admin_backup(&app, &missing);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot write the backup to {}", missing.display())), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    // A student may not take one.
    let response = app.client.get(app.url("/api/admin/backup")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // --backup-dir under a file: the start stops, naming the folder.
    let file = app.root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["serve", "--no-gpu", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.root.join("other-data"))
        .arg("--backup-dir")
        .arg(file.join("backups"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot write the backup {}", file.join("backups").display())), "{stderr}");
}
