//! Users' notification targets and the `notifications` outbox: what a job's end owes whom, until
//! the notifier (`src/notify/`) has delivered it or given up.

use super::{unix_now, Store, StoreError};

/// The columns of one outbox row, as read.
type NotificationRow =
    (i64, String, String, String, String, Option<String>, String, String, i64, f64, Option<String>, f64, Option<f64>);

/// Where a user wants to hear that their jobs ended. The webhook's secret is never read back out
/// of the store except by the notifier, through the outbox row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyTargets {
    /// An email address.
    pub email: Option<String>,
    /// A webhook URL (http or https).
    pub webhook_url: Option<String>,
}

/// A change to a user's targets: `None` leaves a target as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyTargetsChange {
    /// The new email address, or none.
    pub email: Option<Option<String>>,
    /// The new webhook (URL, signing secret), or none.
    pub webhook: Option<Option<(String, String)>>,
}

/// One message a job's end owes, as the outbox holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The outbox id; also the delivery's id receivers de-duplicate by.
    pub id: i64,
    /// The job that ended; empty for a welcome (about an account, not a job).
    pub job_id: String,
    /// The job's owner, whose target this is.
    pub owner: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// The address or URL, as it was when the job ended.
    pub target: String,
    /// A webhook's signing secret, as it was when the job ended.
    pub secret: Option<String>,
    /// The job's final state.
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// When a pending row is due next, Unix seconds.
    pub next_attempt_at: f64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the job's end enqueued it, Unix seconds.
    pub created_at: f64,
    /// When it was delivered, Unix seconds.
    pub delivered_at: Option<f64>,
}

impl From<NotificationRow> for Notification {
    fn from(row: NotificationRow) -> Notification {
        let (
            id,
            job_id,
            owner,
            channel,
            target,
            secret,
            event,
            state,
            attempts,
            next_attempt_at,
            last_error,
            created_at,
            delivered_at,
        ) = row;
        Notification {
            id,
            job_id,
            owner,
            channel,
            target,
            secret,
            event,
            state,
            attempts,
            next_attempt_at,
            last_error,
            created_at,
            delivered_at,
        }
    }
}

/// A welcome (about an account, not a job) has no job: its `job_id` reads as empty.
const NOTIFICATION_COLUMNS: &str =
    "id, COALESCE(job_id, '') AS job_id, owner, channel, target, secret, event, state, attempts, next_attempt_at, last_error, created_at, delivered_at";

/// Whether the ended job's spec asks for a message on its final state: the spec's `notify` list,
/// or `NotifyEvent::DEFAULT` (succeeded, failed, timeout) when it has none.
const WANTED: &str = "jobs.state IN ('succeeded', 'failed', 'cancelled', 'timeout') AND CASE \
                      WHEN json_type(jobs.spec, '$.notify') IS NULL THEN jobs.state IN ('succeeded', 'failed', 'timeout') \
                      ELSE EXISTS (SELECT 1 FROM json_each(jobs.spec, '$.notify') AS wanted WHERE wanted.value = jobs.state) END";

/// Enqueues the messages job `job_id`'s end owes its owner (one per target the owner has, if the
/// spec wants its final state). Call it inside the transaction that writes the end, after the
/// write took effect: then a row exists exactly when the end was written, whatever crashes when,
/// and `UNIQUE (job_id, channel, event)` keeps a retried end from owing twice. Every terminal
/// path of the store goes through here; a new one must too.
pub(super) async fn enqueue_for_end(connection: &mut sqlx::SqliteConnection, job_id: &str) -> Result<u64, StoreError> {
    let now = unix_now();
    let result = sqlx::query(&format!(
        "INSERT INTO notifications (job_id, owner, channel, target, secret, event, next_attempt_at, created_at) \
         SELECT * FROM ( \
           SELECT jobs.id, users.name, 'email', users.email, NULL, jobs.state, ?1, ?1 FROM jobs JOIN users ON users.name = jobs.owner \
             WHERE jobs.id = ?2 AND users.email IS NOT NULL AND {WANTED} \
           UNION ALL \
           SELECT jobs.id, users.name, 'webhook', users.webhook_url, users.webhook_secret, jobs.state, ?1, ?1 FROM jobs JOIN users ON users.name = jobs.owner \
             WHERE jobs.id = ?2 AND users.webhook_url IS NOT NULL AND {WANTED} \
         ) WHERE true ON CONFLICT (job_id, channel, event) DO NOTHING"
    ))
    .bind(now)
    .bind(job_id)
    .execute(connection)
    .await?;
    Ok(result.rows_affected())
}

impl Store {
    /// A user's targets; `None` if there is no such user.
    pub async fn notify_targets(&self, name: &str) -> Result<Option<NotifyTargets>, StoreError> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT email, webhook_url FROM users WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(email, webhook_url)| NotifyTargets { email, webhook_url }))
    }

    /// Changes a user's targets (what `change` leaves `None` stays). False if there is no such user.
    /// Messages already owed keep the target they were enqueued with.
    pub async fn set_notify_targets(&self, name: &str, change: &NotifyTargetsChange) -> Result<bool, StoreError> {
        let (set_webhook, url, secret) = match &change.webhook {
            None => (false, None, None),
            Some(None) => (true, None, None),
            Some(Some((url, secret))) => (true, Some(url.as_str()), Some(secret.as_str())),
        };
        let result = sqlx::query(
            "UPDATE users SET email = CASE WHEN ?1 THEN ?2 ELSE email END, \
             webhook_url = CASE WHEN ?3 THEN ?4 ELSE webhook_url END, \
             webhook_secret = CASE WHEN ?3 THEN ?5 ELSE webhook_secret END WHERE name = ?6",
        )
        .bind(change.email.is_some())
        .bind(change.email.clone().flatten())
        .bind(set_webhook)
        .bind(url)
        .bind(secret)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Pending messages due at `now` (Unix seconds), the longest-due first, at most `limit`.
    pub async fn due_notifications(&self, now: f64, limit: u32) -> Result<Vec<Notification>, StoreError> {
        let rows: Vec<NotificationRow> = sqlx::query_as(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE state = 'pending' AND next_attempt_at <= ? \
             ORDER BY next_attempt_at LIMIT ?"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Notification::from).collect())
    }

    /// When the next pending message is due (Unix seconds); `None` when nothing is owed.
    pub async fn next_notification_due(&self) -> Result<Option<f64>, StoreError> {
        let (due,): (Option<f64>,) =
            sqlx::query_as("SELECT MIN(next_attempt_at) FROM notifications WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?;
        Ok(due)
    }

    /// Records a delivery. False if the row was not pending (delivered or given up already).
    pub async fn notification_delivered(&self, id: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE notifications SET state = 'delivered', attempts = attempts + 1, delivered_at = ?, last_error = NULL \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(unix_now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Records a failed attempt: due again at `retry_at` (Unix seconds), or given up (`failed`)
    /// when `None`.
    pub async fn notification_attempt_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<f64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, last_error = ?, \
             state = CASE WHEN ? IS NULL THEN 'failed' ELSE 'pending' END, next_attempt_at = COALESCE(?, next_attempt_at) \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(error)
        .bind(retry_at)
        .bind(retry_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Outbox rows in `state` (`pending`, `delivered` or `failed`), newest first, at most
    /// `limit`: what the admin looks at (`GET /api/admin/notifications`).
    pub async fn notifications_in(&self, state: &str, limit: u32) -> Result<Vec<Notification>, StoreError> {
        let rows: Vec<NotificationRow> = sqlx::query_as(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE state = ? ORDER BY next_attempt_at DESC, id DESC LIMIT ?"
        ))
        .bind(state)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Notification::from).collect())
    }

    /// How many messages are pending and how many were given up: (pending, failed). Two counts
    /// over the index's ranges for those states, which stay small; delivered rows are not read.
    pub async fn notification_backlog(&self) -> Result<(i64, i64), StoreError> {
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM notifications WHERE state = 'pending'), \
                    (SELECT COUNT(*) FROM notifications WHERE state = 'failed')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((pending, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobId, JobSpec, JobState};

    fn spec(notify: Option<serde_json::Value>) -> JobSpec {
        let mut value = serde_json::json!({
            "name": "q1", "dataset": "demo", "backbone": "vgg16", "image_size": 32, "batch_size": 4,
            "head": ["gap", {"dense": 1}], "phases": [{"epochs": 1, "train": "head"}],
            "optimizer": {"name": "adam", "lr": 1e-3}
        });
        if let Some(notify) = notify {
            value["notify"] = notify;
        }
        JobSpec::parse(&serde_json::to_vec(&value).unwrap()).unwrap()
    }

    async fn job(store: &Store, owner: &str, notify: Option<serde_json::Value>) -> JobId {
        crate::store::jobs::tests::queued_with(store, owner, spec(notify)).await.id
    }

    async fn run_and_end(store: &Store, id: JobId, state: JobState) {
        assert!(store.claim_job(id, "cpu0").await.unwrap());
        assert!(store.finish_job(id, state, None).await.unwrap());
    }

    #[tokio::test]
    async fn an_end_owes_one_message_per_target_and_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.add_user("alice", false, "tq_a").await.unwrap();
        store.add_user("bob", false, "tq_b").await.unwrap();
        let change = NotifyTargetsChange {
            email: Some(Some(String::from("alice@example.org"))),
            webhook: Some(Some((String::from("http://hooks.example.org/x"), String::from("0123456789abcdef")))),
        };
        assert!(store.set_notify_targets("alice", &change).await.unwrap());
        let targets = store.notify_targets("alice").await.unwrap().unwrap();
        assert_eq!(targets.email.as_deref(), Some("alice@example.org"));

        // Default: succeeded and failed, not cancelled; a user without targets owes nothing.
        let succeeded = job(&store, "alice", None).await;
        run_and_end(&store, succeeded, JobState::Succeeded).await;
        let cancelled = job(&store, "alice", None).await;
        assert_eq!(store.request_cancel(cancelled).await.unwrap(), crate::store::CancelOutcome::CancelledWhileQueued);
        let bobs = job(&store, "bob", None).await;
        run_and_end(&store, bobs, JobState::Failed).await;
        // A spec's list replaces the default; [] asks for nothing.
        let wants_cancel = job(&store, "alice", Some(serde_json::json!(["cancelled"]))).await;
        assert_eq!(
            store.request_cancel(wants_cancel).await.unwrap(),
            crate::store::CancelOutcome::CancelledWhileQueued
        );
        let silent = job(&store, "alice", Some(serde_json::json!([]))).await;
        run_and_end(&store, silent, JobState::Succeeded).await;

        let due = store.due_notifications(unix_now() + 1.0, 100).await.unwrap();
        let mut owed: Vec<(String, &str, &str)> =
            due.iter().map(|row| (row.job_id.clone(), row.channel.as_str(), row.event.as_str())).collect();
        owed.sort();
        let mut expected = vec![
            (succeeded.to_string(), "email", "succeeded"),
            (succeeded.to_string(), "webhook", "succeeded"),
            (wants_cancel.to_string(), "email", "cancelled"),
            (wants_cancel.to_string(), "webhook", "cancelled"),
        ];
        expected.sort();
        assert_eq!(owed, expected);
        let hook = due.iter().find(|row| row.channel == "webhook").unwrap();
        assert_eq!(hook.secret.as_deref(), Some("0123456789abcdef"));

        // A second enqueue for the same end (a retried write) adds nothing.
        let mut connection = store.pool.acquire().await.unwrap();
        assert_eq!(enqueue_for_end(&mut connection, &succeeded.to_string()).await.unwrap(), 0);
        drop(connection);

        // Failure, retry, give up; delivery.
        let email = due.iter().find(|row| row.channel == "email").unwrap();
        store.notification_attempt_failed(email.id, "connection refused", Some(unix_now() + 60.0)).await.unwrap();
        assert!(store.due_notifications(unix_now(), 100).await.unwrap().iter().all(|row| row.id != email.id));
        store.notification_attempt_failed(email.id, "connection refused again", None).await.unwrap();
        let failed = store.notifications_in("failed", 10).await.unwrap();
        assert_eq!(
            (failed.len(), failed[0].attempts, failed[0].last_error.as_deref()),
            (1, 2, Some("connection refused again"))
        );
        assert!(store.notification_delivered(hook.id).await.unwrap());
        assert!(!store.notification_delivered(hook.id).await.unwrap(), "delivered once");
        assert_eq!(store.notification_backlog().await.unwrap(), (2, 1));
        assert!(store.next_notification_due().await.unwrap().is_some());

        // Removing a target stops future messages; messages already owed keep theirs.
        let remove = NotifyTargetsChange { email: Some(None), webhook: None };
        assert!(store.set_notify_targets("alice", &remove).await.unwrap());
        let targets = store.notify_targets("alice").await.unwrap().unwrap();
        assert_eq!((targets.email, targets.webhook_url.as_deref()), (None, Some("http://hooks.example.org/x")));
        assert!(!store.set_notify_targets("nobody", &remove).await.unwrap());
    }

    #[tokio::test]
    async fn a_cancel_a_dead_server_left_under_way_owes_its_message_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.add_user("alice", false, "tq_a").await.unwrap();
        let change = NotifyTargetsChange { email: Some(Some(String::from("alice@example.org"))), webhook: None };
        store.set_notify_targets("alice", &change).await.unwrap();
        let id = job(&store, "alice", Some(serde_json::json!(["cancelled"]))).await;
        assert!(store.claim_job(id, "cpu0").await.unwrap());
        assert_eq!(store.request_cancel(id).await.unwrap(), crate::store::CancelOutcome::StopRunning);
        assert!(store.due_notifications(unix_now() + 1.0, 10).await.unwrap().is_empty(), "not ended yet");
        store.requeue_running().await.unwrap();
        let due = store.due_notifications(unix_now() + 1.0, 10).await.unwrap();
        assert_eq!(
            due.iter().map(|row| (row.job_id.clone(), row.event.as_str())).collect::<Vec<_>>(),
            [(id.to_string(), "cancelled")]
        );
    }
}
