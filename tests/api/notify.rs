//! Notifications of jobs' ends, against a real SMTP server (aiosmtpd from PyPI, run by
//! `tests/api/smtp_sink.py`; `deploy/test.sh` installs it into `~/.cache/trainq/aiosmtpd`) and a
//! webhook receiver in the test: exactly one email and one webhook per end, also when the server
//! is killed between the job's end and the delivery; targets set through `PUT /api/me` and the
//! client; failures visible to the admin.

use crate::common::{serve_on, Reply, Request};
use crate::helpers::{client_with, small_spec, Options, TestApp, FAKE_WORKER};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "a-webhook-secret-of-32-characters";
pub(crate) const PUBLIC_URL: &str = "http://gpubox.example.org:8080";

/// The Python that has aiosmtpd: `TRAINQ_AIOSMTPD_PYTHON`, else the test script's venv. Without
/// it: a failure under CI, else a loud SKIPPED (the caller returns).
pub(crate) fn aiosmtpd_python() -> Option<PathBuf> {
    let python = std::env::var_os("TRAINQ_AIOSMTPD_PYTHON")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/trainq/aiosmtpd/bin/python")));
    let usable = python.as_ref().is_some_and(|python| {
        Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if usable {
        return python;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "aiosmtpd is not installed: deploy/test.sh installs it into ~/.cache/trainq/aiosmtpd"
    );
    eprintln!("\n!!! SKIPPED: aiosmtpd not installed (deploy/test.sh installs it into ~/.cache/trainq/aiosmtpd); no email was tested !!!\n");
    None
}

/// A port nothing listens on now (the receivers start on it later).
pub(crate) fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The SMTP server: aiosmtpd on `port`, one JSON file per message in `folder`. Killed on drop.
pub(crate) struct SmtpSink {
    process: Child,
    folder: PathBuf,
}

impl SmtpSink {
    pub(crate) fn start(python: &Path, port: u16, folder: &Path) -> SmtpSink {
        SmtpSink::start_with(python, port, folder, &[])
    }

    /// With `tls`: `["starttls" | "smtps", CERT, KEY]`.
    fn start_with(python: &Path, port: u16, folder: &Path, tls: &[&std::ffi::OsStr]) -> SmtpSink {
        SmtpSink::spawn(python, port, folder, tls, 0.0)
    }

    /// A sink that takes `delay_secs` over each message before it answers (deliveries a test can
    /// interrupt in the middle).
    pub(crate) fn start_slow(python: &Path, port: u16, folder: &Path, delay_secs: f64) -> SmtpSink {
        SmtpSink::spawn(python, port, folder, &[], delay_secs)
    }

    fn spawn(python: &Path, port: u16, folder: &Path, tls: &[&std::ffi::OsStr], delay_secs: f64) -> SmtpSink {
        use std::io::BufRead;
        let mut process = Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/smtp_sink.py"))
            .arg(port.to_string())
            .arg(folder)
            .args(tls)
            .env("SMTP_SINK_DELAY_SECS", delay_secs.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting aiosmtpd");
        let mut ready = String::new();
        std::io::BufReader::new(process.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "smtp sink ready");
        SmtpSink { process, folder: folder.to_path_buf() }
    }

    /// Every message received so far, oldest first (files are `<pid>-<n>.json`, in order of `n`).
    pub(crate) fn messages(&self) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(&self.folder) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        let number = |path: &PathBuf| -> (String, u64) {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let (pid, n) = stem.rsplit_once('-').unwrap_or(("", &stem));
            (pid.to_string(), n.parse().unwrap_or(0))
        };
        files.sort_by_key(number);
        files.iter().map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// What the webhook receiver got: each request's headers and body.
type Received = Arc<Mutex<Vec<Request>>>;

/// A webhook receiver on `port`, answering 200 and keeping every request.
fn webhook_receiver(port: u16) -> Received {
    let received: Received = Arc::default();
    let keep = Arc::clone(&received);
    serve_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), move |request| {
        keep.lock().unwrap().push(request);
        Reply::text("200 OK", "thanks")
    });
    received
}

/// The webhook's bodies, after checking each one's signature and delivery header.
fn verified_webhooks(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|request| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(&request.body);
            let expected: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(
                request.header("x-trainq-signature"),
                Some(format!("sha256={expected}").as_str()),
                "signed with the secret"
            );
            assert_eq!(request.header("content-type"), Some("application/json"));
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(request.header("x-trainq-delivery").map(str::to_string), Some(body["delivery"].to_string()));
            body
        })
        .collect()
}

/// Server flags: email through `smtp_port`, fast retries, links under [`PUBLIC_URL`].
pub(crate) fn notify_args(smtp_port: u16, retry_secs: &str, max_attempts: &str) -> Vec<String> {
    [
        "--smtp-url",
        &format!("smtp://127.0.0.1:{smtp_port}"),
        "--smtp-from",
        "trainq <trainq@gpubox.example.org>",
        "--notify-retry-secs",
        retry_secs,
        "--notify-max-attempts",
        max_attempts,
        "--public-url",
        PUBLIC_URL,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// Sets alice's email and webhook (to `webhook_port`) with `PUT /api/me`.
async fn set_alice_targets(app: &TestApp, webhook_port: u16) {
    let body = json!({"email": "alice@example.org", "webhook": {"url": format!("http://127.0.0.1:{webhook_port}/hook"), "secret": SECRET}});
    let response = app.client.put(app.url("/api/me")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Polls until `done` holds, or panics naming `what` after `timeout`.
pub(crate) async fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/admin/notifications?state=…` as the admin.
async fn outbox(app: &TestApp, state: &str) -> Vec<Value> {
    let response = client_with(&app.tokens["root"])
        .get(app.url(&format!("/api/admin/notifications?state={state}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.unwrap()["notifications"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_finished_job_sends_one_email_and_one_signed_webhook_with_its_facts() {
    let Some(python) = aiosmtpd_python() else { return };
    let mail = tempfile::tempdir().unwrap();
    let (smtp_port, webhook_port) = (closed_port(), closed_port());
    let sink = SmtpSink::start(&python, smtp_port, mail.path());
    let hooks = webhook_receiver(webhook_port);
    let scripts = tempfile::tempdir().unwrap();
    let worker = crate::helpers::fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let app =
        TestApp::spawn(Options { worker: Some(worker), args: notify_args(smtp_port, "1", "12"), ..Options::default() });
    crate::helpers::write_dataset(&app.root, 2, 1, 1);
    crate::helpers::write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    set_alice_targets(&app, webhook_port).await;

    let succeeded = app.submit(&small_spec("q1-notified")).await;
    app.wait_for_state(&succeeded, "succeeded", WAIT).await;
    let failed = app.submit(&small_spec("exit3")).await;
    app.wait_for_state(&failed, "failed", WAIT).await;
    // `[]`: this job tells nobody.
    let mut quiet = small_spec("quiet");
    quiet["notify"] = json!([]);
    let quiet = app.submit(&quiet).await;
    app.wait_for_state(&quiet, "succeeded", WAIT).await;

    eventually("two emails and two webhooks", WAIT, || sink.messages().len() >= 2 && hooks.lock().unwrap().len() >= 2)
        .await;
    // Long enough for a duplicate or the quiet job's message to show (several retry periods).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let emails = sink.messages();
    let webhooks = verified_webhooks(&hooks);
    assert_eq!((emails.len(), webhooks.len()), (2, 2), "{emails:#?}\n{webhooks:#?}\n{}", app.server_log());

    let email_of = |id: &str| {
        emails
            .iter()
            .find(|email| email["body"].as_str().unwrap().contains(id))
            .unwrap_or_else(|| panic!("no email for {id}: {emails:#?}"))
    };
    let good = email_of(&succeeded);
    assert_eq!(good["rcpt_tos"], json!(["alice@example.org"]));
    assert_eq!(good["subject"], "[trainq] q1-notified succeeded — test acc 0.900");
    let body = good["body"].as_str().unwrap().replace("\r\n", "\n");
    for expected in [
        "q1-notified succeeded.",
        "State: succeeded",
        "Test accuracy: 0.9000",
        &format!("{PUBLIC_URL}/#job={succeeded}"),
    ] {
        assert!(body.contains(expected), "{expected:?} in {body}");
    }
    assert!(good["message_id"].as_str().unwrap().ends_with("@gpubox.example.org>"), "{good}");
    let bad = email_of(&failed);
    assert!(bad["subject"].as_str().unwrap().starts_with("[trainq] exit3 failed — "), "{bad}");
    let body = bad["body"].as_str().unwrap().replace("\r\n", "\n");
    assert!(body.contains("Why it failed:") && body.contains("giving up"), "the error and the log's tail: {body}");

    let hook_of = |id: &str| {
        webhooks
            .iter()
            .find(|hook| hook["job"]["id"] == id)
            .unwrap_or_else(|| panic!("no webhook for {id}: {webhooks:#?}"))
    };
    let good = hook_of(&succeeded);
    assert_eq!(good["event"], "job.finished");
    assert_eq!(
        (good["job"]["name"].as_str(), good["job"]["state"].as_str(), good["job"]["owner"].as_str()),
        (Some("q1-notified"), Some("succeeded"), Some("alice"))
    );
    assert_eq!(good["job"]["test_acc"], 0.9);
    assert_eq!(good["job"]["url"], format!("{PUBLIC_URL}/#job={succeeded}"));
    let bad = hook_of(&failed);
    assert!(bad["job"]["error"].as_str().unwrap().contains("giving up"), "{bad}");

    // Both deliveries of each end are recorded; nothing is pending or failed.
    assert_eq!(outbox(&app, "delivered").await.len(), 4);
    assert!(outbox(&app, "pending").await.is_empty() && outbox(&app, "failed").await.is_empty());
}

#[tokio::test]
async fn exactly_one_email_and_one_webhook_arrive_across_a_kill_9_between_the_end_and_the_delivery() {
    let Some(python) = aiosmtpd_python() else { return };
    let mail = tempfile::tempdir().unwrap();
    // The receivers are down while the job ends: every attempt fails and backs off.
    let (smtp_port, webhook_port) = (closed_port(), closed_port());
    let scripts = tempfile::tempdir().unwrap();
    let worker = crate::helpers::fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let options = Options { worker: Some(worker), args: notify_args(smtp_port, "1", "12"), ..Options::default() };
    let mut app = TestApp::spawn(options.clone());
    crate::helpers::write_dataset(&app.root, 2, 1, 1);
    crate::helpers::write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    set_alice_targets(&app, webhook_port).await;
    let id = app.submit(&small_spec("killed-before-delivery")).await;
    app.wait_for_state(&id, "succeeded", WAIT).await;
    let started = Instant::now();
    loop {
        let pending = outbox(&app, "pending").await;
        if pending.len() == 2
            && pending.iter().all(|row| row["attempts"].as_i64() >= Some(1) && row["last_error"].is_string())
        {
            break;
        }
        assert!(started.elapsed() < WAIT, "the deliveries never failed: {pending:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL: nothing is flushed or handed over.
    let temp = app.take_temp();
    app.process.kill().unwrap();
    app.process.wait().unwrap();
    let root = app.root.clone();
    drop(app);

    let sink = SmtpSink::start(&python, smtp_port, mail.path());
    let hooks = webhook_receiver(webhook_port);
    let app = TestApp::spawn_in(&root, options);
    eventually("the email and the webhook after the restart", Duration::from_secs(60), || {
        !sink.messages().is_empty() && !hooks.lock().unwrap().is_empty()
    })
    .await;
    // Several retry periods: a second copy from either server would have arrived by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let emails = sink.messages();
    let webhooks = verified_webhooks(&hooks);
    assert_eq!((emails.len(), webhooks.len()), (1, 1), "{emails:#?}\n{webhooks:#?}\n{}", app.server_log());
    assert!(
        emails[0]["subject"].as_str().unwrap().starts_with("[trainq] killed-before-delivery succeeded"),
        "{}",
        emails[0]
    );
    assert_eq!(webhooks[0]["job"]["id"], id.as_str());
    let delivered = outbox(&app, "delivered").await;
    assert_eq!(delivered.len(), 2, "{delivered:#?}");
    assert!(
        delivered.iter().all(|row| row["attempts"].as_i64() >= Some(2)),
        "failed before the kill, delivered after: {delivered:#?}"
    );
    drop(temp);
}

#[tokio::test]
async fn targets_are_checked_shown_without_the_secret_and_set_from_the_client_and_failures_reach_the_admin() {
    // No SMTP server configured: emails fail at once; one attempt each, then `failed`.
    let webhook_port = closed_port();
    let scripts = tempfile::tempdir().unwrap();
    let worker = crate::helpers::fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let args = vec![String::from("--notify-max-attempts"), String::from("1")];
    let app = TestApp::spawn(Options { worker: Some(worker), args, ..Options::default() });
    crate::helpers::write_dataset(&app.root, 2, 1, 1);
    crate::helpers::write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));

    // Each bad field is a 422 naming it; nothing is saved.
    let put = |body: Value| {
        let request = app.client.put(app.url("/api/me")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    for (body, field) in [
        (json!({"email": "not-an-address"}), "email"),
        (json!({"webhook": {"url": "ftp://hooks.example.org", "secret": SECRET}}), "webhook.url"),
        (json!({"webhook": {"url": "https://hooks.example.org", "secret": "short"}}), "webhook.secret"),
        (json!({"webhook": {"url": "https://hooks.example.org"}}), "webhook"),
        (json!({"email": 5}), "email"),
        (json!({"mail": "alice@example.org"}), "mail"),
        (json!([null, null]), "(body)"),
    ] {
        let (status, answer) = put(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer["detail"]["field"].as_str().unwrap().starts_with(field), "{body}: {answer}");
        assert!(!answer["detail"]["message"].as_str().unwrap().is_empty());
    }
    let (_, me) = app.get("/api/me").await;
    // (`disk_bytes`: the usage GET /api/me also carries; no job of alice's has ended yet.)
    assert_eq!(me, json!({"name": "alice", "admin": false, "email": null, "webhook": null, "disk_bytes": 0}));

    // The client sets both; the answer and GET show the URL, never the secret.
    let home = tempfile::tempdir().unwrap();
    let url = app.url("");
    let hook = format!("http://127.0.0.1:{webhook_port}/hook");
    let out = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["notify", "--email", "alice@example.org", "--webhook", &hook])
        .env("HOME", home.path())
        .env("TRAINQ_URL", &url)
        .env("TRAINQ_TOKEN", &app.tokens["alice"])
        .env("TRAINQ_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, format!("email:   alice@example.org\nwebhook: {hook} (signed with your secret)\n"));
    let (_, me) = app.get("/api/me").await;
    assert_eq!(
        me,
        json!({"name": "alice", "admin": false, "email": "alice@example.org", "webhook": {"url": hook}, "disk_bytes": 0})
    );
    assert!(!me.to_string().contains(SECRET));
    // Fields left out stay; the client's errors are the server's, worded.
    let (status, me) = put(json!({})).await;
    assert_eq!((status, me["email"].as_str()), (StatusCode::OK, Some("alice@example.org")));
    let out = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["notify", "--email", "nope"])
        .env("HOME", home.path())
        .env("TRAINQ_URL", &url)
        .env("TRAINQ_TOKEN", &app.tokens["alice"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && stderr.contains("422") && stderr.contains("`email`"), "{stderr}");

    // A job ends; neither target works (no SMTP server set, nothing on the port): after the one
    // allowed attempt both are `failed`, with the reason, for the admin alone.
    let id = app.submit(&small_spec("unheard")).await;
    app.wait_for_state(&id, "succeeded", WAIT).await;
    let started = Instant::now();
    let failed = loop {
        let failed = outbox(&app, "failed").await;
        if failed.len() == 2 {
            break failed;
        }
        assert!(started.elapsed() < WAIT, "not given up: {failed:#?}\n{}", app.server_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error_of = |channel: &str| {
        failed.iter().find(|row| row["channel"] == channel).unwrap()["last_error"].as_str().unwrap().to_string()
    };
    assert!(error_of("email").contains("--smtp-url"), "{failed:#?}");
    assert!(error_of("webhook").starts_with("webhook:"), "{failed:#?}");
    assert!(failed.iter().all(|row| row["job_id"] == id.as_str() && row["owner"] == "alice" && row["attempts"] == 1));
    assert!(!serde_json::to_string(&failed).unwrap().contains(SECRET), "the secret is never shown");
    let response = app.client.get(app.url("/api/admin/notifications")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "students do not see the outbox");
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("trainq_notifications{state=\"failed\"} 2\n"), "{metrics}");
    assert!(metrics.contains("trainq_notifications{state=\"pending\"} 0\n"), "{metrics}");

    // `--off` removes both; `trainq user add --email` sets one from the server's side.
    let out = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["notify", "--off"])
        .env("HOME", home.path())
        .env("TRAINQ_URL", &url)
        .env("TRAINQ_TOKEN", &app.tokens["alice"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "email:   (none)\nwebhook: (none)\n");
    let out = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["user", "add", "carol", "--email", "carol@example.org", "--data-dir"])
        .arg(app.root.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let carol = String::from_utf8(out.stdout).unwrap();
    let me: Value = client_with(carol.trim()).get(app.url("/api/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["email"], "carol@example.org");
    let out = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["user", "add", "dave", "--email", "dave at example", "--data-dir"])
        .arg(app.root.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--email"));
}

/// A certificate authority and a certificate it signed for 127.0.0.1 (`ca.pem`, `server.pem`,
/// `server.key` in `dir`), made with openssl as a campus would make its own.
fn campus_ca(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status =
            Command::new("openssl").args(args).current_dir(dir).stderr(Stdio::null()).status().expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=trainq test campus CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1, DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test]
async fn email_goes_over_starttls_and_smtps_to_a_server_the_admins_ca_vouches_for() {
    let Some(python) = aiosmtpd_python() else { return };
    let certs = tempfile::tempdir().unwrap();
    campus_ca(certs.path());
    let (cert, key) = (certs.path().join("server.pem"), certs.path().join("server.key"));
    let ca = certs.path().join("ca.pem").display().to_string();
    for (mode, url) in [("starttls", "smtp://127.0.0.1:{port}?tls=required"), ("smtps", "smtps://127.0.0.1:{port}")] {
        let mail = tempfile::tempdir().unwrap();
        let port = closed_port();
        let sink =
            SmtpSink::start_with(&python, port, mail.path(), &[mode.as_ref(), cert.as_os_str(), key.as_os_str()]);
        let scripts = tempfile::tempdir().unwrap();
        let worker = crate::helpers::fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
        let mut args = notify_args(port, "1", "12");
        args[1] = url.replace("{port}", &port.to_string());
        args.extend([String::from("--smtp-ca-file"), ca.clone()]);
        let app = TestApp::spawn(Options { worker: Some(worker), args, ..Options::default() });
        crate::helpers::write_dataset(&app.root, 2, 1, 1);
        crate::helpers::write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
        let response =
            app.client.put(app.url("/api/me")).json(&json!({"email": "alice@example.org"})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let id = app.submit(&small_spec(&format!("over-{mode}"))).await;
        app.wait_for_state(&id, "succeeded", WAIT).await;
        eventually(&format!("the email over {mode}"), WAIT, || !sink.messages().is_empty()).await;
        let emails = sink.messages();
        assert_eq!(emails.len(), 1, "{emails:#?}");
        assert_eq!(emails[0]["subject"], format!("[trainq] over-{mode} succeeded — test acc 0.900"));
        assert_eq!(emails[0]["tls"], true, "{mode}: {emails:#?}");
        assert!(outbox(&app, "failed").await.is_empty());
    }
    // Without the CA the same server is not trusted: the attempt fails naming the certificate.
    let mail = tempfile::tempdir().unwrap();
    let port = closed_port();
    let sink = SmtpSink::start_with(&python, port, mail.path(), &["smtps".as_ref(), cert.as_os_str(), key.as_os_str()]);
    let scripts = tempfile::tempdir().unwrap();
    let worker = crate::helpers::fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let mut args = notify_args(port, "1", "1");
    args[1] = format!("smtps://127.0.0.1:{port}");
    let app = TestApp::spawn(Options { worker: Some(worker), args, ..Options::default() });
    crate::helpers::write_dataset(&app.root, 2, 1, 1);
    crate::helpers::write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    let response =
        app.client.put(app.url("/api/me")).json(&json!({"email": "alice@example.org"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = app.submit(&small_spec("untrusted")).await;
    app.wait_for_state(&id, "succeeded", WAIT).await;
    let started = Instant::now();
    let failed = loop {
        let failed = outbox(&app, "failed").await;
        if !failed.is_empty() || started.elapsed() > WAIT {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed.len(), 1, "{}", app.server_log());
    let error = failed[0]["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("certificate") || error.contains("unknownissuer"), "{error}");
    assert!(sink.messages().is_empty());
}
