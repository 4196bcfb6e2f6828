//! `trainq watch`: jobs' progress live, from the server's event stream (`GET /api/events`).
//! On a terminal, one progress bar per job (phase, epoch, step, images/s, ETA, then the test
//! accuracy and AUC); piped or redirected, plain lines, one per change worth a line. A dropped
//! connection is resumed with `Last-Event-ID`, so no event is missed; when the server cannot
//! replay what was missed it sends a `snapshot`, and the jobs are read afresh.

use super::{wait_code, Api, Profile};
use crate::domain::JobProgress;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Bar length: the fraction done in thousandths.
const BAR_UNITS: u64 = 1000;
/// A queued job's place and ETA change without an event: read again this often.
const QUEUED_REFRESH: Duration = Duration::from_secs(10);
/// In plain lines, progress within an epoch is printed at most this often per job.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// One watched job, as the client last heard of it.
struct Watched {
    id: String,
    name: String,
    state: String,
    /// Epochs per phase, from the spec: the bar's scale.
    planned: Vec<u32>,
    progress: Option<JobProgress>,
    position: Option<u64>,
    eta_at: Option<f64>,
    /// The closing words once it ended: test accuracy and AUC, or why it failed.
    outcome: Option<String>,
    bar: Option<ProgressBar>,
    /// Plain lines: the last one printed, its stage ([`Watched::stage`]) and when.
    printed: Option<(String, String, Instant)>,
}

impl Watched {
    fn new(job: &Value) -> Watched {
        let mut watched = Watched {
            id: job["id"].as_str().unwrap_or_default().to_string(),
            name: job["name"].as_str().unwrap_or_default().to_string(),
            state: String::new(),
            planned: job["spec"]["phases"]
                .as_array()
                .map(|phases| phases.iter().map(|phase| phase["epochs"].as_u64().unwrap_or(0) as u32).collect())
                .unwrap_or_default(),
            progress: None,
            position: None,
            eta_at: None,
            outcome: None,
            bar: None,
            printed: None,
        };
        watched.read(job);
        watched
    }

    fn ended(&self) -> bool {
        self.state.parse::<crate::domain::JobState>().is_ok_and(crate::domain::JobState::is_terminal)
    }

    /// Takes in the job as `GET /api/jobs/{id}` has it.
    fn read(&mut self, job: &Value) {
        self.state = job["state"].as_str().unwrap_or("?").to_string();
        self.progress = serde_json::from_value(job["progress"].clone()).ok();
        self.position = job["position"].as_u64();
        self.eta_at = job["eta_at"].as_f64();
        self.outcome = self.ended().then(|| outcome(job));
    }

    fn fraction(&self) -> f64 {
        if self.state == "succeeded" {
            return 1.0;
        }
        self.progress.as_ref().and_then(|progress| progress.fraction(&self.planned)).unwrap_or(0.0)
    }

    /// What the job is doing, in a few words.
    fn status(&self) -> String {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        match self.state.as_str() {
            "queued" => {
                let place = self
                    .position
                    .map(|position| format!("queued #{position}"))
                    .unwrap_or_else(|| String::from("queued"));
                match self.eta_at {
                    Some(at) => format!("{place} · starts in ~{}", duration((at - crate::store::unix_now()).max(0.0))),
                    None => place,
                }
            }
            "running" => match &self.progress {
                Some(progress) if progress.phase > 0 => {
                    let mut words = format!(
                        "phase {}/{} · epoch {}/{} · step {}/{}",
                        progress.phase, progress.phases, progress.epoch, progress.epochs, progress.step, progress.steps
                    );
                    if let Some(rate) = progress.images_per_sec {
                        words.push_str(&format!(" · {rate:.1} img/s"));
                    }
                    // "training" is what the numbers already say.
                    if !progress.activity.is_empty() && progress.activity != "training" {
                        words.push_str(&format!(" · {}", progress.activity));
                    }
                    words
                }
                Some(progress) if !progress.activity.is_empty() => progress.activity.clone(),
                _ => String::from("starting"),
            },
            state => state.to_string(),
        }
    }

    /// State, phase and epoch: a new one is always worth a plain line; a new step is not.
    fn stage(&self) -> String {
        let (phase, epoch) = self.progress.as_ref().map_or((0, 0), |progress| (progress.phase, progress.epoch));
        format!("{} {phase} {epoch}", self.state)
    }

    fn label(&self) -> String {
        let short = &self.id[..self.id.len().min(8)];
        if self.name.is_empty() {
            short.to_string()
        } else {
            format!("{short} {}", self.name)
        }
    }
}

/// `12s`, `4m`, `2h05m`.
fn duration(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

/// How a job ended, in words: `succeeded · test acc 0.912 · AUC 0.953`.
fn outcome(job: &Value) -> String {
    let state = job["state"].as_str().unwrap_or("?");
    match state {
        "succeeded" => {
            let last = &job["final_metrics"];
            let mut words = String::from(state);
            if let Some(acc) = last["test_acc"].as_f64() {
                words.push_str(&format!(" · test acc {acc:.3}"));
            }
            if let Some(auc) = last["binary"]["auc"].as_f64() {
                words.push_str(&format!(" · AUC {auc:.3}"));
            }
            words
        }
        "failed" => format!("failed: {}", job["error"].as_str().unwrap_or_default().lines().next().unwrap_or_default()),
        _ => state.to_string(),
    }
}

/// Where the progress goes: bars on a terminal, lines elsewhere.
enum Screen {
    Bars(MultiProgress),
    Lines,
}

impl Screen {
    fn show(&self, job: &mut Watched) {
        match self {
            Screen::Bars(bars) => {
                let bar = match &job.bar {
                    Some(bar) => bar.clone(),
                    None => {
                        let bar = bars.add(ProgressBar::new(BAR_UNITS));
                        bar.set_prefix(job.label());
                        job.bar = Some(bar.clone());
                        bar
                    }
                };
                let template = if job.state == "running" {
                    "{prefix:.bold} {bar:30.cyan/blue} {percent:>3}% {msg} · ETA {eta}"
                } else {
                    "{prefix:.bold} {bar:30.cyan/blue} {percent:>3}% {msg}"
                };
                bar.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("█▌░"));
                bar.set_position((job.fraction() * BAR_UNITS as f64) as u64);
                bar.set_message(job.status());
                if job.ended() && !bar.is_finished() {
                    bar.finish();
                }
            }
            Screen::Lines => {
                let (line, stage) = (format!("{} {}", job.label(), job.status()), job.stage());
                let due = match &job.printed {
                    None => true,
                    Some((last, _, _)) if *last == line => false,
                    Some((_, last_stage, at)) => *last_stage != stage || at.elapsed() >= LINE_EVERY,
                };
                if due {
                    println!("{line}");
                    job.printed = Some((line, stage, Instant::now()));
                }
            }
        }
    }

    /// A line that stays (an epoch's results), printed above the bars.
    fn note(&self, line: String) {
        match self {
            Screen::Bars(bars) => {
                let _ = bars.println(line);
            }
            Screen::Lines => println!("{line}"),
        }
    }
}

/// `trainq watch [ID…]`: until every job has ended; without ids, the caller's queued and running
/// jobs. Returns `wait`'s exit code (0 all succeeded, 1 any failed, 2 any cancelled).
pub async fn watch(ids: &[String]) -> anyhow::Result<i32> {
    let api = Api::new(Profile::load()?)?;
    let mut resolved = Vec::new();
    if ids.is_empty() {
        let active = api.all_jobs("owner=me&state=queued,running").await?;
        resolved.extend(active.iter().rev().filter_map(|job| job["id"].as_str().map(str::to_string)));
        if resolved.is_empty() {
            println!("none of your jobs is queued or running");
            return Ok(0);
        }
    }
    for given in ids {
        resolved.push(api.resolve(given).await?);
    }
    watch_ids(&api, &resolved).await
}

/// Follows `ids` (full ids) until all have ended.
pub(super) async fn watch_ids(api: &Api, ids: &[String]) -> anyhow::Result<i32> {
    let screen = if std::io::stdout().is_terminal() {
        Screen::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stdout()))
    } else {
        Screen::Lines
    };
    let mut jobs: HashMap<String, Watched> = HashMap::new();
    for id in ids {
        let mut watched = Watched::new(&api.get(&format!("/api/jobs/{id}")).await?);
        screen.show(&mut watched);
        jobs.insert(id.clone(), watched);
    }
    let mut last_event_id: Option<String> = None;
    let mut refreshed = Instant::now();
    while !jobs.values().all(Watched::ended) {
        let headers: Vec<(&str, String)> = last_event_id.iter().map(|id| ("Last-Event-ID", id.clone())).collect();
        let response = match api.open("/api/events", &headers).await {
            Ok(response) => response,
            Err(err) => {
                screen.note(format!("lost the server ({err:#}); trying again"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let mut events = response.bytes_stream().eventsource();
        let mut tick = tokio::time::interval(QUEUED_REFRESH);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = tick.tick() => {
                    if refreshed.elapsed() >= QUEUED_REFRESH {
                        refresh(api, &screen, &mut jobs, |job| job.state == "queued").await?;
                        refreshed = Instant::now();
                    }
                    continue;
                }
            };
            let Some(Ok(event)) = event else { break };
            if !event.id.is_empty() {
                last_event_id = Some(event.id.clone());
            }
            if event.event == "snapshot" {
                // Events were missed (a first connection, or one back after too long): read the
                // jobs themselves. The stream was open before this, so nothing falls between.
                refresh(api, &screen, &mut jobs, |job| !job.ended()).await?;
                continue;
            }
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else { continue };
            let Some(job) = data["job_id"].as_str().and_then(|id| jobs.get_mut(id)) else { continue };
            match event.event.as_str() {
                "progress" => {
                    job.state = String::from("running");
                    job.progress = serde_json::from_value(data["progress"].clone()).ok();
                }
                "started" => job.state = String::from("running"),
                "queued" => job.state = String::from("queued"),
                "epoch" => screen.note(format!(
                    "{} phase {} epoch {}: train acc {} loss {} · val acc {} loss {}",
                    job.label(),
                    data["phase"],
                    data["epoch"],
                    number(&data["train_acc"]),
                    number(&data["train_loss"]),
                    number(&data["val_acc"]),
                    number(&data["val_loss"]),
                )),
                // The final metrics are in the job, not the event.
                "finished" => job.read(&api.get(&format!("/api/jobs/{}", job.id)).await?),
                _ => continue,
            }
            screen.show(job);
            if jobs.values().all(Watched::ended) {
                break;
            }
        }
        if !jobs.values().all(Watched::ended) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let states: Vec<&str> = ids.iter().map(|id| jobs[id].state.as_str()).collect();
    Ok(wait_code(&states))
}

/// Reads again the watched jobs `which` picks.
async fn refresh(
    api: &Api,
    screen: &Screen,
    jobs: &mut HashMap<String, Watched>,
    which: impl Fn(&Watched) -> bool,
) -> anyhow::Result<()> {
    for job in jobs.values_mut().filter(|job| which(job)) {
        job.read(&api.get(&format!("/api/jobs/{}", job.id)).await?);
        screen.show(job);
    }
    Ok(())
}

fn number(value: &Value) -> String {
    value.as_f64().map(|number| format!("{number:.3}")).unwrap_or_else(|| String::from("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_says_where_it_is_and_an_ended_one_how_it_went() {
        let mut job = serde_json::json!({
            "id": "0123456789abcdef", "name": "q1", "state": "running", "spec": {"phases": [{"epochs": 2}, {"epochs": 2}]},
            "progress": {"phase": 2, "phases": 2, "epoch": 1, "epochs": 2, "step": 5, "steps": 10, "images_per_sec": 12.34, "activity": ""},
        });
        let watched = Watched::new(&job);
        assert_eq!(watched.status(), "phase 2/2 · epoch 1/2 · step 5/10 · 12.3 img/s");
        assert!((watched.fraction() - 0.625).abs() < 1e-9);
        assert_eq!(watched.label(), "01234567 q1");
        job["state"] = "succeeded".into();
        job["final_metrics"] = serde_json::json!({"test_acc": 0.9126, "binary": {"auc": 0.95}});
        assert_eq!(Watched::new(&job).status(), "succeeded · test acc 0.913 · AUC 0.950");
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(250.0), "4m");
        assert_eq!(duration(7500.0), "2h05m");
    }
}
