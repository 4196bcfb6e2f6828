//! `GET /api/events` and `GET /api/jobs/{id}/events`: live server-sent events (`queued`,
//! `started`, `progress`, `epoch`, `cancel_requested`, `finished`, `log`) for every job or one.
//!
//! A late subscriber catches up either way: with `Last-Event-ID` (sent by a reconnecting
//! `EventSource`) it gets exactly the events it missed; without one (or with one too old) it
//! first gets a `snapshot` event with the current state from the database, then live events.
//! The queue's snapshot holds what a page shows, never every job: first pages of the list
//! (`job_list::snapshot_lists`: the active queue and the caller's newest jobs by default). A
//! snapshot may overlap the live events after it (at least once, never a gap): clients apply
//! events idempotently (epochs by phase and epoch, log lines by byte offset).

use super::auth::{Authed, Caller};
use super::extract::{Path, Query};
use super::job_list::{self, ListQuery, ListRequest, Page};
use super::job_view::{find_by_id, find_own, view_for, JobView};
use super::{ApiError, AppState};
use crate::domain::worker_protocol::EpochMetrics;
use crate::domain::JobId;
use crate::events::EventKind;
use crate::events::{CatchUp, JobEvent};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast::{self, error::RecvError};

/// How much of a job's log its snapshot carries.
const LOG_TAIL_BYTES: u64 = 32 * 1024;

/// The `snapshot` of `GET /api/events`: first pages of the list by name (`active`, `mine`, or
/// `list`), each as `GET /api/jobs` answers it.
#[derive(Serialize, utoipa::ToSchema)]
struct QueueSnapshot {
    /// Each list's first page by name (`active`, `mine`, or `list`).
    pages: std::collections::BTreeMap<&'static str, Page>,
}

/// The `snapshot` of `GET /api/jobs/{id}/events`.
#[derive(Serialize, utoipa::ToSchema)]
struct JobSnapshot {
    /// As `GET /api/jobs/{id}`.
    job: JobView,
    /// As `epochs` of `GET /api/jobs/{id}/metrics`.
    epochs: Vec<EpochMetrics>,
    /// The end of the log.
    log: LogTail,
}

/// The last lines of a job's log: `text` is bytes `from`..`offset` of `log.txt`; a later `log`
/// event with an `offset` below this `offset` is already in `text`.
#[derive(Serialize, utoipa::ToSchema)]
struct LogTail {
    /// The lines, starting at a line boundary.
    text: String,
    /// Byte offset of `text` in `log.txt`.
    from: u64,
    /// Byte offset of the end of `text`: the log's length when the snapshot was taken.
    offset: u64,
}

async fn log_tail(path: &std::path::Path) -> LogTail {
    let empty = LogTail { text: String::new(), from: 0, offset: 0 };
    let Ok(mut file) = tokio::fs::File::open(path).await else { return empty };
    let Ok(length) = file.metadata().await.map(|metadata| metadata.len()) else { return empty };
    let mut from = length.saturating_sub(LOG_TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(std::io::SeekFrom::Start(from)).await.is_err()
        || file.take(length - from).read_to_end(&mut bytes).await.is_err()
    {
        return empty;
    }
    // Start at a line boundary when the tail cut one.
    if from > 0 {
        if let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            bytes.drain(..=newline);
            from += newline as u64 + 1;
        }
    }
    LogTail { text: String::from_utf8_lossy(&bytes).into_owned(), from, offset: length }
}

async fn snapshot(state: &AppState, caller: &Caller, scope: &Scope) -> Result<String, ApiError> {
    let json = match scope {
        Scope::Queue(lists) => {
            let mut pages = std::collections::BTreeMap::new();
            for (name, request) in lists {
                pages.insert(*name, job_list::page(state, caller, request).await?);
            }
            serde_json::to_string(&QueueSnapshot { pages })
        }
        Scope::Job(id) => {
            let job = find_by_id(state, *id).await?;
            let epochs = state.store.epoch_metrics(*id).await?;
            let log = log_tail(&crate::supervisor::JobPaths::new(&state.paths.data_dir, *id).log()).await;
            serde_json::to_string(&JobSnapshot { job: view_for(state, caller, job).await?, epochs, log })
        }
    };
    Ok(json.map_err(anyhow::Error::from)?)
}

/// What a stream follows: the queue (every job's events; a snapshot of these first pages), or one job.
enum Scope {
    Queue(Vec<(&'static str, ListRequest)>),
    Job(JobId),
}

impl Scope {
    fn wants(&self, id: JobId) -> bool {
        match self {
            Scope::Queue(_) => true,
            Scope::Job(job) => *job == id,
        }
    }
}

/// One subscriber's position: events to send first, then the live channel.
struct Feed {
    state: AppState,
    /// Who listens: log lines, epochs and failure reasons of other people's jobs are not theirs.
    caller: Caller,
    /// Jobs' owners, looked up once per job.
    owners: HashMap<JobId, Option<String>>,
    scope: Scope,
    /// A snapshot is due (first thing, or after falling behind); with the id it carries.
    snapshot: Option<Option<String>>,
    pending: VecDeque<Arc<JobEvent>>,
    live: broadcast::Receiver<Arc<JobEvent>>,
}

impl Feed {
    fn wants(&self, event: &JobEvent) -> bool {
        self.scope.wants(event.job_id)
    }

    /// The event as this caller may see it: the queue's facts for all, a job's log lines,
    /// epochs and failure reason for its owner and admins only.
    async fn visible(&mut self, event: Arc<JobEvent>) -> Option<Arc<JobEvent>> {
        let private = matches!(
            event.kind,
            EventKind::Log { .. } | EventKind::Epoch { .. } | EventKind::Finished { error: Some(_), .. }
        );
        if !private || self.caller.user().is_some_and(|user| user.admin) {
            return Some(event);
        }
        let owner = match self.owners.get(&event.job_id) {
            Some(owner) => owner.clone(),
            None => {
                let owner = self.state.store.job(event.job_id).await.ok().flatten().and_then(|job| job.owner);
                self.owners.insert(event.job_id, owner.clone());
                owner
            }
        };
        if self.caller.may_see(owner.as_deref()) {
            return Some(event);
        }
        match &event.kind {
            EventKind::Finished { state, .. } => Some(Arc::new(JobEvent {
                seq: event.seq,
                job_id: event.job_id,
                kind: EventKind::Finished { state: *state, error: Some(String::from("(visible to the job's owner)")) },
            })),
            _ => None,
        }
    }

    fn message(&self, event: &JobEvent) -> Event {
        let data = serde_json::to_string(event).expect("events serialize");
        Event::default().event(event.kind.name()).id(self.state.events.event_id(event)).data(data)
    }

    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(id) = self.snapshot.take() {
                return match snapshot(&self.state, &self.caller, &self.scope).await {
                    Ok(data) => {
                        let event = Event::default().event("snapshot").data(data);
                        Some(match id {
                            Some(id) => event.id(id),
                            None => event,
                        })
                    }
                    Err(err) => {
                        // The client reconnects and tries again; the cause is in the server log.
                        tracing::error!(error = ?err, "building an event snapshot failed");
                        None
                    }
                };
            }
            if let Some(event) = self.pending.pop_front() {
                if let Some(event) = self.visible(event).await {
                    return Some(self.message(&event));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) if self.wants(&event) => {
                    if let Some(event) = self.visible(event).await {
                        return Some(self.message(&event));
                    }
                }
                Ok(_) => {}
                // Fell behind the live channel: what was missed is in a fresh snapshot.
                Err(RecvError::Lagged(_)) => self.snapshot = Some(None),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn feed(
    state: AppState,
    caller: Caller,
    scope: Scope,
    headers: &HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_event_id = headers.get("last-event-id").and_then(|value| value.to_str().ok());
    let subscription = state.events.subscribe(last_event_id);
    let (snapshot, pending) = match subscription.catch_up {
        CatchUp::Replay(events) => (None, events.into_iter().filter(|event| scope.wants(event.job_id)).collect()),
        CatchUp::Snapshot => (Some(Some(subscription.resume_id)), VecDeque::new()),
    };
    let closed = state.events.closed();
    let start = Feed { state, caller, owners: HashMap::new(), scope, snapshot, pending, live: subscription.live };
    let events = stream::unfold(start, |mut feed| async move { feed.next().await.map(|event| (Ok(event), feed)) });
    Sse::new(events.take_until(closed)).keep_alive(KeepAlive::default())
}

/// `GET /api/events[?limit=…|state=…&owner=…&order=…]`: every job's events; the snapshot holds
/// first pages of the list (`job_list::snapshot_lists`), a bad query is a 400 naming the field.
#[utoipa::path(
    get, path = "/api/events", tag = "events",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "size of the snapshot's pages"),
        ("state" = Option<String>, Query, pattern = r"^(queued|running|succeeded|failed|cancelled|timeout)(,(queued|running|succeeded|failed|cancelled|timeout))*$", description = "the snapshot's list: comma-separated states"),
        ("owner" = Option<String>, Query, pattern = r"^(me|[a-z0-9][a-z0-9._-]{0,31})$", description = "the snapshot's list: `me` or a user name"),
        ("order" = Option<String>, Query, pattern = r"^(asc|desc)$", description = "the snapshot's list: `asc` for oldest first"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event"),
    ),
    // `body` is the `snapshot` event's data: `openapi::EventStreams` describes every event from it.
    responses((status = 200, description = "server-sent events: snapshot, queued, started, progress, epoch, cancel_requested, finished, log, deleted", content_type = "text/event-stream", body = QueueSnapshot)),
    security((), ("bearer" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let lists = job_list::snapshot_lists(&ListQuery::from_pairs(pairs)?, &caller)?;
    Ok(feed(state, caller, Scope::Queue(lists), &headers))
}

/// `GET /api/jobs/{id}/events`: one job's events; its snapshot has the job, its epochs and the
/// end of its log.
#[utoipa::path(
    get, path = "/api/jobs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "the job's id (a UUID)"), ("Last-Event-ID" = Option<String>, Header, description = "resume after this event")),
    // `body` is the `snapshot` event's data: `openapi::EventStreams` describes every event from it.
    responses((status = 200, description = "server-sent events of one job, starting with a snapshot", content_type = "text/event-stream", body = JobSnapshot)),
    security(("bearer" = []))
)]
pub async fn job_stream(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = find_own(&state, &user, &id).await?;
    Ok(feed(state, Caller::User(user), Scope::Job(job.id), &headers))
}
