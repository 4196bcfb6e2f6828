//! Architecture invariants (see ARCHITECTURE.md), checked against the source tree and the binaries:
//! one door per room.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` holds `needle` at the start of a word (so `tch::` does not match `fetch::`).
fn contains_word(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        !needle.starts_with(|c: char| c.is_alphanumeric()) || !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Source files (relative to `src/`) that contain `needle` outside comments.
fn files_mentioning(needle: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut hits: Vec<String> = files
        .into_iter()
        .filter(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .any(|line| contains_word(line, needle))
        })
        .map(|path| path.strip_prefix(&src).unwrap().to_string_lossy().into_owned())
        .collect();
    hits.sort();
    hits
}

fn assert_only_under(needle: &str, allowed: &[&str]) {
    let strays: Vec<String> =
        files_mentioning(needle).into_iter().filter(|file| !allowed.iter().any(|prefix| file.starts_with(prefix))).collect();
    assert!(strays.is_empty(), "`{needle}` may only appear under {allowed:?}, found in {strays:?}");
}

#[test]
fn needles_match_whole_words_only() {
    assert!(contains_word("use tch::Tensor;", "tch::"));
    assert!(contains_word("x = tch::no_grad(f)", "tch::"));
    assert!(!contains_word("trainq::fetch::run()", "tch::"));
    assert!(contains_word("a.claim_job(", ".claim_job("));
}

#[test]
fn only_store_has_sql() {
    assert_only_under("sqlx::", &["store/"]);
    assert_only_under("use sqlx", &["store/"]);
    assert_only_under("SELECT ", &["store/"]);
    assert_only_under("UPDATE ", &["store/"]);
}

#[test]
fn only_the_scheduler_claims_jobs() {
    // The definition (and its unit tests) live in the store; the one caller is the scheduler.
    assert_only_under(".claim_job(", &["scheduler/", "store/"]);
}

#[test]
fn only_the_supervisor_spawns() {
    assert_only_under("Command::new", &["supervisor/"]);
    assert_only_under("process::Command", &["supervisor/"]);
}

#[test]
fn only_the_worker_touches_tch() {
    assert_only_under("tch::", &["worker/"]);
}

#[test]
fn only_http_knows_axum() {
    assert_only_under("axum", &["http/"]);
}

/// The server binary has no libtorch in its dynamic section, so it cannot load it at start; the
/// worker binary must list libtorch_cuda when the installed libtorch has CUDA.
#[test]
fn the_server_binary_does_not_link_libtorch_and_the_worker_links_cuda() {
    let needed = |binary: &str| -> String {
        let output = std::process::Command::new("readelf").args(["-d", binary]).output().expect("readelf");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let server = needed(env!("CARGO_BIN_EXE_trainq"));
    assert!(server.contains("NEEDED"), "readelf printed no dynamic section: {server}");
    assert!(!server.contains("libtorch") && !server.contains("libc10"), "{server}");
    let worker = needed(env!("CARGO_BIN_EXE_trainq-worker"));
    assert!(worker.contains("libtorch_cpu"), "{worker}");
    let libtorch = Path::new(env!("CARGO_MANIFEST_DIR")).join(".libtorch/lib/libtorch_cuda.so");
    if libtorch.exists() {
        assert!(worker.contains("libtorch_cuda.so"), "libtorch_cuda was dropped by the linker: {worker}");
    }
}
