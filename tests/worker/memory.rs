//! A worker that runs out of memory says so (`failed` with kind `out_of_memory`, libtorch's
//! message) and exits with `EXIT_OUT_OF_MEMORY`, under the same kind of limit the server sets on
//! CPU workers.

use crate::{follow, log, of_kind, worker, Workspace};
use serde_json::json;
use std::os::unix::process::CommandExt;

/// The limit: enough for libtorch, the data and VGG16's weights, far too little for a batch of
/// 512-pixel images through VGG16 (its first activation alone is 64 MB per image). Measured: the
/// worker needs about 0.7 GB of RLIMIT_DATA just to load libtorch (its libraries' writable
/// segments count); under 0.6 GB the dynamic loader or a `std::bad_alloc` at start-up kills it.
const LIMIT_BYTES: u64 = 1536 << 20;

#[test]
fn a_worker_out_of_memory_reports_it_and_exits_3() {
    let workspace = Workspace::new(6);
    let spec = json!({
        "name": "huge", "dataset": "demo", "backbone": "vgg16", "weights": "random",
        "image_size": 512, "batch_size": 64, "head": ["gap", {"dense": 2}],
        "phases": [{"epochs": 1, "train": "all"}], "optimizer": {"name": "sgd", "lr": 0.01}
    });
    let job = workspace.job("huge", "state", &spec);
    let mut command = worker(&job);
    // RLIMIT_DATA caps the private writable memory (heap and anonymous mappings) but not the
    // address space that mapping libtorch's libraries takes: RLIMIT_AS would have to leave room
    // for gigabytes of mapped CUDA libraries (a worker does not even load under 2 GB of it).
    // SAFETY: only setrlimit(2), which is async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: LIMIT_BYTES, rlim_max: LIMIT_BYTES };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, events) = follow(command.spawn().unwrap(), |_, _| {});
    let failed = of_kind(&events, "failed");
    assert_eq!(failed.len(), 1, "{events:?}\n{}", log(&job));
    assert_eq!(failed[0]["kind"], "out_of_memory", "{}", log(&job));
    let message = failed[0]["message"].as_str().unwrap();
    assert!(message.contains("allocate") && message.chars().any(|c| c.is_ascii_digit()), "{message}");
    assert!(!message.contains("frame #") && !message.contains("Exception raised from"), "no C++ stack: {message}");
    assert_eq!(status.code(), Some(3), "{}", log(&job));
    assert!(of_kind(&events, "started").len() == 1, "libtorch loaded under the limit: {}", log(&job));
}
