//! A full disk, for real: a small tmpfs mounted for the test (which needs root; without it, or
//! where mounting is not allowed, the tests say SKIPPED loudly and pass). `storage::write_atomic`
//! fails with ENOSPC and leaves no temporary file; a worker whose checkpoint or artifact cannot be
//! written reports a `storage` failure naming the path, exits 74 (`EXIT_STORAGE`) and leaves its
//! last good checkpoint and no `*.tmp*` file behind.

use crate::{follow, log, of_kind, worker, Workspace};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use trainq::storage;

/// A tmpfs of a fixed size mounted on a folder, unmounted when dropped, so a failing assertion
/// does not leave it mounted.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `1m`) on `dir`, created if
    /// missing. `None`, after a loud SKIPPED line naming `test`, when not root or when the mount
    /// is refused (a container without CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str, test: &str) -> Option<SmallDisk> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("\n!!! SKIPPED: {test}: a full disk needs root to mount a small tmpfs; the full-disk path was NOT tested !!!\n");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output();
        match mounted {
            Ok(output) if output.status.success() => Some(SmallDisk { dir: dir.to_path_buf() }),
            Ok(output) => {
                let why = String::from_utf8_lossy(&output.stderr);
                eprintln!("\n!!! SKIPPED: {test}: mount -t tmpfs refused ({}); the full-disk path was NOT tested !!!\n", why.trim());
                None
            }
            Err(err) => {
                eprintln!("\n!!! SKIPPED: {test}: no mount command ({err}); the full-disk path was NOT tested !!!\n");
                None
            }
        }
    }

    /// Writes `name` until the disk is full; the last write must fail with ENOSPC.
    fn fill(&self, name: &str) {
        let mut file = std::fs::File::create(self.dir.join(name)).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let full = loop {
            if let Err(err) = file.write_all(&chunk) {
                break err;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "filling the tmpfs: {full}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a worker killed by a failed assertion may still hold a file open.
        let unmounted = Command::new("umount").arg("-l").arg(&self.dir).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            eprintln!("warning: could not unmount the test tmpfs at {}", self.dir.display());
        }
    }
}

/// Every file under `dir` whose name says it is a temporary file (`x.tmp`, `x.tmp.<pid>.<n>.<nonce>`).
fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(temporary_files(&path));
        } else if entry.file_name().to_string_lossy().contains(".tmp") {
            found.push(path);
        }
    }
    found
}

#[test]
fn write_atomic_on_a_full_disk_fails_with_enospc_and_leaves_no_temporary_file() {
    let temp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&temp.path().join("disk"), "1m", "write_atomic on a full disk") else { return };
    std::fs::write(disk.dir.join("filler"), vec![1u8; 768 << 10]).unwrap();

    let failed = storage::write_atomic_bytes(&disk.dir.join("big.bin"), &vec![2u8; 512 << 10]).unwrap_err();
    assert_eq!(failed.raw_os_error(), Some(libc::ENOSPC), "{failed}");
    assert!(storage::is_storage_error(&failed));
    let names: Vec<String> = std::fs::read_dir(&disk.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["filler"], "the temporary file is gone");
    // What still fits is written: the failure was the space, nothing else.
    storage::write_atomic_bytes(&disk.dir.join("small.json"), &[3u8; 4 << 10]).unwrap();
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
    let Some(disk) = SmallDisk::mount(&workspace.root.join("disk"), "96m", "a checkpoint on a full disk") else { return };
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
    assert_eq!(message, format!("writing {}: No space left on device (os error 28)", output.join("spec.json").display()));
    assert_eq!(status.code(), Some(74), "{}", log(&job));
    assert!(temporary_files(&disk.dir).is_empty(), "left behind: {:?}", temporary_files(&disk.dir));
}
