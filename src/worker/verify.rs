//! `trainq-worker verify DIR`: every file of an ImageFolder's class folders decoded in full, as a
//! job would decode it, so a dataset import refuses (or leaves out) truncated, corrupt and
//! non-image files by name before any job meets them. Prints one [`VerifyReport`] as JSON.

use crate::data::verify_image;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use trainq::catalog::datasets::SPLITS;
use trainq::domain::job::SkippedFile;
use trainq::domain::worker_protocol::VerifyReport;

/// Checks `dir`'s `<split>/<class>/<file>` files on `threads` threads and prints the report.
pub fn verify(dir: &Path, threads: Option<usize>) -> anyhow::Result<()> {
    let files = class_files(dir)?;
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
    let work = Mutex::new(files.iter());
    let bad = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(files.len().max(1)) {
            scope.spawn(|| loop {
                let Some(path) = work.lock().expect("a verify thread panicked").next() else { break };
                let outcome = std::fs::read(path).map_err(|err| err.to_string()).and_then(|bytes| verify_image(&bytes));
                if let Err(reason) = outcome {
                    let relative = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned();
                    bad.lock().expect("a verify thread panicked").push(SkippedFile { path: relative, reason });
                }
            });
        }
    });
    let mut bad = bad.into_inner().expect("a verify thread panicked");
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    println!("{}", serde_json::to_string(&VerifyReport { checked: files.len(), bad })?);
    Ok(())
}

/// Every regular file directly in a class folder of a split, in name order.
fn class_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for split in SPLITS {
        let split_dir = dir.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        for class in std::fs::read_dir(&split_dir)? {
            let class = class?;
            if !class.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(class.path())? {
                let file = file?;
                if file.file_type()?.is_file() {
                    files.push(file.path());
                }
            }
        }
    }
    files.sort();
    Ok(files)
}
