//! The only place with SQL. SQLite through sqlx: WAL, a busy timeout on every pooled connection,
//! migrations from `migrations/` applied at open. One file per table family: `jobs.rs` (jobs,
//! epochs, runs, dependencies), `users.rs`, `notifications.rs` (targets and the outbox),
//! `retention.rs` (tombstones and disk usage).
//!
//! Every state change is checked against `JobState::can_become` (`legal`) before it is
//! written. [`StoreError::is_transient`] and [`StoreError::is_disk_full`] tell a write that may
//! land later (SQLITE_FULL, IOERR, BUSY, READONLY) from a bug, so callers retry the first and
//! report the second. Lists and scans go through indexes (pages by `seq`, partial indexes for
//! gc's candidates), with their query plans tested, so no request's cost grows with the jobs
//! ever submitted.

mod budgets;
mod jobs;
mod notifications;
mod retention;
mod users;

pub use budgets::{BudgetHolder, ChargedRun};
pub use jobs::{unix_now, CancelOutcome, EpochTiming, JobFilter, JobPage, JobRun, NewJob, PageOrder};
pub use notifications::{Notification, NotifyTargets, NotifyTargetsChange};
pub use retention::{JobSize, Tombstone};
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
    /// A state change the job's state machine forbids (`JobState::can_become`); a bug.
    #[error("illegal job state change {from} -> {to}")]
    IllegalTransition {
        /// The state it is in.
        from: crate::domain::JobState,
        /// The state asked for.
        to: crate::domain::JobState,
    },
    /// A stored value did not decode (a bug or a hand-edited database).
    #[error("corrupt stored value in {column}: {detail}")]
    Corrupt {
        /// Which column.
        column: &'static str,
        /// What failed to decode.
        detail: String,
    },
}

/// SQLite's primary result codes that pass: the disk is full (`SQLITE_FULL`), an I/O error
/// (`SQLITE_IOERR`), another connection holds the lock past the busy timeout (`SQLITE_BUSY`,
/// `SQLITE_LOCKED`), the file cannot be opened right now (`SQLITE_CANTOPEN`), the filesystem was
/// remounted read-only (`SQLITE_READONLY`, until the admin mounts it writable again).
const TRANSIENT_CODES: [i64; 6] = [13, 10, 5, 6, 14, 8];
const SQLITE_FULL: i64 = 13;

impl StoreError {
    /// SQLite's primary result code (extended codes carry it in their low byte).
    fn sqlite_code(&self) -> Option<i64> {
        match self {
            StoreError::Database(sqlx::Error::Database(err)) => err.code()?.parse::<i64>().ok().map(|code| code & 0xff),
            _ => None,
        }
    }

    /// Whether the same statement may succeed later: a full disk, an I/O error, a busy database,
    /// a pool that timed out. Such writes are retried until they land.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
            StoreError::Database(_) => self.sqlite_code().is_some_and(|code| TRANSIENT_CODES.contains(&code)),
            _ => false,
        }
    }

    /// Whether the disk under the database is full (`SQLITE_FULL`, or `ENOSPC` from the OS).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Io(err)) => err.raw_os_error() == Some(libc::ENOSPC),
            _ => self.sqlite_code() == Some(SQLITE_FULL),
        }
    }
}

/// Checks a state change against the job state machine before the store writes it.
fn legal(from: crate::domain::JobState, to: crate::domain::JobState) -> Result<(), StoreError> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(StoreError::IllegalTransition { from, to })
    }
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
        Self::migrate(&options).await?;
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        Ok(Store { pool })
    }

    /// Applies the migrations on a connection of its own with foreign keys off, as SQLite's
    /// table rebuild needs (a CHECK can only change by rebuilding the table, and dropping a
    /// table others reference fails with them on: `0011_time_limits.sql`), then proves every
    /// reference still holds before any pooled connection (foreign keys on) opens.
    async fn migrate(options: &SqliteConnectOptions) -> Result<(), StoreError> {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect_with(&options.clone().foreign_keys(false)).await?;
        sqlx::migrate!("./migrations").run(&mut connection).await?;
        let broken: Vec<(String, Option<i64>, String)> =
            sqlx::query_as("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check")
                .fetch_all(&mut connection)
                .await?;
        connection.close().await?;
        match broken.first() {
            None => Ok(()),
            Some((table, rowid, parent)) => Err(StoreError::Corrupt {
                column: "foreign keys",
                detail: format!(
                    "{} rows break a reference after the migrations, e.g. {table} row {rowid:?} to {parent}",
                    broken.len()
                ),
            }),
        }
    }

    /// Rewrites the one `server_health` row: whether the database takes a write right now.
    pub async fn write_probe(&self) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO server_health (id, checked_at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at")
            .bind(crate::domain::Timestamp::now().to_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Runs SQLite's own consistency check; `ok` when healthy.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let (result,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&self.pool).await?;
        Ok(result)
    }
}
