//! The only place with SQL. SQLite through sqlx: WAL, a busy timeout on every pooled connection,
//! migrations from `migrations/` applied at open. One file per table family: `jobs.rs` (jobs,
//! epochs, runs, dependencies), `users.rs`, `notifications.rs` (targets and the outbox),
//! `retention.rs` (tombstones and disk usage), `backup.rs` (snapshots of the live database);
//! `group_commit.rs` (one writer task inserting submissions in batches) and `job_totals.rs` (jobs
//! by owner and state, kept in memory by the state changes).
//!
//! Every state change is checked against `JobState::can_become` (`legal`) before it is
//! written. [`StoreError::is_transient`] and [`StoreError::is_disk_full`] tell a write that may
//! land later (SQLITE_FULL, IOERR, BUSY, READONLY) from a bug, so callers retry the first and
//! report the second. Lists and scans go through indexes (pages by `seq`, partial indexes for
//! gc's candidates), with their query plans tested, so no request's cost grows with the jobs
//! ever submitted.

mod accounts;
mod backup;
mod budgets;
mod group_commit;
mod job_totals;
mod jobs;
mod notifications;
mod reservations;
mod retention;
mod users;

pub use accounts::{Account, ExistingDiffers, NewAccount, TokenHolder, WELCOME};
pub use backup::integrity_of_file;
pub use budgets::{BudgetHolder, ChargedRun};
pub use jobs::{unix_now, CancelOutcome, EpochTiming, JobFilter, JobPage, JobRun, NewJob, PageOrder};
pub use notifications::{Notification, NotifyTargets, NotifyTargetsChange};
pub use reservations::ReservationRefused;
pub use retention::{JobSize, Tombstone};
pub use users::UserRecord;

use group_commit::SubmissionWriter;
use job_totals::JobTotals;

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
    /// A pending migration failed at open: every pending migration was rolled back with it.
    #[error(
        "migration {version:04} ({description}) failed, so no pending migration was applied and the \
         database is as it was before this start"
    )]
    MigrationRolledBack {
        /// The failed migration's number (its file's prefix).
        version: i64,
        /// Its description (the file's name after the number).
        description: String,
        /// What SQLite said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
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

/// The schema: `migrations/`, compiled in.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The newest migration this binary has: the schema version it brings to a database.
pub fn newest_migration() -> i64 {
    MIGRATOR.iter().map(|migration| migration.version).max().unwrap_or(0)
}

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Jobs by owner and state, moved by every state change (`job_totals.rs`).
    totals: JobTotals,
    /// The writer task that inserts submissions in batches (`group_commit.rs`).
    submissions: SubmissionWriter,
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
        Self::over_pool(pool).await
    }

    /// The store over an open, migrated pool: counts the jobs once for the running totals and
    /// starts the submissions' writer task.
    async fn over_pool(pool: SqlitePool) -> Result<Store, StoreError> {
        let totals = JobTotals::count(&pool).await?;
        let submissions = SubmissionWriter::start(pool.clone(), totals.clone());
        Ok(Store { pool, totals, submissions })
    }

    /// Applies the pending migrations on a connection of its own, all together or not at all.
    ///
    /// - Foreign keys are off on that connection, as SQLite's table rebuild needs (a CHECK can
    ///   only change by rebuilding the table, and dropping a table others reference fails with
    ///   them on: `0011_time_limits.sql`); every reference is proven to hold before the commit and
    ///   before any pooled connection (foreign keys on) opens.
    /// - sqlx commits each migration on its own, so a failure halfway through an upgrade would
    ///   leave a schema no release ever had; here they run inside one transaction (each in a
    ///   savepoint of it, SQLite's DDL being transactional), and a failure rolls every one of them
    ///   back and names the migration.
    async fn migrate(options: &SqliteConnectOptions) -> Result<(), StoreError> {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect_with(&options.clone().foreign_keys(false)).await?;
        let mut transaction = connection.begin().await?;
        if let Err(source) = MIGRATOR.run(&mut *transaction).await {
            transaction.rollback().await?;
            return Err(match source {
                sqlx::migrate::MigrateError::ExecuteMigration(_, version) => {
                    let description = MIGRATOR
                        .iter()
                        .find(|migration| migration.version == version)
                        .map(|migration| migration.description.to_string())
                        .unwrap_or_default();
                    StoreError::MigrationRolledBack { version, description, source }
                }
                other => StoreError::Migration(other),
            });
        }
        let broken: Vec<(String, Option<i64>, String)> =
            sqlx::query_as("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check")
                .fetch_all(&mut *transaction)
                .await?;
        if let Some((table, rowid, parent)) = broken.first() {
            let detail = format!(
                "{} rows break a reference after the migrations, e.g. {table} row {rowid:?} to {parent}",
                broken.len()
            );
            transaction.rollback().await?;
            return Err(StoreError::Corrupt { column: "foreign keys", detail });
        }
        transaction.commit().await?;
        connection.close().await?;
        Ok(())
    }

    /// Rewrites the one `server_health` row: whether the database takes a write right now.
    pub async fn write_probe(&self) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO server_health (id, checked_at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at")
            .bind(crate::domain::Timestamp::now().to_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest migration applied to this database (its schema version).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let (version,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(&self.pool).await?;
        Ok(version.unwrap_or(0))
    }

    /// Runs SQLite's own consistency check; `ok` when healthy.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let (result,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&self.pool).await?;
        Ok(result)
    }
}
