//! Jobs by owner and state as running totals in memory, so `GET /metrics` and the per-user cap
//! read a few numbers instead of counting the `jobs` table: counted once when the store opens,
//! then moved by the store's own state changes (insert, claim, end, cancel, requeue), each after
//! its transaction commits. Nothing else changes a job's state, so the totals stay equal to a
//! `GROUP BY owner, state` count (a test checks it after a mixed workload).

use super::StoreError;
use crate::domain::JobState;
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Jobs counted by (owner, state name).
type Counts = BTreeMap<(Option<String>, &'static str), i64>;

/// Jobs by (owner, state name); cheap to clone, every clone the same totals.
#[derive(Debug, Clone, Default)]
pub(super) struct JobTotals {
    counts: Arc<Mutex<Counts>>,
}

impl JobTotals {
    /// Counts the table once: the totals at open.
    pub(super) async fn count(pool: &SqlitePool) -> Result<JobTotals, StoreError> {
        let rows = counted_by_query(pool).await?;
        let totals = JobTotals::default();
        {
            let mut counts = totals.lock();
            for (owner, state, count) in rows {
                let state: JobState = state.parse().map_err(|err| super::jobs::corrupt("state", err))?;
                counts.insert((owner, state.as_str()), count);
            }
        }
        Ok(totals)
    }

    /// The counts, never poisoned: an update is one addition, so a panic elsewhere cannot leave
    /// it half done.
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One job of `owner` moved from `from` (`None`: it is new) to `to`.
    pub(super) fn moved(&self, owner: Option<&str>, from: Option<JobState>, to: JobState) {
        let mut counts = self.lock();
        if let Some(from) = from {
            let left = counts.entry((owner.map(str::to_string), from.as_str())).or_default();
            *left -= 1;
            if *left == 0 {
                counts.remove(&(owner.map(str::to_string), from.as_str()));
            }
        }
        *counts.entry((owner.map(str::to_string), to.as_str())).or_default() += 1;
    }

    /// (owner, state, count) for every pair with jobs, ordered by owner and state name: what
    /// `SELECT owner, state, COUNT(*) … GROUP BY owner, state ORDER BY owner, state` gives.
    pub(super) fn snapshot(&self) -> Vec<(Option<String>, String, i64)> {
        let mut rows: Vec<(Option<String>, String, i64)> = self
            .lock()
            .iter()
            .filter(|(_, count)| **count != 0)
            .map(|((owner, state), count)| (owner.clone(), state.to_string(), *count))
            .collect();
        rows.sort();
        rows
    }

    /// Jobs of `owner` in any of `states`.
    pub(super) fn of_owner(&self, owner: &str, states: &[JobState]) -> i64 {
        let counts = self.lock();
        states.iter().map(|state| counts.get(&(Some(owner.to_string()), state.as_str())).copied().unwrap_or(0)).sum()
    }
}

/// The same totals counted over the table: the seed, and what tests compare the running totals
/// with.
pub(super) async fn counted_by_query(pool: &SqlitePool) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
    Ok(sqlx::query_as("SELECT owner, state, COUNT(*) FROM jobs GROUP BY owner, state ORDER BY owner, state")
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use crate::domain::outcome::RunOutcome;
    use crate::domain::JobState;
    use crate::store::jobs::tests::{queued_by, store};
    use crate::store::{NewJob, Store};

    /// The running totals against a `GROUP BY` count of the table.
    async fn totals_match(store: &Store, after: &str) {
        assert_eq!(store.job_counts().await.unwrap(), store.job_counts_by_query().await.unwrap(), "after {after}");
    }

    #[tokio::test]
    async fn the_running_totals_equal_a_group_by_count_after_a_mixed_workload() {
        let (dir, store) = store().await;
        let mut alice = Vec::new();
        for _ in 0..6 {
            alice.push(queued_by(&store, "alice").await);
        }
        let bob = queued_by(&store, "bob").await;
        let nobody =
            NewJob { owner: None, ..crate::store::jobs::tests::queued_new(crate::store::jobs::tests::test_spec()) };
        store.insert_jobs(&[nobody]).await.unwrap();
        totals_match(&store, "submissions").await;
        assert_eq!(store.active_jobs_of("alice").await.unwrap(), 6);

        assert!(store.claim_job(alice[0].id, "cpu0").await.unwrap());
        assert!(store.claim_job(alice[1].id, "cpu1").await.unwrap());
        assert!(store.claim_job(bob.id, "cpu2").await.unwrap());
        assert!(!store.claim_job(bob.id, "cpu3").await.unwrap(), "claimed once, counted once");
        totals_match(&store, "claims").await;

        assert!(store.finish_job(alice[0].id, JobState::Succeeded, None).await.unwrap());
        assert!(store.finish_job(bob.id, JobState::Failed, Some("exit 3")).await.unwrap());
        assert!(!store.finish_job(bob.id, JobState::Failed, Some("again")).await.unwrap());
        // A queued job fails when a job it waits for failed.
        assert!(store.finish_job(alice[2].id, JobState::Failed, Some("its dependency failed")).await.unwrap());
        totals_match(&store, "ends").await;

        assert_eq!(store.request_cancel(alice[3].id).await.unwrap(), crate::store::CancelOutcome::CancelledWhileQueued);
        assert_eq!(store.request_cancel(alice[1].id).await.unwrap(), crate::store::CancelOutcome::StopRunning);
        totals_match(&store, "cancels").await;

        assert!(store.claim_job(alice[4].id, "cpu0").await.unwrap());
        assert!(store.requeue_job(alice[4].id, RunOutcome::Requeued, None, None).await.unwrap());
        assert!(store.claim_job(alice[4].id, "cpu0").await.unwrap());
        totals_match(&store, "a requeue").await;

        // A restart: the running job marked for cancelling is cancelled, the other requeued.
        assert_eq!(store.requeue_running().await.unwrap(), vec![alice[4].id]);
        totals_match(&store, "requeue_running").await;
        assert_eq!(store.active_jobs_of("alice").await.unwrap(), 2);
        assert_eq!(store.active_jobs_of("bob").await.unwrap(), 0);

        // Counted again at open: the same totals.
        let reopened = Store::open(dir.path()).await.unwrap();
        assert_eq!(reopened.job_counts().await.unwrap(), store.job_counts().await.unwrap());
    }
}
