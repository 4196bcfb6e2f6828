//! A full disk, for real: a small tmpfs mounted for the test (which needs root; without it, or
//! where mounting is not allowed, the tests say SKIPPED loudly and pass). `files::write_atomic`
//! fails with ENOSPC and leaves no temporary file; a worker whose checkpoint or artifact cannot be
//! written reports a `storage` failure naming the path, exits 74 (`EXIT_STORAGE`) and leaves its
//! last good checkpoint and no `*.tmp*` file behind.

use crate::small_disk::{temporary_files, SmallDisk};
use crate::{follow, log, of_kind, worker, Workspace};
use serde_json::{json, Value};
use std::path::Path;
use trainq::files;

#[test]
fn write_atomic_on_a_full_disk_fails_with_enospc_and_leaves_no_temporary_file() {
    let temp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&temp.path().join("disk"), "1m", "write_atomic on a full disk") else { return };
    std::fs::write(disk.dir.join("filler"), vec![1u8; 768 << 10]).unwrap();

    let failed = files::write_atomic_bytes(&disk.dir.join("big.bin"), &vec![2u8; 512 << 10]).unwrap_err();
    assert_eq!(failed.raw_os_error(), Some(libc::ENOSPC), "{failed}");
    assert!(files::is_storage_error(&failed));
    let names: Vec<String> =
        std::fs::read_dir(&disk.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["filler"], "the temporary file is gone");
    // What still fits is written: the failure was the space, nothing else.
    files::write_atomic_bytes(&disk.dir.join("small.json"), &[3u8; 4 << 10]).unwrap();
}

/// Head-only training of a small random VGG16 on 32-pixel images: each resumable checkpoint holds
/// the backbone's 14.7 M float32 weights (59 MB).
fn spec(epochs: u32) -> Value {
    json!({
        "name": "full-disk", "dataset": "demo", "backbone": "vgg16", "weights": "random", "image_size": 32, "batch_size": 2,
        "head": ["gap", {"dense": 1}], "phases": [{"epochs": epochs, "train": "head"}],
        "optimizer": {"name": "sgd", "lr": 0.01}
    })
}

/// The one `failed` event, which must be a storage failure, and its message.
fn storage_failure(events: &[Value], job: &Path) -> String {
    let failed = of_kind(events, "failed");
    assert_eq!(failed.len(), 1, "{events:?}\n{}", log(job));
    assert_eq!(failed[0]["kind"], "storage", "{}", log(job));
    failed[0]["message"].as_str().unwrap().to_string()
}

#[test]
fn a_checkpoint_that_does_not_fit_stops_the_worker_with_a_storage_failure_and_keeps_the_last_one() {
    let workspace = Workspace::new(4);
    // Room for one checkpoint (59 MB), not for the temporary file of a second beside it.
    let Some(disk) = SmallDisk::mount(&workspace.root.join("disk"), "96m", "a checkpoint on a full disk") else {
        return;
    };
    let (output, state) = (disk.dir.join("artifacts"), disk.dir.join("state"));
    let job = workspace.job_writing_to("full", &output, &state, &spec(3));
    let (status, events) = follow(worker(&job).spawn().unwrap(), |_, _| {});

    let message = storage_failure(&events, &job);
    let path = state.join("resume.safetensors");
    assert!(message.starts_with(&format!("writing {}: ", path.display())), "names the path written: {message}");
    assert!(message.contains("No space left on device (os error 28)"), "and the system's error: {message}");
    assert_eq!(status.code(), Some(74), "{}", log(&job));
    let checkpoints = of_kind(&events, "checkpoint");
    assert_eq!(checkpoints.len(), 1, "the first epoch's checkpoint was written: {events:?}");
    assert!(of_kind(&events, "final").is_empty());
    assert!(temporary_files(&disk.dir).is_empty(), "left behind: {:?}", temporary_files(&disk.dir));

    // The first epoch's checkpoint is whole: the job resumes from it once there is room.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let progress: Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["trainq"]).unwrap();
    assert_eq!((progress["phase"].as_u64(), progress["epochs"].as_u64()), (Some(1), Some(1)), "{progress}");
    safetensors::SafeTensors::deserialize(&bytes).expect("a complete safetensors file");
    assert!(output.join("spec.json").exists());
}

#[test]
fn a_worker_on_a_full_disk_reports_a_storage_failure_naming_the_artifact() {
    let workspace = Workspace::new(2);
    let Some(disk) = SmallDisk::mount(&workspace.root.join("disk"), "1m", "a worker on a full disk") else { return };
    disk.fill("filler");
    let (output, state) = (disk.dir.join("artifacts"), disk.dir.join("state"));
    let job = workspace.job_writing_to("full", &output, &state, &spec(1));
    let (status, events) = follow(worker(&job).spawn().unwrap(), |_, _| {});

    // The first thing a job writes is its spec, beside the artifacts.
    let message = storage_failure(&events, &job);
    assert_eq!(
        message,
        format!("writing {}: No space left on device (os error 28)", output.join("spec.json").display())
    );
    assert_eq!(status.code(), Some(74), "{}", log(&job));
    assert!(temporary_files(&disk.dir).is_empty(), "left behind: {:?}", temporary_files(&disk.dir));
}
