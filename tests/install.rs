//! `deploy/install.sh --root DIR`: the tree and its owners, a second run that changes nothing,
//! the unit `systemd-analyze verify` accepts, and the installed server, started with the installed
//! config, ready and running a demo job.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder the test's binaries were built into (`target/debug`).
fn binaries() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_trainq")).parent().unwrap().to_path_buf()
}

/// The libtorch the worker was built against.
fn libtorch() -> PathBuf {
    std::env::var_os("LIBTORCH").map(PathBuf::from).unwrap_or_else(|| repo().join(".libtorch")).canonicalize().unwrap()
}

fn install(root: &Path) -> String {
    let output = Command::new(repo().join("deploy/install.sh"))
        .arg("--root")
        .arg(root)
        .arg("--bin")
        .arg(binaries())
        .arg("--libtorch")
        .arg(libtorch())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Every path under `root` with its mode, owner, length, modification time and link target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut seen = BTreeMap::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let target = std::fs::read_link(&path).ok();
            seen.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                format!(
                    "{:o} {} {} {:?} {target:?}",
                    metadata.mode(),
                    metadata.uid(),
                    metadata.len(),
                    metadata.modified().unwrap()
                ),
            );
            if metadata.is_dir() {
                folders.push(path);
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_scratch_install_is_complete_idempotent_and_serves_a_demo_job() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    let first = install(&root);
    let token = first.lines().last().unwrap().trim().to_string();
    assert!(first.contains("token") && token.len() >= 20, "the admin's token is printed once: {first}");

    // The tree, owned by whoever ran it (no user is created on the host for a scratch root).
    let uid = std::fs::metadata(temp.path()).unwrap().uid();
    for (path, mode) in [
        ("opt/trainq/bin/trainq", 0o755),
        ("opt/trainq/bin/trainq-worker", 0o755),
        ("etc/trainq/trainq.toml", 0o644),
        ("etc/systemd/system/trainq.service", 0o644),
        ("var/lib/trainq", 0o750),
        ("var/lib/trainq/datasets", 0o750),
    ] {
        let metadata = std::fs::metadata(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert_eq!(metadata.permissions().mode() & 0o777, mode, "{path}");
        assert_eq!(metadata.uid(), uid, "{path}");
    }
    assert_eq!(
        std::fs::read_link(root.join("opt/trainq/torch")).unwrap(),
        libtorch(),
        "--libtorch links, never copies"
    );
    assert_eq!(std::fs::read_link(root.join("usr/local/bin/trainq")).unwrap(), Path::new("/opt/trainq/bin/trainq"));
    let config = std::fs::read_to_string(root.join("etc/trainq/trainq.toml")).unwrap();
    let data = root.join("var/lib/trainq");
    assert!(config.contains(&format!("data_dir = \"{}\"", data.display())), "{config}");
    assert!(
        config.contains(&format!("worker = \"{}\"", root.join("opt/trainq/bin/trainq-worker").display())),
        "{config}"
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/trainq.service")).unwrap();
    assert!(unit.contains("ExecStart=/opt/trainq/bin/trainq serve --config /etc/trainq/trainq.toml"), "{unit}");

    // A second run changes nothing and makes no second admin; an edited config is kept.
    let before = snapshot(&root);
    let second = install(&root);
    assert!(!second.contains("token"), "{second}");
    assert_eq!(snapshot(&root), before, "a second run changed the tree");

    // systemd accepts the unit, in a root that has the host's own units beside it (its
    // dependencies, `sysinit.target` and the rest, must resolve).
    if Path::new("/usr/lib/systemd/system").is_dir() {
        std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        let copied =
            Command::new("cp").arg("-r").arg("/usr/lib/systemd/system").arg(root.join("usr/lib/systemd/")).status();
        assert!(copied.unwrap().success());
    }
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/trainq.service")
        .output()
    {
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "systemd-analyze verify: {stderr}");
        }
        Err(err) => eprintln!("SKIPPED: systemd-analyze is not installed ({err}); the unit was not verified"),
    }

    // The installed server, as this user, with the installed config: ready, and a demo job runs.
    let mut server = Command::new(root.join("opt/trainq/bin/trainq"))
        .args(["serve", "--config"])
        .arg(root.join("etc/trainq/trainq.toml"))
        .args(["--listen", "127.0.0.1:0", "--no-gpu", "--demo", "--disk-low-water-gb", "0.1", "--disk-reserve-mb", "0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(temp.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("trainq listening on ") {
                let _ = sender.send(address.to_string());
            }
        }
    });
    let address = receiver.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        panic!(
            "the installed server did not start: {}",
            std::fs::read_to_string(temp.path().join("server.log")).unwrap()
        )
    });
    let client = reqwest::Client::new();
    let ready = client.get(format!("{address}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    let spec = serde_json::json!({
        "name": "installed", "dataset": "chest_xray_demo", "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 20, "head": ["gap", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "sgd", "lr": 0.01}, "seed": 1
    });
    let answer: serde_json::Value = client
        .post(format!("{address}/api/jobs"))
        .bearer_auth(&token)
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string();
    let started = Instant::now();
    let job = loop {
        let job: serde_json::Value = client
            .get(format!("{address}/api/jobs/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{job}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert!(data.join("trainq.db").exists(), "the data lives under the scratch root");
}
