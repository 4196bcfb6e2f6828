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
    let strays: Vec<String> = files_mentioning(needle)
        .into_iter()
        .filter(|file| !allowed.iter().any(|prefix| file.starts_with(prefix)))
        .collect();
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

type Imports = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The modules of the crate folder `dir` (each `*.rs` file, each sub-folder as one) and the
/// ones each names as `crate::module` or `use crate::{a, b}` outside comments.
fn module_imports(dir: &Path) -> Imports {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let module_of = |path: &Path| {
        let first =
            path.strip_prefix(dir).unwrap().components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: std::collections::BTreeSet<String> = files.iter().map(|path| module_of(path)).collect();
    let mut graph = Imports::new();
    for path in &files {
        let from = module_of(path);
        let text = std::fs::read_to_string(path).unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for line in text.lines().filter(|line| !line.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(list) => list.split(['}', ',']).map(|item| item.trim().split("::").next().unwrap()).collect(),
                    None => vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap()],
                };
                edges.extend(
                    names.into_iter().filter(|name| modules.contains(*name) && *name != from).map(String::from),
                );
            }
        }
    }
    graph
}

/// A cycle of imports (`a → b → a`), if there is one.
fn find_cycle(graph: &Imports) -> Option<String> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a Imports,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Option<String> {
        if done.contains(node) {
            return None;
        }
        if let Some(at) = path.iter().position(|on| *on == node) {
            return Some(format!("{} → {node}", path[at..].join(" → ")));
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_import_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::Thing;\n// crate::c in a comment\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "use crate::{c, a::Other};\n").unwrap();
    std::fs::write(dir.path().join("c.rs"), "fn f() { crate::d::g(); }\n").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/mod.rs"), "use std::io;\n").unwrap();
    let graph = module_imports(dir.path());
    assert_eq!(format!("{graph:?}"), r#"{"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {}}"#);
    assert_eq!(find_cycle(&graph).as_deref(), Some("a → b → a"));
    std::fs::write(dir.path().join("b.rs"), "use crate::c;\n").unwrap();
    assert_eq!(find_cycle(&module_imports(dir.path())), None);
}

#[test]
fn the_worker_modules_form_no_cycle_and_train_is_a_leaf_that_orchestrates() {
    let graph = module_imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/worker"));
    assert!(
        graph["train"].contains("evaluate") && graph["cam"].contains("artifacts"),
        "the parser sees imports: {graph:?}"
    );
    let importers: Vec<&String> =
        graph.iter().filter(|(from, to)| *from != "main" && to.contains("train")).map(|(from, _)| from).collect();
    assert!(importers.is_empty(), "only main may use `train` (it orchestrates; nothing builds on it): {importers:?}");
    assert_eq!(find_cycle(&graph), None, "the worker's modules import each other in a cycle");
}
