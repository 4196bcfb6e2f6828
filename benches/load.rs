//! Benchmark (not a test): job submissions at a fixed rate from a second process against a real
//! `trainq serve` (release build, fake worker, 2 CPU slots, 20 students), against `GET /healthz`
//! (no database, no auth) at the same rate in the same run. It answers the issue's question "does
//! a class submitting at once lose or stall anything?": every job answered 201 must be in
//! `GET /api/jobs` afterwards (`lost`), refusals are counted by status, and latency is measured
//! from each request's scheduled send time, so a stalled server cannot hide its backlog
//! (open loop: requests go out on schedule whatever earlier ones are doing).
//!
//! Later rounds at 2×, 4× and 8× the rate show where the box saturates (on a 2-core box shared
//! with builds: 750–950 submissions/s, where latency jumps from milliseconds to a second). The
//! rounds share one server and database, so each also pays for the jobs earlier rounds queued.
//!
//! `cargo bench --no-default-features --bench load` (env `TRAINQ_LOAD_N=2000`,
//! `TRAINQ_LOAD_RATE=200` per second, `TRAINQ_LOAD_ROUNDS=1,2,4,8`: the rate multipliers, one round each).
//!
//! The bench binary is also the load generator: the parent re-executes itself with
//! `--generator MODE URL RATE N TOKENS_FILE`, so the client never shares a process (or a tokio
//! runtime) with the measurement's other half.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How many students share the load: each user's token is used for every 20th request.
const STUDENTS: usize = 20;

/// A fake worker: reports final metrics and exits 0 at once, so jobs also run and finish (the
/// supervisor writes rows) while submissions arrive, as on a real box.
const FAKE_WORKER: &str = r#"#!/bin/sh
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

/// What the generator process reports on its last stdout line.
#[derive(Serialize, Deserialize)]
struct Summary {
    /// Milliseconds from each answered request's scheduled send time to its response.
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

/// The load generator (the second process): `n` requests at `rate` per second, open loop.
fn generator(mode: &str, url: &str, rate: f64, n: usize, tokens_file: &Path) {
    let tokens: Vec<String> = std::fs::read_to_string(tokens_file).unwrap().lines().map(str::to_string).collect();
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
                "submit" => client
                    .post(format!("{url}/api/jobs"))
                    .bearer_auth(&tokens[index % tokens.len()])
                    .json(&spec(index)),
                "healthz" => client.get(format!("{url}/healthz")),
                other => panic!("unknown generator mode {other}"),
            };
            tasks.push(tokio::spawn(async move {
                let answer = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        Ok((status, body))
                    }
                    Err(err) => Err(err),
                };
                let latency_ms = (tokio::time::Instant::now() - scheduled).as_secs_f64() * 1e3;
                match answer {
                    Ok((status, body)) => Outcome {
                        latency_ms: Some(latency_ms),
                        status: status.as_u16().to_string(),
                        job_id: body["id"].as_str().filter(|_| status == reqwest::StatusCode::CREATED).map(str::to_string),
                    },
                    Err(err) => {
                        eprintln!("request {index}: {err}");
                        Outcome { latency_ms: None, status: String::from("error"), job_id: None }
                    }
                }
            }));
        }
        let mut summary = Summary { latencies_ms: Vec::new(), seconds: 0.0, statuses: BTreeMap::new(), accepted_ids: Vec::new() };
        for task in tasks {
            let outcome = task.await.unwrap();
            summary.latencies_ms.extend(outcome.latency_ms);
            *summary.statuses.entry(outcome.status).or_default() += 1;
            summary.accepted_ids.extend(outcome.job_id);
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary
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

fn trainq(args: &[&str], data: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_trainq")).args(args).arg("--data-dir").arg(data).output().unwrap();
    assert!(output.status.success(), "trainq {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Starts `trainq serve` on port 0; returns the process and its address.
fn serve(root: &Path, worker: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainq"))
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

/// The ids `GET /api/jobs` lists (as the admin, who sees every job), page after page.
fn listed_ids(url: &str, admin_token: &str) -> HashSet<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let (mut ids, mut cursor) = (HashSet::new(), None::<String>);
        loop {
            let mut page_url = format!("{url}/api/jobs?limit=500");
            if let Some(cursor) = &cursor {
                page_url.push_str(&format!("&cursor={cursor}"));
            }
            let response = client.get(&page_url).bearer_auth(admin_token).send().await.unwrap();
            assert!(response.status().is_success(), "GET {page_url}: {}", response.status());
            let page: serde_json::Value = response.json().await.unwrap();
            ids.extend(page["jobs"].as_array().unwrap().iter().filter_map(|job| job["id"].as_str().map(str::to_string)));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return ids,
            }
        }
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--generator") {
        let rest = &args[at + 1..];
        generator(&rest[0], &rest[1], rest[2].parse().unwrap(), rest[3].parse().unwrap(), Path::new(&rest[4]));
        return;
    }
    let n: usize = env_or("TRAINQ_LOAD_N", 2000);
    let rate: f64 = env_or("TRAINQ_LOAD_RATE", 200.0);
    let rounds: Vec<f64> = std::env::var("TRAINQ_LOAD_ROUNDS")
        .unwrap_or_else(|_| String::from("1,2,4,8"))
        .split(',')
        .map(|factor| factor.trim().parse().expect("TRAINQ_LOAD_ROUNDS=1,2,4,8"))
        .collect();

    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let data = root.join("data");
    let status = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["demo-data", root.join("datasets/demo").to_str().unwrap(), "--size", "36"])
        .args(["--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let students: Vec<String> =
        (1..=STUDENTS).map(|i| trainq(&["user", "add", &format!("student{i:02}")], &data)).collect();
    let admin = trainq(&["user", "add", "root", "--admin"], &data);
    let tokens_file = root.join("tokens");
    std::fs::write(&tokens_file, students.join("\n")).unwrap();
    let worker = root.join("fake-worker.sh");
    std::fs::write(&worker, FAKE_WORKER).unwrap();
    std::fs::set_permissions(&worker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (mut server, url) = serve(root, &worker);

    let mut accepted_so_far: Vec<String> = Vec::new();
    for factor in rounds {
        let rate = rate * factor;
        let baseline = generate("healthz", &url, rate, n, &tokens_file);
        let load = generate("submit", &url, rate, n, &tokens_file);
        accepted_so_far.extend(load.accepted_ids.iter().cloned());
        let listed = listed_ids(&url, &admin);
        let lost = load.accepted_ids.iter().filter(|id| !listed.contains(*id)).count();
        let duplicates = load.accepted_ids.len() - load.accepted_ids.iter().collect::<HashSet<_>>().len();
        let refused: BTreeMap<&String, &usize> = load.statuses.iter().filter(|(status, _)| *status != "201").collect();
        let refused_count: usize = refused.values().copied().sum();
        let (p50, p99, max) = latency(&load);
        let (h50, h99, hmax) = latency(&baseline);
        println!(
            "load: {n} submissions at {rate:.0}/s from a second process over {:.1} s: throughput {:.1}/s, latency p50 {p50:.1} ms p99 {p99:.1} ms max {max:.0} ms, accepted {}, refused {refused_count}, lost {lost}",
            load.seconds,
            load.accepted_ids.len() as f64 / load.seconds,
            load.accepted_ids.len(),
        );
        if refused_count > 0 || duplicates > 0 {
            println!("  refused by status: {refused:?}; duplicate ids: {duplicates}");
        }
        println!(
            "  baseline GET /healthz, {n} at {rate:.0}/s: latency p50 {h50:.1} ms p99 {h99:.1} ms max {hmax:.0} ms (answered {} of {n}); p50 submit/healthz {:.1}x",
            baseline.statuses.get("200").copied().unwrap_or(0),
            p50 / h50,
        );
    }
    // Every job accepted in any round is still there at the end (none dropped by a later round).
    let listed = listed_ids(&url, &admin);
    let lost = accepted_so_far.iter().filter(|id| !listed.contains(*id)).count();
    println!("load: all rounds: accepted {}, listed {}, lost {lost}", accepted_so_far.len(), listed.len());
    let _ = server.kill();
    let _ = server.wait();
}
