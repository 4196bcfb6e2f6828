//! What the ecosystem expects of a server: a binary that carries its dashboard, downloads that
//! resume, HEAD beside GET.

use crate::helpers::small_spec;
use reqwest::StatusCode;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn a_copied_binary_serves_the_dashboard_from_any_folder() {
    // As after `cargo install`: the binary alone, elsewhere, started from an empty folder.
    let elsewhere = tempfile::tempdir().unwrap();
    let binary = elsewhere.path().join("trainq");
    std::fs::copy(env!("CARGO_BIN_EXE_trainq"), &binary).unwrap();
    let cwd = elsewhere.path().join("empty");
    std::fs::create_dir(&cwd).unwrap();
    let mut server = Command::new(&binary)
        .args([
            "serve",
            "--no-gpu",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "data",
            "--datasets",
            "datasets",
            "--weights",
            "weights",
        ])
        .current_dir(&cwd)
        .env_remove("TRAINQ_STATIC_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(address) = line.strip_prefix("trainq listening on ") {
            break address.to_string();
        }
    };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let page = client.get(format!("{address}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains(r#"<script src="app.js""#));
    for (file, kind) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        let response = client.get(format!("{address}/{file}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{file}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(kind));
        let etag = response.headers()["etag"].clone();
        let again = client.get(format!("{address}/{file}")).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{file}");
    }
    let missing = client.get(format!("{address}/nope.html")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let _ = server.kill();
    let _ = server.wait();
}

/// Writes a 1 MB checkpoint whose bytes are known: byte i is i mod 251.
const CHECKPOINT_WORKER: &str = r#"
mkdir -p artifacts
python3 -c "import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(1000000)))" > artifacts/final.safetensors
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

#[tokio::test]
async fn curl_resumes_a_broken_download_and_a_finished_jobs_files_are_immutable() {
    let (_scripts, app) = crate::helpers::app_with_worker(CHECKPOINT_WORKER, 1);
    let id = app.submit(&small_spec("fine")).await;
    app.wait_for_state(&id, "succeeded", Duration::from_secs(30)).await;
    let expected: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let url = app.url(&format!("/api/jobs/{id}/artifacts/final.safetensors"));

    // A download cut after 300 kB, continued by `curl -C -` with the same token.
    let download = tempfile::tempdir().unwrap();
    let file = download.path().join("final.safetensors");
    std::fs::write(&file, &expected[..300_000]).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-f", "-C", "-", "-o"])
        .arg(&file)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", app.tokens["alice"]),
            "-w",
            "%{http_code} %{size_download}",
            &url,
        ])
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "206 700000", "only the rest was sent");
    assert!(std::fs::read(&file).unwrap() == expected, "the resumed file is the server's");

    // Validators and caching: a finished job's artifact does not change.
    let response = app.client.get(&url).send().await.unwrap();
    let headers = response.headers().clone();
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["cache-control"], "private, max-age=31536000, immutable");
    assert!(headers.contains_key("last-modified"));
    let etag = headers["etag"].clone();
    let again = app.client.get(&url).header("if-none-match", etag.clone()).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    // A range of another version is not spliced in: the whole file comes instead.
    let other =
        app.client.get(&url).header("range", "bytes=10-").header("if-range", "\"another\"").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    let same = app.client.get(&url).header("range", "bytes=999990-").header("if-range", etag).send().await.unwrap();
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(same.headers()["content-range"], "bytes 999990-999999/1000000");
    assert_eq!(same.bytes().await.unwrap().as_ref(), &expected[999_990..]);
    // HEAD wherever GET is: the headers without the body.
    let head = app.client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "1000000");
    let head = app.client.head(app.url(&format!("/api/jobs/{id}"))).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
}
