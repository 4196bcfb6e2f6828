//! The HW report: one self-contained HTML page for several experiments (jobs or repeat groups)
//! that a student prints to PDF or pastes into the course's HW3 template. Per experiment: the spec
//! in words, the template's table (train/test loss and accuracy), accuracy and loss curves, the
//! test metrics and confusion matrix, and the Grad-CAM gallery; at the end a table ranking the
//! experiments on every metric.
//!
//! Data in, HTML out, no I/O (like `plots/`): `http/report.rs` reads the jobs, curves and heatmaps
//! and calls [`render`] off the async threads. The page loads nothing: plots are inline SVG,
//! heatmaps `data:` PNGs, the style sheet is in `<style>`, and there is no script, so it opens
//! offline, from a mail attachment or a file share, exactly as it was generated.

mod describe;

pub use describe::describe;

use crate::domain::scores::MeanStd;
use crate::domain::worker_protocol::EpochMetrics;
use crate::domain::{Job, JobState, Timestamp};
use crate::plots::{self, CurveMetric, CurveRun, Curves, Format, Plot};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Every metric of the report, in the order its tables list them (test accuracy first, the one
/// the ranking sorts by), with its label and whether higher is better.
pub const METRICS: [(&str, &str, bool); 9] = [
    ("test_acc", "Test accuracy", true),
    ("test_loss", "Test loss", false),
    ("precision", "Precision", true),
    ("recall", "Recall", true),
    ("specificity", "Specificity", true),
    ("f1", "F1", true),
    ("auc", "AUC", true),
    ("train_acc", "Train accuracy", true),
    ("train_loss", "Train loss", false),
];

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Who asked for it (shown in the header).
    pub user: String,
    /// When it was generated, RFC 3339.
    pub generated_at: String,
    /// One section per id asked for, in that order.
    pub experiments: Vec<Experiment>,
}

/// One job, or one repeat group, and everything the report shows of it.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The group id for a repeat group, `None` for a single job.
    pub group: Option<String>,
    /// A sweep combination's values (`{"/image_size": 256}`); a sweep group is one experiment
    /// per combination.
    pub params: Option<String>,
    /// The job, or the group's (or combination's) jobs in submission order.
    pub jobs: Vec<Job>,
    /// Each metric over the succeeded jobs: a job's value (n = 1) or a group's mean ± std.
    pub metrics: BTreeMap<&'static str, MeanStd>,
    /// The finished epochs of each job that has any, with the label its curve gets.
    pub curves: Vec<(String, Vec<EpochMetrics>)>,
    /// The test confusion matrix (summed over a group's succeeded runs), if any job has one.
    pub confusion: Option<ConfusionTable>,
    /// The Grad-CAM heatmaps embedded, and what was left out.
    pub gallery: Gallery,
}

/// A confusion matrix with its class names.
#[derive(Debug, Clone)]
pub struct ConfusionTable {
    /// Class names, in class-index order.
    pub classes: Vec<String>,
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
    /// How many runs were summed.
    pub runs: usize,
}

/// The heatmaps of one experiment.
#[derive(Debug, Clone, Default)]
pub struct Gallery {
    /// The job the pictures come from (a group shows one run's gallery).
    pub job: Option<String>,
    /// The pictures, in the worker's order.
    pub images: Vec<CamImage>,
    /// Why pictures are missing or were left out, one sentence each.
    pub notes: Vec<String>,
}

/// One Grad-CAM picture.
#[derive(Debug, Clone)]
pub struct CamImage {
    /// What it shows: kind, true and predicted class, probability, the test image's path.
    pub caption: String,
    /// The PNG file's bytes.
    pub png: Vec<u8>,
}

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Standard base64 with padding (RFC 4648), for `data:` URLs; a few lines instead of a crate.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                encoded.push(char::from(ALPHABET[((triple >> shift) & 63) as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

/// The page's style: readable on screen, and printed as one experiment per page on white.
const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #111; background: #fff;
       max-width: 1100px; margin: 0 auto; padding: 1.5rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #333; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
.muted, figcaption, .note { color: #555; font-size: 0.9rem; }
code, .mono { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.4rem 0 0.8rem; }
th, td { border: 1px solid #999; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #eee; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 1rem; margin: 0.4rem 0; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
.plots figure { flex: 1 1 45%; margin: 0; min-width: 300px; }
.plots svg { width: 100%; height: auto; display: block; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 0.8rem; }
.gallery figure { margin: 0; }
.gallery img { width: 100%; height: auto; display: block; border: 1px solid #999; }
.best { font-weight: 700; }
.state-failed, .state-cancelled { color: #a00; }
@page { size: A4; margin: 14mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  section.experiment + section.experiment { break-before: page; }
  section.ranking { break-before: page; }
  table, figure, dl.facts { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  thead th { background: #eee; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
";

/// The report's own Content-Security-Policy, in its page and in `/api/report`'s answer: nothing
/// from outside the page (its heatmaps are `data:` images, its style inline).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

/// The report as one HTML5 document. Renders the curves (SVG, through `crate::plots`), so it takes
/// a few milliseconds per experiment: call it off the async threads.
pub fn render(report: &Report) -> Result<String, plots::PlotError> {
    let mut html = String::new();
    let count = report.experiments.len();
    let title = match count {
        1 => {
            format!("trainq report: {}", report.experiments[0].jobs.first().map(|job| job.name.as_str()).unwrap_or(""))
        }
        _ => format!("trainq report: {count} experiments"),
    };
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // The browser itself refuses anything from outside the page, so a report that opens is complete.
    let _ = writeln!(html, "<meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(html, "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>", escape(&title));
    let _ = writeln!(html, "<header>\n<h1>{}</h1>", escape(&title));
    let _ = writeln!(
        html,
        "<p class=\"muted\">Generated by trainq for {} at {}. Chest X-ray transfer learning (HW3): per experiment the spec, \
         the template's table, curves, test metrics and Grad-CAM heatmaps; a ranking of all experiments at the end.</p>",
        escape(&report.user),
        escape(&when(&report.generated_at))
    );
    html.push_str("<nav><ol>\n");
    for (index, experiment) in report.experiments.iter().enumerate() {
        let _ = writeln!(html, "<li><a href=\"#experiment-{}\">{}</a></li>", index + 1, escape(&heading(experiment)));
    }
    html.push_str("</ol></nav>\n</header>\n");
    for (index, experiment) in report.experiments.iter().enumerate() {
        experiment_section(&mut html, index + 1, experiment)?;
    }
    ranking_section(&mut html, &report.experiments);
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

/// An experiment's name as its heading says it.
fn heading(experiment: &Experiment) -> String {
    let name = experiment.jobs.first().map(|job| job.name.clone()).unwrap_or_default();
    match (&experiment.group, &experiment.params) {
        (Some(_), Some(params)) => format!("{name} {params} (sweep, {} runs)", experiment.jobs.len()),
        (Some(_), None) => format!("{name} (group of {} runs)", experiment.jobs.len()),
        (None, _) => name,
    }
}

/// The id the experiment was asked for by.
fn experiment_id(experiment: &Experiment) -> String {
    match (&experiment.group, experiment.jobs.first()) {
        (Some(group), _) => group.clone(),
        (None, Some(job)) => job.id.to_string(),
        (None, None) => String::new(),
    }
}

/// A number as the tables show it: four decimals, or mean ± std (n) for a group.
fn cell(metric: Option<&MeanStd>, group: bool) -> String {
    match metric {
        None => String::from("—"),
        Some(value) if group => format!("{:.4} ± {:.4} (n={})", value.mean, value.std, value.n),
        Some(value) => format!("{:.4}", value.mean),
    }
}

fn state_counts(jobs: &[Job]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for job in jobs {
        *counts.entry(job.state.to_string()).or_default() += 1;
    }
    counts.iter().map(|(state, count)| format!("{count} {state}")).collect::<Vec<_>>().join(", ")
}

fn experiment_section(html: &mut String, number: usize, experiment: &Experiment) -> Result<(), plots::PlotError> {
    let Some(first) = experiment.jobs.first() else { return Ok(()) };
    let group = experiment.group.is_some();
    let id = experiment_id(experiment);
    let _ = writeln!(html, "<section class=\"experiment\" id=\"experiment-{number}\" data-id=\"{}\">", escape(&id));
    let _ = writeln!(html, "<h2>{number}. {}</h2>", escape(&heading(experiment)));
    html.push_str("<dl class=\"facts\">\n");
    let fact = |html: &mut String, term: &str, value: &str| {
        let _ = writeln!(html, "<dt>{}</dt><dd>{}</dd>", escape(term), value);
    };
    fact(html, if group { "Group id" } else { "Job id" }, &format!("<span class=\"mono\">{}</span>", escape(&id)));
    let mut owners: Vec<&str> = experiment.jobs.iter().map(|job| job.owner.as_deref().unwrap_or("(none)")).collect();
    owners.dedup();
    fact(html, "Owner", &escape(&owners.join(", ")));
    if group {
        fact(html, "Runs", &escape(&state_counts(&experiment.jobs)));
    } else {
        fact(html, "State", &format!("<span class=\"state-{0}\">{0}</span>", escape(first.state.as_str())));
    }
    // Compared as times, not texts (as text, `…:00.5Z` sorts before `…:00Z`).
    let submitted = experiment.jobs.iter().map(|job| job.submitted_at).min().unwrap_or(first.submitted_at);
    fact(html, "Submitted", &escape(&submitted.to_readable_utc()));
    if let Some(started) = experiment.jobs.iter().filter_map(|job| job.started_at).min() {
        fact(html, "Started", &escape(&started.to_readable_utc()));
    }
    let all_finished = experiment.jobs.iter().all(|job| job.finished_at.is_some());
    if let Some(finished) = experiment.jobs.iter().filter_map(|job| job.finished_at).max().filter(|_| all_finished) {
        fact(html, "Finished", &escape(&finished.to_readable_utc()));
    }
    let devices: Vec<&str> = experiment
        .jobs
        .iter()
        .filter_map(|job| job.device.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !devices.is_empty() {
        fact(html, "Device", &escape(&devices.join(", ")));
    }
    let mut spec = first.spec.clone();
    let varying = varying_fields(&experiment.jobs.iter().map(|job| &job.spec).collect::<Vec<_>>());
    if group && varying.is_empty() {
        // The group's runs differ only by seed: describe them as one spec with repeats.
        spec.seed = experiment.jobs.iter().map(|job| job.spec.seed).min().unwrap_or(spec.seed);
        spec.repeats = experiment.jobs.len() as u32;
    }
    let ran_in: Vec<&str> = experiment
        .jobs
        .iter()
        .filter_map(|job| job.progress.as_ref()?.precision.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if varying.is_empty() {
        fact(html, "Spec", &escape(&describe(&spec, &ran_in)));
    } else {
        let fields: Vec<&str> = varying.iter().map(|(pointer, _)| pointer.as_str()).collect();
        let words = format!(
            "The runs differ in {} (see the runs below); the first run: {}",
            fields.join(", "),
            describe(&spec, &ran_in)
        );
        fact(html, "Spec", &escape(&words));
    }
    html.push_str("</dl>\n");
    for job in &experiment.jobs {
        if let Some(error) = &job.error {
            let _ = writeln!(
                html,
                "<p class=\"note\">Run <span class=\"mono\">{}</span> {}: {}</p>",
                job.id,
                job.state,
                escape(error)
            );
        }
    }
    if group {
        html.push_str("<h3>Runs</h3>\n<table class=\"runs\"><thead><tr><th>Job id</th><th>Seed</th>");
        for (pointer, _) in &varying {
            let _ = write!(html, "<th><code>{}</code></th>", escape(pointer));
        }
        html.push_str(
            "<th>State</th><th class=\"num\">Test accuracy</th><th class=\"num\">Test loss</th></tr></thead><tbody>\n",
        );
        for (index, job) in experiment.jobs.iter().enumerate() {
            let (acc, loss) = match &job.final_metrics {
                Some(last) => (format!("{:.4}", last.test_acc), format!("{:.4}", last.test_loss)),
                None => (String::from("—"), String::from("—")),
            };
            let _ = write!(html, "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td>", job.id, job.spec.seed);
            for (_, values) in &varying {
                let _ = write!(html, "<td class=\"mono\">{}</td>", escape(&values[index]));
            }
            let _ =
                writeln!(html, "<td>{}</td><td class=\"num\">{acc}</td><td class=\"num\">{loss}</td></tr>", job.state);
        }
        html.push_str("</tbody></table>\n");
    }

    // The HW3 template's table.
    html.push_str("<h3>Loss and accuracy (the HW3 template's table)</h3>\n");
    let succeeded = experiment.jobs.iter().filter(|job| job.state == JobState::Succeeded).count();
    if experiment.metrics.is_empty() {
        let _ = writeln!(
            html,
            "<p class=\"note\">No final metrics yet: {}. They appear once a run has succeeded.</p>",
            escape(&not_yet(experiment))
        );
    } else {
        if group {
            let _ = writeln!(
                html,
                "<p class=\"note\">Mean ± sample standard deviation over the {succeeded} succeeded runs of {}.</p>",
                experiment.jobs.len()
            );
        }
        html.push_str("<table class=\"template\"><thead><tr><th></th><th class=\"num\">Loss</th><th class=\"num\">Accuracy</th></tr></thead><tbody>\n");
        for (label, loss, accuracy) in
            [("Training set", "train_loss", "train_acc"), ("Test set", "test_loss", "test_acc")]
        {
            let _ = writeln!(
                html,
                "<tr><th>{label}</th><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                cell(experiment.metrics.get(loss), group),
                cell(experiment.metrics.get(accuracy), group)
            );
        }
        html.push_str("</tbody></table>\n");
    }

    // Curves.
    html.push_str("<h3>Accuracy and loss per epoch (training and validation)</h3>\n");
    if experiment.curves.is_empty() {
        let _ = writeln!(html, "<p class=\"note\">No finished epoch yet: {}.</p>", escape(&not_yet(experiment)));
    } else {
        html.push_str("<div class=\"plots\">\n");
        for metric in [CurveMetric::Accuracy, CurveMetric::Loss] {
            let runs: Vec<CurveRun> = experiment
                .curves
                .iter()
                .map(|(label, epochs)| CurveRun { label: label.clone(), epochs: epochs.clone() })
                .collect();
            let title = format!("{}: {} per epoch", first.name, metric.name());
            let svg = plots::render(&Plot::Curves(Curves { metric, title, runs }), Format::Svg)?;
            let svg = String::from_utf8_lossy(&svg);
            let _ = writeln!(html, "<figure class=\"curve\">{}<figcaption>{} (train and validation; dashed lines mark phase starts)</figcaption></figure>", svg.trim(), metric.name());
        }
        html.push_str("</div>\n");
    }

    // Test metrics and the confusion matrix.
    html.push_str("<h3>Test-set metrics</h3>\n");
    let binary: Vec<&str> = ["precision", "recall", "specificity", "f1", "auc"]
        .into_iter()
        .filter(|name| experiment.metrics.contains_key(name))
        .collect();
    if experiment.metrics.is_empty() {
        html.push_str("<p class=\"note\">None yet.</p>\n");
    } else if binary.is_empty() {
        html.push_str("<p class=\"note\">Precision, recall, specificity, F1 and AUC are computed for binary (sigmoid, Dense(1)) models; this one's per-class metrics are in its metrics JSON.</p>\n");
    } else {
        html.push_str("<table class=\"test-metrics\"><thead><tr>");
        for (name, label, _) in METRICS.iter().filter(|(name, _, _)| binary.contains(name)) {
            let _ = write!(html, "<th class=\"num\" data-metric=\"{name}\">{label}</th>");
        }
        html.push_str("</tr></thead><tbody><tr>");
        for name in METRICS.iter().map(|(name, _, _)| *name).filter(|name| binary.contains(name)) {
            let _ = write!(html, "<td class=\"num\">{}</td>", cell(experiment.metrics.get(name), group));
        }
        html.push_str("</tr></tbody></table>\n");
    }
    if let Some(confusion) = &experiment.confusion {
        confusion_table(html, confusion);
    }

    // Grad-CAM.
    html.push_str("<h3>Grad-CAM heatmaps (test images)</h3>\n");
    let gallery = &experiment.gallery;
    if let (Some(job), true) = (&gallery.job, group) {
        let _ = writeln!(html, "<p class=\"note\">From run <span class=\"mono\">{}</span>.</p>", escape(job));
    }
    if gallery.images.is_empty() {
        let why = if experiment.jobs.iter().any(|job| job.state == JobState::Succeeded) {
            ""
        } else {
            " yet: the worker draws them on test images once a run has trained"
        };
        let _ = writeln!(html, "<p class=\"note no-cam\">No Grad-CAM heatmaps{why}.</p>");
    } else {
        html.push_str("<div class=\"gallery\">\n");
        for image in &gallery.images {
            let caption = escape(&image.caption);
            let _ = writeln!(
                html,
                "<figure><img alt=\"{caption}\" src=\"data:image/png;base64,{}\"><figcaption>{caption}</figcaption></figure>",
                base64(&image.png)
            );
        }
        html.push_str("</div>\n");
    }
    for note in &gallery.notes {
        let _ = writeln!(html, "<p class=\"note\">{}</p>", escape(note));
    }
    html.push_str("</section>\n");
    Ok(())
}

/// The spec fields (JSON pointers, `/optimizer/lr`) whose values differ between the jobs of a
/// group (a sweep's combinations), with each job's value as JSON (`—` where absent); seed,
/// repeats and name aside. Empty for a single job or a plain repeat group.
fn varying_fields(specs: &[&crate::domain::JobSpec]) -> Vec<(String, Vec<String>)> {
    fn leaves(value: &serde_json::Value, pointer: String, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                map.iter().for_each(|(key, value)| leaves(value, format!("{pointer}/{key}"), out))
            }
            serde_json::Value::Array(items) => {
                items.iter().enumerate().for_each(|(index, value)| leaves(value, format!("{pointer}/{index}"), out))
            }
            leaf => {
                out.insert(pointer, leaf.to_string());
            }
        }
    }
    let flat: Vec<BTreeMap<String, String>> = specs
        .iter()
        .map(|spec| {
            let mut out = BTreeMap::new();
            leaves(&serde_json::to_value(spec).unwrap_or_default(), String::new(), &mut out);
            out
        })
        .collect();
    let pointers: std::collections::BTreeSet<&String> = flat.iter().flat_map(|fields| fields.keys()).collect();
    pointers
        .into_iter()
        .filter(|pointer| !["/seed", "/repeats", "/name"].contains(&pointer.as_str()))
        .map(|pointer| {
            (
                pointer.clone(),
                flat.iter()
                    .map(|fields| fields.get(pointer).cloned().unwrap_or_else(|| String::from("—")))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, values)| values.iter().any(|value| *value != values[0]))
        .collect()
}

/// An RFC 3339 UTC timestamp as people read it, to the second: `2026-05-10 23:59:00 UTC`.
/// Anything else is shown as it is.
fn when(timestamp: &str) -> String {
    Timestamp::parse_rfc3339(timestamp).map_or_else(|_| timestamp.to_string(), Timestamp::to_readable_utc)
}

/// Why an experiment has no numbers yet, in its own states' words.
fn not_yet(experiment: &Experiment) -> String {
    match (&experiment.group, experiment.jobs.as_slice()) {
        (None, [job]) => format!("the job is {}", job.state),
        _ => format!("the runs are {}", state_counts(&experiment.jobs)),
    }
}

fn confusion_table(html: &mut String, confusion: &ConfusionTable) {
    let summed = if confusion.runs > 1 { format!(", summed over {} runs", confusion.runs) } else { String::new() };
    let _ = writeln!(html, "<table class=\"confusion\"><caption>Confusion matrix (test set, rows true class, columns predicted{summed})</caption>");
    html.push_str("<thead><tr><th>true \\ predicted</th>");
    for class in &confusion.classes {
        let _ = write!(html, "<th class=\"num\">{}</th>", escape(class));
    }
    html.push_str("</tr></thead><tbody>\n");
    for (class, row) in confusion.classes.iter().zip(&confusion.counts) {
        let _ = write!(html, "<tr><th>{}</th>", escape(class));
        for count in row {
            let _ = write!(html, "<td class=\"num\">{count}</td>");
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>\n");
}

/// Competition ranks ("1, 1, 3") of each experiment on one metric, best first; `None` for an
/// experiment without the metric.
pub fn ranks(values: &[Option<f64>], higher_is_better: bool) -> Vec<Option<usize>> {
    values
        .iter()
        .map(|value| {
            let value = (*value)?;
            let better = values
                .iter()
                .flatten()
                .filter(|other| if higher_is_better { **other > value } else { **other < value })
                .count();
            Some(better + 1)
        })
        .collect()
}

fn ranking_section(html: &mut String, experiments: &[Experiment]) {
    html.push_str("<section class=\"ranking\" id=\"ranking\">\n<h2>Ranking</h2>\n");
    html.push_str(
        "<p class=\"note\">Each experiment's rank on each metric (1 = best; lower is better for losses, higher for the rest; \
         ★ marks the best). Rows are ordered by test accuracy; groups are ranked by their mean.</p>\n",
    );
    let rank_table: Vec<Vec<Option<usize>>> = METRICS
        .iter()
        .map(|(name, _, higher)| {
            let values: Vec<Option<f64>> =
                experiments.iter().map(|experiment| experiment.metrics.get(name).map(|value| value.mean)).collect();
            ranks(&values, *higher)
        })
        .collect();
    let mut order: Vec<usize> = (0..experiments.len()).collect();
    // Test accuracy first, then test loss; experiments without numbers last, in the order asked.
    order.sort_by_key(|&index| {
        (rank_table[0][index].unwrap_or(usize::MAX), rank_table[1][index].unwrap_or(usize::MAX), index)
    });
    html.push_str("<table class=\"ranking\"><thead><tr><th>Experiment</th><th>Id</th>");
    for (name, label, _) in METRICS {
        let _ = write!(html, "<th class=\"num\" data-metric=\"{name}\">{label}</th>");
    }
    html.push_str("</tr></thead><tbody>\n");
    for index in order {
        let experiment = &experiments[index];
        let group = experiment.group.is_some();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"mono\">{}</td>",
            escape(&heading(experiment)),
            escape(&experiment_id(experiment))
        );
        for (column, (name, _, _)) in METRICS.iter().enumerate() {
            let value = experiment.metrics.get(name);
            match rank_table[column][index] {
                Some(1) => {
                    let _ = write!(html, "<td class=\"num best\">{} ★ (1)</td>", cell(value, group));
                }
                Some(rank) => {
                    let _ = write!(html, "<td class=\"num\">{} ({rank})</td>", cell(value, group));
                }
                None => html.push_str("<td class=\"num\">—</td>"),
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_text_and_attributes() {
        assert_eq!(escape(r#"<b>"Q1" & 'Q2'</b>"#), "&lt;b&gt;&quot;Q1&quot; &amp; &#39;Q2&#39;&lt;/b&gt;");
        assert_eq!(escape("plain — ünïcode"), "plain — ünïcode");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn a_sweeps_runs_are_told_apart_by_the_fields_that_vary() {
        let spec = |lr: f64, size: u32, seed: u64| {
            crate::domain::JobSpec::parse(
                format!(
                    r#"{{"name": "s{seed}", "dataset": "d", "backbone": "vgg16", "image_size": {size}, "batch_size": 20,
                        "head": ["gap", {{"dense": 1}}], "phases": [{{"epochs": 1, "train": "head"}}],
                        "optimizer": {{"name": "rmsprop", "lr": {lr}}}, "seed": {seed}}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let (a, b, c) = (spec(1e-4, 128, 1), spec(1e-5, 128, 2), spec(1e-4, 256, 3));
        assert_eq!(
            varying_fields(&[&a, &b, &c]),
            vec![
                (String::from("/image_size"), vec![String::from("128"), String::from("128"), String::from("256")]),
                (
                    String::from("/optimizer/lr"),
                    vec![String::from("0.0001"), String::from("0.00001"), String::from("0.0001")]
                ),
            ]
        );
        assert!(varying_fields(&[&a, &spec(1e-4, 128, 9)]).is_empty(), "seeds and names alone are a repeat group");
    }

    #[test]
    fn timestamps_read_to_the_second() {
        assert_eq!(when("2026-12-01T13:36:47.469409331Z"), "2026-12-01 13:36:47 UTC");
        assert_eq!(when("2026-12-01T13:36:47Z"), "2026-12-01 13:36:47 UTC");
        assert_eq!(when("yesterday"), "yesterday");
    }

    #[test]
    fn ranks_share_ties_and_skip_missing_values() {
        assert_eq!(ranks(&[Some(0.7), Some(0.9), None, Some(0.7)], true), vec![Some(2), Some(1), None, Some(2)]);
        assert_eq!(ranks(&[Some(0.5), Some(0.2), Some(0.9)], false), vec![Some(2), Some(1), Some(3)]);
        assert_eq!(ranks(&[], true), Vec::<Option<usize>>::new());
    }
}
