//! The notifier: delivers the `notifications` outbox (what jobs' ends owe their owners, enqueued
//! by the store in the same transaction as each end) by email and webhook, in its own task, so a
//! slow or dead target delays only its own messages, never the scheduler or a request.
//!
//! It also delivers new accounts' welcome mails (`welcome.rs`), whose token is made at delivery.
//! It wakes when a job ends (a `finished` event on the bus), when an import queues welcome mails
//! ([`Wake`]) and when the earliest retry is due,
//! and sleeps otherwise: no polling while nothing is owed. A failed attempt is retried after
//! `base · 2^(attempts − 1)` (capped at an hour) until `max_attempts`, then the row is `failed`
//! with its last error for the admin (`GET /api/admin/notifications?state=failed`, `/metrics`).
//! Rows survive restarts: a new server delivers what the last one still owed.
//!
//! Delivery is at least once: a message sent just before the process dies, and not yet marked,
//! is sent again by the next server, with the same `Message-ID` / `X-Trainq-Delivery` so the
//! receiver can tell.

pub mod email;
pub mod message;
pub mod webhook;
pub mod welcome;

use crate::events::{EventBus, EventKind};
use crate::store::{unix_now, Notification, Store};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Messages read from the outbox per round.
const BATCH: u32 = 32;
/// Deliveries in flight at once within a round.
const PARALLEL: usize = 8;
/// The longest wait between two attempts of one message.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long to wait before reading the outbox again after the database refused a read.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// The shortest sleep before a retry: a row whose attempt could not be recorded stays due, and
/// must not be sent again in a tight loop.
const MIN_RETRY_WAIT: Duration = Duration::from_secs(1);

/// How the notifier delivers.
#[derive(Debug, Clone)]
pub struct NotifierSettings {
    /// The SMTP server; without one, emails fail (and are retried) naming the missing setting.
    pub mailer: Option<email::Mailer>,
    /// The dashboard's base URL, for links to a job's page.
    pub public_url: String,
    /// The first retry's delay; each later one doubles it.
    pub retry_base: Duration,
    /// Attempts before a message is given up as `failed`.
    pub max_attempts: u32,
}

impl NotifierSettings {
    /// When a message that failed its `attempts`-th attempt is due again; `None`: give up.
    pub fn retry_at(&self, attempts: u32, now: f64) -> Option<f64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let factor = 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let delay =
            (self.retry_base.as_secs_f64() * factor).min(MAX_BACKOFF.as_secs_f64().max(self.retry_base.as_secs_f64()));
        Some(now + delay)
    }
}

/// Wakes the notifier when something other than a job's end adds to the outbox (a roster
/// import's welcome mails). A wake while the notifier is busy is kept for its next wait.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<tokio::sync::Notify>);

impl Wake {
    /// Asks the notifier to read the outbox now.
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// An error and its causes on one line (`connection refused` is usually a cause, not the error).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the notifier until the event bus closes (the server shutting down); `wake` brings it to
/// the outbox between jobs' ends.
pub async fn run(store: Store, events: EventBus, settings: NotifierSettings, wake: Wake) {
    // Subscribed before the first read of the outbox, so an end between the two is not missed.
    let mut live = events.subscribe(None).live;
    let closed = events.closed();
    tokio::pin!(closed);
    let client = webhook::client();
    loop {
        let next_due = match deliver_due(&store, &settings, &client).await {
            Ok(()) => store.next_notification_due().await,
            Err(err) => Err(err),
        };
        let sleep = match next_due {
            Ok(Some(due)) => Some(Duration::from_secs_f64((due - unix_now()).max(MIN_RETRY_WAIT.as_secs_f64()))),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = ?err, "the notifier could not read the outbox; trying again shortly");
                Some(STORE_RETRY)
            }
        };
        let timer = async {
            match sleep {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timer);
        let woken = wake.0.notified();
        tokio::pin!(woken);
        // Only a job's end or a wake (welcome mails) adds to the outbox; other events are skipped
        // without a query.
        loop {
            tokio::select! {
                () = &mut timer => break,
                () = &mut woken => break,
                () = &mut closed => return,
                event = live.recv() => match event {
                    Ok(event) if matches!(event.kind, EventKind::Finished { .. }) => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Delivers every message due now, a batch at a time.
async fn deliver_due(
    store: &Store,
    settings: &NotifierSettings,
    client: &reqwest::Client,
) -> Result<(), crate::store::StoreError> {
    // One SMTP transport per round: its pooled connections go with it.
    let mut transport = None;
    // Each row once per round, even if its attempt could not be recorded (it stays due).
    let mut attempted = std::collections::HashSet::new();
    loop {
        let mut due = store.due_notifications(unix_now(), BATCH).await?;
        let full = due.len() as u32 == BATCH;
        due.retain(|row| attempted.insert(row.id));
        if due.is_empty() {
            return Ok(());
        }
        if transport.is_none() && due.iter().any(|row| row.channel == "email") {
            transport = settings.mailer.as_ref().map(|mailer| mailer.transport());
        }
        let transport = transport.as_ref();
        futures::stream::iter(due)
            .for_each_concurrent(PARALLEL, |row| async move {
                let result = deliver(store, settings, client, transport, &row).await;
                record(store, settings, &row, result).await;
            })
            .await;
        if !full {
            return Ok(());
        }
    }
}

/// One attempt at one message.
async fn deliver(
    store: &Store,
    settings: &NotifierSettings,
    client: &reqwest::Client,
    transport: Option<&lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
    row: &Notification,
) -> Result<(), String> {
    if row.event == crate::store::WELCOME {
        let (Some(mailer), Some(transport)) = (&settings.mailer, transport) else {
            return Err(String::from("no SMTP server is set: the admin sets --smtp-url and --smtp-from"));
        };
        return welcome::deliver(store, mailer, transport, &settings.public_url, row).await;
    }
    let id = row.job_id.parse().map_err(|_| format!("the outbox names no job id: `{}`", row.job_id))?;
    let job = match store.job(id).await {
        Ok(Some(job)) => job,
        Ok(None) => return Err(format!("job {} is not in the database", row.job_id)),
        Err(err) => return Err(format!("reading job {}: {}", row.job_id, error_chain(&err))),
    };
    let facts = message::JobFacts::of(&job, &settings.public_url);
    match row.channel.as_str() {
        "email" => {
            let (Some(mailer), Some(transport)) = (&settings.mailer, transport) else {
                return Err(String::from("no SMTP server is set: the admin sets --smtp-url and --smtp-from"));
            };
            let message_id = message::message_id(row.id, &row.job_id, mailer.domain());
            mailer.send(transport, &row.target, &message::subject(&facts), message::body(&facts), message_id).await
        }
        "webhook" => {
            let secret = row.secret.as_deref().unwrap_or_default();
            webhook::post(client, &row.target, secret, message::webhook_body(&facts, row.id), row.id).await
        }
        other => Err(format!("unknown channel `{other}`")),
    }
}

/// Writes an attempt's result to the outbox (retried while the database is busy or full: a
/// delivered message left `pending` would be sent again).
async fn record(store: &Store, settings: &NotifierSettings, row: &Notification, result: Result<(), String>) {
    let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX).saturating_add(1);
    for _ in 0..10 {
        let written = match &result {
            Ok(()) => store.notification_delivered(row.id).await.map(|_| ()),
            Err(error) => {
                store.notification_attempt_failed(row.id, error, settings.retry_at(attempts, unix_now())).await
            }
        };
        match written {
            Ok(()) => break,
            Err(err) if err.is_transient() => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(err) => {
                tracing::error!(error = ?err, delivery = row.id, "recording a notification attempt failed");
                break;
            }
        }
    }
    match result {
        Ok(()) => {
            tracing::info!(delivery = row.id, job_id = %row.job_id, channel = %row.channel, "notification delivered")
        }
        Err(error) => {
            tracing::warn!(delivery = row.id, job_id = %row.job_id, channel = %row.channel, attempts, %error, "notification attempt failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_an_hour_then_give_up() {
        let settings = NotifierSettings {
            mailer: None,
            public_url: String::new(),
            retry_base: Duration::from_secs(30),
            max_attempts: 12,
        };
        let delays: Vec<f64> =
            (1..=12).map(|attempts| settings.retry_at(attempts, 0.0).map_or(-1.0, |at| at)).collect();
        assert_eq!(&delays[..4], &[30.0, 60.0, 120.0, 240.0]);
        assert_eq!(delays[8], 3600.0, "capped");
        assert_eq!(delays[11], -1.0, "the twelfth failure gives up");
    }
}
