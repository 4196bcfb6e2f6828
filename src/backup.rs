//! Backups of the queue's database: consistent snapshots taken while the server runs and
//! accepts writes (`Store::snapshot_into`, SQLite's `VACUUM INTO`, never a copy of the live
//! file), each integrity-checked before it is renamed into place, so a snapshot on disk is whole
//! and healthy or absent. `GET /api/admin/backup` streams one; `--backup-dir` takes one every
//! `--backup-every`, keeps the newest `--backup-keep`, and [`BackupStatus`] tells `/metrics` and
//! `/readyz` how old the last good one is.
//!
//! A snapshot is the database only; the job folders (`jobs/`: logs, checkpoints, artifacts) are
//! copied beside it (README, "Backup and restore").

use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Scheduled snapshots' names: `trainq-<UTC time>.db`, so that names sort as times do.
const SNAPSHOT_PREFIX: &str = "trainq-";
/// Scheduled snapshots' extension.
const SNAPSHOT_SUFFIX: &str = ".db";
/// How long a failed scheduled snapshot waits before the next try, at most.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(600);

/// A snapshot that was not written; nothing is left at its path.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the backup {path}: {source}")]
pub struct BackupError {
    /// Where the snapshot was to go.
    pub path: PathBuf,
    /// What failed: the folder, the disk, the snapshot or its integrity check.
    #[source]
    pub source: std::io::Error,
}

/// Takes a consistent snapshot of the database into `target` (replacing a file there): written
/// beside it under a temporary name, checked with `PRAGMA integrity_check`, fsynced, renamed.
/// Returns its size in bytes.
pub async fn take_snapshot(store: &Store, target: &Path) -> Result<u64, BackupError> {
    let runtime = tokio::runtime::Handle::current();
    let (store, path) = (store.clone(), target.to_path_buf());
    let written = tokio::task::spawn_blocking(move || {
        crate::files::write_atomic_through_path(&path, |temporary| {
            runtime.block_on(snapshot_and_check(&store, temporary))
        })?;
        Ok(std::fs::metadata(&path)?.len())
    })
    .await
    .unwrap_or_else(|join_error| Err(std::io::Error::other(join_error)));
    written.map_err(|source| BackupError { path: target.to_path_buf(), source })
}

/// The snapshot into the temporary file, and its check, as the I/O errors of the write.
async fn snapshot_and_check(store: &Store, temporary: &Path) -> std::io::Result<()> {
    let as_io = |err: crate::store::StoreError| std::io::Error::other(format!("{:#}", anyhow::Error::from(err)));
    store.snapshot_into(temporary).await.map_err(as_io)?;
    match crate::store::integrity_of_file(temporary).await.map_err(as_io)?.as_str() {
        "ok" => Ok(()),
        report => Err(std::io::Error::other(format!("the snapshot failed SQLite's integrity check: {report}"))),
    }
}

/// `--backup-dir`, `--backup-every`, `--backup-keep`, parsed.
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    /// The folder the snapshots go to.
    pub dir: PathBuf,
    /// Time between two snapshots.
    pub every: Duration,
    /// How many snapshots are kept; older ones are removed.
    pub keep: usize,
}

impl BackupSchedule {
    /// Creates the folder and proves a file can be written there, so a path that cannot take
    /// backups stops the start with its name instead of failing quietly every period.
    pub fn check_folder(&self) -> Result<(), BackupError> {
        let probe = self.dir.join(".trainq-backup-probe");
        let result = std::fs::create_dir_all(&self.dir)
            .and_then(|()| crate::files::write_atomic_bytes(&probe, b"trainq can write here\n"))
            .and_then(|()| std::fs::remove_file(&probe));
        result.map_err(|source| BackupError { path: self.dir.clone(), source })
    }
}

/// How the backups are doing, shared by the schedule (which records each good snapshot) and
/// `/metrics` and `/readyz` (which read it). Cheap to clone.
#[derive(Debug, Clone)]
pub struct BackupStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Debug)]
struct StatusInner {
    /// `--backup-every`, when backups are scheduled.
    every: Option<Duration>,
    /// When the newest good snapshot was taken (scheduled or through the API).
    last_good: Option<SystemTime>,
    /// When the server started: with no snapshot yet, lateness counts from here.
    since: SystemTime,
}

impl BackupStatus {
    /// The status of a server that takes a snapshot every `every` (`None`: only on request).
    pub fn new(every: Option<Duration>) -> BackupStatus {
        let inner = StatusInner { every, last_good: None, since: SystemTime::now() };
        BackupStatus { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a good snapshot taken at `at` (a later one than any recorded).
    pub fn record_good(&self, at: SystemTime) {
        let mut inner = self.lock();
        if inner.last_good.is_none_or(|last| last < at) {
            inner.last_good = Some(at);
        }
    }

    /// The age of the newest good snapshot, if there is one.
    pub fn last_good_age(&self) -> Option<Duration> {
        let last_good = self.lock().last_good?;
        Some(SystemTime::now().duration_since(last_good).unwrap_or_default())
    }

    /// A warning for `/readyz` once two scheduled periods went by without a good snapshot;
    /// `None` while backups are on time or not scheduled.
    pub fn overdue_warning(&self) -> Option<String> {
        let inner = self.lock();
        let every = inner.every?;
        let reference = inner.last_good.unwrap_or(inner.since);
        let late = SystemTime::now().duration_since(reference).unwrap_or_default();
        if late <= every * 2 {
            return None;
        }
        Some(match inner.last_good {
            Some(_) => format!(
                "the last good backup is {} s old, over two periods of --backup-every ({} s): see the server log",
                late.as_secs(),
                every.as_secs()
            ),
            None => format!(
                "no good backup in the {} s since the server started, over two periods of --backup-every ({} s): see the server log",
                late.as_secs(),
                every.as_secs()
            ),
        })
    }
}

/// Takes a snapshot into `schedule.dir` every `schedule.every`, forever: the first when the
/// newest one already there is a period old (at once if there is none), so a restart does not
/// add one. Each good snapshot is recorded in `status` and the oldest beyond `keep` are removed;
/// a failed one is logged and tried again sooner.
pub async fn run_schedule(store: Store, schedule: BackupSchedule, status: BackupStatus) {
    let newest = {
        let dir = schedule.dir.clone();
        tokio::task::spawn_blocking(move || snapshots_in(&dir).pop()).await.ok().flatten()
    };
    let mut due = SystemTime::now();
    if let Some(newest) = newest.and_then(|path| std::fs::metadata(path).ok()?.modified().ok()) {
        status.record_good(newest);
        due = newest + schedule.every;
    }
    loop {
        tokio::time::sleep(due.duration_since(SystemTime::now()).unwrap_or_default()).await;
        let target = schedule.dir.join(snapshot_name(SystemTime::now()));
        match take_snapshot(&store, &target).await {
            Ok(bytes) => {
                let taken = SystemTime::now();
                status.record_good(taken);
                tracing::info!(path = %target.display(), bytes, "backup written");
                let dir = schedule.dir.clone();
                let keep = schedule.keep;
                let _ = tokio::task::spawn_blocking(move || remove_oldest(&dir, keep)).await;
                due = taken + schedule.every;
            }
            Err(err) => {
                tracing::error!(error = %err, "the scheduled backup failed; trying again");
                due = SystemTime::now() + schedule.every.min(RETRY_AFTER_FAILURE);
            }
        }
    }
}

/// A snapshot's file name, `trainq-20261207T051500.123Z.db`: UTC, to the millisecond, sorting as times do.
pub fn snapshot_name(at: SystemTime) -> String {
    let time = time::OffsetDateTime::from(at);
    format!(
        "{SNAPSHOT_PREFIX}{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z{SNAPSHOT_SUFFIX}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    )
}

/// The scheduled snapshots in `dir`, oldest first (temporary files of a write under way are not
/// snapshots).
fn snapshots_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX))
        .collect();
    names.sort();
    names.into_iter().map(|name| dir.join(name)).collect()
}

/// Removes the oldest snapshots in `dir` until `keep` remain.
fn remove_oldest(dir: &Path, keep: usize) {
    let snapshots = snapshots_in(dir);
    let surplus = snapshots.len().saturating_sub(keep);
    for old in &snapshots[..surplus] {
        match std::fs::remove_file(old) {
            Ok(()) => tracing::info!(path = %old.display(), "old backup removed"),
            Err(err) => tracing::warn!(path = %old.display(), error = %err, "could not remove an old backup"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_sort_as_their_times_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let names: Vec<String> = (0..5).map(|n| snapshot_name(start + Duration::from_millis(n * 1500))).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        assert_eq!(names[0], "trainq-20251206T054640.000Z.db");
        for name in &names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("trainq-20251206T054640.000Z.db.tmp.1.2.3"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        remove_oldest(dir.path(), 2);
        let left: Vec<PathBuf> = snapshots_in(dir.path());
        assert_eq!(left, [dir.path().join(&names[3]), dir.path().join(&names[4])]);
        assert!(
            dir.path().join("notes.txt").exists()
                && dir.path().join("trainq-20251206T054640.000Z.db.tmp.1.2.3").exists()
        );
    }

    #[test]
    fn backups_are_overdue_after_two_missed_periods_only_when_scheduled() {
        let every = Duration::from_secs(3600);
        let status = BackupStatus::new(Some(every));
        assert_eq!(status.overdue_warning(), None, "a fresh server is not late");
        status.record_good(SystemTime::now() - every * 3);
        let warning = status.overdue_warning().unwrap();
        assert!(warning.contains("two periods") && warning.contains("3600 s)"), "{warning}");
        assert!(status.last_good_age().unwrap() >= every * 3);
        status.record_good(SystemTime::now() - every);
        assert_eq!(status.overdue_warning(), None, "one missed period is not yet a warning");
        let unscheduled = BackupStatus::new(None);
        unscheduled.record_good(SystemTime::now() - every * 100);
        assert_eq!(unscheduled.overdue_warning(), None);
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let schedule = BackupSchedule { dir: file.path().join("backups"), every: Duration::from_secs(1), keep: 1 };
        let message = schedule.check_folder().unwrap_err().to_string();
        assert!(message.contains(&file.path().join("backups").display().to_string()), "{message}");
    }

    #[tokio::test]
    async fn a_snapshot_replaces_its_target_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let backups = dir.path().join("backups");
        let target = backups.join("copy.db");
        std::fs::create_dir_all(&backups).unwrap();
        std::fs::write(&target, b"an older backup").unwrap();
        let bytes = take_snapshot(&store, &target).await.unwrap();
        assert_eq!(bytes, std::fs::metadata(&target).unwrap().len());
        assert_eq!(crate::store::integrity_of_file(&target).await.unwrap(), "ok");
        assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 1);
    }
}
