//! TLS in the server (issue 29) with certificates from a CA the test makes with `openssl`: curl
//! with `--cacert` and the client with `--ca-file`; a wrong name and an expired certificate
//! refused by the client in words; plain HTTP to the TLS port answered at once; a certificate
//! swapped while an event stream stays open; a key that is not the certificate's named at start.
//! And the security headers of the answers.

use crate::client::{text, trainq};
use crate::helpers::FAKE_WORKER;
use crate::helpers::{client_with, fake_worker, small_spec, write_dataset, write_vgg16_weights, Options, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough for the server's file poll (2 s) several times over.
const RELOAD_WAIT: Duration = Duration::from_secs(20);

/// A CA of the test's own, in a temp folder, and the certificates it issues.
pub(crate) struct Pki {
    folder: tempfile::TempDir,
}

/// Runs `openssl ARGS` in `folder`; panics with its stderr when it fails.
fn openssl(folder: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(folder).args(args).output().expect("openssl (Debian's CLI)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl Pki {
    /// A new CA: `ca.pem` and `ca.key`.
    pub(crate) fn new() -> Pki {
        let folder = tempfile::tempdir().unwrap();
        openssl(
            folder.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=trainq test CA",
            ],
        );
        Pki { folder }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.folder.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A key `NAME.key`, and a request for it, valid for the subject alternative names `names`.
    fn request(&self, name: &str, names: &str) {
        let folder = self.folder.path();
        openssl(
            folder,
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &format!("{name}.key")],
        );
        openssl(
            folder,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                "/CN=trainq test",
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(folder.join(format!("{name}.ext")), format!("subjectAltName={names}\n")).unwrap();
    }

    /// `NAME.pem` and `NAME.key`: a certificate with `serial` for `names` (e.g.
    /// `DNS:localhost,IP:127.0.0.1`), valid for a month.
    pub(crate) fn issue(&self, name: &str, serial: u32, names: &str) -> (PathBuf, PathBuf) {
        self.request(name, names);
        let (csr, ext, pem) = (format!("{name}.csr"), format!("{name}.ext"), format!("{name}.pem"));
        let serial = serial.to_string();
        openssl(
            self.folder.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
        (self.path(&pem), self.path(&format!("{name}.key")))
    }

    /// Like [`Pki::issue`], but the certificate expired in 2020 (`openssl ca` sets past dates).
    fn issue_expired(&self, name: &str, serial: u32, names: &str) -> (PathBuf, PathBuf) {
        self.request(name, names);
        let folder = self.folder.path();
        std::fs::write(
            folder.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = anything\n[anything]\ncommonName = supplied\n",
        )
        .unwrap();
        std::fs::write(folder.join("index.txt"), "").unwrap();
        std::fs::write(folder.join("serial"), format!("{serial:02X}\n")).unwrap();
        let (csr, ext, pem) = (format!("{name}.csr"), format!("{name}.ext"), format!("{name}.pem"));
        openssl(
            folder,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &csr,
                "-out",
                &pem,
                "-extfile",
                &ext,
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
            ],
        );
        (self.path(&pem), self.path(&format!("{name}.key")))
    }
}

/// The names of a certificate for this machine, as the tests reach it.
pub(crate) const LOCAL_NAMES: &str = "DNS:localhost,IP:127.0.0.1";

/// `trainq serve --tls-cert CERT --tls-key KEY` with the fake worker, a dataset and weights.
pub(crate) fn tls_app(cert: &Path, key: &Path) -> (tempfile::TempDir, TestApp) {
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let args = vec![
        String::from("--tls-cert"),
        cert.display().to_string(),
        String::from("--tls-key"),
        key.display().to_string(),
    ];
    let app = TestApp::spawn(Options { worker: Some(worker), args, ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    (scripts, app)
}

/// A client that sends `token` and trusts the test's CA.
pub(crate) fn trusting(pki: &Pki, token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap();
    reqwest::Client::builder().default_headers(headers).add_root_certificate(ca).build().unwrap()
}

/// `host:port` of a server's base URL.
fn host_port(address: &str) -> &str {
    address.split_once("://").map_or(address, |(_, rest)| rest)
}

/// The serial number the server presents to a new connection now, as `openssl x509` prints it
/// (`serial=0B`).
fn served_serial(address: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            host_port(address)
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Waits until new connections get the certificate with `serial` (as `openssl x509` prints it).
async fn wait_for_serial(address: &str, serial: &str) {
    let started = Instant::now();
    loop {
        let served = served_serial(address);
        if served == format!("serial={serial}") {
            return;
        }
        assert!(started.elapsed() < RELOAD_WAIT, "still serving {served:?}, not serial {serial}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn curl_and_the_client_reach_the_server_over_tls_with_the_campus_ca() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", 1, LOCAL_NAMES);
    let (_scripts, app) = tls_app(&cert, &key);
    assert!(app.address.starts_with("https://127.0.0.1:"), "{}", app.address);

    // curl with --cacert, over TLS 1.2 and over TLS 1.3.
    let ca = pki.ca().display().to_string();
    for version in [["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3", "--tls-max", "1.3"]] {
        let output = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10", "--cacert", &ca])
            .args(version)
            .arg(app.url("/healthz"))
            .output()
            .unwrap();
        let answer = text(&output.stdout).to_ascii_lowercase();
        assert!(output.status.success(), "{version:?}: {}", text(&output.stderr));
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("strict-transport-security: max-age=31536000"), "{answer}");
        assert!(answer.contains("x-content-type-options: nosniff"), "{answer}");
    }
    let client = trusting(&pki, &app.tokens["alice"]);
    let ready: Value = client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["tls"], serde_json::json!({"ok": true, "tls": true}), "{ready}");

    // The client: `trainq login --ca-file` saves the CA with the login; every command trusts it.
    let home = tempfile::tempdir().unwrap();
    let token = format!("{}\n", app.tokens["alice"]);
    let login = trainq(home.path(), &["login", &app.address, "--token-stdin", "--ca-file", &ca], &[], &token);
    assert!(login.status.success(), "{}", text(&login.stderr));
    let saved = std::fs::read_to_string(home.path().join(".config/trainq/config.toml")).unwrap();
    assert!(saved.contains(&format!("ca_file = \"{ca}\"")), "{saved}");
    let ls = trainq(home.path(), &["ls"], &[], "");
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert!(!text(&ls.stderr).contains("warning"), "no clear-text warning over TLS: {}", text(&ls.stderr));

    // Without the CA the client says what to pass; TRAINQ_CA_FILE gives it.
    let stranger = tempfile::tempdir().unwrap();
    let env = [("TRAINQ_URL", app.address.as_str()), ("TRAINQ_TOKEN", app.tokens["alice"].as_str())];
    let refused = trainq(stranger.path(), &["ls"], &env, "");
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(message.contains("does not trust") && message.contains("--ca-file"), "{message}");
    let env = [env[0], env[1], ("TRAINQ_CA_FILE", ca.as_str())];
    let trusted = trainq(stranger.path(), &["ls"], &env, "");
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused_at_once_and_tls_goes_on() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", 2, LOCAL_NAMES);
    let (_scripts, app) = tls_app(&cert, &key);
    let plain = format!("http://{}/healthz", host_port(&app.address));
    let started = Instant::now();
    let output = Command::new("curl").args(["-sS", "-i", "--max-time", "10", &plain]).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    let answer = text(&output.stdout);
    assert!(output.status.success(), "curl: {}", text(&output.stderr));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("this port speaks HTTPS"), "{answer}");
    // A client that sends nothing at all is closed too, not held: the port still serves TLS.
    let response = trusting(&pki, &app.tokens["alice"]).get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_name_and_an_expired_certificate_are_refused_by_the_client_in_words() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("elsewhere", 3, "DNS:elsewhere.example");
    let (_scripts, app) = tls_app(&cert, &key);
    let ca = pki.ca().display().to_string();
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("TRAINQ_URL", app.address.as_str()),
        ("TRAINQ_TOKEN", app.tokens["alice"].as_str()),
        ("TRAINQ_CA_FILE", ca.as_str()),
    ];
    let wrong_name = trainq(home.path(), &["ls"], &env, "");
    assert!(!wrong_name.status.success());
    let message = text(&wrong_name.stderr);
    assert!(message.contains("not valid for the name `127.0.0.1`"), "{message}");

    // The admin swaps in an expired certificate and sends SIGHUP: the next connection gets it.
    let (expired_cert, expired_key) = pki.issue_expired("expired", 4, LOCAL_NAMES);
    std::fs::copy(&expired_key, &key).unwrap();
    std::fs::copy(&expired_cert, &cert).unwrap();
    assert_eq!(unsafe { libc::kill(app.pid(), libc::SIGHUP) }, 0);
    wait_for_serial(&app.address, "04").await;
    let expired = trainq(home.path(), &["ls"], &env, "");
    assert!(!expired.status.success());
    let message = text(&expired.stderr);
    assert!(message.contains("certificate has expired"), "{message}");
}

#[tokio::test]
async fn a_certificate_swapped_under_an_open_event_stream_serves_the_next_connection_only() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", 0x11, LOCAL_NAMES);
    let (_scripts, app) = tls_app(&cert, &key);
    assert_eq!(served_serial(&app.address), "serial=11");
    let mut stream = trusting(&pki, &app.tokens["alice"]).get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    stream.chunk().await.unwrap().expect("the stream's first event");

    // Renewed files, renamed into place as certbot does; no signal: the server sees them change.
    let (new_cert, new_key) = pki.issue("renewed", 0x12, LOCAL_NAMES);
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    wait_for_serial(&app.address, "12").await;

    // A new connection, with the new certificate, submits; the stream opened before the swap
    // still carries the news.
    let (status, body) = {
        let response = trusting(&pki, &app.tokens["alice"])
            .post(app.url("/api/jobs"))
            .json(&small_spec("after-swap"))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains(&id) {
        assert!(started.elapsed() < RELOAD_WAIT, "the open stream carried no event of {id}: {seen}");
        match tokio::time::timeout(RELOAD_WAIT, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the stream opened before the swap ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_or_a_missing_file_stops_the_start_naming_it() {
    let pki = Pki::new();
    let (cert, _) = pki.issue("one", 5, LOCAL_NAMES);
    let (_, other_key) = pki.issue("two", 6, LOCAL_NAMES);
    let data = tempfile::tempdir().unwrap();
    let serve = |cert: &Path, key: &Path| {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_trainq"))
            .args(["serve", "--no-gpu", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(!output.status.success(), "started anyway");
        text(&output.stderr)
    };
    let mismatch = serve(&cert, &other_key);
    assert!(
        mismatch.contains("does not match")
            && mismatch.contains(&cert.display().to_string())
            && mismatch.contains(&other_key.display().to_string()),
        "{mismatch}"
    );
    let missing = pki.path("missing.key");
    let unreadable = serve(&cert, &missing);
    assert!(unreadable.contains(&missing.display().to_string()), "{unreadable}");
}

#[tokio::test]
async fn answers_carry_the_security_headers_and_readyz_warns_of_clear_text_on_the_network() {
    let app = TestApp::spawn(Options {
        args: vec![String::from("--listen"), String::from("0.0.0.0:0")],
        ..Options::default()
    });
    let client = client_with(&app.tokens["alice"]);
    // `0.0.0.0` is not an address to connect to; the same port on loopback is.
    let base = app.address.replace("0.0.0.0", "127.0.0.1");
    let get = |path: &str| client.get(format!("{base}{path}")).send();

    let dashboard = get("/").await.unwrap();
    let headers = dashboard.headers();
    let policy = headers["content-security-policy"].to_str().unwrap();
    for part in ["default-src 'self'", "script-src 'self';", "img-src 'self' blob: data:", "frame-ancestors 'none'"] {
        assert!(policy.contains(part), "{part} in {policy}");
    }
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(headers.get("strict-transport-security").is_none(), "no HSTS over plain HTTP");

    let docs = get("/api/docs").await.unwrap();
    let policy = docs.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'none'; style-src 'unsafe-inline'"), "{policy}");
    for path in ["/api/jobs", "/api/no-such-route", "/healthz", "/metrics"] {
        let response = get(path).await.unwrap();
        assert_eq!(response.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(response.headers()["referrer-policy"], "no-referrer", "{path}");
    }

    let ready = get("/readyz").await.unwrap();
    let ready: Value = ready.json().await.unwrap();
    let tls = &ready["checks"]["tls"];
    assert_eq!(tls["ok"], true, "a warning, not a failure: {ready}");
    assert!(tls["warning"].as_str().unwrap().contains("in clear"), "{ready}");
    assert!(app.server_log().contains("plain HTTP on a network address"), "{}", app.server_log());
}
