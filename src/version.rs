//! What this build is: the package version, the git commit it was built from (`build.rs`;
//! `unknown` outside a git checkout) and the schema version its migrations bring. Shown by
//! `trainq --version` and `GET /api/version`, so an admin can tell which build runs on which
//! database before and after an upgrade.

use std::sync::OnceLock;

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from, or `unknown`.
pub const GIT_COMMIT: &str = env!("TRAINQ_GIT_COMMIT");

/// `trainq --version`'s text after the program's name: `0.1.0 (commit …, schema 10)`.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| format!("{VERSION} (commit {GIT_COMMIT}, schema {})", crate::store::newest_migration()))
}
