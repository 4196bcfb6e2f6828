//! The HW report (`GET /api/report`): one self-contained, well-formed HTML page with each job's
//! template table, curves, test metrics and Grad-CAM pictures, and a ranking; the same id rules
//! as `/api/compare`. Runs on the results tests' fake worker (known numbers); the heatmaps are
//! written into the jobs' `artifacts/cam/` the way the worker writes its gallery.

use crate::helpers::{client_with, small_spec, TestApp};
use crate::results::{results_app, ResultsApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A name that must come out escaped.
pub const TRICKY_NAME: &str = r#"q1 <b>vgg</b> & "dropout""#;

/// A small PNG of one colour.
fn png(colour: [u8; 3]) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(24, 16, image::Rgb(colour))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

/// Writes `count` heatmaps and `cam/index.json` into a job's artifacts, as `worker/cam.rs` does.
pub fn write_cams(app: &TestApp, id: &str, count: usize) {
    let folder = app.root.join("data/jobs").join(id).join("artifacts/cam");
    std::fs::create_dir_all(&folder).unwrap();
    let mut index = Vec::new();
    for n in 0..count {
        std::fs::write(folder.join(format!("tp-{n}.png")), png([200, ((40 + 15 * n) % 256) as u8, 40])).unwrap();
        index
            .push(json!({"file": format!("cam/tp-{n}.png"), "kind": "tp", "path": format!("test/PNEUMONIA/p{n}.jpeg"),
                          "label": "PNEUMONIA", "predicted": "PNEUMONIA", "probability": 0.9}));
    }
    std::fs::write(folder.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Two succeeded jobs (seeds 1 and 2: test accuracy 0.7 and 0.8), with 2 and 3 heatmaps.
pub async fn two_jobs_with_cams(app: &TestApp) -> (String, String) {
    let first = app.submit(&small_spec(TRICKY_NAME)).await;
    let mut spec = small_spec("q2-dropout");
    spec["seed"] = json!(2);
    let second = app.submit(&spec).await;
    for id in [&first, &second] {
        app.wait_for_state(id, "succeeded", WAIT).await;
    }
    write_cams(app, &first, 2);
    write_cams(app, &second, 3);
    (first, second)
}

/// `GET /api/report?ids=…` as alice: status, headers and body.
pub async fn get_report(app: &TestApp, ids: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = app.client.get(app.url(&format!("/api/report?ids={ids}"))).send().await.unwrap();
    (response.status(), response.headers().clone(), response.text().await.unwrap())
}

/// Checks that elements nest properly: every opened tag is closed in order (void elements and
/// `<… />` aside). Text is escaped, so every `<` starts a tag.
fn check_nesting(html: &str) {
    const VOID: [&str; 6] = ["meta", "img", "br", "hr", "input", "link"];
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').unwrap_or_else(|| panic!("an unclosed tag at …{}", &rest[start..start + 40]))
            + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_lowercase();
        if let Some(closing) = tag.strip_prefix('/') {
            let closing = closing.trim().to_lowercase();
            let opened = open.pop().unwrap_or_else(|| panic!("</{closing}> closes nothing"));
            assert_eq!(opened, closing, "<{opened}> closed by </{closing}>; open: {open:?}");
        } else if !VOID.contains(&name.as_str()) {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "never closed: {open:?}");
}

/// The `<section …>` whose `data-id` is `id`.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html.find(&format!("data-id=\"{id}\"")).unwrap_or_else(|| panic!("no section for {id}"));
    let end = html[start..].find("</section>").unwrap() + start;
    &html[start..end]
}

#[tokio::test]
async fn the_report_of_two_jobs_is_one_valid_page_with_their_tables_curves_and_heatmaps() {
    let ResultsApp { app, _scripts } = results_app(2);
    let (first, second) = two_jobs_with_cams(&app).await;
    let (status, headers, html) = get_report(&app, &format!("{first},{second}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-disposition"], "inline; filename=\"trainq-report.html\"");
    assert_eq!(headers["content-security-policy"], trainq::report::CONTENT_SECURITY_POLICY, "the report's own policy");
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"), "{}", &html[..100]);
    assert!(html.contains("<meta charset=\"utf-8\">") && html.contains("<title>trainq report: 2 experiments</title>"));
    check_nesting(&html);
    for (open, close) in
        [("<table", "</table>"), ("<section", "</section>"), ("<svg", "</svg>"), ("<figure", "</figure>")]
    {
        assert_eq!(html.matches(open).count(), html.matches(close).count(), "{open} vs {close}");
    }

    // Self-contained: nothing to fetch, no script.
    for outside in ["src=\"http", "src=\"/", "href=\"http", "<link", "<script", "url("] {
        assert!(!html.contains(outside), "the page refers outside itself: {outside}");
    }
    // The user's name is text, never markup.
    assert!(!html.contains("<b>vgg</b>"), "an unescaped name");
    assert!(html.contains("q1 &lt;b&gt;vgg&lt;/b&gt; &amp; &quot;dropout&quot;"));

    for (id, name, test_acc, heatmaps) in
        [(&first, "q1 &lt;b&gt;vgg", "0.7000", 2), (&second, "q2-dropout", "0.8000", 3)]
    {
        let part = section(&html, id);
        assert!(part.contains(name) && part.contains(id.as_str()), "{id}");
        assert!(part.contains("succeeded") && part.contains("alice"), "state and owner: {part:.2000}");
        assert!(
            part.contains("VGG16 with ImageNet weights on dataset `demo`, images resized to 32×32"),
            "the spec in words"
        );
        // The template's table with the fake worker's numbers.
        assert!(
            part.contains("<tr><th>Training set</th><td class=\"num\">0.4000</td><td class=\"num\">0.8000</td></tr>"),
            "{id}"
        );
        assert!(
            part.contains(&format!(
                "<tr><th>Test set</th><td class=\"num\">0.5000</td><td class=\"num\">{test_acc}</td></tr>"
            )),
            "{id}"
        );
        assert_eq!(part.matches("<svg").count(), 2, "accuracy and loss curves for {id}");
        assert!(
            part.contains(">Precision<") && part.contains("0.7500") && part.contains("0.7600"),
            "test metrics of {id}"
        );
        assert!(
            part.contains("<caption>Confusion matrix") && part.contains(">NORMAL<") && part.contains(">PNEUMONIA<"),
            "{id}"
        );
        assert_eq!(part.matches("src=\"data:image/png;base64,").count(), heatmaps, "heatmaps of {id}");
        assert!(part.contains("true positive: true PNEUMONIA, predicted PNEUMONIA (p = 0.90) — test/PNEUMONIA/p0.jpeg"));
    }

    // The ranking: the better test accuracy first and marked best.
    let ranking = &html[html.find("<section class=\"ranking\"").expect("a ranking section")..];
    let (at_first, at_second) = (ranking.find(first.as_str()).unwrap(), ranking.find(second.as_str()).unwrap());
    assert!(at_second < at_first, "ordered by test accuracy");
    assert!(ranking.contains("<td class=\"num best\">0.8000 ★ (1)</td>"), "{ranking:.3000}");
    assert!(ranking.contains("<td class=\"num\">0.7000 (2)</td>"), "{ranking:.3000}");
}

/// Submits a spec that makes a group and waits until every job of it succeeded: the group's id
/// and the submit answer.
async fn finished_group(app: &TestApp, spec: &Value) -> (String, Value) {
    let (status, body) = app.post("/api/jobs", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let group = body["group_id"].as_str().unwrap().to_string();
    for job in body["jobs"].as_array().unwrap() {
        app.wait_for_state(job["id"].as_str().unwrap(), "succeeded", WAIT).await;
    }
    (group, body)
}

#[tokio::test]
async fn a_group_shows_mean_and_std_and_an_unfinished_job_shows_no_numbers() {
    let ResultsApp { app, _scripts } = results_app(2);
    let mut spec = small_spec("repeat");
    spec["repeats"] = json!(2);
    let (group, body) = finished_group(&app, &spec).await;
    // The group shows its first run's gallery: more pictures than a report embeds, and an entry
    // that is a symlink out of the job's folder, which is never read.
    let first_run = body["jobs"][0]["id"].as_str().unwrap();
    write_cams(&app, first_run, 14);
    let cam = app.root.join("data/jobs").join(first_run).join("artifacts/cam");
    std::os::unix::fs::symlink("../../../../trainq.db", cam.join("escape.png")).unwrap();
    let mut index: Vec<Value> = serde_json::from_slice(&std::fs::read(cam.join("index.json")).unwrap()).unwrap();
    index.insert(0, json!({"file": "cam/escape.png", "kind": "fp"}));
    std::fs::write(cam.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let waiting = app.submit(&small_spec("wait")).await;
    let (status, _, html) = get_report(&app, &format!("{group},{waiting}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    check_nesting(&html);
    let part = section(&html, &group);
    assert!(part.contains("repeat (group of 2 runs)"), "{part:.1000}");
    // Seeds 1 and 2: test accuracy 0.7 and 0.8, mean 0.75, sample std 0.0707.
    assert!(part.contains("<td class=\"num\">0.7500 ± 0.0707 (n=2)</td>"), "{part:.3000}");
    assert!(part.contains("summed over 2 runs"));
    assert!(part.contains("seeds 1–2 (2 repeats)"));
    assert_eq!(part.matches("src=\"data:image/png;base64,").count(), 12, "at most 12 heatmaps per experiment");
    assert!(part.contains(&format!("From run <span class=\"mono\">{first_run}</span>")));
    assert!(part.contains("2 more heatmaps left out: the report shows at most 12 per experiment"), "{part:.5000}");
    assert!(part.contains("`cam/escape.png` is listed in cam/index.json but is missing, too large or not a PNG."));
    let part = section(&html, &waiting);
    assert!(part.contains("No final metrics yet: the job is"), "{part:.3000}");
    assert!(part.contains("No Grad-CAM heatmaps yet"), "{part:.5000}");
    assert!(!part.contains("0.0000"), "no made-up numbers");
    app.post(&format!("/api/jobs/{waiting}/cancel"), &json!({})).await;
}

#[tokio::test]
async fn a_sweep_group_is_one_experiment_per_combination() {
    let ResultsApp { app, _scripts } = results_app(2);
    let mut spec = small_spec("sweep");
    spec["sweep"] = json!({"/image_size": [32, 64]});
    spec["repeats"] = json!(2);
    let (group, _) = finished_group(&app, &spec).await;
    let (status, _, html) = get_report(&app, &group).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    check_nesting(&html);
    assert_eq!(html.matches("<section class=\"experiment\"").count(), 2, "one per combination");
    for size in [32, 64] {
        let heading = format!("sweep {{&quot;/image_size&quot;: {size}}} (sweep, 2 runs)");
        let at =
            html.find(&format!("<h2>{}. {heading}</h2>", size / 32)).unwrap_or_else(|| panic!("no section {heading}"));
        let part = &html[at..at + html[at..].find("</section>").unwrap()];
        assert!(
            part.contains(&format!("images resized to {size}×{size}")) && part.contains("seeds 1–2 (2 repeats)"),
            "{part:.3000}"
        );
        assert!(part.contains("<td class=\"num\">0.7500 ± 0.0707 (n=2)</td>"), "{part:.3000}");
    }
    let ranking = &html[html.find("<section class=\"ranking\"").unwrap()..];
    assert_eq!(ranking.matches("<tr><td>sweep {").count(), 2, "{ranking:.3000}");
}

#[tokio::test]
async fn report_ids_follow_the_compare_rules_and_a_foreign_job_is_not_found() {
    let ResultsApp { app, _scripts } = results_app(1);
    let mine = app.submit(&small_spec("mine")).await;
    app.wait_for_state(&mine, "succeeded", WAIT).await;
    for path in ["/api/report", "/api/report?ids=", "/api/report?ids=nope"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["detail"]["field"], "ids", "{path}: {body}");
    }
    let bob = client_with(&app.tokens["bob"]);
    let response = bob.get(app.url(&format!("/api/report?ids={mine}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains(&mine), "{body}");
    let anonymous = reqwest::Client::new().get(app.url(&format!("/api/report?ids={mine}"))).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
