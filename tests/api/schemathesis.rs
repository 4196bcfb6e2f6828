//! Schemathesis (from PyPI; `deploy/test.sh` installs it into `~/.cache/trainq/schemathesis`)
//! against a real server holding a finished job, with a token: every operation of
//! `/api/openapi.json`, every check. No server error, every answer as the document says.

use crate::helpers::{fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp, FAKE_WORKER};
use std::path::PathBuf;
use std::time::Duration;

/// `st` from `TRAINQ_SCHEMATHESIS`, else the test script's venv, else `PATH`.
fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TRAINQ_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let venv = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/trainq/schemathesis/bin/st"));
    if let Some(venv) = venv.filter(|path| path.exists()) {
        return Some(venv);
    }
    std::process::Command::new("st")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|_| PathBuf::from("st"))
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let Some(st) = schemathesis() else {
        eprintln!(
            "SKIPPED: schemathesis is not installed (deploy/test.sh installs it; or set TRAINQ_SCHEMATHESIS to `st`)"
        );
        return;
    };
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    // `/readyz` answers 503 below the disk's low-water mark, which a test machine may be under.
    let args = vec![String::from("--disk-low-water-gb"), String::from("0")];
    let app = TestApp::spawn(Options { worker: Some(worker), args, ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let finished = app.submit(&small_spec("finished")).await;
    app.wait_for_state(&finished, "succeeded", Duration::from_secs(60)).await;
    // Deleting the finished job would leave every other operation only its 410s: the delete and
    // the admin's operations run afterwards, as an admin, on a job of their own.
    let deletable = app.submit(&small_spec("deletable")).await;
    app.wait_for_state(&deletable, "succeeded", Duration::from_secs(60)).await;
    // The event streams are checked too, event by event: schemathesis reads a stream until it
    // ends, has 20 events or is silent for its request timeout (`schemathesis.toml` gives the
    // streams a short one), and checks each complete event against the document. A followed log
    // is plain text and, for this finished job, ends at once.
    // The dataset import's body is a zip, which schemathesis cannot make (no serializer for
    // `application/zip`): tests/api/dataset_import.rs sends it real and hostile archives.
    let others = format!("^({RETENTION_OPERATIONS}|rotate_own_token|import_dataset)$");
    run(&st, &app, &finished, &app.tokens["alice"], &["--exclude-operation-id-regex", &others]).await;
    // A new token for the caller ends the token the run sends: as a user of its own, before the
    // admin's run, whose account changes (disable, rotate) may reach that user too.
    run(&st, &app, &deletable, &app.tokens["bob"], &["--include-operation-id-regex", "^rotate_own_token$"]).await;
    let retention = format!("^({RETENTION_OPERATIONS})$");
    run(&st, &app, &deletable, &app.tokens["root"], &["--include-operation-id-regex", &retention]).await;
}

/// Operations that delete a job's files or act on every job or account: run last, on a job of
/// their own, as an admin.
const RETENTION_OPERATIONS: &str = "delete_job|gc|usage|list_users|import_users|patch_user|rotate_user_token";

/// Runs schemathesis over `app`'s operations that `filter` selects, as the holder of `token`,
/// with `job` as every `{id}`; fails the test on any finding.
async fn run(st: &std::path::Path, app: &TestApp, job: &str, token: &str, filter: &[&str]) {
    let reports = app.root.join("schemathesis");
    let output = tokio::process::Command::new(st)
        // Its example cache goes in the working folder: the test's, not the source tree.
        .current_dir(&app.root)
        .env("TRAINQ_FINISHED_JOB", job)
        .arg("--config-file")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/schemathesis.toml"))
        .args([
            "run",
            &app.url("/api/openapi.json"),
            "--checks",
            "all",
            "--workers",
            "1",
            "--max-examples",
            "20",
            "--seed",
            "17",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(filter)
        .args(["--request-timeout", "10", "--no-color", "--report", "junit", "--report-dir"])
        .arg(&reports)
        .output()
        .await
        .expect("running schemathesis");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // Shown with `--nocapture`: what was run and what it found.
    eprintln!("{text}");
    assert!(
        output.status.success(),
        "schemathesis failed (job {job}):\n{text}\n--- server log ---\n{}",
        app.server_log()
    );
}
