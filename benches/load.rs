//! Benchmark (not a test): a semester's load on a real `trainq serve` (release build, 2 CPU slots,
//! 20 students, a generated Kaggle-sized dataset of 5,856 images), every figure next to a baseline
//! measured in the same run:
//!
//! - **submissions** at a fixed rate from a second process (open loop: latency is measured from
//!   each request's scheduled send time, so a stalled server cannot hide its backlog), against
//!   `GET /healthz` (no database, no auth) at the same rate; every job answered 201 must be listed
//!   afterwards (`lost`);
//! - **idle CPU** of the server process (`/proc/PID/stat`) over a quiet window with 10,000 and
//!   100,000 jobs queued behind two workers that hold their slots, against the same window with
//!   an empty queue;
//! - **the job list's first page** (`GET /api/jobs?limit=50`) at 10,000 jobs, against `GET /healthz`;
//! - **dispatch**: a worker exits → the next worker is running (timestamps the fake workers write),
//!   with 10,000 queued, against the same with a handful queued.
//!
//! Then, on a fresh server, the **closed loop**: 8 connections, each sending its next submission
//! when the last is answered, so the figure is what the server sustains, not what was offered.
//! The queue is filled (by the same loop, unmeasured) to 1,000, 10,000 and 100,000 jobs, and at
//! each: a measured round of `TRAINQ_LOAD_CLOSED_N` submissions (submits/s, p50/p99), then, once
//! quiet, a device freeing → the next job running, the server's idle CPU over 10 s, `GET /metrics`
//! p99, the first page of `GET /api/jobs` p99 and RSS. Each level also runs the same loop on
//! `GET /healthz` (no auth, no database): the ceiling of this client, connections and HTTP stack
//! on this box. The load average is printed beside each level: the box may be shared, so compare
//! only figures of one run.
//!
//! `cargo bench --no-default-features --bench load` (env `TRAINQ_LOAD_RATE=2000` per second,
//! `TRAINQ_LOAD_N=10000` submissions per round, `TRAINQ_LOAD_BIG=100000`: the queue for the second
//! idle measure, 0 to skip it; `TRAINQ_LOAD_ROUNDS=open,closed`: which halves run;
//! `TRAINQ_LOAD_CLOSED_N=5000`, `TRAINQ_LOAD_DISPATCHES=40` per level,
//! `TRAINQ_LOAD_LEVELS=1000,10000,100000`; `TRAINQ_LOAD_SERVER`: another build's `trainq` binary to
//! measure, e.g. the base branch's, for a before/after on one box). The CPU flags are printed with
//! the results.
//!
//! The bench binary is also the load generator: the parent re-executes itself with
//! `--generator MODE URL RATE N TOKENS_FILE` (in `closed` mode RATE is the number of connections),
//! so the client never shares a process (or a tokio runtime) with the measurement's other half.

#[path = "support/mod.rs"]
mod support;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How many students share the load: each user's token is used for every 20th request.
const STUDENTS: usize = 20;

/// A fake worker that holds its slot until told to go: it notes when it started, waits on its own
/// FIFO (no CPU while it waits), reports final metrics, notes when it ended and exits. `DIR` is
/// replaced by the folder of notes.
const FAKE_WORKER: &str = r#"#!/bin/sh
d=DIR
date +%s.%N > "$d/started-$$.tmp" && mv "$d/started-$$.tmp" "$d/started-$$"
mkfifo "$d/go-$$"
read _ < "$d/go-$$"
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
date +%s.%N > "$d/ended-$$"
exit 0
"#;

/// How many connections the closed loop keeps busy.
const CLOSED_LOOP_CONNECTIONS: usize = 8;

/// What the generator process reports on its last stdout line.
#[derive(Serialize, Deserialize)]
struct Summary {
    /// Milliseconds from each answered request's scheduled send time (closed loop: its send) to
    /// its response.
    latencies_ms: Vec<f64>,
    /// Seconds from the first scheduled send to the last response.
    seconds: f64,
    /// Answers by status (`"201"`, `"429"`, …), and `"error"` for requests that got none.
    statuses: BTreeMap<String, usize>,
    /// The ids of jobs answered 201 (submit mode).
    accepted_ids: Vec<String>,
}

/// One request's outcome.
struct Outcome {
    /// None when no answer came.
    latency_ms: Option<f64>,
    status: String,
    job_id: Option<String>,
}

/// The job every submission sends: small, valid, no weights file needed.
fn spec(index: usize) -> serde_json::Value {
    serde_json::json!({
        "name": format!("load-{index}"), "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 4,
        "head": ["gap", {"dense": 16}, {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}],
        "optimizer": {"name": "rmsprop", "lr": 1e-3}, "seed": 1
    })
}

/// Sends one submission (the `index`th) and waits for its answer.
async fn submit_once(client: &reqwest::Client, url: &str, token: &str, index: usize) -> Outcome {
    let sent = tokio::time::Instant::now();
    let answer = client.post(format!("{url}/api/jobs")).bearer_auth(token).json(&spec(index)).send().await;
    outcome_of(index, answer, sent).await
}

/// A request's answer as an [`Outcome`], its latency counted from `since`.
async fn outcome_of(
    index: usize,
    answer: Result<reqwest::Response, reqwest::Error>,
    since: tokio::time::Instant,
) -> Outcome {
    let answer = match answer {
        Ok(response) => {
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            Ok((status, body))
        }
        Err(err) => Err(err),
    };
    let latency_ms = (tokio::time::Instant::now() - since).as_secs_f64() * 1e3;
    match answer {
        Ok((status, body)) => Outcome {
            latency_ms: Some(latency_ms),
            status: status.as_u16().to_string(),
            job_id: body["jobs"][0]["id"]
                .as_str()
                .filter(|_| status == reqwest::StatusCode::CREATED)
                .map(str::to_string),
        },
        Err(err) => {
            eprintln!("request {index}: {err}");
            Outcome { latency_ms: None, status: String::from("error"), job_id: None }
        }
    }
}

/// Adds outcomes to a summary.
fn summarize(outcomes: impl IntoIterator<Item = Outcome>, seconds: f64) -> Summary {
    let mut summary =
        Summary { latencies_ms: Vec::new(), seconds, statuses: BTreeMap::new(), accepted_ids: Vec::new() };
    for outcome in outcomes {
        summary.latencies_ms.extend(outcome.latency_ms);
        *summary.statuses.entry(outcome.status).or_default() += 1;
        summary.accepted_ids.extend(outcome.job_id);
    }
    summary
}

/// The closed-loop generator: `connections` connections, each sending its next submission when
/// its last is answered, until `n` have been sent. Each connection has a client of its own, so
/// none waits on another's connection.
fn closed_loop_generator(url: &str, connections: usize, n: usize, tokens: &[String], healthz: bool) -> Summary {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let loops: Vec<_> = (0..connections)
            .map(|_| {
                let (next, url, tokens) = (next.clone(), url.to_string(), tokens.to_vec());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .pool_max_idle_per_host(1)
                        .build()
                        .unwrap();
                    let mut outcomes = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if index >= n {
                            return outcomes;
                        }
                        outcomes.push(if healthz {
                            let sent = tokio::time::Instant::now();
                            outcome_of(index, client.get(format!("{url}/healthz")).send().await, sent).await
                        } else {
                            submit_once(&client, &url, &tokens[index % tokens.len()], index).await
                        });
                    }
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(n);
        for each in loops {
            outcomes.extend(each.await.unwrap());
        }
        summarize(outcomes, started.elapsed().as_secs_f64())
    })
}

/// The load generator (the second process): `n` requests at `rate` per second, open loop; or, in
/// `closed` mode, `n` submissions over `rate` connections, closed loop.
fn generator(mode: &str, url: &str, rate: f64, n: usize, tokens_file: &Path) {
    let tokens: Vec<String> = std::fs::read_to_string(tokens_file).unwrap().lines().map(str::to_string).collect();
    if mode == "closed" || mode == "closed-healthz" {
        let summary = closed_loop_generator(url, rate as usize, n, &tokens, mode == "closed-healthz");
        println!("{}", serde_json::to_string(&summary).unwrap());
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = runtime.block_on(async {
        // One keep-alive client; the pool opens more connections only when requests overlap.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let started = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for index in 0..n {
            let scheduled = started + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(scheduled).await;
            let request = match mode {
                "submit" => {
                    client.post(format!("{url}/api/jobs")).bearer_auth(&tokens[index % tokens.len()]).json(&spec(index))
                }
                "healthz" => client.get(format!("{url}/healthz")),
                other => panic!("unknown generator mode {other}"),
            };
            tasks.push(tokio::spawn(async move { outcome_of(index, request.send().await, scheduled).await }));
        }
        let mut outcomes = Vec::with_capacity(n);
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        summarize(outcomes, started.elapsed().as_secs_f64())
    });
    println!("{}", serde_json::to_string(&summary).unwrap());
}

/// Runs the generator as a second process and reads its summary.
fn generate(mode: &str, url: &str, rate: f64, n: usize, tokens_file: &Path) -> Summary {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--generator", mode, url, &rate.to_string(), &n.to_string()])
        .arg(tokens_file)
        .stderr(Stdio::inherit())
        .output()
        .expect("load generator");
    assert!(output.status.success(), "the load generator failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON summary line")
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// p50, p99 and max of a summary's latencies.
fn latency(summary: &Summary) -> (f64, f64, f64) {
    let mut sorted = summary.latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    (quantile(&sorted, 0.5), quantile(&sorted, 0.99), sorted.last().copied().unwrap_or(f64::NAN))
}

/// The `trainq` binary measured: `TRAINQ_LOAD_SERVER` when set, else this build's.
fn server_binary() -> std::path::PathBuf {
    std::env::var_os("TRAINQ_LOAD_SERVER").map_or_else(|| env!("CARGO_BIN_EXE_trainq").into(), Into::into)
}

fn trainq(args: &[&str], data: &Path) -> String {
    let output = Command::new(server_binary()).args(args).arg("--data-dir").arg(data).output().unwrap();
    assert!(output.status.success(), "trainq {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Starts `trainq serve` on port 0; returns the process and its address.
fn serve(root: &Path, worker: &Path) -> (Child, String) {
    let mut child = Command::new(server_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--no-gpu", "--cpu-slots", "2"])
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--datasets")
        .arg(root.join("datasets"))
        .arg("--worker")
        .arg(worker)
        // The limits are tested elsewhere; here they would only measure themselves.
        .args(["--rate-limit-per-minute", "100000000", "--max-jobs-per-user", "100000000"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(root.join("server.log")).unwrap())
        .spawn()
        .expect("starting trainq serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(address) = line.strip_prefix("trainq listening on ") {
            break address.to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, address)
}

/// Every id `GET /api/jobs` lists, page by page (as the admin, who sees every job).
fn listed_ids(url: &str, admin_token: &str) -> HashSet<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut ids = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = client.get(format!("{url}/api/jobs")).query(&[("limit", "500")]).bearer_auth(admin_token);
            if let Some(cursor) = &cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "GET /api/jobs: {}", response.status());
            let page: serde_json::Value = response.json().await.unwrap();
            ids.extend(
                page["jobs"].as_array().unwrap().iter().filter_map(|job| job["id"].as_str().map(str::to_string)),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return ids,
            }
        }
    })
}

/// Seconds of CPU (user + system) the process has used: `/proc/PID/stat` fields 14 and 15.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The process's resident memory, MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The server's CPU use over a quiet `window`, as a share of one core.
fn idle_cpu(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

/// Sequential `GET path` requests: their latencies in ms, sorted.
fn sequential_gets(url: &str, path: &str, token: Option<&str>, n: usize) -> Vec<f64> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let mut request = client.get(format!("{url}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let started = std::time::Instant::now();
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "GET {path}: {}", response.status());
            let body = response.bytes().await.unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            assert!(!body.is_empty());
        }
        latencies.sort_by(f64::total_cmp);
        latencies
    })
}

/// How many jobs are queued, from `/metrics`: the sum over users of `trainq_jobs{state="queued"}`.
fn queued(url: &str) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let text = runtime.block_on(async { reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap() });
    text.lines()
        .filter(|line| line.starts_with("trainq_jobs{") && line.contains("state=\"queued\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The fake workers' notes: which have started, which have ended, and when.
struct Workers {
    dir: std::path::PathBuf,
}

impl Workers {
    fn note(&self, kind: &str, pid: &str) -> Option<f64> {
        std::fs::read_to_string(self.dir.join(format!("{kind}-{pid}"))).ok()?.trim().parse().ok()
    }

    /// Pids of workers that started and hold their slot (their FIFO exists, no end noted).
    fn holding(&self) -> Vec<String> {
        let mut pids: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_prefix("go-").map(str::to_string))
            .filter(|pid| self.note("ended", pid).is_none())
            .collect();
        pids.sort();
        pids
    }

    fn started(&self) -> HashSet<String> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_str()?.to_string();
                name.strip_prefix("started-").filter(|pid| !pid.ends_with(".tmp")).map(str::to_string)
            })
            .collect()
    }

    /// Waits until `count` workers hold their slots.
    fn wait_holding(&self, count: usize) -> Vec<String> {
        let started = std::time::Instant::now();
        loop {
            let holding = self.holding();
            if holding.len() >= count {
                return holding;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{count} workers never held their slots");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets one holding worker finish; returns ms from its end to the next worker's start.
    fn dispatch_once(&self) -> f64 {
        let holding = self.wait_holding(2);
        let before = self.started();
        let pid = &holding[0];
        std::fs::write(self.dir.join(format!("go-{pid}")), "go\n").unwrap();
        let started = std::time::Instant::now();
        let next = loop {
            if let Some(next) = self.started().difference(&before).next().cloned() {
                break next;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no worker started after {pid} ended");
            std::thread::sleep(Duration::from_millis(1));
        };
        // The end is noted just before the worker exits; wait for the note if it is late.
        let ended = loop {
            if let Some(ended) = self.note("ended", pid) {
                break ended;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        (self.note("started", &next).unwrap() - ended) * 1e3
    }

    /// `count` dispatches; latencies in ms, sorted.
    fn dispatches(&self, count: usize) -> Vec<f64> {
        let mut latencies: Vec<f64> = (0..count).map(|_| self.dispatch_once()).collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Submits `n` jobs at `rate` from the generator and checks none was lost; prints the round.
fn submission_round(url: &str, rate: f64, n: usize, tokens_file: &Path, admin: &str, accepted: &mut Vec<String>) {
    let baseline = generate("healthz", url, rate, n, tokens_file);
    let load = generate("submit", url, rate, n, tokens_file);
    accepted.extend(load.accepted_ids.iter().cloned());
    let listed = listed_ids(url, admin);
    let lost = accepted.iter().filter(|id| !listed.contains(*id)).count();
    let duplicates = load.accepted_ids.len() - load.accepted_ids.iter().collect::<HashSet<_>>().len();
    let refused: BTreeMap<&String, &usize> = load.statuses.iter().filter(|(status, _)| *status != "201").collect();
    let refused_count: usize = refused.values().copied().sum();
    let (p50, p99, max) = latency(&load);
    let (h50, h99, hmax) = latency(&baseline);
    println!(
        "load: {n} submissions at {rate:.0}/s from a second process over {:.1} s: throughput {:.1}/s, latency p50 {p50:.1} ms p99 {p99:.1} ms max {max:.0} ms, accepted {}, refused {refused_count}, lost {lost} (of {} accepted so far)",
        load.seconds,
        load.accepted_ids.len() as f64 / load.seconds,
        load.accepted_ids.len(),
        accepted.len(),
    );
    if refused_count > 0 || duplicates > 0 {
        println!("  refused by status: {refused:?}; duplicate ids: {duplicates}");
    }
    println!(
        "  baseline GET /healthz, {n} at {rate:.0}/s: latency p50 {h50:.1} ms p99 {h99:.1} ms max {hmax:.0} ms (answered {} of {n}); p99 submit/healthz {:.1}x",
        baseline.statuses.get("200").copied().unwrap_or(0),
        p99 / h99,
    );
}

/// A running server with its students, fake workers and data dir, in a temporary folder of its
/// own (removed when dropped, after the server is stopped).
struct Bench {
    students: Vec<String>,
    admin: String,
    tokens_file: std::path::PathBuf,
    server: Child,
    url: String,
    workers: Workers,
    _temp: tempfile::TempDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Starts a server on a fresh data dir: a generated Kaggle-sized dataset, 20 students and an
/// admin, and fake workers that hold their slots.
fn start_bench() -> Bench {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let data = root.join("data");
    // Kaggle's chest-xray-pneumonia counts: 5,216 train, 16 val, 624 test films (tiny images).
    let status = Command::new(server_binary())
        .args(["demo-data", root.join("datasets/demo").to_str().unwrap(), "--size", "16"])
        .args(["--train-per-class", "2608", "--val-per-class", "8", "--test-per-class", "312"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let students: Vec<String> =
        (1..=STUDENTS).map(|i| trainq(&["user", "add", &format!("student{i:02}")], &data)).collect();
    let admin = trainq(&["user", "add", "root", "--admin"], &data);
    let tokens_file = root.join("tokens");
    std::fs::write(&tokens_file, students.join("\n")).unwrap();
    let notes = root.join("workers");
    std::fs::create_dir_all(&notes).unwrap();
    let worker = root.join("fake-worker.sh");
    std::fs::write(&worker, FAKE_WORKER.replace("DIR", notes.to_str().unwrap())).unwrap();
    std::fs::set_permissions(&worker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (server, url) = serve(root, &worker);
    Bench { students, admin, tokens_file, server, url, workers: Workers { dir: notes }, _temp: temp }
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`): how busy the box was around a figure.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The closed loop at each queue level in `levels`: fills the queue to the level (unmeasured),
/// measures `n` submissions over 8 connections, then, once quiet, dispatch, idle CPU, `/metrics`,
/// the first page of the list and RSS.
fn closed_loop(levels: &[usize], n: usize) {
    let bench = start_bench();
    let (url, pid) = (bench.url.as_str(), bench.server.id());
    let connections = CLOSED_LOOP_CONNECTIONS as f64;
    let mut submitted = 0;
    for &level in levels {
        if level > submitted {
            let fill = generate("closed", url, connections, level - submitted, &bench.tokens_file);
            submitted += fill.accepted_ids.len();
        }
        let round = generate("closed", url, connections, n, &bench.tokens_file);
        submitted += round.accepted_ids.len();
        let refused = n - round.accepted_ids.len();
        let (p50, p99, max) = latency(&round);
        // The ceiling: the same client, loop and connections on `GET /healthz` (no auth, no
        // database), so the submission's own cost is the gap between the two lines.
        let ceiling = generate("closed-healthz", url, connections, n, &bench.tokens_file);
        let (h50, h99, _) = latency(&ceiling);
        println!(
            "closed loop at {level} queued ({} -> {} submitted), {CLOSED_LOOP_CONNECTIONS} connections, {n} submissions: {:.0} submits/s, p50 {p50:.1} ms p99 {p99:.1} ms max {max:.0} ms, refused {refused}; load average {}",
            submitted - round.accepted_ids.len(),
            submitted,
            round.accepted_ids.len() as f64 / round.seconds,
            load_average(),
        );
        println!(
            "  baseline: the same loop on GET /healthz, {n} requests: {:.0} requests/s, p50 {h50:.1} ms p99 {h99:.1} ms; submits/healthz {:.2}x",
            n as f64 / ceiling.seconds,
            (round.accepted_ids.len() as f64 / round.seconds) / (n as f64 / ceiling.seconds),
        );
        // Quiet means after the passes over the new jobs.
        std::thread::sleep(Duration::from_secs(5));
        let dispatches = env_or("TRAINQ_LOAD_DISPATCHES", 40);
        let dispatch = bench.workers.dispatches(dispatches);
        let idle = idle_cpu(pid, Duration::from_secs(10));
        let metrics = sequential_gets(url, "/metrics", None, 200);
        let first_page = sequential_gets(url, "/api/jobs?limit=50", Some(&bench.students[0]), 200);
        let first_page_admin = sequential_gets(url, "/api/jobs?limit=50", Some(&bench.admin), 200);
        println!(
            "  at {} queued: dispatch (device frees -> next job running) p50 {:.1} ms max {:.1} ms ({dispatches}); idle CPU over 10 s {:.2} % of a core; GET /metrics p50 {:.1} ms p99 {:.1} ms; first page GET /api/jobs?limit=50 p50 {:.1} ms p99 {:.1} ms (as the admin: p99 {:.1} ms); RSS {:.0} MB; load average {}",
            queued(url),
            quantile(&dispatch, 0.5),
            dispatch.last().unwrap(),
            idle * 100.0,
            quantile(&metrics, 0.5),
            quantile(&metrics, 0.99),
            quantile(&first_page, 0.5),
            quantile(&first_page, 0.99),
            quantile(&first_page_admin, 0.99),
            rss_mb(pid),
            load_average(),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--generator") {
        let rest = &args[at + 1..];
        generator(&rest[0], &rest[1], rest[2].parse().unwrap(), rest[3].parse().unwrap(), Path::new(&rest[4]));
        return;
    }
    let rounds: String = env_or("TRAINQ_LOAD_ROUNDS", String::from("open,closed"));
    println!("load: CPU {}; load average {}", support::cpu_line(), load_average());
    if rounds.split(',').any(|round| round == "open") {
        open_loop();
    }
    if rounds.split(',').any(|round| round == "closed") {
        let levels: String = env_or("TRAINQ_LOAD_LEVELS", String::from("1000,10000,100000"));
        let levels: Vec<usize> =
            levels.split(',').map(|level| level.trim().parse().expect("TRAINQ_LOAD_LEVELS")).collect();
        closed_loop(&levels, env_or("TRAINQ_LOAD_CLOSED_N", 5_000));
    }
}

/// The open-loop half: submissions at a fixed rate, idle CPU, the list and dispatch.
fn open_loop() {
    let n: usize = env_or("TRAINQ_LOAD_N", 10_000);
    let rate: f64 = env_or("TRAINQ_LOAD_RATE", 2000.0);
    let big: usize = env_or("TRAINQ_LOAD_BIG", 100_000);
    let bench = start_bench();
    let (url, admin, students, tokens_file, workers) =
        (bench.url.as_str(), bench.admin.as_str(), &bench.students, &bench.tokens_file, &bench.workers);
    let pid = bench.server.id();
    let window = Duration::from_secs(10);

    // Baselines on an empty queue: idle CPU, and dispatch with a handful queued.
    std::thread::sleep(Duration::from_secs(2));
    let idle_empty = idle_cpu(pid, window);
    let rss_empty = rss_mb(pid);
    let mut accepted = Vec::new();
    submission_round(url, 200.0, 30, tokens_file, admin, &mut accepted);
    let few_queued = queued(url);
    let few = workers.dispatches(10);

    // A class submitting at once: the queue grows to `n`.
    submission_round(url, rate, n, tokens_file, admin, &mut accepted);
    // Idle means after the last passes over the new jobs.
    std::thread::sleep(Duration::from_secs(10));
    let idle_n = idle_cpu(pid, window);
    println!(
        "idle: server CPU over {}s with {} queued: {:.2} % of a core (RSS {:.0} MB); baseline with 0 queued: {:.2} % (RSS {rss_empty:.0} MB)",
        window.as_secs(),
        queued(url),
        idle_n * 100.0,
        rss_mb(pid),
        idle_empty * 100.0
    );
    let health = sequential_gets(url, "/healthz", None, 300);
    for path in ["/api/jobs?limit=50", "/api/jobs?limit=50&state=queued,running", "/api/jobs?limit=50&owner=me"] {
        let list = sequential_gets(url, path, Some(&students[0]), 300);
        println!(
            "list: GET {path} with {} jobs, 300 in a row: p50 {:.1} ms p99 {:.1} ms; baseline GET /healthz p50 {:.2} ms p99 {:.2} ms",
            accepted.len(),
            quantile(&list, 0.5),
            quantile(&list, 0.99),
            quantile(&health, 0.5),
            quantile(&health, 0.99)
        );
    }
    let many_queued = queued(url);
    let many = workers.dispatches(20);
    println!(
        "dispatch: worker exit -> next worker running with {many_queued} queued: p50 {:.1} ms p99 {:.1} ms max {:.1} ms (20); baseline with {few_queued} queued: p50 {:.1} ms max {:.1} ms (10)",
        quantile(&many, 0.5),
        quantile(&many, 0.99),
        many.last().unwrap(),
        quantile(&few, 0.5),
        few.last().unwrap()
    );

    if big > accepted.len() {
        let more = big - accepted.len();
        submission_round(url, rate, more, tokens_file, admin, &mut accepted);
        std::thread::sleep(Duration::from_secs(10));
        let idle_big = idle_cpu(pid, window);
        println!(
            "idle: server CPU over {}s with {} queued: {:.2} % of a core (RSS {:.0} MB); baseline with 0 queued: {:.2} % (RSS {rss_empty:.0} MB)",
            window.as_secs(),
            queued(url),
            idle_big * 100.0,
            rss_mb(pid),
            idle_empty * 100.0
        );
        let list = sequential_gets(url, "/api/jobs?limit=50", Some(&students[0]), 300);
        println!(
            "list: GET /api/jobs?limit=50 with {} jobs: p50 {:.1} ms p99 {:.1} ms",
            accepted.len(),
            quantile(&list, 0.5),
            quantile(&list, 0.99)
        );
    }
}
