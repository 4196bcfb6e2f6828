//! Snapshots of the live database for backups: `VACUUM INTO` a new file, which reads one
//! consistent state of the database (a read transaction: writers go on meanwhile, in WAL mode)
//! and writes it compacted, never a copy of the live file and its WAL; and SQLite's own check of
//! a snapshot file, opened apart from the live database.

use super::{Store, StoreError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::path::Path;

/// A path SQLite is handed as text: one that is not UTF-8 would name another file.
fn path_text(path: &Path) -> Result<&str, StoreError> {
    path.to_str().ok_or_else(|| {
        let message = format!("{} is not valid UTF-8", path.display());
        StoreError::Database(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, message)))
    })
}

impl Store {
    /// Writes a consistent snapshot of the database into `target`, a file that must not exist
    /// yet (SQLite refuses to overwrite one).
    pub async fn snapshot_into(&self, target: &Path) -> Result<(), StoreError> {
        sqlx::query("VACUUM INTO ?").bind(path_text(target)?).execute(&self.pool).await?;
        Ok(())
    }
}

/// `PRAGMA integrity_check` of the database file at `path`, opened read-only on a connection of
/// its own: `ok` when it is healthy, else SQLite's list of what is wrong.
pub async fn integrity_of_file(path: &Path) -> Result<String, StoreError> {
    let mut connection = SqliteConnectOptions::new().filename(path).read_only(true).connect().await?;
    let (result,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&mut connection).await?;
    connection.close().await?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_holds_the_rows_and_passes_the_integrity_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.write_probe().await.unwrap();
        let target = dir.path().join("snapshot.db");
        store.snapshot_into(&target).await.unwrap();
        assert_eq!(integrity_of_file(&target).await.unwrap(), "ok");
        let copy = Store::open_snapshot_for_test(&target).await;
        assert_eq!(copy.schema_version().await.unwrap(), super::super::newest_migration());
        // SQLite never overwrites: the caller picks a fresh name.
        assert!(store.snapshot_into(&target).await.is_err());
    }

    impl Store {
        /// A store on a snapshot file (tests only).
        async fn open_snapshot_for_test(path: &Path) -> Store {
            let options = SqliteConnectOptions::new().filename(path).read_only(true);
            Store::over_pool(sqlx::sqlite::SqlitePoolOptions::new().connect_with(options).await.unwrap()).await.unwrap()
        }
    }
}
