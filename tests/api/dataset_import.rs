//! `PUT /api/admin/datasets/{name}` (`trainq admin datasets import`): an archive shaped like
//! Kaggle's becomes a dataset jobs train on; hostile archives are refused with nothing left behind;
//! a replace never serves the old pixels.

use crate::helpers::{client_with, Options, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use zip::write::FileOptions;

/// A generated ImageFolder (`demo-data`) with this seed, as (relative path, bytes).
fn generated_images(seed: u64) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["demo-data", dir.path().join("set").to_str().unwrap(), "--size", "36", "--seed", &seed.to_string()])
        .args(["--train-per-class", "4", "--val-per-class", "1", "--test-per-class", "2"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut files = Vec::new();
    for split in ["train", "val", "test"] {
        for class in ["NORMAL", "PNEUMONIA"] {
            let folder = dir.path().join("set").join(split).join(class);
            let mut names: Vec<_> =
                std::fs::read_dir(&folder).unwrap().map(|entry| entry.unwrap().file_name()).collect();
            names.sort();
            for name in names {
                let name = name.to_string_lossy().into_owned();
                files.push((format!("{split}/{class}/{name}"), std::fs::read(folder.join(&name)).unwrap()));
            }
        }
    }
    files
}

fn stored() -> FileOptions {
    FileOptions::default().compression_method(zip::CompressionMethod::Stored)
}

/// Kaggle's shape: the tree one level down, a nested duplicate, `__MACOSX` AppleDouble files,
/// `.DS_Store`; with `bad`, a JPEG cut in half and a text file named `.jpeg`.
fn kaggle_zip(seed: u64, bad: bool) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, bytes) in generated_images(seed) {
        for prefix in ["chest_xray/", "chest_xray/chest_xray/"] {
            zip.start_file(format!("{prefix}{path}"), stored()).unwrap();
            zip.write_all(&bytes).unwrap();
        }
        let (folder, name) = path.rsplit_once('/').unwrap();
        zip.start_file(format!("__MACOSX/chest_xray/{folder}/._{name}"), stored()).unwrap();
        zip.write_all(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ").unwrap();
    }
    for path in ["chest_xray/.DS_Store", "chest_xray/train/.DS_Store"] {
        zip.start_file(path, stored()).unwrap();
        zip.write_all(b"Bud1\x00\x00").unwrap();
    }
    if bad {
        let whole = &generated_images(seed)[0].1;
        zip.start_file("chest_xray/train/PNEUMONIA/cut.jpeg", stored()).unwrap();
        zip.write_all(&whole[..whole.len() / 2]).unwrap();
        zip.start_file("chest_xray/test/NORMAL/notes.jpeg", stored()).unwrap();
        zip.write_all(b"these are the radiologist's notes, not a film").unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `PUT`s `archive` as dataset `name` with the admin's token; the status and JSON body.
async fn import(app: &TestApp, name: &str, query: &str, archive: Vec<u8>) -> (StatusCode, Value) {
    let response = client_with(&app.tokens["root"])
        .put(app.url(&format!("/api/admin/datasets/{name}?{query}")))
        .header("content-type", "application/zip")
        .body(archive)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The names in the datasets folder, hidden ones included (a temporary folder left behind shows).
fn datasets_folder(app: &TestApp) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app.root.join("datasets"))
        .map(|entries| entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn spec(dataset: &str, seed: u64) -> Value {
    json!({
        "name": "imported", "dataset": dataset, "backbone": "vgg16", "weights": "random",
        "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}],
        "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "sgd", "lr": 0.01}, "seed": seed
    })
}

#[tokio::test]
async fn a_kaggle_shaped_archive_is_refused_naming_its_bad_files_then_imported_with_skip_bad() {
    let app = TestApp::spawn(Options::default());
    std::fs::create_dir_all(app.root.join("datasets")).unwrap();
    let before = datasets_folder(&app);

    // Students may not import.
    let response =
        app.client.put(app.url("/api/admin/datasets/chest_xray")).body(kaggle_zip(1, false)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The refusal names both files that do not decode; nothing is left behind.
    let (status, body) = import(&app, "chest_xray", "", kaggle_zip(1, true)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["detail"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("test/NORMAL/notes.jpeg"), "{message}");
    assert!(
        message.contains("train/PNEUMONIA/cut.jpeg"),
        "the truncated JPEG is refused as Pillow refuses it: {message}"
    );
    assert!(message.contains("--skip-bad"), "{message}");
    assert_eq!(datasets_folder(&app), before);

    // With skip_bad, streamed: the stages, then the manifest with its counts.
    let response = client_with(&app.tokens["root"])
        .put(app.url("/api/admin/datasets/chest_xray?skip_bad=true"))
        .header("accept", "application/x-ndjson")
        .body(kaggle_zip(1, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let stages: Vec<&str> = lines.iter().filter_map(|line| line["stage"].as_str()).collect();
    assert!(stages.contains(&"unpack") && stages.contains(&"verify"), "{text}");
    let last = lines.last().unwrap();
    assert_eq!(last["stage"], "done", "{text}");
    let manifest = &last["manifest"];
    assert_eq!(manifest["images"], 14, "{manifest}");
    assert_eq!(manifest["splits"]["train"], json!({"NORMAL": 4, "PNEUMONIA": 4}), "{manifest}");
    assert_eq!(manifest["splits"]["val"], json!({"NORMAL": 1, "PNEUMONIA": 1}), "{manifest}");
    assert_eq!(
        manifest["left_out"],
        json!({"macosx": 14, "ds_store": 2, "nested_duplicate": 14, "bad": 2}),
        "{manifest}"
    );
    let bad: Vec<&str> =
        manifest["bad_files"].as_array().unwrap().iter().map(|file| file["path"].as_str().unwrap()).collect();
    assert_eq!(bad, ["test/NORMAL/notes.jpeg", "train/PNEUMONIA/cut.jpeg"]);
    assert_eq!(datasets_folder(&app), ["chest_xray"], "no temporary folder stays");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(app.root.join("datasets/chest_xray/trainq-import.json")).unwrap())
            .unwrap();
    assert_eq!(&on_disk, manifest);

    // The catalog shows the counts, the imbalance and what was left out.
    let (_, datasets) = app.get("/api/datasets").await;
    let listed = datasets.as_array().unwrap().iter().find(|dataset| dataset["name"] == "chest_xray").unwrap();
    assert_eq!(listed["class_imbalance"], 1.0, "{listed}");
    assert_eq!(listed["left_out"]["nested_duplicate"], 14, "{listed}");

    // The name is taken now.
    let (status, body) = import(&app, "chest_xray", "", kaggle_zip(1, false)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("--replace"), "{body}");

    // A job trains on it.
    let id = app.submit(&spec("chest_xray", 1)).await;
    let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    assert_eq!(job["progress"]["data"]["train"]["images"], 8, "{job:#}");
    assert_eq!(job["progress"]["data"]["train"]["cache"], "built");

    // A replace while a job uses it is a 409 naming the job.
    let busy = app.submit(&spec("chest_xray", 2)).await;
    let (status, body) = import(&app, "chest_xray", "replace=true", kaggle_zip(2, false)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains(&busy) && body["detail"]["jobs"][0] == busy.as_str(),
        "{body}"
    );
    let (job, log) = app.finished(&busy, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    assert_eq!(job["progress"]["data"]["train"]["cache"], "hit", "the same pixels, from the cache");

    // Once it ended, the replace goes through and the next job decodes the new pixels.
    let (status, body) = import(&app, "chest_xray", "replace=true", kaggle_zip(2, false)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["left_out"].get("bad"), None, "{body}");
    assert_eq!(datasets_folder(&app), ["chest_xray"]);
    let id = app.submit(&spec("chest_xray", 2)).await;
    let (fresh, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(fresh["state"], "succeeded", "{fresh:#}\n{log}");
    assert_eq!(fresh["progress"]["data"]["train"]["cache"], "built", "not the replaced set's cache entry: {log}");
    assert_eq!(fresh["progress"]["data"]["train"]["decoded"], 8);
    assert_ne!(fresh["final_metrics"]["test_loss"], job["final_metrics"]["test_loss"], "other pixels, another result");
}

/// An archive with one entry of `name` holding `bytes`, or a symlink to `/etc/passwd`.
fn one_entry_zip(name: &str, symlink: bool) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("set/train/A/a.jpeg", stored()).unwrap();
    zip.write_all(b"x").unwrap();
    if symlink {
        zip.add_symlink(name, "/etc/passwd", stored()).unwrap();
    } else {
        zip.start_file(name, stored()).unwrap();
        zip.write_all(b"escaped").unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A zip bomb: `entries` entries of 1 GiB of zeros each. The zeros are deflated once, at the
/// best level (about 1 MB), and the compressed entry is copied as it is under each name, so ten
/// gigabytes cost the test one gigabyte of compression.
fn bomb_zip(entries: usize) -> Vec<u8> {
    let mut one = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = FileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9))
        .large_file(true);
    one.start_file("zeros", options).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        one.write_all(&zeros).unwrap();
    }
    let mut source = zip::ZipArchive::new(one.finish().unwrap()).unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for index in 0..entries {
        zip.raw_copy_file_rename(source.by_index_raw(0).unwrap(), format!("set/train/A/zeros-{index}.jpeg")).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn hostile_archives_are_refused_with_nothing_left_behind() {
    let app = TestApp::spawn(Options {
        args: vec![String::from("--max-dataset-gb"), String::from("1")],
        ..Options::default()
    });
    std::fs::create_dir_all(app.root.join("datasets")).unwrap();
    let outside = app.root.join("escaped");
    let absolute = app.root.join("absolute-escape");
    let many = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for index in 0..300_000 {
            zip.start_file(format!("set/train/A/{index}.jpeg"), stored()).unwrap();
        }
        zip.finish().unwrap().into_inner()
    };
    // Ten gigabytes unpacked from about ten megabytes.
    let bomb = bomb_zip(10);
    assert!(bomb.len() < 16 << 20, "a bomb of {} bytes", bomb.len());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zip-slip", one_entry_zip("../../escaped", false), "`..`"),
        ("absolute path", one_entry_zip(absolute.to_str().unwrap(), false), "absolute path"),
        ("symlink", one_entry_zip("set/train/A/link.jpeg", true), "symlink"),
        ("bomb", bomb, "zip bomb"),
        ("300,000 files", many, "at most 200000"),
    ];
    for (case, archive, words) in cases {
        let (status, body) = import(&app, "hostile", "", archive).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {body}");
        let message = body["detail"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{case}: {message}");
        assert!(datasets_folder(&app).is_empty(), "{case}: {:?}", datasets_folder(&app));
        assert!(!outside.exists() && !absolute.exists() && !Path::new("/etc/escaped").exists(), "{case}");
    }
}

#[tokio::test]
async fn a_folder_laid_out_by_hand_skips_what_does_not_decode_by_name_and_fails_on_an_emptied_class() {
    let app = TestApp::spawn(Options::default());
    crate::helpers::write_dataset(&app.root, 4, 1, 2);
    let normal = app.root.join("datasets/demo/train/NORMAL");
    let mut first: Vec<_> = std::fs::read_dir(&normal).unwrap().map(|entry| entry.unwrap().path()).collect();
    first.sort();
    let whole = std::fs::read(&first[0]).unwrap();
    std::fs::write(normal.join("cut.jpeg"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(normal.join("notes.jpeg"), b"not a film").unwrap();
    let id = app.submit(&spec("demo", 1)).await;
    let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log}");
    let train = &job["progress"]["data"]["train"];
    assert_eq!(train["images"], 8, "{train}");
    assert_eq!(train["skipped"], 2, "{train}");
    let named: Vec<&str> =
        train["skipped_files"].as_array().unwrap().iter().map(|file| file["path"].as_str().unwrap()).collect();
    assert_eq!(named, ["train/NORMAL/cut.jpeg", "train/NORMAL/notes.jpeg"], "{train}");
    assert!(train["skipped_files"][1]["reason"].as_str().is_some_and(|reason| !reason.is_empty()), "{train}");

    // A class whose every file fails to decode fails the job at start, naming it.
    let test_normal = app.root.join("datasets/demo/test/NORMAL");
    for entry in std::fs::read_dir(&test_normal).unwrap() {
        std::fs::write(entry.unwrap().path(), b"broken").unwrap();
    }
    let id = app.submit(&spec("demo", 2)).await;
    let (job, log) = app.finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "failed", "{job:#}\n{log}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("class `NORMAL` of the test split has no images"), "{error}");
}

#[tokio::test]
async fn the_client_imports_a_folder_with_its_stages_and_refuses_a_taken_name() {
    let app = TestApp::spawn(Options::default());
    let folder = tempfile::tempdir().unwrap();
    for (path, bytes) in generated_images(3) {
        let target = folder.path().join("course").join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
    std::fs::write(folder.path().join("course/train/.DS_Store"), b"Bud1").unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_trainq"))
            .args(["admin", "datasets", "import", "course"])
            .arg(folder.path())
            .env("TRAINQ_URL", &app.address)
            .env("TRAINQ_TOKEN", &app.tokens["root"])
            .env("HOME", folder.path())
            .output()
            .unwrap()
    };
    let output = run();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("imported `course`: 14 images"), "{stdout}");
    assert!(stdout.contains("train: NORMAL 4, PNEUMONIA 4") && stdout.contains("left out: 1 ds_store"), "{stdout}");
    assert!(stderr.contains("unpack:") && stderr.contains("verify:"), "the server's stages: {stderr}");
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("409") && stderr.contains("--replace"), "{stderr}");
}
