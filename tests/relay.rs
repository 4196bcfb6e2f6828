//! `trainq relay` end to end: the real binary, as a Slurm batch script runs it, against a tiny
//! HTTP server started here. What needs a process of its own: the secret read from (and kept out
//! of) the environment, signals, and the process's exit code.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trainq::domain::relay::{RelayBatch, WorkerExit, SECRET_VARIABLE};

/// Stores every POSTed batch and its `Authorization` header; answers 200. Returns the base URL.
fn serve(received: Arc<Mutex<Vec<(String, RelayBatch)>>>) -> String {
    common::serve(move |request| {
        let authorization = request.header("authorization").unwrap_or_default().to_string();
        received.lock().unwrap().push((authorization, serde_json::from_slice(&request.body).unwrap()));
        common::Reply::text("200 OK", "")
    })
}

fn relay_command(url: &str, script: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainq"));
    command
        .args(["relay", "--url", url, "--job", "6f1d0a52-54f4-4c3e-9d55-0f4a3e8f2b10", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn texts(received: &Mutex<Vec<(String, RelayBatch)>>) -> Vec<String> {
    received.lock().unwrap().iter().flat_map(|(_, batch)| batch.lines.iter().map(|line| line.text.clone())).collect()
}

#[test]
fn the_secret_authorizes_the_relay_and_never_reaches_the_worker() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let url = serve(Arc::clone(&received));
    let output = relay_command(&url, "env; echo end").env(SECRET_VARIABLE, "s3cret-for-job").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = texts(&received);
    assert!(lines.iter().any(|line| line.starts_with("PATH=")), "the worker's environment was printed: {lines:?}");
    assert!(!lines.iter().any(|line| line.contains(SECRET_VARIABLE) || line.contains("s3cret-for-job")), "{lines:?}");
    assert!(received.lock().unwrap().iter().all(|(authorization, _)| authorization == "Bearer s3cret-for-job"));
}

#[test]
fn without_a_secret_the_relay_says_which_variable_is_missing() {
    let output = relay_command("http://127.0.0.1:9", "exit 0").env_remove(SECRET_VARIABLE).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(SECRET_VARIABLE) && stderr.contains("not set"), "{stderr}");
}

#[test]
fn sigterm_reaches_the_worker_and_its_exit_code_becomes_the_relays() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let url = serve(Arc::clone(&received));
    let script = "trap 'echo checkpointed; exit 75' TERM; echo ready; while :; do sleep 0.05; done";
    let mut relay = relay_command(&url, script).env(SECRET_VARIABLE, "s").spawn().unwrap();
    let started = Instant::now();
    while !texts(&received).contains(&String::from("ready")) {
        assert!(started.elapsed() < Duration::from_secs(5), "the worker's first line never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The relay alone, as `kill <pid>` would: it must pass the signal on.
    // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped.
    unsafe { libc::kill(relay.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(relay.wait().unwrap().code(), Some(75));
    assert_eq!(texts(&received), ["ready", "checkpointed"]);
    assert_eq!(received.lock().unwrap().last().unwrap().1.exit, Some(WorkerExit::Code(75)));
}
