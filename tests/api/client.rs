//! The students' terminal client (`trainq login`, `ls`, `show`, `cancel`, `wait`), driven as a
//! student would: the real binary, a real server, a home folder of its own.

use crate::helpers::{small_spec, TestApp, FAKE_WORKER};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `trainq ARGS` with `home` as HOME and nothing from the caller's environment that would log it
/// in or pick its CA; `stdin` is written to it.
pub(crate) fn trainq(home: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TRAINQ_URL")
        .env_remove("TRAINQ_TOKEN")
        .env_remove("TRAINQ_CA_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A program's output as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn without_a_login_every_command_says_how_to_get_one() {
    let home = tempfile::tempdir().unwrap();
    let out = trainq(home.path(), &["ls"], &[], "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("trainq login URL"), "{}", text(&out.stderr));
    // A server but no token: where tokens come from.
    let out = trainq(home.path(), &["wait", "0123abcd"], &[("TRAINQ_URL", "http://127.0.0.1:9")], "");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no token") && stderr.contains("trainq user add"), "{stderr}");
}

#[tokio::test]
async fn a_student_logs_in_lists_waits_and_cancels_from_the_terminal() {
    let (_scripts, app) = crate::helpers::app_with_worker(FAKE_WORKER, 1);
    let home = tempfile::tempdir().unwrap();
    let url = app.url("");

    // A wrong token is refused and saves nothing.
    let out = trainq(home.path(), &["login", &url, "--token-stdin"], &[], "not-a-token\n");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let config = home.path().join(".config/trainq/config.toml");
    assert!(!config.exists());
    // The right one is checked and saved where only the student can read it.
    let out = trainq(home.path(), &["login", &url, "--token-stdin"], &[], &format!("{}\n", app.tokens["alice"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("as alice"), "{}", text(&out.stdout));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&config).unwrap().contains(&app.tokens["alice"]));

    let fine = app.submit(&small_spec("fine")).await;
    let failing = app.submit(&small_spec("exit3")).await;
    app.wait_for_state(&fine, "succeeded", WAIT).await;
    app.wait_for_state(&failing, "failed", WAIT).await;
    // Someone else's job is not in `ls`, but is in `ls --all`.
    let bob = crate::helpers::client_with(&app.tokens["bob"]);
    let response = bob.post(app.url("/api/jobs")).json(&small_spec("bobs")).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);

    let out = trainq(home.path(), &["ls"], &[], "");
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&fine[..8]) && table.contains("succeeded") && table.contains("0.900"), "{table}");
    assert!(table.contains(&failing[..8]) && table.contains("failed"), "{table}");
    assert!(!table.contains("bobs"), "{table}");
    let out = trainq(home.path(), &["ls", "--all", "--json"], &[], "");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    // The newest first, as many as asked for.
    let out = trainq(home.path(), &["ls", "--all", "--limit", "1", "--json"], &[], "");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.iter().map(|row| row["name"].as_str().unwrap()).collect::<Vec<_>>(), ["bobs"]);
    let out = trainq(home.path(), &["ls", "--state", "failed", "--json"], &[], "");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.iter().map(|row| row["id"].as_str().unwrap()).collect::<Vec<_>>(), [failing.as_str()]);

    // A prefix names a job, like git.
    let out = trainq(home.path(), &["show", &fine[..8]], &[], "");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["id"], fine.as_str());
    assert_eq!(job["spec"]["name"], "fine");
    let out = trainq(home.path(), &["show", "zz"], &[], "");
    assert!(!out.status.success() && text(&out.stderr).contains("not a job id"), "{}", text(&out.stderr));

    // `wait`: 0 when all succeeded, 1 when any failed, 2 when any was cancelled.
    assert_eq!(trainq(home.path(), &["wait", &fine], &[], "").status.code(), Some(0));
    assert_eq!(trainq(home.path(), &["wait", &fine, &failing[..8]], &[], "").status.code(), Some(1));
    let sleeper = app.submit(&small_spec("sleep")).await;
    app.wait_for_state(&sleeper, "running", WAIT).await;
    let home_path = home.path().to_path_buf();
    let sleeper_id = sleeper.clone();
    let waiting = std::thread::spawn(move || trainq(&home_path, &["wait", &sleeper_id, &fine], &[], "").status.code());
    let out = trainq(home.path(), &["cancel", &sleeper[..8]], &[], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(waiting.join().unwrap(), Some(2));
    // The environment overrides the saved login.
    let out = trainq(home.path(), &["ls"], &[("TRAINQ_TOKEN", &app.tokens["bob"])], "");
    assert!(text(&out.stdout).contains("bobs"), "{}", text(&out.stdout));
}

/// Trains "slowly" (a few steps a second, so a watcher sees them), then leaves results: binary
/// test metrics with test accuracy 0.6 + seed / 10, a 300 kB checkpoint, predictions and a CAM.
const CLIENT_WORKER: &str = r#"
seed=$(grep -o '"seed": [0-9]*' "$3" | grep -o '[0-9]*$')
echo '@trainq {"event":"started","device":"cpu"}'
echo '@trainq {"event":"phase","phase":1,"epochs":1,"trainable_params":10}'
for step in 1 2 3 4 5 6; do
  echo "@trainq {\"event\":\"step\",\"phase\":1,\"epoch\":1,\"step\":$step,\"steps\":6,\"images_per_sec\":40.0}"
  sleep 0.4
done
echo '@trainq {"event":"epoch","phase":1,"epoch":1,"train_loss":0.5,"train_acc":0.8,"val_loss":0.55,"val_acc":0.7,"seconds":2.4}'
mkdir -p artifacts/cam
head -c 300000 /dev/urandom > artifacts/model.safetensors
printf 'path,label,probability\na.jpeg,NORMAL,0.1\n' > artifacts/predictions.csv
cp "$(dirname "$0")/tiny.png" artifacts/cam/tp-0.png
echo '[{"file": "cam/tp-0.png", "kind": "tp", "path": "test/PNEUMONIA/x.jpeg", "label": "PNEUMONIA", "probability": 0.93}]' > artifacts/cam/index.json
echo "@trainq {\"event\":\"final\",\"train_loss\":0.4,\"train_acc\":0.8,\"test_loss\":0.5,\"test_acc\":0.$((6 + seed)),\"binary\":{\"threshold\":0.5,\"confusion\":[[4,1],[2,3]],\"true_positives\":3,\"false_positives\":1,\"true_negatives\":4,\"false_negatives\":2,\"accuracy\":0.7,\"precision\":0.75,\"recall\":0.6,\"specificity\":0.8,\"f1\":0.6667,\"auc\":0.76,\"roc\":[{\"fpr\":0,\"tpr\":0,\"threshold\":null},{\"fpr\":1,\"tpr\":1,\"threshold\":0.1}],\"undefined\":{}}}"
"#;

/// A server with [`CLIENT_WORKER`], the `demo` dataset and weights, and a student logged in.
struct Session {
    app: TestApp,
    home: tempfile::TempDir,
    _scripts: tempfile::TempDir,
}

impl Session {
    fn start(worker: &str, cpu_slots: usize) -> Session {
        let (scripts, app) = crate::helpers::app_with_worker(worker, cpu_slots);
        let home = tempfile::tempdir().unwrap();
        let out =
            trainq(home.path(), &["login", &app.url(""), "--token-stdin"], &[], &format!("{}\n", app.tokens["alice"]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        Session { app, home, _scripts: scripts }
    }

    fn run(&self, args: &[&str]) -> Output {
        trainq(self.home.path(), args, &[], "")
    }

    /// `trainq ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "trainq {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// A spec file in the home folder.
    fn spec_file(&self, spec: &serde_json::Value) -> String {
        let path = self.home.path().join("spec.json");
        std::fs::write(&path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
        path.to_string_lossy().into_owned()
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn submit_edits_sweeps_and_redoes_with_every_mistake_caught_before_sending() {
    let session = Session::start(crate::helpers::FAKE_WORKER, 2);
    let app = &session.app;
    let file = session.spec_file(&small_spec("fine"));

    // `--set` edits the spec; the new id is all stdout says.
    let stdout = session.ok(&[
        "submit",
        &file,
        "--set",
        "optimizer.lr=1e-4",
        "--set",
        "phases[1].epochs=2",
        "--set",
        "name=edited",
    ]);
    let id = stdout.trim();
    let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["spec"]["optimizer"]["lr"], 1e-4);
    assert_eq!(job["spec"]["phases"][1]["epochs"], 2);
    assert_eq!(job["name"], "edited");

    // A bad path or value is refused before any request: the server named here does not exist.
    let dead = [("TRAINQ_URL", "http://127.0.0.1:9"), ("TRAINQ_TOKEN", "whatever")];
    for (edit, field) in [
        ("optimizer.lrr=1", "optimizer.lrr"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("nothing.here=1", "nothing"),
        ("image_size", "PATH=VALUE"),
    ] {
        let out = trainq(session.home.path(), &["submit", &file, "--set", edit], &dead, "");
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(field) && !stderr.contains("reaching"),
            "--set {edit}: {stderr}"
        );
    }
    // The server's own refusal (a dataset it has not) is shown with its field.
    let out = session.run(&["submit", &file, "--set", "dataset=nope"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("422") && stderr.contains("`dataset`"), "{stderr}");

    // A 2 × 2 sweep with 2 repeats: one group of 8 jobs, each combination with seeds 1 and 2.
    let out = session.ok(&[
        "submit",
        &file,
        "--sweep",
        "optimizer.lr=1e-3,1e-4",
        "--sweep",
        "image_size=32,64",
        "--repeats",
        "2",
        "--name",
        "repeat",
        "--json",
    ]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    let group = answer["group_id"].as_str().unwrap().to_string();
    let (_, group_view) = app.get(&format!("/api/groups/{group}")).await;
    let mut combinations = Vec::new();
    for member in group_view["jobs"].as_array().unwrap() {
        let (_, job) = app.get(&format!("/api/jobs/{}", member["id"].as_str().unwrap())).await;
        assert_eq!(job["group_id"], group.as_str());
        let spec = &job["spec"];
        combinations.push((
            spec["optimizer"]["lr"].as_f64().unwrap().to_string(),
            spec["image_size"].as_u64().unwrap(),
            spec["seed"].as_u64().unwrap(),
        ));
    }
    combinations.sort();
    let mut expected = Vec::new();
    for lr in ["0.0001", "0.001"] {
        for size in [32, 64] {
            for seed in [1, 2] {
                expected.push((lr.to_string(), size, seed));
            }
        }
    }
    assert_eq!(combinations, expected);
    // A bad combination is refused whole, naming itself; nothing is queued.
    let before = app.all_jobs("").await.len();
    let out = trainq(session.home.path(), &["submit", &file, "--sweep", "image_size=32,8"], &dead, "");
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("image_size") && stderr.contains("8"), "{stderr}");
    assert_eq!(app.all_jobs("").await.len(), before);

    // `compare` of the group: one row per combination, the swept parameters as columns.
    let ids: Vec<String> =
        group_view["jobs"].as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap().to_string()).collect();
    for id in &ids {
        app.wait_for_state(id, "succeeded", WAIT).await;
    }
    let table = session.ok(&["compare", &group]);
    assert!(table.contains("/optimizer/lr") && table.contains("/image_size"), "{table}");
    assert_eq!(table.lines().filter(|line| line.contains("2/2")).count(), 4, "{table}");
    assert!(table.contains("0.150 ± 0.071"), "test acc 0.1 and 0.2 over the two seeds: {table}");
    let csv = session.ok(&["compare", &group, &ids[0][..8], "--csv"]);
    assert!(csv.starts_with("id,"), "{csv}");
    let comparison: serde_json::Value = serde_json::from_str(&session.ok(&["compare", &group, "--json"])).unwrap();
    assert_eq!(comparison["rows"].as_array().unwrap().len(), 4, "{comparison}");
    // The group's prefix, as `submit --sweep` printed it, serves `compare`, `report` and `wait`.
    let prefix = &group[..8];
    assert_eq!(session.ok(&["compare", prefix]), table);
    let report = session.ok(&["report", prefix]);
    assert!(report.contains("<html") && report.contains(&ids[0]), "the report of the group's runs");
    let waited = session.ok(&["wait", prefix]);
    assert_eq!(waited.lines().count(), ids.len(), "one line per job of the group: {waited}");
    assert!(waited.lines().all(|line| line.ends_with(" succeeded")), "{waited}");
    let out = session.run(&["wait", "ffffffff"]);
    assert!(text(&out.stderr).contains("no job or group id starts with `ffffffff`"), "{}", text(&out.stderr));

    // `redo` makes a child with the change, linked to its parent.
    let child = session.ok(&["redo", &id[..8], "--set", "optimizer.lr=5e-4"]);
    let (_, child) = app.get(&format!("/api/jobs/{}", child.trim())).await;
    assert_eq!(child["parent_id"], id);
    assert_eq!(child["spec"]["optimizer"]["lr"], 5e-4);
    assert_eq!(child["spec"]["phases"][1]["epochs"], 2, "the rest is the parent's");
    assert!(child["notes"].to_string().contains(id), "{}", child["notes"]);

    // An example by name, from the server.
    let out = session.ok(&["submit", "q1-demo", "--set", "dataset=demo", "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["jobs"][0]["spec"]["name"], "q1-demo", "{answer}");
    let out = session.run(&["submit", "no-such-example"]);
    assert!(text(&out.stderr).contains("q1-demo"), "the error lists the examples: {}", text(&out.stderr));

    // Completions for the shells students use.
    for shell in ["bash", "zsh", "fish"] {
        let script = session.ok(&["completions", shell]);
        assert!(script.contains("submit") && script.contains("pull"), "{shell}: {script}");
    }
}

/// `script` runs a command on a pseudo-terminal and copies what it draws to its stdout.
fn on_a_terminal(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let command =
        std::iter::once(env!("CARGO_BIN_EXE_trainq")).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TRAINQ_URL")
        .env_remove("TRAINQ_TOKEN")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs commands on a pseudo-terminal");
    (out.status.code(), text(&out.stdout))
}

#[tokio::test]
async fn watch_draws_bars_on_a_terminal_and_pull_fetches_resumably() {
    let session = Session::start(CLIENT_WORKER, 2);
    let app = &session.app;
    let file = session.spec_file(&small_spec("watched"));
    let first = session.ok(&["submit", &file]).trim().to_string();
    let second = session.ok(&["submit", &file, "--set", "seed=2"]).trim().to_string();

    // On a terminal: progress bars, then how each job ended.
    let (code, screen) = on_a_terminal(session.home.path(), &["watch", &first[..8], &second[..8]]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains('█') && screen.contains("\x1b["), "bars drawn with cursor movement: {screen}");
    assert!(screen.contains("succeeded · test acc 0.700 · AUC 0.760") && screen.contains("test acc 0.800"), "{screen}");

    // Piped: plain lines, no escape codes, progress and the end.
    let third = session.ok(&["submit", &file]).trim().to_string();
    let out = session.run(&["watch", &third]);
    let lines = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{lines}{}", text(&out.stderr));
    assert!(!lines.contains('\x1b') && !lines.contains('█'), "{lines}");
    assert!(lines.contains("epoch 1/1 · step") && lines.contains("phase 1 epoch 1: train acc 0.800"), "{lines}");
    assert!(lines.lines().last().unwrap().ends_with("succeeded · test acc 0.700 · AUC 0.760"), "{lines}");

    // `logs` prints the job's log.
    assert!(!session.ok(&["logs", &third[..8]]).is_empty());

    // `pull`: every artifact equal to the server's, plots in both formats, the curves and the spec.
    let to = session.home.path().join("results");
    let to_arg = to.to_string_lossy().into_owned();
    let said = session.ok(&["pull", &first[..8], "--to", &to_arg]);
    let dir = to.join(&first);
    let (_, artifacts) = app.get(&format!("/api/jobs/{first}/artifacts")).await;
    let names: Vec<&str> = artifacts.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cam/index.json", "cam/tp-0.png", "model.safetensors", "predictions.csv"]);
    for name in &names {
        let served = app.download(&first, name).await;
        assert_eq!(sha256(&std::fs::read(dir.join(name)).unwrap()), sha256(&served), "{name}");
    }
    for name in [
        "plots/accuracy.png",
        "plots/accuracy.svg",
        "plots/loss.svg",
        "plots/roc.png",
        "plots/confusion.svg",
        "metrics.csv",
        "spec.json",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing after: {said}");
    }
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
    assert_eq!(spec["name"], "watched");
    // Again: nothing to fetch.
    let again = session.ok(&["pull", &first, "--to", &to_arg]);
    assert!(again.contains(": 0 files fetched (0.0 MB)"), "{again}");
    // A download cut at 100 kB continues from there (the version it was of is kept beside it).
    let checkpoint = dir.join("model.safetensors");
    let whole = std::fs::read(&checkpoint).unwrap();
    let url = app.url(&format!("/api/jobs/{first}/artifacts/model.safetensors"));
    let etag = app.client.head(&url).send().await.unwrap().headers()["etag"].to_str().unwrap().to_string();
    let cut = |version: &str| {
        std::fs::remove_file(&checkpoint).unwrap();
        std::fs::write(dir.join("model.safetensors.part"), &whole[..100_000]).unwrap();
        std::fs::write(dir.join("model.safetensors.part.etag"), version).unwrap();
    };
    cut(&etag);
    let resumed = session.ok(&["pull", &first, "--to", &to_arg]);
    assert!(resumed.contains(": 1 files fetched (0.2 MB)"), "only the missing 200 kB: {resumed}");
    assert_eq!(sha256(&std::fs::read(&checkpoint).unwrap()), sha256(&whole));
    assert!(!dir.join("model.safetensors.part").exists() && !dir.join("model.safetensors.part.etag").exists());
    // A part of another version of the file is not continued: the whole file comes again.
    cut("\"another-version\"");
    let again = session.ok(&["pull", &first, "--to", &to_arg]);
    assert!(again.contains(": 1 files fetched (0.3 MB)"), "{again}");
    assert_eq!(sha256(&std::fs::read(&checkpoint).unwrap()), sha256(&whole));

    // The report of two jobs: one HTML page with both.
    let html = session.ok(&["report", &first[..8], &second[..8]]);
    assert!(
        html.starts_with("<!DOCTYPE html>") || html.starts_with("<!doctype html>"),
        "{}",
        &html[..html.len().min(200)]
    );
    assert!(html.contains(&first) && html.contains(&second));
}
