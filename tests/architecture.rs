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

/// libjpeg-turbo is linked statically into the worker alone (src/worker/jpeg.rs): the server binary
/// neither needs its shared library nor holds its code, and the worker holds TurboJPEG's decoder
/// itself rather than a dependency on whatever libturbojpeg a machine has.
#[test]
fn only_the_worker_binary_links_libjpeg_turbo_and_statically() {
    let readelf = |arguments: &[&str], binary: &str| -> String {
        let output = std::process::Command::new("readelf").args(arguments).arg(binary).output().expect("readelf");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let defines = |symbols: &str, name: &str| symbols.lines().any(|line| line.split_whitespace().last() == Some(name));
    let (server, worker) = (env!("CARGO_BIN_EXE_trainq"), env!("CARGO_BIN_EXE_trainq-worker"));
    for binary in [server, worker] {
        let needed = readelf(&["-d"], binary);
        assert!(needed.contains("NEEDED"), "readelf printed no dynamic section: {needed}");
        assert!(!needed.contains("libturbojpeg") && !needed.contains("libjpeg"), "{binary}: {needed}");
    }
    let server_symbols = readelf(&["-sW"], server);
    assert!(server_symbols.contains("main"), "readelf printed no symbols for the server");
    for name in ["tj3Init", "tj3Decompress8", "jpeg_start_decompress"] {
        assert!(!defines(&server_symbols, name), "the server binary holds libjpeg-turbo's {name}");
    }
    let worker_symbols = readelf(&["-sW"], worker);
    assert!(defines(&worker_symbols, "tj3Decompress8"), "the worker binary lacks libjpeg-turbo's tj3Decompress8");
}

type Imports = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The modules of the crate folder `dir` (each `*.rs` file, each sub-folder as one) and the
/// ones each names outside comments (see [`imports_of_sources`]); `dir` is the crate's root.
fn module_imports(dir: &Path) -> Imports {
    module_imports_of(dir, "crate")
}

/// As [`module_imports`] for the folder `dir` of the module `module_path` (`crate::http`).
fn module_imports_of(dir: &Path, module_path: &str) -> Imports {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|path| {
            let relative = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            (relative, std::fs::read_to_string(path).unwrap())
        })
        .collect();
    let sources: Vec<(&str, &str)> = sources.iter().map(|(path, text)| (path.as_str(), text.as_str())).collect();
    imports_of_sources(&sources, module_path)
}

/// The import graph of one folder's modules, from each file's path (relative to the folder) and
/// text. A module is a `*.rs` file or a sub-folder; it imports a sibling when it names it as
/// `<module_path>::sibling` (`crate::sibling` at the crate's root) or, from a file whose parent
/// is the folder itself (`a.rs`, `sub/mod.rs`), as `super::sibling`: in `use` lines, in groups
/// (`use super::{a, b::{c, d}}` names `a` and `b`), and inline in code (`super::a::f()`).
/// Comment lines are skipped, and so is an inline `mod tests` block (its `super::` is the file
/// itself) with everything after it.
fn imports_of_sources(sources: &[(&str, &str)], module_path: &str) -> Imports {
    let module_of = |path: &str| path.split('/').next().unwrap().trim_end_matches(".rs").to_string();
    let modules: std::collections::BTreeSet<String> = sources.iter().map(|(path, _)| module_of(path)).collect();
    let own_prefix = format!("{module_path}::");
    let mut graph = Imports::new();
    for (path, text) in sources {
        let from = module_of(path);
        // `super::` is the folder only from a file whose parent module is the folder.
        let parent_is_folder = match path.split('/').collect::<Vec<_>>().as_slice() {
            [file] => !matches!(*file, "mod.rs" | "main.rs" | "lib.rs"),
            [_, file] => *file == "mod.rs",
            _ => false,
        };
        let code: String = text
            .lines()
            .take_while(|line| !line.trim_start().starts_with("mod tests"))
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut prefixes = vec![own_prefix.as_str()];
        if parent_is_folder {
            prefixes.push("super::");
        }
        let edges = graph.entry(from.clone()).or_default();
        for prefix in prefixes {
            for (at, _) in code.match_indices(prefix) {
                let before = code[..at].chars().next_back();
                // Part of a longer path (`a::super::`, `my_crate::`), or `super::super::`: not a sibling.
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let rest = &code[at + prefix.len()..];
                let names = match rest.strip_prefix('{') {
                    Some(group) => top_level_names(group),
                    None => vec![first_name(rest)],
                };
                edges.extend(
                    names.into_iter().filter(|name| modules.contains(*name) && *name != from).map(String::from),
                );
            }
        }
    }
    graph
}

/// The first path segment of `path` (`a` of `a::b::c`).
fn first_name(path: &str) -> &str {
    path.trim_start().split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap()
}

/// The first segment of each item of a `use` group, from just inside its `{` to its matching
/// `}`: `a, b::{c, d}, e}` gives `a`, `b`, `e`.
fn top_level_names(group: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item_start = Some(0);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = Some(at + 1),
            _ => {}
        }
        if let Some(start) = item_start.take() {
            names.push(first_name(&group[start..]));
        }
    }
    names
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

#[test]
fn the_import_check_reads_super_paths_groups_and_inline_calls() {
    let sources = [
        ("mod.rs", "mod jobs;\nmod chains;\nuse super::chains::OfTheCrate;\n"),
        ("jobs.rs", "use super::{ApiError, view::{\n    find, show,\n}};\nfn f() { super::chains::check_waits(); }\n"),
        ("chains.rs", "// super::jobs in a comment\nuse crate::http::retention::check_quota;\n"),
        ("retention.rs", "use super::jobs::find;\n#[cfg(test)]\nmod tests {\n    use super::super::chains;\n}\n"),
        ("view.rs", "use crate::events::EventKind;\nfn g() { my_super::jobs::h(); }\n"),
        ("events.rs", "use super::view::{self, find};\n"),
    ];
    let graph = imports_of_sources(&sources, "crate::http");
    assert_eq!(
        format!("{graph:?}"),
        r#"{"chains": {"retention"}, "events": {"view"}, "jobs": {"chains", "view"}, "mod": {}, "retention": {"jobs"}, "view": {}}"#
    );
    assert_eq!(find_cycle(&graph).as_deref(), Some("chains → retention → jobs → chains"));
    let without = [("jobs.rs", "use super::view::find;\n"), ("view.rs", ""), ("chains.rs", "use super::jobs;\n")];
    assert_eq!(find_cycle(&imports_of_sources(&without, "crate::http")), None);
}

#[test]
fn the_http_and_scheduler_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let http = module_imports_of(&src.join("http"), "crate::http");
    assert!(
        http["jobs"].contains("job_view") && http["events"].contains("job_list"),
        "the parser sees the handlers' imports: {http:?}"
    );
    let importers: Vec<&String> =
        http.iter().filter(|(from, to)| *from != "openapi" && to.contains("jobs")).map(|(from, _)| from).collect();
    assert!(
        importers.is_empty(),
        "only the OpenAPI document (which lists every handler) names a job's handlers; lookups and views are job_view's: {importers:?}"
    );
    assert_eq!(find_cycle(&http), None, "the http layer's modules import each other in a cycle");
    let scheduler = module_imports_of(&src.join("scheduler"), "crate::scheduler");
    assert!(scheduler["eta"].contains("queue"), "the parser sees the scheduler's imports: {scheduler:?}");
    assert_eq!(find_cycle(&scheduler), None, "the scheduler's modules import each other in a cycle");
}
