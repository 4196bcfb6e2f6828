//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): signed out it
//! shows the public queue and a sign-in form; signed in with a token typed into that form, a job
//! submitted from the page trains with the real worker while the page, never reloaded, moves its
//! progress bar and grows its chart; the job page then shows the server's plots and heatmaps
//! (fetched with the token) and downloads its files; two jobs are compared; someone else's job
//! shows a notice instead of its outputs; the page fits a phone's width; and a reload in the same
//! tab keeps the token.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test fails, unless `TRAINQ_SKIP_BROWSER=1` asks to skip it, which it says loudly.

use crate::helpers::{client_with, fake_worker, write_dataset, Options, TestApp, FAKE_WORKER};
use crate::report::{get_report, two_jobs_with_cams};
use crate::results::{results_app, ResultsApp};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a condition on the page may take: real training on two shared cores.
const PAGE_WAIT: Duration = Duration::from_secs(300);

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|path| path.is_file())
}

/// chromedriver (in its own process group, so Chromium goes with it) and one browser session.
pub(crate) struct Browser {
    client: reqwest::Client,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn start(chromium: &std::path::Path, chromedriver: &std::path::Path) -> Browser {
        Browser::start_with(chromium, chromedriver, &[]).await
    }

    /// A browser with Chromium's flags `extra` besides the usual ones.
    async fn start_with(chromium: &std::path::Path, chromedriver: &std::path::Path, extra: &[&str]) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while client.get(format!("{base}/status")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not answer on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut arguments: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
        arguments.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The console's messages, read back with `console_errors`.
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": arguments,
            },
        }}});
        let answer: Value =
            client.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let id = answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {answer}"));
        Browser { client, session: format!("{base}/session/{id}"), driver, _profile: profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body).await.unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    /// A WebDriver command; `Err` holds WebDriver's error value.
    async fn try_command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut request = self.client.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"].get("error").is_some() {
            return Err(answer["value"].clone());
        }
        Ok(answer["value"].clone())
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn find(&self, css: &str) -> String {
        let found =
            self.command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    pub(crate) async fn click(&self, css: &str) {
        // The live page redraws rows as events arrive: an element found a moment ago may have
        // been replaced (a stale reference). Then the same selector is looked up again.
        for attempt in 0.. {
            let element = self.find(css).await;
            // Centred first: chromedriver's own scrolling can leave it under the sticky header.
            let scrolled = self
                .try_command(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({
                        "script": "arguments[0].scrollIntoView({block: 'center'})", "args": [{ELEMENT: element}]
                    })),
                )
                .await;
            let clicked = match scrolled {
                Ok(_) => {
                    self.try_command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await
                }
                Err(error) => Err(error),
            };
            match clicked {
                Ok(_) => return,
                Err(error) if error["error"] == "stale element reference" && attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("WebDriver click on {css}: {error}"),
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/clear"), Some(json!({}))).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub(crate) async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// Polls `script` until it returns something other than null or false.
    pub(crate) async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(script, args.clone()).await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            assert!(started.elapsed() < PAGE_WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The console's errors since the last call (a failed load, a blocked request, a script error).
    pub(crate) async fn console_errors(&self) -> Vec<Value> {
        let entries = self.command(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"}))).await;
        entries.as_array().cloned().unwrap_or_default().into_iter().filter(|entry| entry["level"] == "SEVERE").collect()
    }

    async fn set_window(&self, width: u32, height: u32) {
        self.command(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    pub(crate) async fn quit(&self) {
        let _ = self.client.delete(&self.session).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: killpg only sends a signal to the group chromedriver leads (Chromium included).
        unsafe {
            libc::killpg(self.driver.id() as i32, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Records what the page saves through a temporary object-URL link (how it downloads files behind
/// the token) instead of saving it: `window.__downloads` gets `{name, type, bytes, text}`.
const CAPTURE_DOWNLOADS: &str = "
    window.__downloads = [];
    HTMLAnchorElement.prototype.click = function () {
        if (!this.href.startsWith('blob:')) return HTMLElement.prototype.click.call(this);
        const name = this.download;
        fetch(this.href).then((r) => r.blob()).then(async (blob) => window.__downloads.push(
            { name, type: blob.type, bytes: blob.size, text: blob.type.startsWith('text/') ? await blob.text() : '' }));
    };";

/// Clicks a download link and returns what the page saved.
async fn download(browser: &Browser, css: &str) -> Value {
    browser.eval("window.__downloads = []", json!([])).await;
    browser.click(css).await;
    browser.wait_for(&format!("the download behind {css}"), "return window.__downloads[0] || null", json!([])).await
}

/// Whether an element is displayed (not hidden, not inside something hidden).
pub(crate) const VISIBLE: &str =
    "const e = document.querySelector(arguments[0]); return Boolean(e && e.getClientRects().length);";

/// True when every image matching `selector` has loaded with a real size (at least `count`).
const IMAGES_LOADED: &str = "
    const images = [...document.querySelectorAll(arguments[0])];
    return images.length >= arguments[1] && images.every((img) => img.complete && img.naturalWidth > 0);";

pub(crate) fn spec(name: &str, epochs: [u32; 2]) -> Value {
    json!({
        "name": name, "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 4,
        "head": ["gap", {"dense": 16}, "relu", {"dense": 1}],
        "phases": [{"epochs": epochs[0], "train": "head"}, {"epochs": epochs[1], "train": ["block5", "head"]}],
        "optimizer": {"name": "adam", "lr": 0.001}, "seed": 1
    })
}

/// Chromium and chromedriver, or `None` when `TRAINQ_SKIP_BROWSER=1` asks to skip (said loudly).
pub(crate) fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    if std::env::var("TRAINQ_SKIP_BROWSER").is_ok_and(|value| value == "1") {
        eprintln!("\n!!! SKIPPED: the browser test (TRAINQ_SKIP_BROWSER=1); the dashboard was NOT tested !!!\n");
        return None;
    }
    let (Some(chromium), Some(chromedriver)) = (find_program("chromium"), find_program("chromedriver")) else {
        panic!(
            "the browser test needs Chromium and chromedriver on PATH: `apt-get install -y chromium chromium-driver` \
             (or set TRAINQ_SKIP_BROWSER=1 to skip this test explicitly)"
        );
    };
    Some((chromium, chromedriver))
}

#[tokio::test]
async fn the_dashboard_shows_a_job_live_its_plots_and_a_comparison_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let app = TestApp::spawn(Options::default());
    write_dataset(&app.root, 30, 2, 4);
    // Someone else's job in the queue: bob's, cancelled at once (it need not train).
    let bob = client_with(&app.tokens["bob"]);
    let answer: Value =
        bob.post(app.url("/api/jobs")).json(&spec("bobs-job", [1, 1])).send().await.unwrap().json().await.unwrap();
    let bobs = answer["jobs"][0]["id"].as_str().unwrap_or_else(|| panic!("bob's submit: {answer}")).to_string();
    assert!(bob.post(app.url(&format!("/api/jobs/{bobs}/cancel"))).send().await.unwrap().status().is_success());
    app.wait_for_state(&bobs, "cancelled", PAGE_WAIT).await;

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/")).await;
    // A marker a reload would wipe, and a record of any script error.
    browser
        .eval(
            "window.__trainqNoReload = true; window.__trainqErrors = [];
             addEventListener('error', (e) => window.__trainqErrors.push(String(e.message)));
             addEventListener('unhandledrejection', (e) => window.__trainqErrors.push(String(e.reason)));
             addEventListener('securitypolicyviolation', (e) => window.__trainqErrors.push(`CSP refused ${e.blockedURI} (${e.violatedDirective})`));",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the live connection",
            "return document.getElementById('connection').textContent.startsWith('live')",
            json!([]),
        )
        .await;

    // Signed out: the sign-in form and the public queue, with owners; nothing to compare or
    // submit; a job's page asks for a token instead of showing broken outputs.
    let bob_row = format!("tr[data-job-id='{bobs}']");
    browser
        .wait_for(
            "bob's job in the public queue",
            "return document.querySelector(arguments[0]) !== null",
            json!([bob_row]),
        )
        .await;
    let signed_out = browser
        .eval(
            "const row = document.querySelector(arguments[0]);
             const visible = (css) => { const e = document.querySelector(css); return Boolean(e && e.getClientRects().length); };
             return {
                 form: visible('#token-input') && visible('#signin-button'),
                 account: visible('#account'),
                 owner: row.querySelector('td.owner').textContent,
                 state: row.dataset.state,
                 picks: row.querySelectorAll('.compare-pick').length,
                 submit: document.getElementById('submit-button').disabled ? 'disabled' : 'enabled',
             };",
            json!([bob_row]),
        )
        .await;
    assert_eq!(
        signed_out,
        json!({"form": true, "account": false, "owner": "bob", "state": "cancelled", "picks": 0, "submit": "disabled"})
    );
    browser.click(&format!("{bob_row} td.name a")).await;
    let locked = "const notice = document.getElementById('detail-locked');
        return !notice.hidden && document.getElementById('detail-private').hidden && notice.textContent;";
    let notice = browser.wait_for("the sign-in notice on a job's page", locked, json!([])).await;
    assert!(notice.as_str().unwrap().contains("Sign in"), "{notice}");

    // Sign in through the form; the token is kept in this tab only (no cookie, no localStorage).
    let token = &app.tokens["alice"];
    browser.type_into("#token-input", token).await;
    browser.click("#signin-button").await;
    let whoami = browser
        .wait_for(
            "alice's name",
            "const t = document.getElementById('whoami').textContent; return t.includes('alice') && t;",
            json!([]),
        )
        .await;
    assert!(whoami.as_str().is_some_and(|text| text.starts_with("signed in as alice")), "{whoami}");
    let kept = browser
        .eval(
            "return { form: document.getElementById('signin').hidden, session: sessionStorage.getItem('trainq.token'),
                      cookies: document.cookie, local: localStorage.length };",
            json!([]),
        )
        .await;
    assert_eq!(kept, json!({"form": true, "session": token, "cookies": "", "local": 0}));
    // Bob's job, still open, is now told apart as someone else's.
    let notice = browser
        .wait_for(
            "the not-yours notice",
            &locked.replace("notice.textContent", "notice.textContent.includes('bob') && notice.textContent"),
            json!([]),
        )
        .await;
    assert!(notice.as_str().unwrap().contains("belongs to bob"), "{notice}");
    browser
        .wait_for(
            "the live connection, signed in",
            "return document.getElementById('connection').textContent.startsWith('live')",
            json!([]),
        )
        .await;

    // Submit from the page.
    let total_epochs = 4 + 3;
    // Recomputing the frozen layers every epoch keeps this job running long enough (seconds) for
    // the watcher to see its progress move; with the activation cache it would be over at once.
    let mut live = spec("browser-live", [4, 3]);
    live["cache_features"] = json!(false);
    browser.type_into("#submit-spec", &live.to_string()).await;
    browser.click("#submit-button").await;
    let id = browser
        .wait_for(
            "the submit answer",
            "const a = document.querySelector('#submit-result a'); return a && a.textContent;",
            json!([]),
        )
        .await
        .as_str()
        .unwrap()
        .to_string();
    // The queue shows it without a reload; open its page from there.
    let row = format!("tr[data-job-id='{id}']");
    browser.wait_for("the queued row", "return document.querySelector(arguments[0]) !== null", json!([row])).await;
    browser.click(&format!("{row} td.name a")).await;

    // Watch it train: the progress bar and the accuracy chart change while the page stays.
    let watch = "
        const row = document.querySelector(arguments[0]);
        const bar = row && row.querySelector('[role=progressbar]');
        return {
            state: row ? row.dataset.state : null,
            progress: bar ? Number(bar.getAttribute('aria-valuenow')) : null,
            points: Number(document.getElementById('acc-chart').dataset.points || 0),
            page: document.getElementById('detail-title').textContent,
        };";
    let (mut progress_seen, mut points_seen) = (Vec::<f64>::new(), Vec::<u64>::new());
    let started = Instant::now();
    let final_state = loop {
        let seen = browser.eval(watch, json!([row])).await;
        let state = seen["state"].as_str().unwrap_or_default().to_string();
        if state == "running" {
            if let Some(progress) = seen["progress"].as_f64() {
                if progress_seen.last() != Some(&progress) {
                    progress_seen.push(progress);
                }
            }
            let points = seen["points"].as_u64().unwrap();
            if points_seen.last() != Some(&points) {
                points_seen.push(points);
            }
        }
        if state == "succeeded" || state == "failed" || state == "cancelled" {
            break state;
        }
        assert!(started.elapsed() < PAGE_WAIT, "the job did not finish: {seen}\n{}", app.server_log());
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_eq!(final_state, "succeeded", "{}", app.text(&format!("/api/jobs/{id}/log")).await.1);
    eprintln!("while running, the page showed progress {progress_seen:?} and chart points {points_seen:?}");
    assert!(progress_seen.len() >= 3, "the progress bar hardly moved while running: {progress_seen:?}");
    assert!(progress_seen.windows(2).all(|pair| pair[0] < pair[1]), "progress went backwards: {progress_seen:?}");
    assert!(points_seen.len() >= 2, "the chart did not grow while the job ran: {points_seen:?}");
    assert!(points_seen.windows(2).all(|pair| pair[0] < pair[1]), "{points_seen:?}");
    let chart_points = browser
        .wait_for(
            "all epochs on the chart",
            "const n = Number(document.getElementById('acc-chart').dataset.points); return n === arguments[0] && n;",
            json!([total_epochs]),
        )
        .await;
    assert_eq!(chart_points, total_epochs);
    assert_eq!(browser.eval("return window.__trainqNoReload === true", json!([])).await, true, "the page was reloaded");

    // The job page: test metrics, the metrics table, the server's plots as real images.
    let final_row = format!("{row} td:last-child");
    let test_acc = browser.eval("return document.querySelector(arguments[0]).textContent", json!([final_row])).await;
    assert!(test_acc.as_str().unwrap().ends_with('%'), "test accuracy in the queue: {test_acc}");
    browser
        .wait_for(
            "the test metrics",
            "return document.getElementById('final-metrics').textContent.includes('AUC')",
            json!([]),
        )
        .await;
    let epochs_shown =
        browser.eval("return document.querySelectorAll('#metrics-table tbody tr').length", json!([])).await;
    assert_eq!(epochs_shown, total_epochs);
    browser.wait_for("the report plots", IMAGES_LOADED, json!(["#report-plots img.plot-img", 4])).await;
    let kinds = browser
        .eval("return [...document.querySelectorAll('#report-plots img')].map((i) => i.dataset.plot)", json!([]))
        .await;
    assert_eq!(kinds, json!(["accuracy", "loss", "roc", "confusion"]));
    // The Grad-CAM gallery the worker wrote renders: real images, grouped by kind.
    browser.wait_for("the CAM gallery", IMAGES_LOADED, json!(["#cam-gallery figure.cam img", 1])).await;
    let kinds = browser
        .eval("return [...document.querySelectorAll('#cam-gallery .cam-group')].map((g) => g.dataset.kind)", json!([]))
        .await;
    assert!(!kinds.as_array().unwrap().is_empty(), "{kinds}");
    // Images come from object URLs (an <img src> to /api could not carry the token).
    let sources = browser.eval("return [...document.querySelectorAll('#report-plots img, #cam-gallery img')].every((i) => i.src.startsWith('blob:'))", json!([])).await;
    assert_eq!(sources, true);
    // Downloads go through fetch with the token: the metrics CSV, a plot's PNG, an artifact.
    browser.eval(CAPTURE_DOWNLOADS, json!([])).await;
    let csv = download(&browser, "#metrics-csv").await;
    assert_eq!(csv["name"], "browser-live-metrics.csv", "{csv}");
    let lines: Vec<&str> = csv["text"].as_str().unwrap().lines().collect();
    assert!(lines[0].starts_with("phase,epoch,train_loss") && lines.len() == 1 + total_epochs, "{csv}");
    let png = download(&browser, "#report-plots figure:first-child figcaption a:first-of-type").await;
    assert!(
        png["name"].as_str().unwrap().ends_with(".png")
            && png["type"] == "image/png"
            && png["bytes"].as_u64() > Some(1000),
        "{png}"
    );
    // A small one (checkpoints are tens of megabytes).
    let small = browser
        .eval(
            "const link = [...document.querySelectorAll('#artifacts a')].find((a) => /\\.(json|csv)$/.test(a.textContent));
             if (!link) return null;
             link.id = 'small-artifact';
             return link.textContent;",
            json!([]),
        )
        .await;
    let small = small.as_str().unwrap_or_else(|| panic!("no JSON or CSV artifact listed"));
    let artifact = download(&browser, "#small-artifact").await;
    assert_eq!(artifact["name"].as_str(), small.rsplit('/').next(), "{artifact}");
    assert!(artifact["bytes"].as_u64() > Some(0), "{artifact}");

    // A second, shorter job, then compare the two from the queue's checkboxes.
    let other = app.submit(&spec("browser-other", [1, 1])).await;
    let other_row = format!("tr[data-job-id='{other}']");
    browser
        .wait_for(
            "the second job to succeed",
            "const r = document.querySelector(arguments[0]); return r && r.dataset.state === 'succeeded';",
            json!([other_row]),
        )
        .await;
    browser.click(&format!("{row} .compare-pick")).await;
    browser.click(&format!("{other_row} .compare-pick")).await;
    browser.click("#compare-button").await;
    let compared = browser
        .wait_for(
            "both rows of the comparison",
            "const ids = [...document.querySelectorAll('#compare-table tbody tr')].map((r) => r.dataset.compareId);
             return ids.length === 2 && ids;",
            json!([]),
        )
        .await;
    assert_eq!(compared, json!([id, other]));
    browser.wait_for("the overlaid plots", IMAGES_LOADED, json!(["#compare-plots img.plot-img", 3])).await;
    let csv = browser.eval("return document.getElementById('compare-csv').getAttribute('href')", json!([])).await;
    assert!(csv.as_str().unwrap().contains("format=csv") && csv.as_str().unwrap().contains(&other), "{csv}");
    let csv = download(&browser, "#compare-csv").await;
    assert_eq!(csv["name"], "compare.csv", "{csv}");
    assert!(csv["text"].as_str().unwrap().contains(&id) && csv["text"].as_str().unwrap().contains(&other), "{csv}");
    // Only one's own jobs can be picked for a comparison.
    let picks = browser
        .eval("return document.querySelectorAll(arguments[0]).length", json!([format!("{bob_row} .compare-pick")]))
        .await;
    assert_eq!(picks, 0);
    // Still the same page, and the job's row never left the queue.
    assert_eq!(browser.eval("return window.__trainqNoReload === true", json!([])).await, true);

    // A phone: nothing wider than the screen (wide tables scroll inside their own box).
    browser.set_window(390, 844).await;
    browser
        .wait_for(
            "a phone-width layout",
            "return window.innerWidth <= 420 && document.documentElement.scrollWidth <= window.innerWidth;",
            json!([]),
        )
        .await;
    let errors = browser.eval("return window.__trainqErrors", json!([])).await;
    assert_eq!(errors, json!([]), "script errors on the page");
    // The security headers' policy refused nothing, from the first load on (issue 29).
    let refused: Vec<Value> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|entry| entry["message"].as_str().unwrap_or_default().contains("Content Security Policy"))
        .collect();
    assert!(refused.is_empty(), "the dashboard's policy refused: {refused:?}");

    // A reload in the same tab keeps the token; signing out forgets it.
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "alice's name after a reload",
            "return document.getElementById('whoami').textContent.startsWith('signed in as alice')",
            json!([]),
        )
        .await;
    assert_eq!(browser.eval(VISIBLE, json!(["#token-input"])).await, false);
    browser.click("#signout-button").await;
    browser.wait_for("the sign-in form after signing out", VISIBLE, json!(["#token-input"])).await;
    assert_eq!(browser.eval("return sessionStorage.getItem('trainq.token')", json!([])).await, Value::Null);
    browser.quit().await;
}

/// Milliseconds from the navigation's start to the dashboard's first rendered job row (the page
/// marks that moment `trainq:first-rows`), once it has happened.
const FIRST_ROWS_MS: &str =
    "const mark = performance.getEntriesByName('trainq:first-rows')[0]; return mark ? mark.startTime : null;";

/// How many job rows each list holds, and the ids in the list of every job.
const ROWS: &str = "
    const ids = (table) => [...document.querySelectorAll(`#${table} tr[data-job-id]`)].map((row) => row.dataset.jobId);
    return { active: ids('active-jobs').length, mine: ids('my-jobs').length, all: ids('all-jobs'),
             everywhere: document.querySelectorAll('tr[data-job-id]').length };";

#[tokio::test]
async fn the_dashboard_opens_on_10000_jobs_with_a_page_of_each_list() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    // A term's history, ten jobs waiting or running (one `sleep`s on the slot), alice's every 40th.
    let (app, seeded) = TestApp::spawn_seeded(Options { worker: Some(worker), ..Options::default() }, 10_000, 10).await;
    let newest_first: Vec<String> = seeded.iter().rev().cloned().collect();
    let browser = Browser::start(&chromium, &chromedriver).await;

    // Signed out, nothing cached: the active queue and the first page of all jobs.
    browser.goto(&app.url("/")).await;
    let first_paint = browser.wait_for("the first job rows", FIRST_ROWS_MS, json!([])).await;
    println!("dashboard first paint with 10000 jobs: {:.0} ms", first_paint.as_f64().unwrap());
    browser
        .wait_for(
            "a page of all jobs",
            "return document.querySelectorAll('#all-jobs tr[data-job-id]').length === 50",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the active queue",
            "return document.querySelectorAll('#active-jobs tr[data-job-id]').length === 10",
            json!([]),
        )
        .await;
    let rows = browser.eval(ROWS, json!([])).await;
    assert_eq!(rows["all"], json!(newest_first[..50]), "the newest 50 jobs, newest first");
    assert_eq!((rows["mine"].clone(), rows["everywhere"].clone()), (json!(0), json!(60)), "{rows}");

    // Signed in (the token as the sign-in form keeps it), after a reload: the student's own jobs too.
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    browser.goto(&app.url("/")).await;
    let first_paint = browser.wait_for("the first job rows, signed in", FIRST_ROWS_MS, json!([])).await;
    println!("dashboard first paint with 10000 jobs, signed in, reloaded: {:.0} ms", first_paint.as_f64().unwrap());
    browser
        .wait_for(
            "alice's jobs",
            "return document.querySelectorAll('#my-jobs tr[data-job-id]').length === 50",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "a page of all jobs",
            "return document.querySelectorAll('#all-jobs tr[data-job-id]').length === 50",
            json!([]),
        )
        .await;
    let rows = browser.eval(ROWS, json!([])).await;
    assert!(
        rows["everywhere"].as_u64().unwrap() <= 150,
        "at most a page of each list in the DOM, not 10,000 rows: {rows}"
    );
    let owners = "return [...new Set([...document.querySelectorAll('#my-jobs td.owner')].map((td) => td.textContent))]";
    let owners = browser.eval(owners, json!([])).await;
    assert_eq!(owners, json!(["alice (you)"]));

    // Paging: older shows the next 50 (by cursor), newer the first again; `more` appends alice's next page.
    browser.click("#all-older").await;
    let page_two =
        "const ids = [...document.querySelectorAll('#all-jobs tr[data-job-id]')].map((row) => row.dataset.jobId);
        return ids[0] === arguments[0] && ids;";
    let shown = browser.wait_for("the second page of all jobs", page_two, json!([newest_first[50]])).await;
    assert_eq!(shown, json!(newest_first[50..100]));
    assert_eq!(browser.eval("return document.getElementById('all-page').textContent", json!([])).await, "page 2");
    browser.click("#all-newer").await;
    browser.wait_for("the first page again", page_two, json!([newest_first[0]])).await;
    browser.click("#my-more").await;
    browser
        .wait_for(
            "alice's next page",
            "return document.querySelectorAll('#my-jobs tr[data-job-id]').length === 100",
            json!([]),
        )
        .await;
    browser.quit().await;
}

#[tokio::test]
async fn clone_and_edit_resubmits_the_changes_and_the_child_links_to_its_parent() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    // A sweep of two rates: the job page shows its group as one row per combination.
    let mut sweep = spec("repeat", [1, 1]);
    sweep["sweep"] = json!({"/optimizer/lr": [0.001, 0.0001]});
    let (status, body) = app.post("/api/jobs", &sweep).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let parent = body["jobs"][0]["id"].as_str().unwrap().to_string();
    for job in body["jobs"].as_array().unwrap() {
        app.wait_for_state(job["id"].as_str().unwrap(), "succeeded", PAGE_WAIT).await;
    }

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    // A new document (the query), so the page starts signed in with that token.
    browser.goto(&app.url(&format!("/?signed-in#job={parent}"))).await;
    browser.eval("window.__trainqErrors = []; addEventListener('error', (e) => window.__trainqErrors.push(String(e.message)));", json!([])).await;
    let group = browser
        .wait_for(
            "the group's combinations",
            "const rows = [...document.querySelectorAll('#group-table tbody tr')];
             const head = [...document.querySelectorAll('#group-table thead th')].map((th) => th.textContent);
             return rows.length === 2 && { head, values: rows.map((r) => r.cells[0].textContent), selected: rows.map((r) => r.classList.contains('selected')) };",
            json!([]),
        )
        .await;
    assert_eq!(group["head"][0], "/optimizer/lr", "{group}");
    assert_eq!((&group["values"], &group["selected"]), (&json!(["0.001", "0.0001"]), &json!([true, false])), "{group}");
    let values = browser.eval("return document.getElementById('detail-summary').textContent", json!([])).await;
    assert!(values.as_str().unwrap().contains("/optimizer/lr = 0.001"), "{values}");

    // Clone & edit: the spec in the editor, one value changed, submitted as a resubmit.
    browser.click("#clone-button").await;
    let cloned = browser.eval("return JSON.parse(document.getElementById('submit-spec').value)", json!([])).await;
    let (_, original) = app.get(&format!("/api/jobs/{parent}")).await;
    // The same spec (JavaScript writes 0.0 as 0, so compared as specs, not as JSON text).
    let as_spec = |value: &Value| trainq::domain::JobSpec::parse(value.to_string().as_bytes()).unwrap();
    assert_eq!(as_spec(&cloned), as_spec(&original["spec"]));
    assert_eq!(browser.eval(VISIBLE, json!(["#submit-clone"])).await, true);
    browser
        .eval(
            "const editor = document.getElementById('submit-spec');
             const spec = JSON.parse(editor.value);
             spec.optimizer.lr = 0.01;
             editor.value = JSON.stringify(spec, null, 2);",
            json!([]),
        )
        .await;
    browser.click("#submit-button").await;
    browser
        .wait_for("the queued clone", "return document.querySelector('#submit-result.ok a') !== null", json!([]))
        .await;
    browser.click("#submit-result a").await;
    let link = browser
        .wait_for(
            "the clone's page with its parent",
            "const a = document.querySelector('#detail-summary .parent a');
             return a && location.hash !== '#job=' + arguments[0] && { href: a.getAttribute('href'), hash: location.hash };",
            json!([parent]),
        )
        .await;
    assert!(link["href"].as_str().unwrap().ends_with(&parent), "{link}");
    let notes = browser
        .eval("return [...document.querySelectorAll('#detail-summary .note')].map((n) => n.textContent)", json!([]))
        .await;
    assert_eq!(notes, json!([format!(r#"resubmitted from {parent} with {{"optimizer":{{"lr":0.01}}}}"#)]));
    let child = link["hash"].as_str().unwrap().trim_start_matches("#job=").to_string();
    let (_, child) = app.get(&format!("/api/jobs/{child}")).await;
    assert_eq!(child["parent_id"], parent.as_str());
    assert_eq!(
        child["notes"],
        json!([format!(r#"resubmitted from {parent} with {{"optimizer":{{"lr":0.01}}}}"#)]),
        "only the change was sent"
    );
    assert_eq!(child["spec"]["optimizer"]["lr"], 0.01);
    assert_eq!(browser.eval("return window.__trainqErrors", json!([])).await, json!([]), "script errors on the page");
    browser.quit().await;
}

/// What a report page has once open: `(images, inline SVGs, experiment sections, fetched resources)`.
const REPORT_PAGE: &str = "
    return { images: document.images.length, svgs: document.querySelectorAll('svg').length,
             sections: document.querySelectorAll('section.experiment').length,
             fetched: performance.getEntriesByType('resource').map((entry) => entry.name).filter((name) => !name.startsWith('data:')) };";

/// The open report shows both jobs, every heatmap decoded, and fetched nothing (its own CSP would
/// refuse it, and the console would say so).
async fn check_report_page(browser: &Browser, heatmaps: usize) {
    browser.wait_for("every heatmap decoded", IMAGES_LOADED, json!(["img", heatmaps])).await;
    let page = browser.eval(REPORT_PAGE, json!([])).await;
    assert_eq!(page, json!({"images": heatmaps, "svgs": 4, "sections": 2, "fetched": []}), "{page}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the report's console: {errors:?}");
}

/// The HW report (issue 16) in the real browser: saved as a file and opened from disk, and opened
/// by the dashboard's compare view in a new tab (fetched with the token): both times every
/// heatmap loads and no resource is missing.
#[tokio::test]
async fn the_hw_report_opens_in_a_real_browser_without_a_missing_resource() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let ResultsApp { app, _scripts } = results_app(2);
    let (first, second) = two_jobs_with_cams(&app).await;
    let (status, _, html) = get_report(&app, &format!("{first},{second}")).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{html}");
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("trainq-report.html");
    std::fs::write(&file, &html).unwrap();
    let browser = Browser::start(&chromium, &chromedriver).await;

    browser.goto(&format!("file://{}", file.display())).await;
    check_report_page(&browser, 5).await;
    let title = browser.eval("return document.title", json!([])).await;
    assert_eq!(title, "trainq report: 2 experiments");

    // The dashboard, signed in: pick both jobs, compare, then "HW report".
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    browser.goto(&app.url("/")).await;
    for id in [&first, &second] {
        let pick = format!("#my-jobs tr[data-job-id=\"{id}\"] .compare-pick");
        browser
            .wait_for("the job in my list", "return Boolean(document.querySelector(arguments[0]))", json!([pick]))
            .await;
        browser.click(&pick).await;
    }
    browser.click("#compare-button").await;
    let report_link = "const link = document.getElementById('compare-report'); return link.getAttribute('href').startsWith('/api/report?ids=') && link.getAttribute('href');";
    let href = browser.wait_for("the report link", report_link, json!([])).await;
    assert!(href.as_str().unwrap().contains(&first) && href.as_str().unwrap().contains(&second), "{href}");
    let dashboard = browser.command(reqwest::Method::GET, "/window", None).await;
    browser.console_errors().await;
    browser.click("#compare-report").await;
    let started = Instant::now();
    let tab = loop {
        let handles = browser.command(reqwest::Method::GET, "/window/handles", None).await;
        if let Some(tab) = handles.as_array().unwrap().iter().find(|handle| **handle != dashboard) {
            break tab.clone();
        }
        assert!(started.elapsed() < PAGE_WAIT, "no tab opened for the report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    browser.command(reqwest::Method::POST, "/window", Some(json!({"handle": tab}))).await;
    browser
        .wait_for(
            "the report in the new tab",
            "return document.title === 'trainq report: 2 experiments' && location.protocol",
            json!([]),
        )
        .await;
    check_report_page(&browser, 5).await;
    browser.quit().await;
}

/// A finished job's page deletes it after a confirmation (a refusal deletes nothing), then shows
/// it deleted; the header shows the student's disk usage.
#[tokio::test]
async fn a_finished_job_is_deleted_from_its_page_after_a_confirmation() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", crate::retention::FILE_WRITING_WORKER);
    let app = TestApp::spawn(Options { worker: Some(worker), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    let (status, body) = app.post("/api/jobs", &spec("to-delete", [1, 1])).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    app.wait_for(&id, PAGE_WAIT, |job| job["state"] == "succeeded" && job["disk_bytes"].as_u64().unwrap_or(0) > 0)
        .await;

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    browser.goto(&app.url(&format!("/?signed-in#job={id}"))).await;
    browser.eval("window.__trainqErrors = []; addEventListener('error', (e) => window.__trainqErrors.push(String(e.message)));", json!([])).await;
    let whoami = browser
        .wait_for(
            "the disk usage",
            "const t = document.getElementById('whoami').textContent; return t.includes('disk') && t;",
            json!([]),
        )
        .await;
    // About 1 MB (the fake worker writes 1,001,000 bytes, plus the job file and the log); the
    // exact count is `tests/api/retention.rs`'s.
    assert!(
        whoami.as_str().unwrap().starts_with("signed in as alice · disk 9")
            && whoami.as_str().unwrap().ends_with(" KiB"),
        "{whoami}"
    );
    browser.wait_for("the delete button", VISIBLE, json!(["#delete-button"])).await;

    // Refused: nothing happens.
    browser
        .eval(
            "window.__asked = []; window.confirm = (message) => { window.__asked.push(message); return false; };",
            json!([]),
        )
        .await;
    browser.click("#delete-button").await;
    let asked = browser.eval("return window.__asked", json!([])).await;
    assert!(asked[0].as_str().unwrap().contains("to-delete"), "{asked}");
    assert!(app.get(&format!("/api/jobs/{id}")).await.1["deleted_at"].is_null());

    // Confirmed: deleted, and the page says so.
    browser.eval("window.confirm = () => true;", json!([])).await;
    browser.click("#delete-button").await;
    browser
        .wait_for(
            "the job shown deleted",
            "return document.getElementById('detail-summary').textContent.includes('by alice: its files are gone');",
            json!([]),
        )
        .await;
    assert_eq!(browser.eval(VISIBLE, json!(["#delete-button"])).await, false);
    let result = browser.eval("return document.getElementById('cancel-result').textContent", json!([])).await;
    assert!(result.as_str().unwrap().starts_with("Deleted"), "{result}");
    assert_eq!(app.get(&format!("/api/jobs/{id}")).await.1["deleted_by"], "alice");
    assert_eq!(browser.eval("return window.__trainqErrors", json!([])).await, json!([]), "script errors on the page");
    browser.quit().await;
}

/// With `--cpu-hours-per-user` and `--default-time-limit`, the top bar shows the student's
/// device-hours (used, held by their running jobs' limits, left) and follows a job's start
/// without a reload; an admin, exempt, sees no budget there.
#[tokio::test]
async fn the_header_shows_a_students_budget_and_none_for_an_admin() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let scripts = tempfile::tempdir().unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", FAKE_WORKER);
    let args = ["--cpu-hours-per-user", "2", "--default-time-limit", "30m"].map(String::from).to_vec();
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(1), args });
    write_dataset(&app.root, 2, 1, 1);
    let whoami_with = "const t = document.getElementById('whoami').textContent; return t.includes(arguments[0]) && t;";

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    browser.goto(&app.url("/?signed-in")).await;
    browser.eval("window.__trainqErrors = []; addEventListener('error', (e) => window.__trainqErrors.push(String(e.message)));", json!([])).await;
    let whoami = browser.wait_for("the budget", whoami_with, json!(["budget"])).await;
    assert!(whoami.as_str().unwrap().ends_with(" · budget 0 used, 0 held, 2 left of 2 CPU-h"), "{whoami}");

    // Her job starts with the default 30-minute limit: that much is held, and the bar says so.
    let id = app.submit(&spec("sleep", [1, 1])).await;
    app.wait_for_state(&id, "running", Duration::from_secs(60)).await;
    let whoami = browser.wait_for("the held half hour", whoami_with, json!(["0.5 held"])).await;
    assert!(whoami.as_str().unwrap().ends_with(" · budget 0 used, 0.5 held, 1.5 left of 2 CPU-h"), "{whoami}");
    assert_eq!(browser.eval("return window.__trainqErrors", json!([])).await, json!([]), "script errors on the page");

    // The admin is exempt: no budget in their bar.
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["root"]])).await;
    browser.goto(&app.url("/?admin")).await;
    let whoami = browser.wait_for("the admin signed in", whoami_with, json!(["(admin)"])).await;
    assert!(!whoami.as_str().unwrap().contains("budget"), "{whoami}");
    browser.quit().await;
}

/// The dashboard over the server's own TLS (issue 29): signed in, it lists the student's job
/// and follows the event stream live, and its security policy refuses nothing.
#[tokio::test]
async fn the_dashboard_works_over_https_under_its_security_policy() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let pki = crate::tls::Pki::new();
    let (cert, key) = pki.issue("server", 9, crate::tls::LOCAL_NAMES);
    let (_scripts, app) = crate::tls::tls_app(&cert, &key);
    let client = crate::tls::trusting(&pki, &app.tokens["alice"]);
    let answer: Value =
        client.post(app.url("/api/jobs")).json(&spec("over-https", [1, 1])).send().await.unwrap().json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap_or_else(|| panic!("submit: {answer}")).to_string();

    // The test's CA is not in Chromium's store; the certificate checks are the TLS tests' part.
    let browser = Browser::start_with(&chromium, &chromedriver, &["--ignore-certificate-errors"]).await;
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["alice"]])).await;
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "the live connection",
            "return document.getElementById('connection').textContent.startsWith('live')",
            json!([]),
        )
        .await;
    let row = format!("#my-jobs tr[data-job-id=\"{id}\"]");
    browser.wait_for("the job in my list", "return Boolean(document.querySelector(arguments[0]))", json!([row])).await;
    let refused: Vec<Value> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|entry| entry["message"].as_str().unwrap_or_default().contains("Content Security Policy"))
        .collect();
    assert!(refused.is_empty(), "the dashboard's policy refused: {refused:?}");
    assert_eq!(browser.eval("return location.protocol", json!([])).await, "https:");
}

#[tokio::test]
async fn an_admin_disables_an_account_and_imports_a_roster_file_on_the_accounts_page() {
    let Some((chromium, chromedriver)) = browser_programs() else { return };
    let app = TestApp::spawn(Options::default());
    let roster = app.root.join("roster.csv");
    std::fs::write(
        &roster,
        "\u{feff}name,full_name,email\r\nst1,\"Doe, One\",st1@example.org\r\n\r\nst2,,st2@example.org\r\n",
    )
    .unwrap();
    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/")).await;
    browser.eval("sessionStorage.setItem('trainq.token', arguments[0])", json!([app.tokens["root"]])).await;
    browser.goto(&app.url("/?signed-in")).await;
    browser.eval("window.__trainqErrors = []; addEventListener('error', (e) => window.__trainqErrors.push(String(e.message)));", json!([])).await;
    browser.wait_for("the accounts page", VISIBLE, json!(["#users-table tr[data-name='bob'] button"])).await;
    assert_eq!(browser.eval(VISIBLE, json!(["#settings"])).await, true, "the settings panel");

    // Disable bob: his token answers 401 at once, and the row says so.
    browser.click("#users-table tr[data-name='bob'] button").await;
    browser
        .wait_for(
            "bob shown disabled",
            "const row = document.querySelector(\"#users-table tr[data-name='bob']\"); return row && row.textContent.includes('disabled');",
            json!([]),
        )
        .await;
    let refused = client_with(&app.tokens["bob"]).get(app.url("/api/me")).send().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The roster as an upload: created, each token shown once, the rows in the table.
    let input = browser.find("#roster-file").await;
    browser
        .command(
            reqwest::Method::POST,
            &format!("/element/{input}/value"),
            Some(json!({"text": roster.to_str().unwrap()})),
        )
        .await;
    browser.click("#roster-import").await;
    let result = browser
        .wait_for(
            "the import's result",
            "const t = document.getElementById('users-result').textContent; return t.includes('created') && t;",
            json!([]),
        )
        .await;
    assert!(result.as_str().unwrap().contains("created 2 accounts"), "{result}");
    let token = browser.eval("return document.querySelector('#users-result td code').textContent", json!([])).await;
    let me = client_with(token.as_str().unwrap()).get(app.url("/api/me")).send().await.unwrap();
    assert_eq!(me.json::<Value>().await.unwrap()["name"], "st1");
    browser.wait_for("st2's row", VISIBLE, json!(["#users-table tr[data-name='st2']"])).await;
    assert_eq!(browser.console_errors().await, Vec::<Value>::new(), "console errors");
    assert_eq!(browser.eval("return window.__trainqErrors", json!([])).await, json!([]), "script errors on the page");
    browser.quit().await;
}
