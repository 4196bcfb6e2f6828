//! A disk that fills up under a running server, for real: the data dir is a small tmpfs mounted
//! by the test (root only, as CI runs; elsewhere a loud SKIPPED line). The queue must never
//! stall: the job that hit the full disk goes back to the queue naming the disk, writes answer
//! 507, nothing half-written stays, and once there is room again every job runs to the end
//! without a restart, each epoch counted once.

use crate::helpers::{small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use crate::small_disk::{temporary_files, SmallDisk};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(300);
/// Phase 1 (the head) has many short epochs, so the disk fills in the middle of it.
const PHASE1_EPOCHS: u64 = 60;

/// Q1 shrunk, with a long phase 1.
fn spec(name: &str) -> Value {
    let mut spec = small_spec(name);
    spec["phases"][0]["epochs"] = PHASE1_EPOCHS.into();
    spec
}

/// A server whose data dir is a fresh tmpfs of 1.2 GB (three Q1-sized VGG16 jobs keep about
/// 0.6 GB), with three jobs submitted and the first one in its second epoch of phase 1; `None`
/// when the test is skipped.
async fn three_jobs_on_a_small_disk(test: &str) -> Option<(TestApp, SmallDisk, tempfile::TempDir, Vec<String>)> {
    let temp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&temp.path().join("data"), "1200m", test)?;
    write_dataset(temp.path(), 6, 2, 3);
    write_vgg16_weights(&temp.path().join("weights/vgg16.safetensors"));
    let args = ["--disk-low-water-gb", "0.02", "--disk-reserve-mb", "8"].map(String::from).to_vec();
    let app = TestApp::spawn_in(temp.path(), Options { args, ..Options::default() });
    let ids =
        vec![app.submit(&spec("first")).await, app.submit(&spec("second")).await, app.submit(&spec("third")).await];
    wait_for_phase1_epoch(&app, &ids[0], 2).await;
    Some((app, disk, temp, ids))
}

/// Waits until job `id` is training epoch `epoch` of phase 1 or later.
async fn wait_for_phase1_epoch(app: &TestApp, id: &str, epoch: u64) {
    app.wait_for(id, WAIT, |job| {
        job["state"] == "running" && job["progress"]["phase"] == 1 && job["progress"]["epoch"].as_u64() >= Some(epoch)
    })
    .await;
}

/// Waits for `check` within `limit`, panicking with the job and the server log after it.
async fn within(app: &TestApp, id: &str, limit: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
        if check(&job) {
            return job;
        }
        assert!(
            started.elapsed() < limit,
            "{what} within {limit:?}: {job:#}\n--- server log ---\n{}",
            app.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job succeeded, its epochs each stored once, and nothing half-written is left.
async fn all_finish_with_every_epoch_once(app: &TestApp, ids: &[String], data: &Path) {
    for id in ids {
        let (job, log) = app.finished(id, WAIT).await;
        assert_eq!(job["state"], "succeeded", "{job:#}\n{log}\n--- server log ---\n{}", app.server_log());
        let (_, metrics) = app.get(&format!("/api/jobs/{id}/metrics")).await;
        let epochs = TestApp::epochs_of(&metrics);
        let expected: Vec<(u64, u64)> = (1..=PHASE1_EPOCHS).map(|epoch| (1, epoch)).chain([(2, 1)]).collect();
        assert_eq!(epochs, expected, "{id}");
    }
    assert_eq!(temporary_files(data), Vec::<std::path::PathBuf>::new(), "no partial file survives");
}

async fn database_is_intact(data: &Path) {
    let store = trainq::store::Store::open(data).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn a_disk_filled_during_training_stops_the_job_naming_the_disk_and_everything_resumes_once_it_is_freed() {
    let Some((app, disk, temp, ids)) = three_jobs_on_a_small_disk("the data dir filling during training").await else {
        return;
    };
    let data = temp.path().join("data");
    disk.fill("filler");

    // Within 10 s the job is off its device and back in line, its reason naming the disk.
    let job = within(&app, &ids[0], Duration::from_secs(10), "the job waits for disk space", |job| {
        job["state"] == "queued"
            && job["pending_reason"].as_str().is_some_and(|reason| reason.contains("waiting for disk space"))
    })
    .await;
    let reason = job["pending_reason"].as_str().unwrap();
    assert!(reason.contains(&data.display().to_string()), "{reason}");
    assert!(job["notes"].to_string().contains("No space left on device"), "{job:#}");
    let (_, second) = app.get(&format!("/api/jobs/{}", ids[1])).await;
    assert_eq!(second["state"], "queued", "nothing else starts on a full disk: {second:#}");
    assert_eq!(temporary_files(&data), Vec::<std::path::PathBuf>::new(), "the failed checkpoint left no temp file");

    // The failed checkpoint's temp file gave its bytes back; the rest of the disk fills too. The
    // server gives up its reserve, so writes answer 507 naming the disk; reads keep working; the
    // server says it is not ready.
    disk.fill("filler-2");
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = app.post("/api/jobs", &spec("refused")).await;
        if status != StatusCode::CREATED || started.elapsed() > Duration::from_secs(5) {
            break (status, body);
        }
        app.client
            .post(app.url(&format!("/api/jobs/{}/cancel", body["jobs"][0]["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"], "insufficient storage");
    assert_eq!(body["detail"]["path"], data.display().to_string());
    assert!(body["detail"]["free_bytes"].as_u64().is_some(), "{body}");
    let queued = app.all_jobs("state=queued").await;
    assert_eq!(queued.len(), 3, "no refused job was queued: {queued:#?}");
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready:#}");
    assert_eq!(ready["checks"]["disk"]["ok"], false, "{ready:#}");
    // Within a scheduling pass the server gives up its reserve, so its own state writes land.
    let started = Instant::now();
    let metrics = loop {
        let (_, metrics) = app.text("/metrics").await;
        if metrics.contains("trainq_disk_reserve_held 0") || started.elapsed() > Duration::from_secs(5) {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("trainq_disk_reserve_held 0"), "{metrics}\n{}", app.server_log());
    assert!(metrics.contains("trainq_disk_free_bytes{folder=\"data\""), "{metrics}");
    let (status, body) = app.post("/api/jobs", &spec("refused")).await;
    assert_eq!(
        (status, &body["detail"]["path"]),
        (StatusCode::INSUFFICIENT_STORAGE, &Value::from(data.display().to_string()))
    );

    // Room again: no restart, the job resumes from its checkpoint and the others run after it.
    std::fs::remove_file(data.join("filler")).unwrap();
    std::fs::remove_file(data.join("filler-2")).unwrap();
    all_finish_with_every_epoch_once(&app, &ids, &data).await;
    let outcomes = app.run_outcomes(&ids[0]).await;
    assert_eq!(outcomes, ["storage", "succeeded"]);
    let (_, log) = app.text(&format!("/api/jobs/{}/log", ids[0])).await;
    assert!(log.contains("resumed from the checkpoint after phase 1"), "{log}");
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready:#}");
    drop(app);
    database_is_intact(&data).await;
    drop(disk);
}

#[tokio::test]
async fn a_cache_that_fills_the_disk_is_evicted_first_and_every_job_finishes_without_help() {
    let Some((app, disk, temp, ids)) = three_jobs_on_a_small_disk("the cache filling the disk").await else { return };
    let data = temp.path().join("data");
    // Old cache entries (from other datasets, long unused) take every free byte.
    let cache = data.join("cache");
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let mut stale = Vec::new();
    for index in 0.. {
        let path = cache.join(format!("stale-{index:03}.bin"));
        let mut file = std::fs::File::create(&path).unwrap();
        let written = std::io::Write::write_all(&mut file, &vec![3u8; 16 << 20]);
        file.set_modified(an_hour_ago).unwrap();
        stale.push(path);
        if let Err(err) = written {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
            break;
        }
    }
    // Nobody frees anything: the server evicts the stale entries and every job finishes.
    all_finish_with_every_epoch_once(&app, &ids, &data).await;
    let evicted = stale.iter().filter(|path| !path.exists()).count();
    assert!(evicted > 0, "the cache gave way first");
    let outcomes = app.run_outcomes(&ids[0]).await;
    assert!(outcomes == ["succeeded"] || outcomes == ["storage", "succeeded"], "{outcomes:?}");
    drop(app);
    database_is_intact(&data).await;
    drop(disk);
}
