//! The students' terminal client (`trainq login`, `ls`, `show`, `cancel`, `wait`), driven as a
//! student would: the real binary, a real server, a home folder of its own.

use crate::helpers::{fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp, FAKE_WORKER};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `trainq ARGS` with `home` as HOME and nothing from the caller's environment that would log it
/// in; `stdin` is written to it.
fn trainq(home: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TRAINQ_URL")
        .env_remove("TRAINQ_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn without_a_login_every_command_says_how_to_get_one() {
    let home = tempfile::tempdir().unwrap();
    let out = trainq(home.path(), &["ls"], &[], "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("trainq login URL"), "{}", text(&out.stderr));
    // A server but no token: where tokens come from.
    let out = trainq(home.path(), &["wait", "0123abcd"], &[("TRAINQ_URL", "http://127.0.0.1:9")], "");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no token") && stderr.contains("trainq user add"), "{stderr}");
}

#[tokio::test]
async fn a_student_logs_in_lists_waits_and_cancels_from_the_terminal() {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let home = tempfile::tempdir().unwrap();
    let url = app.url("");

    // A wrong token is refused and saves nothing.
    let out = trainq(home.path(), &["login", &url, "--token-stdin"], &[], "not-a-token\n");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let config = home.path().join(".config/trainq/config.toml");
    assert!(!config.exists());
    // The right one is checked and saved where only the student can read it.
    let out = trainq(home.path(), &["login", &url, "--token-stdin"], &[], &format!("{}\n", app.tokens["alice"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("as alice"), "{}", text(&out.stdout));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&config).unwrap().contains(&app.tokens["alice"]));

    let fine = app.submit(&small_spec("fine")).await;
    let failing = app.submit(&small_spec("exit3")).await;
    app.wait_for_state(&fine, "succeeded", WAIT).await;
    app.wait_for_state(&failing, "failed", WAIT).await;
    // Someone else's job is not in `ls`, but is in `ls --all`.
    let bob = crate::helpers::client_with(&app.tokens["bob"]);
    let response = bob.post(app.url("/api/jobs")).json(&small_spec("bobs")).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);

    let out = trainq(home.path(), &["ls"], &[], "");
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&fine[..8]) && table.contains("succeeded") && table.contains("0.900"), "{table}");
    assert!(table.contains(&failing[..8]) && table.contains("failed"), "{table}");
    assert!(!table.contains("bobs"), "{table}");
    let out = trainq(home.path(), &["ls", "--all", "--json"], &[], "");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let out = trainq(home.path(), &["ls", "--state", "failed", "--json"], &[], "");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.iter().map(|row| row["id"].as_str().unwrap()).collect::<Vec<_>>(), [failing.as_str()]);

    // A prefix names a job, like git.
    let out = trainq(home.path(), &["show", &fine[..8]], &[], "");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["id"], fine.as_str());
    assert_eq!(job["spec"]["name"], "fine");
    let out = trainq(home.path(), &["show", "zz"], &[], "");
    assert!(!out.status.success() && text(&out.stderr).contains("not a job id"), "{}", text(&out.stderr));

    // `wait`: 0 when all succeeded, 1 when any failed, 2 when any was cancelled.
    assert_eq!(trainq(home.path(), &["wait", &fine], &[], "").status.code(), Some(0));
    assert_eq!(trainq(home.path(), &["wait", &fine, &failing[..8]], &[], "").status.code(), Some(1));
    let sleeper = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&sleeper, "running", WAIT).await;
    let home_path = home.path().to_path_buf();
    let sleeper_id = sleeper.clone();
    let waiting = std::thread::spawn(move || trainq(&home_path, &["wait", &sleeper_id, &fine], &[], "").status.code());
    let out = trainq(home.path(), &["cancel", &sleeper[..8]], &[], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(waiting.join().unwrap(), Some(2));
    // The environment overrides the saved login.
    let out = trainq(home.path(), &["ls"], &[("TRAINQ_TOKEN", &app.tokens["bob"])], "");
    assert!(text(&out.stdout).contains("bobs"), "{}", text(&out.stdout));
}
