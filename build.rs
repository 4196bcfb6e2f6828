//! Records the git commit the binaries are built from (`trainq --version`, `GET /api/version`),
//! builds the worker's C++ shim, and links the worker against libtorch_cuda when the installed
//! libtorch has it.
//!
//! Nothing in tch references a symbol of libtorch_cuda.so, so a linker running with `--as-needed`
//! drops it and CUDA silently disappears at run time (`Cuda::is_available()` is false on a GPU
//! box). Forcing it into DT_NEEDED for the worker binary alone keeps the server free of libtorch.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    record_git_commit();
    if std::env::var_os("CARGO_FEATURE_WORKER").is_none() {
        return;
    }
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("the worker needs LIBTORCH (run ./deploy/setup-libtorch.sh, which links .libtorch; .cargo/config.toml points LIBTORCH at it)");
    };
    build_shim(&libtorch);
    // Resolve the `.libtorch` link so the rpath keeps working if the checkout moves.
    let lib_dir = libtorch.join("lib");
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    let lib_dir = lib_dir.display();
    // Every target that runs tch code (the worker and its unit-test harness) finds libtorch here.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if libtorch.join("lib/libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bin=trainq-worker=-L{lib_dir}");
        println!("cargo:rustc-link-arg-bin=trainq-worker=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// Sets `TRAINQ_GIT_COMMIT` for the crate: the checkout's commit, or `unknown` outside a git
/// checkout (a source tarball) or without git. Reruns when HEAD moves, so a new commit is seen
/// without rebuilding on every file change; only files that exist are watched, since cargo
/// reruns the script on every build for a missing one.
fn record_git_commit() {
    let git = |arguments: &[&str]| -> Option<String> {
        let output = std::process::Command::new("git").args(arguments).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
        (output.status.success() && !text.is_empty()).then_some(text)
    };
    let commit = git(&["rev-parse", "HEAD"]);
    if commit.is_some() {
        // HEAD itself, the branch it names, and the packed refs a `git gc` moves it into.
        let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git(&["rev-parse", "--git-path", &branch]));
        }
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
        for path in watched.into_iter().flatten().filter(|path| std::path::Path::new(path).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=TRAINQ_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}

/// `src/worker/shim.cpp` against the installed libtorch's headers (the same flags torch-sys uses
/// for its own C++), as a static library only the worker's code references.
#[cfg(feature = "worker")]
fn build_shim(libtorch: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/worker/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| String::from("1"));
    cc::Build::new()
        .cpp(true)
        .file("src/worker/shim.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("trainq_shim");
}

#[cfg(not(feature = "worker"))]
fn build_shim(_: &std::path::Path) {}
