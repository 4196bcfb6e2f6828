//! Device-hour budgets' tables: the admins' per-user overrides (`user_budgets`) and the runs a
//! budget period charges (read from `job_runs` with their jobs' memory and limits).

use super::{Store, StoreError};
use std::collections::HashMap;

/// A user as budgets see them: exempt when admin, and the admin's override of each budget.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BudgetHolder {
    /// Admins have no budget.
    pub admin: bool,
    /// The override of `--gpu-hours-per-user`, hours; `None`: the server's.
    pub gpu_hours: Option<f64>,
    /// The override of `--cpu-hours-per-user`, hours; `None`: the server's.
    pub cpu_hours: Option<f64>,
}

/// One run that falls (partly) in a budget period, with what its charge depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargedRun {
    /// Its job's owner.
    pub owner: String,
    /// The device it ran on (its memory decides the share on a packing GPU).
    pub device: String,
    /// Its job's granted memory.
    pub memory_bytes: u64,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds; `None` while it runs.
    pub ended_at: Option<f64>,
}

/// One `charged_runs_since` row: owner, device, memory bytes, start, end.
type ChargedRunRow = (Option<String>, String, i64, f64, Option<f64>);

impl Store {
    /// Every user's admin flag and budget overrides, by name: one read of the users (a class's
    /// hundred or so rows), so an admin's change is seen by the next scheduling pass.
    pub async fn budget_holders(&self) -> Result<HashMap<String, BudgetHolder>, StoreError> {
        let rows: Vec<(String, bool, Option<f64>, Option<f64>)> = sqlx::query_as(
            "SELECT users.name, users.admin, user_budgets.gpu_hours, user_budgets.cpu_hours \
             FROM users LEFT JOIN user_budgets ON user_budgets.user_name = users.name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, admin, gpu_hours, cpu_hours)| (name, BudgetHolder { admin, gpu_hours, cpu_hours }))
            .collect())
    }

    /// Sets user `name`'s budget overrides: `Some(Some(h))` sets one, `Some(None)` returns it to
    /// the server's, `None` leaves it. False when there is no such user (nothing stored).
    pub async fn set_user_budget(
        &self,
        name: &str,
        gpu_hours: Option<Option<f64>>,
        cpu_hours: Option<Option<f64>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM users WHERE name = ?").bind(name).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query("INSERT INTO user_budgets (user_name) VALUES (?) ON CONFLICT (user_name) DO NOTHING")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if let Some(hours) = gpu_hours {
            sqlx::query("UPDATE user_budgets SET gpu_hours = ? WHERE user_name = ?")
                .bind(hours)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(hours) = cpu_hours {
            sqlx::query("UPDATE user_budgets SET cpu_hours = ? WHERE user_name = ?")
                .bind(hours)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The runs that ended after `since` or still run, of `owner` (or of everyone): what a
    /// budget period charges. Indexed by `job_runs_by_owner` (owner, ended_at).
    pub async fn charged_runs_since(&self, since: f64, owner: Option<&str>) -> Result<Vec<ChargedRun>, StoreError> {
        let rows: Vec<ChargedRunRow> = sqlx::query_as(
            "SELECT job_runs.owner, job_runs.device, jobs.memory_bytes, job_runs.started_at, job_runs.ended_at \
             FROM job_runs JOIN jobs ON jobs.id = job_runs.job_id \
             WHERE (job_runs.ended_at IS NULL OR job_runs.ended_at > ?) AND (? IS NULL OR job_runs.owner = ?)",
        )
        .bind(since)
        .bind(owner)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(owner, device, memory_bytes, started_at, ended_at)| ChargedRun {
                owner: owner.unwrap_or_default(),
                device,
                memory_bytes: memory_bytes.max(0) as u64,
                started_at,
                ended_at,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::jobs::tests::{queued_by, store};
    use super::*;

    #[tokio::test]
    async fn overrides_are_set_cleared_and_refused_for_unknown_users() {
        let (_dir, store) = store().await;
        assert!(store.add_user("alice", false, "t1").await.unwrap());
        assert!(store.add_user("root", true, "t2").await.unwrap());
        let holders = store.budget_holders().await.unwrap();
        assert_eq!(holders["alice"], BudgetHolder::default());
        assert!(holders["root"].admin);
        assert!(store.set_user_budget("alice", Some(Some(40.0)), None).await.unwrap());
        assert!(store.set_user_budget("alice", None, Some(Some(2.0))).await.unwrap());
        let alice = store.budget_holders().await.unwrap()["alice"];
        assert_eq!((alice.gpu_hours, alice.cpu_hours), (Some(40.0), Some(2.0)), "one field leaves the other");
        assert!(store.set_user_budget("alice", Some(None), None).await.unwrap());
        assert_eq!(store.budget_holders().await.unwrap()["alice"].gpu_hours, None, "back to the server's");
        assert!(!store.set_user_budget("mallory", Some(Some(1.0)), None).await.unwrap());
        assert!(!store.budget_holders().await.unwrap().contains_key("mallory"), "nothing stored");
    }

    #[tokio::test]
    async fn the_period_charges_runs_that_end_in_it_or_still_run() {
        let (_dir, store) = store().await;
        let job = queued_by(&store, "alice").await;
        let other = queued_by(&store, "bob").await;
        assert!(store.claim_job(job.id, "cpu0").await.unwrap());
        assert!(store.claim_job(other.id, "cpu1").await.unwrap());
        let now = super::super::unix_now();
        let alice = store.charged_runs_since(now - 60.0, Some("alice")).await.unwrap();
        assert_eq!(alice.len(), 1);
        assert_eq!((alice[0].device.as_str(), alice[0].ended_at), ("cpu0", None));
        assert_eq!(store.charged_runs_since(now - 60.0, None).await.unwrap().len(), 2);
    }
}
