//! The only place with SQL. SQLite through sqlx: WAL, a busy timeout on every pooled connection,
//! migrations from `migrations/` applied at open.

mod jobs;
mod users;

pub use jobs::{unix_now, CancelOutcome, EpochTiming, JobRun, NewJob};
pub use users::UserRecord;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::time::Duration;

/// A storage failure. Callers log the cause chain; clients see an opaque 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A migration failed at open.
    #[error("database migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value did not decode (a bug or a hand-edited database).
    #[error("corrupt stored value in {column}: {detail}")]
    Corrupt {
        /// Which column.
        column: &'static str,
        /// What failed to decode.
        detail: String,
    },
}

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) `trainq.db` in `data_dir` and applies migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("trainq.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL loses at most the last transactions on power loss, never integrity.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Runs SQLite's own consistency check; `ok` when healthy.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let (result,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&self.pool).await?;
        Ok(result)
    }
}
