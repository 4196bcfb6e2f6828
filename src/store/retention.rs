//! Deleted jobs (tombstones), each job's measured bytes and each user's running total of them
//! (`disk_usage`), and gc's candidates (`migrations/0008_lifecycle.sql`).
//!
//! `tombstone` takes the job's bytes off its owner's running total in the same transaction, and
//! refuses while a queued job starts from its weights (`starting_from`, through `job_deps`);
//! `set_disk_bytes` moves the total by the difference, so a user's usage is always one row to
//! read. `largest_jobs_of`, `ended_before` and `unmeasured_jobs` read through partial indexes.

use super::jobs::{JobRecord, JOB_COLUMNS};
use super::{Store, StoreError};
use crate::domain::{Job, JobId, JobState, Timestamp};

/// The queued or running jobs that start from job `?3`'s weights (`init_from`); `job_deps` finds
/// who waits for it, the spec says which of them start from it.
const STARTING_FROM_ROWS: &str = "SELECT waiting.id FROM job_deps JOIN jobs AS waiting ON waiting.id = job_deps.job_id \
     WHERE job_deps.after_id = ?3 AND waiting.state IN ('queued', 'running') AND json_extract(waiting.spec, '$.init_from.job') = ?3";

/// What a delete found.
#[derive(Debug, Clone)]
pub enum Tombstone {
    /// The job is now deleted: its row as it stands, and the bytes its folder held by the last
    /// measurement.
    Deleted(Job),
    /// It is queued or running: it must be cancelled first.
    NotFinished(JobState),
    /// It was deleted before.
    AlreadyDeleted(Job),
    /// No such job.
    NotFound,
    /// A queued or running job starts from its weights (`init_from`): deleting them would fail
    /// that job, so its owner must cancel it (or wait until it ended) first.
    NeededBy(JobId),
}

/// One of a user's largest live jobs, named by a quota's 507.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct JobSize {
    /// The job.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Bytes of its folder as last measured.
    pub disk_bytes: u64,
}

/// The states a job may be deleted in.
const FINISHED: &str = "('succeeded', 'failed', 'cancelled', 'timeout')";

/// gc's candidates: see [`Store::ended_before`].
fn ended_before_query(unpruned_only: bool) -> String {
    let pruned = if unpruned_only { " AND pruned_at IS NULL" } else { "" };
    format!("SELECT {JOB_COLUMNS} FROM jobs WHERE deleted_at IS NULL{pruned} AND finished_at < ? AND +state IN {FINISHED} ORDER BY finished_at")
}

/// A quota's largest jobs: see [`Store::largest_jobs_of`].
const LARGEST_QUERY: &str =
    "SELECT id, name, disk_bytes FROM jobs WHERE owner = ? AND deleted_at IS NULL AND disk_bytes > 0 \
                             ORDER BY disk_bytes DESC LIMIT ?";

/// Ended jobs not yet measured: see [`Store::unmeasured_jobs`].
const UNMEASURED_QUERY: &str =
    "SELECT id FROM jobs WHERE disk_measured = 0 AND finished_at IS NOT NULL ORDER BY seq LIMIT ?";

impl Store {
    /// Marks a finished job deleted by `by` and takes its bytes off its owner's total, in one
    /// transaction; the row stays. Queued, running or already deleted jobs are left as they are.
    pub async fn tombstone(&self, id: JobId, by: &str) -> Result<Tombstone, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // The first statement writes, so the transaction holds the write lock from here on.
        sqlx::query(&format!(
            "UPDATE disk_usage SET bytes = bytes - (SELECT disk_bytes FROM jobs WHERE id = ?1) \
             WHERE owner = (SELECT COALESCE(owner, '') FROM jobs WHERE id = ?1 AND state IN {FINISHED} AND deleted_at IS NULL)"
        ))
        .bind(id.to_string())
        .execute(&mut *transaction)
        .await?;
        let record: Option<JobRecord> = sqlx::query_as(&format!(
            "UPDATE jobs SET deleted_at = ?1, deleted_by = ?2, disk_bytes = 0, disk_measured = 1 \
             WHERE id = ?3 AND state IN {FINISHED} AND deleted_at IS NULL AND NOT EXISTS ({STARTING_FROM_ROWS}) RETURNING {JOB_COLUMNS}"
        ))
        .bind(super::unix_now())
        .bind(by)
        .bind(id.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(record) = record {
            transaction.commit().await?;
            return Ok(Tombstone::Deleted(Job::try_from(record)?));
        }
        drop(transaction);
        Ok(match self.job(id).await? {
            None => Tombstone::NotFound,
            Some(job) if job.is_deleted() => Tombstone::AlreadyDeleted(job),
            Some(job) if job.state.is_terminal() => match self.starting_from(id).await? {
                Some(waiting) => Tombstone::NeededBy(waiting),
                // Deleted or re-queued meanwhile: say what it is now.
                None => return Box::pin(self.tombstone(id, by)).await,
            },
            Some(job) => Tombstone::NotFinished(job.state),
        })
    }

    /// A queued or running job that starts from `id`'s weights (`init_from`), through the
    /// `job_deps` index of who waits for `id`.
    pub async fn starting_from(&self, id: JobId) -> Result<Option<JobId>, StoreError> {
        let waiting: Option<String> =
            sqlx::query_scalar(&format!("{} LIMIT 1", STARTING_FROM_ROWS.replace("?3", "?1")))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        waiting
            .map(|text| {
                text.parse().map_err(|_| StoreError::Corrupt { column: "job_deps.job_id", detail: text.clone() })
            })
            .transpose()
    }

    /// Records the measured bytes of a live job's folder, moving its owner's total by the
    /// difference in the same transaction. `pruned` also marks it pruned (so retention does not
    /// select it again) with `note` appended to its notes. A deleted job is left alone: a
    /// measurement that lands after a delete must not count its vanished folder.
    pub async fn set_disk_bytes(&self, id: JobId, bytes: u64, pruned: Option<&str>) -> Result<(), StoreError> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO disk_usage (owner, bytes) SELECT COALESCE(owner, ''), ? - disk_bytes FROM jobs WHERE id = ? AND deleted_at IS NULL \
             ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes",
        )
        .bind(bytes)
        .bind(id.to_string())
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "UPDATE jobs SET disk_bytes = ?, disk_measured = 1, \
             pruned_at = CASE WHEN ? IS NULL THEN pruned_at ELSE ? END, \
             notes = CASE WHEN ? IS NULL THEN notes ELSE json_insert(notes, '$[#]', ?) END \
             WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(bytes)
        .bind(pruned)
        .bind(super::unix_now())
        .bind(pruned)
        .bind(pruned)
        .bind(id.to_string())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Up to `limit` ended jobs whose folders were not measured since (they ended before the
    /// sizes were kept, or the server died between a job's end and its measurement), oldest
    /// first, through `jobs_unmeasured`, which holds no other job.
    pub async fn unmeasured_jobs(&self, limit: u32) -> Result<Vec<JobId>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(UNMEASURED_QUERY).bind(limit).fetch_all(&self.pool).await?;
        rows.into_iter().map(|(id,)| id.parse().map_err(|err| super::jobs::corrupt("id", err))).collect()
    }

    /// The bytes of `owner`'s live jobs: one row of the running totals.
    pub async fn disk_usage_of(&self, owner: &str) -> Result<u64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT bytes FROM disk_usage WHERE owner = ?")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |(bytes,)| bytes.max(0) as u64))
    }

    /// Every user's bytes, by name (`""` for jobs from before users existed): one row per user.
    pub async fn disk_usage(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT owner, bytes FROM disk_usage ORDER BY owner").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(owner, bytes)| (owner, bytes.max(0) as u64)).collect())
    }

    /// `owner`'s `count` largest live jobs, through the (owner, disk_bytes) index.
    pub async fn largest_jobs_of(&self, owner: &str, count: u32) -> Result<Vec<JobSize>, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as(LARGEST_QUERY).bind(owner).bind(count).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(id, name, bytes)| {
                Ok(JobSize {
                    id: id.parse().map_err(|err| super::jobs::corrupt("id", err))?,
                    name,
                    disk_bytes: bytes.max(0) as u64,
                })
            })
            .collect()
    }

    /// Live finished jobs that ended before `cutoff`, oldest end first; with
    /// `unpruned_only`, not those a prune already went through. Read through a partial index, so
    /// the jobs earlier passes deleted or pruned are not walked again (the unary `+` keeps SQLite
    /// from walking `jobs_by_state`, every finished job ever, instead).
    /// The cutoff is compared as RFC 3339 text, as `finished_at` is stored (UTC, written by the
    /// same [`Timestamp::to_rfc3339`]), so the partial indexes on `finished_at` serve it.
    pub async fn ended_before(&self, cutoff: Timestamp, unpruned_only: bool) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> =
            sqlx::query_as(&ended_before_query(unpruned_only)).bind(cutoff.to_rfc3339()).fetch_all(&self.pool).await?;
        records.into_iter().map(Job::try_from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::jobs::tests::{queued_by, store};
    use super::*;

    /// A job of `owner` run to `state` and measured at `bytes`.
    async fn finished(store: &Store, owner: &str, state: JobState, bytes: u64) -> Job {
        let job = queued_by(store, owner).await;
        assert!(store.claim_job(job.id, "cpu0").await.unwrap());
        assert!(store.finish_job(job.id, state, None).await.unwrap());
        store.set_disk_bytes(job.id, bytes, None).await.unwrap();
        store.job(job.id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn usage_follows_every_measurement_prune_and_delete() {
        let (_dir, store) = store().await;
        let small = finished(&store, "alice", JobState::Succeeded, 100).await;
        let large = finished(&store, "alice", JobState::Failed, 5_000).await;
        finished(&store, "bob", JobState::Cancelled, 7).await;
        assert_eq!(store.disk_usage_of("alice").await.unwrap(), 5_100);
        // A second measurement moves the total by the difference, and a prune notes itself.
        store.set_disk_bytes(large.id, 4_000, Some("pruned")).await.unwrap();
        assert_eq!(store.disk_usage_of("alice").await.unwrap(), 4_100);
        let pruned = store.job(large.id).await.unwrap().unwrap();
        assert!(pruned.pruned_at.is_some() && pruned.notes == ["pruned"], "{pruned:?}");
        let largest = store.largest_jobs_of("alice", 3).await.unwrap();
        assert_eq!(
            largest.iter().map(|job| (job.id, job.disk_bytes)).collect::<Vec<_>>(),
            [(large.id, 4_000), (small.id, 100)]
        );

        let Tombstone::Deleted(deleted) = store.tombstone(large.id, "alice").await.unwrap() else {
            panic!("not deleted")
        };
        assert_eq!((deleted.deleted_by.as_deref(), deleted.disk_bytes), (Some("alice"), 0));
        assert_eq!(store.disk_usage_of("alice").await.unwrap(), 100);
        assert!(matches!(store.tombstone(large.id, "root").await.unwrap(), Tombstone::AlreadyDeleted(_)));
        // A measurement that lands after the delete does not count the vanished folder.
        store.set_disk_bytes(large.id, 4_000, None).await.unwrap();
        assert_eq!(store.disk_usage_of("alice").await.unwrap(), 100);
        assert_eq!(store.disk_usage().await.unwrap(), [(String::from("alice"), 100), (String::from("bob"), 7)]);

        // Every ended job was measured (or deleted) here; a queued one is not measured yet.
        assert!(store.unmeasured_jobs(10).await.unwrap().is_empty());
        let unmeasured = queued_by(&store, "bob").await;
        assert!(store.claim_job(unmeasured.id, "cpu0").await.unwrap());
        assert!(store.unmeasured_jobs(10).await.unwrap().is_empty(), "running jobs are not measured");
        assert!(store.finish_job(unmeasured.id, JobState::Succeeded, None).await.unwrap());
        assert_eq!(store.unmeasured_jobs(10).await.unwrap(), [unmeasured.id]);
        store.set_disk_bytes(unmeasured.id, 0, None).await.unwrap();
        assert!(store.unmeasured_jobs(10).await.unwrap().is_empty());

        // Queued and running jobs stay; a missing one is said so.
        let waiting = queued_by(&store, "alice").await;
        assert!(matches!(
            store.tombstone(waiting.id, "alice").await.unwrap(),
            Tombstone::NotFinished(JobState::Queued)
        ));
        assert!(matches!(store.tombstone(JobId::new(), "alice").await.unwrap(), Tombstone::NotFound));
    }

    #[tokio::test]
    async fn gc_selects_old_live_jobs_through_its_partial_indexes() {
        let (_dir, store) = store().await;
        let deleted = finished(&store, "alice", JobState::Succeeded, 1).await;
        let pruned = finished(&store, "alice", JobState::Succeeded, 1).await;
        let live = finished(&store, "alice", JobState::Failed, 1).await;
        queued_by(&store, "alice").await;
        store.tombstone(deleted.id, "alice").await.unwrap();
        store.set_disk_bytes(pruned.id, 1, Some("pruned")).await.unwrap();
        let future = Timestamp::parse_rfc3339("9999-01-01T00:00:00Z").unwrap();
        let ids = |jobs: Vec<Job>| jobs.into_iter().map(|job| job.id).collect::<Vec<_>>();
        assert_eq!(ids(store.ended_before(future, true).await.unwrap()), [live.id]);
        assert_eq!(ids(store.ended_before(future, false).await.unwrap()), [pruned.id, live.id]);
        assert!(store
            .ended_before(Timestamp::parse_rfc3339("2000-01-01T00:00:00Z").unwrap(), false)
            .await
            .unwrap()
            .is_empty());
        // Each query walks its index in order, no sort, whatever the jobs ever submitted.
        let store = &store;
        let plan = |sql: String| async move {
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind(future.to_rfc3339())
                .bind(3)
                .fetch_all(&store.pool)
                .await
                .unwrap();
            plan.into_iter().map(|step| step.3).collect::<Vec<_>>()
        };
        for (sql, index) in [
            (ended_before_query(true), "jobs_unpruned_by_end"),
            (ended_before_query(false), "jobs_live_by_end"),
            (String::from(LARGEST_QUERY), "jobs_by_owner_size"),
            (String::from(UNMEASURED_QUERY), "jobs_unmeasured"),
        ] {
            let steps = plan(sql).await;
            // A scan of a partial index reads only the rows it holds (jobs_unmeasured: ended,
            // unmeasured jobs alone); the table itself is never scanned.
            assert!(steps.iter().any(|step| step.contains(&format!("USING INDEX {index}"))), "{steps:?}");
            assert!(!steps.iter().any(|step| step == "SCAN jobs"), "{steps:?}");
            assert!(!steps.iter().any(|step| step.contains("TEMP B-TREE")), "{steps:?}");
        }
    }
}
