//! `spawn_app()`: a real `trainq serve` process on port 0 with its own temp data dir, generated
//! datasets and weights, and helpers to talk to it.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server and its folders. Killed on drop.
pub struct TestApp {
    pub address: String,
    /// Sends student `alice`'s token with every request.
    pub client: reqwest::Client,
    /// Tokens of the users every test server has: `alice` and `bob` (students), `root` (admin).
    pub tokens: std::collections::HashMap<&'static str, String>,
    pub root: PathBuf,
    pub process: Child,
    _temp: Option<tempfile::TempDir>,
}

/// How to start the server.
#[derive(Clone, Default)]
pub struct Options {
    /// A fake worker script instead of the real `trainq-worker`.
    pub worker: Option<PathBuf>,
    pub cpu_slots: Option<usize>,
    /// More `trainq serve` flags.
    pub args: Vec<String>,
}

/// The users every test server has.
pub const USERS: [(&str, bool); 3] = [("alice", false), ("bob", false), ("root", true)];

/// Creates the test users in `root/data` once (`trainq user add`), keeping their tokens in
/// `root/tokens/` so a restarted server's clients use the same ones.
fn users(root: &Path) -> std::collections::HashMap<&'static str, String> {
    let folder = root.join("tokens");
    std::fs::create_dir_all(&folder).unwrap();
    let mut tokens = std::collections::HashMap::new();
    for (name, admin) in USERS {
        let file = folder.join(name);
        if !file.exists() {
            let mut command = Command::new(env!("CARGO_BIN_EXE_trainq"));
            command.args(["user", "add", name, "--data-dir"]).arg(root.join("data"));
            if admin {
                command.arg("--admin");
            }
            let output = command.stderr(Stdio::inherit()).output().unwrap();
            assert!(output.status.success(), "trainq user add {name} failed");
            std::fs::write(&file, String::from_utf8(output.stdout).unwrap().trim()).unwrap();
        }
        tokens.insert(name, std::fs::read_to_string(&file).unwrap());
    }
    tokens
}

/// Sends `request` and answers its status and JSON body (`null` when the body is not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// A client that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// Writes a generated dataset `demo` (tiny images) under `root/datasets`.
pub fn write_dataset(root: &Path, train: usize, val: usize, test: usize) {
    let status = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["demo-data", root.join("datasets/demo").to_str().unwrap(), "--size", "36", "--seed", "11"])
        .args(["--train-per-class", &train.to_string(), "--val-per-class", &val.to_string()])
        .args(["--test-per-class", &test.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// VGG16 `features.*` tensors with torchvision's names and shapes, Kaiming-scaled random values.
/// The shapes are written out here independently of the worker's model code.
pub fn write_vgg16_weights(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let convs: [(usize, usize, usize); 13] = [
        (0, 3, 64),
        (2, 64, 64),
        (5, 64, 128),
        (7, 128, 128),
        (10, 128, 256),
        (12, 256, 256),
        (14, 256, 256),
        (17, 256, 512),
        (19, 512, 512),
        (21, 512, 512),
        (24, 512, 512),
        (26, 512, 512),
        (28, 512, 512),
    ];
    let mut tensors = Vec::new();
    for (index, cin, cout) in convs {
        let bound = (6.0 / (cin * 9) as f32).sqrt();
        let weight: Vec<f32> = (0..cout * cin * 9).map(|_| rng.gen_range(-bound..bound)).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.gen_range(-0.01..0.01)).collect();
        tensors.push((format!("features.{index}.weight"), vec![cout, cin, 3, 3], weight));
        tensors.push((format!("features.{index}.bias"), vec![cout], bias));
    }
    // A classifier tensor, as in timm/torchvision files; the loader must ignore it.
    tensors.push((String::from("classifier.6.bias"), vec![1000], vec![0.0; 1000]));
    write_safetensors(path, &tensors);
    tensors
}

/// Writes plausible InceptionV3 weights (He-scaled convolutions, running variance near 1) with
/// every required torchvision tensor, leaving out the optional `num_batches_tracked`.
pub fn write_inception_weights(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    write_generated_weights(trainq::domain::backbone::Backbone::InceptionV3, path)
}

/// Writes plausible weights for a batch-normed `backbone` in its torchvision layout: every
/// convolution kernel (the 4-D tensors) He-scaled, batch norm's scale and running variance near 1,
/// the rest (shifts, means, biases) near 0; the optional `num_batches_tracked` left out.
pub fn write_generated_weights(
    backbone: trainq::domain::backbone::Backbone,
    path: &Path,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use rand::{Rng, SeedableRng};
    use trainq::domain::weights_layout::expected_tensors;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = expected_tensors(backbone)
        .into_iter()
        .filter(|t| t.required)
        .map(|t| {
            let count: usize = t.shape.iter().product();
            let values: Vec<f32> = if t.shape.len() == 4 {
                let fan_in: usize = t.shape[1..].iter().product();
                let bound = (6.0 / fan_in as f32).sqrt();
                (0..count).map(|_| rng.gen_range(-bound..bound)).collect()
            } else if t.name.ends_with("running_var") || t.name.ends_with(".weight") {
                (0..count).map(|_| rng.gen_range(0.8..1.2)).collect()
            } else {
                (0..count).map(|_| rng.gen_range(-0.05..0.05)).collect()
            };
            (t.name, t.shape, values)
        })
        .collect();
    write_safetensors(path, &tensors);
    tensors
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    safetensors::tensor::serialize_to_file(views, &None, path).unwrap();
}

/// Reads every tensor of a safetensors file as f32 values (integers converted).
pub fn read_safetensors(bytes: &[u8]) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                safetensors::Dtype::F32 => {
                    view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::I64 => {
                    view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Writes an executable shell script to use as a fake worker.
pub fn fake_worker(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A server whose worker is the shell script `body`, with `cpu_slots` slots, the `demo` dataset
/// (NORMAL, PNEUMONIA) and VGG16 weights. The scripts' folder, which also holds `tiny.png` (an
/// 8×8 image a worker may copy as a Grad-CAM), lives as long as the returned guard.
pub fn app_with_worker(body: &str, cpu_slots: usize) -> (tempfile::TempDir, TestApp) {
    let scripts = tempfile::tempdir().unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 40])).save(scripts.path().join("tiny.png")).unwrap();
    let worker = fake_worker(scripts.path(), "worker.sh", body);
    let app = TestApp::spawn(Options { worker: Some(worker), cpu_slots: Some(cpu_slots), ..Options::default() });
    write_dataset(&app.root, 2, 1, 1);
    write_vgg16_weights(&app.root.join("weights/vgg16.safetensors"));
    (scripts, app)
}

/// A fake worker that reports success at once, unless the job is named `crash` (SIGSEGV) or `sleep`.
pub const FAKE_WORKER: &str = r#"
if grep -q '"name": "crash"' "$3"; then echo "about to crash" >&2; kill -SEGV $$; fi
if grep -q '"name": "exit3"' "$3"; then echo "giving up" >&2; exit 3; fi
if grep -q '"name": "silent"' "$3"; then exit 0; fi
if grep -q '"name": "binary"' "$3"; then printf '\377\376 not utf8\n'; fi
if grep -q '"name": "sleep"' "$3"; then exec sleep 60; fi
if grep -q '"name": "stubborn"' "$3"; then trap '' TERM; sleep 60; fi
if grep -q '"name": "repeat"' "$3"; then
  seed=$(grep -o '"seed": [0-9]*' "$3" | grep -o '[0-9]*$')
  echo "@trainq {\"event\":\"final\",\"train_loss\":0.1,\"train_acc\":1.0,\"test_loss\":0.2,\"test_acc\":0.$seed}"
  exit 0
fi
echo "fake training" >&2
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.75,"val_loss":null,"val_acc":null,"seconds":0.1}'
echo '@trainq {"event":"final","train_loss":0.1,"train_acc":1.0,"test_loss":0.2,"test_acc":0.9}'
"#;

impl TestApp {
    /// Starts a server on a fresh temp folder.
    pub fn spawn(options: Options) -> TestApp {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        let mut app = TestApp::spawn_in(&root, options);
        app._temp = Some(temp);
        app
    }

    /// Starts a server on a data dir that already holds `count` jobs (`seed_jobs`), with the demo
    /// dataset and weights in place for the queued ones. Returns it and the jobs' ids, oldest
    /// first.
    pub async fn spawn_seeded(options: Options, count: usize, queued: usize) -> (TestApp, Vec<String>) {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        write_dataset(&root, 2, 1, 1);
        write_vgg16_weights(&root.join("weights/vgg16.safetensors"));
        let ids = seed_jobs(&root.join("data"), count, queued).await;
        let mut app = TestApp::spawn_in(&root, options);
        app._temp = Some(temp);
        (app, ids)
    }

    /// Starts a server on an existing folder (to test restarts).
    pub fn spawn_in(root: &Path, options: Options) -> TestApp {
        let tokens = users(root);
        let mut command = Command::new(env!("CARGO_BIN_EXE_trainq"));
        command
            .args(["serve", "--no-gpu", "--kill-grace-secs", "2"])
            .arg("--data-dir")
            .arg(root.join("data"))
            .arg("--datasets")
            .arg(root.join("datasets"))
            .arg("--weights")
            .arg(root.join("weights"))
            .args(["--cpu-slots", &options.cpu_slots.unwrap_or(1).to_string()])
            .args(&options.args)
            .env("RUST_LOG", "info,trainq=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(root.join("server.log")).unwrap());
        if let Some(worker) = &options.worker {
            command.arg("--worker").arg(worker);
        }
        if !options.args.iter().any(|arg| arg == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !options.args.iter().any(|arg| arg == "--rate-limit-per-minute") {
            // Tests poll fast; the limit itself is tested with its own server.
            command.args(["--rate-limit-per-minute", "1000000"]);
        }
        let mut process = command.spawn().expect("starting trainq serve");
        let stdout = process.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(address) = line.strip_prefix("trainq listening on ") {
                    let _ = sender.send(address.to_string());
                }
            }
        });
        let address = receiver.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("server did not start: {}", std::fs::read_to_string(root.join("server.log")).unwrap_or_default())
        });
        let client = client_with(&tokens["alice"]);
        TestApp { address, client, tokens, root: root.to_path_buf(), process, _temp: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn submit(&self, spec: &Value) -> String {
        let (status, body) = self.post("/api/jobs", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["jobs"][0]["id"].as_str().unwrap().to_string()
    }

    /// Polls a job until `done(job)` holds, or panics with the server log after `timeout`.
    pub async fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (_, job) = self.get(&format!("/api/jobs/{id}")).await;
            if done(&job) {
                return job;
            }
            if started.elapsed() > timeout {
                let (_, log) = self.text(&format!("/api/jobs/{id}/log")).await;
                panic!(
                    "job {id} timed out: {job:#}\n--- job log ---\n{log}\n--- server log ---\n{}",
                    self.server_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a job has finished (any terminal state) and returns it with its log.
    pub async fn finished(&self, id: &str, timeout: Duration) -> (Value, String) {
        let job = self.wait_for(id, timeout, |job| job["state"] != "queued" && job["state"] != "running").await;
        let (_, log) = self.text(&format!("/api/jobs/{id}/log")).await;
        (job, log)
    }

    /// An artifact's bytes.
    pub async fn download(&self, id: &str, name: &str) -> bytes::Bytes {
        let url = self.url(&format!("/api/jobs/{id}/artifacts/{name}"));
        self.client.get(url).send().await.unwrap().bytes().await.unwrap()
    }

    pub async fn wait_for_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |job| job["state"] == state).await
    }

    pub async fn text(&self, path: &str) -> (StatusCode, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Every job `GET /api/jobs?{query}` lists, page after page (`next_cursor`), in list order.
    pub async fn all_jobs(&self, query: &str) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/jobs?{query}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "GET {path}: {page}");
            jobs.extend(page["jobs"].as_array().unwrap_or_else(|| panic!("GET {path}: {page}")).iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return jobs,
            }
        }
    }

    /// The (phase, epoch) of every stored epoch row of a job, in the order the API lists them.
    pub fn epochs_of(metrics: &Value) -> Vec<(u64, u64)> {
        metrics["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row["phase"].as_u64().unwrap(), row["epoch"].as_u64().unwrap()))
            .collect()
    }

    /// The outcomes of a job's runs, oldest first (finished runs only).
    pub async fn run_outcomes(&self, id: &str) -> Vec<String> {
        let (_, job) = self.get(&format!("/api/jobs/{id}")).await;
        job["runs"].as_array().unwrap().iter().filter_map(|run| run["outcome"].as_str().map(str::to_string)).collect()
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Hands over the temp folder so it outlives this server (for restart tests).
    pub fn take_temp(&mut self) -> Option<tempfile::TempDir> {
        self._temp.take()
    }

    pub fn pid(&self) -> i32 {
        self.process.id() as i32
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Owners of seeded jobs, in turn: the test users, and students who only have history.
fn seeded_owner(n: usize) -> String {
    match n % 40 {
        0 => String::from("alice"),
        1 => String::from("bob"),
        other => format!("student{other}"),
    }
}

/// Writes `count` jobs into the database in `data` (before its server starts, so no scheduler
/// races the writes), as fast as the store takes them: owners in turn (`seeded_owner`), all but
/// the last `queued` cancelled, the queued ones named `sleep` (the fake worker keeps one running,
/// the others wait). Returns their ids, oldest first. What a term of a class leaves behind.
pub async fn seed_jobs(data: &Path, count: usize, queued: usize) -> Vec<String> {
    use trainq::domain::{JobId, JobSpec};
    use trainq::store::{NewJob, Store};
    std::fs::create_dir_all(data).unwrap();
    let store = Store::open(data).await.unwrap();
    let spec_named = |name: &str| JobSpec::parse(&serde_json::to_vec(&small_spec(name)).unwrap()).unwrap();
    let (done, waiting) = (spec_named("seeded"), spec_named("sleep"));
    let mut ids = Vec::with_capacity(count);
    let numbered: Vec<usize> = (0..count).collect();
    for batch in numbered.chunks(1000) {
        let jobs: Vec<NewJob> = batch
            .iter()
            .map(|&n| {
                let spec = if n + queued >= count { waiting.clone() } else { done.clone() };
                let owner = Some(seeded_owner(n));
                let (parent_id, params, notes) = (None, None, Vec::new());
                NewJob {
                    id: JobId::new(),
                    name: spec.name.clone(),
                    spec,
                    group_id: None,
                    parent_id,
                    params,
                    notes,
                    owner,
                    priority: 0,
                    memory_bytes: 1,
                    time_limit: None,
                }
            })
            .collect();
        for job in store.insert_jobs(&jobs).await.unwrap() {
            ids.push(job.id);
        }
    }
    for id in &ids[..count - queued] {
        store.request_cancel(*id).await.unwrap();
    }
    ids.iter().map(ToString::to_string).collect()
}

/// The assignment's Q1 spec, shrunk: tiny images, few epochs.
pub fn small_spec(name: &str) -> Value {
    json!({
        "name": name, "dataset": "demo", "backbone": "vgg16", "weights": "imagenet",
        "image_size": 32, "batch_size": 20,
        "head": ["gap", {"dense": 64}, "batchnorm", "relu", {"dense": 16}, {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}, {"epochs": 1, "train": ["block5", "head"]}],
        "optimizer": {"name": "rmsprop", "lr": 1e-3}, "seed": 1
    })
}
