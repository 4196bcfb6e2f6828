//! What every benchmark prints beside its numbers, and what the end-to-end ones share: generated
//! films and worker runs.

/// The CPU's model and the flags that decide its speed (AVX2, AVX-512, AVX512-BF16, AMX-BF16):
/// CPUs differ between machines, and a ratio means little without them.
pub fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("?");
    let flags: Vec<&str> = info
        .lines()
        .find_map(|line| line.strip_prefix("flags"))
        .map(|rest| {
            rest.split_whitespace()
                .filter(|flag| ["avx2", "avx512f", "amx_bf16", "avx512_bf16"].contains(flag))
                .collect()
        })
        .unwrap_or_default();
    format!("{model}, {} cores, flags {}", std::thread::available_parallelism().map_or(0, |n| n.get()), flags.join(" "))
}

/// Writes a generated chest-film set (`trainq demo-data`) of `per_class` (train, val, test) films
/// per class at `side` px.
#[allow(dead_code)]
pub fn demo_data(dataset: &std::path::Path, side: u32, seed: u64, per_class: (usize, usize, usize)) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["demo-data", dataset.to_str().unwrap(), "--size", &side.to_string(), "--seed", &seed.to_string()])
        .args(["--train-per-class", &per_class.0.to_string(), "--val-per-class", &per_class.1.to_string()])
        .args(["--test-per-class", &per_class.2.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "trainq demo-data failed");
}

/// Runs `spec` in a CPU worker process on `dataset` (activation and pixel caches in `root/cache`,
/// artifacts in `root/<name>`, its log in `root/<name>.log`), handing `on_event` every progress
/// event; returns the wall seconds.
#[allow(dead_code)]
pub fn run_worker(
    root: &std::path::Path,
    name: &str,
    dataset: &std::path::Path,
    spec: &serde_json::Value,
    threads: usize,
    mut on_event: impl FnMut(trainq::domain::ProgressEvent),
) -> f64 {
    use std::io::BufRead;
    use trainq::domain::worker_protocol::{WorkerDevice, WorkerJob};
    let spec = trainq::domain::JobSpec::parse(spec.to_string().as_bytes()).expect("a valid spec");
    let job = WorkerJob {
        job_id: trainq::domain::JobId::new(),
        spec,
        dataset_dir: dataset.to_path_buf(),
        weights_file: None,
        output_dir: root.join(name),
        device: WorkerDevice::Cpu,
        threads,
        cache_dir: Some(root.join("cache")),
        cache_budget_bytes: None,
        state_dir: None,
        gpu_data_budget_bytes: None,
        init_checkpoint: None,
    };
    let job_file = root.join(format!("{name}.json"));
    std::fs::write(&job_file, serde_json::to_vec(&job).unwrap()).unwrap();
    let log = root.join(format!("{name}.log"));
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trainq-worker"))
        .args(["run", "--job", job_file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("worker");
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(Ok(event)) = trainq::domain::ProgressEvent::from_line(&line.unwrap()) {
            on_event(event);
        }
    }
    assert!(child.wait().unwrap().success(), "worker failed: see {}", log.display());
    started.elapsed().as_secs_f64()
}

/// This many threads: `TRAINQ_BENCH_THREADS`, or every core.
#[allow(dead_code)]
pub fn threads() -> usize {
    std::env::var("TRAINQ_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Epochs of the two phases from `variable` (`"phase1,phase2"`), else `default`.
#[allow(dead_code)]
pub fn epochs(variable: &str, default: &str) -> (u32, u32) {
    let value = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    let epochs: Vec<u32> =
        value.split(',').map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{variable}=phase1,phase2"))).collect();
    assert_eq!(epochs.len(), 2, "{variable}=phase1,phase2");
    (epochs[0], epochs[1])
}
